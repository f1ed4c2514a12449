"""ModelArts hyperparameters (`--name=value`) -> JobSpec, wherever they stand on the command line.

How the platform calls the entry (SPEC.md "How the platform really calls the entry"): ModelArts
appends every hyperparameter of the training-job form as `--name=value` at the END of the boot
command, so with `cloud-entry ... -- python run_mindformer.py --config {config}` they land after
the training command. The entry therefore reads its hyperparameters before the `--` AND out of
the training command, removes the ones it consumed from the training command (their effective
values reach it through the effective config; a stale `--load_checkpoint=obs://...` would
override it) and passes every other argument on. A name within a small edit distance of one of
ours is an error: a typo such as `--auto_trans_ckp=True` must not silently turn conversion off.

Why every value is parsed as a string first: ModelArts passes booleans as "True"/"false"/"1",
and argparse's `type=bool` reads "False" as true; converting after parsing lets each error name
its flag in one line instead of argparse's usage dump.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import obs_io
from cloud_entry import checkpoint2
from cloud_entry.config import load_yaml
from cloud_entry.errors import EntryError
from obs_io.oneline import OneLineParser
from obs_io.typos import closest, normal as _normal
from obs_io.urls import check as check_url
from obs_io.version import package_version
from reshard.cli import parse_size as reshard_parse_size
from reshard.errors import ReshardError
from reshard.formats import registry as formats
from reshard.sources import DEFAULT_PREFIX, check_prefix
from reshard.steps import Step, parse_step
from cloud_entry.jobspec import JobSpec

log = logging.getLogger(__name__)

RUN_MODES = ("train", "finetune", "eval", "predict")
# the registered checkpoint formats written as rank files (RESHARD_FORMATS adds more)
CKPT_FORMATS = tuple(n for n in formats.names() if not formats.get(n).own_path)
# Shortcuts for parallel_config.<key>; `--parallel_config.<key>=v` works for any key.
PARALLEL_KEYS = ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                 "context_parallel", "expert_parallel", "vocab_emb_dp", "use_seq_parallel",
                 "gradient_aggregation_group")
PARALLEL_SIZES = ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                  "context_parallel", "expert_parallel", "gradient_aggregation_group")
# Shortcuts for top-level config keys MindFormers reads there (not under parallel_config).
TOP_LEVEL_KEYS = ("micro_batch_interleave_num",)
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_bool(flag: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise EntryError(f"--{flag}={text!r}: expected True/true/1 or False/false/0")


def parse_int(flag: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise EntryError(f"--{flag}={text!r}: expected an integer") from None


def parse_seconds(flag: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise EntryError(f"--{flag}={text!r}: expected a number of seconds") from None
    if not 0 < value < math.inf:   # every wait has a bound
        raise EntryError(f"--{flag}={text!r}: must be a finite number > 0")
    return value


def parse_size(flag: str, text: str) -> int:
    """Bytes from '8G', '512MiB', '1000000': the engine's rule (reshard.cli.parse_size), so both
    tools read --max_memory alike."""
    try:
        return reshard_parse_size(text)
    except ValueError as exc:
        raise EntryError(f"--{flag}: {exc}") from None


def parse_step_flag(flag: str, text: str) -> Step:
    """A training step, `<epoch>_<step>` as in the checkpoint file names: the engine's rule."""
    try:
        return parse_step(text, f"--{flag}")
    except ReshardError as exc:
        raise EntryError(str(exc)) from None


def parse_choice(choices: Sequence[str]) -> Callable[[str, str], str]:
    def convert(flag: str, text: str) -> str:
        if text not in choices:
            raise EntryError(f"--{flag}={text!r}: expected one of {', '.join(choices)}")
        return text
    convert.choices = tuple(choices)  # type: ignore[attr-defined]   # --help shows them
    return convert


_NULLS = ("none", "null", "~")


