"""The job with a `checkpoint:` section on a MindFormers Checkpoint 2.0 source: the user's format
is kept (MindFormers' own loader, `checkpoint.load_path`), never switched to the legacy loader.

Two modes (hyperparameter `checkpoint2_mode`):

- preshard: node 0 converts the source into a Checkpoint 2.0 for the job's layout
  (--dst_strategy) with reshard.formats.checkpoint2 (read in place from object storage), writes
  its integrity manifest, uploads it under remote_save_url (publish.upload_set: the manifest,
  then the tracker last) and publishes its success marker; every other node waits for the
  marker (bounded by transform_timeout) and downloads the files its ranks read, checked against
  the manifest. MindFormers then loads without resharding on the NPUs. A rerun whose inputs
  made the set already (same source metadata.json, iteration and destination strategy, as the
  manifest records; on the store, whole) converts nothing.
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
from reshard.formats.checkpoint2.convert import convert_checkpoint
from reshard.formats.checkpoint2 import publish
from reshard.formats.checkpoint2.format import NO_STEP
from reshard.formats.checkpoint2.folder import COMMON, ITERATION_PREFIX, Checkpoint2, METADATA
from reshard.formats.checkpoint2.select import add_rank_groups, dumps, files_read, pruned_metadata

from cloud_entry import config as config_mod, markers, sync
from cloud_entry.errors import BlockFailed, EntryError
from cloud_entry.paths import clear_safely, join

if TYPE_CHECKING:
    from cloud_entry.job import JobPlan

log = logging.getLogger("cloud_entry")
PRESHARD, ONLINE = "preshard", "online"
MODES = (PRESHARD, ONLINE)
CONVERTER = 0   # the rank whose node converts (preshard) and whose marker the others wait for


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
    """Node 0 converts (or finds the set its inputs made already), uploads, publishes; every
    other node waits and downloads its ranks' files. Returns the local root to load."""
    c, job, layout = p.checkpoint2, p.job, p.layout
    out, remote = layout.transformed, layout.remote_transformed
    strategies = {"dst": c.dst_identity, "mode": PRESHARD}
    converter = CONVERTER in ranks
    if converter:
        if p.cluster.num_nodes > 1:   # nobody may take an older run's marker for this one's
            markers.clear_own(layout.marker_dir, [CONVERTER])
        try:
            manifest = _previous(out, remote, c.identity, strategies)
            if manifest is None:
                manifest = _convert(p, out, c, strategies, still_ours)
            elif not _whole_here(out, manifest):   # made before, kept on object storage only
                obs_io.file.copy_parallel(remote, out, file_list=sorted(manifest.files), progress=False)
                integrity.write(out, manifest)
            _prune_set(layout, out, remote, manifest, still_ours)
            if p.cluster.num_nodes > 1:
                still_ours()
                markers.publish(layout.marker_dir, markers.Marker(
                    markers.SUCCEED, CONVERTER, p.run_id,
                    markers.succeed_message({n: (r.size, r.crc32) for n, r in manifest.files.items()})))
        except BaseException as exc:
            if p.cluster.num_nodes > 1:
                markers.publish_failure(layout.marker_dir, markers.Marker(
                    markers.FAILED, CONVERTER, p.run_id, one_line(exc, (Exception,))))
            raise
        return out
    log.info("checkpoint2_mode=preshard: waiting (up to %gs) for node 0's Checkpoint 2.0",
             job.transform_timeout)
    markers.wait_for_blocks(layout.marker_dir, [CONVERTER], p.run_id, job.transform_timeout,
                            not_before=p.started - 15.0)
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


def _previous(out: str, remote: str, identity: dict, strategies: dict) -> integrity.SetManifest | None:
    """The manifest of a set these inputs made already (under remote_save_url, else locally)."""
    for where in (remote, out):
        if not where:
            continue
        try:
            manifest = integrity.read(where)
        except (reshard.ReshardError, OSError):
            continue
        if manifest.source == identity and manifest.strategies == strategies and \
                (where != remote or publish.complete(remote, manifest)):   # else an upload was cut
            log.info("checkpoint2_mode=preshard: %s already holds the Checkpoint 2.0 these inputs "
                     "make (its manifest says so): nothing converted", where)
            return manifest
    return None


def _whole_here(out: str, manifest: integrity.SetManifest) -> bool:
    return all(os.path.isfile(os.path.join(out, n)) and os.path.getsize(os.path.join(out, n)) == r.size
               for n, r in manifest.files.items())


def _convert(p: "JobPlan", out: str, c: Checkpoint2Job, strategies: dict,
             still_ours: Callable[[], None]) -> integrity.SetManifest:
    job, layout = p.job, p.layout
    clear_safely(out, layout.shared_dir or layout.output_dir, job.inputs)
    log.info("checkpoint2_mode=preshard: converting %s to the job's layout (%d ranks)", c.location,
             c.dst.world_size if c.dst else 1)
    try:
        written = convert_checkpoint(c.location, out, dst_strategy=c.dst, fmt="checkpoint2",
                                      iteration=c.source.iteration,
                                      process_num=job.transform_process_num or 1,
                                      max_memory=job.max_memory,
                                      policy=reshard.PlanPolicy(job.allow_missing_params,
                                                                job.keep_unnamed_params))
    except reshard.ReshardError as exc:
        raise EntryError(f"load_checkpoint={c.location}: {exc}") from None
    manifest = integrity.SetManifest(integrity.records(written.checksums), p.run_id, c.identity,
                                     strategies, integrity.tool_version())
    integrity.write(out, manifest)
    if layout.remote_save_url:   # the files, the manifest, the tracker last (publish.upload_set)
        still_ours()
        folder = next(n.split("/", 1)[0] for n in manifest.files if n.startswith(ITERATION_PREFIX))
        publish.upload_set(out, layout.remote_transformed, sorted(manifest.files), manifest, folder, still_ours)
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
