"""One run per output: a claim on an output location, held while a run writes there.

Two runs writing into one output (two transform-checkpoint commands into one folder, two jobs
sharing a remote_save_url) would each end "done" while the output holds one result, or a mix.
So a run claims its output before its first write there and checks the claim again before it
publishes (a manifest, markers): a run of other inputs that finds a live claim is refused at
once, in one line naming the other run. The processes of one run share it (the nodes and
cards of a job, MindFormers' parallel --rank_id processes, a rerun after a kill): a run is
known by its id, a digest of what defines its result.

The records are small files under `<output>/.claims/` (a local folder, or objects under an
obs:// / s3:// prefix), named by a digest of the run id:

    <run>.claim             written when the run claims the output: run id, tool, host, pid
    <run>.<owner>.alive     rewritten every claim_heartbeat_seconds (ReshardConfig) by each
                            process of the run

A run is live while one of its processes is: one of this machine that still runs (its pid with
the same start time; killed, reaped or not, it is dead at once), or another machine's whose
record was rewritten within claim_stale_seconds, by the store's own clock. A dead run's records are
removed by the next run that claims the output: a killed run never blocks its output for long.

Who holds the output: on a local disk a lock of the claims folder (flock) makes reading the
claims and writing one a single step, so the second of two runs always finds the first. Object
storage has no lock: a run writes its claim, waits claim_settle_seconds and lists the claims again;
of the live runs, the one whose claim the store stamped first (then the smaller run id) holds
the output, and every contender computes the same answer from the same listing. The check
before publishing catches what the settle cannot (a claim that took longer than it to appear).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from obs_io.atomic import owner_alive, owner_tag, write_atomic
from obs_io.cleanup import on_failure

from .config import DEFAULT, ReshardConfig
from .errors import ReshardError
from .sources import _join, is_url

log = logging.getLogger("reshard")

CLAIMS = ".claims"


@dataclass
class _Run:
    """What the claims folder says of one run: its claim (store time in ns, the record), and
    each of its processes' last heartbeat (owner tag -> store time in ns)."""
    key: str
    claimed_ns: int | None = None
    alive: dict[str, int] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


