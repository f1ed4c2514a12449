"""MindFormers Checkpoint 2.0: read, convert, write (reshard.formats.checkpoint2).

The fixtures under tests/data/checkpoint2/ were written by MindFormers' own save_checkpoint
(scripts/ckpt2_oracle.py write --small, MindFormers 1.7.0 (float only: --no-bf16, its loader
cannot assemble bfloat16 on CPU), 1.9.0 and 2.1.0 on CPU), and each
<fixture>.full.safetensors holds the complete tensors MindFormers' own load_checkpoint gives for
it (ckpt2_oracle.py check --dump-full): conversions are compared with those bit for bit.
MindFormers' loader reading what we write runs in scripts/ckpt2_oracle.py (its venvs are not
part of the suite; README, "Checkpoint 2.0").
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import synth
from reshard import api
from reshard.errors import ReshardError
from reshard.formats import open_reader
from reshard.formats.checkpoint2 import TRACKER, read_checkpoint2
from reshard.formats.checkpoint2.convert import (check_strategy_against_metadata, convert_checkpoint, open_checkpoint,
                                                    prepare_checkpoint2)
from reshard.formats.checkpoint2.write import COMMON_FIELDS, folded, layout_dict
from reshard.layout import make_layout
from reshard.strategy import load_strategy

DATA = Path(__file__).resolve().parent / "data" / "checkpoint2"
FIXTURES = ["1.7.0-dp2mp2pp2-optshard", "1.7.0-dp2mp2pp2-rr", "1.9.0-dp2mp2pp2-optshard",
            "1.9.0-dp2mp2pp2-rr", "2.1.0-dp2mp2pp2"]


def tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    with open_reader(str(path)) as r:
        return {n: (m.dtype, m.shape, r.read(n).tobytes()) for n, m in r.metas.items()}


def mindformers_full(fixture: str) -> dict:
    return tensors(DATA / f"{fixture}.full.safetensors")


def only_file(folder: Path) -> Path:
    (f,) = [p for p in folder.rglob("*") if p.is_file() and ".reshard" not in p.parts
            and p.suffix in (".ckpt", ".safetensors")]
    return f


def strategy(tmp_path: Path, dp: int, mp: int, pp: int, opt_shard: int = 0):
    params = synth.llama_params(**synth.SMALL_LLAMA, optimizer=True)
    folder = tmp_path / f"strategy-{dp}-{mp}-{pp}-{opt_shard}"
    synth.write_strategy(str(folder), dp=dp, mp=mp, pp=pp, opt_shard=opt_shard, params=params)
    return load_strategy(str(folder))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_to_complete_is_what_mindformers_loads(tmp_path, fixture):
    """Checkpoint 2.0 -> one complete file: every tensor MindFormers' loader gives, bit for bit;
    and the optimizer's undescribed values (global_step, learning_rate) carried from the opt
    files, where MindFormers saved them."""
    out = tmp_path / "out"
    convert_checkpoint(str(DATA / fixture), str(out), fmt="safetensors")
    got, want = tensors(only_file(out)), mindformers_full(fixture)
    assert {n: got[n] for n in want} == want
    extra = set(got) - set(want)
    if fixture.endswith("-rr"):   # MindFormers saves only what metadata.json describes then
        assert extra == set()
    else:
        assert extra == {"global_step", "learning_rate"}
        assert got["global_step"][0] == "Int32"


@pytest.mark.parametrize("fixture", ["1.7.0-dp2mp2pp2-rr", "1.9.0-dp2mp2pp2-optshard",
                                     "1.9.0-dp2mp2pp2-rr"])
@pytest.mark.parametrize("layout", [(1, 4, 1, 0), (2, 2, 2, -1), (4, 1, 2, 2)])
def test_to_rank_folders_equals_converting_the_complete_tensors(tmp_path, fixture, layout):
    """Checkpoint 2.0 -> rank folders of a destination strategy: the same bytes as the engine's
    conversion of the complete tensors MindFormers loads (that path is checked against
    MindSpore's own conversion in test_reshard)."""
    dst = strategy(tmp_path, *layout)
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    convert_checkpoint(str(DATA / fixture), str(ours), dst_strategy=dst, fmt="safetensors")
    api.transform(str(DATA / f"{fixture}.full.safetensors"), str(ref), dst_strategy=dst,
                  fmt="safetensors")
    for r in range(dst.world_size):
        a = tensors(ours / f"rank_{r}" / f"checkpoint_{r}.safetensors")
        b = tensors(ref / f"rank_{r}" / f"checkpoint_{r}.safetensors")
        assert {n: a[n] for n in b} == b, r
        assert set(a) - set(b) <= {"global_step", "learning_rate"}


@pytest.mark.parametrize("release, fixture", [
    ("1.7", "1.7.0-dp2mp2pp2-optshard"), ("1.8", "1.7.0-dp2mp2pp2-optshard"),
    ("1.9", "1.9.0-dp2mp2pp2-optshard"), ("2.0", "1.9.0-dp2mp2pp2-optshard"),
    ("2.1", "1.9.0-dp2mp2pp2-optshard")])
def test_written_checkpoint2_reads_back_and_is_laid_out_as_mindformers_writes(tmp_path, release, fixture):
    """Checkpoint 2.0 -> Checkpoint 2.0 of the saved layout (optimizer sharding folded in): the
    files, tracker, common.json fields and metadata.json of MindFormers' save (1.7's and 1.8's
    are the same: no rank_group; 1.9+ add it), and it reads back to the same complete tensors."""
    dst = strategy(tmp_path, 2, 2, 2, -1)
    out = tmp_path / "ck2"
    convert_checkpoint(str(DATA / fixture), str(out), dst_strategy=dst, fmt="checkpoint2", release=release)
    assert (out / TRACKER).read_bytes() == b"1234"
    it = out / "iteration_00001234"
    names = sorted(p.name for p in it.iterdir())
    assert names == sorted([f"CKP-{k}-{r:07d}-0000008.safetensors" for k in ("model", "opt")
                            for r in range(8)] + ["common.json", "metadata.json"])
    common = json.loads((it / "common.json").read_text())
    assert tuple(common) == COMMON_FIELDS[release] and common["step_num"] == 1234
    text = (it / "metadata.json").read_text()
    assert ("\n" in text) == (release != "2.1")
    meta = json.loads(text)
    # the same metadata MindFormers saved for this very layout (parameter order aside)
    theirs = json.loads((DATA / fixture / "iteration_00001234" / "metadata.json").read_text())
    assert meta["state_dict_metadata"] == theirs["state_dict_metadata"]
    assert meta["storage_data"] == theirs["storage_data"]
    for name in names:   # and the very shards it saved, byte for byte
        if name.endswith(".safetensors"):
            assert (it / name).read_bytes() == (DATA / fixture / it.name / name).read_bytes(), name
    back = tmp_path / "back"
    convert_checkpoint(str(out), str(back), fmt="safetensors")
    got, want = tensors(only_file(back)), mindformers_full(fixture)
    assert {n: got[n] for n in want} == want


def test_legacy_rank_folders_to_checkpoint2(tmp_path):
    """Rank folders + source strategy -> Checkpoint 2.0 (moments to the opt files, iteration
    named), reading back to the complete tensors."""
    fixture = "2.1.0-dp2mp2pp2"
    src_strategy = strategy(tmp_path, 1, 4, 1)
    legacy = tmp_path / "legacy"
    api.transform(str(DATA / f"{fixture}.full.safetensors"), str(legacy),
                  dst_strategy=src_strategy, fmt="safetensors")
    out = tmp_path / "ck2"
    convert_checkpoint(str(legacy), str(out), src_strategy=src_strategy, dst_strategy=strategy(tmp_path, 2, 2, 1),
              fmt="checkpoint2", dst_iteration=7, prefix="")
    it = out / "iteration_00000007"
    assert (it / "model-0000003-0000004.safetensors").is_file()
    with open_reader(str(it / "opt-0000000-0000004.safetensors")) as r:
        assert r.metas and all(n.startswith("adam_") for n in r.metas)
    assert tuple(json.loads((it / "common.json").read_text())) == COMMON_FIELDS["2.1"]
    back = tmp_path / "back"
    convert_checkpoint(str(out), str(back), fmt="safetensors")
    got, want = tensors(only_file(back)), mindformers_full(fixture)
    assert {n: got[n] for n in want} == want


@pytest.mark.parametrize("dev,tmap,size,folded_dev", [
    ([2, 2], [0, -1], 2, [2, 2]), ([4, 2], [0, -1], 2, [2, 2, 2]),
    ([2, 4, 1], [-1, -1], 4, [2, 4, 1]), ([2, 2], [-1, 1], 2, [2, 2])])
def test_folded_optimizer_shard_gives_every_rank_the_same_block(dev, tmap, size, folded_dev):
    """A strategy's opt_weight_shard_size folded into the layout (a replica axis used in part is
    split): read back by the Checkpoint 2.0 reader's rule it is the same block per rank."""
    lay = make_layout(dev, tmap, size, 1)
    d = layout_dict(lay, lay.devices)
    assert list(d) == ["device_matrix", "tensor_map", "interleaved_parallel", "alias_name", "rank_list"]
    back = make_layout(d["device_matrix"], d["tensor_map"], 0, 0)
    assert back.replicas == lay.replicas and back.splits == lay.splits
    assert d["device_matrix"] == folded_dev and folded(lay)[0] == tuple(folded_dev)


# -- errors: one line naming the file and parameter, nothing written -------------------------

def copy_fixture(tmp_path: Path, fixture="1.9.0-dp2mp2pp2-optshard") -> Path:
    dst = tmp_path / "src"
    shutil.copytree(DATA / fixture, dst)
    return dst


def edit_metadata(src: Path, edit) -> None:
    path = src / "iteration_00001234" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=4))


