"""`transform-checkpoint`: the offline tool, a drop-in for MindFormers' transform_checkpoint.py.

Every flag of MindFormers' script is accepted with its meaning (--dst_checkpoint_dir,
--transform_process_num, --rank_id, --world_size, --transform_by_rank; `None` or empty for "no
strategy"), beside this tool's own. The positional form of MindFormers' transform_checkpoint.sh
is reshard.mindformers_cli.main_sh.

Bad input -> one line on stderr naming the culprit, exit code 2, nothing written. Ctrl-C -> one
line, exit code 130, nothing partial under a final name; the same command again resumes (ranks
already complete and verified are skipped). Remote (obs:// / s3://) inputs: strategies are
copied down, the source is classified from its listing; a remote output is written locally and
published by obs_io after a successful conversion. A remote source's headers are read in place by ranged GETs
(nothing downloaded: a bad source fails before any transfer), then each file the plan reads
is either read in place during the conversion or downloaded first (--source_mode; the plan,
--dry_run, says which). What is printed names the user's URLs, never the temporary folder.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from dataclasses import replace

from .api import ReshardError, find_remote_sources, find_sources, load_strategy, memory_budget, write_merged_strategy
from . import integrity
from . import run as reshard_run
from .blocks import plan_blocks
from .claim import OutputClaim
from .config import ReshardConfig
from .execute import LOG_NAME
from .formats import registry
from .plan import SOURCE_MODES, PlanPolicy, human_size, ranks_text
from .run import conversion_inputs, inputs_id
from .sources import (DEFAULT_PREFIX, SourceSet, check_output, check_prefix, check_writable,
                      is_url, probe_writable,
                      split_url, strategy_files)
from .steps import parse_step
from .strategy import Strategy

from obs_io import redact
from obs_io.atomic import owner_running, owner_tag, write_atomic
from obs_io.oneline import OneLineParser, one_line
from obs_io.urls import check as check_url, join as _join
from obs_io.version import package_version

log = logging.getLogger("reshard")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeError(argparse.ArgumentTypeError, ValueError):
    """A size that is not one: argparse shows its text; other callers catch ValueError."""


def parse_size(text: str) -> int:
    """Bytes from a size as both tools take it: '8G', '512M', '1.5GiB', '8gib', '1048576', '1e9'
    (K/M/G/T are powers of 1024; an optional i/iB/B after them). At least one byte. The one size
    rule of the project: cloud-entry's --max_memory uses it too.
    Raises SizeError (an argparse.ArgumentTypeError and a ValueError) naming the text."""
    t = text.strip().upper()
    for suffix in ("IB", "B", "I"):
        if t.endswith(suffix) and len(t) > len(suffix) and t[-len(suffix) - 1] in "KMGT":
            t = t[:-len(suffix)]
            break
    unit = t[-1] if t and t[-1] in "KMGT" else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise SizeError(f"{text!r} is not a size like 8G or 512M") from None
    size = int(value * _UNITS[unit]) if value == value and value != float("inf") else 0
    if size < 1:
        raise SizeError(f"{text!r} must be at least one byte")
    return size


class _OneLineParser(OneLineParser):
    """Usage errors are bad input like any other: one line, exit 2 (via main)."""
    error_type = ReshardError


PROG = "transform-checkpoint"
DEFAULT_DST = "transformed_checkpoint"   # MindFormers' default: <working folder>/transformed_checkpoint
INTERRUPTED = "interrupted; rerun the same command to resume"

EXAMPLES = """\
examples (MindFormers' flag names and layout: <dst_checkpoint_dir>/<checkpoint name>/rank_<r>/):
  # complete -> 8 ranks (dp2 mp2 pp2): out8/llama_7b/rank_0..7/
  transform-checkpoint --src_checkpoint=llama_7b.ckpt --src_strategy=None \\
      --dst_checkpoint_dir=out8 --dst_strategy=strategy8/ --world_size=8 --transform_process_num=2
  # 8 -> 4 ranks (dp1 mp2 pp2), from object storage: out4/llama_7b/rank_0..3/
  transform-checkpoint --src_checkpoint=obs://bucket/out8/llama_7b --src_strategy=obs://bucket/strategy8/ \\
      --dst_checkpoint_dir=out4 --dst_strategy=strategy4/ --world_size=4 --transform_process_num=2
  # 4 -> complete: out1/llama_7b/rank_0/checkpoint_0.ckpt
  transform-checkpoint --src_checkpoint=out4/llama_7b --src_strategy=strategy4/ \\
      --dst_checkpoint_dir=out1 --dst_strategy=None
  # one block only, as one process of MindFormers' script does: ranks 4-7 of 8
  transform-checkpoint --src_checkpoint=llama_7b.ckpt --dst_checkpoint_dir=out8 \\
      --dst_strategy=strategy8/ --world_size=8 --transform_process_num=2 --rank_id=4
  # this tool's own flag: exactly this folder, out/rank_0..7/
  transform-checkpoint --src_checkpoint=llama_7b.ckpt --dst_checkpoint=out --dst_strategy=strategy8/
  # MindFormers' shell form: SRC SRC_STRATEGY DST DST_STRATEGY WORLD_SIZE PROCESS_NUM [PREFIX]
  transform_checkpoint.sh llama_7b.ckpt None out8 strategy8/ 8 2
"""


def build_parser() -> argparse.ArgumentParser:
    """Every flag of MindFormers' transform_checkpoint.py (its names are aliases of ours where
    both exist) and this tool's own; each with a description; examples at the end."""
    p = _OneLineParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Convert a MindSpore checkpoint between parallel layouts: a drop-in for\n"
                    "MindFormers' transform_checkpoint.py (flags marked [MindFormers] are its\n"
                    "names, with its meaning). Output: <dst_checkpoint>/rank_<r>/<prefix><r>.ckpt;\n"
                    "a complete destination is rank_0. Paths may be local, obs:// or s3://.\n"
                    "Ctrl-C stops cleanly (exit 130); the same command again resumes.")
    _add_layout_flags(p)
    _add_run_flags(p)
    return p


