"""Write a MindFormers "Checkpoint 2.0" iteration for a destination layout.

Input: the engine's full plan of a conversion for the destination Strategy (None: one rank
holding complete tensors): per destination rank its slice of every laid-out parameter and the
values carried as they are. plan_iteration turns it into the plan of the shard files (one engine
run writes them all under their final names) and everything metadata.json says; once they are
written, write_checkpoint2 adds metadata.json, common.json and the tracker. Output, as
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
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Collection, Iterable

from obs_io.atomic import write_atomic
from obs_io.crc import crc32

from ...errors import ReshardError
from ...layout import TensorLayout, make_layout
from ...plan import OPTIMIZER_STATE_PREFIXES, Plan, TensorPlan
from ...strategy import Strategy
from .. import FormatError, open_reader
from .folder import COMMON, KINDS, METADATA, TRACKER, iteration_dir, shard_name, slice_id_of

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


def check_iteration_free(root: str, iteration: int, shards: Collection[str] = ()) -> str:
    """The iteration folder to write under root; ReshardError if it exists and holds anything
    but shards of this very conversion (`shards`: their file names; what blocks of it, or a run
    of it that was killed, wrote already) and hidden files (writers' temporary names, which no
    loader reads): a metadata.json or any other file would mix two saves in one folder."""
    out_dir = os.path.join(root, iteration_dir(iteration))
    if os.path.isfile(out_dir):
        raise ReshardError(f"{out_dir}: exists already, a file")
    others = sorted(name for name in os.listdir(out_dir) if name == METADATA
                    or not (name in shards or name.startswith("."))) if os.path.isdir(out_dir) else []
    if METADATA in others:   # finished; a rerun of the same conversion was recognised before this
        raise ReshardError(f"{out_dir}: exists already and holds a finished save that is not this "
                           f"conversion's result (another save, or a run stopped before it wrote its "
                           f"manifest); refusing to mix two saves in one iteration folder: choose "
                           f"another folder or remove it")
    if others:
        raise ReshardError(f"{out_dir}: exists already and holds {others[0]}"
                           f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}, not of this "
                           "conversion (refusing to mix two saves in one iteration folder)")
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
    first_pieces: tuple = ()                         # the first holder's source pieces
    first_shard: int = -1                            # and its shard rank (IterationPlan.shards)


@dataclass(frozen=True)
class IterationPlan:
    """One Checkpoint 2.0 iteration as the conversion's plan makes it, before anything is written.

    shards: the engine's plan of the shard files, one of its ranks per file: destination rank r's
    model values as rank r, its optimizer values as rank W + r (W = world, as the reader numbers
    a source's shards), each under its final name (RankPlan.path, relative to root:
    iteration_%08d/<MindFormers' shard name>); holdings: per parameter, what the destination
    ranks hold (in the order MindFormers' files list them: rank, then kind, then file order);
    compare: values without layout that ranks hold from different source pieces, (name, shard
    rank, shard rank of its first holder): their bytes must agree (check_carried)."""
    root: str
    iteration: int
    dst: Strategy | None
    prefix: str | None
    shards: Plan
    holdings: dict[str, _Holding]
    compare: tuple[tuple[str, int, int], ...]

    @property
    def world(self) -> int:
        return self.dst.world_size if self.dst is not None else 1

    @property
    def stage_devices(self) -> int:
        return self.dst.stage_devices if self.dst is not None else 1

    @property
    def folder(self) -> str:
        return iteration_dir(self.iteration)

    @property
    def out_dir(self) -> str:
        return os.path.join(self.root, self.folder)

    def shard_of(self, shard_rank: int) -> tuple[int, str]:
        """(destination rank, kind) of one of shards' ranks."""
        k, r = divmod(shard_rank, self.world)
        return r, KINDS[k]

    def block(self, dst_ranks: Iterable[int] | None) -> Plan:
        """The plan of the shards of destination ranks dst_ranks (None: all): a block converted
        on its own reads only its ranks' source files; a rank whose replica is in another
        block is converted, not linked."""
        if dst_ranks is None:
            return self.shards
        wanted = set(dst_ranks)
        outside = sorted(wanted - set(range(self.world)))
        if outside:
            raise ReshardError(f"destination rank {outside[0]} is outside the {self.world} ranks of "
                               f"the destination layout")
        ranks = tuple(rp for rp in self.shards.ranks if self.shard_of(rp.rank)[0] in wanted)
        kept = {rp.rank for rp in ranks}
        return replace(self.shards, ranks=ranks, same_as={d: f for d, f in self.shards.same_as.items()
                                                          if d in kept and f in kept})


def shard_plan(p: Plan, kind_of: Callable[[str], str], folder: str, prefix: str | None) -> Plan:
    """The plan of a full conversion (destination ranks holding both kinds of values) as the plan
    of MindFormers' shard files: one engine run writes every shard under its final name (see
    IterationPlan.shards; names relative to the root: <folder>/<shard name>). A rank holding
    none of a kind has no file of it; without optimizer state to describe (all of the opt values carried: a
    legacy checkpoint without moments) everything goes to the model files, or metadata.json would
    name no opt file and the folder read as a mixed one. Ranks with the same bytes stay so
    (same_as)."""
    world = p.dst_strategy.world_size if p.dst_strategy is not None else 1
    opt = [t for rp in p.ranks for t in rp.tensors if kind_of(t.name) == "opt"]
    if opt and all(t.carried for t in opt):
        kind_of = lambda name: "model"   # noqa: E731
    ranks, same_as = [], {}
    for k, kind in enumerate(KINDS):
        kept = set()
        for rp in p.ranks:
            tensors = tuple(t for t in rp.tensors if kind_of(t.name) == kind)
            if tensors:
                kept.add(rp.rank)
                ranks.append(replace(rp, rank=k * world + rp.rank, tensors=tensors,
                                     path=f"{folder}/{shard_name(prefix, kind, rp.rank, world)}"))
        same_as.update({k * world + d: k * world + f for d, f in p.same_as.items()
                        if d in kept and f in kept})
    return replace(p, ranks=tuple(ranks), same_as=same_as)


def plan_iteration(root: str, p: Plan, kind_of: Callable[[str], str], *, iteration: int,
                   prefix: str | None = "CKP") -> IterationPlan:
    """The iteration to write under `root` from a full plan of every destination rank (its
    dst_strategy: the destination layout, None: one rank holding complete tensors); kind_of(name):
    'model' or 'opt'. Everything metadata.json says comes from the plan (dtype, local shape,
    destination layout, holders), so nothing written is read back. ReshardError before anything
    is written: a rank holding nothing, a parameter whose shape, dtype or kind differ between
    ranks. (Whether the iteration folder under root is free for it: check_iteration_free, the
    caller's.)"""
    dst = p.dst_strategy
    shards = shard_plan(p, kind_of, iteration_dir(iteration), prefix)
    it = IterationPlan(root, iteration, dst, prefix, shards, {}, ())
    held = {it.shard_of(rp.rank)[0] for rp in shards.ranks}
    missing = [r for r in range(it.world) if r not in held]
    if missing:
        raise ReshardError(f"rank {missing[0]}: no converted file to write into the Checkpoint 2.0 folder")
    compare: list[tuple[str, int, int]] = []
    for rp in sorted(shards.ranks, key=lambda rp: it.shard_of(rp.rank)):
        r, kind = it.shard_of(rp.rank)
        for t in rp.tensors:
            _hold(it, compare, rp.rank, r, kind, t)
    return replace(it, compare=tuple(compare))


def _hold(it: IterationPlan, compare: list, shard: int, r: int, kind: str, t: TensorPlan) -> None:
    """Record that rank r's `kind` file (shard rank `shard`) holds value t: its slice by the
    destination layout, or (no layout) the whole value, which must then be the same on every
    rank (except the optimizer's undescribed scalars): the same source pieces, or else the same
    bytes once written (compare)."""
    dst, holdings = it.dst, it.holdings
    lay = dst.layout_in_stage(t.name, dst.stage_of(r)) if dst is not None else None
    h = holdings.get(t.name)
    if h is None:
        h = holdings[t.name] = _Holding(t.dtype, kind, tuple(t.shape), lay, {}, {}, t.pieces, shard)
    elif (tuple(t.shape), t.dtype, kind) != (h.local_shape, h.dtype, h.kind):
        raise ReshardError(f"parameter {t.name}: rank {r} holds {kind} {t.dtype}{list(t.shape)}, "
                           f"an earlier rank {h.kind} {h.dtype}{list(h.local_shape)}")
    if lay is None:
        slice_id = 0
        if not (kind == "opt" and t.name.startswith(UNDESCRIBED)) and t.pieces != h.first_pieces:
            compare.append((t.name, shard, h.first_shard))
    else:
        slice_id = slice_id_of(lay.block_of(r % it.stage_devices), lay.splits)
    h.slices.setdefault(slice_id, []).append(r)
    h.rank_slice[r] = slice_id


def check_carried(it: IterationPlan, open_file: Callable[[str], object] | None = None) -> None:
    """The values without layout that ranks hold from different source pieces are the same bytes
    (a value no layout splits is the same on every rank). With open_file (a source file's
    relative name -> an open reader): the values carried as they are, compared in the source
    before anything is written (each block's conversion can: it needs no other block's shard);
    without: the others (assembled whole, --keep_unnamed_params), compared in the written
    shards, which must be under it.root. ReshardError naming the parameter and both ranks."""
    tensor = {(rp.rank, t.name): t for rp in it.shards.ranks for t in rp.tensors}
    paths = {rp.rank: os.path.join(it.root, rp.path) for rp in it.shards.ranks}
    digests: dict[tuple[str, int], str] = {}

    def digest(name: str, shard: int) -> str:
        got = digests.get((name, shard))
        if got is None:
            t = tensor[(shard, name)]
            if open_file is None and not os.path.isfile(paths[shard]):
                raise ReshardError(f"parameter {name}: {paths[shard]} is not here to compare its "
                                   f"value with the other ranks' (it is written whole on each)")
            with open_file(t.pieces[0].src_file) if open_file else _reader(paths[shard]) as reader:
                got = digests[(name, shard)] = hashlib.sha256(bytes(reader.read_raw(name))).hexdigest()
        return got

    for name, shard, first in it.compare:
        carried = tensor[(shard, name)].carried and tensor[(first, name)].carried
        if carried != (open_file is not None):
            continue
        if digest(name, shard) != digest(name, first):
            raise ReshardError(f"parameter {name}: ranks {it.shard_of(first)[0]} and "
                               f"{it.shard_of(shard)[0]} hold different values and no destination "
                               f"layout says how it is split")


def metadata(it: IterationPlan, release: str) -> dict:
    """metadata.json of the iteration: per parameter (but the optimizer's undescribed values)
    its dtype, global shape, destination layout and chunks (state_dict_metadata), and which
    shard files store each chunk (storage_data), as MindFormers' save writes them."""
    sdm, storage = {}, {}
    stage_devices = it.stage_devices
    for name, h in it.holdings.items():
        lay = h.layout
        if lay is None and h.kind == "opt" and name.startswith(UNDESCRIBED):
            continue                 # MindFormers stores these without describing them
        stage = min(h.rank_slice) // stage_devices
        if lay is None:              # a value without layout: replicated over its stage
            lay = make_layout([stage_devices], [-1] * len(h.local_shape), 0, 0, stage)
        sdm[name] = {
            "properties": {"dtype": h.dtype, "replica_id": _replica_ids(h, stage, stage_devices),
                           "allow_shape_mismatch": False, "allow_to_save": True},
            "global_shape": [n * s for n, s in zip(h.local_shape, lay.splits)],
            "axis_fragmentations": list(lay.splits),
            "layout": layout_dict(lay, stage_devices),
            "chunk": [{"global_offset": [sid], "local_shape": list(h.local_shape)} for sid in h.slices]}
        for sid, ranks in h.slices.items():
            storage[str((name, (sid,)))] = _storage_records(it, h.kind, ranks, release)
    return {"state_dict_metadata": sdm, "storage_data": storage}


def _replica_ids(h: _Holding, stage: int, stage_devices: int) -> list[int]:
    """Per rank of the stage, its place among the holders of its slice (0: none)."""
    out = []
    for r in range(stage * stage_devices, (stage + 1) * stage_devices):
        holders = h.slices.get(h.rank_slice.get(r, -1), [])
        out.append(holders.index(r) if r in holders else 0)
    return out


def _storage_records(it: IterationPlan, kind: str, ranks: list[int], release: str) -> list[dict]:
    """storage_data's records of one chunk: each holder's file (and, 1.9+, the rank group)."""
    records = []
    for r in ranks:
        rec = {"file_name": shard_name(it.prefix, kind, r, it.world), "storage_rank": r}
        if RELEASES.index(release) >= RELEASES.index("1.9"):
            rec["rank_group"] = list(ranks)
        records.append(rec)
    return records


def write_checkpoint2(it: IterationPlan, *, common: dict | None = None,
                      release: str = DEFAULT_RELEASE, durable: bool = True,
                      elsewhere: Collection[str] = ()) -> dict[str, tuple[int, str]]:
    """Finish the iteration once every shard of it.shards is written under its final name:
    the carried values checked (check_carried), then metadata.json and common.json (the
    iteration folder synced with metadata.json: the shards' renames too), the tracker last.
    elsewhere: shards (names relative to it.root) written by another node, not under it.root
    here. Returns the names written, relative to it.root -> (size, CRC32 hex), for the
    integrity manifest. ReshardError (nothing of this step written): a shard missing (a block
    not written), carried values that differ."""
    check_release(release)
    missing = [rp.path for rp in it.shards.ranks if rp.path not in elsewhere
               and not os.path.isfile(os.path.join(it.root, rp.path))]
    if missing:
        raise ReshardError(f"{os.path.join(it.root, missing[0])}: missing ({len(missing)} shard(s) "
                           f"not written: a block of destination ranks not converted)")
    check_carried(it)
    written: dict[str, tuple[int, str]] = {}

    def put(rel: str, text: str) -> None:
        data = text.encode("utf-8")
        write_atomic(os.path.join(it.root, rel), data, durable=durable)
        written[rel] = (len(data), f"{crc32(data):08x}")

    meta = metadata(it, release)
    text = (json.dumps(meta, separators=(",", ":"), ensure_ascii=False) if release == "2.1"
            else json.dumps(meta, indent=4, ensure_ascii=False))
    put(f"{it.folder}/{METADATA}", text)
    info, dropped = common_for(release, common, it.iteration)
    if dropped:
        log.warning("common.json: MindFormers %s does not know %s (dropped: its CommonInfo(**) "
                    "would raise on them)", release, ", ".join(dropped))
    put(f"{it.folder}/{COMMON}", json.dumps(info, indent=4, ensure_ascii=False))
    put(TRACKER, str(it.iteration))
    return written


def _reader(path: str):
    try:
        return open_reader(path)
    except FormatError as e:
        raise ReshardError(str(e)) from None
