"""Public entry points of the engine (the contract cloud_entry and the CLI code against).

A conversion is four steps, each usable on its own:

    source   = classify(root, entries) / find_sources(local_path)       which files (sources.py)
    skeleton = plan_from_strategies(source, src, dst, dst_ranks=...)   which of them are read
    plan     = complete_plan(skeleton, local_root, source_mode="auto") headers read, every check
    (download plan.files_in_mode("fetch") under local_root: a remote source only)
    report   = execute(plan, local_root, dst_root)                     the files written

A remote (obs:// / s3://) source's headers are read in place by ranged GETs, and each of its
files is either read in place by the conversion ('remote') or downloaded first ('fetch'), as
plan.source_use says (plan.choose_mode).

Strategies are parsed once (load_strategy) and passed as Strategy objects; nothing here parses
them again. Everything that can be wrong with the input is found by the first three steps,
before the first byte is written. transform() runs them all on local paths.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from .errors import ReshardError
from .formats import FormatError, open_reader, registry
from .fetch import SourceFetcher, fetch_bytes, horizon
from .formats.growing import Growing
from .execute import (PROCESS_BASE_BYTES, RunResult, SourceFiles, UploadTo, expected_peak,
                      pending_ranks, rank_cost, rank_checksum, run_plan, same_as, settle_manifests,
                      uploaded_ranks)
from obs_io.atomic import write_atomic
from .plan import Fetch, Headers, Plan, PlanPolicy, build_plan, choose_mode, human_size, source_uses
from .sources import (RANK_DIR, SourceEntry, SourceSet, check_output, check_prefix,
                      check_source_strategy, classify, is_url)
from .steps import Step
from .strategy import Strategy, load_strategy, merged_strategy_bytes

__all__ = ["ReshardError", "TransformReport", "needed_source_ranks", "write_merged_strategy",
           "transform", "load_strategy", "make_plan", "find_sources", "default_max_memory",
           "plan_from_strategies", "complete_plan", "execute", "local_entries", "memory_budget"]

log = logging.getLogger("reshard")


@dataclass
class TransformReport:
    """What a conversion did. Sizes in bytes, times in seconds."""
    ranks_written: list[int] = field(default_factory=list)
    ranks_skipped: list[int] = field(default_factory=list)   # already complete and verified
    expected_peak_bytes: int = 0
    seconds: float = 0.0
    source_ranks: list[int] = field(default_factory=list)    # source ranks the plan reads
    plan: Plan | None = None
    files_written: list[str] = field(default_factory=list)   # relative output names
    # relative output name -> (size, CRC32 hex) of every rank of the plan, written or kept, as
    # recorded when its file was written (integrity.SetManifest)
    checksums: dict[str, tuple[int, str]] = field(default_factory=dict)


def default_max_memory() -> int:
    """Half of the memory available now: room for the page cache and the rest of the job."""
    import psutil
    return int(psutil.virtual_memory().available * 0.5)


def _strategy(value: Strategy | str | None) -> Strategy | None:
    """A loaded strategy as is; a path is parsed (callers that parse once pass Strategy)."""
    if value is None or isinstance(value, Strategy):
        return value
    return load_strategy(value) if value else None


def _check_fmt(fmt: str, prefix: str = "checkpoint_") -> None:
    registry.get(fmt, "--format")
    check_prefix(prefix)


# -- 1. the source ----------------------------------------------------------------------------

def local_entries(path: str) -> tuple[bool, list[SourceEntry]]:
    """(is_file, entries) of a local checkpoint path, as classify() takes them: a file is one
    entry named by its file name; a folder gives its files and those of its rank_<r>/ folders
    (each rank folder also as a 'rank_<r>/' folder entry, so an empty one is seen)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return True, [SourceEntry(os.path.basename(path), st.st_size, st.st_mtime_ns)]
    if not os.path.isdir(path):
        raise ReshardError(f"source checkpoint {path} does not exist")
    out = []
    with os.scandir(path) as it:
        for e in it:
            if e.is_file():
                st = e.stat()
                out.append(SourceEntry(e.name, st.st_size, st.st_mtime_ns))
            elif e.is_dir() and RANK_DIR.match(e.name):
                out.append(SourceEntry(e.name + "/", 0))
                with os.scandir(e.path) as sub:
                    for f in sub:
                        if f.is_file():
                            st = f.stat()
                            out.append(SourceEntry(f"{e.name}/{f.name}", st.st_size,
                                                   st.st_mtime_ns))
    return False, out


