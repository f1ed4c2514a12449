"""The folders real MindSpore/MindFormers training leaves behind, where a conversion used to
write wrong or incomplete checkpoints with exit 0: several step-named checkpoints per rank
folder, frozen weights missing from the source strategy, a stale destination strategy, an
optimizer-sharding strategy for a checkpoint saved without it, a LoRA network's strategy over a
base checkpoint, a unified_safetensors folder with its training state, a source strategy of
fewer ranks than the checkpoint.

Each case runs through transform-checkpoint (the console script) and through cloud-entry as
the platform starts it (tests/platform_harness.py), from local disk and from s3:// (a real S3
server), and is compared with MindSpore's own conversion bit for bit where MindSpore is right,
with content computed from the original tensors where it is not; a refusal is one line naming
the culprit, exit code 2, and no converted file anywhere."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import obs_io
import synth
from reshard.formats import registry
from platform_harness import BOOT, ModelArtsJob, upload

TOOLS = ("transform-checkpoint", "cloud-entry")
WHERE = ("local", "s3")
MATRIX = [(t, w) for t in TOOLS for w in WHERE]
TRANSFORM = str(Path(sys.executable).parent / "transform-checkpoint")
FROZEN = ("model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w1.weight")
SMALL = dict(num_layers=2, vocab=64, hidden=32, ffn=64)


# ---------------------------------------------------------------- inputs

def replicated(ndim, dev=(2, 2)):
    return {"dev_matrix": list(dev), "tensor_map": [-1] * ndim, "param_split_shape": [], "indices_offset": [],
            "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}


def column(dev=(2, 2)):
    return dict(replicated(2, dev), tensor_map=[0, -1])


@pytest.fixture(scope="module")
def data(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("training_folders")
    d = dict(models)
    # 1. two saves per rank folder: the older step from other values
    old = synth.llama_params(seed=7, **SMALL)
    old_full = synth.write_complete_checkpoint(str(root / "old.ckpt"), old)
    d["old8"] = synth.ms_transform(old_full, str(root / "old8"), None, models["s8"])
    d["old4"] = synth.ms_transform(d["old8"], str(root / "old4"), models["merged8"], models["s4"])
    steps = str(root / "steps8")
    synth.step_named(d["old8"], steps, lambda r: f"llama_rank_{r}-5_2.ckpt")
    synth.step_named(models["ref8"], steps, lambda r: f"llama_rank_{r}-10_2.ckpt")
    d["steps8"] = steps
    gap = str(root / "steps8_gap")
    shutil.copytree(steps, gap)
    os.remove(os.path.join(gap, "rank_3", "llama_rank_3-10_2.ckpt"))
    d["steps8_gap"] = gap
    # 2. frozen weights (no optimizer states) that the strategies leave out
    inf = synth.llama_params(seed=3, optimizer=False, **SMALL)
    d["inf"] = inf
    d["inf_full"] = synth.write_complete_checkpoint(str(root / "inf.ckpt"), inf)
    for dp, mp in ((1, 2), (2, 1)):
        full = synth.strategy_stages(dp, mp, 1, inf)
        key = f"dp{dp}mp{mp}"
        d[f"s_{key}"] = synth.write_layouts(str(root / f"s_{key}"), full, dp * mp)
        d[f"pruned_{key}"] = synth.write_layouts(str(root / f"pruned_{key}"),
                                           {s: {n: v for n, v in lay.items() if n not in FROZEN}
                                            for s, lay in full.items()}, dp * mp)
        d[f"ckpt_{key}"] = synth.ms_transform(d["inf_full"], str(root / f"ckpt_{key}"), None, d[f"s_{key}"])
    d["ms_pruned_dp2mp1"] = synth.ms_transform(d["ckpt_dp2mp1"], str(root / "ms_pruned_dp2mp1"),
                                               d["pruned_dp2mp1"], None)
    # 3. a stale destination strategy: one layer of the checkpoint's two
    d["s_1layer"] = str(root / "s_1layer")
    synth.write_strategy(d["s_1layer"], dp=2, mp=2, pp=1, num_layers=1, params=models["params"])
    d["ms_1layer"] = synth.ms_transform(models["complete"], str(root / "ms_1layer"), None, d["s_1layer"])
    # 4. optimizer sharding that the checkpoint was not saved with, and the other way round
    d["s8_noopt"] = str(root / "s8_noopt")
    synth.write_strategy(d["s8_noopt"], dp=2, mp=2, pp=2, params=models["params"])
    d["noopt8"] = synth.ms_transform(models["complete"], str(root / "noopt8"), None, d["s8_noopt"])
    # 5. a LoRA network's strategy over the base checkpoint, and one naming a parameter nobody has
    base = synth.strategy_stages(2, 2, 2, models["params"])
    lora = {s: dict(lay) for s, lay in base.items()}
    for i in range(2):
        stage = synth.pipeline_stage_of(f"model.layers.{i}.x", 2, 2)[0]
        for w in ("wq", "wv"):
            for part, layout in (("lora_a", replicated(2)), ("lora_b", column())):
                name = f"model.layers.{i}.attention.{w}.mindpet_delta_{part}"
                lora[stage][name] = layout
                lora[stage]["adam_m." + name] = lora[stage]["adam_v." + name] = layout
    d["s_lora"] = synth.write_layouts(str(root / "s_lora"), lora, 4)
    d["ms_lora"] = synth.ms_transform(models["complete"], str(root / "ms_lora"), None, d["s_lora"])
    extra = {s: dict(lay) for s, lay in base.items()}
    extra[0]["model.layers.0.attention.extra.weight"] = column()
    d["s_extra"] = synth.write_layouts(str(root / "s_extra"), extra, 4)
    d["s8_plain"] = synth.write_layouts(str(root / "s8_plain"), base, 4)
    d["ms_plain"] = synth.ms_transform(models["complete"], str(root / "ms_plain"), None, d["s8_plain"])
    # 6. MindSpore's unified_safetensors folder of a 2-rank safetensors checkpoint
    import mindspore as ms
    s2 = synth.write_strategy(str(root / "s2.ckpt"), dp=1, mp=2, pp=1, params=models["params"], per_rank=False)[0]
    dist2 = synth.ms_transform(models["complete"], str(root / "dist2"), None, s2, fmt="safetensors")
    d["unified"] = str(root / "unified")
    ms.parallel.unified_safetensors(dist2, s2, d["unified"])
    d["ms_unified8"] = str(root / "ms_unified8")
    for r in range(8):
        ms.load_distributed_checkpoint(network=None, predict_strategy=models["merged8"],
                                       unified_safetensors_dir=d["unified"], dst_safetensors_dir=d["ms_unified8"],
                                       rank_id=r, format="safetensors", output_format="safetensors")
    return d


# ---------------------------------------------------------------- running both tools

@dataclass
class Run:
    code: int
    output: str          # stdout + stderr
    result: str | None   # local folder with the result's rank_<r>/ folders (None: nothing written)

    def error(self) -> str:
        lines = [x for x in self.output.splitlines() if ": error:" in x]
        assert self.code == 2 and len(lines) == 1 and "Traceback" not in self.output, self.output
        assert self.result is None, f"a refused run wrote {self.result}"
        return lines[0]

    def ok(self) -> "Run":
        assert self.code == 0 and "Traceback" not in self.output, self.output
        assert self.result is not None
        return self


def _remote(bucket: str, local: str | None, key: str) -> str | None:
    if local is None:
        return None
    return upload(local, f"s3://{bucket}/{key}/{os.path.basename(local.rstrip('/'))}")


def _fetched(url: str, local: Path) -> str | None:
    try:
        names = obs_io.file.list_directory(url, recursive=True)
    except FileNotFoundError:
        return None
    if not any(registry.by_file(n) for n in names):   # a checkpoint file of any registered format
        return None
    obs_io.file.copy_parallel(url, str(local))
    return str(local)


def convert(tool, where, tmp_path, s3_env, bucket, *, src, dst_strategy=None, src_strategy=None,
            parallel=None, fmt="ckpt", step=None, allow_missing=False, keep_unnamed=False) -> Run:
    """One conversion as a user runs it. parallel: (dp, mp, pp) of the destination (None: a
    complete one)."""
    name = os.path.basename(src.rstrip("/")).split(".")[0]
    tmp_path.mkdir(parents=True, exist_ok=True)
    if where == "s3":
        src = _remote(bucket, src, "src")
        src_strategy = _remote(bucket, src_strategy, "src_strategy")
        dst_strategy = _remote(bucket, dst_strategy, "dst_strategy")
    if tool == "transform-checkpoint":
        out = f"s3://{bucket}/out" if where == "s3" else str(tmp_path / "out")
        argv = [TRANSFORM, "--src_checkpoint", src, "--dst_checkpoint", out, "--format", fmt]
        argv += ["--src_strategy", src_strategy] if src_strategy else []
        argv += ["--dst_strategy", dst_strategy] if dst_strategy else []
        argv += ["--step", step] if step else []
        argv += ["--allow_missing_params"] if allow_missing else []
        argv += ["--keep_unnamed_params"] if keep_unnamed else []
        env = dict(os.environ, **s3_env)
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        if where == "s3":
            result = _fetched(out, tmp_path / "fetched")
        else:
            result = out if os.path.isdir(out) and any(p.startswith("rank_") for p in os.listdir(out)) else None
        return Run(done.returncode, output, result)
    dp, mp, pp = parallel or (1, 1, 1)
    form = {"config": "run_llama_7b.yaml", "load_checkpoint": src, "auto_trans_ckpt": "True",
            "transform_only": "True", "load_ckpt_format": fmt,
            "data_parallel": str(dp), "model_parallel": str(mp), "pipeline_stage": str(pp)}
    if src_strategy:
        form["src_strategy_path_or_dir"] = src_strategy
    if dst_strategy:
        form["dst_strategy"] = dst_strategy
    if parallel is None:
        form.update(use_parallel="False", run_mode="predict")
    if step:
        form["load_checkpoint_step"] = step
    if allow_missing:
        form["allow_missing_params"] = "True"
    if keep_unnamed:
        form["keep_unnamed_params"] = "True"
    if where == "s3":
        form["remote_save_url"] = f"s3://{bucket}/job"
    job = ModelArtsJob(tmp_path / "job", s3_env, form, nodes=1, cards=dp * mp * pp)
    (r,) = job.run()
    if where == "s3":
        result = _fetched(f"s3://{bucket}/job/transformed_checkpoint/{name}", tmp_path / "fetched")
    else:
        local = job.node_dir(0) / "output" / "transformed_checkpoint" / name
        result = str(local) if local.is_dir() and any(p.startswith("rank_") for p in os.listdir(local)) else None
    return Run(r.code, r.output, result)


def tensors(folder: str, rank: int) -> dict:
    return synth.load_params(synth._rank_files(folder)[rank])


# ---------------------------------------------------------------- 1. step-named checkpoints

@pytest.mark.parametrize("tool, where", MATRIX)
def test_the_latest_step_of_every_rank_folder_not_the_last_name(data, tool, where, tmp_path, s3_env, bucket):
    """llama_rank_r-5_2.ckpt sorts after llama_rank_r-10_2.ckpt: MindSpore's "last in name order"
    would read the OLDER save. The latest (epoch, step) is read, said in one line."""
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["steps8"], src_strategy=data["merged8"],
                  dst_strategy=data["s4"], parallel=(1, 2, 2)).ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ref4"])
    lines = [x for x in run.output.splitlines()
             if "step 10_2 (epoch 10, step 2) chosen in all 8 rank folders; also present: 5_2" in x]
    assert len(lines) == 1, run.output


@pytest.mark.parametrize("tool", TOOLS)
def test_a_step_asked_for_is_read_in_every_rank_folder(data, tool, tmp_path, s3_env, bucket):
    run = convert(tool, "local", tmp_path, s3_env, bucket, src=data["steps8"], src_strategy=data["merged8"],
                  dst_strategy=data["s4"], parallel=(1, 2, 2), step="5_2").ok()
    synth.assert_same_checkpoint_dirs(run.result, data["old4"])
    assert "step 5_2 (epoch 5, step 2) chosen in all 8 rank folders; also present: 10_2" in run.output


@pytest.mark.parametrize("tool, where", MATRIX)
def test_rank_folders_whose_latest_steps_differ_are_never_mixed(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["steps8_gap"], src_strategy=data["merged8"],
                  dst_strategy=data["s4"], parallel=(1, 2, 2))
    line = run.error()
    assert "the latest steps differ between the rank folders of" in line, line
    assert "rank_0-2, rank_4-7: 10_2; rank_3: 5_2" in line and "--step 5_2 is in every folder" in line, line
    asked = convert(tool, where, tmp_path / "asked", s3_env, bucket, src=data["steps8_gap"],
                    src_strategy=data["merged8"], dst_strategy=data["s4"], parallel=(1, 2, 2), step="10_2")
    assert "step 10_2 is missing in rank_3 of" in asked.error()


# ---------------------------------------------------------------- 2. frozen weights the source strategy leaves out

@pytest.mark.parametrize("tool, where", MATRIX)
def test_sharded_weights_the_source_strategy_leaves_out_are_refused(data, tool, where, tmp_path, s3_env, bucket):
    """mp2 -> complete with a strategy saved with only_trainable_params=True: MindSpore (and this
    tool before) wrote rank 0's HALF of each frozen weight under its full name."""
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["ckpt_dp1mp2"], src_strategy=data["pruned_dp1mp2"])
    line = run.error()
    assert "2 parameter(s) that the source strategy" in line and "only_trainable_params=False" in line, line
    assert all(n in line for n in FROZEN), line


