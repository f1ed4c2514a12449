"""Streaming, memory-bounded conversion of MindSpore checkpoints between parallel layouts.

Importing the package is cheap: the names below load their module on first use (PEP 562), so
a console script can catch a Ctrl-C while numpy and the engine are still being imported.
The one orchestrator both tools call is reshard.run.run(request, config, subscriber) (the
module's docstring gives the call order; run(request, config, plan=plan) executes a full plan
a caller made already); Request, ReshardConfig and Subscriber are re-exported here
(`reshard.execute` is the executor module).
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing: console scripts start here
if TYPE_CHECKING:
    from typing import Any

_EXPORTS = {
    "reshard.api": ("ReshardError", "TransformReport", "complete_plan", "find_sources", "load_strategy",
                    "make_plan", "needed_source_ranks", "plan_from_strategies", "transform",
                    "write_merged_strategy"),
    "reshard.config": ("ReshardConfig",),
    "reshard.run": ("Request", "SetRecord", "Stage", "file_version", "inputs_id"),
    "reshard.subscriber": ("Subscriber",),
    "reshard.plan": ("Plan", "PlanPolicy", "RankPlan", "TensorPlan"),
    "reshard.sources": ("SourceEntry", "SourceSet", "check_output", "classify", "output_name", "overlaps",
                        "strategy_files"),
    "reshard.steps": ("Step", "parse_step"),
    "reshard.strategy": ("Strategy",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
