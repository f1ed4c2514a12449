"""Whole jobs started the way the platform starts them (tests/platform_harness.py): the user's
boot command with the training-job form's hyperparameters appended at the END, per-node (and
per-card) environments, node-local folders and no shared disk, SIGTERM to stop. The three
documented scenarios, each compared with MindSpore's own conversion bit for bit, and each point
of the platform contract."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import yaml

import obs_io
import synth
from faultproxy import FaultProxy
from platform_harness import ModelArtsJob, assert_no_secret, digest_tree, upload


def listing(url: str) -> set[str]:
    try:
        return {e.name for e in obs_io.file.list_entries(url, recursive=True) if e.is_file()}
    except FileNotFoundError:
        return set()


def checks(root: Path) -> dict[str, dict]:
    """What each launched training command recorded (entry_launch_check.py), by its id."""
    return {p.name[len("check_"):-len(".json")]: json.loads(p.read_text()) for p in root.glob("check_*.json")}


def assert_ok(results) -> None:
    for r in results:
        assert r.code == 0, f"node {r.node} card {r.card}:\n{r.output}"
        assert "Traceback" not in r.output, r.output


# ---------------------------------------------------------------- the documented scenarios

def test_scenario1_complete_to_8_ranks_on_two_nodes(models, bucket, s3_env, tmp_path):
    """SPEC case 1 and 4 on ModelArts: complete -> 8 (dp2 mp2 pp2) with transform_process_num=2
    on two nodes x 4 cards that share only the object store and have different local folders.
    The form's hyperparameters come after the training command, as ModelArts appends them."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    dst = upload(models["s8"], f"s3://{bucket}/strategy8")
    remote = f"s3://{bucket}/out"
    form = {"config": "run_llama_7b.yaml", "load_checkpoint": src, "dst_strategy": dst,
            "auto_trans_ckpt": "True", "transform_process_num": "2", "data_parallel": "2",
            "model_parallel": "2", "pipeline_stage": "2", "remote_save_url": remote,
            "data_url": f"s3://{bucket}/dataset", "epochs": "3", "model.model_config.num_layers": "2"}
    job = ModelArtsJob(tmp_path, s3_env, form, nodes=2, cards=4,
                       env={"ENTRY_CHECK_REFERENCE": models["ref8"],
                            "ENTRY_CHECK_RESULT": str(tmp_path / "check_{id}.json")})
    assert job.command()[-1] == "--model.model_config.num_layers=2"   # appended at the end
    results = job.run()
    assert_ok(results)
    got = checks(tmp_path)
    assert got["node0"]["ranks"] == [0, 1, 2, 3] and got["node4"]["ranks"] == [4, 5, 6, 7]
    for record in got.values():   # not ours: passed on; ours: consumed, never passed stale
        assert "--epochs=3" in record["argv"] and f"--data_url=s3://{bucket}/dataset" in record["argv"]
        assert not any(a.startswith(("--load_checkpoint", "--auto_trans_ckpt", "--dst_strategy", "--model."))
                       for a in record["argv"]), record["argv"]
    for r in results:
        assert "topology: 2 nodes [MA_NUM_HOSTS=2" in r.output and f"VC_TASK_INDEX={r.node}" in r.output
        # each node's block reads its quarter of the source twice at most: in place, no download
        assert "source files: 1 read in place by ranged GETs" in r.output
    names = listing(remote)
    assert {f"transformed_checkpoint/llama/rank_{r}/checkpoint_{r}.ckpt" for r in range(8)} <= names
    assert {"transformed_checkpoint/llama/transform_succeed_rank_0.txt",
            "transformed_checkpoint/llama/transform_succeed_rank_4.txt"} <= names
    for node in (0, 1):   # every node's logs reach the object store: the container's disk goes
        logs = [n for n in names if n.startswith(f"logs/node_{node}/")]
        assert any("cloud_entry_node" in n for n in logs), sorted(names)
    fetched = tmp_path / "fetched"
    obs_io.file.copy_parallel(f"{remote}/transformed_checkpoint/llama", str(fetched))
    synth.assert_same_checkpoint_dirs(str(fetched), models["ref8"])
    assert_no_secret(tmp_path)
    # the set's integrity manifest, composed from both blocks' markers, on OBS and on each node
    from reshard import integrity
    verdict = integrity.verify(f"{remote}/transformed_checkpoint/llama")
    assert verdict.ok and verdict.checked == 8, verdict.lines()
    for node in (0, 1):
        local = integrity.read(str(tmp_path / f"node{node}" / "output" / "transformed_checkpoint" / "llama"))
        assert local.files == verdict_files(remote)


