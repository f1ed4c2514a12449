"""One object-store interface: a handful of primitives per store, everything else derived from
them (the fsspec idea, AbstractFileSystem). obs_io.registry says which store serves a URL.

The primitives a store implements (URLs are `scheme://bucket/key`, ObjectURL's shape):

    list(url, recursive=False) -> list[DirEntry]    children (or all descendants) of a folder,
                                                   names relative to url, with size, mtime, ETag
    head(url, cfg=None) -> ObjectInfo | None       one object's size, ETag (its version), mtime,
                                                   user metadata; None when no object has the key
    read_range(url, offset, length, etag=None, cfg=None) -> bytes
                                                   bytes [offset, offset + length) of the version
                                                   `etag` (ObjectChanged when it was replaced)
    open_writer(url, size_hint=0, metadata=None, cfg=None) -> ObjectWriter
                                                   a streaming write: write()* then commit()
                                                   (the object appears whole) or abort()
                                                   (nothing is left: no object, no parts)
    delete(url)                                    remove one object (none there: no error)

Optional, with defaults here: isdir, makedirs (a `folder/` marker object, as moxing writes),
check_bucket (fail before a writer is opened, not after gigabytes), abort_uploads (what killed
writers left: 0 for a store whose writers leave nothing), copy (server-side; only where
`server_side_copy` is True), and the bulk operations (transfer, upload_fileobj,
download_fileobj, growing_upload), built on the primitives in obs_io.streams; the S3 store
overrides those with s3transfer (multipart, retries, abort of a failed upload).

Call order: a reader calls head() once, then read_range() pinned to the ETag head() gave, any
number of times, in any order, from any thread. A writer: check_bucket(), open_writer(),
write() in order, then exactly one of commit() or abort() (abort() after a failed commit too).
A copy plan: list(recursive=True), then per file a read and a write as above (or copy()).
Errors: FileNotFoundError (obs_io.errors.ObjectNotFound), PermissionError (AccessDenied),
ObjectChanged, other OSErrors; every one is a line naming the URL. `cfg`: obs_io's S3Config
to use (a worker's parent's); a store that needs no configuration ignores it.

A new store passes tests/store_contract.py (a base class of tests to inherit).
"""
from __future__ import annotations

import abc
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from .entries import DirEntry, StatResult
from .errors import ObjectNotFound
from .urls import ObjectURL, join


