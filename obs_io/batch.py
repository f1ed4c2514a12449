"""copy() and copy_parallel() below the API: a plan (one CopyTask per file) and its execution.

Planning asks the store as little as it can: one listing (fs.list_entries) of a folder, and
nothing at all for files the caller names by the entries of a listing it already made.
Execution: local-to-local copies on a thread pool, everything else in this process
(transfer.py) or, for many small files with is_processing, spread over worker processes
(workers.py) while this process moves the big files. The imports go one way: batch -> workers
-> transfer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from . import config as _config
from .entries import DirEntry
from .errors import MoxFileNameDuplicateException, ObjectNotFound
from .fs import backend, list_entries
from .progress import Progress
from .store import ObjectStore
from .streams import copy_tasks
from .atomic import sweep
from .cleanup import on_failure
from .transfer import CopyTask, abort_stale_uploads, copy_local, execute_remote
from .urls import check, is_remote, join, safe_relative
from .workers import Workers, partition, worker_count

log = logging.getLogger("obs_io")


def plan_file(src: str, dst: str) -> CopyTask:
    """One file: moxing's copy(). A folder as source is an error (use copy_parallel)."""
    check(src, dst)
    if is_remote(src):
        store = backend(src)
        info = store.head(src)
        if info is None:
            if store.isdir(src):
                raise IsADirectoryError(f"{src} is a folder: use copy_parallel to copy folders")
            raise ObjectNotFound(f"{src}: no such object")
        return CopyTask(src, dst, info.size, info.etag)
    if os.path.isdir(src):
        raise IsADirectoryError(f"{src} is a folder: use copy_parallel to copy folders")
    return CopyTask(src, dst, os.path.getsize(src))


def plan_tree(src: str, dst: str, file_list: Iterable[str | DirEntry] | None = None
              ) -> tuple[list[CopyTask], list[str]]:
    """Every file under folder `src` mapped under `dst`, and the empty folders to recreate.

    file_list: only these files, named relative to `src` (see _chosen for what that costs).
    All names are checked before anything is copied: a bad key fails the whole plan. Raises
    NotADirectoryError when `src` is a file (and there is no file_list of entries).
    """
    check(src, dst)
    if file_list is None:
        entries = list_entries(src, recursive=True)
        files = [e for e in entries if not e.dir]
    else:
        entries, files = [], _chosen(src, file_list)
    local_dst = not is_remote(dst)

    def target(name: str) -> str:
        return join(dst, safe_relative(name, join(src, name)) if local_dst else name)

    tasks = [CopyTask(join(src, e.name), target(e.name), e.length, e.etag) for e in files]
    parents = {n.rsplit("/", 1)[0] for n in (e.name for e in files) if "/" in n}
    parents = {"/".join(p.split("/")[:i + 1]) for p in parents for i in range(p.count("/") + 1)}
    if local_dst:
        _refuse_file_and_folder(src, [e.name for e in files], parents)
    dirs = [target(e.name) for e in entries if e.dir and e.name not in parents]
    return tasks, dirs


def _refuse_file_and_folder(src: str, names: list[str], parents: set[str]) -> None:
    """Object storage can hold both `a` and `a/b`; a disk cannot have `a` as a file and a
    folder. Found before anything is copied (moxing's MoxFileNameDuplicateException), so a
    download never stops half-way on it."""
    clash = sorted(set(n.rstrip("/") for n in names) & parents)
    if clash:
        raise MoxFileNameDuplicateException(
            f"{join(src, clash[0])} is both an object and a folder of objects: a local copy cannot "
            f"hold both ({len(clash)} such name(s))")


