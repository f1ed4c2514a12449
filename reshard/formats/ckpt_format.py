"""MindSpore .ckpt: consecutive serialized `Checkpoint` messages, one `Value` each.

Wire layout of one record (checkpoint.proto, proto2; field numbers checked against
mindspore/train/checkpoint_pb2.py):

    0a <len>                      Checkpoint.value (field 1)
      0a <len> tag                  Value.tag (1)
      12 <len>                      Value.tensor (2)    [Value.maptensor (3) is not supported]
        08 <dim> ...                  TensorProto.dims (1, repeated int64, unpacked)
        12 <len> tensor_type          TensorProto.tensor_type (2)
        1a <len> content...           TensorProto.tensor_content (3)

Optionally followed by the 17-byte trailer b"crc_num" + CRC32 (10 bytes, big endian) of every
record byte (save_checkpoint(crc_check=True); load_checkpoint ignores it unless asked).

We index by walking this wire format ourselves, reading only record headers, because the
protobuf runtime needs the whole file in memory (and refuses messages over 2 GB). The writer
emits the same bytes MindSpore's save_checkpoint does, streaming the content from the caller's
buffers.
"""
from __future__ import annotations

import os
import zlib
from typing import Sequence

from reshard.formats.base import CheckpointReader, CheckpointWriter
from reshard.formats.meta import KNOWN_DTYPES, RAW_DTYPES, FormatError, TensorMeta
from reshard.formats.regions import Extent

# save_checkpoint(Tensor) writes a value larger than this as several records of exactly this
# many content bytes (the last one shorter), all with the same tag and the full dims
# (serialization._write_parameter_bytes_data: chunk_size = 1024 * SLICE_SIZE). Module-level so
# tests can make it small.
RECORD_BYTES = 512 * 1024 * 1024

CRC_TRAILER = b"crc_num"
CRC_TRAILER_LEN = len(CRC_TRAILER) + 10
_WINDOW = 64 * 1024      # header read-ahead: covers many small records per pread
_MAX_HEADER = 1 << 20    # a tag or tensor_type longer than this means garbage