def verdict_files(remote: str):
    from reshard import integrity
    return integrity.read(f"{remote}/transformed_checkpoint/llama").files


def _scenario2(models, bucket, s3_env, root: Path, remote: str, per_card: bool):
    src = f"s3://{bucket}/models/llama8"
    form = {"load_checkpoint": src, "src_strategy_path_or_dir": f"s3://{bucket}/strategy8/merged_ckpt_strategy.ckpt",
            "dst_strategy": f"s3://{bucket}/strategy4", "auto_trans_ckpt": "true",
            "transform_process_num": "2", "data_parallel": "1", "model_parallel": "2",
            "pipeline_stage": "2", "remote_save_url": remote}
    job = ModelArtsJob(root, s3_env, form, nodes=1, cards=4, per_card=per_card, topology="rank_table_groups",
                       env={"ENTRY_CHECK_REFERENCE": models["ref4"],
                            "ENTRY_CHECK_RESULT": str(root / "check_{id}.json")})
    return job.run()


def test_scenario2_8_to_4_ranks_once_per_card_equals_once_per_node(models, bucket, s3_env, tmp_path):
    """SPEC case 2: those 8 ranks -> 4 (dp1 mp2 pp2), transform_process_num=2, on a node whose
    boot command runs once per card (RANK_ID/DEVICE_ID/LOCAL_RANK per process, topology from a
    group_list rank table): one process leads, the others wait, every card launches its training,
    and outputs and markers are those of a run with one boot process per node."""
    upload(models["ref8"], f"s3://{bucket}/models/llama8")
    upload(models["merged8"], f"s3://{bucket}/strategy8/merged_ckpt_strategy.ckpt")
    upload(models["s4"], f"s3://{bucket}/strategy4")
    per_node = _scenario2(models, bucket, s3_env, tmp_path / "per_node", f"s3://{bucket}/out_node", False)
    per_card = _scenario2(models, bucket, s3_env, tmp_path / "per_card", f"s3://{bucket}/out_card", True)
    assert_ok(per_node + per_card)
    assert len(per_card) == 4
    leads = [r for r in per_card if "leads this node's sync and conversion" in r.output]
    assert len(leads) == 1, [r.output for r in per_card]
    assert sorted(checks(tmp_path / "per_card")) == ["0", "1", "2", "3"]     # each card its own rank
    assert {k: v["ranks"] for k, v in checks(tmp_path / "per_card").items()} == {str(r): [r] for r in range(4)}
    for root in ("per_node", "per_card"):
        synth.assert_same_checkpoint_dirs(str(tmp_path / root / "node0" / "output" / "transformed_checkpoint"
                                              / "llama8"), models["ref4"])

    def outputs(remote):
        return {n: hashlib.sha256(obs_io.file.read(f"{remote}/{n}", binary=True)).hexdigest()
                for n in listing(remote) if not n.startswith("logs/") and not n.endswith((".txt", ".json"))}
    assert outputs(f"s3://{bucket}/out_card") == outputs(f"s3://{bucket}/out_node")
    from reshard import integrity   # the manifests list the same files (their run ids differ: other URLs)
    manifests = [integrity.read(f"s3://{bucket}/{o}/transformed_checkpoint/llama8") for o in ("out_card", "out_node")]
    assert manifests[0].files == manifests[1].files and len(manifests[0].files) == 4
    markers = {n for n in listing(f"s3://{bucket}/out_card") if n.endswith(".txt")}
    assert markers == {n for n in listing(f"s3://{bucket}/out_node") if n.endswith(".txt")} == {
        "transformed_checkpoint/llama8/transform_succeed_rank_0.txt",
        "transformed_checkpoint/llama8/transform_succeed_rank_2.txt"}
    local_markers = sorted(p.name for p in (tmp_path / "per_card").rglob("transform_*_rank_*.txt"))
    assert local_markers == []     # markers live on the store (remote_save_url), not beside the load


