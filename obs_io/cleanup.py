"""Cleanup owned by a context manager, instead of a handler catching BaseException, undoing a
step and raising again, written out at each place that must undo a step whatever stops it: an
error, a Ctrl-C (KeyboardInterrupt) or a stop request raised as an exception (SystemExit, the
entry's Terminated). A `with` block's __exit__ sees all of them, so the undo is stated once,
where the step begins. Standard library only: the conversion engine's worker processes import it.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, Callable


class on_failure:
    """`with on_failure(undo, *args, **kwargs):` calls undo(*args, **kwargs) when the block
    raises anything, then lets the exception go on; a clean exit calls nothing.

    What undo raises replaces the block's exception, with that one as its __context__ (as an
    `except` clause's would). For an undo that depends on how far the block got, pass a
    callable that reads that state when it is called (a lambda or a bound method).

    Args:
        undo: what to call on failure.
        *args, **kwargs: its arguments.
    """

    def __init__(self, undo: Callable[..., Any], /, *args: Any, **kwargs: Any):
        self.undo, self.args, self.kwargs = undo, args, kwargs

    def __enter__(self) -> "on_failure":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is not None:
            self.undo(*self.args, **self.kwargs)
        return False