@pytest.mark.parametrize("tool, where", MATRIX)
def test_replicated_weights_the_source_strategy_leaves_out_are_copied(data, tool, where, tmp_path, s3_env, bucket):
    """dp2: the frozen weights are the same on both ranks, so carrying one copy is right, and
    equals MindSpore's conversion and the original tensors."""
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["ckpt_dp2mp1"], src_strategy=data["pruned_dp2mp1"]).ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ms_pruned_dp2mp1"])
    got = tensors(run.result, 0)
    for name in FROZEN:
        want = np.ascontiguousarray(data["inf"][name])
        assert got[name][1] == want.shape and got[name][2] == want.tobytes(), name


# ---------------------------------------------------------------- 3. a stale destination strategy

@pytest.mark.parametrize("tool, where", MATRIX)
def test_a_destination_strategy_of_fewer_layers_is_refused(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["complete"], dst_strategy=data["s_1layer"],
                  parallel=(2, 2, 1))
    line = run.error()
    assert "does not name" in line and "model.layers.1." in line and "keep_unnamed_params" in line, line
    assert "adam_" not in line and "global_step" not in line, line   # optimizer states and scalars stay carried


@pytest.mark.parametrize("tool", TOOLS)
def test_unnamed_parameters_kept_whole_on_purpose(data, tool, tmp_path, s3_env, bucket):
    run = convert(tool, "local", tmp_path, s3_env, bucket, src=data["complete"], dst_strategy=data["s_1layer"],
                  parallel=(2, 2, 1), keep_unnamed=True).ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ms_1layer"])   # MindSpore carries them whole too
    for r in range(4):
        got = tensors(run.result, r)
        for name, value in data["params"].items():
            if name.startswith("model.layers.1."):
                assert got[name][2] == np.ascontiguousarray(value).tobytes(), (r, name)


