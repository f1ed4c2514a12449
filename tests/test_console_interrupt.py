"""Ctrl-C at any moment is one line: also in the first second, while a console script is still
importing its tool (numpy, MindSpore, botocore), before the tool's own handler exists."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# command -> (the interpreter's arguments, its name in what it prints, the module that holds its
# console runner: pip's wrapper does `from <module> import <function>`, obs_io/__main__ too)
COMMANDS = {"transform-checkpoint": ([str(BIN / "transform-checkpoint")], "transform-checkpoint", "reshard.console"),
            "cloud-entry": ([str(BIN / "cloud-entry")], "cloud-entry", "cloud_entry.console"),
            "transform_checkpoint.sh": ([str(BIN / "transform_checkpoint.sh")], "transform_checkpoint.sh",
                                        "reshard.console"),
            "obs_io": ([str(BIN / "obs_io")], "obs_io", "reshard.console"),
            "python -m obs_io": (["-m", "obs_io"], "obs_io", "reshard.console")}


def _module(line: str) -> str | None:
    """The module an `-X importtime` line says was imported, or None for another line."""
    return line.rsplit("|", 1)[1].strip() if line.startswith("import time:") else None


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("imports_after", [1, 40, 250, "its answer"])
def test_ctrl_c_while_importing_is_one_line(command, imports_after):
    """The console script as installed (and `python -m obs_io` as runpy runs it), its
    interpreter run with -X importtime: a line on stderr
    as each import ends tells where the process is, without a clock. SIGINT once the script's
    own module is imported and `imports_after` more imports have ended (the tool's, begun by
    run_console once its handler is set), or once it has printed its answer; wherever the
    signal then lands (an import, numpy's C core, the tool, the moment after it is done), one
    line and 130, or, when the tool had finished first, its version and 0. Never a traceback."""
    args, prog, runner = COMMANDS[command]
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *args, "--version"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:   # each line as it comes; None at the end
        for x in proc.stderr:
            lines.put(x)
        lines.put(None)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    err, after, out = [], None, ""
    if imports_after == "its answer":
        out = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
    while not out:
        line = lines.get(timeout=120)
        if line is None:   # the tool ended before the point: nothing to interrupt
            break
        err.append(line)
        name = _module(line)
        if after is not None and name is not None:
            after += 1
        elif name == runner:
            after = 0
        if after == imports_after:
            proc.send_signal(signal.SIGINT)
            break
    out += proc.stdout.read()
    proc.wait(60)
    reader.join(60)
    while not lines.empty():
        err.append(lines.get() or "")
    said = [x.rstrip("\n") for x in err if x and _module(x) is None]
    # the script's module was imported (or the tool was done before the signal)
    assert after is not None or imports_after == "its answer" or proc.returncode == 0, err
    assert not any("Traceback" in x for x in said), "".join(said)
    if proc.returncode == 0:   # it had finished and said its version: the signal came after
        assert out.strip().startswith(prog) and said == [], (out, said)
        return
    assert proc.returncode == 130, (proc.returncode, said)
    # run_console's line, or the tool's own once its handler is set ("...; rerun the same command")
    assert len(said) == 1 and said[0].startswith(f"{prog}: interrupted"), said


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


def test_a_ctrl_c_that_lands_in_a_callback_is_delivered_again(tmp_path, monkeypatch, capsys):
    """A Ctrl-C handled inside a weakref callback (or a finalizer) cannot be raised there:
    Python prints "Exception ignored ..." and the interrupt is lost, and the tool would go on.
    run_console delivers it again, out of the callback: one line, 130; its hook is the
    caller's again afterwards."""
    from reshard.console import run_console
    (tmp_path / "lost_in_callback.py").write_text(
        "import os, signal, time, weakref\n"
        "def main():\n"
        "    class Held: pass\n"
        "    def callback(ref):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(1000): pass   # the handler runs here, inside the callback\n"
        "    held = Held(); ref = weakref.ref(held, callback); del held\n"
        "    deadline = time.monotonic() + 60\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = sys.unraisablehook
    assert run_console("tool", "lost_in_callback:main") == 130
    assert capsys.readouterr().err.strip() == "tool: interrupted"
    assert sys.unraisablehook is hook


def test_a_ctrl_c_racing_the_switch_to_ignored_is_dropped_quietly():
    """Python reports a SIGINT that arrives while its handler is being set to SIG_IGN as an
    unraisable OSError (bpo-43406): during the tool's cleanup after the first Ctrl-C that would
    be a second line after its one; run_console's hook drops exactly that, and passes on the rest."""
    import types
    from reshard.console import _again
    seen = []
    hook = _again(seen.append)

    def info(exc):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                     err_msg=None, object=None)
    hook(info(OSError(f"Signal {signal.SIGINT} ignored due to race condition")))
    assert seen == []
    other = info(OSError(f"Signal {signal.SIGTERM} ignored due to race condition"))
    hook(other)
    assert seen == [other]
