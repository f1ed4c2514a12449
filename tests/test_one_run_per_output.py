"""One run per output (reshard.claim), with two real processes each time.

Two runs of other inputs started together into one output: exactly one succeeds, the other is
refused at once with one line naming the run that holds the output, and the output is the
winner's, bit for bit. Which one wins is never assumed: the winner is held at a point past its
claim by something outside it (its per-process log is a FIFO nobody reads yet; its uploads
pass a proxy that holds them) until the loser has exited, so the two always overlap. A run
killed while it holds an output is taken over at once by the next run, of the same inputs or
not."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import obs_io
import synth
from faultproxy import FaultProxy
from platform_harness import upload
from test_cloud_entry_jobs import LAUNCH, PARALLEL4, PARALLEL8, entry_env

REPO = Path(__file__).resolve().parent.parent
REFUSED = re.compile(r"in use by another run \(run \w+, (transform-checkpoint|cloud-entry node 0) on host \S+ "
                     r"pid (\d+), claimed \d+s ago\)")


def tool(args: list[str], env: dict[str, str], cwd: Path, *, module: str = "reshard") -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def first_to_end(procs: list[subprocess.Popen], timeout: float = 240) -> subprocess.Popen:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.05)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError("neither run ended: both went past the claim")


def fifo_log(folder: Path) -> Path:
    """A --log_dir whose transform_0.log is a FIFO: the converting process blocks opening it."""
    folder.mkdir(parents=True)
    os.mkfifo(folder / "transform_0.log")
    return folder


class Reader(threading.Thread):
    """Opens a FIFO for reading (the writer's open then goes through) and drains it."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.wait(0.05):
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self):
        self.stop.set()
        self.join()
        os.close(self.fd)


def refused_line(proc: subprocess.Popen, other: subprocess.Popen, shown: str) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err, err
    m = REFUSED.search(lines[-1])
    assert m and shown in lines[-1], lines[-1]
    assert int(m.group(2)) == other.pid, (lines[-1], other.pid)   # it names the run that holds it
    return lines[-1]


@pytest.fixture
def env(s3_env):
    return {**os.environ, **s3_env, "PYTHONPATH": str(REPO)}


def two_conversions(models, dst: str) -> dict[str, tuple[list[str], str]]:
    """Two conversions of other inputs into one output: name -> (arguments, reference)."""
    return {"complete->8": ([f"--src_checkpoint={models['complete']}", f"--dst_strategy={models['s8']}",
                             f"--dst_checkpoint={dst}"], models["ref8"]),
            "8->4": ([f"--src_checkpoint={models['ref8']}", f"--src_strategy={models['s8']}",
                      f"--dst_strategy={models['s4']}", f"--dst_checkpoint={dst}"], models["ref4"])}


def test_two_transform_checkpoints_into_one_folder(models, env, tmp_path):
    out = tmp_path / "out"
    runs = two_conversions(models, str(out))
    logs = {name: fifo_log(tmp_path / f"log_{i}") for i, name in enumerate(runs)}
    procs = {name: tool([*args, f"--log_dir={logs[name]}"], env, tmp_path) for name, (args, _) in runs.items()}
    loser = first_to_end(list(procs.values()))
    (winner_name,) = [n for n, p in procs.items() if p is not loser]
    winner = procs[winner_name]
    refused_line(loser, winner, f"--dst_checkpoint {out}")
    readers = [Reader(logs[name] / "transform_0.log") for name in runs]
    try:
        stdout, stderr = winner.communicate(timeout=240)
    finally:
        for r in readers:
            r.close()
    assert winner.returncode == 0, stdout + stderr
    synth.assert_same_checkpoint_dirs(str(out), runs[winner_name][1])   # the winner's, all of it
    assert not (out / ".claims").exists()                               # released