def _add_layout_flags(p: argparse.ArgumentParser) -> None:
    """build_parser: what is converted into what (source, strategies, output, ranks)."""
    p.add_argument("--src_checkpoint", default=None, metavar="PATH",
                   help="[MindFormers] the source: a complete .ckpt/.safetensors file, a folder "
                        "of complete files, a folder with one rank_0/ (a complete checkpoint, "
                        "e.g. this tool's complete output), or model_dir with rank_<r>/ folders")
    p.add_argument("--step", default=None, metavar="EPOCH_STEP", type=_step,
                   help="the training step to read where checkpoints are named "
                        "<prefix>-<epoch>_<step>.ckpt, e.g. 10_2 (default: the latest by (epoch, "
                        "step), which every rank folder must hold); other names: the last in name "
                        "order")
    p.add_argument("--src_strategy", default=None, metavar="PATH",
                   help="[MindFormers] strategy file or folder of a distributed source "
                        "(None or empty: the source is complete)")
    p.add_argument("--dst_checkpoint", default=None, metavar="PATH",
                   help="output folder: <dst_checkpoint>/rank_<r>/<prefix><r>.ckpt")
    p.add_argument("--dst_checkpoint_dir", default=None, metavar="PATH",
                   help="[MindFormers] output parent folder, as MindFormers lays it out: "
                        "<dst_checkpoint_dir>/<checkpoint name>/rank_<r>/... (the source's folder "
                        "name, or its file name without extension) "
                        f"(default without either flag, as MindFormers: ./{DEFAULT_DST})")
    p.add_argument("--dst_strategy", default=None, metavar="PATH",
                   help="[MindFormers] strategy file or folder of the destination "
                        "(None or empty: a complete checkpoint)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"[MindFormers] output file name prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--rank_id", type=int, default=None, metavar="R",
                   help="[MindFormers] convert only the block of destination ranks rank R leads, "
                        "in one process: the blocks split the world size into "
                        "--transform_process_num parts, R is the first rank of one (0, N/p, ...) "
                        "(default: every rank); with --format checkpoint2 each block writes its "
                        "ranks' shards into the one local output and the block that ends last "
                        "finishes the set (metadata.json, common.json, the tracker)")
    p.add_argument("--world_size", type=int, default=None, metavar="N",
                   help="[MindFormers] destination rank count (dp*mp*pp), checked against the "
                        "destination strategy (default: the strategy's)")
    p.add_argument("--process_num", "--transform_process_num", dest="process_num", type=int,
                   default=1, metavar="P", action=_OneValue,
                   help="ranks converted at once, in P worker processes, within --max_memory; "
                        "--transform_process_num is MindFormers' name for it; with --rank_id the "
                        "number of blocks (default 1)")