def parse_scalar(flag: str, text: str) -> Any:
    """A config value from the command line: '2' -> 2, '012' -> 12, '1e-4' -> 0.0001,
    'True'/'false' -> bool, 'None'/'null' -> None, '[1, 2]' / '{a: 1}' -> a YAML list or
    mapping; anything else stays the text as given (`llama 7b: v2`, `#x`): YAML would read
    those as a mapping, a comment or an octal number, which no user means."""
    t = text.strip()
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in _NULLS:
        return None
    if t[:1] in "[{":   # bounded: an alias bomb fits on a command line too
        return load_yaml(t, f"--{flag}", invalid=f"--{flag}={text!r}: not a YAML list or mapping")
    return text


def _text(flag: str, text: str) -> str:
    return text.strip()


def _location(flag: str, text: str) -> str:
    """A path or URL; `None`/`null` (what MindFormers' scripts and ModelArts forms pass for "no
    strategy", "no checkpoint") clears it like an empty value."""
    t = text.strip()
    return "" if t.lower() in _NULLS else t


def _names(flag: str, text: str) -> tuple[str, ...]:
    return tuple(n.strip().lstrip("-") for n in text.split(",") if n.strip())


def _launch_cmd(flag: str, text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise EntryError(f"--{flag}={text!r}: {exc}") from None


@dataclass(frozen=True)
class Flag:
    """One hyperparameter: the parser, `--help` and configs/modelarts_form.yaml are made from it.
    `default`: what `--help` says happens when the flag is not given."""
    field: str                                  # JobSpec field
    convert: Callable[[str, str], Any]
    help: str
    default: str
    metavar: str = ""                           # --help's name of the value; else by its type

    @property
    def form_type(self) -> str:
        """The type of the ModelArts training-job form's hyperparameter field."""
        return _FORM_TYPES.get(self.convert, "String")

    @property
    def value_name(self) -> str:
        """The value's type as `--help` shows it: BOOL, INT, SECONDS, SIZE, a choice, ..."""
        if self.metavar:
            return self.metavar
        choices = getattr(self.convert, "choices", None)
        return "{" + ",".join(choices) + "}" if choices else _METAVARS.get(self.convert, "TEXT")

    @property
    def help_text(self) -> str:
        return f"{self.help} (default: {self.default})"


# Our hyperparameters. Order is the --help order.
FLAGS: dict[str, Flag] = {
    "config": Flag("config", _text, "base MindFormers run config: a path, a name in configs/, or a URL "
                   "(also taken from the training command's own --config)", "none: the hyperparameters "
                   "alone", "PATH|URL"),
    "load_checkpoint": Flag("load_checkpoint", _location, "source checkpoint: complete file, folder of complete "
                            "files, or a folder of rank_<r>/ folders; local, obs:// or s3://", "the config's",
                            "PATH|URL"),
    "src_strategy_path_or_dir": Flag("src_strategy", _location, "strategy of a distributed source: merged file, "
                                     "folder of per-rank files, or one rank's file", "the config's", "PATH|URL"),
    "dst_strategy": Flag("dst_strategy", _location, "destination strategy (file, folder or URL); empty: "
                         "a strategy pass of the training command writes it", "empty", "PATH|URL"),
    "auto_trans_ckpt": Flag("auto_trans_ckpt", parse_bool, "convert load_checkpoint to this job's layout",
                            "the config's"),
    "transform_process_num": Flag("transform_process_num", parse_int, "rank blocks converted in parallel "
                                  "(must divide the world size)", "the config's, else 1"),
    "transform_timeout": Flag("transform_timeout", parse_seconds, "bound in seconds of every wait for "
                              "other nodes or processes", "3600"),
    "max_memory": Flag("max_memory", parse_size, "host memory budget of the conversion, e.g. 8G",
                       "half the available memory"),
    "npu_num_per_node": Flag("npu_num_per_node", parse_int, "cards per node", "from the platform"),
    "node_num": Flag("node_num", parse_int, "node count", "from the platform"),
    "node_index": Flag("node_index", parse_int, "this node's index", "from the platform"),
    "only_save_strategy": Flag("only_save_strategy", parse_bool, "MindFormers: compile, save strategy, exit",
                               "the config's"),
    "load_ckpt_format": Flag("load_ckpt_format", parse_choice(CKPT_FORMATS), "format of the checkpoint files",
                             f"the config's, else {formats.DEFAULT}"),
    "use_parallel": Flag("use_parallel", parse_bool, "False: single-card (complete checkpoint)", "the config's"),
    "run_mode": Flag("run_mode", parse_choice(RUN_MODES), "MindFormers' run mode", "the config's"),
    "output_dir": Flag("output_dir", _text, "local output folder", "the config's, else ./output", "PATH"),
    "remote_save_url": Flag("remote_save_url", _location, "object-storage folder for the converted checkpoint, "
                            "strategies, markers and logs", "--train_url when it is a URL", "URL"),
    "shared_dir": Flag("shared_dir", _text, "a folder every node sees (instead of object storage)", "none",
                       "PATH"),
    "work_dir": Flag("work_dir", _text, "local scratch folder", "<output_dir>/cloud_entry", "PATH"),
    "prefix": Flag("prefix", _text, "converted file name prefix", DEFAULT_PREFIX),
    "run_id": Flag("run_id", _text, "id every node of this run shares", "from the platform and the inputs"),
    "transform_only": Flag("transform_only", parse_bool, "stop after the conversion, launch nothing", "False"),
    "overlap": Flag("overlap", parse_bool, "upload each converted rank while it is written and the next "
                    "converts (False: upload after the whole conversion)", "True"),
    "keep_source_cache": Flag("keep_source_cache", parse_bool, "keep the downloaded source checkpoint "
                              "on local disk (False: each file removed once its ranks are written)", "False"),
    "load_checkpoint_step": Flag("load_checkpoint_step", parse_step_flag, "the training step to read where "
                                 "load_checkpoint's files are named <prefix>-<epoch>_<step>.ckpt, e.g. 10_2",
                                 "the latest, which every rank folder must hold", "EPOCH_STEP"),
    "allow_missing_params": Flag("allow_missing_params", parse_bool, "convert without parameters the "
                                 "destination strategy names but the checkpoint lacks, for the network to "
                                 "initialise (optimizer states and PET/LoRA adapters are always skipped)",
                                 "False: an error"),
    "keep_unnamed_params": Flag("keep_unnamed_params", parse_bool, "write parameters the destination "
                                "strategy does not name whole into every rank", "False: an error"),
    "checkpoint2_mode": Flag("checkpoint2_mode", parse_choice(checkpoint2.MODES), "a checkpoint: "
                             "section on a Checkpoint 2.0 load_checkpoint: preshard converts it to the "
                             "job's layout (--dst_strategy) before the launch; online gives each node "
                             "the source files its ranks read, for MindFormers to reshard at load",
                             "preshard with --dst_strategy, else online"),
    "launch_cmd": Flag("launch_cmd", _launch_cmd, "the training command as one string (or put it after --)",
                       "what follows --", "COMMAND"),
    "pass_args": Flag("pass_args", _names, "comma-separated argument names of the training command that "
                      "look like typos of ours but are not (passed on as they are)", "none", "NAME,..."),
    "quiet": Flag("quiet", parse_bool, "warnings and errors only on the console (-q; the log file keeps "
                  "everything; never passed on to the training command)", "False"),
    "verbose": Flag("verbose", parse_bool, "debug lines on the console too (-v; never passed on to the "
                    "training command)", "False"),
}
# Switches: `-q`/`--quiet` alone means True. In the training command only `--quiet=VALUE` (the form
# ModelArts appends) is ours: a bare `--quiet` there is the command's own flag.
SWITCHES = {"quiet": "-q", "verbose": "-v"}
_FORM_TYPES: dict[Callable[[str, str], Any], str] = {
    parse_bool: "Boolean", parse_int: "Integer", parse_seconds: "Float"}
_METAVARS: dict[Callable[[str, str], Any], str] = {
    parse_bool: "BOOL", parse_int: "INT", parse_seconds: "SECONDS", parse_size: "SIZE"}
OWN_NAMES = frozenset(FLAGS) | frozenset(PARALLEL_KEYS) | frozenset(TOP_LEVEL_KEYS)

# Arguments the platform adds, and what they mean to it. All are passed on to the training command.
PLATFORM_ARGS = {
    "data_url": "the job's input data (OBS URL or the local folder ModelArts synced it to)",
    "train_url": "the job's output location: the default remote_save_url when it is on OBS",
    "init_method": "the rendezvous address ModelArts gives multi-node jobs",
}
# MindFormers' run_mindformer.py arguments: passed on, never taken for typos of ours.
MINDFORMERS_ARGS = frozenset((
    "config", "mode", "device_id", "device_target", "run_mode", "do_eval", "train_dataset_dir",
    "eval_dataset_dir", "predict_data", "modal_type", "predict_batch_size", "adapter_id",
    "load_checkpoint", "src_strategy_path_or_dir", "auto_trans_ckpt", "transform_process_num",
    "only_save_strategy", "resume_training", "strategy_load_checkpoint", "remote_save_url", "seed",
    "use_parallel", "profile", "options", "epochs", "batch_size", "gradient_accumulation_steps",
    "sink_mode", "num_samples", "output_dir", "register_path"))
CONFIG_PLACEHOLDER = "{config}"
_ARG = re.compile(r"^--([A-Za-z_][\w.-]*)(?:=(.*))?$", re.DOTALL)
_DOTTED = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w-]+)+$")


