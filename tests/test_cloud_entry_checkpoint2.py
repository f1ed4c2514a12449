"""The job with a `checkpoint:` section on a MindFormers Checkpoint 2.0 source (cloud_entry/
checkpoint2.py), started as the platform starts it (tests/platform_harness.py: per-node
environments and folders, no shared disk), from s3:// (the moto server the tests start) and from
a local folder. The source is a fixture MindFormers 1.9 saved (dp2 mp2 pp2, parallel optimizer);
the job's layout is mp4 pp2 on 2 nodes x 4 cards. The launched stand-in (entry_launch_check.py)
checks the folder it is given as MindFormers' loader needs it and assembles each of its ranks'
slices from it, compared with the complete tensors MindFormers' own loader gives for the source.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import obs_io
import synth
from reshard import integrity
from platform_harness import ModelArtsJob, upload
from reshard.formats.checkpoint2 import read_checkpoint2
from reshard.formats.checkpoint2.select import files_read
from reshard.strategy import load_strategy

DATA = Path(__file__).resolve().parent / "data" / "checkpoint2"
FIXTURE = "1.9.0-dp2mp2pp2-optshard"
ITERATION = "iteration_00001234"


@pytest.fixture(scope="module")
def mp4pp2(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("strategy") / "mp4pp2"
    synth.write_strategy(str(folder), dp=1, mp=4, pp=2, opt_shard=0,
                         params=synth.llama_params(**synth.SMALL_LLAMA, optimizer=True))
    return str(folder)


def job_for(tmp_path, s3_env, src, dst, layout="", nodes=2, cards=4, **form):
    """The job on the platform; dst: --dst_strategy as given, layout: its local copy."""
    hyper = {"config": "run_llama_7b.yaml", "load_checkpoint": src, "checkpoint.load_path": src,
             "data_parallel": "1", "model_parallel": "4", "pipeline_stage": "2",
             "model.model_config.num_layers": "2", **form}
    if dst:
        hyper["dst_strategy"] = dst
    return ModelArtsJob(tmp_path, s3_env, hyper, nodes=nodes, cards=cards,
                        env={"ENTRY_CHECK_FULL": str(DATA / f"{FIXTURE}.full.safetensors"),
                             "ENTRY_CHECK_DST_STRATEGY": layout,
                             "ENTRY_CHECK_RESULT": str(tmp_path / "check_{id}.json")})


def assert_ok(results) -> None:
    for r in results:
        assert r.code == 0, f"node {r.node}:\n{r.output}"
        assert "Traceback" not in r.output, r.output


def effective(job: ModelArtsJob, node: int) -> dict:
    return yaml.safe_load((job.node_dir(node) / "output" / "cloud_entry" / "effective_config.yaml").read_text())


def shards(folder: Path) -> set[str]:
    return {p.name for p in (folder / ITERATION).glob("*.safetensors")}


def test_online_each_node_gets_the_files_its_ranks_read(tmp_path, bucket, s3_env, mp4pp2):
    """checkpoint2_mode=online: nothing converted; each node
    holds the source files its ranks read and a metadata.json naming only them; MindFormers'
    checkpoint: section is kept, load_path the node's copy; the stand-in assembles every slice
    of its ranks from it."""
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/ck2/{FIXTURE}")
    dst = upload(mp4pp2, f"s3://{bucket}/mp4pp2")
    job = job_for(tmp_path, s3_env, src, dst, mp4pp2, checkpoint2_mode="online")
    assert_ok(job.run())
    ck, layout = read_checkpoint2(str(DATA / FIXTURE)), load_strategy(mp4pp2)
    everything = {f for files in ck.files.values() for f in files.values()}
    for node, ranks in ((0, range(4)), (1, range(4, 8))):
        cfg = effective(job, node)
        copy = Path(cfg["checkpoint"]["load_path"])
        assert copy == job.node_dir(node) / "output" / "cloud_entry" / "checkpoint" / FIXTURE
        assert cfg["load_checkpoint"] == str(copy) and cfg.get("use_legacy_format") is not True
        held = shards(copy)
        assert held == files_read(ck, layout, ranks) and held < everything   # half: one stage
        meta = json.loads((copy / ITERATION / "metadata.json").read_text())
        named = {r["file_name"] for recs in meta["storage_data"].values() for r in recs}
        assert named == held
        record = json.loads((tmp_path / f"check_node{ranks[0]}.json").read_text())
        assert record["ranks"] == list(ranks) and all(n > 0 for n in record["params"].values())
    # a rerun downloads nothing it holds (same sizes): only the small JSON files are written again
    before = {p: p.stat().st_mtime_ns for p in (job.node_dir(0) / "output" / "cloud_entry" / "checkpoint")
              .rglob("*.safetensors")}
    job2 = job_for(tmp_path, s3_env, src, dst, mp4pp2, checkpoint2_mode="online")
    assert_ok(job2.run())
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_preshard_on_two_nodes_through_object_storage(tmp_path, bucket, s3_env, mp4pp2):
    """The default with --dst_strategy, in rank blocks (transform_process_num=4: two blocks of two
    ranks per node, no shared disk): each node converts its blocks only (the source read in
    place from s3://), uploads their shards and publishes their markers; node 0 writes
    metadata.json, common.json, the manifest and the tracker; each node holds the files its
    ranks read, checked against the manifest; both launch on it. The set on the store is byte
    for byte the one convert_checkpoint writes whole. A rerun converts nothing."""
    from reshard.formats.checkpoint2.convert import convert_checkpoint
    from reshard.formats.checkpoint2.folder import SHARD_NAME
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/ck2/{FIXTURE}")
    dst = upload(mp4pp2, f"s3://{bucket}/mp4pp2")
    remote = f"s3://{bucket}/out"
    job = job_for(tmp_path, s3_env, src, dst, mp4pp2, remote_save_url=remote, transform_process_num="4")
    results = job.run()
    assert_ok(results)
    for r, (first, second) in zip(results, ((0, 2), (4, 6))):
        assert f"this node converts block {first // 2} (ranks {first}-{first + 1}), block {second // 2} " \
               f"(ranks {second}-{second + 1})" in r.output
        assert f"ranks {first}-{second + 1} here" in r.output
    set_url = f"{remote}/transformed_checkpoint/{FIXTURE}"
    for leader in (0, 2, 4, 6):   # each block's marker lists its own ranks' shards
        listed = json.loads(obs_io.file.read(f"{set_url}/transform_succeed_rank_{leader}.txt")
                            .split("\n", 1)[1])["files"]
        assert {int(SHARD_NAME.match(n.rsplit("/", 1)[1])["idx"]) for n in listed} == {leader, leader + 1}
    assert obs_io.file.exists(f"{set_url}/transform_succeed_set.txt")
    names = {e.name for e in obs_io.file.list_entries(set_url, recursive=True) if e.is_file()}
    assert "conversion_manifest.json" in names and "latest_checkpointed_iteration.txt" in names
    whole = tmp_path / "whole"
    convert_checkpoint(str(DATA / FIXTURE), str(whole), dst_strategy=load_strategy(mp4pp2), fmt="checkpoint2")
    expected = {p.relative_to(whole).as_posix(): p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    assert {n for n in names if n.startswith(ITERATION)} == {n for n in expected if n.startswith(ITERATION)}
    for name, data in expected.items():
        assert obs_io.file.read(f"{set_url}/{name}", binary=True) == data, name
    assert integrity.verify(set_url).ok
    converted = read_checkpoint2(set_url)
    assert converted.world_size == 8 and converted.num_stages == 2
    for node, ranks in ((0, range(4)), (1, range(4, 8))):
        cfg = effective(job, node)
        loaded = Path(cfg["checkpoint"]["load_path"])
        assert loaded == job.node_dir(node) / "output" / "transformed_checkpoint" / FIXTURE
        assert cfg.get("use_legacy_format") is not True
        assert shards(loaded) == files_read(converted, load_strategy(mp4pp2), ranks)
        record = json.loads((tmp_path / f"check_node{ranks[0]}.json").read_text())
        assert record["ranks"] == list(ranks)
    again = job_for(tmp_path / "rerun", s3_env, src, dst, mp4pp2, remote_save_url=remote,
                    transform_process_num="4").run()
    assert_ok(again)
    assert "nothing converted" in again[0].output and "nothing converted" in again[1].output
    assert not any("converting" in r.output for r in again)


def test_preshard_block_failing_on_node_1_ends_node_0_in_one_line(tmp_path, bucket, s3_env, mp4pp2):
    """Node 1 cannot write its block (its folder leads, by a link it may not clear, to another
    save's iteration folder): it publishes its block's failure marker; node 0, waiting for it,
    ends with that block's error in one line, exit 2, and publishes no tracker on the store.
    Run again once node 1's folder is fixed: node 0 keeps the shards it finished (not written
    again), node 1 converts its block, the set completes."""
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/ck2/{FIXTURE}")
    dst = upload(mp4pp2, f"s3://{bucket}/mp4pp2")
    remote = f"s3://{bucket}/failing"
    other = tmp_path / "other_save"
    (other / ITERATION).mkdir(parents=True)
    (other / ITERATION / "metadata.json").write_text("{}")
    folder = tmp_path / "node1" / "output" / "transformed_checkpoint"
    folder.mkdir(parents=True)
    (folder / FIXTURE).symlink_to(other)
    job = job_for(tmp_path, s3_env, src, dst, mp4pp2, remote_save_url=remote, transform_timeout="200")
    results = job.run()
    for r in results:
        assert r.code == 2 and len(r.errors()) == 1 and "Traceback" not in r.output, r.output
    assert "exists already" in results[1].errors()[0]
    assert results[0].errors()[0].startswith("cloud-entry: error: block led by rank 4 failed: "), results[0].output
    assert "exists already" in results[0].errors()[0]
    set_url = f"{remote}/transformed_checkpoint/{FIXTURE}"
    assert not obs_io.file.exists(f"{set_url}/latest_checkpointed_iteration.txt")
    assert obs_io.file.exists(f"{set_url}/transform_failed_set.txt")
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "node0" / "output" / "transformed_checkpoint" / FIXTURE
                                             / ITERATION).glob("*.safetensors")}
    assert len(kept) == 8   # ranks 0-3, model and opt
    (folder / FIXTURE).unlink()
    for name in ("transform_failed_rank_4.txt", "transform_failed_set.txt"):   # as old as a restart's
        obs_io.file.remove(f"{set_url}/{name}")
    again = job_for(tmp_path, s3_env, src, dst, mp4pp2, remote_save_url=remote, transform_timeout="200").run()
    assert_ok(again)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert obs_io.file.read(f"{set_url}/latest_checkpointed_iteration.txt") == "1234"
    assert integrity.verify(set_url).ok


def test_preshard_node_reads_the_replicas_another_node_wrote(tmp_path, bucket, s3_env):
    """dp2·mp4 on 2 nodes x 4 cards: node 1's ranks hold replicas of node 0's slices, and
    metadata.json lists every replica's file for a chunk, so each node's ranks read shards the
    other node wrote: each downloads them (checked against the manifest) beside its own, and
    its stand-in assembles its ranks' slices from that copy."""
    layout = tmp_path / "dp2mp4"
    synth.write_strategy(str(layout), dp=2, mp=4, pp=1, opt_shard=0,
                         params=synth.llama_params(**synth.SMALL_LLAMA, optimizer=True))
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/ck2/{FIXTURE}")
    dst = upload(str(layout), f"s3://{bucket}/dp2mp4")
    remote = f"s3://{bucket}/replicas"
    job = job_for(tmp_path, s3_env, src, dst, str(layout), remote_save_url=remote, data_parallel="2",
                  pipeline_stage="1")
    assert_ok(job.run())
    converted = read_checkpoint2(f"{remote}/transformed_checkpoint/{FIXTURE}")
    for node, ranks, others in ((0, range(4), range(4, 8)), (1, range(4, 8), range(4))):
        held = shards(Path(effective(job, node)["checkpoint"]["load_path"]))
        assert held == files_read(converted, load_strategy(str(layout)), ranks)
        assert any(f"-{r:07d}-0000008" in n for n in held for r in others)   # the other node's shards
        record = json.loads((tmp_path / f"check_node{ranks[0]}.json").read_text())
        assert record["ranks"] == list(ranks)


def test_preshard_blocks_on_a_shared_disk(tmp_path, s3_env, mp4pp2):
    """With --shared_dir and no remote_save_url: each node writes its block into the shared
    folder (node 0 readies it, node 1 waits for that), node 0 completes the set there; nothing is
    downloaded, both load the shared folder, byte for byte the set written whole."""
    from reshard.formats.checkpoint2.convert import convert_checkpoint
    shared = tmp_path / "shared"
    job = job_for(tmp_path, s3_env, str(DATA / FIXTURE), mp4pp2, mp4pp2, shared_dir=str(shared))
    results = job.run()
    assert_ok(results)
    assert "ranks 4-7 here" in results[1].output and "ranks 0-3 here" in results[0].output
    out = shared / "transformed_checkpoint" / FIXTURE
    for node in (0, 1):
        assert Path(effective(job, node)["checkpoint"]["load_path"]) == out
    whole = tmp_path / "whole"
    convert_checkpoint(str(DATA / FIXTURE), str(whole), dst_strategy=load_strategy(mp4pp2), fmt="checkpoint2")
    for p in whole.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(whole)).read_bytes() == p.read_bytes(), p
    assert integrity.verify(str(out)).ok