class _OneValue(argparse.Action):
    """A flag with two names (ours and MindFormers'): given twice with different values is bad
    input, not the last one silently winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = getattr(namespace, f"_given_{self.dest}", None)
        if seen is not None and seen[1] != values:
            raise argparse.ArgumentError(self, f"{seen[0]}={seen[1]} and {option_string}={values}: give one")
        setattr(namespace, f"_given_{self.dest}", (option_string, values))
        setattr(namespace, self.dest, values)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """build_parser: how it is converted, checked, shown (in --help after _add_layout_flags)."""
    p.add_argument("--transform_by_rank", nargs="?", const=True, default=None, type=_bool, metavar="BOOL",
                   help="[MindFormers] accepted and ignored: this engine always converts rank by "
                        "rank, reading only the slices each rank needs")
    p.add_argument("--allow_missing_params", action="store_true",
                   help="convert without parameters the destination strategy names but the "
                        "checkpoint lacks (the network initialises them); without it they are an "
                        "error, except optimizer states and PET/LoRA adapters (always skipped)")
    p.add_argument("--keep_unnamed_params", action="store_true",
                   help="write parameters the destination strategy does not name whole into "
                        "every rank; without it they are an error (a strategy of another model, or "
                        "saved with only_trainable_params=True)")
    p.add_argument("--format", dest="fmt", choices=registry.names(), default=registry.DEFAULT,
                   help=f"output format (default {registry.DEFAULT}); dtypes are never converted; "
                        "checkpoint2: MindFormers' Checkpoint 2.0 (iteration folder)")
    for fmt in registry.formats():
        fmt.add_arguments(p)
    p.add_argument("--engine", choices=("stream", "mindspore"), default="stream",
                   help="stream: this engine (default); mindspore: MindSpore's own "
                        "transform_checkpoints on the same input, for comparison")
    p.add_argument("--source_mode", choices=SOURCE_MODES, default="auto",
                   help="an obs:// / s3:// source: remote reads each file in place by ranged "
                        "GETs (no local copy of it); fetch downloads the files the plan reads, "
                        "converting while they arrive; auto (default) fetches a file the "
                        "destination ranks would read more bytes of than it has (several ranks "
                        "reading the same slices) and reads the others in place (--dry_run "
                        "shows the choice per file)")
    p.add_argument("--max_memory", type=parse_size, default=None, metavar="SIZE",
                   help="host memory budget, e.g. 8G (default: half of the available memory)")
    p.add_argument("--verify", default=None, metavar="PATH",
                   help="check a converted set (local folder or obs:// / s3:// URL) against its "
                        "conversion_manifest.json: every file present, same size and CRC32, "
                        "nothing extra; exit 0 intact, 2 otherwise (converts nothing)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan and the expected peak memory, write nothing (from "
                        "strategies alone when no checkpoint is given: shapes in blocks)")
    p.add_argument("--work_dir", default=None, metavar="DIR",
                   help="local folder for staging remote inputs and a remote output (default: "
                        "beside a local output, else the working folder; never the system "
                        "temporary folder); removed at the end, and by a rerun after a kill")
    p.add_argument("--log_dir", default=None, metavar="DIR",
                   help=f"one log file per converting process, {LOG_NAME.format(index='<i>')} "
                        "(default: none; MindFormers' shell form writes them to ./log)")
    p.add_argument("--version", action="version", version=f"{PROG} {package_version()}",
                   help="print the version and exit")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="warnings and errors only on stderr (the result line stays on stdout)")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug lines too")


def _step(text: str):
    """--step as argparse takes it: its error is the one line of steps.parse_step."""
    try:
        return parse_step(text)
    except ReshardError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--step {text!r}: ")) from None


def _bool(text: str) -> bool:
    """A boolean as MindFormers' str2bool takes it (True/False, any case; also 1/0)."""
    low = text.strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not True or False")


def _none(value: str | None) -> str | None:
    """MindFormers writes "None" (and its shell script an empty string) for "no strategy"."""
    return None if value is None or value.strip() in ("", "None", "none", "null") else value


@contextlib.contextmanager
def _storage(flag: str, url: str):
    """Object-storage failures (obs_io raises builtin errors: FileNotFoundError, PermissionError,
    ValueError, OSError) become the user's one line naming the flag and URL."""
    try:
        yield
    except ReshardError:
        raise
    except (FileNotFoundError, PermissionError, ValueError, OSError) as e:
        text = one_line(e, (OSError, ValueError))
        if text.startswith(f"{url}: "):
            text = text[len(url) + 2:]
        raise ReshardError(f"{flag} {url}: {text}") from None


STAGE_NAME = ".transform-checkpoint-stage"
SOURCE_STAGE = "src_checkpoint"   # under the stage: the remote source files fetched


def stage_root(args) -> str:
    """Where remote inputs are staged and a remote output is written before its upload: under
    --work_dir, else beside a local output (`.<name>.transform-checkpoint-stage`, on the disk
    the output goes to; not inside it, where a staged source would overlap the output), else
    in the working folder. Never the system temporary folder, where a killed run's copy of up
    to the whole source would stay unbounded: the name is fixed, so a rerun finds and removes it."""
    if args.work_dir:
        return os.path.join(args.work_dir, STAGE_NAME)
    dst = args.dst_checkpoint
    if dst and not is_url(dst):
        parent, name = os.path.split(os.path.abspath(dst.rstrip("/")))
        return os.path.join(parent, f".{name}{STAGE_NAME}")
    return os.path.abspath(STAGE_NAME)


