"""One source of truth: the job (cloud-entry) and the offline tool (transform-checkpoint) classify
the same sources alike (both through reshard.sources.classify, from an object-store listing or a
local walk) and convert them to the same bytes, equal to MindSpore's conversion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import obs_io
import synth
from cloud_entry import sync
from platform_harness import CLOUD_ENTRY, REPO, upload
from reshard.api import find_sources

TRANSFORM = str(Path(sys.executable).parent / "transform-checkpoint")


def sharded_folder(models, folder: Path) -> str:
    """A sharded safetensors export (two shards + index) with a stale third shard beside it."""
    names = list(models["params"])
    half = len(names) // 2
    index = {}
    for part, chosen in enumerate((names[:half], names[half:]), start=1):
        file = f"model-{part:05d}-of-00002.safetensors"
        synth.write_complete_checkpoint(str(folder / file), {n: models["params"][n] for n in chosen},
                                        fmt="safetensors")
        index.update({n: file for n in chosen})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    stale = {n: np.asarray(models["params"][n]) * 0 for n in names[:3]}
    synth.write_complete_checkpoint(str(folder / "model-00001-of-00003.safetensors"), stale, fmt="safetensors")
    return str(folder)


@pytest.fixture
def cases(models, tmp_path):
    """name -> (local source, format, source strategy, destination strategy, MindSpore's result,
    the job's parallel hyperparameters)."""
    rank_folders = tmp_path / "llama8"
    subprocess.run(["cp", "-r", models["ref8"], str(rank_folders)], check=True)
    (rank_folders / "rank_0" / "a_older.ckpt").write_bytes(b"sorts first: never the chosen one")
    eight = ["--npu_num_per_node=8", "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2"]
    four = ["--npu_num_per_node=4", "--data_parallel=1", "--model_parallel=2", "--pipeline_stage=2"]
    return {
        "complete file": (models["complete"], "ckpt", None, models["s8"], models["ref8"], eight),
        "sharded safetensors": (sharded_folder(models, tmp_path / "hf"), "safetensors", None, models["s8"],
                                models["ref8"], eight),
        "rank folders": (str(rank_folders), "ckpt", models["merged8"], models["s4"], models["ref4"], four),
    }


@pytest.mark.parametrize("case", ["complete file", "sharded safetensors", "rank folders"])
def test_job_and_offline_tool_classify_and_convert_alike(case, cases, bucket, s3_env, tmp_path):
    local, fmt, src_s, dst_s, reference, parallel = cases[case]
    url = upload(local, f"s3://{bucket}/src/{Path(local).name}")
    engine = find_sources(local, fmt)
    for where in (local, url):   # the job's view, from a local walk and from a listing
        job = sync.inspect_source(where, fmt).files
        assert (job.complete, job.files, job.index) == (engine.complete, engine.files, engine.index), where
    env = {**s3_env, "PYTHONPATH": str(REPO)}
    args = [f"--load_checkpoint={url}", f"--dst_strategy={dst_s}", "--auto_trans_ckpt=True",
            f"--load_ckpt_format={fmt}", "--transform_only=True", *parallel,
            *([f"--src_strategy_path_or_dir={src_s}"] if src_s else [])]
    job_run = subprocess.run([CLOUD_ENTRY, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert job_run.returncode == 0, job_run.stdout + job_run.stderr
    offline = tmp_path / "offline"
    tool = subprocess.run([TRANSFORM, f"--src_checkpoint={url}", f"--dst_strategy={dst_s}",
                           f"--dst_checkpoint={offline}", f"--format={fmt}",
                           *([f"--src_strategy={src_s}"] if src_s else [])],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert tool.returncode == 0, tool.stdout + tool.stderr
    job_out = tmp_path / "output" / "transformed_checkpoint" / Path(local).name.split(".")[0]
    synth.assert_same_checkpoint_dirs(str(job_out), str(offline))
    synth.assert_same_checkpoint_dirs(str(job_out), reference)


def test_the_job_refuses_what_the_engine_refuses(models, bucket, s3_env, tmp_path):
    """A strategy folder mixing .ckpt and .json is refused by the job before anything is written
    (the engine's rule), not after downloading."""
    mixed = tmp_path / "mixed"
    subprocess.run(["cp", "-r", models["s4"], str(mixed)], check=True)
    (mixed / "extra.json").write_text("{}")
    url = upload(str(mixed), f"s3://{bucket}/mixed")
    env = {**s3_env, "PYTHONPATH": str(REPO)}
    (tmp_path / "job").mkdir()
    run = subprocess.run([CLOUD_ENTRY, f"--load_checkpoint={models['ref8']}",
                          f"--src_strategy_path_or_dir={models['merged8']}", f"--dst_strategy={url}",
                          "--auto_trans_ckpt=True", "--transform_only=True", "--npu_num_per_node=4",
                          "--data_parallel=1", "--model_parallel=2", "--pipeline_stage=2"],
                         cwd=tmp_path / "job", env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [x for x in run.stderr.splitlines() if x.startswith("cloud-entry: error")]
    assert len(errors) == 1 and "--dst_strategy=" in errors[0] and "mixes" in errors[0], run.stderr
    assert list((tmp_path / "job").iterdir()) == []
    assert obs_io.file.exists(f"{url}/extra.json")
