"""Moving checkpoints and strategies between the user's locations (local or object storage)
and this node's disk, through obs_io only. Reads first (inspect_*), writes later (fetch_*,
upload_*), so bad input is reported before anything is written.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable

import obs_io
import obs_io.atomic
import reshard
from obs_io import DirEntry
from reshard.api import local_entries
from reshard.execute import own_folders
from reshard.run import stale_outputs
from reshard.sources import RANK_DIR, STRATEGY_EXTS, SourceEntry, SourceSet, classify, strategy_files

from cloud_entry.errors import EntryError
from cloud_entry.paths import join, rank_dir

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Source:
    """The checkpoint named by load_checkpoint: the engine's classification (reshard.sources)
    of one listing of its storage, with the listing's entries of the files it uses."""
    url: str                             # as given (file or folder)
    name: str                            # <ckpt_name>: the folder's name or the file's stem
    files: SourceSet                     # what the engine reads, names relative to files.base
    entries: dict[str, DirEntry] = field(default_factory=dict)  # every file used, by name
    identity: tuple = ()                 # (name, size, version) of every file used: reshard.file_version

    @property
    def remote(self) -> bool:
        return obs_io.is_remote(self.url)

    @property
    def rank_files(self) -> dict[int, str]:
        """rank -> relative name, for a distributed source ({} for a complete one)."""
        return {} if self.files.complete else dict(self.files.files)


def _basename(url: str) -> str:
    return PurePosixPath(url.rstrip("/")).name


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


def _local_listing(path: str, flag: str) -> tuple[list[SourceEntry], list[DirEntry]] | None:
    """A local folder walked as the engine walks it (reshard.api.local_entries: rank_<r> links
    to folders elsewhere followed, empty rank folders seen), with its files as entries; None
    for a file."""
    if not os.path.exists(path):
        raise EntryError(f"{flag}={path}: not found")
    is_file, walked = local_entries(path)
    if is_file:
        return None
    files = [DirEntry(e.name, os.path.join(path, *e.name.split("/")), False, e.size, e.mtime_ns)
             for e in walked if not e.name.endswith("/")]
    return walked, files


def _identity(entries: list[DirEntry]) -> tuple:
    return tuple((e.name, e.length, reshard.file_version(e.path, e.length, e.etag, e.mtime_nsec)) for e in entries)


def inspect_source(url: str, fmt: str, flag: str = "load_checkpoint", step: reshard.Step | None = None) -> Source:
    """Classify load_checkpoint with the engine's rule (reshard.sources.classify) from one
    listing: a complete file, a folder of complete files (their union; a sharded safetensors
    folder's index decides which file holds each tensor), or rank_<r> folders (files named by
    training step: the latest step, or `step`, the same in every rank folder; other names, the
    last in name order, as MindSpore picks it). What the engine notes (the step or file chosen,
    newer files left aside) is logged. A local folder is walked as the engine walks it (rank_<r>
    links followed)."""
    if obs_io.is_remote(url):
        objects = _listing(url, flag)
        listed = None if objects is None else (
            [SourceEntry(e.name, e.length, e.mtime_nsec) for e in objects], objects)
    else:
        listed = _local_listing(url, flag)
    try:
        if listed is None:
            st = obs_io.file.stat(url)
            entries = [DirEntry(_basename(url), url, False, st.length, st.mtime_nsec)]
            files = classify(url, [SourceEntry(entries[0].name, st.length, st.mtime_nsec)], fmt, is_file=True,
                             step=step)
        else:
            walked, entries = listed
            files = classify(url, walked, fmt, is_file=False, step=step)
        if files.needs_index:
            files = files.with_index(obs_io.file.read(files.path_of(files.index_name), binary=True))
    except reshard.ReshardError as exc:
        raise EntryError(f"{flag}={url}: {exc}") from None
    for note in files.notes:
        log.log(note.level, "%s", note)
    by_name = {e.name: e for e in entries}
    used = [by_name[n] for n in files.used_names()]
    return Source(url, files.name, files, {e.name: e for e in used}, _identity(used))


