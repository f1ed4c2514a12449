"""Bounded polling with back-off: the only way the entry waits for other processes or nodes.

Why back-off: object-store listings cost requests; early checks are cheap to repeat, later
ones are spaced out up to `max_interval` so a long conversion costs few requests.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from cloud_entry.errors import WaitTimeout
from obs_io.retry import bounded

T = TypeVar("T")
log = logging.getLogger(__name__)
REPORT_EVERY = 30.0   # seconds between "still waiting" lines


@dataclass(frozen=True)
class Backoff:
    first: float = 0.2
    factor: float = 1.5
    max_interval: float = 10.0


def poll(check: Callable[[], T | None], timeout: float, what: str, backoff: Backoff = Backoff(),
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic,
         status: Callable[[], str] | None = None, report_every: float = REPORT_EVERY) -> T:
    """Call `check` until it returns something other than None; WaitTimeout after `timeout` s.
    `check` may raise to end the wait early (a failure marker). Its requests to object storage,
    when throttled, are retried for the rest of the wait (obs_io.retry.bounded), not failed. At least every `report_every`
    seconds the wait logs what it still waits for (`status()`, e.g. which blocks are missing):
    a wait that says nothing for an hour looks like a hang."""
    start = reported = clock()
    deadline = start + timeout
    interval = backoff.first
    while True:
        with bounded(deadline - clock()):   # a throttling store is retried for the rest of the wait
            result = check()
        if result is not None:
            return result
        now = clock()
        if now - reported >= report_every:
            reported = now
            detail = status() if status else ""
            log.info("still waiting after %.0fs (of %gs) for %s%s", now - start, timeout, what,
                     f": {detail}" if detail else "")
        left = deadline - now
        if left <= 0:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        sleep(min(interval, left))
        interval = min(interval * backoff.factor, backoff.max_interval)