class _Window:
    """Buffered positional reads for the header walk (content bytes are skipped, not read)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.start, self.buf = 0, b""

    def get(self, pos: int, n: int) -> memoryview:
        """At least min(n, size - pos) bytes from pos, as a view into the window."""
        end = min(pos + n, self.size)
        if not (self.start <= pos and end <= self.start + len(self.buf)):
            self.buf = os.pread(self.fd, max(end - pos, _WINDOW), pos)
            self.start = pos
        return memoryview(self.buf)[pos - self.start:]


class _Corrupt(Exception):
    """Internal: the wire format does not parse (message completed by the reader)."""


def _varint(win: _Window, pos: int, end: int) -> tuple[int, int]:
    data = win.get(pos, 10)
    value = shift = 0
    for i in range(min(10, end - pos, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _Corrupt(f"bad varint at byte {pos}")


def _key(win: _Window, pos: int, end: int) -> tuple[int, int, int]:
    key, pos = _varint(win, pos, end)
    return key >> 3, key & 7, pos


def _length(win: _Window, pos: int, end: int) -> tuple[int, int]:
    n, pos = _varint(win, pos, end)
    if pos + n > end:
        raise _Corrupt(f"field of {n} bytes at byte {pos} overruns its message")
    return n, pos


def _skip(win: _Window, wire: int, pos: int, end: int) -> int:
    if wire == 0:
        return _varint(win, pos, end)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _length(win, pos, end)
        return pos + n
    if wire == 5:
        return pos + 4
    raise _Corrupt(f"unsupported wire type {wire} at byte {pos}")


def _string(win: _Window, pos: int, end: int) -> tuple[str, int]:
    n, pos = _length(win, pos, end)
    if n > _MAX_HEADER:
        raise _Corrupt(f"string of {n} bytes at byte {pos}")
    try:
        return bytes(win.get(pos, n)[:n]).decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise _Corrupt(f"non-UTF-8 string at byte {pos}") from None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Record:
    __slots__ = ("tag", "dims", "tensor_type", "offset", "length")

    def __init__(self):
        self.tag = None
        self.dims: list[int] = []
        self.tensor_type = None
        self.offset = self.length = None


def _parse_tensor(win: _Window, pos: int, end: int, rec: _Record) -> None:
    while pos < end:
        field, wire, pos = _key(win, pos, end)
        if field == 1 and wire == 0:
            dim, pos = _varint(win, pos, end)
            rec.dims.append(_signed(dim))
        elif field == 1 and wire == 2:  # packed dims (not what MindSpore writes, still valid)
            n, pos = _length(win, pos, end)
            stop = pos + n
            while pos < stop:
                dim, pos = _varint(win, pos, stop)
                rec.dims.append(_signed(dim))
        elif field == 2 and wire == 2:
            rec.tensor_type, pos = _string(win, pos, end)
        elif field == 3 and wire == 2:
            rec.length, rec.offset = _length(win, pos, end)
            pos = rec.offset + rec.length
        else:
            pos = _skip(win, wire, pos, end)


def _parse_value(win: _Window, pos: int, end: int) -> _Record:
    rec = _Record()
    while pos < end:
        field, wire, pos = _key(win, pos, end)
        if field == 1 and wire == 2:
            rec.tag, pos = _string(win, pos, end)
        elif field == 2 and wire == 2:
            n, pos = _length(win, pos, end)
            _parse_tensor(win, pos, pos + n, rec)
            pos += n
        elif field == 3 and wire == 2:
            raise FormatError(f"parameter {rec.tag!r} is a MapParameter (maptensor), which is "
                              "not supported")
        else:
            pos = _skip(win, wire, pos, end)
    if rec.tag is None or rec.tensor_type is None or rec.offset is None:
        raise _Corrupt(f"record ending at byte {end} lacks tag, tensor_type or content")
    if rec.tensor_type not in KNOWN_DTYPES:
        raise _Corrupt(f"unknown tensor_type {rec.tensor_type!r}")
    return rec


class CkptReader(CheckpointReader):
    fmt = "ckpt"

    def _index(self) -> None:
        if self.size == 0:
            raise FormatError(f"{self.path}: empty file, not a MindSpore checkpoint")
        win = _Window(self._fd, self.size)
        records: list[_Record] = []
        pos = 0
        try:
            while pos < self.size:
                if (self.size - pos == CRC_TRAILER_LEN
                        and bytes(win.get(pos, 7)[:7]) == CRC_TRAILER):
                    break
                field, wire, body = _key(win, pos, self.size)
                if (field, wire) != (1, 2):
                    raise _Corrupt(f"unexpected field {field}/{wire} at byte {pos}")
                n, body = _varint(win, body, self.size)
                if body + n > self.size:
                    if records:
                        raise FormatError(f"{self.path}: truncated (record at byte {pos} needs "
                                          f"{body + n - self.size} more bytes)")
                    raise _Corrupt(f"first record claims {n} bytes")
                records.append(_parse_value(win, body, body + n))
                pos = body + n
        except _Corrupt as err:
            raise FormatError(f"{self.path}: not a readable MindSpore checkpoint (encrypted, "
                              f"truncated or corrupt): {err}") from None
        except FormatError as err:
            if str(err).startswith(self.path):
                raise
            raise FormatError(f"{self.path}: {err}") from None
        self._group(records)

    def _group(self, records: list[_Record]) -> None:
        """Consecutive records with one tag are one value (MindSpore's chunking)."""
        i = 0
        while i < len(records):
            first = records[i]
            j = i + 1
            while j < len(records) and records[j].tag == first.tag:
                if records[j].dims != first.dims or records[j].tensor_type != first.tensor_type:
                    raise FormatError(f"{self.path}: parameter {first.tag!r}: chunks disagree "
                                      "on dims or tensor_type")
                j += 1
            if first.tag in self.metas:
                raise FormatError(f"{self.path}: parameter {first.tag!r} appears twice")
            extent = Extent(tuple((r.offset, r.length) for r in records[i:j]))
            self.metas[first.tag] = self._meta(first, extent.nbytes)
            self._extents[first.tag] = extent
            i = j

    def _meta(self, rec: _Record, nbytes: int) -> TensorMeta:
        if any(d < 0 for d in rec.dims):
            raise FormatError(f"{self.path}: parameter {rec.tag!r}: negative dims {rec.dims}")
        if rec.tensor_type in RAW_DTYPES:
            return TensorMeta(rec.tag, rec.tensor_type, tuple(rec.dims), raw_nbytes=nbytes)
        meta = TensorMeta(rec.tag, rec.tensor_type, tuple(rec.dims))
        if meta.shape == (0,) and nbytes == meta.itemsize:
            # load_checkpoint reads dims [0] as a scalar (older savers wrote scalars that way).
            meta = TensorMeta(rec.tag, rec.tensor_type, ())
        if meta.nbytes != nbytes:
            raise FormatError(f"{self.path}: parameter {rec.tag!r}: {nbytes} content bytes for "
                              f"{meta.dtype}{list(meta.shape)} ({meta.nbytes} expected)")
        return meta


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return bytes([field << 3 | 2]) + _encode_varint(len(payload)) + payload


def record_header(meta: TensorMeta, content_len: int) -> bytes:
    """Every byte of one record before its tensor_content (the content follows verbatim)."""
    tensor_head = b"".join(b"\x08" + _encode_varint(d) for d in meta.shape)
    tensor_head += _length_delimited(2, meta.dtype.encode())
    tensor_head += b"\x1a" + _encode_varint(content_len)
    tensor_len = len(tensor_head) + content_len
    value_head = _length_delimited(1, meta.name.encode())
    value_head += b"\x12" + _encode_varint(tensor_len) + tensor_head
    value_len = len(value_head) + content_len
    return b"\x0a" + _encode_varint(value_len) + value_head


class CkptWriter(CheckpointWriter):
    """Streams records; with crc_check=True appends MindSpore's CRC32 trailer."""
    fmt = "ckpt"

    def __init__(self, path, metas: Sequence[TensorMeta], crc_check: bool = False):
        super().__init__(path, metas)
        self._crc = 0 if crc_check else None
        self._record_left = 0
        self._value_left = 0
        self._meta: TensorMeta | None = None

    def _emit(self, data) -> None:
        self._file.write(data)
        if self._crc is not None:
            self._crc = zlib.crc32(data, self._crc)

    def _begin_value(self, meta: TensorMeta, nbytes: int) -> None:
        self._meta, self._value_left, self._record_left = meta, nbytes, 0
        if nbytes == 0:
            # save_checkpoint writes no record at all for an empty tensor (its chunk loop is
            # empty), which loses the parameter; one empty record keeps it and loads fine.
            self._emit(record_header(meta, 0))

    def _write_content(self, data: memoryview) -> None:
        while len(data):
            if self._record_left == 0:
                self._record_left = min(RECORD_BYTES, self._value_left)
                self._emit(record_header(self._meta, self._record_left))
            take = min(self._record_left, len(data))
            self._emit(data[:take])
            data = data[take:]
            self._record_left -= take
            self._value_left -= take

    def _finish(self) -> None:
        if self._crc is not None:
            self._file.write(CRC_TRAILER + self._crc.to_bytes(10, "big"))
