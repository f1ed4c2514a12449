"""The job and transform-checkpoint against a store that throttles or stops answering, through
the fault proxy: a burst of throttling is outlasted (for as long as the operation's own bound
allows: a wait's own time, else S3_STALL_DEADLINE) and counted in the log; a stall ends the
command at the configured bounds, in one line naming the endpoint, exit 2 — not the 20 minutes
(and exit 1) of botocore's defaults — and the node publishes its failure so the others stop.
The store stalls only what a given phase asks for, so each test shows which bound ended it,
with the times measured."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import synth
from faultproxy import FaultProxy
from obs_io.config import S3Config
from platform_harness import upload
from test_obs_io_faults import FAST

REPO = Path(__file__).resolve().parent.parent
BOUND = S3Config(connect_timeout=0.5, read_timeout=1, max_attempts=2).worst_case_seconds()


def _marker_listing(method: str, path: str) -> bool:
    return method == "GET" and "list-type" in path and "transformed_checkpoint" in path


def _rank_upload(method: str, path: str) -> bool:
    return method == "PUT" and "/transformed_checkpoint/" in path and path.split("?")[0].endswith(".ckpt")


@pytest.mark.parametrize("phase, stalls", [("marker wait", _marker_listing), ("upload", _rank_upload)])
def test_a_stalled_store_ends_the_job_within_the_bound(models, bucket, s3_env, s3_server, tmp_path, phase, stalls):
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.stall = stalls
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_"))}
        env.update(s3_env, S3_ENDPOINT=proxy.endpoint, PYTHONPATH=str(REPO), **FAST)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "cloud_entry", f"--load_checkpoint={src}", f"--dst_strategy={dst}",
             "--auto_trans_ckpt=True", "--npu_num_per_node=8", "--data_parallel=2", "--model_parallel=2",
             "--pipeline_stage=2", f"--remote_save_url=s3://{bucket}/out_{phase[0]}", "--transform_timeout=20",
             "--transform_only=True"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - started
    assert any(r.status == -1 for r in proxy.records), f"{phase}: nothing stalled"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and proxy.endpoint in last and "did not answer" in last, last
    # start-up, the conversion and one bounded request per phase, not botocore's 20 minutes
    assert elapsed < 60 + 3 * BOUND, (phase, elapsed)


def _env(s3_env, proxy, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "S3_"))}
    env.update(s3_env, S3_ENDPOINT=proxy.endpoint, PYTHONPATH=str(REPO), **{k: str(v) for k, v in extra.items()})
    return env


def _entry(args, env, cwd, node_env=None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cloud_entry", *args], cwd=cwd, env={**env, **(node_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counted(text: str) -> int:
    import re
    return sum(int(n) for n in re.findall(r"object storage throttled (\d+) request", text))


def test_transform_checkpoint_outlasts_a_throttling_burst(models, bucket, s3_env, s3_server, tmp_path):
    """10 s of 503 SlowDown / 429 on every request (it used to fail transform-checkpoint): the
    conversion from and to object storage ends well, equal to MindSpore's, and says how many
    requests were throttled."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.burst(10.0)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "reshard", f"--src_checkpoint={src}",
                               f"--dst_strategy={models['s8']}", f"--dst_checkpoint=s3://{bucket}/out8"],
                              cwd=tmp_path, env=_env(s3_env, proxy, S3_MAX_ATTEMPTS=2), capture_output=True,
                              text=True, timeout=300)
        elapsed = time.monotonic() - started
        throttled = sum(1 for r in proxy.records if r.status in (429, 503))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed >= 10.0 and throttled > 2, (elapsed, throttled)
    assert _counted(proc.stdout + proc.stderr) == throttled, proc.stdout + proc.stderr
    import obs_io
    obs_io.file.copy_parallel(f"s3://{bucket}/out8", str(tmp_path / "down"))
    synth.assert_same_checkpoint_dirs(str(tmp_path / "down"), models["ref8"])


