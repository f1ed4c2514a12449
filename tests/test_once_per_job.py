"""Strategies fetched once and the plan built once per job, through both tools (issue 22: both
call the one orchestrator, reshard.run). Counted where it happens: every request through a
recording proxy in front of the S3 server (GETs of each strategy object), and the engine's
planning steps counted by a driver that wraps them (reshard.run.prepare, the full plan, and
reshard.run.plan_from_strategies, the skeleton) before it calls the tool's main()."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import synth
from faultproxy import FaultProxy
from platform_harness import upload

REPO = Path(__file__).resolve().parent.parent
PARALLEL4 = ["--data_parallel=1", "--model_parallel=2", "--pipeline_stage=2"]

# The tool's own main(), with the engine's two planning steps counted (one line each in
# sys.argv[1]); sys.argv[2]: "cloud_entry" or "reshard", the rest its arguments.
DRIVER = textwrap.dedent("""\
    import sys
    import reshard.run as run

    def counted(name, real):
        def wrapper(*args, **kwargs):
            with open(sys.argv[1], "a") as f:
                f.write(name + "\\n")
            return real(*args, **kwargs)
        return wrapper

    if __name__ == "__main__":   # not again in the spawned workers
        run.prepare = counted("prepare", run.prepare)
        run.plan_from_strategies = counted("skeleton", run.plan_from_strategies)
        if sys.argv[2] == "cloud_entry":
            from cloud_entry.__main__ import main
        else:
            from reshard.cli import main
        sys.exit(main(sys.argv[3:]))
    """)



def _env(s3_env: dict[str, str], endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_NUM"))}
    env.update(s3_env, S3_ENDPOINT=endpoint, PYTHONPATH=str(REPO))
    return env


def _run(tool: str, args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[list[str], str]:
    """(the planning steps counted, the output) of one run of `tool`, which must succeed."""
    driver, counts, cwd = tmp_path / "driver.py", tmp_path / f"counts_{tool}", tmp_path / f"cwd_{tool}"
    driver.write_text(DRIVER)
    cwd.mkdir()
    proc = subprocess.run([sys.executable, str(driver), str(counts), tool, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return counts.read_text().split(), proc.stdout + proc.stderr


def _inputs(models, bucket: str) -> str:
    """The 8-rank source and both strategy folders on the store; the source's URL."""
    upload(models["s8"], f"s3://{bucket}/src_s")
    upload(models["s4"], f"s3://{bucket}/dst_s")
    return upload(models["ref8"], f"s3://{bucket}/models/llama8")


def _run_counted(tool: str, args: list[str], models, bucket: str, s3_env, s3_server, tmp_path: Path) -> None:
    """Runs `tool` through the recording proxy; each strategy object GET once, and the full
    plan and its skeleton built once."""
    with FaultProxy(s3_server.endpoint) as proxy:
        steps, out = _run(tool, args, _env(s3_env, proxy.endpoint), tmp_path)
    gets: dict[str, int] = {}   # object key -> successful GETs of it, under the strategy folders
    for r in proxy.records:
        key = r.path.split("?")[0].removeprefix(f"/{bucket}/")
        if r.method == "GET" and r.status < 300 and key.startswith(("src_s/", "dst_s/")):
            gets[key] = gets.get(key, 0) + 1
    expected = {f"src_s/{n}" for n in os.listdir(models["s8"])} | {f"dst_s/{n}" for n in os.listdir(models["s4"])}
    assert set(gets) == expected, out
    assert all(n == 1 for n in gets.values()), gets
    assert steps.count("prepare") == 1 and steps.count("skeleton") == 1, steps


def test_cloud_entry_fetches_each_strategy_once_and_plans_once(models, bucket, s3_env, s3_server, tmp_path):
    """8 -> 4 ranks (two blocks on one node), both strategies folders on the store: each of
    their objects is read once (parsed in the job's plan, the same copy placed in output/ and
    used by the conversion), the full plan is made once (in the job's plan, before anything is
    written) and so is its skeleton; every rank is MindSpore's."""
    src = _inputs(models, bucket)
    args = [f"--load_checkpoint={src}", f"--src_strategy_path_or_dir=s3://{bucket}/src_s",
            f"--dst_strategy=s3://{bucket}/dst_s", "--auto_trans_ckpt=True", "--transform_process_num=2",
            "--npu_num_per_node=4", f"--remote_save_url=s3://{bucket}/out", "--transform_only=True",
            *PARALLEL4]
    _run_counted("cloud_entry", args, models, bucket, s3_env, s3_server, tmp_path)
    synth.assert_same_checkpoint_dirs(str(tmp_path / "cwd_cloud_entry" / "output" / "transformed_checkpoint"
                                          / "llama8"), models["ref4"])


def test_transform_checkpoint_fetches_each_strategy_once_and_plans_once(models, bucket, s3_env, s3_server,
                                                                        tmp_path):
    """The offline tool, the same source and strategies on the store: each strategy object
    read once, the plan made once (the command's checks, then its execution by reshard.run)."""
    src = _inputs(models, bucket)
    out = tmp_path / "out4"
    args = ["--src_checkpoint", src, "--src_strategy", f"s3://{bucket}/src_s", "--dst_strategy",
            f"s3://{bucket}/dst_s", "--dst_checkpoint", str(out), "--process_num", "2"]
    _run_counted("reshard", args, models, bucket, s3_env, s3_server, tmp_path)
    synth.assert_same_checkpoint_dirs(str(out), models["ref4"])
