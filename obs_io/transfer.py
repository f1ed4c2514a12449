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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from . import config as _config
from .atomic import Landing, write_atomic
from .crc import crc32
from .client import MAX_THREADS, get_client, read_object, transfer_config
from .errors import translating
from .progress import Progress
from .store import ObjectWriter
from .streams import UPLOAD_TOKEN, BackgroundUpload, Pipe, Tail, settling, upload_token
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
    """CRC32 (obs_io.crc) behind hashlib's update()/digest(), as S3 encodes it (4 bytes, big-endian)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = crc32(data, self.value)

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


def _submit(manager: TransferManager, task: CopyTask, progress) -> tuple[Landing | str | None, object]:
    """Start one transfer; returns (where a download lands, or an upload's token, or None for a
    copy between objects; s3transfer future)."""
    hooks = [_Hooks(task, progress)]
    if is_remote(task.dst):
        d = ObjectURL.parse(task.dst)
        if is_remote(task.src):
            s = ObjectURL.parse(task.src)
            return None, manager.copy({"Bucket": s.bucket, "Key": s.key}, d.bucket, d.key, subscribers=hooks)
        token, extra = upload_token()
        return token, manager.upload(task.src, d.bucket, d.key, extra_args=extra, subscribers=hooks)
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
                if isinstance(landing, Landing):
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
            uploaded = settling(task.dst, landing, task.size, cfg) if isinstance(landing, str) \
                else contextlib.nullcontext()
            with uploaded, writing(task.dst), translating(task.src if is_remote(task.src) else task.dst):
                fut.result()
            if isinstance(landing, Landing):
                verify(task, landing.temp)
                landing.commit()
            if progress is not None:
                progress.file_done()


def upload_fileobj(fileobj, url: str, size: int, threads: int = 8, cfg: _config.S3Config | None = None) -> None:
    """Publish a seekable file object as one object (write(), File(..., "w") on close); cfg:
    obs_io's configuration (default: the current one)."""
    u = ObjectURL.parse(url)
    cfg = cfg or _config.current()
    token, extra = upload_token()
    with settling(url, token, size, cfg), translating(url), \
            TransferManager(get_client(cfg), transfer_config(cfg, size, threads)) as manager:
        manager.upload(fileobj, u.bucket, u.key, extra_args=extra).result()


def download_fileobj(url: str, fileobj, size: int, threads: int = 8) -> None:
    """Fetch a whole object into a writable file object (append mode needs the old bytes)."""
    u = ObjectURL.parse(url)
    cfg = _config.current()
    with translating(url), TransferManager(get_client(cfg), transfer_config(cfg, size, threads, True)) as manager:
        manager.download(u.bucket, u.key, fileobj).result()


class GrowingUpload(BackgroundUpload):
    """Upload a local file to `url` while it is still being written, in order, by someone else
    in this process (e.g. a checkpoint writer's temporary file): s3transfer reads it as a
    non-seekable stream, one part at a time as the bytes arrive (its multipart upload, retries
    and abort on failure), so most of the upload is done when the writer is. Nothing is under
    the final key before finish() told the final size and the last part went: a multipart
    upload is invisible until completed, a single PUT is sent whole. abort() cancels it (the
    multipart upload is aborted). `size_hint`: about how big the file gets (part size).
    Memory: `chunks` parts. Errors: obs_io's, from finish()."""

    def __init__(self, path: str | None, url: str, size_hint: int, cfg: _config.S3Config | None = None,
                 chunks: int = 4, stall: float = 900.0, stream=None, metadata: dict | None = None):
        """stream: what to upload instead of the file `path` (a Pipe: S3Writer); metadata:
        the object's user metadata, with the upload token added."""
        from threading import Thread
        self.url = url
        self._tail = stream if stream is not None else Tail(path, stall)
        self._cfg = cfg or _config.current()
        self._error: BaseException | None = None
        tconfig = transfer_config(self._cfg, size_hint, MAX_THREADS)
        tconfig.max_in_memory_upload_chunks = max(1, chunks)
        # s3transfer reads a stream of unknown size up to the multipart threshold before its
        # first request (to choose one PUT or parts): with the threshold at one part the first
        # part leaves as soon as it is written, not 64 MiB later (measured through a 12 MB/s
        # link: a file written at 11 MB/s went up at 6.3 MB/s, at link speed with this); a
        # lower S3_MULTIPART_THRESHOLD still holds
        tconfig.multipart_threshold = min(tconfig.multipart_threshold, tconfig.multipart_chunksize)
        self.token, self._extra = upload_token()
        self._extra["Metadata"] = {**self._extra["Metadata"], **(metadata or {})}
        self.token = self._extra["Metadata"][UPLOAD_TOKEN]
        self._thread = Thread(target=self._run, args=(tconfig,), daemon=True, name="obs-io-growing-upload")
        self._thread.start()

    def _run(self, tconfig) -> None:
        u = ObjectURL.parse(self.url)
        try:
            with translating(self.url), TransferManager(get_client(self._cfg), tconfig) as manager:
                manager.upload(self._tail, u.bucket, u.key, extra_args=self._extra).result()
        except BaseException as exc:   # a thread: any death is kept for finish() to raise to its caller
            self._error = exc
        finally:
            self._tail.close()


