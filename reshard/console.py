"""Console scripts (pyproject.toml [project.scripts]): each imports its tool inside run_console,
so a Ctrl-C while Python is still importing it (numpy, MindSpore, botocore: up to a second) is
one line and exit 130, as it is later, not a traceback of the import machinery. This module
imports nothing but the standard library, and `reshard` itself loads its names lazily, so the
script's own import is over in about a millisecond."""
from __future__ import annotations

import importlib
import signal
import sys


def run_console(prog: str, target: str) -> int:
    """Import `target` ("module:function") and call it; a Ctrl-C during the import: one line, 130.

    During the import (about a second) a Ctrl-C is only noted, and acted on once the import is
    over: raised where it lands, it could turn into an ImportError (numpy's C core reports an
    interrupted import as "Importing the numpy C-extensions failed") or be lost in a callback
    of the import machinery ("Exception ignored in ... _get_module_lock")."""
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        module, _, function = target.partition(":")
        main = getattr(importlib.import_module(module), function)
    except ImportError:
        if not interrupted:
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return main()


def transform_checkpoint() -> int:
    return run_console("transform-checkpoint", "reshard.cli:main")


def transform_checkpoint_sh() -> int:
    return run_console("transform_checkpoint.sh", "reshard.mindformers_cli:main_sh")


def obs_io() -> int:
    """The `obs_io` console script and `python -m obs_io`."""
    return run_console("obs_io", "obs_io.cli:main")