# ---------------------------------------------------------------- 4. optimizer sharding and the checkpoint disagree

@pytest.mark.parametrize("tool, where", MATRIX)
def test_an_optimizer_sharded_strategy_for_a_checkpoint_saved_without_it(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["noopt8"], src_strategy=data["s8"],
                  dst_strategy=data["s4"], parallel=(1, 2, 2))
    line = run.error()
    assert "saved without that optimizer sharding" in line, line


@pytest.mark.parametrize("tool, where", MATRIX)
def test_a_strategy_without_the_optimizer_sharding_the_checkpoint_has(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["ref8"], src_strategy=data["s8_noopt"],
                  dst_strategy=data["s4"], parallel=(1, 2, 2))
    line = run.error()
    assert "hold the same slice by the source strategy" in line and "different values" in line, line


# ---------------------------------------------------------------- 5. LoRA over a base checkpoint

@pytest.mark.parametrize("tool, where", MATRIX)
def test_lora_adapters_the_base_checkpoint_lacks_are_left_to_the_network(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["complete"], dst_strategy=data["s_lora"],
                  parallel=(2, 2, 2)).ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ms_lora"])
    lines = [x for x in run.output.splitlines() if "adapter parameter(s) of the destination strategy" in x]
    assert len(lines) == 1 and "8 adapter parameter(s)" in lines[0] and "mindpet_delta_lora_a" in lines[0], run.output


