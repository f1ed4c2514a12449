"""Write a MindFormers "Checkpoint 2.0" iteration for a destination layout.

Input: the destination Strategy (None: one rank holding complete tensors) and, per destination
rank, the safetensors file the engine wrote for it (rank_<r>/<prefix><r>.safetensors: that
rank's slice of every laid-out parameter and the values carried as they are). Output, as
MindFormers' save_checkpoint lays it out (research/CHECKPOINT2.md):

    <root>/iteration_%08d/<prefix>-model-%07d-%07d.safetensors   (index = rank, total = world)
    <root>/iteration_%08d/<prefix>-opt-%07d-%07d.safetensors     (ranks holding optimizer values)
    <root>/iteration_%08d/metadata.json     layouts in mindspore.parallel.Layout.to_dict() key
                                            order, optimizer sharding folded into the device
                                            matrix and tensor map, global_offset = slice index,
                                            a storage record per holder with rank_group
    <root>/iteration_%08d/common.json       exactly the CommonInfo fields of the release
    <root>/latest_checkpointed_iteration.txt  written last: str(iteration), no newline

Each file lands under its final name complete (temporary name, then rename); the tracker last,
so an interrupted write leaves no tracker naming a partial iteration.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from obs_io.atomic import write_atomic
from obs_io.crc import crc32

from ...errors import ReshardError
from ...integrity import file_checksum
from ...layout import TensorLayout, make_layout
from ...plan import OPTIMIZER_STATE_PREFIXES
from ...strategy import Strategy
from .. import FormatError, open_reader
from .folder import COMMON, METADATA, TRACKER, iteration_dir, shard_name, slice_id_of

log = logging.getLogger("reshard")

RELEASES = ("1.7", "1.8", "1.9", "2.0", "2.1")
DEFAULT_RELEASE = "2.1"
# CommonInfo's fields per release, in declaration order (MindFormers reads common.json with
# CommonInfo(**json): a key the release does not know raises TypeError at resume).
_BASE_FIELDS = ("epoch_num", "step_num", "global_step", "loss_scale", "global_batch_size")
COMMON_FIELDS = {
    "1.7": _BASE_FIELDS, "1.8": _BASE_FIELDS,
    "1.9": _BASE_FIELDS + ("ckpt_status",), "2.0": _BASE_FIELDS + ("ckpt_status",),
    "2.1": _BASE_FIELDS + ("consumed_samples", "ckpt_status"),
}
# Optimizer values MindFormers stores in the opt files without describing them in metadata.json
# (its strategy has no layout for them): written, not described, as it does. The scalars of the
# engine's optimizer-state rule (its moment prefixes end in "." or "_").
UNDESCRIBED = tuple(p for p in OPTIMIZER_STATE_PREFIXES if not p.endswith((".", "_")))


def check_release(release: str) -> str:
    if release not in RELEASES:
        raise ReshardError(f"--mindformers_release {release!r}: must be one of {', '.join(RELEASES)}")
    return release


def release_of_common(common: dict | None) -> str | None:
    """The oldest release whose CommonInfo has exactly these fields (None: no common.json)."""
    if common is None:
        return None
    keys = tuple(common)
    for release in ("2.1", "1.9", "1.7"):
        if set(keys) == set(COMMON_FIELDS[release]):
            return release
    return None


def common_for(release: str, common: dict | None, iteration: int) -> tuple[dict, list[str]]:
    """common.json for `release`: the source's values for the fields it has (step_num defaults
    to the iteration, others to null, as CommonInfo's defaults); returns the dropped keys too."""
    common = dict(common or {})
    out = {k: common.get(k) for k in COMMON_FIELDS[release]}
    if out["step_num"] is None:
        out["step_num"] = iteration
    return out, sorted(set(common) - set(out))


def check_iteration_free(root: str, iteration: int) -> str:
    """The iteration folder to write under root; ReshardError if it exists and is not empty
    (two saves in one folder would mix)."""
    out_dir = os.path.join(root, iteration_dir(iteration))
    if os.path.isdir(out_dir) and os.listdir(out_dir) or os.path.isfile(out_dir):
        raise ReshardError(f"{out_dir}: exists already (refusing to mix two saves in one iteration folder)")
    return out_dir


def default_kind(name: str) -> str:
    """'opt' or 'model' for a value whose source does not say (a legacy checkpoint)."""
    return "opt" if name.startswith(OPTIMIZER_STATE_PREFIXES) else "model"


