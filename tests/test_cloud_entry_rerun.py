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


def job_args(src: str, dst: str, out: str) -> list[str]:
    """complete -> 8 (dp2 mp2 pp2) on one node of 8 cards, 2 blocks, converted only."""
    return [f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--auto_trans_ckpt=True",
            "--npu_num_per_node=8", "--transform_process_num=2", f"--remote_save_url={out}",
            "--transform_only=True", *PARALLEL8]


def job_env(s3_env: dict[str, str], endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_"))}
    env.update(s3_env, S3_ENDPOINT=endpoint, PYTHONPATH=str(REPO))
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cloud_entry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_reruns_move_only_what_changed(models, bucket, s3_env, s3_server, tmp_path):
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    args = job_args(src, dst, f"s3://{bucket}/out")
    with FaultProxy(s3_server.endpoint) as proxy:
        env = job_env(s3_env, proxy.endpoint)

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
    env = job_env(s3_env, s3_env["S3_ENDPOINT"])
    proc = run([f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--auto_trans_ckpt=True",
                "--npu_num_per_node=8", f"--remote_save_url=s3://{bucket}/out_seq", "--overlap=False",
                "--keep_source_cache=True", "--transform_only=True", *PARALLEL8], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 downloaded while converting" in proc.stdout + proc.stderr
    assert "1/1 files" in proc.stdout + proc.stderr and "MiB/s" in proc.stdout + proc.stderr   # progress
    assert (tmp_path / "output" / "cloud_entry" / "source" / "llama" / "llama.ckpt").is_file()
    from reshard import integrity
    assert integrity.verify(f"s3://{bucket}/out_seq/transformed_checkpoint/llama").ok


def test_replicas_go_up_once_and_come_down_once(models, bucket, s3_env, s3_server, tmp_path):
    """dp2 without optimizer sharding: ranks 2, 3, 6, 7 are the same bytes as 0, 1, 4, 5. The
    job converts and uploads the four distinct files, the store copies them to the replicas'
    keys (no body from the node), the manifest lists all 8 and verifies; a fresh container
    downloads the four distinct files and links the others. Every rank is MindSpore's."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=models["params"])
    dst = upload(str(tmp_path / "s8"), f"s3://{bucket}/strategy8_dp")
    ref = synth.ms_transform(models["complete"], str(tmp_path / "ref8"), None, str(tmp_path / "s8"))
    args = job_args(src, dst, f"s3://{bucket}/out_dp")
    with FaultProxy(s3_server.endpoint) as proxy:
        env = job_env(s3_env, proxy.endpoint)
        first = run(args, env, tmp_path / "node")
        assert first.returncode == 0, first.stdout + first.stderr
        puts = [r for r in proxy.records if r.method == "PUT" and r.status < 300
                and "/out_dp/transformed_checkpoint/" in r.path and ".ckpt" in r.path]
        rank = lambda r: int(r.path.split("?")[0].rsplit("/rank_", 1)[1].split("/")[0])  # noqa: E731
        assert sorted({rank(r) for r in puts if "x-amz-copy-source" in r.headers}) == [2, 3, 6, 7]
        assert sorted({rank(r) for r in puts if "x-amz-copy-source" not in r.headers}) == [0, 1, 4, 5]
        mark = len(proxy.records)                      # a fresh container: an empty local disk
        fresh = run(args, env, tmp_path / "fresh")
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        got = [r.path for r in proxy.records[mark:] if r.method == "GET" and r.status < 300
               and "/out_dp/transformed_checkpoint/" in r.path and ".ckpt" in r.path.split("?")[0]]
        assert sorted({int(p.split("?")[0].rsplit("/rank_", 1)[1].split("/")[0]) for p in got}) == [0, 1, 4, 5]
    local = tmp_path / "fresh" / "output" / "transformed_checkpoint" / "llama"
    synth.assert_same_checkpoint_dirs(str(local), ref)
    assert os.path.samefile(local / "rank_6" / "checkpoint_6.ckpt", local / "rank_4" / "checkpoint_4.ckpt")
    synth.assert_same_checkpoint_dirs(str(tmp_path / "node" / "output" / "transformed_checkpoint" / "llama"), ref)
    from reshard import integrity
    verdict = integrity.verify(f"s3://{bucket}/out_dp/transformed_checkpoint/llama")
    assert verdict.ok and verdict.checked == 8
