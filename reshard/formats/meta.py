"""Tensor metadata shared by every checkpoint format, and the one error type they raise.

dtype names are MindSpore's `tensor_type` strings because that is what a .ckpt stores and what
MindSpore's own loaders key on; safetensors codes are translated at the file boundary. Arrays
travel in a *storage* numpy dtype of the same item size so bytes are moved, never converted
(BFloat16 -> uint16: numpy 1.x has no bfloat16 and a float32 detour would change NaN payloads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class FormatError(ValueError):
    """A checkpoint file that cannot be read or written as asked. str(err) is one line that
    names the file (and the parameter when one is at fault)."""


# MindSpore tensor_type -> storage numpy dtype, for every type that can be sliced.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "Float64": np.dtype(np.float64),
    "Float32": np.dtype(np.float32),
    "Float16": np.dtype(np.float16),
    "BFloat16": np.dtype(np.uint16),
    "Int64": np.dtype(np.int64),
    "Int32": np.dtype(np.int32),
    "Int16": np.dtype(np.int16),
    "Int8": np.dtype(np.int8),
    "UInt64": np.dtype(np.uint64),
    "UInt32": np.dtype(np.uint32),
    "UInt16": np.dtype(np.uint16),
    "UInt8": np.dtype(np.uint8),
    "Bool": np.dtype(np.bool_),
}

# Values carried as opaque bytes: 'str' (a UTF-32 numpy string, dims [0]) and Int4 (two
# values per byte, so element regions do not map to byte regions).
RAW_DTYPES = frozenset({"str", "Int4"})

KNOWN_DTYPES = frozenset(STORAGE_DTYPES) | RAW_DTYPES


@dataclass(frozen=True)
class TensorMeta:
    """What a reader knows about one value before reading its bytes.

    raw_nbytes is only meaningful for RAW_DTYPES, whose size does not follow from the shape;
    it is excluded from equality so a meta built by the planner (which cannot know it) still
    equals the one a reader produced.
    """
    name: str
    dtype: str
    shape: tuple[int, ...]
    raw_nbytes: int | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.dtype not in KNOWN_DTYPES:
            raise FormatError(f"parameter {self.name!r}: unknown tensor_type {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def sliceable(self) -> bool:
        return self.dtype in STORAGE_DTYPES

    @property
    def storage(self) -> np.dtype:
        """numpy dtype the bytes travel in (uint8 for raw values)."""
        return STORAGE_DTYPES.get(self.dtype, np.dtype(np.uint8))

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Size of the value's content; None for a raw value of unknown size."""
        if self.sliceable:
            return self.numel * self.itemsize
        return self.raw_nbytes


def storage_view(array: np.ndarray, meta: TensorMeta) -> np.ndarray:
    """`array` reinterpreted in the storage dtype (e.g. a MindSpore/ml_dtypes bfloat16 array as
    uint16) so later copies move bits; refuses arrays whose item size differs."""
    storage = meta.storage
    if array.dtype == storage:
        return array
    # kind 'V' with no fields covers MindSpore's / ml_dtypes' bfloat16; strings, objects and
    # structured records are never tensor data.
    if (array.dtype.itemsize != storage.itemsize or array.dtype.kind in "OUS"
            or array.dtype.fields is not None):
        raise FormatError(f"parameter {meta.name!r}: array dtype {array.dtype} does not match "
                          f"{meta.dtype}")
    if array.ndim == 0:
        return array.reshape(1).view(storage).reshape(())
    return array.view(storage)
