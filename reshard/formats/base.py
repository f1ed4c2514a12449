"""Format-independent halves of readers and writers: region reads over an index of byte
extents, and the temp-file-then-rename discipline with the write-order bookkeeping."""
from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from obs_io.atomic import temp_name
from obs_io.cleanup import on_failure
from obs_io.crc import crc32
from reshard.formats.meta import FormatError, TensorMeta, storage_view
from reshard.formats.regions import (FileBytes, Extent, LocalBytes, Region, normalize_region,
                                     read_region)
from reshard.config import DEFAULT, ReshardConfig
from reshard.sources import is_url



@dataclass(frozen=True)
class FileIndex:
    """What reading a checkpoint's headers found, enough to open it again without reading them:
    a worker converting a rank gets it from the parent that planned, so a remote file's headers
    cost their GETs once, not once per rank. version: the object's ETag, which every later
    GET is pinned to (None for a local file)."""
    size: int
    version: str | None
    metas: dict[str, TensorMeta]
    extents: dict[str, Extent] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict)
    crc_trailer: int | None = None


def open_source(location: str, s3_config=None, index: FileIndex | None = None,
                growing=None, config: ReshardConfig = DEFAULT) -> FileBytes:
    """The FileBytes of a local path, or of an object-store URL (obs://, s3://, any store of
    obs_io.registry: read in place through the store's read_range; the store's client is
    imported only then; with an index, the object version it describes, without a head()
    request); growing: a formats.growing.Growing, for a local path still being
    downloaded in order (reads wait for their bytes; index required). config: the run's
    ReshardConfig (how an object is read in place: its remote_* fields)."""
    if growing is not None:
        from reshard.formats.growing import GrowingBytes
        assert index is not None, "a file still downloading is opened with the plan's index"
        return GrowingBytes(location, growing, index.size, config)
    if is_url(location):
        from reshard.formats.remote import ObjectBytes
        known = (index.size, index.version) if index is not None else None
        return ObjectBytes(location, s3_config, known=known, config=config)
    return LocalBytes(location, config)


class CheckpointReader:
    """An open checkpoint: `metas` (file order) plus ranged reads of any value.

    Subclasses only build the index (`metas`, `_extents`); reading is shared, through a
    FileBytes (regions.py): a local file, or an object read in place by ranged GETs when the
    location is an obs:// or s3:// URL (s3_config: obs_io's configuration to use, e.g. a
    worker's parent's; None: the current one; config: the run's ReshardConfig). Not
    thread-safe (one scratch buffer per reader): open one reader per thread.
    """
    crc_trailer: int | None = None   # .ckpt: MindSpore's CRC32 of every record byte, if saved

    def __init__(self, location: str | os.PathLike, *, s3_config=None,
                 index: FileIndex | None = None, growing=None, config: ReshardConfig = DEFAULT):
        self.path = os.fspath(location)      # a local path or an obs:// / s3:// URL
        self._src = open_source(self.path, s3_config, index, growing, config)
        self.size = self._src.size
        self.metas: dict[str, TensorMeta] = {}
        self.metadata: dict[str, str] = {}   # file-level key/values (safetensors __metadata__)
        self._extents: dict[str, Extent] = {}
        if index is not None:
            if index.size != self.size:
                self.close()
                raise FormatError(f"{self.path}: {self.size} bytes, not the {index.size} its "
                                  "headers were read from (changed since)")
            self.metas, self._extents = dict(index.metas), dict(index.extents)
            self.metadata, self.crc_trailer = dict(index.metadata), index.crc_trailer
            return
        with on_failure(self.close):
            self._index()

    def index(self) -> FileIndex:
        """What this reader's headers say, to open the same file again without reading them."""
        return FileIndex(self.size, getattr(self._src, "etag", None), dict(self.metas),
                         dict(self._extents), dict(self.metadata), self.crc_trailer)

    def _index(self) -> None:
        raise NotImplementedError

    def _lookup(self, name: str) -> tuple[TensorMeta, Extent]:
        try:
            return self.metas[name], self._extents[name]
        except KeyError:
            raise FormatError(f"{self.path}: no parameter {name!r}") from None

    def read(self, name: str, region: Region | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """The region (per-dimension (start, stop); None = all) in the storage dtype. With `out`
        (region-shaped, any strides, same item size) the bytes land there and it is returned
        viewed in the storage dtype."""
        meta, extent = self._lookup(name)
        if not meta.sliceable:
            raise FormatError(f"{self.path}: parameter {name!r} is {meta.dtype}; use read_raw")
        region = normalize_region(meta, region)
        shape = tuple(b - a for a, b in region)
        if out is None:
            out = np.empty(shape, dtype=meta.storage)
        else:
            if tuple(out.shape) != shape:
                raise ValueError(f"parameter {name!r}: out has shape {tuple(out.shape)}, "
                                 f"region needs {shape}")
            out = storage_view(out, meta)
        read_region(self._src, extent, meta, region, out)
        return out

    def read_raw(self, name: str) -> bytes:
        """The value's content bytes as stored (for 'str' and Int4 values, or any value)."""
        _, extent = self._lookup(name)
        buf = bytearray(extent.nbytes)
        self._src.pread_into(extent, 0, memoryview(buf), name)
        return bytes(buf)

    def close(self) -> None:
        self._src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r}, {len(self.metas)} values)"


