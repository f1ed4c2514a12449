"""The per-node leader election of boot processes started once per card (node_leader.py)."""
from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time

import psutil
import pytest

from cloud_entry import node_leader
from cloud_entry.errors import BlockFailed, EntryError
from cloud_entry.waits import Backoff

FAST = Backoff(0.02, 1.5, 0.1)


@pytest.fixture
def other():
    """Another live process, standing in for a leader elected before us."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(node_leader, "LOCK_DIR", str(tmp_path))


def elect(job: str, per_card: bool) -> node_leader.NodeRole:
    return node_leader.elect(0, job, per_card, "/x/effective_config.yaml", lock_dir=node_leader.LOCK_DIR)


def record(tmp_path, proc_pid: int, job: str = "job-a", state: str = node_leader.RUNNING, error: str = "",
           started: float | None = None) -> node_leader.LeaderState:
    s = node_leader.LeaderState(job, socket.gethostname(), proc_pid,
                                psutil.Process(proc_pid).create_time() if started is None else started,
                                state, error)
    (tmp_path / f"node_0_{job}.json").write_text(json.dumps(dataclasses.asdict(s)))
    return s


def test_first_process_leads_and_an_old_record_is_not_followed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "node_0_job-a.json").write_text(json.dumps(dataclasses.asdict(
        node_leader.LeaderState("job-a", socket.gethostname(), dead.pid, 1.0, node_leader.DONE))))
    role = elect("job-a", per_card=True)
    assert role.leader and role.me.pid == psutil.Process().pid
    node_leader.finish(role)
    state = json.loads((tmp_path / "node_0_job-a.json").read_text())
    assert state["state"] == node_leader.DONE and state["effective_config"] == "/x/effective_config.yaml"


def test_a_reused_pid_or_a_zombie_is_not_taken_for_the_leader(tmp_path, other):
    record(tmp_path, other.pid, started=12345.0)           # same pid, another start time
    assert elect("job-a", per_card=True).leader
    record(tmp_path, other.pid)
    other.kill()                                           # killed, not yet reaped: a zombie
    deadline = time.monotonic() + 30
    while psutil.Process(other.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process(other.pid).status() == psutil.STATUS_ZOMBIE
    assert elect("job-a", per_card=True).leader


def test_per_card_processes_follow_a_live_leader(tmp_path, other):
    record(tmp_path, other.pid)
    role = elect("job-a", per_card=True)
    assert not role.leader and role.me.pid == other.pid
    with pytest.raises(EntryError, match=f"another cloud-entry \\(pid {other.pid}\\) already runs this job"):
        elect("job-a", per_card=False)
    with pytest.raises(EntryError, match="with other hyperparameters"):
        elect("job-b", per_card=True)
    # a leader of another launch on this machine (another job, a benchmark): not a disagreement
    other_launch = node_leader.elect(0, "job-c", True, "/x/effective_config.yaml", lock_dir=node_leader.LOCK_DIR,
                                     scope=node_leader.launch_scope({"RANK_TABLE_FILE": "/other/rank_table.json"}))
    assert other_launch.leader


def test_a_follower_acts_on_the_leaders_result(tmp_path, other):
    leader = record(tmp_path, other.pid)
    role = elect("job-a", per_card=True)
    with pytest.raises(Exception, match="timed out"):
        node_leader.wait_for_leader(role, 0.3, FAST)
    record(tmp_path, other.pid, state=node_leader.DONE)
    node_leader.wait_for_leader(role, 5, FAST)
    record(tmp_path, other.pid, state=node_leader.FAILED, error="block led by rank 0 failed: disk full")
    with pytest.raises(BlockFailed, match="failed: block led by rank 0 failed: disk full"):
        node_leader.wait_for_leader(role, 5, FAST)
    record(tmp_path, other.pid)
    other.kill()
    other.wait()
    t0 = time.monotonic()
    with pytest.raises(EntryError, match=f"leader \\(pid {leader.pid}\\) ended without a result"):
        node_leader.wait_for_leader(role, 60, FAST)
    assert time.monotonic() - t0 < 10
