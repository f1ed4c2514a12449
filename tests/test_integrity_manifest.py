"""The integrity manifest of a converted set (reshard/integrity.py): written last beside the rank
folders, locally and on object storage, with each file's size and CRC32 as the writer computed
them; `transform-checkpoint --verify` and `cloud-entry verify` say what is missing, extra or
different. And MindSpore's CRC trailer on a source .ckpt is checked before anything is written."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from reshard import integrity
from reshard.cli import main
from tests import synth
from conftest import errors_only

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.world_8_4(tmp_path_factory.mktemp("integrity"), vocab=64, hidden=32, ffn=64)


def _convert(data, out, *extra) -> int:
    return main([f"--src_checkpoint={data['full']}", f"--dst_strategy={data['s8']}",
                 f"--dst_checkpoint={out}", *extra])


def test_manifest_lists_every_file_with_the_bytes_written(data, tmp_path):
    out = tmp_path / "out"
    assert _convert(data, out) == 0
    manifest = integrity.read(str(out))
    assert sorted(manifest.files) == sorted(f"rank_{r}/checkpoint_{r}.ckpt" for r in range(8))
    for name, record in manifest.files.items():
        data_bytes = (out / name).read_bytes()
        assert record.size == len(data_bytes)
        assert record.crc32 == f"{zlib.crc32(data_bytes):08x}"      # computed while writing
    assert manifest.source["location"] == data["full"] and manifest.tool.startswith("cloud-ckpt-transform")
    assert len(manifest.result_digest) == 64
    # the manifest is beside the rank folders, never inside one (MindFormers loads the last file there)
    assert not any(p.name == integrity.MANIFEST_NAME for p in out.glob("rank_*/*"))


def test_verify_names_missing_extra_and_different_files(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _convert(data, out) == 0
    capsys.readouterr()
    assert main([f"--verify={out}"]) == 0
    assert "8 file(s) intact" in capsys.readouterr().out
    (out / "rank_3" / "checkpoint_3.ckpt").unlink()
    (out / "rank_1" / "old_0.ckpt").write_bytes(b"stale")
    flipped = bytearray((out / "rank_5" / "checkpoint_5.ckpt").read_bytes())
    flipped[-100] ^= 0xFF                                 # same size, other bytes
    (out / "rank_5" / "checkpoint_5.ckpt").unlink()       # a new file: rank 7 is another name of
    (out / "rank_5" / "checkpoint_5.ckpt").write_bytes(bytes(flipped))   # rank 5's (a replica)
    assert main([f"--verify={out}"]) == 2
    cap = capsys.readouterr()
    assert "missing: rank_3/checkpoint_3.ckpt" in cap.out
    assert "extra: rank_1/old_0.ckpt" in cap.out
    assert "different: rank_5/checkpoint_5.ckpt: crc32" in cap.out
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "1 missing, 1 extra, 1 different" in err[0]


def test_no_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "rank_0").mkdir()
    assert main([f"--verify={tmp_path}"]) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "no conversion_manifest.json" in err


def test_one_block_writes_no_set_manifest(data, tmp_path):
    out = tmp_path / "out"
    assert _convert(data, out, "--world_size=8", "--transform_process_num=2", "--rank_id=4") == 0
    assert not (out / integrity.MANIFEST_NAME).exists()


def test_remote_output_gets_its_manifest_last_and_verifies(data, tmp_path, bucket, capsys):
    import obs_io
    url = f"s3://{bucket}/out8"
    assert _convert(data, url) == 0
    assert obs_io.file.exists(f"{url}/{integrity.MANIFEST_NAME}")
    capsys.readouterr()
    assert main([f"--verify={url}"]) == 0
    assert "8 file(s) intact" in capsys.readouterr().out
    obs_io.file.write(f"{url}/rank_2/checkpoint_2.ckpt", b"truncated", binary=True)
    assert main([f"--verify={url}"]) == 2
    assert "different: rank_2/checkpoint_2.ckpt: 9 bytes" in capsys.readouterr().out
    # cloud-entry verify: the same check, the same exit codes
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "cloud_entry", "verify", url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "rank_2/checkpoint_2.ckpt" in proc.stdout, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _crc_source(path: Path) -> str:
    params = [{"name": f"w{i}", "data": ms.Tensor(np.arange(4096, dtype=np.float32).reshape(64, 64) + i)}
              for i in range(3)]
    ms.save_checkpoint(params, str(path), crc_check=True)
    return str(path)


def test_source_crc_trailer_is_checked_before_anything_is_written(tmp_path, capsys):
    src = _crc_source(tmp_path / "crc.ckpt")
    strategy = tmp_path / "s2.ckpt"
    layout = {"dev_matrix": [1, 2], "tensor_map": [1, -1], "param_split_shape": [], "indices_offset": [],
              "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}
    synth.write_stage_layouts(str(strategy), 0, {f"w{i}": layout for i in range(3)})
    assert main([f"--src_checkpoint={src}", f"--dst_strategy={strategy}", f"--dst_checkpoint={tmp_path / 'ok'}"]) == 0
    corrupt = bytearray(Path(src).read_bytes())
    corrupt[len(corrupt) // 2] ^= 0x01                     # one bit inside a tensor's bytes
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(corrupt))
    capsys.readouterr()
    assert main([f"--src_checkpoint={bad}", f"--dst_strategy={strategy}", f"--dst_checkpoint={tmp_path / 'out'}"]) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "bad.ckpt: corrupt checkpoint" in err and "CRC" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.ckpt"))


def test_job_checks_downloaded_and_loaded_ranks_against_the_manifest(tmp_path):
    """The job's side: a rank downloaded from another node must carry the bytes its block wrote,
    and every rank the training loads must be there with its size, or no launch."""
    from cloud_entry import job
    from cloud_entry.errors import EntryError
    (tmp_path / "rank_0").mkdir()
    (tmp_path / "rank_0" / "checkpoint_0.ckpt").write_bytes(b"abc")
    good = integrity.SetManifest(integrity.records({"rank_0/checkpoint_0.ckpt": (3, f"{zlib.crc32(b'abc'):08x}"),
                                                    "rank_1/checkpoint_1.ckpt": (5, "00000000")}))
    job._check_downloaded(str(tmp_path), ["rank_0/checkpoint_0.ckpt"], good)
    job._check_loaded(str(tmp_path), ["rank_0/checkpoint_0.ckpt"], good)
    replaced = integrity.SetManifest(integrity.records({"rank_0/checkpoint_0.ckpt": (3, "12345678")}))
    with pytest.raises(EntryError, match="rank_0/checkpoint_0.ckpt: downloaded copy differs"):
        job._check_downloaded(str(tmp_path), ["rank_0/checkpoint_0.ckpt"], replaced)
    with pytest.raises(EntryError, match="rank_1/checkpoint_1.ckpt: missing.*not launching"):
        job._check_loaded(str(tmp_path), ["rank_1/checkpoint_1.ckpt"], good)


@pytest.mark.parametrize("location, said", [("obs:/x", "looks like a mistyped URL"), ("s3://", "no bucket"),
                                            ("/no/such/set", "not found")])
def test_verify_names_a_bad_location(location, said, capsys):
    assert main([f"--verify={location}"]) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and said in err and "Traceback" not in err


def test_no_output_folder_when_the_budget_is_too_small_or_the_log_folder_is_a_file(data, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _convert(data, tmp_path / "o1", "--max_memory=1K") == 2
    assert "max_memory 1.0 KiB is below" in capsys.readouterr().err
    assert _convert(data, tmp_path / "o2", f"--log_dir={tmp_path / 'afile'}", "--process_num=2") == 2
    assert "--log_dir" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
