"""Which failed requests are tried again, when, and for how long: the one place (client.py
installs it on every client, in place of botocore's own retry handler).

Two kinds of failure, two budgets:

- throttling (503, 429, SlowDown and the other throttling codes): the store answers, and asks
  for fewer requests. Retried with exponential back-off (full jitter, from 1 s up to 20 s; a
  Retry-After the store gives is honoured) for as long as the operation's bound allows: its own
  (a wait for other nodes' markers: the rest of that wait, `bounded`), else the stall deadline
  below. Throttled tries do not count against S3_MAX_ATTEMPTS, and each burst is counted in
  the log when it ends.
- errors (500, 502, 504, RequestTimeout, dropped, refused and timed-out connections): at most
  S3_MAX_ATTEMPTS tries per request, with botocore's back-off (50 ms scale), within the stall
  deadline too.

The stall deadline is one per command (per process): S3_STALL_DEADLINE seconds (default 120).
A failing request is tried again until S3_STALL_DEADLINE after its own first failure, or after
the first failure since the store last answered any request well, whichever comes first; once a
request has been given up, every later one gets its one try only, until the store answers well
again. So a command against a store that stopped answering (wholly, or for the requests it
needs) ends about then (plus the try in flight and one try to tell the other nodes), however
many requests it still had to make. A failure after a quiet spell longer than one try starts a
new count: a store that recovered and failed again is a new stall.
"""
from __future__ import annotations

import contextlib
import logging
import random
import threading
import time

from botocore.retries import special
from botocore.retries.standard import (ModeledRetryableChecker, RetryEventAdapter, ThrottledRetryableChecker,
                                       ThrottlingStatusCodeChecker, TransientRetryableChecker)

from . import config as _config

log = logging.getLogger("obs_io.retry")

THROTTLE_BASE, THROTTLE_MAX = 1.0, 20.0    # seconds: back-off of throttled tries
ERROR_BASE, ERROR_MAX = 0.05, 20.0         # seconds: back-off of failed tries (botocore's scales)
_THROTTLE_STATUS = (429, 503)

_adapter = RetryEventAdapter()
_throttled = ThrottledRetryableChecker()
_throttled_status = ThrottlingStatusCodeChecker()
_transient = TransientRetryableChecker()
_modeled = ModeledRetryableChecker()
_special = (special.RetryIDPCommunicationError(), special.RetryDDBChecksumError())


