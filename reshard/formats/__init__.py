"""Checkpoint storage behind reader/writer interfaces, one format per module (.ckpt and
.safetensors built in; formats.registry lists them and takes more, formats.interface says what a
format declares).

TensorMeta.dtype is MindSpore's tensor_type name ("Float32", "Float16", "BFloat16", "Int64",
"Bool", "str", ...). Arrays travel in a *storage* numpy dtype of the same item size (BFloat16 ->
np.uint16) so no value is ever converted.

    open_reader(location) -> CheckpointReader       # by suffix (registry.by_file); a local
                                                    # path, or a URL read by ranged GETs
        reader.metas: dict[str, TensorMeta]         # in file order
        reader.read(name, region=None, out=None) -> np.ndarray
            region: tuple of (start, stop) per dimension; reads only the bytes it needs;
            out: preallocated region-shaped destination (any strides)
        reader.read_raw(name) -> bytes              # 'str' / Int4 values (or any value)
        reader.metadata                             # safetensors __metadata__ ({} for .ckpt)
        reader.close(); usable as a context manager
    open_writer(path, metas, fmt=None, **options) -> CheckpointWriter   # fmt from suffix
        options: ckpt crc_check=False; safetensors metadata={"format": "ms"}
        writer.write(name, chunk)   # tensors in metas order; a tensor may come as several
                                    # consecutive axis-0 chunks; raw values as bytes
        writer.commit()             # fsync, rename temp -> path
        writer.abort()              # remove the temporary file
        context manager: commit on clean exit, abort on exception
"""
from __future__ import annotations

import os
from typing import Sequence

from reshard.config import DEFAULT, ReshardConfig
from reshard.formats import registry
from reshard.formats.base import CheckpointReader, CheckpointWriter, FileIndex
from reshard.formats.interface import CheckpointFormat
from reshard.formats.meta import FormatError, TensorMeta

__all__ = ["CheckpointFormat", "CheckpointReader", "CheckpointWriter", "FileIndex", "FormatError", "TensorMeta",
           "format_of", "open_reader", "open_writer", "registry"]


def format_of(path: str | os.PathLike) -> str:
    """The name of the format of a file, from the ending of its name (registry.by_file)."""
    fmt = registry.by_file(os.fspath(path))
    if fmt is None:
        raise FormatError(f"{os.fspath(path)}: not a {' or '.join(registry.extensions())} file name")
    return fmt.name


def open_reader(location: str | os.PathLike, *, s3_config=None,
                index: FileIndex | None = None, growing=None,
                config: ReshardConfig = DEFAULT) -> CheckpointReader:
    """A reader of a local file, or of an obs:// / s3:// object read in place by ranged GETs
    (s3_config: obs_io's configuration for those; None: the current one). index: what an
    earlier reader of the same file found (reader.index()): its headers are not read again.
    growing: a formats.growing.Growing for a local file still being downloaded (reshard.fetch;
    index required): reads wait for their bytes. config: the run's ReshardConfig (how an
    object is read in place)."""
    reader = registry.get(format_of(location)).reader
    return reader(location, s3_config=s3_config, index=index, growing=growing, config=config)


def open_writer(path: str | os.PathLike, metas: Sequence[TensorMeta], fmt: str | None = None,
                **options) -> CheckpointWriter:
    fmt = fmt or format_of(path)
    if fmt not in registry.names():
        raise FormatError(f"{os.fspath(path)}: unknown checkpoint format {fmt!r}")
    return registry.get(fmt).writer(path, metas, **options)
