"""Read a MindFormers "Checkpoint 2.0" folder into the engine's terms.

The format (MindFormers 1.7-2.1, `mindformers/checkpoint/`; research/CHECKPOINT2.md):

    <root>/latest_checkpointed_iteration.txt      str(iteration), no newline
    <root>/iteration_%08d/metadata.json           per parameter: dtype, global shape, layout,
                                                  chunks; storage_data: which file holds a chunk
    <root>/iteration_%08d/common.json             training state (CommonInfo of the release)
    <root>/iteration_%08d/<prefix>-model-%07d-%07d.safetensors   a rank's model slices
    <root>/iteration_%08d/<prefix>-opt-%07d-%07d.safetensors     its optimizer slices

What the planner needs per source rank is a Strategy (per parameter, one TensorLayout per
pipeline stage) and which file holds which rank's slices (a SourceSet). Each rank has up to two
files (model and opt), while a SourceSet names one file per rank, so the source strategy this
module builds has two rank ranges: ranks 0..W-1 are the model files, ranks W..2W-1 the optimizer
files of the same ranks (their stages shifted by the number of pipeline stages). The planner
then reads both kinds unchanged, and values no layout describes (global_step, learning_rate, in
the opt files only) are carried as it carries them from legacy rank files.

Every error is a ReshardError whose text is one line naming the file and parameter at fault.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

from ...errors import ReshardError
from ...layout import LayoutError, TensorLayout, make_layout
from ...sources import RANK_DIR, SourceSet, is_url
from ...strategy import Strategy
from ..meta import TensorMeta

TRACKER = "latest_checkpointed_iteration.txt"
ITERATION_PREFIX = "iteration_"
METADATA = "metadata.json"
COMMON = "common.json"
# MindFormers' get_checkpoint_name: f"{prefix}-{model|opt}-{idx:07d}-{total:07d}" (no prefix:
# "model-..."), MindSpore adds the suffix.
SHARD_NAME = re.compile(r"^(?:(?P<prefix>.+)-)?(?P<kind>model|opt)-(?P<idx>\d{7})-(?P<total>\d{7})"
                        r"\.safetensors$")
# mindspore.parallel.Layout.to_dict() keys, in the order MindFormers' loader unpacks them
# (_deserialize_sharded_tensor_layout takes layout_dict.values() positionally).
LAYOUT_KEYS = ("device_matrix", "tensor_map", "interleaved_parallel", "alias_name", "rank_list")
KINDS = ("model", "opt")


def iteration_dir(iteration: int) -> str:
    """MindFormers' get_checkpoint_iter_dir name: iteration_%08d."""
    return f"{ITERATION_PREFIX}{iteration:08d}"


def shard_name(prefix: str | None, kind: str, index: int, total: int) -> str:
    """A shard's file name as MindFormers names it (get_checkpoint_name + MindSpore's suffix)."""
    head = f"{prefix}-" if prefix else ""
    return f"{head}{kind}-{index:07d}-{total:07d}.safetensors"


def is_checkpoint2(path: str, names: Collection[str] | None = None) -> bool:
    """A folder (local, obs://, s3://) that is a Checkpoint 2.0 root (it holds the tracker) or an
    iteration folder (it holds metadata.json): what auto-detection of a source checks, and the
    registered format's refusal of such a folder where rank folders are expected.

    Args:
        path: the folder.
        names: the relative file names of a listing of it already made ('/'-separated, a folder's
            ending in '/'): decided from them, without asking the store; None: asks the store.
    """
    if names is None:
        fs = _Where(path)

        def has(name: str) -> bool:
            return fs.isfile(fs.join(path, name))
    else:
        has = names.__contains__
    name = path.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return has(TRACKER) or (name.startswith(ITERATION_PREFIX) and has(METADATA))


@dataclass(frozen=True)
class StorageRecord:
    """One file holding a chunk: `file` (a name in the iteration folder), the global rank whose
    slice it holds, and (MindFormers 1.9+) every rank holding that slice."""
    file: str
    storage_rank: int
    rank_group: tuple[int, ...] | None