class _ArgumentsError(EntryError):
    def __init__(self, message: str):
        super().__init__(f"arguments: {message}")


class _Parser(OneLineParser):
    """argparse's usage dump on a bad flag becomes our one line naming it."""
    error_type = _ArgumentsError


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cloud-entry", allow_abbrev=False,
        description="Boot command of a training job: config, checkpoint conversion, launch. "
                    "Hyperparameters (--name=value) may stand before the training command or after "
                    "it, where ModelArts appends them; `{config}` in the training command becomes "
                    "the effective config path.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cloud-entry {package_version()}",
                        help="print the version and exit")
    for flag, spec in FLAGS.items():
        names = [SWITCHES[flag], f"--{flag}"] if flag in SWITCHES else [f"--{flag}"]
        switch = {"nargs": "?", "const": "True"} if flag in SWITCHES else {}
        parser.add_argument(*names, dest=flag, default=None, metavar=spec.value_name, help=spec.help_text,
                            **switch)
    for key in PARALLEL_KEYS:
        parser.add_argument(f"--{key}", dest=f"parallel_config.{key}", default=None,
                            metavar="INT" if key in PARALLEL_SIZES else "BOOL",
                            help=f"sets parallel_config.{key} of the config (default: the config's)")
    for key in TOP_LEVEL_KEYS:
        parser.add_argument(f"--{key}", dest=key, default=None, metavar="INT",
                            help=f"sets the top-level config key {key} (default: the config's)")
    return parser