def fails(src, match, tmp_path, **kw):
    out = tmp_path / "out"
    with pytest.raises(ReshardError, match=match) as e:
        convert_checkpoint(str(src), str(out), fmt="safetensors", **kw)
    assert "\n" not in str(e.value)
    assert not out.exists() or not any(out.rglob("*.safetensors"))


def test_missing_tracker_and_iteration(tmp_path):
    src = copy_fixture(tmp_path)
    (src / TRACKER).write_text("99")
    fails(src, r"iteration_00000099: missing \(iteration 99, named by latest_checkpointed", tmp_path)
    fails(src, r"iteration_00000005: missing \(iteration 5, asked for\)", tmp_path, iteration=5)
    (src / TRACKER).write_text("last\n")
    fails(src, r"latest_checkpointed_iteration.txt: holds 'last', not an iteration number", tmp_path)
    (src / TRACKER).unlink()
    with pytest.raises(ReshardError, match="latest_checkpointed_iteration.txt: missing"):
        read_checkpoint2(str(src), None)
    # an iteration folder given directly needs no tracker
    assert read_checkpoint2(str(src / "iteration_00001234")).iteration == 1234


def test_metadata_naming_a_missing_file(tmp_path):
    src = copy_fixture(tmp_path)
    (src / "iteration_00001234" / "CKP-opt-0000005-0000008.safetensors").unlink()
    fails(src, r"CKP-opt-0000005-0000008.safetensors: missing \(metadata.json stores parameter "
               r"adam_\S+ slice \d+ there\)", tmp_path)


