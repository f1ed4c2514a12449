"""What the three command-line tools (cloud-entry, transform-checkpoint, python -m obs_io) share
about errors: bad input is ONE line naming the culprit and exit code 2, never argparse's usage
dump nor a traceback.

In obs_io, the lowest package, because the other two import it; standard library only, so the
engine's worker processes that import reshard stay free of boto3.
"""
from __future__ import annotations

import argparse

from obs_io.redact import scrub
from obs_io.typos import closest


def one_line(exc: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """The error as one line: its text with whitespace folded and secrets masked (a URL's user
    info, a secret argument or query parameter quoted in it: redact.scrub); prefixed by its type
    name unless it is one of the `expected` kinds, whose text already says what went wrong."""
    text = scrub(" ".join(str(exc).split()))
    if isinstance(exc, expected):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise `error_type(message)` (set it per tool) for
    the tool's main to print as its one line, instead of printing usage and exiting. An
    unrecognized flag that is probably a typo of one of the parser's (obs_io.typos.closest)
    says which: `unknown argument --src_stratgy: did you mean --src_strategy?`."""

    error_type: type[Exception] = ValueError
    _UNRECOGNIZED = "unrecognized arguments: "

    def error(self, message: str):
        if message.startswith(self._UNRECOGNIZED):
            for token in message[len(self._UNRECOGNIZED):].split():
                name = token.split("=", 1)[0]
                if not name.startswith("--"):
                    continue
                known = closest(name[2:], [o[2:] for o in self._option_string_actions if o.startswith("--")])
                if known:
                    message = f"unknown argument {name}: did you mean --{known}?"
                    break
        raise self.error_type(message)
