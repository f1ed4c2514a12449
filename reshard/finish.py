"""A plan finished before execution, and its execution.

finish_plan() takes a full plan (api.complete_plan) and decides everything the run needs
before the first byte is written: the memory budget and expected peak, the ranks still to
convert (a rerun keeps the ones complete and verified, locally or on the upload's store), the
source files downloaded while converting, which local source files have their CRC trailer
checked here (and checks them), and where each rank is uploaded. execute_finished() then only
executes it (reshard.execute.run_plan), while the downloads run (reshard.fetch), telling a
Subscriber of each rank done. torch.distributed.checkpoint's finish_plan / read_data split is
the model: nothing is decided at run time.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

from .config import ReshardConfig
from .errors import ReshardError
from .execute import (SourceFiles, UploadTo, expected_peak, pending_ranks, rank_checksum, rank_cost,
                      run_plan, same_as, settle_manifests, uploaded_ranks)
from .fetch import SourceFetcher, fetch_bytes, horizon
from .formats import FormatError, open_reader, registry
from .formats.growing import Growing
from .plan import Plan, RankPlan, human_size
from .sources import check_output
from .subscriber import Subscriber

log = logging.getLogger("reshard")


@dataclass
class TransformReport:
    """What a conversion did. Sizes in bytes, times in seconds.

    Attributes:
        ranks_written: destination ranks written by this run (copies included).
        ranks_skipped: ranks already complete and verified, kept.
        expected_peak_bytes: the host memory the plan's schedule is expected to reach.
        seconds: the run's wall time.
        source_ranks: the source ranks the plan reads.
        plan: the plan run (or only planned, on a dry run).
        files_written: relative output names written by this run.
        checksums: relative output name -> (size, CRC32 hex) of every rank of the plan,
            written or kept, as recorded when its file was written (integrity.SetManifest).
        already: the remote output held this very conversion: nothing was done (reshard.run).
    """
    ranks_written: list[int] = field(default_factory=list)
    ranks_skipped: list[int] = field(default_factory=list)
    expected_peak_bytes: int = 0
    seconds: float = 0.0
    source_ranks: list[int] = field(default_factory=list)
    plan: Plan | None = None
    files_written: list[str] = field(default_factory=list)
    checksums: dict[str, tuple[int, str]] = field(default_factory=dict)
    already: bool = False


@dataclass(frozen=True)
class FinishedPlan:
    """A full plan with every decision of its run made (finish_plan): execute_finished only
    executes it. Bytes and ranks; the source files by their relative names."""
    plan: Plan
    local_root: str                 # where the fetched and local source files are read
    dst_root: str                   # the local folder written
    config: ReshardConfig
    files: SourceFiles              # where each source file is read (in place or local)
    budget_bytes: int               # rank costs in flight at most (process bases, transfer buffers off)
    peak_bytes: int                 # expected peak of the whole conversion
    pending: frozenset[int]         # ranks not complete already (locally or on the store)
    converting: frozenset[int]      # of those, the ranks converted (the others are copies)
    stored: dict[int, tuple[int, str]]   # ranks kept on the upload's store: (size, CRC32)
    download: tuple[str, ...]       # fetched files downloaded while converting (their order)
    crc_checked: tuple[str, ...]    # local .ckpt files whose CRC trailer was checked here
    upload: UploadTo | None         # where each rank written is uploaded while written


def default_max_memory() -> int:
    """Half of the memory available now: room for the page cache and the rest of the job."""
    import psutil
    return int(psutil.virtual_memory().available * 0.5)


def memory_budget(plan: Plan, config: ReshardConfig) -> tuple[int, int]:
    """(budget, expected peak) in bytes of config.process_num processes within
    config.max_memory_bytes; ReshardError when one rank alone exceeds the budget."""
    budget = config.max_memory_bytes if config.max_memory_bytes is not None else default_max_memory()
    base = config.process_base_bytes
    remote = frozenset(plan.files_in_mode("remote")) if plan.with_headers else frozenset()
    part = 0
    if remote:
        import obs_io
        part = obs_io.current_config().read_part_bytes
    costs = [rank_cost(rp, remote, part, config) for rp in plan.ranks]
    if plan.with_headers:
        for rp, cost in zip(plan.ranks, costs):
            if cost + base > budget:
                big = max(rp.tensors, key=lambda t: t.buffer_bytes)
                raise ReshardError(f"max_memory {human_size(budget)} is below the "
                                   f"{human_size(cost + base)} that destination rank "
                                   f"{rp.rank} needs (largest tensor {big.name})")
    return budget, expected_peak(costs, config.process_num, budget - base, base)


def check_fetched(plan: Plan, local_root: str, names: set[str]) -> None:
    """The plan's 'fetch' files among `names` must be under local_root by now (ReshardError
    naming one the caller did not download)."""
    assert plan.source is not None
    for name in sorted(set(plan.files_in_mode("fetch")) & names):
        path = plan.location_of(name, local_root)
        if not os.path.isfile(path):
            raise ReshardError(f"{path}: not found (the plan fetches "
                               f"{plan.source.path_of(name)} there before converting)")


def source_files(plan: Plan, local_root: str) -> SourceFiles:
    """Where execute's workers read each source file: the plan's 'remote' files in place (with
    this process's obs_io configuration), the others under local_root. The headers the plan
    read of remote and fetched files go with them: no worker reads them again."""
    assert plan.source is not None
    remote = frozenset(plan.files_in_mode("remote"))
    indexes = {n: u.index for n, u in plan.source_use.items() if u.index is not None}
    if not remote:
        return SourceFiles(local_root, plan.source.base if indexes else None, indexes=indexes)
    import obs_io
    log.info("reading %d source file(s) in place from %s by ranged GETs: %s", len(remote),
             plan.source.base, ", ".join(sorted(remote)))
    return SourceFiles(local_root, plan.source.base, remote, obs_io.current_config(), indexes)


def crc_duties(plan: Plan, local_root: str, only: set[str] | None = None) -> list[str]:
    """The source files the parent checks against their format's checksum (a .ckpt's CRC trailer) before any
    output is written (the reads that follow come from the page cache): those the plan reads
    locally, within `only` when given (the files the ranks still to convert read that are not
    downloading now: reshard.fetch checks those as they arrive). A file read in place (remote)
    is not: that would read the whole object, which reading in place exists to avoid (its GETs
    are pinned to one version and length-checked)."""
    source = plan.source
    assert source is not None
    return [name for name in plan.needed_files()
            if plan.mode_of(name) != "remote" and (only is None or name in only)
            and _has_checksum(source.path_of(name, local_root))]


def _has_checksum(path: str) -> bool:
    """Whether the file's format (formats.registry) carries a checksum to check."""
    fmt = registry.by_file(path)
    return fmt is not None and fmt.has_checksum


