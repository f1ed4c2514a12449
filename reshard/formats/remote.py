"""A checkpoint object read in place: the FileBytes of an object-store URL (obs://, s3://, any
store of obs_io.registry), by ranged reads.

Nothing of the object is written to local disk. Every read is the store's read_range
(obs_io.store; for S3 a ranged GET with botocore's retries of a failed request, a body that
breaks off fetched again, the configured timeouts), pinned to the ETag the object had when it
was opened: bytes of two versions are never spliced, a replaced object fails the read (obs_io's
ObjectChanged) instead.

A GET costs tens of milliseconds whatever its size up to a few MiB, so reads are shaped for it:
- the region reader announces the runs it is about to read (FileBytes.expect); a miss fetches
  ahead over the runs still to come, reading through gaps of up to remote_gap_bytes (cheaper than
  another GET), up to remote_window_bytes and never past the region's last run: the runs of a slice
  cost a few GETs, not one per run;
- a read with nothing to read ahead (a whole value, a long run) goes straight into the caller's
  buffer, in GETs of obs_io's read_part_bytes (the one part size of every ranged read, its
  S3Config), remote_threads at a time (one connection rarely fills the link);
- a .ckpt's record headers are scanned through a header_window read-ahead: small records cost
  one GET per window, not one per record.
Memory: the window plus, while it reads, the parts in flight (open_bytes() plus remote_threads
parts). The three numbers are ReshardConfig fields.
"""
from __future__ import annotations

from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor

from reshard.config import DEFAULT, ReshardConfig
from reshard.formats.meta import FormatError
from reshard.formats.regions import FileBytes, Extent


def open_bytes(config: ReshardConfig = DEFAULT) -> int:
    """What one open remote reader holds: its window and scratch; while it reads, also up to
    config.remote_threads GET bodies of read_part_bytes each (not counted here)."""
    return config.remote_window_bytes + config.read_scratch_bytes


def head(url: str, config) -> tuple[int, str | None]:
    """(size, ETag) of the object at url, by the store's head() (obs_io's errors)."""
    from obs_io import store_for
    from obs_io.errors import ObjectNotFound
    info = store_for(url).head(url, config)
    if info is None:
        raise ObjectNotFound(f"{url}: no such object")
    return info.size, info.etag


def _storage_text(url: str, err: BaseException) -> str:
    """obs_io's one-line text without the URL it starts with (the caller names it once)."""
    from obs_io.oneline import one_line
    text = one_line(err, (OSError, ValueError))
    return text[len(url) + 2:] if text.startswith(f"{url}: ") else text


