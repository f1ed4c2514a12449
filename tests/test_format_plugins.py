"""A checkpoint format added as a plug-in: tests/toy_format.py (one file) registered by one
line, RESHARD_FORMATS=toy_format:FORMAT, with no edit to the engine, and converted through both
tools as users run them (transform-checkpoint, and cloud-entry as the platform starts it), from
local disk and from s3://: complete -> distributed compared with MindSpore's own conversion of
the same checkpoint to .ckpt (read by MindSpore's loader), and back to complete, compared with
the original; a flat folder the toy format lays out itself (folder_source) is a source too."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import synth
from reshard import api
from reshard.errors import ReshardError
from reshard.formats import TensorMeta, open_reader, registry
from reshard.formats.meta import STORAGE_DTYPES
from reshard.sources import SourceEntry, classify, output_name
from test_real_training_folders import TRANSFORM, convert

TOY = "toy_format:FORMAT"
TESTS = str(Path(__file__).resolve().parent)


def _toy_env(mp: pytest.MonkeyPatch) -> None:
    """The registration, in this process and in every process the tools start."""
    mp.setenv(registry.ENV, TOY)
    mp.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


@pytest.fixture
def toy(monkeypatch):
    _toy_env(monkeypatch)
    return registry.get("toy")


@pytest.fixture(scope="module")
def toy_complete(models, tmp_path_factory):
    """The complete checkpoint in the toy format (the engine's conversion of MindSpore's .ckpt),
    checked value by value against the .ckpt as MindSpore's loader reads it."""
    with pytest.MonkeyPatch.context() as mp:
        _toy_env(mp)
        out = tmp_path_factory.mktemp("toy") / "llama"
        api.transform(models["complete"], str(out), fmt="toy")
        path = str(out / output_name(0, "checkpoint_", "toy"))
        assert values(path) == synth.load_params(models["complete"])
    return path


def values(path: str) -> dict:
    """name -> (tensor_type, shape, bytes), read by the reader of the file's registered format."""
    with open_reader(path) as r:
        return {n: (m.dtype, m.shape, r.read(n).tobytes() if m.sliceable else r.read_raw(n))
                for n, m in r.metas.items()}


def rank_files(folder: str) -> dict[int, str]:
    found = {}
    for rank_dir in Path(folder).glob("rank_*"):
        (f,) = [p for p in rank_dir.iterdir() if registry.by_file(p.name)]
        found[int(rank_dir.name[5:])] = str(f)
    return found


def assert_same_as_mindspore(folder: str, reference: str) -> None:
    """Every rank of `folder` (any registered format) holds what MindSpore's loader reads from
    the same rank of the MindSpore-made `reference`."""
    mine, ref = rank_files(folder), rank_files(reference)
    assert sorted(mine) == sorted(ref)
    for r in ref:
        assert values(mine[r]) == synth.load_params(ref[r]), f"rank {r}"


def test_one_file_and_one_registration_make_a_format(toy, monkeypatch):
    assert registry.names() == ("ckpt", "safetensors", "checkpoint2", "toy")
    assert registry.by_file("out/rank_0/llama_0.TOYCKPT") is toy and registry.by_file("notes.txt") is None
    assert output_name(3, "llama_", "toy") == "rank_3/llama_3.toyckpt"
    with pytest.raises(ReshardError, match="--format 'npz': must be ckpt or safetensors or checkpoint2 or toy"):
        registry.get("npz", "--format")
    ranks = classify("src", [SourceEntry("rank_0/a.toyckpt", 1), SourceEntry("rank_1/a.toyckpt", 1)])
    assert not ranks.complete and ranks.files == {0: "rank_0/a.toyckpt", 1: "rank_1/a.toyckpt"}
    with pytest.raises(ReshardError, match="mixes .ckpt and .toyckpt files"):
        classify("src", [SourceEntry("rank_0/a.toyckpt", 1), SourceEntry("rank_0/a.ckpt", 1)])
    with pytest.raises(ReshardError, match=r"is not a \.ckpt or \.safetensors or \.toyckpt file"):
        classify("notes.txt", [SourceEntry("notes.txt", 1)], is_file=True)
    # a layout the format owns: flat shards named by rank, as Checkpoint 2.0 names them
    flat = classify("src", [SourceEntry(f"llama-{r}-of-2.toyckpt", 1) for r in (1, 0)])
    assert not flat.complete and flat.files == {0: "llama-0-of-2.toyckpt", 1: "llama-1-of-2.toyckpt"}
    with pytest.raises(ReshardError, match=r"toy shard\(s\) of rank\(s\) \[1\] missing"):
        classify("src", [SourceEntry("llama-0-of-2.toyckpt", 1)])
    # without the registration the engine knows nothing of it
    monkeypatch.delenv(registry.ENV)
    assert registry.names() == ("ckpt", "safetensors", "checkpoint2")
    with pytest.raises(ReshardError, match="format 'toy': must be ckpt or safetensors or checkpoint2"):
        output_name(0, "llama_", "toy")


