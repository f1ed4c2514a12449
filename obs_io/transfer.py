"""Moving the bytes of a copy plan in this process: one CopyTask per file.

Transfers go through s3transfer's TransferManager (multipart, ranged downloads, retries, abort
of a failed multipart upload), except downloads below one part (_get_small); nothing here
speaks HTTP. What is added on top: downloads land under a temporary name (atomic.Landing) and
are published by rename only after verify() accepted them. Planning and the split over worker
processes are batch.py's; the worker processes run execute_remote() from here.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import hashlib
import logging
import os
import posixpath
import re
import shutil
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from . import config as _config
from .atomic import Landing, write_atomic
from .client import MAX_THREADS, get_client, read_object, transfer_config
from .errors import translating
from .progress import Progress
from .urls import ObjectURL, is_remote

_PLAIN_MD5 = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
log = logging.getLogger("obs_io")


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """A full disk (or quota) while writing the local file `path` is one line naming the file,
    not errno's text naming a temporary name; the temporary file is removed by its owner
    (atomic.Landing, or s3transfer for its own), so nothing partial is left."""
    try:
        yield
    except OSError as err:
        if err.errno in _FULL:
            raise OSError(err.errno, f"{_FULL[err.errno]} writing {path}") from None
        raise


@dataclass(frozen=True)
class CopyTask:
    """One file to copy. size/etag come from the listing, so no HEAD per file is needed."""

    src: str
    dst: str
    size: int
    etag: str | None = None


class _CRC32:
    """zlib's CRC32 behind hashlib's update()/digest(), as S3 encodes it (4 bytes, big-endian)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


# Whole-object checksums S3 may return with GetObject/HeadObject (botocore's field names), the
# cheapest to compute first. CRC32C and CRC64NVME need awscrt, which obs_io does not require.
_CHECKSUMS: dict[str, Callable[[], object]] = {
    "ChecksumCRC32": _CRC32, "ChecksumSHA256": hashlib.sha256, "ChecksumSHA1": hashlib.sha1,
    "ChecksumMD5": hashlib.md5, "ChecksumSHA512": hashlib.sha512}


def _digest(new: Callable[[], object], data: bytes | str) -> bytes:
    """The digest of bytes in memory, or of the file at path `data`, read in 8 MiB blocks."""
    h = new()
    if isinstance(data, str):
        with open(data, "rb") as f:
            for block in iter(lambda: f.read(8 * 2**20), b""):
                h.update(block)
    else:
        h.update(data)
    return h.digest()


def etag_is_md5(response: dict) -> bool:
    """Whether the object in a GetObject/HeadObject response has, if single-part, its MD5 as
    ETag. Not with server-side encryption by KMS (S3 `aws:kms`, `aws:kms:dsse`; OBS `kms`) or
    by a customer key (SSE-C): the ETag is then some other value that merely looks like one.
    Only these response headers tell; a listing's ETag does not."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})  # names in lower case
    sse = response.get("ServerSideEncryption") or headers.get("x-obs-server-side-encryption") or ""
    customer = (response.get("SSECustomerAlgorithm")
                or headers.get("x-obs-server-side-encryption-customer-algorithm"))
    return "kms" not in sse.lower() and not customer


def _checksum(response: dict) -> tuple[str, Callable[[], object], bytes] | None:
    """(name, hash constructor, expected digest) of a whole-object checksum in the response, or
    None. A multipart upload's composite checksum (`...-N`) is not one of the bytes."""
    if response.get("ChecksumType") == "COMPOSITE":
        return None
    for field, new in _CHECKSUMS.items():
        value = response.get(field)
        if value and "-" not in value:
            return field[len("Checksum"):], new, base64.b64decode(value)
    return None


def verify(task: CopyTask, data: bytes | str, response: dict | None = None) -> None:
    """Raise unless a download of `task` (its bytes, or the path of the file holding them) has
    the object's size and, as far as the object can tell, its content.

    Content: the MD5 that a plain (single-part) ETag is, unless the object is encrypted with KMS
    or a customer key (etag_is_md5); then a whole-object checksum the server sent (CRC32,
    SHA256, SHA1, MD5, SHA512), else the size alone. `response`: the object's GetObject response
    when at hand. Without it (s3transfer's ranged GETs keep theirs) an MD5 mismatch is checked
    against the object's headers by one HEAD, pinned to the ETag, before it counts as corruption:
    that HEAD is paid only by encrypted objects and damaged downloads.
    """
    got = len(data) if isinstance(data, bytes) else os.path.getsize(data)
    if got != task.size:
        raise OSError(f"{task.src}: downloaded {got} bytes, expected {task.size}; nothing was written")
    match = _PLAIN_MD5.match(task.etag or "") if _config.current().verify_md5 else None
    if match and (response is None or etag_is_md5(response)):
        if _digest(hashlib.md5, data) == bytes.fromhex(match.group(1)):
            return
        if response is None:
            response = _head(task)
        if etag_is_md5(response):
            raise OSError(f"{task.src}: downloaded bytes do not match the object's MD5 (ETag); "
                          f"nothing was written")
    checksum = _checksum(response) if response is not None else None
    if checksum is not None:
        name, new, expected = checksum
        if _digest(new, data) != expected:
            raise OSError(f"{task.src}: downloaded bytes do not match the object's {name} checksum; "
                          f"nothing was written")


def _head(task: CopyTask) -> dict:
    """HeadObject of the version that was downloaded (If-Match its ETag)."""
    u = ObjectURL.parse(task.src)
    with translating(task.src):
        return get_client(_config.current()).head_object(Bucket=u.bucket, Key=u.key, IfMatch=task.etag)


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


