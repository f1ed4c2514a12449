"""transform-checkpoint as a drop-in for MindFormers' transform_checkpoint.py and .sh: every flag
of MindFormers' script with its meaning, the shell script's positional form, its log files,
its own complete output taken back as a source, a readable --dry_run, a clean Ctrl-C that the
same command resumes, --help and --version. Conversions are compared bit for bit with
MindSpore's own transform_checkpoints."""
from __future__ import annotations

import filecmp
import glob
import logging
import os
import re
import signal
import subprocess
import sys
import time
from importlib import metadata

from pathlib import Path

import pytest
from platform_harness import group_killed_after

from reshard.cli import INTERRUPTED, build_parser, main
from reshard.plan import ranks_text
from reshard.mindformers_cli import build_parser as build_sh_parser, main_sh
from reshard.sources import SourceEntry, check_source_strategy, classify
from reshard.errors import ReshardError
from tests import synth
from conftest import errors_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flags of MindFormers' mindformers/tools/ckpt_transform/transform_checkpoint.py (its
# argparse block, read from mindspore-lab/mindformers) and what its shell script passes.
MINDFORMERS_FLAGS = ("--src_checkpoint", "--dst_checkpoint_dir", "--src_strategy", "--dst_strategy",
                     "--prefix", "--rank_id", "--world_size", "--transform_process_num",
                     "--transform_by_rank")
RUN_TOOL = "import sys; from reshard.cli import main; sys.exit(main())"
RUN_SH = "import sys; from reshard.mindformers_cli import main_sh; sys.exit(main_sh())"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """complete -> 8 (dp2 mp2 pp2) -> 4 (dp1 mp2 pp2) -> complete, by MindSpore."""
    d = synth.world_8_4(tmp_path_factory.mktemp("dropin"), vocab=128, hidden=32, ffn=64)
    root = d["root"]
    d["ms4"] = synth.ms_transform(d["ms8"], os.path.join(root, "ms4"), d["s8"], d["s4"])
    d["ms1"] = synth.ms_transform(d["ms4"], os.path.join(root, "ms1"), d["s4"], None)
    d["ms4_from_full"] = synth.ms_transform(d["full"], os.path.join(root, "ms4full"), None, d["s4"])
    return d


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The working folder of a test: where ./log and ./transformed_checkpoint go."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT}


def _one_line_error(capsys, rc: int, *culprits: str) -> str:
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for c in culprits:
        assert c in err, err
    return err


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**"), recursive=True)
                  if os.path.isfile(p) and "/.reshard/" not in p and not p.endswith("conversion_manifest.json"))


# -- 1. MindFormers' flags --------------------------------------------------------------------

def test_every_mindformers_flag_is_accepted():
    options = {o for a in build_parser()._actions for o in a.option_strings}
    assert set(MINDFORMERS_FLAGS) <= options, set(MINDFORMERS_FLAGS) - options