def find_sources(src_checkpoint: str, fmt: str | None = None, *,
                 partial: bool = False, step: Step | None = None) -> SourceSet:
    """A local checkpoint path classified (sources.classify), its safetensors index applied.
    partial: rank folders may have gaps (a local copy of the ranks a block needs); step: the
    training step to read where files are named by step (reshard.steps; None: the latest)."""
    is_file, entries = local_entries(src_checkpoint)
    source = classify(src_checkpoint, entries, fmt, is_file=is_file, partial=partial, step=step)
    if source.needs_index:
        with open(source.path_of(source.index_name), "rb") as f:
            source = source.with_index(f.read())
    return source


# -- 2. the skeleton plan ---------------------------------------------------------------------

def plan_from_strategies(source: SourceSet | None, src_strategy: Strategy | None,
                         dst_strategy: Strategy | None, *, dst_ranks: Iterable[int] | None = None,
                         prefix: str = "checkpoint_", fmt: str = registry.DEFAULT,
                         policy: PlanPolicy = PlanPolicy()) -> Plan:
    """The skeleton plan, from strategies and the source's file list alone (no file is read):
    which source files the destination ranks read (Plan.needed_files). source None: a plan from
    strategies alone (nothing to complete). Strategies: loaded Strategy objects, None for a
    complete checkpoint. dst_ranks: the destination ranks to convert (None: all). policy: what
    to do with parameters the strategies and the checkpoint disagree on (plan.PlanPolicy; the
    full plan, complete_plan, applies it).

    A source that is one rank_0 folder is complete (sources.classify): a one-rank source
    strategy given with it is dropped with a warning, one of more ranks is an error.

    Raises ReshardError: a rank folder missing (every rank when dst_ranks is None, else the
    ranks needed), rank folders beyond the source strategy's world, a strategy/source mismatch,
    device counts that do not divide, a destination rank outside the destination world."""
    _check_fmt(fmt, prefix)
    src, dst = src_strategy, dst_strategy
    note = check_source_strategy(source, src.world_size if src else None) if source else None
    if note is not None:   # one rank_0 folder (complete) with a one-rank strategy: not needed
        log.log(note.level, "%s", note.text)
        src = None
    if source is not None and source.needs_index:
        raise ReshardError(f"{source.root}: apply its index {source.index_name} first "
                           f"(SourceSet.with_index)")
    if source is not None and not source.complete and src is not None:
        # THE check of a source strategy against the checkpoint's rank folders, for every
        # caller (a block of the job too): the strategy is blamed, not the parameters
        extra = sorted(r for r in source.files if r >= src.world_size)
        if extra:
            raise ReshardError(f"{source.root}: rank_{extra[0]} is beyond the "
                               f"{src.world_size} ranks of source strategy {src.source}")
        for r in range(src.world_size) if dst_ranks is None else ():
            if r not in source.files:
                raise ReshardError(f"{source.path_of(f'rank_{r}')}: missing or empty (the "
                                   f"source strategy has {src.world_size} ranks)")
    skeleton = build_plan(src, dst, source, dst_ranks=dst_ranks, prefix=prefix, fmt=fmt,
                          policy=policy)
    if source is not None and not source.complete:
        for r in skeleton.needed_source_ranks():
            if r not in source.files:
                raise ReshardError(f"{source.path_of(f'rank_{r}')}: missing or empty (needed "
                                   f"by the destination ranks)")
    return skeleton


