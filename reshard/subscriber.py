"""Subscriber: what a caller hears of a conversion (reshard.run), one interface instead of
callbacks threaded through the engine's calls. Every method is a no-op here; a caller subclasses
it and overrides what it needs.

The engine calls them in the parent process, one call at a time. They must not raise (hand
slow work, an upload, to another thread), except still_ours, whose error stops the run before
anything is published.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, ContextManager

if TYPE_CHECKING:
    from .finish import FinishedPlan, TransformReport
    from .plan import Plan, RankPlan


class Subscriber:
    """The events of a run, in their order (reshard.run): on_plan (the full plan, every check
    done), on_start (the finished plan), on_rank_done per destination rank as soon as its file
    is complete under its final name, finish (execution ended), still_ours before the
    manifest."""

    def on_plan(self, plan: "Plan") -> None:
        """The completed plan, before anything is written (e.g. to log which files are read
        in place and which are downloaded).

        Args:
            plan: the full plan (or the skeleton of a plan from strategies alone).
        """

    def on_start(self, finished: "FinishedPlan") -> None:
        """The finished plan (reshard.finish), about to be executed: the output is claimed.

        Args:
            finished: every decision of the run (ranks pending, downloads, budget).
        """

    def on_rank_done(self, rank: "RankPlan", uploaded: bool) -> None:
        """A destination rank's file is complete under its final name: converted now, made
        from a replica, or kept from an earlier run.

        Args:
            rank: the rank's plan (rank.path: its file, relative to the output).
            uploaded: the engine uploaded it while writing it (or it is kept on the store).
        """

    def finish(self, report: "TransformReport | None") -> None:
        """Execution ended. Wait here for work handed off (uploads).

        Args:
            report: the run's report, or None when it failed (the failure is raised after
                this).

        Raises:
            Exception: whatever the caller's handed-off work raised: it fails the run.
        """

    def still_ours(self) -> None:
        """Asked before the manifest is published.

        Raises:
            ReshardError: the output is no longer this run's (reshard.claim); nothing more is
                published.
        """

    def storage(self, location: str) -> ContextManager:
        """The context the engine's calls on object storage at `location` run in: a caller
        turns the store's errors into its own one-line errors naming its flag.

        Args:
            location: a remote source or the remote output (URL).

        Returns:
            A context manager (here: one that changes nothing).
        """
        return contextlib.nullcontext()

