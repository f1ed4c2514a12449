"""Writing a local file all at once or not at all: a temporary sibling, renamed into place.

A reader (or a restarted job) sees the old file or the complete new one under the final name,
never a half-written one, and a failure leaves nothing behind, whatever failed: the bytes, the
caller's check of them, or the close that writes the last buffered bytes (ENOSPC, EDQUOT, an
NFS server's deferred write error). This module imports nothing beyond the standard library:
the conversion engine's worker processes use it and must not pay for boto3.

Durability policy, chosen per call by the required `durable` keyword:

- durable=True: the file's bytes are fsynced before the rename, and its folder after it. For
  files that commit state: markers, manifests, configs, leader records. After a crash (power,
  kernel, a VM stopped) such a file must hold either the old or the complete new content, and
  the rename itself must not be undone: a restarted job reads it to decide what is already
  done. Without the first fsync, a file system may persist the rename before the data and show
  an empty or zero-filled file under the final name; without the second, the rename may be lost.
  Each costs a disk flush (milliseconds on a cloud disk), paid once per state change.
- durable=False: atomic against concurrent readers and failures of this process, not against a
  crash of the machine. For bulk data (downloads of checkpoints, strategies, logs) that is
  checked by size and ETag before reuse and can be fetched again: an fsync per file would
  serialize a folder of thousands of files on the disk's flush latency, and the page cache
  writes them out anyway. A crash may leave such a file short, empty or zero-filled, so what
  says "this batch is complete" must be a durable marker written after it, and a job that
  restarts must verify what it reuses.
"""
from __future__ import annotations

import errno
import os
from types import TracebackType


def _temp_name(path: str) -> str:
    """A hidden sibling of `path` (same folder, so the rename stays within one file system)
    that no reader mistakes for the real file and no two writers share."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.obsio-{os.urandom(4).hex()}.tmp")


def _fsync_path(path: str) -> None:
    """fsync a file or a folder by name. Linux flushes the inode's dirty data whichever
    descriptor asks, so the writer's own (already closed) one is not needed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Landing:
    """A file being written under `temp` and published as `path` by commit().

    As a context manager it yields the temporary path, commits on a clean exit and removes the
    temporary file on any exception (commit failures included). Writers whose life is not one
    block (mox.file.File) call commit() and discard() themselves. The caller must have closed
    the temporary file before commit(): a close that fails then fails before anything is
    published.
    """

    def __init__(self, path: str, *, durable: bool):
        self.path = path
        self.durable = durable
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)  # as on object storage, a file needs no existing folder
        self.temp = _temp_name(os.path.abspath(path))

    def commit(self) -> None:
        """Rename the finished temporary file to the final name (see the durability policy)."""
        if self.durable:
            _fsync_path(self.temp)
        os.replace(self.temp, self.path)
        if self.durable:
            # A file system that cannot fsync a folder (some FUSE mounts) says so with EINVAL or
            # ENOTSUP; it has no other way to make a rename durable, so that is not a failure.
            try:
                _fsync_path(os.path.dirname(os.path.abspath(self.path)))
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def discard(self) -> None:
        """Remove the temporary file if it is there (a no-op after commit)."""
        try:
            os.remove(self.temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> str:
        return self.temp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


def write_atomic(path: str, data: bytes | str, *, durable: bool) -> None:
    """Replace the file at `path` with `data` (str is written as UTF-8), all or nothing.

    durable: fsync the file and its folder (state that must survive a crash); see the module's
    durability policy.
    """
    with Landing(path, durable=durable) as temp:
        with open(temp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
