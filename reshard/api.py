"""The engine's steps, each usable on its own; reshard.run.run is the one orchestrator that
calls them in their documented order for both tools (transform-checkpoint and cloud-entry).

    source   = classify(root, entries) / find_sources(local_path)       which files (sources.py)
    skeleton = plan_from_strategies(source, src, dst, dst_ranks=...)   which of them are read
    plan     = complete_plan(skeleton, local_root, source_mode="auto") headers read, every check
    report   = reshard.run.run(request, config, plan=plan)              the files written
               (a remote source's plan.files_in_mode("fetch") downloaded under local_root
               meanwhile; reshard.finish: the plan finished, then executed)

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
from dataclasses import replace
from typing import Iterable

from .config import ReshardConfig
from .errors import ReshardError
from .formats import registry
from .finish import TransformReport, default_max_memory, memory_budget
from obs_io.atomic import write_atomic
from .plan import Fetch, Headers, Plan, PlanPolicy, build_plan, choose_mode, source_uses
from .sources import (DEFAULT_PREFIX, RANK_DIR, SourceEntry, SourceSet, check_output, check_prefix,
                      check_source_strategy, classify, is_url)
from .steps import Step
from .strategy import Strategy, load_strategy, merged_strategy_bytes

__all__ = ["ReshardError", "TransformReport", "needed_source_ranks", "write_merged_strategy",
           "transform", "load_strategy", "make_plan", "find_sources", "default_max_memory",
           "plan_from_strategies", "complete_plan", "local_entries", "memory_budget"]

log = logging.getLogger("reshard")


def _strategy(value: Strategy | str | None) -> Strategy | None:
    """A loaded strategy as is; a path is parsed (callers that parse once pass Strategy)."""
    if value is None or isinstance(value, Strategy):
        return value
    return load_strategy(value) if value else None


def _check_fmt(fmt: str, prefix: str = DEFAULT_PREFIX) -> None:
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

    Args:
        src_checkpoint: a local checkpoint file, a folder of complete files, or a folder of
            rank_<r>/ folders.
        fmt: the format to look for (formats.registry name); None: whichever the files are.
        partial: rank folders may have gaps (a local copy of the ranks a block needs).
        step: the training step to read where files are named by step (reshard.steps; None:
            the latest).

    Returns:
        The SourceSet: which file holds each rank (or each parameter, through the index).

    Raises:
        ReshardError: the path does not exist, holds no checkpoint of a known format, or its
            rank folders or steps do not agree (one line naming the file or folder).
    """
    is_file, entries = local_entries(src_checkpoint)
    source = classify(src_checkpoint, entries, fmt, is_file=is_file, partial=partial, step=step)
    if source.needs_index:
        with open(source.path_of(source.index_name), "rb") as f:
            source = source.with_index(f.read())
    return source


def find_remote_sources(location: str, step: Step | None = None) -> SourceSet:
    """An obs:// / s3:// checkpoint classified from its listing (nothing downloaded but a
    safetensors index), as find_sources classifies a local one.

    Args:
        location: the URL of a checkpoint file, a folder of complete files, or of rank_<r>/
            folders.
        step: as find_sources'.

    Returns:
        The SourceSet, its root and base the URL.

    Raises:
        ReshardError: nothing there (naming --src_checkpoint), or what classify refuses.
        OSError: the store failed (obs_io's one-line errors).
    """
    import obs_io
    mox = obs_io.file
    if mox.is_directory(location):
        is_file = False
        entries = [SourceEntry(e.name + ("/" if e.is_dir() else ""), e.length, e.mtime_nsec)
                   for e in mox.list_entries(location, recursive=True)]
    elif mox.exists(location):
        is_file = True
        st = mox.stat(location)
        entries = [SourceEntry(location.rstrip("/").rsplit("/", 1)[-1], st.length, st.mtime_nsec)]
    else:
        raise ReshardError(f"--src_checkpoint {location} does not exist")
    source = classify(location, entries, is_file=is_file, step=step)
    if source.needs_index:
        source = source.with_index(mox.read(source.path_of(source.index_name), binary=True))
    return source


# -- 2. the skeleton plan ---------------------------------------------------------------------

