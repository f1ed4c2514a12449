"""The MindFormers run config: base YAML + job arguments -> effective config (and its diff).

Why the JobSpec is re-read from the merged config: a value can come from the YAML (e.g.
`auto_trans_ckpt: True` in the file) or from a hyperparameter, and the later stages must act on
what the launched command will see, not on the arguments alone.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

import obs_io
from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
MASK = "******"
# Whole names or suffixes only: MindFormers configs are full of *_token_id / tokenizer keys
# (pad_token_id, tokenizer_file) that must reach the launched command unmasked.
_SECRET_KEY = re.compile(r"(^|[_-])(access[_-]?key([_-]?id)?|secret([_-]?access)?([_-]?key)?|"
                         r"password|passwd|(session|security|auth|access)[_-]?token|ak|sk)$|^token$", re.I)

# JobSpec field -> top-level config key (MindFormers names).
CONFIG_KEYS = {
    "load_checkpoint": "load_checkpoint",
    "src_strategy": "src_strategy_path_or_dir",
    "auto_trans_ckpt": "auto_trans_ckpt",
    "transform_process_num": "transform_process_num",
    "npu_num_per_node": "npu_num_per_node",
    "only_save_strategy": "only_save_strategy",
    "load_ckpt_format": "load_ckpt_format",
    "use_parallel": "use_parallel",
    "run_mode": "run_mode",
    "output_dir": "output_dir",
    "remote_save_url": "remote_save_url",
}
DEFAULTS = {"load_checkpoint": "", "src_strategy_path_or_dir": "", "auto_trans_ckpt": False,
            "transform_process_num": 1, "only_save_strategy": False, "load_ckpt_format": "ckpt",
            "use_parallel": True, "run_mode": "train", "output_dir": "./output",
            "remote_save_url": ""}


def read_base(ref: str | None) -> dict[str, Any]:
    """The base config from a path, a name in configs/, or an object-store URL; {} without one."""
    if not ref:
        return {}
    import obs_io

    if obs_io.is_remote(ref):
        try:
            text = obs_io.file.read(ref)
        except FileNotFoundError:
            raise EntryError(f"--config={ref}: not found") from None
    else:
        path = Path(ref)
        if not path.is_file() and (CONFIGS_DIR / ref).is_file():
            path = CONFIGS_DIR / ref
        if not path.is_file():
            raise EntryError(f"--config={ref}: no such file (nor in {CONFIGS_DIR})")
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EntryError(f"--config={ref}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EntryError(f"--config={ref}: top level must be a mapping")
    return data


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise EntryError(f"--{dotted}: {'.'.join(parts[:i + 1])} is not a mapping in the config")
        node = child
    node[parts[-1]] = value


def with_defaults(base: dict[str, Any]) -> dict[str, Any]:
    """MindFormers' defaults for the keys the entry acts on, where the base has none."""
    return {**DEFAULTS, **copy.deepcopy(base)}


def build(spec: JobSpec, base: dict[str, Any]) -> dict[str, Any]:
    """Effective config: base (with defaults), then the job's arguments."""
    config = with_defaults(base)
    for name, key in CONFIG_KEYS.items():
        value = getattr(spec, name)
        if value is not None:
            config[key] = value
    for key, value in spec.parallel.items():
        set_dotted(config, f"parallel_config.{key}", value)
    for dotted, value in spec.overrides.items():
        set_dotted(config, dotted, value)
    return config


def resolve(spec: JobSpec, config: dict[str, Any]) -> JobSpec:
    """JobSpec with the values the effective config holds; checks what needs both."""
    values = {name: config.get(key) for name, key in CONFIG_KEYS.items()}
    for name in ("load_checkpoint", "src_strategy", "remote_save_url"):
        values[name] = str(values[name] or "")
    values["output_dir"] = str(values["output_dir"] or "./output")
    for name in ("auto_trans_ckpt", "only_save_strategy", "use_parallel"):
        if not isinstance(values[name], bool):
            raise EntryError(f"{CONFIG_KEYS[name]}={values[name]!r} in the config: expected a boolean")
    for name in ("transform_process_num", "npu_num_per_node"):
        v = values[name]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise EntryError(f"{CONFIG_KEYS[name]}={v!r} in the config: expected an integer >= 1")
    resolved = dataclasses.replace(spec, **values)
    if resolved.auto_trans_ckpt and not resolved.load_checkpoint:
        raise EntryError("auto_trans_ckpt=True needs load_checkpoint")
    return resolved


def diff(base: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; missing leaves are None."""
    if isinstance(base, dict) or isinstance(new, dict):
        if not (isinstance(base, dict) and isinstance(new, dict)) and None not in (base, new):
            yield prefix.rstrip("."), base, new
            return
        base, new = base or {}, new or {}
        for key in list(base) + [k for k in new if k not in base]:
            yield from diff(base.get(key), new.get(key), f"{prefix}{key}.")
    elif base != new:
        yield prefix.rstrip("."), base, new


def mask_secrets(config: Any, key: str = "") -> Any:
    """A copy with every value under a secret-looking key replaced: dumps and logs show no keys."""
    if isinstance(config, dict):
        return {k: mask_secrets(v, str(k)) for k, v in config.items()}
    if isinstance(config, list):
        return [mask_secrets(v, key) for v in config]
    if key and _SECRET_KEY.search(key) and config not in (None, ""):
        return MASK
    return config


def dump(config: dict[str, Any], path: str) -> None:
    """Masked YAML; obs_io writes it under a temporary name and renames it: never partial."""
    obs_io.file.write(path, yaml.safe_dump(mask_secrets(config), sort_keys=False, allow_unicode=True))
