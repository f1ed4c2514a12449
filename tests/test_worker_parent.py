"""A conversion worker ends with the process that started it: killed with SIGKILL, the run's
workers write nothing more (they were found still writing a minute later when the run was
killed just as its workers started: they took init, their new parent, for theirs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

WAIT = 60   # seconds: a bound, never expected


# The "run": starts one worker through reshard's initializer as the pool would, prints the
# worker's pid, then waits to be killed. `given` is the parent pid handed to the worker.
RUN = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from reshard import execute

    def worker(parent, counter, ready):
        execute._worker_init(None, counter, None, parent=parent)
        open(ready, "w").close()
        while True:
            time.sleep(0.1)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        given = os.getpid() if sys.argv[1] == "self" else int(sys.argv[1])
        counter = ctx.Value("i", 0)   # kept: the child unpickles it after start() returns
        p = ctx.Process(target=worker, args=(given, counter, sys.argv[2]))
        p.start()
        print(p.pid, flush=True)
        time.sleep(600)
""")


def _start(tmp_path, given: str) -> tuple[subprocess.Popen, int]:
    path = tmp_path / "run.py"
    path.write_text(RUN)
    run = subprocess.Popen([sys.executable, str(path), given, str(tmp_path / "ready")],
                           stdout=subprocess.PIPE, text=True)
    return run, int(run.stdout.readline())


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_worker_ends_when_its_run_is_killed(tmp_path):
    run, worker = _start(tmp_path, "self")
    deadline = time.monotonic() + WAIT
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "ready").exists() and psutil.pid_exists(worker)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(WAIT)
    assert _gone(worker)


def test_a_worker_whose_run_is_already_gone_does_not_start(tmp_path):
    """The race: the run killed before its worker's initializer ran, so the worker's parent is
    already another process (init) when it looks; here it is handed a pid that is not its
    parent's, as it then would be."""
    run, worker = _start(tmp_path, "1")
    try:
        assert _gone(worker) and not (tmp_path / "ready").exists()
    finally:
        run.kill()
        run.wait(WAIT)
