"""Streaming execution of a plan: destination ranks converted by worker processes under a
host-memory budget.

Each destination tensor is assembled in ~8 MiB axis-0 chunks, taking turns in the two halves of
one preallocated buffer (reshard.assemble) that source readers fill directly, while the writer's
threads CRC-sum and write the other half; the writer renames its temporary file only when
complete. Memory is therefore bounded by the largest slice being assembled (of which only two
chunks are touched), not by the model. Workers are started with 'spawn' and import only this
package (never MindSpore).

A rank whose file has the same bytes as an earlier rank's (Plan.same_as: data-parallel
replicas without optimizer sharding) is not converted: once that rank is committed, the process
that wrote it gives the same file another name (a hard link) and, where it was uploaded, has
the store copy its object (make_copies). Each rank, converted or copied, has a record beside the output (its plan
digest, size, time and CRC32) that tells a rerun it is done.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace

from typing import TYPE_CHECKING, Callable, Collection

import numpy as np

from .assemble import assemble_and_write
from .errors import ReshardError
from .formats import FileIndex, FormatError, TensorMeta, open_reader, open_writer
from .formats import remote as remote_source
from .formats.growing import Growing
from .parent_death import kill_with_parent
from obs_io import redact
from obs_io.atomic import Landing, sweep, write_atomic
from obs_io.cleanup import on_failure
from . import integrity
from .plan import Plan, RankPlan
from .config import DEFAULT, ReshardConfig

if TYPE_CHECKING:
    from .finish import FinishedPlan
    from .subscriber import Subscriber

log = logging.getLogger("reshard")

MANIFEST_DIR = ".reshard"   # the engine's state files below an output: private to it
# ReshardConfig.stop_grace_seconds of this worker's run (_worker_init)
_stop_grace = DEFAULT.stop_grace_seconds


def rank_cost(rp: RankPlan, remote: frozenset[str] | set[str] = frozenset(),
              part_bytes: int = 0, config: ReshardConfig = DEFAULT) -> int:
    """Bytes one destination rank needs while converting (on top of its process); `remote`:
    the source files read in place, whose readers hold more: each its window, and the one
    reading (a rank reads one piece at a time) its config.remote_threads GETs in flight, of
    part_bytes each (obs_io's read_part_bytes); config.reader_bytes per open reader."""
    files = rp.source_files
    remote_files = sum(f in remote for f in files)
    return (rp.buffer_bytes + config.reader_bytes * len(files)
            + remote_files * remote_source.open_bytes(config)
            + (config.remote_threads * part_bytes if remote_files else 0))


@dataclass(frozen=True)
class SourceFiles:
    """Where the source files of a plan are read, as sent to the worker processes: under
    local_root, except the `remote` names, read in place at remote_base/<name> by ranged GETs
    with obs_io's configuration s3 (the parent's: set_auth does not reach a spawned worker)."""
    local_root: str
    remote_base: str | None = None
    remote: frozenset[str] = frozenset()
    s3: object = None          # obs_io.S3Config (its repr hides the secrets)
    # name -> its headers as the planner read them (remote or fetched: no HEAD, no header
    # GETs, no header scan again)
    indexes: dict[str, FileIndex] = field(default_factory=dict, repr=False)
    # fetched name -> where it is still being downloaded (formats.growing.Growing)
    growing: dict[str, Growing] = field(default_factory=dict)

    @classmethod
    def of(cls, src: "SourceFiles | str") -> "SourceFiles":
        """A bare local root (every file local), or the object itself."""
        return src if isinstance(src, SourceFiles) else cls(src)

    def location(self, name: str) -> str:
        if name in self.remote:
            return f"{self.remote_base.rstrip('/')}/{name}"
        return _src_path(self.local_root, name)

    def open(self, name: str, config: ReshardConfig = DEFAULT):
        """A reader of source file `name`, where it is read, as the run's `config` says."""
        if name not in self.remote:
            if name not in self.indexes:   # a local source: its headers read here
                return open_reader(self.location(name), config=config)
            return open_reader(self.location(name), index=self.indexes[name],
                               growing=self.growing.get(name), config=config)
        return open_reader(self.location(name), s3_config=self.s3, index=self.indexes.get(name),
                           config=config)

    def for_rank(self, rp: RankPlan) -> "SourceFiles":
        """The same, with the indexes of this rank's files only (what goes to its worker)."""
        if not self.indexes:
            return self
        return replace(self, indexes={f: self.indexes[f] for f in rp.source_files
                                      if f in self.indexes},
                       growing={f: self.growing[f] for f in rp.source_files if f in self.growing})

    def unverified(self, rp: RankPlan) -> list[str]:
        """The files this rank reads that are still downloading: not yet checked whole."""
        return [f for f in rp.source_files if f in self.growing]

    def identity(self, name: str) -> list:
        """What tells this version of the file apart: local (path, size, mtime); an object,
        read in place or fetched, (URL, size, ETag), from its headers or a HEAD."""
        location = self.location(name)
        if name in self.indexes:   # remote or fetched: the object, wherever a copy of it lies
            url = f"{self.remote_base.rstrip('/')}/{name}" if self.remote_base else location
            return [url, self.indexes[name].size, self.indexes[name].version]
        if name in self.remote:
            return [location, *remote_source.head(location, self.s3)]
        st = os.stat(location)
        return [os.path.abspath(location), st.st_size, st.st_mtime_ns]


def expected_peak(costs: list[int], process_num: int, budget: int,
                  process_base_bytes: int = DEFAULT.process_base_bytes) -> int:
    """What the scheduler below can reach: the largest costs running at once, within budget,
    plus process_base_bytes per process."""
    running, total = 0, 0
    for c in sorted(costs, reverse=True)[:process_num]:
        if total + c > budget and running:
            break
        total += c
        running += 1
    return total + process_base_bytes * (1 + (running if process_num > 1 else 0))


# -- rerun: skip destination files already complete and verified ---------------------------

def _src_path(src_root: str, name: str) -> str:
    return os.path.join(src_root, *name.split("/"))


def rank_digest(rp: RankPlan, fmt: str, src_root: SourceFiles | str) -> str:
    """The plan of one rank plus the identity (path, size, mtime; or URL, size, ETag) of the
    files it reads."""
    files = SourceFiles.of(src_root)
    h = hashlib.sha256()
    h.update(repr((fmt, rp.path, rp.tensors)).encode())
    h.update(json.dumps([files.identity(f) for f in rp.source_files]).encode())
    return h.hexdigest()


def _manifest_path(dst_root: str, rp: RankPlan) -> str:
    return os.path.join(dst_root, MANIFEST_DIR, f"rank_{rp.rank}.json")


def inside(root: str, path: str) -> bool:
    """`path` (below root) is where it says, no link on the way leading elsewhere."""
    rel = os.path.relpath(path, root)
    return os.path.realpath(path) == os.path.join(os.path.realpath(root), rel)


def own_folders(root: str, folders) -> None:
    """Before anything is written below root: a link on the way to each folder (a rank_<r>
    link to a folder elsewhere, left or planted in the output) is removed, so the folder the
    writer makes there is the output's own and no write follows a link out of it; the link's
    target is left as it was. Raises ReshardError if a folder still leads out."""
    real_root = os.path.realpath(root)
    for folder in folders:
        rel = os.path.relpath(folder, root)
        here = root
        for part in rel.split(os.sep) if rel != "." else ():
            here = os.path.join(here, part)
            if os.path.islink(here):
                log.warning("%s is a link to %s: replaced by a folder of its own (nothing is "
                            "written through a link out of the output)", here,
                            os.path.realpath(here))
                os.unlink(here)
        if os.path.realpath(folder) != os.path.join(real_root, rel):
            raise ReshardError(f"{folder}: leads out of the output {root} "
                               f"(to {os.path.realpath(folder)}): not writing there")


def is_done(src_root: SourceFiles | str, dst_root: str, rp: RankPlan, fmt: str) -> bool:
    """The output exists with the size/mtime recorded when this same plan wrote it, from
    source files that were all checked whole (none still 'unverified': see reshard.fetch),
    and neither it nor its record is reached through a link out of the output. An output that
    was not fsynced (a staged upload) is read once more and must have the recorded CRC32:
    after a crash of the machine its bytes could be zeros of the right size."""
    return _done_record(src_root, dst_root, rp, fmt) is not None


def done_checksum(src_root: SourceFiles | str, dst_root: str, rp: RankPlan, fmt: str) -> tuple[int, str] | None:
    """(size, CRC32 hex) of a rank's output as its record holds them, when is_done (None: not
    complete by this plan): for a caller that vouches for ranks another process wrote (the
    blocks of one Checkpoint 2.0)."""
    m = _done_record(src_root, dst_root, rp, fmt)
    return None if m is None else (m["size"], m["crc32"])


def _done_record(src_root: SourceFiles | str, dst_root: str, rp: RankPlan, fmt: str) -> dict | None:
    """is_done's test; the rank's record when it passes (read once: what it vouches for is
    what the caller gets)."""
    out = os.path.join(dst_root, rp.path)
    if not (inside(dst_root, out) and inside(dst_root, _manifest_path(dst_root, rp))):
        return None
    try:
        with open(_manifest_path(dst_root, rp), encoding="utf-8") as f:
            m = json.load(f)
        st = os.stat(out)
    except (OSError, ValueError):
        return None
    done = m.get("digest") == rank_digest(rp, fmt, src_root) and m.get("size") == st.st_size \
        and m.get("mtime_ns") == st.st_mtime_ns and "crc32" in m and not m.get("unverified")
    if done and m.get("fsynced") is False:
        try:
            done = integrity.file_checksum(out).crc32 == m["crc32"]
        except OSError:
            return None
    return m if done else None


def _write_manifest(src_root: SourceFiles | str, dst_root: str, rp: RankPlan, fmt: str,
                    crc32: str, fsynced: bool = True, token: str | None = None) -> dict:
    """The rank's record (returned too), written after its output is complete under its final
    name. Not fsynced (a flush per rank cost most of the slowdown at 128 destination ranks):
    when the output was fsynced (with its folder) before, a record that a crash of the machine
    leaves empty, zeroed or missing only makes a rerun convert that rank again, and one that
    survives describes an output that survived too. fsynced False: the output was not (a staged
    upload), and is_done checks its CRC32 before trusting it. token: the upload token of its
    object (obs_io.streams.upload_token), for its remote record (record_upload)."""
    out = os.path.join(dst_root, rp.path)
    st = os.stat(out)
    record = {"digest": rank_digest(rp, fmt, src_root), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "file": rp.path, "crc32": crc32}
    if not fsynced:
        record["fsynced"] = False
    if token is not None:
        record["token"] = token
    unverified = SourceFiles.of(src_root).unverified(rp)
    if unverified:   # read while downloading: vouched for once those files are checked whole
        record["unverified"] = unverified
    write_atomic(_manifest_path(dst_root, rp), json.dumps(record).encode(), durable=False)
    return record


def settle_manifests(dst_root: str, ranks: list[RankPlan], verified: bool,
                     upload: "UploadTo | None" = None) -> None:
    """After the download of the files these ranks read while it ran (ranks this run
    converted): verified, their records lose the 'unverified' list (is_done accepts them from
    now on) and, with upload records on, a rank whose object went up now gets its remote
    record (record_upload); not (a file failed its check, or the download stopped), their
    outputs and records are removed, written or not (a worker stopped between the output's
    rename and its record leaves no record), so nothing made from it stays."""
    for rp in ranks:
        path = _manifest_path(dst_root, rp)
        if not verified:
            out = os.path.join(dst_root, rp.path)
            if os.path.exists(out):
                log.info("rank %d: %s removed: made while a source file it reads was downloading, "
                         "which did not end checked", rp.rank, rp.path)
            for gone in (out, path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(gone)
            for folder in (os.path.dirname(out), os.path.dirname(path)):   # left empty: gone too
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if m.pop("unverified", None):   # not fsynced: see _write_manifest
            write_atomic(path, json.dumps(m).encode(), durable=False)
            if upload is not None and upload.records and "token" in m:
                record_upload(upload, rp, m)


def rank_checksum(dst_root: str, rp: RankPlan) -> tuple[int, str] | None:
    """(size, CRC32) of a rank's output as recorded when it was written, or None (no record,
    or one from before checksums were recorded)."""
    try:
        with open(_manifest_path(dst_root, rp), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return (m["size"], m["crc32"]) if "crc32" in m and "size" in m else None


# -- one destination rank -------------------------------------------------------------------

_buffer = np.empty(0, np.uint8)


def _assembly_buffer(nbytes: int) -> np.ndarray:
    """One buffer per process, grown to the largest rank seen: a fresh allocation per rank
    would page-fault and zero every byte of it again."""
    global _buffer
    if _buffer.nbytes < nbytes:
        _buffer = np.empty(0, np.uint8)   # drop the old one before taking the new
        _buffer = np.empty(nbytes, np.uint8)
    return _buffer


@dataclass(frozen=True)
class UploadTo:
    """Where each rank written now is also uploaded while it is written (obs_io's
    GrowingUpload: the parts go as the bytes are written; the object is complete once the file
    is committed), except the names in `skip`; s3: obs_io's configuration (the parent's, for
    the worker processes). Memory: `chunks` parts per rank being written. records: each rank
    uploaded gets a remote record once its object is complete (record_upload), and a rank an
    earlier run so recorded is kept (uploaded_ranks)."""
    root: str
    s3: object = None
    skip: frozenset[str] = frozenset()
    records: bool = False
    chunks: int = DEFAULT.upload_chunks   # ReshardConfig.upload_chunks

    def wants(self, rp: RankPlan) -> bool:
        return rp.path not in self.skip

    def url(self, rp: RankPlan) -> str:
        return f"{self.root.rstrip('/')}/{rp.path}"

    def part_bytes(self, rp: RankPlan) -> int:
        return self.s3.part_size(_size_hint(rp)) if self.s3 is not None else 8 << 20

    def start(self, rp: RankPlan, temp_path: str):
        from obs_io import store_for
        url = self.url(rp)
        return store_for(url).growing_upload(temp_path, url, _size_hint(rp), self.s3, chunks=self.chunks)


def _remote_record(root: str, rank: int) -> str:
    return f"{root.rstrip('/')}/{MANIFEST_DIR}/rank_{rank}.json"


def record_upload(upload: UploadTo, rp: RankPlan, record: dict) -> None:
    """A rank's remote record, <upload.root>/.reshard/rank_<r>.json: its digest (the plan and
    the source versions, as rank_digest), size, CRC32 (the writer's) and the upload token its
    object carries (a store's copy of an object carries the original's). Written only once
    that object is complete and every source file the rank read was checked whole, so a record
    vouches for the object it names (uploaded_ranks). One that cannot be written is a warning:
    the set does not need it, a rerun converts that rank again."""
    import io
    from obs_io import store_for
    body = json.dumps({k: record[k] for k in ("digest", "file", "size", "crc32", "token")}).encode()
    url = _remote_record(upload.root, rp.rank)
    try:
        store_for(url).upload_fileobj(io.BytesIO(body), url, len(body), cfg=upload.s3)
    except OSError as exc:
        log.warning("rank %d: no record of its upload written to %s (a rerun converts it again): %s",
                    rp.rank, url, exc)


def uploaded_ranks(plan: Plan, src_root: SourceFiles | str, upload: UploadTo) -> dict[int, tuple[int, str]]:
    """The ranks of `plan` an earlier run uploaded to upload.root and recorded there
    (record_upload), checked before they are trusted: the record holds this rank's digest (the
    same plan from the same source versions) and the object is there with the recorded size,
    made by the recorded upload (its token: not replaced since). rank -> (size, CRC32), from
    the record. One listing of the records, then a GET of each and a HEAD of its object, 16
    ranks at a time."""
    import obs_io
    from obs_io.streams import upload_size
    folder = f"{upload.root.rstrip('/')}/{MANIFEST_DIR}"
    try:
        names = {e.name for e in obs_io.file.list_entries(folder) if e.is_file()}
    except FileNotFoundError:
        return {}
    candidates = [rp for rp in plan.ranks if f"rank_{rp.rank}.json" in names and upload.wants(rp)]

    def check(rp: RankPlan) -> tuple[int, str] | None:
        try:
            m = json.loads(obs_io.file.read(_remote_record(upload.root, rp.rank), binary=True))
            size, crc32, token = int(m["size"]), str(m["crc32"]), str(m["token"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if m.get("digest") != rank_digest(rp, plan.fmt, src_root) or m.get("file") != rp.path:
            return None
        return (size, crc32) if upload_size(upload.url(rp), token, upload.s3) == size else None

    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="reshard-uploaded") as pool:
        found = list(pool.map(check, candidates))
    return {rp.rank: got for rp, got in zip(candidates, found) if got is not None}


def forget_uploads(root: str) -> None:
    """Remove the remote records below `root` (record_upload): once the set's manifest is
    written there, it vouches for every rank, and the records would only be left behind."""
    import obs_io
    try:
        obs_io.file.remove(f"{root.rstrip('/')}/{MANIFEST_DIR}", recursive=True)
    except FileNotFoundError:
        pass


def same_as(plan: Plan, stored: Collection[int] = ()) -> dict[int, int]:
    """rank -> the rank whose file it is made from (Plan.same_as), where a first rank kept on
    the store only (`stored`: uploaded_ranks; no local file to make copies from) hands its
    replicas to the lowest of them not stored, converted in its place."""
    groups: dict[int, list[int]] = {}
    for rank, first in sorted(plan.same_as.items()):
        groups.setdefault(first, []).append(rank)
    out = {}
    for first, ranks in groups.items():
        if first in stored:
            rest = [r for r in ranks if r not in stored]
            first, ranks = (rest[0], rest[1:]) if rest else (first, [])
        out.update((r, first) for r in ranks)
    return out


def _size_hint(rp: RankPlan) -> int:
    """About the bytes of a rank's file: its values plus room for the format's headers."""
    return rp.nbytes + 4096 * len(rp.tensors) + (1 << 20)


class _RankOutput:
    """One destination rank's output while it is made, owning its cleanup (as s3transfer's
    futures own theirs): the writer's temporary file, the upload streaming it, the folder made
    for it. stage() wraps each step (writing, committing, handing the commit off): whatever
    the step raises, what it leaves is aborted there, in one place."""

    def __init__(self, rp: RankPlan, dst_root: str):
        self.path = os.path.join(dst_root, rp.path)
        self.folder = os.path.dirname(self.path)
        self.made_folder = not os.path.isdir(self.folder)
        self.writer = None
        self.streaming = None   # obs_io GrowingUpload of the writer's temporary file

    def stage(self, file: bool = True, folder: bool = False) -> on_failure:
        """A context manager: on any exception (a stop request too) the upload is aborted, and
        with `file` the writer's temporary file, with `folder` the folder made for it if left
        empty; then the exception goes on."""
        return on_failure(self.abort, file, folder)

    def abort(self, file: bool = True, folder: bool = False) -> None:
        """What stage() undoes: whatever the rank's steps have made so far."""
        if self.streaming is not None:
            self.streaming.abort()
        if file and self.writer is not None:
            self.writer.abort()
        if folder and self.made_folder and os.path.isdir(self.folder) and not os.listdir(self.folder):
            os.rmdir(self.folder)


def convert_rank(rp: RankPlan, src_root: SourceFiles | str, dst_root: str, fmt: str,
                 publish=None, upload: UploadTo | None = None, config: ReshardConfig = DEFAULT,
                 copies: tuple[RankPlan, ...] = ()):
    """Write one destination file (source files are relative to src_root, or where a
    SourceFiles says: some read in place by ranged GETs). Its commit (fsync, rename, manifest)
    is handed to `publish` (a single-thread executor's submit, whose future is returned) so
    the disk flush overlaps the next rank's reads; without one it is done here. upload: the
    file is also uploaded while it is written (UploadTo), and the commit waits for the
    upload's end. config: the run's ReshardConfig (how sources are read, chunks assembled and
    the file written; config.durable False: no fsync, a copy that only stages the upload,
    CheckpointWriter.commit). copies: ranks with the same bytes (Plan.same_as), made from this
    file once it is committed (make_copies). The commit returns make_copies' list. What a
    failed step leaves is aborted by the rank's _RankOutput."""
    t0 = time.monotonic()
    durable = config.durable
    out = _RankOutput(rp, dst_root)
    try:
        with out.stage(folder=True), contextlib.ExitStack() as opened:
            readers = {f: opened.enter_context(SourceFiles.of(src_root).open(f, config))
                       for f in rp.source_files}
            _write_rank(rp, readers, out, dst_root, fmt, upload, config)
    except FormatError as e:   # a bad source file: the user's one-line error
        raise ReshardError(f"rank {rp.rank}: {e}") from None
    writer, streaming = out.writer, out.streaming

    def commit() -> None:
        with out.stage(file=False):
            writer.commit(durable)
        token = streaming.token if streaming is not None else None
        record = _write_manifest(src_root, dst_root, rp, fmt, writer.checksum[1], fsynced=durable,
                                 token=token)
        log.info("rank %d: wrote %s (%d tensors, %d bytes, sources %s) in %.2fs", rp.rank,
                 out.path, len(rp.tensors), os.path.getsize(out.path), sorted(rp.source_ranks),
                 time.monotonic() - t0)
        if streaming is not None:   # the last parts; the object is complete after this
            try:
                streaming.finish(writer.checksum[0])
                if upload.records and "unverified" not in record:   # else once its sources are checked
                    record_upload(upload, rp, record)
            except (OSError, ValueError) as exc:
                from obs_io.oneline import one_line
                raise ReshardError(f"rank {rp.rank}: uploading {streaming.url}: "
                                   f"{one_line(exc, (OSError, ValueError))}") from None
            log.info("rank %d: uploaded %s while writing it (%.2fs in all)", rp.rank, streaming.url,
                     time.monotonic() - t0)
        return make_copies(rp, copies, src_root, dst_root, fmt, upload, durable,
                           streaming is not None, token)

    if publish is None:
        return commit()
    commit.upload = streaming   # what a stopped worker cancels (_stop)
    with out.stage():   # the previous rank's commit failed: this one is not published
        return publish(commit)


def _write_rank(rp: RankPlan, readers: dict, out: _RankOutput, dst_root: str, fmt: str,
                upload: UploadTo | None, config: ReshardConfig) -> None:
    """The rank's file written under its writer's temporary name (out.writer), uploaded while
    written where `upload` wants it (out.streaming), in chunks and slices as `config` says."""
    metas = []
    for t in rp.tensors:
        if t.carried:
            metas.append(readers[t.pieces[0].src_file].metas[t.name])
        else:
            metas.append(TensorMeta(t.name, t.dtype, t.shape))
    buf = _assembly_buffer(rp.buffer_bytes)
    os.makedirs(out.folder, exist_ok=True)
    if not inside(dst_root, out.folder):   # a link made since run_plan owned the folders
        raise ReshardError(f"rank {rp.rank}: {out.folder} leads out of the output {dst_root} "
                           f"(to {os.path.realpath(out.folder)}): not writing there")
    out.writer = open_writer(out.path, metas, fmt, config=config)
    if upload is not None and upload.wants(rp):
        out.streaming = upload.start(rp, out.writer.temp_path)
    for t, meta in zip(rp.tensors, metas):
        if not meta.sliceable:
            out.writer.write(t.name, readers[t.pieces[0].src_file].read_raw(t.name))
            continue
        assemble_and_write(t, meta, buf, readers, out.writer, config)


# -- many destination ranks -----------------------------------------------------------------

LOG_NAME = "transform_{index}.log"   # MindFormers' transform_checkpoint.sh: log/transform_<i>.log


def _process_log(log_dir: str | None, index: int) -> logging.Handler | None:
    """The log file of converting process `index` (0, 1, ...), where MindFormers' users look
    for it: <log_dir>/transform_<index>.log, this run's lines only (as MindFormers' script
    starts each run's logs afresh)."""
    if not log_dir:
        return None
    os.makedirs(log_dir, exist_ok=True)
    h = logging.FileHandler(os.path.join(log_dir, LOG_NAME.format(index=index)), mode="w",
                            encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    log.addHandler(h)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return h


class _Stopped(SystemExit):
    """A worker's stop request (SIGTERM from its parent on Ctrl-C, or the job's stop): raised in
    the conversion so the writer aborts (no temporary file stays behind); a SystemExit, so a
    worker stopped while idle ends quietly, without a traceback."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _stop(signum: int, frame) -> None:
    """Once: a second SIGTERM (the pool terminates every worker again when it sees one gone)
    must not interrupt the abort of the first. Inside a finalizer (a dropped writer's __del__)
    an exception is printed ("Exception ignored") and lost, so the request is made again a
    moment later, when the finalizer has returned."""
    if _in_finalizer(frame):
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _commit_upload is not None:   # the commit running behind ends soon, not with its upload
        _commit_upload.cancel()
    raise _Stopped()


def _worker_init(log_dir: str | None, counter, committed=None,
                 stop_grace: float = DEFAULT.stop_grace_seconds, parent: int | None = None) -> None:
    """Each worker takes the next log index; SIGINT stays ignored (inherited: see
    _spawning_ignores_sigint), so a Ctrl-C reaches the parent alone, which stops the workers.
    committed: the queue where the worker's commits report their end (_commit_behind);
    stop_grace: ReshardConfig.stop_grace_seconds; parent: the pid of the process that started
    the pool (a worker started just as it was killed must not take init, its new parent, for it)."""
    global _committed, _stop_grace
    parent = os.getppid() if parent is None else parent
    _die_with_parent(parent)
    _stop_grace = stop_grace
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _committed = committed
    redact.protect_logs()   # its log file is uploaded with the job's: scrubbed as the parent's
    _process_log(log_dir, index)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this worker SIGKILL the moment its parent ends (prctl
    PR_SET_PDEATHSIG), so a killed run's workers write nothing more; a parent already gone
    before that was set is seen here. Elsewhere _exit_with_parent's polling alone."""
    kill_with_parent()
    if os.getppid() != parent:
        os._exit(1)


def _exit_with_parent(parent: int) -> None:
    """A pool worker ends when the process that started it is gone (killed with SIGKILL, say):
    else it blocks for ever on the pool's pipe, holding its memory."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


@contextlib.contextmanager
def _spawning_ignores_sigint():
    """Around pool.submit (which starts the workers): SIGINT ignored, a disposition a spawned
    interpreter inherits and keeps, so a Ctrl-C at the terminal (sent to the whole process
    group) never interrupts a worker, not even while it starts. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _stop_workers(pool: ProcessPoolExecutor, stop_grace: float) -> None:
    """Interrupted: each worker aborts its rank (its temporary file removed, nothing under a
    final name) and exits; queued ranks are dropped. A worker still alive stop_grace seconds
    later is killed: one stopped while sending its result back can leave the pool's result
    queue locked, and another then waits on that lock for ever, deaf to a second SIGTERM (the
    pool's own shutdown would wait for it without a bound)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + stop_grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


_committed = None        # a worker's queue to the parent: (rank, copies made, error) per commit
_committer: ThreadPoolExecutor | None = None
_commit_pending = None   # the future of the worker's commit still running, if any
_commit_upload = None    # and the upload it ends (obs_io GrowingUpload), cancelled on a stop


def _worker_convert(rp: RankPlan, src_root: SourceFiles | str, dst_root: str, fmt: str,
                    upload: UploadTo | None = None, config: ReshardConfig = DEFAULT,
                    copies: tuple[RankPlan, ...] = ()) -> None:
    """Convert one rank in a pool worker and return once its bytes are written: its commit (the
    end of its upload, the store's copies of its replicas) goes on behind, on the worker's
    committer thread, while the worker takes its next rank (the node's link stays busy instead
    of waiting for an upload's last parts or a server-side copy); one commit in flight per
    worker. The end of each commit goes to the parent through the `committed` queue
    (_commit_behind). In the pool the scheduler counts a rank's buffer only while it is
    written: free it after."""
    global _buffer, _committer
    try:
        if _committer is None:
            _committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-commit")

        def publish(commit):
            global _commit_pending, _commit_upload
            if _commit_pending is not None:   # bounded: one rank's upload ending, one written
                _commit_pending.result()
            _commit_upload = getattr(commit, "upload", None)
            _commit_pending = _committer.submit(_commit_behind, rp.rank, commit)
            return _commit_pending
        convert_rank(rp, src_root, dst_root, fmt, publish=publish, upload=upload,
                     config=config, copies=copies)
    except _Stopped:
        # the rank was aborted; the commit behind it ends first (its temporary file renamed
        # or removed: os._exit would leave it), its upload cancelled (_stop); then no result
        if _commit_pending is not None:
            wait([_commit_pending], timeout=_stop_grace / 2)
        os._exit(128 + signal.SIGTERM)
    finally:
        _buffer = np.empty(0, np.uint8)


def _commit_behind(rank: int, commit) -> None:
    """Run a rank's commit on the worker's committer; tell the parent how it ended."""
    try:
        made = commit()
    except BaseException as exc:   # any end, a stop too, must reach the parent waiting on the queue
        try:
            pickle.dumps(exc)
        except Exception:   # the parent must get it: as one line
            exc = ReshardError(f"rank {rank}: {exc!r}")
        _committed.put((rank, None, exc))
        raise
    _committed.put((rank, made, None))


def _run_pipelined(todo: list[RankPlan], src_root: SourceFiles | str, dst_root: str, fmt: str,
                   done: Callable[[RankPlan, bool], None], upload: UploadTo | None = None,
                   config: ReshardConfig = DEFAULT,
                   copies: dict[int, tuple[RankPlan, ...]] | None = None) -> list[int]:
    """One rank after another, each rank's commit (its fsync waits for the disk) running while
    the next rank is read and written; at most one commit in flight, so written-but-unflushed
    data stays bounded by one file. done(rp, uploaded): in the committer's order, once the
    rank's file is committed (and its copies, `copies`: first rank -> its replicas, made).
    Returns the ranks written, copies included."""
    written: list[int] = []
    by_rank = {c.rank: c for cs in (copies or {}).values() for c in cs}

    def tell(rp: RankPlan, committed) -> None:   # on the committer, after rp's commit
        made = committed.result()
        done(rp, upload is not None and upload.wants(rp))
        written.append(rp.rank)
        for rank, uploaded in made:
            done(by_rank[rank], uploaded)
            written.append(rank)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-commit") as committer:
        pending = None

        def publish(commit):
            nonlocal pending
            if pending is not None:
                pending.result()
            pending = committer.submit(commit)
            return pending

        for rp in todo:
            committed = convert_rank(rp, src_root, dst_root, fmt, publish, upload, config,
                                     (copies or {}).get(rp.rank, ()))
            committer.submit(tell, rp, committed)
        if pending is not None:
            pending.result()
    return written


def link_file(src: str, dst: str, durable: bool) -> str:
    """`dst` as another name of the file `src` (a hard link: no byte written, no disk taken), or
    a copy where the file system has no hard links; published by rename, so nothing partial is
    ever under `dst`. durable: the copy's bytes and the folder are fsynced. Returns how."""
    with Landing(dst, durable=False) as temp:   # renamed to dst at the end; removed on failure
        try:
            os.link(src, temp)
            how = "linked"
        except OSError:   # EPERM, EXDEV, ENOTSUP, EMLINK: no hard link here
            shutil.copyfile(src, temp)
            if durable:
                with open(temp, "rb") as f:
                    os.fsync(f.fileno())
            how = "copied"
    if durable:
        _fsync_folder(os.path.dirname(os.path.abspath(dst)))
    return how


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:   # a file system that cannot (some FUSE mounts): nothing more to do
        pass
    finally:
        os.close(fd)


def make_copies(first: RankPlan, copies: tuple[RankPlan, ...] | list[RankPlan],
                src_root: SourceFiles | str, dst_root: str, fmt: str, upload: UploadTo | None,
                durable: bool, first_uploaded: bool, first_token: str | None = None
                ) -> list[tuple[int, bool]]:
    """The ranks whose file has the same bytes as `first`'s (Plan.same_as), made from its
    committed file by the process that wrote it: another name of the same file (link_file) with a
    record of its own (the same size and CRC32), and, where `first` was uploaded now, the
    store's own copy of its object (CopyObject, or UploadPartCopy parts for a large one: no
    byte over the node's link; a plain upload of the file where the store refuses). A store's
    copy carries the original's metadata, so its upload token (`first_token`): with upload
    records on, it is recorded like an upload (record_upload). Returns (rank, uploaded) of each."""
    made = []
    if not copies:
        return made
    checksum = rank_checksum(dst_root, first)
    if checksum is None:   # committed with its record just before
        raise ReshardError(f"rank {first.rank}: {first.path} has no checksum record")
    src = os.path.join(dst_root, first.path)
    for rp in copies:
        t0 = time.monotonic()
        dst = os.path.join(dst_root, rp.path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        how = link_file(src, dst, durable)
        uploaded = first_uploaded and upload is not None and upload.wants(rp)
        moved = _copy_object(upload.url(first), upload.url(rp), dst, rp.rank) if uploaded else ""
        token = first_token if moved == COPIED_ON_THE_STORE else None
        record = _write_manifest(src_root, dst_root, rp, fmt, checksum[1], fsynced=durable, token=token)
        if token is not None and upload.records and "unverified" not in record:
            record_upload(upload, rp, record)
        remote = f"; {upload.url(rp)} {moved}" if uploaded else ""
        log.info("rank %d: wrote %s (%s from rank %d's file: the same slices from the same "
                 "source pieces)%s in %.2fs", rp.rank, dst, how, first.rank, remote,
                 time.monotonic() - t0)
        made.append((rp.rank, uploaded))
    return made


COPIED_ON_THE_STORE = "copied on the store"


def _copy_object(src: str, dst: str, local: str, rank: int) -> str:
    """The object at `src` copied to `dst` by the store; if it refuses, `local` uploaded.
    Returns which, for the log."""
    import obs_io
    from obs_io.oneline import one_line
    try:
        obs_io.file.copy(src, dst)
        return COPIED_ON_THE_STORE
    except (OSError, ValueError) as exc:
        log.warning("rank %d: the store did not copy %s to %s (%s): uploading the file instead",
                    rank, src, dst, one_line(exc, (OSError, ValueError)))
    try:
        obs_io.file.copy(local, dst)
    except (OSError, ValueError) as exc:
        raise ReshardError(f"rank {rank}: uploading {dst}: "
                           f"{one_line(exc, (OSError, ValueError))}") from None
    return "uploaded"


@dataclass
class RunResult:
    written: list[int]
    skipped: list[int]


def pending_ranks(plan: Plan, src_root: SourceFiles | str, dst_root: str) -> list[RankPlan]:
    """The ranks of a full plan that are not already done (is_done), in plan order."""
    return [rp for rp in plan.ranks if not is_done(src_root, dst_root, rp, plan.fmt)]


def run_plan(fp: "FinishedPlan", files: SourceFiles, subscriber: "Subscriber", feed=None) -> RunResult:
    """Convert every rank of a finished plan (reshard.finish) not already done, reading the
    source files where `files` says; at most config.process_num at once and never more than
    fp.budget_bytes of rank costs in flight. A rank with the same bytes as an earlier one
    (plan.same_as) is not converted: the process that writes that rank makes it from its file
    (make_copies). subscriber.on_rank_done(rp, uploaded): called in this process, one call at
    a time, as soon as a rank's file is complete under its final name (converted, copied, or
    found complete and kept); uploaded: it is under fp.upload.url(rp) already (each rank
    written is uploaded while written where fp.upload says; the call follows its upload).
    feed: the downloads under way (finish.DownloadingRun): feed.horizon(rp) orders the ranks
    (the one whose bytes are all here soonest first), feed.check() raises the download's
    failure (asked every config.poll_seconds while ranks run). Ranks kept on the upload's
    store (fp.stored) are kept there, as uploaded; a replica whose first rank is one of them is
    made from another (same_as)."""
    plan, dst_root, config = fp.plan, fp.dst_root, fp.config
    folders = sorted({os.path.dirname(os.path.join(dst_root, rp.path)) for rp in plan.ranks}
                     | {os.path.join(dst_root, MANIFEST_DIR)})
    own_folders(dst_root, folders)
    for folder in folders:
        sweep(folder)   # what a killed run of this plan left half-written
    done = subscriber.on_rank_done
    todo, copies, skipped, made = _keep_done(fp, files, done)
    if feed is not None:
        todo.sort(key=feed.horizon)   # stable: plan order among equals
    if config.process_num <= 1 or len(todo) <= 1:   # this process converts: its log is transform_0
        handler = _process_log(config.log_dir, 0) if todo else None
        try:
            written = _run_pipelined(todo, files, dst_root, plan.fmt, done, fp.upload, config, copies)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
    else:
        written = _Pool(fp, files, todo, done, feed, copies, folders).run()
    return RunResult(sorted(written + made), sorted(skipped))


def _keep_done(fp: "FinishedPlan", files: SourceFiles, done: Callable[[RankPlan, bool], None]):
    """The ranks already complete, on the store (fp.stored) or here (is_done), told to done()
    and kept, with the replicas made from a kept one; returns (the ranks to convert, first
    rank -> its replicas still to make, the ranks kept, the replicas made)."""
    plan, dst_root, upload = fp.plan, fp.dst_root, fp.upload
    stored = set(fp.stored)
    for rp in plan.ranks:
        if rp.rank in stored:
            log.info("rank %d: %s already uploaded and verified, kept", rp.rank, upload.url(rp))
            done(rp, True)
    kept = [rp for rp in plan.ranks if rp.rank not in stored and is_done(files, dst_root, rp, plan.fmt)]
    skipped = {rp.rank for rp in kept} | stored
    by_rank = {rp.rank: rp for rp in plan.ranks}
    copies: dict[int, tuple[RankPlan, ...]] = {}   # first rank -> its replicas still to make
    for rank, first in sorted(same_as(plan, stored).items()):
        if rank not in skipped:
            copies[first] = copies.get(first, ()) + (by_rank[rank],)
    copied = {c.rank for cs in copies.values() for c in cs}
    todo = [rp for rp in plan.ranks if rp.rank not in skipped and rp.rank not in copied]
    made = []
    for rp in kept:
        log.info("rank %d: %s already written by this same conversion (size and time as recorded), "
                 "skipped", rp.rank, rp.path)
        done(rp, False)
        for rank, uploaded in make_copies(rp, copies.pop(rp.rank, ()), files, dst_root, plan.fmt,
                                          upload, fp.config.durable, False):
            done(by_rank[rank], uploaded)
            made.append(rank)
    return todo, copies, skipped, made


class _Pool:
    """run_plan's ranks in worker processes; run() returns the ranks written, copies included.
    A rank's cost counts while it is written; its commit goes on in its worker behind the next
    rank (_worker_convert) and ends with a message on the `committed` queue, after which
    done() hears of it and its copies. A worker killed (the OOM killer), even one with only a
    commit of ours pending (found by polling), stops the others: what they left in `folders`
    is swept and one line names it (_killed_worker), not a wait without end."""

    def __init__(self, fp: "FinishedPlan", files: SourceFiles, todo: list[RankPlan],
                 done: Callable[[RankPlan, bool], None], feed, copies: dict[int, tuple[RankPlan, ...]],
                 folders: list[str]):
        self.fp, self.files, self.done, self.feed = fp, files, done, feed
        self.copies, self.folders = copies, folders
        self.config = fp.config
        self.remote = files.remote
        self.part = files.s3.read_part_bytes if files.s3 is not None else 0
        self.pending = list(todo) if feed is not None else \
            sorted(todo, key=self.cost, reverse=True)
        self.by_rank = {rp.rank: rp for rp in todo} | {c.rank: c for cs in copies.values() for c in cs}
        self.todo_count = len(todo)
        self.running: dict = {}          # future -> (rank plan, cost)
        self.committing: set[int] = set()
        self.in_flight = 0
        self.written: list[int] = []
        self.workers: dict = {}          # pid -> process, every worker the pool started

    def cost(self, rp: RankPlan) -> int:
        return rank_cost(rp, self.remote, self.part, self.config)

    def run(self) -> list[int]:
        ctx = multiprocessing.get_context("spawn")
        self.committed = ctx.Queue()
        killed: list[int] | None = None
        # Whatever ends the run but success, the pool is down first (every worker reaped) and
        # then what the workers left half-written goes: a worker killed (OOM), or one that had
        # to exit while its commit was still flushing a file (_worker_convert's bounded wait).
        with on_failure(self._sweep):
            with ProcessPoolExecutor(max_workers=min(self.config.process_num, self.todo_count),
                                     mp_context=ctx, initializer=_worker_init,
                                     initargs=(self.config.log_dir, ctx.Value("i", 0), self.committed,
                                               self.config.stop_grace_seconds, os.getpid())) as pool:
                try:
                    while self.pending or self.running or self.committing:
                        self._start(pool)
                        self._step(pool)
                except BrokenProcessPool:   # a worker killed (SIGKILL: the OOM killer): the others are stopped
                    killed = sorted([rp.rank for rp, _ in self.running.values()] + list(self.committing))
                except BaseException as exc:   # which exception it is decides whether the workers are stopped
                    if isinstance(exc, KeyboardInterrupt) or (self.feed is not None and _raises(self.feed.check)):
                        _stop_workers(pool, self.config.stop_grace_seconds)   # a download that failed: the ranks reading it cannot end
                    raise
            if killed is not None:
                raise ReshardError(_killed_worker(self.workers, killed))
        return self.written

    def _sweep(self) -> None:
        """The temporary files of workers that are gone (obs_io.atomic.sweep: only abandoned ones)."""
        for folder in self.folders:
            sweep(folder)

    def _start(self, pool: ProcessPoolExecutor) -> None:
        """Start ranks while processes are free and their costs fit the budget (one at least)."""
        started = True
        while self.pending and len(self.running) < self.config.process_num and started:
            started = False
            for i, rp in enumerate(self.pending):
                cost = self.cost(rp)
                if self.in_flight + cost <= self.fp.budget_bytes or not self.running:
                    with _spawning_ignores_sigint():
                        fut = pool.submit(_worker_convert, rp, self.files.for_rank(rp), self.fp.dst_root,
                                          self.fp.plan.fmt, self.fp.upload, self.config,
                                          self.copies.get(rp.rank, ()))
                    self.running[fut] = (rp, cost)
                    self.workers.update(getattr(pool, "_processes", None) or {})
                    self.in_flight += cost
                    self.pending.pop(i)
                    started = True
                    break

    def _step(self, pool: ProcessPoolExecutor) -> None:
        """Wait for a rank's bytes (or poll), then take the commits that ended."""
        finished = ()
        if self.running:
            polling = self.feed is not None or self.committing
            finished, _ = wait(list(self.running), timeout=self.config.poll_seconds if polling else None,
                               return_when=FIRST_COMPLETED)
        if self.feed is not None:
            self.feed.check()
        for fut in finished:
            rp, cost = self.running.pop(fut)
            self.in_flight -= cost
            fut.result()
            self.committing.add(rp.rank)
        if not finished:
            _check_workers_alive(pool, self.committing)
        self._take_commits()

    def _take_commits(self) -> None:
        upload = self.fp.upload
        while self.committing:
            try:
                rank, made, error = self.committed.get(timeout=0 if self.running else self.config.poll_seconds)
            except queue.Empty:
                break
            self.committing.discard(rank)
            if error is not None:
                raise error
            rp = self.by_rank[rank]
            self.written.append(rank)
            self.done(rp, upload is not None and upload.wants(rp))
            for copy, uploaded in made:
                self.written.append(copy)
                self.done(self.by_rank[copy], uploaded)


def _check_workers_alive(pool: ProcessPoolExecutor, committing: set[int]) -> None:
    """A commit can only end in its worker: one that is gone (killed) never reports, and with
    no rank of ours running the pool's own breakage reaches no future of ours."""
    procs = (getattr(pool, "_processes", None) or {}).values()
    if committing and any(not p.is_alive() for p in procs):
        raise BrokenProcessPool("a conversion worker ended with commits pending")


def _killed_worker(workers: dict, ranks: list[int]) -> str:
    """The one line for a pool that broke: which worker died of which signal, and the ranks
    that were converting."""
    ended = [(pid, p.exitcode) for pid, p in workers.items() if p.exitcode is not None]
    by_signal = [(pid, -code) for pid, code in ended if code < 0 and -code != signal.SIGTERM]
    if by_signal:
        pid, sig = sorted(by_signal, key=lambda e: e[1] != signal.SIGKILL)[0]
        how = f"was killed by {signal.Signals(sig).name}"
    else:
        pid, how = (ended[0][0], f"ended with exit code {ended[0][1]}") if ended else ("?", "ended")
    hint = (" (the kernel's out-of-memory killer does that when the host runs short of memory: convert "
            "with fewer processes or a lower memory budget)" if "SIGKILL" in how else "")
    return (f"a conversion worker (pid {pid}) {how} while converting rank(s) "
            f"{', '.join(map(str, ranks)) or 'none'}{hint}; the ranks written before are kept: "
            "run the same command again to convert the rest")


def _raises(check: Callable[[], None]) -> bool:
    try:
        check()
    except Exception:
        return True
    return False
