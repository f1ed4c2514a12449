"""Strategy files -> per-parameter layouts, for every pipeline stage.

Accepts what real jobs leave behind: one rank's file, MindSpore's merged file (names prefixed
`<stage>-`), or a folder of per-rank / per-stage files in protobuf or JSON, whatever their names.
A folder is merged in memory, never by writing into it. Identical files are duplicates.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ._strategy_pb import ParallelStrategyMap
from .errors import ReshardError
from .layout import LayoutError, TensorLayout, make_layout
from .sources import strategy_files

_MERGED_NAME = re.compile(r"^(\d+)-(.+)$")


@dataclass(frozen=True)
class Strategy:
    """Layouts of a whole job, as load_strategy parsed them.

    Attributes:
        layouts: parameter name -> one TensorLayout per stage the parameter lives in, sorted
            by stage (a shared embedding lives in several).
        stage_devices: devices (ranks) per pipeline stage.
        num_stages: pipeline stages.
        source: the path it was read from (for messages).
    """
    layouts: dict[str, tuple[TensorLayout, ...]]
    stage_devices: int
    num_stages: int
    source: str              # the path it was read from

    @property
    def world_size(self) -> int:
        return self.stage_devices * self.num_stages

    def stage_of(self, rank: int) -> int:
        return rank // self.stage_devices

    def layout_in_stage(self, name: str, stage: int) -> TensorLayout | None:
        for lay in self.layouts.get(name, ()):
            if lay.stage == stage:
                return lay
        return None


def _layout_fields_pb(pl) -> tuple[list, list, list, int, int]:
    dev = list(pl.dev_matrix[0].dim) if pl.dev_matrix else []
    if len(pl.tensor_map) > 1:          # nested map: one TensorMap per tensor dimension
        tmap = [list(t.dim) for t in pl.tensor_map if list(t.dim)]
    else:
        tmap = list(pl.tensor_map[0].dim) if pl.tensor_map else []
    split = [d for s in pl.param_split_shape for d in s.dim]
    return dev, tmap, split, pl.opt_weight_shard_size, pl.opt_weight_shard_step


def _read_pb(path: str, data: bytes) -> tuple[int | None, dict[str, tuple]]:
    m = ParallelStrategyMap()
    try:
        m.ParseFromString(data)
    except (DecodeError, ValueError) as e:
        raise ReshardError(f"{path}: not a MindSpore strategy file ({e})") from None
    stage = m.parallel_strategy_item[0].parallel_strategys.stage \
        if m.parallel_strategy_item else None
    return stage, {li.param_name: _layout_fields_pb(li.parallel_layouts)
                   for li in m.parallel_layout_item}


def _read_json(path: str, data: bytes) -> tuple[int | None, dict[str, tuple]]:
    try:
        content = json.loads(data)
        items = content.get("parallel_strategy_item") or {}
        stage = next(iter(items.values())).get("stage") if items else None
        out = {}
        for name, li in (content.get("parallel_layout_item") or {}).items():
            out[name] = (li["dev_matrix"], li["tensor_map"], li.get("param_split_shape") or [],
                         li.get("opt_weight_shard_size", 0), li.get("opt_weight_shard_step", 0))
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise ReshardError(f"{path}: not a MindSpore strategy file in JSON form ({e})") from None
    return stage, out


def _read_file(path: str, data: bytes) -> dict[int, dict[str, TensorLayout]]:
    """One file -> stage -> name -> TensorLayout. Merged files carry the stage in the name."""
    stage, fields = (_read_json if path.endswith(".json") else _read_pb)(path, data)
    if not fields:
        raise ReshardError(f"{path}: strategy file holds no parameter layouts")
    merged = all(_MERGED_NAME.match(n) for n in fields)
    out: dict[int, dict[str, TensorLayout]] = {}
    for raw_name, (dev, tmap, split, opt_size, opt_step) in fields.items():
        if merged:
            s, name = _MERGED_NAME.match(raw_name).groups()
            s = int(s)
        else:
            s, name = (stage or 0), raw_name
        if split:
            raise ReshardError(f"{path}: parameter {name} has an uneven split "
                               f"(param_split_shape {split}), which is not supported")
        if not dev:
            raise ReshardError(f"{path}: parameter {name} has no dev_matrix")
        try:
            out.setdefault(s, {})[name] = make_layout(dev, tmap, opt_size, opt_step, s)
        except LayoutError as e:
            raise ReshardError(f"{path}: parameter {name}: {e}") from None
    return out


def strategy_paths(path: str) -> list[str]:
    """The files a local strategy path stands for: itself, or the files of the folder that
    sources.strategy_files counts (every *.ckpt or every *.json)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ReshardError(f"strategy {path} does not exist")
    with os.scandir(path) as entries:     # file or not from the listing: no stat per file
        names = [e.name for e in entries if e.is_file()]
    return [os.path.join(path, n) for n in strategy_files(names, path)]


