"""The job with a `checkpoint:` section on a MindFormers Checkpoint 2.0 source: the user's format
is kept (MindFormers' own loader, `checkpoint.load_path`), never switched to the legacy loader.

Two modes (hyperparameter `checkpoint2_mode`):

- preshard: the source is converted into a Checkpoint 2.0 for the job's layout (--dst_strategy)
  with reshard.formats.checkpoint2 (read in place from object storage) in rank blocks, as the
  legacy job converts (job.JobPlan.blocks: transform_process_num, SPEC.md "Rank blocks"): each
  node writes the shards of the blocks its ranks lead (prepare_checkpoint2 / write_block, one
  process per block), uploads them under remote_save_url and publishes each block's success
  marker listing its shards' (size, CRC32); node 0 waits for every block (bounded by
  transform_timeout; a failure marker ends the wait), writes metadata.json, common.json and the
  tracker (Checkpoint2Conversion.finish, told of the shards other nodes hold), the integrity
  manifest, uploads them (publish.upload_set: the manifest, then the tracker last) and publishes
  the set's marker (markers.SET); every node then waits for it and downloads the files its
  ranks read that it does not hold, checked against the manifest. No shared disk: several nodes
  without --shared_dir exchange shards and markers under an object-storage remote_save_url (the
  legacy job's rule, job._check_locations); with --shared_dir every node writes there. One
  node: no markers. MindFormers then loads without resharding on the NPUs. A rerun whose inputs
  made the set already (same source metadata.json, iteration and destination strategy, as the
  manifest records; on the store, whole) converts nothing; one after a kill keeps the shards a
  node finished (its folder's READY record and the engine's per-rank records).
- online: nothing is converted; each node downloads exactly the source files its ranks read
  (reshard.formats.checkpoint2.select: from metadata.json and the destination layout; all of
  them without --dst_strategy) with metadata.json cut to those files, and MindFormers' own
  online reshard runs on that node-local copy: no shared disk, which MindFormers requires for it
  (SHARED_PATHS). Records without rank_group (1.7/1.8 saves) get it in that copy
  (select.add_rank_groups): MindFormers 1.9+ cannot place a save_remove_redundancy slice
  without it. A rerun downloads only what is missing or of another size.

The default is preshard when --dst_strategy is given, else online.

The set's folders are the job's (under remote_save_url and on each node): what earlier runs left
there beside this run's set (another iteration, another layout's shards, a legacy output's rank
folders) is removed (prune); other files are left, named in a warning. The user's
load_checkpoint_step names no iteration of a Checkpoint 2.0 source and is refused (format.NO_STEP).

The hooks in job.py: inspect() in plan() (before the legacy source is classified), the JobPlan's
`checkpoint2` field, prepare() in job.prepare().
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import obs_io
import reshard
from obs_io.oneline import one_line
from reshard import integrity
from reshard.formats.checkpoint2 import TRACKER, is_checkpoint2, iteration_dir, read_checkpoint2
from reshard.blocks import Block
from reshard.formats.checkpoint2.convert import Checkpoint2Conversion, prepare_checkpoint2
from reshard.formats.checkpoint2 import publish
from reshard.formats.checkpoint2.format import NO_STEP
from reshard.formats.checkpoint2.folder import COMMON, SHARD_NAME, Checkpoint2, METADATA
from reshard.formats.checkpoint2.select import add_rank_groups, dumps, files_read, pruned_metadata

from cloud_entry import config as config_mod, markers, sync
from cloud_entry.convert import block_ranks
from cloud_entry.errors import BlockFailed, EntryError
from cloud_entry.paths import clear_safely, join
from cloud_entry.waits import poll

if TYPE_CHECKING:
    from cloud_entry.job import JobPlan

log = logging.getLogger("cloud_entry")
PRESHARD, ONLINE = "preshard", "online"
MODES = (PRESHARD, ONLINE)


@dataclasses.dataclass(frozen=True)
class Checkpoint2Job:
    """What plan() decided for a Checkpoint 2.0 source: the parsed source, the mode, the
    destination layout (None: online without --dst_strategy) and the source's identity
    (location, iteration, metadata.json's size and CRC32: what a rerun compares)."""
    source: Checkpoint2
    location: str
    mode: str
    dst: reshard.Strategy | None
    identity: dict[str, Any]

    @property
    def name(self) -> str:
        """The local folder name of the set (the source folder's name)."""
        return self.location.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def dst_identity(self) -> str:
        if self.dst is None:
            return ""
        return hashlib.sha256(repr(sorted(self.dst.layouts.items())).encode()).hexdigest()[:16]


def inspect(job, cfg: dict[str, Any], cluster, load_strategy: Callable[[str, str], reshard.Strategy]
            ) -> Checkpoint2Job | None:
    """A `checkpoint:` job (MindFormers' non-legacy loader) whose load_checkpoint is a Checkpoint
    2.0 folder: read and checked now (metadata.json against its shards' headers, by ranged GETs
    on object storage), before anything is written. None for any other job (the legacy path)."""
    if config_mod.uses_legacy_format(cfg) or not job.load_checkpoint:
        if job.checkpoint2_mode:
            raise EntryError(f"checkpoint2_mode={job.checkpoint2_mode}: only a job with a checkpoint: "
                             "section on a Checkpoint 2.0 load_checkpoint has modes")
        return None
    src = job.load_checkpoint
    try:
        if not is_checkpoint2(src):
            if job.checkpoint2_mode:
                raise EntryError(f"checkpoint2_mode={job.checkpoint2_mode}: load_checkpoint={src} is "
                                 f"not a Checkpoint 2.0 folder (no {TRACKER})")
            return None
        if job.load_checkpoint_step is not None:
            raise EntryError(f"load_checkpoint_step={job.load_checkpoint_step}: {NO_STEP}; point "
                             f"load_checkpoint at an iteration_<n> folder to read another iteration than "
                             f"{TRACKER} names")
        from reshard.formats.checkpoint2.convert import open_checkpoint
        ck = open_checkpoint(src).checkpoint2
        meta = integrity.file_checksum(ck.metadata_path)
    except reshard.ReshardError as exc:
        raise EntryError(f"load_checkpoint={src}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise EntryError(f"load_checkpoint={src}: {one_line(exc, (OSError, ValueError))}") from None
    mode = job.checkpoint2_mode or (PRESHARD if job.dst_strategy and job.use_parallel else ONLINE)
    dst = load_strategy(job.dst_strategy, "--dst_strategy") if job.dst_strategy and job.use_parallel else None
    world = cluster.world_size if job.use_parallel else 1
    if mode == PRESHARD and dst is None and job.use_parallel:
        raise EntryError("checkpoint2_mode=preshard needs --dst_strategy (the job's layout; a "
                         "strategy pass is not run for a Checkpoint 2.0 source)")
    if dst is not None and dst.world_size != world:
        raise EntryError(f"--dst_strategy={job.dst_strategy} has {dst.world_size} ranks, this job "
                         f"{world}")
    identity = {"location": src, "iteration": ck.iteration,
                "metadata": [meta.size, meta.crc32]}
    log.info("load_checkpoint=%s: Checkpoint 2.0, iteration %d; checkpoint2_mode=%s", src,
             ck.iteration, mode)
    return Checkpoint2Job(ck, src, mode, dst, identity)


def prepare(p: "JobPlan", config: dict[str, Any], still_ours: Callable[[], None]) -> dict[str, Any]:
    """The node leader's part: the node's Checkpoint 2.0 folder ready; returns the config the
    training command gets (the checkpoint: section kept, its load_path that folder)."""
    c = p.checkpoint2
    ranks = list(p.cluster.node_ranks) if p.job.use_parallel else [0]
    if c.mode == ONLINE:
        local = join(p.layout.work_dir, "checkpoint", c.name)
        names = files_read(c.source, c.dst, ranks)
        log.info("checkpoint2_mode=online: %d of %d source files for ranks %s (MindFormers reshards "
                 "them online)", len(names), _count(c.source), _ranks_text(ranks))
        _node_copy(c.source, names, local, expected=None)
        root = local
    else:
        root = _preshard(p, ranks, still_ours)
    log.info("checkpoint ready: %s", root)
    return config_mod.for_launch(config, root)


def _count(ck: Checkpoint2) -> int:
    return sum(len(files) for files in ck.files.values())


def _ranks_text(ranks: list[int]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])


def _node_copy(ck: Checkpoint2, names: set[str], local: str,
               expected: dict[str, integrity.FileRecord] | None) -> None:
    """`local` made a Checkpoint 2.0 root holding the tracker, the iteration folder's common.json,
    metadata.json cut to `names`, and the shards `names` (downloaded unless present with the
    size the source has; what earlier runs left there removed first, prune: the folder is
    ours). expected: the manifest's records (name relative to the set) the downloaded shards
    must match."""
    folder = iteration_dir(ck.iteration)
    here = os.path.join(local, folder)
    prune(local, {f"{folder}/{n}" for n in (*names, COMMON, METADATA)})
    os.makedirs(here, exist_ok=True)
    sizes = {e.name: e.length for e in obs_io.file.list_entries(ck.path_of(""), recursive=False)
             if e.is_file()} if obs_io.is_remote(ck.base) else {
        n: os.path.getsize(ck.path_of(n)) for n in names}
    wanted = sorted(n for n in names if not (os.path.isfile(os.path.join(here, n))
                                             and os.path.getsize(os.path.join(here, n)) == sizes.get(n)))
    if wanted:
        obs_io.file.copy_parallel(ck.path_of("").rstrip("/"), here, file_list=wanted, progress=False)
    if expected is not None:
        for n in sorted(names):
            want, got = expected.get(f"{folder}/{n}"), integrity.file_checksum(os.path.join(here, n))
            if want != got:
                raise EntryError(f"{ck.path_of(n)}: downloaded {got.size} bytes CRC32 {got.crc32}, the "
                                 f"set's manifest records {want}: not launching on a damaged copy")
    common = obs_io.file.read(ck.path_of("common.json"), binary=True) \
        if obs_io.file.exists(ck.path_of("common.json")) else None
    if common is not None:
        obs_io.file.write(os.path.join(here, "common.json"), common, binary=True)
    data = obs_io.file.read(ck.metadata_path, binary=True)
    full = names >= {f for files in ck.files.values() for f in files.values()}
    meta = json.loads(data) if full else pruned_metadata(json.loads(data), names)
    if add_rank_groups(meta, ck) or not full:   # else the source's bytes as they are
        data = dumps(meta).encode()
    obs_io.file.write(os.path.join(here, METADATA), data, binary=True)
    obs_io.file.write(os.path.join(local, TRACKER), str(ck.iteration))   # last: the copy is whole


def _preshard(p: "JobPlan", ranks: list[int], still_ours: Callable[[], None]) -> str:
    """Every node converts its rank blocks (p.blocks, SPEC.md "Rank blocks"; a set these inputs
    made already: nothing) and publishes their markers; node 0 then completes the set
    (_finish_set) and publishes its marker; every node waits for it and has the files its ranks
    read (_node_copy). Returns the local root to load."""
    c, job, layout = p.checkpoint2, p.job, p.layout
    strategies = {"dst": c.dst_identity, "mode": PRESHARD}
    first = p.cluster.node_index == 0
    manifest, conversion, written = _blocks_of_this_node(p, strategies, still_ours)
    if first:
        manifest = _complete_set(p, manifest, conversion, written, strategies, still_ours)
    else:
        log.info("checkpoint2_mode=preshard: waiting (up to %gs) for every block and node 0's set",
                 job.transform_timeout)
        markers.wait_for_blocks(layout.marker_dir, [*(b.leader for b in p.blocks.blocks), markers.SET],
                                p.run_id, job.transform_timeout, not_before=p.started - markers.CLOCK_SLACK)
    out, remote = layout.transformed, layout.remote_transformed
    if not remote or layout.shared_dir:
        return out   # the folder holds the whole set (one node, or the shared disk)
    if not first:
        manifest = integrity.read(remote)
    try:
        converted = read_checkpoint2(remote)
    except reshard.ReshardError as exc:
        raise BlockFailed(f"node 0's Checkpoint 2.0 {remote}: {exc}") from None
    names = files_read(converted, c.dst, ranks)
    log.info("checkpoint2_mode=preshard: %d of %d converted files for ranks %s", len(names),
             _count(converted), _ranks_text(ranks))
    _node_copy(converted, names, out, manifest.files)
    return out


def _blocks_of_this_node(p: "JobPlan", strategies: dict, still_ours: Callable[[], None]):
    """This node's blocks converted (nothing when a set these inputs made is found: its
    manifest) and their markers published. Returns (the earlier set's manifest or None, the
    conversion or None, the shards written here: name -> (size, CRC32 hex)). A failure is
    this node's blocks' (and on node 0 the set's): their failure markers tell every node."""
    c, layout = p.checkpoint2, p.layout
    multi, first = p.cluster.num_nodes > 1, p.cluster.node_index == 0
    mine = p.blocks.led_by(p.convert_ranks)
    log.info("checkpoint2_mode=preshard: %s; this node converts %s", ", ".join(map(str, p.blocks.blocks)),
             ", ".join(map(str, mine)) or "nothing")
    own = [b.leader for b in mine] + ([markers.SET] if first else [])
    if multi:   # first of all: nobody may take an older run's marker of ours for this one's
        markers.clear_own(layout.marker_dir, own)
    try:
        manifest = _previous(layout.transformed, layout.remote_transformed, c.identity, strategies)
        conversion, written = (None, {n: (r.size, r.crc32) for n, r in manifest.files.items()}) \
            if manifest is not None else _convert_blocks(p, mine, strategies, still_ours)
        if multi:
            still_ours()
            for block in mine:   # each marker lists its block's shards with their checksums
                markers.publish(layout.marker_dir, markers.Marker(
                    markers.SUCCEED, block.leader, p.run_id,
                    markers.succeed_message(_of_ranks(written, block.ranks))))
    except BaseException as exc:   # the failure markers, for whatever ended it
        _publish_failure(p, own, exc)
        raise
    return manifest, conversion, written


def _complete_set(p: "JobPlan", manifest: integrity.SetManifest | None, conversion, written: dict,
                  strategies: dict, still_ours: Callable[[], None]) -> integrity.SetManifest:
    """Node 0, after its blocks: the set finished (_finish_set; or an earlier one of these
    inputs kept, copied here from object storage when a shared disk lacks it), pruned, and its
    marker published. Returns its manifest."""
    layout, out, remote = p.layout, p.layout.transformed, p.layout.remote_transformed
    try:
        if manifest is None:
            manifest = _finish_set(p, conversion, written, strategies, still_ours)
        elif layout.shared_dir and not _whole_here(out, manifest):   # kept on object storage only
            obs_io.file.copy_parallel(remote, out, file_list=sorted(manifest.files), progress=False)
            integrity.write(out, manifest)
        _prune_set(layout, out, remote, manifest, still_ours)
        if p.cluster.num_nodes > 1:
            still_ours()
            markers.publish(layout.marker_dir, markers.Marker(
                markers.SUCCEED, markers.SET, p.run_id, markers.succeed_message(
                    {n: (r.size, r.crc32) for n, r in manifest.files.items()})))
    except BaseException as exc:   # the set's failure marker, for whatever ended it
        _publish_failure(p, [markers.SET], exc)
        raise
    return manifest


def _publish_failure(p: "JobPlan", leaders: list[int], exc: BaseException) -> None:
    """The blocks led by `leaders` (markers.SET: the set) failed: their failure markers, for the
    other nodes waiting on them (several nodes only)."""
    if p.cluster.num_nodes > 1:
        for leader in leaders:
            markers.publish_failure(p.layout.marker_dir, markers.Marker(
                markers.FAILED, leader, p.run_id, one_line(exc, (Exception,))))


def _of_ranks(files: dict[str, tuple[int, str]], ranks: tuple[int, ...]) -> dict[str, tuple[int, str]]:
    """The shards (names in the set) of destination `ranks` among `files`."""
    wanted = set(ranks)
    out = {}
    for name, record in files.items():
        m = SHARD_NAME.match(name.rsplit("/", 1)[-1])
        if m is not None and int(m.group("idx")) in wanted:
            out[name] = record
    return out


def _previous(out: str, remote: str, identity: dict, strategies: dict) -> integrity.SetManifest | None:
    """The manifest of a set these inputs made already: under remote_save_url (complete there),
    else (no remote_save_url) in the local folder (whole there)."""
    try:
        manifest = integrity.read(remote or out)
    except (reshard.ReshardError, OSError):
        return None
    if manifest.source == identity and manifest.strategies == strategies and \
            (publish.complete(remote, manifest) if remote else _whole_here(out, manifest)):   # else cut
        log.info("checkpoint2_mode=preshard: %s already holds the Checkpoint 2.0 these inputs "
                 "make (its manifest says so): nothing converted", remote or out)
        return manifest
    return None


def _whole_here(out: str, manifest: integrity.SetManifest) -> bool:
    return all(os.path.isfile(os.path.join(out, n)) and os.path.getsize(os.path.join(out, n)) == r.size
               for n, r in manifest.files.items())


# In the node's folder: the inputs whose blocks it holds (what _ready keeps for a rerun).
READY = ".cloud_entry_preshard.json"


def _ready(p: "JobPlan", record: dict) -> None:
    """The node's folder made ready for its blocks: an interrupted run of these inputs (READY
    says so) left finished shards with the engine's records there, which are kept (the engine
    converts only what is missing or changed) while what is written after every block goes
    (the tracker, the manifest, the iteration's metadata.json and common.json); anything else
    is cleared. On a shared disk node 0 does this and the others wait for it."""
    c, job, layout = p.checkpoint2, p.job, p.layout
    out = layout.transformed
    path = os.path.join(out, READY)
    if layout.shared_dir and p.cluster.node_index != 0:
        def check() -> bool | None:
            markers.pending_blocks(markers.scan(layout.marker_dir), [markers.SET], p.run_id,
                                   p.started - markers.CLOCK_SLACK)   # node 0 failed: said now
            return True if _read_record(path) == record else None
        poll(check, job.transform_timeout, f"node 0 to prepare {out}")
        return
    if _read_record(path) == record:
        folder = iteration_dir(c.source.iteration)
        for name in (TRACKER, integrity.MANIFEST_NAME, f"{folder}/{METADATA}", f"{folder}/{COMMON}"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))
        return
    clear_safely(out, layout.shared_dir or layout.output_dir, job.inputs)
    os.makedirs(out, exist_ok=True)
    obs_io.file.write(path, json.dumps(record))