def test_scenario3_4_to_1_single_card_predict_from_a_checkpoint_section_config(models, bucket, s3_env, tmp_path):
    """SPEC case 3 with a newer MindFormers config: `checkpoint.load_path` names the source (the
    top-level load_checkpoint is ignored by MindFormers then) and the run config inherits through
    base_config. The launched predict must load the converted checkpoint from where that config
    form says. msrun-style topology (MS_* variables), a single card."""
    src = upload(models["ref4"], f"s3://{bucket}/models/llama4")
    strategy = upload(models["s4"], f"s3://{bucket}/strategy4")
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump({
        "run_mode": "train", "use_parallel": True, "load_checkpoint": "/stale/ckpt",
        "model": {"model_config": {"num_layers": 2}}, "parallel_config": {"data_parallel": 1}}))
    (folder / "predict.yaml").write_text(yaml.safe_dump({
        "base_config": "base.yaml", "checkpoint": {"load_path": src, "load_ckpt_format": "ckpt"}}))
    form = {"config": str(folder / "predict.yaml"), "src_strategy_path_or_dir": strategy,
            "auto_trans_ckpt": "True", "use_parallel": "False", "run_mode": "predict"}
    job = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=1, topology="msrun",
                       env={"ENTRY_CHECK_REFERENCE": models["ref1"],
                            "ENTRY_CHECK_RESULT": str(tmp_path / "check_{id}.json")})
    results = job.run()
    assert_ok(results)
    record = checks(tmp_path)["node0"]
    converted = tmp_path / "node0" / "output" / "transformed_checkpoint" / "llama4"
    # single card: the file (MindFormers refuses a folder of rank_* with use_parallel: False)
    assert record["load_path"] == str(converted / "rank_0" / "checkpoint_0.ckpt") and record["ranks"] == [0]
    synth.assert_same_checkpoint_dirs(str(converted), models["ref1"])
    effective = yaml.safe_load(Path(record["config"]).read_text())
    assert "base_config" not in effective and effective["model"]["model_config"]["num_layers"] == 2
    assert effective["checkpoint"]["load_path"] == effective["load_checkpoint"] == record["load_path"]
    assert effective["src_strategy_path_or_dir"] != strategy            # local, never the stale URL
    assert "topology: 1 node" in results[0].output and "MS_WORKER_NUM=1" in results[0].output


# ---------------------------------------------------------------- the platform contract, point by point

def test_a_typo_of_a_hyperparameter_is_an_error_not_a_silent_skip(models, s3_env, tmp_path):
    form = {"load_checkpoint": models["ref8"], "src_strategy_path_or_dir": models["s8"],
            "dst_strategy": models["s4"], "auto_trans_ckp": "True"}
    results = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=4).run()
    assert results[0].code == 2, results[0].output
    assert len(results[0].errors()) == 1 and results[0].errors()[0].startswith(
        "cloud-entry: error: unknown argument --auto_trans_ckp: did you mean --auto_trans_ckpt?")
    assert "Traceback" not in results[0].output
    assert os.listdir(tmp_path / "node0") == []


def test_a_node_not_in_the_rank_table_is_an_error_naming_both(models, s3_env, tmp_path):
    form = {"load_checkpoint": models["ref8"], "src_strategy_path_or_dir": models["s8"],
            "dst_strategy": models["s4"], "auto_trans_ckpt": "True"}
    job = ModelArtsJob(tmp_path, s3_env, form, nodes=2, cards=2, topology="rank_table",
                       node_env={1: {"MA_CURRENT_IP": "10.9.9.9"}})
    results = job.run()
    assert results[1].code == 2, results[1].output
    assert len(results[1].errors()) == 1 and "10.9.9.9" in results[1].errors()[0] \
        and "10.0.0.2" in results[1].errors()[0], results[1].output
    assert os.listdir(tmp_path / "node1") == []


