"""The engine's one orchestrator: run(request, config, subscriber) converts a checkpoint in a
fixed order, for both tools (transform-checkpoint and cloud-entry call it; neither assembles
the steps itself). torch.distributed.checkpoint's _load_state_dict is the model: the planner
is separate from execution, and the call order is written down here, once.

The call order:

1. classify   the caller: the source checkpoint as a SourceSet (api.find_sources for a local
              path, sources.classify for a listing; Request.source)
2. plan       the skeleton from strategies and the source's file list (api.plan_from_strategies)
3. complete   the full plan: headers read (a remote source's by ranged GETs, nothing
              downloaded), every check of the input (prepare() does 2-3; Subscriber.on_plan).
              A dry run stops here.
4. rerun      a remote output whose manifest records this very conversion is left as it is:
   check      nothing converted or uploaded (same_result)
5. claim      the memory budget of config.process_num processes checked (an error leaves no
              output behind), then the output is this run's while it is written
              (Request.claim; reshard.claim)
6. stage      what killed runs left incomplete under this run's keys is aborted; the staging
              folders are made, and Stage.prepare says which fetched files to download
7. finish     finish.finish_plan: ranks still to convert, downloads, CRC duties, upload set,
              budget (Subscriber.on_start)
8. execute    finish.execute_finished: ranks written while the downloads run, each uploaded
              while written (Request.upload_to); Subscriber.on_rank_done per rank, then
              Subscriber.finish (work handed off ends: e.g. uploads of kept ranks), Stage.close
9. manifest   Subscriber.still_ours, then the set's conversion_manifest.json written locally
              and, last, on the remote output (its presence says the set is complete there);
              the per-rank upload records it supersedes are removed

What defines "the same inputs" is the engine's: inputs_id() (of conversion_inputs() for
transform-checkpoint, of the job's result for cloud-entry) for a run's claim, markers and set
(the same for its reruns and for the parallel processes of its blocks), the per-rank digests
(execute.rank_digest) recorded in the engine's private state files below the output
(MANIFEST_DIR: state_files() names them for a caller that prunes), and result_digest() of a
whole plan in the set's manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

from . import integrity
from .api import complete_plan, plan_from_strategies
from .config import ReshardConfig
from .errors import ReshardError
from .execute import MANIFEST_DIR, forget_uploads, rank_digest
from .formats import registry
from .finish import TransformReport, execute_finished, finish_plan, memory_budget, source_files
from .plan import Plan, PlanPolicy
from .sources import DEFAULT_PREFIX, RANK_DIR, SourceSet, is_url, output_name
from .strategy import Strategy
from .subscriber import Subscriber

log = logging.getLogger("reshard")


class Stage:
    """Step 6's place for a remote source: `root`, where the files the plan fetches are
    downloaded while converting. This default makes the folder and downloads every fetched
    file; a caller that keeps a cache (cloud-entry) or owns a staging folder (transform-
    checkpoint) overrides prepare and close.

    Args:
        root: the local folder the fetched files go to.
    """

    def __init__(self, root: str):
        self.root = root

    def prepare(self, plan: Plan) -> list[str]:
        """Make what the run writes into.

        Args:
            plan: the full plan.

        Returns:
            The fetched files (relative names) to download now; the others must be under
            root already.
        """
        fetched = plan.files_in_mode("fetch")
        if fetched:
            os.makedirs(self.root, exist_ok=True)
        return fetched

    def close(self, plan: Plan, ok: bool) -> None:
        """After execution.

        Args:
            plan: the plan executed.
            ok: it succeeded.
        """


@dataclass(frozen=True)
class SetRecord:
    """What the set's manifest says of its inputs (integrity.SetManifest).

    Attributes:
        source_location: the source as the user named it.
        strategies: the strategies, as the manifest records them.
    """
    source_location: str
    strategies: dict


@dataclass(frozen=True)
class Request:
    """One conversion, as a caller asks for it.

    Attributes:
        source: the classified source checkpoint (step 1), None for a plan from strategies alone
            (a dry run).
        src_strategy: the source strategy, parsed once by the caller (None: complete).
        dst_strategy: the destination strategy, likewise (None: complete).
        dst_root: the local folder the ranks are written to (a remote output's staging copy).
        stage: where the fetched files of a remote source go (default: the source's own folder,
            for a local source).
        dst_ranks: the destination ranks to convert (None: all).
        prefix: the output files' name prefix.
        fmt: the output format (formats.registry name).
        policy: plan.PlanPolicy.
        source_mode: 'auto' | 'fetch' | 'remote' for a remote source (plan.choose_mode).
        upload_to: a remote output each rank is uploaded to while written, but the names in
            upload_skip.
        upload_skip: see upload_to.
        upload_records: each rank uploaded is recorded there so a rerun keeps it, and what killed
            runs left incomplete under this run's keys is aborted first.
        record: the set's manifest is written (locally, then on upload_to) with this description
            of its inputs (None: not a whole set, e.g. one block, or the caller composes the set's
            manifest).
        claim: makes the context manager holding the output while it is written, yielding an
            object whose check() raises when the output is no longer this run's
            (reshard.claim.OutputClaim; None: the caller holds the output).
    """
    source: SourceSet | None
    src_strategy: Strategy | None
    dst_strategy: Strategy | None
    dst_root: str = ""
    stage: Stage | None = None
    dst_ranks: tuple[int, ...] | None = None
    prefix: str = DEFAULT_PREFIX
    fmt: str = registry.DEFAULT
    policy: PlanPolicy = PlanPolicy()
    source_mode: str | None = "auto"
    upload_to: str | None = None
    upload_skip: frozenset[str] = frozenset()
    upload_records: bool = False
    record: SetRecord | None = None
    claim: Callable[[], ContextManager] | None = None

    @property
    def local_root(self) -> str:
        """Where the source files the conversion reads locally are."""
        if self.stage is not None:
            return self.stage.root
        assert self.source is not None
        return self.source.base


def prepare(request: Request, config: ReshardConfig = ReshardConfig(),
            subscriber: Subscriber | None = None) -> Plan:
    """Steps 2-3: the full plan of a request, every check done before anything is written (a
    plan from strategies alone when request.source is None).

    Args:
        request: the conversion asked for.
        config: the run's ReshardConfig (planning's header_threads and copy checks).
        subscriber: told of the plan (on_plan); its storage() context wraps the remote reads.

    Returns:
        The full Plan (the skeleton without a source).

    Raises:
        ReshardError: one line naming the culprit (parameter, file, rank or flag).
        OSError: the store holding a remote source failed.
    """
    for note in request.source.notes if request.source else ():
        log.log(note.level, "%s", note.text)
    plan = plan_from_strategies(request.source, request.src_strategy, request.dst_strategy,
                                dst_ranks=request.dst_ranks, prefix=request.prefix, fmt=request.fmt,
                                policy=request.policy)
    if request.source is not None:
        remote = is_url(request.source.root)
        with (subscriber or Subscriber()).storage(request.source.root) if remote else contextlib.nullcontext():
            # a remote source's headers: ranged GETs, nothing downloaded yet
            plan = complete_plan(plan, request.local_root, source_mode=request.source_mode,
                                 config=config)
        for note in plan.notes:
            log.info("%s", note)
    (subscriber or Subscriber()).on_plan(plan)
    return plan


def run(request: Request, config: ReshardConfig = ReshardConfig(),
        subscriber: Subscriber | None = None, plan: Plan | None = None) -> TransformReport:
    """Convert as `request` says, in the call order of this module's docstring.

    Args:
        request: what to convert, where to, and how the output is held.
        config: the numbers the run goes by (ReshardConfig).
        subscriber: hears the run's events (None: nobody).
        plan: the request's full plan when the caller made it already (prepare), else it is
            made here.

    Returns:
        The TransformReport (report.plan; report.already: the remote output holds this very
        conversion, nothing was done).

    Raises:
        ReshardError: one line naming the culprit: before anything is written for bad input
            (and a budget below what one rank needs); during execution for a failed download
            or upload, or an output taken over by another run.
        OSError: the store holding a remote source or output failed (obs_io's one-line
            errors), where the subscriber's storage() context does not translate them.
    """
    t0 = time.monotonic()
    subscriber = subscriber or Subscriber()
    if plan is None:
        plan = prepare(request, config, subscriber)
    if request.record is not None and request.upload_to:
        with subscriber.storage(request.upload_to):
            if same_result(request.upload_to, plan, request.local_root):
                forget_uploads(request.upload_to)   # a run stopped between its manifest and this
                return TransformReport(plan=plan, source_ranks=plan.needed_source_ranks(), already=True)
    memory_budget(plan, config)   # before the claim: an error leaves no output behind
    with request.claim() if request.claim else contextlib.nullcontext() as claim:
        report = _write(request, config, subscriber, plan, claim)
    report.seconds = time.monotonic() - t0
    return report


def _write(request: Request, config: ReshardConfig, subscriber: Subscriber,
           plan: Plan, claim) -> TransformReport:
    """Steps 6-9, with the output claimed (claim: what Request.claim yielded, or None)."""
    if request.upload_to and request.upload_records:   # before anything goes up
        with subscriber.storage(request.upload_to):
            abort_left_uploads(request.upload_to, plan)
    stage = request.stage or Stage(request.local_root)
    download = stage.prepare(plan)
    ok = False
    try:
        fp = finish_plan(plan, request.local_root, request.dst_root, config, download=download,
                         upload_to=request.upload_to, upload_skip=request.upload_skip,
                         upload_records=request.upload_records)
        subscriber.on_start(fp)
        report = None
        try:
            report = execute_finished(fp, subscriber)
        finally:
            subscriber.finish(report)
        ok = True
    finally:
        stage.close(plan, ok)
    if claim is not None:   # still this run's output: publish
        claim.check()
    subscriber.still_ours()
    if request.record is not None:
        write_manifest(request, plan, report, subscriber)
    return report


def write_manifest(request: Request, plan: Plan, report: TransformReport,
                   subscriber: Subscriber) -> integrity.SetManifest:
    """Step 9: the set's manifest, locally, then on the remote output (last: its presence says
    the set is complete there), where it supersedes the per-rank upload records."""
    record = request.record
    assert record is not None and request.source is not None
    manifest = integrity.SetManifest(
        integrity.records(report.checksums), result_digest(plan, request.local_root),
        {"location": record.source_location, "files": request.source.used_names()},
        record.strategies, integrity.tool_version())
    integrity.write(request.dst_root, manifest)
    if request.upload_to:
        with subscriber.storage(request.upload_to):
            integrity.write(request.upload_to, manifest)
            forget_uploads(request.upload_to)   # the manifest vouches for every rank now
    return manifest


# -- the same inputs --------------------------------------------------------------------------

def result_digest(plan: Plan, local_root: str) -> str:
    """What defines the result of a full plan: each rank's digest as the engine records it
    (execute.rank_digest: the destination file, the pieces that fill it, and the identity of
    the source files it reads: an object's size and ETag, a local file's path, size and
    modification time)."""
    files = source_files(plan, local_root)
    return hashlib.sha256(repr([rank_digest(rp, plan.fmt, files) for rp in plan.ranks]).encode()).hexdigest()


def same_result(location: str, plan: Plan, local_root: str) -> bool:
    """Step 4: the remote output holds this very conversion: its manifest has this plan's
    result_digest and every file it lists is there with the recorded size (a rerun of a
    finished command moves nothing)."""
    import obs_io
    try:
        manifest = integrity.read(location)
        present = {e.name: e.length for e in obs_io.file.list_entries(location, recursive=True) if e.is_file()}
    except (ReshardError, FileNotFoundError):
        return False
    return manifest.result_digest == result_digest(plan, local_root) and \
        all(present.get(n) == r.size for n, r in manifest.files.items()) and \
        {rp.path for rp in plan.ranks} <= set(manifest.files)


def inputs_id(inputs: object, explicit: str = "") -> str:
    """The one notion of "the same inputs" both tools use: a 16-hex-digit digest of what
    defines a result (`inputs`: anything JSON-able, mappings compared with sorted keys), behind
    the user's own run id when given (`<explicit>-<digest>`).

    transform-checkpoint passes conversion_inputs() and claims its output with the id
    (reshard.claim: runs of other inputs writing one output are refused); cloud-entry passes
    its job's result (source and strategy identities by file_version, world, blocks, prefix,
    format, where results go; nothing node-local, so every node and every per-card process
    computes the same id without talking to the others) and keys its claim, its block markers
    and its set manifest with it. The ranks a process converts are never part of it: the
    processes converting the blocks of one conversion share its id.

    Args:
        inputs: what defines the result, JSON-able (other values are taken by str()).
        explicit: the user's run id (--run_id, CLOUD_ENTRY_RUN_ID), '' for none.

    Returns:
        `<digest>` or `<explicit>-<digest>`.
    """
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{explicit}-{digest}" if explicit else digest


def file_version(location: str, size: int, etag: str | None, mtime_ns: int) -> str:
    """What tells two versions of one file apart, alike on every node: an object's ETag (or its
    modification time when the store gives none), for a local file a digest of its first and
    last 64 KiB. Not a local path or mtime: nodes that each hold a synced copy differ in those.
    (A rank's private resume record, execute.rank_digest, uses path, size and mtime instead:
    it is read back only on the node that wrote it, where a touched file should count as new.)

    Args:
        location: a local path or an obs:// / s3:// URL.
        size: the file's size in bytes.
        etag: the object's ETag (None: a local file, or a store that gives none).
        mtime_ns: its modification time in nanoseconds.

    Returns:
        A short string; equal for equal versions.

    Raises:
        OSError: a local file that cannot be read.
    """
    if is_url(location):
        return etag or str(mtime_ns)
    h = hashlib.sha256()
    with open(location, "rb") as f:
        h.update(f.read(1 << 16))
        if size > 1 << 17:
            f.seek(size - (1 << 16))
            h.update(f.read())
    return h.hexdigest()[:32]


def conversion_inputs(source: SourceSet | None, src: Strategy | None, dst: Strategy | None,
                      prefix: str, fmt: str) -> dict:
    """What defines one conversion of transform-checkpoint (inputs_id's argument): the source
    (where it is; which files, a local one by size and file_version, an object by name: its
    versions are read when planning and recorded per rank), the strategies (where, world size,
    stages), prefix and format."""
    files = []
    if source is not None:
        for name in source.used_names():
            path = source.path_of(name)
            if is_url(path):
                files.append([name, None, None])
            else:
                st = os.stat(path)
                files.append([name, st.st_size, file_version(path, st.st_size, None, st.st_mtime_ns)])
    root = None if source is None else source.root if is_url(source.root) else os.path.abspath(source.root)
    strategies = [[s.source if is_url(str(s.source)) else os.path.abspath(str(s.source)), s.world_size,
                   s.num_stages] if s is not None else None for s in (src, dst)]
    return {"source": root if source else None, "files": files, "strategies": strategies,
            "prefix": prefix, "format": fmt}


_STATE_FILE = re.compile(rf"^{re.escape(MANIFEST_DIR)}/rank_(\d+)\.json$")


def state_files(names: Iterable[str], keep_ranks: Iterable[int]) -> list[str]:
    """Of relative names below an output folder, the engine's private state files (its per-rank
    records) of ranks not in keep_ranks: a caller pruning an output removes them with the rank
    files, without knowing how they are named."""
    keep = set(keep_ranks)
    out = []
    for name in names:
        m = _STATE_FILE.match(name)
        if m and int(m.group(1)) not in keep:
            out.append(name)
    return out


def stale_outputs(names: Iterable[str], keep_ranks: Iterable[int], prefix: str, fmt: str) -> list[str]:
    """Of the files below an output folder (relative names), those a run writing the ranks
    keep_ranks does not write: another file in a rank folder (an older prefix's `zz_0.ckpt`
    sorts after `checkpoint_0.ckpt`, and the last file in name order is what MindFormers loads),
    any file of a rank not kept (rank_4..7 of an 8-rank set in a 4-rank result), the engine's
    state files of such a rank. Files beside the rank folders (manifest, markers) are not."""
    keep = set(keep_ranks)
    names = list(names)
    wanted = {output_name(r, prefix, fmt) for r in keep}
    state = set(state_files(names, keep))
    return [name for name in names if name in state or
            (RANK_DIR.match(name.split("/", 1)[0]) and "/" in name and name not in wanted)]


def abort_left_uploads(location: str, plan: Plan) -> None:
    """The multipart uploads a killed run left incomplete under the keys this run writes at
    `location` (rank files, their records, the manifest): aborted (OBS bills their parts until
    then), whenever they began (no clock to trust: this run has begun none yet). Only these
    keys: other blocks (--rank_id) may be uploading beside."""
    import obs_io
    names = [rp.path for rp in plan.ranks] + [f"{MANIFEST_DIR}/rank_{rp.rank}.json" for rp in plan.ranks]
    try:
        obs_io.file.abort_uploads(location, names=names + [integrity.MANIFEST_NAME])
    except PermissionError as exc:
        log.warning("could not look for incomplete multipart uploads under %s: %s", location, exc)
