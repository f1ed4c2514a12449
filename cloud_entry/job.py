"""The boot sequence, in the order data flows: arguments -> JobSpec -> config -> cluster ->
blocks -> (strategy pass) -> download -> convert -> markers -> upload -> launch.

Everything that can reject the input runs before the first write (logs included). With one boot
process per card, the node's processes elect one leader (node_leader.py): it does everything up
to the launch; the others wait for it, and every process then launches its own training command.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import obs_io
import reshard
from obs_io.urls import ObjectURL
from obs_io.oneline import one_line

from cloud_entry import config as config_mod
from obs_io.typos import closest
from cloud_entry import checkpoint2, convert, launch, logs, markers, node_leader, strategy_pass, sync
from reshard import run as reshard_run
from reshard.blocks import Block, BlockPlan, plan_blocks
from cloud_entry.cluster import Cluster, is_modelarts, resolve_cluster
from cloud_entry.errors import BlockFailed, EntryError
from cloud_entry.jobspec import JobSpec
from cloud_entry.paths import JobPaths, clear_reason, clear_safely, join
from reshard import integrity
from reshard.claim import OutputClaim
from reshard.plan import Plan
from reshard.formats import registry as formats
from reshard.sources import check_writable, output_name, overlap, overlap_text, probe_writable

log = logging.getLogger("cloud_entry")


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """Everything decided before the first write."""
    job: JobSpec
    config: dict[str, Any]
    cluster: Cluster
    layout: JobPaths
    source: sync.Source | None
    blocks: BlockPlan | None          # None: no conversion
    convert_ranks: tuple[int, ...]    # this node's ranks of the destination layout
    src_strategy: reshard.Strategy | None   # parsed once, here (None: complete source)
    dst_strategy: reshard.Strategy | None   # None: complete destination, or a strategy pass to come
    run_id: str                       # the same on every node: markers of this run carry it
    node_key: str                     # the same for this node's boot processes of one job
    started: float                    # seconds since the epoch: older failure markers are stale
    conversion: Plan | None = None    # this node's blocks, headers read (None: a strategy pass first)
    previous: integrity.SetManifest | None = None   # the set these inputs already made, if complete
    # URL -> a remote strategy's bytes as downloaded to parse it: placed locally from these later
    fetched: Mapping[str, sync.StrategyCopy] = dataclasses.field(default_factory=dict)
    checkpoint2: checkpoint2.Checkpoint2Job | None = None   # a checkpoint: job on a Checkpoint 2.0 source


def parallel_world(cfg: dict[str, Any]) -> int:
    """The device count parallel_config describes; its sizes must be integers >= 1."""
    pc = cfg.get("parallel_config") or {}
    if not isinstance(pc, dict):
        raise EntryError(f"parallel_config={pc!r} in the config: expected a mapping")
    sizes = []
    for key in ("data_parallel", "model_parallel", "pipeline_stage", "context_parallel"):
        value = pc.get(key, 1)
        value = 1 if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EntryError(f"parallel_config.{key}={value!r} in the config: expected an integer >= 1")
        sizes.append(value)
    return math.prod(sizes)


def _check_parallel_world(cfg: dict[str, Any], cluster: Cluster) -> None:
    """The layout the training compiles (parallel_config) must have as many devices as the job
    has ranks: the conversion writes one file per rank of the job, which a network of another
    device count cannot load."""
    world = parallel_world(cfg)
    if world != cluster.world_size:
        pc = cfg.get("parallel_config") or {}
        sizes = " x ".join(f"{k}={pc.get(k, 1)}" for k in ("data_parallel", "model_parallel", "pipeline_stage",
                                                           "context_parallel") if k in pc or k != "context_parallel")
        raise EntryError(f"parallel_config {sizes} = {world} devices, but this job has {cluster.world_text()}: "
                         f"make the parallel sizes multiply to the job's ranks")


def _check_locations(job: JobSpec, layout: JobPaths, cluster: Cluster, converting: bool) -> None:
    """Where this job writes must not be, hold or lie inside what it reads: the conversion and
    the strategy pass write there, the prune removes files there, the upload publishes there."""
    inputs = (("load_checkpoint", job.load_checkpoint), ("src_strategy_path_or_dir", job.src_strategy),
              ("--dst_strategy", job.dst_strategy))
    outputs = [("the local work folder", layout.work_dir),
               ("remote_save_url's logs folder", join(layout.remote_save_url, "logs") if layout.remote_save_url else "")]
    if converting:   # the folders first (their names say most), then the roots that hold them
        outputs += [("the converted checkpoint folder", layout.transformed),
                    ("the strategy output folder", layout.local_strategy),
                    ("remote_save_url's converted checkpoint folder", layout.remote_transformed),
                    ("remote_save_url's strategy folder", layout.remote_strategy),
                    ("the output folder", layout.output_dir), ("--shared_dir", layout.shared_dir),
                    ("remote_save_url", layout.remote_save_url)]
    for name, value in inputs:
        for what, out in outputs:
            # a --dst_strategy in our own strategy output folder is read there (destination_strategy)
            ours = name == "--dst_strategy" and out in (layout.local_strategy, layout.output_dir) \
                and _inside(value, layout.local_strategy)
            found = overlap(value, out) if value and out and not ours else None
            if found is not None:
                raise EntryError(f"{name}={overlap_text(value, found[0])} overlaps {what} "
                                 f"{overlap_text(out, found[1])}, where this job writes: "
                                 "use another output_dir / remote_save_url")
    if obs_io.is_remote(job.remote_save_url):   # found now, not after the conversion
        try:
            url = ObjectURL.parse(job.remote_save_url)
            if not obs_io.file.exists(f"{url.scheme}://{url.bucket}"):
                raise EntryError(f"remote_save_url={job.remote_save_url}: bucket {url.bucket!r} does not exist")
        except (ValueError, PermissionError) as exc:   # a malformed URL, refused credentials
            raise EntryError(f"remote_save_url={job.remote_save_url}: {exc}") from None
    if converting and cluster.num_nodes > 1 and not job.shared_dir:
        if not job.remote_save_url:
            raise EntryError(f"{cluster.num_nodes} nodes without --shared_dir need remote_save_url "
                             "to exchange markers and converted ranks")
        if not obs_io.is_remote(job.remote_save_url):
            raise EntryError(f"remote_save_url={job.remote_save_url} is a local folder, which "
                             f"{cluster.num_nodes} nodes do not share: use an obs:// or s3:// URL, "
                             "or --shared_dir")


def _inside(path: str, folder: str) -> bool:
    """Local `path` is `folder` or lies in it, links resolved."""
    if not path or obs_io.is_remote(path):
        return False
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top


def probe_outputs(p: "JobPlan") -> None:
    """Write access, tried for real before any download or conversion: the local folders are
    created (what the job does next anyway); under remote_save_url the claim (claim_outputs)
    was the first write, so a read-only bucket or a missing permission is one line now, not a
    failure after the whole conversion."""
    job, layout = p.job, p.layout
    flag = f"--output_dir={job.output_dir}" if job.output_dir else f"output folder {layout.output_dir}"
    for folder, name in ((layout.work_dir, f"--work_dir={job.work_dir}" if job.work_dir else flag),
                         (layout.output_dir, flag)):
        probe_writable(folder, name)


def _check_overrides(spec: JobSpec, base: dict[str, Any]) -> None:
    """A dotted override whose last key is a near miss of a key the config has at that place
    (`--parallel_config.data_paralel=4`) is an error: it would add a key nobody reads while the
    real one stays. A new key elsewhere is allowed, with a warning."""
    for dotted in spec.overrides:
        *parents, leaf = dotted.split(".")
        node: Any = base
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf in node:
            continue
        known = closest(leaf, [k for k in node if isinstance(k, str)])
        if known:
            raise EntryError(f"--{dotted}: the config has no {leaf!r} under {'.'.join(parents)}: "
                             f"did you mean --{'.'.join(parents)}.{known}?")
        log.warning("--%s adds a key the config does not have", dotted)


def plan(spec: JobSpec, env: Mapping[str, str]) -> JobPlan:
    """Everything decided, and every input checked, before the first write: the config, the
    cluster, the source, the blocks, the strategies and this node's full conversion plan."""
    base = config_mod.with_defaults(config_mod.read_base(spec.config))
    _check_overrides(spec, base)
    cfg = config_mod.build(spec, base)
    job = config_mod.resolve(spec, cfg)
    cluster = resolve_cluster(job, env, parallel_world(cfg) if job.use_parallel else 1)
    logs.console(cluster.node_index)
    ckpt2 = checkpoint2.inspect(job, cfg, cluster,   # the user's format kept (its own path)
                                lambda url, flag: _load(url, flag, {}))
    converting = bool(job.auto_trans_ckpt and not job.only_save_strategy) and ckpt2 is None
    if converting and job.use_parallel:
        _check_parallel_world(cfg, cluster)
    launch.check_command(job.launch_cmd, env)   # found now, not after the conversion and upload
    for key, old, new in config_mod.diff(config_mod.mask_secrets(base), config_mod.mask_secrets(cfg)):
        log.info("config %s: %r -> %r", key, old, new)
    fmt = job.load_ckpt_format or formats.DEFAULT
    source = _legacy_source(job, fmt, converting, ckpt2)
    blocks, convert_ranks, identities = _blocks(job, cfg, cluster, source) if converting else (None, (), {})
    if ckpt2 is not None and ckpt2.mode == checkpoint2.PRESHARD:   # its blocks: the same rule
        blocks, convert_ranks = _rank_blocks(job, cluster)
    layout = _layout(job, source, ckpt2)
    _check_locations(job, layout, cluster, converting or bool(ckpt2 and ckpt2.mode == checkpoint2.PRESHARD))
    check_writable(layout.output_dir, f"--output_dir={job.output_dir}" if job.output_dir
                   else f"output folder {layout.output_dir}")
    result = _result(job, cluster, source, identities, blocks, fmt, converting, ckpt2)
    run_id = reshard.inputs_id(result, job.run_id or env.get("CLOUD_ENTRY_RUN_ID", ""))
    # Every hyperparameter counts here: cards of one node given other ones must not share a leader.
    node_key = reshard.inputs_id([run_id, config_mod.mask_secrets(cfg), spec.launch_cmd, spec.passthrough])
    launch.stop_grace(env)    # a bad CLOUD_ENTRY_STOP_GRACE is bad input: now, not after converting
    src = dst = full = previous = None
    fetched: dict[str, sync.StrategyCopy] = {}
    if converting:
        previous = _previous_set(layout, job, cluster, run_id, fmt)
        src, dst, full = _planned_strategies(job, cluster, cfg, source, blocks, tuple(convert_ranks), layout,
                                             run_id, previous is None, fetched)
    return JobPlan(job, cfg, cluster, layout, source, blocks, tuple(convert_ranks), src, dst, run_id,
                   node_key, time.time(), full, previous, fetched, ckpt2)


