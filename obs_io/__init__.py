"""Object storage behind Huawei moxing's `mox.file` API: local paths, obs:// and s3:// URLs, and
the URLs of any store added as a plug-in (obs_io.store: the interface; obs_io.registry: which
store serves which scheme).

    import obs_io as mox
    mox.file.copy_parallel("obs://bucket/ckpt", "/cache/ckpt")

Settings come from the environment ModelArts images set (S3_ENDPOINT, ACCESS_KEY_ID,
SECRET_ACCESS_KEY, S3_USE_HTTPS, ...) or from mox.file.set_auth(); see obs_io.config.

Importing the package is cheap: the names below that need boto3 (`file`) load on first use
(PEP 562), so `import obs_io.atomic` or `obs_io.is_remote` in the conversion engine's worker
processes costs milliseconds, not botocore's import.
"""
from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

from . import config as _config
from .config import S3Config, configure, current as current_config, set_auth
from .entries import DirEntry, StatResult
from .registry import register, store_for
from .urls import is_remote

__all__ = ["file", "is_remote", "store_for", "register", "install_as_moxing", "set_auth", "configure",
           "reset_config", "current_config", "S3Config", "StatResult", "DirEntry", "quiet_client_logs"]


def __getattr__(name: str) -> ModuleType:
    """`obs_io.file` (which imports boto3) on first access, PEP 562; importing it makes it an
    ordinary attribute of the package, so this runs once."""
    if name == "file":
        return importlib.import_module(".file", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def quiet_client_logs(level: int = logging.WARNING) -> None:
    """Show the store client libraries' log records from `level` up only (a program's verbose
    log is about its own work, not each HTTP request).

    Args:
        level: a logging level.
    """
    from .redact import WIRE_LOGGERS
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(level)


def reset_config() -> None:
    """Forget set_auth/configure overrides, back to the environment alone, and what this process
    saw of the store (the stall clock of obs_io.retry, when it is loaded)."""
    _config.reset()
    retry = sys.modules.get(f"{__name__}.retry")
    if retry is not None:
        retry.reset()


def install_as_moxing() -> ModuleType:
    """Make `import moxing` (as MindFormers does on ModelArts) return this package.

    Never install the PyPI `moxing`: it is an unrelated project.

    Returns:
        This package, now also sys.modules["moxing"] (and its file module "moxing.file").
    """
    module = sys.modules[__name__]
    sys.modules["moxing"] = module
    sys.modules["moxing.file"] = module.file
    return module
