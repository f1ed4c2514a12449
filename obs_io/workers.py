"""moxing's `is_processing`: a batch of many small files split over worker processes.

botocore spends a few milliseconds of CPU on every request, under the GIL, so one interpreter
tops out at a few hundred small objects a second however many threads wait on the network.
copy_parallel(is_processing=True) therefore hands the files below the multipart threshold to
worker processes running main() below (each with its own threads and client) while the parent
moves the big files itself, whose parts already run in parallel. A worker is a fresh
interpreter fed its plan on stdin, never a fork or a spawn of the caller's __main__: a training
script that calls copy_parallel at top level must not be re-run, nor a lock held by one of its
threads be copied. Workers report progress (and their one-line error) on stdout; SIGTERM makes
a worker cancel its transfers, abort its multipart uploads and remove its temporary files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading

from . import config as _config
from .cleanup import on_failure
from .errors import MOXING_ERRORS, scrub
from .transfer import CopyTask, execute_remote

FILES_PER_PROCESS = 64     # fewer files than this per worker do not repay starting an interpreter
THREADS_PER_PROCESS = 4
STOP_WAIT = 60.0           # seconds a stopped worker gets to clean up before it is killed
# -c, not -m: the worker runs this module as obs_io.workers, never as a second copy named __main__
_WORKER = "import sys; from obs_io.workers import main; sys.exit(main())"
_DONE, _ERROR = "\x1eobs_io done ", "\x1eobs_io error "  # the worker protocol's lines on stdout
_ERRORS = {e.__qualname__: e for e in (FileNotFoundError, PermissionError, IsADirectoryError, FileExistsError,
                                   ValueError, OSError, *MOXING_ERRORS)}


def worker_count(is_processing: bool, threads: int, small_files: int) -> int:
    """How many worker processes a batch gets: one per THREADS_PER_PROCESS threads, at most the
    CPUs this process may run on, and only with FILES_PER_PROCESS small files each."""
    if not is_processing:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, threads // THREADS_PER_PROCESS, small_files // FILES_PER_PROCESS))


def partition(tasks: list[CopyTask], parts: int) -> list[list[CopyTask]]:
    """Spread tasks over `parts` groups of about equal cost (bytes plus a per-request share)."""
    groups: list[list[CopyTask]] = [[] for _ in range(parts)]
    costs = [0] * parts
    for task in sorted(tasks, key=lambda t: t.size, reverse=True):
        i = costs.index(min(costs))
        groups[i].append(task)
        costs[i] += task.size + 512 * 1024
    return [g for g in groups if g]


class Workers:
    """Worker processes running groups of tasks; progress goes to `progress` as they report."""

    def __init__(self, groups: list[list[CopyTask]], threads: int, progress):
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent,
                                                                       os.environ.get("PYTHONPATH")])))
        cfg = dataclasses.asdict(_config.current())
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._procs: list[subprocess.Popen] = []
        self._readers: list[threading.Thread] = []
        with on_failure(self.stop):   # those started so far
            for group in groups:
                proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, text=True)
                self._procs.append(proc)
                plan = json.dumps({"config": cfg, "threads": threads,
                                   "tasks": [dataclasses.astuple(t) for t in group]})
                reader = threading.Thread(target=self._talk, args=(proc, plan, progress), daemon=True)
                reader.start()
                self._readers.append(reader)

    def _talk(self, proc: subprocess.Popen, plan: str, progress) -> None:
        """Hand a worker its plan (here, so workers start side by side while each one imports),
        then relay what it reports."""
        try:
            proc.stdin.write(plan)
            proc.stdin.close()
        except OSError:  # it ended before reading: its exit code tells
            pass
        for line in proc.stdout:
            if line.startswith(_ERROR):
                name, _, message = line[len(_ERROR):].rstrip("\n").partition("\t")
                with self._lock:
                    self.errors.append(_ERRORS.get(name, OSError)(message))
                self._failed.set()
            elif line.startswith(_DONE):
                if progress is not None:
                    progress.add_bytes(int(line[len(_DONE):]))
                    progress.file_done()
            else:  # something in the worker printed: pass it on
                sys.stdout.write(line)

    def wait(self) -> None:
        """Wait for every worker; the first failure stops the others and is raised."""
        try:
            while not self._failed.wait(0.2):
                codes = [p.poll() for p in self._procs]
                if all(c is not None for c in codes) or any(c for c in codes):
                    break
        finally:
            self.stop()
        for proc in self._procs:
            if proc.returncode and not self.errors:
                self.errors.append(OSError(f"an obs_io worker process ended with exit code {proc.returncode}"))
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        """SIGTERM to the workers still running, which then clean up; killed after STOP_WAIT."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in self._readers:  # their pipes are closed now: they end at once
            reader.join(timeout=STOP_WAIT)


class _LineProgress:
    """A worker's progress: a line `_DONE<bytes>` on stdout per finished file."""

    def __init__(self):
        self._bytes = 0
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes += n

    def file_done(self) -> None:
        with self._lock:
            sys.stdout.write(f"{_DONE}{self._bytes}\n")
            sys.stdout.flush()
            self._bytes = 0


def _stop(signum, frame):
    raise KeyboardInterrupt  # unwinds through the transfer manager: cancel, abort, clean up


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    plan = json.load(sys.stdin)
    _config.configure(**plan["config"])
    tasks = [CopyTask(*t) for t in plan["tasks"]]
    try:
        execute_remote(tasks, plan["threads"], _LineProgress())
    except (Exception, KeyboardInterrupt) as exc:
        message = scrub(str(exc)).replace("\n", " ") or type(exc).__name__
        sys.stdout.write(f"{_ERROR}{type(exc).__qualname__}\t{message}\n")
        sys.stdout.flush()
        return 1
    return 0

