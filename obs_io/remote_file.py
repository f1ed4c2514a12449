"""mox.file.File: a file object over a local path or an object.

Reading an object uses ranged GETs from the current position, so reading a checkpoint header
costs a few hundred KB, not the whole object. Writing goes to a temporary file that is
published (uploaded, or renamed locally) only on a clean close: a failure inside `with`, or in
the close itself, leaves nothing under the final name. A local file written here is durable
once close() returned (atomic.py): this is how markers, configs and records are written.
"""
from __future__ import annotations

import io
import os
import tempfile

from . import config as _config
from .atomic import Landing
from .client import read_object
from .errors import translating
from .fs import S3
from .transfer import download_fileobj, upload_fileobj
from .urls import ObjectURL, is_remote

READ_BLOCK = 256 * 1024  # read-ahead per GET for small reads; large reads go straight through
_MODES = {"r", "rb", "w", "wb", "a", "ab"}


class _RangedReader(io.RawIOBase):
    """Raw, seekable reader of one object version; each readinto() is one ranged GET."""

    def __init__(self, url: str, size: int, etag: str | None):
        self.url, self.size, self.etag, self.pos = url, size, etag, 0
        self._u = ObjectURL.parse(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.url}: negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def _get(self, start: int, end: int) -> bytes:
        """Bytes [start, end] (inclusive); a body that breaks off is fetched again (read_object)."""
        pinned = {"IfMatch": self.etag} if self.etag else {}  # never splice two versions together
        with translating(self.url):
            body, _ = read_object(_config.current(), self._u.bucket, self._u.key,
                                  Range=f"bytes={start}-{end}", **pinned)
        return body

    def readinto(self, b) -> int:
        if self.pos >= self.size or len(b) == 0:
            return 0
        data = self._get(self.pos, min(self.pos + len(b), self.size) - 1)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        if self.pos >= self.size:
            return b""
        data = self._get(self.pos, self.size - 1)
        self.pos += len(data)
        return data


class File:
    """moxing's File(url, mode): modes r, w, a, rb, wb, ab; usable as a context manager."""

    def __init__(self, url: str, mode: str = "r", encoding: str | None = None):
        m = mode.replace("t", "")
        if m not in _MODES:
            raise ValueError(f"unsupported mode {mode!r} for {url} (use r, w, a, rb, wb or ab)")
        self.name, self.mode, self._closed = url, mode, False
        self._publish = None  # callable run on a clean close of a writer
        self._discard = None  # its counterpart when the writer fails
        binary = "b" in m
        buf = self._open_remote(url, m) if is_remote(url) else self._open_local(url, m)
        self._f = buf if binary else io.TextIOWrapper(buf, encoding=encoding or "utf-8")

    def _open_local(self, path: str, m: str):
        if m[0] != "w":
            if m[0] == "a":  # as on object storage (and Landing), writing needs no existing folder
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            return open(path, m if "b" in m else m + "b")
        landing = Landing(path, durable=True)  # what callers write this way is state: markers, configs
        buf = open(landing.temp, "wb")

        def publish() -> None:
            buf.close()  # first: a close that fails (ENOSPC) must fail before the rename
            landing.commit()

        self._publish = publish
        self._discard = landing.discard
        return buf

    def _open_remote(self, url: str, m: str):
        head = S3.head(url) if m[0] in "ra" else None   # "w" replaces whatever is there
        if m[0] == "r":
            if head is None:
                if S3.isdir(url):
                    raise IsADirectoryError(f"{url} is a folder, not an object")
                raise FileNotFoundError(f"{url}: no such object")
            return io.BufferedReader(_RangedReader(url, head["ContentLength"], head.get("ETag")),
                                     buffer_size=READ_BLOCK)
        S3.check_bucket(url)  # fail at open, not after the caller wrote gigabytes
        buf = tempfile.TemporaryFile()
        if m[0] == "a" and head is not None:
            download_fileobj(url, buf, head["ContentLength"])
            buf.seek(0, io.SEEK_END)

        def publish():
            size = buf.seek(0, io.SEEK_END)
            buf.seek(0)
            upload_fileobj(buf, url, size)

        self._publish = publish
        self._discard = lambda: None
        return buf

    # -- the file protocol, delegated -------------------------------------------------------
    def read(self, size: int = -1):
        return self._f.read(size)

    def readline(self, size: int = -1):
        return self._f.readline(size)

    def readlines(self, hint: int = -1):
        return self._f.readlines(hint)

    def write(self, data) -> int:
        return self._f.write(data)

    def writelines(self, lines) -> None:
        self._f.writelines(lines)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def readable(self) -> bool:
        return self._f.readable()

    def writable(self) -> bool:
        return self._f.writable()

    def seekable(self) -> bool:
        return self._f.seekable()

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self):
        return iter(self._f)

    def close(self) -> None:
        """Publish what was written (upload, or rename into place), then release everything."""
        self._finish(publish=True)

    def _finish(self, publish: bool) -> None:
        """Publish (if asked) and close; a writer that did not publish discards its bytes, also
        when flushing or closing is what failed."""
        if self._closed:
            return
        self._closed = True
        published = False
        try:
            if self._publish is not None and publish:
                self._f.flush()  # the text layer's buffer, into the binary one publish() writes out
                self._publish()
                published = True
        finally:
            try:
                self._f.close()
            finally:
                if self._publish is not None and not published:
                    self._discard()

    def __enter__(self) -> "File":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An exception inside `with` must not publish a half-written file.
        self._finish(publish=exc_type is None)

    def __repr__(self) -> str:
        return f"<obs_io File {self.name!r} mode={self.mode!r}{' closed' if self._closed else ''}>"