class _Health:
    """What this process knows of the store: since when requests keep failing (monotonic; None
    when the last one went well), and the throttled tries of the current burst."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing_since: float | None = None
        self.last_failure = 0.0
        self.given_up = False         # a request was given up since the last good answer
        self.throttled = 0            # this burst
        self.throttled_total = 0      # this process
        self.burst_start = 0.0
        self.backoff = 0.0

    def ok(self) -> None:
        with self.lock:
            burst, seconds, backoff = self.throttled, time.monotonic() - self.burst_start, self.backoff
            self.failing_since, self.throttled, self.backoff, self.given_up = None, 0, 0.0, False
        if burst:
            log.info("object storage throttled %d request(s) over %.1fs; each was retried (%.1fs of back-off "
                     "in all, %d throttled in this process)", burst, seconds, backoff, self.throttled_total)

    def failed(self, cfg: _config.S3Config) -> float:
        """A failed try; returns since when the store has been failing (monotonic)."""
        now = time.monotonic()
        with self.lock:
            quiet = cfg.connect_timeout + cfg.read_timeout + ERROR_MAX + 5
            if self.failing_since is None or now - self.last_failure > quiet:
                self.failing_since, self.given_up = now, False   # a new stall, not the rest of an old one
            self.last_failure = now
            return self.failing_since

    def throttle(self, delay: float, bound: float) -> None:
        with self.lock:
            first = self.throttled == 0
            if first:
                self.burst_start = time.monotonic()
            self.throttled += 1
            self.throttled_total += 1
            self.backoff += delay
        if first:
            log.warning("object storage at %s is throttling requests (503/429): backing off and retrying for up "
                        "to %.0fs", _config.strip_userinfo(_config.current().endpoint or "the default endpoint"),
                        bound)


_health = _Health()
_local = threading.local()


@contextlib.contextmanager
def bounded(seconds: float):
    """Requests made inside (in this thread) are retried while throttled for up to `seconds`
    from now, the operation's own bound (a wait for markers: the time left of the wait), rather
    than to the stall deadline. Failures still count against the stall deadline."""
    previous = getattr(_local, "until", None)
    _local.until = time.monotonic() + max(0.0, seconds)
    try:
        yield
    finally:
        _local.until = previous


def reset() -> None:
    """Forget what this process saw of the store (tests start each case afresh)."""
    global _health
    _health = _Health()


def stalled() -> bool:
    """A request of this process was given up and the store has answered nothing well since:
    what the command still does there (tell the other nodes, upload its logs) gets one try."""
    return _health.given_up


def throttled_total() -> int:
    """Throttled tries retried in this process so far."""
    return _health.throttled_total


def _is_throttled(ctx) -> bool:
    if ctx.http_response is not None and ctx.http_response.status_code in _THROTTLE_STATUS:
        return True
    return _throttled.is_retryable(ctx) or _throttled_status.is_retryable(ctx)


def _is_error(ctx) -> bool:
    return _transient.is_retryable(ctx) or _modeled.is_retryable(ctx) or \
        any(c.is_retryable(ctx) for c in _special)


def _retry_after(ctx) -> float | None:
    if ctx.http_response is None:
        return None
    headers = ctx.http_response.headers
    for name, scale in (("x-amz-retry-after", 1e-3), ("Retry-After", 1.0)):
        try:
            value = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if 0 <= value:
            return min(value, THROTTLE_MAX)
    return None


def _gave_up(ctx, reason: str) -> None:
    """No further try: later requests get one try each until the store answers well again; and
    say why, where the error raised next can carry it: the parsed answer (a ClientError's
    response) or the exception botocore raises."""
    _health.given_up = True
    if ctx.parsed_response is not None:
        ctx.parsed_response.setdefault("ResponseMetadata", {})["ObsIoGaveUp"] = reason
    if ctx.caught_exception is not None:
        ctx.caught_exception.obs_io_gave_up = reason


def needs_retry(**kwargs) -> float | None:
    """botocore's needs-retry event: None (no further try) or the seconds to wait first."""
    ctx = _adapter.create_retry_context(**kwargs)
    throttled = _is_throttled(ctx)
    if not throttled and not _is_error(ctx):
        if ctx.http_response is not None:   # answered (a 404 or a 403 is an answer too)
            _health.ok()
        return None
    cfg = _config.current()
    now = time.monotonic()
    state = ctx.request_context.setdefault("obs_io_retry", {"errors": 0, "throttles": 0, "since": now})
    since = min(state["since"], _health.failed(cfg))
    if _health.given_up and state["errors"] + state["throttles"] == 0:
        _gave_up(ctx, f"failing for {now - since:.0f}s, an earlier request given up: one try each until "
                      "the store answers")
        return None
    stall_end = since + cfg.stall_deadline
    own = getattr(_local, "until", None)
    if throttled:
        state["throttles"] += 1
        end = own if own is not None else stall_end
        delay = random.random() * min(THROTTLE_MAX, THROTTLE_BASE * 2 ** (state["throttles"] - 1))
        delay = min(max(delay, _retry_after(ctx) or 0.0), end - now)   # the last try at the bound
        if delay <= 0:
            _gave_up(ctx, f"throttled {state['throttles']} time(s), for {now - since:.0f}s: "
                          + ("the operation's bound ended the retries" if own is not None else
                             f"S3_STALL_DEADLINE={cfg.stall_deadline:g}s ended the retries"))
            return None
        _health.throttle(delay, end - now)
        return delay
    state["errors"] += 1
    if state["errors"] >= cfg.max_attempts:
        _gave_up(ctx, f"{state['errors']} attempt(s)")
        return None
    end = min(stall_end, own) if own is not None else stall_end
    delay = min(random.random() * min(ERROR_MAX, ERROR_BASE * 2 ** (state["errors"] - 1)), end - now)
    if delay <= 0:
        _gave_up(ctx, f"failing for {now - since:.0f}s: S3_STALL_DEADLINE={cfg.stall_deadline:g}s ended the retries")
        return None
    return delay


def body_failed() -> bool:
    """A body broke off after its answer began (client.read_object fetches it again): counted
    against the stall deadline; False when the deadline has passed (no further try)."""
    cfg = _config.current()
    since = _health.failed(cfg)
    return time.monotonic() - since < cfg.stall_deadline


def install(client) -> None:
    """This module's handler in place of botocore's own (standard mode's) on `client`."""
    events = client.meta.events
    events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    events.register("needs-retry.s3", needs_retry, unique_id="obs-io-retry")
