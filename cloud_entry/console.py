"""The job entry's console script (pyproject.toml [project.scripts]): the entry is imported
inside reshard.console.run_console, so a Ctrl-C during the import is one line too."""
from __future__ import annotations

from reshard.console import run_console


def cloud_entry() -> int:
    """The `cloud-entry` console script: cloud_entry.__main__.main on sys.argv.

    Returns:
        The process's exit code (see cloud_entry.__main__; 130 for a Ctrl-C).
    """
    return run_console("cloud-entry", "cloud_entry.__main__:main", script=True)