@pytest.mark.parametrize("tool", TOOLS)
def test_another_missing_parameter_is_an_error_unless_allowed(data, tool, tmp_path, s3_env, bucket):
    line = convert(tool, "local", tmp_path, s3_env, bucket, src=data["complete"], dst_strategy=data["s_extra"],
                   parallel=(2, 2, 2)).error()
    assert "lacks 1 parameter(s)" in line and "model.layers.0.attention.extra.weight" in line, line
    assert "allow_missing_params" in line, line
    run = convert(tool, "local", tmp_path / "allowed", s3_env, bucket, src=data["complete"],
                  dst_strategy=data["s_extra"], parallel=(2, 2, 2), allow_missing=True).ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ms_plain"])


# ---------------------------------------------------------------- 6. unified_safetensors and its training state

@pytest.mark.parametrize("tool, where", MATRIX)
def test_unified_safetensors_training_state_reaches_every_rank(data, tool, where, tmp_path, s3_env, bucket):
    run = convert(tool, where, tmp_path, s3_env, bucket, src=data["unified"], dst_strategy=data["s8"],
                  parallel=(2, 2, 2), fmt="safetensors").ok()
    synth.assert_same_checkpoint_dirs(run.result, data["ms_unified8"])   # MindSpore's own loader
    for r in range(8):
        got = tensors(run.result, r)
        for name in ("global_step", "learning_rate", "scale_sense"):
            assert got[name][2] == data["params"][name].tobytes(), (r, name)


