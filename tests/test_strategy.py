"""Strategy files -> layouts: every form real jobs leave behind, merged in memory."""
from __future__ import annotations

import os
import shutil

import pytest

from reshard import api
from reshard.layout import make_layout
from reshard.strategy import load_strategy
from tests import synth


@pytest.fixture(scope="module")
def params():
    return synth.llama_params(vocab=64, hidden=16, ffn=32)


def test_folder_merged_file_and_our_merge_agree(params, tmp_path):
    ms_merged = str(tmp_path / "ms_merged.ckpt")
    synth.write_strategy(str(tmp_path / "f"), dp=2, mp=2, pp=2, opt_shard=-1, params=params,
                         merged_file=ms_merged)
    ours = str(tmp_path / "out" / "merged.ckpt")
    api.write_merged_strategy(str(tmp_path / "f"), ours)
    a, b, c = (load_strategy(p) for p in (str(tmp_path / "f"), ms_merged, ours))
    assert a.layouts == b.layouts == c.layouts
    assert (a.num_stages, a.stage_devices, a.world_size) == (2, 4, 8)
    assert a.layout_in_stage("lm_head.weight", 1) is not None
    assert a.layout_in_stage("lm_head.weight", 0) is None
    # MindSpore reads our merged file the same way it reads its own
    import mindspore as ms
    from mindspore.parallel._parallel_serialization import _extract_layout_map
    assert _extract_layout_map(ours) == _extract_layout_map(ms_merged)


def test_duplicates_are_fine_conflicts_and_gaps_are_not(params, tmp_path):
    f = tmp_path / "f"
    synth.write_strategy(str(f), dp=1, mp=2, pp=2, params=params)
    shutil.copy(f / "ckpt_strategy_rank_0.ckpt", f / "ckpt_strategy_rank_0_rank_0.ckpt")
    assert load_strategy(str(f)).world_size == 4
    other = tmp_path / "other"
    synth.write_strategy(str(other), dp=1, mp=2, pp=2, opt_shard=-1, params=params)
    synth.write_strategy(str(tmp_path / "mp1"), dp=2, mp=1, pp=2, params=params)
    shutil.copy(tmp_path / "mp1" / "ckpt_strategy_rank_0.ckpt", f / "zzz.ckpt")
    with pytest.raises(api.ReshardError, match="stage 0 layouts differ"):
        load_strategy(str(f))
    os.remove(other / "ckpt_strategy_rank_0.ckpt")
    os.remove(other / "ckpt_strategy_rank_1.ckpt")
    with pytest.raises(api.ReshardError, match="stage 0 is missing"):
        load_strategy(str(other))
    (other / "x.json").write_text("{}")
    with pytest.raises(api.ReshardError, match="mixes"):
        load_strategy(str(other))


def test_json_equals_protobuf(params, tmp_path):
    synth.write_strategy(str(tmp_path / "pb"), dp=2, mp=2, pp=2, opt_shard=2, params=params)
    synth.write_strategy(str(tmp_path / "js"), dp=2, mp=2, pp=2, opt_shard=2, params=params,
                         fmt="json")
    assert load_strategy(str(tmp_path / "pb")).layouts == \
        load_strategy(str(tmp_path / "js")).layouts


def test_layout_blocks():
    # [dp, mp] column-parallel weight, opt shard over dp: dim 0 in mp x dp blocks
    lay = make_layout([2, 2], [0, -1], 2, 2)
    assert lay.splits == (4, 1)
    assert [lay.block_of(r) for r in range(4)] == [(0, 0), (2, 0), (1, 0), (3, 0)]
    # nested: dim 0 over (dp, mp)
    nested = make_layout([2, 2], [[1, 0], -1], 0, 0)
    assert nested.splits == (4, 1) and [nested.block_of(r)[0] for r in range(4)] == [0, 1, 2, 3]
    # a norm replicated everywhere, opt-sharded over all 4 devices (size -1)
    norm = make_layout([2, 2], [-1], -1, 1)
    assert norm.splits == (4,) and sorted(norm.block_of(r) for r in range(4)) == \
        [(0,), (1,), (2,), (3,)]
