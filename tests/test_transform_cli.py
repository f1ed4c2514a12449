"""The offline tool: conversions through the CLI, --dry_run, and every bad input ending in
one line on stderr, exit code 2 and nothing written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from reshard.cli import main, parse_size
from tests import synth
from conftest import errors_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.world_8_4(tmp_path_factory.mktemp("cli"), vocab=128, hidden=32, ffn=64)


def _fails(capsys, argv, culprit, out_dir):
    rc = main(argv)
    err = errors_only(capsys.readouterr().err)
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert culprit in err, err
    assert not os.path.exists(out_dir) or not os.listdir(out_dir), "something was written"
    return err


def test_cli_converts_like_mindspore(data, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out,
                 "--dst_strategy", data["s8"], "--world_size", "8", "--process_num", "2"]) == 0
    synth.assert_same_checkpoint_dirs(data["ms8"], out)
    out4 = str(tmp_path / "out4")
    assert main(["--src_checkpoint", out, "--src_strategy", data["s8"], "--dst_checkpoint",
                 out4, "--dst_strategy", data["s4"], "--format", "safetensors",
                 "--max_memory", "512M"]) == 0
    assert os.path.exists(os.path.join(out4, "rank_3", "checkpoint_3.safetensors"))


def test_engine_mindspore_for_comparison(data, tmp_path):
    out = str(tmp_path / "ms")
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out,
                 "--dst_strategy", data["s8"], "--engine", "mindspore"]) == 0
    synth.assert_same_checkpoint_dirs(data["ms8"], out)


def test_dry_run_from_strategies_alone(data, tmp_path, capsys):
    out = str(tmp_path / "never")
    assert main(["--src_strategy", data["s8"], "--dst_strategy", data["s4"], "--dst_checkpoint",
                 out, "--dry_run"]) == 0
    text = capsys.readouterr().out
    assert "destination ranks: 4" in text and "rank 3 -> rank_3/checkpoint_3.ckpt" in text
    assert "model.layers.1.attention.wq.weight" in text and "expected peak" in text
    assert not os.path.exists(out)
    # with the checkpoint: real shapes and dtypes
    assert main(["--src_checkpoint", data["ms8"], "--src_strategy", data["s8"],
                 "--dst_strategy", data["s4"], "--dry_run"]) == 0
    text = capsys.readouterr().out
    assert "BFloat16[" in text and "carried from" in text


def test_python_dash_m_bad_input_is_one_line(data, tmp_path):
    out = str(tmp_path / "out")
    p = subprocess.run([sys.executable, "-m", "reshard", "--src_checkpoint",
                        str(tmp_path / "nope.ckpt"), "--dst_checkpoint", out],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "nope.ckpt" in p.stderr and not os.path.exists(out)


def test_uneven_split(data, tmp_path, capsys):
    lay = {"dev_matrix": [1, 2], "tensor_map": [0, -1], "param_split_shape": [40, 24],
           "indices_offset": [0, 40], "field": 0, "opt_weight_shard_step": 0,
           "opt_weight_shard_size": 0}
    f = synth.write_stage_layouts(str(tmp_path / "uneven.ckpt"), 0, {"lm_head.weight": lay})
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", f, "--dst_checkpoint",
                    out], "lm_head.weight", out)


def test_device_counts_that_do_not_divide(data, tmp_path, capsys):
    s3 = str(tmp_path / "s3")
    synth.write_strategy(s3, dp=3, mp=1, pp=1, params=data["params"])
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", data["ms8"], "--src_strategy", data["s8"],
                    "--dst_strategy", s3, "--dst_checkpoint", out], "do not divide", out)


def test_encrypted_checkpoint(data, tmp_path, capsys):
    import mindspore as ms
    import numpy as np
    enc = str(tmp_path / "enc.ckpt")
    ms.save_checkpoint([{"name": "lm_head.weight", "data": ms.Tensor(np.ones((128, 32),
                                                                             np.float32))}],
                       enc, enc_key=b"0123456789abcdef")
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", enc, "--dst_strategy", data["s8"], "--dst_checkpoint",
                    out], "enc.ckpt", out)


def test_gap_in_rank_folders(data, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(data["ms8"], src)
    shutil.rmtree(src / "rank_3")
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", str(src), "--src_strategy", data["s8"],
                    "--dst_strategy", data["s4"], "--dst_checkpoint", out], "rank_3", out)


def test_strategy_with_other_names(data, tmp_path, capsys):
    other = {"encoder." + k: v for k, v in data["params"].items()}
    lay = {"dev_matrix": [2, 2], "tensor_map": [0, -1], "param_split_shape": [],
           "indices_offset": [], "field": 0, "opt_weight_shard_step": 0,
           "opt_weight_shard_size": 0}
    f = synth.write_stage_layouts(str(tmp_path / "other.ckpt"), 0,
                                  {n: lay for n, v in other.items() if v.ndim == 2})
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", f, "--dst_checkpoint",
                    out], "names none", out)


def test_strategy_with_other_shapes(data, tmp_path, capsys):
    """mp=3 over a 128-row vocabulary, and a rank whose slice does not fit its replicas."""
    lay = {"dev_matrix": [1, 3], "tensor_map": [0, -1], "param_split_shape": [],
           "indices_offset": [], "field": 0, "opt_weight_shard_step": 0,
           "opt_weight_shard_size": 0}
    f = synth.write_stage_layouts(str(tmp_path / "mp3.ckpt"), 0, {"lm_head.weight": lay})
    out = str(tmp_path / "out")
    # a strategy naming one parameter is another model's: refused, naming what it leaves out
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", f, "--dst_checkpoint",
                    out], "does not name 20 parameter(s)", out)
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", f, "--dst_checkpoint",
                    out, "--keep_unnamed_params"], "lm_head.weight", out)
    src = tmp_path / "src"
    shutil.copytree(data["ms8"], src)
    os.remove(src / "rank_1" / "checkpoint_1.ckpt")
    synth.write_complete_checkpoint(str(src / "rank_1" / "checkpoint_1.ckpt"), data["params"])
    _fails(capsys, ["--src_checkpoint", str(src), "--src_strategy", data["s8"],
                    "--dst_checkpoint", out], "rank 1", out)


def test_memory_budget_too_small_and_bad_flags(data, tmp_path, capsys):
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", data["s8"],
                    "--dst_checkpoint", out, "--max_memory", "1M"], "max_memory", out)
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", data["s8"],
                    "--dst_checkpoint", out, "--max_memory", "lots"], "max_memory", out)
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", data["s8"],
                    "--dst_checkpoint", out, "--world_size", "4"], "--world_size", out)
    _fails(capsys, ["--dst_checkpoint", out], "--src_checkpoint", out)
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy",
                    str(tmp_path / "missing"), "--dst_checkpoint", out], "missing", out)


def test_parse_size():
    assert parse_size("8G") == 8 << 30 and parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29 and parse_size("4096") == 4096


def test_remote_paths_through_obs_io(data, tmp_path, bucket):
    """s3:// in and out (a real S3 server): staged down, converted, published up."""
    import obs_io as mox
    base = f"s3://{bucket}"
    mox.file.copy(data["full"], f"{base}/in/full.ckpt")
    mox.file.copy_parallel(data["s8"], f"{base}/in/strategy8")
    assert main(["--src_checkpoint", f"{base}/in/full.ckpt", "--dst_strategy",
                 f"{base}/in/strategy8", "--dst_checkpoint", f"{base}/out"]) == 0
    names = mox.file.list_directory(f"{base}/out", recursive=True)
    assert "rank_7/checkpoint_7.ckpt" in names
    local = str(tmp_path / "back")
    mox.file.copy_parallel(f"{base}/out", local)
    synth.assert_same_checkpoint_dirs(data["ms8"], local)
    # a missing remote input: one line, nothing published
    out = f"{base}/out2"
    assert main(["--src_checkpoint", f"{base}/in/nothing.ckpt", "--dst_strategy",
                 f"{base}/in/strategy8", "--dst_checkpoint", out]) == 2
    assert not mox.file.exists(out) or not mox.file.list_directory(out, recursive=True)