def check_source_crcs(plan: Plan, local_root: str, only: set[str] | None = None) -> list[str]:
    """Check crc_duties(plan, local_root, only); returns them. ReshardError naming the file on
    a mismatch."""
    names = crc_duties(plan, local_root, only)
    for name in names:
        try:
            with open_reader(plan.source.path_of(name, local_root)) as reader:
                reader.check_crc()
        except FormatError as exc:
            raise ReshardError(str(exc)) from None
    return names


def finish_plan(plan: Plan, local_root: str, dst_root: str, config: ReshardConfig, *,
                download=(), upload_to: str | None = None, upload_skip=(),
                upload_records: bool = False) -> FinishedPlan:
    """Every decision of the run of a full plan, and every check left, before anything is
    written. download: of the plan's 'fetch' files, those not yet under local_root (the others
    must be there); only those the ranks still to convert read are kept. upload_to: an
    obs:// / s3:// folder each rank written is also uploaded to while written, but the names in
    upload_skip; upload_records: each rank uploaded so is recorded there, and one an earlier run
    recorded is kept (execute.uploaded_ranks).

    Raises ReshardError: a skeleton plan, a budget below what one rank needs, dst_root
    overlapping the source or a strategy, a 'fetch' file missing, a source CRC mismatch."""
    if not plan.with_headers or plan.source is None:
        raise ReshardError("execute needs a full plan (complete_plan)")
    source = plan.source
    src_path = source.path_of(source.files[0], local_root) if source.is_file else local_root
    check_output(dst_root, "destination", {
        "source checkpoint": src_path,
        "source strategy": plan.src_strategy.source if plan.src_strategy else None,
        "destination strategy": plan.dst_strategy.source if plan.dst_strategy else None})
    budget, peak = memory_budget(plan, config)
    files = source_files(plan, local_root)
    upload, stored = _upload(plan, files, config, upload_to, upload_skip, upload_records)
    pending = {rp.rank for rp in pending_ranks(plan, files, dst_root)} - set(stored)
    # what the ranks still to convert read (a rerun may need none of the source; a copy reads
    # nothing: its first rank is pending too, or kept)
    converting = pending - set(same_as(plan, stored))
    needed_now = {f for rp in plan.ranks if rp.rank in converting for f in rp.source_files}
    fetched = set(download) & needed_now
    check_fetched(plan, local_root, needed_now - fetched)
    if upload is not None:
        streams = [upload.chunks * upload.part_bytes(rp) for rp in plan.ranks if rp.rank in converting]
        # per converting process: the rank being written and the one whose upload is ending
        extra = sum(sorted(streams, reverse=True)[:2 * config.process_num])
        budget, peak = budget - extra, peak + extra
    if fetched:
        fetching = fetch_bytes(config)
        budget, peak = budget - fetching, peak + fetching
    checked = check_source_crcs(plan, local_root, only=needed_now - fetched)
    log.info("plan: %d destination ranks, %d process(es), expected peak %.1f MiB "
             "(budget %.1f MiB)", len(plan.ranks), config.process_num, peak / 2**20, budget / 2**20)
    return FinishedPlan(plan, local_root, dst_root, config, files, budget - config.process_base_bytes,
                        peak, frozenset(pending), frozenset(converting), stored, tuple(sorted(fetched)),
                        tuple(checked), upload)


