"""Stopping the entry as ModelArts does (a signal to the boot process), and the log upload.

The entry runs as a real process (a driver script calling cloud_entry.__main__.main with the
job replaced by a small function), so signals, process groups and exit codes are the real ones.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import obs_io
from cloud_entry import launch, logs
from cloud_entry.errors import EntryError, WaitTimeout
from s3server import free_port

REPO = Path(__file__).resolve().parent.parent
STOPPED_WITHIN = 20.0   # generous: "it stopped", not how fast

# The driver: main() as `python -m cloud_entry` runs it, the job replaced by `job` (a function
# of the test's choosing), signals set as a boot process gets them.
DRIVER = textwrap.dedent("""\
    import os, signal, sys, time
    from pathlib import Path
    import cloud_entry.args, cloud_entry.job
    from cloud_entry import launch
    from cloud_entry.__main__ import main

    d = Path(sys.argv[1])
    {job}
    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        cloud_entry.args.parse_args = lambda argv: None
        cloud_entry.job.run = job
        sys.exit(main([]))
    """)

LAUNCH_JOB = """
def job(spec):
    return launch.run_command([sys.executable, str(d / "child.py"), sys.argv[2], str(d)], os.environ)
"""

# The launched command: records the stop signal it gets, then exits 7 ("exit") or carries on
# ("ignore"); it has started a helper in its group that ignores SIGTERM, as a stuck worker would.
CHILD = textwrap.dedent("""\
    import os, signal, subprocess, sys, time
    from pathlib import Path

    mode, d = sys.argv[1], Path(sys.argv[2])

    def on_signal(signum, frame):
        (d / "child_got").write_text(str(signum))
        if mode == "exit":
            sys.exit(7)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time; "
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)",
                      str(d / "helper_pid")])
    while not (d / "helper_pid").exists() or not (d / "helper_pid").read_text():
        time.sleep(0.05)
    (d / "child_pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
    """)

# Before the launch: work in a try/finally, with a worker process of a spawn pool (as the
# engine converts ranks) that would run for a minute if nobody stopped it.
PRE_LAUNCH_JOB = """
def convert_rank(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)

def job(spec):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            fut = pool.submit(convert_rank, str(d / "worker_pid"))
            while not (d / "worker_pid").exists():
                time.sleep(0.05)
            (d / "child_pid").write_text("ready")
            return fut.result()
    finally:
        (d / "finally_ran").write_text("yes")
"""


def start_driver(tmp_path: Path, job: str, *args: str, **env: str) -> subprocess.Popen:
    (tmp_path / "driver.py").write_text(DRIVER.format(job=job))
    (tmp_path / "child.py").write_text(CHILD)
    environ = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path), *args],
                            env=environ, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, f"driver ended early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    return path.read_text()


def living(pgid: int) -> list[int]:
    """Processes of group pgid that still run (a zombie nobody reaped yet has ended)."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except ProcessLookupError:
            pass
    return found


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=STOPPED_WITHIN)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_stop_is_passed_on_and_the_command_exit_code_kept(tmp_path, sig):
    proc = start_driver(tmp_path, LAUNCH_JOB, "exit", CLOUD_ENTRY_STOP_GRACE="2")
    pgid = int(wait_for(tmp_path / "child_pid", proc))
    assert int((tmp_path / "helper_pid").read_text()) in living(pgid)
    code, err = stop(proc, sig)
    assert (tmp_path / "child_got").read_text() == str(int(sig))
    assert code == 7, err
    assert f"cloud-entry: stopped by {sig.name}" in err
    assert living(pgid) == []   # the helper too (ignoring SIGTERM, it is SIGKILLed after the grace)


def test_command_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    proc = start_driver(tmp_path, LAUNCH_JOB, "ignore", CLOUD_ENTRY_STOP_GRACE="1")
    pgid = int(wait_for(tmp_path / "child_pid", proc))
    code, err = stop(proc, signal.SIGTERM)
    assert (tmp_path / "child_got").read_text() == str(int(signal.SIGTERM))
    assert code == 128 + signal.SIGKILL, err
    assert living(pgid) == []


