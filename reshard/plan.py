"""The plan: for every destination rank, every tensor's slice and the source pieces that fill it.

Pure data computed from strategies (and checkpoint headers when present), never from tensor
bytes (except to compare copies: duplicated tensors of a complete folder, and the samples
check_copies compares to make sure the strategies describe the checkpoint), so it can be printed
(--dry_run), checked before anything is written, pickled to worker processes, and used to tell
a caller which source files to download.

Two builds make a conversion: a skeleton from strategies alone (which source files the
destination ranks read: Plan.needed_files), then the full plan from those files' headers (real
shapes and dtypes, and every check). build_plan() is the one builder; _Planner holds its steps.

At scale (thousands of destination ranks, thousands of parameters) the planner prepares each
destination stage's parameters once (layouts, checks, geometry) and each distinct slice
geometry once, so the work per rank is picking replicas; equal pieces, regions and shapes are
one shared (immutable) object, so the plan's memory grows with its tensors, not its pieces.
"""
from __future__ import annotations

import bisect
import contextlib
import gc
import heapq
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Iterator, Sequence

from . import compare
from .config import DEFAULT, ReshardConfig
from .errors import ReshardError
from .formats import CheckpointReader, FileIndex, FormatError, TensorMeta, open_reader, registry
from .formats.meta import STORAGE_DTYPES
from .layout import LayoutError, TensorLayout, complete_layout
from .sources import DEFAULT_PREFIX, SourceSet, output_name
from .strategy import Strategy

Region = tuple[tuple[int, int], ...]
Fetch = Callable[[list[str]], None]

# Tensors larger than this are assembled and written in axis-0 chunks (the .ckpt chunk size).
CHUNK_BYTES = 512 << 20
# Parameters a training strategy names that an inference checkpoint need not hold: optimizer
# moments and accumulators of MindSpore's and MindFormers' optimizers. Any other parameter of the
# destination that the checkpoint lacks is an error: the training would start it from random.
OPTIMIZER_STATE_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "moments.", "lamb_m.", "lamb_v.",
                            "accu_grads.", "accumulate_", "exp_avg.", "exp_avg_sq.", "global_step",
                            "learning_rate", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                            "epoch_num", "step_num", "loss_scale")
# Parameters a PET/LoRA network adds to a base model (MindFormers' `mindpet_delta_*`, and the
# `lora_a`/`lora_A.weight` names of its newer code): a base checkpoint lacks them and the network
# initialises them, so a destination strategy naming them converts without them.
ADAPTER_NAME = re.compile(r"mindpet_delta_|\.lora_[ab](?:\.weight)?$", re.IGNORECASE)


@dataclass(frozen=True)
class PlanPolicy:
    """What the plan does where the strategies and the checkpoint disagree on which parameters
    exist (each False: an error naming them, before anything is written).

    Attributes:
        allow_missing: parameters the destination strategy names and the checkpoint lacks
            (other than optimizer states and PET/LoRA adapters, always skipped) are skipped
            too: the network initialises them (--allow_missing_params).
        keep_unnamed: parameters of the checkpoint that the destination strategy does not name
            but the source lays out in pieces (a complete source: any value of more than one
            element; never optimizer states or scalars such as global_step) are written whole
            into every destination rank (--keep_unnamed_params).
    """
    allow_missing: bool = False
    keep_unnamed: bool = False


# Slotted dataclasses (a 4096-rank plan holds a million pieces) where Python has them (3.10+);
# on 3.9 the same classes without slots.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


def _itemsize(dtype: str | None) -> int:
    """Bytes per element; 1 for values planned without headers (shapes in blocks) or raw."""
    return STORAGE_DTYPES[dtype].itemsize if dtype in STORAGE_DTYPES else 1


@dataclass(frozen=True, **_SLOTS)
class Piece:
    """Copy `src_region` of the tensor in source file `src_file` into `dst_region` of the
    destination tensor. Regions: per dimension (start, stop) in elements. src_file is relative
    to the source's base folder ('/'-separated); in a skeleton it may be a placeholder such as
    '<rank 3>' for a rank the caller has not got."""
    src_rank: int            # source rank (0 for a complete source)
    src_file: str
    src_region: Region
    dst_region: Region


