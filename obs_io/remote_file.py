"""mox.file.File: a file object over a local path or an object, in moxing's modes.

Reading an object ('r', 'rb') uses ranged GETs from the current position, so reading a
checkpoint header costs a few hundred KB, not the whole object. Writing goes to a temporary file
that is published (uploaded, or renamed locally) only on a clean close: a failure inside `with`,
or in the close itself, leaves nothing under the final name. A local file written with 'w' is
durable once close() returned (atomic.py): this is how markers, configs and records are written.

Object storage cannot change part of an object, so the modes that do ('a', 'r+', 'a+') hold the
object's bytes in a local temporary file and upload the whole of it on close ('r+' only if
something was written). 'x' (create, but never replace) has no counterpart in an object store
without conditional writes: it is refused for URLs and is open()'s for local paths.
"""
from __future__ import annotations

import fcntl
import io
import os
import tempfile
from dataclasses import dataclass

from .atomic import Landing
from .errors import ObjectNotFound
from .fs import backend
from .urls import is_remote

READ_BLOCK = 256 * 1024  # read-ahead per GET for small reads; large reads go straight through


@dataclass(frozen=True)
class Mode:
    """A mode string as open() and moxing spell it, in any letter order ('rb', 'br', 'bw+',
    'rb+'): its kind (r, w, a or x), binary or text, and whether it also reads/writes ('+')."""

    kind: str
    binary: bool
    plus: bool

    @classmethod
    def parse(cls, mode: str, name: str) -> "Mode":
        kinds = [c for c in mode if c in "rwax"] if isinstance(mode, str) else []
        if (len(kinds) != 1 or set(mode) - set("rwaxbt+")
                or any(mode.count(c) > 1 for c in mode) or ("b" in mode and "t" in mode)):
            raise ValueError(f"unsupported mode {mode!r} for {name}: use r, w or a, with b for "
                             f"binary and + to read and write (r, rb, br, w, wb, a, ab, r+, rb+, w+, a+, ...)")
        return cls(kinds[0], "b" in mode, "+" in mode)

    @property
    def reads(self) -> bool:
        return self.kind == "r" or self.plus

    @property
    def writes(self) -> bool:
        return self.kind != "r" or self.plus

    def binary_mode(self) -> str:
        """The same mode for open() on the binary layer: 'rb', 'ab+', ..."""
        return f"{self.kind}b{'+' if self.plus else ''}"