# ---------------------------------------------------------------- 7. the input to blame

@pytest.mark.parametrize("tool", TOOLS)
def test_a_source_strategy_of_fewer_ranks_than_the_checkpoint_is_named(data, tool, tmp_path, s3_env, bucket):
    line = convert(tool, "local", tmp_path, s3_env, bucket, src=data["ref8"], src_strategy=data["s4"],
                   dst_strategy=data["s4"], parallel=(1, 2, 2)).error()
    assert "rank_4 is beyond the 4 ranks of source strategy" in line, line


# ---------------------------------------------------------------- 8. the job's own consistency

def test_parallel_sizes_that_are_not_the_jobs_world_are_refused_first(data, s3_env, bucket, tmp_path):
    form = {"config": "run_llama_7b.yaml", "load_checkpoint": data["complete"], "dst_strategy": data["s8"],
            "auto_trans_ckpt": "True", "data_parallel": "2", "model_parallel": "2", "pipeline_stage": "2",
            "remote_save_url": f"s3://{bucket}/job"}
    results = ModelArtsJob(tmp_path, s3_env, form, nodes=2, cards=2).run()
    for r in results:
        lines = [x for x in r.output.splitlines() if ": error:" in x]
        assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
        assert "data_parallel=2 x model_parallel=2 x pipeline_stage=2 = 8 devices, but this job has 4 ranks" \
               in lines[0], lines[0]
    assert obs_io.file.list_directory(f"s3://{bucket}") == []