@pytest.mark.parametrize("mode", ["preshard", "online"])
def test_local_source_on_one_node(tmp_path, s3_env, mp4pp2, mode):
    """A local Checkpoint 2.0 folder, one node of 8 cards, both modes: the stand-in assembles
    all 8 ranks' slices from what it is given."""
    job = job_for(tmp_path, s3_env, str(DATA / FIXTURE), mp4pp2, mp4pp2, nodes=1, cards=8, checkpoint2_mode=mode)
    assert_ok(job.run())
    record = json.loads((tmp_path / "check_node0.json").read_text())
    assert record["ranks"] == list(range(8))
    assert not (DATA / FIXTURE / "conversion_manifest.json").exists()   # the source untouched


def test_preshard_without_destination_layout_is_one_line(tmp_path, s3_env):
    job = job_for(tmp_path, s3_env, str(DATA / FIXTURE), "", nodes=1, cards=8, checkpoint2_mode="preshard")
    (r,) = job.run()
    assert r.code == 2 and r.errors() == [
        "cloud-entry: error: checkpoint2_mode=preshard needs --dst_strategy (the job's layout; a "
        "strategy pass is not run for a Checkpoint 2.0 source)"], r.output
    assert "Traceback" not in r.output


def test_source_contradicting_its_metadata_is_one_line_nothing_written(tmp_path, s3_env, mp4pp2):
    """A Checkpoint 2.0 source whose metadata.json names a missing shard: exit 2, one line naming
    the file, before anything is written (no output folder, no download)."""
    import shutil
    src = tmp_path / "src" / FIXTURE
    shutil.copytree(DATA / FIXTURE, src)
    (src / ITERATION / "CKP-model-0000005-0000008.safetensors").unlink()
    job = job_for(tmp_path / "job", s3_env, str(src), mp4pp2, mp4pp2, nodes=1, cards=8)
    (r,) = job.run()
    assert r.code == 2 and len(r.errors()) == 1, r.output
    assert "CKP-model-0000005-0000008.safetensors" in r.errors()[0] and "Traceback" not in r.output
    assert not (job.node_dir(0) / "output").exists()


