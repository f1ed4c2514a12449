"""Data integrity: never writing into an input, sharded safetensors folders (index, tied
copies), sources saved with redundancy removed, every check before the first write, zero-size
tensors, and the plan as the contract (strategies parsed once, two plan builds, the files a
caller downloads). Conversions are compared with MindSpore's own bit for bit where it can do
them."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from reshard import api, plan as plan_module, strategy as strategy_module
from reshard.cli import main
from reshard.errors import ReshardError
from reshard.run import Request, Stage, run
from reshard.sources import classify
from tests import synth
from conftest import errors_only


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    params = synth.llama_params(vocab=64, hidden=32, ffn=64)
    d = {"root": root, "params": params,
         "full": synth.write_complete_checkpoint(str(root / "full.ckpt"), params)}
    for key, kw in {"s8": dict(dp=2, mp=2, pp=2), "s4": dict(dp=1, mp=2, pp=2),
                    "s4r": dict(dp=2, mp=2, pp=1), "s2": dict(dp=1, mp=2, pp=1)}.items():
        d[key] = str(root / key)
        synth.write_strategy(d[key], params=params, **kw)
    d["ms8"] = synth.ms_transform(d["full"], str(root / "ms8"), None, d["s8"])
    d["ms4r"] = synth.ms_transform(d["full"], str(root / "ms4r"), None, d["s4r"])
    return d


def _one_line_failure(capsys, argv, culprit):
    rc = main(argv)
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert culprit in err, err
    return err


def _tree(folder):
    """Every file below folder with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


# ---------------------------------------------------------------- never write into an input
def test_output_overlapping_an_input_is_refused(w, tmp_path, capsys):
    src = tmp_path / "D"
    shutil.copytree(w["ms8"], src)
    before = _tree(src)
    (tmp_path / "link").symlink_to(src)
    strategy = tmp_path / "s4"
    shutil.copytree(w["s4"], strategy)
    base = ["--src_checkpoint", str(src), "--src_strategy", w["s8"],
            "--dst_strategy", str(strategy)]
    for dst, culprit in ((src, "--src_checkpoint"), (src / "out", "--src_checkpoint"),
                         (tmp_path, "--src_checkpoint"), (tmp_path / "link", "--src_checkpoint"),
                         (strategy, "--dst_strategy"), (strategy / "out", "--dst_strategy")):
        err = _one_line_failure(capsys, base + ["--dst_checkpoint", str(dst)], culprit)
        assert "refusing to write into an input" in err
    _one_line_failure(capsys, ["--src_checkpoint", str(src), "--src_strategy", str(strategy),
                               "--dst_strategy", w["s4"], "--dst_checkpoint",
                               str(strategy / "x")], "--src_strategy")
    assert _tree(src) == before and sorted(os.listdir(strategy)) == sorted(os.listdir(w["s4"]))
    # a complete file beside the output is not an overlap; the engine's own API refuses too
    with pytest.raises(ReshardError, match="overlaps source checkpoint"):
        api.transform(str(src), str(src), src_strategy=w["s8"], dst_strategy=w["s4"])
    assert _tree(src) == before
    # URLs: obs:// and s3:// name the same bucket; refused before any request is made
    _one_line_failure(capsys, ["--src_checkpoint", "s3://bkt/runs/D", "--src_strategy", w["s8"],
                               "--dst_checkpoint", "obs://bkt/runs/D/out"], "--src_checkpoint")
    _one_line_failure(capsys, ["--src_checkpoint", "obs:///runs/D", "--dst_checkpoint",
                               str(tmp_path / "o")], "--src_checkpoint obs:///runs/D: no bucket")


