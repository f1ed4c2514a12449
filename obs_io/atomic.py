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
import hashlib
import logging
import os
import re
import socket
import time
from types import TracebackType

log = logging.getLogger("obs_io")

# Temporary names: `.<name>.obsio-<pid>-<host tag><start tag>-<random>.tmp`, and s3transfer adds
# `.<8 hex digits>` to the name it is given for its own temporary file. The pid and tags say
# which process wrote it, so a rerun can remove what a killed run left (sweep) without touching
# the temporary files of a copy that is still running.
_TEMP = re.compile(r"^\..+\.obsio-(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{4})(?P<start>[0-9a-f]{4})-)?"
                   r"[0-9a-f]{8}\.tmp(?:\.[0-9A-Fa-f]{8})?$")
STALE_SECONDS = 600.0  # a temp file of another machine (or of an old obs_io) untouched this long is abandoned
_MAX_NAME = 120        # of the final name kept in the temporary one: the whole must stay below 255 bytes


def _tag(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:4]


def _start_tag(pid: int) -> str | None:
    """A tag of when process `pid` started (Linux: /proc/<pid>/stat, field 22), which tells a
    live owner from a new process that got a dead one's pid (pids restart at 1 in a restarted
    container). '0000' where /proc does not exist; None when no such process is running: a
    zombie (killed, not yet reaped by its parent, as a container's init may never do) runs no
    more, and what it was writing is abandoned."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return _tag(fields[19].decode())
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError):
        pass
    try:  # no /proc: whether the pid is taken at all is what can be told
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "0000"


_owner: tuple[int, str] | None = None


def _owner_tag() -> str:
    """`<pid>-<host tag><start tag>` of this process (computed again after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{pid}-{_tag(socket.gethostname())}{_start_tag(pid) or '0000'}")
    return _owner[1]


def owner_tag() -> str:
    """This process's owner tag, as temp_name() writes it: for a folder whose owner must be
    told apart from a dead one's (owner_running)."""
    return _owner_tag()


_OWNER = re.compile(r"(?P<pid>\d+)-(?P<host>[0-9a-f]{4})(?P<start>[0-9a-f]{4})")


def owner_running(tag: str, path: str) -> bool:
    """Whether the process an owner_tag() names still runs (on this machine: its pid with the
    same start time); another machine's, while `path` was touched within STALE_SECONDS."""
    m = _OWNER.fullmatch(tag.strip())
    if m is None:
        return False
    return not _abandoned(m, path, time.time())


def owner_alive(tag: str) -> bool | None:
    """Whether the process an owner_tag() names runs on this machine (its pid, with the same
    start time, and not a zombie); None when the tag is another machine's (or not a tag):
    then only the age of what it wrote can tell."""
    m = _OWNER.fullmatch(tag.strip())
    if m is None or m["host"] != _tag(socket.gethostname()):
        return None
    return _start_tag(int(m["pid"])) in (m["start"], "0000")


def temp_name(path: str) -> str:
    """A hidden sibling of `path` (same folder, so the rename stays within one file system)
    that no reader mistakes for the real file and no two writers share, naming its writer."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name[:_MAX_NAME]}.obsio-{_owner_tag()}-{os.urandom(4).hex()}.tmp")


def _abandoned(match: re.Match, path: str, now: float) -> bool:
    """Whether the temporary file at `path` belongs to no running writer: written on this
    machine by a process that is gone (its pid free, or taken by a process that started at
    another time), or, when that cannot be told (another machine sharing the folder, a name
    without owner), untouched for STALE_SECONDS."""
    if match["pid"] and match["host"] == _tag(socket.gethostname()):
        return _start_tag(int(match["pid"])) not in (match["start"], "0000")
    try:
        return now - os.lstat(path).st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def sweep(folder: str) -> list[str]:
    """Remove the temporary files that killed writers left in `folder` (not below it): only
    names this module (and s3transfer, on our temporary names) makes, and only abandoned ones
    (_abandoned), so two copies into one folder never remove each other's. Returns the paths
    removed. A folder that does not exist has nothing to sweep."""
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and _abandoned(match, entry.path, now):
            try:
                os.remove(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:  # another rerun swept it first
                pass
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted copy in %s", len(removed), folder)
    return removed


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
        self.temp = temp_name(os.path.abspath(path))

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
