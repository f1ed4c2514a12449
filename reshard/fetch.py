"""Downloading a plan's fetched source files while the conversion already reads them.

A remote source file the plan fetches ('fetch' in plan.source_use: its ranks would read more
bytes of it in place than it has) is downloaded into the local root in file order (obs_io's
download_in_order: ranged GETs of obs_io's read_part_bytes, ReshardConfig.fetch_threads in
flight, written in order: the file grows a part at a time), one file after the
other in the order the ranks need them, under a temporary name beside its final one. Workers
open the growing file (formats.growing) and each read waits for its bytes, so a destination
rank starts converting as soon as the bytes it reads first are local, not after the whole
download; execute starts the ranks in the order their bytes arrive (horizon()).

A file is published under its final name once all its bytes are there and, for a file that
carries its own checksum (its format's embedded_crc: a .ckpt saved with MindSpore's CRC
trailer), once the CRC32 computed while writing matches it: no second read. Ranks converted
from a file before that are recorded as unverified (execute) until every file they read is
published; a corrupt source fails the conversion, naming the user's URL, and the ranks made
from it are removed.

Values every rank carries as they are (global_step, learning_rate, ... : no layout) sit at the
end of a MindSpore checkpoint; read in file order they would hold every rank until the last
byte. Those that are small (ReshardConfig.preload_value_bytes each, preload_file_bytes in all)
are read first by ranged GETs and
go to the workers with the plan (preload), so a rank waits only for the bytes of its slices.

Memory: the parts in flight and queued for in-order writing (fetch_bytes), in the parent.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from obs_io.atomic import Landing
from obs_io.crc import crc32

from .config import DEFAULT, ReshardConfig
from .errors import ReshardError
from .formats import registry
from .formats.base import FileIndex
from .formats.meta import FormatError
from .plan import Plan, RankPlan

log = logging.getLogger("reshard")


def fetch_bytes(config: ReshardConfig = DEFAULT, s3_config=None) -> int:
    """Memory of a download while converting: config.fetch_chunks parts of read_part_bytes
    (s3_config: obs_io's configuration, default the current one)."""
    if s3_config is None:
        import obs_io
        s3_config = obs_io.current_config()
    return config.fetch_chunks * s3_config.read_part_bytes


class _Cancelled(Exception):
    """Raised inside the download's write when the conversion no longer needs the file."""


def fetch_order(plan: Plan, names: list[str]) -> list[str]:
    """`names` in the order the plan's ranks (in plan order) first read them."""
    first: dict[str, int] = {}
    for i, rp in enumerate(plan.ranks):
        for f in rp.source_files:
            first.setdefault(f, i)
    return sorted(names, key=lambda n: (first.get(n, len(plan.ranks)), n))


def preload_runs(plan: Plan, name: str, index: FileIndex,
                 config: ReshardConfig = DEFAULT) -> list[tuple[int, int]]:
    """(offset, length) byte runs of file `name` to read before its download: the values of
    up to config.preload_value_bytes the plan's ranks carry as they are, merged across gaps up
    to config.preload_gap_bytes; none beyond config.preload_file_bytes."""
    pieces = sorted({piece for rp in plan.ranks for t in rp.tensors if t.carried
                     and t.pieces[0].src_file == name and t.name in index.extents
                     and index.extents[t.name].nbytes <= config.preload_value_bytes
                     for piece in index.extents[t.name].pieces})
    runs: list[list[int]] = []
    for offset, length in pieces:
        if runs and offset - runs[-1][1] <= config.preload_gap_bytes:
            runs[-1][1] = max(runs[-1][1], offset + length)
        else:
            runs.append([offset, offset + length])
    out, total = [], 0
    for a, b in runs:
        if total + b - a > config.preload_file_bytes:
            break
        out.append((a, b - a))
        total += b - a
    return out


def _within(runs, offset: int, end: int) -> bool:
    return any(a <= offset and end <= a + n for a, n, *_ in runs)


def horizon(rp: RankPlan, order: list[str], indexes: dict[str, FileIndex],
            preload: dict[str, list] | None = None) -> int:
    """How far into the download stream (the files of `order` back to back) the last byte
    this rank reads lies, preloaded runs aside: 0 for a rank that reads no downloading file.
    Ranks started in this order wait least."""
    starts, at = {}, 0
    for name in order:
        starts[name] = at
        at += indexes[name].size
    end = 0
    for t in rp.tensors:
        for p in t.pieces:
            if p.src_file in starts:
                extent = indexes[p.src_file].extents.get(t.name)
                pieces = extent.pieces if extent else ((0, indexes[p.src_file].size),)
                for o, n in pieces:
                    if not _within((preload or {}).get(p.src_file, ()), o, o + n):
                        end = max(end, starts[p.src_file] + o + n)
    return end


class SourceFetcher:
    """Downloads `names` (relative to plan.source.base) to local_root/<name> in fetch_order,
    on one background thread, from the object versions the plan's headers describe (indexes,
    ETag-pinned). start() returns name -> temporary path (what workers open while it grows);
    error() the first failure (a ReshardError naming the URL); finish() waits for the end;
    cancel() stops and removes what is not published. obs_io's configuration is this
    process's (current at start()); config: its fetch_* and preload_* fields."""

    def __init__(self, plan: Plan, local_root: str, names: list[str], indexes: dict[str, FileIndex],
                 location: Callable[[str], str], s3_config=None, config: ReshardConfig = DEFAULT):
        assert plan.source is not None
        self.config = config
        if s3_config is None:
            import obs_io
            s3_config = obs_io.current_config()
        self.part = s3_config.read_part_bytes
        self.order = fetch_order(plan, names)
        self.indexes = indexes
        self._url = plan.source.path_of
        self._landings = {n: Landing(location(n), durable=False) for n in self.order}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reshard-fetch", daemon=True)
        self.published: list[str] = []
        self._lock = threading.Lock()
        self._release: set[str] = set()

    @property
    def temps(self) -> dict[str, str]:
        return {n: landing.temp for n, landing in self._landings.items()}

    def preload(self, plan: Plan, s3_config=None) -> dict[str, list[tuple[int, int, bytes]]]:
        """name -> (offset, length, bytes) of its preload_runs, read now by ranged GETs pinned to
        the version the plan's headers describe (ReshardError naming the URL)."""
        from .formats.remote import ObjectBytes
        out: dict[str, list[tuple[int, int, bytes]]] = {}
        for name in self.order:
            index = self.indexes[name]
            runs = preload_runs(plan, name, index, self.config)
            if not runs:
                continue
            src = ObjectBytes(self._url(name), s3_config, known=(index.size, index.version),
                               config=self.config)
            try:
                out[name] = [(a, n, src.read_at(a, n)) for a, n in runs]
            except FormatError as exc:
                raise ReshardError(str(exc)) from None
            finally:
                src.close()
        return out

    def start(self) -> dict[str, str]:
        """Every temporary file is created (empty) now, before any worker opens one."""
        for landing in self._landings.values():
            with open(landing.temp, "wb"):
                pass
        total = sum(self.indexes[n].size for n in self.order)
        log.info("downloading %d source file(s), %.1f MiB, while converting: %s", len(self.order),
                 total / 2**20, ", ".join(self.order))
        self._thread.start()
        return self.temps

    def _run(self) -> None:
        from obs_io.progress import Progress
        progress = Progress(f"downloading {len(self.order)} source file(s)",
                            sum(self.indexes[n].size for n in self.order), len(self.order))
        try:
            with progress:   # "done" on success only
                for name in self.order:
                    if self._stop.is_set():
                        raise _Cancelled()
                    self._fetch(name, progress)
                    progress.file_done()
        except BaseException as exc:   # a thread: any death is kept for the converting side (error())
            self._error = exc   # before the files go: a worker that sees one gone asks error()
            self._discard()

    def _fetch(self, name: str, progress) -> None:
        from obs_io.oneline import one_line
        from obs_io.streams import download_in_order
        index, landing, url = self.indexes[name], self._landings[name], self._url(name)
        fmt = registry.by_file(name)
        embedded = fmt.embedded_crc(index) if fmt is not None else None
        checked = embedded is not None
        covered, expected = embedded if checked else (0, 0)
        state = {"written": 0, "crc": 0}
        with open(landing.temp, "r+b") as f:
            def write(data: bytes) -> None:
                if self._stop.is_set():
                    raise _Cancelled()
                f.write(data)
                f.flush()   # visible to the workers now: the size they wait on
                at = state["written"]
                if checked and at < covered:
                    state["crc"] = crc32(memoryview(data)[:covered - at], state["crc"])
                state["written"] = at + len(data)
                progress.add_bytes(len(data))
            try:
                download_in_order(url, write, index.size, index.version, part=self.part,
                                  threads=self.config.fetch_threads, chunks=self.config.fetch_chunks)
            except _Cancelled:
                raise
            except (OSError, ValueError) as exc:
                raise ReshardError(f"{url}: download failed: {one_line(exc, (OSError, ValueError))}") \
                    from None
        if state["written"] != index.size:
            raise ReshardError(f"{url}: downloaded {state['written']} bytes, not the {index.size} "
                               "its headers were read from")
        if checked and state["crc"] != expected:
            raise ReshardError(fmt.crc_mismatch(url, expected, state["crc"]))
        with self._lock:
            landing.commit()
            self.published.append(name)
            log.info("downloaded %s", url)
            if name in self._release:
                self._remove(name)

    def release(self, name: str) -> None:
        """No rank reads `name` any more: its local copy is removed (now, or once published):
        the disk holds the output and the source files still being read, not the whole
        source."""
        with self._lock:
            if name in self.published:
                self._remove(name)
            else:
                self._release.add(name)

    def _remove(self, name: str) -> None:
        path = self._landings[name].path
        try:
            os.remove(path)
            log.info("removed the local copy of %s: every rank reading it is written", path)
        except FileNotFoundError:
            pass

    def error(self) -> BaseException | None:
        """The failure that stopped the download (None while it runs or after success)."""
        return self._error if not isinstance(self._error, _Cancelled) else None

    def finish(self) -> None:
        """Wait for the last file (each request is bounded by obs_io's timeouts and attempts);
        raise the download's failure."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop (the transfer in flight is cancelled at its next write) and remove what is not
        published; files already published stay (a rerun reuses them)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._discard()

    def _discard(self) -> None:
        """The temporary files of the downloads not published removed."""
        for landing in self._landings.values():
            landing.discard()