@pytest.mark.parametrize("next_run", ["the same command", "other inputs"])
def test_a_killed_runs_output_is_taken_over_at_once(models, env, tmp_path, next_run):
    out = tmp_path / "out"
    runs = two_conversions(models, str(out))
    args, _ = runs["complete->8"]
    first = tool([*args, f"--log_dir={fifo_log(tmp_path / 'log_first')}"], env, tmp_path)
    deadline = time.monotonic() + 120
    while not list((out / ".claims").glob("*.claim")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((out / ".claims").glob("*.claim")), first.communicate(timeout=60)
    os.killpg(first.pid, signal.SIGKILL)       # as the OOM killer or a stopped job does
    first.wait()
    args, reference = runs["complete->8" if next_run == "the same command" else "8->4"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reshard", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    if next_run == "other inputs":
        assert "taking over from a run that ended without releasing it" in done.stdout + done.stderr
    assert time.monotonic() - started < 120    # not after some stale-claim delay
    synth.assert_same_checkpoint_dirs(str(out), reference)


def _rank_object(method: str, path: str) -> bool:
    return "/rank_" in path and method in ("PUT", "POST")


def test_two_transform_checkpoints_into_one_remote_output(models, env, bucket, s3_server, tmp_path):
    """On object storage (no lock: claims ordered by the store): the winner's rank uploads are
    held by the proxy until the loser has been refused."""
    dst = f"s3://{bucket}/out"
    runs = two_conversions(models, dst)
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.hold = _rank_object
        penv = {**env, "S3_ENDPOINT": proxy.endpoint}
        procs = {name: tool(args, penv, tmp_path / name.replace(">", "")) for name, (args, _) in runs.items()}
        loser = first_to_end(list(procs.values()))
        (winner_name,) = [n for n, p in procs.items() if p is not loser]
        refused_line(loser, procs[winner_name], f"--dst_checkpoint {dst}")
        proxy.release()
        stdout, stderr = procs[winner_name].communicate(timeout=240)
    assert procs[winner_name].returncode == 0, stdout + stderr
    obs_io.file.copy_parallel(dst, str(tmp_path / "down"))
    synth.assert_same_checkpoint_dirs(str(tmp_path / "down"), runs[winner_name][1])
    names = [e.name for e in obs_io.file.list_entries(dst, recursive=True) if e.is_file()]
    assert not [n for n in names if n.startswith(".claims/")], names


def test_two_jobs_sharing_a_remote_save_url(models, bucket, s3_server, s3_env, tmp_path):
    """Two jobs of other inputs with one remote_save_url: the second is refused at once (it
    used to wait out its whole transform_timeout), naming the job that holds the output."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    remote = f"s3://{bucket}/shared_out"
    jobs = {"8": ([f"--dst_strategy={models['s8']}", "--npu_num_per_node=8", *PARALLEL8], models["ref8"]),
            "4": ([f"--dst_strategy={models['s4']}", "--npu_num_per_node=4", *PARALLEL4], None)}
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.hold = lambda method, path: "/transformed_checkpoint/" in path and ".ckpt" in path \
            and method in ("PUT", "POST")
        env = entry_env(s3_env, S3_ENDPOINT=proxy.endpoint)
        procs = {name: tool([f"--load_checkpoint={src}", "--auto_trans_ckpt=True", f"--remote_save_url={remote}",
                             "--transform_timeout=600", "--transform_only=True", *args],
                            env, tmp_path / f"job{name}", module="cloud_entry") for name, (args, _) in jobs.items()}
        started = time.monotonic()
        loser = first_to_end(list(procs.values()))
        refused_after = time.monotonic() - started
        (winner_name,) = [n for n, p in procs.items() if p is not loser]
        out, err = loser.communicate(timeout=60)
        assert loser.returncode == 2, out + err
        line = [x for x in err.splitlines() if x.startswith("cloud-entry: error")]
        assert len(line) == 1 and f"remote_save_url={remote}" in line[0] and REFUSED.search(line[0]), err
        assert int(REFUSED.search(line[0]).group(2)) == procs[winner_name].pid
        assert refused_after < 120, refused_after     # the claim ended it, not the 600 s wait
        proxy.release()
        out, err = procs[winner_name].communicate(timeout=300)
    assert procs[winner_name].returncode == 0, out + err
    down = tmp_path / "down"
    obs_io.file.copy_parallel(f"{remote}/transformed_checkpoint/llama", str(down))
    local = tmp_path / f"job{winner_name}" / "output" / "transformed_checkpoint" / "llama"
    synth.assert_same_checkpoint_dirs(str(down), str(local))
    if jobs[winner_name][1]:
        synth.assert_same_checkpoint_dirs(str(down), jobs[winner_name][1])
    loser_name = "8" if winner_name == "4" else "4"
    assert not (tmp_path / f"job{loser_name}" / "output").exists()   # refused before any write


def test_a_killed_run_leaves_nothing_on_object_storage_after_the_rerun(models, env, bucket, s3_server, tmp_path):
    """A transform-checkpoint into object storage SIGKILLed while it holds its output (no write
    probe objects any more: the claim is the first write, and a killed run's claim is taken
    over): the rerun succeeds at once, and the output holds the conversion and its manifest only."""
    dst = f"s3://{bucket}/out"
    args, reference = two_conversions(models, dst)["complete->8"]
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.hold = _rank_object
        first = tool(args, {**env, "S3_ENDPOINT": proxy.endpoint}, tmp_path / "first")
        deadline = time.monotonic() + 120
        while not any(r.method == "PUT" and "/.claims/" in r.path and r.path.endswith(".claim") for r in proxy.records) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    left = [e.name for e in obs_io.file.list_entries(dst, recursive=True) if e.is_file()]
    assert any(n.startswith(".claims/") for n in left), left      # what the kill left
    done = subprocess.run([sys.executable, "-m", "reshard", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(e.name for e in obs_io.file.list_entries(dst, recursive=True) if e.is_file())
    assert names == sorted([f"rank_{r}/checkpoint_{r}.ckpt" for r in range(8)] + ["conversion_manifest.json"]), names
    obs_io.file.copy_parallel(dst, str(tmp_path / "down"))
    synth.assert_same_checkpoint_dirs(str(tmp_path / "down"), reference)


def test_another_machines_claim_holds_while_it_beats_and_goes_when_it_stops(tmp_path):
    """A claim written from another machine (a shared disk) cannot be checked by pid: it holds
    while its heartbeat is younger than claim_stale_seconds, by the store's clock, and is taken over
    after that; a claim of this machine's dead process goes at once."""
    import json
    import subprocess as sp
    from reshard import claim as claim_mod
    from reshard.config import DEFAULT
    from reshard.errors import ReshardError
    out = tmp_path / "out"
    folder = out / claim_mod.CLAIMS
    folder.mkdir(parents=True)
    OutputClaim = claim_mod.OutputClaim
    theirs = OutputClaim(str(out), "their-run", "transform-checkpoint", "--dst_checkpoint out")
    elsewhere = "4242-ffff0000"   # an owner tag whose host tag is not this machine's
    (folder / f"{theirs.key}.claim").write_text(json.dumps({"run": "their-run", "tool": "cloud-entry node 1",
                                                             "host": "far", "pid": 4242}))
    beat = folder / f"{theirs.key}.{elsewhere}.alive"
    beat.write_text(elsewhere)
    mine = OutputClaim(str(out), "my-run", "transform-checkpoint", "--dst_checkpoint out")
    with pytest.raises(ReshardError, match=r"in use by another run \(run their-run, cloud-entry node 1 on host far "
                                           r"pid 4242"):
        mine.acquire()
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{theirs.key}.claim", beat.name])
    old = time.time() - DEFAULT.claim_stale_seconds - 60
    for p in folder.iterdir():
        os.utime(p, (old, old))
    with mine.acquire():                       # silent for longer than claim_stale_seconds: taken over
        assert not beat.exists() and (folder / f"{mine.key}.claim").exists()
        dead = sp.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        from obs_io.atomic import owner_tag
        gone = f"{dead.pid}-{owner_tag().split('-', 1)[1]}"
        (folder / f"{mine.key}.{gone}.alive").write_text(gone)   # this run's process, killed
    assert not folder.exists() or not any(folder.iterdir())   # released: nothing left



def test_a_killed_process_half_stored_claim_is_aborted_when_the_run_ends(bucket, s3_server, s3_env):
    """A process of this run killed while its claim record went up in parts leaves an incomplete
    multipart upload no listing shows (the store bills its parts): the run's last process aborts
    it with the claim (only uploads begun before it claimed: moto reports one fixed Initiated
    time, so that bound is not shown here); another run's is left alone."""
    from reshard.claim import CLAIMS, OutputClaim
    client = s3_server.client()
    claim = OutputClaim(f"s3://{bucket}/out", "this-run", "transform-checkpoint", "--dst_checkpoint out")
    other = OutputClaim(f"s3://{bucket}/out", "another-run", "transform-checkpoint", "--dst_checkpoint out")
    mine, theirs = f"out/{CLAIMS}/{claim.key}.claim", f"out/{CLAIMS}/{other.key}.claim"
    for key in (mine, theirs):   # what the killed processes left
        client.create_multipart_upload(Bucket=bucket, Key=key)

    def incomplete() -> list[str]:
        return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    with claim:
        assert incomplete() == sorted([mine, theirs])
    assert incomplete() == [theirs]


def test_local_run_needs_no_object_store_client(tmp_path):
    """A local conversion, its output's claim included, never imports the object-store client:
    boto3's import is 0.15-0.25 s of every run's start on this machine, a second copy floor's
    worth for a small checkpoint (the claim's local records are plain files)."""
    params = synth.llama_params(**synth.SMALL_LLAMA)
    src = synth.write_complete_checkpoint(str(tmp_path / "full" / "model.ckpt"), params)
    synth.write_strategy(str(tmp_path / "s4"), dp=2, mp=2, pp=1, params=params)
    argv = ["reshard", "--src_checkpoint", src, "--dst_checkpoint", str(tmp_path / "out"),
            "--dst_strategy", str(tmp_path / "s4"), "--format", "checkpoint2", "--iteration", "10"]
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n"
            "    runpy.run_module('reshard', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "heavy = [m for m in ('boto3', 'botocore', 's3transfer') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text() == "10"
    assert not (tmp_path / "out" / ".claims").exists()