def _writeback_starter():
    """Linux's sync_file_range(2) (which the os module lacks), through ctypes: it starts
    writing a range of a file to disk and returns without waiting. None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_start_writeback = _writeback_starter()
_SYNC_FILE_RANGE_WRITE = 2


class _Checksummed:
    """The temporary file, counting and CRC32-summing every byte written: the set's integrity
    manifest records each file's size and checksum as it was written, not by reading it again.

    The summing and the writing each run on a thread of their own, taking the blocks in order,
    so that the caller (the engine assembling its next chunk), the CRC and the write each have
    a core: the CRC32 (obs_io.crc), the write and the engine's reads all release the GIL. write() queues a
    block and returns: the block must stay unchanged until wait() says it is consumed. A small
    block with nothing queued is done inline (a hand-off costs more than it does).

    The writing thread also starts the disk's writeback every config.writeback_bytes (Linux:
    sync_file_range), so the fsync at commit finds little left to write. Without it the page
    cache holds the whole file (far below the kernel's dirty limits) and the disk only starts
    at the fsync: a single big file would wait for its fsync as long as for its conversion.

    A write error is kept, naming the file, and raised to the caller by the next write, check
    or flush; the blocks queued after it are dropped. Threads end at close() (drop=True: an
    abort, queued blocks dropped unwritten).
    """

    def __init__(self, f, path: str, config: ReshardConfig = DEFAULT):
        self._f = f
        self._path = path        # the final name, for the user's one line on a write error
        self._inline_bytes, self._writeback_bytes = config.write_inline_bytes, config.writeback_bytes
        self.size = 0            # bytes handed to write()
        self.crc32 = 0
        self._cond = threading.Condition()
        self._queues: tuple[deque, deque] = (deque(), deque())   # to sum, to write
        self._done = [0, 0]      # bytes each thread has consumed (summed / written or dropped)
        self._error: OSError | None = None
        self._closing = False
        self._dropping = False
        self._threads: list[threading.Thread] = []
        self._written = 0        # the writing thread's own count ...
        self._flushed = 0        # ... and how far it has started the writeback

    # -- the caller's side ----------------------------------------------------------------
    def write(self, data) -> int:
        n = memoryview(data).nbytes
        with self._cond:
            self.check()
            if n <= self._inline_bytes and self._done[0] == self._done[1] == self.size:
                try:
                    self._write(data)   # both threads idle: nothing to overtake
                except OSError as exc:
                    self._error = exc
                    raise
                self._sum(data)
                self.size += n
                self._done = [self.size, self.size]
                return n
            if not self._threads:
                self._start()
            self.size += n
            for q in self._queues:
                q.append(data)
            self._cond.notify_all()
        return n

    def wait(self, ticket: int) -> None:
        """Until the first `ticket` bytes handed to write() are consumed (summed and written, or
        dropped after an error or at an abort). Raises nothing: see check()."""
        with self._cond:
            while min(self._done) < ticket:
                self._cond.wait()

    def check(self) -> None:
        """Raise the write error the writing thread met, if any."""
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Until every byte handed over is summed and written; raises a write error."""
        self.wait(self.size)
        self.check()

    def flush(self) -> None:
        self.drain()
        try:
            self._f.flush()
        except OSError as exc:   # buffered bytes meet the full disk here
            raise OSError(exc.errno, f"{exc.strerror} writing", self._path) from None

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self, drop: bool = False) -> None:
        """End the threads (drop=True: without writing what is still queued), then the file."""
        with self._cond:
            self._closing = True
            self._dropping = self._dropping or drop
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads = []
        self._f.close()

    # -- the threads ----------------------------------------------------------------------
    def _start(self) -> None:
        for i, work in enumerate((self._sum, self._write)):
            t = threading.Thread(target=self._serve, args=(i, work), daemon=True,
                                 name=f"reshard-{'crc' if i == 0 else 'write'}")
            t.start()
            self._threads.append(t)

    def _serve(self, i: int, work) -> None:
        queue = self._queues[i]
        while True:
            with self._cond:
                while not queue and not self._closing:
                    self._cond.wait()
                if not queue:
                    return
                block = queue[0]
                skip = self._dropping or self._error is not None
            error = None
            if not skip:
                try:
                    work(block)
                except OSError as exc:
                    error = exc
                except BaseException as exc:   # never a silent thread death: the caller sees it
                    error = OSError(0, f"{exc!r} writing", self._path)
            with self._cond:
                if error is not None and self._error is None:
                    self._error = error
                queue.popleft()
                self._done[i] += memoryview(block).nbytes
                self._cond.notify_all()

    def _sum(self, data) -> None:
        self.crc32 = crc32(data, self.crc32)

    def _write(self, data) -> None:
        try:
            n = self._f.write(data)
        except OSError as exc:   # ENOSPC, EIO: name the file, not just the errno
            raise OSError(exc.errno, f"{exc.strerror} writing", self._path) from None
        self._written += n
        if _start_writeback is not None and self._written - self._flushed >= self._writeback_bytes:
            # only a head start: errors are the fsync's to report
            _start_writeback(self._f.fileno(), self._flushed, self._written - self._flushed,
                             _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written


class CheckpointWriter:
    """Writes values in `metas` order to a temporary file beside `path`; commit() renames it.

    Nothing ever appears under the final name unless commit() succeeds. As a context manager
    it commits on a clean exit (when not committed or aborted already) and aborts on an
    exception. Subclasses encode: _begin_value / _write_content / _end_value / _finish.
    config: the run's ReshardConfig (write_slice_bytes, write_inline_bytes, writeback_bytes).
    """

    def __init__(self, path: str | os.PathLike, metas: Sequence[TensorMeta],
                 config: ReshardConfig = DEFAULT):
        self.path = os.fspath(path)
        self.config = config
        self.metas = list(metas)
        seen = set()
        for meta in self.metas:
            if meta.name in seen:
                raise FormatError(f"{self.path}: parameter {meta.name!r} listed twice")
            seen.add(meta.name)
        # obs_io's temporary names (hidden, naming this process): a rerun's sweep removes what a
        # killed run left, and never the file of a writer still running
        self.temp_path = temp_name(os.path.abspath(self.path))
        # "x": a new file, never one (or a link) already under the temporary name; the final
        # name is replaced by the rename, link or not, never written through
        self._file = _Checksummed(open(self.temp_path, "xb"), self.path, config)
        self._pos = 0            # index into metas of the value being written
        self._left: int | None = None  # bytes still due for metas[_pos]; None = not begun
        self._rows = 0           # axis-0 rows received for metas[_pos]
        self.state = "open"

    # -- public -------------------------------------------------------------------------
    def write(self, name: str, chunk: np.ndarray | bytes | bytearray | memoryview) -> None:
        """Next piece of value `name`: the whole value, or consecutive axis-0 chunks. Returns
        once its bytes are written: the caller may change `chunk` then."""
        self.wait(self.send(name, chunk))
        self._file.check()

    def send(self, name: str, chunk: np.ndarray | bytes | bytearray | memoryview) -> int:
        """write() without waiting: the writer's threads CRC-sum and write the bytes while the
        caller goes on (the engine assembles its next chunk meanwhile). `chunk` must stay
        unchanged until wait() returns for the ticket returned here."""
        self._check_open()
        self._file.check()
        self._complete_empty_values(until=name)
        if self._pos >= len(self.metas) or self.metas[self._pos].name != name:
            expected = self.metas[self._pos].name if self._pos < len(self.metas) else "nothing"
            raise FormatError(f"{self.path}: parameter {name!r} written out of order "
                              f"(expected {expected!r})")
        meta = self.metas[self._pos]
        data = self._chunk_bytes(meta, chunk)
        if self._left is None:
            total = meta.nbytes if meta.nbytes is not None else len(data)
            self._left = total
            self._begin_value(meta, total)
        if len(data) > self._left:
            raise FormatError(f"{self.path}: parameter {name!r}: {len(data)} bytes given, only "
                              f"{self._left} left of {meta.nbytes}")
        if len(data):
            self._write_content(data)
        self._left -= len(data)
        if self._left == 0:
            self._end_value(meta)
            self._pos += 1
            self._left = None
            self._rows = 0
        return self._file.size

    def wait(self, ticket: int) -> None:
        """Until the bytes of every send() up to the one that returned `ticket` are consumed
        (written, or dropped by a failed or aborted writer): their chunks may change then.
        Raises nothing, so a caller reusing its buffer never meets another writer's error:
        a failure is raised by this writer's next write, send or commit."""
        self._file.wait(ticket)

    def commit(self, durable: bool = True) -> None:
        """Rename the complete temporary file to the final name. durable: its bytes are fsynced
        before the rename and the folder after it (a local output: a restarted job trusts what
        it finds); False for a copy that only stages an upload (the object store holds the
        rank once its upload completes), where the disk's flush would only cost time."""
        self._check_open()
        with on_failure(self.abort):
            self._complete_empty_values(until=None)
            if self._pos < len(self.metas):
                missing = self.metas[self._pos].name
                raise FormatError(f"{self.path}: parameter {missing!r} incomplete at commit")
            self._finish()
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temp_path, self.path)
            if durable:
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.state = "committed"

    @property
    def checksum(self) -> tuple[int, str]:
        """(size in bytes, CRC32 as 8 hex digits) of what was written; final after commit()."""
        return self._file.size, f"{self._file.crc32:08x}"

    def abort(self) -> None:
        """Drop the temporary file. Its unlink does not depend on close(): on a full disk
        (ENOSPC) close() itself fails flushing, and the temp file must not stay behind."""
        if self.state != "open":
            return
        self.state = "aborted"
        try:
            self._file.close(drop=True)
        except OSError:
            pass
        finally:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif self.state == "open":
            self.commit()

    def __del__(self):
        # A writer dropped without commit() must not leave its temp file behind.
        if getattr(self, "state", None) == "open":
            self.abort()

    # -- helpers ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.state != "open":
            raise FormatError(f"{self.path}: writer already {self.state}")

    def _complete_empty_values(self, until: str | None) -> None:
        """Zero-byte values need no write(); emit them when the caller moves past them."""
        while self._pos < len(self.metas) and self._left is None:
            meta = self.metas[self._pos]
            if meta.name == until or meta.nbytes != 0:
                return
            self._begin_value(meta, 0)
            self._end_value(meta)
            self._pos += 1

    def _chunk_bytes(self, meta: TensorMeta, chunk) -> memoryview:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            return memoryview(chunk).cast("B")
        if not isinstance(chunk, np.ndarray):
            raise TypeError(f"parameter {meta.name!r}: chunk must be ndarray or bytes, "
                            f"got {type(chunk).__name__}")
        if not meta.sliceable:
            return memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
        chunk = storage_view(chunk, meta)
        if meta.shape == ():
            if chunk.shape not in ((), (1,)):
                raise FormatError(f"{self.path}: parameter {meta.name!r}: chunk shape "
                                  f"{chunk.shape} for a scalar")
        else:
            if chunk.ndim != len(meta.shape) or chunk.shape[1:] != meta.shape[1:]:
                raise FormatError(f"{self.path}: parameter {meta.name!r}: chunk shape "
                                  f"{chunk.shape} does not fit {meta.shape}")
            self._rows += chunk.shape[0]
            if self._rows > meta.shape[0]:
                raise FormatError(f"{self.path}: parameter {meta.name!r}: more than "
                                  f"{meta.shape[0]} rows written")
        chunk = np.ascontiguousarray(chunk)
        return memoryview(chunk.reshape(-1).view(np.uint8))

    def _begin_value(self, meta: TensorMeta, nbytes: int) -> None:
        raise NotImplementedError

    def _write_content(self, data: memoryview) -> None:
        self._put(data)

    def _put(self, data) -> None:
        """To the file in slices of config.write_slice_bytes (why: its docstring)."""
        view = memoryview(data)
        step = self.config.write_slice_bytes
        for off in range(0, len(view), step):
            self._file.write(view[off:off + step])

    def _end_value(self, meta: TensorMeta) -> None:
        pass

    def _finish(self) -> None:
        pass


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a crash must not resurrect the old state)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
