"""What aws-cli / s5cmd / huggingface-cli users expect of the three tools: -q/--quiet and
-v/--verbose everywhere, log lines on stderr (stdout holds only a command's result), a progress bar
for a single-file `obs_io cp` on a terminal, and the entry's -q never reaching the training
command. (`cloud-entry --help` with types and defaults: tests/test_modelarts_form.py; Ctrl-C while
importing: tests/test_console_interrupt.py; the `obs_io` console script: tests/test_packaging.py.)"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import synth

REPO = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "JOB_COMPLETION"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("conventions")
    params = synth.llama_params(num_layers=2, vocab=32, hidden=16, ffn=32, optimizer=False)
    d = {"full": synth.write_complete_checkpoint(str(root / "full.ckpt"), params), "s2": str(root / "s2")}
    synth.write_strategy(d["s2"], dp=1, mp=2, pp=1, params=params)
    return d


def _transform(small, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reshard", f"--src_checkpoint={small['full']}",
                           f"--dst_strategy={small['s2']}", f"--dst_checkpoint={out}", *flags],
                          capture_output=True, text=True, env=_env(), timeout=300)


# -- transform-checkpoint ------------------------------------------------------------------------

def test_transform_checkpoint_logs_on_stderr_and_the_result_on_stdout(small, tmp_path):
    done = _transform(small, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done: wrote ranks 0-1") and len(done.stdout.splitlines()) == 1, done.stdout
    assert "INFO plan: 2 destination ranks" in done.stderr and "INFO rank 1: wrote" in done.stderr


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_transform_checkpoint_quiet_keeps_the_result_only(small, tmp_path, flag):
    done = _transform(small, tmp_path / "out", flag)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.startswith("done: wrote ranks 0-1")


def test_transform_checkpoint_verbose_and_quiet_exclude_each_other(small, tmp_path):
    done = _transform(small, tmp_path / "out", "-v")
    assert done.returncode == 0 and "INFO rank 0: wrote" in done.stderr, done.stderr
    both = _transform(small, tmp_path / "out2", "-q", "-v")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1 and "-q" in both.stderr
    assert not (tmp_path / "out2").exists()


# -- cloud-entry ---------------------------------------------------------------------------------

RECORD = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"


def _entry(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    argv_file = tmp_path / "argv.json"
    argv_file.unlink(missing_ok=True)
    cut = args.index("--") if "--" in args else len(args)
    proc = subprocess.run([sys.executable, "-m", "cloud_entry", "--auto_trans_ckpt=False", "--load_checkpoint=None",
                           *args[:cut], "--", sys.executable, "-c", RECORD, str(argv_file), "--config", "{config}",
                           *args[cut + 1:]], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    return proc, json.loads(argv_file.read_text())[1:] if argv_file.exists() else []


def test_entry_quiet_is_its_own_and_silences_its_info_lines(tmp_path):
    loud, argv = _entry(tmp_path)
    assert loud.returncode == 0 and "INFO: running launch command" in loud.stderr, loud.stderr
    for args in (["-q"], ["--quiet"], ["--", "--quiet=True"]):        # the last as ModelArts appends it
        quiet, argv = _entry(tmp_path, *args)
        assert quiet.returncode == 0, quiet.stderr
        assert " INFO: " not in quiet.stderr, (args, quiet.stderr)
        assert not [a for a in argv if a.startswith(("-q", "--quiet"))], (args, argv)   # not passed on


def test_a_bare_quiet_after_the_command_is_the_commands_own(tmp_path):
    proc, argv = _entry(tmp_path, "--", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert argv[-1] == "--quiet" and " INFO: " in proc.stderr


def test_entry_verbose_shows_debug_lines_and_excludes_quiet(tmp_path):
    verbose, _ = _entry(tmp_path, "-v")
    assert verbose.returncode == 0 and " DEBUG: " in verbose.stderr, verbose.stderr
    both, _ = _entry(tmp_path, "-q", "-v")
    assert both.returncode == 2 and both.stderr.strip().endswith("-q/--quiet and -v/--verbose exclude each other")


# -- obs_io --------------------------------------------------------------------------------------

def _on_a_terminal(cmd: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as at a shell; returns (exit code, screen)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a 100-column screen
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:            # the follower side closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_a_single_file_copy_shows_progress_on_a_terminal(tmp_path, bucket, s3_env):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    env = _env(**s3_env)
    code, screen = _on_a_terminal([sys.executable, "-m", "obs_io", "cp", str(big), f"s3://{bucket}/big.bin"], env)
    assert code == 0, screen
    assert "copy " in screen and "B/s" in screen and "%|" in screen, screen        # tqdm's bar
    code, screen = _on_a_terminal([sys.executable, "-m", "obs_io", "-q", "cp", f"s3://{bucket}/big.bin",
                                   str(tmp_path / "back.bin")], env)
    assert code == 0 and screen.strip() == "", screen                              # -q: nothing
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_obs_io_logs_on_stderr_and_lists_on_stdout(tmp_path, bucket, s3_env):
    (tmp_path / "a.txt").write_text("a")
    env = _env(**s3_env)
    cp = subprocess.run([sys.executable, "-m", "obs_io", "cp", str(tmp_path / "a.txt"), f"s3://{bucket}/d/a.txt"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 0 and cp.stdout == "" and "1/1 files" in cp.stderr, cp.stderr   # a line when not a tty
    ls = subprocess.run([sys.executable, "-m", "obs_io", "ls", "-v", f"s3://{bucket}/d"], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ls.returncode == 0 and ls.stdout.splitlines() == ["a.txt"], ls.stdout + ls.stderr
    both = subprocess.run([sys.executable, "-m", "obs_io", "-q", "ls", "-v", f"s3://{bucket}/d"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert both.returncode == 2 and "exclude each other" in both.stderr and both.stdout == ""
