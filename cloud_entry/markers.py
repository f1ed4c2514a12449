"""Block success/failure markers on the shared store (object storage or a shared disk).

A marker is `transform_succeed_rank_<leader>.txt` or `transform_failed_rank_<leader>.txt`
(MindFormers' names) beside the rank_<r> folders. Its first line is `run_id <id>`: markers
left by an earlier run carry another id, so they are ignored by waiters and removed by the
block's own leader before it converts. The failure marker's remaining text is the error.

A set assembled after every block (a Checkpoint 2.0's metadata.json, written once by node 0)
has a marker of its own, `transform_succeed_set.txt` / `transform_failed_set.txt`: a Marker
whose rank is SET.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Iterable

import obs_io

from cloud_entry.paths import join
from cloud_entry.errors import BlockFailed, EntryError, WaitTimeout
from cloud_entry.waits import Backoff, poll

log = logging.getLogger(__name__)

SUCCEED, FAILED = "succeed", "failed"
SET = -1   # Marker.rank of the set's marker: no block's leader
# Seconds a failure marker written before this entry started may still be this attempt's (the
# nodes' clocks and the store's differ by less than that on a synchronised cloud).
CLOCK_SLACK = 15.0
_NAME = re.compile(r"^transform_(succeed|failed)_(?:rank_(\d+)|set)\.txt$")


@dataclass(frozen=True)
class Marker:
    state: str        # SUCCEED or FAILED
    rank: int         # block leader (SET: the set's marker)
    run_id: str
    message: str = ""
    written: float = 0.0   # when the store says it was written, seconds since the epoch


def marker_name(state: str, rank: int) -> str:
    return f"transform_{state}_set.txt" if rank == SET else f"transform_{state}_rank_{rank}.txt"


def _whose(rank: int) -> str:
    return "the set assembled after every block" if rank == SET else f"block led by rank {rank}"


def _leaders_text(leaders: Iterable[int]) -> str:
    return ", ".join("set" if r == SET else str(r) for r in leaders)


def write_atomic(url: str, text: str) -> None:
    """obs_io's write is atomic on both sides: one PUT, or a temp name renamed on a clean close."""
    obs_io.file.write(url, text)


def publish(store: str, marker: Marker) -> None:
    text = f"run_id {marker.run_id}\n{marker.message}"
    write_atomic(join(store, marker_name(marker.state, marker.rank)), text)
    log.info("published %s", marker_name(marker.state, marker.rank))


def publish_failure(store: str, marker: Marker) -> None:
    """Publish a failure marker on a best-effort basis: the store may be what failed (a full
    shared disk, object storage that stopped answering). The error being reported is the
    user's line; not being able to tell the other nodes is a warning (they stop at their bound)."""
    try:
        publish(store, marker)
    except OSError as exc:
        log.warning("could not publish %s (the other nodes stop when their wait runs out): %s",
                    marker_name(marker.state, marker.rank), exc)


def parse(name: str, text: str, written: float = 0.0) -> Marker | None:
    m = _NAME.match(name)
    if not m:
        return None
    first, _, rest = text.partition("\n")
    run_id = first[len("run_id "):].strip() if first.startswith("run_id ") else ""
    message = rest.strip() if run_id else text.strip()
    return Marker(m.group(1), SET if m.group(2) is None else int(m.group(2)), run_id, message, written)


def scan(store: str) -> list[Marker]:
    """Every marker in the store folder (any run), with the time the store gives it."""
    try:
        entries = obs_io.file.list_entries(store)
    except FileNotFoundError:
        return []
    found = []
    for e in entries:
        if _NAME.match(e.name):
            try:
                text = obs_io.file.read(join(store, e.name))
            except FileNotFoundError:   # removed between list and read
                continue
            marker = parse(e.name, text, e.mtime_nsec / 1e9)
            if marker:
                found.append(marker)
    return found