class _Stage:
    """The staging folder (stage_root), made on first use and removed at the end; one that a
    killed run left is removed first, one that a running transform-checkpoint uses is an error
    (its owner is recorded in it: OWNER)."""

    OWNER = ".owner"

    def __init__(self, root: str):
        self.root = root
        self._made = False

    def dir(self, name: str) -> str:
        if not self._made:
            if os.path.isdir(self.root):
                owner = os.path.join(self.root, self.OWNER)
                try:
                    with open(owner, encoding="utf-8") as f:
                        tag = f.read()
                except OSError:
                    tag = ""
                if tag and owner_running(tag, owner):
                    raise ReshardError(f"{self.root}: another transform-checkpoint (pid {tag.split('-')[0]}) "
                                       "is using this staging folder: wait for it, or give --work_dir")
                log.info("removing %s, left by an interrupted run", self.root)
                shutil.rmtree(self.root)
            os.makedirs(self.root)
            write_atomic(os.path.join(self.root, self.OWNER), owner_tag(), durable=False)
            self._made = True
        path = os.path.join(self.root, name.strip("-"))
        os.makedirs(path, exist_ok=True)
        return path

    def close(self) -> None:
        if self._made:
            shutil.rmtree(self.root, ignore_errors=True)


def _strategy_arg(flag: str, location: str | None, stage: _Stage) -> Strategy | None:
    """Parse a strategy once (a remote one: its strategy files only, copied down first)."""
    if location is None:
        return None
    if not is_url(location):
        return load_strategy(location)
    import obs_io
    mox = obs_io.file
    with _storage(flag, location):
        if mox.is_directory(location):
            names = [e.name for e in mox.list_entries(location) if e.is_file()]
            local = stage.dir(flag)
            mox.copy_parallel(location, local, file_list=strategy_files(names, location))
        elif mox.exists(location):
            local = os.path.join(stage.dir(flag), location.rstrip("/").rsplit("/", 1)[-1])
            mox.copy(location, local)
        else:
            raise ReshardError(f"{flag} {location} does not exist")
    try:
        return replace(load_strategy(local), source=location)
    except ReshardError as e:
        raise ReshardError(str(e).replace(local, location)) from None


def _source_arg(location: str, step=None) -> SourceSet:
    """The source checkpoint classified from its listing (nothing downloaded); step: --step."""
    if not is_url(location):
        if not os.path.exists(location):
            raise ReshardError(f"--src_checkpoint {location} does not exist")
        return find_sources(location, step=step)
    with _storage("--src_checkpoint", location):
        return find_remote_sources(location, step)


def _run_mindspore(a, source: SourceSet, src: Strategy | None, dst: Strategy | None,
                   stage: _Stage) -> None:
    """MindSpore's own conversion, for comparison, on the same input: the files this tool's rule
    chose (a step-named series' step, each rank folder's file) are linked into rank_<r>/ folders
    in the staging folder, with one merged strategy file (never in the user's folders); a remote
    source's chosen files are copied down first, a remote output published after. MindSpore is
    optional (the `mindspore` extra): without it this is one line, exit 2."""
    try:
        import mindspore as ms
    except ImportError as exc:
        raise ReshardError(f"--engine mindspore needs MindSpore ({exc}): install it "
                           "(pip install 'cloud-ckpt-transform[mindspore]') or use --engine stream") from None
    dst_dir = stage.dir("dst_checkpoint") if is_url(a.dst_checkpoint) else a.dst_checkpoint
    base = source.base
    if is_url(base):
        import obs_io
        with _storage("--src_checkpoint", a.src_checkpoint):
            local = stage.dir(SOURCE_STAGE)
            obs_io.file.copy_parallel(base, local, file_list=source.used_names())
        base = local
    tmp = stage.dir("mindspore")
    src_dir = base
    if not source.complete or len(source.files) == 1:   # rank_<r>/<the chosen file>
        src_dir = os.path.join(tmp, "src")
        for rank, name in source.files.items():
            os.makedirs(os.path.join(src_dir, f"rank_{rank}"))
            os.symlink(os.path.abspath(source.path_of(name, base)),
                       os.path.join(src_dir, f"rank_{rank}", name.rsplit("/", 1)[-1]))
    strategies = []
    for i, s in enumerate((src, dst)):
        path = None
        if s is not None:
            path = s.source
            if is_url(path) or os.path.isdir(path):
                path = os.path.join(tmp, f"strategy_{i}.ckpt")
                write_merged_strategy(s, path)
        strategies.append(path)
    ms.transform_checkpoints(src_dir, dst_dir, a.prefix, strategies[0], strategies[1],
                             process_num=a.process_num, output_format=registry.get(a.fmt).mindspore_name)
    if dst_dir != a.dst_checkpoint:
        import obs_io
        with _storage("--dst_checkpoint", a.dst_checkpoint):
            obs_io.file.copy_parallel(dst_dir, a.dst_checkpoint)