def load_strategy(path: str | None) -> Strategy | None:
    """Parse a local strategy file or folder (each distinct file once; identical files are
    duplicates). Parse once per process and hand the Strategy to every API (they all accept
    loaded strategies).

    Args:
        path: a strategy file (MindSpore's protobuf, or its JSON form) or a folder of them
            (one per stage or per rank); None or "" for a complete checkpoint.

    Returns:
        The Strategy, or None for None / "".

    Raises:
        ReshardError: an empty or malformed file (naming it), or two files that give one stage
            different layouts.
        OSError: a file cannot be read.
    """
    if path is None or path == "":
        return None
    stages: dict[int, dict[str, TensorLayout]] = {}
    stage_origin: dict[int, str] = {}
    # size -> the distinct files of that size: a job's folder is thousands of copies of a few
    # files (one per stage), compared byte for byte (faster than hashing each)
    seen: dict[int, list[bytes]] = {}
    for f in strategy_paths(path):
        with open(f, "rb") as fh:
            data = fh.read()
        if not data:
            raise ReshardError(f"{f}: strategy file is empty")
        same_size = seen.setdefault(len(data), [])
        if data in same_size:
            continue
        same_size.append(data)
        for s, lays in _read_file(f, data).items():
            if s in stages:
                if stages[s] != lays:
                    raise ReshardError(f"{f}: stage {s} layouts differ from {stage_origin[s]}")
                continue
            stages[s], stage_origin[s] = lays, f
    num_stages = max(stages) + 1
    missing = [s for s in range(num_stages) if s not in stages]
    if missing:
        raise ReshardError(f"strategy {path}: pipeline stage {missing[0]} is missing "
                           f"(stages found: {sorted(stages)})")
    devices = {lay.devices for lays in stages.values() for lay in lays.values()}
    if len(devices) != 1:
        raise ReshardError(f"strategy {path}: parameters disagree on devices per stage "
                           f"({sorted(devices)})")
    layouts: dict[str, list[TensorLayout]] = {}
    for s in sorted(stages):
        for name, lay in stages[s].items():
            layouts.setdefault(name, []).append(lay)
    return Strategy({n: tuple(v) for n, v in layouts.items()}, devices.pop(), num_stages, path)


def merged_strategy_bytes(strategy: Strategy) -> bytes:
    """MindSpore's merged form (names prefixed `<stage>-`, one strategy item per stage)."""
    m = ParallelStrategyMap()
    m.current_stage = 1
    for s in range(strategy.num_stages):
        item = m.parallel_strategy_item.add()
        item.node_name = f"reshard-merged-stage-{s}"
        item.parallel_strategys.stage = s
    for name, lays in strategy.layouts.items():
        for lay in lays:
            li = m.parallel_layout_item.add()
            li.param_name = f"{lay.stage}-{name}"
            pl = li.parallel_layouts
            pl.dev_matrix.add().dim.extend(lay.dev_matrix)
            nested = any(len(a) > 1 for a in lay.tensor_map)
            if nested:
                for axes in lay.tensor_map:
                    pl.tensor_map.add().dim.extend(list(axes) or [-1])
            else:
                pl.tensor_map.add().dim.extend([a[0] if a else -1 for a in lay.tensor_map])
            pl.param_split_shape.add()
            pl.indices_offset.add()
            pl.field = 0
            pl.opt_weight_shard_size = lay.opt_shard_size if lay.opt_shard_size > 1 else 0
            pl.opt_weight_shard_step = lay.opt_shard_step if lay.opt_shard_size > 1 else 0
    return m.SerializeToString()
