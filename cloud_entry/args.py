"""ModelArts hyperparameters (`--name=value`) -> JobSpec.

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
from typing import Any, Callable, Sequence

import yaml

from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec

log = logging.getLogger(__name__)

RUN_MODES = ("train", "finetune", "eval", "predict")
CKPT_FORMATS = ("ckpt", "safetensors")
# Shortcuts for parallel_config.<key>; `--parallel_config.<key>=v` works for any key.
PARALLEL_KEYS = ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                 "context_parallel", "expert_parallel", "vocab_emb_dp", "use_seq_parallel",
                 "gradient_aggregation_group", "micro_batch_interleave_num")
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


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
    """Bytes from '8G', '512MiB', '1000000'."""
    m = _SIZE.match(text)
    if not m:
        raise EntryError(f"--{flag}={text!r}: expected a size such as 8G or 512M")
    scale = 1024 ** " kmgt".index((m.group(2) or " ").lower())
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise EntryError(f"--{flag}={text!r}: must be > 0")
    return value


def parse_choice(choices: Sequence[str]) -> Callable[[str, str], str]:
    def convert(flag: str, text: str) -> str:
        if text not in choices:
            raise EntryError(f"--{flag}={text!r}: expected one of {', '.join(choices)}")
        return text
    return convert


def parse_scalar(flag: str, text: str) -> Any:
    """A YAML scalar ('2' -> 2, 'True' -> True, 'a' -> 'a'), as MindFormers' YAML would read it."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise EntryError(f"--{flag}={text!r}: not a YAML value") from None


def _text(flag: str, text: str) -> str:
    return text.strip()


def _launch_cmd(flag: str, text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise EntryError(f"--{flag}={text!r}: {exc}") from None


# flag -> (JobSpec field, converter). Order is the --help order.
FLAGS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "config": ("config", _text),
    "load_checkpoint": ("load_checkpoint", _text),
    "src_strategy_path_or_dir": ("src_strategy", _text),
    "dst_strategy": ("dst_strategy", _text),
    "auto_trans_ckpt": ("auto_trans_ckpt", parse_bool),
    "transform_process_num": ("transform_process_num", parse_int),
    "transform_timeout": ("transform_timeout", parse_seconds),
    "max_memory": ("max_memory", parse_size),
    "npu_num_per_node": ("npu_num_per_node", parse_int),
    "node_num": ("node_num", parse_int),
    "node_index": ("node_index", parse_int),
    "only_save_strategy": ("only_save_strategy", parse_bool),
    "load_ckpt_format": ("load_ckpt_format", parse_choice(CKPT_FORMATS)),
    "use_parallel": ("use_parallel", parse_bool),
    "run_mode": ("run_mode", parse_choice(RUN_MODES)),
    "output_dir": ("output_dir", _text),
    "remote_save_url": ("remote_save_url", _text),
    "shared_dir": ("shared_dir", _text),
    "work_dir": ("work_dir", _text),
    "prefix": ("prefix", _text),
    "run_id": ("run_id", _text),
    "transform_only": ("transform_only", parse_bool),
    "launch_cmd": ("launch_cmd", _launch_cmd),
}


class _Parser(argparse.ArgumentParser):
    """argparse's usage dump on a bad flag becomes our one line naming it."""

    def error(self, message: str):
        raise EntryError(f"arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cloud-entry", allow_abbrev=False,
        description="Boot command of a training job: config, checkpoint conversion, launch. "
                    "Put the launch command after `--`; `{config}` in it becomes the effective "
                    "config path.")
    for flag in FLAGS:
        parser.add_argument(f"--{flag}", dest=flag, default=None, metavar="VALUE")
    for key in PARALLEL_KEYS:
        parser.add_argument(f"--{key}", dest=f"parallel_config.{key}", default=None,
                            metavar="VALUE", help=f"parallel_config.{key}")
    return parser


def split_launch(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first bare `--` is the launch command, untouched."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _dotted(unknown: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--a.b.c=v` -> overrides; anything else is ModelArts' own or a typo: ignored."""
    overrides: dict[str, Any] = {}
    ignored: list[str] = []
    for item in unknown:
        m = re.match(r"^--([A-Za-z_][\w-]*(?:\.[\w-]+)+)=(.*)$", item, re.DOTALL)
        if m:
            overrides[m.group(1)] = parse_scalar(m.group(1), m.group(2))
        else:
            ignored.append(item)
    return overrides, ignored


def parse_args(argv: Sequence[str]) -> JobSpec:
    own, launch = split_launch(argv)
    parser = build_parser()
    ns, unknown = parser.parse_known_args(own)
    values: dict[str, Any] = {}
    for flag, (name, convert) in FLAGS.items():
        text = getattr(ns, flag)
        if text is not None:
            values[name] = convert(flag, text)
    parallel = {key: parse_scalar(f"parallel_config.{key}", getattr(ns, f"parallel_config.{key}"))
                for key in PARALLEL_KEYS if getattr(ns, f"parallel_config.{key}") is not None}
    overrides, ignored = _dotted(unknown)
    for item in ignored:
        log.warning("ignoring unknown argument %s", item.split("=", 1)[0])
    if launch:
        values["launch_cmd"] = tuple(launch)
    spec = JobSpec(**values, parallel=parallel, overrides=overrides, ignored=tuple(ignored))
    validate(spec)
    return spec


def validate(spec: JobSpec) -> None:
    """Checks that need no file or network: each names its flag."""
    for flag, value in (("transform_process_num", spec.transform_process_num),
                        ("npu_num_per_node", spec.npu_num_per_node), ("node_num", spec.node_num)):
        if value is not None and value < 1:
            raise EntryError(f"--{flag}={value}: must be >= 1")
    if spec.node_index is not None and spec.node_index < 0:
        raise EntryError(f"--node_index={spec.node_index}: must be >= 0")
    if not spec.prefix or "/" in spec.prefix:
        raise EntryError(f"--prefix={spec.prefix!r}: must be a non-empty file-name prefix")
    if not spec.transform_only and not spec.launch_cmd:
        raise EntryError("no launch command: put it after `--` or pass --launch_cmd "
                         "(or --transform_only=True)")
