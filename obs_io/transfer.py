"""Copying files between local disk and object storage: a plan (list of CopyTask) and its execution.

Execution goes through s3transfer's TransferManager (multipart, ranged downloads, retries,
abort of a failed multipart upload); nothing here speaks HTTP. What is added on top:
downloads land under a temporary name and are published by rename only after their size (and
MD5 where the ETag is one) matched; keys can never place a download outside its folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from . import config as _config
from .client import MAX_THREADS, get_client, transfer_config
from .errors import translating
from .fs import LOCAL, S3
from .progress import Progress
from .urls import ObjectURL, check, is_remote, join, safe_relative
from .workers import Workers, partition, worker_count

log = logging.getLogger("obs_io")
_PLAIN_MD5 = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


@dataclass(frozen=True)
class CopyTask:
    """One file to copy. size/etag come from the listing, so no HEAD per file is needed."""

    src: str
    dst: str
    size: int
    etag: str | None = None


def backend(url: str):
    return S3 if is_remote(url) else LOCAL


def temp_name(path: str) -> str:
    """A sibling of `path` that no reader mistakes for the real file."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.obsio-{uuid.uuid4().hex[:8]}.tmp")


def verify(path: str, size: int, etag: str | None, what: str, body: bytes | None = None) -> None:
    """Raise if the download (the file at `path`, or `body` still in memory) is not `size`
    bytes or, for a plain-MD5 ETag, not that MD5."""
    got = len(body) if body is not None else os.path.getsize(path)
    if got != size:
        raise OSError(f"{what}: downloaded {got} bytes, expected {size}; nothing was written")
    match = _PLAIN_MD5.match(etag or "")
    if match and _config.current().verify_md5:
        md5 = hashlib.md5(body or b"")
        if body is None:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(8 * 2**20), b""):
                    md5.update(block)
        if md5.hexdigest() != match.group(1).lower():
            raise OSError(f"{what}: downloaded bytes do not match the object's MD5 (ETag); nothing was written")


def plan_file(src: str, dst: str) -> CopyTask:
    """One file: moxing's copy(). A folder as source is an error (use copy_parallel)."""
    check(src, dst)
    if is_remote(src):
        head = S3.head(src)
        if head is None:
            if S3.isdir(src):
                raise IsADirectoryError(f"{src} is a folder: use copy_parallel to copy folders")
            raise FileNotFoundError(f"{src}: no such object")
        return CopyTask(src, dst, head["ContentLength"], head.get("ETag"))
    if os.path.isdir(src):
        raise IsADirectoryError(f"{src} is a folder: use copy_parallel to copy folders")
    return CopyTask(src, dst, os.path.getsize(src))


def plan_tree(src: str, dst: str, file_list=None) -> tuple[list[CopyTask], list[str]]:
    """Every file under folder `src` mapped under `dst`, and the empty folders to recreate.

    All names are checked before anything is copied: a bad key fails the whole plan.
    """
    check(src, dst)
    entries = backend(src).find(src)
    local_dst = not is_remote(dst)
    files = {e.name: e for e in entries if not e.dir}
    if file_list is not None:
        wanted = [safe_relative(str(f).replace(os.sep, "/"), join(src, str(f))) for f in file_list]
        missing = [w for w in wanted if w not in files]
        if missing:
            raise FileNotFoundError(f"{join(src, missing[0])}: no such file (listed in file_list)")
        files = {w: files[w] for w in wanted}
    tasks = []
    for name, entry in files.items():
        rel = safe_relative(name, entry.path) if local_dst else name
        tasks.append(CopyTask(entry.path, join(dst, rel), entry.length, entry.etag))
    dirs = []
    if file_list is None:
        parents = {n.rsplit("/", 1)[0] for n in files if "/" in n}
        parents = {"/".join(p.split("/")[:i + 1]) for p in parents for i in range(p.count("/") + 1)}
        dirs = [join(dst, safe_relative(e.name, e.path) if local_dst else e.name)
                for e in entries if e.dir and e.name not in parents]
    return tasks, dirs


