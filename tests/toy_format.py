"""A toy checkpoint format, added to the engine as a format plug-in must be: this one file plus
one registration (RESHARD_FORMATS=toy_format:FORMAT, or a line in reshard/formats/registry.py).

A `.toyckpt` file is the values' bytes back to back (storage dtype, C order), then a JSON index
[[name, tensor_type, shape, offset, length], ...], its length (8 bytes, little endian) and the
magic b"TOYCKPT1". The index is at the end, so the writer streams values of any size without
knowing them up front ('str' values too). It stores every dtype, carries no checksum, and MindSpore
cannot write it (`--engine mindspore` refuses it).

A distributed toy checkpoint is either the usual rank_<r>/ folders or a flat folder the format
lays out itself, as MindFormers' Checkpoint 2.0 names its shards: `<prefix>-<r>-of-<N>.toyckpt`
is source rank r of N (CheckpointFormat.folder_source).
"""
from __future__ import annotations

import json
import re

from reshard.formats.base import CheckpointReader, CheckpointWriter
from reshard.formats.interface import CheckpointFormat
from reshard.formats.meta import STORAGE_DTYPES, FormatError, TensorMeta
from reshard.formats.regions import Extent
from reshard.errors import ReshardError
from reshard.sources import SourceSet

SHARD = re.compile(r"^(?:.+-)?(\d+)-of-(\d+)\.toyckpt$")

MAGIC = b"TOYCKPT1"
TAIL = 8 + len(MAGIC)


class ToyReader(CheckpointReader):
    def _index(self) -> None:
        tail = self._src.read_at(max(0, self.size - TAIL), TAIL)
        if len(tail) != TAIL or tail[8:] != MAGIC:
            raise FormatError(f"{self.path}: not a toy checkpoint (no {MAGIC!r} at its end)")
        n = int.from_bytes(tail[:8], "little")
        if n > self.size - TAIL:
            raise FormatError(f"{self.path}: truncated (an index of {n} bytes in {self.size})")
        try:
            entries = json.loads(self._src.read_at(self.size - TAIL - n, n))
            for name, dtype, shape, offset, length in entries:
                raw = None if dtype in STORAGE_DTYPES else length
                self.metas[name] = TensorMeta(name, dtype, tuple(shape), raw_nbytes=raw)
                self._extents[name] = Extent(((offset, length),))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{self.path}: not a readable toy index ({exc})") from None


class ToyWriter(CheckpointWriter):
    def __init__(self, path, metas, **options):
        super().__init__(path, metas, **options)
        self._entries: list[list] = []

    def _begin_value(self, meta: TensorMeta, nbytes: int) -> None:
        self._entries.append([meta.name, meta.dtype, list(meta.shape), self._file.size, nbytes])

    def _finish(self) -> None:
        index = json.dumps(self._entries).encode()
        self._put(index + len(index).to_bytes(8, "little") + MAGIC)


class ToyFormat(CheckpointFormat):
    name = "toy"
    extensions = (".toyckpt",)
    reader = ToyReader
    writer = ToyWriter

    def folder_source(self, root, entries, *, step=None, partial=False):
        shards = {}
        for e in entries:
            m = SHARD.match(e.name)
            if m:
                shards[int(m.group(1))] = (e.name, int(m.group(2)))
        if not shards:
            return None
        if step is not None:
            raise ReshardError(f"--step {step}: {root} is a flat toy checkpoint, which holds one step")
        worlds = sorted({n for _, n in shards.values()})
        if len(worlds) > 1 or max(shards) >= worlds[0]:
            raise ReshardError(f"{root}: its toy shards disagree on the rank count ({worlds})")
        missing = [r for r in range(worlds[0]) if r not in shards]
        if missing and not partial:
            raise ReshardError(f"{root}: toy shard(s) of rank(s) {missing} missing")
        return SourceSet(root, False, {r: name for r, (name, _) in sorted(shards.items())})


FORMAT = ToyFormat()