def _legacy_source(job: JobSpec, fmt: str, converting: bool,
                   ckpt2: "checkpoint2.Checkpoint2Job | None") -> sync.Source | None:
    """load_checkpoint inspected as rank folders or a complete file (None: none given, or a
    Checkpoint 2.0 job, which has its own path)."""
    source = (sync.inspect_source(job.load_checkpoint, fmt, step=job.load_checkpoint_step)
              if job.load_checkpoint and ckpt2 is None else None)
    if not converting and ckpt2 is None and (job.dst_strategy or job.src_strategy):
        log.warning("auto_trans_ckpt is %s: the strategies given are not used, nothing is converted",
                    job.auto_trans_ckpt)
    return source


def _result(job: JobSpec, cluster: Cluster, source: sync.Source | None, identities: dict[str, Any],
            blocks: BlockPlan | None, fmt: str, converting: bool,
            ckpt2: "checkpoint2.Checkpoint2Job | None") -> dict[str, Any]:
    """What defines the result, and nothing node-local: nodes with different output folders agree."""
    return {"source": [job.load_checkpoint, list(source.identity) if source else []],
            "strategies": identities, "world": cluster.world_size, "nodes": cluster.num_nodes,
            "use_parallel": job.use_parallel, "blocks": blocks.process_num if blocks else 0,
            "prefix": job.prefix, "fmt": fmt, "remote_save_url": job.remote_save_url,
            "converting": converting,
            **({"checkpoint2": [ckpt2.mode, ckpt2.identity, ckpt2.dst_identity]} if ckpt2 else {})}


