"""Logging: concise lines on the console, everything (with tracebacks) in one file per process,
and that folder copied to object storage at the end (the container's disk does not outlive it)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

import obs_io
from obs_io import redact, retry
from obs_io.cleanup import on_failure
from obs_io.errors import scrub

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT = 120.0   # a few MB of logs take seconds; a dead store must not hold the job
# The copy's own interpreter: settings (credentials included) and file list come on stdin. What
# an earlier entry of this node killed while uploading its logs left (its own keys, a pid in each
# name, are not ours to write again) goes first: uploads there begun before this entry started.
_UPLOAD = """
import datetime, json, sys, obs_io
plan = json.load(sys.stdin)
obs_io.configure(**plan['config'])
try:
    obs_io.file.abort_uploads(plan['dst'], datetime.datetime.fromtimestamp(plan['before'], datetime.timezone.utc))
except PermissionError:
    pass
obs_io.file.copy_parallel(plan['src'], plan['dst'], file_list=plan['files'])
"""

FORMAT_FILE = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


_console_level = logging.INFO


def console_level(quiet: bool, verbose: bool) -> int:
    """-q: warnings and errors; -v: debug lines too; else INFO."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def console(node_index: int | None = None, level: int | None = None) -> None:
    """The console handler on standard error (the training command keeps standard output), at
    `level` (console_level; None: as set before, INFO at first). Called again once the node is
    known, to tag the lines with it."""
    global _console_level
    if level is not None:
        _console_level = level
    redact.protect_logs()   # every record of ours scrubbed: console and uploaded log files alike
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if getattr(h, "_cloud_entry", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(_console_level)
    tag = "cloud-entry" if node_index is None else f"cloud-entry[node {node_index}]"
    handler.setFormatter(logging.Formatter(f"{tag} %(levelname)s: %(message)s"))
    handler._cloud_entry = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    obs_io.quiet_client_logs()


def to_file(log_dir: str, node_index: int) -> str:
    """Start the per-process log file (only after the input was found good: bad input writes
    nothing)."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"cloud_entry_node{node_index}_pid{os.getpid()}.log")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FORMAT_FILE))
    handler._cloud_entry = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)
    return path


def upload(log_dir: str, remote_url: str, started: float, timeout: float = UPLOAD_TIMEOUT) -> None:
    """Copy every file below log_dir (ours and the engine's) to `<remote_url>/`; multipart
    uploads there that began before `started` (this entry's start, seconds since the epoch)
    are aborted first.

    Never raises an error: logs that could not be uploaded are a WARNING, and the job's
    result and exit code stay what they were. Bounded by `timeout`, and after this command's
    stall deadline ran out (obs_io.retry.stalled) by one try: a thread stuck in a request
    cannot be abandoned (the interpreter joins transfer threads at exit), so the copy runs in
    its own process group, SIGKILLed when the time is up. A stop request (signals.Terminated)
    meanwhile kills it too and is raised.
    """
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_cloud_entry", False):
            handler.flush()
    dst = remote_url.rstrip("/") + "/"
    try:
        files = [os.path.relpath(os.path.join(folder, name), log_dir)
                 for folder, _, names in os.walk(log_dir) for name in names]
        if not files:
            return
        cfg = obs_io.current_config()
        if retry.stalled():   # the store stopped answering this command: one try, not a new stall
            cfg = dataclasses.replace(cfg, max_attempts=1, stall_deadline=cfg.connect_timeout + cfg.read_timeout)
            timeout = min(timeout, cfg.connect_timeout + cfg.read_timeout + 15)
        plan = json.dumps({"config": dataclasses.asdict(cfg), "src": log_dir, "dst": dst, "files": files,
                           "before": started})
        obs_io_parent = os.path.dirname(os.path.dirname(os.path.abspath(obs_io.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [obs_io_parent,
                                                                       os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-c", _UPLOAD], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        with on_failure(_kill_group, proc):   # a timeout or a stop: nothing of it stays
            _, err = proc.communicate(plan, timeout)
    except subprocess.TimeoutExpired:
        log.warning("logs not uploaded to %s: not done within %gs", dst, timeout)
        return
    except Exception as exc:  # noqa: BLE001 - the job's outcome must not depend on its logs
        log.warning("logs not uploaded to %s: %s: %s", dst, type(exc).__name__, exc)
        return
    if proc.returncode:
        lines = err.strip().splitlines() or [f"exit code {proc.returncode}"]
        log.warning("logs not uploaded to %s: %s", dst, scrub(lines[-1]))
    else:
        log.info("logs uploaded: %d file(s) to %s", len(files), dst)


def _kill_group(proc: subprocess.Popen) -> None:
    """The upload's process group killed and reaped (it runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