@dataclass(frozen=True, **_SLOTS)
class TensorPlan:
    """One destination tensor, filled by its pieces.

    Attributes:
        name: the parameter's name.
        dtype: MindSpore's tensor_type name ("Float32", "BFloat16", ...); None when planned
            without headers.
        shape: in elements (in blocks of the finest grid when planned without headers).
        pieces: the source regions that fill it (Piece), or, when `carried`, the one source
            rank's whole value.
        carried: the value is copied as it is (parameters no strategy describes).
    """
    name: str
    dtype: str | None            # MindSpore tensor_type ("Float32", "BFloat16", ...)
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    carried: bool = False

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _itemsize(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole destination tensor."""
        return math.prod(self.shape) * self.itemsize

    def chunk_rows(self) -> int:
        """Axis-0 rows per assembly chunk (all rows unless the tensor exceeds CHUNK_BYTES)."""
        if not self.shape:
            return 0
        row = max(1, self.nbytes // max(1, self.shape[0]))
        return max(1, min(self.shape[0], CHUNK_BYTES // row))

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the assembly buffer this tensor needs (one chunk)."""
        if not self.shape:
            return self.nbytes
        return self.chunk_rows() * (self.nbytes // max(1, self.shape[0]))


def _tensor_plans() -> Callable[[str, str | None, tuple[int, ...], tuple[Piece, ...]], TensorPlan]:
    """TensorPlan(name, dtype, shape, pieces) for the planner's loop over every tensor of
    every rank: a frozen dataclass's __init__ sets each field through object.__setattr__,
    which took 1.5 s of the 2.2 million tensors of an 8192-rank plan; this sets the slots
    directly (the same object, half the time). The class itself where it has no slots."""
    if not _SLOTS or hasattr(TensorPlan, "__post_init__"):
        return TensorPlan
    new = object.__new__
    name_, dtype_, shape_, pieces_, carried_ = (TensorPlan.__dict__[f.name].__set__
                                                for f in fields(TensorPlan))

    def make(name: str, dtype: str | None, shape: tuple[int, ...],
             pieces: tuple[Piece, ...]) -> TensorPlan:
        t = new(TensorPlan)
        name_(t, name)
        dtype_(t, dtype)
        shape_(t, shape)
        pieces_(t, pieces)
        carried_(t, False)
        return t
    return make


_tensor_plan = _tensor_plans()


@dataclass(frozen=True, **_SLOTS)
class RankPlan:
    """One destination file.

    Attributes:
        rank: the destination rank.
        path: relative to the destination folder (sources.output_name).
        tensors: in writing order.
        carry_rank: without headers, the source rank the values without layout come from.
    """
    rank: int
    path: str
    tensors: tuple[TensorPlan, ...]
    carry_rank: int | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the output file."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the one assembly buffer this rank needs (its largest tensor or chunk);
        worked out once per distinct shape and dtype (a rank holds hundreds of tensors of a
        few shapes)."""
        distinct = {(t.shape, t.dtype): t for t in self.tensors}
        return max((t.buffer_bytes for t in distinct.values()), default=0)

    @property
    def source_ranks(self) -> set[int]:
        """Without headers the values without layout are unknown: count the rank they would
        be carried from."""
        ranks = {p.src_rank for t in self.tensors for p in t.pieces}
        return ranks if self.carry_rank is None else ranks | {self.carry_rank}

    @property
    def source_files(self) -> list[str]:
        """Relative names of the source files this rank reads."""
        return sorted({p.src_file for t in self.tensors for p in t.pieces})


@dataclass(frozen=True)
class Plan:
    """What a conversion does, as data: the contract between the planner, a caller that
    downloads sources, and the executor.

    needed_files() names the source files (relative to source.base) the ranks read. Built by
    reshard.api.plan_from_strategies (skeleton) and reshard.api.complete_plan (full); both
    raise ReshardError, one line naming the parameter, file, rank or flag at fault, for
    anything that cannot be converted.

    Attributes:
        ranks: the destination ranks converted (RankPlan, sorted by rank).
        src_desc: the source side in words, for the plan's summary.
        dst_desc: the destination side in words.
        with_headers: False for a skeleton (from strategies alone: shapes in blocks, dtypes
            None), True for a full plan (every check done).
        notes: lines for the user about choices the planner made.
        source: the classified source (None: planned from strategies alone).
        src_strategy: the source strategy (None: a complete checkpoint).
        dst_strategy: the destination strategy (None: a complete output).
        dst_ranks: the destination ranks as asked; None for every rank.
        prefix: the output files' name prefix.
        fmt: the output format (formats.registry name).
        local_root: where complete_plan read the source files.
        policy: PlanPolicy applied.
        source_use: relative name -> how the conversion reads that source file (complete_plan
            decides: see choose_mode; a remote source: in place by ranged GETs, or from a copy
            read while it downloads); a file not listed is read under the local root ("local").
        same_as: rank -> an earlier rank of this plan whose file has the same bytes: it holds
            the same slices, read from the same source pieces (data-parallel replicas without
            optimizer sharding), so it is written once and copied (execute); known from the
            plan, not the bytes.
    """
    ranks: tuple[RankPlan, ...]
    src_desc: str
    dst_desc: str
    with_headers: bool
    notes: tuple[str, ...] = field(default=())
    source: SourceSet | None = None
    src_strategy: Strategy | None = None
    dst_strategy: Strategy | None = None
    dst_ranks: tuple[int, ...] | None = None
    prefix: str = DEFAULT_PREFIX
    fmt: str = registry.DEFAULT
    local_root: str | None = None
    policy: PlanPolicy = field(default_factory=PlanPolicy)
    source_use: dict[str, SourceUse] = field(default_factory=dict)
    same_as: dict[int, int] = field(default_factory=dict)

    def mode_of(self, name: str) -> str:
        """'local', 'fetch' (downloaded before converting) or 'remote' (ranged GETs)."""
        use = self.source_use.get(name)
        return use.mode if use is not None else "local"

    def files_in_mode(self, mode: str) -> list[str]:
        """Sorted relative names of the needed source files read in this mode: the caller
        downloads files_in_mode('fetch') under the local root before execute."""
        return sorted(n for n in self.needed_files() if self.mode_of(n) == mode)

    def location_of(self, name: str, local_root: str) -> str:
        """Where a source file is read: its URL when read remotely, else under local_root."""
        assert self.source is not None
        if self.mode_of(name) == "remote":
            return self.source.path_of(name)
        return self.source.path_of(name, local_root)

    def needed_source_ranks(self) -> list[int]:
        """Sorted source ranks the destination ranks read ([0] for a complete source)."""
        return sorted(set().union(*(r.source_ranks for r in self.ranks)) if self.ranks else set())

    def needed_files(self) -> list[str]:
        """Sorted relative names (in source.files) of the files the destination ranks read:
        download exactly these before complete_plan. A complete source: every file, or with an
        index only the files holding tensors of the destination ranks' stages."""
        src = self.source
        if src is None:
            return []
        if self.with_headers:
            return sorted({f for rp in self.ranks for f in rp.source_files})
        if not src.complete:
            return sorted(src.files[r] for r in self.needed_source_ranks() if r in src.files)
        if src.index is None or self.dst_strategy is None:
            return sorted(set(src.files.values()))
        dst = self.dst_strategy
        stages = {dst.stage_of(rp.rank) for rp in self.ranks}
        return sorted({file for name, file in src.index.items()
                       if name not in dst.layouts or
                       any(lay.stage in stages for lay in dst.layouts[name])} | set(src.unindexed))

    def dump(self, destination: str | None = None) -> str:
        """The readable plan (--dry_run): where from and where to (as the user named them, never
        a staging folder), in which unit the shapes are, and per destination rank its file, size
        and every tensor with the source pieces filling it. destination: the output location to
        name (None: not given)."""
        return "\n".join(self.dump_parts(destination))

    def dump_parts(self, destination: str | None = None) -> Iterator[str]:
        """dump()'s text in parts, to write as they come ('\\n'.join of them is dump()): the
        head, then one part per destination rank (its lines). A plan of thousands of ranks
        prints millions of lines: each distinct shape and list of pieces is formatted once
        (_DumpText), and no more than one rank's text is held at a time."""
        if self.with_headers:
            unit = "in elements, as dtype[shape], read from the checkpoint's headers"
        else:
            unit = ("in blocks, not elements: no checkpoint was read, so only the strategies' "
                    "splits are known ([1, 1] of [2, 1] blocks: half of dimension 0, all of "
                    "dimension 1); give --src_checkpoint for shapes in elements and dtypes")
        lines = [f"plan: {self.src_desc} -> {self.dst_desc}",
                 f"source: {_describe_source(self.source)}, {_strategy_text(self.src_strategy)}",
                 f"destination: {destination or 'not given'}, {_strategy_text(self.dst_strategy)}",
                 f"shapes: {unit}",
                 f"destination ranks: {len(self.ranks)}; source ranks read: "
                 f"{ranks_text(self.needed_source_ranks())}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += self._source_use_text()
        yield "\n".join(lines)
        text = _DumpText(self)
        for rp in self.ranks:
            size = (f", {human_size(rp.nbytes)}, assembly buffer {human_size(rp.buffer_bytes)}"
                    if self.with_headers else "")
            twin = self.same_as.get(rp.rank)
            lines = [f"rank {rp.rank} -> {rp.path}: {len(rp.tensors)} tensors{size}, "
                     f"from source ranks {ranks_text(sorted(rp.source_ranks))}"
                     + (f"; the same bytes as rank {twin} (copied, not converted again)"
                        if twin is not None else "")]
            lines += text.tensors(rp.tensors)
            yield "\n".join(lines)

    def __str__(self) -> str:
        return self.dump()

    def _source_use_text(self) -> list[str]:
        """How each remote source file is read (nothing for a local source)."""
        uses = {n: u for n, u in self.source_use.items() if u.mode != "local"}
        if not uses or self.source is None:
            return []
        remote = [u for u in uses.values() if u.mode == "remote"]
        fetched = [u for u in uses.values() if u.mode == "fetch"]
        lines = [f"source files: {len(remote)} read in place by ranged GETs (nothing of them on "
                 f"local disk), {len(fetched)} downloaded first "
                 f"({human_size(sum(u.size for u in fetched))} of local disk)"]
        for name, u in sorted(uses.items()):
            lines.append(f"  {u.mode} {self.source.path_of(name)}: {human_size(u.size)}, "
                         f"{u.ranks} destination rank(s) read {human_size(u.needed)} of it")
        return lines


class _DumpText:
    """The lines of Plan.dump for tensors, each distinct part formatted once: the name with its
    shape (per name, dtype and shape) and the pieces (per pieces tuple and shape: the planner
    shares one tuple between the tensors and ranks reading the same pieces)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.heads: dict[tuple, str] = {}
        # id(pieces) -> (pieces, shape, text): the tuple is kept, so its id stays its own
        self.pieces: dict[int, tuple[tuple[Piece, ...], tuple[int, ...], str]] = {}

    def tensors(self, tensors: Iterable[TensorPlan]) -> list[str]:
        """Per tensor `  <name> <shape> <- <pieces>`, or `... carried from rank <r> as is`."""
        heads, texts, out = self.heads, self.pieces, []
        for t in tensors:
            head = heads.get((t.name, t.dtype, t.shape))
            if head is None:
                head = heads[t.name, t.dtype, t.shape] = f"  {t.name} {self.shape(t)}"
            if t.carried:
                out.append(f"{head} carried from rank {t.pieces[0].src_rank} as is")
                continue
            got = texts.get(id(t.pieces))
            if got is None or got[0] is not t.pieces or got[1] != t.shape:
                got = texts[id(t.pieces)] = (t.pieces, t.shape, _pieces_text(t))
            out.append(f"{head} <- {got[2]}")
        return out

    def shape(self, t: TensorPlan) -> str:
        """Its shape: in elements with the dtype, or in blocks of its full grid."""
        if self.plan.with_headers:
            return f"{t.dtype}{list(t.shape)}"
        grid = _block_grid(self.plan.src_strategy, self.plan.dst_strategy, t.name)
        return f"{list(t.shape)} of {list(grid)} blocks" if grid else f"{list(t.shape)} blocks"


def _pieces_text(t: TensorPlan) -> str:
    """Each piece: the source rank, its region and, unless it fills the tensor, where to."""
    whole = tuple((0, n) for n in t.shape)
    pieces = []
    for p in t.pieces:
        into = "" if p.dst_region == whole else f" into {_fmt_region(p.dst_region)}"
        pieces.append(f"rank {p.src_rank} {_fmt_region(p.src_region)}{into}")
    return "; ".join(pieces)


SOURCE_MODES = ("auto", "fetch", "remote")


@dataclass(frozen=True)
class SourceUse:
    """How a conversion reads one source file. mode: 'local' (the source is local), 'fetch'
    (downloaded whole, read while it downloads) or 'remote' (read in place by ranged GETs, nothing
    of it written to local disk); ranks: destination ranks of the plan reading it; needed:
    the bytes they read from it (a slice read by two ranks counts twice); size: its bytes."""
    mode: str
    ranks: int
    needed: int
    size: int
    # a remote file's headers as the plan read them: the workers open it without reading them
    # (and read a fetched one while it downloads)
    index: FileIndex | None = field(default=None, repr=False, compare=False)


def choose_mode(remote: bool, ranks: int, needed: int, size: int, asked: str = "auto") -> str:
    """THE rule for one source file. Local source: 'local'. Remote, asked 'fetch' or 'remote':
    that. 'auto': 'fetch' when the plan's ranks would GET more bytes of it in place than the
    file has (`needed` counts a slice read by two ranks twice: several destination ranks
    reading the same bytes), so one download, read while it arrives, moves less; else
    'remote': only the bytes the ranks need move and none of them lands on local disk (even
    when one rank needs the whole file: a fetched copy would move the same bytes and take the
    disk a converted rank needs)."""
    if asked not in SOURCE_MODES:
        raise ReshardError(f"--source_mode {asked!r}: must be one of {', '.join(SOURCE_MODES)}")
    if not remote:
        return "local"
    if asked != "auto":
        return asked
    return "fetch" if ranks >= 2 and needed > size else "remote"


def source_uses(plan: Plan, sizes: dict[str, int], remote: bool, asked: str = "auto",
                indexes: dict[str, FileIndex] | None = None) -> dict[str, SourceUse]:
    """choose_mode for every source file a full plan reads (sizes: bytes of each file;
    indexes: the remote files' headers, kept for those read in place or fetched: workers open
    them without reading headers again, and a fetched file is read while it downloads)."""
    readers: dict[str, set[int]] = {}
    needed: dict[str, int] = {}
    for rp in plan.ranks:
        for t in rp.tensors:
            for p in t.pieces:
                readers.setdefault(p.src_file, set()).add(rp.rank)
                n = t.nbytes if t.carried else \
                    math.prod(b - a for a, b in p.src_region) * t.itemsize
                needed[p.src_file] = needed.get(p.src_file, 0) + n
    out = {}
    for name in plan.needed_files():
        ranks, size = len(readers.get(name, ())), sizes.get(name, 0)
        mode = choose_mode(remote, ranks, needed.get(name, 0), size, asked)
        out[name] = SourceUse(mode, ranks, needed.get(name, 0), size,
                              (indexes or {}).get(name) if mode != "local" else None)
    return out


def human_size(nbytes: int) -> str:
    """Bytes as a person reads them: 512 B, 41.3 KiB, 1.2 GiB (powers of 1024)."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{nbytes} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{nbytes} B"   # not reached


def ranks_text(ranks: Iterable[int]) -> str:
    """Sorted ranks as runs: 0-7, or 0, 2, 4-5; "none" for none."""
    ranks = sorted(ranks)
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def _fmt_region(region: Region) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in region) + "]"


class Headers:
    """Checkpoint headers (parameter name -> TensorMeta) and sizes of source files, read once
    each and on demand: under local_root, or, with remote_root (the source's obs:// / s3://
    folder), in place by ranged GETs (nothing downloaded; s3_config: obs_io's configuration).
    A local file not there is fetched through `fetch(names)` (which must put them at
    local_root/<name>) when given, else it is absent. config: the planning fields of the run's
    ReshardConfig (header_threads; checked_layouts and shard_members of the plan's checks)."""

    def __init__(self, local_root: str, fetch: Fetch | None = None, *,
                 remote_root: str | None = None, s3_config=None, config: ReshardConfig = DEFAULT):
        self.local_root = local_root
        self.config = config
        self.fetch = fetch
        self.remote_root = remote_root
        self.s3_config = s3_config
        self._metas: dict[str, dict[str, TensorMeta] | None] = {}
        self.sizes: dict[str, int] = {}      # bytes of each file read
        self.indexes: dict[str, FileIndex] = {}   # remote files: what opens them again
        self._found: dict[str, FileIndex] = {}    # every file read: opened again without headers

    def path(self, name: str) -> str:
        """Where `name` is read: a local path, or its URL when the headers are read remotely."""
        if self.remote_root is not None:
            return self.remote_root.rstrip("/") + "/" + name
        return os.path.join(self.local_root, *name.split("/"))

    def _present(self, name: str) -> bool:
        """A remote name comes from the source's listing: there (a vanished object fails its
        read, naming it)."""
        return self.remote_root is not None or os.path.exists(self.path(name))

    def prefetch(self, names: Iterable[str]) -> None:
        """Local: fetch, in one call, the files of `names` not under local_root. Remote: read
        their headers now, several at once (each costs a few GETs of latency)."""
        if self.remote_root is not None:
            todo = [n for n in dict.fromkeys(names) if n not in self._metas]
            if len(todo) > 1:
                with ThreadPoolExecutor(min(self.config.header_threads, len(todo))) as pool:
                    for name, got in zip(todo, pool.map(self._load, todo)):
                        self._keep(name, got)
            return
        missing = [n for n in names if not os.path.exists(self.path(n))]
        if missing and self.fetch is not None:
            self.fetch(missing)

    def _load(self, name: str) -> FileIndex:
        try:
            with open_reader(self.path(name), s3_config=self.s3_config, config=self.config) as reader:
                return reader.index()
        except FormatError as e:
            raise ReshardError(str(e)) from None

    def _keep(self, name: str, index: FileIndex) -> dict[str, TensorMeta]:
        self._metas[name], self.sizes[name] = index.metas, index.size
        self._found[name] = index
        if self.remote_root is not None:
            self.indexes[name] = index
        return index.metas

    def read(self, name: str, required: bool = True) -> dict[str, TensorMeta] | None:
        """The file's headers; None when it is absent and not `required` (else ReshardError)."""
        if name in self._metas and (self._metas[name] is not None or not required):
            return self._metas[name]
        path = self.path(name)
        if not self._present(name):
            self.prefetch([name])
        if not self._present(name):
            if required:
                raise ReshardError(f"{path}: not found (the plan reads it)")
            self._metas[name] = None
            return None
        return self._keep(name, self._load(name))

    def known(self, name: str) -> dict[str, TensorMeta] | None:
        """Headers already read (None if not read or absent)."""
        return self._metas.get(name)

    def open(self, name: str) -> CheckpointReader:
        """A reader of a file whose headers were read (they are not read again); one per thread.
        Raises ReshardError naming the file."""
        try:
            return open_reader(self.path(name), s3_config=self.s3_config, index=self._found.get(name),
                               config=self.config)
        except FormatError as e:
            raise ReshardError(str(e)) from None


def _lcm_shape(*grids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.lcm(*g) for g in zip(*grids))


def _block_grid(src: Strategy | None, dst: Strategy | None, name: str) -> tuple[int, ...]:
    """A parameter's full shape in blocks when no header gives it in elements: the finest grid
    both strategies' splits fit (() for a parameter neither lays out)."""
    grids = [lay.splits for lay in (src.layouts.get(name, ()) if src else ())]
    grids += [lay.splits for lay in (dst.layouts.get(name, ()) if dst else ())]
    return _lcm_shape(*grids) if grids else ()


def _product(ranges: Sequence[range]) -> Iterator[tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for i in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (i,) + rest


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the ranks are planned, back as it was after.
    Thousands of ranks are millions of small objects (tensors, tuples) kept, none in a cycle;
    each collection would walk all of them again (a third of the planning time at 8192 ranks),
    and only cycles, which planning does not make, are left to it. After, the objects made go
    straight to the oldest generation (gc.freeze then gc.unfreeze: moved, not examined), as
    long-lived objects, rather than all through the young ones (a second more: printing the
    plan made the first collections after planning walk them all)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()      # every tracked object to the oldest generation, none examined
            gc.unfreeze()    # now (the documented pair): the plan's objects are long-lived
            gc.enable()


def build_plan(src: Strategy | None, dst: Strategy | None, source: SourceSet | None, *,
               headers: Headers | None = None, read: Sequence[str] = (),
               dst_ranks: Iterable[int] | None = None, prefix: str = DEFAULT_PREFIX,
               fmt: str = registry.DEFAULT, policy: PlanPolicy = PlanPolicy()) -> Plan:
    """A skeleton (headers None: from strategies alone) or a full plan (the headers of the files
    `read`, and of other replicas' files where a chosen file lacks a parameter, or where
    check_copies compares a value with another rank's). Raises ReshardError (naming the
    parameter or file) for anything it cannot convert or where the strategies do not match the
    checkpoint (see _Planner.check_names, check_unnamed, check_copies)."""
    return _Planner(src, dst, source, headers, tuple(read), dst_ranks, prefix, fmt, policy).plan()


class _Cut:
    """The slice of one destination block on one grid pair: its shape, and per source block
    (index, region to copy relative to the source slice, region relative to the destination
    slice, elements). Shared by every parameter and rank with that geometry; compared by
    identity (a cache key)."""
    __slots__ = ("shape", "parts")

    def __init__(self, shape: tuple[int, ...],
                 parts: tuple[tuple[tuple[int, ...], Region, Region, int], ...]):
        self.shape, self.parts = shape, parts


class _Grid:
    """A full shape cut by a destination layout and a source grid: its cuts, per local rank and
    per destination block, computed on demand."""
    __slots__ = ("full", "dlay", "slay", "by_local", "by_block")

    def __init__(self, full: tuple[int, ...], dlay: TensorLayout, slay: TensorLayout):
        self.full, self.dlay, self.slay = full, dlay, slay
        self.by_local: dict[int, _Cut] = {}
        self.by_block: dict[tuple[int, ...], _Cut] = {}


class _Replicas:
    """The candidates of one source block in a skeleton (fixed: no header changes them) and a
    heap of (load, rank) finding the least loaded in O(log n) instead of scanning every
    replica per piece. Loads only grow, so an entry is a lower bound: an outdated top is
    refreshed and the first exact top is the least (load, rank), as min() would pick."""
    __slots__ = ("cands", "heap")

    def __init__(self, cands: list[int], loads: dict[int, int]):
        self.cands = cands
        self.heap = [(loads.get(r, 0), r) for r in cands] if len(cands) > 1 else []
        heapq.heapify(self.heap)

    def pick(self, loads: dict[int, int]) -> int:
        if not self.heap:
            return self.cands[0]
        heap = self.heap
        while True:
            load, r = heap[0]
            now = loads.get(r, 0)
            if now == load:
                return r
            heapq.heapreplace(heap, (now, r))


class _Sources:
    """Where the blocks of a set of source layouts live: block -> global ranks holding it (one
    map per distinct set of source layouts, shared by their parameters), and per block the
    skeleton's candidates."""
    __slots__ = ("replicas", "blocks")

    def __init__(self, replicas: dict[tuple[int, ...], list[int]]):
        self.replicas = replicas
        self.blocks: dict[tuple[int, ...], _Replicas] = {}

    def candidates(self, block: tuple[int, ...], planner: _Planner) -> _Replicas:
        got = self.blocks.get(block)
        if got is None:
            got = self.blocks[block] = _Replicas(planner.present(self.replicas[block]),
                                                 planner.loads)
        return got


class _Class:
    """The parameters of a destination stage that share their geometry and their sources
    (grid, source replicas, file, bytes per element): every rank cuts them the same way and,
    where each source block has one replica, reads them from the same pieces. positions: the
    indexes of its parameters among the stage's entries."""
    __slots__ = ("grid", "sources", "file", "itemsize", "positions")

    def __init__(self, grid: _Grid, sources: _Sources, file: str | None, itemsize: int):
        self.grid, self.sources, self.file, self.itemsize = grid, sources, file, itemsize
        self.positions: list[int] = []


class _StageEntries:
    """One destination stage, prepared once for all its ranks: its laid-out parameters
    (entries, in holders order) grouped in classes (of_entry[i]: the class of entries[i]; -1
    for an entry in error: `errors`, their indexes), and the names carried as is."""
    __slots__ = ("entries", "carried", "classes", "of_entry", "errors")

    def __init__(self, entries: list[_Entry], carried: list[str]):
        self.entries, self.carried = entries, carried
        self.classes: list[_Class] = []
        self.of_entry: list[int] = []
        self.errors: list[int] = []
        index: dict[tuple, int] = {}
        for n, e in enumerate(entries):
            if e.error is not None:
                self.of_entry.append(-1)
                self.errors.append(n)
                continue
            key = (e.grid, e.sources, e.file, e.itemsize)
            i = index.get(key)
            if i is None:
                i = index[key] = len(self.classes)
                self.classes.append(_Class(e.grid, e.sources, e.file, e.itemsize))
            self.classes[i].positions.append(n)
            self.of_entry.append(i)


@dataclass(frozen=True, **_SLOTS)
class _Entry:
    """One laid-out parameter of one destination stage, prepared once for all its ranks.
    file: the file every piece reads (a complete source), None: the picked rank's file.
    error: the message to raise when a rank reaches it."""
    name: str
    dtype: str | None
    itemsize: int
    grid: _Grid
    sources: _Sources
    file: str | None
    error: str | None


def _member_pairs(name: str, opt_shard_size: int, by_block: dict[tuple[int, ...], list[int]],
                  config: ReshardConfig) -> list[tuple[str, int, int]]:
    """_Planner.layout_pairs: (name, first member, other member) of the first optimizer-shard
    group whose first config.shard_members members' files hold `name` (by_block: block -> its
    holders)."""
    for block, rs in by_block.items():   # the group's first member and the others
        others = [by_block.get((block[0] + k,) + block[1:]) for k in
                  range(1, min(opt_shard_size, config.shard_members))]
        if block[0] % opt_shard_size == 0 and rs and all(others):
            return [(name, rs[0], o[0]) for o in others]
    return []


class _Planner:
    """The steps of one build; the state they share."""

    def __init__(self, src: Strategy | None, dst: Strategy | None, source: SourceSet | None,
                 headers: Headers | None, read: tuple[str, ...], dst_ranks, prefix: str,
                 fmt: str, policy: PlanPolicy):
        self.format = registry.get(fmt, "--format")
        if self.format.own_path:
            raise ReshardError(f"--format {fmt}: not a rank-file format; its sets are written by its "
                               "own path, from a --src_checkpoint (a plan of strategies alone has none)")
        self.src, self.dst, self.source, self.headers = src, dst, source, headers
        self.read_names, self.prefix, self.fmt, self.policy = read, prefix, fmt, policy
        self.kept_whole: set[str] = set()          # unnamed by dst, kept whole (policy)
        self.asked = None if dst_ranks is None else tuple(sorted(set(dst_ranks)))
        self.complete = source.complete if source is not None else src is None
        self.files: dict[int, str] = dict(source.files) if source is not None else {}
        self.s_dev = src.stage_devices if src else 1
        self.d_dev = dst.stage_devices if dst else 1
        self.holders: dict[str, list[int]] = {}    # name -> source keys holding it, in order
        self.full: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str | None] = {}
        self.metas0: dict[str, TensorMeta] = {}    # name -> the reference meta (first holder)
        self.notes: list[str] = []
        self.loads: dict[int, int] = {}            # bytes (or blocks) planned per source rank
        self.dst_stages: set[int] = set()          # destination stages of the ranks planned
        # Built once and shared, so planning grows with the ranks planned, not ranks x
        # parameters x source devices, and the plan holds each distinct piece once:
        self.stages: dict[int, _StageEntries] = {}   # destination stage ->
        self.grids: dict[tuple, _Grid] = {}        # (full shape, destination grid, source grid)
        self.sources_of: dict[tuple[TensorLayout, ...], _Sources] = {}  # source layouts ->
        self.piece_tuples: dict[tuple, tuple[tuple[Piece, ...], frozenset[int]]] = {}
        # (cut, sources, file) -> its pieces, their source stages and (rank, elements) read,
        # where every source block has one replica (no choice by load); None where one has more
        self.fixed: dict[tuple, tuple[tuple[Piece, ...], frozenset[int],
                                      tuple[tuple[int, int], ...]] | None] = {}
        self.piece_objects: dict[tuple, Piece] = {}
        self.tuples: dict[tuple, tuple] = {}       # regions and shapes
        self.checked: set[tuple[str, int]] = set()  # (name, rank) slices compared with the first
        # (stage, the cuts of its ranks' slices) -> the laid-out tensors planned for the first
        # rank holding those slices, and the source stages they read: every later rank holding
        # the same slices reads the same pieces, so their files are the same bytes (same_as)
        self.laid_of: dict[tuple, tuple[tuple[TensorPlan, ...], frozenset[int]]] = {}
        self.holding_same: dict[tuple, int] = {}   # (that key, carried values) -> first rank
        self.same_as: dict[int, int] = {}

    # -- the steps ------------------------------------------------------------------------
    def plan(self) -> Plan:
        self.check_pairing()
        ranks = self.destination_ranks()
        self.dst_stages = {self.dst.stage_of(d) for d in ranks} if self.dst else {0}
        if self.headers is None:
            self.holders_from_strategies()
        elif self.complete:
            self.holders_of_complete_files()
        else:
            self.holders_of_rank_files()
        self.check_names()
        self.derive_shapes()
        if self.headers is not None:
            self.check_unnamed()
            if not self.complete:
                self.check_copies()
        with _gc_paused():
            rank_plans = tuple(self.plan_rank(d) for d in ranks)
        return Plan(rank_plans, _describe(self.src), _describe(self.dst),
                    self.headers is not None, tuple(self.notes), self.source, self.src, self.dst,
                    self.asked, self.prefix, self.fmt,
                    self.headers.local_root if self.headers is not None else None,
                    policy=self.policy, same_as=dict(self.same_as))

    def check_pairing(self) -> None:
        """A source strategy goes with rank folders, none with a complete checkpoint; device
        counts per stage must divide each other."""
        if self.source is not None:
            if self.src is not None and self.complete:
                raise ReshardError("a source strategy was given but the source checkpoint is "
                                   "complete (no rank_<r> folders)")
            if self.src is None and not self.complete:
                raise ReshardError(f"{self.source.root} holds rank_<r> folders: give the source "
                                   f"strategy (--src_strategy)")
        if self.s_dev % self.d_dev and self.d_dev % self.s_dev:
            raise ReshardError(f"device counts do not divide: the source has {self.s_dev} devices "
                               f"per stage, the destination {self.d_dev}")

    def destination_ranks(self) -> list[int]:
        world = self.dst.world_size if self.dst else 1
        ranks = list(range(world)) if self.asked is None else list(self.asked)
        for r in ranks:
            if not 0 <= r < world:
                raise ReshardError(f"destination rank {r} is outside the destination world "
                                   f"of {world}")
        return ranks

    def holders_from_strategies(self) -> None:
        """Without headers: the strategies' names; a name is held by the ranks of its stages.
        One list per set of stages, shared by the names of those stages (never appended to:
        only the header steps add holders)."""
        src, dst = self.src, self.dst
        names = list(src.layouts) if src else list(dst.layouts) if dst else []
        keys = sorted(self.files) or list(range(src.world_size if src else 1))
        by_stages: dict[frozenset[int] | None, list[int]] = {}
        for name in names:
            stages = frozenset(lay.stage for lay in src.layouts[name]) if src else None
            held = by_stages.get(stages)
            if held is None:
                held = by_stages[stages] = [k for k in keys if stages is None or
                                            src.stage_of(k) in stages]
            self.holders[name] = held

    def holders_of_complete_files(self) -> None:
        """Names of the files read, in source order. With an index, a tensor counts only in
        the file the index names; without one, a name in several files must hold the same
        bytes in each (tied copies), else it is an error naming both files."""
        index = self.source.index
        by_file = {f: k for k, f in self.files.items()}
        ignored: list[str] = []
        for file in self.read_names:
            key = by_file[file]
            metas = self.headers.read(file)
            for name in metas:
                if index is not None and index.get(name, file if file in self.source.unindexed else None) != file:
                    ignored.append(name)
                    continue
                self.holders.setdefault(name, []).append(key)
        if index is not None:
            read = set(self.read_names)
            for name, file in index.items():
                if file in read and name not in self.holders:
                    raise ReshardError(f"{self.source.path_of(self.source.index_name)} puts "
                                       f"parameter {name} in {file}, which does not hold it")
            if ignored:
                self.notes.append(f"{len(ignored)} tensor(s) of the indexed files are not "
                                  f"assigned to their file by {self.source.index_name} and are "
                                  f"ignored (e.g. {ignored[0]})")
        for name, keys in self.holders.items():
            if len(keys) > 1:
                self.check_tied_copies(name, keys)

    def holders_of_rank_files(self) -> None:
        """Names of the rank files read, in rank and file order; then parameters the source
        strategy lays out in a stage being read that none of those files holds (a checkpoint
        saved with redundancy removed keeps each replicated slice in one rank's file only):
        the other files of that stage are read until one holds it."""
        read_keys = sorted(self.key_of(f) for f in self.read_names)
        for key in read_keys:
            self.add_rank_file(key)
        src, dst = self.src, self.dst
        read_stages = {src.stage_of(k) for k in read_keys}
        dst_stages = self.dst_stages
        for name, lays in src.layouts.items():
            if dst is not None and name in dst.layouts and \
                    not any(lay.stage in dst_stages for lay in dst.layouts[name]):
                continue                         # no destination rank asked for needs it
            for lay in lays:
                if lay.stage in read_stages and not any(
                        src.stage_of(k) == lay.stage for k in self.holders.get(name, ())):
                    self.find_in_stage(name, lay.stage)

    def derive_shapes(self) -> None:
        """Full shapes and dtypes; every holder's slice must agree with the first's."""
        src, dst = self.src, self.dst
        for name, keys in self.holders.items():
            slay = src.layouts.get(name) if src else None
            if self.headers is None:
                self.dtypes[name] = None
                self.full[name] = _block_grid(src, dst, name)
                continue
            m0 = self.meta(keys[0], name)
            self.metas0[name] = m0
            self.dtypes[name] = m0.dtype
            self.check_storable(name, m0.dtype)
            laid_out = slay is not None or (dst is not None and name in dst.layouts)
            if not m0.sliceable and laid_out:
                raise ReshardError(f"parameter {name}: a {m0.dtype} value cannot be resharded")
            if slay is None:
                self.full[name] = m0.shape
                continue
            for k in keys[1:]:
                self.check_same_slice(name, k)
            try:
                self.full[name] = slay[0].full_shape(m0.shape)
            except LayoutError as e:
                raise ReshardError(f"parameter {name}: {e} (source strategy "
                                   f"{src.source})") from None

    def check_copies(self) -> None:
        """With headers, a distributed source: the bytes must agree with the source strategy,
        compared on samples (reshard.compare) between pairs of source ranks, before anything is
        written. Errors (one line naming the parameters, ranks and the fix):
        - a value the source strategy does not describe is carried from one source rank as it
          is (MindSpore's rule), which is right only when every rank holds the same copy: copies
          that differ between ranks that differ in one device coordinate are shards (a strategy
          saved with only_trainable_params=True, MindSpore's default, leaves frozen weights out);
        - replicas the strategy names (ranks holding the same block) that differ: the strategy
          does not describe the checkpoint's sharding (e.g. optimizer sharding it lacks);
        - optimizer-shard groups holding the same bytes in two of their members, for every
          parameter the strategy shards so (zero-filled values aside): the checkpoint was saved
          without that sharding, or a smaller one, and reading it with this strategy would
          double dimension 0 (or more).
        Replicas and shard members are compared for the config.checked_layouts largest
        parameters (Headers.config)."""
        src = self.src
        carried = self.carried_pairs()
        replicas, members = self.layout_pairs()
        equal = self.compare_pairs(carried + replicas + members)
        differ = sorted({n for n, a, b in carried if not equal[(n, a, b)][0]})
        if differ:
            n, a, b = next(p for p in carried if p[0] == differ[0])
            raise ReshardError(f"{len(differ)} parameter(s) that the source strategy {src.source} does not "
                               f"describe differ between source ranks that would hold copies of them "
                               f"({_first(differ)}; {n}: rank {a} and rank {b}): they are sharded, and "
                               f"carrying one rank's value would write part of a tensor under its full name; "
                               f"save the source strategy with only_trainable_params=False (MindSpore's "
                               f"default, True, leaves frozen weights out)")
        for n, a, b in replicas:
            if not equal[(n, a, b)][0]:
                raise ReshardError(f"parameter {n}: source ranks {a} and {b} hold the same slice by the "
                                   f"source strategy {src.source}, but different values: the strategy does "
                                   f"not describe how the checkpoint is sharded (optimizer sharding it "
                                   f"lacks, or a strategy of another run)")
        compared = {n for n, a, b in members if not equal[(n, a, b)][1]}   # zero-filled samples prove nothing
        twins = {n: (a, b) for n, a, b in members if n in compared and equal[(n, a, b)][0]}
        if compared and compared <= set(twins):
            n = min(twins)
            raise ReshardError(f"the source strategy {src.source} shards {len(compared)} parameter(s) for the "
                               f"parallel optimizer, but the ranks of each shard group hold the same "
                               f"values ({n}: rank {twins[n][0]} and rank {twins[n][1]}): the checkpoint was "
                               f"saved without that optimizer sharding (or a smaller one); give the strategy "
                               f"it was saved with")

    def carried_pairs(self) -> list[tuple[str, int, int]]:
        """(name, rank, rank) pairs to compare for every value the source strategy does not
        describe: per source stage holding it, its first holder and that rank's neighbour along
        each device axis of the stage (any shard split along an axis differs there)."""
        pairs = []
        for name, keys in list(self.holders.items()):
            if name in self.src.layouts or not keys:
                continue
            for stage in sorted({self.src.stage_of(k) for k in keys}):
                first = min(k for k in keys if self.src.stage_of(k) == stage)
                for other in self.neighbours(first):
                    if name in (self.headers.read(self.files[other], required=False) or ()) \
                            if other in self.files else False:
                        pairs.append((name, first, other))
        return pairs

    def neighbours(self, rank: int) -> list[int]:
        """The source ranks of rank's stage that differ from it in one device coordinate, one
        per axis of the stage's device matrices (every other rank of the stage when the strategy
        lays nothing out there)."""
        stage, local = divmod(rank, self.s_dev)
        matrices = {lay.dev_matrix for lays in self.src.layouts.values() for lay in lays
                    if lay.stage == stage}
        out: set[int] = set()
        for dev in matrices:
            stride = 1
            for size in reversed(dev):
                if size > 1:
                    coord = local // stride % size
                    out.add(local + stride if coord + 1 < size else local - stride)
                stride *= size
        if not matrices:
            out = set(range(self.s_dev))
        return sorted(stage * self.s_dev + r for r in out - {local})

    def layout_pairs(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        """(replica pairs, optimizer-shard member pairs) of the config.checked_layouts largest
        laid-out parameters read, among ranks whose files hold them."""
        config = self.headers.config
        sized = sorted(((self.metas0[n].nbytes or 0, n) for n in self.holders
                        if n in self.src.layouts and n in self.metas0), reverse=True)
        replicas: list[tuple[str, int, int]] = []
        members: list[tuple[str, int, int]] = []
        for _, name in sized:
            held = set(self.holders[name])
            for lay in self.src.layouts[name]:
                base = lay.stage * self.s_dev
                by_block = {b: [base + r for r in rs if base + r in held] for b, rs in lay.replicas.items()}
                if len(replicas) < config.checked_layouts:
                    pair = next((rs[:2] for rs in by_block.values() if len(rs) >= 2), None)
                    if pair:
                        replicas.append((name, pair[0], pair[1]))
                if lay.opt_shard_size > 1 and len({n for n, _, _ in members}) < config.checked_layouts:
                    members += _member_pairs(name, lay.opt_shard_size, by_block, config)
        return replicas, members

    def compare_pairs(self, pairs: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], tuple[bool, bool]]:
        """pair -> (the two samples are equal, the first is all zeros), read several at once."""
        def one(pair):
            name, a, b = pair
            ma, mb = self.meta(a, name), self.meta(b, name)
            if (ma.dtype, ma.shape) != (mb.dtype, mb.shape):
                return False, False
            with self.headers.open(self.files[a]) as ra, self.headers.open(self.files[b]) as rb:
                try:
                    config = self.headers.config
                    sa, sb = compare.sample(ra, name, config), compare.sample(rb, name, config)
                except FormatError as e:
                    raise ReshardError(str(e)) from None
            return sa == sb, not any(sa)
        pairs = list(dict.fromkeys(pairs))
        if len(pairs) <= 1:
            return {p: one(p) for p in pairs}
        with ThreadPoolExecutor(min(self.headers.config.header_threads, len(pairs))) as pool:
            return dict(zip(pairs, pool.map(one, pairs)))

    def check_names(self) -> None:
        """With headers: each strategy must name some of the checkpoint's parameters. The
        destination's parameters the checkpoint lacks: optimizer states (an inference
        checkpoint under a training strategy: the optimizer starts afresh, as in MindSpore) and
        PET/LoRA adapters (ADAPTER_NAME: a base checkpoint for a fine-tuning network, which
        initialises them) are skipped with a note; any other is an error (another model, fewer
        layers, one rank's shard taken for a complete one) unless policy.allow_missing."""
        src, dst = self.src, self.dst
        if self.headers is None:
            return
        if src is not None and not set(src.layouts) & set(self.holders):
            raise ReshardError(f"source strategy {src.source} names none of the checkpoint's "
                               f"parameters")
        if dst is None:
            return
        if not set(dst.layouts) & set(self.holders):
            raise ReshardError(f"destination strategy {dst.source} names none of the "
                               f"checkpoint's parameters")
        self.check_missing(dst)

    def check_missing(self, dst: Strategy) -> None:
        """check_names: the destination's parameters (in the stages converted) the checkpoint
        lacks: optimizer states and adapters noted, any other an error unless allowed."""
        stages = self.dst_stages
        missing = [n for n, lays in dst.layouts.items() if n not in self.holders and
                   any(lay.stage in stages for lay in lays)]
        states = [n for n in missing if n.startswith(OPTIMIZER_STATE_PREFIXES)]
        adapters = [n for n in missing if n not in states and ADAPTER_NAME.search(n)]
        weights = [n for n in missing if n not in states and n not in adapters]
        if weights and not self.policy.allow_missing:
            raise ReshardError(f"the checkpoint lacks {len(weights)} parameter(s) of the destination "
                               f"strategy {dst.source} ({_first(weights)}): a checkpoint of another "
                               "model, of fewer layers, or one rank's shard taken for a complete one "
                               "(--allow_missing_params converts without them: the network initialises them)")
        if weights:
            self.notes.append(f"--allow_missing_params: {len(weights)} parameter(s) of the destination "
                              f"strategy are not in the checkpoint and are left to the network to "
                              f"initialise ({_first(weights)})")
        if adapters:
            self.notes.append(f"{len(adapters)} adapter parameter(s) of the destination strategy (PET/LoRA) "
                              f"are not in the checkpoint and are left to the network to initialise "
                              f"({_first(adapters)})")
        if states:   # an inference checkpoint under a training strategy: the optimizer starts afresh
            self.notes.append(f"{len(states)} optimizer states of the destination strategy are not "
                              f"in the checkpoint and are skipped (e.g. {states[0]})")

    def check_unnamed(self) -> None:
        """With headers and a destination strategy: parameters of the checkpoint that the
        destination strategy names in no stage, but that the source lays out in pieces (a
        complete source: any value of more than one element), would be written as they are read
        into every destination rank: a whole weight where the network expects a slice, or one
        source rank's slice under the full name. That is a destination strategy of another
        model or of fewer layers (a stale folder), or one saved with only_trainable_params=True
        (frozen weights left out): an error naming them, unless policy.keep_unnamed (each is
        then assembled whole into every destination rank). Optimizer states and scalars
        (global_step, loss_scale, ...) stay carried as MindSpore carries them; so do values the
        source strategy does not describe either (check_copies makes sure they are copies)."""
        dst = self.dst
        if dst is None:
            return
        unnamed = [n for n in self.holders if n not in dst.layouts and self.in_pieces(n)]
        if not unnamed:
            return
        if not self.policy.keep_unnamed:
            raise ReshardError(f"the destination strategy {dst.source} does not name {len(unnamed)} "
                               f"parameter(s) of the checkpoint ({_first(unnamed)}): a strategy of "
                               f"another model or of fewer layers, or one saved with "
                               f"only_trainable_params=True (frozen weights left out); "
                               f"--keep_unnamed_params writes them whole into every rank")
        self.kept_whole = set(unnamed)
        self.notes.append(f"--keep_unnamed_params: {len(unnamed)} parameter(s) the destination strategy "
                          f"does not name are written whole into every rank ({_first(unnamed)})")

    def in_pieces(self, name: str) -> bool:
        """Whether a value is a weight the source holds in pieces (or, complete, of more than one
        element): not an optimizer state, not a scalar."""
        if name.startswith(OPTIMIZER_STATE_PREFIXES):
            return False
        if not self.complete:
            return any(math.prod(lay.splits) > 1 for lay in self.src.layouts.get(name, ()))
        return math.prod(self.full[name]) > 1

    def plan_rank(self, d: int) -> RankPlan:
        """Destination rank d: its slice of every laid-out tensor, then the carried values.
        The per-parameter work (layouts, checks, geometry) is done once per destination stage
        (stage_entries), the cuts once per class of parameters sharing geometry and sources,
        and per rank only the replicas are picked, and only for the first rank holding its
        slices: a rank holding the same slices as an earlier one (a data-parallel replica)
        gets the same pieces, so the two files are the same bytes when their carried values
        come from the same place too (same_as)."""
        d_stage = self.dst.stage_of(d) if self.dst else 0
        d_local = d % self.d_dev
        stage = self.stage_entries(d_stage)
        # the cuts are shared per destination block: equal slices, identical cut objects (an
        # entry in error has no class: the first rank reaching it raises in laid_tensors)
        key = (d_stage, tuple(c.grid.by_local.get(d_local) or self.cut(c.grid, d_local)
                              for c in stage.classes))
        got = self.laid_of.get(key)
        if got is None:
            got = self.laid_of[key] = self.laid_tensors(stage, key[1])
        laid_tensors, used = got
        used_stages = sorted(used) or [0]
        carry_rank = None
        if self.headers is None:
            carry_rank = used_stages[0] * self.s_dev + d_local % self.s_dev if self.src else 0
        carried_tensors = tuple(self.carried(name, d_local % self.s_dev, used_stages)
                                for name in stage.carried)
        first = self.holding_same.setdefault((key, carried_tensors, carry_rank), d)
        if first != d:
            self.same_as[d] = first
        return RankPlan(d, output_name(d, self.prefix, self.fmt), laid_tensors + carried_tensors,
                        carry_rank)

    def laid_tensors(self, stage: _StageEntries, cuts: tuple[_Cut, ...]
                     ) -> tuple[tuple[TensorPlan, ...], frozenset[int]]:
        """The laid-out tensors of a rank holding these cuts (one per class), and the source
        stages they read. A class whose source blocks have one replica each reads fixed pieces,
        looked up once for all its tensors; the other tensors (all, with headers) pick, in
        order, the least loaded replica, the bytes of the fixed tensors before them counted
        first: the picks of a tensor-by-tensor walk, which raises the first error it meets."""
        fixed = [self.fixed_pieces(c, cut) if self.headers is None else None
                 for c, cut in zip(stage.classes, cuts)]
        used: set[int] = set()
        for f in fixed:
            if f is not None:
                used |= f[1]
        fixed_pieces = [() if f is None else f[0] for f in fixed]
        tensors = [_tensor_plan(e.name, e.dtype, cuts[i].shape, fixed_pieces[i]) if i >= 0
                   else None for e, i in zip(stage.entries, stage.of_entry)]   # None: raised
        picked = sorted(stage.errors + [n for c, f in zip(stage.classes, fixed) if f is None
                                        for n in c.positions])
        counted = [0] * len(fixed)      # per class: its fixed tensors whose bytes are counted
        for n in picked:
            e, i = stage.entries[n], stage.of_entry[n]
            if e.error is not None:
                raise ReshardError(e.error)
            self.count_fixed(stage, fixed, counted, n)
            pieces, stages = self.pieces(e, cuts[i])
            used |= stages
            tensors[n] = _tensor_plan(e.name, e.dtype, cuts[i].shape, pieces)
        self.count_fixed(stage, fixed, counted, len(stage.entries))
        return tuple(tensors), frozenset(used)

    def count_fixed(self, stage: _StageEntries, fixed: list, counted: list[int],
                    before: int) -> None:
        """Count the bytes of the fixed tensors among the stage's entries[:before] not counted
        yet (counted: per class, how many are)."""
        for j, f in enumerate(fixed):
            if f is not None:
                upto = bisect.bisect_left(stage.classes[j].positions, before)
                if upto > counted[j]:
                    self.count_loads(f[2], stage.classes[j].itemsize * (upto - counted[j]))
                    counted[j] = upto

    def count_loads(self, reads: tuple[tuple[int, int], ...], times: int) -> None:
        """Add (rank, elements) reads, `times` bytes per element, to the source ranks' loads."""
        loads = self.loads
        for rank, nelems in reads:
            loads[rank] = loads.get(rank, 0) + nelems * times

    def stage_entries(self, stage: int) -> _StageEntries:
        """The parameters of one destination stage, in holders order: those laid out (with their
        layouts, geometry and any error, raised when a rank reaches it, so errors come in the
        order a rank-by-rank walk finds them) and the names carried as is."""
        got = self.stages.get(stage)
        if got is not None:
            return got
        src, dst = self.src, self.dst
        laid: list[_Entry] = []
        carried: list[str] = []
        for name in self.holders:      # (files read on demand add holders, not names)
            full = self.full[name]
            dlay = dst.layout_in_stage(name, stage) if dst else complete_layout(len(full))
            if name in self.kept_whole:
                dlay = complete_layout(len(full))
            if dst is not None and dlay is None and name in dst.layouts:
                continue                         # lives in another destination stage
            slays = list(src.layouts.get(name, ())) if src else [complete_layout(len(full))]
            if dlay is None or not slays:
                carried.append(name)
                continue
            laid.append(self.entry(name, full, dlay, [sl for sl in slays
                                                      if sl.same_blocks(slays[0])]))
        got = self.stages[stage] = _StageEntries(laid, carried)
        return got

    def entry(self, name: str, full: tuple[int, ...], dlay: TensorLayout,
              slays: list[TensorLayout]) -> _Entry:
        """One laid-out parameter of a destination stage: its checks, its geometry (shared with
        every parameter of the same shape and grids) and its source replicas (shared with every
        parameter of the same source layouts)."""
        dtype = self.dtypes[name]
        s0, error = slays[0], None
        if dlay.devices % s0.devices and s0.devices % dlay.devices:
            error = (f"parameter {name}: device counts do not divide "
                     f"({s0.devices} -> {dlay.devices})")
        else:
            try:
                dlay.check_divides(full)
                self.check_storable(name, dtype, tuple(n // s for n, s in zip(full, dlay.splits)))
            except LayoutError as e:
                error = (f"parameter {name}: {e} (destination strategy "
                         f"{self.dst.source if self.dst else ''})")
            except ReshardError as e:
                error = str(e)
        gkey = (full, dlay.dev_matrix, dlay.tensor_map, dlay.opt_shard_size, s0.splits)
        grid = self.grids.get(gkey)
        if grid is None:
            grid = self.grids[gkey] = _Grid(full, dlay, s0)
        skey = tuple(slays)
        sources = self.sources_of.get(skey)
        if sources is None:
            replicas: dict[tuple[int, ...], list[int]] = {}
            for sl in slays:
                for block, local in sl.replicas.items():
                    replicas.setdefault(block, []).extend(sl.stage * self.s_dev + r for r in local)
            sources = self.sources_of[skey] = _Sources(replicas)
        file = self.files.get(self.holders[name][0], "<complete>") if self.complete else None
        return _Entry(name, dtype, _itemsize(dtype), grid, sources, file, error)

    def cut(self, grid: _Grid, local: int) -> _Cut:
        """The slice destination local rank `local` holds on this grid and the source blocks
        that fill it (one cut per block, shared by the ranks holding that block)."""
        block = grid.dlay.block_of(local)
        cut = grid.by_block.get(block)
        if cut is None:
            cut = grid.by_block[block] = self.make_cut(grid, block)
        grid.by_local[local] = cut
        return cut

    def make_cut(self, grid: _Grid, block: tuple[int, ...]) -> _Cut:
        """Intersect the destination block's region with the source grid: per source block,
        the regions (relative to each) to copy and the elements copied."""
        full, lay = grid.full, grid.slay
        dst_region = grid.dlay.region(block, full)
        shape = self.intern(tuple(b - a for a, b in dst_region))
        if any(b <= a for a, b in dst_region):
            return _Cut(shape, ())               # nothing to read for an empty region
        ranges = []
        for (a, b), n, s in zip(dst_region, full, lay.splits):
            bs = n // s
            ranges.append(range(a // bs, (b - 1) // bs + 1))
        parts = []
        for sblock in _product(ranges):
            src_block = lay.region(sblock, full)
            inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(dst_region, src_block))
            parts.append((sblock,
                          self.intern(tuple((a - c, b - c) for (a, b), (c, _) in
                                            zip(inter, src_block))),
                          self.intern(tuple((a - c, b - c) for (a, b), (c, _) in
                                            zip(inter, dst_region))),
                          math.prod(b - a for a, b in inter)))
        return _Cut(shape, tuple(parts))

    def pieces(self, e: _Entry, cut: _Cut) -> tuple[tuple[Piece, ...], frozenset[int]]:
        """The pieces filling one tensor: per source block one replica, the least loaded of
        those whose file holds the parameter; and the source stages they read. Equal pieces
        (same ranks, files and regions: other parameters of the same geometry, other
        destination ranks) are one shared tuple."""
        loads, ranks = self.loads, []
        for sblock, _, _, nelems in cut.parts:
            if self.headers is None:
                rank = e.sources.candidates(sblock, self).pick(loads)
            else:
                rank = self.pick(self.holding(e.name, e.sources.replicas[sblock], sblock))
            loads[rank] = loads.get(rank, 0) + nelems * e.itemsize
            ranks.append(rank)
        return self.piece_tuple(cut, tuple(ranks), e.file)

    def fixed_pieces(self, c: _Class, cut: _Cut) -> tuple[tuple[Piece, ...], frozenset[int],
                                                           tuple[tuple[int, int], ...]] | None:
        """Without headers: the pieces of a class's tensors on this cut where each source
        block has one replica (present), with their source stages and (rank, elements) read;
        None where a block has several (each tensor picks the least loaded)."""
        key = (cut, c.sources, c.file)
        if key in self.fixed:
            return self.fixed[key]
        ranks = []
        for sblock, _, _, _ in cut.parts:
            cands = c.sources.candidates(sblock, self).cands
            if len(cands) > 1:
                self.fixed[key] = None
                return None
            ranks.append(cands[0])
        pieces, stages = self.piece_tuple(cut, tuple(ranks), c.file)
        got = self.fixed[key] = pieces, stages, tuple(
            (rank, nelems) for rank, (_, _, _, nelems) in zip(ranks, cut.parts))
        return got

    def piece_tuple(self, cut: _Cut, ranks: tuple[int, ...], file: str | None
                    ) -> tuple[tuple[Piece, ...], frozenset[int]]:
        """The pieces reading each source block of the cut from these ranks, and their source
        stages: one shared tuple per (cut, ranks, file)."""
        key = (cut, ranks, file)
        hit = self.piece_tuples.get(key)
        if hit is None:
            pieces = tuple(self.piece(rank, file, src_rel, dst_rel)
                           for rank, (_, src_rel, dst_rel, _) in zip(ranks, cut.parts))
            hit = self.piece_tuples[key] = pieces, frozenset(r // self.s_dev for r in ranks)
        return hit

    def piece(self, rank: int, file: str | None, src_rel: Region, dst_rel: Region) -> Piece:
        """One shared Piece per (rank, file, regions)."""
        if file is None:
            file = self.files.get(rank, f"<rank {rank}>")
        key = (rank, file, src_rel, dst_rel)
        got = self.piece_objects.get(key)
        if got is None:
            got = self.piece_objects[key] = Piece(rank, file, src_rel, dst_rel)
        return got

    def intern(self, value: tuple) -> tuple:
        """One shared tuple per distinct region or shape."""
        return self.tuples.setdefault(value, value)

    def carried(self, name: str, local: int, used_stages: list[int]) -> TensorPlan:
        """MindSpore's rule for parameters without a layout: the value of source local rank
        (destination local rank % source devices per stage) in the lowest stage read; another
        holder when that rank's file does not hold it."""
        keys = self.holders[name]
        if self.complete:
            rank = 0
        elif not keys:                 # a skeleton whose source folder lacks the name's stages
            stage = self.src.layouts[name][0].stage
            missing = f"rank_{stage * self.s_dev + local}"
            raise ReshardError(f"{self.source.path_of(missing) if self.source else missing}: "
                               f"missing or empty (the source strategy has "
                               f"{self.src.world_size} ranks; parameter {name} is in its "
                               f"stage {stage} only)")
        else:
            wanted = [st * self.s_dev + local for st in used_stages]
            rank = next((r for r in wanted if r in keys), None)
            if rank is None:
                rank = next((k for k in keys if k % self.s_dev == local), keys[0])
        shape, dtype = self.full[name], self.dtypes[name]
        if self.headers is not None:   # each rank's own value: its shape and dtype may differ
            meta = self.meta(keys[0] if self.complete else rank, name)
            shape, dtype = meta.shape, meta.dtype
            if meta.sliceable:
                self.check_storable(name, dtype, shape)
        region = tuple((0, n) for n in shape)
        return TensorPlan(name, dtype, tuple(shape),
                          (Piece(rank, self.file_of(rank, name), region, region),), carried=True)

    # -- helpers --------------------------------------------------------------------------
    def key_of(self, file: str) -> int:
        for k, f in self.files.items():
            if f == file:
                return k
        raise ReshardError(f"{file}: not a file of source {self.source.root}")

    def file_of(self, rank: int, name: str) -> str:
        if self.complete:
            return self.files.get(self.holders[name][0], "<complete>")
        return self.files.get(rank, f"<rank {rank}>")

    def meta(self, key: int, name: str) -> TensorMeta:
        return self.headers.known(self.files[key])[name]

    def add_rank_file(self, rank: int, new_names: bool = True) -> None:
        for name in self.headers.read(self.files[rank]):
            if new_names or name in self.holders:
                self.holders.setdefault(name, []).append(rank)

    def unread(self, ranks: Iterable[int]) -> list[int]:
        return [r for r in ranks if r in self.files and self.headers.known(self.files[r]) is None]

    def read_more(self, ranks: Iterable[int], name: str, new_names: bool = True) -> list[int]:
        """Read the headers of these ranks' files (fetching them when possible) until one holds
        `name`; returns the ranks whose files are absent (not fetched). new_names: the files'
        other parameters count too (only while names are collected, before any is planned)."""
        absent = []
        for r in self.unread(ranks):
            metas = self.headers.read(self.files[r], required=False)
            if metas is None:
                absent.append(r)
                continue
            self.add_rank_file(r, new_names)
            if name in metas:
                break
        return absent

    def find_in_stage(self, name: str, stage: int) -> None:
        stage_ranks = range(stage * self.s_dev, (stage + 1) * self.s_dev)
        absent = self.read_more(stage_ranks, name)
        if absent and not any(self.src.stage_of(k) == stage for k in self.holders.get(name, ())):
            raise ReshardError(
                f"parameter {name} is in none of the source files read; the files of source "
                f"ranks {absent} (e.g. {self.source.path_of(self.files[absent[0]])}) are not "
                f"here: provide them (a checkpoint saved with redundancy removed keeps each "
                f"replicated slice in one rank's file)")

    def holding(self, name: str, replicas: list[int], block: tuple[int, ...]) -> list[int]:
        """The replicas whose file holds `name` (reading more replicas' files if none of those
        read does); without headers, those present in the source (or all)."""
        if self.headers is None:
            return self.present(replicas)
        if self.complete:
            return replicas
        cands = [r for r in replicas if name in (self.headers.known(self.files.get(r, "")) or ())]
        return cands or self.holding_read_more(name, replicas, block)

    def holding_read_more(self, name: str, replicas: list[int], block: tuple[int, ...]) -> list[int]:
        """holding() when none of the files read holds `name`: more replicas' files read, those
        holding it checked against the first slice; ReshardError naming the files when none does."""
        absent = self.read_more(replicas, name, new_names=False)
        cands = [r for r in replicas if name in (self.headers.known(self.files.get(r, "")) or ())]
        if not cands:
            lacking = [self.source.path_of(self.files[r]) for r in replicas
                       if r in self.files and r not in absent]
            gone = [f"rank_{r}" for r in replicas if r not in self.files or r in absent]
            parts = [f"{', '.join(lacking)} lack it"] if lacking else []
            parts += [f"the files of replicas {', '.join(gone)} are not here"] if gone else []
            raise ReshardError(f"parameter {name}: no source file holds its block "
                               f"{list(block)} ({'; '.join(parts)})")
        for r in cands:
            if name in self.metas0 and (name, r) not in self.checked:
                self.check_same_slice(name, r)
                self.checked.add((name, r))
        return cands

    def present(self, replicas: list[int]) -> list[int]:
        """Without headers: the replicas present in the source (all when none is, or when no
        source or a complete one is given)."""
        present = [r for r in replicas if r in self.files]
        return present if self.source is not None and not self.complete and present \
            else replicas

    def pick(self, cands: list[int]) -> int:
        """The least-loaded replica (bytes already planned from it), so reads spread evenly."""
        if len(cands) == 1:
            return cands[0]
        loads = self.loads
        return min(cands, key=lambda r: (loads.get(r, 0), r))

    def check_same_slice(self, name: str, key: int) -> None:
        m0, m = self.metas0[name], self.meta(key, name)
        if m.shape != m0.shape or m.dtype != m0.dtype:
            k0 = self.holders[name][0]
            raise ReshardError(f"parameter {name}: rank {key} holds {m.dtype}{list(m.shape)}, "
                               f"rank {k0} {m0.dtype}{list(m0.shape)}")

    def check_storable(self, name: str, dtype: str | None, shape: tuple[int, ...] | None = None) -> None:
        """The output format must store the value (its dtype; its shape when given: .ckpt cannot
        hold dims [0]); else the one line names the parameter and a format that can."""
        why = self.format.refusal(dtype, shape)
        if why is not None:
            can = [f.name for f in registry.formats() if f.can_store(dtype, shape)]
            raise ReshardError(f"parameter {name}: {why}" + (f"; use --format {can[0]}" if can else ""))

    def same_bytes(self, file_a: str, file_b: str, meta: TensorMeta) -> bool:
        """Whether two files of the source hold the same bytes for one tensor (all of them)."""
        with self.headers.open(file_a) as a, self.headers.open(file_b) as b:
            try:
                return compare.same_bytes(a, b, meta, self.headers.config)
            except FormatError as e:
                raise ReshardError(str(e)) from None

    def check_tied_copies(self, name: str, keys: list[int]) -> None:
        """A name in several complete files: the same dtype, shape and bytes in each."""
        first = self.files[keys[0]]
        m0 = self.headers.known(first)[name]
        for k in keys[1:]:
            other = self.files[k]
            m = self.headers.known(other)[name]
            if (m.dtype, m.shape) != (m0.dtype, m0.shape) or \
                    not self.same_bytes(first, other, m0):
                raise ReshardError(f"parameter {name}: {first} and {other} hold different values "
                                   f"({m0.dtype}{list(m0.shape)} / {m.dtype}{list(m.shape)}) and "
                                   f"no index says which to use")


def _describe(strategy: Strategy | None) -> str:
    """One side of the plan's title: its layout."""
    if strategy is None:
        return "complete checkpoint"
    return (f"{strategy.world_size} ranks ({strategy.num_stages} pipeline stage(s) x "
            f"{strategy.stage_devices} devices)")


def _strategy_text(strategy: Strategy | None) -> str:
    """The strategy as the user named it (a path or URL)."""
    return "no strategy (complete)" if strategy is None else f"strategy {strategy.source}"


def _describe_source(source: SourceSet | None) -> str:
    """The source checkpoint as the user named it (a path or URL) and what it was read as."""
    if source is None:
        return "not given (plan from strategies alone)"
    if not source.complete:
        return f"{source.root} (rank_<r> folders, {len(source.files)} ranks)"
    if len(source.files) == 1:
        return f"{source.root} (complete checkpoint)"
    return f"{source.root} (complete checkpoint in {len(source.files)} files)"


def _first(names: Sequence[str], count: int = 3) -> str:
    """`e.g. a, b, c` naming the first few of a list (and how many more)."""
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return f"e.g. {', '.join(names[:count])}{more}" if len(names) > 1 else names[0]
