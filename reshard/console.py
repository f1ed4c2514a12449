"""Console scripts (pyproject.toml [project.scripts]): each imports its tool inside run_console,
so a Ctrl-C while Python is still importing it (numpy, MindSpore, botocore: up to a second) is
one line and exit 130, as it is later, not a traceback of the import machinery. This module
imports nothing that reads a file (`_signal` is the builtin behind `signal`, set up when the
interpreter starts), and `reshard` itself loads its names lazily, so from the console script's
first line to run_console's handler there are only the lookups of two small modules."""
from __future__ import annotations

import _signal
import importlib
import sys

INTERRUPTED = 128 + _signal.SIGINT


def _once(signum: int, frame: object) -> None:
    """Between the tool's own handlers (before it sets one, after it restores ours): the first
    Ctrl-C stops the tool as a KeyboardInterrupt, further ones are ignored while it cleans up."""
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    raise KeyboardInterrupt


def _again(hook):
    """sys.unraisablehook for the tool's run: a KeyboardInterrupt raised where Python cannot
    raise it (a finalizer, a weakref or import-lock callback: "Exception ignored in ...", and
    the Ctrl-C lost) is delivered again, a moment later, where it can be. A Ctrl-C that arrived
    just as the tool set SIGINT to be ignored (after the first one: _once, the end of a console
    script) is dropped quietly: Python reports it as an unraisable "OSError: Signal 2 ignored
    due to race condition" (bpo-43406), a second line after the tool's one. Anything else goes
    to `hook`."""
    def unraisable(info) -> None:
        if isinstance(info.exc_value, OSError) and info.object is None and \
                str(info.exc_value) == f"Signal {_signal.SIGINT} ignored due to race condition":
            return
        if isinstance(info.exc_value, KeyboardInterrupt):
            import threading   # loaded long before a tool can be finalizing anything
            _signal.signal(_signal.SIGINT, _once)
            # from another thread, after the callback: the main thread acts on it at its next
            # check, out of here (raised now, it would be raised in this hook and lost again)
            threading.Timer(0.05, _signal.raise_signal, (_signal.SIGINT,)).start()
            return
        hook(info)
    return unraisable


def run_console(prog: str, target: str, *, script: bool = False) -> int:
    """Import `target` ("module:function") and call it; a Ctrl-C wherever it lands from here on
    (the import, the tool, the moments between the tool's own handlers): one line, 130.

    During the import (about a second) a Ctrl-C is only noted, and acted on once the import is
    over: raised where it lands, it could turn into an ImportError (numpy's C core reports an
    interrupted import as "Importing the numpy C-extensions failed") or be lost in a callback
    of the import machinery ("Exception ignored in ... _get_module_lock"). Then _once is the
    handler while the tool runs (the tool may set its own and restore this one), and one that
    lands in a finalizer or callback is delivered again (_again). script: this
    is a console script's process, which ends with the returned code: a Ctrl-C after the tool
    is done is ignored; otherwise (a caller in-process) the caller's handler comes back.

    Args:
        prog: the program's name, for the "interrupted" line.
        target: "module:function", called without arguments.
        script: this is a console script's process (see above).

    Returns:
        What the function returned, or 130 (INTERRUPTED) for a Ctrl-C.

    Raises:
        ImportError: the target cannot be imported (not because of a Ctrl-C).
    """
    interrupted: list[int] = []
    previous = _signal.signal(_signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    hook, sys.unraisablehook = sys.unraisablehook, _again(sys.unraisablehook)
    try:
        try:
            module, _, function = target.partition(":")
            main = getattr(importlib.import_module(module), function)
        except ImportError:
            if not interrupted:
                raise
        if interrupted:
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
            print(f"{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED
        _signal.signal(_signal.SIGINT, _once)
        try:
            return main()
        finally:   # also when main exits (argparse's --version, --help)
            if script:
                _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    except KeyboardInterrupt:   # from _once, or the tool's own: further Ctrl-Cs are ignored by now
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        if not script:
            _signal.signal(_signal.SIGINT, previous)
            sys.unraisablehook = hook


def transform_checkpoint() -> int:
    """The `transform-checkpoint` console script (reshard.cli.main).

    Returns:
        Its exit code: 0, 2 for bad input (one line), 130 for a Ctrl-C.
    """
    return run_console("transform-checkpoint", "reshard.cli:main", script=True)


def transform_checkpoint_sh() -> int:
    """The `transform_checkpoint.sh` console script: MindFormers' script's arguments
    (reshard.mindformers_cli.main_sh).

    Returns:
        Its exit code: 0, 2 for bad input (one line), 130 for a Ctrl-C.
    """
    return run_console("transform_checkpoint.sh", "reshard.mindformers_cli:main_sh", script=True)


def obs_io() -> int:
    """The `obs_io` console script and `python -m obs_io` (obs_io.cli.main).

    Returns:
        Its exit code: 0, 2 for a bad argument or a storage error (one line), 130 for a
        Ctrl-C.
    """
    return run_console("obs_io", "obs_io.cli:main", script=True)