def _done(task: CopyTask, progress: Progress | None) -> None:
    """Count a file published without s3transfer (which reports bytes as they come)."""
    if progress is not None:
        progress.add_bytes(task.size)
        progress.file_done()


def copy_local(task: CopyTask, progress: Progress | None) -> None:
    """A local file to a local file, published by rename once its size is checked. Not
    durable (atomic.py): a bulk copy, like the downloads."""
    with writing(task.dst), Landing(task.dst, durable=False) as temp:
        shutil.copyfile(task.src, temp)
        verify(task, temp)
    _done(task, progress)


def _submit(manager: TransferManager, task: CopyTask, progress) -> tuple[Landing | None, object]:
    """Start one transfer; returns (where a download lands, or None; s3transfer future)."""
    hooks = [_Hooks(task, progress)]
    if is_remote(task.dst):
        d = ObjectURL.parse(task.dst)
        if is_remote(task.src):
            s = ObjectURL.parse(task.src)
            return None, manager.copy({"Bucket": s.bucket, "Key": s.key}, d.bucket, d.key, subscribers=hooks)
        return None, manager.upload(task.src, d.bucket, d.key, subscribers=hooks)
    s = ObjectURL.parse(task.src)
    landing = Landing(task.dst, durable=False)  # bulk data: see atomic.py's durability policy
    return landing, manager.download(s.bucket, s.key, landing.temp, subscribers=hooks)


def execute_remote(tasks: list[CopyTask], threads: int, progress: Progress | None) -> None:
    """Small downloads go to _get_small on a thread pool, everything else to one TransferManager;
    both run at once. Completions are checked in order while the rest continue (MD5 hashing
    releases the GIL): a managed transfer's failure cancels everything, a small download's is
    raised once the managed transfers have ended, and cancels the small ones not yet started."""
    cfg = _config.current()
    small = [t for t in tasks if _is_small_download(t, cfg)]
    managed = [t for t in tasks if not _is_small_download(t, cfg)]
    submitted: list[tuple[CopyTask, Landing | None, object]] = []
    with ThreadPoolExecutor(min(max(1, threads), MAX_THREADS)) as pool:
        try:
            futures = [(t, pool.submit(_get_small, t, cfg, progress)) for t in small]
            if managed:
                _execute_managed(managed, threads, progress, cfg, submitted)
            for task, fut in futures:
                fut.result()
        finally:
            pool.shutdown(cancel_futures=True)
            for _, landing, _ in submitted:  # after the manager cancelled and joined what was in flight
                if landing is not None:
                    landing.discard()


def _is_small_download(task: CopyTask, cfg: _config.S3Config) -> bool:
    return is_remote(task.src) and not is_remote(task.dst) and task.size < cfg.min_part_size


def _get_small(task: CopyTask, cfg: _config.S3Config, progress: Progress | None) -> None:
    """One GetObject read into memory, checked, written under a temporary name and renamed.

    For an object below one part this is what s3transfer does too, minus its per-transfer
    machinery (submission task, IO queue and thread, deferred file, rename task): measured at
    about half the client CPU per file, which is what bounds a folder of many small files on a
    busy machine. Retries: client.read_object. Checked with the GET's own headers (verify), so
    an encrypted object's ETag is never taken for its MD5. Not durable (atomic.py): bulk data.
    """
    u = ObjectURL.parse(task.src)
    pinned = {"IfMatch": task.etag} if task.etag else {}
    with translating(task.src):
        body, response = read_object(cfg, u.bucket, u.key, **pinned)
    verify(task, body, response)
    with writing(task.dst):
        write_atomic(task.dst, body, durable=False)
    _done(task, progress)


def _execute_managed(tasks: list[CopyTask], threads: int, progress: Progress | None, cfg: _config.S3Config,
                     submitted: list) -> None:
    """Every task through one TransferManager; `submitted` collects (task, landing, future) so
    the caller removes temp files whatever happens."""
    download = all(is_remote(t.src) and not is_remote(t.dst) for t in tasks)
    tconfig = transfer_config(cfg, max(t.size for t in tasks), threads, download)
    with TransferManager(get_client(cfg), tconfig) as manager:
        submitted.extend((t, *_submit(manager, t, progress)) for t in tasks)
        for task, landing, fut in submitted:
            with writing(task.dst), translating(task.src if is_remote(task.src) else task.dst):
                fut.result()
            if landing is not None:
                verify(task, landing.temp)
                landing.commit()
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


def abort_stale_uploads(tasks: list[CopyTask], started: datetime.datetime) -> int:
    """Abort the multipart uploads that an interrupted run of this copy left: those of the keys
    these tasks write in multipart (parts cost storage until aborted, and are invisible in
    listings), initiated before `started` (this run's start, before any of its own uploads).
    One ListMultipartUploads series per bucket, under the keys' common prefix, and only when
    some task is a multipart one. Returns how many were aborted."""
    cfg = _config.current()
    wanted: dict[str, set[str]] = {}
    for t in tasks:
        if is_remote(t.dst) and t.size >= cfg.multipart_threshold:
            u = ObjectURL.parse(t.dst)
            wanted.setdefault(u.bucket, set()).add(u.key)
    aborted = 0
    for bucket, keys in wanted.items():
        prefix = posixpath.commonprefix(sorted(keys))
        client = get_client(cfg)
        with translating(f"s3://{bucket}/{prefix}"):
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Key"] in keys and upload["Initiated"] < started:
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
    if aborted:
        log.info("aborted %d multipart upload(s) left by an interrupted copy", aborted)
    return aborted