def test_string_value_into_safetensors_and_mindspore_dry_run(data, tmp_path, capsys):
    import mindspore as ms
    src = str(tmp_path / "with_str.ckpt")
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(data["params"]["lm_head.weight"])}], src,
                       append_dict={"note": "a string value"})
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", src, "--dst_checkpoint", out, "--format", "safetensors"],
           "parameter note: a str value cannot be stored in safetensors", out)
    _fails(capsys, ["--src_checkpoint", src, "--dst_checkpoint", out, "--engine", "mindspore",
                    "--dry_run"], "--dry_run", out)


def test_corrupt_source_found_while_converting_is_one_line(data, tmp_path, capsys):
    """A source whose records index fine but whose value cannot be read in the asked region
    (here: a file truncated after planning) ends with the user's one line, not a traceback."""
    from reshard import execute, formats
    src = str(tmp_path / "full.ckpt")
    shutil.copyfile(data["full"], src)
    real_open = formats.open_reader

    def truncating_open(path, **options):
        with open(path, "r+b") as f:   # the file shrinks between planning and reading
            f.truncate(os.path.getsize(path) // 2)
        return real_open(path, **options)

    out = str(tmp_path / "out")
    execute_open = execute.open_reader
    execute.open_reader = truncating_open
    try:
        _fails(capsys, ["--src_checkpoint", src, "--dst_strategy", data["s8"], "--dst_checkpoint",
                        out], "rank 0:", out)
    finally:
        execute.open_reader = execute_open
    assert not [f for _, _, fs in os.walk(out) for f in fs], "a file was left behind"


def test_both_tools_read_sizes_alike():
    """One size rule (issue: --max_memory meant different things to the two CLIs)."""
    import pytest
    from cloud_entry import args as entry_args
    from cloud_entry.errors import EntryError
    for text, size in (("8G", 8 << 30), ("8gi", 8 << 30), ("8gib", 8 << 30), (".5G", 1 << 29), ("1e9", 10**9),
                       ("512MiB", 512 << 20), ("1000", 1000)):
        assert parse_size(text) == size == entry_args.parse_size("max_memory", text), text
    for text in ("0.5", "0", "lots", "-1G", "inf"):
        with pytest.raises(ValueError):
            parse_size(text)
        with pytest.raises(EntryError, match="--max_memory"):
            entry_args.parse_size("max_memory", text)


@pytest.mark.parametrize("prefix", ["../../src/rank_0/checkpoint_", "a/b", "..", ""])
def test_a_prefix_with_a_path_is_refused_before_anything_is_written(tmp_path, capsys, prefix):
    """The prefix names files inside the destination: a path in it would write outside, even
    into the source."""
    out = tmp_path / "out"
    assert main(["--src_checkpoint", str(tmp_path), "--dst_checkpoint", str(out), f"--prefix={prefix}"]) == 2
    err = errors_only(capsys.readouterr().err).splitlines()
    assert len(err) == 1 and "--prefix=" in err[0] and "without a path" in err[0]
    assert not out.exists()


def _tree(folder: str) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_an_output_holding_files_of_another_set_is_refused(data, tmp_path, capsys):
    """8 ranks converted, then 4 into the same folder: rank_4..7 would stay beside the new set
    (and an older file in a rank folder would be what a loader reads): one line, nothing
    changed. The same conversion again keeps its ranks."""
    out = str(tmp_path / "out")
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, "--dst_strategy", data["s8"]]) == 0
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, "--dst_strategy", data["s8"]]) == 0
    capsys.readouterr()
    before = _tree(out)
    for argv in (["--dst_strategy", data["s4"]], ["--dst_strategy", data["s4"], "--dry_run"]):
        assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, *argv]) == 2
        err = errors_only(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and "holds 4 file(s) this conversion does not write" in err, err
        assert "rank_4/checkpoint_4.ckpt" in err and _tree(out) == before
    old = tmp_path / "out" / "rank_0" / "zz_old.ckpt"
    old.write_bytes(b"an older checkpoint")
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, "--dst_strategy", data["s8"]]) == 2
    err = errors_only(capsys.readouterr().err)
    assert "holds 1 file(s)" in err and "rank_0/zz_old.ckpt" in err, err


