"""Conversions from and to Checkpoint 2.0 through the existing engine (plan, execute).

    source: a Checkpoint 2.0 folder (its layouts from metadata.json, no source strategy), or
            anything the engine reads (rank folders + source strategy, a complete checkpoint)
    output: 'ckpt' / 'safetensors' rank folders (or a complete checkpoint: no destination
            strategy), or 'checkpoint2': an iteration folder for the destination layout

The planner is unchanged: a Checkpoint 2.0 source is handed to it as a source strategy and rank
files (Checkpoint2.source_strategy / source_set); a Checkpoint 2.0 output is written from the
rank files the engine writes into a staging folder inside it, one plan per shard kind
(split_by_kind), each file then moved into the iteration folder (write.write_checkpoint2).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace

from ... import api
from ...errors import ReshardError
from ...plan import Headers, Plan
from ...sources import check_output
from ...strategy import Strategy
from .folder import KINDS, Checkpoint2, is_checkpoint2, read_checkpoint2
from .write import (DEFAULT_RELEASE, check_iteration_free, check_release, default_kind, release_of_common,
                    write_checkpoint2)

log = logging.getLogger("reshard")

OUTPUT_FORMATS = ("ckpt", "safetensors", "checkpoint2")


def check_source_strategy(ck: Checkpoint2, given: Strategy) -> None:
    """A source strategy given with a Checkpoint 2.0 folder must describe the same layouts as its
    metadata.json (compared as block assignments: an optimizer shard folded into the tensor
    map equals the same shard recorded as opt_weight_shard_size). ReshardError naming the
    parameter."""
    common = [n for n in given.layouts if n in ck.params]
    if not common:
        raise ReshardError(f"source strategy {given.source} names none of the parameters of "
                           f"{ck.metadata_path}")
    if given.stage_devices != ck.stage_devices or given.num_stages != ck.num_stages:
        raise ReshardError(f"source strategy {given.source} has {given.num_stages} stage(s) x "
                           f"{given.stage_devices} devices, {ck.metadata_path} "
                           f"{ck.num_stages} x {ck.stage_devices}")
    for name in common:
        mine = {lay.stage: lay for lay in ck.params[name].layouts}
        for lay in given.layouts[name]:
            other = mine.get(lay.stage)
            if other is None or not other.same_blocks(lay):
                raise ReshardError(f"parameter {name}: source strategy {given.source} lays it out "
                                   f"otherwise than {ck.metadata_path} (stage {lay.stage})")


@dataclass
class Source:
    """What the planner reads: the source set, its strategy, and the Checkpoint 2.0 parsed
    (None for another kind of source)."""
    source: object
    strategy: Strategy | None
    checkpoint2: Checkpoint2 | None


def open_source(src_checkpoint: str, src_strategy: Strategy | None = None, *,
                iteration: int | None = None) -> Source:
    """A local source: a Checkpoint 2.0 folder (auto-detected; its shards' headers checked
    against metadata.json; a given source strategy checked against it), or what
    api.find_sources reads."""
    if os.path.isdir(src_checkpoint) and is_checkpoint2(src_checkpoint) or iteration is not None:
        ck = read_checkpoint2(src_checkpoint, iteration)
        if src_strategy is not None:
            check_source_strategy(ck, src_strategy)
        headers = Headers(ck.base)
        ck.check_files(lambda name: headers.read(name))
        return Source(ck.source_set(), ck.source_strategy(), ck)
    return Source(api.find_sources(src_checkpoint), src_strategy, None)


def plan(src: Source, dst_strategy: Strategy | None, *, fmt: str = "safetensors",
         prefix: str = "checkpoint_", dst_ranks=None) -> Plan:
    """The full plan of a local source (skeleton, then headers). Every destination rank is
    named so a Checkpoint 2.0 saved with redundancy removed (ranks without files) plans."""
    world = dst_strategy.world_size if dst_strategy is not None else 1
    ranks = list(range(world)) if dst_ranks is None else list(dst_ranks)
    skeleton = api.plan_from_strategies(src.source, src.strategy, dst_strategy, dst_ranks=ranks,
                                        prefix=prefix, fmt=fmt)
    return api.complete_plan(skeleton, src.source.base)


def transform(src_checkpoint: str, dst_root: str, *, dst_strategy: Strategy | None = None,
              src_strategy: Strategy | None = None, fmt: str = "checkpoint2",
              iteration: int | None = None, dst_iteration: int | None = None,
              release: str | None = None, prefix: str | None = None, process_num: int = 1,
              max_memory: int | None = None) -> list[str]:
    """Convert a local source into dst_root: rank folders ('ckpt' / 'safetensors') or a
    Checkpoint 2.0 iteration ('checkpoint2': dst_iteration default the source's iteration,
    else common.json's step_num / the global_step value; release: the MindFormers release whose
    common.json fields and metadata.json formatting to write, default the source's, else
    DEFAULT_RELEASE; prefix: the shards' prefix ('' none), default the source's, else 'CKP').
    Returns the written names relative to dst_root. ReshardError, one line, before writing."""
    if fmt not in OUTPUT_FORMATS:
        raise ReshardError(f"--format {fmt!r}: must be one of {', '.join(OUTPUT_FORMATS)}")
    src = open_source(src_checkpoint, src_strategy, iteration=iteration)
    check_output(dst_root, "destination", {
        "source checkpoint": src_checkpoint,
        "destination strategy": dst_strategy.source if dst_strategy else None})
    if fmt != "checkpoint2":
        p = plan(src, dst_strategy, fmt=fmt, prefix=prefix or "checkpoint_")
        report = api.execute(p, src.source.base, dst_root, process_num=process_num,
                             max_memory=max_memory)
        return sorted(report.checksums)

    ck = src.checkpoint2
    common = ck.common_info() if ck is not None else None
    if release is None:
        release = release_of_common(common) or DEFAULT_RELEASE
        if release == "1.7":
            release = "1.8"
    check_release(release)
    if dst_iteration is None:
        dst_iteration = ck.iteration if ck is not None else (common or {}).get("step_num")
    if dst_iteration is None:
        raise ReshardError("the source has no iteration: name the destination iteration (--iteration)")
    check_iteration_free(dst_root, int(dst_iteration))
    kinds = {n: p.kind for n, p in ck.params.items()} if ck is not None else {}
    if ck is not None:
        # values no metadata describes are in the files of one kind: global_step, learning_rate
        # in the opt files (kept there)
        headers = Headers(ck.base)
        for rel in ck.files["opt"].values():
            for name in headers.read(ck.rel(rel)):
                kinds.setdefault(name, "opt")
    p = plan(src, dst_strategy, fmt="safetensors", prefix="rank_")
    parts = split_by_kind(p, lambda name: kinds.get(name) or default_kind(name))
    os.makedirs(dst_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".reshard-staging-", dir=dst_root)
    try:
        files: dict[int, dict[str, str]] = {}
        for kind, part in parts.items():
            api.execute(part, src.source.base, os.path.join(staging, kind), process_num=process_num,
                        max_memory=max_memory, durable=False)
            for rp in part.ranks:
                files.setdefault(rp.rank, {})[kind] = os.path.join(staging, kind, rp.path)
        return write_checkpoint2(dst_root, dst_strategy, files, iteration=int(dst_iteration),
                                 common=common, release=release,
                                 prefix=prefix if prefix is not None else (ck.prefix if ck else "CKP"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def split_by_kind(p: Plan, kind_of) -> dict[str, Plan]:
    """The plan as one plan per shard kind ('model', 'opt': kind_of(name)), each rank keeping
    the tensors of that kind (ranks holding none are left out): executed apart, each rank file
    is one of MindFormers' shards as it is. Ranks with the same bytes stay so (same_as)."""
    out = {}
    for kind in KINDS:
        ranks = tuple(r for r in (replace(rp, tensors=tuple(t for t in rp.tensors if kind_of(t.name) == kind))
                                  for rp in p.ranks) if r.tensors)
        if ranks:
            kept = {r.rank for r in ranks}
            out[kind] = replace(p, ranks=ranks, same_as={d: f for d, f in p.same_as.items()
                                                         if d in kept and f in kept})
    return out
