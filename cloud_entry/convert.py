"""This node's share of the conversion through the engine's plan: the plan from strategies names
the source files it reads, is completed with their headers (every check before the first write;
a remote source's headers by ranged GETs, before anything is downloaded), says per file whether
the conversion reads it in place or from a local copy downloaded while it converts, and is executed; its report
names the files written.

The engine converts every rank of this node's blocks in one call with one process per block
(process_num), so the memory bound (max_memory) is the engine's to keep for all of them.
"""
from __future__ import annotations

import logging
from typing import Callable

import reshard
from reshard.api import complete_plan, execute, plan_from_strategies
from reshard.plan import Plan

from reshard.blocks import Block

log = logging.getLogger(__name__)


def block_ranks(blocks: tuple[Block, ...]) -> list[int]:
    return [r for b in blocks for r in b.ranks]


def skeleton(source: reshard.SourceSet, src: reshard.Strategy | None, dst: reshard.Strategy | None,
             blocks: tuple[Block, ...], prefix: str, fmt: str,
             policy: reshard.PlanPolicy = reshard.PlanPolicy()) -> Plan:
    """The plan of this node's blocks from strategies alone: which source files they read
    (policy: what the full plan does with parameters the strategies and checkpoint disagree on)."""
    return plan_from_strategies(source, src, dst, dst_ranks=block_ranks(blocks), prefix=prefix, fmt=fmt,
                                policy=policy)


def replicas(source: reshard.SourceSet, src: reshard.Strategy | None, dst: reshard.Strategy | None,
             ranks: list[int], prefix: str, fmt: str,
             policy: reshard.PlanPolicy = reshard.PlanPolicy()) -> dict[str, str]:
    """Output name -> the output name, among `ranks`, of the rank whose file has the same bytes
    (data-parallel replicas: Plan.same_as of the plan from strategies)."""
    plan = plan_from_strategies(source, src, dst, dst_ranks=ranks, prefix=prefix, fmt=fmt, policy=policy)
    path = {rp.rank: rp.path for rp in plan.ranks}
    return {path[r]: path[first] for r, first in plan.same_as.items()}


def complete(plan: Plan, local_root: str) -> Plan:
    """The skeleton completed with the headers of the files it reads. A remote source: read in
    place by ranged GETs (a bad source fails here, before any transfer), and per file the
    engine's rule (reshard.plan.choose_mode) says whether the conversion reads it in place or
    from local_root, where the caller first fetches plan.files_in_mode("fetch")."""
    full = complete_plan(plan, local_root, source_mode="auto")
    for note in full.notes:
        log.info("%s", note)
    remote, fetched = full.files_in_mode("remote"), full.files_in_mode("fetch")
    if remote or fetched:
        log.info("source files: %d read in place by ranged GETs%s, %d downloaded while converting%s", len(remote),
                 f" ({', '.join(remote)})" if remote else "", len(fetched),
                 f" ({', '.join(fetched)})" if fetched else "")
    return full


def convert_blocks(plan: Plan, local_root: str, dst_root: str, blocks: tuple[Block, ...],
                   max_memory: int | None, log_dir: str,
                   on_file: Callable[[str, tuple[int, str]], None] | None = None,
                   download: list[str] | None = None, release: bool = False,
                   upload_to: str | None = None, upload_skip: frozenset[str] = frozenset()
                   ) -> reshard.TransformReport:
    """Write the ranks of a full plan (complete()), reading the fetched files under local_root
    and the others in place; on_file: told of each file as soon as it is complete, e.g. to
    upload it; download: fetched files not under local_root yet, downloaded there by the
    engine while it converts (each rank starts as soon as the bytes it reads are there);
    release: each removed once the ranks reading it are written (a cache not kept); upload_to:
    each rank also uploaded there while it is written, but those in upload_skip (on_file is
    told of the others only)."""
    process_num = max(1, len(blocks))
    log.info("converting ranks %s in %d process(es)", ",".join(map(str, block_ranks(blocks))), process_num)
    report = execute(plan, local_root, dst_root, process_num=process_num, max_memory=max_memory, log_dir=log_dir,
                     on_file=on_file, download=download or (), release=release,
                     upload_to=upload_to, upload_skip=upload_skip)
    log.info("converted ranks %s, reused %s (already complete and verified) in %.1fs",
             report.ranks_written or "none", report.ranks_skipped or "none", report.seconds)
    return report