@dataclass(frozen=True)
class Chunk:
    """One distinct slice of a parameter: its slice index (metadata.json's one-element
    global_offset: row-major over axis_fragmentations) and its shape in elements."""
    slice_id: int
    local_shape: tuple[int, ...]


@dataclass(frozen=True)
class ParamMeta:
    """One entry of metadata.json's state_dict_metadata, checked. dtype: MindSpore's name
    ("Float32", "BFloat16", ...); layout: the raw layout dict (None: a value without layout,
    MindFormers 2.0+); layouts: one TensorLayout per pipeline stage holding it; kind: 'model' or
    'opt' (the files holding it)."""
    name: str
    dtype: str
    global_shape: tuple[int, ...]
    axis_fragmentations: tuple[int, ...]
    layout: dict | None
    layouts: tuple[TensorLayout, ...]
    chunks: tuple[Chunk, ...]
    storage: dict[int, tuple[StorageRecord, ...]]
    kind: str
    properties: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint2:
    """A parsed Checkpoint 2.0 iteration.

    root: the folder as given (a root with the tracker, or an iteration folder); base: the root
    that relative file names are relative to; folder: the iteration folder's name under base;
    iteration: the training iteration; params: metadata.json's entries, checked; common: the
    bytes of common.json as saved (None when absent); files: kind -> global rank -> shard file
    name (in the iteration folder); stage_devices / num_stages / world_size: the saved job's
    layout; prefix: the shards' file-name prefix."""
    root: str
    base: str
    folder: str
    iteration: int
    params: dict[str, ParamMeta]
    common: bytes | None
    files: dict[str, dict[int, str]]
    stage_devices: int
    num_stages: int
    prefix: str | None

    @property
    def world_size(self) -> int:
        return self.stage_devices * self.num_stages

    @property
    def metadata_path(self) -> str:
        return self.path_of(METADATA)

    def path_of(self, file: str) -> str:
        """Where a file of the iteration folder is (a local path or a URL)."""
        if is_url(self.base):
            return f"{self.base.rstrip('/')}/{self.rel(file)}"
        return os.path.join(self.base, self.folder, file)

    def rel(self, file: str) -> str:
        """A shard's name relative to base ('/'-separated)."""
        return f"{self.folder}/{file}"

    def common_info(self) -> dict | None:
        """common.json parsed (None when absent)."""
        if self.common is None:
            return None
        return json.loads(self.common)

    def source_strategy(self) -> Strategy:
        """The saved layouts as the planner takes a source strategy: model parameters in stages
        0..S-1, optimizer-file parameters in stages S..2S-1 (ranks W..2W-1 = the opt files of
        ranks 0..W-1; S stages only when no opt file was saved). Parameters without a layout are
        not in it (carried, as in MindSpore)."""
        shift = {"model": 0, "opt": self.num_stages}
        layouts = {}
        for name, p in self.params.items():
            if p.layouts:
                layouts[name] = tuple(_restage(lay, lay.stage + shift[p.kind]) for lay in p.layouts)
        stages = self.num_stages * (2 if self.files["opt"] else 1)
        return Strategy(layouts, self.stage_devices, stages, self.metadata_path)

    def source_set(self) -> SourceSet:
        """The shard files as the planner takes rank folders: rank r -> its model file, rank
        W + r -> its opt file (names relative to base). A rank without a file of a kind (saved
        with redundancy removed) is absent."""
        files = {r: self.rel(f) for r, f in self.files["model"].items()}
        files.update({self.world_size + r: self.rel(f) for r, f in self.files["opt"].items()})
        return SourceSet(self.base, False, files)

    def rank_group(self, p: ParamMeta, slice_id: int) -> tuple[int, ...]:
        """Every global rank holding slice `slice_id` of laid-out parameter p by its layouts:
        what MindFormers 1.9+ records as a storage record's rank_group (equal, record for record,
        on the 1.9.0 and 2.1.0 fixtures its own save wrote) and where its loader looks for a
        rank whose slice another rank stored (1.7/1.8 records have none)."""
        devices = self.stage_devices
        return tuple(lay.stage * devices + r for lay in p.layouts for r in range(devices)
                     if held_slice(lay, r, p.axis_fragmentations) == slice_id)

    def check_files(self, metas_of: Callable[[str], Mapping[str, TensorMeta]]) -> None:
        """Every chunk's storage files against their headers (metas_of(name relative to base)):
        the file holds the parameter, with the chunk's shape and metadata.json's dtype."""
        for p in self.params.values():
            for chunk in p.chunks:
                for rec in p.storage[chunk.slice_id]:
                    metas = metas_of(self.rel(rec.file))
                    where = self.path_of(rec.file)
                    m = metas.get(p.name)
                    if m is None:
                        raise ReshardError(f"{where}: lacks parameter {p.name} (slice {chunk.slice_id}), "
                                           f"which {METADATA} stores there")
                    if tuple(m.shape) != chunk.local_shape:
                        raise ReshardError(f"{where}: parameter {p.name} has shape {list(m.shape)}, "
                                           f"{METADATA} says {list(chunk.local_shape)}")
                    if m.dtype.lower() != p.dtype.lower():
                        raise ReshardError(f"{where}: parameter {p.name} is {m.dtype}, {METADATA} "
                                           f"says {p.dtype}")


