"""Moving bytes through any store's primitives (obs_io.store): the generic halves of copies,
uploads and downloads, and what every upload shares, whichever store it goes to: the upload
token and the judgement of a failed upload (settle_failed_upload).

The S3 store replaces the bulk paths with s3transfer's (transfer.py); reading in order
(download_in_order), the upload token and its checks are the same for every store.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from . import config as _config
from .atomic import Landing
from .registry import store_for
from .urls import is_remote

log = logging.getLogger("obs_io")

PART = 8 << 20          # bytes per read_range or write of the generic paths
MAX_THREADS = 64

# User metadata every upload carries (x-amz-meta-obs-io-upload): a token of that one upload, by
# which a failed upload tells its own object from any other (settle_failed_upload).
UPLOAD_TOKEN = "obs-io-upload"


def upload_token() -> tuple[str, dict]:
    """(a fresh token, the ExtraArgs that make an S3 upload carry it) for one upload."""
    token = os.urandom(12).hex()
    return token, {"Metadata": {UPLOAD_TOKEN: token}}


def upload_size(url: str, token: str, cfg: _config.S3Config | None = None, attempts: int | None = None
                ) -> int | None:
    """The size in bytes of the object at `url` when the upload that carried `token`
    (upload_token) made it, else None (no object, or another one). One head(), with `attempts`
    tries (default: the configuration's); errors: obs_io's."""
    cfg = cfg or _config.current()
    info = store_for(url).head(url, replace(cfg, max_attempts=attempts or cfg.max_attempts))
    return info.size if info is not None and info.metadata.get(UPLOAD_TOKEN) == token else None


def settle_failed_upload(url: str, token: str, size: int | None, error: BaseException,
                         cfg: _config.S3Config | None = None) -> None:
    """After an upload to `url` that raised `error`: return (success after all) when the
    object there is the one this upload sent, else raise `error`.

    A store may complete an upload and lose its answer (CompleteMultipartUpload or a PUT that
    timed out, retries answered 500 or NoSuchUpload): the object is then there, complete, and a
    failure reported now would be a lie the other way. One HEAD tells, in one try (a store that
    never answers costs one more connect + read timeout, not another series of tries): the
    object carries this upload's token (upload_token) and `size` bytes (None: any). An object
    with this token and another size cannot come from a complete upload: it is removed. No
    object, another object (an older version, someone else's: left alone) or a HEAD that fails
    too: `error` stands."""
    try:
        got = upload_size(url, token, cfg, attempts=1)
    except Exception:   # noqa: BLE001 - the store still failing: the upload's error tells
        raise error from None
    if got is None:
        raise error
    if size is not None and got != size:
        with contextlib.suppress(Exception):
            store_for(url).delete(url)
        raise error
    log.warning("%s: the store did not confirm the upload (%s), but the object is there as sent "
                "(%d bytes): kept", url, str(error).splitlines()[0] if str(error) else type(error).__name__, got)


@contextlib.contextmanager
def settling(url: str, token: str, size: int | None, cfg: _config.S3Config | None = None) -> Iterator[None]:
    """A block that uploads `url` with `token`: a failure is settle_failed_upload's to judge.
    A stop request (KeyboardInterrupt, SystemExit) is not judged: it stops."""
    try:
        yield
    except Exception as error:
        settle_failed_upload(url, token, size, error, cfg)


def download_in_order(url: str, write: Callable[[bytes], object], size: int, etag: str | None, *,
                      part: int = 8 << 20, threads: int = 8, chunks: int = 12) -> None:
    """Fetch one object version (`etag`, when known: every read is pinned to it) as
    consecutive write(data) calls from byte 0 to `size`, while `threads` read_range calls of
    `part` bytes are in flight. For a reader that consumes a file while it is still being
    downloaded: the bytes before the last write are final. Memory: at most `chunks` parts
    fetched or being fetched. Retries are the store's (S3: botocore's, a body that breaks off
    fetched again); a write that raises ends the download and the exception propagates.
    Errors: obs_io's.

    Not s3transfer: its in-order (non-seekable) download deadlocks once an object has more
    parts than its in-memory window while response checksums are 'when_required' (as obs_io's
    client has them for OBS): the task scheduling the later parts holds the window's first slot
    (s3transfer 0.19, GetObjectFirstChunkOnDoneCallback)."""
    store, cfg = store_for(url), _config.current()

    def get(offset: int) -> bytes:
        n = min(part, size - offset)
        body = store.read_range(url, offset, n, etag, cfg)
        if len(body) != n:
            raise OSError(errno.EIO, f"{len(body)} bytes at offset {offset}, expected {n}", url)
        return body

    offsets = iter(range(0, size, part))
    with ThreadPoolExecutor(max(1, min(threads, MAX_THREADS)), thread_name_prefix="obs-io-in-order") as pool:
        queued = deque(pool.submit(get, o) for o in itertools.islice(offsets, max(1, chunks)))
        try:
            while queued:
                data = queued.popleft().result()
                following = next(offsets, None)
                if following is not None:
                    queued.append(pool.submit(get, following))
                write(data)
        finally:
            for future in queued:
                future.cancel()


def read_into(store, url: str, write: Callable[[bytes], object], size: int, etag: str | None,
              progress=None) -> None:
    """write() the `size` bytes of the object `url` (version `etag`) in order, PART at a time."""
    for offset in range(0, size, PART):
        n = min(PART, size - offset)
        data = store.read_range(url, offset, n, etag)
        if len(data) != n:
            raise OSError(errno.EIO, f"{len(data)} bytes at offset {offset}, expected {n}", url)
        write(data)
        if progress is not None:
            progress.add_bytes(n)


def write_fileobj(store, fileobj, url: str, size: int, cfg=None, progress=None) -> str:
    """Publish `size` bytes of a readable file object as the object `url` through a writer of
    `store`, carrying a fresh upload token (returned); aborted on any failure."""
    token, extra = upload_token()
    with store.open_writer(url, size, extra["Metadata"], cfg) as writer:   # aborted on failure
        sent = 0
        for block in iter(lambda: fileobj.read(PART), b""):
            writer.write(block)
            sent += len(block)
            if progress is not None:
                progress.add_bytes(len(block))
        if sent != size:
            raise OSError(errno.EIO, f"read {sent} bytes to upload, expected {size}", url)
        writer.commit()
    return token


def _copy_one(task, progress) -> None:
    """One CopyTask through the primitives: server-side inside a store that can, else the
    source's bytes (read_range pinned to the task's ETag, or the local file) into a writer or
    a local file published by rename once complete."""
    src = store_for(task.src) if is_remote(task.src) else None
    dst = store_for(task.dst) if is_remote(task.dst) else None
    if dst is None:
        with Landing(task.dst, durable=False) as temp, open(temp, "wb") as f:
            read_into(src, task.src, f.write, task.size, task.etag, progress)
    elif src is dst and src.server_side_copy:
        src.copy(task.src, task.dst)
        if progress is not None:
            progress.add_bytes(task.size)
    elif src is None:
        with open(task.src, "rb") as f:
            write_fileobj(dst, f, task.dst, task.size, progress=progress)
    else:
        token, extra = upload_token()
        with dst.open_writer(task.dst, task.size, extra["Metadata"]) as writer:   # aborted on failure
            read_into(src, task.src, writer.write, task.size, task.etag, progress)
            writer.commit()
    if progress is not None:
        progress.file_done()


def copy_tasks(tasks: list, threads: int, progress) -> None:
    """CopyTasks (obs_io.transfer) through the stores' primitives, `threads` at a time; the
    first failure cancels the tasks not started and is raised once those running ended."""
    with ThreadPoolExecutor(max(1, min(threads, len(tasks), MAX_THREADS))) as pool:
        futures = [pool.submit(_copy_one, t, progress) for t in tasks]
        try:
            for future in futures:
                future.result()
        finally:
            pool.shutdown(cancel_futures=True)


class Tail:
    """A non-seekable reader of a local file that another thread is still appending to: read(n)
    waits until n more bytes are there, or until finish() says how long the file ends up
    (then the rest, then b""). cancel() makes the waiting read raise, which ends the upload
    reading it (s3transfer aborts its multipart upload). Every wait is bounded by `stall`
    seconds without growth."""

    POLL = 0.01

    def __init__(self, path: str, stall: float):
        self._fd = os.open(path, os.O_RDONLY)
        self._pos = 0
        self._end: int | None = None
        self._cancelled: BaseException | None = None
        self._stall = stall
        self.path = path

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        last, since = -1, time.monotonic()
        while True:
            if self._cancelled is not None:
                raise self._cancelled
            end = self._end
            have = os.fstat(self._fd).st_size
            if end is not None and have < end:
                raise OSError(errno.EIO, f"ends at {have} bytes, not {end}", self.path)
            limit = end if end is not None else have
            if n < 0 and end is not None or n >= 0 and (limit - self._pos >= n or end is not None):
                want = (limit - self._pos) if n < 0 else min(n, limit - self._pos)
                data = os.pread(self._fd, want, self._pos)
                self._pos += len(data)
                return data
            if have != last:
                last, since = have, time.monotonic()
            elif time.monotonic() - since > self._stall:
                raise OSError(errno.ETIMEDOUT, f"no new bytes for {self._stall:.0f}s", self.path)
            time.sleep(self.POLL)

    def finish(self, size: int) -> None:
        self._end = size

    def cancel(self, exc: BaseException) -> None:
        self._cancelled = exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Pipe:
    """A non-seekable reader fed by write() from another thread (an ObjectWriter's bytes into
    s3transfer): read(n) waits until n bytes are there or finish() was called; write() waits
    while `limit` bytes are unread. cancel() makes the waiting side raise; close() (the reader
    is gone) makes later writes raise BrokenPipeError. Every wait is bounded by `stall` s."""

    def __init__(self, limit: int, stall: float = 900.0):
        self._buf = bytearray()
        self._limit, self._stall = limit, stall
        self._ended = self._closed = False
        self._cancelled: BaseException | None = None
        self._cond = threading.Condition()

    def seekable(self) -> bool:
        return False

    def _wait(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._stall
        while not ready():
            if self._cancelled is not None:
                raise self._cancelled
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, f"no progress for {self._stall:.0f}s")
            self._cond.wait(min(left, 1.0))

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            self._wait(lambda: self._ended or self._cancelled is not None or 0 <= n <= len(self._buf))
            if self._cancelled is not None:
                raise self._cancelled
            n = len(self._buf) if n < 0 else min(n, len(self._buf))
            data = bytes(self._buf[:n])
            del self._buf[:n]
            self._cond.notify_all()
            return data

    def write(self, data: bytes) -> None:
        with self._cond:
            self._wait(lambda: self._closed or len(self._buf) < self._limit)
            if self._closed:
                raise BrokenPipeError("the upload reading this stream has ended")
            self._buf += data
            self._cond.notify_all()

    def finish(self, size: int) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def cancel(self, exc: BaseException) -> None:
        with self._cond:
            self._cancelled = exc
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class UploadCancelled(Exception):
    """Raised in a growing upload's read when its file was abandoned."""