# -- 3. the full plan -------------------------------------------------------------------------

def complete_plan(skeleton: Plan, local_root: str, *, fetch: Fetch | None = None,
                  source_mode: str | None = None, s3_config=None) -> Plan:
    """The full plan: reads the headers of exactly skeleton.needed_files() and returns the plan
    with every check done: shapes and dtypes agree across replicas, every chosen file holds its
    parameter (a checkpoint saved with redundancy removed: another replica's file that holds
    it is read instead), the strategies name the checkpoint's parameters and divide its
    shapes, the values fit the output format, duplicated tensors of a complete folder hold the
    same bytes.

    source_mode None: the files are read under local_root (their relative names joined to
    it); fetch(names) is called with relative names that are not there when the plan needs
    them (only for redundancy-removed sources) and must put them there; without it those files
    count as absent, and a parameter only they could hold is an error naming them.

    source_mode 'auto' | 'fetch' | 'remote' with an obs:// / s3:// source: the headers are read
    in place by ranged GETs (nothing is downloaded, so a bad source fails before any
    transfer, naming its URL; s3_config: obs_io's configuration, default the current one), and
    plan.source_use says per file how execute reads it (plan.choose_mode): 'remote' in place,
    'fetch' under local_root, where the caller downloads plan.files_in_mode('fetch') first. A
    local source: every file 'local'.
    Raises ReshardError, one line naming the parameter or file."""
    if skeleton.source is None:
        raise ReshardError("the plan has no source checkpoint to complete")
    if source_mode is not None:
        choose_mode(False, 0, 0, 0, source_mode)   # the flag's value checked, whatever the source
    remote = source_mode is not None and is_url(skeleton.source.base)
    needed = skeleton.needed_files()
    if remote:
        if s3_config is None:
            import obs_io
            s3_config = obs_io.current_config()
        headers = Headers(local_root, remote_root=skeleton.source.base, s3_config=s3_config)
    else:
        headers = Headers(local_root, fetch)
    headers.prefetch(needed)
    plan = build_plan(skeleton.src_strategy, skeleton.dst_strategy, skeleton.source,
                      headers=headers, read=needed, dst_ranks=skeleton.dst_ranks,
                      prefix=skeleton.prefix, fmt=skeleton.fmt, policy=skeleton.policy)
    if source_mode is None:
        return plan
    return replace(plan, source_use=source_uses(plan, headers.sizes, remote, source_mode,
                                                headers.indexes))


def memory_budget(plan: Plan, process_num: int, max_memory: int | None) -> tuple[int, int]:
    """(budget, expected peak) in bytes; ReshardError when one rank alone exceeds the budget."""
    budget = max_memory if max_memory is not None else default_max_memory()
    remote = frozenset(plan.files_in_mode("remote")) if plan.with_headers else frozenset()
    part = 0
    if remote:
        import obs_io
        part = obs_io.current_config().read_part_bytes
    costs = [rank_cost(rp, remote, part) for rp in plan.ranks]
    if plan.with_headers:
        for rp, cost in zip(plan.ranks, costs):
            if cost + PROCESS_BASE_BYTES > budget:
                big = max(rp.tensors, key=lambda t: t.buffer_bytes)
                raise ReshardError(f"max_memory {human_size(budget)} is below the "
                                   f"{human_size(cost + PROCESS_BASE_BYTES)} that destination rank "
                                   f"{rp.rank} needs (largest tensor {big.name})")
    return budget, expected_peak(costs, process_num, budget - PROCESS_BASE_BYTES)


# -- 4. execution -----------------------------------------------------------------------------

