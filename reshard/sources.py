"""The rules for what a checkpoint source, a strategy folder and an output are, as pure functions.

One source of truth for the engine (reshard.api walks a local folder into SourceEntry objects)
and for the job (cloud_entry builds them from an object-store listing): no I/O happens here;
of obs_io only its URL rules (obs_io.urls: what a URL is, how names join it) are used.

    classify(root, entries, fmt=None)      -> SourceSet   which files a checkpoint source uses
    SourceSet.with_index(data)              -> SourceSet   a sharded folder's index applied
    output_name(rank, prefix, fmt)          -> str         the format's name of a rank's file
    strategy_files(folder_names, where)     -> list[str]   the files a strategy folder stands for
    overlap(a, b) / overlaps(a, b)                        one location is, holds or is inside the other,
                                                           every part of it resolved (links followed)
    check_output(dst, dst_flag, inputs)                    refuse an output overlapping an input

Every error is a ReshardError whose text is one line naming the culprit.
"""
from __future__ import annotations

import logging
import os
import tempfile
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from obs_io.urls import is_remote as is_url, join as _join

from .errors import ReshardError
from .steps import Step, choose, chosen_line

__all__ = ["SourceEntry", "SourceSet", "Note", "classify", "check_source_strategy", "output_name",
           "check_prefix", "strategy_files", "overlap", "overlaps", "resolved_parts", "check_output", "STRATEGY_EXTS"]

STRATEGY_EXTS = (".ckpt", ".json")
RANK_DIR = re.compile(r"^rank_(\d+)$")
DEFAULT_PREFIX = "checkpoint_"   # a destination rank file's name prefix unless --prefix says (MindFormers' default)


@dataclass(frozen=True)
class SourceEntry:
    """One file below a checkpoint root, as a local folder walk or an object-store listing
    gives it (classify's input).

    Attributes:
        name: relative to the root, '/'-separated; a name ending in '/' is a folder (an object
            store's folder marker, or an empty local folder).
        size: in bytes.
        mtime_ns: modification time in ns since the epoch (0 = unknown).
    """
    name: str
    size: int
    mtime_ns: int = 0


@dataclass(frozen=True)
class Note:
    """A line for the user about how a source was read; `level` is a logging level
    (logging.INFO or logging.WARNING). str(note) is the text."""
    level: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SourceSet:
    """What a checkpoint source is and which of its files a conversion uses.

    Attributes:
        root: the source as given (a folder, or the checkpoint file itself; local path or URL).
        complete: True for a complete checkpoint (one file, or a folder of files whose union is the
            model); False for rank_<r>/ folders.
        files: rank (distributed) or shard index (complete, 0..n-1 in name order) -> relative name
            ('/'-separated, relative to `base`).
        index: parameter name -> relative name of the file holding it, for a sharded folder with
            an index (a format's is_index: safetensors' model.safetensors.index.json,
            param_name_map.json) (None otherwise, or until with_index() applied it).
        index_name: relative name of that index file, when the folder has one.
        is_file: root is the checkpoint file itself; then base is its folder.
        notes: lines for the user (INFO: which step or file was chosen where a folder holds
            several; WARNING: the others are newer by modification time; files an index leaves out).
        step: the step read when the files are named by step (`<prefix>-<epoch>_<step>.ckpt`).
        unindexed: files of an indexed folder whose every value counts though the index does not
            name them (safetensors' hyper_param.safetensors, the training state of a
            unified_safetensors folder).
        format: the name of the format whose layout this is, where one decides it (a folder it
            owns, an index it reads: with_index asks it); None for the rank-folder layout.
    """
    root: str
    complete: bool
    files: dict[int, str]
    index: dict[str, str] | None = None
    index_name: str | None = None
    is_file: bool = False
    notes: tuple[Note, ...] = field(default=())
    step: Step | None = None     # the training step read (step-named files, reshard.steps)
    unindexed: tuple[str, ...] = ()
    format: str | None = None

    @property
    def name(self) -> str:
        """The checkpoint's name, as MindFormers names its converted folder
        (`<dst_checkpoint_dir>/<name>/rank_<r>/`, the job's `transformed_checkpoint/<name>/`): a
        folder's own name; a file's name without its extension (`llama_7b.ckpt` -> `llama_7b`)."""
        last = self.root.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
        return last.split(".")[0] if self.is_file else last

    @property
    def base(self) -> str:
        """The folder the relative names are relative to."""
        return _parent(self.root) if self.is_file else self.root

    def path_of(self, name: str, base: str | None = None) -> str:
        """Where `name` lives under `base` (default: self.base): a local path or a URL."""
        return _join(self.base if base is None else base, name)

    def used_names(self) -> list[str]:
        """Relative names of every file this source uses (checkpoint files and the index)."""
        names = set(self.files.values())
        if self.index_name and self.index is not None:
            names.add(self.index_name)
        return sorted(names)

    @property
    def needs_index(self) -> bool:
        """The folder has an index that has not been read yet (call with_index with its bytes)."""
        return self.index_name is not None and self.index is None

    def with_index(self, data: bytes | str) -> "SourceSet":
        """This set with its index applied (data: the bytes of `index_name`), by the format that
        reads it (CheckpointFormat.apply_index: for safetensors, the index decides which file
        holds each tensor; files it does not name are left out, with a note)."""
        if self.index_name is None or self.format is None:
            raise ReshardError(f"{self.root}: has no index")
        return _registry().get(self.format).apply_index(self, data)