_INPUTS = ("src_checkpoint", "src_strategy", "dst_strategy")


def _check_urls(args) -> None:
    """Before anything is read or written: URLs name a bucket; a mistyped scheme (`obs:/x`) is
    never taken for a local folder."""
    for flag in (*_INPUTS, "dst_checkpoint", "dst_checkpoint_dir"):
        value = getattr(args, flag)
        if not value:
            continue
        try:
            if is_url(value):
                split_url(value)
            else:
                check_url(value)
        except (ReshardError, ValueError) as e:
            raise ReshardError(f"--{flag} {e}") from None


def convert_from_args(argv=None) -> int:
    """Parse, check every flag (one line naming the culprit), convert; 0 on success."""
    args = build_parser().parse_args(argv)
    _verbosity(args)
    if args.verify:
        return verify_set(args.verify)
    args.src_strategy, args.dst_strategy = _none(args.src_strategy), _none(args.dst_strategy)
    _check_flags(args)
    own = next((c for f in registry.formats() if args.src_checkpoint and (c := f.command(args))), None)
    if own is not None:   # a format that converts through its own path (Checkpoint 2.0)
        return own(args)
    source = _source_arg(args.src_checkpoint, args.step) if args.src_checkpoint else None
    _destination(args, source)
    stage = _Stage(stage_root(args))
    try:
        return _convert(args, stage, source)
    finally:
        stage.close()


def _check_flags(args) -> None:
    """Every flag on its own and against the others, before anything is read (one line
    naming the culprit); no destination flag: MindFormers' default, with a warning."""
    _check_run_flags(args)
    _check_destination_flags(args)
    check_prefix(args.prefix)
    _check_urls(args)
    for flag in ("log_dir", "work_dir"):
        if getattr(args, flag):
            check_writable(getattr(args, flag), f"--{flag} {getattr(args, flag)}")
    if args.step is not None and not args.src_checkpoint:
        raise ReshardError("--step chooses a file of --src_checkpoint, which is not given")


def _check_run_flags(args) -> None:
    """_check_flags: what to convert, how many processes, which engine."""
    if not args.src_checkpoint and not args.dry_run:
        raise ReshardError("--src_checkpoint is required")
    if args.dry_run and args.engine == "mindspore":
        raise ReshardError("--dry_run prints this engine's plan: it does not go with --engine mindspore")
    if args.process_num < 1:
        raise ReshardError(f"--process_num {args.process_num}: must be at least 1")
    if args.rank_id is not None and args.rank_id < 0:
        raise ReshardError(f"--rank_id {args.rank_id}: must be at least 0")
    if args.rank_id is not None and args.engine == "mindspore":
        raise ReshardError("--rank_id converts one block with this engine: it does not go with "
                           "--engine mindspore")
    if args.engine == "mindspore" and registry.get(args.fmt).mindspore_name is None:
        raise ReshardError(f"--engine mindspore: MindSpore cannot write --format {args.fmt}; use --engine stream")


def _check_destination_flags(args) -> None:
    """_check_flags: one destination flag at most; none: MindFormers' default, with a warning."""
    if args.dst_checkpoint and args.dst_checkpoint_dir:
        raise ReshardError("--dst_checkpoint and --dst_checkpoint_dir: give one (the latter adds "
                           "the checkpoint's name, as MindFormers does)")
    if not (args.dst_checkpoint or args.dst_checkpoint_dir or "").strip() and not args.dry_run:
        args.dst_checkpoint_dir = DEFAULT_DST
        log.warning("--dst_checkpoint_dir not given: writing under %s (MindFormers' default)",
                    os.path.abspath(DEFAULT_DST))


def _dst_flag(args) -> str:
    """The destination flag as the user gave it, for messages."""
    return "--dst_checkpoint" if not args.dst_checkpoint_dir else "--dst_checkpoint_dir"


def _destination(args, source: SourceSet | None) -> None:
    """args.dst_checkpoint as the conversion writes it (--dst_checkpoint_dir: MindFormers'
    layout, the checkpoint's name added), checked: not overlapping an input, writable."""
    if args.dst_checkpoint_dir and source is not None:   # MindFormers' layout
        args.dst_checkpoint = _join(args.dst_checkpoint_dir, source.name)
    if args.dst_checkpoint:   # a --dry_run is refused what the run would be refused
        flag = _dst_flag(args)
        check_output(args.dst_checkpoint, flag, {f"--{f}": getattr(args, f) for f in _INPUTS})
        if not is_url(args.dst_checkpoint) and not args.dry_run:
            check_writable(args.dst_checkpoint, f"{flag} {args.dst_checkpoint}")