def execute(plan: Plan, local_root: str, dst_root: str, *, process_num: int = 1,
            max_memory: int | None = None, log_dir: str | None = None,
            on_file: Callable[[str, tuple[int, str]], None] | None = None,
            download: Iterable[str] = (), release: bool = False,
            upload_to: str | None = None, upload_skip: Iterable[str] = (),
            durable: bool = True, upload_records: bool = False) -> TransformReport:
    """Write the destination files of a full plan: <dst_root>/<output_name(rank, prefix, fmt)>
    for each rank (a rank whose file is already complete and verified is skipped), reading the
    source files under local_root. At most process_num ranks at once, within max_memory bytes
    of host memory (default: half of the available memory). on_file(name, (size, crc32)):
    called with each output's relative name and recorded checksum as soon as it is complete
    under its final name (written now, or kept from before), while later ranks still convert:
    e.g. to upload it. It must not raise (hand the work to another thread).

    download: of the plan's 'fetch' files, those not yet under local_root: downloaded there
    while the conversion runs (reshard.fetch: in the order the ranks read them; each rank
    starts when its first bytes are here and reads while the rest arrive), only those that
    ranks still to convert read. The other 'fetch' files must be there already. release: each
    file downloaded now is removed as soon as every rank reading it is written (a cache the
    caller does not keep): local disk then holds the output and the files being read.

    upload_to: an obs:// / s3:// folder where each rank written now is also uploaded while it
    is written (<upload_to>/<name>; obs_io's GrowingUpload: nothing under the key before the
    file is complete), except the names in upload_skip (e.g. those the caller may find
    unchanged there). on_file is then told only of the files not uploaded so: those kept from
    before and those in upload_skip. upload_records: each rank uploaded so is recorded there
    (<upload_to>/.reshard/rank_<r>.json, once its object is complete and its sources checked:
    execute.record_upload), and a rank an earlier run of this plan recorded, with its object
    there as recorded, is kept: neither converted nor uploaded again (a rerun after Ctrl-C or
    a kill); its checksum comes from its record.

    A rank whose file has the same bytes as an earlier rank's (plan.same_as: data-parallel
    replicas) is not converted: it is another name of that file (a hard link) and, uploaded,
    the store's copy of that object; its checksum is recorded like any other's.

    durable: each output is fsynced before its rename (local outputs: the documented policy);
    False where the local files only stage upload_to (the store holds the ranks).

    Raises ReshardError before writing anything: a skeleton plan, process_num < 1, a budget
    below what one rank needs, dst_root overlapping the source or a strategy. A download that
    fails (or a fetched .ckpt whose CRC trailer does not match) stops the conversion with a
    ReshardError naming its URL; ranks made from that file are removed."""
    t0 = time.monotonic()
    if not plan.with_headers or plan.source is None:
        raise ReshardError("execute needs a full plan (complete_plan)")
    if process_num < 1:
        raise ReshardError(f"process_num {process_num}: must be at least 1")
    source = plan.source
    src_path = source.path_of(source.files[0], local_root) if source.is_file else local_root
    check_output(dst_root, "destination", {
        "source checkpoint": src_path,
        "source strategy": plan.src_strategy.source if plan.src_strategy else None,
        "destination strategy": plan.dst_strategy.source if plan.dst_strategy else None})
    download = set(download)
    budget, peak = memory_budget(plan, process_num, max_memory)
    files = source_files(plan, local_root)
    upload, stored = None, {}
    if upload_to is not None:
        import obs_io
        upload = UploadTo(upload_to, obs_io.current_config(), frozenset(upload_skip), upload_records)
        if upload_records:
            stored = uploaded_ranks(plan, files, upload)
    pending = {rp.rank for rp in pending_ranks(plan, files, dst_root)} - set(stored)
    # what the ranks still to convert read (a rerun may need none of the source; a copy reads
    # nothing: its first rank is pending too, or kept)
    converting = pending - set(same_as(plan, stored))
    needed_now = {f for rp in plan.ranks if rp.rank in converting for f in rp.source_files}
    download &= needed_now
    check_fetched(plan, local_root, needed_now - download)
    if upload is not None:
        streams = [upload.CHUNKS * upload.part_bytes(rp) for rp in plan.ranks if rp.rank in converting]
        # per converting process: the rank being written and the one whose upload is ending
        extra = sum(sorted(streams, reverse=True)[:2 * process_num])
        budget, peak = budget - extra, peak + extra
    if download:
        fetching = fetch_bytes()
        budget, peak = budget - fetching, peak + fetching
    check_source_crcs(plan, local_root, only=needed_now - download)
    log.info("plan: %d destination ranks, %d processes, expected peak %.1f MiB "
             "(budget %.1f MiB)", len(plan.ranks), process_num, peak / 2**20, budget / 2**20)
    def on_rank(rp, uploaded: bool) -> None:   # the caller's part: files not uploaded now
        if on_file is not None and not uploaded:
            on_file(rp.path, rank_checksum(dst_root, rp))
    if download:
        res = _run_downloading(plan, files, dst_root, sorted(download), pending, process_num=process_num,
                               budget=budget - PROCESS_BASE_BYTES, log_dir=log_dir, on_rank=on_rank,
                               release=release, upload=upload, durable=durable, stored=set(stored))
    else:
        res = run_plan(plan, files, dst_root, process_num=process_num,
                       budget=budget - PROCESS_BASE_BYTES, log_dir=log_dir, on_rank=on_rank,
                       upload=upload, durable=durable, stored=set(stored))
    by_rank = {rp.rank: rp.path for rp in plan.ranks}
    checksums = {}
    for rp in plan.ranks:
        record = stored.get(rp.rank) or rank_checksum(dst_root, rp)
        if record is None:   # run_plan returned, so every rank was committed with its record
            raise ReshardError(f"rank {rp.rank}: {rp.path} has no checksum record in {dst_root}")
        checksums[rp.path] = record
    return TransformReport(res.written, res.skipped, peak, time.monotonic() - t0,
                           plan.needed_source_ranks(), plan, [by_rank[r] for r in res.written],
                           checksums)


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