def test_conversions_with_mindformers_flags_equal_mindspore(data, in_tmp, capsys):
    """The three documented scenarios written with MindFormers' names (and `None` for no
    strategy, as its script and its .sh pass it)."""
    out8, out4, out1 = (str(in_tmp / n) for n in ("out8", "out4", "out1"))
    assert main([f"--src_checkpoint={data['full']}", "--src_strategy=None", f"--dst_checkpoint_dir={out8}",
                 f"--dst_strategy={data['s8']}", "--world_size=8", "--transform_process_num=2",
                 "--transform_by_rank=True", "--prefix=checkpoint_"]) == 0
    out8 = os.path.join(out8, "full")   # MindFormers' layout: <dst_checkpoint_dir>/<checkpoint name>/
    synth.assert_same_checkpoint_dirs(data["ms8"], out8)
    assert main([f"--src_checkpoint={out8}", f"--src_strategy={data['s8']}", f"--dst_checkpoint_dir={out4}",
                 f"--dst_strategy={data['s4']}", "--world_size=4", "--transform_process_num=2",
                 "--transform_by_rank", "False"]) == 0
    out4 = os.path.join(out4, "full")
    synth.assert_same_checkpoint_dirs(data["ms4"], out4)
    assert main([f"--src_checkpoint={out4}", f"--src_strategy={data['s4']}", f"--dst_checkpoint_dir={out1}",
                 "--dst_strategy=None", "--world_size=1"]) == 0
    out1 = os.path.join(out1, "full")
    synth.assert_same_checkpoint_dirs(data["ms1"], out1)
    assert _files(out1) == ["rank_0/checkpoint_0.ckpt"]
    # an empty strategy is "none" too; --world_size is still checked
    rc = main([f"--src_checkpoint={out4}", f"--src_strategy={data['s4']}", f"--dst_checkpoint_dir={out1}x",
               "--dst_strategy=", "--world_size=8"])
    _one_line_error(capsys, rc, "--world_size 8", "no destination strategy")
    assert not os.path.exists(f"{out1}x")


def test_without_a_destination_writes_mindformers_default_folder(data, in_tmp, capsys):
    assert main([f"--src_checkpoint={data['full']}", f"--dst_strategy={data['s8']}"]) == 0
    err = capsys.readouterr().err
    assert "transformed_checkpoint" in err and "MindFormers' default" in err
    synth.assert_same_checkpoint_dirs(data["ms8"], str(in_tmp / "transformed_checkpoint" / "full"))


def test_rank_id_converts_only_the_block_it_leads(data, in_tmp, capsys):
    """MindFormers' --rank_id with --world_size and --transform_process_num: the process whose
    rank leads a block converts that block (ranks 4-7 of 8 with 2 blocks), nothing else."""
    out = str(in_tmp / "out8")
    assert main([f"--src_checkpoint={data['full']}", f"--dst_checkpoint={out}", f"--dst_strategy={data['s8']}",
                 "--world_size=8", "--transform_process_num=2", "--rank_id=4", "--transform_by_rank=True"]) == 0
    assert "destination ranks 4-7" in capsys.readouterr().err
    assert _files(out) == [f"rank_{r}/checkpoint_{r}.ckpt" for r in range(4, 8)]
    for r in range(4, 8):
        assert synth.load_params(f"{out}/rank_{r}/checkpoint_{r}.ckpt") == \
            synth.load_params(f"{data['ms8']}/rank_{r}/checkpoint_{r}.ckpt")
    # then the other block's leader: the whole result, equal to MindSpore's
    assert main([f"--src_checkpoint={data['full']}", f"--dst_checkpoint={out}", f"--dst_strategy={data['s8']}",
                 "--transform_process_num=2", "--rank_id=0"]) == 0
    synth.assert_same_checkpoint_dirs(data["ms8"], out)
    # a rank that leads no block, a process count that does not divide: one line, nothing written
    bad = str(in_tmp / "bad")
    for flags, culprits in ((["--transform_process_num=2", "--rank_id=1"], ("--rank_id 1", "0, 4")),
                            (["--transform_process_num=3", "--rank_id=0"], ("transform_process_num",)),
                            (["--rank_id=8"], ("--rank_id 8",))):
        rc = main([f"--src_checkpoint={data['full']}", f"--dst_checkpoint={bad}",
                   f"--dst_strategy={data['s8']}", *flags])
        _one_line_error(capsys, rc, *culprits)
        assert not os.path.exists(bad)


# -- 4. the tool's own complete output as a source ---------------------------------------------