EXAMPLES = """\
Any other --a.b.c=VALUE sets that dotted config key. Arguments the platform adds (--data_url,
--train_url, --init_method) and every argument that is not ours reach the training command.

examples:
  # ModelArts boot command (the platform appends the form's hyperparameters at the end)
  cloud-entry -- python /home/ma-user/mindformers/run_mindformer.py --config {config}

  # complete checkpoint -> 8 ranks dp2 mp2 pp2, two rank blocks converted in parallel
  cloud-entry --config=run_llama_7b.yaml --load_checkpoint=obs://bucket/llama_7b/llama_7b.ckpt \\
      --dst_strategy=obs://bucket/strategy_dp2mp2pp2/ --auto_trans_ckpt=True \\
      --transform_process_num=2 --remote_save_url=obs://bucket/job_out \\
      -- python run_mindformer.py --config {config}

  # those 8 ranks -> 4 ranks dp1 mp2 pp2, converting only (no training command)
  cloud-entry --config=run_llama_7b_dp1mp2pp2.yaml \\
      --load_checkpoint=obs://bucket/job_out/transformed_checkpoint/llama_7b/ \\
      --src_strategy_path_or_dir=obs://bucket/job_out/strategy/ \\
      --dst_strategy=obs://bucket/strategy_dp1mp2pp2/ --auto_trans_ckpt=True --transform_only=True

  # later, anywhere: is a converted set complete and intact? (exit 0, or 2 naming what is not)
  cloud-entry verify obs://bucket/job_out/transformed_checkpoint/llama_7b

  # 4 ranks -> one complete checkpoint, single-card predict
  cloud-entry --config=predict_llama_7b.yaml --load_checkpoint=obs://bucket/out4/transformed_checkpoint/llama_7b/ \\
      --src_strategy_path_or_dir=obs://bucket/out4/strategy/ --auto_trans_ckpt=True \\
      -- python run_mindformer.py --config {config}
"""