def test_a_throttled_marker_wait_lasts_as_long_as_the_wait_may(models, bucket, s3_env, s3_server, tmp_path):
    """Throttling for 12 s, from the first look for the blocks' markers on: with a stall deadline
    of 5 s the wait still ends well, since its own bound (transform_timeout) is what allows the
    retries; the same burst where no wait bounds it (the source's listing, at the plan) ends the
    job at the stall deadline, in one line naming it."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    common = [f"--load_checkpoint={src}", f"--dst_strategy={models['s8']}", "--auto_trans_ckpt=True",
              "--npu_num_per_node=8", "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2",
              "--transform_timeout=300", "--transform_only=True"]
    with FaultProxy(s3_server.endpoint) as proxy:
        published = []

        def marker_look(method: str, path: str) -> bool:
            if method == "PUT" and "transform_succeed_rank_0.txt" in path:
                published.append(path)
            return bool(published) and _marker_listing(method, path)
        proxy.burst(12.0, marker_look)
        env = _env(s3_env, proxy, S3_STALL_DEADLINE=5)
        started = time.monotonic()
        proc = _entry([*common, f"--remote_save_url=s3://{bucket}/out_wait"], env, tmp_path / "wait")
        out, err = proc.communicate(timeout=300)
        elapsed = time.monotonic() - started
        throttled = sum(1 for r in proxy.records if r.status in (429, 503))
    assert proc.returncode == 0, out + err
    assert throttled > 2 and elapsed >= 12.0, (throttled, elapsed)
    assert _counted(err) == throttled, err
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.burst(600.0, lambda method, path: method == "GET" and "prefix=models" in path)
        started = time.monotonic()
        proc = _entry([*common, f"--remote_save_url=s3://{bucket}/out_plan"], _env(s3_env, proxy, S3_STALL_DEADLINE=5),
                      tmp_path / "plan")
        out, err = proc.communicate(timeout=300)
        elapsed = time.monotonic() - started
    assert proc.returncode == 2, out + err
    last = err.strip().splitlines()[-1]
    assert "S3_STALL_DEADLINE=5s ended the retries" in last and "Traceback" not in err, last
    assert elapsed < 5 + 60, elapsed


def _stall_window(proxy: FaultProxy) -> tuple[float, float]:
    stalled = [r.at for r in proxy.records if r.status == -1]
    return min(stalled), max(stalled)


@pytest.mark.parametrize("phase", ["download", "upload"])
def test_one_stall_deadline_per_command(models, bucket, s3_env, s3_server, tmp_path, phase):
    """Every request that stalls is bounded by the command's one deadline, not by its attempts
    (100 here, 150 s per request): the stalled phase lasts about S3_STALL_DEADLINE (8 s), then
    the job ends in one line naming it."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    stalls = {"download": lambda method, path: method == "GET" and path.split("?")[0].endswith("llama.ckpt")
              and "prefix=" not in path, "upload": _rank_upload}[phase]
    deadline = 8.0
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.stall = stalls
        env = _env(s3_env, proxy, S3_STALL_DEADLINE=deadline, S3_MAX_ATTEMPTS=100, S3_CONNECT_TIMEOUT=0.5,
                   S3_READ_TIMEOUT=1)
        proc = _entry([f"--load_checkpoint={src}", f"--dst_strategy={models['s8']}", "--auto_trans_ckpt=True",
                       "--npu_num_per_node=8", "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2",
                       f"--remote_save_url=s3://{bucket}/out_{phase}", "--transform_timeout=300",
                       "--transform_only=True"], env, tmp_path)
        out, err = proc.communicate(timeout=300)
        ended = time.monotonic()
        first, last = _stall_window(proxy)
    assert proc.returncode == 2, out + err
    line = err.strip().splitlines()[-1]
    assert f"S3_STALL_DEADLINE={deadline:g}s ended the retries" in line and proxy.endpoint in line, line
    assert "Traceback" not in err
    assert last - first >= deadline * 0.8, (first, last)         # tried for the deadline ...
    assert ended - first < deadline + 45, ended - first          # ... and then stopped


def test_a_stalled_node_publishes_its_failure_and_the_other_stops(models, bucket, s3_env, s3_server, tmp_path):
    """Two nodes; the store stalls node 1's rank uploads only. Node 1 gives up at its stall
    deadline and publishes its blocks' failure; node 0, waiting for every block (transform_timeout
    600 s), stops with node 1's error soon after, not at the end of its wait."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    deadline = 8.0
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.stall = lambda method, path: _rank_upload(method, path) and any(
            f"/rank_{r}/" in path for r in range(4, 8))
        env = _env(s3_env, proxy, S3_STALL_DEADLINE=deadline, S3_MAX_ATTEMPTS=100, S3_CONNECT_TIMEOUT=0.5,
                   S3_READ_TIMEOUT=1)
        args = [f"--load_checkpoint={src}", f"--dst_strategy={models['s8']}", "--auto_trans_ckpt=True",
                "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2", f"--remote_save_url=s3://{bucket}/out2",
                "--transform_timeout=600", "--transform_only=True"]
        started = time.monotonic()
        nodes = [_entry(args, env, tmp_path / f"node{i}", {"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": str(i),
                                                         "MA_NUM_GPUS": "4"}) for i in range(2)]
        outputs = [n.communicate(timeout=600) for n in nodes]
        elapsed = time.monotonic() - started
        first, _ = _stall_window(proxy)
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 2, out + err
    line0 = outputs[0][1].strip().splitlines()[-1]
    line1 = outputs[1][1].strip().splitlines()[-1]
    assert "S3_STALL_DEADLINE" in line1, line1
    assert "block led by rank 4 failed" in line0 and "S3_STALL_DEADLINE" in line0, line0
    assert elapsed < 240, elapsed                      # far from node 0's 600 s wait
    assert time.monotonic() - first >= deadline * 0.8