def _blocks(job: JobSpec, cfg: dict[str, Any], cluster: Cluster, source: sync.Source | None
            ) -> tuple[BlockPlan, tuple[int, ...], dict[str, Any]]:
    """(the blocks of the conversion, this node's ranks of the destination layout, the
    identities of the strategies: part of what defines the result). Strategies are checked
    to exist, not parsed yet."""
    assert source is not None
    identities: dict[str, Any] = {}
    if job.src_strategy:
        identities["src_strategy"] = sync.check_strategy(job.src_strategy, "src_strategy_path_or_dir")
    elif len(source.rank_files) > 1:   # one rank folder alone is a complete checkpoint
        raise EntryError(f"load_checkpoint={job.load_checkpoint}: {len(source.rank_files)} rank "
                         "folders need src_strategy_path_or_dir")
    if job.dst_strategy and job.use_parallel:
        identities["dst_strategy"] = sync.check_strategy(job.dst_strategy, "--dst_strategy")
    elif job.use_parallel:
        if not job.launch_cmd:
            raise EntryError("no --dst_strategy and no launch command to run the strategy pass with")
        identities["strategy_pass"] = [cfg.get("parallel_config"), cfg.get("model"), job.launch_cmd]
    return (*_rank_blocks(job, cluster), identities)


def _rank_blocks(job: JobSpec, cluster: Cluster) -> tuple[BlockPlan, tuple[int, ...]]:
    """(the blocks of the conversion, this node's ranks of the destination layout): SPEC.md
    "Rank blocks", p raised to the node count without a shared disk; a complete destination
    (no use_parallel) is one rank, node 0's."""
    world = cluster.world_size if job.use_parallel else 1
    blocks = plan_blocks(world, job.transform_process_num or 1, cluster.num_nodes,
                         shared_disk=bool(job.shared_dir) or cluster.num_nodes == 1)
    convert_ranks = (cluster.node_ranks if job.use_parallel
                     else ((0,) if cluster.node_index == 0 else ()))
    return blocks, tuple(convert_ranks)


def _layout(job: JobSpec, source: sync.Source | None, ckpt2: "checkpoint2.Checkpoint2Job | None") -> JobPaths:
    output_dir = os.path.abspath(job.output_dir or "./output")
    work_dir = os.path.abspath(job.work_dir or os.path.join(output_dir, "cloud_entry"))
    return JobPaths(output_dir, work_dir, os.path.join(work_dir, "log"),
                    source.name if source else ckpt2.name if ckpt2 else "",
                    os.path.abspath(job.shared_dir) if job.shared_dir else "",
                    job.remote_save_url.rstrip("/"))


def _planned_strategies(job: JobSpec, cluster: Cluster, cfg: dict[str, Any], source: sync.Source,
                        blocks: BlockPlan, convert_ranks: tuple[int, ...], layout: JobPaths, run_id: str,
                        plan_now: bool, fetched: dict[str, sync.StrategyCopy]) -> tuple:
    """_strategies, where a failure is this node's blocks' failure: with several nodes, the
    others wait for this node's blocks, so they are told (failure markers), or they would wait
    out the bound."""
    try:
        return _strategies(job, cluster, cfg, source, blocks, convert_ranks, layout, plan_now=plan_now,
                           fetched=fetched)
    except (EntryError, reshard.ReshardError) as exc:
        leaders = [b.leader for b in blocks.led_by(convert_ranks)]
        if cluster.num_nodes > 1 and leaders:
            for leader in leaders:
                markers.publish_failure(layout.marker_dir, markers.Marker(markers.FAILED, leader, run_id,
                                                                          _one_line(exc)))
            raise BlockFailed(f"block led by rank {leaders[0]} failed: {_one_line(exc)}") from None
        raise