def _chosen(src: str, file_list: Iterable[str | DirEntry]) -> list[DirEntry]:
    """The files of a file_list as entries named relative to `src`.

    A DirEntry (from list_entries(src, recursive=True), or any listing the caller already has)
    is taken as it is, with its size and ETag: no request at all. Folder entries are skipped (a
    folder comes with its files). String names are found in ONE listing of their deepest common
    folder: one request per 1,000 keys there, where a HEAD per name would cost one request each
    and a listing per folder one per rank folder (counted in tests/test_obs_io_requests.py).
    """
    chosen: dict[str, DirEntry] = {}
    wanted: list[str] = []
    for item in file_list:
        if isinstance(item, DirEntry):
            safe_relative(item.name, join(src, item.name))  # raises for a name that leaves src
            if not item.dir:
                chosen[item.name] = item
        else:
            wanted.append(safe_relative(str(item).replace(os.sep, "/"), join(src, str(item))))
    if wanted:
        common = posixpath.commonpath([posixpath.dirname(w) for w in wanted])
        try:
            listed = list_entries(join(src, common), recursive=True)
        except (FileNotFoundError, NotADirectoryError):
            if not common:
                raise  # src itself: missing, or a file that copy_parallel copies as one
            listed = []  # the common folder is missing: so is every name, reported below
        found = {f"{common}/{e.name}" if common else e.name: e for e in listed if not e.dir}
        for name in wanted:
            if name not in found:
                missing = ObjectNotFound if is_remote(src) else FileNotFoundError
                raise missing(f"{join(src, name)}: no such file (listed in file_list)")
            chosen[name] = dataclasses.replace(found[name], name=name)
    return list(chosen.values())


def execute(tasks: list[CopyTask], threads: int = 16, desc: str = "copy", show_progress: bool = True,
            dirs: list[str] = (), is_processing: bool = False) -> None:
    """Run a plan. The first failure stops the batch and is raised as a one-line builtin error;
    transfers in flight are cancelled, and no partial file is left under a final name."""
    clean_leftovers(tasks)
    progress = Progress(desc, sum(t.size for t in tasks), len(tasks)) if show_progress else None
    local = [t for t in tasks if not (is_remote(t.src) or is_remote(t.dst))]
    with progress or contextlib.nullcontext():   # closed, "done" only on success
        for d in dirs:
            backend(d).makedirs(d)
        if local:
            with ThreadPoolExecutor(max(1, min(threads, len(local)))) as pool:
                for fut in [pool.submit(copy_local, t, progress) for t in local]:
                    fut.result()
        for store, group in _by_store(tasks):
            if store is None:
                copy_tasks(group, threads, progress)
            else:
                store.transfer(group, threads, progress, is_processing)


def _by_store(tasks: list[CopyTask]) -> list[tuple[ObjectStore | None, list[CopyTask]]]:
    """The tasks with a remote side, grouped by the store that moves them: the one store of
    their remote side(s); None for copies between two stores (streams.copy_tasks)."""
    groups: dict[int, tuple[ObjectStore | None, list[CopyTask]]] = {}
    for t in tasks:
        stores = {id(s): s for s in (backend(u) for u in (t.src, t.dst) if is_remote(u))}
        if stores:
            store = next(iter(stores.values())) if len(stores) == 1 else None
            groups.setdefault(id(store), (store, []))[1].append(t)
    return list(groups.values())


def clean_leftovers(tasks: list[CopyTask]) -> None:
    """What a killed run of this copy left in the local folders being written: temporary files
    of dead writers (atomic.sweep, which never touches a running copy's). The S3 store aborts
    its own (execute_s3)."""
    for folder in sorted({os.path.dirname(os.path.abspath(t.dst)) for t in tasks if not is_remote(t.dst)}):
        sweep(folder)


def execute_s3(tasks: list[CopyTask], threads: int, progress: Progress | None, is_processing: bool) -> None:
    """The S3 store's transfer (S3FS.transfer): first the multipart uploads of these keys that
    began before now (abort_stale_uploads: a killed run's; being unable to list them, no
    permission, is logged, not a reason to fail the copy); then, with is_processing and
    enough small files, those go to worker processes (workers.py) while this process moves
    the big ones."""
    try:
        abort_stale_uploads(tasks, datetime.datetime.now(datetime.timezone.utc))
    except PermissionError as err:
        log.warning("could not look for multipart uploads left by an interrupted copy: %s", err)
    threshold = _config.current().multipart_threshold
    small = [t for t in tasks if t.size < threshold]
    processes = worker_count(is_processing, threads, len(small))
    if processes <= 1:
        execute_remote(tasks, threads, progress)
        return
    log.debug("%d small files over %d worker processes", len(small), processes)
    pool = Workers(partition(small, processes), max(1, threads // processes), progress)
    with on_failure(pool.stop):
        big = [t for t in tasks if t.size >= threshold]
        if big:
            execute_remote(big, threads, progress)
    pool.wait()