def test_sigterm_before_the_launch_unwinds_and_exits_143(tmp_path):
    proc = start_driver(tmp_path, PRE_LAUNCH_JOB)
    wait_for(tmp_path / "child_pid", proc)
    worker = int((tmp_path / "worker_pid").read_text())
    code, err = stop(proc, signal.SIGTERM)
    assert code == 143, err
    assert err.strip().splitlines()[-1] == "cloud-entry: stopped by SIGTERM"
    assert (tmp_path / "finally_ran").read_text() == "yes"
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_timeout_still_kills_the_group_and_raises(tmp_path):
    (tmp_path / "child.py").write_text(CHILD)
    with pytest.raises(WaitTimeout, match="did not finish within 3s"):
        launch.run_command([sys.executable, str(tmp_path / "child.py"), "ignore", str(tmp_path)],
                   dict(os.environ, CLOUD_ENTRY_STOP_GRACE="1"), timeout=3, what="strategy pass")
    pgid = int((tmp_path / "child_pid").read_text())
    deadline = time.monotonic() + 5   # SIGKILLed: gone as soon as the kernel has reaped it
    while living(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert living(pgid) == []


def test_exit_code_of_a_signalled_command_is_the_shells(tmp_path):
    assert launch.run_command([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], os.environ) == 137


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_bad_stop_grace_is_refused_before_starting(value):
    with pytest.raises(EntryError, match="CLOUD_ENTRY_STOP_GRACE"):
        launch.run_command(["/nonexistent"], {"CLOUD_ENTRY_STOP_GRACE": value})


# ---- logs.upload ----

@pytest.fixture
def log_dir(tmp_path) -> Path:
    d = tmp_path / "log"
    (d / "engine").mkdir(parents=True)
    (d / "cloud_entry_node0_pid1.log").write_text("entry\n")
    (d / "transform_main.log").write_text("engine main\n")
    (d / "engine" / "worker_1.log").write_text("engine worker\n")
    return d


@pytest.fixture
def fresh_config():
    obs_io.reset_config()
    yield
    obs_io.reset_config()


def test_upload_copies_the_whole_folder(bucket, log_dir, fresh_config, caplog, s3_server):
    """...and aborts the multipart upload an entry killed while uploading its logs left there
    (another pid's key: no later upload writes it again); one elsewhere is not ours."""
    caplog.set_level(logging.INFO)
    url = f"obs://{bucket}/run/logs/node_0"
    client = s3_server.client()
    client.create_multipart_upload(Bucket=bucket, Key="run/logs/node_0/cloud_entry_node0_pid7.log")
    client.create_multipart_upload(Bucket=bucket, Key="run/logs/node_1/cloud_entry_node1_pid8.log")
    logs.upload(str(log_dir), url, time.time() + 5)   # (moto dates every upload in 2010)
    assert sorted(obs_io.file.list_directory(url, recursive=True)) == [
        "cloud_entry_node0_pid1.log", "engine", "engine/worker_1.log", "transform_main.log"]
    assert obs_io.file.read(f"{url}/engine/worker_1.log") == "engine worker\n"
    assert "logs uploaded: 3 file(s)" in caplog.text
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["run/logs/node_1/cloud_entry_node1_pid8.log"]


def test_upload_to_a_refused_endpoint_only_warns(s3_env, log_dir, fresh_config, monkeypatch, caplog):
    monkeypatch.setenv("S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    obs_io.configure(max_attempts=1)
    logs.upload(str(log_dir), "obs://bucket/logs/node_0", time.time())
    assert "logs not uploaded to obs://bucket/logs/node_0/" in caplog.text
    assert s3_env["SECRET_ACCESS_KEY"] not in caplog.text


def test_upload_to_a_silent_endpoint_is_bounded(s3_env, log_dir, fresh_config, monkeypatch, caplog):
    with socket.socket() as silent:   # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        monkeypatch.setenv("S3_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        logs.upload(str(log_dir), "obs://bucket/logs/node_0", time.time(), timeout=2)
        assert time.monotonic() - start < STOPPED_WITHIN
    assert "not done within 2s" in caplog.text


def test_upload_of_a_missing_folder_does_nothing(tmp_path, caplog):
    logs.upload(str(tmp_path / "never_written"), "obs://bucket/logs", time.time())
    assert "logs" not in caplog.text
