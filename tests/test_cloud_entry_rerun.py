"""Reruns move only what changed, counted on the server (every request through a recording
proxy): a rerun of a finished job uploads no converted rank and reads no source object; one in a
fresh container (an empty local disk) downloads only its ranks. And the phases overlap or not
(--overlap) with the same bytes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import synth
from faultproxy import FaultProxy
from platform_harness import upload

REPO = Path(__file__).resolve().parent.parent
PARALLEL8 = ["--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cloud_entry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_reruns_move_only_what_changed(models, bucket, s3_env, s3_server, tmp_path):
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    args = [f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--auto_trans_ckpt=True",
            "--npu_num_per_node=8", "--transform_process_num=2", f"--remote_save_url=s3://{bucket}/out",
            "--transform_only=True", *PARALLEL8]
    with FaultProxy(s3_server.endpoint) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_"))}
        env.update(s3_env, S3_ENDPOINT=proxy.endpoint, PYTHONPATH=str(REPO))

        def requests(since: int, method: str, part: str) -> list[str]:
            return [r.path for r in proxy.records[since:] if r.method == method and part in r.path.split("?")[0]
                    and r.status < 300]

        first = run(args, env, tmp_path / "node")
        assert first.returncode == 0, first.stdout + first.stderr
        assert len(requests(0, "GET", "/models/llama.ckpt")) >= 1
        assert len([p for p in requests(0, "PUT", "/out/transformed_checkpoint/") if ".ckpt" in p]) >= 8
        assert not (tmp_path / "node" / "output" / "cloud_entry" / "source" / "llama").exists()

        mark = len(proxy.records)                      # the same node again
        again = run(args, env, tmp_path / "node")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "not converting again" in again.stdout + again.stderr
        assert requests(mark, "GET", "/models/llama.ckpt") == []
        assert [p for p in requests(mark, "PUT", "/out/transformed_checkpoint/") if p.endswith(".ckpt")] == []
        assert [p for p in requests(mark, "GET", "/out/transformed_checkpoint/") if ".ckpt" in p] == []

        mark = len(proxy.records)                      # a fresh container: an empty local disk
        fresh = run(args, env, tmp_path / "fresh")
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert requests(mark, "GET", "/models/llama.ckpt") == []
        assert [p for p in requests(mark, "PUT", "/out/transformed_checkpoint/") if p.endswith(".ckpt")] == []
        got = [p for p in requests(mark, "GET", "/out/transformed_checkpoint/") if ".ckpt" in p]
        assert len(got) == 8, got
    synth.assert_same_checkpoint_dirs(str(tmp_path / "fresh" / "output" / "transformed_checkpoint" / "llama"),
                                      models["ref8"])


def test_without_overlap_and_keeping_the_source_copy(models, bucket, s3_env, tmp_path):
    """dp2 without optimizer sharding: every weight is read twice, so the file is downloaded,
    not read in place; converted without overlap; --keep_source_cache keeps the downloaded
    copy."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=models["params"])
    dst = upload(str(tmp_path / "s8"), f"s3://{bucket}/strategy8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_"))}
    env.update(s3_env, PYTHONPATH=str(REPO))
    proc = run([f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--auto_trans_ckpt=True",
                "--npu_num_per_node=8", f"--remote_save_url=s3://{bucket}/out_seq", "--overlap=False",
                "--keep_source_cache=True", "--transform_only=True", *PARALLEL8], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 downloaded while converting" in proc.stdout + proc.stderr
    assert "1/1 files" in proc.stdout + proc.stderr and "MiB/s" in proc.stdout + proc.stderr   # progress
    assert (tmp_path / "output" / "cloud_entry" / "source" / "llama" / "llama.ckpt").is_file()
    from reshard import integrity
    assert integrity.verify(f"s3://{bucket}/out_seq/transformed_checkpoint/llama").ok