@lru_cache(maxsize=1024)
def folded(lay: TensorLayout) -> tuple[tuple[int, ...], tuple]:
    """(device_matrix, tensor_map) of a layout as MindSpore's Layout.to_dict() records it: the
    optimizer shard folded in as extra device axes of dimension 0 (a replica axis used only in
    its inner part is split in two), tensor_map entries counted from the right, -1 = not split,
    a list = several axes, outermost first. Checked: the folded layout gives every rank the
    same block."""
    dev = list(lay.dev_matrix)
    opt = dict(lay._opt_axes)                          # dev index -> size used (inner part)
    new_dev: list[int] = []
    where: dict[int, int] = {}                         # dev index -> new index (its inner part)
    for i, size in enumerate(dev):
        used = opt.get(i)
        new_dev += [size // used, used] if used is not None and used < size else [size]
        where[i] = len(new_dev) - 1
    n = len(dev)
    dims: list[list[int]] = [[where[n - 1 - k] for k in axes] for axes in lay.tensor_map]
    if lay.opt_shard_size > 1 and dims:
        dims[0] += [where[i] for i, _ in reversed(lay._opt_axes)]   # most significant first
    m = len(new_dev)
    tmap = []
    for axes in dims:
        right = [m - 1 - j for j in axes]
        tmap.append(-1 if not right else right[0] if len(right) == 1 else right)
    check = make_layout(new_dev, tmap, 0, 0)
    if check.splits != lay.splits or check.replicas != lay.replicas:
        raise ReshardError(f"cannot express layout {lay} as a MindSpore Layout")
    return tuple(new_dev), tuple(tmap)


def layout_dict(lay: TensorLayout, stage_devices: int) -> dict:
    """mindspore.parallel.Layout.to_dict() of a stage's layout, keys in its order."""
    dev, tmap = folded(lay)
    return {"device_matrix": list(dev), "tensor_map": [t if isinstance(t, int) else list(t) for t in tmap],
            "interleaved_parallel": False,
            "alias_name": [_alias(i) for i in range(len(dev))],
            "rank_list": list(range(lay.stage * stage_devices, (lay.stage + 1) * stage_devices))}


def _alias(i: int) -> str:
    """The graph compiler's device-axis names: a, b, ..., z, then aa, ab, ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[i] if i < 26 else _alias(i // 26 - 1) + letters[i % 26]


@dataclass
class _Holding:
    """What the destination ranks hold of one parameter."""
    dtype: str
    kind: str
    local_shape: tuple[int, ...]
    layout: TensorLayout | None                      # the first holder's stage layout
    slices: dict[int, list[int]]                     # slice id -> ranks, first-seen order
    rank_slice: dict[int, int]


def write_checkpoint2(root: str, dst: Strategy | None, rank_files: dict[int, dict[str, str]], *,
                      iteration: int, common: dict | None = None, release: str = DEFAULT_RELEASE,
                      prefix: str | None = "CKP", durable: bool = True,
                      checksums: Mapping[str, tuple[int, str]] | None = None) -> dict[str, tuple[int, str]]:
    """Write the iteration folder and tracker under `root` from the engine's safetensors files:
    rank -> {'model' | 'opt': the file holding that rank's values of that kind} for every rank
    of dst's world. The files are moved into the iteration folder under MindFormers' names
    (keep them on the same file system: a rename, not a copy; their bytes already durable: the
    folder is synced with metadata.json). checksums: path -> (size, CRC32 hex) of the rank
    files as their writer recorded them (a file not there is read for it). Returns every
    written name relative to root -> (size, CRC32 hex), for the integrity manifest.
    ReshardError before anything is moved: the iteration folder exists already, a rank file
    missing, a value without layout that differs between ranks."""
    check_release(release)
    world = dst.world_size if dst is not None else 1
    missing = [r for r in range(world) if not rank_files.get(r)]
    if missing:
        raise ReshardError(f"rank {missing[0]}: no converted file to write into the Checkpoint 2.0 folder")
    folder = iteration_dir(iteration)
    out_dir = check_iteration_free(root, iteration)
    stage_devices = dst.stage_devices if dst is not None else 1

    holdings: dict[str, _Holding] = {}
    carried_digest: dict[str, tuple[str, int]] = {}
    for r in range(world):
        for kind, path in sorted(rank_files[r].items()):
            with _reader(path) as reader:
                for m in reader.metas.values():
                    _hold(holdings, carried_digest, dst, stage_devices, r, kind, reader, m)

    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, tuple[int, str]] = {}
    file_of: dict[tuple[int, str], str] = {}
    for r in range(world):
        for kind, path in sorted(rank_files[r].items()):
            name = shard_name(prefix, kind, r, world)
            record = (checksums or {}).get(path)
            if record is None:
                got = file_checksum(path)
                record = (got.size, got.crc32)
            os.replace(path, os.path.join(out_dir, name))
            file_of[(r, kind)] = name
            written[f"{folder}/{name}"] = record

    def put(rel: str, text: str) -> None:
        data = text.encode("utf-8")
        write_atomic(os.path.join(root, rel), data, durable=durable)
        written[rel] = (len(data), f"{crc32(data):08x}")

    metadata = {"state_dict_metadata": {}, "storage_data": {}}
    sdm, storage = metadata["state_dict_metadata"], metadata["storage_data"]
    for name, h in holdings.items():
        lay = h.layout
        if lay is None and h.kind == "opt" and name.startswith(UNDESCRIBED):
            continue                 # MindFormers stores these without describing them
        first = min(h.rank_slice)
        stage = first // stage_devices
        if lay is None:              # a value without layout: replicated over its stage
            lay = make_layout([stage_devices], [-1] * len(h.local_shape), 0, 0, stage)
        splits = lay.splits
        rank_list = range(stage * stage_devices, (stage + 1) * stage_devices)
        replica_id = []
        for r in rank_list:
            holders = h.slices.get(h.rank_slice.get(r, -1), [])
            replica_id.append(holders.index(r) if r in holders else 0)
        sdm[name] = {
            "properties": {"dtype": h.dtype, "replica_id": replica_id,
                           "allow_shape_mismatch": False, "allow_to_save": True},
            "global_shape": [n * s for n, s in zip(h.local_shape, splits)],
            "axis_fragmentations": list(splits),
            "layout": layout_dict(lay, stage_devices),
            "chunk": [{"global_offset": [sid], "local_shape": list(h.local_shape)} for sid in h.slices]}
        for sid, ranks in h.slices.items():
            records = []
            for r in ranks:
                rec = {"file_name": file_of[(r, h.kind)], "storage_rank": r}
                if RELEASES.index(release) >= RELEASES.index("1.9"):
                    rec["rank_group"] = list(ranks)
                records.append(rec)
            storage[str((name, (sid,)))] = records

    text = (json.dumps(metadata, separators=(",", ":"), ensure_ascii=False) if release == "2.1"
            else json.dumps(metadata, indent=4, ensure_ascii=False))
    put(f"{folder}/{METADATA}", text)      # (its folder synced: the shards' renames too)
    info, dropped = common_for(release, common, iteration)
    if dropped:
        log.warning("common.json: MindFormers %s does not know %s (dropped: its CommonInfo(**) "
                    "would raise on them)", release, ", ".join(dropped))
    put(f"{folder}/{COMMON}", json.dumps(info, indent=4, ensure_ascii=False))
    put(TRACKER, str(iteration))
    return written


def _hold(holdings: dict[str, _Holding], carried_digest: dict, dst: Strategy | None,
          stage_devices: int, r: int, kind: str, reader, m) -> None:
    """Record that rank r's `kind` file holds value m: its slice by the destination layout, or
    (no layout) the whole value, which must then be the same on every rank (except the
    optimizer's undescribed scalars)."""
    lay = dst.layout_in_stage(m.name, dst.stage_of(r)) if dst is not None else None
    if lay is None:
        slice_id = 0
        if not (kind == "opt" and m.name.startswith(UNDESCRIBED)):
            digest = _digest(reader, m)
            first = carried_digest.setdefault(m.name, (digest, r))
            if first[0] != digest:
                raise ReshardError(f"parameter {m.name}: ranks {first[1]} and {r} hold different "
                                   f"values and no destination layout says how it is split")
    else:
        slice_id = slice_id_of(lay.block_of(r % stage_devices), lay.splits)
    h = holdings.get(m.name)
    if h is None:
        h = holdings[m.name] = _Holding(m.dtype, kind, tuple(m.shape), lay, {}, {})
    elif (tuple(m.shape), m.dtype, kind) != (h.local_shape, h.dtype, h.kind):
        raise ReshardError(f"parameter {m.name}: rank {r} holds {kind} {m.dtype}{list(m.shape)}, "
                           f"an earlier rank {h.kind} {h.dtype}{list(h.local_shape)}")
    h.slices.setdefault(slice_id, []).append(r)
    h.rank_slice[r] = slice_id


def _reader(path: str):
    try:
        return open_reader(path)
    except FormatError as e:
        raise ReshardError(str(e)) from None


def _digest(reader, meta) -> str:
    return hashlib.sha256(bytes(reader.read_raw(meta.name))).hexdigest()
