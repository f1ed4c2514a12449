"""This node's share of the conversion, as a request to the engine's one orchestrator
(reshard.run): the job decides what is the job's (which blocks, where its cache and output are,
how converted ranks go up to remote_save_url) and the engine does the rest in its documented
order (plan, complete with every check before the first write, stage, finish, execute).

The engine converts every rank of this node's blocks in one call with one process per block
(ReshardConfig.process_num), so the memory bound (max_memory) is the engine's to keep for all
of them.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil

import reshard
from reshard.blocks import Block
from reshard.config import ReshardConfig
from reshard.execute import rank_checksum
from reshard.plan import Plan
from reshard.run import Request, Stage

from cloud_entry import sync

log = logging.getLogger(__name__)


def block_ranks(blocks: tuple[Block, ...]) -> list[int]:
    return [r for b in blocks for r in b.ranks]


class CacheStage(Stage):
    """This node's cache of a remote source (root): a file an earlier run downloaded from the
    same object is not downloaded again (sync.cache_source), what arrived is recorded after
    the run (sync.record_cached), and after a success the cache goes unless kept
    (--keep_source_cache: hundreds of GB on a 70B source). A local source is read where it is."""

    def __init__(self, source: sync.Source, root: str, keep: bool):
        super().__init__(root)
        self.source, self.keep = source, keep
        self.fetched: list[str] = []

    def prepare(self, plan: Plan) -> list[str]:
        self.fetched = plan.files_in_mode("fetch")
        return sync.cache_source(self.source, self.fetched, self.root)[1]

    def close(self, plan: Plan, ok: bool) -> None:
        sync.record_cached(self.source, self.fetched, self.root)   # what did arrive is reused
        if ok and self.source.remote and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
            log.info("removed the local copy of the source (%s); --keep_source_cache=True keeps it", self.root)


def request(source: sync.Source, src: reshard.Strategy | None, dst: reshard.Strategy | None,
            blocks: tuple[Block, ...], prefix: str, fmt: str, cache: str, *,
            policy: reshard.PlanPolicy = reshard.PlanPolicy(), dst_root: str = "",
            keep_cache: bool = True) -> Request:
    """The engine's request for this node's blocks: the source read in place or fetched into
    `cache` by the engine's rule (reshard.plan.choose_mode), the ranks written to dst_root;
    policy: what the plan does with parameters the strategies and checkpoint disagree on."""
    # its notes (the step or file chosen) were logged when the job classified it (sync.inspect_source)
    files = dataclasses.replace(source.files, notes=())
    return Request(files, src, dst, dst_root, CacheStage(source, cache, keep_cache),
                   tuple(block_ranks(blocks)), prefix, fmt, policy, "auto")


def config(blocks: tuple[Block, ...], max_memory: int | None, log_dir: str,
           keep_cache: bool) -> ReshardConfig:
    """One process per block, within max_memory; a cache not kept is released file by file."""
    return ReshardConfig(max(1, len(blocks)), max_memory, log_dir=log_dir,
                         release_downloads=not keep_cache)


class JobSubscriber(reshard.Subscriber):
    """The job's side of a conversion: its log lines, and the converted ranks' way up to
    remote_root (None: none). overlap: the engine uploads each rank while it is written
    (Request.upload_to) and this uploads the others (kept from before, or listed in the
    remote manifest already: upload_skip, uploaded only if changed) as soon as each is done,
    while the next converts; without overlap every rank goes up after the conversion."""

    def __init__(self, local_root: str, remote_root: str | None, overlap: bool):
        self.local_root, self.remote_root = local_root, remote_root
        self.uploader = sync.RankUploader(local_root, remote_root) if remote_root and overlap else None

    @property
    def upload_to(self) -> str | None:
        return self.remote_root if self.uploader is not None else None

    @property
    def upload_skip(self) -> frozenset[str]:
        return self.uploader.recorded if self.uploader is not None else frozenset()

    def on_plan(self, plan: Plan) -> None:
        remote, fetched = plan.files_in_mode("remote"), plan.files_in_mode("fetch")
        if remote or fetched:
            log.info("source files: %d read in place by ranged GETs%s, %d downloaded while converting%s",
                     len(remote), f" ({', '.join(remote)})" if remote else "", len(fetched),
                     f" ({', '.join(fetched)})" if fetched else "")

    def on_start(self, finished) -> None:
        log.info("converting ranks %s in %d process(es)", ",".join(str(rp.rank) for rp in finished.plan.ranks),
                 finished.config.process_num)

    def on_rank_done(self, rank, uploaded: bool) -> None:
        if self.uploader is not None and not uploaded:
            self.uploader.submit(rank.path, rank_checksum(self.local_root, rank))

    def finish(self, report: reshard.TransformReport | None) -> None:
        if self.uploader is not None:
            self.uploader.finish()
        if report is None:
            return
        log.info("converted ranks %s, reused %s (already complete and verified) in %.1fs",
                 report.ranks_written or "none", report.ranks_skipped or "none", report.seconds)
        if self.remote_root and self.uploader is None:   # after the whole conversion
            sync.upload_ranks(self.local_root, self.remote_root, report.checksums)


def replicas(source: reshard.SourceSet, src: reshard.Strategy | None, dst: reshard.Strategy | None,
             ranks: list[int], prefix: str, fmt: str,
             policy: reshard.PlanPolicy = reshard.PlanPolicy()) -> dict[str, str]:
    """Output name -> the output name, among `ranks`, of the rank whose file has the same bytes
    (data-parallel replicas: Plan.same_as of the plan from strategies)."""
    plan = reshard.plan_from_strategies(source, src, dst, dst_ranks=ranks, prefix=prefix, fmt=fmt,
                                        policy=policy)
    path = {rp.rank: rp.path for rp in plan.ranks}
    return {path[r]: path[first] for r, first in plan.same_as.items()}