def _run_downloading(plan: Plan, files: SourceFiles, dst_root: str, names: list[str],
                     pending: set[int], *,
                     process_num: int, budget: int, log_dir: str | None,
                     on_rank: Callable | None, release: bool, upload: UploadTo | None,
                     durable: bool, stored: set[int] = frozenset()) -> RunResult:
    """run_plan while `names` download (reshard.fetch; `pending`: the ranks not already done):
    ranks in the order their bytes arrive;
    a failed download stops the conversion with its own error, and the ranks made from the
    files it could not check are removed; after success their records are settled. release:
    a downloaded file is removed once every rank of the plan that reads it is done."""
    fetcher = SourceFetcher(plan, files.local_root, names, files.indexes,
                            lambda n: plan.location_of(n, files.local_root), files.s3)
    preload = fetcher.preload(plan, files.s3)
    files = replace(files, growing={n: Growing(temp, tuple(preload.get(n, ())))
                                    for n, temp in fetcher.start().items()})
    order = fetcher.order
    readers = [rp for rp in plan.ranks if rp.rank in pending and files.unverified(rp)]
    downloading = set(names)
    # the ranks reading each file (a copy of another rank's file reads nothing)
    copied = same_as(plan, stored)
    left = {n: sum(n in rp.source_files for rp in plan.ranks if rp.rank not in copied)
            for n in names}

    def done(rp, uploaded: bool) -> None:   # each rank once, written, copied or kept (on_rank)
        if on_rank is not None:
            on_rank(rp, uploaded)
        for f in rp.source_files if release and rp.rank not in copied else ():
            if f in left:
                left[f] -= 1
                if left[f] == 0:
                    fetcher.release(f)

    def check() -> None:
        error = fetcher.error()
        if error is not None:
            raise error
    try:
        res = run_plan(plan, files, dst_root, process_num=process_num, budget=budget,
                       log_dir=log_dir, on_rank=done, upload=upload, durable=durable, stored=stored,
                       arrival=lambda rp: horizon(rp, order, files.indexes, preload), check=check)
        fetcher.finish()
    except BaseException:
        fetcher.cancel()
        error = fetcher.error()
        # a rank whose downloaded files were all checked whole is kept; one that read a file
        # that was not (it failed its check, or the run stopped first) goes
        checked = set(fetcher.published)
        ok = [rp for rp in readers if downloading & set(rp.source_files) <= checked]
        bad = [rp for rp in readers if not downloading & set(rp.source_files) <= checked]
        settle_manifests(dst_root, ok, verified=True, upload=upload)
        settle_manifests(dst_root, bad, verified=False)
        if upload is not None and error is not None:   # nor a copy uploaded while written
            _remove_uploaded([upload.url(rp) for rp in bad if upload.wants(rp)])
        if error is not None:   # the cause, not a worker's "download stopped"
            raise error from None
        raise
    settle_manifests(dst_root, readers, verified=True, upload=upload)
    return res


