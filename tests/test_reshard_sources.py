"""reshard.sources: the rules for sources, strategy folders, output names and overlapping
locations, as pure functions (what the job applies to object-store listings), and the local
walk that feeds them."""
from __future__ import annotations

import json
import logging
import os

import pytest

from reshard import api
from reshard.errors import ReshardError
from reshard.sources import (SourceEntry, check_output, classify, output_name, overlaps,
                             strategy_files)


def E(name, size=10, mtime_ns=0):
    return SourceEntry(name, size, mtime_ns)


def test_a_file_is_one_entry_named_by_its_file_name():
    s = classify("/data/llama.ckpt", [E("llama.ckpt")], is_file=True)
    assert s.complete and s.is_file and s.files == {0: "llama.ckpt"}
    assert s.base == "/data" and s.path_of("llama.ckpt") == "/data/llama.ckpt"
    assert s.used_names() == ["llama.ckpt"]
    url = classify("obs://b/models/llama.safetensors", [E("llama.safetensors")])   # inferred
    assert url.is_file and url.base == "obs://b/models"
    assert url.path_of(url.files[0]) == "obs://b/models/llama.safetensors"
    assert classify("llama.ckpt", [E("llama.ckpt")]).base == "."
    with pytest.raises(ReshardError, match="notes.txt is not a .ckpt or .safetensors file"):
        classify("/d/notes.txt", [E("notes.txt")], is_file=True)
    with pytest.raises(ReshardError, match=r"m.ckpt is not a \.safetensors file"):
        classify("/d/m.ckpt", [E("m.ckpt")], "safetensors", is_file=True)


def test_folder_of_complete_files_is_their_union():
    s = classify("/m", [E("b.safetensors"), E("a.safetensors"), E("README.md"), E(".x.ckpt"),
                        E("sub/c.ckpt")])
    assert s.complete and not s.is_file and s.files == {0: "a.safetensors", 1: "b.safetensors"}
    assert s.base == "/m" and s.index is None and not s.needs_index
    assert classify("/m", [E("a.ckpt"), E("b.safetensors")], "ckpt").files == {0: "a.ckpt"}


def test_rank_folders_last_file_in_name_order_with_notes():
    entries = [E("rank_0/ckpt_0-100.ckpt", mtime_ns=5), E("rank_0/ckpt_0-200.ckpt", mtime_ns=9),
               E("rank_1/ckpt_1-200.ckpt", mtime_ns=4), E("rank_1/ckpt_1-300.ckpt", mtime_ns=3),
               E("rank_1/.ckpt_1-400.ckpt.tmp-7", mtime_ns=8), E("full.ckpt")]
    s = classify("obs://b/run", entries)
    assert not s.complete and s.files == {0: "rank_0/ckpt_0-200.ckpt", 1: "rank_1/ckpt_1-300.ckpt"}
    assert s.used_names() == ["rank_0/ckpt_0-200.ckpt", "rank_1/ckpt_1-300.ckpt"]
    info = [n.text for n in s.notes if n.level == logging.INFO]
    warn = [n.text for n in s.notes if n.level == logging.WARNING]
    assert any("rank 0: 2 checkpoints" in t and "rank_0/ckpt_0-200.ckpt" in t for t in info)
    assert any("rank_1/ckpt_1-200.ckpt is newer than the chosen rank_1/ckpt_1-300.ckpt" in t
               for t in warn)
    assert not any("rank 0" in t for t in warn)          # the chosen one is the newest there
    assert any("ignoring 1 checkpoint file(s) beside" in t for t in info)


def test_format_filter_and_mixed_rank_folder():
    entries = [E("rank_0/a.ckpt"), E("rank_0/b.safetensors"), E("rank_1/a.ckpt")]
    with pytest.raises(ReshardError, match=r"^/m/rank_0 mixes \.ckpt and \.safetensors files$"):
        classify("/m", entries)
    assert classify("/m", entries, "ckpt").files == {0: "rank_0/a.ckpt", 1: "rank_1/a.ckpt"}
    # rank_1 holds no .safetensors file: a trailing gap, which the plan checks against the
    # source strategy's rank count
    assert classify("/m", entries, "safetensors").files == {0: "rank_0/b.safetensors"}


def test_gaps_and_empty_folders():
    with pytest.raises(ReshardError, match=r"^/m/rank_1: missing or empty \(rank folders"):
        classify("/m", [E("rank_0/a.ckpt"), E("rank_2/a.ckpt")])
    with pytest.raises(ReshardError, match="/m/rank_1: missing or empty"):
        classify("/m", [E("rank_0/a.ckpt"), E("rank_1/"), E("rank_2/a.ckpt")])
    partial = classify("/m", [E("rank_0/a.ckpt"), E("rank_2/a.ckpt")], partial=True)
    assert partial.files == {0: "rank_0/a.ckpt", 2: "rank_2/a.ckpt"}
    with pytest.raises(ReshardError, match="holds no .ckpt or .safetensors file and no rank_"):
        classify("/m", [])
    with pytest.raises(ReshardError, match="holds no .ckpt or .safetensors file"):
        classify("/m", [E("README.md"), E(".hidden.ckpt")])
    with pytest.raises(ReshardError, match="rank_<r> folders hold no"):
        classify("/m", [E("rank_0/"), E("rank_1/notes.txt")])