def _load(url: str, flag: str, fetched: dict[str, sync.StrategyCopy]) -> reshard.Strategy:
    """A strategy parsed now, from a temporary copy when on object storage (gone after the
    parse: nothing of ours is written before the plan is accepted; its bytes are kept in
    `fetched`, so the job downloads it once); errors name the user's URL."""
    try:
        with tempfile.TemporaryDirectory(prefix="cloud-entry-strategy-") as tmp:
            path = sync.fetch_strategy(url, tmp)
            strategy = reshard.load_strategy(path)
            if obs_io.is_remote(url):
                fetched[url] = sync.StrategyCopy.of(url, path)
    except (OSError, ValueError) as exc:   # unreadable (refused, missing) or not a strategy
        raise EntryError(f"{flag}={url}: {one_line(exc, (OSError, ValueError))}") from None
    return dataclasses.replace(strategy, source=url)


def _strategies(job: JobSpec, cluster: Cluster, cfg: dict[str, Any], source: sync.Source,
                blocks: BlockPlan, convert_ranks: tuple[int, ...], layout: JobPaths,
                plan_now: bool = True, fetched: dict[str, sync.StrategyCopy] | None = None) -> tuple:
    """Both strategies parsed and checked against the job and the source, and, when the
    destination is known (given, or complete), this node's full plan made with the source's
    headers read, before anything is written: a destination of another world size or stage
    count, a source strategy that does not fit the checkpoint's rank folders, a truncated or
    corrupt source, a strategy of another model end the job here, not after logs, markers and
    downloads. Returns (src, dst, the full plan or None); plan_now False (the set is complete
    already: _previous_set): no plan, no byte of the source read."""
    fetched = {} if fetched is None else fetched
    src = _load(job.src_strategy, "src_strategy_path_or_dir", fetched) if job.src_strategy else None
    dst = _load(job.dst_strategy, "--dst_strategy", fetched) if job.dst_strategy and job.use_parallel else None
    if dst is not None:
        _check_destination(job, cluster, cfg, dst)
    mine = blocks.led_by(convert_ranks)
    if not mine or not plan_now or (dst is None and job.use_parallel):   # or a strategy pass first
        return src, dst, None
    try:   # headers by ranged GETs (a bad source fails before any transfer)
        return src, dst, reshard_run.prepare(_request(job, layout, source, src, dst, mine),
                                             subscriber=convert.JobSubscriber(layout.transformed, None, False))
    except OSError as exc:   # the store, not the input: this node's failure to tell the others
        raise EntryError(f"load_checkpoint={job.load_checkpoint}: {one_line(exc, (OSError,))}") from None


def source_root(layout: JobPaths, source: sync.Source) -> str:
    """Where the conversion reads the source: the user's own folder, or this node's cache of a
    remote one (the files the plan fetches are downloaded there)."""
    return join(layout.work_dir, "source", layout.ckpt_name) if source.remote else source.files.base


def _request(job: JobSpec, layout: JobPaths, source: sync.Source, src: reshard.Strategy | None,
             dst: reshard.Strategy | None, blocks: tuple[Block, ...]) -> reshard.Request:
    """The engine's request for this node's blocks (the same when planned in plan() and when
    run in transform()); policy: what the engine does with parameters the strategies and the
    checkpoint disagree on."""
    return convert.request(source, src, dst, blocks, job.prefix, job.load_ckpt_format or formats.DEFAULT,
                           source_root(layout, source), dst_root=layout.transformed,
                           policy=reshard.PlanPolicy(job.allow_missing_params, job.keep_unnamed_params),
                           keep_cache=job.keep_source_cache)


def _digest(path: str | None) -> str:
    """Content digest of a local strategy file or folder (for the reuse manifest)."""
    if not path:
        return ""
    h = hashlib.sha256()
    files = ([os.path.join(path, n) for n in strategy_pass.local_strategy_files(path)]
             if os.path.isdir(path) else [path])
    for f in files:
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def _one_line(exc: BaseException) -> str:
    return one_line(exc, (EntryError, reshard.ReshardError))


def destination_strategy(p: JobPlan, env: dict[str, str]) -> str | None:
    job, layout = p.job, p.layout
    if not job.use_parallel:
        return None
    if job.dst_strategy:
        # output/strategy gets a copy (MindFormers' output layout, uploaded with the checkpoint),
        # unless the user's strategy already is, or is inside, that folder
        if clear_reason(layout.local_strategy, layout.output_dir, job.inputs):
            dst = job.dst_strategy
        else:
            clear_safely(layout.local_strategy, layout.output_dir, job.inputs)
            dst = sync.fetch_strategy(job.dst_strategy, layout.local_strategy, copy_local=True,
                                      fetched=p.fetched.get(job.dst_strategy))
    else:
        clear_safely(layout.local_strategy, layout.output_dir, job.inputs)
        strategy_pass.clear_own_markers(layout, p.cluster.node_index)
        try:
            files = strategy_pass.run_pass(p.config, layout, list(job.launch_cmd), env, job.transform_timeout)
        except EntryError as exc:
            strategy_pass.publish_failure(layout, p.cluster.node_index, p.run_id, _one_line(exc))
            raise
        strategy_pass.gather(layout, files, p.cluster.node_index, p.cluster.num_nodes, p.run_id,
                        job.transform_timeout)
        dst = layout.local_strategy
    pp = int((p.config.get("parallel_config") or {}).get("pipeline_stage", 1) or 1)
    if os.path.isdir(dst) and pp > 1:
        ours = os.path.realpath(dst) == os.path.realpath(layout.local_strategy)
        merged = join(layout.local_strategy if ours else layout.work_dir, "merged_ckpt_strategy.ckpt")
        reshard.write_merged_strategy(p.dst_strategy or dst, merged)   # parsed in the plan when given
        log.info("merged destination strategy: %s", merged)
        return merged
    return dst