def test_a_failure_fetching_the_destination_strategy_stops_every_node(models, bucket, s3_env, tmp_path):
    """8 -> 4 on two nodes x 2 cards; node 1's link refuses the destination strategy's objects (its
    listing still works, so the plan passes): node 1's block fails in the conversion phase, its
    failure marker stops node 0 with that error long before the wait's bound."""
    src = upload(models["ref8"], f"s3://{bucket}/models/llama8")
    dst = upload(models["s4"], f"s3://{bucket}/strategy4")
    form = {"load_checkpoint": src, "src_strategy_path_or_dir": models["merged8"], "dst_strategy": dst,
            "auto_trans_ckpt": "True", "data_parallel": "1", "model_parallel": "2", "pipeline_stage": "2",
            "remote_save_url": f"s3://{bucket}/out", "transform_timeout": "150"}
    with FaultProxy(s3_env["S3_ENDPOINT"]) as proxy:
        proxy.rules.append(lambda method, path: (403, "AccessDenied")
                           if method == "GET" and "/strategy4/" in path.split("?")[0] else None)
        job = ModelArtsJob(tmp_path, s3_env, form, nodes=2, cards=2,
                           node_env={1: {"S3_ENDPOINT": proxy.endpoint}})
        t0 = time.monotonic()
        results = job.run(timeout=150)
    assert time.monotonic() - t0 < 100
    for r in results:
        assert r.code == 2, r.output
        assert len(r.errors()) == 1 and "block led by rank 2 failed" in r.errors()[0], r.output
        assert "strategy4" in r.errors()[0], r.output
    assert obs_io.file.exists(f"s3://{bucket}/out/transformed_checkpoint/llama8/transform_failed_rank_2.txt")


def test_a_reused_output_folder_holds_only_this_runs_files(models, bucket, s3_env, tmp_path):
    """An earlier 8-rank run with another prefix left rank_0..7/zz_<r>.ckpt in the same local
    output folder and under remote_save_url: after 8 -> 4 only rank_0..3/checkpoint_<r>.ckpt
    remain in both places (the launched load checks each rank folder holds its one file)."""
    src = upload(models["ref8"], f"s3://{bucket}/models/llama8")
    remote = f"s3://{bucket}/out"
    local = tmp_path / "node0" / "output" / "transformed_checkpoint" / "llama8"
    for r in range(8):
        (local / f"rank_{r}").mkdir(parents=True)
        (local / f"rank_{r}" / f"zz_{r}.ckpt").write_bytes(b"old weights")
        obs_io.file.write(f"{remote}/transformed_checkpoint/llama8/rank_{r}/zz_{r}.ckpt", "old weights")
        obs_io.file.write(f"{remote}/strategy/ckpt_strategy_rank_{r}.ckpt", "an 8-rank run's strategy")
    before = digest_tree(models["ref8"])
    form = {"load_checkpoint": src, "src_strategy_path_or_dir": models["merged8"], "dst_strategy": models["s4"],
            "auto_trans_ckpt": "True", "data_parallel": "1", "model_parallel": "2", "pipeline_stage": "2",
            "remote_save_url": remote}
    results = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=4,
                           env={"ENTRY_CHECK_REFERENCE": models["ref4"]}).run()
    assert_ok(results)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*.ckpt")) == [
        f"rank_{r}/checkpoint_{r}.ckpt" for r in range(4)]
    assert sorted(n for n in listing(f"{remote}/transformed_checkpoint/llama8") if n.endswith(".ckpt")) == [
        f"rank_{r}/checkpoint_{r}.ckpt" for r in range(4)]
    assert sorted(listing(f"{remote}/strategy")) == sorted(    # no rank 4-7 of the 8-rank layout
        [f"ckpt_strategy_rank_{r}.ckpt" for r in range(4)] + ["merged_ckpt_strategy.ckpt"])
    assert obs_io.file.read(f"{remote}/strategy/ckpt_strategy_rank_0.ckpt", binary=True) == \
        Path(models["s4"], "ckpt_strategy_rank_0.ckpt").read_bytes()
    assert digest_tree(models["ref8"]) == before