def _remove_uploaded(urls: list[str]) -> None:
    """Best effort (the conversion is failing already): objects uploaded from ranks that are
    being removed."""
    import obs_io
    for url in urls:
        try:
            obs_io.file.remove(url)
        except (OSError, ValueError):
            pass


def check_source_crcs(plan: Plan, local_root: str, only: set[str] | None = None) -> None:
    """Every source .ckpt the plan reads locally that carries MindSpore's CRC trailer is
    checked once, here in the parent, before any output is written (the reads that follow come
    from the page cache). A file read in place (remote) is not: that would read the whole
    object, which reading in place exists to avoid (its GETs are pinned to one version and
    length-checked), nor one outside `only` when given (not read by the ranks still to convert,
    or downloading now: reshard.fetch checks it as it arrives). ReshardError naming the file on
    a mismatch."""
    source = plan.source
    assert source is not None
    for name in plan.needed_files():
        if plan.mode_of(name) == "remote" or (only is not None and name not in only):
            continue
        path = source.path_of(name, local_root)
        fmt = registry.by_file(path)
        if fmt is None or not fmt.has_checksum:
            continue
        try:
            with open_reader(path) as reader:
                reader.check_crc()
        except FormatError as exc:
            raise ReshardError(str(exc)) from None


# -- all at once, local -----------------------------------------------------------------------

def make_plan(src_checkpoint: str | None, *, src_strategy: Strategy | str | None = None,
              dst_strategy: Strategy | str | None = None, prefix: str = "checkpoint_",
              fmt: str = registry.DEFAULT, dst_ranks: Iterable[int] | None = None,
              step: Step | None = None, policy: PlanPolicy = PlanPolicy()) -> Plan:
    """The full plan of a local checkpoint; or the skeleton from strategies alone when
    src_checkpoint is None or does not exist. Strategies: paths or loaded Strategy objects;
    step: the training step to read (find_sources); policy: plan.PlanPolicy."""
    src, dst = _strategy(src_strategy), _strategy(dst_strategy)
    _check_fmt(fmt, prefix)
    if src_checkpoint is None or not os.path.exists(src_checkpoint):
        return plan_from_strategies(None, src, dst, dst_ranks=dst_ranks, prefix=prefix, fmt=fmt,
                                    policy=policy)
    source = find_sources(src_checkpoint, partial=dst_ranks is not None, step=step)
    for note in source.notes:
        log.log(note.level, "%s", note.text)
    skeleton = plan_from_strategies(source, src, dst, dst_ranks=dst_ranks, prefix=prefix,
                                    fmt=fmt, policy=policy)
    return complete_plan(skeleton, source.base)