def split_launch(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first bare `--` is the training command (and ModelArts' appended
    hyperparameters, which `take_from_launch` picks out)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _name(token: str) -> str | None:
    m = _ARG.match(token)
    return m.group(1) if m else None


def _is_ours(name: str | None, value: str | None) -> bool:
    """take_from_launch: one of our hyperparameters (a switch only with a value: a bare --quiet
    is the command's own, as is a bare --config), or a dotted config override with a value."""
    if name is None or name == "config" or (name in SWITCHES and value is None):
        return False
    return name in OWN_NAMES or (_DOTTED.match(name) is not None and value is not None)


def take_from_launch(launch: Sequence[str]) -> tuple[list[str], list[str], str | None]:
    """Split the training command into (its own arguments, our hyperparameters, its --config value).

    Ours are `--name=value` / `--name value` with one of our names (or a dotted override
    `--a.b=v`), anywhere in it: ModelArts appends them at the end, and one written into the
    command by hand would override the effective config just the same. The command's own
    `--config X` is kept, pointed at the effective config (`{config}`); X is returned, to serve
    as the base config when none is given."""
    kept: list[str] = []
    ours: list[str] = []
    config: str | None = None
    has_placeholder = any(CONFIG_PLACEHOLDER in t for t in launch)
    i = 0
    while i < len(launch):
        token = launch[i]
        m = _ARG.match(token)
        name, value = (m.group(1), m.group(2)) if m else (None, None)
        spaced = value is None and i + 1 < len(launch) and not launch[i + 1].startswith("--")
        if name == "config" and (value is not None or spaced):
            width = 1 if value is not None else 2
            value = value if value is not None else launch[i + 1]
            if CONFIG_PLACEHOLDER in value:
                kept.extend(launch[i:i + width])           # already ours: verbatim
            else:
                config = value
                if not has_placeholder:
                    kept.append(f"--config={CONFIG_PLACEHOLDER}")
                    has_placeholder = True
            i += width
        elif _is_ours(name, value):
            ours.append(token if value is not None or not spaced else f"--{name}={launch[i + 1]}")
            i += 1 if (value is not None or not spaced) else 2
        else:   # the command's own, a bare --config and a bare switch (--quiet) too
            kept.append(token)
            i += 1
    return kept, ours, config


# Names users bring from elsewhere for one of ours: transform-checkpoint's and MindFormers'
# transform_checkpoint.py flags, and short forms.
ALIASES = {"src_strategy": "src_strategy_path_or_dir", "src_checkpoint": "load_checkpoint",
           "dst_strategy_path_or_dir": "dst_strategy", "npu_num": "npu_num_per_node",
           "process_num": "transform_process_num", "load_ckpt": "load_checkpoint"}


def near_miss(name: str, allowed: Sequence[str] = ()) -> str | None:
    """The hyperparameter of ours that `name` is probably a typo of (closest()), or one of the
    ALIASES users bring from other tools; None for ours, the platform's, MindFormers' own
    arguments, names in `allowed` (--pass_args) and dotted keys (checked against the config)."""
    if name in OWN_NAMES or name in PLATFORM_ARGS or name in MINDFORMERS_ARGS or name in allowed \
            or "." in name:
        return None
    return ALIASES.get(_normal(name)) or closest(name, sorted(OWN_NAMES))


def _check_typos(names: Sequence[str], allowed: Sequence[str]) -> None:
    for name in names:
        known = near_miss(name, allowed)
        if known:
            raise EntryError(f"unknown argument --{name}: did you mean --{known}? (if it is the training "
                             f"command's own, add --pass_args={name})")


def _check_parallel(parallel: dict[str, Any]) -> None:
    for key, value in parallel.items():
        if key in PARALLEL_SIZES and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise EntryError(f"--{key}={value!r}: expected an integer >= 1")
        if key not in PARALLEL_SIZES and not isinstance(value, bool):
            raise EntryError(f"--{key}={value!r}: expected True/true/1 or False/false/0")


def parse_args(argv: Sequence[str]) -> JobSpec:
    """The platform's command line -> JobSpec. A hyperparameter given twice: the later wins, as
    argparse and MindFormers read it (ModelArts' appended ones come last).

    Args:
        argv: the command line after the program's name: the entry's flags and
            hyperparameters, then the launch command (after `--`, or --launch_cmd).

    Returns:
        The JobSpec.

    Raises:
        EntryError: an unknown or malformed flag, naming it.
    """
    own, launch = split_launch(argv)
    launch, appended, launch_config = take_from_launch(launch)
    parser = build_parser()
    ns, unknown = parser.parse_known_args(own + appended)
    overrides, passthrough = _dotted_overrides(unknown)
    values = _flag_values(ns)
    if values.get("launch_cmd"):   # --launch_cmd="...": its hyperparameters are ours the same way
        launch_cmd, inner, inner_config = take_from_launch(values["launch_cmd"])
        if inner:   # again, as if the command had been written after `--`
            rest = [a for i, a in enumerate(own) if not a.startswith("--launch_cmd")
                    and not (i and own[i - 1] == "--launch_cmd")]
            return parse_args([*rest, *inner, "--", *launch_cmd, *launch])
        values["launch_cmd"] = tuple(launch_cmd)
        launch_config = inner_config if launch_config is None else launch_config
    if launch_config is not None:
        values["config"] = launch_config
    parallel = {key: parse_scalar(f"parallel_config.{key}", getattr(ns, f"parallel_config.{key}"))
                for key in PARALLEL_KEYS if getattr(ns, f"parallel_config.{key}") is not None}
    _check_parallel(parallel)
    for key in TOP_LEVEL_KEYS:
        if getattr(ns, key) is not None:
            overrides[key] = parse_scalar(key, getattr(ns, key))
    others = [*launch, *(values.get("launch_cmd") or ()), *passthrough]
    _check_typos([n for n in map(_name, others) if n], values.get("pass_args", ()))
    platform = _platform_args(others)
    _launch_cmd(values, launch, passthrough)
    if "remote_save_url" not in values and obs_io.is_remote(platform.get("train_url", "")):
        values["remote_save_url"] = platform["train_url"]
        log.info("remote_save_url from --train_url")
    spec = JobSpec(**values, parallel=parallel, overrides=overrides, passthrough=tuple(passthrough),
                   platform=platform)
    validate(spec)
    return spec


def _dotted_overrides(unknown: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """parse_args: of the arguments argparse does not know, (the dotted config overrides
    `--a.b=v`, parsed; the others, passed on to the training command)."""
    overrides: dict[str, Any] = {}
    passthrough: list[str] = []
    for item in unknown:
        m = _ARG.match(item)
        if m and _DOTTED.match(m.group(1)) and m.group(2) is not None:
            overrides[m.group(1)] = parse_scalar(m.group(1), m.group(2))
        else:
            passthrough.append(item)
    return overrides, passthrough


def _flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    """parse_args: JobSpec field -> value of each of our flags given (FLAGS' conversions)."""
    values: dict[str, Any] = {}
    for flag, spec in FLAGS.items():
        text = getattr(ns, flag)
        if text is not None:
            values[spec.field] = spec.convert(flag, text)
    return values


def _platform_args(others: Sequence[str]) -> dict[str, str]:
    """parse_args: the platform's arguments with a value (PLATFORM_ARGS: --train_url, ...)."""
    platform = {}
    for item in others:
        m = _ARG.match(item)
        if m and m.group(1) in PLATFORM_ARGS and m.group(2) is not None:
            platform[m.group(1)] = m.group(2)
    return platform


def _launch_cmd(values: dict[str, Any], launch: list[str], passthrough: list[str]) -> None:
    """parse_args: the training command (after `--`, else --launch_cmd), the arguments none of
    ours passed on to it; without a command those are ignored with a warning."""
    if launch:
        values["launch_cmd"] = tuple(launch)
    if values.get("launch_cmd"):
        values["launch_cmd"] = tuple(values["launch_cmd"]) + tuple(passthrough)
    elif passthrough:
        for item in passthrough:
            log.warning("no training command to pass %s on to: ignored", item.split("=", 1)[0])


def locations(spec: JobSpec) -> list[tuple[str, str | None]]:
    """Every path or URL the user gave, under the flag name they gave it with."""
    return [("config", spec.config), ("load_checkpoint", spec.load_checkpoint),
            ("src_strategy_path_or_dir", spec.src_strategy), ("dst_strategy", spec.dst_strategy),
            ("output_dir", spec.output_dir), ("remote_save_url", spec.remote_save_url),
            ("shared_dir", spec.shared_dir), ("work_dir", spec.work_dir)]


def validate(spec: JobSpec) -> None:
    """Checks that need no file or network: each names its flag."""
    for flag, value in (("transform_process_num", spec.transform_process_num),
                        ("npu_num_per_node", spec.npu_num_per_node), ("node_num", spec.node_num)):
        if value is not None and value < 1:
            raise EntryError(f"--{flag}={value}: must be >= 1")
    if spec.node_index is not None and spec.node_index < 0:
        raise EntryError(f"--node_index={spec.node_index}: must be >= 0")
    try:
        check_prefix(spec.prefix)   # the engine's rule: a path in it would write outside the output
    except ValueError as exc:
        raise EntryError(str(exc)) from None
    for flag, value in locations(spec):
        try:   # `obs:/x` is never a local folder named obs: (URLs are parsed whole by the plan)
            if value and not obs_io.is_remote(value):
                check_url(value)
        except ValueError as exc:
            raise EntryError(f"--{flag}: {exc}") from None
    if spec.quiet and spec.verbose:
        raise EntryError("-q/--quiet and -v/--verbose exclude each other")
    if not spec.transform_only and not spec.launch_cmd:
        raise EntryError("no launch command: put it after `--` or pass --launch_cmd "
                         "(or --transform_only=True)")
    if spec.launch_cmd and not any(CONFIG_PLACEHOLDER in part for part in spec.launch_cmd):
        raise EntryError(f"the training command {' '.join(spec.launch_cmd[:3])} ... takes no config from "
                         f"the entry: add `--config {CONFIG_PLACEHOLDER}` (or `{CONFIG_PLACEHOLDER}` where "
                         "it reads its config), or it would not load the converted checkpoint")
