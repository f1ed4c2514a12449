"""A source file read while it is still being downloaded (reshard.fetch): the FileBytes of a
local file that grows in file order.

The parent's fetcher writes the object's bytes in order into a temporary file beside the final
name and renames it when the whole object is there and checked; a converting worker opens the
temporary file (or the final one, if the download is over) and a read waits until the file
holds the bytes it asks for. On Linux a write() to a regular file raises the file's size only
after the bytes before the new size are in the page cache, so a reader that sees the size see
the bytes. A read that would wait on a download that stopped (its temporary file removed, no
final file: the fetcher failed or was cancelled) fails at once; one that sees no growth for
ReshardConfig.download_stall_seconds fails too, so no wait is unbounded. Runs of bytes read before the download
(`preload`: the small values every rank carries, at the end of the file) are served from
memory, without waiting for the end.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from reshard.formats.meta import FormatError
from reshard.formats.regions import LocalBytes

from reshard.config import DEFAULT, ReshardConfig


@dataclass(frozen=True)
class Growing:
    """How a worker opens a file still downloading: where it grows, and the runs of it already
    read ((offset, length, bytes), fetch.preload_runs)."""
    temp: str
    preload: tuple = ()


class GrowingBytes(LocalBytes):
    """`final`: the path the file has once downloaded; `growing`: where it grows until then
    and the runs already read (Growing); `size`: its size when complete (from the headers the
    plan read); `config`: the run's ReshardConfig (how regions are read, and how a read waits:
    download_poll_seconds, download_stall_seconds). Raises FormatError naming `final` when
    the download stopped."""

    def __init__(self, final: str, growing: Growing, size: int, config: ReshardConfig = DEFAULT):
        self.final, self.temp, self.preload = final, growing.temp, tuple(growing.preload)
        temp = growing.temp
        # The temporary name first: the fetcher renames it to the final one (atomically), so
        # when it is gone the final name is there, unless the download stopped. Looking at the
        # final name first could miss both (renamed between the two looks).
        try:
            super().__init__(temp, config)
        except FormatError:
            try:
                super().__init__(final, config)
            except FormatError:
                raise FormatError(f"{final}: its download stopped before this read") from None
        self.location = final
        self.size = size
        self._have = self._look()
        self.readv = self._readv   # LocalBytes binds os.preadv per instance: wait first

    def _readv(self, buffers: list, offset: int) -> int:
        need = min(self.size, offset + sum(len(b) for b in buffers))
        if need > self._have:
            data = self._preloaded(offset, need)
            if data is not None:
                at = 0
                for b in buffers:
                    n = len(b)
                    b[:n] = data[at:at + n]
                    at += n
                return at
            self._wait(need)
        return os.preadv(self.fd, buffers, offset)

    def read_at(self, offset: int, n: int) -> bytes:
        need = min(self.size, offset + n)
        if need > self._have:
            data = self._preloaded(offset, need)
            if data is not None:
                return bytes(data)
            self._wait(need)
        return os.pread(self.fd, n, offset)

    def _preloaded(self, offset: int, end: int) -> memoryview | None:
        for a, n, data in self.preload:
            if a <= offset and end <= a + n:
                return memoryview(data)[offset - a:end - a]
        return None

    def _look(self) -> int:
        """The bytes the file holds now (through our descriptor: the same file whether it is
        still under its temporary name, renamed or already removed)."""
        return os.fstat(self.fd).st_size

    def _wait(self, need: int) -> None:
        """Until the file holds `need` bytes. The names are looked at before the size: a rename
        (the download complete) or a removal seen there happened before the size is read, so
        the size read after it is the whole file's; the other order could take a file
        committed between the two looks for a short one (seen under load: "0 bytes, not the
        121611 its headers were read from" for a download that had just completed)."""
        last, since = self._have, time.monotonic()
        while True:
            renamed = os.path.exists(self.final)
            stopped = not renamed and not os.path.exists(self.temp)
            self._have = self._look()
            if self._have >= need:
                return
            if self._have != last:
                last, since = self._have, time.monotonic()
            elif stopped:
                raise FormatError(f"{self.final}: its download stopped at byte {self._have} of "
                                  f"{self.size}")
            elif renamed:
                # renamed, so complete: a shorter file is not the object the plan read
                raise FormatError(f"{self.final}: {self._have} bytes, not the {self.size} its "
                                  "headers were read from")
            elif time.monotonic() - since > self.config.download_stall_seconds:
                raise FormatError(f"{self.final}: its download made no progress for "
                                  f"{self.config.download_stall_seconds:.0f}s (at byte {self._have} "
                                  f"of {self.size})")
            time.sleep(self.config.download_poll_seconds)
