"""The one exception type the entry turns into a one-line message and exit code 2.

Why one type: every layer (arguments, cluster, blocks, markers, sync) raises it with the
culprit named, and only __main__ decides how it is shown; tracebacks go to the log file only.
"""
from __future__ import annotations


class EntryError(Exception):
    """Bad input or a failed/late block. str(err) is the single line shown to the user; it names
    the culprit (flag, file, rank). Raised before anything is written where the input is bad."""


class BlockFailed(EntryError):
    """A block leader (possibly on another node) published a failure marker."""


class WaitTimeout(EntryError):
    """A bounded wait ran out (blocks, strategy files from other nodes, strategy pass)."""