def _restage(lay: TensorLayout, stage: int) -> TensorLayout:
    return lay if lay.stage == stage else TensorLayout(lay.dev_matrix, lay.tensor_map,
                                                       lay.opt_shard_size, lay.opt_shard_step, stage)


class _Where:
    """The few file operations reading a Checkpoint 2.0 folder takes, on a local path or (through
    obs_io, imported only then) an obs:// / s3:// URL."""

    def __init__(self, root: str):
        self.remote = is_url(root)
        if self.remote:
            import obs_io
            self._mox = obs_io.file

    def join(self, base: str, *names: str) -> str:
        return "/".join([base.rstrip("/"), *names]) if self.remote else os.path.join(base, *names)

    def parent(self, path: str) -> str:
        if self.remote:
            return path.rstrip("/").rsplit("/", 1)[0]
        return os.path.dirname(os.path.normpath(path)) or "."

    def isfile(self, path: str) -> bool:
        return self._mox.exists(path) and not self._mox.is_directory(path) if self.remote \
            else os.path.isfile(path)

    def isdir(self, path: str) -> bool:
        return self._mox.is_directory(path) if self.remote else os.path.isdir(path)

    def read(self, path: str) -> bytes | None:
        """The file's bytes; None when it is not there."""
        if not self.isfile(path):
            return None
        if self.remote:
            return self._mox.read(path, binary=True)
        with open(path, "rb") as f:
            return f.read()

    def folders(self, folder: str) -> set[str]:
        """Names of the folders directly in a folder."""
        if self.remote:
            return {n.rstrip("/") for n in self._mox.list_directory(folder, skip_file=True)}
        return {n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))}

    def files(self, folder: str) -> set[str]:
        """Names of the files directly in a folder."""
        if self.remote:
            return {n.rstrip("/") for n in self._mox.list_directory(folder, skip_dir=True)
                    if "/" not in n.rstrip("/")}
        return {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}


