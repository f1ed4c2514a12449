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

from typing import Sequence

from obs_io.crc import crc32
from reshard.config import DEFAULT, ReshardConfig
from reshard.formats.base import CheckpointReader, CheckpointWriter, FileIndex
from reshard.formats.interface import CheckpointFormat
from reshard.formats.meta import KNOWN_DTYPES, RAW_DTYPES, STORAGE_DTYPES, FormatError, TensorMeta
from reshard.formats.regions import Extent

# save_checkpoint(Tensor) writes a value larger than this as several records of exactly this
# many content bytes (the last one shorter), all with the same tag and the full dims
# (serialization._write_parameter_bytes_data: chunk_size = 1024 * SLICE_SIZE). Module-level so
# tests can make it small.
RECORD_BYTES = 512 * 1024 * 1024

CRC_TRAILER = b"crc_num"
CRC_TRAILER_LEN = len(CRC_TRAILER) + 10
_MAX_HEADER = 1 << 22    # a record header (tag, dims, type) longer than this means garbage


class _Corrupt(Exception):
    """Internal: the wire format does not parse (message completed by the reader)."""


class _NeedMore(Exception):
    """Internal: a record's header reaches past the bytes read so far."""


def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    """Decode a varint at buf[i]; end bounds the enclosing message (buf may stop earlier)."""
    try:
        byte = buf[i]
        if byte < 0x80 and i < end:          # the common one-byte case, kept cheap
            return byte, i + 1
        value = shift = 0
        for j in range(i, min(i + 10, end)):
            byte = buf[j]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, j + 1
            shift += 7
    except IndexError:
        raise _NeedMore from None
    raise _Corrupt("bad varint")


def _length(buf: bytes, i: int, end: int) -> tuple[int, int]:
    n, i = _varint(buf, i, end)
    if i + n > end:
        raise _Corrupt(f"field of {n} bytes overruns its message")
    return n, i


def _string(buf: bytes, i: int, end: int) -> tuple[str, int]:
    n, i = _length(buf, i, end)
    if i + n > len(buf):
        raise _NeedMore
    try:
        return buf[i:i + n].decode("utf-8"), i + n
    except UnicodeDecodeError:
        raise _Corrupt("non-UTF-8 string") from None