def test_one_rank_folder_is_a_complete_source():
    def E(name: str) -> SourceEntry:
        return SourceEntry(name, 1)
    s = classify("/d", [E("rank_0/checkpoint_0.ckpt")])
    assert s.complete and s.files == {0: "rank_0/checkpoint_0.ckpt"}
    assert any("complete checkpoint" in n.text and n.level == logging.INFO for n in s.notes)
    assert not classify("/d", [E("rank_0/a.ckpt")], partial=True).complete   # a block's copy
    assert not classify("/d", [E("rank_0/a.ckpt"), E("rank_1/a.ckpt")]).complete
    assert check_source_strategy(s, None) is None
    assert check_source_strategy(s, 1).level == logging.WARNING
    with pytest.raises(ReshardError, match=r"^/d/rank_1: missing or empty \(the source strategy has 8 ranks\)$"):
        check_source_strategy(s, 8)
    assert check_source_strategy(classify("/d/m.ckpt", [E("m.ckpt")], is_file=True), 8) is None


def test_complete_output_converts_again_without_a_strategy(data, in_tmp, capsys):
    """dst/rank_0/checkpoint_0.ckpt from a distributed -> complete run, given as the source with
    no source strategy, is a complete source (as MindSpore takes it)."""
    out1, out4 = str(in_tmp / "out1"), str(in_tmp / "out4")
    assert main([f"--src_checkpoint={data['ms8']}", f"--src_strategy={data['s8']}",
                 f"--dst_checkpoint={out1}", "--dst_strategy=None"]) == 0
    assert main([f"--src_checkpoint={out1}", f"--dst_checkpoint={out4}", f"--dst_strategy={data['s4']}",
                 "--transform_process_num=2"]) == 0
    assert "rank_0 is its only rank folder: a complete checkpoint" in capsys.readouterr().err
    synth.assert_same_checkpoint_dirs(data["ms4_from_full"], out4)
    # a one-rank strategy describes a complete checkpoint too: ignored, with a warning
    s1, again = str(in_tmp / "s1"), str(in_tmp / "again")
    synth.write_strategy(s1, dp=1, mp=1, pp=1, params=data["params"])
    assert main([f"--src_checkpoint={out1}", f"--src_strategy={s1}", f"--dst_checkpoint={again}",
                 f"--dst_strategy={data['s4']}"]) == 0
    assert "the source strategy is ignored" in capsys.readouterr().err
    synth.assert_same_checkpoint_dirs(data["ms4_from_full"], again)
    # with the 8-rank strategy it was made from: its other ranks are missing
    bad = str(in_tmp / "bad")
    rc = main([f"--src_checkpoint={out1}", f"--src_strategy={data['s8']}", f"--dst_checkpoint={bad}",
               f"--dst_strategy={data['s4']}"])
    _one_line_error(capsys, rc, "rank_1: missing", "8 ranks")
    assert not os.path.exists(bad)


# -- 2. and 3. the shell script's form and its logs --------------------------------------------

def test_shell_form_converts_and_logs_where_mindformers_does(data, in_tmp, capsys):
    assert main_sh([data["full"], "None", "out8", data["s8"], "8", "2"]) == 0
    synth.assert_same_checkpoint_dirs(data["ms8"], str(in_tmp / "out8" / "full"))
    logs = sorted(os.listdir(in_tmp / "log"))
    assert logs == ["transform_0.log", "transform_1.log"]
    text = "".join((in_tmp / "log" / f).read_text() for f in logs)
    assert all(f"rank {r}: wrote" in text for r in range(8)) and "Traceback" not in text
    # 8 -> complete with a prefix, and one of our flags after the positional ones
    assert main_sh(["out8/full", data["s8"], "out1", "None", "1", "1", "llama_", "--max_memory=1G"]) == 0
    assert _files(in_tmp / "out1" / "full") == ["rank_0/llama_0.ckpt"]
    synth.assert_same_checkpoint_dirs(synth.ms_transform(data["ms8"], str(in_tmp / "ref1"), data["s8"], None,
                                                         prefix="llama_"), str(in_tmp / "out1" / "full"))
    assert (in_tmp / "log" / "transform_0.log").read_text().count("wrote") == 1   # this run's lines only
    # too few arguments, a world size the strategy does not have: one line, exit 2
    _one_line_error(capsys, main_sh([data["full"], "None", "x"]), "WORLD_SIZE")
    _one_line_error(capsys, main_sh([data["full"], "None", "x", data["s8"], "4", "2"]), "--world_size 4")
    assert not (in_tmp / "x").exists()


