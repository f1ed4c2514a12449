"""Links and overlapping locations: the user's data is never written, through a link or not.

A source folder whose rank_<r> entries are links to rank folders elsewhere (a common way to
assemble a checkpoint) is read as those folders, and refused only when the output overlaps one
of them; a rank_<r> link inside an output is replaced by a folder of the output's own, never
written through; cloud-entry refuses an output folder or remote_save_url that holds its source.
Every case checks the bytes of the link targets before and after."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import obs_io
import synth
from platform_harness import digest_tree, upload
from reshard.cli import main
from test_cloud_entry_jobs import LAUNCH, PARALLEL4, entry_env, run_entry


def linked_source(models, tmp_path: Path) -> tuple[Path, Path]:
    """(store, src): the 8-rank checkpoint's rank folders in `store`, and `src` a folder of
    rank_<r> links to them."""
    store, src = tmp_path / "store", tmp_path / "src"
    shutil.copytree(models["ref8"], store)
    src.mkdir()
    for r in range(8):
        (src / f"rank_{r}").symlink_to(store / f"rank_{r}", target_is_directory=True)
    return store, src


def everything(path: Path) -> dict[str, str]:
    """Every file below path (links followed) with its digest, and every name (links too)."""
    names = {str(p.relative_to(path)): os.path.islink(p) for p in path.rglob("*")}
    return {"files": digest_tree(str(path)), "names": names}


@pytest.mark.parametrize("where", ["the folder the links point into", "a link's target"])
def test_transform_checkpoint_never_writes_into_a_linked_source(models, tmp_path, capsys, where):
    store, src = linked_source(models, tmp_path)
    dst = store if where == "the folder the links point into" else store / "rank_2"
    before = everything(store)
    rc = main([f"--src_checkpoint={src}", f"--src_strategy={models['s8']}", f"--dst_strategy={models['s4']}",
               f"--dst_checkpoint={dst}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "overlaps --src_checkpoint" in err and f"{src}" in err and "its rank_" in err, err
    assert everything(store) == before            # not a byte, not a name: no manifest, no temp


def test_a_linked_source_is_read_where_it_points(models, tmp_path):
    store, src = linked_source(models, tmp_path)
    before = everything(store)
    out = tmp_path / "out"
    assert main([f"--src_checkpoint={src}", f"--src_strategy={models['s8']}", f"--dst_strategy={models['s4']}",
                 f"--dst_checkpoint={out}"]) == 0
    synth.assert_same_checkpoint_dirs(str(out), models["ref4"])
    assert everything(store) == before


def test_a_rank_link_inside_the_output_is_replaced_never_written_through(models, tmp_path, capsys):
    """out/rank_2 -> elsewhere/ (holding a file named like the output, and another) and
    out/.reshard -> records/: the conversion writes folders of its own there."""
    elsewhere, records = tmp_path / "elsewhere", tmp_path / "records"
    elsewhere.mkdir()
    records.mkdir()
    (elsewhere / "checkpoint_2.ckpt").write_bytes(b"not yours to overwrite")
    (elsewhere / "zz_2.ckpt").write_bytes(b"a file the training would load last")
    (records / "rank_2.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rank_2").symlink_to(elsewhere, target_is_directory=True)
    (out / ".reshard").symlink_to(records, target_is_directory=True)
    before = everything(elsewhere), everything(records)
    assert main([f"--src_checkpoint={models['ref8']}", f"--src_strategy={models['s8']}",
                 f"--dst_strategy={models['s4']}", f"--dst_checkpoint={out}"]) == 0
    assert "is a link to" in capsys.readouterr().err
    assert (everything(elsewhere), everything(records)) == before
    assert not (out / "rank_2").is_symlink() and os.listdir(out / "rank_2") == ["checkpoint_2.ckpt"]
    assert not (out / ".reshard").is_symlink()
    synth.assert_same_checkpoint_dirs(str(out), models["ref4"])


def test_cloud_entry_reads_a_linked_source_and_never_writes_through_an_output_link(models, s3_env, tmp_path):
    """The job's local walk follows rank_<r> links (as the engine's does); a rank_<r> link in
    its converted folder is replaced before the conversion, and the training loads only ours."""
    store, src = linked_source(models, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "zz_1.ckpt").write_bytes(b"foreign")
    job = tmp_path / "job"
    transformed = job / "output" / "transformed_checkpoint" / "src"
    transformed.mkdir(parents=True)
    (transformed / "rank_1").symlink_to(elsewhere, target_is_directory=True)
    before = everything(store), everything(elsewhere)
    env = entry_env(s3_env, ENTRY_CHECK_REFERENCE=models["ref4"])
    code, out = run_entry([f"--load_checkpoint={src}", f"--src_strategy_path_or_dir={models['s8']}",
                           f"--dst_strategy={models['s4']}", "--auto_trans_ckpt=True", "--npu_num_per_node=4",
                           *PARALLEL4, *LAUNCH], env, job)
    assert code == 0, out                          # the launched check: each rank folder holds its file only
    assert (everything(store), everything(elsewhere)) == before
    assert not (transformed / "rank_1").is_symlink()
    synth.assert_same_checkpoint_dirs(str(transformed), models["ref4"])


def test_cloud_entry_refuses_outputs_that_hold_its_source(models, bucket, s3_env, tmp_path):
    """The README's promise, for the roots too: an output_dir holding the local source (as a
    file, or as the target of the source's rank_<r> links), and a remote_save_url holding the
    source object, are refused before anything is written."""
    env = entry_env(s3_env)
    common = ["--auto_trans_ckpt=True", "--npu_num_per_node=4", f"--dst_strategy={models['s4']}", *PARALLEL4, *LAUNCH]
    # 1. the source file inside output_dir
    job = tmp_path / "job1"
    (job / "output" / "models").mkdir(parents=True)
    shutil.copy(models["complete"], job / "output" / "models" / "llama.ckpt")
    before = everything(job)
    code, out = run_entry(["--load_checkpoint=output/models/llama.ckpt", "--output_dir=output", *common], env, job)
    errors = [x for x in out.splitlines() if x.startswith("cloud-entry: error")]
    assert code == 2 and len(errors) == 1 and "overlaps the output folder" in errors[0], out
    assert everything(job) == before
    # 2. a source of rank_<r> links into output_dir
    job = tmp_path / "job2"
    store = job / "output" / "old8"
    shutil.copytree(models["ref8"], store)
    src = tmp_path / "src2"
    src.mkdir()
    for r in range(8):
        (src / f"rank_{r}").symlink_to(store / f"rank_{r}", target_is_directory=True)
    before = everything(job)
    code, out = run_entry([f"--load_checkpoint={src}", f"--src_strategy_path_or_dir={models['s8']}",
                           "--output_dir=output", *common], env, job)
    errors = [x for x in out.splitlines() if x.startswith("cloud-entry: error")]
    assert code == 2 and len(errors) == 1 and "overlaps the output folder" in errors[0], out
    assert f"its rank_0 is {store / 'rank_0'}" in errors[0], errors[0]
    assert everything(job) == before
    # 3. the source object under remote_save_url
    url = upload(models["complete"], f"s3://{bucket}/job_out/models/llama.ckpt")
    job = tmp_path / "job3"
    code, out = run_entry([f"--load_checkpoint={url}", f"--remote_save_url=s3://{bucket}/job_out", *common], env, job)
    errors = [x for x in out.splitlines() if x.startswith("cloud-entry: error")]
    assert code == 2 and len(errors) == 1 and f"overlaps remote_save_url s3://{bucket}/job_out" in errors[0], out
    assert [e.name for e in obs_io.file.list_entries(f"s3://{bucket}/job_out", recursive=True)
            if e.is_file()] == ["models/llama.ckpt"]
    assert not job.exists() or os.listdir(job) == []