def needed_source_ranks(src_strategy: Strategy | str | None, dst_strategy: Strategy | str | None,
                        dst_ranks: Iterable[int] | None = None) -> list[int]:
    """Sorted source ranks whose shards the given destination ranks read (all when None).
    Strategies only, no checkpoint bytes. A complete source (src_strategy None) -> [0]."""
    src = _strategy(src_strategy)
    if src is None:
        return [0]
    return plan_from_strategies(None, src, _strategy(dst_strategy),
                                dst_ranks=dst_ranks).needed_source_ranks()


def write_merged_strategy(strategy: Strategy | str, out_file: str) -> None:
    """Merge a strategy folder / per-stage files into one file (MindSpore's merged format),
    written to a temporary name then renamed. Reads the sources only; the output is new."""
    write_atomic(out_file, merged_strategy_bytes(_strategy(strategy)), durable=True)


def transform(src_checkpoint: str, dst_checkpoint: str, *,
              src_strategy: Strategy | str | None = None,
              dst_strategy: Strategy | str | None = None, prefix: str = "checkpoint_",
              fmt: str = registry.DEFAULT, process_num: int = 1, max_memory: int | None = None,
              dst_ranks: Iterable[int] | None = None, dry_run: bool = False,
              log_dir: str | None = None, step: Step | None = None,
              policy: PlanPolicy = PlanPolicy()) -> TransformReport:
    """Convert a local checkpoint: writes <dst_checkpoint>/rank_<r>/<prefix><r>.<fmt> for every
    destination rank (or those of dst_ranks).

    src_checkpoint: a complete .ckpt/.safetensors file, a folder of complete files (their union;
    a safetensors index decides which file holds each tensor), or a folder of rank_<r>/ folders
    (the last checkpoint in name order in each). Strategies: strategy file or folder paths, or
    loaded Strategy objects (parsed once); None for a complete checkpoint. fmt: a registered
    format (formats.registry; the output format; dtypes are never converted). process_num: destination
    ranks converted at once (worker processes). max_memory: host-memory budget in bytes
    (default half of the available memory). dst_ranks: the ranks to convert (the source may
    then hold only the rank folders they need). dry_run: plan only (report.plan), write nothing.
    log_dir: one log file per converting process. step: the training step to read where the
    files are named by step (reshard.steps; None: the latest, the same in every rank folder).
    policy: what to do with parameters the strategies and the checkpoint disagree on
    (plan.PlanPolicy: by default an error).

    Raises ReshardError (str = one line naming the culprit) for any bad input, before anything
    is written: a missing or malformed source or strategy, a gap in the rank folders, a
    strategy that does not match the checkpoint's names or shapes, device counts that do not
    divide, uneven splits, a value the output format cannot hold, a budget too small, a
    destination overlapping the source or a strategy."""
    t0 = time.monotonic()
    if process_num < 1:
        raise ReshardError(f"process_num {process_num}: must be at least 1")
    src, dst = _strategy(src_strategy), _strategy(dst_strategy)
    if not dry_run:
        if not os.path.exists(src_checkpoint):
            raise ReshardError(f"source checkpoint {src_checkpoint} does not exist")
        check_output(dst_checkpoint, "destination", {
            "source checkpoint": src_checkpoint,
            "source strategy": src.source if src else None,
            "destination strategy": dst.source if dst else None})
    plan = make_plan(src_checkpoint, src_strategy=src, dst_strategy=dst, prefix=prefix, fmt=fmt,
                     dst_ranks=dst_ranks, step=step, policy=policy)
    for n in plan.notes:
        log.info("%s", n)
    if dry_run or not plan.with_headers:
        _, peak = memory_budget(plan, process_num, max_memory)
        return TransformReport(expected_peak_bytes=peak, plan=plan, seconds=time.monotonic() - t0,
                               source_ranks=plan.needed_source_ranks())
    report = execute(plan, plan.local_root, dst_checkpoint, process_num=process_num,
                     max_memory=max_memory, log_dir=log_dir)
    report.seconds = time.monotonic() - t0
    return report