class _Hooks(BaseSubscriber):
    """s3transfer callbacks for one task: hand it the size/ETag we know (saves a HEAD per file
    and pins the download to that version with If-Match) and count progress."""

    def __init__(self, task: CopyTask, progress: Progress | None):
        self.task, self.progress = task, progress

    def on_queued(self, future, **kwargs):
        future.meta.provide_transfer_size(self.task.size)
        if self.task.etag and is_remote(self.task.src) and not is_remote(self.task.dst):
            future.meta.provide_object_etag(self.task.etag)

    def on_progress(self, future, bytes_transferred, **kwargs):
        if self.progress is not None:
            self.progress.add_bytes(bytes_transferred)


def _land(task: CopyTask, fill, progress: Progress | None) -> None:
    """Write task.dst through a temporary sibling: fill(temp) writes (and checks) the bytes; the
    rename to the final name comes only after it returned, and the temp file never stays."""
    os.makedirs(os.path.dirname(os.path.abspath(task.dst)), exist_ok=True)
    temp = temp_name(os.path.abspath(task.dst))
    try:
        fill(temp)
        os.replace(temp, task.dst)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    if progress is not None:
        progress.add_bytes(task.size)
        progress.file_done()


def _copy_local(task: CopyTask, progress: Progress | None) -> None:
    def fill(temp: str) -> None:
        shutil.copyfile(task.src, temp)
        verify(temp, task.size, None, task.src)

    _land(task, fill, progress)


def _submit(manager: TransferManager, task: CopyTask, progress) -> tuple[str | None, object]:
    """Start one transfer; returns (temp file of a download or None, s3transfer future)."""
    hooks = [_Hooks(task, progress)]
    if is_remote(task.dst):
        d = ObjectURL.parse(task.dst)
        if is_remote(task.src):
            s = ObjectURL.parse(task.src)
            return None, manager.copy({"Bucket": s.bucket, "Key": s.key}, d.bucket, d.key, subscribers=hooks)
        return None, manager.upload(task.src, d.bucket, d.key, subscribers=hooks)
    s = ObjectURL.parse(task.src)
    os.makedirs(os.path.dirname(os.path.abspath(task.dst)), exist_ok=True)
    temp = temp_name(os.path.abspath(task.dst))
    return temp, manager.download(s.bucket, s.key, temp, subscribers=hooks)


def execute(tasks: list[CopyTask], threads: int = 16, desc: str = "copy", show_progress: bool = True,
            dirs: list[str] = (), is_processing: bool = False) -> None:
    """Run a plan. The first failure stops the batch and is raised as a one-line builtin error;
    transfers in flight are cancelled, and no partial file is left under a final name."""
    progress = Progress(desc, sum(t.size for t in tasks), len(tasks)) if show_progress else None
    remote = [t for t in tasks if is_remote(t.src) or is_remote(t.dst)]
    local = [t for t in tasks if not (is_remote(t.src) or is_remote(t.dst))]
    try:
        for d in dirs:
            backend(d).makedirs(d)
        if local:
            with ThreadPoolExecutor(max(1, min(threads, len(local)))) as pool:
                for fut in [pool.submit(_copy_local, t, progress) for t in local]:
                    fut.result()
        if remote:
            _execute_remote_batch(remote, threads, progress, is_processing)
    finally:
        if progress is not None:
            progress.close()