def resolve_iteration(root: str, iteration: int | None = None) -> tuple[str, str, int]:
    """(base, iteration folder name, iteration) of a root or iteration folder (local, obs://,
    s3://): the one named by `iteration`, else the tracker's (as MindFormers'
    get_checkpoint_path resolves it)."""
    fs = _Where(root)
    name = root.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    tracker = fs.join(root, TRACKER)
    text = fs.read(tracker)
    if text is None and name.startswith(ITERATION_PREFIX) and fs.isfile(fs.join(root, METADATA)):
        try:
            found = int(name[len(ITERATION_PREFIX):])
        except ValueError:
            raise ReshardError(f"{root}: not an iteration_<n> folder") from None
        if iteration is not None and iteration != found:
            raise ReshardError(f"{root}: is iteration {found}, not the iteration {iteration} asked for")
        return fs.parent(root), name, found
    named = iteration is not None
    if iteration is None:
        if text is None:
            raise ReshardError(f"{tracker}: missing (not a Checkpoint 2.0 folder; name an "
                               f"iteration to read one without it)")
        content = text.decode("utf-8", "replace").strip()
        try:
            iteration = int(content)
        except ValueError:
            raise ReshardError(f"{tracker}: holds {content[:40]!r}, not an iteration number") from None
    folder = iteration_dir(iteration)
    ranks = sorted(n for n in fs.folders(root) if RANK_DIR.match(n)) if text is not None else []
    if ranks:   # which save is meant? (the iteration folder named directly reads that one)
        raise ReshardError(f"{root}: holds a Checkpoint 2.0 ({TRACKER}) and rank folders "
                           f"({', '.join(ranks[:3])}{', ...' if len(ranks) > 3 else ''}): two saves in "
                           f"one folder; name the iteration folder to read the Checkpoint 2.0, or move "
                           f"the rank folders apart")
    if not fs.isdir(fs.join(root, folder)):
        raise ReshardError(f"{fs.join(root, folder)}: missing (iteration {iteration}, "
                           + ("asked for)" if named else f"named by {TRACKER})"))
    return root, folder, iteration


