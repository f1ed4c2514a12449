"""Reading a box-shaped region of a row-major tensor with few, bounded reads.

This is the engine's hot path. A region of a C-order tensor is a set of equal contiguous byte
runs (dimension k = the last partial one; everything after it is full and rides along). Runs
close together are read as one span into a bounded scratch buffer and scattered with one numpy
strided copy; runs far apart are read straight into the destination when it is contiguous there.
Local files are read with os.preadv into existing buffers: no mmap (RSS stays honest), no
whole-file reads, no intermediate bytes objects. Objects in a store are read through the same
FileBytes interface by ranged GETs (remote.py), the runs of a region coalesced into few GETs.
"""
from __future__ import annotations

import functools
import itertools
import os
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from reshard.config import DEFAULT, ReshardConfig
from reshard.formats.meta import FormatError, TensorMeta

Region = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Extent:
    """Where a value's content lives: pieces (file offset, length) that concatenate to the
    value's bytes. One piece for safetensors; one per record for a chunked .ckpt value."""
    pieces: tuple[tuple[int, int], ...]
    starts: tuple[int, ...] = field(init=False)   # logical offset of each piece
    nbytes: int = field(init=False)

    def __post_init__(self):
        offsets = [0]
        for _, length in self.pieces:
            offsets.append(offsets[-1] + length)
        object.__setattr__(self, "starts", tuple(offsets[:-1]))
        object.__setattr__(self, "nbytes", offsets[-1])


class FileBytes:
    """Positional reads of one checkpoint file, whatever holds it: LocalBytes (a file
    descriptor) or remote.ObjectBytes (ranged GETs of an object). Readers and the region
    reader below use this interface alone, never a file descriptor.

    Subclasses set `location` (the path or URL, as the user named it: it is in every error),
    `size`, and `readv(buffers, offset) -> int` (fill the buffers back to back from file
    offset `offset`; the bytes read, short only at the end of the file). `config`: the run's
    ReshardConfig, whose read_* fields shape the region reads below."""

    location: str = ""
    size: int = 0
    header_window = 64 * 1024   # read-ahead for a .ckpt's record headers (ckpt_format._scan)
    header_min = 64 * 1024      # ... after a record larger than that (the next header alone)
    remote = False

    def __init__(self, config: ReshardConfig = DEFAULT) -> None:
        self._scratch: bytearray | None = None
        self.config = config

    def readv(self, buffers: list, offset: int) -> int:
        raise NotImplementedError

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to n bytes at `offset` (fewer only at the end of the file)."""
        n = max(0, min(n, self.size - offset))
        buf = bytearray(n)
        got = self.readv([memoryview(buf)], offset) if n else 0
        return bytes(buf[:got])

    def expect(self, extent: Extent, base: int, rows: int, row_stride: int, run: int) -> None:
        """The region reader is about to read `rows` runs of `run` bytes at logical offsets
        base, base + row_stride, ... of the value at `extent`: a source whose reads have a
        high fixed cost (a GET) fetches ahead within these runs, never beyond. Local: nothing."""

    def close(self) -> None:
        pass

    def scratch(self, nbytes: int) -> memoryview:
        if self._scratch is None or len(self._scratch) < nbytes:
            self._scratch = bytearray(max(nbytes, min(self.config.read_scratch_bytes, 2 * nbytes)))
        return memoryview(self._scratch)[:nbytes]

    def pread_into(self, extent: Extent, logical_offset: int, buf: memoryview, name: str) -> None:
        """Fill buf with the value's bytes [logical_offset, logical_offset + len(buf))."""
        pieces = extent.pieces
        if len(pieces) == 1:
            self._pread_exact(pieces[0][0] + logical_offset, buf, name)
            return
        starts = extent.starts
        i = bisect_right(starts, logical_offset) - 1
        done = 0
        while done < len(buf):
            file_offset, length = pieces[i]
            inside = logical_offset + done - starts[i]
            take = min(length - inside, len(buf) - done)
            self._pread_exact(file_offset + inside, buf[done:done + take], name)
            done += take
            i += 1

    def _pread_exact(self, offset: int, buf: memoryview, name: str) -> None:
        done = 0
        while done < len(buf):
            n = self.readv([buf[done:]], offset + done)
            if n <= 0:
                raise FormatError(f"{self.location}: truncated while reading parameter {name!r}")
            done += n


class LocalBytes(FileBytes):
    """A local file, read with os.preadv into the caller's buffers (no mmap, no copies)."""

    def __init__(self, path: str, config: ReshardConfig = DEFAULT):
        super().__init__(config)
        self.location = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise FormatError(f"{path}: cannot open checkpoint: {err.strerror}") from None
        self.size = os.fstat(self.fd).st_size
        # bound once: the strided reads call it per batch of runs
        self.readv = functools.partial(os.preadv, self.fd)

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def normalize_region(meta: TensorMeta, region: Region | None) -> Region:
    shape = meta.shape
    if region is None:
        return tuple((0, d) for d in shape)
    region = tuple((int(a), int(b)) for a, b in region)
    if len(region) != len(shape) or any(not 0 <= a <= b <= d for (a, b), d in zip(region, shape)):
        raise ValueError(f"parameter {meta.name!r}: region {region} does not fit shape {shape}")
    return region