def _execute_remote_batch(tasks: list[CopyTask], threads: int, progress: Progress | None,
                          is_processing: bool) -> None:
    """With is_processing and enough small files, those go to worker processes (workers.py)
    while this process moves the big ones."""
    threshold = _config.current().multipart_threshold
    small = [t for t in tasks if t.size < threshold]
    processes = worker_count(is_processing, threads, len(small))
    if processes <= 1:
        execute_remote(tasks, threads, progress)
        return
    log.debug("%d small files over %d worker processes", len(small), processes)
    pool = Workers(partition(small, processes), max(1, threads // processes), progress)
    try:
        big = [t for t in tasks if t.size >= threshold]
        if big:
            execute_remote(big, threads, progress)
    except BaseException:
        pool.stop()
        raise
    pool.wait()


def execute_remote(tasks: list[CopyTask], threads: int, progress: Progress | None) -> None:
    """Small downloads go to _get_small on a thread pool, everything else to one TransferManager;
    both run at once. Completions are checked in order while the rest continue (MD5 hashing
    releases the GIL): a managed transfer's failure cancels everything, a small download's is
    raised once the managed transfers have ended, and cancels the small ones not yet started."""
    cfg = _config.current()
    small = [t for t in tasks if _is_small_download(t, cfg)]
    managed = [t for t in tasks if not _is_small_download(t, cfg)]
    submitted: list[tuple[CopyTask, str | None, object]] = []
    with ThreadPoolExecutor(min(max(1, threads), MAX_THREADS)) as pool:
        try:
            futures = [(t, pool.submit(_get_small, t, cfg, progress)) for t in small]
            if managed:
                _execute_managed(managed, threads, progress, cfg, submitted)
            for task, fut in futures:
                fut.result()
        finally:
            pool.shutdown(cancel_futures=True)
            for _, temp, _ in submitted:  # after the manager cancelled and joined what was in flight
                if temp and os.path.exists(temp):
                    os.remove(temp)


def _is_small_download(task: CopyTask, cfg: _config.S3Config) -> bool:
    return is_remote(task.src) and not is_remote(task.dst) and task.size < cfg.min_part_size


def _get_small(task: CopyTask, cfg: _config.S3Config, progress: Progress | None) -> None:
    """One GetObject read into memory, checked, written under a temporary name and renamed.

    For an object below one part this is what s3transfer does too, minus its per-transfer
    machinery (submission task, IO queue and thread, deferred file, rename task): measured at
    about half the client CPU per file, which is what bounds a folder of many small files on a
    busy machine. Retries are botocore's for the request; a body that breaks off mid-stream is
    fetched again up to max_attempts times, on the same errors s3transfer retries.
    """
    u = ObjectURL.parse(task.src)
    pinned = {"IfMatch": task.etag} if task.etag else {}
    with translating(task.src):
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                body = get_client(cfg).get_object(Bucket=u.bucket, Key=u.key, **pinned)["Body"].read()
                break
            except S3_RETRYABLE_DOWNLOAD_ERRORS:
                if attempt == cfg.max_attempts:
                    raise
    verify(task.dst, task.size, task.etag, task.src, body)

    def fill(temp: str) -> None:
        with open(temp, "wb") as f:
            f.write(body)

    _land(task, fill, progress)


def _execute_managed(tasks: list[CopyTask], threads: int, progress: Progress | None, cfg: _config.S3Config,
                     submitted: list) -> None:
    """Every task through one TransferManager; `submitted` collects (task, temp file, future) so
    the caller removes temp files whatever happens."""
    download = all(is_remote(t.src) and not is_remote(t.dst) for t in tasks)
    tconfig = transfer_config(cfg, max(t.size for t in tasks), threads, download)
    with TransferManager(get_client(cfg), tconfig) as manager:
        submitted.extend((t, *_submit(manager, t, progress)) for t in tasks)
        for task, temp, fut in submitted:
            with translating(task.src if is_remote(task.src) else task.dst):
                fut.result()
            if temp:
                verify(temp, task.size, task.etag, task.src)
                os.replace(temp, task.dst)
            if progress is not None:
                progress.file_done()


def upload_fileobj(fileobj, url: str, size: int, threads: int = 8) -> None:
    """Publish a seekable file object as one object (write(), File(..., "w") on close)."""
    u = ObjectURL.parse(url)
    cfg = _config.current()
    with translating(url), TransferManager(get_client(cfg), transfer_config(cfg, size, threads)) as manager:
        manager.upload(fileobj, u.bucket, u.key).result()


def download_fileobj(url: str, fileobj, size: int, threads: int = 8) -> None:
    """Fetch a whole object into a writable file object (append mode needs the old bytes)."""
    u = ObjectURL.parse(url)
    cfg = _config.current()
    with translating(url), TransferManager(get_client(cfg), transfer_config(cfg, size, threads, True)) as manager:
        manager.download(u.bucket, u.key, fileobj).result()