def _check_no_stale_files(args, world: int) -> None:
    """Refuse an output folder holding checkpoint files this conversion would leave beside its
    own (reshard.run.stale_outputs: ranks beyond this world, other checkpoint files in rank
    folders): a loader would read them with the new set (MindFormers loads the last file in
    name order). Other files (a user's notes, a killed writer's temporary file, which the run
    sweeps) are not checkpoints. The job prunes its own output folder; a folder the user names
    is never emptied here."""
    if not args.dst_checkpoint:
        return
    import obs_io
    with _storage(_dst_flag(args), args.dst_checkpoint):
        try:
            names = [e.name for e in obs_io.file.list_entries(args.dst_checkpoint, recursive=True) if e.is_file()]
        except FileNotFoundError:   # not there yet
            return
    from .formats.checkpoint2.folder import ITERATION_PREFIX, TRACKER
    saved = sorted((n for n in names if n == TRACKER or n.startswith(ITERATION_PREFIX)),
                   key=lambda n: (n != TRACKER, n))   # the tracker named first
    if saved:   # its manifest would be this set's, its tracker still naming the other save
        raise ReshardError(f"{_dst_flag(args)} {args.dst_checkpoint} holds a Checkpoint 2.0 save "
                           f"({saved[0]}{', ...' if len(saved) > 1 else ''}): rank folders written "
                           "beside it would mix two saves in one folder; choose an empty folder or "
                           "remove it")
    stale = [n for n in reshard_run.stale_outputs(names, range(world), args.prefix, args.fmt)
             if registry.by_file(n.rsplit("/", 1)[-1]) is not None]   # what a loader would read
    if stale:
        shown = sorted(stale)
        raise ReshardError(f"{_dst_flag(args)} {args.dst_checkpoint} holds {len(stale)} file(s) this conversion "
                           f"does not write ({', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''}): "
                           "a loader would read them with the new ranks; choose an empty folder or "
                           "remove them")


@contextlib.contextmanager
def _claimed(args, source: SourceSet | None, src: Strategy | None, dst: Strategy | None,
             run_id: str | None = None):
    """--dst_checkpoint claimed for this run while it is written (reshard.claim): another
    conversion into it is refused at once. On object storage the claim is the first write
    there: a bucket that refuses it is found before anything is converted. run_id: the run's
    id when the caller defines it (default: inputs_id of these inputs)."""
    flag = _dst_flag(args)
    shown = f"{flag} {args.dst_checkpoint}"
    if not is_url(args.dst_checkpoint):   # made and tried before the claim is written there
        probe_writable(args.dst_checkpoint, f"--dst_checkpoint {args.dst_checkpoint}")
    claim = OutputClaim(args.dst_checkpoint,
                        run_id or inputs_id(conversion_inputs(source, src, dst, args.prefix, args.fmt)), PROG, shown)
    try:
        claim.acquire()
    except ReshardError:
        raise
    except (OSError, ValueError) as exc:   # obs_io's one-line errors: refused, missing bucket
        raise ReshardError(f"{shown}: cannot write there: {one_line(exc, (OSError, ValueError))}") from None
    try:
        yield claim
    finally:
        claim.release()


def verify_set(location: str) -> int:
    """--verify: a line per problem on stdout, then 0 (intact) or the one-line error (exit 2)."""
    try:
        if is_url(location):
            split_url(location)
        check_url(location)
    except (ReshardError, ValueError) as e:
        raise ReshardError(f"--verify {e}") from None
    import obs_io
    with _storage("--verify", location):
        if not obs_io.file.exists(location):
            raise ReshardError(f"--verify {location}: not found")
        if not obs_io.file.is_directory(location):
            raise ReshardError(f"--verify {location}: a file, not the folder of a converted set")
        verdict = integrity.verify(location)
    for line in verdict.lines():
        print(line)
    if not verdict.ok:
        raise ReshardError(verdict.summary())
    print(verdict.summary())
    return 0


def _block(rank_id: int, world: int, process_num: int) -> list[int]:
    """The destination ranks --rank_id converts, by MindFormers' rule (the job's rule too,
    reshard.blocks): --transform_process_num contiguous blocks of world/p ranks, each
    converted by its first rank; any other rank converts nothing there."""
    try:
        blocks = plan_blocks(world, process_num).blocks
    except ReshardError as e:
        raise ReshardError(f"--transform_process_num: {e}") from None
    for b in blocks:
        if b.leader == rank_id:
            return list(b.ranks)
    leaders = ", ".join(str(b.leader) for b in blocks)
    raise ReshardError(f"--rank_id {rank_id} leads no block: with world size {world} and "
                       f"--transform_process_num {process_num} the blocks start at ranks {leaders}")