@dataclass(frozen=True)
class ObjectInfo:
    """What head() says of one object: size in bytes, ETag (the version reads are pinned to;
    None where the store has none), modification time in ns since the epoch (0: unknown), and
    the user metadata an upload set (obs_io's upload token among it)."""
    size: int
    etag: str | None = None
    mtime_ns: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectWriter(abc.ABC):
    """A streaming write of one object. Nothing is under the key before commit() returned.

    As a context manager it owns its cleanup: the block writes and commits, and when the block
    raises anything (a failed write or commit, a Ctrl-C, a stop request) the writer is aborted,
    so no partial object or orphan multipart upload stays behind.
    """

    def __enter__(self) -> "ObjectWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        return False

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append `data` (may block while earlier bytes are sent: memory stays bounded)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Publish what was written as the object; raises if it could not be."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written, leaving nothing behind; safe to call twice, and after a
        commit() that raised."""


class ObjectStore(abc.ABC):
    """A store of objects under `scheme://bucket/key` URLs; see the module docstring."""

    server_side_copy = False   # copy() is the store's own (no bytes through this machine)

    # -- the primitives ----------------------------------------------------------------------
    @abc.abstractmethod
    def list(self, url: str, recursive: bool = False) -> list[DirEntry]:
        """The children of folder `url` (recursive: every file and folder below it), names
        relative to url, sorted. FileNotFoundError for a missing folder, NotADirectoryError
        for an object."""

    @abc.abstractmethod
    def head(self, url: str, cfg=None) -> ObjectInfo | None:
        """The object at `url`, or None when there is none (a missing bucket raises)."""

    @abc.abstractmethod
    def read_range(self, url: str, offset: int, length: int, etag: str | None = None,
                   cfg=None) -> bytes:
        """Bytes [offset, offset + length) of the object (fewer only at its end), of version
        `etag` when given: ObjectChanged when the object is no longer that version."""

    @abc.abstractmethod
    def open_writer(self, url: str, size_hint: int = 0, metadata: Mapping[str, str] | None = None,
                    cfg=None) -> ObjectWriter:
        """A writer of the object `url` (size_hint: about how big it gets, bytes; metadata:
        user metadata the object carries, head() returns it)."""

    @abc.abstractmethod
    def delete(self, url: str) -> None:
        """Remove the object `url`; a key without an object is no error (S3's DeleteObject)."""

    # -- optional, with defaults ---------------------------------------------------------------
    def isdir(self, url: str) -> bool:
        """True for a bucket root or a folder with something below it."""
        try:
            self.list(url)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def makedirs(self, url: str) -> None:
        """A folder: the `key/` marker object moxing's make_dirs writes (the bucket root: none)."""
        u = ObjectURL.parse(url)
        if u.dir_prefix:
            writer = self.open_writer(str(ObjectURL(u.scheme, u.bucket, u.dir_prefix)))
            writer.commit()

    mkdir = makedirs

    def check_bucket(self, url: str) -> None:
        """Raise FileNotFoundError naming the bucket of `url` if it does not exist."""

    def abort_uploads(self, folder: str, before: datetime.datetime | None = None,
                      names=None) -> int:
        """Abort incomplete uploads below `folder` (before `before`, of `names` relative to it
        when given); how many. A store whose aborted writers leave nothing has none: 0."""
        return 0

    def copy(self, src: str, dst: str) -> None:
        """Copy the object `src` to `dst` inside this store, server-side."""
        raise NotImplementedError(f"{type(self).__name__} has no server-side copy")

    # -- derived: the file-system view obs_io.file uses ------------------------------------------
    def exists(self, url: str) -> bool:
        try:
            return self.head(url) is not None or self.isdir(url)
        except FileNotFoundError:
            return False

    def stat(self, url: str) -> StatResult:
        info = self.head(url)
        if info is not None:
            return StatResult(info.size, info.mtime_ns, False, url)
        if self.isdir(url):
            return StatResult(0, 0, True, url)
        raise ObjectNotFound(f"{url}: no such object or folder")

    def ls(self, url: str) -> list[DirEntry]:
        return self.list(url)

    def find(self, url: str) -> list[DirEntry]:
        return self.list(url, recursive=True)

    def rm(self, url: str, recursive: bool) -> None:
        """Remove an object; a folder (everything below it, its marker too) only if recursive."""
        is_object = self.head(url) is not None
        if is_object:
            self.delete(url)
            if not recursive or not ObjectURL.parse(url).key.strip("/"):
                return
        if not recursive:
            if self.isdir(url):
                raise IsADirectoryError(f"{url} is a folder: use recursive=True to remove it")
            raise ObjectNotFound(f"{url}: no such object or folder")
        try:
            entries = self.list(url, recursive=True)
        except FileNotFoundError:
            if is_object:
                return
            raise
        for e in entries:
            if not e.dir:
                self.delete(join(url, e.name))
        u = ObjectURL.parse(url)
        marker = str(ObjectURL(u.scheme, u.bucket, u.dir_prefix))
        if u.dir_prefix and self.head(marker) is not None:
            self.delete(marker)

    # -- bulk operations: generic here, a store may do better ----------------------------------
    def transfer(self, tasks: list, threads: int, progress, is_processing: bool) -> None:
        """Run copy tasks (obs_io.transfer.CopyTask) whose remote side(s) are this store."""
        from .streams import copy_tasks
        copy_tasks(tasks, threads, progress)

    def upload_fileobj(self, fileobj, url: str, size: int, threads: int = 8, cfg=None) -> None:
        """Publish a seekable file object of `size` bytes as the object `url`, carrying a fresh
        upload token (streams.upload_token)."""
        from .streams import write_fileobj
        write_fileobj(self, fileobj, url, size, cfg)

    def download_fileobj(self, url: str, fileobj, size: int, threads: int = 8) -> None:
        """Write the whole object `url` (`size` bytes) into a writable file object."""
        from .streams import read_into
        read_into(self, url, fileobj.write, size, None)

    def growing_upload(self, path: str, url: str, size_hint: int, cfg=None, chunks: int = 4):
        """Upload the local file `path` to `url` while someone in this process still appends
        to it: an object with finish(size), abort(), cancel() and `token` (streams.StreamUpload)."""
        from .streams import StreamUpload
        return StreamUpload(self, path, url, size_hint, cfg)

