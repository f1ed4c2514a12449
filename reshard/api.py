"""Public entry points of the engine (the contract cloud_entry and the CLI code against).

transform() = load strategies -> find source files -> plan from strategies (which source ranks
are needed) -> read their headers -> full plan (every check) -> budget -> execute. Everything
that can be wrong with the input is found before the first byte is written.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ReshardError
from .formats.base import write_file_atomic
from .execute import PROCESS_BASE_BYTES, expected_peak, rank_cost, run_plan
from .plan import Plan, Sources, build_plan
from .strategy import Strategy, load_strategy, merged_strategy_bytes

__all__ = ["ReshardError", "TransformReport", "needed_source_ranks", "write_merged_strategy",
           "transform", "load_strategy", "make_plan", "find_sources", "default_max_memory"]

log = logging.getLogger("reshard")

_CKPT_SUFFIXES = (".ckpt", ".safetensors")
_RANK_DIR = re.compile(r"^rank_(\d+)$")


@dataclass
class TransformReport:
    ranks_written: list[int] = field(default_factory=list)
    ranks_skipped: list[int] = field(default_factory=list)   # already complete and verified
    expected_peak_bytes: int = 0
    seconds: float = 0.0
    source_ranks: list[int] = field(default_factory=list)    # source ranks the plan reads
    plan: Plan | None = None


def default_max_memory() -> int:
    """Half of the memory available now: room for the page cache and the rest of the job."""
    import psutil
    return int(psutil.virtual_memory().available * 0.5)


def _checkpoint_files(folder: str) -> list[str]:
    return sorted(f for f in glob.glob(os.path.join(folder, "*"))
                  if f.endswith(_CKPT_SUFFIXES) and os.path.isfile(f))


def find_sources(src_checkpoint: str) -> tuple[bool, dict[int, str]]:
    """(complete, files): a complete file; a folder of complete files (their union is the
    model); or model_dir with rank_<r>/ folders (the last checkpoint in name order in each)."""
    if os.path.isfile(src_checkpoint):
        if not src_checkpoint.endswith(_CKPT_SUFFIXES):
            raise ReshardError(f"source checkpoint {src_checkpoint} is not a .ckpt or "
                               f".safetensors file")
        return True, {0: src_checkpoint}
    if not os.path.isdir(src_checkpoint):
        raise ReshardError(f"source checkpoint {src_checkpoint} does not exist")
    rank_dirs = {int(m.group(1)): os.path.join(src_checkpoint, d)
                 for d in os.listdir(src_checkpoint)
                 if (m := _RANK_DIR.match(d)) and os.path.isdir(os.path.join(src_checkpoint, d))}
    if not rank_dirs:
        files = _checkpoint_files(src_checkpoint)
        if not files:
            raise ReshardError(f"source checkpoint folder {src_checkpoint} holds no .ckpt or "
                               f".safetensors file and no rank_<r> folder")
        return True, dict(enumerate(files))
    files = {}
    for r, d in sorted(rank_dirs.items()):
        cands = _checkpoint_files(d)
        if not cands:
            continue     # an empty rank folder: a gap, reported when the rank is needed
        if len({os.path.splitext(c)[1] for c in cands}) > 1:
            raise ReshardError(f"{d} mixes .ckpt and .safetensors files")
        if len(cands) > 1:
            log.info("rank %d: %d checkpoints in %s, using the last in name order: %s", r,
                     len(cands), d, os.path.basename(cands[-1]))
        files[r] = cands[-1]
    return False, files


def _read_headers(files: dict[int, str], keys: Iterable[int]) -> dict[int, dict]:
    from .formats import FormatError, open_reader
    metas = {}
    for k in keys:
        try:
            with open_reader(files[k]) as r:
                metas[k] = dict(r.metas)
        except FormatError as e:
            raise ReshardError(str(e)) from None
    return metas


def make_plan(src_checkpoint: str | None, *, src_strategy=None, dst_strategy=None,
              prefix: str = "checkpoint_", fmt: str = "ckpt", dst_ranks=None) -> Plan:
    """The full plan (with checkpoint headers); or from strategies alone when src_checkpoint is
    None or does not exist. Strategies may be paths or loaded Strategy objects."""
    src = src_strategy if isinstance(src_strategy, Strategy) or src_strategy is None \
        else load_strategy(src_strategy)
    dst = dst_strategy if isinstance(dst_strategy, Strategy) or dst_strategy is None \
        else load_strategy(dst_strategy)
    if fmt not in ("ckpt", "safetensors"):
        raise ReshardError(f"--format {fmt!r}: must be ckpt or safetensors")
    if src_checkpoint is None or not os.path.exists(src_checkpoint):
        return build_plan(src, dst, Sources(src is None, {}), dst_ranks=dst_ranks, prefix=prefix,
                          fmt=fmt)
    complete, files = find_sources(src_checkpoint)
    if complete:
        return build_plan(src, dst, Sources(True, files, _read_headers(files, files)),
                          dst_ranks=dst_ranks, prefix=prefix, fmt=fmt)
    if src is None:
        raise ReshardError(f"{src_checkpoint} holds rank_<r> folders: give the source strategy "
                           f"(--src_strategy)")
    if dst_ranks is None:
        for r in range(src.world_size):
            if r not in files:
                raise ReshardError(f"{os.path.join(src_checkpoint, f'rank_{r}')}: missing or "
                                   f"empty (the source strategy has {src.world_size} ranks)")
        extra = sorted(r for r in files if r >= src.world_size)
        if extra:
            raise ReshardError(f"{src_checkpoint}: rank_{extra[0]} is beyond the "
                               f"{src.world_size} ranks of source strategy {src.source}")
    skeleton = build_plan(src, dst, Sources(False, files), dst_ranks=dst_ranks, prefix=prefix,
                          fmt=fmt)
    needed = skeleton.needed_source_ranks()
    for r in needed:
        if r not in files:
            raise ReshardError(f"{os.path.join(src_checkpoint, f'rank_{r}')}: missing or empty "
                               f"(needed by the destination ranks)")
    present = [r for r in sorted(files) if r < src.world_size]
    metas = _read_headers(files, present if dst_ranks is None else needed)
    return build_plan(src, dst, Sources(False, {r: files[r] for r in metas}, metas),
                      dst_ranks=dst_ranks, prefix=prefix, fmt=fmt)


def needed_source_ranks(src_strategy: str | None, dst_strategy: str | None,
                        dst_ranks: Iterable[int] | None = None) -> list[int]:
    """Sorted source ranks whose shards the given destination ranks read (all when None).
    Strategies only, no checkpoint bytes. A complete source (src_strategy None) -> [0]."""
    if not src_strategy:
        return [0]
    plan = make_plan(None, src_strategy=src_strategy, dst_strategy=dst_strategy or None,
                     dst_ranks=dst_ranks)
    return plan.needed_source_ranks()


def write_merged_strategy(strategy: str, out_file: str) -> None:
    """Merge a strategy folder / per-stage files into one file (MindSpore's merged format),
    written to a temporary name then renamed. Reads the sources only; the output is new."""
    write_file_atomic(out_file, merged_strategy_bytes(load_strategy(strategy)))


def transform(src_checkpoint: str, dst_checkpoint: str, *, src_strategy: str | None = None,
              dst_strategy: str | None = None, prefix: str = "checkpoint_", fmt: str = "ckpt",
              process_num: int = 1, max_memory: int | None = None,
              dst_ranks: Iterable[int] | None = None, dry_run: bool = False,
              log_dir: str | None = None) -> TransformReport:
    """Convert local checkpoints; writes <dst_checkpoint>/rank_<r>/<prefix><r>.<fmt>."""
    t0 = time.monotonic()
    if process_num < 1:
        raise ReshardError(f"process_num {process_num}: must be at least 1")
    if not dry_run and not os.path.exists(src_checkpoint):
        raise ReshardError(f"source checkpoint {src_checkpoint} does not exist")
    plan = make_plan(src_checkpoint, src_strategy=src_strategy or None,
                     dst_strategy=dst_strategy or None, prefix=prefix, fmt=fmt,
                     dst_ranks=dst_ranks)
    for n in plan.notes:
        log.info("%s", n)
    budget = max_memory if max_memory is not None else default_max_memory()
    costs = [rank_cost(rp) for rp in plan.ranks]
    if plan.with_headers:
        for rp, cost in zip(plan.ranks, costs):
            if cost + PROCESS_BASE_BYTES > budget:
                big = max(rp.tensors, key=lambda t: t.buffer_bytes)
                raise ReshardError(f"max_memory {budget} bytes is below the "
                                   f"{cost + PROCESS_BASE_BYTES} that destination rank "
                                   f"{rp.rank} needs (largest tensor {big.name})")
    peak = expected_peak(costs, process_num, budget - PROCESS_BASE_BYTES)
    report = TransformReport(expected_peak_bytes=peak, plan=plan,
                             source_ranks=plan.needed_source_ranks())
    log.info("plan: %d destination ranks, %d processes, expected peak %.1f MiB "
             "(budget %.1f MiB)", len(plan.ranks), process_num, peak / 2**20, budget / 2**20)
    if dry_run:
        report.seconds = time.monotonic() - t0
        return report
    res = run_plan(plan, dst_checkpoint, fmt, process_num=process_num,
                   budget=budget - PROCESS_BASE_BYTES, log_dir=log_dir)
    report.ranks_written, report.ranks_skipped = res.written, res.skipped
    report.seconds = time.monotonic() - t0
    return report
