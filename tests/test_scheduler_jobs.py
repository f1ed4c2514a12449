"""The offline conversion of one checkpoint spread over N machines of an existing scheduler:
`cloud-entry --transform_only=True` as the pods of a Kubernetes Indexed Job (JOB_COMPLETION_INDEX
plus CLOUD_ENTRY_NODE_NUM, the manifest's completions) or of a Volcano job (VC_TASK_INDEX,
VC_WORKER_NUM, VC_WORKER_HOSTS), as the README's manifests start it. N processes at once, each
with only its pod's environment and its own folder (no shared disk: the S3 server is all they
share); each converts its own block, and the set on the store equals MindSpore's conversion."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import obs_io
import synth
from platform_harness import upload

REPO = Path(__file__).resolve().parent.parent
PODS = 4
PARALLEL8 = ["--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2"]


def pod_env(s3_env: dict[str, str], scheduler: str, index: int) -> dict[str, str]:
    """What the scheduler (and the manifest) give pod `index`; nothing of ModelArts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_NUM", "MS_", "JOB_COMPLETION"))}
    env.update(s3_env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if scheduler == "kubernetes":
        env.update(JOB_COMPLETION_INDEX=str(index), CLOUD_ENTRY_NODE_NUM=str(PODS))
    else:
        env.update(VC_TASK_INDEX=str(index), VC_WORKER_NUM=str(PODS),
                   VC_WORKER_HOSTS=",".join(f"convert-worker-{i}.convert" for i in range(PODS)))
    return env


@pytest.mark.parametrize("scheduler", ["kubernetes", "volcano"])
def test_pods_convert_their_blocks_through_object_storage(models, bucket, s3_env, tmp_path, scheduler):
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    remote = f"s3://{bucket}/{scheduler}"
    args = [f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--auto_trans_ckpt=True",
            "--transform_only=True", f"--remote_save_url={remote}", *PARALLEL8]
    pods = []
    for i in range(PODS):
        cwd = tmp_path / f"pod{i}"          # each pod's own disk
        cwd.mkdir()
        pods.append(subprocess.Popen([sys.executable, "-m", "cloud_entry", *args], cwd=cwd,
                                     env=pod_env(s3_env, scheduler, i), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in pods:
        out, err = proc.communicate(timeout=300)
        outputs.append(out + err)
        assert proc.returncode == 0, out + err
    for i, text in enumerate(outputs):
        assert f"{PODS} nodes" in text and f"this is node {i}" in text, text
        assert f"this node converts block {i} (ranks {2 * i}-{2 * i + 1})" in text, text
        mine = sorted(p.parent.name for p in (tmp_path / f"pod{i}" / "output" / "transformed_checkpoint"
                                              / "llama").glob("rank_*/*.ckpt"))
        assert mine == [f"rank_{2 * i}", f"rank_{2 * i + 1}"], mine    # its block, nobody else's
        assert not re.search(r"running launch command", text)
    got = tmp_path / "downloaded"
    obs_io.file.copy_parallel(f"{remote}/transformed_checkpoint/llama", str(got))
    assert (got / "conversion_manifest.json").is_file()
    synth.assert_same_checkpoint_dirs(str(got), models["ref8"])


def test_indexed_job_without_its_size_is_one_line(models, s3_env, tmp_path):
    env = pod_env(s3_env, "kubernetes", 0)
    del env["CLOUD_ENTRY_NODE_NUM"]
    proc = subprocess.run([sys.executable, "-m", "cloud_entry", f"--load_checkpoint={models['complete']}",
                           f"--dst_strategy={models['s8']}", "--auto_trans_ckpt=True", "--transform_only=True",
                           *PARALLEL8], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "JOB_COMPLETION_INDEX=0" in last and "CLOUD_ENTRY_NODE_NUM" in last, proc.stderr
    assert not (tmp_path / "output").exists()