def clear_own(store: str, leaders: Iterable[int]) -> list[str]:
    """Before converting, a leader removes its own blocks' markers, whatever run wrote them: it
    is their only writer in this run. Other blocks' markers are never touched (their leaders
    may already have published for this run); waiters ignore those of other runs anyway."""
    mine = set(leaders)
    removed = []
    for marker in scan(store):
        if marker.rank in mine:
            name = marker_name(marker.state, marker.rank)
            try:
                obs_io.file.remove(join(store, name))
            except FileNotFoundError:
                pass
            removed.append(name)
            log.info("removed stale marker %s (run %s)", name, marker.run_id or "?")
    return removed


def pending_blocks(found: Iterable[Marker], leaders: Iterable[int], run_id: str,
                   not_before: float = 0.0) -> list[int]:
    """Leaders without a success marker of this run among `found` (a scan); BlockFailed as soon
    as one has failed. A failure marker written before `not_before` is an earlier attempt's
    (a job restarted after a stop has the same run id): its leader replaces it when it runs
    again, so it is waited out, not believed. A success marker of the same run id states a
    result of these very inputs, whenever it was written."""
    current = {(m.rank, m.state): m for m in found if m.run_id == run_id}
    leaders = sorted(set(leaders))
    for rank in leaders:
        failed = current.get((rank, FAILED))
        if failed and failed.written >= not_before:
            raise BlockFailed(f"{_whose(rank)} failed: {failed.message or 'no message'}")
    return [r for r in leaders if (r, SUCCEED) not in current]


def wait_for_blocks(store: str, leaders: Iterable[int], run_id: str, timeout: float,
                    backoff: Backoff = Backoff(), not_before: float = 0.0, **poll_kw) -> list[Marker]:
    """Bounded wait for every block's success marker; the first failure marker ends it. While it
    waits it reports which blocks are still missing and any marker it found of another run (a
    node that computed another run id would otherwise wait in silence). Returns the blocks'
    success markers (their messages hold the files each block wrote: block_files)."""
    leaders = sorted(set(leaders))
    last: list[int] = leaders
    others: list[str] = []

    def check() -> list[Marker] | None:
        nonlocal last, others
        found = scan(store)
        last = pending_blocks(found, leaders, run_id, not_before)
        others = sorted({f"{marker_name(m.state, m.rank)} (run {m.run_id or '?'}"
                         f"{', an earlier attempt' if m.run_id == run_id else ''})"
                         for m in found if m.rank in last and (m.run_id != run_id or m.state == FAILED)})
        if last:
            return None
        return [m for m in found if m.run_id == run_id and m.state == SUCCEED and m.rank in leaders]

    def status() -> str:
        return (f"blocks led by rank(s) {_leaders_text(last)} in {store}"
                + (f"; markers of another run there: {', '.join(others)}" if others else ""))

    try:
        return poll(check, timeout, "block markers", backoff, status=status, **poll_kw)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}: no marker from the block leader rank(s) "
                          f"{_leaders_text(last)} in {store}") from None


def succeed_message(files: dict[str, tuple[int, str]]) -> str:
    """A success marker's message: the block's files with their size and CRC32 as written, from
    which every node composes the set's integrity manifest and checks what it downloads."""
    return json.dumps({"files": {n: list(v) for n, v in sorted(files.items())}}, sort_keys=True)


def block_files(marker: Marker, store: str) -> dict[str, tuple[int, str]]:
    """The files a success marker announces; EntryError for a marker without them (written by
    an older cloud-entry for the same inputs: its files cannot be checked)."""
    try:
        files = json.loads(marker.message)["files"]
        return {n: (int(v[0]), str(v[1])) for n, v in files.items()}
    except (ValueError, KeyError, TypeError, IndexError):
        raise EntryError(f"{join(store, marker_name(SUCCEED, marker.rank))} lists no file checksums "
                         "(an older cloud-entry wrote it): remove it and run the job again") from None
