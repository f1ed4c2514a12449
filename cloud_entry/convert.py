"""This node's share of the conversion: its blocks through the engine, then their markers.

The engine converts every rank of this node's blocks in one call with one process per block
(process_num), so the memory bound (max_memory) is the engine's to keep for all of them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import reshard

from cloud_entry.blocks import Block

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Conversion:
    src_checkpoint: str          # local: complete file or folder with rank_<r>/
    dst_checkpoint: str          # local: transformed_checkpoint/<ckpt_name>
    src_strategy: str | None
    dst_strategy: str | None
    prefix: str
    fmt: str
    max_memory: int | None
    log_dir: str


def block_ranks(blocks: tuple[Block, ...]) -> list[int]:
    return [r for b in blocks for r in b.ranks]


def convert_blocks(conv: Conversion, blocks: tuple[Block, ...]) -> reshard.TransformReport:
    ranks = block_ranks(blocks)
    kwargs = dict(src_strategy=conv.src_strategy, dst_strategy=conv.dst_strategy, prefix=conv.prefix,
                  fmt=conv.fmt, process_num=max(1, len(blocks)), max_memory=conv.max_memory,
                  dst_ranks=ranks, log_dir=conv.log_dir)
    # The engine logs its plan and expected peak memory (within max_memory) before converting.
    log.info("converting ranks %s in %d process(es)", ",".join(map(str, ranks)), kwargs["process_num"])
    report = reshard.transform(conv.src_checkpoint, conv.dst_checkpoint, **kwargs)
    log.info("converted ranks %s, reused %s (already complete and verified) in %.1fs",
             report.ranks_written or "none", report.ranks_skipped or "none", report.seconds)
    return report