def strategy_names(folder_url: str) -> list[str]:
    """The strategy files of a folder, by the engine's rule (reshard.sources.strategy_files)."""
    try:
        return strategy_files([e.name for e in obs_io.file.list_entries(folder_url) if e.is_file()], folder_url)
    except reshard.ReshardError as exc:
        raise EntryError(str(exc)) from None


def check_strategy(url: str, flag: str) -> tuple:
    """A strategy given by the user must exist (a file, or a folder the engine's rule accepts:
    every *.ckpt or every *.json, not both). Returns its identity: (name, size, version) of each
    strategy file."""
    entries = _listing(url, flag)
    if entries is None:
        st = obs_io.file.stat(url)
        return _identity([DirEntry(_basename(url), url, False, st.length, st.mtime_nsec)])
    top = {e.name: e for e in entries if "/" not in e.name}
    try:
        names = strategy_files(list(top), url)
    except reshard.ReshardError as exc:
        raise EntryError(f"{flag}={url}: {exc}") from None
    if not names:
        raise EntryError(f"{flag}={url}: folder holds no *.ckpt or *.json strategy file")
    return _identity([top[n] for n in names])


@dataclass(frozen=True)
class StrategyCopy:
    """A remote strategy's files as downloaded once (name -> bytes; a file, or a folder's
    strategy files), so that the job fetches each strategy once: parsed from one copy, placed
    where the job keeps it from the same bytes (fetch_strategy)."""
    url: str
    folder: bool
    files: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, url: str, path: str) -> "StrategyCopy":
        """The copy fetch_strategy made at `path` of remote `url`, read back."""
        folder = os.path.isdir(path)
        names = [n for n in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, n))] \
            if folder else [os.path.basename(path)]
        files = []
        for name in names:
            with open(os.path.join(path, name) if folder else path, "rb") as f:
                files.append((name, f.read()))
        return cls(url, folder, tuple(files))


def fetch_strategy(url: str, local_dir: str, copy_local: bool = False,
                   fetched: StrategyCopy | None = None) -> str:
    """A local path to the strategy (file or folder): the user's own when already local
    (read in place, never written to) unless copy_local, else a copy under local_dir (ours:
    strategy files there that the source no longer has are removed, or they would be merged).
    fetched: the bytes of this remote strategy as downloaded before (StrategyCopy): written
    there, not downloaded again."""
    if not obs_io.is_remote(url) and not copy_local:
        return url
    if fetched is not None and fetched.url == url:
        return _place(fetched, local_dir)
    if obs_io.file.is_directory(url):
        names = strategy_names(url)
        _prune(local_dir, set(names), STRATEGY_EXTS)
        obs_io.file.copy_parallel(url, local_dir, file_list=names)
        return local_dir
    dst = os.path.join(local_dir, _basename(url))
    obs_io.file.copy(url, dst)
    return dst


def _place(copy: StrategyCopy, local_dir: str) -> str:
    """fetch_strategy from bytes already downloaded: the same files in the same place."""
    names = [n for n, _ in copy.files]
    if copy.folder:
        _prune(local_dir, set(names), STRATEGY_EXTS)
    for name, data in copy.files:
        obs_io.atomic.write_atomic(os.path.join(local_dir, name), data, durable=False)
    return local_dir if copy.folder else os.path.join(local_dir, names[0])


def fetch_source(source: Source, names: list[str], local_root: str) -> str:
    """The folder the engine reads `names` (relative to source.files.base) under: the user's own
    when local, else local_root (our cache), where exactly those files are copied in parallel
    from the entries the plan's listing already holds: no further listing."""
    root, todo = cache_source(source, names, local_root)
    if todo:   # a folder copy, even of one file: it shows progress (a bar, or a line every 10 s)
        obs_io.file.copy_parallel(source.files.base, local_root, file_list=[source.entries[n] for n in todo])
        log.info("downloaded %d of the %d source file(s) this node reads (%d in the source) from %s",
                 len(todo), len(names), len(source.entries), source.url)
    record_cached(source, names, local_root)
    return root


def _record_path(local_root: str) -> str:
    return local_root.rstrip(os.sep) + ".downloaded.json"   # beside the folder the job loads


