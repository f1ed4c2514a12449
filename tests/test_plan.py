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
