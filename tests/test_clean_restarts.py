"""Clean restarts of the offline tool: what a killed run left (writers' temporary files in the
rank folders, the staging folder of a remote source) is removed by the rerun, only ours; the
staging folder is never in the system temporary folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reshard.cli import STAGE_NAME, main
from tests import synth
from conftest import errors_only

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.world_8_4(tmp_path_factory.mktemp("restarts"), vocab=64, hidden=32, ffn=64)


def _dead_writers_temp(folder: Path, name: str) -> Path:
    """A temporary file named as a writer names it, by a process that then died."""
    code = ("import os, sys; from obs_io.atomic import temp_name; p = temp_name(sys.argv[1]); "
            "open(p, 'wb').write(b'half'); print(p)")
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", code, str(folder / name)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return Path(out.stdout.strip())


def test_a_killed_writer_not_yet_reaped_is_dead_to_the_sweep(tmp_path):
    """A writer SIGKILLed whose parent has not reaped it yet (a zombie, as under a container's
    init that never reaps): its pid still answers, but it writes no more, so the rerun's sweep
    removes its temporary file; a live writer's stays."""
    import psutil
    from obs_io.atomic import sweep
    code = ("import sys, time; from obs_io.atomic import temp_name; open(temp_name(sys.argv[1]), 'wb').close(); "
            "print('ok', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], stdout=subprocess.PIPE, text=True,
                                env=env) for name in ("killed.ckpt", "live.ckpt")]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "ok"
        killed, live = writers
        os.kill(killed.pid, signal.SIGKILL)          # and not waited for: a zombie
        while psutil.Process(killed.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
        (left,) = tmp_path.glob(".killed.ckpt.obsio-*.tmp")
        assert sweep(str(tmp_path)) == [str(left)]
        assert list(tmp_path.glob(".live.ckpt.obsio-*.tmp"))
    finally:
        for w in writers:
            w.kill()
            w.wait()


def test_rerun_removes_killed_writers_temp_files_and_keeps_foreign_files(data, tmp_path):
    out = tmp_path / "out"
    left = _dead_writers_temp(out / "rank_3", "checkpoint_3.ckpt")
    mine = out / "rank_3" / "notes.txt"          # not ours: never touched
    mine.write_text("user's file")
    assert main([f"--src_checkpoint={data['full']}", f"--dst_strategy={data['s8']}", f"--dst_checkpoint={out}"]) == 0
    assert not left.exists() and mine.read_text() == "user's file"
    synth.assert_same_checkpoint_dirs(data["ms8"], str(out))


def test_staging_lives_beside_the_output_and_a_killed_runs_copy_is_removed(data, tmp_path, bucket, monkeypatch):
    import obs_io
    obs_io.file.copy(data["full"], f"s3://{bucket}/full.ckpt")
    out = tmp_path / "out"
    stage = tmp_path / f".out{STAGE_NAME}"
    (stage / "src_checkpoint").mkdir(parents=True)
    (stage / "src_checkpoint" / "full.ckpt").write_bytes(b"a killed run's partial copy")
    from reshard.fetch import SourceFetcher
    seen = []
    real = SourceFetcher.start

    def recording(self):   # where the source is downloaded to, while converting
        temps = real(self)
        seen.extend(temps.values())
        return temps

    monkeypatch.setattr(SourceFetcher, "start", recording)
    assert main([f"--src_checkpoint=s3://{bucket}/full.ckpt", f"--dst_strategy={data['s8']}",
                 f"--dst_checkpoint={out}"]) == 0
    synth.assert_same_checkpoint_dirs(data["ms8"], str(out))
    assert seen and all(str(d).startswith(str(stage)) for d in seen), seen   # staged beside the output
    assert not stage.exists()                                               # and removed after
    # --work_dir puts it there instead
    work = tmp_path / "work"
    seen.clear()
    assert main([f"--src_checkpoint=s3://{bucket}/full.ckpt", f"--dst_strategy={data['s8']}",
                 f"--dst_checkpoint={tmp_path / 'out2'}", f"--work_dir={work}"]) == 0
    assert seen and all(str(d).startswith(str(work / STAGE_NAME)) for d in seen), seen
    assert not (work / STAGE_NAME).exists()


def test_credential_keys_are_masked_in_dumped_configs():
    from cloud_entry import config as config_mod
    masked = config_mod.mask_secrets({"obs": {"credential": "c", "aws_credentials": "x", "pad_token_id": 0}})
    assert masked["obs"]["credential"] == masked["obs"]["aws_credentials"] == config_mod.MASK
    assert masked["obs"]["pad_token_id"] == 0


def test_a_staging_folder_in_use_by_a_running_tool_is_not_taken(data, tmp_path, bucket, capsys):
    """Two runs staging in the same place: the second refuses (one line naming the folder, exit
    2) instead of removing the first one's live stage; a stage whose owner is gone is removed."""
    import obs_io
    from obs_io.atomic import owner_tag
    obs_io.file.copy(data["full"], f"s3://{bucket}/full.ckpt")
    work = tmp_path / "work"
    stage = work / STAGE_NAME
    stage.mkdir(parents=True)
    (stage / ".owner").write_text(owner_tag())          # this very process: running
    argv = [f"--src_checkpoint=s3://{bucket}/full.ckpt", f"--dst_strategy={data['s8']}",
            f"--dst_checkpoint=s3://{bucket}/out8", f"--work_dir={work}", "--source_mode=fetch"]
    assert main(argv) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and str(stage) in err and "another transform-checkpoint" in err, err
    assert (stage / ".owner").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stage / ".owner").write_text(f"{dead.pid}-{owner_tag().split('-', 1)[1]}")   # gone
    assert main(argv) == 0
    assert not stage.exists()