def output_name(rank: int, prefix: str, fmt: str) -> str:
    """THE name of a destination rank's file, relative to the destination folder, as format
    `fmt` names it (rank_<r>/<prefix><r>.ckpt).

    Args:
        rank: the destination rank.
        prefix: the file-name prefix (checkpoint_).
        fmt: a registered format's name.

    Returns:
        The '/'-separated relative name.

    Raises:
        ReshardError: an unknown format.
    """
    return _registry().get(fmt).output_name(rank, prefix)


def check_prefix(prefix: str, flag: str = "--prefix") -> None:
    """The file-name prefix of the outputs must be a plain name part: a path in it
    (`../../src/rank_0/checkpoint_`) would write outside the destination, into a source even."""
    if not prefix or "/" in prefix or "\\" in prefix or prefix in (".", "..") or "\0" in prefix:
        raise ReshardError(f"{flag}={prefix!r}: must be a non-empty file-name prefix without a path")


def _registry():
    """reshard.formats.registry, imported when first needed: the formats' modules import this
    one (is_url), so this one cannot import them at its top."""
    from .formats import registry
    return registry


def _candidates(fmt: str | None) -> tuple:
    """The formats a source may be in: `fmt`, or every registered one (None)."""
    registry = _registry()
    return (registry.get(fmt),) if fmt is not None else registry.formats()