class _RangedReader(io.RawIOBase):
    """Raw, seekable reader of one object version; each readinto() is one ranged GET."""

    def __init__(self, url: str, size: int, etag: str | None):
        self.url, self.size, self.etag, self.pos = url, size, etag, 0
        self._store = backend(url)

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
        """Bytes [start, end] (inclusive) of the version opened: never two versions spliced."""
        return self._store.read_range(self.url, start, end - start + 1, self.etag)

    def readinto(self, b) -> int:
        if self.pos >= self.size or len(b) == 0:
            return 0
        data = self._get(self.pos, min(self.pos + len(b), self.size) - 1)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the object in one ranged GET. Called by io itself (read() / read(-1) here
        and on the BufferedReader over it): io.RawIOBase's default would issue one GET per
        io.DEFAULT_BUFFER_SIZE chunk (8 KiB on Python 3.11)."""
        if self.pos >= self.size:
            return b""
        data = self._get(self.pos, self.size - 1)
        self.pos += len(data)
        return data


class File:
    """moxing's File(name, mode): modes r, w, a with b (binary) and + (read and write), in
    moxing's spellings ('br', 'bw+', 'rb+', ...); a context manager; read(), write(), seek(),
    size() and the rest of a file object's methods.

    buffering, encoding, errors, newline: as open() takes them (shift('os', 'mox') makes
    open() of a URL land here); buffering is accepted and has no effect, obs_io sizes its own
    buffers. client_id: moxing's choice among several OBS clients; obs_io has one configuration
    (set_auth), so it is accepted and has no effect.

    A writer publishes on a clean close only: nothing partial is ever under `name`.

    Args:
        name: a local path or URL.
        mode: r, w, a with b and +, in moxing's spellings.
        buffering: accepted, no effect.
        encoding: text modes' encoding (UTF-8 by default).
        errors: text modes' error handling, as open()'s.
        newline: text modes' newline handling, as open()'s.
        client_id: accepted, no effect.

    Raises:
        ValueError: an unknown mode, or a malformed URL.
        FileNotFoundError: reading what is not there.
        OSError: the store's or the disk's one-line error (obs_io.errors).
    """

    def __init__(self, name: str, mode: str = "r", buffering: int = -1, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None, client_id=None):
        m = Mode.parse(mode, name)
        self.name, self.mode, self._closed = name, mode, False
        self._publish = None  # callable run on a clean close of a writer
        self._discard = None  # its counterpart when the writer fails
        self._reader: _RangedReader | None = None
        self._dirty = False   # r+: upload only what was changed
        buf = self._open_remote(name, m) if is_remote(name) else self._open_local(name, m)
        self._buf = buf
        self._f = buf if m.binary else io.TextIOWrapper(buf, encoding=encoding or "utf-8",
                                                          errors=errors, newline=newline)

    def _open_local(self, path: str, m: Mode):
        if m.kind != "w":
            if m.kind == "a":  # as on object storage (and Landing), writing needs no existing folder
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            return open(path, m.binary_mode())
        landing = Landing(path, durable=True)  # what callers write this way is state: markers, configs
        buf = open(landing.temp, m.binary_mode())

        def publish() -> None:
            buf.close()  # first: a close that fails (ENOSPC) must fail before the rename
            landing.commit()

        self._publish = publish
        self._discard = landing.discard
        return buf

    def _open_remote(self, url: str, m: Mode):
        if m.kind == "x":
            raise ValueError(f"mode {self.mode!r} (create only if absent) is not possible for {url}: "
                             f"object storage has no exclusive create; use 'w'")
        store = backend(url)
        head = store.head(url) if m.kind in "ra" else None   # "w" replaces whatever is there
        if m.kind == "r" and head is None:
            if store.isdir(url):
                raise IsADirectoryError(f"{url} is a folder, not an object")
            raise ObjectNotFound(f"{url}: no such object")
        if m.kind == "r" and not m.plus:
            self._reader = _RangedReader(url, head.size, head.etag)
            return io.BufferedReader(self._reader, buffer_size=READ_BLOCK)
        store.check_bucket(url)  # fail at open, not after the caller wrote gigabytes
        buf = tempfile.TemporaryFile("w+b")
        if head is not None:   # r+, a, a+: the object's bytes, to change or to append to
            store.download_fileobj(url, buf, head.size)
            buf.seek(0, io.SEEK_END if m.kind == "a" else io.SEEK_SET)
        if m.kind == "a":      # every write at the end, wherever the position is (as open's "a")
            flags = fcntl.fcntl(buf.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(buf.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)

        def publish():
            if m.kind == "r" and not self._dirty:
                return
            size = buf.seek(0, io.SEEK_END)
            buf.seek(0)
            store.upload_fileobj(buf, url, size)

        self._publish = publish
        self._discard = lambda: None
        return buf

    # -- the file protocol, delegated -------------------------------------------------------
    def read(self, size: int = -1):
        return self._f.read(size)

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def readline(self, size: int = -1):
        return self._f.readline(size)

    def readlines(self, hint: int = -1):
        return self._f.readlines(hint)

    def write(self, data) -> int:
        self._dirty = True
        return self._f.write(data)

    def writelines(self, lines) -> None:
        self._dirty = True
        self._f.writelines(lines)

    def truncate(self, size: int | None = None) -> int:
        self._dirty = True
        return self._f.truncate(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        """Flush the buffers to the local file. An object is uploaded on close only: OBS has no
        partial writes, and a flush that uploaded would publish a half-written object."""
        self._f.flush()

    def size(self) -> int:
        """Bytes in the file now: the object's size when reading, what it holds so far when
        writing (moxing's File.size())."""
        if self._reader is not None:
            return self._reader.size
        self._f.flush()
        return os.fstat(self._buf.fileno()).st_size

    def readable(self) -> bool:
        return self._f.readable()

    def writable(self) -> bool:
        return self._f.writable()

    def seekable(self) -> bool:
        return self._f.seekable()

    def isatty(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._f)

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
