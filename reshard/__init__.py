"""Streaming, memory-bounded conversion of MindSpore checkpoints between parallel layouts."""
from reshard.api import ReshardError, TransformReport, needed_source_ranks, transform, write_merged_strategy

__all__ = ["ReshardError", "TransformReport", "needed_source_ranks", "transform", "write_merged_strategy"]