def classify(root: str, entries: Iterable[SourceEntry], fmt: str | None = None, *,
             is_file: bool | None = None, partial: bool = False, step: Step | None = None) -> SourceSet:
    """Classify a checkpoint source from the files below it. Pure: no I/O.

    root: the source as the user named it. For a folder, entries are the files below it
    (names relative to it, '/'-separated; folder markers end in '/'). For a file, root is the
    file's path and entries is that one file, named by its file name (so `base` is its
    folder and names are relative to that folder in both cases). Pass is_file=True/False when
    known; None infers a file when there is exactly one entry and it is named like root's last
    component (a folder named x.ckpt holding only x.ckpt is then taken as the file: say so).

    fmt: a format's name (reshard.formats.registry) keeps only files of that format; None keeps
    every format's (then a rank folder holding two is an error). Hidden names (a component
    starting with '.') never count.

    - a folder a format owns the layout of (CheckpointFormat.folder_source): what it says;
    - a file: a complete checkpoint (it must be .ckpt / .safetensors, of `fmt` when given);
    - a folder whose only rank folder is rank_0/ (and not `partial`): a complete checkpoint,
      as MindSpore and MindFormers take it (a conversion's complete output is <dst>/rank_0/);
      see check_source_strategy for a source strategy given with it;
    - a folder with rank_<r>/ folders: distributed; each rank's checkpoint is chosen by
      reshard.steps: files named `<prefix>-<epoch>_<step>.ckpt` by the latest (epoch, step), or
      `step`, the same step in every rank folder (one note names it); other names, the last
      file in name order (as MindSpore picks it; a note names it when there are several, and
      warns when one of the others is newer); rank folders must be numbered from 0 without
      gaps, unless `partial` (a local copy holding only the ranks a block needs); checkpoint
      files beside the rank folders are ignored (with a note);
    - a folder of checkpoint files: complete, their union is the model; unless they are named
      by step (several saves of one complete checkpoint): then one step, by the same rule. An
      index beside them (the format's is_index: safetensors' *index.json / param_name_map.json)
      sets index_name; apply it with with_index(bytes) before planning;
    - anything else (an empty folder, no checkpoint file) is an error.
    step: the step asked for (`--step`); ReshardError when the source is one file.

    Args:
        root: the source as the user named it (local path or URL).
        entries: the files below it (SourceEntry), or the one file.
        fmt: a format's name, or None for any.
        is_file: root is the checkpoint file itself (None: inferred, see above).
        partial: rank folders may have gaps.
        step: the step to read, or None for the latest.

    Returns:
        The SourceSet.

    Raises:
        ReshardError: one line naming the root or file: no checkpoint found, two formats in a
            rank folder, a gap in the rank folders, no file of the asked step, a step asked
            of a single file.
    """
    candidates = _candidates(fmt)
    exts = tuple(dict.fromkeys(e for f in candidates for e in f.extensions))   # shards_of: repeats
    entries = list(entries)
    kinds = " or ".join(exts)
    if is_file is None:
        last = root.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
        is_file = len(entries) == 1 and entries[0].name == last and not root.endswith("/")
    if is_file:
        return _classify_file(root, entries, exts, kinds, step)
    for candidate in candidates:
        owned = candidate.folder_source(root, entries, step=step, partial=partial)
        if owned is not None:
            return owned
    found = _Found.of(entries, exts, candidates)
    if found.rank_dirs:
        return _classify_ranks(root, found, fmt, candidates, partial, kinds, step)
    return _classify_files(root, found, candidates, kinds, step)


def _classify_file(root: str, entries: list[SourceEntry], exts: tuple[str, ...], kinds: str,
                   step: Step | None) -> SourceSet:
    """classify() of a file source: one entry, named by its file name, of a format asked for."""
    if len(entries) != 1 or "/" in entries[0].name:
        raise ReshardError(f"source checkpoint {root}: a file source is one entry named by "
                           f"its file name")
    name = entries[0].name
    if not name.endswith(exts):
        raise ReshardError(f"source checkpoint {root} is not a {kinds} file")
    if step is not None:
        raise ReshardError(f"--step {step} chooses a file in a checkpoint folder, but the source "
                           f"checkpoint {root} is one file")
    return SourceSet(root, True, {0: name}, is_file=True)


@dataclass
class _Found:
    """What classify() sees in a folder's entries (hidden names skipped): checkpoint files at
    the top, index files at the top, rank_<r> folders, and each rank folder's checkpoint files."""
    top: list[SourceEntry] = field(default_factory=list)
    index_names: list[str] = field(default_factory=list)
    rank_dirs: set[int] = field(default_factory=set)
    in_rank: dict[int, list[SourceEntry]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: list[SourceEntry], exts: tuple[str, ...], candidates: tuple) -> "_Found":
        found = cls()
        for e in entries:
            parts = e.name.split("/")
            is_dir = parts[-1] == ""
            if is_dir:
                parts = parts[:-1]
            if not parts or any(p.startswith(".") or p == "" for p in parts):
                continue
            m = RANK_DIR.match(parts[0])
            if m and (len(parts) > 1 or is_dir):
                found.rank_dirs.add(int(m.group(1)))
                if len(parts) == 2 and not is_dir and parts[1].endswith(exts):
                    found.in_rank.setdefault(int(m.group(1)), []).append(e)
            elif len(parts) == 1 and not is_dir:
                if parts[0].endswith(exts):
                    found.top.append(e)
                elif any(f.is_index(parts[0]) for f in candidates):
                    found.index_names.append(parts[0])
        return found