def plan_from_strategies(source: SourceSet | None, src_strategy: Strategy | None,
                         dst_strategy: Strategy | None, *, dst_ranks: Iterable[int] | None = None,
                         prefix: str = DEFAULT_PREFIX, fmt: str = registry.DEFAULT,
                         policy: PlanPolicy = PlanPolicy()) -> Plan:
    """The skeleton plan, from strategies and the source's file list alone (no file is read):
    which source files the destination ranks read (Plan.needed_files).

    A source that is one rank_0 folder is complete (sources.classify): a one-rank source
    strategy given with it is dropped with a warning, one of more ranks is an error.

    Args:
        source: the classified source; None for a plan from strategies alone (nothing to
            complete).
        src_strategy: the loaded source strategy; None for a complete checkpoint.
        dst_strategy: the loaded destination strategy; None for a complete output.
        dst_ranks: the destination ranks to convert (None: all).
        prefix: the output files' name prefix (checkpoint_<r>.<ext>).
        fmt: the output format (formats.registry name).
        policy: what to do with parameters the strategies and the checkpoint disagree on
            (plan.PlanPolicy; the full plan, complete_plan, applies it).

    Returns:
        The skeleton Plan (shapes in blocks; with_headers False).

    Raises:
        ReshardError: a rank folder missing (every rank when dst_ranks is None, else the
            ranks needed), rank folders beyond the source strategy's world, a strategy/source
            mismatch, device counts that do not divide, a destination rank outside the
            destination world, an unknown format or a bad prefix.
    """
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
                  source_mode: str | None = None, s3_config=None,
                  config: ReshardConfig = ReshardConfig()) -> Plan:
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
    transfer, naming its URL), and plan.source_use says per file how execute reads it
    (plan.choose_mode): 'remote' in place, 'fetch' under local_root, where the caller downloads
    plan.files_in_mode('fetch') first. A local source: every file 'local'.

    Args:
        skeleton: the skeleton plan (plan_from_strategies) of a source.
        local_root: where the source's files are (or will be) on local disk.
        fetch: puts missing files (relative names) under local_root; source_mode None only.
        source_mode: None, or 'auto' | 'fetch' | 'remote' (see above).
        s3_config: obs_io's configuration for a remote source (None: the current one).
        config: the run's ReshardConfig (header_threads, the copy checks' counts, how
            objects are read in place).

    Returns:
        The full Plan (with_headers True; source_use set unless source_mode is None).

    Raises:
        ReshardError: one line naming the parameter or file, for the skeleton without a
            source, a bad source_mode, or any check above.
        OSError: the store holding a remote source failed (obs_io's one-line errors).
    """
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
        headers = Headers(local_root, remote_root=skeleton.source.base, s3_config=s3_config,
                          config=config)
    else:
        headers = Headers(local_root, fetch, config=config)
    headers.prefetch(needed)
    plan = build_plan(skeleton.src_strategy, skeleton.dst_strategy, skeleton.source,
                      headers=headers, read=needed, dst_ranks=skeleton.dst_ranks,
                      prefix=skeleton.prefix, fmt=skeleton.fmt, policy=skeleton.policy)
    if source_mode is None:
        return plan
    return replace(plan, source_use=source_uses(plan, headers.sizes, remote, source_mode,
                                                headers.indexes))


# -- all at once, local -----------------------------------------------------------------------

def make_plan(src_checkpoint: str | None, *, src_strategy: Strategy | str | None = None,
              dst_strategy: Strategy | str | None = None, prefix: str = DEFAULT_PREFIX,
              fmt: str = registry.DEFAULT, dst_ranks: Iterable[int] | None = None,
              step: Step | None = None, policy: PlanPolicy = PlanPolicy()) -> Plan:
    """The full plan of a local checkpoint (reshard.run.prepare); or the skeleton from
    strategies alone when src_checkpoint is None or does not exist.

    Args:
        src_checkpoint: a local checkpoint path (find_sources), or None.
        src_strategy: a strategy path or loaded Strategy; None for a complete checkpoint.
        dst_strategy: a strategy path or loaded Strategy; None for a complete output.
        prefix: the output files' name prefix.
        fmt: the output format (formats.registry name).
        dst_ranks: the destination ranks to plan (None: all).
        step: the training step to read (find_sources).
        policy: plan.PlanPolicy.

    Returns:
        The Plan: full (with_headers) for an existing source, else the skeleton.

    Raises:
        ReshardError: as plan_from_strategies and complete_plan, one line naming the culprit.
    """
    return _local_request(src_checkpoint, "", src_strategy, dst_strategy, prefix, fmt, dst_ranks,
                          step, policy)[1]


def _local_request(src_checkpoint: str | None, dst_checkpoint: str, src_strategy, dst_strategy,
                   prefix: str, fmt: str, dst_ranks, step: Step | None, policy: PlanPolicy,
                   config: ReshardConfig = ReshardConfig()):
    """(the orchestrator's request, its full plan) for a local conversion."""
    from . import run   # the orchestrator builds on this module's steps
    src, dst = _strategy(src_strategy), _strategy(dst_strategy)
    _check_fmt(fmt, prefix)
    source = None
    if src_checkpoint is not None and os.path.exists(src_checkpoint):
        source = find_sources(src_checkpoint, partial=dst_ranks is not None, step=step)
    request = run.Request(source, src, dst, dst_checkpoint,
                          dst_ranks=tuple(dst_ranks) if dst_ranks is not None else None,
                          prefix=prefix, fmt=fmt, policy=policy, source_mode=None)
    return request, run.prepare(request, config)


def needed_source_ranks(src_strategy: Strategy | str | None, dst_strategy: Strategy | str | None,
                        dst_ranks: Iterable[int] | None = None) -> list[int]:
    """Sorted source ranks whose shards the given destination ranks read. Strategies only, no
    checkpoint bytes: what a node must download before it converts its ranks.

    Args:
        src_strategy: a strategy path or loaded Strategy; None for a complete source.
        dst_strategy: a strategy path or loaded Strategy; None for a complete output.
        dst_ranks: the destination ranks (None: all).

    Returns:
        The source ranks, sorted; [0] for a complete source.

    Raises:
        ReshardError: a malformed strategy, or strategies that do not fit each other.
    """
    src = _strategy(src_strategy)
    if src is None:
        return [0]
    return plan_from_strategies(None, src, _strategy(dst_strategy),
                                dst_ranks=dst_ranks).needed_source_ranks()


def write_merged_strategy(strategy: Strategy | str, out_file: str) -> None:
    """Merge a strategy folder / per-stage files into one file (MindSpore's merged format),
    written to a temporary name then renamed. Reads the sources only; the output is new.

    Args:
        strategy: a strategy file or folder path, or a loaded Strategy.
        out_file: the merged file's path (replaced whole, fsynced: never half written).

    Raises:
        ReshardError: a malformed or empty strategy file, stages that disagree.
        OSError: out_file cannot be written.
    """
    write_atomic(out_file, merged_strategy_bytes(_strategy(strategy)), durable=True)


def transform(src_checkpoint: str, dst_checkpoint: str, *,
              src_strategy: Strategy | str | None = None,
              dst_strategy: Strategy | str | None = None, prefix: str = DEFAULT_PREFIX,
              fmt: str = registry.DEFAULT, process_num: int = 1, max_memory: int | None = None,
              dst_ranks: Iterable[int] | None = None, dry_run: bool = False,
              log_dir: str | None = None, step: Step | None = None,
              policy: PlanPolicy = PlanPolicy()) -> TransformReport:
    """Convert a local checkpoint: writes <dst_checkpoint>/rank_<r>/<prefix><r>.<fmt> for every
    destination rank (or those of dst_ranks).

    Dtypes are never converted; a rank already complete and verified is kept (a rerun
    converts only what is missing).

    Args:
        src_checkpoint: a complete .ckpt/.safetensors file, a folder of complete files (their
            union; a safetensors index decides which file holds each tensor), or a folder of
            rank_<r>/ folders (the last checkpoint in name order in each).
        dst_checkpoint: the output folder.
        src_strategy: a strategy file or folder path, or a loaded Strategy (parsed once);
            None for a complete checkpoint.
        dst_strategy: the same for the destination; None for a complete output.
        prefix: the output files' name prefix.
        fmt: a registered format (formats.registry): the output format.
        process_num: destination ranks converted at once (worker processes).
        max_memory: host-memory budget in bytes (default half of the available memory).
        dst_ranks: the ranks to convert (the source may then hold only the rank folders they
            need).
        dry_run: plan only (report.plan), write nothing.
        log_dir: one log file per converting process.
        step: the training step to read where the files are named by step (reshard.steps;
            None: the latest, the same in every rank folder).
        policy: what to do with parameters the strategies and the checkpoint disagree on
            (plan.PlanPolicy: by default an error).

    Returns:
        The TransformReport: ranks written and kept, files with their checksums, the expected
        peak memory, seconds; with dry_run, the plan.

    Raises:
        ReshardError: (str = one line naming the culprit) for any bad input, before anything
            is written: a missing or malformed source or strategy, a gap in the rank folders,
            a strategy that does not match the checkpoint's names or shapes, device counts
            that do not divide, uneven splits, a value the output format cannot hold, a budget
            too small, a destination overlapping the source or a strategy.
    """
    from . import run   # the orchestrator builds on this module's steps
    t0 = time.monotonic()
    config = ReshardConfig(process_num, max_memory, log_dir=log_dir)
    src, dst = _strategy(src_strategy), _strategy(dst_strategy)
    if not dry_run:
        if not os.path.exists(src_checkpoint):
            raise ReshardError(f"source checkpoint {src_checkpoint} does not exist")
        check_output(dst_checkpoint, "destination", {
            "source checkpoint": src_checkpoint,
            "source strategy": src.source if src else None,
            "destination strategy": dst.source if dst else None})
    request, plan = _local_request(src_checkpoint, dst_checkpoint, src, dst, prefix, fmt, dst_ranks,
                                   step, policy, config)
    if dry_run or not plan.with_headers:
        _, peak = memory_budget(plan, config)
        return TransformReport(expected_peak_bytes=peak, plan=plan, seconds=time.monotonic() - t0,
                               source_ranks=plan.needed_source_ranks())
    report = run.run(request, config, plan=plan)
    report.seconds = time.monotonic() - t0
    return report
