"""What the three command-line tools (cloud-entry, transform-checkpoint, python -m obs_io) share
about errors: bad input is ONE line naming the culprit and exit code 2, never argparse's usage
dump nor a traceback.

In obs_io, the lowest package, because the other two import it; standard library only, so the
engine's worker processes that import reshard stay free of boto3.
"""
from __future__ import annotations

import argparse


def one_line(exc: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """The error as one line: its text with whitespace folded; prefixed by its type name unless
    it is one of the `expected` kinds, whose text already says what went wrong."""
    text = " ".join(str(exc).split())
    if isinstance(exc, expected):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise `error_type(message)` (set it per tool) for
    the tool's main to print as its one line, instead of printing usage and exiting."""

    error_type: type[Exception] = ValueError

    def error(self, message: str):
        raise self.error_type(message)