def test_preshard_rerun_on_another_iteration_prunes_what_the_job_owns(tmp_path, bucket, s3_env, mp4pp2):
    """A second job on a newer save of the same checkpoint (iteration 2000; same folder name, so
    the same transformed_checkpoint/<name>/ under remote_save_url and on each node): the older
    iteration the first job uploaded there, and an older output's rank folder, are removed
    (MindFormers would find them beside the new set); a file the job did not write is left,
    named in a warning; node 1's own copy holds the new iteration only; the tracker names it and
    the set verifies."""
    import shutil
    from reshard.formats.checkpoint2 import TRACKER
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/ck2/{FIXTURE}")
    dst = upload(mp4pp2, f"s3://{bucket}/mp4pp2")
    remote = f"s3://{bucket}/out"
    assert_ok(job_for(tmp_path, s3_env, src, dst, mp4pp2, remote_save_url=remote).run())
    newer = tmp_path / "newer" / FIXTURE
    shutil.copytree(DATA / FIXTURE, newer)
    (newer / ITERATION).rename(newer / "iteration_00002000")
    (newer / TRACKER).write_text("2000")
    src2 = upload(str(newer), f"s3://{bucket}/ck2b/{FIXTURE}")
    set_url = f"{remote}/transformed_checkpoint/{FIXTURE}"
    obs_io.file.write(f"{set_url}/notes.txt", "mine")
    obs_io.file.write(f"{set_url}/rank_0/checkpoint_0.ckpt", "an older legacy output")
    results = job_for(tmp_path, s3_env, src2, dst, mp4pp2, remote_save_url=remote).run()
    assert_ok(results)
    assert "removed" in results[0].output and "notes.txt" in results[0].output
    names = {e.name for e in obs_io.file.list_entries(set_url, recursive=True) if e.is_file()}
    assert not {n for n in names if n.startswith(ITERATION)} and "rank_0/checkpoint_0.ckpt" not in names
    assert "notes.txt" in names and any(n.startswith("iteration_00002000/") for n in names)
    assert obs_io.file.read(f"{set_url}/{TRACKER}") == "2000"
    assert integrity.verify(set_url).ok
    for node in (0, 1):   # the folder each node's training loads
        local = tmp_path / f"node{node}" / "output" / "transformed_checkpoint" / FIXTURE
        assert sorted(p.name for p in local.iterdir() if p.name.startswith("iteration_")) == ["iteration_00002000"]


def test_a_legacy_step_is_refused_with_the_reason_by_the_job_and_the_command(tmp_path, s3_env, mp4pp2, capsys):
    """load_checkpoint_step / --step with a Checkpoint 2.0 source: one line saying why (an
    <epoch>_<step> names no iteration) and what to do instead, exit 2, nothing written."""
    from reshard.cli import main
    job = job_for(tmp_path / "job", s3_env, str(DATA / FIXTURE), mp4pp2, mp4pp2, nodes=1, cards=8,
                  load_checkpoint_step="3_10")
    (r,) = job.run()
    assert r.code == 2 and len(r.errors()) == 1 and "Traceback" not in r.output, r.output
    assert r.errors()[0].startswith("cloud-entry: error: load_checkpoint_step=3_10: a step's <epoch>_<step> "
                                    "names no Checkpoint 2.0 iteration") and "iteration_<n> folder" in r.errors()[0]
    assert not (job.node_dir(0) / "output").exists()
    assert main(["--src_checkpoint", str(DATA / FIXTURE), "--step", "3_10", "--dst_checkpoint",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--step does not go with a Checkpoint 2.0 source" in err and "--iteration" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