def _skip(buf: bytes, wire: int, i: int, end: int) -> int:
    if wire == 0:
        return _varint(buf, i, end)[1]
    if wire == 2:
        n, i = _length(buf, i, end)
        return i + n
    if wire in (1, 5):
        return i + (8 if wire == 1 else 4)
    raise _Corrupt(f"unsupported wire type {wire}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Record:
    __slots__ = ("tag", "dims", "tensor_type", "offset", "length")

    def __init__(self):
        self.tag = None
        self.dims: list[int] = []
        self.tensor_type = None
        self.offset = self.length = None


def _parse_tensor(buf: bytes, i: int, end: int, rec: _Record) -> None:
    while i < end:
        key, i = _varint(buf, i, end)
        if key == 0x08:
            dim, i = _varint(buf, i, end)
            rec.dims.append(_signed(dim))
        elif key == 0x12:
            rec.tensor_type, i = _string(buf, i, end)
        elif key == 0x1A:
            rec.length, rec.offset = _length(buf, i, end)
            i = rec.offset + rec.length        # content skipped, never read
        elif key == 0x0A:  # packed dims (not what MindSpore writes, still valid protobuf)
            n, i = _length(buf, i, end)
            stop = i + n
            while i < stop:
                dim, i = _varint(buf, i, stop)
                rec.dims.append(_signed(dim))
        else:
            i = _skip(buf, key & 7, i, end)


def _parse_value(buf: bytes, i: int, end: int) -> _Record:
    """One Value message buf[i:end] (positions relative to buf, which may stop early)."""
    rec = _Record()
    while i < end:
        key, i = _varint(buf, i, end)
        if key == 0x0A:
            rec.tag, i = _string(buf, i, end)
        elif key == 0x12:
            n, i = _length(buf, i, end)
            _parse_tensor(buf, i, i + n, rec)
            i += n
        elif key == 0x1A:
            raise FormatError(f"parameter {rec.tag!r} is a MapParameter (maptensor), which is "
                              "not supported")
        else:
            i = _skip(buf, key & 7, i, end)
    if rec.tag is None or rec.tensor_type is None or rec.offset is None:
        raise _Corrupt("record lacks tag, tensor_type or content")
    if rec.tensor_type not in KNOWN_DTYPES:
        raise _Corrupt(f"unknown tensor_type {rec.tensor_type!r}")
    return rec


def crc_mismatch(location: str, trailer: int, crc: int) -> str:
    """The one line for a .ckpt whose records do not sum to its CRC trailer."""
    return f"{location}: corrupt checkpoint: its CRC trailer says {trailer:08x}, its records sum to {crc:08x}"


class CkptReader(CheckpointReader):
    def check_crc(self) -> None:
        """Compare MindSpore's CRC trailer (save_checkpoint(crc_check=True)) with the records'
        bytes, read once from start to trailer: a corrupt source is refused before anything is
        converted. No trailer: nothing to check. FormatError naming the file on a mismatch."""
        if self.crc_trailer is None:
            return
        crc, pos, end = 0, 0, self.size - CRC_TRAILER_LEN
        while pos < end:
            block = self._src.read_at(pos, min(8 << 20, end - pos))
            if not block:
                break
            crc = crc32(block, crc)
            pos += len(block)
        if crc != self.crc_trailer:
            raise FormatError(crc_mismatch(self.path, self.crc_trailer, crc))

    def _index(self) -> None:
        if self.size == 0:
            raise FormatError(f"{self.path}: empty file, not a MindSpore checkpoint")
        try:
            records = self._scan()
        except _Corrupt as err:
            raise FormatError(f"{self.path}: not a readable MindSpore checkpoint (encrypted, "
                              f"truncated or corrupt): {err}") from None
        except FormatError as err:
            raise FormatError(f"{self.path}: {err}") from None
        self._group(records)

    def _scan(self) -> list[_Record]:
        """Walk the records, reading headers through a read-ahead window and seeking over
        content. Positions inside `buf` are relative to `start`."""
        records: list[_Record] = []
        size, read_at = self.size, self._src.read_at
        window, min_window = self._src.header_window, self._src.header_min
        start, buf = 0, b""
        pos = 0
        want = window
        while pos < size:
            if pos + 12 > start + len(buf):
                start, buf = pos, read_at(pos, want)
            i = pos - start
            try:
                if size - pos == CRC_TRAILER_LEN and buf[i:i + 7] == CRC_TRAILER:
                    self.crc_trailer = int.from_bytes(buf[i + 7:i + CRC_TRAILER_LEN], "big")
                    break
                if buf[i] != 0x0A:
                    raise _Corrupt(f"unexpected byte {buf[i]:#04x} at byte {pos}")
                n, body = _varint(buf, i + 1, i + 11)
                if start + body + n > size:
                    if records:
                        raise FormatError(f"truncated (record at byte {pos} needs "
                                          f"{start + body + n - size} more bytes)")
                    raise _Corrupt(f"first record claims {n} bytes, file has {size}")
                rec = _parse_value(buf, body, body + n)
            except _NeedMore:
                if start == pos and len(buf) < min(want, size - pos):
                    raise FormatError(f"truncated while being indexed (at byte {pos})")
                if start == pos:
                    if want >= _MAX_HEADER:
                        raise _Corrupt(f"record header at byte {pos} over {_MAX_HEADER} bytes")
                    want *= 4          # a long header: re-read it whole, bigger window
                start, buf = pos, read_at(pos, want)
                continue
            rec.offset += start
            records.append(rec)
            pos = start + body + n
            # after a record larger than the window the next header is alone in it: read little
            want = window if n < window else min_window
        return records

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
    """Streams records; with crc_check=True appends MindSpore's CRC32 trailer: the CRC32 of
    every record byte, which is the file's own running checksum (records start the file), so
    it is taken from the writer's summing rather than summed twice."""

    def __init__(self, path, metas: Sequence[TensorMeta], crc_check: bool = False,
                 config: ReshardConfig = DEFAULT):
        super().__init__(path, metas, config)
        self._crc_check = crc_check
        self._record_left = 0
        self._value_left = 0
        self._meta: TensorMeta | None = None

    def _begin_value(self, meta: TensorMeta, nbytes: int) -> None:
        self._meta, self._value_left, self._record_left = meta, nbytes, 0
        if nbytes == 0:
            # save_checkpoint writes no record at all for an empty tensor (its chunk loop is
            # empty), which loses the parameter; one empty record keeps it and loads fine.
            self._put(record_header(meta, 0))

    def _write_content(self, data: memoryview) -> None:
        while len(data):
            if self._record_left == 0:
                self._record_left = min(RECORD_BYTES, self._value_left)
                self._put(record_header(self._meta, self._record_left))
            take = min(self._record_left, len(data))
            self._put(data[:take])
            data = data[take:]
            self._record_left -= take
            self._value_left -= take

    def _finish(self) -> None:
        if self._crc_check:
            self._file.drain()   # every record byte summed
            self._file.write(CRC_TRAILER + self._file.crc32.to_bytes(10, "big"))


class CkptFormat(CheckpointFormat):
    """MindSpore's .ckpt: every dtype and 'str' values; no tensor of dims [0] (MindSpore reads
    it back as a scalar); an optional CRC32 trailer; MindFormers resumes from the set's folder."""
    name = "ckpt"
    extensions = (".ckpt",)
    reader = CkptReader
    writer = CkptWriter
    has_checksum = True
    mindspore_name = "ckpt"
    resume_loads_folder = True

    def refusal(self, dtype: str, shape=None) -> str | None:
        if shape is not None and dtype in STORAGE_DTYPES and tuple(shape) == (0,):
            return ("a tensor of shape [0] cannot be stored in .ckpt (MindSpore reads dims [0] "
                    "back as a scalar)")
        return None

    def embedded_crc(self, index: FileIndex) -> tuple[int, int] | None:
        if index.crc_trailer is None:
            return None
        return index.size - CRC_TRAILER_LEN, index.crc_trailer

    def crc_mismatch(self, location: str, expected: int, found: int) -> str:
        return crc_mismatch(location, expected, found)


FORMAT = CkptFormat()