def test_metadata_contradicting_its_files(tmp_path):
    src = copy_fixture(tmp_path)

    def shape(meta):
        entry = meta["state_dict_metadata"]["model.layers.0.feed_forward.w2.weight"]
        entry["global_shape"] = [16, 32]
        for c in entry["chunk"]:
            c["local_shape"] = [8, 16]
    edit_metadata(src, shape)
    fails(src, r"CKP-model-0000000-0000008.safetensors: parameter model.layers.0.feed_forward.w2.weight "
               r"has shape \[4, 8\], metadata.json says \[8, 16\]", tmp_path)

    src2 = copy_fixture(tmp_path / "b")

    def dtype(meta):
        meta["state_dict_metadata"]["model.layers.0.feed_forward.w2.weight"]["properties"]["dtype"] = "Float16"
    edit_metadata(src2, dtype)
    fails(src2, r"parameter model.layers.0.feed_forward.w2.weight is \w+, metadata.json says Float16",
          tmp_path)


def test_metadata_missing_a_chunk_or_misplacing_one(tmp_path):
    src = copy_fixture(tmp_path)
    name = "model.layers.0.attention.wq.weight"
    edit_metadata(src, lambda m: m["state_dict_metadata"][name]["chunk"].pop())
    fails(src, rf"metadata.json: parameter {name}: storage_data has slice \d, which its chunks", tmp_path)

    src2 = copy_fixture(tmp_path / "b")

    def swap(meta):
        sd = meta["storage_data"]
        a, b = f"('{name}', (0,))", f"('{name}', (1,))"
        sd[a], sd[b] = sd[b], sd[a]
    edit_metadata(src2, swap)
    fails(src2, rf"parameter {name}: CKP-model-\d+-0000008.safetensors is said to hold slice \d, but "
                rf"its storage rank \d holds slice \d by the layout", tmp_path)


def test_mixed_folder(tmp_path):
    src = copy_fixture(tmp_path)
    shutil.copy(src / "iteration_00001234" / "CKP-model-0000000-0000008.safetensors",
                src / "iteration_00001234" / "CKP-model-0000000-0000004.safetensors")
    fails(src, r"CKP-model-0000000-0000004.safetensors: a shard metadata.json does not name", tmp_path)


def test_given_source_strategy_is_checked_against_metadata(tmp_path):
    ck = read_checkpoint2(str(DATA / "1.9.0-dp2mp2pp2-optshard"))
    check_strategy_against_metadata(ck, strategy(tmp_path, 2, 2, 2, -1))     # the same layouts: accepted
    with pytest.raises(ReshardError, match=r"parameter \S+: source strategy \S+ lays it out "
                                           r"otherwise than \S+metadata.json \(stage 0\)"):
        check_strategy_against_metadata(ck, strategy(tmp_path, 2, 2, 2, 0))
    with pytest.raises(ReshardError, match="has 1 stage"):
        open_checkpoint(str(DATA / "1.9.0-dp2mp2pp2-optshard"), strategy(tmp_path, 1, 4, 1))


def test_existing_iteration_is_not_overwritten(tmp_path):
    out = tmp_path / "ck2"
    convert_checkpoint(str(DATA / "2.1.0-dp2mp2pp2"), str(out), fmt="checkpoint2")
    before = sorted(p.name for p in (out / "iteration_00001234").iterdir())
    with pytest.raises(ReshardError, match="iteration_00001234: exists already"):
        convert_checkpoint(str(DATA / "2.1.0-dp2mp2pp2"), str(out), fmt="checkpoint2")
    assert sorted(p.name for p in (out / "iteration_00001234").iterdir()) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".reshard-staging")]