def _upload(plan: Plan, files: SourceFiles, config: ReshardConfig, upload_to: str | None,
            skip, records: bool) -> tuple[UploadTo | None, dict[int, tuple[int, str]]]:
    """Where ranks are uploaded while written, and the ranks an earlier run recorded there."""
    if upload_to is None:
        return None, {}
    import obs_io
    upload = UploadTo(upload_to, obs_io.current_config(), frozenset(skip), records, config.upload_chunks)
    return upload, uploaded_ranks(plan, files, upload) if records else {}


def execute_finished(fp: FinishedPlan, subscriber: Subscriber | None = None) -> TransformReport:
    """Write the ranks of a finished plan: <fp.dst_root>/<rank's path>, at most
    config.process_num at once within fp.budget_bytes, fp.download downloading meanwhile,
    each rank uploaded while written where fp.upload says. subscriber.on_rank_done hears of each
    rank as soon as it is complete under its final name (written now, copied, or kept), in this
    process, one call at a time.

    Raises ReshardError: a download that fails (or a fetched .ckpt whose CRC trailer does not
    match) stops the conversion naming its URL; ranks made from that file are removed."""
    t0 = time.monotonic()
    subscriber = subscriber or Subscriber()
    if fp.download:
        with DownloadingRun(fp) as downloading:
            res = downloading.run(subscriber)
    else:
        res = run_plan(fp, fp.files, subscriber)
    plan = fp.plan
    by_rank = {rp.rank: rp.path for rp in plan.ranks}
    checksums = {}
    for rp in plan.ranks:
        record = fp.stored.get(rp.rank) or rank_checksum(fp.dst_root, rp)
        if record is None:   # run_plan returned, so every rank was committed with its record
            raise ReshardError(f"rank {rp.rank}: {rp.path} has no checksum record in {fp.dst_root}")
        checksums[rp.path] = record
    return TransformReport(res.written, res.skipped, fp.peak_bytes, time.monotonic() - t0,
                           plan.needed_source_ranks(), plan, [by_rank[r] for r in res.written],
                           checksums)


