"""Moving checkpoints and strategies between the user's locations (local or object storage)
and this node's disk, through obs_io only. Reads first (inspect_*), writes later (fetch_*,
upload_*), so bad input is reported before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import obs_io
import obs_io.atomic
from obs_io import DirEntry

from cloud_entry.errors import EntryError
from cloud_entry.paths import join, rank_dir

log = logging.getLogger(__name__)

_RANK_FILE = re.compile(r"^rank_(\d+)/([^/]+)$")
STRATEGY_EXTS = (".ckpt", ".json")


@dataclass(frozen=True)
class Source:
    """The checkpoint named by load_checkpoint, as found on its storage by one listing."""
    url: str                             # as given (file or folder)
    name: str                            # <ckpt_name>
    root: str                            # the folder the entries' names are relative to
    complete_file: str = ""              # a complete checkpoint: the file's URL/path
    rank_files: dict[int, str] = field(default_factory=dict)   # rank -> "rank_<r>/<file>"
    entries: dict[str, DirEntry] = field(default_factory=dict)  # every file used, by name
    identity: tuple = ()                 # (name, size, version) of every file used: see _version

    @property
    def remote(self) -> bool:
        return obs_io.is_remote(self.url)


def _basename(url: str) -> str:
    return PurePosixPath(url.rstrip("/")).name


def _version(path: str, size: int, etag: str | None, mtime_ns: int) -> str:
    """What tells two versions of one file apart, alike on every node: an object's ETag (or its
    modification time), for a local file a digest of its first and last 64 KiB. Not a local
    mtime or path: nodes that each hold a synced copy differ in those."""
    if obs_io.is_remote(path):
        return etag or str(mtime_ns)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 16))
        if size > 1 << 17:
            f.seek(size - (1 << 16))
            h.update(f.read())
    return h.hexdigest()[:32]


def _listing(url: str, flag: str) -> list[DirEntry] | None:
    """The files below url (None: url is a file), as one listing; one-line errors naming flag."""
    try:
        if obs_io.file.is_directory(url):
            return [e for e in obs_io.file.list_entries(url, recursive=True) if e.is_file()]
        if not obs_io.file.exists(url):
            raise FileNotFoundError(url)
        return None
    except FileNotFoundError:
        raise EntryError(f"{flag}={url}: not found") from None
    except (ValueError, PermissionError) as exc:   # a malformed URL, refused credentials
        raise EntryError(f"{flag}={url}: {exc}") from None


def _identity(entries: list[DirEntry]) -> tuple:
    return tuple((e.name, e.length, _version(e.path, e.length, e.etag, e.mtime_nsec)) for e in entries)


def inspect_source(url: str, fmt: str, flag: str = "load_checkpoint") -> Source:
    """Classify load_checkpoint: complete file, folder of complete files, or rank_<r> folders
    (the last file in name order per rank, as MindSpore picks it)."""
    ext = f".{fmt}"
    entries = _listing(url, flag)
    if entries is None:
        if not url.endswith(ext):
            raise EntryError(f"{flag}={url}: not a {ext} file (load_ckpt_format={fmt})")
        st = obs_io.file.stat(url)
        entry = DirEntry(_basename(url), url, False, st.length, st.mtime_nsec)
        return Source(url, entry.name[: -len(ext)], url[: -len(entry.name)].rstrip("/") or ".",
                      complete_file=url, entries={entry.name: entry}, identity=_identity([entry]))
    by_name = {e.name: e for e in entries}
    names = sorted(by_name)

    def source(chosen: list[str], **kind) -> Source:
        used = [by_name[n] for n in chosen]
        return Source(url, _basename(url), url, **kind, entries={e.name: e for e in used},
                      identity=_identity(used))
    ranks: dict[int, str] = {}
    for name in names:
        m = _RANK_FILE.match(name)
        if m and name.endswith(ext):
            ranks[int(m.group(1))] = name            # sorted: the last one wins
    if ranks:
        if sorted(ranks) != list(range(len(ranks))):
            missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
            raise EntryError(f"{flag}={url}: rank folders must be numbered from 0 without gaps; "
                             f"no {ext} file for rank {missing[0]}")
        for r, name in ranks.items():
            others = [n for n in names if n.startswith(f"rank_{r}/") and n.endswith(ext) and n != name]
            if others:
                log.info("source rank %d: %s holds %d checkpoints: using the last in name order, %s",
                         r, url, len(others) + 1, name)
        return source(list(ranks.values()), rank_files=ranks)
    files = [n for n in names if "/" not in n and n.endswith(ext)]
    if not files:
        raise EntryError(f"{flag}={url}: no rank_<r>/*{ext} and no *{ext} file in this folder")
    if len(files) > 1:
        log.info("%s holds %d checkpoints: using the last, %s", url, len(files), files[-1])
    return source([files[-1]], complete_file=join(url, files[-1]))


def strategy_names(folder_url: str) -> list[str]:
    """The strategy files of a folder, as MindSpore's merge reads it: every *.ckpt / *.json."""
    return [n for n in obs_io.file.list_directory(folder_url) if n.endswith(STRATEGY_EXTS)]