class S3Writer(ObjectWriter):
    """The S3 store's streaming write (ObjectStore.open_writer): write() feeds a Pipe that
    s3transfer uploads from (GrowingUpload: parts as the bytes come, its retries, the multipart
    upload aborted on failure); commit() ends the stream and waits for the object."""

    def __init__(self, url: str, size_hint: int, metadata, cfg: _config.S3Config | None = None):
        cfg = cfg or _config.current()
        self._pipe = Pipe(cfg.part_size(max(size_hint, 1)))
        self._upload = GrowingUpload(None, url, size_hint, cfg, stream=self._pipe, metadata=metadata)
        self._size, self._done = 0, False

    def write(self, data: bytes) -> None:
        try:
            self._pipe.write(data)
        except BrokenPipeError:      # the upload ended early: its own error tells why
            self._upload.finish(self._size + len(data))
            raise
        self._size += len(data)

    def commit(self) -> None:
        self._done = True
        self._upload.finish(self._size)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._upload.abort()


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
    aborted = sum(_abort(cfg, bucket, posixpath.commonprefix(sorted(keys)), started, keys)
                  for bucket, keys in wanted.items())
    if aborted:
        log.info("aborted %d multipart upload(s) left by an interrupted copy", aborted)
    return aborted


def abort_uploads(folder: str, before: datetime.datetime | None = None, names: Iterable[str] | None = None) -> int:
    """Abort the incomplete multipart uploads below the folder `folder` (an obs:// or s3://
    URL) initiated before `before` (None: whenever), of the keys `names` (relative to the
    folder) only when given: what killed writers left there, whoever they were. Without
    `names`, for a folder that one writer owns, once nobody else uploads into it (e.g. a job's
    output once all its blocks are in). One ListMultipartUploads series. Returns how many were
    aborted."""
    u = ObjectURL.parse(folder.rstrip("/") + "/")
    keys = None if names is None else {u.key + n for n in names}
    aborted = _abort(_config.current(), u.bucket, u.key, before, keys)
    if aborted:
        log.info("aborted %d incomplete multipart upload(s) under %s left by killed writers", aborted, folder)
    return aborted


def _abort(cfg: _config.S3Config, bucket: str, prefix: str, before: datetime.datetime | None,
           keys: set[str] | None) -> int:
    """Abort the multipart uploads under `prefix` in `bucket` initiated before `before` (None:
    all), of `keys` only when given; one ListMultipartUploads series."""
    client = get_client(cfg)
    aborted = 0
    with translating(f"s3://{bucket}/{prefix}"):
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                if (keys is None or upload["Key"] in keys) and (before is None or upload["Initiated"] < before):
                    try:
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    except ClientError as err:   # aborted meanwhile (by another rerun, or completed)
                        if err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                            raise
                        continue
                    aborted += 1
    return aborted