def read_region(src: FileBytes, extent: Extent, meta: TensorMeta, region: Region,
                out: np.ndarray) -> None:
    """Copy `region` of the tensor into `out` (region-shaped, storage dtype, any strides)."""
    shape = meta.shape
    isz = meta.itemsize
    if out.size == 0:
        return
    ndim = len(shape)
    # k: last dimension that is not read in full; dimensions after it ride along in each run.
    k = max((i for i in range(ndim) if region[i] != (0, shape[i])), default=0)
    if ndim == 0:
        src.pread_into(extent, 0, _as_bytes(out), meta.name)
        return
    strides = [isz] * ndim  # byte strides of the file tensor
    for i in range(ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    a_k, b_k = region[k]
    run = (b_k - a_k) * strides[k]
    if k == 0:
        _read_rows(src, extent, meta, a_k * strides[0], 1, 0, run, out[np.newaxis], strides, k)
        return
    # Rows: dimension k-1; outer dimensions 0..k-2 are iterated in Python (rare beyond 2-D).
    a_r, b_r = region[k - 1]
    rows = b_r - a_r
    row_stride = strides[k - 1]
    for outer in itertools.product(*(range(a, b) for a, b in region[:k - 1])):
        base = sum(i * s for i, s in zip(outer, strides)) + a_r * row_stride + a_k * strides[k]
        dst = out[tuple(i - a for i, (a, _) in zip(outer, region))]
        _read_rows(src, extent, meta, base, rows, row_stride, run, dst, strides, k)


def _read_rows(src: FileBytes, extent: Extent, meta: TensorMeta, base: int, rows: int,
               row_stride: int, run: int, dst: np.ndarray, strides: list[int], k: int) -> None:
    """`rows` runs of `run` bytes starting at base, base+row_stride, ...; dst[r] is run r."""
    src.expect(extent, base, rows, row_stride, run)
    gap = row_stride - run
    scratch_bytes = src.config.read_scratch_bytes
    if rows > 1 and gap <= src.config.read_coalesce_gap_bytes and row_stride <= scratch_bytes:
        per_batch = max(1, scratch_bytes // row_stride)
        view_strides = (row_stride, *strides[k:])
        inner_shape = dst.shape[1:]
        for r0 in range(0, rows, per_batch):
            n = min(per_batch, rows - r0)
            span = (n - 1) * row_stride + run
            buf = src.scratch(span)
            src.pread_into(extent, base + r0 * row_stride, buf, meta.name)
            block = np.ndarray((n, *inner_shape), dtype=meta.storage, buffer=buf,
                               strides=view_strides)
            np.copyto(dst[r0:r0 + n], block, casting="no")
        return
    if dst.flags.c_contiguous:
        _read_rows_direct(src, extent, meta.name, base, rows, row_stride, run, _as_bytes(dst))
        return
    for r in range(rows):
        row_dst = dst[r]
        offset = base + r * row_stride
        if row_dst.flags.c_contiguous:
            src.pread_into(extent, offset, _as_bytes(row_dst), meta.name)
            continue
        # Non-contiguous destination: bounce through scratch in pieces along its first axis.
        if row_dst.ndim == 0:
            buf = src.scratch(meta.itemsize)
            src.pread_into(extent, offset, buf, meta.name)
            row_dst[...] = np.frombuffer(buf, dtype=meta.storage)[0]
            continue
        step_bytes = strides[k]
        per_piece = max(1, scratch_bytes // step_bytes)
        length = row_dst.shape[0]
        for p0 in range(0, length, per_piece):
            n = min(per_piece, length - p0)
            buf = src.scratch(n * step_bytes)
            src.pread_into(extent, offset + p0 * step_bytes, buf, meta.name)
            piece = np.frombuffer(buf, dtype=meta.storage).reshape((n, *row_dst.shape[1:]))
            np.copyto(row_dst[p0:p0 + n], piece, casting="no")


def _read_rows_direct(src: FileBytes, extent: Extent, name: str, base: int, rows: int,
                      row_stride: int, run: int, dst: memoryview) -> None:
    """Runs straight into the destination bytes: per-run Python and syscall overhead is what
    limits strided reads of small runs, so close runs go in batches through one scatter read."""
    if len(extent.pieces) != 1:
        for r in range(rows):
            src.pread_into(extent, base + r * row_stride, dst[r * run:(r + 1) * run], name)
        return
    readv = src.readv
    file_base = extent.pieces[0][0] + base
    gap = row_stride - run
    config = src.config
    batch = config.read_scatter_runs if 0 < gap <= max(4 * run, config.read_scatter_gap_bytes) else 1
    junk = src.scratch(gap) if batch > 1 else None
    for r0 in range(0, rows, batch):
        n = min(batch, rows - r0)
        iov = []
        for r in range(r0, r0 + n):
            iov.append(dst[r * run:(r + 1) * run])
            if junk is not None and r < r0 + n - 1:
                iov.append(junk)
        if readv(iov, file_base + r0 * row_stride) != n * run + (n - 1) * gap:
            for r in range(r0, r0 + n):   # short read: exact reads, which retry or raise
                src.pread_into(extent, base + r * row_stride, dst[r * run:(r + 1) * run], name)


def _as_bytes(array: np.ndarray) -> memoryview:
    """Writable byte view of a C-contiguous array (also 0-d and bool)."""
    return memoryview(array.reshape(-1).view(np.uint8))
