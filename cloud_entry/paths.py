"""Where things live: the local output tree, the shared store, and what may be cleared.

Why a separate module: the same names (strategy/, transformed_checkpoint/<ckpt_name>/rank_<r>/)
appear locally, on a shared disk and under remote_save_url, and the clearing rules must be
checked in one place so no code path can delete the user's checkpoint or strategy.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import obs_io
from obs_io.urls import join  # noqa: F401 - for local paths and URLs alike: obs_io's one rule
from reshard.sources import overlaps

log = logging.getLogger(__name__)

TRANSFORMED = "transformed_checkpoint"
STRATEGY = "strategy"


def rank_dir(root: str, rank: int) -> str:
    return join(root, f"rank_{rank}")


@dataclass(frozen=True)
class JobPaths:
    output_dir: str          # local, absolute
    work_dir: str            # local scratch: downloads, effective config, moxing shim
    log_dir: str
    ckpt_name: str
    shared_dir: str = ""     # a disk every node sees ("" = none)
    remote_save_url: str = ""

    @property
    def local_strategy(self) -> str:
        return join(self.output_dir, STRATEGY)

    @property
    def transformed(self) -> str:
        """Where the conversion writes, and what the launched command loads."""
        return join(self.shared_dir or self.output_dir, TRANSFORMED, self.ckpt_name)

    @property
    def store(self) -> str:
        """Root that every node sees: the shared disk, else remote_save_url, else (one node)
        the local output folder."""
        return self.shared_dir or self.remote_save_url or self.output_dir

    @property
    def marker_dir(self) -> str:
        return join(self.store, TRANSFORMED, self.ckpt_name)

    @property
    def store_strategy(self) -> str:
        return join(self.store, STRATEGY)

    @property
    def remote_transformed(self) -> str:
        return join(self.remote_save_url, TRANSFORMED, self.ckpt_name) if self.remote_save_url else ""

    @property
    def remote_strategy(self) -> str:
        return join(self.remote_save_url, STRATEGY) if self.remote_save_url else ""

    @property
    def effective_config(self) -> str:
        return join(self.work_dir, "effective_config.yaml")


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def clear_reason(target: str, output_dir: str, protected: list[str]) -> str | None:
    """Why `target` must not be cleared, or None when it may. It must lie inside our output
    folder (symlinks resolved), and no protected path (source checkpoint, strategies) may be it,
    lie inside it, or contain it."""
    if obs_io.is_remote(target):
        return "it is on object storage"
    t = _real(target)
    if not _within(t, _real(output_dir)) or t == _real(output_dir):
        return f"it is not inside the output folder {output_dir}"
    for p in protected:
        if p and not obs_io.is_remote(p) and overlaps(target, p):   # every part resolved
            return f"it holds or is inside the input {p}"
    return None


def clear_safely(target: str, output_dir: str, protected: list[str]) -> bool:
    """Remove an old output folder if the rules allow; say why not otherwise."""
    if not os.path.lexists(target):
        return False
    reason = clear_reason(target, output_dir, protected)
    if reason:
        log.warning("not clearing %s: %s", target, reason)
        return False
    log.info("clearing previous output %s", target)
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    else:
        os.remove(target)
    return True