def test_a_training_command_the_image_lacks_is_found_before_converting(data, s3_env, bucket, tmp_path):
    form = {"config": "run_llama_7b.yaml", "load_checkpoint": data["complete"], "dst_strategy": data["s8"],
            "auto_trans_ckpt": "True", "data_parallel": "2", "model_parallel": "2", "pipeline_stage": "2",
            "remote_save_url": f"s3://{bucket}/job"}
    boot = [BOOT[0], "--", "python3.99", *BOOT[3:]]
    (r,) = ModelArtsJob(tmp_path, s3_env, form, nodes=1, cards=8, boot=boot).run()
    lines = [x for x in r.output.splitlines() if ": error:" in x]
    assert r.code == 2 and len(lines) == 1 and "'python3.99' is not on PATH" in lines[0], r.output
    assert obs_io.file.list_directory(f"s3://{bucket}") == []
    assert not (tmp_path / "node0" / "output" / "transformed_checkpoint").exists()


# ---------------------------------------------------------------- 9. command-line conventions

@pytest.mark.parametrize("dry_run", [True, False])
def test_a_closed_stdout_ends_quietly(data, tmp_path, dry_run):
    """`| head -1` on the plan (the command's printed result) or on a conversion's log lines:
    one line, no traceback; a conversion goes on to write its files."""
    out = tmp_path / "out"
    cmd = (f"{TRANSFORM} {'--dry_run' if dry_run else f'--dst_checkpoint {out}'} --src_checkpoint {data['ref8']} "
           f"--src_strategy {data['s8']} --dst_strategy {data['s4']} 2>&1 | head -1; exit ${{PIPESTATUS[0]}}")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert len(done.stdout.splitlines()) == 1 and "Traceback" not in done.stdout, done.stdout
    assert done.stderr == "", done.stderr
    if dry_run:
        assert done.stdout.startswith("plan: ") and done.returncode == 141
    else:
        assert done.returncode == 0
        synth.assert_same_checkpoint_dirs(str(out), data["ref4"])


def test_a_mistyped_flag_names_the_one_meant(data, tmp_path):
    done = subprocess.run([TRANSFORM, "--src_checkpoint", data["ref8"], "--src_stratgy", data["s8"]],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "transform-checkpoint: error: unknown argument --src_stratgy: did you mean --src_strategy?"], done.stderr
    assert os.listdir(tmp_path) == []


def test_an_optimizer_shard_group_larger_than_the_checkpoints(data, tmp_path):
    """Saved with groups of 2 over dp4, read with a strategy of groups of 4: each member pair of
    the larger group holds the same rows twice; reading it so would double dimension 0."""
    from reshard import api
    from reshard.errors import ReshardError
    saved, told = str(tmp_path / "opt2"), str(tmp_path / "opt4")
    synth.write_strategy(saved, dp=4, mp=1, pp=1, opt_shard=2, params=data["params"])
    synth.write_strategy(told, dp=4, mp=1, pp=1, opt_shard=-1, params=data["params"])
    ckpt = synth.ms_transform(data["complete"], str(tmp_path / "ckpt"), None, saved)
    with pytest.raises(ReshardError, match=r"shards \d+ parameter\(s\) for the parallel optimizer, but the ranks"):
        api.transform(ckpt, str(tmp_path / "out"), src_strategy=told)
    assert not (tmp_path / "out").exists()
    api.transform(ckpt, str(tmp_path / "right"), src_strategy=saved)   # the strategy it was saved with
    got = synth.load_params(str(tmp_path / "right" / "rank_0" / "checkpoint_0.ckpt"))
    for name, value in data["params"].items():
        assert got[name][2] == np.ascontiguousarray(value).tobytes(), name