def _convert(args, stage: _Stage, source: SourceSet | None) -> int:
    src = _strategy_arg("--src_strategy", args.src_strategy, stage)
    dst = _strategy_arg("--dst_strategy", args.dst_strategy, stage)
    world = dst.world_size if dst else 1
    if args.world_size is not None and world != args.world_size:
        raise ReshardError(f"--world_size {args.world_size} does not match the "
                           f"destination strategy's {world} ranks" if dst else
                           f"--world_size {args.world_size}: no destination strategy, so the result "
                           "is one complete checkpoint (1 rank); give --dst_strategy")
    _check_no_stale_files(args, world)
    if args.engine == "mindspore":
        with _claimed(args, source, src, dst) as claim:
            _run_mindspore(args, source, src, dst, stage)
            claim.check()
        return 0
    dst_ranks, process_num = None, args.process_num
    if args.rank_id is not None:
        dst_ranks, process_num = tuple(_block(args.rank_id, world, args.process_num)), 1
        log.info("--rank_id %d: converting its block, destination ranks %s, in one process",
                 args.rank_id, ranks_text(dst_ranks))
    upload = args.dst_checkpoint if is_url(args.dst_checkpoint) else None
    config = ReshardConfig(process_num, args.max_memory, durable=not upload,   # a remote output's
                           release_downloads=True, log_dir=args.log_dir)       # local copy only stages it
    request = _request(args, stage, source, src, dst, dst_ranks, upload)
    subscriber = _Subscriber(args, source, world)
    plan = reshard_run.prepare(request, config, subscriber)
    if args.dry_run:
        for part in plan.dump_parts(destination=args.dst_checkpoint):   # rank by rank
            print(part)
        budget, peak = memory_budget(plan, config)
        print(f"expected peak memory: {human_size(peak)} with {process_num} process(es) "
              f"(budget {human_size(budget)})"
              + ("" if plan.with_headers else "; a lower bound: no checkpoint read"))
        return 0
    report = reshard_run.run(request, config, subscriber, plan)
    if report.already:
        print(f"done: {upload} already holds this conversion (its {integrity.MANIFEST_NAME} "
              "matches the plan and the source's versions); nothing converted or uploaded")
        return 0
    print(f"done: wrote ranks {ranks_text(report.ranks_written)} to {args.dst_checkpoint}, "
          f"kept ranks {ranks_text(report.ranks_skipped)} (written by this same conversion before: "
          "size and time as recorded; --verify reads their bytes), "
          f"in {report.seconds:.2f}s; expected peak memory {human_size(report.expected_peak_bytes)}")
    return 0


class _CliStage(reshard_run.Stage):
    """The run's staging (stage_root): fetched source files under <stage>/src_checkpoint, a
    remote output written under <stage>/dst_checkpoint before (and while) it goes up; both
    made once the output is claimed, the stage removed at the end (convert_from_args)."""

    def __init__(self, stage: _Stage, source: SourceSet, upload: bool):
        remote = is_url(source.root)
        super().__init__(os.path.join(stage.root, SOURCE_STAGE) if remote else source.base)
        self.stage, self.upload = stage, upload

    def prepare(self, plan) -> list[str]:
        fetched = plan.files_in_mode("fetch")
        if fetched:   # the engine downloads them there while it converts (reshard.fetch)
            self.stage.dir(SOURCE_STAGE)
        if self.upload:
            self.stage.dir("dst_checkpoint")
        return fetched


def _request(args, stage: _Stage, source: SourceSet | None, src: Strategy | None,
             dst: Strategy | None, dst_ranks, upload: str | None) -> reshard_run.Request:
    """The engine's request for these flags: a remote source staged (only the files the plan
    fetches), a remote output written in the stage and uploaded while written, with records
    so that a rerun after Ctrl-C or a kill keeps what went up; one block (--rank_id) is not a
    set: no manifest, which would claim the set complete."""
    cli_stage = _CliStage(stage, source, bool(upload)) if source is not None else None
    dst_local = os.path.join(stage.root, "dst_checkpoint") if upload else args.dst_checkpoint
    if cli_stage is not None and cli_stage.root != source.base:
        _show_as(cli_stage.root, source.base)
    if upload:
        _show_as(dst_local, upload)
    record = None
    if args.rank_id is None and source is not None:
        record = reshard_run.SetRecord(args.src_checkpoint, {"src": args.src_strategy or "",
                                                             "dst": args.dst_strategy or ""})
    return reshard_run.Request(
        source, src, dst, dst_local or "", cli_stage, dst_ranks, args.prefix, args.fmt,
        PlanPolicy(args.allow_missing_params, args.keep_unnamed_params), args.source_mode,
        upload_to=upload, upload_records=bool(upload), record=record,
        claim=lambda: _claimed(args, source, src, dst))