def _seen(local_root: str) -> dict:
    try:
        with open(_record_path(local_root), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _ident(e: DirEntry) -> list:
    return [e.length, e.etag, e.mtime_nsec]


def cache_source(source: Source, names: list[str], local_root: str) -> tuple[str, list[str]]:
    """(the folder the engine reads `names` under, the names still to download there). The
    user's own folder, nothing to download, when local; else local_root, our cache: a file an
    earlier run downloaded from the same object (same size, ETag and modification time,
    recorded then: record_cached) and still there with that size is not downloaded again.
    Copies are published only when complete, so a crash leaves no half file under the final
    name (downloads are not fsynced: the size check is what makes a reuse after a machine crash
    safe). A cached rank folder keeps no older checkpoint."""
    if not source.remote:
        return source.files.base, []
    for r, name in source.rank_files.items():
        if name in names:
            _prune(rank_dir(local_root, r), {_basename(name)})
    seen = _seen(local_root)

    def have(e: DirEntry) -> bool:
        local = os.path.join(local_root, e.name)
        return seen.get(e.name) == _ident(e) and os.path.isfile(local) and os.path.getsize(local) == e.length
    todo = [n for n in names if not have(source.entries[n])]
    if len(todo) < len(names):
        log.info("%d source file(s) already here from an earlier run, unchanged", len(names) - len(todo))
    return local_root, todo


def record_cached(source: Source, names: list[str], local_root: str) -> None:
    """Record which objects the files of `names` now under local_root were downloaded from
    (those there with their object's size): cache_source reuses them."""
    if not source.remote or not names:   # every file read in place: no copy, no record
        return
    seen = _seen(local_root)
    for n in names:
        e, local = source.entries[n], os.path.join(local_root, n)
        if os.path.isfile(local) and os.path.getsize(local) == e.length:
            seen[n] = _ident(e)
    obs_io.atomic.write_atomic(_record_path(local_root), json.dumps(seen), durable=True)


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
    """auto_trans_ckpt=False: this node's own ranks' shards (or every file of a complete
    source); the path to load: the file, or the folder."""
    files = source.files
    names = files.used_names() if files.complete else [files.files[r] for r in ranks if r in files.files]
    root = fetch_source(source, names, local_root)
    return files.path_of(files.files[0], root) if files.is_file else root


class RankUploader:
    """Uploads converted files to remote_root as they are committed (submit, from the engine's
    on_file), while the next ranks convert; finish() waits and raises the first failure.

    A rerun moves only what changed: a file that the remote conversion_manifest.json (written
    when those objects were uploaded) lists with this file's size and CRC32, and that the
    listing shows with that size, is not uploaded again. Each upload is one obs_io copy (a
    temporary name locally, nothing under the final key until complete)."""

    def __init__(self, local_root: str, remote_root: str, threads: int = 4):
        self.local_root, self.remote_root = local_root, remote_root
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rank-upload")
        self._futures: list[Future] = []
        self.uploaded: list[str] = []
        self.unchanged: list[str] = []
        self._recorded, self._present = self._remote_state()

    def _remote_state(self) -> tuple[dict[str, tuple[int, str]], dict[str, int]]:
        from reshard import integrity
        try:
            recorded = {n: (r.size, r.crc32) for n, r in integrity.read(self.remote_root).files.items()}
            present = {e.name: e.length for e in obs_io.file.list_entries(self.remote_root, recursive=True)
                       if e.is_file()}
        except (reshard.ReshardError, FileNotFoundError):
            return {}, {}
        return recorded, present

    @property
    def recorded(self) -> frozenset[str]:
        """The names the remote manifest lists: a rerun may find them unchanged there."""
        return frozenset(self._recorded)

    def submit(self, name: str, checksum: tuple[int, str] | None) -> None:
        """Upload `name` (relative to both roots) unless unchanged there; checksum: its
        (size, CRC32) as written, None when unknown (then it is uploaded)."""
        if checksum is not None and self._recorded.get(name) == tuple(checksum) \
                and self._present.get(name) == checksum[0]:
            self.unchanged.append(name)
            return
        self._futures.append(self._pool.submit(self._upload, name))

    def _upload(self, name: str) -> None:
        obs_io.file.copy(join(self.local_root, name), join(self.remote_root, name))
        self.uploaded.append(name)

    def finish(self) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.uploaded or self.unchanged:   # (the others went up while they were written)
            log.info("uploaded %d converted file(s) to %s%s", len(self.uploaded), self.remote_root,
                     f"; {len(self.unchanged)} unchanged there, not uploaded again" if self.unchanged else "")


def upload_ranks(local_root: str, remote_root: str, checksums: dict[str, tuple[int, str]]) -> None:
    """The converted files (relative name -> (size, CRC32), from the engine's report) to object
    storage after the conversion (--overlap=False); unchanged objects skipped as by RankUploader."""
    uploader = RankUploader(local_root, remote_root)
    for name, checksum in sorted(checksums.items()):
        uploader.submit(name, checksum)
    uploader.finish()


def download_ranks(remote_root: str, local_root: str, names: list[str],
                   expected: Callable[[str], tuple[int, str] | None],
                   same: dict[str, str] | None = None) -> list[str]:
    """Ranks converted on other nodes (or before, on another node), down; one already here with
    the size and CRC32 its block recorded (`expected`) is not downloaded again. same: name ->
    the name of a rank with the same bytes (convert.replicas: from the plan); such a rank whose
    twin is among `names` with the same recorded checksum is another name of the twin's file
    here (a hard link), not a second download. Returns the names downloaded or linked."""
    from reshard.execute import link_file
    todo = [name for name in names if not _here_unchanged(join(local_root, name), expected(name))]
    if len(todo) < len(names):
        log.info("%d rank file(s) converted elsewhere are here already, unchanged", len(names) - len(todo))
    twins = {n: f for n, f in (same or {}).items()
             if n in todo and f in names and f != n and expected(n) is not None and expected(n) == expected(f)}
    fetch = [n for n in todo if n not in twins]
    if todo:   # a rank_<r> link in our folder is replaced, never downloaded through
        own_folders(local_root, sorted({os.path.dirname(join(local_root, n)) for n in todo}))
    if fetch:
        log.info("downloading %d rank file(s) converted on other nodes from %s%s", len(fetch), remote_root,
                 f" ({len(twins)} more are the same bytes, linked here)" if twins else "")
        obs_io.file.copy_parallel(remote_root, local_root, file_list=fetch)
    for name, first in sorted(twins.items()):
        os.makedirs(os.path.dirname(join(local_root, name)), exist_ok=True)
        link_file(join(local_root, first), join(local_root, name), durable=False)
    return todo


def _here_unchanged(path: str, want: tuple[int, str] | None) -> bool:
    """The local file is there with the recorded (size, CRC32)."""
    from reshard import integrity
    if want is None or not os.path.isfile(path) or os.path.getsize(path) != want[0]:
        return False
    got = integrity.file_checksum(path)
    return (got.size, got.crc32) == tuple(want)


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
    if not obs_io.is_remote(root):   # rank folders left empty, links of ranks not kept
        for entry in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            path, m = os.path.join(root, entry), RANK_DIR.match(entry)
            if m and os.path.islink(path):   # never listed through: the link alone goes
                if int(m.group(1)) not in keep_ranks:
                    log.info("removing the link %s (to %s): not a rank of this run", path, os.path.realpath(path))
                    os.unlink(path)
            elif m and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
    return stale


def abort_left_uploads(*folders: str) -> None:
    """Abort the multipart uploads left incomplete below these folders of ours on object storage
    (by writers killed in earlier runs, whichever node they were: OBS bills their parts until
    they are aborted, and no listing shows them). Only once nobody uploads there any more. A
    store that will not list them (no permission) is a warning, not a failed job."""
    for folder in folders:
        if obs_io.is_remote(folder):
            try:
                obs_io.file.abort_uploads(folder)
            except PermissionError as exc:
                log.warning("could not look for incomplete multipart uploads under %s: %s", folder, exc)


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
