"""Whole jobs: `python -m cloud_entry` as subprocesses against the real S3 server, on tiny Llama
checkpoints; every converted rank is compared with MindSpore's own conversion bit for bit, and
the launched command (tests/entry_launch_check.py) checks what it loads."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import obs_io
import synth
from platform_harness import assert_no_secret, digest_tree, upload

REPO = Path(__file__).resolve().parent.parent
CHECK = str(Path(__file__).resolve().parent / "entry_launch_check.py")
LAUNCH = ["--", sys.executable, CHECK, "{config}"]
PARALLEL8 = ["--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2"]
PARALLEL4 = ["--data_parallel=1", "--model_parallel=2", "--pipeline_stage=2"]


def entry_env(s3_env, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_NUM"))}
    env.update(s3_env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(args, env, cwd) -> subprocess.Popen:
    os.makedirs(cwd, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cloud_entry", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def run_entry(args, env, cwd) -> tuple[int, str]:
    return finish(start(args, env, cwd))


def subset(ref: str, ranks, tmp: Path) -> str:
    """The reference restricted to some ranks (one node's view)."""
    out = tmp / f"ref_subset_{'_'.join(map(str, ranks))}"
    for r in ranks:
        shutil.copytree(os.path.join(ref, f"rank_{r}"), out / f"rank_{r}")
    return str(out)


# ---------------------------------------------------------------- single node

@pytest.mark.parametrize("process_num", [1, 2])
def test_complete_to_8_ranks(models, bucket, s3_env, tmp_path, process_num):
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    remote = f"s3://{bucket}/out"
    env = entry_env(s3_env, MA_JOB_DIR=str(tmp_path), ENTRY_CHECK_REFERENCE=models["ref8"],
                    ENTRY_CHECK_RESULT=tmp_path / "check.json", ENTRY_CHECK_EXIT=7)
    args = ["--config=run_llama_7b.yaml", f"--load_checkpoint={src}", f"--dst_strategy={dst}",
            "--auto_trans_ckpt=True", f"--transform_process_num={process_num}",
            "--npu_num_per_node=8", f"--remote_save_url={remote}", "--output_dir=output",
            "--data_url=obs://x/y", *PARALLEL8, *LAUNCH]
    code, out = run_entry(args, env, tmp_path)
    assert code == 7, out                       # the launched command's exit code
    record = json.loads((tmp_path / "check.json").read_text())
    assert record["argv"] == ["--data_url=obs://x/y"]   # not ours: passed on to the training command
    assert "config transform_process_num: 2 -> 1" in out or process_num == 2
    transformed = tmp_path / "output" / "transformed_checkpoint" / "llama"
    synth.assert_same_checkpoint_dirs(str(transformed), models["ref8"])
    assert json.loads((tmp_path / "check.json").read_text())["ranks"] == list(range(8))
    names = set(obs_io.file.list_directory(remote, recursive=True))
    assert {f"transformed_checkpoint/llama/rank_{r}/checkpoint_{r}.ckpt" for r in range(8)} <= names
    leaders = [0] if process_num == 1 else [0, 4]
    assert {f"transformed_checkpoint/llama/transform_succeed_rank_{r}.txt" for r in leaders} <= names
    assert {f"strategy/ckpt_strategy_rank_{r}.ckpt" for r in range(8)} <= names
    assert "strategy/merged_ckpt_strategy.ckpt" in names
    cfg = yaml.safe_load((tmp_path / "output" / "cloud_entry" / "effective_config.yaml").read_text())
    assert cfg["load_checkpoint"] == str(transformed) and cfg["auto_trans_ckpt"] is False
    assert cfg["parallel_config"]["data_parallel"] == 2 and cfg["model"]["model_config"]["num_layers"] == 2
    assert list((tmp_path / "output" / "cloud_entry" / "log").glob("cloud_entry_node0_pid*.log"))
    assert_no_secret(tmp_path / "output")
    assert not (tmp_path / "output" / "cloud_entry" / "source" / "llama").exists()   # source copy removed
    if process_num == 1:   # a rerun finds the set of these inputs complete and still launches
        code, out = run_entry(args, env, tmp_path)
        assert code == 7, out
        assert "holds the converted set of these very inputs" in out and "not converting again" in out
        synth.assert_same_checkpoint_dirs(str(transformed), models["ref8"])


def test_safetensors_complete_to_8_ranks(models, bucket, s3_env, tmp_path):
    """load_ckpt_format=safetensors end to end: source, converted ranks (two converting
    processes), upload and the launched command's load all in .safetensors."""
    st = synth.write_complete_checkpoint(str(tmp_path / "src" / "llama.safetensors"), models["params"],
                                         fmt="safetensors")
    ref = synth.ms_transform(st, str(tmp_path / "ref8st"), None, models["s8"], fmt="safetensors")
    src = upload(st, f"s3://{bucket}/st/llama.safetensors")
    remote = f"s3://{bucket}/out_st"
    env = entry_env(s3_env, ENTRY_CHECK_REFERENCE=ref, ENTRY_CHECK_RESULT=tmp_path / "check.json")
    args = [f"--load_checkpoint={src}", f"--dst_strategy={models['s8']}", "--load_ckpt_format=safetensors",
            "--auto_trans_ckpt=True", "--transform_process_num=2", "--npu_num_per_node=8",
            f"--remote_save_url={remote}", *PARALLEL8, *LAUNCH]
    code, out = run_entry(args, env, tmp_path / "job")
    assert code == 0, out
    transformed = tmp_path / "job" / "output" / "transformed_checkpoint" / "llama"
    synth.assert_same_checkpoint_dirs(str(transformed), ref)
    assert sorted(p.name for p in transformed.rglob("*.safetensors")) == sorted(
        f"checkpoint_{r}.safetensors" for r in range(8))
    assert json.loads((tmp_path / "check.json").read_text())["ranks"] == list(range(8))
    names = set(obs_io.file.list_directory(remote, recursive=True))
    assert {f"transformed_checkpoint/llama/rank_{r}/checkpoint_{r}.safetensors" for r in range(8)} <= names


@pytest.mark.parametrize("form", ["merged", "folder"])
def test_8_to_4_ranks(models, bucket, s3_env, tmp_path, form):
    src = upload(models["ref8"], f"s3://{bucket}/models/llama8")
    src_s = upload(models["merged8"] if form == "merged" else models["s8"],
                   f"s3://{bucket}/src_strategy/" + ("merged_ckpt_strategy.ckpt" if form == "merged" else "strategy"))
    # the destination strategy: on object storage, or a local folder (read in place, copied to output/)
    dst = upload(models["s4"], f"s3://{bucket}/strategy4") if form == "merged" else models["s4"]
    before = digest_tree(models["s4"])
    env = entry_env(s3_env, ENTRY_CHECK_REFERENCE=models["ref4"])
    args = [f"--load_checkpoint={src}", f"--src_strategy_path_or_dir={src_s}", f"--dst_strategy={dst}",
            "--auto_trans_ckpt=true", "--transform_process_num=2", "--npu_num_per_node=4",
            f"--remote_save_url=s3://{bucket}/out", *PARALLEL4, *LAUNCH]
    code, out = run_entry(args, env, tmp_path)
    assert code == 0, out
    transformed = str(tmp_path / "output" / "transformed_checkpoint" / "llama8")
    synth.assert_same_checkpoint_dirs(transformed, models["ref4"])
    assert sorted(os.listdir(tmp_path / "output" / "strategy")) == sorted(
        [f"ckpt_strategy_rank_{r}.ckpt" for r in range(4)] + ["merged_ckpt_strategy.ckpt"])
    assert "strategy/merged_ckpt_strategy.ckpt" in obs_io.file.list_directory(f"s3://{bucket}/out", recursive=True)
    assert digest_tree(models["s4"]) == before
    if form == "folder":   # rerun: verified ranks reused; --transform_only stops before launching
        env["ENTRY_CHECK_EXIT"] = "9"
        code, out = run_entry(["--transform_only=True", *args], env, tmp_path)
        assert code == 0, out
        assert "not converting again" in out and "not launching" in out
        synth.assert_same_checkpoint_dirs(transformed, models["ref4"])


def test_4_to_1_for_single_card_predict(models, tmp_path, s3_env):
    """Local source and strategy (new-style jobs): read in place, never modified."""
    before = digest_tree(str(Path(models["ref4"]).parent)) | digest_tree(models["s4"])
    env = entry_env(s3_env, ENTRY_CHECK_REFERENCE=models["ref1"])
    args = [f"--load_checkpoint={models['ref4']}", f"--src_strategy_path_or_dir={models['s4']}",
            "--auto_trans_ckpt=1", "--use_parallel=False", "--run_mode=predict",
            "--npu_num_per_node=1", *LAUNCH]
    code, out = run_entry(args, env, tmp_path)
    assert code == 0, out
    synth.assert_same_checkpoint_dirs(str(tmp_path / "output" / "transformed_checkpoint" / "llama4"),
                                      models["ref1"])
    assert digest_tree(str(Path(models["ref4"]).parent)) | digest_tree(models["s4"]) == before


def test_without_conversion_only_this_nodes_shards_are_synced(models, bucket, s3_env, tmp_path):
    src = upload(models["ref8"], f"s3://{bucket}/models/llama8")
    env = entry_env(s3_env, MA_NUM_HOSTS=2, VC_TASK_INDEX=1, ENTRY_CHECK_PREFIX="checkpoint_",
                    ENTRY_CHECK_REFERENCE=models["ref8"])
    code, out = run_entry([f"--load_checkpoint={src}", "--auto_trans_ckpt=False",
                           "--npu_num_per_node=4", *LAUNCH], env, tmp_path)
    assert code == 0, out
    local = tmp_path / "output" / "cloud_entry" / "checkpoint" / "llama8"
    assert sorted(p.name for p in local.iterdir()) == [f"rank_{r}" for r in range(4, 8)]


@pytest.mark.parametrize("args, culprit", [
    (["--transform_process_num=3"], "transform_process_num=3 does not divide the world size 8"),
    (["--auto_trans_ckpt=ture"], "--auto_trans_ckpt='ture'"),
    (["--src_strategy_path_or_dir="], "8 rank folders need src_strategy_path_or_dir"),
    (["--dst_strategy=/no/such/strategy"], "--dst_strategy=/no/such/strategy: not found"),
    (["--config=missing.yaml"], "--config=missing.yaml"),
    (["--load_checkpoint=obs://"], "load_checkpoint=obs://:"),
])
def test_bad_input_one_line_exit_2_nothing_written(models, s3_env, tmp_path, args, culprit):
    base = [f"--load_checkpoint={models['ref8']}", f"--src_strategy_path_or_dir={models['s8']}",
            f"--dst_strategy={models['s4']}", "--auto_trans_ckpt=True", "--npu_num_per_node=8", *PARALLEL8]
    code, out = run_entry(base + args + LAUNCH, entry_env(s3_env), tmp_path / "job")
    err = [line for line in out.splitlines() if "error" in line.lower()]
    assert code == 2, out
    assert len(err) == 1 and culprit in err[0] and "Traceback" not in out, out
    assert os.listdir(tmp_path / "job") == []


def test_source_strategy_inside_our_strategy_output_is_refused(models, s3_env, tmp_path):
    """SPEC case 2 rerun in the same output_dir: the 8-rank job's output/strategy is the source
    strategy now; the entry must not write, merge or upload into it."""
    job = tmp_path / "job"
    shutil.copytree(models["s8"], job / "output" / "strategy")
    before = digest_tree(str(job))
    args = [f"--load_checkpoint={models['ref8']}", "--src_strategy_path_or_dir=output/strategy",
            f"--dst_strategy={models['s4']}", "--auto_trans_ckpt=True", "--npu_num_per_node=4",
            *PARALLEL4, *LAUNCH]
    code, out = run_entry(args, entry_env(s3_env), job)
    assert code == 2, out
    err = [x for x in out.splitlines() if x.startswith("cloud-entry: error")]
    assert len(err) == 1 and "src_strategy_path_or_dir=output/strategy overlaps the strategy output folder" in err[0], out
    assert digest_tree(str(job)) == before


# ---------------------------------------------------------------- two nodes

def write_rank_table(path: Path, ips: list[str], cards: int) -> str:
    """An HCCL rank table as Ascend jobs get it (RANK_TABLE_FILE), ranks numbered across servers."""
    servers = [{"server_id": ip, "container_ip": ip,
                "device": [{"device_id": str(d), "device_ip": f"192.168.{n}.{d}", "rank_id": str(n * cards + d)}
                           for d in range(cards)]} for n, ip in enumerate(ips)]
    path.write_text(json.dumps({"version": "1.0", "server_count": str(len(ips)), "server_list": servers,
                                "status": "completed"}))
    return str(path)


def start_two_nodes(models, bucket, s3_env, tmp_path, extra=(), timeout=120, shared=False, job=None,
                    rank_table=False):
    """Two entry processes (nodes 0 and 1) that share only the S3 server, or a shared disk.
    job = (conversion arguments, cards per node, reference); by default complete -> 8 ranks
    (dp2 mp2 pp2) on 2 x 4 cards. rank_table: the topology comes from a RANK_TABLE_FILE and
    each node's MA_CURRENT_IP instead of MA_NUM_HOSTS / VC_TASK_INDEX / MA_NUM_GPUS."""
    if job is None:
        src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
        dst = upload(models["s8"], f"s3://{bucket}/strategy8")
        job = ([f"--load_checkpoint={src}", f"--dst_strategy={dst}", "--transform_process_num=1",
                *PARALLEL8], 4, models["ref8"])
    conversion, cards, reference = job
    procs = []
    ips = ["10.0.0.11", "10.0.0.12"]
    table = write_rank_table(tmp_path / "rank_table.json", ips, cards) if rank_table else None
    for node in (0, 1):
        topology = (dict(RANK_TABLE_FILE=table, MA_CURRENT_IP=ips[node]) if rank_table
                    else dict(MA_NUM_HOSTS=2, VC_TASK_INDEX=node, MA_NUM_GPUS=cards))
        env = entry_env(s3_env, **topology, CLOUD_ENTRY_RUN_ID=f"run-{tmp_path.name}",
                        ENTRY_CHECK_REFERENCE=reference)
        args = [*conversion, "--auto_trans_ckpt=True", f"--transform_timeout={timeout}", *extra]
        if shared:
            args.append(f"--shared_dir={tmp_path / 'shared'}")
        else:
            args.append(f"--remote_save_url=s3://{bucket}/out")
        procs.append(start(args + LAUNCH, env, tmp_path / f"node{node}"))
    return procs


def two_nodes(*args, **kwargs):
    return [finish(p) for p in start_two_nodes(*args, **kwargs)]


def test_two_nodes_without_shared_disk(models, bucket, s3_env, tmp_path):
    # a failure marker of an older run must not stop this one
    obs_io.file.write(f"s3://{bucket}/out/transformed_checkpoint/llama/transform_failed_rank_4.txt",
                      "run_id older\nold failure")
    (c0, o0), (c1, o1) = two_nodes(models, bucket, s3_env, tmp_path)
    assert (c0, c1) == (0, 0), o0 + o1
    assert "transform_process_num=1 is less than the node count 2" in o0
    for node, ranks in ((0, range(4)), (1, range(4, 8))):
        local = tmp_path / f"node{node}" / "output" / "transformed_checkpoint" / "llama"
        synth.assert_same_checkpoint_dirs(str(local), subset(models["ref8"], ranks, tmp_path))
    remote = f"s3://{bucket}/out/transformed_checkpoint/llama"
    got = tmp_path / "from_remote"
    obs_io.file.copy_parallel(remote, str(got))
    synth.assert_same_checkpoint_dirs(str(got), models["ref8"])
    assert_no_secret(tmp_path)


def test_two_nodes_from_a_rank_table(models, bucket, s3_env, tmp_path):
    """Topology from RANK_TABLE_FILE, each node found by its IP: one block per node, each node
    ends with all 8 ranks' shards it needs (its own converted, the others downloaded)."""
    (c0, o0), (c1, o1) = two_nodes(models, bucket, s3_env, tmp_path, extra=["--transform_process_num=2"],
                                   rank_table=True)
    assert (c0, c1) == (0, 0), o0 + o1
    assert "node 0 of 2, 4 cards, ranks 0-3" in o0, o0
    assert "node 1 of 2, 4 cards, ranks 4-7" in o1, o1
    for node, ranks in ((0, range(4)), (1, range(4, 8))):
        local = tmp_path / f"node{node}" / "output" / "transformed_checkpoint" / "llama"
        for r in ranks:
            assert (local / f"rank_{r}" / f"checkpoint_{r}.ckpt").is_file(), (node, r)
    got = tmp_path / "from_remote"
    obs_io.file.copy_parallel(f"s3://{bucket}/out/transformed_checkpoint/llama", str(got))
    synth.assert_same_checkpoint_dirs(str(got), models["ref8"])


def test_two_nodes_one_block_fails(models, bucket, s3_env, tmp_path):
    """8 -> 4 on two nodes x 2 cards; the shards only node 1's block reads are corrupt on the
    object store: its leader publishes a failure marker and both nodes stop with its error."""
    src = upload(models["ref8"], f"s3://{bucket}/models/llama8")
    for r in range(4, 8):   # stage 1 of the source: read by destination ranks 2-3 only
        obs_io.file.write(f"s3://{bucket}/models/llama8/rank_{r}/checkpoint_{r}.ckpt",
                          b"\x0a\xff\xff\xff\xff\x0f not a checkpoint", binary=True)
    job = ([f"--load_checkpoint={src}", f"--src_strategy_path_or_dir={models['merged8']}",
            f"--dst_strategy={models['s4']}", *PARALLEL4], 2, models["ref4"])
    t0 = time.monotonic()
    (c0, o0), (c1, o1) = two_nodes(models, bucket, s3_env, tmp_path, timeout=90, job=job)
    assert time.monotonic() - t0 < 90
    lines = [[x for x in out.splitlines() if x.startswith("cloud-entry: error")] for out in (o0, o1)]
    for code, out, got in ((c0, o0, lines[0]), (c1, o1, lines[1])):  # leader and waiter alike
        assert code == 2, out
        assert len(got) == 1 and got[0].startswith("cloud-entry: error: block led by rank 2 failed: "), out
        assert "checkpoint_" in got[0] and "rank_" in got[0], got   # names the corrupt file
    assert lines[0] == lines[1]
    assert "Traceback" not in o0 + o1
    marker = f"s3://{bucket}/out/transformed_checkpoint/llama8/transform_failed_rank_2.txt"
    assert obs_io.file.exists(marker)


def test_two_nodes_leader_killed_waiter_times_out(models, bucket, s3_env, tmp_path):
    """Node 1's entry is killed (SIGKILL, as a lost machine): it never publishes a marker, and
    node 0 stops at the bound naming the block leader it waited for."""
    procs = start_two_nodes(models, bucket, s3_env, tmp_path, timeout=6)
    procs[1].kill()
    (c0, o0), (c1, _) = [finish(p) for p in procs]
    assert c1 == -9
    assert c0 == 2, o0
    assert "timed out after 6s waiting for block markers: no marker from the block leader rank(s) 4" in o0
    assert not obs_io.file.exists(f"s3://{bucket}/out/transformed_checkpoint/llama/transform_succeed_rank_4.txt")


def test_two_nodes_with_shared_disk(models, bucket, s3_env, tmp_path):
    (c0, o0), (c1, o1) = two_nodes(models, bucket, s3_env, tmp_path, shared=True,
                                   extra=["--transform_process_num=2"])
    assert (c0, c1) == (0, 0), o0 + o1
    shared = tmp_path / "shared" / "transformed_checkpoint" / "llama"
    synth.assert_same_checkpoint_dirs(str(shared), models["ref8"])
    assert sorted(p.name for p in shared.glob("*.txt")) == ["transform_succeed_rank_0.txt",
                                                            "transform_succeed_rank_4.txt"]
    for node in (0, 1):   # nothing copied between nodes: the launch loads from the shared disk
        assert not (tmp_path / f"node{node}" / "output" / "transformed_checkpoint").exists()


def strategy_pass_two_nodes(models, bucket, s3_env, tmp_path, env1=()):
    """complete -> 8 ranks on two nodes of 4 cards, the destination strategy from a strategy pass."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    procs = []
    for node in (0, 1):
        env = entry_env(s3_env, MA_NUM_HOSTS=2, VC_TASK_INDEX=node, MA_NUM_GPUS=4,
                        CLOUD_ENTRY_RUN_ID=f"run-{tmp_path.name}", ENTRY_CHECK_REFERENCE=models["ref8pass"],
                        **dict(env1 if node == 1 else ()))
        args = [f"--load_checkpoint={src}", "--auto_trans_ckpt=True", "--transform_timeout=120",
                f"--remote_save_url=s3://{bucket}/out", "--model.model_config.num_layers=2",
                *PARALLEL8, *LAUNCH]
        procs.append(start(args, env, tmp_path / f"node{node}"))
    return [finish(p) for p in procs]


def test_strategy_pass_fails_on_one_node_both_stop(models, bucket, s3_env, tmp_path):
    t0 = time.monotonic()
    (c0, o0), (c1, o1) = strategy_pass_two_nodes(models, bucket, s3_env, tmp_path,
                                                 env1={"ENTRY_CHECK_PASS_EXIT": "1"})
    assert time.monotonic() - t0 < 100    # well before the 120 s bound
    assert (c0, c1) == (2, 2), o0 + o1
    own = "strategy pass: the launch command exited with 3"
    assert [x for x in o1.splitlines() if x.startswith("cloud-entry: error")] == [
        f"cloud-entry: error: block led by rank 4 failed: {own} (config {tmp_path / 'node1' / 'output' / 'cloud_entry' / 'strategy_pass_config.yaml'} "
        "has only_save_strategy: True)"], o1
    err0 = [x for x in o0.splitlines() if x.startswith("cloud-entry: error")]
    assert len(err0) == 1 and err0[0].startswith(f"cloud-entry: error: strategy pass failed on node 1: {own}"), o0


def test_strategy_pass_on_two_nodes(models, bucket, s3_env, tmp_path):
    obs_io.file.write(f"s3://{bucket}/out/strategy/ckpt_strategy_rank_12.ckpt", "stale, of an older job")
    (c0, o0), (c1, o1) = strategy_pass_two_nodes(models, bucket, s3_env, tmp_path)
    assert (c0, c1) == (0, 0), o0 + o1
    assert "strategy pass wrote ranks [0, 1, 2, 3]" in o0 and "strategy pass wrote ranks [4, 5, 6, 7]" in o1
    for node, ranks in ((0, range(4)), (1, range(4, 8))):
        out = tmp_path / f"node{node}" / "output"
        assert sorted(p.name for p in (out / "strategy").iterdir()) == sorted(
            [f"ckpt_strategy_rank_{r}.ckpt" for r in range(8)] + ["merged_ckpt_strategy.ckpt"])
        synth.assert_same_checkpoint_dirs(str(out / "transformed_checkpoint" / "llama"),
                                          subset(models["ref8pass"], ranks, tmp_path))
