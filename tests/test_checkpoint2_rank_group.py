"""rank_group: what MindFormers 1.9+ needs to load a MindFormers 1.7/1.8 folder saved with
save_remove_redundancy, and what checkpoint2_mode=online now writes into a node's copy of one.

MindFormers 1.9+ finds the file of a rank whose slice another rank stored only through a
storage record's rank_group (mindformers/checkpoint/reshard.py `_find_file_for_rank`: the
storage rank itself, else any record whose rank_group holds the rank; else "Cannot find storage
file for parameter ..."). 1.7/1.8 write no rank_group. The rule that fills it in
(Checkpoint2.rank_group) is checked here against the rank_group MindFormers 1.9.0 and 2.1.0
wrote themselves; MindFormers 1.7-2.1 loading such node copies of the 1.7.0 fixture is
scripts/ckpt2_oracle_matrix.py's (README, "Checkpoint 2.0").
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import synth
from cloud_entry.checkpoint2 import _node_copy
from reshard.formats.checkpoint2 import read_checkpoint2
from reshard.formats.checkpoint2.folder import held_slice
from reshard.formats.checkpoint2.select import add_rank_groups, files_read
from reshard.strategy import load_strategy

DATA = Path(__file__).resolve().parent / "data" / "checkpoint2"
RR_17 = "1.7.0-dp2mp2pp2-rr"


def _metadata(ck) -> dict:
    return json.loads(Path(ck.metadata_path).read_bytes())


@pytest.mark.parametrize("fixture", ["1.9.0-dp2mp2pp2-optshard", "1.9.0-dp2mp2pp2-rr", "2.1.0-dp2mp2pp2"])
def test_rank_groups_filled_in_equal_those_mindformers_saved(fixture):
    ck = read_checkpoint2(str(DATA / fixture))
    saved = _metadata(ck)
    stripped = _metadata(ck)
    for records in stripped["storage_data"].values():
        for rec in records:
            del rec["rank_group"]
    assert add_rank_groups(stripped, ck) == sum(len(r) for r in saved["storage_data"].values()) > 0
    assert stripped == saved


def _found_by_mindformers_19(records: list[dict], search_rank: int) -> bool:
    """MindFormers 1.9+'s lookup of the file holding search_rank's slice (reshard.py
    _find_file_for_rank)."""
    return any(r["storage_rank"] == search_rank for r in records) or \
        any(search_rank in r.get("rank_group", ()) for r in records)


def test_online_node_copy_of_a_17_save_remove_redundancy_folder_is_one_19_can_place(tmp_path):
    ck = read_checkpoint2(str(DATA / RR_17))
    raw = _metadata(ck)
    assert all("rank_group" not in rec for recs in raw["storage_data"].values() for rec in recs)
    strategy = tmp_path / "mp4"
    synth.write_strategy(str(strategy), dp=1, mp=4, pp=1, opt_shard=0,
                         params=synth.llama_params(num_layers=2, vocab=16, hidden=8, ffn=16, optimizer=True))
    names = files_read(ck, load_strategy(str(strategy)), [2, 3])
    out = tmp_path / "node"
    _node_copy(ck, names, str(out), None)
    meta = json.loads((out / Path(ck.metadata_path).parent.name / "metadata.json").read_text())
    unplaced_before = placed = 0
    for key, records in meta["storage_data"].items():
        name, (slice_id,) = ast.literal_eval(key)
        p = ck.params[name]
        holders = [lay.stage * ck.stage_devices + r for lay in p.layouts for r in range(ck.stage_devices)
                   if held_slice(lay, r, p.axis_fragmentations) == slice_id]
        for rec in records:
            assert rec["file_name"] in names and rec["rank_group"] == holders
        for rank in holders:   # every source rank holding the slice, as 1.9+ searches for it
            assert _found_by_mindformers_19(records, rank)
            placed += 1
            bare = [{k: v for k, v in r.items() if k != "rank_group"} for r in raw["storage_data"][key]]
            unplaced_before += not _found_by_mindformers_19(bare, rank)
    assert placed and unplaced_before   # the source as saved fails 1.9+'s lookup for some ranks