class OutputClaim:
    """The claim of run `run_id` on `root` (a local folder or an obs:// / s3:// prefix); `shown`:
    how the user named the output, for messages (`--dst_checkpoint out`); `tool`: who claims
    (`transform-checkpoint`, `cloud-entry node 1`); `config`: its claim_* timings. acquire()
    before the first write there, check() before publishing, release() at the end (also as a
    context manager)."""

    def __init__(self, root: str, run_id: str, tool: str, shown: str,
                 config: ReshardConfig = DEFAULT):
        self.root, self.run_id, self.tool, self.shown = root.rstrip("/") or root, run_id, tool, shown
        self.config = config
        self.folder = _join(self.root, CLAIMS)
        self.key = hashlib.sha256(run_id.encode()).hexdigest()[:16]
        self.owner = owner_tag()
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self._held = False
        self._since: datetime.datetime | None = None   # when this process began to claim

    # -- the three steps ----------------------------------------------------------------------
    def acquire(self) -> "OutputClaim":
        """Claim the output, or join this run's live claim; ReshardError (one line naming the
        other run) when a live run of other inputs holds it."""
        self._since = datetime.datetime.now(datetime.timezone.utc)
        self._beat()   # first: from now on this process counts as live
        wrote = False
        with on_failure(lambda: self._give_up_quietly(wrote)):
            with self._lock() as locked:
                runs = self._scan()
                holder = self._holder(runs, exclude_self=True)
                if holder is not None and holder.key != self.key:
                    raise self._refused(holder, "in use by another run")
                for run in runs.values():   # a killed run's leftovers: taken over
                    if run.key != self.key and not self._live(run, runs):
                        self._remove_run(run)
                    elif run.key == self.key:   # this run's killed processes (a rerun)
                        for owner in [o for o in run.alive if o != self.owner and owner_alive(o) is False]:
                            _remove(_join(self.folder, f"{run.key}.{owner}.alive"))
                mine = runs.get(self.key)
                if mine is None or mine.claimed_ns is None or not self._live(mine, runs, exclude_self=True):
                    self._write_claim()
                    wrote = True
            if wrote and not locked:   # no lock here: the store's order decides, once settled
                time.sleep(self.config.claim_settle_seconds)
                runs = self._scan()
                holder = self._holder(runs)
                if holder is not None and holder.key != self.key:
                    raise self._refused(holder, "in use by another run")
        self._held = True
        self._beating = threading.Thread(target=self._heartbeat, name="output-claim", daemon=True)
        self._beating.start()
        return self

    def check(self) -> None:
        """Before publishing: this run still holds the output (ReshardError naming the run that
        took it, e.g. after this one looked dead through a long stall of the store)."""
        runs = self._scan()
        holder = self._holder(runs)
        if holder is not None and holder.key != self.key:
            raise self._refused(holder, "taken over by another run meanwhile; not publishing")
        if self.key not in runs or runs[self.key].claimed_ns is None:
            self._write_claim()   # swept as stale by nobody who then claimed it: ours again

    def release(self) -> None:
        """The end of this process's part: its heartbeat stops and goes; the claim goes with the
        run's last live process. Best effort: a record left behind is a dead run's, removed by
        the next run."""
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._beating is not None:
            self._beating.join(timeout=self.config.claim_heartbeat_seconds)
        try:
            self._give_up(wrote=True)
        except (OSError, ValueError) as exc:
            log.warning("%s: could not remove this run's claim (%s); the next run takes it over",
                        self.shown, exc)

    def _give_up_quietly(self, wrote: bool) -> None:
        """A failed acquire's undo: the error being raised is the user's, not the store's."""
        with contextlib.suppress(OSError, ValueError):
            self._give_up(wrote)

    def __enter__(self) -> "OutputClaim":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- records ------------------------------------------------------------------------------
    def _alive_name(self) -> str:
        return f"{self.key}.{self.owner}.alive"

    def _beat(self) -> None:
        _write(_join(self.folder, self._alive_name()), self.owner)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.config.claim_heartbeat_seconds):
            try:
                self._beat()
            except (OSError, ValueError) as exc:   # the store's trouble is the run's to meet
                log.debug("claim heartbeat of %s failed: %s", self.shown, exc)

    def _write_claim(self) -> None:
        record = {"run": self.run_id, "tool": self.tool, "host": socket.gethostname(),
                  "pid": os.getpid(), "owner": self.owner, "started": time.time()}
        _write(_join(self.folder, f"{self.key}.claim"), json.dumps(record))

    def _scan(self) -> dict[str, _Run]:
        try:
            entries = _list(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        runs: dict[str, _Run] = {}
        self._now_ns = max((mtime_ns for _, mtime_ns in entries), default=0)
        for name, mtime_ns in entries:
            parts = name.split(".")
            if len(parts) == 2 and parts[1] == "claim":
                runs.setdefault(parts[0], _Run(parts[0])).claimed_ns = mtime_ns
            elif len(parts) == 3 and parts[2] == "alive":
                runs.setdefault(parts[0], _Run(parts[0])).alive[parts[1]] = mtime_ns
        return runs

    def _live(self, run: _Run, runs: dict[str, _Run], exclude_self: bool = False) -> bool:
        """One of the run's processes still runs (see the module's docstring)."""
        for owner, stamp in run.alive.items():
            if exclude_self and run.key == self.key and owner == self.owner:
                continue
            alive = owner_alive(owner)
            if alive or (alive is None and self._now_ns - stamp < self.config.claim_stale_seconds * 1e9):
                return True
        return False

    def _holder(self, runs: dict[str, _Run], exclude_self: bool = False) -> _Run | None:
        """Of the live runs with a claim, the one the store stamped first (then the smaller key)."""
        live = [r for r in runs.values() if r.claimed_ns is not None and self._live(r, runs, exclude_self)]
        return min(live, key=lambda r: (r.claimed_ns, r.key), default=None)

    def _refused(self, holder: _Run, why: str) -> ReshardError:
        import obs_io
        try:
            record = json.loads(obs_io.file.read(_join(self.folder, f"{holder.key}.claim")))
        except (OSError, ValueError):
            record = {}
        age = max(0.0, (self._now_ns - (holder.claimed_ns or 0)) / 1e9)
        who = (f"run {record.get('run', holder.key)}, {record.get('tool', 'another tool')} on host "
               f"{record.get('host', '?')} pid {record.get('pid', '?')}, claimed {age:.0f}s ago")
        return ReshardError(f"{self.shown}: {why} ({who}): one output takes one run at a time; wait "
                            "for it to end, or choose another output")

    def _remove_run(self, run: _Run) -> None:
        names = [f"{run.key}.{o}.alive" for o in run.alive]
        if run.claimed_ns is not None:
            names.append(f"{run.key}.claim")
            log.info("%s: taking over from a run that ended without releasing it (%s)", self.shown, run.key)
        for name in names:
            _remove(_join(self.folder, name))

    def _give_up(self, wrote: bool) -> None:
        """This process's heartbeat goes; the run's claim too when this process wrote or held
        it and no other process of the run is live."""
        _remove(_join(self.folder, self._alive_name()))
        if wrote:
            runs = self._scan()
            mine = runs.get(self.key)
            if mine is not None and not self._live(mine, runs, exclude_self=True):
                for owner in mine.alive:   # its killed processes' records go with it
                    if owner != self.owner:
                        _remove(_join(self.folder, f"{self.key}.{owner}.alive"))
                _remove(_join(self.folder, f"{self.key}.claim"))
                self._abort_left_claims()
            if not runs.keys() - {self.key} and not is_url(self.folder):
                with contextlib.suppress(OSError):   # not empty: another run came meanwhile
                    os.rmdir(self.folder)

    def _abort_left_claims(self) -> None:
        """On object storage, with the run's claim gone: the uploads of its claim record that
        killed processes of this run left incomplete (begun before this process began to
        claim; no process of the run is live to be writing it) are aborted: the store bills
        their parts, and no listing shows them."""
        if not is_url(self.folder) or self._since is None:
            return
        import obs_io
        try:
            obs_io.file.abort_uploads(self.folder, before=self._since, names=[f"{self.key}.claim"])
        except PermissionError as exc:
            log.warning("%s: could not look for incomplete uploads of this run's claim: %s", self.shown, exc)

    @contextlib.contextmanager
    def _lock(self):
        """Locally, the claims folder locked (flock) for reading and writing claims as one step;
        yields whether it is. Object storage, or a file system without flock: no lock."""
        if is_url(self.folder):
            yield False
            return
        with locked_folder(self.folder, self.config.claim_lock_seconds, self.shown) as locked:
            yield locked


@contextlib.contextmanager
def locked_folder(folder: str, seconds: float, shown: str):
    """A local folder (made if missing) locked exclusively, by flock on the folder itself, while
    the block runs; yields whether it is: False where flock is not supported (some network file
    systems). Waits at most `seconds` for another holder, then ReshardError naming `shown`
    (the output as the user named it)."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        yield _flock(fd, folder, seconds, shown)
    finally:
        os.close(fd)   # the lock goes with it


def _flock(fd: int, folder: str, seconds: float, shown: str) -> bool:
    import fcntl
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ReshardError(f"{shown}: {folder} stayed locked for {seconds:g}s by another run") from None
            time.sleep(0.05)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                return False
            raise


# The records of a local output are read and written here with os calls, those of object storage
# through obs_io.file: importing it imports boto3, 0.15-0.25 s of every local run's start on a
# 2-core machine (a second or more for a small conversion) for nothing.

def _list(folder: str) -> list[tuple[str, int]]:
    """(name, modification time ns) of the records in `folder`; FileNotFoundError or
    NotADirectoryError when it is not a folder."""
    if is_url(folder):
        import obs_io
        return [(e.name, e.mtime_nsec) for e in obs_io.file.list_entries(folder)]
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):   # removed since listed: not a record
                entries.append((e.name, e.stat().st_mtime_ns))
    return entries


def _write(path: str, text: str) -> None:
    """A record replaced all or nothing; a local one durable, as obs_io.file writes local state."""
    if not is_url(path):
        write_atomic(path, text, durable=True)
        return
    import obs_io
    obs_io.file.write(path, text)


def _remove(path: str) -> None:
    try:
        if is_url(path):
            import obs_io
            obs_io.file.remove(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
