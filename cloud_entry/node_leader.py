"""One boot process per card: the entry processes of one node agree on one leader.

Preset Ascend images and per-rank launchers start the boot command once per card (RANK_ID,
DEVICE_ID, LOCAL_RANK set per process); custom images with msrun start it once per node. Either
way exactly one process per node may sync, convert and upload: several would delete each other's
folders and publish contradicting markers. The others wait, bounded, for its result and then each
launches its own training command.

How they agree, without a race and without trusting an old answer: an exclusive `flock` on a
lock file in the machine's temporary folder (not the work folder: launchers that start each card
in its own folder, `cd rank_<i>`, give each process another output folder) serialises reading
and writing a small state file named by node and job key. The first
process that finds no live leader of this job there becomes the leader and records who it is:
host, pid and the process's start time (so a reused pid is never taken for it). A later process
that finds a live leader of the same job follows it. A state left by an earlier boot names a
process that no longer exists: it is neither followed nor believed, and the next process leads
afresh (a rerun reuses the converted ranks it can verify, so that is cheap). The leader records
the effective config and moxing stand-in it wrote; its followers launch with those.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass

import psutil

from obs_io.atomic import write_atomic

from cloud_entry.errors import BlockFailed, EntryError, WaitTimeout
from cloud_entry.waits import Backoff, poll

log = logging.getLogger(__name__)

RUNNING, DONE, FAILED = "running", "done", "failed"
LOCK_TIMEOUT = 60.0      # seconds; the lock is held only to read and write a few hundred bytes
LOCK_DIR = os.path.join(tempfile.gettempdir(), f"cloud-entry-{os.getuid()}")


@dataclass(frozen=True)
class LeaderState:
    """What the state file holds: which process leads this node for which job, and how it ended."""
    job: str              # the job key: processes of one job on one node compute the same
    host: str
    pid: int
    started: float        # the leader's process start time (psutil), seconds since the epoch
    state: str = RUNNING
    error: str = ""
    effective_config: str = ""   # what the node's processes launch with
    shim: str = ""               # the moxing stand-in folder ("" off ModelArts)
    scope: str = ""              # which launch it belongs to (launch_scope): cards of one job agree

    def alive(self) -> bool:
        """The process that wrote this is still running (same pid and start time, this host;
        a killed process not yet reaped by its parent is not)."""
        if self.host != socket.gethostname():
            return False
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@dataclass(frozen=True)
class NodeRole:
    leader: bool
    state_path: str
    lock_path: str
    me: LeaderState        # the leader's identity (ours when we lead)

    def describe(self) -> str:
        if self.leader:
            return f"this process (pid {self.me.pid}) leads this node's sync and conversion"
        return f"following this node's leader, pid {self.me.pid}: it syncs and converts, this process waits"


# What the card processes of one launch share and another launch on the same machine (a second
# job, a benchmark beside the tests) most likely does not: the topology's sources.
SCOPE_VARS = ("RANK_TABLE_FILE", "MINDIE_RANK_TABLE", "MA_JOB_DIR", "MA_LOG_DIR", "VC_WORKER_HOSTS",
              "MA_CURRENT_IP", "MS_SCHED_HOST", "MS_SCHED_PORT", "MASTER_ADDR", "MASTER_PORT")


def launch_scope(env: dict[str, str]) -> str:
    """A digest of SCOPE_VARS: equal for the boot processes of one launch on a node."""
    return hashlib.sha256(json.dumps([env.get(k, "") for k in SCOPE_VARS]).encode()).hexdigest()[:16]


def _myself(job: str, effective_config: str, shim: str, scope: str) -> LeaderState:
    pid = os.getpid()
    return LeaderState(job, socket.gethostname(), pid, psutil.Process(pid).create_time(),
                       effective_config=effective_config, shim=shim, scope=scope)


class _Locked:
    """`with _Locked(path):` an exclusive flock, taken within LOCK_TIMEOUT or WaitTimeout."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "a+")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    self.fh.close()
                    raise WaitTimeout(f"could not lock {self.path} within {LOCK_TIMEOUT:g}s "
                                      f"({exc.strerror})") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _read(path: str) -> LeaderState | None:
    try:
        with open(path, encoding="utf-8") as f:
            return LeaderState(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _write(path: str, state: LeaderState) -> None:
    write_atomic(path, json.dumps(asdict(state)), durable=True)


def elect(node_index: int, job: str, per_card: bool, effective_config: str, shim: str = "",
          lock_dir: str = LOCK_DIR, scope: str = "") -> NodeRole:
    """Lead or follow. `job` is the job key: equal for the processes of one job, different as
    soon as one got other hyperparameters. Without a per-card launch a second live entry of this
    job on this node is an error: it would launch the training twice. A live leader of another
    job key in the same launch (`scope`: launch_scope) means the cards got different
    hyperparameters: an error; one of another launch (another job on this machine) is not."""
    os.makedirs(lock_dir, exist_ok=True)
    stem = os.path.join(lock_dir, f"node_{node_index}_{job[:24]}")
    state_path, lock_path = f"{stem}.json", f"{stem}.lock"
    me = _myself(job, effective_config, shim, scope)
    with _Locked(lock_path):
        current = _read(state_path)
        if current is not None and current.alive() and current.pid != me.pid:
            if not per_card:
                raise EntryError(f"another cloud-entry (pid {current.pid}) already runs this job on node "
                                 f"{node_index}; a boot command per card needs RANK_ID/DEVICE_ID/LOCAL_RANK set")
            return NodeRole(False, state_path, lock_path, current)
        _write(state_path, me)
        others = [p for p in os.listdir(lock_dir) if p.startswith(f"node_{node_index}_") and p.endswith(".json")
                  and os.path.join(lock_dir, p) != state_path]
    for name in others:   # a live leader of another job on this node: the cards disagree
        other = _read(os.path.join(lock_dir, name))
        if other is not None and other.alive() and other.state == RUNNING and per_card \
                and other.scope == scope:
            raise EntryError(f"another cloud-entry (pid {other.pid}) runs this job on node {node_index} with "
                             "other hyperparameters: every card's boot command must get the same ones")
    return NodeRole(True, state_path, lock_path, me)


def finish(role: NodeRole, error: str = "") -> None:
    """The leader records how the node's preparation ended; its followers act on it."""
    if not role.leader:
        return
    with _Locked(role.lock_path):
        _write(role.state_path, LeaderState(**{**asdict(role.me), "state": FAILED if error else DONE,
                                              "error": error}))


def wait_for_leader(role: NodeRole, timeout: float, backoff: Backoff = Backoff(max_interval=2.0)) -> None:
    """A follower waits (bounded) for its leader's result: returns when done; BlockFailed with the
    leader's error; EntryError at once when the leader died without a result."""
    def check() -> bool | None:
        state = _read(role.state_path)
        if state is None or (state.pid, state.started) != (role.me.pid, role.me.started):
            raise EntryError(f"this node's leader (pid {role.me.pid}) was replaced in {role.state_path}")
        if state.state == DONE:
            return True
        if state.state == FAILED:
            raise BlockFailed(f"this node's leader (pid {role.me.pid}) failed: {state.error}")
        if not state.alive():
            raise EntryError(f"this node's leader (pid {role.me.pid}) ended without a result")
        return None

    log.info("waiting (up to %gs) for this node's leader, pid %d", timeout, role.me.pid)
    # The leader's own waits (strategies of every node, then block markers) take up to a
    # transform_timeout each, besides its conversion: its death ends this wait at once anyway.
    poll(check, timeout, f"this node's leader (pid {role.me.pid}) to sync and convert", backoff)
