"""`transform-checkpoint`: the offline tool, with the flags of MindFormers' transform_checkpoint.py.

Bad input -> one line on stderr naming the culprit, exit code 2, nothing written. Remote
(obs:// / s3://) inputs: strategies are copied down, the source is classified from its listing
and only the files the plan reads are copied to a local temporary folder; a remote output is
written locally and published by obs_io after a successful conversion. obs_io is imported only
then, so the engine itself sees local paths alone.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import replace

from .api import (ReshardError, complete_plan, execute, find_sources, load_strategy,
                  memory_budget, plan_from_strategies, write_merged_strategy)
from .sources import (SourceEntry, SourceSet, check_output, check_prefix, classify, is_url, split_url,
                      strategy_files)
from .strategy import Strategy

from obs_io.oneline import OneLineParser, one_line

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


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="transform-checkpoint",
                       description="Convert a MindSpore checkpoint between parallel layouts.")
    p.add_argument("--src_checkpoint", default=None,
                   help="complete file, folder of complete files, or model_dir with rank_<r>/")
    p.add_argument("--src_strategy", default=None,
                   help="strategy file or folder of the source (empty/None: complete)")
    p.add_argument("--dst_checkpoint", default=None, help="output folder")
    p.add_argument("--dst_strategy", default=None,
                   help="strategy file or folder of the destination (empty/None: complete)")
    p.add_argument("--prefix", default="checkpoint_")
    p.add_argument("--world_size", type=int, default=None,
                   help="destination rank count; checked against the destination strategy")
    p.add_argument("--process_num", type=int, default=1)
    p.add_argument("--format", dest="fmt", choices=("ckpt", "safetensors"), default="ckpt")
    p.add_argument("--engine", choices=("stream", "mindspore"), default="stream",
                   help="mindspore: run MindSpore's own transform_checkpoints (for comparison)")
    p.add_argument("--max_memory", type=parse_size, default=None,
                   help="host memory budget, e.g. 8G (default: half of the available memory)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan (from strategies alone when no checkpoint is given)")
    p.add_argument("--log_dir", default=None, help="one log file per converting process")
    return p


def _none(value: str | None) -> str | None:
    return None if value in (None, "", "None", "none") else value


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


class _Stage:
    """A temporary local folder for remote inputs and a remote output, made on first use."""

    def __init__(self):
        self._tmp: tempfile.TemporaryDirectory | None = None

    def dir(self, name: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="reshard-stage-")
        path = os.path.join(self._tmp.name, name.strip("-"))
        os.makedirs(path, exist_ok=True)
        return path

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


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


def _source_arg(location: str) -> SourceSet:
    """The source checkpoint classified from its listing (nothing downloaded)."""
    if not is_url(location):
        if not os.path.exists(location):
            raise ReshardError(f"--src_checkpoint {location} does not exist")
        return find_sources(location)
    import obs_io
    mox = obs_io.file
    with _storage("--src_checkpoint", location):
        if mox.is_directory(location):
            is_file = False
            entries = [SourceEntry(e.name + ("/" if e.is_dir() else ""), e.length, e.mtime_nsec)
                       for e in mox.list_entries(location, recursive=True)]
        elif mox.exists(location):
            is_file = True
            st = mox.stat(location)
            entries = [SourceEntry(location.rstrip("/").rsplit("/", 1)[-1], st.length,
                                   st.mtime_nsec)]
        else:
            raise ReshardError(f"--src_checkpoint {location} does not exist")
    source = classify(location, entries, is_file=is_file)
    if source.needs_index:
        with _storage("--src_checkpoint", location):
            source = source.with_index(mox.read(source.path_of(source.index_name), binary=True))
    return source


def _downloader(source: SourceSet, local_root: str):
    """fetch(names): the named source files copied to local_root (their relative names kept)."""
    def fetch(names: list[str]) -> None:
        import obs_io
        log.info("downloading %d source file(s) from %s: %s", len(names), source.base,
                 ", ".join(names))
        with _storage("--src_checkpoint", source.root):
            obs_io.file.copy_parallel(source.base, local_root, file_list=list(names))
    return fetch


def _run_mindspore(a, src: Strategy | None, dst: Strategy | None, stage: _Stage) -> None:
    """MindSpore's own conversion, for comparison: it needs rank_<r>/ folders and one merged
    strategy file, which are prepared in a temporary folder (never in the user's); a remote
    source is copied down whole, a remote output published after."""
    import mindspore as ms
    src_dir, dst_dir = a.src_checkpoint, a.dst_checkpoint
    if is_url(src_dir):
        import obs_io
        with _storage("--src_checkpoint", src_dir):
            local = os.path.join(stage.dir("src_checkpoint"), src_dir.rstrip("/").rsplit("/", 1)[-1])
            (obs_io.file.copy_parallel if obs_io.file.is_directory(src_dir) else obs_io.file.copy)(
                src_dir, local)
        src_dir = local
    if is_url(dst_dir):
        dst_dir = stage.dir("dst_checkpoint")
    with tempfile.TemporaryDirectory(prefix="reshard-ms-") as tmp:
        if os.path.isfile(src_dir):
            os.makedirs(os.path.join(tmp, "src", "rank_0"))
            os.symlink(os.path.abspath(src_dir),
                       os.path.join(tmp, "src", "rank_0", os.path.basename(src_dir)))
            src_dir = os.path.join(tmp, "src")
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
                                 process_num=a.process_num, output_format=a.fmt)
    if dst_dir != a.dst_checkpoint:
        import obs_io
        with _storage("--dst_checkpoint", a.dst_checkpoint):
            obs_io.file.copy_parallel(dst_dir, a.dst_checkpoint)


def _check_locations(args) -> None:
    """Before anything is read or written: URLs name a bucket, and the output is none of the
    inputs (nor inside one, nor holding one)."""
    flags = ("src_checkpoint", "src_strategy", "dst_strategy", "dst_checkpoint")
    for flag in flags:
        value = getattr(args, flag)
        if value and is_url(value):
            try:
                split_url(value)
            except ReshardError as e:
                raise ReshardError(f"--{flag} {e}") from None
    if args.dst_checkpoint and not args.dry_run:
        check_output(args.dst_checkpoint, "--dst_checkpoint",
                     {f"--{f}": getattr(args, f) for f in flags[:3]})


def convert_from_args(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.src_strategy, args.dst_strategy = _none(args.src_strategy), _none(args.dst_strategy)
    for flag in ("src_checkpoint", "dst_checkpoint"):
        if getattr(args, flag) is None and not args.dry_run:
            raise ReshardError(f"--{flag} is required")
    if args.dry_run and args.engine == "mindspore":
        raise ReshardError("--dry_run prints this engine's plan: it does not go with --engine mindspore")
    if args.process_num < 1:
        raise ReshardError(f"--process_num {args.process_num}: must be at least 1")
    if args.dst_checkpoint is not None and not args.dst_checkpoint.strip():
        raise ReshardError("--dst_checkpoint is empty")
    check_prefix(args.prefix)
    _check_locations(args)
    stage = _Stage()
    try:
        return _convert(args, stage)
    finally:
        stage.close()


def _convert(args, stage: _Stage) -> int:
    src = _strategy_arg("--src_strategy", args.src_strategy, stage)
    dst = _strategy_arg("--dst_strategy", args.dst_strategy, stage)
    if args.world_size is not None:
        world = dst.world_size if dst else 1
        if world != args.world_size:
            raise ReshardError(f"--world_size {args.world_size} does not match the "
                               f"destination strategy's {world} ranks")
    if args.engine == "mindspore":
        _run_mindspore(args, src, dst, stage)
        return 0
    source = _source_arg(args.src_checkpoint) if args.src_checkpoint else None
    for note in source.notes if source else ():
        log.log(note.level, "%s", note.text)
    plan = plan_from_strategies(source, src, dst, prefix=args.prefix, fmt=args.fmt)
    local_root = None
    if source is not None:
        fetch = None
        local_root = source.base
        if is_url(source.root):
            local_root = stage.dir("src_checkpoint")
            fetch = _downloader(source, local_root)
        plan = complete_plan(plan, local_root, fetch=fetch)
        for note in plan.notes:
            log.info("%s", note)
    if args.dry_run:
        print(plan.dump())
        _, peak = memory_budget(plan, args.process_num, args.max_memory)
        print(f"expected peak memory: {peak / 2**20:.1f} MiB")
        return 0
    upload = args.dst_checkpoint if is_url(args.dst_checkpoint) else None
    dst_local = stage.dir("dst_checkpoint") if upload else args.dst_checkpoint
    report = execute(plan, local_root, dst_local, process_num=args.process_num,
                     max_memory=args.max_memory, log_dir=args.log_dir)
    print(f"wrote ranks {report.ranks_written}, skipped (already complete) "
          f"{report.ranks_skipped}; expected peak {report.expected_peak_bytes / 2**20:.1f}"
          f" MiB; {report.seconds:.2f}s")
    if upload:
        import obs_io
        with _storage("--dst_checkpoint", upload):
            obs_io.file.copy_parallel(dst_local, upload, file_list=report.files_written)
    return 0


class _ByLevel(logging.Handler):
    """INFO lines on stdout, warnings and errors on stderr (looked up at each line)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:   # noqa: BLE001 - logging must never end the run
            self.handleError(record)


def main(argv=None) -> int:
    """The command: which source file was chosen, the plan and each rank written are INFO
    lines on stdout; warnings on stderr; bad input one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    handler = _ByLevel()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return convert_from_args(argv)
    except ReshardError as e:
        print(f"transform-checkpoint: error: {one_line(e, (ReshardError,))}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
