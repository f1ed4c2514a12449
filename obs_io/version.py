"""The installed package's version, for every command's `--version` (one definition for the three CLIs)."""
from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "cloud-ckpt-transform"


def package_version() -> str:
    """The version of the installed distribution (pyproject.toml's `version`); "unknown" when the
    modules run from a source tree that was never installed (PYTHONPATH only)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