def _classify_files(root: str, found: _Found, candidates: tuple, kinds: str,
                    step: Step | None) -> SourceSet:
    """classify() of a folder of checkpoint files (no rank folder): one step of several saves,
    or the union of the files (with its index, if any)."""
    if not found.top:
        raise ReshardError(f"source checkpoint folder {root} holds no {kinds} file and no "
                           f"rank_<r> folder")
    names = sorted(e.name for e in found.top)
    index_names = found.index_names
    if not index_names:   # several saves of one complete checkpoint: one step, by the rule
        choice = choose({0: names}, {0: root}, step, label="folder", root=root)
        if choice.step is not None:
            return SourceSet(root, True, {0: choice.files[0]}, step=choice.step,
                             notes=(Note(logging.INFO, chosen_line(choice, 1, root, "folder")),))
    elif step is not None:
        raise ReshardError(f"--step {step}: {root} is a sharded checkpoint with an index, not a "
                           f"series of saves")
    indexed = next((f for f in candidates if any(f.is_index(i) for i in index_names)
                    and any(f.owns(n) for n in names)), None)
    if indexed is None:
        return SourceSet(root, True, dict(enumerate(names)))
    if len(index_names) > 1:
        raise ReshardError(f"source checkpoint folder {root} holds several indexes "
                           f"({', '.join(sorted(index_names))}): keep one")
    return SourceSet(root, True, dict(enumerate(names)), index_name=index_names[0], format=indexed.name)


def _rank_candidates(root: str, found: _Found, fmt: str | None, candidates: tuple,
                     kinds: str) -> dict[int, list[SourceEntry]]:
    """Rank -> its checkpoint files in name order (empty rank folders left out: gaps); a rank
    folder of two formats is an error when no format was asked for."""
    cands_of: dict[int, list[SourceEntry]] = {}
    for r in sorted(found.rank_dirs):
        cands = sorted(found.in_rank.get(r, ()), key=lambda e: e.name)
        if not cands:
            continue        # an empty rank folder: a gap
        kinds_here = sorted({f.extensions[0] for c in cands for f in candidates if f.owns(c.name)})
        if fmt is None and len(kinds_here) > 1:
            raise ReshardError(f"{_join(root, f'rank_{r}')} mixes {' and '.join(kinds_here)} files")
        cands_of[r] = cands
    if not cands_of:
        raise ReshardError(f"source checkpoint folder {root}: its rank_<r> folders hold no "
                           f"{kinds} file")
    return cands_of


def _last_in_name_order_notes(cands_of: dict[int, list[SourceEntry]], files: dict[int, str]) -> list[Note]:
    """The notes on ranks whose checkpoint was the last in name order of several (no step):
    which, and a warning when one of the others is newer."""
    notes = []
    for r, cands in cands_of.items():
        chosen = next(c for c in cands if c.name == files[r])
        if len(cands) > 1:
            notes.append(Note(logging.INFO, f"source rank {r}: {len(cands)} checkpoints in "
                                            f"rank_{r}/, using the last in name order: "
                                            f"{chosen.name}"))
            newer = [c for c in cands[:-1] if c.mtime_ns > chosen.mtime_ns]
            if newer and chosen.mtime_ns:
                notes.append(Note(logging.WARNING, f"source rank {r}: {newer[-1].name} is newer "
                                                   f"than the chosen {chosen.name} (the last in "
                                                   f"name order is used, as MindSpore does)"))
    return notes