def test_written_in_blocks_is_the_folder_written_whole(tmp_path):
    """A Checkpoint 2.0 written in blocks of destination ranks (each block prepared on its own,
    as a process or node of its own would; metadata.json, common.json and the tracker once, after
    the last block) is the very folder written whole, byte for byte; finish() before the last
    block names the missing shard and writes nothing; a block writes its ranks' shards only; on
    two nodes without a shared disk, finish() told of the other node's shards; a file of another
    save in the iteration folder is refused."""
    fixture = str(DATA / "1.9.0-dp2mp2pp2-optshard")
    dst = strategy(tmp_path, 2, 2, 2, -1)
    whole, blocks = tmp_path / "whole", tmp_path / "blocks"
    convert_checkpoint(fixture, str(whole), dst_strategy=dst, fmt="checkpoint2")
    first = prepare_checkpoint2(fixture, str(blocks), dst_strategy=dst)
    assert sorted(first.write_block([0, 1, 2, 3])) == [
        f"iteration_00001234/CKP-{k}-{r:07d}-0000008.safetensors" for k in ("model", "opt") for r in range(4)]
    with pytest.raises(ReshardError, match=r"CKP-model-0000004-0000008\.safetensors: missing \(8 shard"):
        first.finish()
    assert not (blocks / TRACKER).exists() and not (blocks / "iteration_00001234" / "metadata.json").exists()
    second = prepare_checkpoint2(fixture, str(blocks), dst_strategy=dst)   # the first block's shards: ours
    second.write_block(range(4, 8))
    second.finish()

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(blocks) == files(whole)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"     # two nodes, no shared disk
    prepare_checkpoint2(fixture, str(node1), dst_strategy=dst).write_block(range(4, 8))
    on0 = prepare_checkpoint2(fixture, str(node0), dst_strategy=dst)
    on0.write_block(range(4))
    on0.finish(elsewhere={n for n in files(node1) if n.endswith(".safetensors")})
    shards1 = {n: b for n, b in files(node1).items() if not n.startswith(".reshard/")}   # its records stay
    assert {**shards1, **files(node0)} == files(whole)
    other = tmp_path / "other"
    prepare_checkpoint2(fixture, str(other), dst_strategy=dst).write_block([0])
    (other / "iteration_00001234" / "CKP-model-0000000-0000004.safetensors").write_bytes(b"another save")
    with pytest.raises(ReshardError, match="iteration_00001234: exists already"):
        prepare_checkpoint2(fixture, str(other), dst_strategy=dst)


# -- transform-checkpoint ----------------------------------------------------------------------

def test_transform_checkpoint_reads_and_writes_checkpoint2(tmp_path, capsys):
    """A Checkpoint 2.0 source folder is detected (no --src_strategy); --format checkpoint2
    writes one; a contradicting or unsupported request is one line and exit 2."""
    from reshard import cli
    fixture = str(DATA / "2.1.0-dp2mp2pp2")
    dst = strategy(tmp_path, 1, 4, 1)
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(tmp_path / "complete"),
                     "--format", "safetensors"]) == 0
    assert cli.main(["--verify", str(tmp_path / "complete")]) == 0     # its integrity manifest
    got = tensors(tmp_path / "complete" / "rank_0" / "checkpoint_0.safetensors")
    want = mindformers_full("2.1.0-dp2mp2pp2")
    assert {n: got[n] for n in want} == want
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(tmp_path / "ck2"),
                     "--dst_strategy", dst.source, "--format", "checkpoint2", "--iteration", "1234",
                     "--mindformers_release", "1.9"]) == 0
    it = tmp_path / "ck2" / "iteration_00001234"
    assert (it / "CKP-opt-0000003-0000004.safetensors").is_file()
    assert tuple(json.loads((it / "common.json").read_text())) == COMMON_FIELDS["1.9"]
    assert cli.main(["--verify", str(tmp_path / "ck2")]) == 0       # every shard, json, the tracker
    (it / "common.json").write_text("{}")
    assert cli.main(["--verify", str(tmp_path / "ck2")]) == 2
    assert "different: iteration_00001234/common.json" in capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(tmp_path / "dry"),
                     "--dst_strategy", dst.source, "--dry_run"]) == 0
    shown = capsys.readouterr().out
    assert "destination ranks: 4; source ranks read" in shown and "adam_m." in shown
    assert not (tmp_path / "dry").exists()
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(tmp_path / "blk"),
                     "--dst_strategy", dst.source, "--rank_id", "2", "--transform_process_num", "2",
                     "--format", "safetensors"]) == 0      # one block: ranks 2-3
    assert sorted(p.name for p in (tmp_path / "blk").iterdir() if p.name.startswith("rank_")) == \
        ["rank_2", "rank_3"]
    assert not (tmp_path / "blk" / "conversion_manifest.json").exists()
    capsys.readouterr()
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(tmp_path / "x"),
                     "--iteration", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "iteration_00000005: missing (iteration 5, asked for)" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_parameter_without_layout_is_carried(tmp_path):
    """MindFormers 2.0+ records `"layout": null` for a value without layout (replicated): it is
    carried whole, as the engine carries values no strategy describes."""
    src = copy_fixture(tmp_path, "2.1.0-dp2mp2pp2")
    name = "model.layers.0.attention_norm.weight"
    edit_metadata(src, lambda m: m["state_dict_metadata"][name].update(layout=None))
    ck = read_checkpoint2(str(src))
    assert ck.params[name].layouts == () and name not in ck.source_strategy().layouts
    out = tmp_path / "out"
    convert_checkpoint(str(src), str(out), dst_strategy=strategy(tmp_path, 1, 4, 1), fmt="safetensors")
    want = mindformers_full("2.1.0-dp2mp2pp2")[name]
    for r in range(4):
        assert tensors(out / f"rank_{r}" / f"checkpoint_{r}.safetensors")[name] == want