def read_checkpoint2(root: str, iteration: int | None = None) -> Checkpoint2:
    """Parse and check a Checkpoint 2.0 folder (a root or an iteration folder; local, obs:// or
    s3://): the iteration (named, else the tracker's), metadata.json (layouts, chunks, storage
    files: every named file present, every chunk the slice its storage rank holds), common.json
    verbatim. The shards' headers are checked against it by Checkpoint2.check_files.
    ReshardError, one line naming the file and parameter, for anything malformed."""
    fs = _Where(root)
    base, folder, iteration = resolve_iteration(root, iteration)
    where = fs.join(base, folder)
    meta_path = fs.join(where, METADATA)
    data = fs.read(meta_path)
    if data is None:
        raise ReshardError(f"{meta_path}: missing (a Checkpoint 2.0 iteration folder holds "
                           f"metadata.json)")
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ReshardError(f"{meta_path}: not JSON ({e})") from None
    common_path = fs.join(where, COMMON)
    common = fs.read(common_path)
    if common is not None:
        try:
            if not isinstance(json.loads(common), dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise ReshardError(f"{common_path}: not a JSON object ({e})") from None
    return parse_metadata(raw, meta_path, fs.files(where), root=root, base=base, folder=folder,
                          iteration=iteration, common=common)


def _beside(path: str, name: str) -> str:
    """`name` in the folder of `path` (a local path or a URL), for messages."""
    return path.rsplit("/", 1)[0] + "/" + name if is_url(path) else os.path.join(os.path.dirname(path), name)


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise ValueError(f"{what} {value!r} is not a list of integers")
    return tuple(value)


def parse_metadata(raw, meta_path: str, present: set[str], *, root: str, base: str, folder: str,
                   iteration: int, common: bytes | None) -> Checkpoint2:
    """metadata.json's content -> Checkpoint2 (present: the files of the iteration folder)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict_metadata"), dict) or \
            not isinstance(raw.get("storage_data"), dict):
        raise ReshardError(f"{meta_path}: lacks state_dict_metadata / storage_data")
    storage, file_rank = _parse_storage(raw["storage_data"], meta_path, present)
    params_raw = raw["state_dict_metadata"]
    stray = sorted(set(storage) - set(params_raw))
    if stray:
        raise ReshardError(f"{meta_path}: storage_data names parameter {stray[0]}, which "
                           f"state_dict_metadata does not describe")
    parsed = [_parse_entry(meta_path, name, entry) for name, entry in params_raw.items()]
    devices = _stage_devices(meta_path, parsed)
    num_stages = -(-_world_size(storage, parsed) // devices)

    params: dict[str, ParamMeta] = {}
    for name, props, dtype, layout, shape, frags, chunks in parsed:
        params[name] = _param(meta_path, name, props, dtype, layout, shape, frags, chunks,
                              storage.get(name, {}), devices)
    files, prefixes = _files_by_kind(meta_path, file_rank)
    others = sorted(n for n in present if SHARD_NAME.match(n) and n not in file_rank)
    if others:
        raise ReshardError(f"{_beside(meta_path, others[0])}: a shard "
                           f"{METADATA} does not name (a mixed folder: another save's files?)")
    return Checkpoint2(root, base, folder, iteration, params, common, files, devices, num_stages,
                       sorted(prefixes, key=str)[0] if len(prefixes) == 1 else None)


def _parse_storage(raw_storage: dict, meta_path: str, present: set[str]
                   ) -> tuple[dict[str, dict[int, list[StorageRecord]]], dict[str, int]]:
    """storage_data -> ({parameter: {slice id: records}}, {file: its storage rank}), every
    record's file present, named as MindFormers names shards, and of one storage rank."""
    storage: dict[str, dict[int, list[StorageRecord]]] = {}
    file_rank: dict[str, int] = {}
    for key, records in raw_storage.items():
        name, slice_id, recs = _storage_entry(meta_path, key, records)
        for rec in recs:
            _check_record(meta_path, name, slice_id, rec, present, file_rank)
        storage.setdefault(name, {}).setdefault(slice_id, []).extend(recs)
    return storage, file_rank


def _storage_entry(meta_path: str, key: str, records) -> tuple[str, int, list[StorageRecord]]:
    """One storage_data item: "('<name>', (<slice>,))" -> its records."""
    try:
        name, (slice_id,) = ast.literal_eval(key)
        if not isinstance(name, str) or not isinstance(slice_id, int) or \
                not isinstance(records, list) or not records:
            raise ValueError
        recs = []
        for r in records:
            group = r.get("rank_group")
            recs.append(StorageRecord(str(r["file_name"]), int(r["storage_rank"]),
                                      None if group is None else _ints(group, "rank_group")))
    except (ValueError, SyntaxError, TypeError, KeyError, AttributeError):
        raise ReshardError(f"{meta_path}: storage_data entry {key[:80]!r} is not "
                           f"\"('<name>', (<slice>,))\": [{{file_name, storage_rank, ...}}]") from None
    return name, slice_id, recs


def _check_record(meta_path: str, name: str, slice_id: int, rec: StorageRecord, present: set[str],
                  file_rank: dict[str, int]) -> None:
    """A storage record's file: present, a shard's name, holding one storage rank's slices
    (recorded in file_rank)."""
    if rec.file not in present:
        raise ReshardError(f"{_beside(meta_path, rec.file)}: missing "
                           f"({METADATA} stores parameter {name} slice {slice_id} there)")
    if not SHARD_NAME.match(rec.file):
        raise ReshardError(f"{meta_path}: parameter {name}: {rec.file} is not named "
                           f"<prefix>-model|opt-<k>-<N>.safetensors")
    if file_rank.setdefault(rec.file, rec.storage_rank) != rec.storage_rank:
        raise ReshardError(f"{meta_path}: {rec.file} holds slices of storage ranks "
                           f"{file_rank[rec.file]} and {rec.storage_rank} (parameter {name})")


def _parse_entry(meta_path: str, name: str, entry) -> tuple[str, dict, str, dict | None, tuple, tuple, list]:
    """One state_dict_metadata entry -> (name, properties, dtype, layout, global_shape,
    axis_fragmentations, [(global_offset, local_shape)]), its fields of the right types and its
    layout's keys in Layout.to_dict() order."""
    try:
        props = entry.get("properties") or {}
        dtype = _dtype_name(props["dtype"])
        shape = _ints(entry["global_shape"], "global_shape")
        frags = _ints(entry.get("axis_fragmentations", [1] * len(shape)), "axis_fragmentations")
        layout = entry.get("layout")
        chunks = [(_ints(c["global_offset"], "global_offset"), _ints(c["local_shape"], "local_shape"))
                  for c in entry["chunk"]]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ReshardError(f"{meta_path}: parameter {name}: malformed entry ({e})") from None
    if layout is not None and (not isinstance(layout, dict) or tuple(layout) != LAYOUT_KEYS):
        raise ReshardError(f"{meta_path}: parameter {name}: layout keys "
                           f"{list(layout) if isinstance(layout, dict) else layout!r}, "
                           f"expected {list(LAYOUT_KEYS)}")
    return name, props, dtype, layout, shape, frags, chunks


def _stage_devices(meta_path: str, parsed: list) -> int:
    """The devices of one pipeline stage: every layout's device_matrix has as many (1 when no
    parameter has a layout: one device, or 2.0+ layout-less values)."""
    devices = None
    for name, _, _, layout, _, _, _ in parsed:
        if layout is None:
            continue
        n = math.prod(layout["device_matrix"])
        if devices is None:
            devices = n
        elif n != devices:
            raise ReshardError(f"{meta_path}: parameter {name}: device_matrix "
                               f"{layout['device_matrix']} has {n} devices, other parameters "
                               f"{devices}")
    return 1 if devices is None else devices


def _world_size(storage: dict[str, dict[int, list[StorageRecord]]], parsed: list) -> int:
    """The saved job's ranks: one more than the highest storage rank or rank_list entry."""
    return max([r.storage_rank for recs in storage.values() for rs in recs.values() for r in rs]
               + [r for _, _, _, lay, _, _, _ in parsed if lay for r in lay["rank_list"]] + [0]) + 1


def _files_by_kind(meta_path: str, file_rank: dict[str, int]) -> tuple[dict[str, dict[int, str]], set]:
    """({'model' | 'opt': {storage rank: file}}, the files' prefixes): one file per rank and kind."""
    files: dict[str, dict[int, str]] = {"model": {}, "opt": {}}
    prefixes = set()
    for file, rank in file_rank.items():
        m = SHARD_NAME.match(file)
        prefixes.add(m.group("prefix"))
        kind_files = files[m.group("kind")]
        if kind_files.setdefault(rank, file) != file:
            raise ReshardError(f"{meta_path}: storage rank {rank} has two {m.group('kind')} files "
                               f"({kind_files[rank]}, {file})")
    return files, prefixes


def _param(meta_path: str, name: str, props: dict, dtype: str, layout: dict | None, shape: tuple,
           frags: tuple, chunks: list, storage: dict[int, list[StorageRecord]],
           devices: int) -> ParamMeta:
    """One parameter's entry checked against itself: the layout gives axis_fragmentations, each
    chunk is a slice of that grid with its shape, and every storage rank holds that slice."""
    def bad(text: str) -> ReshardError:
        return ReshardError(f"{meta_path}: parameter {name}: {text}")

    if len(frags) != len(shape):
        raise bad(f"axis_fragmentations {list(frags)} does not match global_shape {list(shape)}")
    kinds = {SHARD_NAME.match(r.file).group("kind") for rs in storage.values() for r in rs}
    if len(kinds) > 1:
        raise bad("stored in both model and opt files")
    kind = kinds.pop() if kinds else "model"
    layouts = _stage_layouts(bad, layout, shape, frags, storage, devices)
    out_chunks = _chunks(bad, chunks, tuple(n // f for n, f in zip(shape, frags)), math.prod(frags),
                         storage)
    if layouts:
        _check_storage_ranks(bad, layouts, {c.slice_id for c in out_chunks}, frags, storage, devices)
    return ParamMeta(name, dtype, shape, frags, layout, tuple(layouts),
                     tuple(out_chunks), {k: tuple(v) for k, v in storage.items()}, kind, dict(props))


def _stage_layouts(bad: Callable[[str], ReshardError], layout: dict | None, shape: tuple,
                   frags: tuple, storage: dict[int, list[StorageRecord]],
                   devices: int) -> list[TensorLayout]:
    """The parameter's layout in every pipeline stage storing it (none without a layout): one
    stage's ranks in order, dividing the shape, giving axis_fragmentations."""
    if layout is None:
        if frags != (1,) * len(shape):
            raise bad(f"no layout but axis_fragmentations {list(frags)}")
        return []
    if layout["interleaved_parallel"]:
        raise bad("interleaved_parallel layouts are not supported")
    ranks = list(layout["rank_list"])
    stage = ranks[0] // devices if ranks else 0
    if ranks != list(range(stage * devices, (stage + 1) * devices)):
        raise bad(f"rank_list {ranks[:8]}{'...' if len(ranks) > 8 else ''} is not the ranks of "
                  f"one pipeline stage in order")
    try:
        base = make_layout(layout["device_matrix"], layout["tensor_map"], 0, 0, stage)
        base.check_divides(shape)
    except (LayoutError, TypeError, ValueError) as e:
        raise bad(f"{e}") from None
    if base.splits != frags:
        raise bad(f"axis_fragmentations {list(frags)} disagrees with its layout "
                  f"(splits {list(base.splits)})")
    # a parameter shared by pipeline stages is stored by ranks of each
    stages = {stage} | {r.storage_rank // devices for rs in storage.values() for r in rs}
    return [_restage(base, s) for s in sorted(stages)]


def _chunks(bad: Callable[[str], ReshardError], chunks: list, local: tuple, total: int,
            storage: dict[int, list[StorageRecord]]) -> list[Chunk]:
    """The chunks: each a slice index below `total` of shape `local` with storage records, and
    every stored slice listed."""
    out_chunks = []
    for offset, lshape in chunks:
        if len(offset) != 1 or not 0 <= offset[0] < total:
            raise bad(f"global_offset {list(offset)} is not a slice index below {total}")
        if lshape != local:
            raise bad(f"chunk {offset[0]} has local_shape {list(lshape)}, the layout gives {list(local)}")
        if offset[0] not in storage:
            raise bad(f"chunk {offset[0]} has no storage_data entry")
        out_chunks.append(Chunk(offset[0], lshape))
    extra = sorted(set(storage) - {c.slice_id for c in out_chunks})
    if extra:
        raise bad(f"storage_data has slice {extra[0]}, which its chunks do not list")
    return out_chunks


def _check_storage_ranks(bad: Callable[[str], ReshardError], layouts: list[TensorLayout],
                         listed: set[int], frags: tuple, storage: dict[int, list[StorageRecord]],
                         devices: int) -> None:
    """A laid-out parameter: every slice of the grid is in a chunk, and each storage rank holds,
    by its stage's layout, the slice it is said to store."""
    total = math.prod(frags)
    missing = sorted(set(range(total)) - listed)
    if missing:
        raise bad(f"slice {missing[0]} of {total} is in no chunk")
    for slice_id, recs in storage.items():
        for rec in recs:
            lay = next(lay for lay in layouts if lay.stage == rec.storage_rank // devices)
            held = held_slice(lay, rec.storage_rank % devices, frags)
            if held != slice_id:
                raise bad(f"{rec.file} is said to hold slice {slice_id}, but its storage rank "
                          f"{rec.storage_rank} holds slice {held} by the layout")


def held_slice(lay: TensorLayout, local_rank: int, frags: tuple[int, ...]) -> int:
    """The slice index (metadata.json's global_offset) rank `local_rank` of lay's stage holds."""
    return slice_id_of(lay.block_of(local_rank), frags)


def slice_id_of(block: tuple[int, ...], frags: tuple[int, ...]) -> int:
    """A block's slice index as metadata.json records it (global_offset): row-major over the
    splits per dimension (MindFormers' sharded_tensor._rank_id_with_slice_id)."""
    idx = 0
    for b, f in zip(block, frags):
        idx = idx * f + b
    return idx


def _dtype_name(value) -> str:
    """metadata.json's dtype string in MindSpore's spelling (MindFormers maps it
    case-insensitively)."""
    from ..meta import KNOWN_DTYPES
    text = str(value)
    for known in KNOWN_DTYPES:
        if known.lower() == text.lower():
            return known
    return text
