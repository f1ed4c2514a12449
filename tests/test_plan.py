"""The plan is plain data from strategies (and headers): printable, and reads spread evenly."""
from __future__ import annotations

import collections

from reshard import api
from reshard.plan import Plan
from tests import synth


def test_plan_from_strategies_alone_and_read_spread(tmp_path):
    params = synth.llama_params(vocab=64, hidden=16, ffn=32)
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=params)
    plan = api.make_plan(None, src_strategy=str(tmp_path / "s8"))
    assert isinstance(plan, Plan) and not plan.with_headers
    assert [r.rank for r in plan.ranks] == [0]
    assert plan.needed_source_ranks() == list(range(8))
    text = plan.dump()
    assert "rank 0 -> rank_0/checkpoint_0.ckpt" in text and "lm_head.weight" in text
    # merging dp2 replicas: both replicas of each stage are read, about evenly
    per_rank = collections.Counter(p.src_rank for t in plan.ranks[0].tensors for p in t.pieces)
    for a, b in ((0, 2), (1, 3), (4, 6), (5, 7)):
        assert per_rank[a] and per_rank[b]
        assert abs(per_rank[a] - per_rank[b]) <= max(per_rank[a], per_rank[b]) // 2


def test_plan_with_headers_and_budget(tmp_path):
    params = synth.llama_params(vocab=64, hidden=16, ffn=32)
    full = synth.write_complete_checkpoint(str(tmp_path / "m.ckpt"), params)
    synth.write_strategy(str(tmp_path / "s4"), dp=1, mp=2, pp=2, params=params)
    plan = api.make_plan(full, dst_strategy=str(tmp_path / "s4"), fmt="safetensors")
    assert plan.with_headers and len(plan.ranks) == 4
    r0 = plan.ranks[0]
    assert r0.path == "rank_0/checkpoint_0.safetensors"
    t = {t.name: t for t in r0.tensors}
    assert t["lm_head.weight"].shape if "lm_head.weight" in t else True
    assert t["model.tok_embeddings.embedding_weight"].shape == (64, 16)
    assert t["model.layers.0.attention.wq.weight"].shape == (8, 16)
    assert t["global_step"].carried
    assert r0.buffer_bytes == max(x.nbytes for x in r0.tensors)
    rep = api.transform(full, str(tmp_path / "out"), dst_strategy=str(tmp_path / "s4"),
                        dry_run=True)
    assert rep.expected_peak_bytes > r0.buffer_bytes and not (tmp_path / "out").exists()


def test_needed_files_of_an_indexed_folder_follow_the_destination_stages(tmp_path):
    """A block of pipeline stage 1 downloads only the shards holding stage 1's tensors (and the
    values no strategy lays out); its conversion equals MindSpore's for those ranks."""
    import json
    import os
    import shutil
    from reshard.sources import classify
    params = synth.llama_params(vocab=64, hidden=16, ffn=32)
    synth.write_strategy(str(tmp_path / "s8"), dp=2, mp=2, pp=2, params=params)
    maps = synth.tensor_maps(2)
    index = {n: "model-0000%d-of-00002.safetensors" % (
        1 + (synth.pipeline_stage_of(n, 2, 2) == [1] if n in maps else 1)) for n in params}
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in sorted(set(index.values())):
        synth.write_complete_checkpoint(str(folder / f), {n: params[n] for n in params
                                                          if index[n] == f}, fmt="safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    dst = api.load_strategy(str(tmp_path / "s8"))
    is_file, entries = api.local_entries(str(folder))
    source = classify(str(folder), entries, is_file=is_file)
    source = source.with_index((folder / "model.safetensors.index.json").read_bytes())
    stage1 = api.plan_from_strategies(source, None, dst, dst_ranks=[4, 5, 6, 7])
    assert stage1.needed_files() == ["model-00002-of-00002.safetensors"]
    stage0 = api.plan_from_strategies(source, None, dst, dst_ranks=[0])
    assert stage0.needed_files() == ["model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors"]
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(folder / "model-00002-of-00002.safetensors", cache)
    plan = api.complete_plan(stage1, str(cache))
    from reshard.run import Request, Stage, run
    out = str(tmp_path / "out")
    request = Request(source, None, dst, out, stage=Stage(str(cache)))
    assert run(request, plan=plan).ranks_written == [4, 5, 6, 7]
    full = synth.write_complete_checkpoint(str(tmp_path / "full.ckpt"), params)
    ref = synth.ms_transform(full, str(tmp_path / "ref"), None, str(tmp_path / "s8"))
    for r in range(4):
        shutil.rmtree(os.path.join(ref, f"rank_{r}"))
    synth.assert_same_checkpoint_dirs(ref, out)


def test_skeleton_of_a_partial_copy_reads_the_ranks_it_has(tmp_path):
    from reshard.sources import SourceEntry, classify
    params = synth.llama_params(vocab=64, hidden=16, ffn=32)
    synth.write_strategy(str(tmp_path / "s4"), dp=2, mp=2, pp=1, params=params)
    src = api.load_strategy(str(tmp_path / "s4"))
    # replicas of the dp2 blocks: (0, 2) and (1, 3); a copy holding ranks 0 and 3 only (rank 0
    # also gives the values no strategy lays out, as MindSpore takes them)
    partial = classify("/cache", [SourceEntry(f"rank_{r}/c.ckpt", 1) for r in (0, 3)],
                       partial=True)
    plan = api.plan_from_strategies(partial, src, None, dst_ranks=[0])
    assert plan.needed_source_ranks() == [0, 3]
    assert plan.needed_files() == ["rank_0/c.ckpt", "rank_3/c.ckpt"]
    assert api.plan_from_strategies(None, src, None).needed_source_ranks() == [0, 1, 2, 3]
