"""The MindFormers run config: base YAML + job arguments -> effective config (and its diff).

Why the JobSpec is re-read from the merged config: a value can come from the YAML (e.g.
`auto_trans_ckpt: True` in the file) or from a hyperparameter, and the later stages must act on
what the launched command will see, not on the arguments alone.

Why the checkpoint keys need care (MindFormers 1.9-2.1, `mindformers/trainer/utils.py`
`convert_checkpoint_config`, run by `Trainer` before any load): MindFormers reads the path to
load from `checkpoint.load_path` only, and copies the top-level `load_checkpoint` there only
when the `checkpoint:` section has no `load_path` (an explicit `load_path: ""` wins too). A
non-empty `checkpoint:` section also forces `use_legacy_format: False`, and with it training
loads through `mindformers/checkpoint/checkpoint.py` (online resharding of a safetensors folder,
no `auto_trans_ckpt`) and `only_save_strategy` is refused. `load_ckpt_format`,
`auto_trans_ckpt` and `src_strategy_path_or_dir` have no twin in the section: they are read at
the top level only.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import posixpath
from pathlib import Path
from typing import Any, Iterator

import yaml

import obs_io
from obs_io import redact
from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec
from obs_io.urls import ObjectURL
from reshard.formats import registry as formats

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"   # package data (a symlink to configs/ in the repository)
MASK = redact.MASK


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
            "transform_process_num": 1, "only_save_strategy": False, "load_ckpt_format": formats.DEFAULT,
            "use_parallel": True, "run_mode": "train", "output_dir": "./output",
            "remote_save_url": ""}
BASE_CONFIG = "base_config"
SECTION = "checkpoint"
# Run modes whose non-legacy load bypasses transform_and_load_checkpoint (and auto_trans_ckpt):
# mindformers/trainer/base_trainer.py training_process; eval and predict always go through it.
_RESHARDING_MODES = ("train", "finetune")
_LEGACY_FIX = "remove the checkpoint: section and set use_legacy_format: True"


# ---------------------------------------------------------------- base config and inheritance

def _base_location(referrer: str, base: str) -> str:
    """Where a `base_config` entry points. MindFormers (`mindformers/tools/register/config.py`
    `MindFormerConfig._file2dict`) joins it to the referring file's folder with os.path.join, so
    an absolute path stays absolute; a config on object storage gets the same rule on its URL."""
    if obs_io.is_remote(base):
        return base
    if os.path.isabs(base) or not obs_io.is_remote(referrer):
        return os.path.join(os.path.dirname(referrer), base)
    url = ObjectURL.parse(referrer)
    key = posixpath.normpath(posixpath.join(posixpath.dirname(url.key), base))
    if key == ".." or key.startswith("../"):
        raise EntryError(f"{referrer}: base_config {base} points above the bucket root")
    return str(ObjectURL(url.scheme, url.bucket, key))


def _identity(location: str) -> str:
    """The same file under any spelling (for the cycle guard)."""
    return location if obs_io.is_remote(location) else os.path.realpath(location)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base` as MindFormers' `MindFormerConfig._merge_a_into_b` does it: mappings on
    both sides merge recursively, anything else from `top` replaces (lists included)."""
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        out[key] = _merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


# Bounds on a config (a run config is a few KiB and some hundred values): what is beyond them is
# refused in one line before anything walks it. A YAML alias is a reference, so a few lines of
# aliases of aliases ("billion laughs") expand to billions of values once built and walked.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 100   # the parser builds nested values recursively