def _classify_ranks(root: str, found: _Found, fmt: str | None, candidates: tuple, partial: bool,
                    kinds: str, step: Step | None) -> SourceSet:
    """classify() of a folder of rank_<r> folders: each rank's checkpoint chosen (reshard.steps),
    gaps refused unless partial; one rank_0 folder is a complete checkpoint."""
    cands_of = _rank_candidates(root, found, fmt, candidates, kinds)
    choice = choose({r: [c.name for c in cands] for r, cands in cands_of.items()},
                    {r: _join(root, f"rank_{r}") for r in cands_of}, step, root=root)
    files: dict[int, str] = dict(choice.files)
    notes: list[Note] = []
    if choice.step is not None and files:
        notes.append(Note(logging.INFO, chosen_line(choice, len(files), root)))
    if choice.step is None:
        notes += _last_in_name_order_notes(cands_of, files)
    if not partial:
        gaps = [r for r in range(max(files) + 1) if r not in files]
        if gaps:
            raise ReshardError(f"{_join(root, f'rank_{gaps[0]}')}: missing or empty (rank "
                               f"folders are numbered from 0 without gaps)")
    if found.top:
        notes.append(Note(logging.INFO, f"{root}: ignoring {len(found.top)} checkpoint file(s) beside "
                                        f"the rank_<r> folders (e.g. {sorted(e.name for e in found.top)[0]})"))
    if not partial and found.rank_dirs == {0}:
        # MindSpore's and MindFormers' rule: one rank folder is a complete checkpoint (what a
        # conversion to a complete checkpoint writes: <dst>/rank_0/<prefix>0.ckpt), read
        # without a source strategy.
        notes.append(Note(logging.INFO, f"{root}: rank_0 is its only rank folder: a complete "
                                        f"checkpoint ({files[0]})"))
        return SourceSet(root, True, files, notes=tuple(notes), step=choice.step)
    return SourceSet(root, False, files, notes=tuple(notes), step=choice.step)


def check_source_strategy(source: SourceSet, strategy_world: int | None) -> Note | None:
    """A source strategy given with a checkpoint that classify() found complete through its one
    rank_0 folder. None: nothing to say (no strategy, or another kind of source). A Note
    (WARNING): the strategy is of one rank, so describes a complete checkpoint too: drop it, as
    MindFormers does. ReshardError: a strategy of several ranks for one rank folder (the other
    ranks' folders are missing)."""
    if strategy_world is None or not source.complete or source.is_file or \
            not source.files or not RANK_DIR.match(source.files[0].split("/", 1)[0]):
        return None
    if strategy_world > 1:
        raise ReshardError(f"{_join(source.root, 'rank_1')}: missing or empty (the source "
                           f"strategy has {strategy_world} ranks)")
    return Note(logging.WARNING, f"the source strategy is ignored: of one rank, it describes a "
                                 f"complete checkpoint, which {source.root} is (one rank_0 folder)")


# -- strategy folders ---------------------------------------------------------------------

def strategy_files(folder_names: Iterable[str], where: str) -> list[str]:
    """The files a strategy folder stands for, as mindspore.merge_pipeline_strategys reads it
    (glob *.ckpt / *.json): every *.ckpt, or every *.json, whatever the names, hidden names
    excluded; sorted.

    Args:
        folder_names: the names of the files directly in the folder.
        where: the folder, for messages.

    Returns:
        The sorted names of the strategy files.

    Raises:
        ReshardError: a folder mixing both kinds, or holding neither, naming `where`.
    """
    names = [n for n in folder_names if "/" not in n and not n.startswith(".")]
    pb = sorted(n for n in names if n.endswith(".ckpt"))
    js = sorted(n for n in names if n.endswith(".json"))
    if pb and js:
        raise ReshardError(f"strategy folder {where} mixes .ckpt and .json files")
    if not pb and not js:
        raise ReshardError(f"strategy folder {where} holds no *.ckpt or *.json strategy file")
    return pb or js


# -- locations ----------------------------------------------------------------------------

def split_url(url: str) -> tuple[str, str]:
    """(bucket, key without surrounding '/') of an obs:// or s3:// URL; ReshardError when the
    bucket is missing. obs:// and s3:// with the same bucket name the same object."""
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ReshardError(f"{url}: no bucket name (expected obs://bucket/key)")
    return bucket, key.strip("/")


RESOLVE_DEPTH = 2   # a checkpoint's parts lie at most this deep: rank_<r>/<file>, strategy files