class BackgroundUpload:
    """An upload running on its own thread from a stream (Tail, Pipe) that another thread
    feeds: finish(size) waits for its end, abort() ends it leaving nothing under the key,
    cancel() is abort() without waiting (safe from a signal handler). A subclass sets url,
    token (the object's upload token), _tail (the stream), _cfg, and runs _run on _thread,
    keeping the first failure in _error."""

    url: str
    token: str
    _error: BaseException | None = None

    def finish(self, size: int) -> None:
        """The stream is complete at `size` bytes: wait for the upload's end; raise its error
        (unless the object is there as sent all the same: settle_failed_upload)."""
        self._tail.finish(size)
        self._thread.join()
        if isinstance(self._error, Exception):
            settle_failed_upload(self.url, self.token, size, self._error, self._cfg)
        elif self._error is not None:
            raise self._error

    def abort(self) -> None:
        """The file was abandoned: end the upload, leaving nothing under the key."""
        self.cancel()
        self._thread.join()

    def cancel(self) -> None:
        """abort() without waiting: the upload ends at its next read, and finish() raises."""
        self._tail.cancel(UploadCancelled(self.url))


class StreamUpload(BackgroundUpload):
    """GrowingUpload's contract over any store's writer: the local file `path`, still being
    appended to, read as it grows (Tail) into store.open_writer(url), committed once finish()
    told the final size; abort() leaves nothing under the key. Errors: from finish()."""

    def __init__(self, store, path: str, url: str, size_hint: int, cfg=None, stall: float = 900.0):
        self.url, self._cfg = url, cfg
        self._tail = Tail(path, stall)
        self.token, extra = upload_token()
        self._writer = store.open_writer(url, size_hint, extra["Metadata"], cfg)
        self._thread = threading.Thread(target=self._run, daemon=True, name="obs-io-stream-upload")
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._writer:   # aborted on failure
                for block in iter(lambda: self._tail.read(PART), b""):
                    self._writer.write(block)
                self._writer.commit()
        except BaseException as exc:   # a thread: any death is kept for finish() to raise to its caller
            self._error = exc
        finally:
            self._tail.close()