class DownloadingRun:
    """The run of a finished plan while its fp.download files download (reshard.fetch), as a
    context manager that owns the cleanup: on success the records of the ranks that read a
    downloading file are settled (verified); on any failure the download is cancelled, a rank
    whose downloaded files were all checked whole is kept, the others are removed (and their
    uploads, where the download failed), and the download's own error is raised, not a
    worker's "download stopped". Ranks go in the order their bytes arrive (fetch.horizon);
    config.release_downloads: a downloaded file is removed once every rank reading it is done."""

    def __init__(self, fp: FinishedPlan):
        self.fp = fp
        plan, files = fp.plan, fp.files
        self.fetcher = SourceFetcher(plan, files.local_root, list(fp.download), files.indexes,
                                     lambda n: plan.location_of(n, files.local_root), files.s3,
                                     fp.config)
        self.preload = self.fetcher.preload(plan, files.s3)
        self.files = replace(files, growing={n: Growing(temp, tuple(self.preload.get(n, ())))
                                             for n, temp in self.fetcher.start().items()})
        self.readers = [rp for rp in plan.ranks if rp.rank in fp.pending and self.files.unverified(rp)]
        # the ranks reading each file (a copy of another rank's file reads nothing)
        self.copied = same_as(plan, fp.stored)
        self.left = {n: sum(n in rp.source_files for rp in plan.ranks if rp.rank not in self.copied)
                     for n in fp.download}

    def horizon(self, rp: RankPlan) -> int:
        """How far the download must get before this rank can start (its scheduling key)."""
        return horizon(rp, self.fetcher.order, self.files.indexes, self.preload)

    def check(self) -> None:
        """Raises the download's failure, if any."""
        error = self.fetcher.error()
        if error is not None:
            raise error

    def run(self, subscriber: Subscriber):
        outer = self

        class Releasing(Subscriber):   # the caller's subscriber, then the cache released
            def on_rank_done(self, rp: RankPlan, uploaded: bool) -> None:
                subscriber.on_rank_done(rp, uploaded)
                outer._done(rp)
        res = run_plan(self.fp, self.files, Releasing(), feed=self)
        self.fetcher.finish()
        return res

    def _done(self, rp: RankPlan) -> None:
        if not self.fp.config.release_downloads or rp.rank in self.copied:
            return
        for f in rp.source_files:
            if f in self.left:
                self.left[f] -= 1
                if self.left[f] == 0:
                    self.fetcher.release(f)

    def __enter__(self) -> "DownloadingRun":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        fp = self.fp
        if kind is None:
            settle_manifests(fp.dst_root, self.readers, verified=True, upload=fp.upload)
            return False
        self.fetcher.cancel()
        error = self.fetcher.error()
        # a rank whose downloaded files were all checked whole is kept; one that read a file
        # that was not (it failed its check, or the run stopped first) goes
        checked, downloading = set(self.fetcher.published), set(fp.download)
        ok = [rp for rp in self.readers if downloading & set(rp.source_files) <= checked]
        bad = [rp for rp in self.readers if not downloading & set(rp.source_files) <= checked]
        settle_manifests(fp.dst_root, ok, verified=True, upload=fp.upload)
        settle_manifests(fp.dst_root, bad, verified=False)
        if fp.upload is not None and error is not None:   # nor a copy uploaded while written
            _remove_uploaded([fp.upload.url(rp) for rp in bad if fp.upload.wants(rp)])
        if error is not None:   # the cause, not a worker's "download stopped"
            raise error from None
        return False


def _remove_uploaded(urls: list[str]) -> None:
    """Best effort (the conversion is failing already): objects uploaded from ranks that are
    being removed."""
    import obs_io
    for url in urls:
        try:
            obs_io.file.remove(url)
        except (OSError, ValueError):
            pass