def test_shell_form_as_a_command(data, in_tmp):
    """As the console script runs it (a fresh interpreter): the positional form, then --version
    and --help of both commands."""
    p = subprocess.run([sys.executable, "-c", RUN_SH, data["ms8"], data["s8"], "out4", data["s4"], "4", "2"],
                       cwd=in_tmp, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    synth.assert_same_checkpoint_dirs(data["ms4"], str(in_tmp / "out4" / os.path.basename(data["ms8"])))
    assert sorted(os.listdir(in_tmp / "log")) == ["transform_0.log", "transform_1.log"]
    version = metadata.version("cloud-ckpt-transform")
    for code, name in ((RUN_SH, "transform_checkpoint.sh"), (RUN_TOOL, "transform-checkpoint")):
        p = subprocess.run([sys.executable, "-c", code, "--version"], env=_env(), capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip() == f"{name} {version}", p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-c", RUN_SH, "--help"], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "SRC SRC_STRATEGY DST DST_STRATEGY WORLD_SIZE PROCESS_NUM" in p.stdout


def test_log_dir_of_the_python_form(data, in_tmp):
    """No log files unless asked (MindFormers' Python script writes none); --log_dir: one per
    converting process, named as MindFormers' shell script names them."""
    assert main([f"--src_checkpoint={data['full']}", "--dst_checkpoint=a", f"--dst_strategy={data['s8']}"]) == 0
    assert not (in_tmp / "log").exists()
    assert main([f"--src_checkpoint={data['full']}", "--dst_checkpoint=b", f"--dst_strategy={data['s8']}",
                 "--process_num=2", "--log_dir=logs"]) == 0
    assert sorted(os.listdir(in_tmp / "logs")) == ["transform_0.log", "transform_1.log"]


# -- 5. and 6. what it prints -----------------------------------------------------------------

def test_dry_run_from_strategies_alone_labels_blocks(data, in_tmp, capsys):
    assert main(["--dry_run", f"--src_strategy={data['s8']}", f"--dst_strategy={data['s4']}",
                 "--dst_checkpoint=out4"]) == 0
    text = capsys.readouterr().out
    assert "shapes: in blocks, not elements" in text
    assert f"source: not given (plan from strategies alone), strategy {data['s8']}" in text
    assert f"destination: out4, strategy {data['s4']}" in text
    # wq is split in 2 along dimension 0 by the source's mp2: half of it per destination rank
    assert "model.layers.0.attention.wq.weight [1, 1] of [2, 1] blocks <- rank " in text
    assert "expected peak memory" in text and "a lower bound" in text
    assert not (in_tmp / "out4").exists()


def test_dry_run_of_a_remote_source_shows_the_users_urls(data, in_tmp, bucket, capsys):
    import obs_io
    base = f"s3://{bucket}"
    obs_io.file.copy_parallel(data["ms8"], f"{base}/ms8")
    obs_io.file.copy_parallel(data["s8"], f"{base}/s8")
    assert main(["--dry_run", f"--src_checkpoint={base}/ms8", f"--src_strategy={base}/s8",
                 f"--dst_strategy={data['s4']}", f"--dst_checkpoint={base}/out4"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"source: {base}/ms8 (rank_<r> folders, 8 ranks), strategy {base}/s8" in text
    assert f"destination: {base}/out4" in text
    assert "shapes: in elements" in text
    assert "model.layers.0.attention.wq.weight Float16[16, 32] <- rank " in text   # mp2 of 32 rows
    assert "reshard-stage" not in text and "/tmp/" not in text.replace(data["s4"], ""), text


def test_conversion_prints_peak_before_starting_and_a_summary(data, in_tmp, capsys):
    assert main([f"--src_checkpoint={data['full']}", "--dst_checkpoint=out8", f"--dst_strategy={data['s8']}"]) == 0
    printed = capsys.readouterr()
    lines = printed.err.splitlines()      # the log, on stderr; the result line alone on stdout
    peak = next(i for i, line in enumerate(lines) if "expected peak" in line and "budget" in line)
    first_write = next(i for i, line in enumerate(lines) if "rank 0: wrote" in line)
    assert peak < first_write
    assert printed.out.splitlines() == [next(x for x in printed.out.splitlines() if x.startswith("done: "))]
    assert printed.out.startswith("done: wrote ranks 0-7 to out8, kept ranks none")
    assert main([f"--src_checkpoint={data['full']}", "--dst_checkpoint=out8", f"--dst_strategy={data['s8']}"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("done: wrote ranks none to out8, kept ranks 0-7")


def test_help_describes_every_flag_and_ends_with_the_scenarios(capsys):
    for parser in (build_parser(), build_sh_parser()):
        assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:   # the help says which flags are MindFormers' names
        for flag in set(action.option_strings) & set(MINDFORMERS_FLAGS):
            said = "[MindFormers]" if flag == action.option_strings[0] else f"{flag} is MindFormers' name"
            assert said in action.help, (flag, action.help)
    examples = text[text.index("examples"):]
    assert "complete -> 8 ranks" in examples and "8 -> 4 ranks" in examples and "4 -> complete" in examples
    assert examples.count("--dst_checkpoint_dir=") >= 3 and "--transform_process_num=2" in examples
    assert text.rstrip().endswith("transform_checkpoint.sh llama_7b.ckpt None out8 strategy8/ 8 2")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"transform-checkpoint {metadata.version('cloud-ckpt-transform')}"


# -- 7. Ctrl-C ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A model big enough that a conversion to 8 ranks is still running when interrupted."""
    root = tmp_path_factory.mktemp("big")
    params = synth.llama_params(num_layers=4, vocab=16000, hidden=1024, ffn=2816)
    full = synth.write_complete_checkpoint(str(root / "big.ckpt"), params)
    synth.write_strategy(str(root / "s8"), dp=2, mp=2, pp=2, num_layers=4, params=params)
    return {"full": full, "s8": str(root / "s8"), "root": root}


def _finals(out: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, "rank_*", "checkpoint_*.ckpt")))


@pytest.mark.parametrize("process_num", [2, 1])
def test_ctrl_c_ends_with_one_line_and_the_rerun_resumes(big, in_tmp, process_num):
    """SIGINT to the process group (what a terminal's Ctrl-C does) once the first rank is
    written: one line, exit 130, no traceback from the parent or the workers, nothing partial
    left (no temporary file; every file under a final name complete); the same command then
    keeps those ranks, converts the rest, and equals an uninterrupted run byte for byte."""
    out = str(in_tmp / "out")
    argv = [sys.executable, "-c", RUN_TOOL, f"--src_checkpoint={big['full']}", f"--dst_checkpoint={out}",
            f"--dst_strategy={big['s8']}", f"--transform_process_num={process_num}", "--log_dir=log"]
    with group_killed_after(subprocess.Popen(argv, cwd=in_tmp, env=_env(), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, start_new_session=True)) as p:
        deadline = time.monotonic() + 300
        while not _finals(out) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(p.pid, signal.SIGSTOP)          # hold everything still while we look
        done_before = _finals(out)
        assert done_before and len(done_before) < 8, f"not mid-conversion: {done_before}"
        os.killpg(p.pid, signal.SIGINT)
        os.killpg(p.pid, signal.SIGCONT)
        stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stdout + stderr
    assert errors_only(stderr) == f"transform-checkpoint: {INTERRUPTED}", stderr
    logs = "".join(open(f).read() for f in glob.glob(str(in_tmp / "log" / "*.log")))
    assert "Traceback" not in stdout + logs
    left = [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]
    assert not left, f"temporary files left: {left}"
    interrupted = _finals(out)
    assert len(interrupted) < 8
    vouched_before = sorted(Path(out, ".reshard").glob("rank_*.json"))
    assert len(vouched_before) <= len(interrupted)

    ref = str(in_tmp / "ref")
    assert subprocess.run([*argv[:4], f"--dst_checkpoint={ref}", *argv[5:7]], cwd=in_tmp, env=_env(),
                          capture_output=True, timeout=600).returncode == 0
    for f in interrupted:   # whatever carries a final name is complete
        assert filecmp.cmp(f, os.path.join(ref, os.path.relpath(f, out)), shallow=False), f
    rerun = subprocess.run(argv, cwd=in_tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # the interrupted run's ranks whose commit finished (file and manifest) are kept; one renamed
    # in the instant before its manifest was written is converted again
    vouched = sorted(int(m.stem.split("_")[1]) for m in vouched_before)
    if vouched:
        assert f"kept ranks {ranks_text(vouched)}" in rerun.stdout, (vouched, rerun.stdout)
    assert _files(out) == _files(ref)
    for name in _files(ref):
        assert filecmp.cmp(os.path.join(out, name), os.path.join(ref, name), shallow=False), name


def test_a_killed_worker_is_one_line_and_the_rerun_converts_the_rest(big, in_tmp):
    """A conversion worker SIGKILLed mid-rank (as the kernel's OOM killer does): one line
    naming it and the signal, exit 2, no traceback, its temporary file removed; the same
    command then converts the rest, equal to an uninterrupted run."""
    out = in_tmp / "out"
    argv = [sys.executable, "-c", RUN_TOOL, f"--src_checkpoint={big['full']}", f"--dst_checkpoint={out}",
            f"--dst_strategy={big['s8']}", "--transform_process_num=2"]
    with group_killed_after(subprocess.Popen(argv, cwd=in_tmp, env=_env(), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, start_new_session=True)) as p:
        deadline = time.monotonic() + 300
        temps: list[str] = []
        while not temps and p.poll() is None and time.monotonic() < deadline:
            temps = glob.glob(str(out / "rank_*" / ".*.obsio-*.tmp"))
            time.sleep(0.005)
        assert temps, p.communicate(timeout=60)
        worker = int(re.search(r"\.obsio-(\d+)-", temps[0]).group(1))   # a worker's file names it
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 2, stdout + stderr
    lines = errors_only(stderr).splitlines()
    assert len(lines) == 1 and "Traceback" not in stdout + stderr, stderr
    assert f"a conversion worker (pid {worker}) was killed by SIGKILL while converting rank(s)" in lines[0], lines[0]
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]
    ref = str(in_tmp / "ref")
    assert subprocess.run([*argv[:4], f"--dst_checkpoint={ref}", *argv[5:]], cwd=in_tmp, env=_env(),
                          capture_output=True, timeout=600).returncode == 0
    rerun = subprocess.run(argv, cwd=in_tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _files(str(out)) == _files(ref)
    for name in _files(ref):
        assert filecmp.cmp(os.path.join(out, name), os.path.join(ref, name), shallow=False), name


def test_a_stop_inside_a_finalizer_is_asked_again_not_lost():
    """A worker's SIGTERM landing in a dropped writer's __del__ (where an exception is printed and
    lost) is delivered again once the finalizer has returned; elsewhere it stops at once."""
    from reshard import execute
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        class Dropped:
            def __del__(self):
                execute._stop(signal.SIGTERM, sys._getframe())   # what the handler would get
        Dropped()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, execute._stop)
        with pytest.raises(execute._Stopped):
            execute._stop(signal.SIGTERM, sys._getframe())
    finally:
        signal.signal(signal.SIGTERM, previous)
