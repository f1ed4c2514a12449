"""The plan: for every destination rank, every tensor's slice and the source pieces that fill it.

Pure data computed from strategies (and checkpoint headers when present), never from tensor
bytes, so it can be printed (--dry_run), checked before anything is written, pickled to worker
processes, and used to tell cloud_entry which source ranks to download.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ReshardError
from .formats.meta import STORAGE_DTYPES
from .formats.safetensors_format import TO_CODE as SAFETENSORS_DTYPES
from .layout import Layout, LayoutError, complete_layout
from .strategy import Strategy

Region = tuple[tuple[int, int], ...]


def _itemsize(dtype: str | None) -> int:
    """Bytes per element; 1 for values planned without headers (shapes in blocks) or raw."""
    return STORAGE_DTYPES[dtype].itemsize if dtype in STORAGE_DTYPES else 1

# Tensors larger than this are assembled and written in axis-0 chunks (the .ckpt chunk size).
CHUNK_BYTES = 512 << 20


@dataclass(frozen=True)
class Piece:
    """Copy `src_region` of the tensor in `src_file` (source rank `src_rank`) into `dst_region`
    of the destination tensor."""
    src_rank: int
    src_file: str
    src_region: Region
    dst_region: Region


@dataclass(frozen=True)
class TensorPlan:
    name: str
    dtype: str | None            # MindSpore tensor_type; None when planned without headers
    shape: tuple[int, ...]       # destination slice shape (units of blocks without headers)
    pieces: tuple[Piece, ...]
    carried: bool = False        # no layout: the source rank's value as is

    @property
    def itemsize(self) -> int:
        return _itemsize(self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def chunk_rows(self) -> int:
        """Axis-0 rows per assembly chunk (all rows unless the tensor exceeds CHUNK_BYTES)."""
        if not self.shape:
            return 0
        row = max(1, self.nbytes // max(1, self.shape[0]))
        return max(1, min(self.shape[0], CHUNK_BYTES // row))

    @property
    def buffer_bytes(self) -> int:
        if not self.shape:
            return self.nbytes
        return self.chunk_rows() * (self.nbytes // max(1, self.shape[0]))


@dataclass(frozen=True)
class RankPlan:
    rank: int
    path: str                    # output file, relative to the destination folder
    tensors: tuple[TensorPlan, ...]
    carry_rank: int | None = None  # without headers: the rank values without layout come from

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def buffer_bytes(self) -> int:
        """The one assembly buffer this rank needs (its largest tensor or chunk)."""
        return max((t.buffer_bytes for t in self.tensors), default=0)

    @property
    def source_ranks(self) -> set[int]:
        """Without headers the values without layout are unknown: count the rank they would
        be carried from."""
        ranks = {p.src_rank for t in self.tensors for p in t.pieces}
        return ranks if self.carry_rank is None else ranks | {self.carry_rank}


@dataclass(frozen=True)
class Plan:
    ranks: tuple[RankPlan, ...]
    src_desc: str
    dst_desc: str
    with_headers: bool
    notes: tuple[str, ...] = field(default=())

    def needed_source_ranks(self) -> list[int]:
        return sorted(set().union(*(r.source_ranks for r in self.ranks)) if self.ranks else set())

    def dump(self) -> str:
        """The readable plan (--dry_run)."""
        unit = "" if self.with_headers else " (no checkpoint headers: shapes in blocks)"
        lines = [f"plan: {self.src_desc} -> {self.dst_desc}{unit}",
                 f"destination ranks: {len(self.ranks)}; source ranks read: "
                 f"{self.needed_source_ranks()}"]
        lines += [f"note: {n}" for n in self.notes]
        for rp in self.ranks:
            size = f", {rp.nbytes} bytes, buffer {rp.buffer_bytes}" if self.with_headers else ""
            lines.append(f"rank {rp.rank} -> {rp.path}: {len(rp.tensors)} tensors, sources "
                         f"{sorted(rp.source_ranks)}{size}")
            for t in rp.tensors:
                kind = "carried from" if t.carried else "<-"
                srcs = ", ".join(f"rank {p.src_rank}{_fmt_region(p.src_region)}"
                                 f"->{_fmt_region(p.dst_region)}" for p in t.pieces)
                lines.append(f"  {t.name} {t.dtype or ''}{list(t.shape)} {kind} {srcs}")
        return "\n".join(lines)


def _fmt_region(region: Region) -> str:
    return "[" + ",".join(f"{a}:{b}" for a, b in region) + "]"


@dataclass(frozen=True)
class Sources:
    """Where source tensors live. complete: files is {index: path} whose union is the model
    (every logical rank is 0); else {rank: path}. metas: per key the headers
    (name -> TensorMeta), for the keys whose files are present; None = plan from strategies."""
    complete: bool
    files: dict[int, str]
    metas: dict[int, dict] | None = None


def _lcm_shape(*grids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.lcm(*g) for g in zip(*grids))


def _pick(replicas: list[int], loads: dict[int, int], available) -> int:
    """The least-loaded replica (bytes already planned from it), so reads spread evenly over
    source files. Only present files qualify when some are known to be absent (a rank block
    that downloaded just the ranks a strategies-only plan chose: one of them always holds it)."""
    cands = [r for r in replicas if available is None or r in available] or replicas
    return min(cands, key=lambda r: (loads.get(r, 0), r))


def _pieces(dst_region: Region, full: tuple[int, ...], src_lays: list[Layout],
            src_stage_devices: int, loads: dict[int, int], available, itemsize: int,
            file_of, name: str) -> list[Piece]:
    """Intersect the destination region with the source grid; one replica per source block."""
    lay = src_lays[0]
    replicas: dict[tuple[int, ...], list[int]] = {}
    for sl in src_lays:
        for block, local in sl.replicas.items():
            replicas.setdefault(block, []).extend(sl.stage * src_stage_devices + r for r in local)
    ranges = []
    for (a, b), n, s in zip(dst_region, full, lay.splits):
        bs = n // s
        ranges.append(range(a // bs, (b - 1) // bs + 1) if b > a else range(0))
    out = []
    for block in _product(ranges):
        src_block = lay.region(block, full)
        inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(dst_region, src_block))
        rank = _pick(replicas[block], loads, available)
        loads[rank] = loads.get(rank, 0) + math.prod(b - a for a, b in inter) * itemsize
        out.append(Piece(rank, file_of(rank, name),
                         tuple((a - c, b - c) for (a, b), (c, _) in zip(inter, src_block)),
                         tuple((a - c, b - c) for (a, b), (c, _) in zip(inter, dst_region))))
    return out


def _product(ranges):
    if not ranges:
        yield ()
        return
    for i in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (i,) + rest


def build_plan(src: Strategy | None, dst: Strategy | None, sources: Sources, *,
               dst_ranks=None, prefix: str = "checkpoint_", fmt: str = "ckpt") -> Plan:
    """Raises ReshardError (naming the parameter or file) for anything it cannot convert."""
    if src is not None and sources.complete:
        raise ReshardError("a source strategy was given but the source checkpoint is complete "
                           "(no rank_<r> folders)")
    if src is None and not sources.complete:
        raise ReshardError("the source checkpoint has rank_<r> folders: give its strategy "
                           "(--src_strategy)")
    s_dev = src.stage_devices if src else 1
    d_dev = dst.stage_devices if dst else 1
    if s_dev % d_dev and d_dev % s_dev:
        raise ReshardError(f"device counts do not divide: the source has {s_dev} devices per "
                           f"stage, the destination {d_dev}")
    world = dst.world_size if dst else 1
    ranks = list(range(world)) if dst_ranks is None else sorted(set(dst_ranks))
    for r in ranks:
        if not 0 <= r < world:
            raise ReshardError(f"destination rank {r} is outside the destination world of {world}")
    metas = sources.metas
    with_headers = metas is not None

    # Names in source order, with the source keys holding each.
    holders: dict[str, list[int]] = {}
    if with_headers:
        for key in sorted(metas):
            for name in metas[key]:
                holders.setdefault(name, []).append(key)
        if src is not None and not set(src.layouts) & set(holders):
            raise ReshardError(f"source strategy {src.source} names none of the checkpoint's "
                               f"parameters")
    else:
        names = list(src.layouts) if src else list(dst.layouts) if dst else []
        keys = sorted(sources.files) or list(range(src.world_size if src else 1))
        for name in names:
            holders[name] = [k for k in keys if src is None or
                             any(src.stage_of(k) == lay.stage for lay in src.layouts[name])]

    def file_of(rank: int, name: str) -> str:
        if sources.complete:
            return sources.files.get(holders[name][0], "<complete>")
        return sources.files.get(rank, f"<rank {rank}>")

    def meta_of(name: str, key: int):
        return metas[key][name]

    # Full shapes (and consistency of slice shapes across the ranks holding a slice).
    full: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str | None] = {}
    notes: list[str] = []
    for name, keys in holders.items():
        slay = src.layouts.get(name) if src else None
        if with_headers:
            m0 = meta_of(name, keys[0])
            dtypes[name] = m0.dtype
            if fmt == "safetensors" and m0.dtype not in SAFETENSORS_DTYPES:
                raise ReshardError(f"parameter {name}: a {m0.dtype} value cannot be stored in "
                                   f"safetensors (use --format ckpt)")
            if not m0.sliceable and (slay is not None or (dst is not None and name in dst.layouts)):
                raise ReshardError(f"parameter {name}: a {m0.dtype} value cannot be resharded")
            if slay is None:
                full[name] = m0.shape
                continue
            for k in keys:
                m = meta_of(name, k)
                if m.shape != m0.shape or m.dtype != m0.dtype:
                    raise ReshardError(f"parameter {name}: rank {k} holds {m.dtype}{list(m.shape)}, "
                                       f"rank {keys[0]} {m0.dtype}{list(m0.shape)}")
            try:
                full[name] = slay[0].full_shape(m0.shape)
            except LayoutError as e:
                raise ReshardError(f"parameter {name}: {e} (source strategy {src.source})") from None
        else:
            dtypes[name] = None
            grids = [lay.splits for lay in (slay or ())]
            grids += [lay.splits for lay in (dst.layouts.get(name, ()) if dst else ())]
            full[name] = _lcm_shape(*grids) if grids else ()
    if dst is not None and with_headers and not set(dst.layouts) & set(holders):
        raise ReshardError(f"destination strategy {dst.source} names none of the checkpoint's "
                           f"parameters")
    if dst is not None and with_headers:
        missing = [n for n in dst.layouts if n not in holders]
        if missing:
            notes.append(f"{len(missing)} parameters of the destination strategy are not in the "
                         f"checkpoint and are skipped (e.g. {missing[0]})")

    loads: dict[int, int] = {}
    available = set(sources.files) if with_headers and not sources.complete else None

    rank_plans = []
    for d in ranks:
        d_stage = dst.stage_of(d) if dst else 0
        d_local = d % d_dev
        tensors: list[TensorPlan] = []
        carried: list[str] = []
        for name, keys in holders.items():
            dlay = dst.layout_in_stage(name, d_stage) if dst else complete_layout(len(full[name]))
            if dst is not None and dlay is None and name in dst.layouts:
                continue                         # lives in another destination stage
            slays = list(src.layouts.get(name, ())) if src else \
                [complete_layout(len(full[name]))]
            if dlay is None or not slays:
                carried.append(name)
                continue
            slays = [sl for sl in slays if sl.same_blocks(slays[0])]
            if dlay.devices % slays[0].devices and slays[0].devices % dlay.devices:
                raise ReshardError(f"parameter {name}: device counts do not divide "
                                   f"({slays[0].devices} -> {dlay.devices})")
            try:
                dlay.check_divides(full[name])
            except LayoutError as e:
                raise ReshardError(f"parameter {name}: {e} (destination strategy "
                                   f"{dst.source if dst else ''})") from None
            dst_region = dlay.region(dlay.block_of(d_local), full[name])
            itemsize = _itemsize(dtypes[name])
            pieces = _pieces(dst_region, full[name], slays, s_dev, loads, available, itemsize,
                             file_of, name)
            tensors.append(TensorPlan(name, dtypes[name], tuple(b - a for a, b in dst_region),
                                      tuple(pieces)))
        used_stages = sorted({p.src_rank // s_dev for t in tensors for p in t.pieces}) or [0]
        carry_rank = (used_stages[0] * s_dev + d_local % s_dev if src else 0) \
            if not with_headers else None
        for name in carried:
            tensors.append(_carried(name, d_local % s_dev, used_stages, s_dev, holders[name],
                                    sources, full[name], dtypes[name], file_of))
        rank_plans.append(RankPlan(d, f"rank_{d}/{prefix}{d}.{fmt}", tuple(tensors),
                                   carry_rank))
    src_desc = f"{src.num_stages} stage(s) x {s_dev} devices ({src.source})" if src \
        else "complete checkpoint"
    dst_desc = f"{dst.num_stages} stage(s) x {d_dev} devices ({dst.source})" if dst \
        else "complete checkpoint"
    return Plan(tuple(rank_plans), src_desc, dst_desc, with_headers, tuple(notes))


def _carried(name, local, used_stages, s_dev, keys, sources, shape, dtype, file_of) -> TensorPlan:
    """MindSpore's rule for parameters without a layout: the value of source local rank
    (destination local rank % source devices per stage) in the lowest stage read."""
    if sources.complete:
        rank = 0
    else:
        wanted = [st * s_dev + local for st in used_stages]
        rank = next((r for r in wanted if r in keys), None)
        if rank is None:
            rank = next((k for k in keys if k % s_dev == local), keys[0])
    if sources.metas is not None:   # each rank's own value: its shape and dtype may differ
        meta = sources.metas[keys[0] if sources.complete else rank][name]
        shape, dtype = meta.shape, meta.dtype
    region = tuple((0, n) for n in shape)
    return TensorPlan(name, dtype, tuple(shape),
                      (Piece(rank, file_of(rank, name), region, region),), carried=True)