@pytest.mark.parametrize("name", ["ckpt", "safetensors", "toy"])
def test_every_format_keeps_what_it_says_it_can_store(toy, name, tmp_path):
    """The contract each registered format meets: every value its refusal() accepts (each dtype,
    a scalar, zero-size shapes, a 'str' value) is written by its writer under output_name and
    read back by the reader that registry.by_file picks, bit for bit, regions included."""
    fmt = registry.get(name)
    rng = np.random.default_rng(0)
    values = {}
    for dtype, storage in sorted(STORAGE_DTYPES.items()):
        for shape in ((3, 4), (), (0,), (2, 0)):
            raw = rng.integers(0, 256, int(np.prod(shape)) * storage.itemsize, dtype=np.uint8)
            values[f"{dtype}{list(shape)}"] = (TensorMeta(f"{dtype}{list(shape)}", dtype, shape),
                                               raw.view(storage).reshape(shape) if dtype != "Bool" else
                                               (raw & 1).view(storage).reshape(shape))
    note = np.array("a note", dtype="U")
    values["note"] = (TensorMeta("note", "str", (0,), raw_nbytes=note.nbytes), note.tobytes())
    kept = {n: v for n, v in values.items() if fmt.can_store(v[0].dtype, v[0].shape)}
    assert len(kept) > len(values) // 2
    path = tmp_path / fmt.output_name(0, "checkpoint_")
    assert path.name == "checkpoint_0" + fmt.extensions[0]
    path.parent.mkdir()
    with fmt.writer(path, [m for m, _ in kept.values()]) as writer:
        for n, (_, data) in kept.items():
            writer.write(n, data)
    assert registry.by_file(str(path)) is fmt
    with open_reader(path) as reader:
        assert list(reader.metas) == list(kept) or sorted(reader.metas) == sorted(kept)
        for n, (meta, data) in kept.items():
            assert reader.metas[n] == meta, n
            if meta.sliceable:
                assert reader.read(n).tobytes() == np.ascontiguousarray(data).tobytes(), n
            else:
                assert reader.read_raw(n) == data, n
        assert reader.read("Float32[3, 4]", ((1, 3), (2, 4))).tobytes() == \
            np.ascontiguousarray(kept["Float32[3, 4]"][1][1:3, 2:4]).tobytes()


def test_a_registration_that_names_no_format_is_one_line(models, tmp_path):
    env = dict(os.environ, **{registry.ENV: "no_such_module:FORMAT"})
    done = subprocess.run([TRANSFORM, "--src_checkpoint", models["complete"], "--dst_checkpoint",
                           str(tmp_path / "out"), "--format", "ckpt"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error: RESHARD_FORMATS: no_such_module:FORMAT: No module named 'no_such_module'" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool, where", [("transform-checkpoint", "local"), ("transform-checkpoint", "s3"),
                                         ("cloud-entry", "local"), ("cloud-entry", "s3")])
def test_complete_to_distributed_and_back_in_a_plugged_in_format(models, toy, toy_complete, tool, where,
                                                                 tmp_path, s3_server, s3_env, bucket):
    dist = convert(tool, where, tmp_path / "to8", s3_env, bucket, src=toy_complete, dst_strategy=models["s8"],
                   parallel=(2, 2, 2), fmt="toy").ok()
    assert all(f.endswith(".toyckpt") for f in rank_files(dist.result).values())
    assert_same_as_mindspore(dist.result, models["ref8"])
    s3_server.client().create_bucket(Bucket=f"{bucket}-back")   # the way back writes where nothing was
    back = convert(tool, where, tmp_path / "to1", s3_env, f"{bucket}-back", src=dist.result,
                   src_strategy=models["merged8"], fmt="toy").ok()
    assert_same_as_mindspore(back.result, models["ref1"])


@pytest.mark.parametrize("tool", ["transform-checkpoint", "cloud-entry"])
def test_a_folder_the_format_lays_out_itself_is_a_source(models, toy, tmp_path, s3_env, bucket, tool):
    """Flat shards `llama-<r>-of-8.toyckpt` (no rank folders): the format says which is which."""
    api.transform(models["ref8"], str(tmp_path / "ranks"), src_strategy=models["merged8"],
                  dst_strategy=models["merged8"], fmt="toy")
    flat = tmp_path / "flat8"
    flat.mkdir()
    for rank, path in rank_files(str(tmp_path / "ranks")).items():
        shutil.copy(path, flat / f"llama-{rank}-of-8.toyckpt")
    back = convert(tool, "local", tmp_path / "to1", s3_env, bucket, src=str(flat), src_strategy=models["merged8"],
                   fmt="toy").ok()   # cloud-entry's load_ckpt_format is the source's format and the output's
    assert_same_as_mindspore(back.result, models["ref1"])


def test_mindspore_cannot_write_a_plugged_in_format(models, toy, tmp_path):
    done = subprocess.run([TRANSFORM, "--src_checkpoint", models["complete"], "--dst_checkpoint",
                           str(tmp_path / "out"), "--dst_strategy", models["s8"], "--format", "toy",
                           "--engine", "mindspore"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error: --engine mindspore: MindSpore cannot write --format toy" in done.stderr
    assert not (tmp_path / "out").exists()