def test_an_output_on_object_storage_holding_another_set_is_refused(data, tmp_path, bucket, capsys):
    out = f"s3://{bucket}/out"
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, "--dst_strategy", data["s8"]]) == 0
    capsys.readouterr()
    assert main(["--src_checkpoint", data["full"], "--dst_checkpoint", out, "--dst_strategy", data["s4"]]) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "this conversion does not write" in err and out in err, err


def test_dry_run_refuses_an_output_inside_the_source(data, tmp_path, capsys):
    _fails(capsys, ["--src_checkpoint", data["ms8"], "--src_strategy", data["s8"], "--dst_checkpoint",
                    data["ms8"], "--dst_strategy", data["s4"], "--dry_run"], "refusing to write into an input",
           str(tmp_path / "none"))


def test_the_two_names_of_process_num_given_different_values_are_refused(data, tmp_path, capsys):
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_checkpoint", str(tmp_path / "o"),
                    "--dst_strategy", data["s8"], "--process_num=2", "--transform_process_num=3"],
           "--process_num=2 and --transform_process_num=3: give one", str(tmp_path / "o"))


def test_world_size_without_a_destination_strategy_says_so(data, tmp_path, capsys):
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_checkpoint", str(tmp_path / "o"),
                    "--dst_strategy=None", "--world_size=4"], "no destination strategy", str(tmp_path / "o"))