def _read_record(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _convert_blocks(p: "JobPlan", mine: tuple[Block, ...], strategies: dict,
                    still_ours: Callable[[], None]) -> tuple[Checkpoint2Conversion | None, dict[str, tuple[int, str]]]:
    """This node's blocks written into its folder (one process per block, as the legacy job),
    then uploaded under remote_save_url (each object whole or not there; a tracker there naming
    the iteration folder removed first: the set there is being replaced). Returns the
    conversion (None: no block here) and the shards written -> (size, CRC32)."""
    c, job, layout = p.checkpoint2, p.job, p.layout
    out = layout.transformed
    _ready(p, {"source": c.identity, "strategies": strategies})
    if not mine:
        return None, {}
    ranks = block_ranks(mine)
    log.info("checkpoint2_mode=preshard: converting %s to the job's layout (%d ranks): ranks %s here",
             c.location, c.dst.world_size if c.dst else 1, _ranks_text(ranks))
    try:
        conversion = prepare_checkpoint2(c.location, out, dst_strategy=c.dst, iteration=c.source.iteration,
                                         process_num=len(mine), max_memory=job.max_memory,
                                         policy=reshard.PlanPolicy(job.allow_missing_params,
                                                                   job.keep_unnamed_params))
        written = conversion.write_block(ranks)
    except reshard.ReshardError as exc:
        raise EntryError(f"load_checkpoint={c.location}: {exc}") from None
    if layout.remote_save_url:
        still_ours()
        publish.unname(layout.remote_transformed, conversion.iteration.folder)
        publish.upload_set(out, layout.remote_transformed, sorted(written), None, None, still_ours)
    return conversion, written


def _finish_set(p: "JobPlan", conversion: Checkpoint2Conversion, written: dict[str, tuple[int, str]],
                strategies: dict, still_ours: Callable[[], None]) -> integrity.SetManifest:
    """Node 0, its blocks done: every block's marker awaited (several nodes; bounded by
    transform_timeout, a failed block ends it), then metadata.json, common.json and the tracker
    (Checkpoint2Conversion.finish, told of the shards the other nodes wrote) and the set's
    manifest; under remote_save_url those go up, the manifest, then the tracker last
    (publish.upload_set)."""
    c, job, layout = p.checkpoint2, p.job, p.layout
    out, remote = layout.transformed, layout.remote_transformed
    files = dict(written)
    if p.cluster.num_nodes > 1:
        leaders = [b.leader for b in p.blocks.blocks]
        log.info("checkpoint2_mode=preshard: waiting (up to %gs) for the blocks led by ranks %s",
                 job.transform_timeout, leaders)
        for marker in markers.wait_for_blocks(layout.marker_dir, leaders, p.run_id, job.transform_timeout,
                                              not_before=p.started - markers.CLOCK_SLACK):
            files.update(markers.block_files(marker, layout.marker_dir))
    elsewhere = () if layout.shared_dir else set(files) - set(written)
    try:
        finished = conversion.finish(elsewhere=elsewhere)
    except reshard.ReshardError as exc:
        raise EntryError(f"{out}: {exc}") from None
    files.update(finished)
    manifest = integrity.SetManifest(integrity.records(files), p.run_id, c.identity, strategies,
                                     integrity.tool_version())
    if not remote or layout.shared_dir:   # the folder holds the whole set
        integrity.write(out, manifest)
    if remote:   # the shards went up with their blocks
        still_ours()
        publish.upload_set(out, remote, sorted(finished), manifest, conversion.iteration.folder, still_ours)
    return manifest


def _prune_set(layout, out: str, remote: str, manifest: integrity.SetManifest,
               still_ours: Callable[[], None]) -> None:
    """The converter's folders, local and under remote_save_url, hold this run's set only
    (prune); on the store, what killed runs left incomplete there is aborted first (only node 0
    writes there: nobody else uploads into it now)."""
    if layout.remote_save_url:
        still_ours()   # the prune removes: only in our own output
        sync.abort_left_uploads(remote)
        prune(remote, set(manifest.files))
    prune(out, set(manifest.files))


def prune(root: str, keep: set[str]) -> list[str]:
    """Remove from a Checkpoint 2.0 folder of the job's (local, or under remote_save_url: the
    plan checked it is none of the inputs) what earlier runs left beside the set `keep` that a
    loader could take for part of it (publish.stale_files: another iteration's folder, another
    layout's shards, legacy rank folders); other files are left, named in a warning. Returns the
    removed names."""
    try:
        names = [e.name for e in obs_io.file.list_entries(root, recursive=True) if e.is_file()]
    except FileNotFoundError:
        return []
    stale = publish.stale_files(names, keep)
    _remove(root, stale)
    others = [n for n in names if n not in keep and n not in stale and not n.startswith(".")
              and n not in (TRACKER, integrity.MANIFEST_NAME) and markers.parse(n, "") is None]
    if others:
        log.warning("%s: left %d file(s) this job did not write, not part of the Checkpoint 2.0 set "
                    "MindFormers loads: %s", root, len(others), _some(others))
    return stale


def _some(names: list[str]) -> str:
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")


def _remove(root: str, stale: list[str]) -> None:
    """prune's removal: the files, then (locally) the folders they leave empty."""
    for name in stale:
        try:
            obs_io.file.remove(join(root, name))
        except FileNotFoundError:
            pass
    if stale:
        log.info("removed %d file(s) of earlier runs from %s: %s", len(stale), root, _some(stale))
    if not obs_io.is_remote(root):
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
                os.rmdir(path)
