"""Public entry points of the engine (the contract cloud_entry and the CLI code against).

CONTRACT STUB written before the implementation; the engine replaces the bodies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


class ReshardError(ValueError):
    """Bad input. str(err) is the one line shown to the user; it names the culprit
    (file, rank, parameter or flag). Raised before anything is written."""


@dataclass
class TransformReport:
    ranks_written: list[int] = field(default_factory=list)
    ranks_skipped: list[int] = field(default_factory=list)   # already complete and verified
    expected_peak_bytes: int = 0
    seconds: float = 0.0


def needed_source_ranks(src_strategy: str | None, dst_strategy: str | None,
                        dst_ranks: Iterable[int] | None = None) -> list[int]:
    """Sorted source ranks whose shards the given destination ranks read (all when None).
    Strategies only, no checkpoint bytes. A complete source (src_strategy None) -> [0]."""
    raise NotImplementedError


def write_merged_strategy(strategy: str, out_file: str) -> None:
    """Merge a strategy folder / per-stage files into one file (MindSpore's merged format),
    written to a temporary name then renamed. Never writes into the source folder."""
    raise NotImplementedError


def transform(src_checkpoint: str, dst_checkpoint: str, *, src_strategy: str | None = None,
              dst_strategy: str | None = None, prefix: str = "checkpoint_", fmt: str = "ckpt",
              process_num: int = 1, max_memory: int | None = None,
              dst_ranks: Iterable[int] | None = None, dry_run: bool = False,
              log_dir: str | None = None) -> TransformReport:
    """Convert local checkpoints; writes <dst_checkpoint>/rank_<r>/<prefix><r>.<fmt>."""
    raise NotImplementedError