def test_complete_file_beside_its_output_converts(w, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(w["full"], folder / "llama.ckpt")
    out = folder / "llama_8"
    api.transform(str(folder / "llama.ckpt"), str(out), dst_strategy=w["s8"])
    synth.assert_same_checkpoint_dirs(w["ms8"], str(out))


# -------------------------------------------------------------- sharded safetensors folders
def _shards(w, folder, parts, index=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, names in enumerate(parts):
        synth.write_complete_checkpoint(str(folder / f"model-{i + 1:05d}-of-{len(parts):05d}"
                                                     f".safetensors"),
                                        {n: w["params"][n] for n in names}, fmt="safetensors")
    if index is not None:
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": index}))
    return str(folder)


def test_index_decides_and_a_stale_shard_is_never_mixed_in(w, tmp_path, capsys):
    names = list(w["params"])
    half = len(names) // 2
    parts = (names[:half], names[half:])
    index = {n: f"model-{1 + (i >= half):05d}-of-00002.safetensors" for i, n in enumerate(names)}
    folder = _shards(w, tmp_path / "hf", parts, index)
    # a stale shard of an older export beside it, holding other values of some parameters
    stale = {n: np.asarray(w["params"][n]) * 0 for n in names[:3]}
    synth.write_complete_checkpoint(str(tmp_path / "hf" / "model-00001-of-00003.safetensors"),
                                    stale, fmt="safetensors")
    out = str(tmp_path / "out")
    assert main(["--src_checkpoint", folder, "--dst_strategy", w["s8"],
                 "--dst_checkpoint", out]) == 0
    synth.assert_same_checkpoint_dirs(w["ms8"], out)
    assert "ignoring model-00001-of-00003.safetensors" in capsys.readouterr().err
    # the index puts a parameter in a file that does not hold it
    bad = dict(index, **{"lm_head.weight": "model-00001-of-00002.safetensors"})
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": bad}))
    out2 = str(tmp_path / "out2")
    _one_line_failure(capsys, ["--src_checkpoint", folder, "--dst_strategy", w["s8"],
                               "--dst_checkpoint", out2],
                      "puts parameter lm_head.weight in model-00001-of-00002.safetensors")
    assert not os.path.exists(out2)


def test_without_index_tied_copies_are_fine_different_values_are_not(w, tmp_path, capsys):
    names = list(w["params"])
    half = len(names) // 2
    tied = "model.tok_embeddings.embedding_weight"
    folder = _shards(w, tmp_path / "tied", (names[:half], names[half:] + [tied]))
    out = str(tmp_path / "out")
    api.transform(folder, out, dst_strategy=w["s8"])
    synth.assert_same_checkpoint_dirs(w["ms8"], out)
    clash = tmp_path / "clash"
    _shards(w, clash, (names[:half], names[half:]))
    synth.write_complete_checkpoint(str(clash / "model-00003-of-00003.safetensors"),
                                    {tied: np.asarray(w["params"][tied]) + 1}, fmt="safetensors")
    out2 = str(tmp_path / "out2")
    err = _one_line_failure(capsys, ["--src_checkpoint", str(clash), "--dst_strategy", w["s8"],
                                     "--dst_checkpoint", out2], f"parameter {tied}:")
    assert "model-00001-of-00002.safetensors and model-00003-of-00003.safetensors" in err
    assert not os.path.exists(out2)


# -------------------------------------------------------------- redundancy-removed sources
@pytest.fixture(scope="module")
def red(w):
    """ms4r (dp2 mp2) and ms8 (dp2 mp2 pp2) saved with redundancy removed."""
    out = {}
    for key, devices in (("ms4r", 4), ("ms8", 4)):
        strategy = w["s4r"] if key == "ms4r" else w["s8"]
        folder = str(w["root"] / f"red_{key}")
        out[key] = (folder, synth.remove_redundancy(w[key], folder, strategy, devices))
    return out


def test_redundancy_removed_sources_convert_like_the_full_ones(w, red, tmp_path):
    folder, kept = red["ms4r"]
    every = set(synth.load_params(os.path.join(w["ms4r"], "rank_0", "checkpoint_0.ckpt")))
    assert all(kept[r] < every for r in kept)            # really removed, from every rank
    for dst_key in (None, "s2", "s8"):
        mine, ref = str(tmp_path / f"mine_{dst_key}"), str(tmp_path / f"ref_{dst_key}")
        dst = w[dst_key] if dst_key else None
        api.transform(folder, mine, src_strategy=w["s4r"], dst_strategy=dst)
        synth.ms_transform(w["ms4r"], ref, w["s4r"], dst)       # the full (redundant) source
        synth.assert_same_checkpoint_dirs(ref, mine)
    folder8, _ = red["ms8"]
    mine, ref = str(tmp_path / "mine8_4"), str(tmp_path / "ref8_4")
    api.transform(folder8, mine, src_strategy=w["s8"], dst_strategy=w["s4"], process_num=2)
    synth.ms_transform(w["ms8"], ref, w["s8"], w["s4"])
    synth.assert_same_checkpoint_dirs(ref, mine)


def test_redundancy_removed_job_flow_fetches_the_replica_that_holds_it(w, red, tmp_path):
    """The job's flow: skeleton -> download needed_files() -> complete_plan, which asks for
    the other replica's file only where a chosen file lacks a parameter."""
    folder, _ = red["ms4r"]
    src, dst = api.load_strategy(w["s4r"]), None
    is_file, entries = api.local_entries(folder)
    source = classify("obs://bucket/red", entries, is_file=is_file)    # as from a listing
    skeleton = api.plan_from_strategies(source, src, dst)
    cache = tmp_path / "cache"
    fetched = []

    def fetch(names):
        fetched.extend(names)
        for n in names:
            os.makedirs(os.path.dirname(cache / n), exist_ok=True)
            shutil.copy(os.path.join(folder, n), cache / n)

    fetch(skeleton.needed_files())
    first = list(fetched)
    plan = api.complete_plan(skeleton, str(cache), fetch=fetch)
    report = run(Request(source, src, dst, str(tmp_path / "out"), stage=Stage(str(cache))), plan=plan)
    assert report.files_written == ["rank_0/checkpoint_0.ckpt"]
    ref = str(tmp_path / "ref")
    synth.ms_transform(w["ms4r"], ref, w["s4r"], None)
    synth.assert_same_checkpoint_dirs(ref, str(tmp_path / "out"))
    assert set(plan.needed_files()) <= set(fetched) and len(fetched) >= len(first)
    # without fetch, a parameter only an absent file could hold is an error naming that file
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    shutil.rmtree(partial / "rank_2")
    with pytest.raises(ReshardError, match="rank_2") as info:
        api.transform(str(partial), str(tmp_path / "never"), src_strategy=w["s4r"],
                      dst_ranks=[0])
    assert "\n" not in str(info.value) and not os.path.exists(tmp_path / "never")


# -------------------------------------------------------------- all checks before any write
def _resave_without(path, name, replacement=None):
    import mindspore as ms
    loaded = ms.load_checkpoint(str(path))
    keep = [{"name": n, "data": v} for n, v in loaded.items() if n != name]
    if replacement is not None:
        keep.append({"name": name, "data": ms.Tensor(replacement)})
    os.remove(path)
    ms.save_checkpoint(keep, str(path))


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_an_error_only_the_last_rank_reads_leaves_nothing_written(w, tmp_path, capsys, damage):
    """lm_head's slices that only the last destination rank reads are missing from every
    replica's file, or one replica holds another shape: found before rank 0 is written."""
    src = tmp_path / "src"
    shutil.copytree(w["ms8"], src)
    plan = api.make_plan(str(src), src_strategy=w["s8"], dst_strategy=w["s4"])
    name = "lm_head.weight"

    def lm_head_ranks(rp):
        return {p.src_rank for t in rp.tensors if t.name == name for p in t.pieces}

    last = lm_head_ranks(plan.ranks[-1])
    replicas = {r for r in range(4, 8) for x in last if r % 2 == x % 2}   # same mp slice
    assert last and not replicas & set().union(*map(lm_head_ranks, plan.ranks[:-1]))
    victims = sorted(replicas) if damage == "missing" else sorted(replicas)[-1:]
    for r in victims:
        _resave_without(src / f"rank_{r}" / f"checkpoint_{r}.ckpt", name,
                        None if damage == "missing" else np.zeros((3, 32), np.float32))
    out = str(tmp_path / "out")
    err = _one_line_failure(capsys, ["--src_checkpoint", str(src), "--src_strategy", w["s8"],
                                     "--dst_strategy", w["s4"], "--dst_checkpoint", out], name)
    assert ("no source file holds" if damage == "missing" else "holds Float32[3, 32]") in err
    assert not os.path.exists(out) or not _tree(out)


# ------------------------------------------------------------------------- zero-size tensors
def test_ckpt_dims_zero_reads_back_as_a_scalar_in_mindspore(tmp_path):
    """The claim behind refusing [0] in .ckpt: MindSpore loads dims [0] as shape ()."""
    import mindspore as ms
    from reshard.formats import TensorMeta, open_writer
    path = tmp_path / "z.ckpt"
    with open_writer(path, [TensorMeta("z", "Float32", (0,)), TensorMeta("m", "Float32", (0, 4))]):
        pass
    loaded = ms.load_checkpoint(str(path))
    assert loaded["z"].shape == () and loaded["m"].shape == (0, 4)


def test_zero_size_tensors(w, tmp_path, capsys):
    params = dict(w["params"])
    params["empty_vec"] = np.zeros((0,), np.float32)
    params["empty_rows"] = np.zeros((0, 32), np.float16)
    src = synth.write_complete_checkpoint(str(tmp_path / "z.safetensors"), params,
                                          fmt="safetensors")
    lay = {"dev_matrix": [1, 2], "tensor_map": [0, -1], "param_split_shape": [],
           "indices_offset": [], "field": 0, "opt_weight_shard_step": 0,
           "opt_weight_shard_size": 0}
    layouts = {n: dict(lay, tensor_map=[-1] * w["params"][n].ndim) for n in synth.tensor_maps(2)}
    layouts["empty_rows"] = lay
    strategy = synth.write_stage_layouts(str(tmp_path / "mp2.ckpt"), 0, layouts)
    out = str(tmp_path / "out")
    _one_line_failure(capsys, ["--src_checkpoint", src, "--dst_strategy", strategy,
                               "--dst_checkpoint", out],
                      "parameter empty_vec: a tensor of shape [0] cannot be stored in .ckpt")
    assert not os.path.exists(out)
    capsys.readouterr()
    assert main(["--src_checkpoint", src, "--dst_strategy", strategy, "--dst_checkpoint", out,
                 "--format", "safetensors"]) == 0
    for r in range(2):
        got = synth.load_params(os.path.join(out, f"rank_{r}", f"checkpoint_{r}.safetensors"))
        assert got["empty_vec"][1] == (0,) and got["empty_rows"][1] == (0, 32)
        assert got["lm_head.weight"][2] == np.ascontiguousarray(
            w["params"]["lm_head.weight"]).tobytes()
    # (0, 32) is fine in .ckpt: MindSpore reads it back with that shape
    del params["empty_vec"]
    src2 = synth.write_complete_checkpoint(str(tmp_path / "z2.safetensors"), params,
                                           fmt="safetensors")
    out2 = str(tmp_path / "out2")
    api.transform(src2, out2, dst_strategy=strategy)
    got = synth.load_params(os.path.join(out2, "rank_1", "checkpoint_1.ckpt"))
    assert got["empty_rows"][1] == (0, 32)


# ----------------------------------------------------------- the plan is the contract
def test_job_flow_parses_each_strategy_once_and_builds_two_plans(w, tmp_path, monkeypatch):
    parses, builds = [], []
    real_read, real_build = strategy_module._read_file, plan_module.build_plan
    monkeypatch.setattr(strategy_module, "_read_file",
                        lambda path, data: parses.append(path) or real_read(path, data))

    def counting_build(*a, **k):
        builds.append(k.get("headers") is not None)
        return real_build(*a, **k)

    monkeypatch.setattr(plan_module, "build_plan", counting_build)
    import reshard.api as api_module
    monkeypatch.setattr(api_module, "build_plan", counting_build)
    merged8 = str(tmp_path / "merged8.ckpt")
    api.write_merged_strategy(api.load_strategy(w["s8"]), merged8)
    parses.clear()
    src, dst = api.load_strategy(merged8), api.load_strategy(w["s4"])
    assert len(parses) == 3      # the merged file and the two distinct stage files of s4
    is_file, entries = api.local_entries(w["ms8"])
    skeleton = api.plan_from_strategies(classify("obs://b/ms8", entries, is_file=is_file),
                                        src, dst, dst_ranks=[2, 3])
    needed = skeleton.needed_files()
    assert needed and all(f.startswith(("rank_4/", "rank_5/", "rank_6/", "rank_7/"))
                          for f in needed)
    cache = tmp_path / "cache"
    for f in needed:
        os.makedirs(os.path.dirname(cache / f), exist_ok=True)
        shutil.copy(os.path.join(w["ms8"], f), cache / f)
    plan = api.complete_plan(skeleton, str(cache))
    request = Request(skeleton.source, src, dst, str(tmp_path / "out"), stage=Stage(str(cache)))
    report = run(request, plan=plan)
    assert len(parses) == 3 and builds == [False, True]
    assert report.files_written == ["rank_2/checkpoint_2.ckpt", "rank_3/checkpoint_3.ckpt"]
    assert report.ranks_written == [2, 3] and report.ranks_skipped == []
    again = run(request, plan=plan)
    assert again.files_written == [] and again.ranks_skipped == [2, 3]
    ref = str(tmp_path / "ref")
    synth.ms_transform(w["ms8"], ref, w["s8"], w["s4"])
    for r in (0, 1):
        shutil.rmtree(os.path.join(ref, f"rank_{r}"))
    synth.assert_same_checkpoint_dirs(ref, str(tmp_path / "out"))


def test_several_checkpoints_in_a_rank_folder_are_named_in_the_output(w, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(w["ms8"], src)
    old = src / "rank_1" / "checkpoint_1_old.ckpt"      # sorts after checkpoint_1.ckpt
    shutil.copy(src / "rank_1" / "checkpoint_1.ckpt", old)
    newer = src / "rank_1" / "checkpoint_1.ckpt"
    os.utime(old, ns=(10**18, 10**18))
    os.utime(newer, ns=(2 * 10**18, 2 * 10**18))
    out = str(tmp_path / "out")
    assert main(["--src_checkpoint", str(src), "--src_strategy", w["s8"], "--dst_strategy",
                 w["s4"], "--dst_checkpoint", out]) == 0
    captured = capsys.readouterr()
    assert "INFO source rank 1: 2 checkpoints in rank_1/, using the last in name order: " \
           "rank_1/checkpoint_1_old.ckpt" in captured.err
    assert "WARNING source rank 1: rank_1/checkpoint_1.ckpt is newer than the chosen " \
           "rank_1/checkpoint_1_old.ckpt" in captured.err


def test_a_checkpoint_lacking_weights_of_the_destination_is_refused(tmp_path):
    """Missing model weights would train from random: an error naming one, nothing written.
    Missing optimizer states (an inference checkpoint under a training strategy) are skipped."""
    import reshard
    from reshard.errors import ReshardError
    params = synth.llama_params(num_layers=2, vocab=32, hidden=16, ffn=32)
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=params)
    partial = {n: a for n, a in params.items() if not n.startswith(("model.layers.1.", "adam_"))}
    src = synth.write_complete_checkpoint(str(tmp_path / "partial.ckpt"), partial)
    with pytest.raises(ReshardError, match=r"lacks \d+ parameter\(s\) of the destination strategy .*model\.layers\.1\."):
        reshard.transform(src, str(tmp_path / "out"), dst_strategy=str(tmp_path / "s8"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))
    inference = {n: a for n, a in params.items() if not n.startswith("adam_")}
    src = synth.write_complete_checkpoint(str(tmp_path / "inference.ckpt"), inference)
    report = reshard.transform(src, str(tmp_path / "out2"), dst_strategy=str(tmp_path / "s8"))
    assert any("optimizer states" in n for n in report.plan.notes)
    synth.assert_same_checkpoint_dirs(str(tmp_path / "out2"),
                                      synth.ms_transform(src, str(tmp_path / "ms"), None, str(tmp_path / "s8")))