def _check_destination(job: JobSpec, cluster: Cluster, cfg: dict[str, Any], dst: reshard.Strategy) -> None:
    """The destination strategy must describe this job: its world size and pipeline stages.
    A stale strategy of another layout would convert into ranks the training does not have."""
    pp = int((cfg.get("parallel_config") or {}).get("pipeline_stage", 1) or 1)
    if dst.world_size != cluster.world_size and job.npu_num_per_node is not None \
            and dst.world_size % cluster.num_nodes == 0:   # the culprit is the flag the user gave
        raise EntryError(f"--npu_num_per_node={job.npu_num_per_node}: {cluster.num_nodes} node(s) x "
                         f"{job.npu_num_per_node} cards = {cluster.world_size} ranks, but the destination "
                         f"strategy {job.dst_strategy or dst.source} has {dst.world_size} ranks "
                         f"({dst.world_size // cluster.num_nodes} per node)")
    if dst.world_size != cluster.world_size or dst.num_stages != pp:
        raise EntryError(f"destination strategy {job.dst_strategy or dst.source} has {dst.world_size} ranks in "
                         f"{dst.num_stages} pipeline stage(s), but this job has {cluster.world_size} ranks "
                         f"({cluster.num_nodes} node(s) x {cluster.cards_per_node} cards) and "
                         f"parallel_config.pipeline_stage={pp}")


def transform(p: JobPlan, env: dict[str, str],
              still_ours: Callable[[], None] = lambda: None) -> tuple[str, str | None]:
    """Steps 4-6: strategies and shards down, this node's blocks converted, markers, uploads,
    and this node's ranks converted elsewhere down. Returns the local folder to load and the
    local source strategy (None for a complete source). still_ours(): raises when the outputs
    are no longer this run's; asked before the success markers and the manifest go out."""
    assert p.source is not None and p.blocks is not None
    my_blocks = p.blocks.led_by(p.convert_ranks)
    log.info("%s; this node converts %s", ", ".join(map(str, p.blocks.blocks)),
             ", ".join(map(str, my_blocks)) or "nothing")
    if my_blocks:   # first of all: nobody may take an old marker of our blocks for this run's
        markers.clear_own(p.layout.marker_dir, [b.leader for b in my_blocks])
    try:   # from here on a failure is this node's blocks' failure: every node learns it
        dst, src_s, written = _convert_mine(p, env, my_blocks)
    except BaseException as exc:   # a report, not a cleanup: the other nodes wait on it, a stop included
        _publish_failure(p, my_blocks, exc)
        raise
    if my_blocks:
        still_ours()
    fmt = p.job.load_ckpt_format or formats.DEFAULT
    for block in my_blocks:   # each marker lists its block's files with their checksums
        names = {output_name(r, p.job.prefix, fmt) for r in block.ranks}
        markers.publish(p.layout.marker_dir, markers.Marker(
            markers.SUCCEED, block.leader, p.run_id,
            markers.succeed_message({n: c for n, c in written.items() if n in names})))
    all_leaders = [b.leader for b in p.blocks.blocks]
    log.info("waiting (up to %gs) for the blocks led by ranks %s", p.job.transform_timeout, all_leaders)
    succeeded = markers.wait_for_blocks(p.layout.marker_dir, all_leaders, p.run_id, p.job.transform_timeout,
                                        not_before=p.started - markers.CLOCK_SLACK)
    manifest = _set_manifest(p, succeeded, src_s)
    keep = _gather(p, convert.block_ranks(my_blocks), manifest, dst)
    _publish_set(p, manifest, keep, still_ours)
    # Single card: the file itself. MindFormers takes a folder holding rank_* for a distributed
    # checkpoint and refuses it with use_parallel: False (load_checkpoint_utils._get_checkpoint_mode).
    # Except to resume from a .ckpt: MindFormers 1.9+ refuses a file as a resume path
    # (convert_checkpoint_config -> is_hf_checkpoint: "checkpoint_path is not a directory"), and
    # every release (1.8-2.1) resumes from the set's folder, rank_0/ holding the file
    # (scripts/mindformers_compat.py, the resume column).
    resume = formats.get(fmt).resume_loads_folder and _resumes(p.config, p.job.launch_cmd)
    loaded = p.layout.transformed if p.job.use_parallel or resume else \
        join(p.layout.transformed, output_name(0, p.job.prefix, fmt))
    log.info("checkpoint ready: %s", loaded)
    return loaded, src_s