def test_safetensors_index():
    files = [E("model-00001-of-00002.safetensors"), E("model-00002-of-00002.safetensors"),
             E("model-00003-of-00003.safetensors"), E("model.safetensors.index.json")]
    s = classify("/hf", files)
    assert s.needs_index and s.index_name == "model.safetensors.index.json"
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}, "metadata": {}}
    r = s.with_index(json.dumps(index).encode())
    assert r.files == {0: "model-00001-of-00002.safetensors",
                       1: "model-00002-of-00002.safetensors"}
    assert r.index == index["weight_map"] and not r.needs_index
    assert "model.safetensors.index.json" in r.used_names()
    assert any("ignoring model-00003-of-00003.safetensors" in n.text for n in r.notes)
    # MindFormers' flat param_name_map.json
    mf = classify("/mf", [E("x.safetensors"), E("param_name_map.json")])
    assert mf.with_index('{"a": "x.safetensors"}').index == {"a": "x.safetensors"}
    with pytest.raises(ReshardError, match="parameter b is in gone.safetensors, which is not"):
        s.with_index(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "gone.safetensors"}}))
    with pytest.raises(ReshardError, match="index.json: not a safetensors index"):
        s.with_index(b"[1, 2]")
    with pytest.raises(ReshardError, match="several indexes"):
        classify("/hf", files + [E("param_name_map.json")])
    # a .ckpt folder has no index
    assert not classify("/c", [E("a.ckpt"), E("model.safetensors.index.json")]).needs_index


def test_output_name():
    assert output_name(3, "checkpoint_", "ckpt") == "rank_3/checkpoint_3.ckpt"
    assert output_name(0, "llama_", "safetensors") == "rank_0/llama_0.safetensors"


def test_strategy_files_rule():
    names = ["ckpt_strategy_rank_0.ckpt", "ckpt_strategy_rank_0-7.ckpt", "notes.txt",
             "ckpt_strategy_rank_5_rank_5.ckpt", ".ckpt_strategy_rank_9.ckpt"]
    assert strategy_files(names, "/s") == ["ckpt_strategy_rank_0-7.ckpt",
                                           "ckpt_strategy_rank_0.ckpt",
                                           "ckpt_strategy_rank_5_rank_5.ckpt"]
    assert strategy_files(["b.json", "a.json"], "/s") == ["a.json", "b.json"]
    with pytest.raises(ReshardError, match=r"^strategy folder obs://b/s mixes \.ckpt and \.json"):
        strategy_files(["a.ckpt", "b.json"], "obs://b/s")
    with pytest.raises(ReshardError, match="strategy folder /s holds no"):
        strategy_files(["notes.txt"], "/s")


def test_overlaps_local(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (tmp_path / "link").symlink_to(d)
    assert overlaps(str(d), str(d)) and overlaps(str(d), str(d) + "/")
    assert overlaps(str(d / "out"), str(d)) and overlaps(str(d), str(d / "out"))
    assert overlaps(str(tmp_path / "link" / "x"), str(d))          # after resolving links
    assert not overlaps(str(tmp_path / "ckpt2"), str(d))
    assert not overlaps(str(tmp_path / "a"), str(tmp_path / "b"))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert overlaps("ckpt/out", str(d))
    finally:
        os.chdir(cwd)


def test_overlaps_urls():
    assert overlaps("obs://b/run/ckpt", "s3://b/run/ckpt/")
    assert overlaps("s3://b/run", "obs://b/run/ckpt/rank_0")
    assert overlaps("obs://b", "s3://b/x") and overlaps("obs://b/", "obs://b/x")
    assert not overlaps("obs://b/run", "obs://b/run2")
    assert not overlaps("obs://b/run", "obs://c/run")
    assert not overlaps("obs://b/run", "/b/run")
    with pytest.raises(ReshardError, match="obs:///run: no bucket name"):
        overlaps("obs:///run", "obs://b/run")
    with pytest.raises(ReshardError, match=r"^--dst_checkpoint obs://b/x/out overlaps "
                                           r"--src_checkpoint s3://b/x: refusing"):
        check_output("obs://b/x/out", "--dst_checkpoint",
                     {"--src_strategy": None, "--src_checkpoint": "s3://b/x"})


def test_find_sources_walks_a_local_folder_into_the_same_rules(tmp_path):
    m = tmp_path / "m"
    for r in range(2):
        (m / f"rank_{r}").mkdir(parents=True)
        for step in (100, 200):
            (m / f"rank_{r}" / f"ckpt_{r}-{step}.ckpt").write_bytes(b"x" * step)
    (m / "rank_2").mkdir()                                   # an empty rank folder: a gap
    (m / "rank_3").mkdir()
    (m / "rank_3" / "ckpt_3-100.ckpt").write_bytes(b"x")
    is_file, entries = api.local_entries(str(m))
    assert not is_file and SourceEntry("rank_2/", 0) in entries
    assert any(e.name == "rank_0/ckpt_0-200.ckpt" and e.size == 200 for e in entries)
    with pytest.raises(ReshardError, match="rank_2: missing or empty"):
        api.find_sources(str(m))
    s = api.find_sources(str(m), partial=True)
    assert s == classify(str(m), entries, is_file=False, partial=True)
    assert s.files == {0: "rank_0/ckpt_0-200.ckpt", 1: "rank_1/ckpt_1-200.ckpt",
                       3: "rank_3/ckpt_3-100.ckpt"}
    one = api.find_sources(str(m / "rank_0" / "ckpt_0-100.ckpt"))
    assert one.is_file and one.base == str(m / "rank_0") and one.files == {0: "ckpt_0-100.ckpt"}
    with pytest.raises(ReshardError, match="does not exist"):
        api.find_sources(str(tmp_path / "nothing"))