def training(models, s3_env, tmp_path) -> tuple[ModelArtsJob, int]:
    """A single-card predict job whose training command keeps running (up to 120 s) after it
    loaded the converted checkpoint; returns the job and the training command's pid."""
    form = {"load_checkpoint": models["ref4"], "src_strategy_path_or_dir": models["s4"],
            "auto_trans_ckpt": "True", "use_parallel": "False", "run_mode": "predict"}
    result = tmp_path / "check_node0.json"
    job = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=1,
                       env={"ENTRY_CHECK_RESULT": str(tmp_path / "check_{id}.json"), "ENTRY_CHECK_SLEEP": "120"})
    job.start()
    deadline = time.monotonic() + 120
    while not result.exists() and time.monotonic() < deadline and job.procs[0][2].poll() is None:
        time.sleep(0.2)
    assert result.exists(), job.wait(10)[0].output
    return job, json.loads(result.read_text())["pid"]


def test_sigterm_reaches_the_training_command_and_its_exit_code_is_the_jobs(models, s3_env, tmp_path):
    job, child = training(models, s3_env, tmp_path)
    job.stop(signal.SIGTERM)
    (r,) = job.wait(60)
    assert r.code == 42, r.output                        # the training command's own exit code
    assert (tmp_path / "check_node0.json.sigterm").read_text() == str(int(signal.SIGTERM))
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_destination_strategy_of_another_layout_is_refused(models, bucket, s3_env, tmp_path):
    """A stale 8-rank (2-stage) strategy for a 4-card dp1 mp2 pp2 job would convert into ranks the
    training does not have: one line naming both, every node told through the failure marker."""
    form = {"load_checkpoint": models["complete"], "dst_strategy": models["s8"], "auto_trans_ckpt": "True",
            "data_parallel": "1", "model_parallel": "2", "pipeline_stage": "2"}
    (r,) = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=4).run()
    assert r.code == 2, r.output
    assert len(r.errors()) == 1 and "has 8 ranks in 2 pipeline stage(s), but this job has 4 ranks" in r.errors()[0]
    assert not (tmp_path / "node0" / "output" / "transformed_checkpoint" / "llama" / "rank_0").exists()


def test_per_card_processes_in_their_own_folders_share_one_leader(models, s3_env, tmp_path):
    """Launchers that `cd rank_<r>` before the boot command give every card another output
    folder: the cards still elect one leader, and all load what it converted."""
    form = {"load_checkpoint": models["ref4"], "src_strategy_path_or_dir": models["s4"],
            "auto_trans_ckpt": "True", "use_parallel": "False", "run_mode": "predict"}
    results = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=2, per_card=True, card_dirs=True,
                           env={"ENTRY_CHECK_REFERENCE": models["ref1"],
                                "ENTRY_CHECK_RESULT": str(tmp_path / "check_{id}.json")}).run()
    assert_ok(results)
    assert sum("leads this node's sync and conversion" in r.output for r in results) == 1
    loaded = {record["load_path"] for record in checks(tmp_path).values()}
    assert len(loaded) == 1 and len(checks(tmp_path)) == 2
    assert len(list(tmp_path.rglob("transformed_checkpoint"))) == 1      # converted once


def test_a_sync_only_job_may_not_write_into_its_source(models, bucket, s3_env, tmp_path):
    src = upload(models["ref8"], f"s3://{bucket}/src8/llama8")
    form = {"load_checkpoint": src, "auto_trans_ckpt": "False", "remote_save_url": f"{src}/rank_0"}
    (r,) = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=8).run()
    assert r.code == 2 and len(r.errors()) == 1 and "overlaps remote_save_url's logs folder" in r.errors()[0], r.output
    assert sorted(listing(src)) == [f"rank_{i}/checkpoint_{i}.ckpt" for i in range(8)]


def test_the_training_command_dies_with_the_entry(models, s3_env, tmp_path):
    """Even a SIGKILLed entry (no handler runs) takes its training command with it."""
    job, child = training(models, s3_env, tmp_path)
    job.stop(signal.SIGKILL)
    job.wait(30)
    deadline = time.monotonic() + 20
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
