"""safetensors: 8-byte little-endian header length, a JSON header, then the data area.

The writer knows every meta up front, so it writes the header first and streams the data in
header order (the order MindSpore's own reader, transform_safetensors.read_metadata, insists
on: offsets must follow the JSON order with no holes). Like save_checkpoint(format=
"safetensors") it records {"format": "ms"} in __metadata__. Int4 values (marked by a per-name
metadata entry "Int4") are read as raw bytes but not written.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Sequence

from obs_io.cleanup import on_failure
from reshard.config import DEFAULT, ReshardConfig
from reshard.formats.base import CheckpointReader, CheckpointWriter
from reshard.formats.interface import CheckpointFormat
from reshard.formats.meta import STORAGE_DTYPES, FormatError, TensorMeta
from reshard.formats.regions import Extent
from reshard.errors import ReshardError
from reshard.sources import Note, SourceSet

TO_CODE = {"Float64": "F64", "Float32": "F32", "Float16": "F16", "BFloat16": "BF16",
           "Int64": "I64", "Int32": "I32", "Int16": "I16", "Int8": "I8",
           "UInt64": "U64", "UInt32": "U32", "UInt16": "U16", "UInt8": "U8", "Bool": "BOOL"}
FROM_CODE = {code: name for name, code in TO_CODE.items()}
_MAX_HEADER = 100 * 1024 * 1024   # the safetensors library's own limit
DEFAULT_METADATA = {"format": "ms"}
# A sharded safetensors folder's index: Hugging Face's model.safetensors.index.json
# ({"weight_map": {name: file}}) or MindFormers' param_name_map.json (the same map, with or
# without the "weight_map" level).
INDEX_SUFFIX = "index.json"
MINDFORMERS_INDEX = "param_name_map.json"
# Beside a folder mindspore.unified_safetensors wrote (part<k>.safetensors and
# param_name_map.json): the values no strategy describes (global_step, epoch_num, step_num,
# loss_scale, ...), which its index does not name and MindSpore's loader gives every rank.
HYPER_PARAM_FILE = "hyper_param.safetensors"


class SafetensorsReader(CheckpointReader):
    def _index(self) -> None:
        first = self._src.read_at(0, self._src.header_window)   # the header too, when small
        head = first[:8]
        if len(head) < 8:
            raise FormatError(f"{self.path}: not a safetensors file (only {self.size} bytes)")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or 8 + n > self.size:
            raise FormatError(f"{self.path}: not a readable safetensors file (header length {n}"
                              f" for a file of {self.size} bytes: truncated or corrupt)")
        raw = first[8:8 + n] if 8 + n <= len(first) else self._src.read_at(8, n)
        try:
            header = json.loads(raw.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except ValueError as err:
            raise FormatError(f"{self.path}: not a readable safetensors file "
                              f"(bad JSON header: {err})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        entries = []
        for name, info in header.items():
            try:
                code, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{self.path}: parameter {name!r}: malformed header entry") \
                    from None
            if self.metadata.get(name) == "Int4":
                dtype = "Int4"
            elif code in FROM_CODE:
                dtype = FROM_CODE[code]
            else:
                raise FormatError(f"{self.path}: parameter {name!r}: unsupported dtype {code!r}")
            try:
                meta = TensorMeta(name, dtype, shape,
                                  raw_nbytes=None if dtype in STORAGE_DTYPES else end - start)
                fits = 0 <= start <= end and not (meta.sliceable and end - start != meta.nbytes)
            except (TypeError, ValueError):
                raise FormatError(f"{self.path}: parameter {name!r}: malformed header entry") \
                    from None
            if not fits:
                raise FormatError(f"{self.path}: parameter {name!r}: data_offsets {[start, end]}"
                                  f" do not fit {code}{list(shape)}")
            if data_start + end > self.size:
                raise FormatError(f"{self.path}: truncated (parameter {name!r} ends at byte "
                                  f"{data_start + end}, file has {self.size})")
            entries.append((start, meta, Extent(((data_start + start, end - start),))))
        for _, meta, extent in sorted(entries, key=lambda e: e[0]):   # physical order
            self.metas[meta.name] = meta
            self._extents[meta.name] = extent


class SafetensorsWriter(CheckpointWriter):
    def __init__(self, path, metas: Sequence[TensorMeta],
                 metadata: dict[str, str] | None = None, config: ReshardConfig = DEFAULT):
        super().__init__(path, metas, config)
        with on_failure(self.abort):
            self._file.write(header_bytes(self.metas, metadata, self.path))

    def _begin_value(self, meta: TensorMeta, nbytes: int) -> None:
        pass


def header_bytes(metas: Sequence[TensorMeta], metadata: dict[str, str] | None,
                 path: str) -> bytes:
    """Length prefix + JSON header, padded with spaces to 8 bytes as the library pads it (so
    the data area, and every tensor of the usual dtypes, stays aligned)."""
    meta_block = dict(DEFAULT_METADATA if metadata is None else metadata)
    header: dict[str, object] = {}
    offset = 0
    for meta in metas:
        if not meta.sliceable:
            raise FormatError(f"{path}: parameter {meta.name!r}: {meta.dtype} values cannot be "
                              "stored in safetensors")
        header[meta.name] = {"dtype": TO_CODE[meta.dtype], "shape": list(meta.shape),
                             "data_offsets": [offset, offset + meta.nbytes]}
        offset += meta.nbytes
    if meta_block:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta_block.items()):
            raise FormatError(f"{path}: __metadata__ keys and values must be strings")
        header = {"__metadata__": meta_block, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class SafetensorsFormat(CheckpointFormat):
    """safetensors as MindSpore saves it: the dtypes of TO_CODE only (no 'str' or Int4 value);
    a folder of shards may have an index (Hugging Face's or MindFormers'), and a
    unified_safetensors folder its training state in HYPER_PARAM_FILE."""
    name = "safetensors"
    extensions = (".safetensors",)
    reader = SafetensorsReader
    writer = SafetensorsWriter
    mindspore_name = "safetensors"

    def refusal(self, dtype: str, shape=None) -> str | None:
        if dtype is not None and dtype not in TO_CODE:
            return f"a {dtype} value cannot be stored in safetensors"
        return None

    def is_index(self, file_name: str) -> bool:
        return file_name.endswith(INDEX_SUFFIX) or file_name == MINDFORMERS_INDEX

    def apply_index(self, source: SourceSet, data: bytes | str) -> SourceSet:
        """The index decides which file holds each tensor; files it does not name are left out
        (with a note), except HYPER_PARAM_FILE, whose values go into every destination rank."""
        where = source.path_of(source.index_name)
        index = _parse_index(data, where)
        present = set(source.files.values())
        for name, file in index.items():
            if file not in present:
                raise ReshardError(f"{where}: parameter {name} is in {file}, which is not a "
                                   f".safetensors file of {source.root}")
        named = sorted(set(index.values()))
        unindexed = (HYPER_PARAM_FILE,) if HYPER_PARAM_FILE in present - set(named) else ()
        notes = list(source.notes)
        left_out = sorted(present - set(named) - set(unindexed))
        if left_out:
            notes.append(Note(logging.INFO, f"{source.root}: {source.index_name} names {len(named)} "
                                            f"of {len(present)} files; ignoring "
                                            f"{', '.join(left_out)}"))
        if unindexed:
            notes.append(Note(logging.INFO, f"{source.root}: {HYPER_PARAM_FILE} (values no strategy "
                                            f"describes, such as global_step) goes into every "
                                            f"destination rank"))
        return replace(source, files=dict(enumerate(named + list(unindexed))), index=index,
                       notes=tuple(notes), unindexed=unindexed)


FORMAT = SafetensorsFormat()


def _parse_index(data: bytes | str, where: str) -> dict[str, str]:
    try:
        content = json.loads(data)
        if isinstance(content, dict) and isinstance(content.get("weight_map"), dict):
            content = content["weight_map"]
        if not isinstance(content, dict) or not content or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in content.items()):
            raise ValueError("expected a map of parameter names to file names")
    except ValueError as e:
        raise ReshardError(f"{where}: not a safetensors index ({' '.join(str(e).split())})") \
            from None
    return dict(content)