def load_yaml(text: str, label: str, invalid: str | None = None) -> Any:
    """yaml.safe_load within bounds: text of at most MAX_CONFIG_BYTES, nested at most
    MAX_YAML_DEPTH levels, at most MAX_YAML_VALUES values once every alias is expanded, no value
    holding itself (`a: &a [*a]`). The node graph is composed first (aliases stay references
    there, so counting costs what the text does), then built. EntryError naming `label` otherwise (`invalid`: the line for text that is not
    YAML at all)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise EntryError(f"{label}: {len(text)} characters, more than the {MAX_CONFIG_BYTES} a config "
                         "may have: refused")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):   # events: no recursion yet
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise EntryError(f"{label}: nested more than {MAX_YAML_DEPTH} levels deep: refused")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise EntryError(invalid or f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_values(node, label)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise EntryError(invalid or f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:   # aliases of deep values in deep values: deeper than it reads
        raise EntryError(f"{label}: nested more than {MAX_YAML_DEPTH} levels deep through its aliases: "
                         "refused") from None
    finally:
        loader.dispose()


def _count_values(root: yaml.Node, label: str) -> int:
    """Values below `root` with every alias expanded (shared nodes counted once per use, each
    node's count worked out once); EntryError beyond MAX_YAML_VALUES or for a cycle."""
    counts: dict[int, int] = {}
    open_: set[int] = set()

    def count(node: yaml.Node) -> int:
        key = id(node)
        if key in counts:
            return counts[key]
        if key in open_:
            raise EntryError(f"{label}: a YAML alias refers to a value holding it: refused")
        open_.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(count(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(count(k) + count(v) for k, v in node.value)
        else:
            total = 1
        open_.discard(key)
        if total > MAX_YAML_VALUES:
            raise EntryError(f"{label}: YAML aliases expand to more than {MAX_YAML_VALUES} values "
                             "(an alias bomb?): refused")
        counts[key] = total
        return total
    return count(root)


def _parse(text: str, label: str) -> dict[str, Any]:
    data = load_yaml(text, label)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EntryError(f"{label}: top level must be a mapping")
    return data


def _load(location: str, label: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """One file with its bases resolved. `chain`: identities of the files that include it."""
    try:
        size = obs_io.file.stat(location).length
        if size > MAX_CONFIG_BYTES:   # not read at all: it could be any size
            raise EntryError(f"{label}: {size} bytes, more than the {MAX_CONFIG_BYTES} a config may have: refused")
        data = _parse(obs_io.file.read(location), label)
    except (FileNotFoundError, IsADirectoryError):
        raise EntryError(f"{label}: not found") from None
    except ValueError as exc:   # a malformed URL, a file that is not text
        raise EntryError(f"{label}: {exc}") from None
    chain = chain + (_identity(location),)
    bases = data.pop(BASE_CONFIG, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and all(isinstance(b, str) and b for b in bases)):
        raise EntryError(f"{location}: base_config must be a path or a list of paths, not {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        where = _base_location(location, base)
        if _identity(where) in chain:
            cycle = " -> ".join(chain[chain.index(_identity(where)):] + (_identity(where),))
            raise EntryError(f"base_config cycle: {cycle}")
        # MindFormers combines several bases with dict.update: a later base's top-level key
        # replaces an earlier one's whole value; only the including file merges deeply.
        merged.update(_load(where, f"{location}: base_config {base} ({where})", chain))
    return _merge(merged, data)


def read_base(ref: str | None) -> dict[str, Any]:
    """The base config from a path, a name in configs/, or an object-store URL; {} without one.

    `base_config` (a path or a list of paths, relative to the including file's folder) is
    resolved here as MindFormers resolves it, and removed: the effective config is written
    elsewhere, where relative bases would point at nothing."""
    if not ref:
        return {}
    location = ref
    if not obs_io.is_remote(ref):
        if not os.path.isfile(ref) and (CONFIGS_DIR / ref).is_file():
            location = str(CONFIGS_DIR / ref)
        elif not os.path.isfile(ref):
            raise EntryError(f"--config={ref}: no such file (nor in {CONFIGS_DIR})")
    return _load(location, f"--config={ref}", ())


# ---------------------------------------------------------------- the checkpoint keys

def _section(config: dict[str, Any]) -> dict[str, Any] | None:
    """The `checkpoint:` section if MindFormers counts it: it tests the section's truthiness, so
    an empty one (or `checkpoint: null`) is no section."""
    section = config.get(SECTION)
    if section in (None, {}):
        return None
    if not isinstance(section, dict):
        raise EntryError(f"{SECTION}: {section!r} in the config: expected a mapping")
    return section


# MindFormers 1.7's switch for loading Checkpoint 2.0 (top level, default True; 1.8 replaced it
# with use_legacy_format and the checkpoint: section, and no longer reads it).
LEGACY_17 = "ckpt_use_legacy_format"


def uses_legacy_format(config: dict[str, Any]) -> bool:
    """MindFormers' legacy checkpoint path (`transform_and_load_checkpoint`, `auto_trans_ckpt`,
    `only_save_strategy`): `use_legacy_format` (default True, `tools/register/template.py`
    GeneralConfig), forced False by a non-empty `checkpoint:` section (`trainer/utils.py`
    `convert_checkpoint_config`); in MindFormers 1.7, `ckpt_use_legacy_format` (default True,
    `trainer/base_trainer.py`)."""
    return _section(config) is None and bool(config.get("use_legacy_format", True)) \
        and bool(config.get(LEGACY_17, True))


def _to_legacy(out: dict[str, Any]) -> None:
    """Switch a config to MindFormers' legacy loader, in every release's terms: the section
    dropped, use_legacy_format True, 1.7's ckpt_use_legacy_format True where it is set."""
    out.pop(SECTION, None)
    out["use_legacy_format"] = True
    if LEGACY_17 in out:
        out[LEGACY_17] = True


def _load_path(config: dict[str, Any]) -> str:
    """The path MindFormers loads: `checkpoint.load_path` unless that is absent or null, then the
    top-level `load_checkpoint` (`trainer/utils.py` `compatible_with_both_old_new_config`)."""
    section = _section(config) or {}
    top = str(config.get("load_checkpoint") or "")
    if section.get("load_path") is None:
        return top
    path = str(section["load_path"])
    if top and top != path:
        log.warning("checkpoint.load_path=%r and load_checkpoint=%r disagree: MindFormers loads "
                    "checkpoint.load_path%s", path, top, "" if path else ", that is nothing")
    return path


# ---------------------------------------------------------------- effective config

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
    """Effective config: base (with defaults), then the job's arguments.

    An argument not given (None) leaves the YAML's value; an empty one (`--load_checkpoint=`)
    clears it. `--load_checkpoint` is written where MindFormers reads it: also into
    `checkpoint.load_path` when the section has one, since that one wins."""
    config = with_defaults(base)
    for name, key in CONFIG_KEYS.items():
        value = getattr(spec, name)
        if value is not None:
            config[key] = value
    section = _section(config)
    if spec.load_checkpoint is not None and section is not None and section.get("load_path") is not None:
        section["load_path"] = spec.load_checkpoint
    for key, value in spec.parallel.items():
        set_dotted(config, f"parallel_config.{key}", value)
    for dotted, value in spec.overrides.items():
        set_dotted(config, dotted, value)
    return config


def resolve(spec: JobSpec, config: dict[str, Any]) -> JobSpec:
    """JobSpec with the values MindFormers would act on; checks what needs both.

    `load_checkpoint` is the path MindFormers loads (see _load_path). A non-legacy train/finetune
    run would load through `mindformers/checkpoint/checkpoint.py` (`get_checkpoint_path`), which
    takes only a safetensors folder it reshards itself, never a `.ckpt` file nor the rank_x/
    layout a conversion writes (checked with MindFormers 1.9-2.1: "Checkpoint path is not a
    directory"; 1.8 ignores the section and loads the source unconverted): with
    auto_trans_ckpt=True the entry converts all the same and launches with the legacy format
    (for_launch). A user's own `only_save_strategy` run with the non-legacy format is refused
    before anything starts, as MindFormers would refuse it after its start-up."""
    values = {name: config.get(key) for name, key in CONFIG_KEYS.items()}
    values["load_checkpoint"] = _load_path(config)
    for name in ("src_strategy", "remote_save_url"):
        values[name] = str(values[name] or "")
    values["output_dir"] = str(values["output_dir"] or "./output")
    for name in ("auto_trans_ckpt", "only_save_strategy", "use_parallel"):
        if not isinstance(values[name], bool):
            raise EntryError(f"{CONFIG_KEYS[name]}={values[name]!r} in the config: expected a boolean")
    for name in ("transform_process_num", "npu_num_per_node"):
        v = values[name]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise EntryError(f"{CONFIG_KEYS[name]}={v!r} in the config: expected an integer >= 1")
    if not uses_legacy_format(config):
        if values["only_save_strategy"]:
            raise EntryError("only_save_strategy=True: MindFormers refuses it with its non-legacy "
                             f"checkpoint format; {_LEGACY_FIX}")
        if values["auto_trans_ckpt"] and values["run_mode"] in _RESHARDING_MODES:
            log.warning("checkpoint: section with run_mode %s: MindFormers' loader for it cannot "
                        "read a converted rank_x/ layout, so the training command gets the legacy "
                        "format (use_legacy_format: True, section dropped), unless load_checkpoint "
                        "is a Checkpoint 2.0 folder (then kept: checkpoint2_mode)", values["run_mode"])
    resolved = dataclasses.replace(spec, **values)
    if resolved.auto_trans_ckpt and not resolved.load_checkpoint:
        raise EntryError("auto_trans_ckpt=True needs load_checkpoint")
    return resolved


def for_launch(config: dict[str, Any], load_path: str, src_strategy: str | None = None,
               converted: bool = False) -> dict[str, Any]:
    """The config the launch command gets: MindFormers loads `load_path` as it is.

    Both `load_checkpoint` and, if the section exists, `checkpoint.load_path` are set: MindFormers
    reads the latter, while its own checks (`trainer/trainer.py` _check_config_rules) read the
    former, so neither may hold a stale (e.g. obs://) value. No section is created: a non-empty
    one would switch MindFormers to the non-legacy format. `auto_trans_ckpt` is False (it has no
    twin in the section): the entry converted already, and a True would make MindFormers clear
    output/strategy and check for a shared disk (`_validate_auto_trans_ckpt_requirements`).
    `src_strategy_path_or_dir` is still read without auto_trans_ckpt (safetensors loading,
    `utils/load_checkpoint_utils.py` _get_src_strategy): it becomes the local copy, or "" rather
    than a URL MindFormers cannot open. `converted` with a non-legacy train/finetune config: the
    section is dropped and `use_legacy_format` set True (see resolve): only the legacy loader
    reads what the conversion wrote."""
    out = copy.deepcopy(config)
    out["load_checkpoint"] = load_path
    section = _section(out)
    if converted and not uses_legacy_format(out) and out.get("run_mode") in _RESHARDING_MODES:
        log.info("effective config: %suse_legacy_format: True (only the legacy loader reads "
                 "converted rank folders)", f"checkpoint: section dropped (its keys {', '.join(sorted(section))} "
                 "are not read by the legacy loader), " if section is not None else f"{LEGACY_17}: True, ")
        _to_legacy(out)
        section = None
    if section is not None:
        section["load_path"] = load_path
    out["auto_trans_ckpt"] = False
    if src_strategy is not None:
        out["src_strategy_path_or_dir"] = src_strategy
    elif obs_io.is_remote(str(out.get("src_strategy_path_or_dir") or "")):
        out["src_strategy_path_or_dir"] = ""
    return out


def for_strategy_pass(config: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """The config of the strategy pass: compile only, load nothing, write into `output_dir`.

    MindFormers refuses `only_save_strategy` unless the legacy format is used (`trainer/utils.py`
    convert_checkpoint_config: "only_save_strategy is not supported when the use_legacy_format is
    False"), and a non-empty `checkpoint:` section forces the non-legacy format. The pass loads
    and saves no checkpoint (it exits after compiling, `trainer/utils.py`
    transform_and_load_checkpoint), so it is switched to the legacy format instead of failing:
    the section is dropped and `use_legacy_format` set True. The layout the pass writes comes
    from the network and parallel_config, not from the checkpoint format. `resume_training` is False: a resume target
    without `load_checkpoint` is a MindFormers error (`_using_checkpoint_name_or_path_if_needed`)."""
    out = copy.deepcopy(config)
    if not uses_legacy_format(out):
        log.info("strategy pass: without the checkpoint: section and with use_legacy_format: True, "
                 "as MindFormers' only_save_strategy needs")
        _to_legacy(out)
    out.update(only_save_strategy=True, auto_trans_ckpt=False, load_checkpoint="",
               resume_training=False, output_dir=output_dir)
    return out


# ---------------------------------------------------------------- diff, secrets, dump

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


def mask_secrets(config: Any, key: str = "", inherited: bool = False) -> Any:
    """A copy for dumps and logs with every secret masked: a value under a secret-looking key
    (obs_io.redact.secret_value: `secret_access_key`, `obs_token`, `password`; everything below
    `credentials`; not `pad_token: '<pad>'` nor `construct_args_key: [...]`), and URL user info
    and secret query parameters inside any text."""
    strong = inherited or redact.secret_name(key) == "strong"
    if isinstance(config, dict):
        return {k: mask_secrets(v, str(k), strong) for k, v in config.items()}
    if isinstance(config, list):
        return [mask_secrets(v, key, strong) for v in config]
    if (strong and config not in (None, "")) or (key and redact.secret_value(key, config)):
        return MASK
    return redact.mask_text(config) if isinstance(config, str) else config


def mask_args(cmd: list[str] | tuple[str, ...]) -> list[str]:
    """A command line for logs: the value of every secret-looking `--name=value` / `--name value`
    (`--secret_access_key=...`, `--api_key=...`, `--model.obs_token=...`, `--sk ...`) masked, and
    URL user info and secret query parameters in any argument (obs_io.redact). The command
    itself runs with the real values."""
    out: list[str] = []
    for i, part in enumerate(cmd):
        name, eq, value = part.partition("=")
        prev = cmd[i - 1] if i else ""
        if part.startswith("-") and eq and redact.secret_value(_leaf(name), value):
            out.append(f"{name}={MASK}")
        elif prev.startswith("-") and "=" not in prev and not part.startswith("-") \
                and redact.secret_value(_leaf(prev), part):
            out.append(MASK)
        else:
            out.append(redact.mask_text(part))
    return out


def _leaf(flag: str) -> str:
    """`--model.obs_token` -> `obs_token`: the name a dotted flag sets."""
    return flag.lstrip("-").rsplit(".", 1)[-1]


def dump(config: dict[str, Any], path: str) -> None:
    """Masked YAML; obs_io writes it under a temporary name and renames it: never partial."""
    obs_io.file.write(path, yaml.safe_dump(mask_secrets(config), sort_keys=False, allow_unicode=True))