def check_strategy(url: str, flag: str) -> tuple:
    """A strategy given by the user must exist (file, or folder with *.ckpt / *.json). Returns
    its identity: (name, size, version) of each strategy file."""
    entries = _listing(url, flag)
    if entries is None:
        st = obs_io.file.stat(url)
        return _identity([DirEntry(_basename(url), url, False, st.length, st.mtime_nsec)])
    files = [e for e in entries if "/" not in e.name and e.name.endswith(STRATEGY_EXTS)]
    if not files:
        raise EntryError(f"{flag}={url}: folder holds no *.ckpt or *.json strategy file")
    return _identity(files)


def fetch_strategy(url: str, local_dir: str, copy_local: bool = False) -> str:
    """A local path to the strategy (file or folder): the user's own when already local
    (read in place, never written to) unless copy_local, else a copy under local_dir (ours:
    strategy files there that the source no longer has are removed, or they would be merged)."""
    if not obs_io.is_remote(url) and not copy_local:
        return url
    if obs_io.file.is_directory(url):
        names = strategy_names(url)
        _prune(local_dir, set(names), STRATEGY_EXTS)
        obs_io.file.copy_parallel(url, local_dir, file_list=names)
        return local_dir
    dst = os.path.join(local_dir, _basename(url))
    obs_io.file.copy(url, dst)
    return dst


def fetch_source(source: Source, ranks: list[int], local_root: str) -> str:
    """Local path to hand the engine: the user's own when local, else only the needed shards
    (or the complete file) copied in parallel under local_root (our cache), from the entries
    the plan's listing already holds: no further listing."""
    if not source.remote:
        return source.complete_file or source.url
    if source.complete_file:
        (entry,) = source.entries.values()
        _download(source.root, local_root, [entry])
        return os.path.join(local_root, entry.name)
    wanted = [source.entries[source.rank_files[r]] for r in ranks]
    for r in ranks:   # the engine takes a rank folder's last file: no older ones may stay
        _prune(rank_dir(local_root, r), {_basename(source.rank_files[r])})
    todo = _download(source.url, local_root, wanted)
    log.info("downloaded %d of %d source shards (ranks %s) from %s", len(todo), len(source.rank_files),
             ranges(ranks), source.url)
    return local_root


def _download(root: str, local_root: str, entries: list[DirEntry]) -> list[str]:
    """Copy root/<name> to local_root/<name> unless an earlier run copied the same object (same
    size, ETag and modification time, recorded then) and a copy of that size is still there.
    Returns the names copied now. Copies are published only when complete, so a crash leaves no
    half file under the final name (obs_io's downloads are not fsynced: the size check here is
    what makes a reuse after a machine crash safe)."""
    record = local_root.rstrip(os.sep) + ".downloaded.json"   # beside the folder the job loads
    try:
        with open(record, encoding="utf-8") as f:
            seen = json.load(f)
    except (OSError, ValueError):
        seen = {}
    ident = {e.name: [e.length, e.etag, e.mtime_nsec] for e in entries}

    def have(e: DirEntry) -> bool:
        local = os.path.join(local_root, e.name)
        return seen.get(e.name) == ident[e.name] and os.path.isfile(local) and os.path.getsize(local) == e.length
    todo = [e for e in entries if not have(e)]
    if todo:   # a folder copy, even of one file: it shows progress (a bar, or a line every 10 s)
        obs_io.file.copy_parallel(root, local_root, file_list=todo)
    seen.update(ident)
    obs_io.atomic.write_atomic(record, json.dumps(seen), durable=True)
    return [e.name for e in todo]