# -- object storage ----------------------------------------------------------------------------

def test_checkpoint2_on_object_storage(tmp_path, s3_server, bucket):
    """A Checkpoint 2.0 folder on s3:// (the moto server): read in place by ranged GETs (or
    fetched into a hidden folder beside the output, gone at the end), to complete and to another
    Checkpoint 2.0, the same tensors as MindFormers loads; a missing iteration is one line."""
    fixture = "1.9.0-dp2mp2pp2-optshard"
    client = s3_server.client()
    for path in (DATA / fixture).rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"ck/{path.relative_to(DATA / fixture).as_posix()}")
    url = f"s3://{bucket}/ck"
    out = tmp_path / "out"
    convert_checkpoint(url, str(out), fmt="safetensors")
    got, want = tensors(only_file(out)), mindformers_full(fixture)
    assert {n: got[n] for n in want} == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]    # nothing fetched is left
    ck2 = tmp_path / "ck2"
    convert_checkpoint(url, str(ck2), dst_strategy=strategy(tmp_path, 1, 4, 1), fmt="checkpoint2")
    back = tmp_path / "back"
    convert_checkpoint(str(ck2), str(back), fmt="safetensors")
    got = tensors(only_file(back))
    assert {n: got[n] for n in want} == want
    with pytest.raises(ReshardError, match=rf"{url}/iteration_00000007: missing \(iteration 7, asked for\)"):
        convert_checkpoint(url, str(tmp_path / "x"), fmt="safetensors", iteration=7)
    from reshard import cli      # transform-checkpoint detects it there too
    assert cli.main(["--src_checkpoint", url, "--dst_checkpoint", str(tmp_path / "cli")]) == 0
    assert set(tensors(tmp_path / "cli" / "rank_0" / "checkpoint_0.ckpt")) >= set(want)


def test_parameter_shared_by_pipeline_stages_round_trips(tmp_path):
    """A destination strategy with the embedding in the first and the last stage: metadata.json
    describes it once (its first stage's layout) with storage records in both stages, and it
    reads back to the same tensors."""
    params = synth.llama_params(**synth.SMALL_LLAMA, optimizer=True)
    folder = tmp_path / "shared"
    synth.write_strategy(str(folder), dp=1, mp=2, pp=2, params=params, shared_embedding=True)
    dst = load_strategy(str(folder))
    out = tmp_path / "ck2"
    convert_checkpoint(str(DATA / "2.1.0-dp2mp2pp2"), str(out), dst_strategy=dst, fmt="checkpoint2")
    ck = read_checkpoint2(str(out))
    name = "model.tok_embeddings.embedding_weight"
    assert [lay.stage for lay in ck.params[name].layouts] == [0, 1]
    assert ck.params[name].layout["rank_list"] == [0, 1]
    back = tmp_path / "back"
    convert_checkpoint(str(out), str(back), fmt="safetensors")
    got, want = tensors(only_file(back)), mindformers_full("2.1.0-dp2mp2pp2")
    assert {n: got[n] for n in want} == want


def test_legacy_training_state_goes_to_common_json(tmp_path):
    """A legacy checkpoint keeps epoch_num, step_num, global_step and loss_scale as values:
    written as Checkpoint 2.0 they make common.json (and step_num the iteration), as MindFormers
    resumes from it."""
    import numpy as np
    from reshard.formats import TensorMeta, open_writer
    src = tmp_path / "legacy.safetensors"
    extra = {"epoch_num": np.array([3], np.int32), "step_num": np.array([40], np.int32),
             "loss_scale": np.array([1024.0], np.float32)}
    with open_reader(str(DATA / "2.1.0-dp2mp2pp2.full.safetensors")) as r:
        metas = list(r.metas.values()) + [TensorMeta(n, {"int32": "Int32", "float32": "Float32"}[str(a.dtype)], a.shape)
                                          for n, a in extra.items()]
        metas.append(TensorMeta("global_step", "Int32", (1,)))
        with open_writer(str(src), metas, "safetensors") as w:
            for m in metas[:len(r.metas)]:
                w.write(m.name, r.read(m.name))
            for n, a in extra.items():
                w.write(n, a)
            w.write("global_step", np.array([40], np.int32))
    out = tmp_path / "ck2"
    convert_checkpoint(str(src), str(out), dst_strategy=strategy(tmp_path, 1, 2, 1), fmt="checkpoint2",
              release="1.9")
    assert (out / TRACKER).read_text() == "40"
    common = json.loads((out / "iteration_00000040" / "common.json").read_text())
    assert common == {"epoch_num": 3, "step_num": 40, "global_step": 40, "loss_scale": 1024.0,
                      "global_batch_size": None, "ckpt_status": None}


