"""Conversions from and to Checkpoint 2.0 through the existing engine (plan, execute).

    source: a Checkpoint 2.0 folder (its layouts from metadata.json, no source strategy), or
            anything the engine reads (rank folders + source strategy, a complete checkpoint)
    output: 'ckpt' / 'safetensors' rank folders (or a complete checkpoint: no destination
            strategy), or 'checkpoint2': an iteration folder for the destination layout

The planner is unchanged: a Checkpoint 2.0 source is handed to it as a source strategy and rank
files (Checkpoint2.source_strategy / source_set); for a Checkpoint 2.0 output the full plan is
made the plan of its shard files (write.plan_iteration: model and opt files of every rank, under
their final names), executed by the engine's orchestrator (reshard.run) in one run, and
metadata.json, common.json and the tracker are written from the plan (write.write_checkpoint2).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Collection

from ... import api
from ...config import ReshardConfig
from ...errors import ReshardError
from ...execute import MANIFEST_DIR, done_checksum
from ...finish import TransformReport, source_files
from ...formats import FormatError, open_reader, registry
from ...plan import Headers, Plan, PlanPolicy
from ...run import Request, Stage, result_digest, run, state_files
from ...sources import DEFAULT_PREFIX, SourceSet, check_output, is_url
from ...strategy import Strategy
from .folder import COMMON, KINDS, METADATA, TRACKER, Checkpoint2, is_checkpoint2, read_checkpoint2
from .write import (DEFAULT_RELEASE, IterationPlan, check_carried, check_iteration_free, check_release,
                    default_kind, plan_iteration, release_of_common, write_checkpoint2)

# A remote source's files that the plan fetches rather than reads in place land in a hidden
# folder beside the destination (.<name><suffix>), which goes when the conversion ends.
FETCH_SUFFIX = ".reshard-source"


def check_strategy_against_metadata(ck: Checkpoint2, given: Strategy) -> None:
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
class Written:
    """What convert_checkpoint wrote: names relative to the destination and their (size, CRC32 hex) as
    written (for the integrity manifest); the plan (for a Checkpoint 2.0 output, before it was
    split by shard kind); files_written: the names this run wrote (the others were written by
    this same conversion before and kept)."""
    files: list[str]
    checksums: dict[str, tuple[int, str]]
    plan: Plan
    files_written: list[str]


@dataclass
class Source:
    """What the planner reads: the source set, its strategy, the Checkpoint 2.0 parsed (None
    for another kind of source) and the headers read so far (a Checkpoint 2.0's shards)."""
    source: SourceSet
    strategy: Strategy | None
    checkpoint2: Checkpoint2 | None
    headers: Headers | None = None

    @property
    def remote(self) -> bool:
        return is_url(self.source.base)

    def open(self, name: str):
        """A reader of source file `name` (relative to the source's base): a Checkpoint 2.0's
        through its headers (in place by ranged GETs when remote), another's on local disk."""
        if self.headers is not None:
            return self.headers.open(name)
        try:
            return open_reader(self.source.path_of(name))
        except FormatError as e:
            raise ReshardError(str(e)) from None

    def kinds(self) -> dict[str, str]:
        """Parameter name -> 'model' / 'opt' for every value of a Checkpoint 2.0 source: as
        metadata.json stores it, and the values it does not describe (global_step,
        learning_rate) by the files holding them."""
        ck = self.checkpoint2
        if ck is None:
            return {}
        out = {n: p.kind for n, p in ck.params.items()}
        for kind in ("opt", "model"):
            for file in ck.files[kind].values():
                for name in self.headers.read(ck.rel(file)):
                    out.setdefault(name, kind)
        return out


def open_checkpoint(src_checkpoint: str, src_strategy: Strategy | None = None, *,
                iteration: int | None = None, local_root: str | None = None) -> Source:
    """A Checkpoint 2.0 folder (auto-detected; local, obs:// or s3://; its shards' headers
    checked against metadata.json, a remote one's by ranged GETs; a given source strategy
    checked against it), or another source as api.find_sources / find_remote_sources classify
    it. local_root: where a remote source's files would be fetched (nothing is written there by
    this)."""
    if iteration is not None or is_checkpoint2(src_checkpoint):
        ck = read_checkpoint2(src_checkpoint, iteration)
        if src_strategy is not None:
            check_strategy_against_metadata(ck, src_strategy)
        if is_url(ck.base):
            import obs_io
            headers = Headers(local_root or ".", remote_root=ck.base, s3_config=obs_io.current_config())
        else:
            headers = Headers(ck.base)
        headers.prefetch(ck.rel(f) for kind in KINDS for f in ck.files[kind].values())
        ck.check_files(lambda name: headers.read(name))
        return Source(ck.source_set(), ck.source_strategy(), ck, headers)
    if is_url(src_checkpoint):   # read in place by ranged GETs, or fetched, as the engine reads it
        import obs_io
        source = api.find_remote_sources(src_checkpoint)
        headers = Headers(local_root or ".", remote_root=source.base, s3_config=obs_io.current_config())
        return Source(source, src_strategy, None, headers)
    return Source(api.find_sources(src_checkpoint), src_strategy, None)


def plan(src: Source, dst_strategy: Strategy | None, *, fmt: str = "safetensors",
         prefix: str = DEFAULT_PREFIX, dst_ranks=None, local_root: str | None = None,
         policy: PlanPolicy = PlanPolicy()) -> Plan:
    """The full plan (skeleton, then headers). Every destination rank is named so a Checkpoint
    2.0 saved with redundancy removed (ranks without files) plans. A remote source's files are
    read in place or fetched under local_root, as plan.choose_mode decides per file."""
    world = dst_strategy.world_size if dst_strategy is not None else 1
    ranks = list(range(world)) if dst_ranks is None else list(dst_ranks)
    skeleton = api.plan_from_strategies(src.source, src.strategy, dst_strategy, dst_ranks=ranks,
                                        prefix=prefix, fmt=fmt, policy=policy)
    if src.remote:
        return api.complete_plan(skeleton, local_root, source_mode="auto")
    return api.complete_plan(skeleton, src.source.base)


def convert_checkpoint(src_checkpoint: str, dst_root: str, *, dst_strategy: Strategy | None = None,
              src_strategy: Strategy | None = None, fmt: str = "checkpoint2",
              iteration: int | None = None, dst_iteration: int | None = None,
              release: str | None = None, prefix: str | None = None, process_num: int = 1,
              max_memory: int | None = None, policy: PlanPolicy = PlanPolicy(),
              dst_ranks=None) -> Written:
    """Convert a source into local dst_root: rank folders ('ckpt' / 'safetensors') or a
    Checkpoint 2.0 iteration ('checkpoint2': dst_iteration default the source's iteration, else
    the legacy source's step_num or global_step value (its epoch_num, step_num, global_step,
    loss_scale values go to common.json); release: the MindFormers release whose common.json fields and
    metadata.json formatting to write, default the source's, else DEFAULT_RELEASE; prefix: the
    shards' prefix ('' none), default the source's, else 'CKP'; policy: plan.PlanPolicy). The source: a Checkpoint 2.0
    folder (local, obs://, s3://: read in place by ranged GETs, or fetched into a hidden folder
    beside dst_root, removed at the end), or another the engine reads (local, or remote: likewise). dst_ranks: the
    destination ranks to write (rank folders only; None: all; a Checkpoint 2.0 in blocks:
    prepare_checkpoint2). ReshardError, one line, before anything is written."""
    if registry.get(fmt, "--format").own_path and fmt != "checkpoint2":
        raise ReshardError(f"--format {fmt}: its sets are written by its own path, not from this one")
    if fmt == "checkpoint2":
        if dst_ranks is not None:
            raise ReshardError("a Checkpoint 2.0 folder is written whole: it does not go with a "
                               "block of destination ranks (--rank_id)")
        conversion = prepare_checkpoint2(
            src_checkpoint, dst_root, dst_strategy=dst_strategy, src_strategy=src_strategy,
            iteration=iteration, dst_iteration=dst_iteration, release=release, prefix=prefix,
            process_num=process_num, max_memory=max_memory, policy=policy)
        return conversion.write_all()
    return prepare_ranks(src_checkpoint, dst_root, dst_strategy=dst_strategy, src_strategy=src_strategy,
                         fmt=fmt, iteration=iteration, prefix=prefix, process_num=process_num,
                         max_memory=max_memory, policy=policy, dst_ranks=dst_ranks).write_all()


@dataclass(frozen=True)
class RankConversion:
    """A conversion to rank folders (or a complete checkpoint), planned and checked
    (prepare_ranks), nothing written yet: names() and result_digest() say what it writes
    (a rerun's check), write_all() writes it. plan: the plan of its destination ranks."""
    src: Source
    plan: Plan
    dst_root: str
    fetched: str
    config: ReshardConfig

    def names(self) -> list[str]:
        """The files written, relative to dst_root."""
        return [rp.path for rp in self.plan.ranks]

    def result_digest(self) -> str:
        """What defines the result (the integrity manifest's result_digest): reshard.run's."""
        return result_digest(self.plan, self.plan.local_root)

    def write_all(self) -> Written:
        os.makedirs(self.dst_root, exist_ok=True)
        report = _execute(self.src, self.plan, self.dst_root, self.fetched, self.config)
        return Written(sorted(report.checksums), report.checksums, self.plan, sorted(report.files_written))


def prepare_ranks(src_checkpoint: str, dst_root: str, *, dst_strategy: Strategy | None = None,
                  src_strategy: Strategy | None = None, fmt: str = "safetensors",
                  iteration: int | None = None, prefix: str | None = None, process_num: int = 1,
                  max_memory: int | None = None, policy: PlanPolicy = PlanPolicy(),
                  dst_ranks=None) -> RankConversion:
    """A conversion to rank folders under local dst_root (the arguments as convert_checkpoint's),
    planned with every check done: ReshardError, one line, before anything is written."""
    src, fetched = _open(src_checkpoint, dst_root, src_strategy, dst_strategy, iteration)
    p = plan(src, dst_strategy, fmt=fmt, prefix=prefix or DEFAULT_PREFIX, local_root=fetched,
             policy=policy, dst_ranks=dst_ranks)
    return RankConversion(src, p, dst_root, fetched, ReshardConfig(process_num, max_memory, release_downloads=True))


def _open(src_checkpoint: str, dst_root: str, src_strategy: Strategy | None,
          dst_strategy: Strategy | None, iteration: int | None) -> tuple[Source, str]:
    """The source opened and checked, the destination checked against it; and the hidden folder
    beside dst_root where a remote source's fetched files would go."""
    parent, name = os.path.split(os.path.abspath(dst_root))
    fetched = os.path.join(parent, f".{name}{FETCH_SUFFIX}")
    src = open_checkpoint(src_checkpoint, src_strategy, iteration=iteration, local_root=fetched)
    check_output(dst_root, "destination", {
        "source checkpoint": src_checkpoint,
        "destination strategy": dst_strategy.source if dst_strategy else None})
    return src, fetched


def _execute(src: Source, p: Plan, dst_root: str, fetched: str, config: ReshardConfig) -> TransformReport:
    """Write a full plan's files under dst_root through the engine's orchestrator (reshard.run),
    a remote source's fetched files downloaded into `fetched` while the ranks convert (each
    removed once read: config.release_downloads), the folder gone at the end."""
    stage = Stage(fetched) if src.remote else None
    request = Request(src.source, p.src_strategy, p.dst_strategy, dst_root, stage=stage,
                      prefix=p.prefix, fmt=p.fmt, policy=p.policy)
    try:
        return run(request, config, plan=p)
    finally:
        if src.remote:
            shutil.rmtree(fetched, ignore_errors=True)


@dataclass(frozen=True)
class Checkpoint2Conversion:
    """A conversion to a Checkpoint 2.0 iteration, planned and checked (prepare_checkpoint2),
    nothing written yet. Its shards are written by blocks of destination ranks (write_block:
    each reads only its ranks' source files; blocks may run in several processes, each having
    prepared the same conversion, into one dst_root), then finish() writes metadata.json,
    common.json and the tracker once, from the plan, after every block. write_all() does both
    in one engine run. plan: the full plan of every destination rank (both kinds of values)."""
    src: Source
    plan: Plan
    iteration: IterationPlan
    common: dict | None
    release: str
    fetched: str
    config: ReshardConfig

    def write_block(self, dst_ranks) -> dict[str, tuple[int, str]]:
        """Write the model and opt shards of destination ranks dst_ranks (None: all) under
        their final names; returns their names relative to dst_root -> (size, CRC32 hex). A
        block's remote source files are fetched into a folder of its own (blocks run side by
        side). A block interrupted leaves its finished shards with the engine's records: the
        block run again keeps them (the iteration folder is still this conversion's)."""
        return self.write_ranks(dst_ranks).checksums

    def write_ranks(self, dst_ranks) -> Written:
        """write_block, as a Written: files_written the shards this run wrote (the others of the
        block were written by this same conversion before and kept)."""
        dst_ranks = None if dst_ranks is None else tuple(dst_ranks)
        fetched = self.fetched if not dst_ranks else f"{self.fetched}-{min(dst_ranks)}"
        os.makedirs(self.iteration.root, exist_ok=True)
        report = _execute(self.src, self.iteration.block(dst_ranks), self.iteration.root, fetched, self.config)
        return Written(sorted(report.checksums), dict(report.checksums), self.plan, sorted(report.files_written))

    def names(self) -> list[str]:
        """Every file of the finished set, relative to dst_root: the shards, metadata.json,
        common.json, the tracker."""
        it = self.iteration
        return [rp.path for rp in it.shards.ranks] + [f"{it.folder}/{METADATA}", f"{it.folder}/{COMMON}", TRACKER]

    def result_digest(self) -> str:
        """What defines the result (the integrity manifest's result_digest): the engine's digest
        of the full plan (reshard.run.result_digest: each rank's pieces and the versions of the
        source files it reads), with what the plan does not hold: the iteration, the release,
        the shards' prefix and common.json's values. Computed before anything is written: a
        rerun finds its result by it, locally or on the store."""
        it = self.iteration
        return hashlib.sha256(json.dumps(
            [result_digest(self.plan, self.plan.local_root), it.iteration, self.release, it.prefix, self.common],
            sort_keys=True, default=str).encode()).hexdigest()

    def check_free(self) -> None:
        """The iteration folder holds nothing but shards of this conversion
        (write.check_iteration_free; ReshardError)."""
        check_iteration_free(self.iteration.root, self.iteration.iteration,
                             {rp.path.rsplit("/", 1)[1] for rp in self.iteration.shards.ranks})

    def shards_done(self) -> dict[str, tuple[int, str]] | None:
        """Every shard's (size, CRC32 hex) when every shard of the plan is under dst_root as
        the engine recorded writing it for this very plan (execute.is_done: blocks written by
        any process of this conversion), else None: finish() may follow."""
        shards = self.iteration.shards
        files = source_files(shards, self.fetched if self.src.remote else self.src.source.base)
        out = {}
        for rp in shards.ranks:
            got = done_checksum(files, self.iteration.root, rp, shards.fmt)
            if got is None:
                return None
            out[rp.path] = got
        return out

    def finish(self, elsewhere: Collection[str] = ()) -> dict[str, tuple[int, str]]:
        """After every block: metadata.json, common.json and the tracker (write.write_checkpoint2),
        the engine's records of the shards removed. elsewhere: the shards other nodes wrote
        (names relative to dst_root), not here. Returns the names written -> (size, CRC32
        hex). ReshardError, nothing written: a shard missing (a block not written)."""
        written = write_checkpoint2(self.iteration, common=self.common, release=self.release,
                                    elsewhere=elsewhere)
        forget_shards(self.iteration)
        return written

    def write_all(self) -> Written:
        """Every shard in one engine run, then finish(); the iteration folder goes again if
        anything fails (no shard stays under its final name without its metadata.json)."""
        with _writing(self.iteration):
            shards = self.write_ranks(None)
            finished = self.finish()
        written = {**shards.checksums, **finished}
        return Written(sorted(written), written, self.plan, sorted([*shards.files_written, *finished]))


def prepare_checkpoint2(src_checkpoint: str, dst_root: str, *, dst_strategy: Strategy | None = None,
                        src_strategy: Strategy | None = None, iteration: int | None = None,
                        dst_iteration: int | None = None, release: str | None = None,
                        prefix: str | None = None, process_num: int = 1, max_memory: int | None = None,
                        policy: PlanPolicy = PlanPolicy(), check_free: bool = True) -> Checkpoint2Conversion:
    """A conversion to a Checkpoint 2.0 iteration under local dst_root (the arguments as
    convert_checkpoint's), planned for every destination rank with every check done, the values carried
    from different source ranks compared in the source: ReshardError, one line, before anything
    is written. Deterministic: every block's process prepares the same conversion. check_free:
    the iteration folder is checked (Checkpoint2Conversion.check_free); False: the caller
    checks it, after looking whether the folder holds this very result already."""
    src, fetched = _open(src_checkpoint, dst_root, src_strategy, dst_strategy, iteration)
    ck = src.checkpoint2
    release = check_release(release or _release_of(ck))
    p = plan(src, dst_strategy, fmt="safetensors", prefix="rank_", local_root=fetched, policy=policy)
    common = ck.common_info() if ck is not None else training_state(p, src.open)
    kinds = src.kinds()
    it = plan_iteration(dst_root, p, lambda name: kinds.get(name) or default_kind(name),
                        iteration=_iteration_of(ck, common, dst_iteration),
                        prefix=prefix if prefix is not None else (ck.prefix if ck else "CKP"))
    conversion = Checkpoint2Conversion(src, p, it, common, release, fetched,
                                       ReshardConfig(process_num, max_memory, release_downloads=True))
    if check_free:
        conversion.check_free()
    check_carried(it, src.open)
    return conversion


def _release_of(ck: Checkpoint2 | None) -> str:
    """The MindFormers release a Checkpoint 2.0 output is written for when none is named: the
    source's (1.7's common.json is 1.8's), else DEFAULT_RELEASE."""
    release = release_of_common(ck.common_info() if ck is not None else None) or DEFAULT_RELEASE
    return "1.8" if release == "1.7" else release


def _iteration_of(ck: Checkpoint2 | None, common: dict, dst_iteration: int | None) -> int:
    """The iteration to write: the one named, else the source's iteration, else a legacy
    source's step_num or global_step value. ReshardError when there is none."""
    if dst_iteration is None:
        dst_iteration = ck.iteration if ck is not None else (common.get("step_num") or common.get("global_step"))
    if dst_iteration is None:
        raise ReshardError("the source holds no step_num or global_step: name the iteration to "
                           "write (--iteration)")
    return int(dst_iteration)


@contextlib.contextmanager
def _writing(it: IterationPlan):
    """The iteration folder while one run writes all of it (it held nothing but shards of this
    conversion: write.check_iteration_free): if the run does not complete, the folder and the
    engine's records of its shards go (no shard stays under its final name without the
    metadata.json that describes it)."""
    done = False
    try:
        yield
        done = True
    finally:
        if not done:
            forget_shards(it)
            shutil.rmtree(it.out_dir, ignore_errors=True)


def forget_shards(it: IterationPlan) -> None:
    """Remove the engine's private records of the iteration's shards below it.root (its state
    folder too once empty); those of other conversions into the same root stay."""
    state = os.path.join(it.root, MANIFEST_DIR)
    try:
        names = [f"{MANIFEST_DIR}/{n}" for n in os.listdir(state)]
    except FileNotFoundError:
        return
    ours = {rp.rank for rp in it.shards.ranks}
    # state_files(names, keep) names the records of the ranks not kept: all of them, minus
    # those of the ranks that are not ours, are ours
    for name in set(state_files(names, ())) - set(state_files(names, ours)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(it.root, name))
    with contextlib.suppress(OSError):
        os.rmdir(state)


# MindFormers' CommonInfo fields that a legacy checkpoint keeps as values (CheckpointMonitor
# saves them beside the weights).
STATE_VALUES = ("epoch_num", "step_num", "global_step", "loss_scale")


def training_state(p: Plan, open_file: Callable[[str], object]) -> dict:
    """common.json's values from a legacy source: the scalars of STATE_VALUES that the plan
    carries into its first rank (absent ones left out); open_file: a source file's relative
    name -> an open reader (Source.open: a remote one's read in place)."""
    out = {}
    for t in p.ranks[0].tensors if p.ranks else ():
        if t.carried and t.name in STATE_VALUES and math.prod(t.shape) == 1:
            with open_file(t.pieces[0].src_file) as r:
                value = r.read(t.name).reshape(-1)[0].item()
            out[t.name] = float(value) if t.name == "loss_scale" else int(value)
    return out