class ObjectBytes(FileBytes):
    """One object version, read by ranged reads (the store's read_range). s3_config: obs_io's
    S3Config to use (a worker process gets its parent's, set_auth included); None: obs_io's
    current one. known: (size, ETag) of the version to read, as an earlier HEAD found them (no
    HEAD request then). config: the remote_* fields of the run's ReshardConfig."""

    remote = True
    header_window = 256 * 1024   # a GET of 256 KiB costs about what one of 64 KiB does
    header_min = 4 * 1024        # a record header alone: tag, dims, type (a few hundred bytes)

    def __init__(self, url: str, s3_config=None, known: tuple[int, str | None] | None = None,
                 config: ReshardConfig = DEFAULT):
        super().__init__(config)
        from obs_io import current_config, store_for
        from obs_io.urls import check
        self.location = url
        self.window_bytes, self.gap_bytes = config.remote_window_bytes, config.remote_gap_bytes
        self.threads = config.remote_threads
        self._pool: ThreadPoolExecutor | None = None
        try:
            self._cfg = s3_config or current_config()
            check(url)
            self._store = store_for(url)
            if known is None:
                known = head(url, self._cfg)
        except (OSError, ValueError) as err:
            raise FormatError(f"{url}: cannot open checkpoint: {_storage_text(url, err)}") from None
        self.size, self.etag = known
        self.part = self._cfg.read_part_bytes   # one GET of a large read
        self._window = bytearray()
        self._lo = self._hi = 0      # file bytes [_lo, _hi) are in _window
        self._runs: tuple[Extent, int, int, int, int] | None = None   # from expect()

    def expect(self, extent: Extent, base: int, rows: int, row_stride: int, run: int) -> None:
        self._runs = (extent, base, rows, row_stride, run)

    def readv(self, buffers: list, offset: int) -> int:
        pos = offset
        for b in buffers:
            b = memoryview(b).cast("B")
            n = min(len(b), self.size - pos)
            if n <= 0:
                break
            self._fill(pos, b[:n])
            pos += n
            if n < len(b):
                break
        return pos - offset

    def read_at(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        buf = bytearray(n)
        if n:
            self._fill(offset, memoryview(buf))
        return bytes(buf)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._window = bytearray()
        self._lo = self._hi = 0

    # -- reads ----------------------------------------------------------------------------
    def _fill(self, off: int, buf: memoryview) -> None:
        """buf <- file bytes [off, off + len(buf)), from the window or fetched."""
        lo, hi, n = self._lo, self._hi, len(buf)
        if lo <= off < hi:                       # all or the first part is in the window
            k = min(n, hi - off)
            buf[:k] = memoryview(self._window)[off - lo:off - lo + k]
            if k == n:
                return
            off, buf, n = off + k, buf[k:], n - k
        end = self._ahead(off, n)
        if end == off + n and n >= self.part or n > self.window_bytes:   # nothing worth keeping: straight in
            self._get_into(off, buf)
            return
        if len(self._window) < end - off:
            self._window = bytearray(max(end - off, min(self.window_bytes, 2 * (end - off))))
        view = memoryview(self._window)[:end - off]
        self._lo = self._hi = 0                  # invalid while it is being replaced
        self._get_into(off, view)
        self._lo, self._hi = off, end
        buf[:] = view[:n]

    def _ahead(self, off: int, n: int) -> int:
        """Where a fetch that must cover [off, off + n) should stop: further along the runs
        announced by expect() (through gaps up to gap_bytes; this run only when they are
        further apart), at most window_bytes, never past the last run; off + n without such
        runs."""
        stop = off + n
        if self._runs is None:
            return stop
        extent, base, rows, stride, run = self._runs
        logical = _logical(extent, off)
        last = base + (rows - 1) * stride + run
        if logical is None or not base <= logical < last:
            return stop
        if rows > 1 and stride - run <= self.gap_bytes:
            want = last
        else:
            row = (logical - base) // stride if stride else 0
            want = base + row * stride + run
        want = min(want, logical + max(n, self.window_bytes))
        return min(self.size, max(stop, _file_end(extent, want)))

    def _get_into(self, off: int, buf: memoryview) -> None:
        """buf <- [off, off + len(buf)) by ranged GETs of at most read_part_bytes, `threads`
        at once."""
        part = self.part
        parts = [(o, buf[o - off:min(o - off + part, len(buf))])
                 for o in range(off, off + len(buf), part)]
        if len(parts) == 1:
            self._get(*parts[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="reshard-get")
        for future in [self._pool.submit(self._get, o, view) for o, view in parts]:
            future.result()

    def _get(self, off: int, view: memoryview) -> None:
        body = self._store.read_range(self.location, off, len(view), self.etag, self._cfg)
        if len(body) != len(view):
            raise FormatError(f"{self.location}: the store answered {len(body)} bytes for a "
                              f"range of {len(view)} at byte {off}")
        view[:] = body


def _logical(extent: Extent, off: int) -> int | None:
    """The value's logical offset of file offset `off` (None: not inside the value)."""
    pieces = extent.pieces
    if len(pieces) == 1:
        start, length = pieces[0]
        return off - start if start <= off < start + length else None
    i = bisect_right([p[0] for p in pieces], off) - 1
    if i < 0 or off >= pieces[i][0] + pieces[i][1]:
        return None
    return extent.starts[i] + off - pieces[i][0]


def _file_end(extent: Extent, logical_end: int) -> int:
    """The file offset just past the value's logical byte logical_end - 1."""
    i = max(0, bisect_right(extent.starts, logical_end - 1) - 1)
    return extent.pieces[i][0] + logical_end - extent.starts[i]
