"""Progress of a batch transfer: a tqdm bar on a terminal, periodic log lines in a job log."""
from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

log = logging.getLogger("obs_io")
BAR_LABEL = 40   # characters of the description shown before a terminal's bar


class Progress:
    """Thread-safe byte/file counter. Called from s3transfer's worker threads."""

    def __init__(self, desc: str, total_bytes: int, total_files: int, enabled: bool = True,
                 log_every: float = 10.0):
        self.desc, self.total_bytes, self.total_files = desc, total_bytes, total_files
        self.bytes = self.files = 0
        self._lock = threading.Lock()
        self._start = self._last_log = time.monotonic()
        self._log_every = log_every
        self._enabled = enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            # the bar's label is the description's end (the destination): full paths would
            # leave no room for the bar on the line
            label = desc if len(desc) <= BAR_LABEL else "…" + desc[-(BAR_LABEL - 1):]
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=label, dynamic_ncols=True, leave=False)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            if self._bar is not None:
                self._bar.update(n)
            else:
                self._maybe_log()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)
            else:
                self._maybe_log()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (f"{self.desc}: {self.files}/{self.total_files} files, "
                f"{self.bytes / 2**20:.1f}/{self.total_bytes / 2**20:.1f} MiB, "
                f"{self.bytes / 2**20 / elapsed:.1f} MiB/s")

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if self._enabled and now - self._last_log >= self._log_every:
            self._last_log = now
            log.info(self._line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Closed: done on a clean exit; on a failure no totals line (the error is the one line
        to read, not a "done" line)."""
        self.close(done=exc_type is None)
        return False

    def close(self, done: bool = True) -> None:
        """End the bar; log the totals only for a batch that completed (done)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            if self._enabled and done:
                log.info("%s (done in %.1fs)", self._line(), time.monotonic() - self._start)