def _prune(folder: str, keep: set[str], exts: tuple[str, ...] = ()) -> None:
    """Remove files of ours in `folder` (a cache under the work folder) not in `keep`; with
    `exts`, only files with those endings."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name not in keep and os.path.isfile(path) and (not exts or name.endswith(exts)):
            log.info("removing %s: not in the source any more", path)
            os.remove(path)


def sync_rank_shards(source: Source, ranks: list[int], local_root: str) -> str:
    """auto_trans_ckpt=False: this node's own ranks' shards (or the complete file)."""
    present = [r for r in ranks if r in source.rank_files]
    return fetch_source(source, present, local_root) if (present or source.complete_file) else source.url


def converted_files(ranks: list[int], prefix: str, fmt: str) -> list[str]:
    """Exactly the converted checkpoints: never a temp file of a killed run or an old prefix's."""
    return [f"rank_{r}/{prefix}{r}.{fmt}" for r in ranks]


def upload_ranks(local_root: str, remote_root: str, ranks: list[int], prefix: str, fmt: str) -> None:
    log.info("uploading ranks %s to %s", ranges(ranks), remote_root)
    obs_io.file.copy_parallel(local_root, remote_root, file_list=converted_files(ranks, prefix, fmt))


def download_ranks(remote_root: str, local_root: str, ranks: list[int], prefix: str, fmt: str) -> None:
    log.info("downloading ranks %s converted on other nodes from %s", ranges(ranks), remote_root)
    obs_io.file.copy_parallel(remote_root, local_root, file_list=converted_files(ranks, prefix, fmt))


def ranges(ranks: list[int]) -> str:
    """'0-3,6' for logs."""
    out, rs = [], sorted(ranks)
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out) or "none"


_RANK_PART = re.compile(r"^rank_(\d+)$")
_MANIFEST = re.compile(r"^\.reshard/rank_(\d+)\.json$")


def stale_outputs(names: list[str], keep_ranks: set[int], prefix: str, fmt: str) -> list[str]:
    """Of the files below a transformed_checkpoint/<name> folder (relative names), those that are
    not this run's: another file in a rank folder (an older prefix's `zz_0.ckpt` sorts after
    `checkpoint_0.ckpt`, and the last file in name order is what gets loaded), any file of a rank
    this run does not hold (rank_4..7 of an 8-rank run in a 4-rank result), the engine's
    manifest of such a rank. Markers and other files beside the rank folders are left alone."""
    wanted = set(converted_files(sorted(keep_ranks), prefix, fmt))
    stale = []
    for name in names:
        first = name.split("/", 1)[0]
        m = _RANK_PART.match(first)
        if m and "/" in name and name not in wanted:
            stale.append(name)
        m = _MANIFEST.match(name)
        if m and int(m.group(1)) not in keep_ranks:
            stale.append(name)
    return stale


def prune_outputs(root: str, keep_ranks: list[int], prefix: str, fmt: str) -> list[str]:
    """Remove stale_outputs() below root (local or object storage). The caller has made sure
    root is our output, never the user's source (JobPlan checks, paths.clear_reason)."""
    try:
        names = [e.name for e in obs_io.file.list_entries(root, recursive=True) if e.is_file()]
    except FileNotFoundError:
        return []
    stale = stale_outputs(names, set(keep_ranks), prefix, fmt)
    for name in stale:
        try:
            obs_io.file.remove(join(root, name))
        except FileNotFoundError:   # another node's prune of a shared folder got there first
            pass
    if stale:
        log.info("removed %d file(s) of earlier runs from %s: %s", len(stale), root,
                 ", ".join(stale[:8]) + (" ..." if len(stale) > 8 else ""))
    if not obs_io.is_remote(root):   # rank folders left empty
        for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            path = os.path.join(root, entry)
            if _RANK_PART.match(entry) and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
    return stale


def prune_strategies(folder: str, keep: list[str]) -> list[str]:
    """Remove strategy files (*.ckpt, *.json) of earlier runs from our strategy output folder
    (remote_save_url/strategy): used as a source strategy folder later, every file there is
    merged, so 4 ranks of this run beside ranks 4-7 of an 8-rank run would be read as one."""
    try:
        names = [e.name for e in obs_io.file.list_entries(folder) if e.is_file()]
    except FileNotFoundError:
        return []
    stale = [n for n in names if n.endswith(STRATEGY_EXTS) and n not in set(keep)]
    for name in stale:
        obs_io.file.remove(join(folder, name))
    if stale:
        log.info("removed %d strategy file(s) of earlier runs from %s", len(stale), folder)
    return stale