class _Subscriber(reshard_run.Subscriber):
    """What the command shows of a run, and its store errors as one line naming the flag."""

    def __init__(self, args, source: SourceSet | None, world: int):
        self.args, self.source, self.world = args, source, world

    def storage(self, location: str):
        flag = "--src_checkpoint" if self.source is not None and location == self.source.root \
            else "--dst_checkpoint"
        return _storage(flag, location)

    def on_start(self, finished) -> None:
        args = self.args
        log.info("converting %s -> %s: destination ranks %s of %d%s", self.source.root,
                 args.dst_checkpoint, ranks_text(r.rank for r in finished.plan.ranks), self.world,
                 f"; per-process logs {os.path.join(args.log_dir, LOG_NAME.format(index='<i>'))}"
                 if args.log_dir else "")


# Local temporary folders and the location the user named for each: every line printed shows
# the latter (a remote source is staged, a remote output written locally first).
_SHOWN_AS: dict[str, str] = {}


def _show_as(local: str, shown: str) -> None:
    _SHOWN_AS[local.rstrip("/")] = shown.rstrip("/")


def _user_text(text: str) -> str:
    for local, shown in _SHOWN_AS.items():
        text = text.replace(local, shown)
    return text


def _silence(stream) -> None:
    """A stream whose reader is gone (`| head -1`): what is still written there goes nowhere,
    quietly (a later flush, even the interpreter's at exit, would fail again)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


def _same_file(a, b) -> bool:
    try:
        return os.path.sameopenfile(a.fileno(), b.fileno())
    except (OSError, ValueError, AttributeError):
        return False


class _Console(logging.Handler):
    """Every log line on stderr (looked up at each line), as aws-cli and s5cmd do: stdout holds
    only the command's result (the `done:` line, the --dry_run plan, --verify's findings)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        try:
            stream.write(_user_text(self.format(record)) + "\n")
            stream.flush()
        except BrokenPipeError:
            # `2>&1 | head -1`: the result's stdout is the same closed pipe, silenced with it
            # (the conversion goes on, its result is the files)
            if _same_file(stream, sys.stdout):
                _silence(sys.stdout)
            _silence(stream)
        except Exception:   # noqa: BLE001 - logging must never end the run
            self.handleError(record)


def _interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C stops the run (KeyboardInterrupt); further ones are ignored while the
    workers abort their ranks and temporary files are removed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _console():
    """The command's console: log lines on stderr at INFO until _verbosity sets -q/-v (the
    reshard logger and obs_io's throttling counts only, restored after: tests call main
    in-process), Ctrl-C handled by _interrupt."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    redact.protect_logs()   # secrets in a line (a URL's user info, a quoted argument) masked
    handler = _Console()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    loggers = (log, logging.getLogger("obs_io.retry"))   # the engine's, and throttling counted
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt) if main_thread else None
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        _SHOWN_AS.clear()


def _verbosity(args: argparse.Namespace) -> None:
    """-q: warnings and errors only on the console; -v: debug lines too. The logger stays at
    INFO or below, so per-process log files (--log_dir) keep their INFO lines."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    for handler in log.handlers:
        if isinstance(handler, _Console):
            handler.setLevel(level)
    log.setLevel(min(level, logging.INFO))


def run_command(prog: str, body) -> int:
    """Run body() as the command `prog`: bad input -> one line and 2; Ctrl-C -> one line and
    130 (nothing partial under a final name: a rerun resumes); a closed stdout (| head) -> 141
    quietly. Shared by both forms (this one and MindFormers' shell form)."""
    with _console():
        try:
            return body()
        except ReshardError as e:
            print(f"{prog}: error: {_user_text(one_line(e, (ReshardError,)))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: {INTERRUPTED}", file=sys.stderr)
            return 130
        except BrokenPipeError:   # stdout's reader is gone (a printed result): say nothing more there
            _silence(sys.stdout)
            return 141
        except OSError as e:   # the environment, not the input: a full disk, a refused folder
            log.debug("failed", exc_info=True)
            print(f"{prog}: error: {_user_text(one_line(e, (OSError,)))}", file=sys.stderr)
            return 2


def main(argv=None) -> int:
    """The command: which source file was chosen, the plan and each rank written are INFO
    lines on stderr, with the warnings; the result (`done: ...`, the --dry_run plan) on stdout;
    bad input one line on stderr and exit code 2; Ctrl-C one line and exit code 130."""
    return run_command(PROG, lambda: convert_from_args(argv))


if __name__ == "__main__":
    sys.exit(main())
