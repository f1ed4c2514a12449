"""MindFormers "Checkpoint 2.0" (MindFormers 1.7-2.1: iteration folders with metadata.json,
common.json and model/opt safetensors shards): reading it into the engine's terms (folder),
writing it for a destination layout (write), and conversions through the engine (convert)."""
from __future__ import annotations

from .folder import (COMMON, METADATA, TRACKER, Checkpoint2, is_checkpoint2, iteration_dir,
                     read_checkpoint2, shard_name)
from .write import COMMON_FIELDS, DEFAULT_RELEASE, RELEASES, write_checkpoint2

__all__ = ["COMMON", "METADATA", "TRACKER", "Checkpoint2", "is_checkpoint2", "iteration_dir",
           "read_checkpoint2", "shard_name", "COMMON_FIELDS", "DEFAULT_RELEASE", "RELEASES",
           "write_checkpoint2"]