def _convert_mine(p: JobPlan, env: dict[str, str], my_blocks: tuple[Block, ...]
                  ) -> tuple[reshard.Strategy | None, str | None, dict[str, tuple[int, str]]]:
    """The destination strategy (given, or made by the strategy pass now), the source strategy
    down, and this node's blocks converted through the engine (reshard.run): returns (the
    destination strategy, the local source strategy, output name -> (size, CRC32) of this
    node's ranks). A rerun of a finished job converts and moves nothing."""
    job, layout = p.job, p.layout
    dst_s = destination_strategy(p, env)
    dst = p.dst_strategy
    if dst is None and dst_s:   # written by the strategy pass just now
        dst = reshard.load_strategy(dst_s)
        _check_destination(job, p.cluster, p.config, dst)
    src_s = sync.fetch_strategy(job.src_strategy, join(layout.work_dir, "src_strategy"),
                                fetched=p.fetched.get(job.src_strategy)) if job.src_strategy else None
    mine = convert.block_ranks(my_blocks)
    fmt = job.load_ckpt_format or formats.DEFAULT
    if not mine:
        return dst, src_s, {}
    if p.previous is not None:   # a rerun of a finished job: nothing to convert or move up
        names = {output_name(r, job.prefix, fmt) for r in mine}
        return dst, src_s, {n: (r.size, r.crc32) for n, r in p.previous.files.items() if n in names}
    # the plan (made in plan() unless a strategy pass made the destination): headers by ranged
    # GETs; the files it reads from a local copy are downloaded while the conversion already
    # reads them (each rank starts once its first bytes are here), the others read in place;
    # each rank goes up while it is written, while the next converts
    uploads = convert.JobSubscriber(layout.transformed, layout.remote_transformed if layout.remote_save_url
                                  else None, job.overlap)
    request = dataclasses.replace(_request(job, layout, p.source, p.src_strategy, dst, my_blocks),
                                  upload_to=uploads.upload_to, upload_skip=uploads.upload_skip)
    report = reshard_run.run(request, convert.config(my_blocks, job.max_memory, layout.log_dir,
                                                     job.keep_source_cache), uploads, plan=p.conversion)
    return dst, src_s, report.checksums


def _publish_failure(p: JobPlan, my_blocks: tuple[Block, ...], exc: BaseException) -> None:
    """This node's blocks failed: a failure marker per block, naming the user's URL (not our
    local copy); then a BlockFailed naming the first block, unless the failure is a stop
    request, another node's failure (already named) or no block is ours (the caller re-raises)."""
    log.debug("conversion failed", exc_info=True)
    text = _one_line(exc)
    if p.source is not None and p.source.remote:   # errors name the user's URL, not our local copy
        text = text.replace(source_root(p.layout, p.source).rstrip("/"), p.source.files.base.rstrip("/"))
    leaders = [b.leader for b in my_blocks]
    for leader in leaders:
        markers.publish_failure(p.layout.marker_dir, markers.Marker(markers.FAILED, leader, p.run_id, text))
    if isinstance(exc, Exception) and not isinstance(exc, BlockFailed) and leaders:
        raise BlockFailed(f"block led by rank {leaders[0]} failed: {text}") from exc


def _gather(p: JobPlan, mine: list[int], manifest: integrity.SetManifest,
            dst: reshard.Strategy | None) -> list[int]:
    """This node's ranks converted elsewhere, down from remote_save_url (replicas once, linked
    here) and checked against the set's manifest; the local folder pruned to this run's files.
    Returns the ranks this node holds."""
    job, layout, fmt = p.job, p.layout, p.job.load_ckpt_format or formats.DEFAULT
    world = p.cluster.world_size if job.use_parallel else 1
    elsewhere = [r for r in p.convert_ranks if r not in set(mine) or p.previous is not None]
    if elsewhere and not layout.shared_dir and layout.remote_save_url:
        names = [output_name(r, job.prefix, fmt) for r in elsewhere]
        recorded = {n: (r.size, r.crc32) for n, r in manifest.files.items()}
        same = {}
        if dst is not None:   # replicas (the same bytes) come down once, linked here
            try:
                same = convert.replicas(p.source.files, p.src_strategy, dst, elsewhere, job.prefix, fmt,
                                        reshard.PlanPolicy(job.allow_missing_params, job.keep_unnamed_params))
            except reshard.ReshardError as exc:   # only a saving lost: each file comes down
                log.debug("replicas not known: %s", exc)
        fetched = sync.download_ranks(layout.remote_transformed, layout.transformed, names, recorded.get, same)
        _check_downloaded(layout.transformed, fetched, manifest)
    # The folder the training loads holds this run's files only (no older prefix, no rank of a
    # larger world): locally, and under remote_save_url (node 0; every block is in by now).
    keep = list(range(world)) if layout.shared_dir else sorted(set(p.convert_ranks) | set(mine))
    if not clear_reason(layout.transformed, layout.shared_dir or layout.output_dir, job.inputs):
        sync.prune_outputs(layout.transformed, keep, job.prefix, fmt)
    return keep


def _publish_set(p: JobPlan, manifest: integrity.SetManifest, keep: list[int],
                 still_ours: Callable[[], None]) -> None:
    """The set published: under remote_save_url by node 0 (every node holds the same files),
    pruned to this run's files with this run's strategy, the manifest last; locally; then the
    files this node's training loads checked against it."""
    job, layout, fmt = p.job, p.layout, p.job.load_ckpt_format or formats.DEFAULT
    world = p.cluster.world_size if job.use_parallel else 1
    if layout.remote_save_url and p.cluster.node_index == 0:   # every node holds the same files
        still_ours()   # the prune removes, the manifest publishes: both only into our own output
        # every block is in: nobody uploads there any more; what killed runs left incomplete goes
        sync.abort_left_uploads(layout.remote_transformed, layout.remote_strategy)
        sync.prune_outputs(layout.remote_transformed, list(range(world)), job.prefix, fmt)
        files = strategy_pass.local_strategy_files(layout.local_strategy)
        if files:
            obs_io.file.copy_parallel(layout.local_strategy, layout.remote_strategy, file_list=files)
        sync.prune_strategies(layout.remote_strategy, files)   # another run's layout must not mix in
        integrity.write(layout.remote_transformed, manifest)   # last: the set is complete there
    if not layout.shared_dir or p.cluster.node_index == 0:
        integrity.write(layout.transformed, manifest)
    _check_loaded(layout.transformed, [output_name(r, job.prefix, fmt) for r in keep], manifest)


