"""Which files of a Checkpoint 2.0 iteration some destination ranks read, and a metadata.json
that names only those: what a node needs for MindFormers' own loader (and its online reshard)
without a shared disk.

Why pruning metadata.json (research/CHECKPOINT2.md, section 5): MindFormers' load_checkpoint
first checks that every file metadata.json's storage_data names exists (verify_ckpt_valid), and
its ReshardLoader wants a storage record for every chunk a parameter lists; the chunks serve it
only as storage_data keys, while which source slices a rank reads comes from the layouts. A
node-local copy holding only its ranks' files therefore carries a metadata.json whose chunk
lists and storage_data are cut to those files.

The files kept for a destination rank: every storage record (every replica MindFormers may pick
from, storage_rank or rank_group) of every chunk whose box meets the rank's box of a parameter
it holds in the destination layout, that box taken without the optimizer shard (a superset of
what any rank of the tensor's model-parallel group reads). A parameter the destination layout
does not name, or a value saved without a layout, is read by every rank: all its files.
"""
from __future__ import annotations

import ast
import json
from typing import Iterable

from ...errors import ReshardError
from ...layout import LayoutError, TensorLayout
from ...strategy import Strategy
from .folder import Checkpoint2, ParamMeta


def _chunk_box(p: ParamMeta, slice_id: int, local_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The global box of slice `slice_id` (row-major over axis_fragmentations)."""
    block, rest = [], slice_id
    for f in reversed(p.axis_fragmentations):
        block.append(rest % f)
        rest //= f
    block.reverse()
    return tuple((b * n, (b + 1) * n) for b, n in zip(block, local_shape))


def _meets(a, b) -> bool:
    return all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b))


def _rank_box(p: ParamMeta, lay: TensorLayout, local_rank: int):
    model = TensorLayout(lay.dev_matrix, lay.tensor_map, 1, 0, lay.stage)
    try:
        model.check_divides(p.global_shape)
    except LayoutError as exc:
        raise ReshardError(f"parameter {p.name}: the destination layout does not fit its shape "
                           f"{list(p.global_shape)} ({exc})") from None
    return model.region(model.block_of(local_rank), p.global_shape)


def files_read(ck: Checkpoint2, dst: Strategy | None, ranks: Iterable[int]) -> set[str]:
    """Names (in the iteration folder) of the shard files destination `ranks` of layout `dst`
    read (None: a complete destination, every file)."""
    ranks = sorted(set(ranks))
    out: set[str] = set()
    for p in ck.params.values():
        lays = dst.layouts.get(p.name) if dst is not None else None
        boxes = None
        if lays and p.global_shape:
            boxes = []
            for r in ranks:
                lay = dst.layout_in_stage(p.name, dst.stage_of(r))
                if lay is not None:
                    boxes.append(_rank_box(p, lay, r % dst.stage_devices))
        for chunk in p.chunks:
            if boxes is None or any(_meets(_chunk_box(p, chunk.slice_id, chunk.local_shape), b) for b in boxes):
                out.update(rec.file for rec in p.storage[chunk.slice_id])
    return out


def pruned_metadata(raw: dict, keep: set[str]) -> dict:
    """metadata.json's content cut to the files `keep`: storage records of other files dropped,
    then chunks left without a record, then parameters left without a chunk (MindFormers'
    loader checks every named file and every listed chunk)."""
    storage: dict[str, list] = {}
    kept_slices: dict[str, set[int]] = {}
    for key, records in raw["storage_data"].items():
        mine = [r for r in records if r.get("file_name") in keep]
        if mine:
            storage[key] = mine
            name, (slice_id,) = ast.literal_eval(key)
            kept_slices.setdefault(name, set()).add(slice_id)
    params = {}
    for name, entry in raw["state_dict_metadata"].items():
        chunks = [c for c in entry.get("chunk", []) if c["global_offset"][0] in kept_slices.get(name, ())]
        if chunks:
            params[name] = {**entry, "chunk": chunks}
    return {**raw, "state_dict_metadata": params, "storage_data": storage}


def add_rank_groups(raw: dict, ck: Checkpoint2) -> int:
    """Give every storage record of metadata.json's content `raw` (of iteration ck) that has no
    rank_group the ranks holding its slice (Checkpoint2.rank_group); returns how many got one.
    Why: MindFormers 1.9+ finds the file of a rank whose slice another rank stored only through
    rank_group ("Cannot find storage file for parameter ..."), which 1.7/1.8 do not write: their
    save_remove_redundancy folders load in 1.9+ only so. 1.7/1.8 read file_name and
    storage_rank only, so the field changes nothing for them."""
    added = 0
    for key, records in raw["storage_data"].items():
        name, (slice_id,) = ast.literal_eval(key)
        p = ck.params.get(name)
        for rec in records:
            if "rank_group" not in rec and p is not None and p.layouts:
                rec["rank_group"] = list(ck.rank_group(p, slice_id))
                added += 1
    return added


def dumps(raw: dict) -> str:
    """metadata.json text for a pruned copy (MindFormers reads it with json.load)."""
    return json.dumps(raw, indent=1)
