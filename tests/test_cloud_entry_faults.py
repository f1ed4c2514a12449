"""The job against a store that stops answering: bounded by the configured request bound, one
line naming the endpoint, exit 2 — not the 20 minutes (and exit 1) of botocore's defaults. The
store stalls only what a given phase asks for, so the test shows each phase is bounded."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