def _resumes(config: dict[str, Any], launch_cmd: Sequence[str]) -> bool:
    """Whether MindFormers will resume: `resume_training` in the config, or run_mindformer.py's
    own `--resume_training[=VALUE]` on the training command (which overrides the config); a
    checkpoint name (MindFormers' other form of the key) resumes too."""
    value: Any = config.get("resume_training")
    for i, token in enumerate(launch_cmd):
        name, eq, text = token.partition("=")
        if name == "--resume_training":
            spaced = launch_cmd[i + 1] if not eq and i + 1 < len(launch_cmd) else ""
            value = text if eq else (spaced if spaced and not spaced.startswith("--") else True)
    return value not in (None, False, "") and str(value).strip().lower() not in ("false", "0", "none", "")


def _previous_set(layout: JobPaths, job: JobSpec, cluster: Cluster, run_id: str,
                  fmt: str) -> integrity.SetManifest | None:
    """The manifest of a set these very inputs already produced (same run id: same source and
    strategy identities, world, blocks, prefix, format, remote_save_url), complete where every
    node sees it (remote_save_url, else the shared or local folder): a rerun after success then
    reads no source byte, converts and uploads nothing, and only downloads what this node lacks."""
    store = layout.remote_transformed if layout.remote_save_url else layout.transformed
    try:
        manifest = integrity.read(store)
        present = {e.name: e.length for e in obs_io.file.list_entries(store, recursive=True) if e.is_file()}
    except (reshard.ReshardError, FileNotFoundError):
        return None
    world = cluster.world_size if job.use_parallel else 1
    names = [output_name(r, job.prefix, fmt) for r in range(world)]
    if manifest.result_digest != run_id or any(
            n not in manifest.files or present.get(n) != manifest.files[n].size for n in names):
        return None
    log.info("%s holds the converted set of these very inputs (run %s): not converting again", store, run_id)
    return manifest


def _set_manifest(p: JobPlan, succeeded: list[markers.Marker], src_s: str | None) -> integrity.SetManifest:
    """The whole set's manifest, composed alike on every node from the blocks' success markers."""
    files: dict[str, tuple[int, str]] = {}
    for marker in succeeded:
        files.update(markers.block_files(marker, p.layout.marker_dir))
    assert p.source is not None
    world = p.cluster.world_size if p.job.use_parallel else 1
    fmt = p.job.load_ckpt_format or formats.DEFAULT
    unlisted = [r for r in range(world) if output_name(r, p.job.prefix, fmt) not in files]
    if unlisted:
        raise EntryError(f"{p.layout.marker_dir}: the blocks' success markers list no file for "
                         f"rank(s) {sync.ranges(unlisted)}: the converted set is incomplete")
    return integrity.SetManifest(
        integrity.records(files), p.run_id,
        {"location": p.job.load_checkpoint, "identity": list(p.source.identity)},
        {"src": p.job.src_strategy or "", "dst": p.job.dst_strategy or "strategy pass",
         "src_digest": _digest(src_s)}, integrity.tool_version())


def _check_downloaded(root: str, names: list[str], manifest: integrity.SetManifest) -> None:
    """Ranks another node converted, as downloaded here: size and CRC32 as their block wrote
    them (an object replaced on the store meanwhile is found now, not by the training)."""
    for name in names:
        want = manifest.files.get(name)
        got = integrity.file_checksum(join(root, name))
        if want is None or got != want:
            raise EntryError(f"{join(root, name)}: downloaded copy differs from what its block wrote "
                             f"({got.size} bytes crc32 {got.crc32}, expected "
                             f"{want.size if want else '?'} bytes crc32 {want.crc32 if want else '?'})")


def _check_loaded(root: str, names: list[str], manifest: integrity.SetManifest) -> None:
    """Before the launch: every rank file this node's training loads is there, with the size
    the manifest records (their bytes were checked when written or downloaded)."""
    for name in names:
        path = join(root, name)
        want = manifest.files.get(name)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if want is None or size != want.size:
            raise EntryError(f"{path}: {'missing' if size is None else f'{size} bytes'}, but the "
                             f"conversion wrote {want.size if want else 'no such file'}"
                             f"{' bytes' if want else ''}: not launching on a partial checkpoint")