def test_registered_as_a_format_through_the_plugin_interface(tmp_path):
    """Checkpoint 2.0 is one registry line (reshard.formats.registry.BUILTIN): --format
    checkpoint2 is a choice; its shards stay safetensors files to every other caller (by_file,
    rank folders); the integrity manifest covers its tracker and iteration folder; the planner
    refuses it as a rank-file format; a Checkpoint 2.0 folder met where rank folders are read is
    refused in one line naming the format (not 'different values of one parameter')."""
    from reshard.formats import registry
    from reshard.sources import SourceEntry, classify
    fmt = registry.get("checkpoint2")
    assert "checkpoint2" in registry.names() and fmt.own_path
    assert registry.by_file("iteration_00000001/CKP-model-0000000-0000001.safetensors").name == "safetensors"
    assert not fmt.owns("rank_0/x.safetensors") and registry.extensions().count(".safetensors") == 1
    assert fmt.in_set("iteration_00001234/metadata.json") and fmt.in_set(TRACKER)
    assert not fmt.in_set("rank_0/checkpoint_0.ckpt") and not fmt.in_set("notes.txt")
    src = DATA / FIXTURES[0]
    entries = [SourceEntry(p.relative_to(src).as_posix(), p.stat().st_size)
               for p in src.rglob("*") if p.is_file()]
    with pytest.raises(ReshardError, match="Checkpoint 2.0 folder") as err:
        classify(str(src), entries)
    assert "\n" not in str(err.value)
    with pytest.raises(ReshardError, match="--format checkpoint2"):
        api.plan_from_strategies(None, None, None, fmt="checkpoint2")


@pytest.mark.parametrize("optimizer", [True, False])
def test_transform_checkpoint_complete_file_to_checkpoint2(tmp_path, optimizer):
    """A complete legacy file (no source strategy) -> --format checkpoint2 through the command:
    the set and its integrity manifest (--verify), read back to the same tensors. Without
    optimizer moments there is nothing for opt files to describe: the values no layout describes
    (global_step, ...) stay in the model shards (an opt file metadata.json names not would make
    a mixed folder)."""
    from reshard import cli
    params = synth.llama_params(**synth.SMALL_LLAMA, optimizer=optimizer)
    src = tmp_path / "llama.ckpt"
    synth.write_complete_checkpoint(str(src), params)
    dst = strategy(tmp_path, 2, 2, 2)
    assert cli.main(["--src_checkpoint", str(src), "--dst_checkpoint", str(tmp_path / "ck2"),
                     "--dst_strategy", dst.source, "--format", "checkpoint2", "--iteration", "7"]) == 0
    assert cli.main(["--verify", str(tmp_path / "ck2")]) == 0
    assert any((tmp_path / "ck2" / "iteration_00000007").glob("CKP-opt-*")) == optimizer
    back = tmp_path / "back"
    convert_checkpoint(str(tmp_path / "ck2"), str(back), fmt="ckpt")
    assert synth.load_params(str(only_file(back))) == synth.load_params(str(src))


