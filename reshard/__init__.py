"""Streaming, memory-bounded conversion of MindSpore checkpoints between parallel layouts."""
# reshard.api.execute (run a full plan) is not re-exported here: `reshard.execute` is the
# executor module. Use `from reshard.api import execute`.
from reshard.api import (ReshardError, TransformReport, complete_plan, find_sources, load_strategy,
                         make_plan, needed_source_ranks, plan_from_strategies, transform,
                         write_merged_strategy)
from reshard.plan import Plan, RankPlan, TensorPlan
from reshard.sources import (SourceEntry, SourceSet, check_output, classify, output_name,
                             overlaps, strategy_files)
from reshard.strategy import Strategy

__all__ = ["ReshardError", "TransformReport", "needed_source_ranks", "transform",
           "write_merged_strategy", "load_strategy", "make_plan", "find_sources",
           "plan_from_strategies", "complete_plan", "Plan", "RankPlan", "TensorPlan",
           "Strategy", "SourceEntry", "SourceSet", "classify", "output_name", "overlaps",
           "check_output", "strategy_files"]