def prepare(p: JobPlan, launch_env: dict[str, str], shim: str | None,
            still_ours: Callable[[], None] = lambda: None) -> None:
    """The node leader's part: conversion (or sync), then the effective config and the moxing
    stand-in (in `shim`, on ModelArts). Followers only read what this writes. still_ours():
    raises when the outputs are no longer this run's (asked before publishing)."""
    layout = p.layout
    if shim:
        launch.write_moxing_shim(shim, launch_env)
    effective = copy.deepcopy(p.config)
    if p.checkpoint2 is not None:
        effective = checkpoint2.prepare(p, effective, still_ours)
    elif p.blocks is not None:
        loaded, src_s = transform(p, launch_env, still_ours)
        effective = config_mod.for_launch(effective, loaded, src_s, converted=True)
    elif p.source is not None:   # no conversion: this node's shards, local, in either config form
        effective = config_mod.for_launch(effective, sync.sync_rank_shards(
            p.source, list(p.cluster.node_ranks), join(layout.work_dir, "checkpoint", layout.ckpt_name)))
    config_mod.dump(effective, layout.effective_config)
    log.info("effective config: %s", layout.effective_config)


def run(spec: JobSpec, env: Mapping[str, str] | None = None) -> int:
    """The whole job on this node: planned and checked before the first write (plan), the
    outputs claimed (claim_outputs), then conversion, uploads and the launch; the claims are
    released whatever ends it.

    Args:
        spec: the parsed command line (cloud_entry.args.parse_args).
        env: the environment to read (None: os.environ).

    Returns:
        The exit code: the launched command's (0 with --transform_only).

    Raises:
        EntryError: bad input, a failed block (BlockFailed) or a wait that ran out
            (WaitTimeout), one line naming the culprit.
        ReshardError: the conversion's bad input, one line.
        OSError: storage that refused, lacked or did not answer (obs_io's one-line errors).
        signals.Terminated: a stop request (its exit_code is the job's).
    """
    logs.console(level=logs.console_level(spec.quiet, spec.verbose))
    env = dict(os.environ if env is None else env)
    p = plan(spec, env)
    # ---- nothing was written before this line ----
    claims = claim_outputs(p)   # first: a run of other inputs writing there is refused now
    try:
        return _run(p, env, claims)
    finally:
        for claim in claims:
            claim.release()


def claim_outputs(p: JobPlan) -> list[OutputClaim]:
    """This run's claims (reshard.claim) on the local output (or --shared_dir) and on
    remote_save_url, held until the entry ends: another job's run of other inputs writing
    there is refused at once; this job's nodes and cards, and its reruns, share them. The
    remote claim is the first write under remote_save_url: a bucket that refuses it is found
    before anything else is written."""
    job, layout = p.job, p.layout
    tool = f"cloud-entry node {p.cluster.node_index}"
    shown = (f"--shared_dir={job.shared_dir}" if layout.shared_dir else
             f"--output_dir={job.output_dir}" if job.output_dir else f"output folder {layout.output_dir}")
    wanted = [(layout.shared_dir or layout.output_dir, shown)]
    if obs_io.is_remote(layout.remote_save_url):   # first: refused there, nothing local is made
        wanted.insert(0, (layout.remote_save_url, f"remote_save_url={job.remote_save_url}"))
    claims: list[OutputClaim] = []
    with contextlib.ExitStack() as held:   # on failure the claims made so far are released
        for root, shown in wanted:
            if not obs_io.is_remote(root):
                probe_outputs(p)   # the local folders, made and tried before a claim is written there
            try:
                claims.append(OutputClaim(root, p.run_id, tool, shown).acquire())
            except reshard.ReshardError:
                raise
            except (OSError, ValueError) as exc:   # obs_io's one line: refused, no such bucket
                raise EntryError(f"{shown}: cannot write there: {one_line(exc, (OSError, ValueError))}") from None
            held.callback(claims[-1].release)
        held.pop_all()   # all made: held until the entry ends
    return claims


def check_claims(claims: list[OutputClaim]) -> None:
    """Before publishing (markers, the manifest): the outputs are still this run's."""
    for claim in claims:
        claim.check()


def _run(p: JobPlan, env: dict[str, str], claims: list[OutputClaim]) -> int:
    job, layout, cluster = p.job, p.layout, p.cluster
    log.info("log file %s", logs.to_file(layout.log_dir, cluster.node_index))
    log.info("node %d of %d, %d cards, ranks %s; run %s", cluster.node_index, cluster.num_nodes,
             cluster.cards_per_node, sync.ranges(list(cluster.node_ranks)), p.run_id)
    log.info("%s", cluster.describe())
    shim = join(layout.work_dir, "moxing_shim") if is_modelarts(env) else ""
    try:
        role = node_leader.elect(cluster.node_index, p.node_key, cluster.per_card, layout.effective_config, shim,
                                 scope=node_leader.launch_scope(env))
        log.info("%s", role.describe())
        if role.leader:
            try:
                prepare(p, launch.environment(env, layout.effective_config, cluster.node_ranks, shim), shim,
                        lambda: check_claims(claims))
            except BaseException as exc:   # a report: the node's other cards wait on it, a stop included
                node_leader.finish(role, _one_line(exc))
                raise
            node_leader.finish(role)
        else:   # the leader's own waits take up to a transform_timeout each, besides its work
            node_leader.wait_for_leader(role, 3 * job.transform_timeout)
        if job.transform_only:
            log.info("--transform_only: not launching")
            return 0
        effective = role.me.effective_config   # the leader's: per-card folders may differ
        code = launch.run_command(launch.command(list(job.launch_cmd), effective),
                                  launch.environment(env, effective, cluster.node_ranks, role.me.shim))
        log.info("launch command exited with %d", code)
        return code
    finally:
        if layout.remote_save_url:
            logs.upload(layout.log_dir, join(layout.remote_save_url, "logs", f"node_{cluster.node_index}"), p.started)
