"""Whether two source files hold the same value of one parameter, read in bounded slices.

The planner's checks that a layout matches the bytes (reshard.plan._Planner.check_copies) ask
this of pairs of source ranks: copies that a strategy says are replicas must be equal; copies
of a parameter no strategy describes must be equal to be carried (else it is sharded and the
strategy does not say how); members of an optimizer-shard group must not all be equal (else the
checkpoint was saved without that sharding). A copy is compared on ReshardConfig.sample_bytes
spread over sample_windows windows (the whole value when it is smaller), which tells real shards of a
weight apart at once and costs a few reads, not a second pass over the checkpoint. The limit,
documented in the README: copies equal on every sampled window but different elsewhere are
taken for equal; shards that are equal everywhere (an all-zero weight) cannot be told from
replicas by any comparison.

tied copies of a complete folder (same name in two files, no index) are compared whole:
same_bytes.
"""
from __future__ import annotations

import math

from .config import DEFAULT, ReshardConfig
from .formats import CheckpointReader, TensorMeta

Region = tuple[tuple[int, int], ...]


def _window(shape: tuple[int, ...], itemsize: int, start: int, budget: int) -> Region:
    """A box of at most `budget` bytes starting at row `start` of dimension 0: whole rows when
    they fit, else one row cut down the same way in the next dimension."""
    region: list[tuple[int, int]] = []
    for d, n in enumerate(shape):
        inner = math.prod(shape[d + 1:]) * itemsize
        first = start if d == 0 else 0
        if inner <= budget or d == len(shape) - 1:
            count = max(1, min(n - first, budget // max(1, inner)))
            region.append((first, first + count))
            region.extend((0, m) for m in shape[d + 1:])
            return tuple(region)
        region.append((first, first + 1))
    return tuple(region)


def sample_regions(meta: TensorMeta, config: ReshardConfig = DEFAULT) -> list[Region]:
    """The windows a copy of `meta` is compared on: the whole value when it holds at most
    config.sample_bytes, else config.sample_windows boxes spread over dimension 0 (first and
    last row included), sample_bytes in all."""
    shape = meta.shape
    windows = config.sample_windows
    if not shape or meta.nbytes is None or meta.nbytes <= config.sample_bytes or shape[0] == 0:
        return [tuple((0, n) for n in shape)]
    budget = config.sample_bytes // windows
    rows = shape[0]
    span = _window(shape, meta.itemsize, 0, budget)[0][1]   # rows per window
    starts = sorted({round(i * (rows - span) / max(1, windows - 1)) for i in range(windows)})
    return [_window(shape, meta.itemsize, s, budget) for s in starts]


def sample(reader: CheckpointReader, name: str, config: ReshardConfig = DEFAULT) -> bytes:
    """The sampled bytes of one value (raw values whole: strings, Int4)."""
    meta = reader.metas[name]
    if not meta.sliceable or not meta.shape:
        return reader.read_raw(name)
    return b"".join(reader.read(name, r).tobytes() for r in sample_regions(meta, config))


def same_bytes(a: CheckpointReader, b: CheckpointReader, meta: TensorMeta,
               config: ReshardConfig = DEFAULT) -> bool:
    """Whether two files hold the same bytes for one value, compared whole in slices of at
    most config.compare_slice_bytes."""
    if not meta.sliceable or not meta.shape:
        return a.read_raw(meta.name) == b.read_raw(meta.name)
    row = max(1, meta.nbytes // max(1, meta.shape[0]))
    step = max(1, config.compare_slice_bytes // row)
    rest = tuple((0, n) for n in meta.shape[1:])
    for r0 in range(0, meta.shape[0], step):
        region = ((r0, min(meta.shape[0], r0 + step)),) + rest
        if a.read(meta.name, region).tobytes() != b.read(meta.name, region).tobytes():
            return False
    return True
