"""How one parameter is laid out over the devices of one pipeline stage.

Every MindSpore layout (tensor map, nested tensor map, optimizer shard) cuts each tensor dimension
into equal blocks, and each device holds one block per dimension. So a layout reduces to a grid
(`splits`, blocks per dimension) and a map local rank -> block index; the planner only
intersects grids. The block a rank holds follows MindSpore's own conversion
(mindspore/parallel/_tensor.py: _get_tensor_strategy, _expand_layout,
_construct_tensor_layout_for_opt_shard), which is the reference our output is compared with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache


class LayoutError(ValueError):
    """A layout the engine cannot convert; the message names what is wrong (no parameter name:
    the caller adds it)."""


@dataclass(frozen=True)
class TensorLayout:
    """One parameter's layout in one pipeline stage.

    tensor_map[d]: device axes (counted from the right of dev_matrix, outer first) that split
    tensor dimension d; () = not split. opt_shard_size: how many replicas further split dimension
    0 of the slice (parallel optimizer); 1 = none (already resolved from MindSpore's 0 / -1)."""
    dev_matrix: tuple[int, ...]
    tensor_map: tuple[tuple[int, ...], ...]
    opt_shard_size: int = 1
    opt_shard_step: int = 0
    stage: int = 0

    @property
    def devices(self) -> int:
        return math.prod(self.dev_matrix)

    def _axis(self, k: int) -> int:
        """dev_matrix index of device axis k (counted from the right)."""
        return len(self.dev_matrix) - 1 - k

    @cached_property
    def model_splits(self) -> tuple[int, ...]:
        return tuple(math.prod(self.dev_matrix[self._axis(k)] for k in axes)
                     for axes in self.tensor_map)

    @property
    def splits(self) -> tuple[int, ...]:
        """Blocks per tensor dimension (dimension 0 includes the optimizer shard)."""
        s = self.model_splits
        return (s[0] * self.opt_shard_size,) + s[1:] if s else s

    @cached_property
    def _opt_axes(self) -> tuple[tuple[int, int], ...]:
        """(dev_matrix index, size used) of the replica axes the optimizer shard spreads over,
        innermost first; the last one may be used only in its inner part."""
        if self.opt_shard_size <= 1:
            return ()
        used = {self._axis(k) for axes in self.tensor_map for k in axes}
        remaining, out = self.opt_shard_size, []
        for i in reversed(range(len(self.dev_matrix))):
            size = self.dev_matrix[i]
            if i in used or size <= 1:
                continue
            if remaining >= size:
                if remaining % size:
                    raise LayoutError(f"optimizer shard size {self.opt_shard_size} does not divide "
                                      f"over dev_matrix {list(self.dev_matrix)}")
                out.append((i, size))
                remaining //= size
            else:
                if size % remaining:
                    raise LayoutError(f"optimizer shard size {self.opt_shard_size} does not divide "
                                      f"over dev_matrix {list(self.dev_matrix)}")
                out.append((i, remaining))
                remaining = 1
            if remaining == 1:
                break
        if remaining != 1:
            raise LayoutError(f"optimizer shard size {self.opt_shard_size} exceeds the replicas of "
                              f"dev_matrix {list(self.dev_matrix)} tensor_map {self.tensor_map}")
        return tuple(out)

    def block_of(self, local_rank: int) -> tuple[int, ...]:
        """Block index per tensor dimension held by a rank of this stage."""
        coord, r = [0] * len(self.dev_matrix), local_rank
        for i in reversed(range(len(self.dev_matrix))):
            coord[i] = r % self.dev_matrix[i]
            r //= self.dev_matrix[i]
        block = []
        for axes in self.tensor_map:
            idx = 0
            for k in axes:
                idx = idx * self.dev_matrix[self._axis(k)] + coord[self._axis(k)]
            block.append(idx)
        if block and self.opt_shard_size > 1:
            opt, mult = 0, 1
            for i, used in self._opt_axes:
                opt += (coord[i] % used) * mult
                mult *= used
            block[0] = block[0] * self.opt_shard_size + opt
        return tuple(block)

    @property
    def replicas(self) -> dict[tuple[int, ...], tuple[int, ...]]:
        """block index -> local ranks holding it. Computed once per distinct grid and block
        assignment (the stage aside), not per parameter: a 4096-rank strategy has thousands of
        parameters but a handful of distinct layouts. Treat as read-only (shared)."""
        return _replicas(self.dev_matrix, self.tensor_map, self.opt_shard_size)

    def full_shape(self, slice_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(slice_shape) != len(self.tensor_map):
            raise LayoutError(f"slice shape {list(slice_shape)} has {len(slice_shape)} dimensions, "
                              f"tensor_map has {len(self.tensor_map)}")
        return tuple(n * s for n, s in zip(slice_shape, self.splits))

    def check_divides(self, full_shape: tuple[int, ...]) -> None:
        if len(full_shape) != len(self.tensor_map):
            raise LayoutError(f"shape {list(full_shape)} has {len(full_shape)} dimensions, "
                              f"tensor_map has {len(self.tensor_map)}")
        for d, (n, s) in enumerate(zip(full_shape, self.splits)):
            if n % s:
                raise LayoutError(f"dimension {d} of shape {list(full_shape)} does not split "
                                  f"evenly in {s}")

    def region(self, block: tuple[int, ...], full_shape: tuple[int, ...]
               ) -> tuple[tuple[int, int], ...]:
        return tuple((b * (n // s), (b + 1) * (n // s))
                     for b, n, s in zip(block, full_shape, self.splits))

    def same_blocks(self, other: "TensorLayout") -> bool:
        """Same grid and same block for every local rank (stage aside)."""
        if self is other:
            return True
        return self.splits == other.splits and self.devices == other.devices and \
            self.replicas == other.replicas


def make_layout(dev_matrix, tensor_map, opt_shard_size: int, opt_shard_step: int,
                stage: int = 0) -> TensorLayout:
    """From MindSpore's stored fields: tensor_map entries are ints or (nested) lists of ints
    with -1 = not split; opt size -1 = every replica, 0 = none. Equal fields give the same
    (immutable) object, so a strategy of thousands of parameters holds a few layouts and their
    cached properties are computed once."""
    dev = tuple(int(x) for x in dev_matrix)
    tm = []
    for entry in tensor_map:
        axes = entry if isinstance(entry, (list, tuple)) else [entry]
        tm.append(tuple(int(k) for k in axes if int(k) != -1))
    return _make_layout(dev, tuple(tm), int(opt_shard_size), int(opt_shard_step), int(stage))


@lru_cache(maxsize=4096)
def _make_layout(dev: tuple[int, ...], tm: tuple[tuple[int, ...], ...], size: int, step: int,
                 stage: int) -> TensorLayout:
    """make_layout on normalised (hashable) fields; errors are raised, not cached."""
    for axes in tm:
        for k in axes:
            if not 0 <= k < len(dev):
                raise LayoutError(f"tensor_map entry {k} outside dev_matrix {list(dev)}")
    base = TensorLayout(dev, tm, 1, 0, stage)
    if size == -1:
        size = base.devices // math.prod(base.model_splits or (1,))
    if size > 1 and step != 0:
        lay = TensorLayout(dev, tm, size, step, stage)
        lay._opt_axes  # validate now
        return lay
    return base


@lru_cache(maxsize=1024)
def _replicas(dev_matrix: tuple[int, ...], tensor_map: tuple[tuple[int, ...], ...],
              opt_shard_size: int) -> dict[tuple[int, ...], tuple[int, ...]]:
    """TensorLayout.replicas for these fields (block_of does not depend on the stage or the
    optimizer shard step)."""
    lay = TensorLayout(dev_matrix, tensor_map, opt_shard_size, 0)
    out: dict[tuple[int, ...], list[int]] = {}
    for r in range(lay.devices):
        out.setdefault(lay.block_of(r), []).append(r)
    return {b: tuple(rs) for b, rs in out.items()}


@lru_cache(maxsize=64)
def complete_layout(ndim: int) -> TensorLayout:
    """A whole tensor on one device (a complete checkpoint); one shared object per ndim."""
    return TensorLayout((1,), tuple(() for _ in range(ndim)))
