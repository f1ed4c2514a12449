"""Stop requests: ModelArts stops a job with SIGTERM to the boot process, and the container's
disk is gone afterwards.

SIGTERM and SIGHUP become an exception (Terminated) in the main thread, so that `finally`
blocks and context managers run as for any error: obs_io stops its worker processes and
removes its temporary files, the engine's pool shuts down, logs are uploaded. A process that
just vanished would leave all of that undone.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """A stop request. A BaseException, like KeyboardInterrupt, so that `except Exception`
    handlers (which turn failures into markers or retries) let it through.

    exit_code: what the entry exits with, 128+signum as shells report a signal, or the
    launched command's own code when it was running (launch.run_command)."""

    def __init__(self, signum: int, exit_code: int | None = None):
        self.signum = signum
        self.exit_code = 128 + signum if exit_code is None else exit_code
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum: int, frame: object) -> None:
    # The engine's conversion workers (multiprocessing spawn) get the signal too: ModelArts
    # signals only us, and the pool's shutdown on the way out would wait for their ranks.
    for child in multiprocessing.active_children():
        child.terminate()
    raise Terminated(signum)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise Terminated; the previous handlers come back on
    leaving. A signal set to be ignored (nohup's SIGHUP) stays ignored. Handlers belong to the
    main thread only: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():   # None: set outside Python, unknown to us
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
