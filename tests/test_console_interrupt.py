"""Ctrl-C at any moment is one line: also in the first second, while a console script is still
importing its tool (numpy, MindSpore, botocore), before the tool's own handler exists."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"transform-checkpoint": "from reshard.console import transform_checkpoint as main",
           "cloud-entry": "from cloud_entry.console import cloud_entry as main",
           "transform_checkpoint.sh": "from reshard.console import transform_checkpoint_sh as main",
           "obs_io": "from reshard.console import obs_io as main"}


def _interrupted(code: str, prog: str, after: float) -> None:
    """Run `code` with --version; SIGINT `after` seconds past its 'ready' line: either it had
    finished (its version printed) or one line and exit 130, never a traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, "--version"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if out.strip().startswith(prog):   # it had finished and said its version: the signal came after
        return
    assert proc.returncode == 130, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
@pytest.mark.parametrize("after", [0.02, 0.1, 0.2])
def test_ctrl_c_while_importing_is_one_line(prog, after):
    # what pip's console-script wrapper does, with the interpreter already started and the console
    # runners (standard library only) imported: the interrupt must land in the tool's import, not
    # in Python's own start-up, where no handler can exist yet
    _interrupted("import sys, reshard.console, cloud_entry.console; print('ready', flush=True); "
                 f"{SCRIPTS[prog]}; sys.exit(main())", prog, after)


def test_an_interrupt_an_extension_turned_into_an_import_error_is_still_one_line(tmp_path, monkeypatch, capsys):
    """numpy's C core, interrupted while it imports, raises ImportError ("Importing the numpy
    C-extensions failed") instead of KeyboardInterrupt: still one line and 130; an ImportError
    without a Ctrl-C stays an error."""
    from reshard.console import run_console
    (tmp_path / "interrupted_ext.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.1)\n"
        "raise ImportError('Importing the numpy C-extensions failed')\n")
    (tmp_path / "interrupted_ok.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.1)\n"
        "def main():\n"
        "    raise AssertionError('must not run after a Ctrl-C')\n")
    (tmp_path / "broken_ext.py").write_text("raise ImportError('no such library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in ("interrupted_ext:main", "interrupted_ok:main"):
        assert run_console("tool", target) == 130
        assert capsys.readouterr().err.strip() == "tool: interrupted"
    with pytest.raises(ImportError, match="no such library"):
        run_console("tool", "broken_ext:main")


@pytest.mark.parametrize("after", [0.02, 0.1, 0.2])
def test_ctrl_c_while_python_m_obs_io_imports_is_one_line(after):
    """`python -m obs_io` as runpy runs it, the package and the console runner (standard library
    only) imported first: a Ctrl-C while obs_io.cli imports boto3 is one line and exit 130."""
    _interrupted("import runpy, sys; import obs_io, reshard.console; print('ready', flush=True); "
                 "sys.argv[0] = obs_io.__file__.replace('__init__', '__main__'); "
                 "runpy.run_module('obs_io', run_name='__main__', alter_sys=True)", "obs_io", after)
