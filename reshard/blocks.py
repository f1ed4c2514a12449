"""Rank blocks: `transform_process_num` splits the destination ranks into contiguous blocks.

The first rank of a block (its leader) converts every rank of the block; a node converts the
blocks whose leader it hosts. Rules from SPEC.md "Rank blocks"; pure functions, no I/O.
MindFormers' rule, used by the job entry (which blocks a node converts) and by the offline
tool's `--rank_id` alike: it lives in the engine so both ask one place.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from reshard.errors import ReshardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    index: int
    ranks: tuple[int, ...]

    @property
    def leader(self) -> int:
        return self.ranks[0]

    def __str__(self) -> str:
        return f"block {self.index} (ranks {self.ranks[0]}-{self.ranks[-1]})"


@dataclass(frozen=True)
class BlockPlan:
    process_num: int                 # after clamping / raising
    blocks: tuple[Block, ...]
    warnings: tuple[str, ...] = ()

    def led_by(self, ranks: Iterable[int]) -> tuple[Block, ...]:
        """Blocks whose leader is one of `ranks` (a node's ranks): the ones that node converts."""
        mine = set(ranks)
        return tuple(b for b in self.blocks if b.leader in mine)


def plan_blocks(world: int, process_num: int, num_nodes: int = 1, shared_disk: bool = True) -> BlockPlan:
    if world < 1:
        raise ReshardError(f"world size {world}: must be >= 1")
    p = process_num
    warnings: list[str] = []
    if p < 1:
        raise ReshardError(f"transform_process_num={p}: must be >= 1")
    if p > world:
        warnings.append(f"transform_process_num={p} is more than the world size {world}: using {world}")
        p = world
    if world % p:
        raise ReshardError(f"transform_process_num={p} does not divide the world size {world}")
    if not shared_disk and p < num_nodes:
        warnings.append(f"transform_process_num={p} is less than the node count {num_nodes} and there "
                        f"is no shared disk (--shared_dir): using {num_nodes} so each node converts")
        p = num_nodes
        if world % p:  # nodes x cards: cannot happen with equal nodes, kept for rank tables
            raise ReshardError(f"node count {p} does not divide the world size {world}")
    size = world // p
    blocks = tuple(Block(i, tuple(range(i * size, (i + 1) * size))) for i in range(p))
    for w in warnings:
        log.warning(w)
    return BlockPlan(p, blocks, tuple(warnings))