def test_local_checkpoint2_output_is_claimed_and_holds_no_other_save(tmp_path, capsys):
    """A local output of the Checkpoint 2.0 path is claimed as the engine's path claims it
    (another run writing it meanwhile: refused at once, nothing written), and a folder holding
    another save (another iteration, rank folders) is refused: the new tracker would sit beside
    files a loader or a later --iteration could take for this conversion's."""
    from reshard import cli
    from reshard.claim import OutputClaim
    fixture = str(DATA / "2.1.0-dp2mp2pp2")
    dst = strategy(tmp_path, 1, 4, 1)
    out = tmp_path / "out"
    theirs = OutputClaim(str(out), "their-run", "transform-checkpoint", "--dst_checkpoint out")
    theirs.acquire()
    try:
        assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(out), "--dst_strategy",
                         dst.source, "--format", "checkpoint2"]) == 2
        assert "in use by another run (run their-run" in capsys.readouterr().err
        assert not [p for p in out.rglob("*") if ".claims" not in p.parts]
    finally:
        theirs.release()
    complete = tmp_path / "complete"     # a legacy source: --iteration names the one written
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(complete), "--format", "safetensors"]) == 0
    args = ["--src_checkpoint", str(complete), "--dst_strategy", dst.source, "--format", "checkpoint2"]
    assert cli.main(args + ["--dst_checkpoint", str(out), "--iteration", "2000"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    assert cli.main(args + ["--dst_checkpoint", str(out), "--iteration", "400"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another save (iteration_00002000)" in err and "\n" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    ranks = tmp_path / "ranks"
    assert cli.main(["--src_checkpoint", fixture, "--dst_checkpoint", str(ranks), "--dst_strategy",
                     dst.source, "--format", "safetensors"]) == 0
    capsys.readouterr()
    assert cli.main(args + ["--dst_checkpoint", str(ranks), "--iteration", "3"]) == 2
    assert "holds another save (rank_0, rank_1, rank_2, ...)" in capsys.readouterr().err


def set_files(root: Path) -> dict[str, bytes]:
    """relative name -> bytes of a converted set, the engine's private records and claims aside."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not {".reshard", ".claims"} & set(p.relative_to(root).parts)}


def stamps(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and ".claims" not in p.relative_to(root).parts}


def test_rerun_of_a_finished_local_checkpoint2_is_kept_another_refused(tmp_path, capsys):
    """The same command again into a finished local Checkpoint 2.0: 'already holds', exit 0,
    nothing written; another conversion into that iteration folder (another layout, another
    release, a source touched since) is refused in one line, nothing written; a folder a
    killed run left (a block's shards and the engine's records, no metadata.json) resumes,
    keeping those shards, and ends as the folder written at once."""
    from conftest import errors_only
    from reshard import cli
    src = tmp_path / "src"
    shutil.copytree(DATA / "2.1.0-dp2mp2pp2", src)
    mp4, dp2 = strategy(tmp_path, 1, 4, 1), strategy(tmp_path, 2, 2, 2, -1)
    out = tmp_path / "out"
    argv = ["--src_checkpoint", str(src), "--dst_strategy", mp4.source, "--format", "checkpoint2",
            "--dst_checkpoint", str(out)]
    assert cli.main(argv) == 0
    assert "wrote 11 file(s)" in capsys.readouterr().out
    before, whole = stamps(out), set_files(out)
    assert cli.main(argv) == 0
    assert "already holds this conversion" in capsys.readouterr().out
    assert stamps(out) == before
    for other in (["--dst_strategy", dp2.source], ["--mindformers_release", "1.9"]):
        assert cli.main([*argv, *other]) == 2
        err = errors_only(capsys.readouterr().err)
        assert "iteration_00001234: exists already" in err and len(err.splitlines()) == 1, err
        assert stamps(out) == before
    ranks = [a if a != "checkpoint2" else "safetensors" for a in argv]   # rank folders beside the set
    assert cli.main(ranks) == 2
    err = errors_only(capsys.readouterr().err)
    assert f"holds a Checkpoint 2.0 save ({TRACKER}" in err and len(err.splitlines()) == 1, err
    assert stamps(out) == before
    os.utime(next(src.rglob("*.safetensors")), ns=(1, 1))   # another version of the source
    assert cli.main(argv) == 2 and "exists already" in capsys.readouterr().err
    assert stamps(out) == before
    killed = tmp_path / "killed"
    prepare_checkpoint2(str(src), str(killed), dst_strategy=mp4).write_block([0, 1])
    kept = {n: t for n, t in stamps(killed).items() if n.endswith(".safetensors")}
    assert len(kept) == 4
    assert cli.main([*argv[:-1], str(killed)]) == 0
    assert "wrote 7 file(s), kept 4 written by this same conversion before" in capsys.readouterr().out
    assert {n: t for n, t in stamps(killed).items() if n in kept} == kept
    assert {n: b for n, b in set_files(killed).items() if n != "conversion_manifest.json"} == \
        {n: b for n, b in whole.items() if n != "conversion_manifest.json"}
    assert cli.main(["--verify", str(killed)]) == 0
    os.remove(killed / "conversion_manifest.json")   # stopped after the tracker, before the manifest
    stamped = stamps(killed)
    assert cli.main([*argv[:-1], str(killed)]) == 2
    err = errors_only(capsys.readouterr().err)
    assert "holds a finished save that is not this conversion's result" in err, err
    assert "before it wrote its manifest" in err and len(err.splitlines()) == 1, err
    assert stamps(killed) == stamped


def test_rank_id_blocks_write_one_checkpoint2_finished_by_the_last(tmp_path, capsys):
    """--rank_id with --format checkpoint2: each block writes its ranks' shards into the shared
    local output; the one that ends last (whichever) writes metadata.json, common.json, the
    tracker and the manifest: the folder equals the one written at once, verifies, and the
    command again is 'already holds'. Both blocks at once, as MindFormers' script starts them:
    the same folder whoever ends last. A remote output with --rank_id: one line, exit 2."""
    import subprocess
    import sys
    from reshard import cli
    fixture = str(DATA / "1.9.0-dp2mp2pp2-optshard")
    dst = strategy(tmp_path, 2, 2, 2, -1)
    whole = tmp_path / "whole"
    base = ["--src_checkpoint", fixture, "--dst_strategy", dst.source, "--format", "checkpoint2",
            "--transform_process_num", "2"]
    assert cli.main([*base, "--dst_checkpoint", str(whole)]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main([*base, "--dst_checkpoint", str(out), "--rank_id", "4"]) == 0
    said = capsys.readouterr().out
    assert "wrote 8 file(s)" in said and "destination ranks 4-7 of 8" in said and "ends last" in said, said
    assert not (out / TRACKER).exists() and not (out / "iteration_00001234" / "metadata.json").exists()
    assert cli.main([*base, "--dst_checkpoint", str(out), "--rank_id", "0"]) == 0
    said = capsys.readouterr().out
    assert "wrote 11 file(s)" in said and "the set finished" in said and "kept" not in said, said
    assert set_files(out) == set_files(whole)
    assert not (out / ".reshard").exists()     # the engine's records go with the set finished
    assert cli.main(["--verify", str(out)]) == 0
    assert cli.main([*base, "--dst_checkpoint", str(out), "--rank_id", "4"]) == 0
    assert "already holds this conversion" in capsys.readouterr().out
    both = tmp_path / "both"                   # two processes at once: who ends last does not matter
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-m", "reshard", *base, "--dst_checkpoint", str(both),
                               "--rank_id", r], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in ("0", "4")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert set_files(both) == set_files(whole)
    assert cli.main(["--verify", str(both)]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--dst_checkpoint", "s3://bucket/ck", "--rank_id", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--rank_id with --format checkpoint2" in err and "\n" not in err
    (rank_id,) = [a.help for a in cli.build_parser()._actions if a.dest == "rank_id"]
    assert "with --format checkpoint2" in rank_id and "ends last" in rank_id


def test_dry_run_of_a_checkpoint2_output_counts_ranks_and_shard_files_apart(tmp_path, capsys):
    """--dry_run with --format checkpoint2: per destination rank the model and opt shard files
    it writes, then destination ranks and shard files counted apart (with --rank_id: the
    block's); a Checkpoint 2.0 source's shard files named as the plan's source ranks. Nothing
    written."""
    from reshard import cli
    fixture = str(DATA / "2.1.0-dp2mp2pp2")
    dst = strategy(tmp_path, 1, 4, 1)
    argv = ["--src_checkpoint", fixture, "--dst_strategy", dst.source, "--format", "checkpoint2",
            "--dst_checkpoint", str(tmp_path / "dry"), "--dry_run"]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert "rank 0 -> iteration_00001234/CKP-model-0000000-0000004.safetensors + " \
           "iteration_00001234/CKP-opt-0000000-0000004.safetensors: " in shown, shown
    assert "output: Checkpoint 2.0 iteration_00001234: destination ranks 0-3 of 4, 8 shard file(s) " \
           "(4 model, 4 opt), then metadata.json" in shown, shown
    assert "source ranks 0-7 are its model shard files, 8-15 its opt shard files" in shown
    assert cli.main([*argv, "--rank_id", "2", "--transform_process_num", "2"]) == 0
    shown = capsys.readouterr().out
    assert "destination ranks 2-3 of 4, 4 shard file(s) (2 model, 2 opt)" in shown and "rank 0 ->" not in shown
    assert not (tmp_path / "dry").exists()


def test_a_source_folder_holding_a_checkpoint2_and_rank_folders_is_refused(tmp_path, capsys):
    """Two saves in one source folder (the tracker's iteration and rank_<r> folders): which one
    is meant is not guessed; one line naming the folder, exit 2, nothing written. The iteration
    folder named directly reads the Checkpoint 2.0."""
    from conftest import errors_only
    from reshard import cli
    src = tmp_path / "mix"
    shutil.copytree(DATA / "2.1.0-dp2mp2pp2", src)
    (src / "rank_0").mkdir()
    shutil.copy(DATA / "2.1.0-dp2mp2pp2.full.safetensors", src / "rank_0" / "checkpoint_0.safetensors")
    out = tmp_path / "out"
    assert cli.main(["--src_checkpoint", str(src), "--dst_checkpoint", str(out), "--format", "safetensors"]) == 2
    err = errors_only(capsys.readouterr().err)
    assert f"{src}: holds a Checkpoint 2.0" in err and "rank_0" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    assert cli.main(["--src_checkpoint", str(src / "iteration_00001234"), "--dst_checkpoint", str(out),
                     "--format", "safetensors"]) == 0
    got, full = tensors(out / "rank_0" / "checkpoint_0.safetensors"), tensors(DATA / "2.1.0-dp2mp2pp2.full.safetensors")
    assert {n: got[n] for n in full} == full   # and the training state carried beside


@pytest.mark.parametrize("flags, culprit", [
    (["--mindformers_release", "1.9", "--format", "safetensors"], "--mindformers_release 1.9: names the release"),
    (["--mindformers_release", "1.9"], "--mindformers_release 1.9: names the release"),
    (["--iteration", "-5", "--format", "checkpoint2"], "--iteration -5: must be at least 0"),
])
def test_flags_that_do_not_apply_are_one_line(tmp_path, capsys, flags, culprit):
    """A flag that would be ignored, or a value that names nothing: one line, exit 2, nothing
    written (before, --mindformers_release without --format checkpoint2 was ignored, and
    --iteration -5 read as iteration_-0000005)."""
    from conftest import errors_only
    from reshard import cli
    out = tmp_path / "out"
    mp4 = strategy(tmp_path, 1, 4, 1)
    assert cli.main(["--src_checkpoint", str(DATA / "2.1.0-dp2mp2pp2"), "--dst_strategy", mp4.source,
                     "--dst_checkpoint", str(out), *flags]) == 2
    err = errors_only(capsys.readouterr().err)
    assert culprit in err and len(err.splitlines()) == 1, err
    assert not out.exists()