def resolved_parts(location: str) -> list[tuple[str, str]]:
    """Every part of a local location with its links resolved: (the part as named under
    `location`, its real path), for the location itself and for each entry of it down to
    RESOLVE_DEPTH levels (a source's rank_<r> folders and their files, a strategy folder's
    files): a folder of rank_<r> links assembled from checkpoints elsewhere is, in truth, those
    folders. Links to folders are followed (a cycle ends at the depth bound); what cannot be
    listed counts as itself only. A URL (object stores have no links) is itself."""
    if is_url(location):
        return [(location, location)]
    parts = [(location, os.path.realpath(location))]
    level = [location]
    for _ in range(RESOLVE_DEPTH):
        below = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    entries = sorted((e.path, e.is_dir()) for e in it)
            except OSError:   # a file, nothing there, or not ours to list
                continue
            for path, is_dir in entries:
                parts.append((path, os.path.realpath(path)))
                if is_dir:
                    below.append(path)
        level = below
    return parts


def overlap(a: str, b: str) -> tuple[str, str] | None:
    """Where two locations overlap: (a part of `a`, a part of `b`) such that one is, holds or
    lies inside the other, or None. Local paths are compared with every part resolved
    (resolved_parts: a rank_<r> link to a folder elsewhere counts as that folder), relative to
    the working folder; obs:// and s3:// URLs by bucket and key prefix at '/' boundaries
    (obs://b/x and s3://b/x/y overlap). A local path never overlaps a URL."""
    if is_url(a) != is_url(b):
        return None
    if is_url(a):
        (ba, ka), (bb, kb) = split_url(a), split_url(b)
        if ba == bb and (not ka or not kb or ka == kb or ka.startswith(kb + "/")
                         or kb.startswith(ka + "/")):
            return a, b
        return None
    parts_a, parts_b = resolved_parts(a), resolved_parts(b)
    for inner, outer, swap in ((parts_a, parts_b, False), (parts_b, parts_a, True)):
        holders = {real: name for name, real in reversed(outer)}   # the shallowest name wins
        for name, real in inner:
            for folder in reversed(list(_self_and_ancestors(real))):   # the outermost holder
                if folder in holders:
                    return (holders[folder], name) if swap else (name, holders[folder])
    return None


def _self_and_ancestors(path: str):
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def overlaps(a: str, b: str) -> bool:
    """Whether one location is, holds or lies inside the other, every part resolved (see
    overlap): the engine never writes into its inputs.

    Args:
        a: a local path or an obs:// / s3:// URL.
        b: another.

    Returns:
        True when they overlap.
    """
    return overlap(a, b) is not None


def overlap_text(location: str, part: str) -> str:
    """`location`, and where one of its parts a link leads, for a one-line error."""
    if part == location or is_url(location):
        return location
    return f"{location} (its {os.path.relpath(part, location)} is {os.path.realpath(part)})"


def check_output(dst: str, dst_flag: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse (ReshardError naming both, and the link that makes them meet) an output location
    that is, holds or lies inside an input (flag -> location; None entries are skipped), every
    part of both resolved (see overlap): the engine never writes into its sources or
    strategies, not even through a link.

    Args:
        dst: the output location.
        dst_flag: how the user named it (`--dst_checkpoint`), for the message.
        inputs: flag -> input location (None: skipped).

    Raises:
        ReshardError: dst overlaps an input.
    """
    for flag, location in inputs.items():
        if not location:
            continue
        found = overlap(dst, location)
        if found is not None:
            raise ReshardError(f"{dst_flag} {overlap_text(dst, found[0])} overlaps {flag} "
                               f"{overlap_text(location, found[1])}: refusing to write into an "
                               f"input (choose another output folder)")


def check_writable(path: str, what: str) -> None:
    """Without writing anything: the nearest existing ancestor of local `path` must be a folder,
    on a file system mounted writable, that this user may write into. ReshardError naming
    `what` (the user's flag and value) and the folder in the way. Found before a plan is made,
    not as a traceback after the conversion."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ReshardError(f"{what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise ReshardError(f"{what}: cannot write in {probe} (read-only or not this user's)")


def probe_writable(folder: str, what: str) -> None:
    """Write access to a local `folder` tried for real, before any transfer or conversion: it is
    created (what the conversion does next anyway) with a temporary file in it, which leaves
    nothing behind even when the process is killed (an unnamed file). ReshardError naming
    `what`. (An obs:// / s3:// output is tried by its claim: reshard.claim.)"""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ReshardError(f"{what}: cannot write in {folder}: {exc.strerror or exc}") from None


def _parent(location: str) -> str:
    if is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(location) or "."


