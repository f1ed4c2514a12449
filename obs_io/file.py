"""The `mox.file` API: moxing's functions and signatures over local paths, obs:// and s3:// URLs.

Code written as `import moxing as mox; mox.file.copy_parallel(a, b)` runs unchanged with
`import obs_io as mox`: every function moxing documents under mox.file is here with moxing's
keywords (list_directory's skip_file/skip_dir/remove_sep, walk's followlinks, client_id, ...),
and so are moxing's exception classes and shift('os', 'mox'). A keyword that means nothing
here is accepted and says so in its function's docstring; none changes a result silently.
Differences from moxing, on purpose: writers publish on a clean close only; remove() of a
folder without recursive=True is an error, not a silent no-op; list_entries (a listing with
sizes and ETags) and abort_uploads (what killed writers left below a folder) are additions, and
copy_parallel takes its entries as file_list.

Errors are builtin exceptions with one line naming the URL (obs_io.errors): FileNotFoundError
(also moxing's MoxFileNotExistsException) for what is not there, PermissionError for a refusal,
ConnectionError for a store that does not answer after the retries, another OSError for any
other answer; ValueError for a malformed URL, before any request.
"""
from __future__ import annotations

import datetime
import fnmatch
import glob as _glob
import os
import shutil
from collections.abc import Iterable, Iterator

from .batch import execute, plan_file, plan_tree
from .config import set_auth  # noqa: F401 - part of the mox.file API
from .entries import DirEntry, StatResult
from .errors import (MoxFileNameDuplicateException, MoxFileNotExistsException, MoxFileReadException,
                     MoxFileRespException, ObjectChanged)
from .fs import backend, list_entries
from .remote_file import File
from .shifting import shift
from .urls import ObjectURL, check, is_remote, join

__all__ = ["copy", "copy_parallel", "exists", "is_directory", "list_directory", "glob", "walk",
           "scan_dir", "list_entries", "stat", "get_size", "make_dirs", "mk_dir", "remove", "rename", "read",
           "abort_uploads",
           "write", "append", "append_remote", "File", "set_auth", "shift", "MoxFileNotExistsException",
           "MoxFileRespException", "MoxFileReadException", "MoxFileNameDuplicateException"]

# client_id, wherever moxing takes it: moxing keeps several OBS clients and client_id picks one.
# obs_io has one configuration (set_auth and the environment), so it is accepted and unused.


def copy(src_url: str, dst_url: str, client_id=None) -> None:
    """Copy one file (either side local or remote), published under dst_url only once whole.

    Args:
        src_url: the file (local path or URL).
        dst_url: the new file's full name.
        client_id: accepted, unused (see above).

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    execute([plan_file(src_url, dst_url)], threads=10, desc=f"copy {src_url}", show_progress=False)


def copy_parallel(src_url: str, dst_url: str, file_list: Iterable[str | DirEntry] | None = None,
                  threads: int = 16, is_processing: bool = True, use_queue: bool = False,
                  client_id=None, progress: bool = True) -> None:
    """Copy the folder src_url to dst_url (a mirror of its tree), many files at once.

    file_list: only these files, relative to src_url: names (found in one listing of their
    common folder), or the DirEntry items of a listing the caller already has (e.g. from
    list_entries(src_url, recursive=True)), which cost no request before the copy itself. A
    file as src_url is copied like copy(). is_processing: as moxing, many small files go to
    worker processes (one per four threads, up to the CPUs; see workers.py), so one
    interpreter's GIL does not bound them. Progress (bytes, rate, files) shows on a terminal,
    else as periodic log lines and a last line (a single file too; `progress=False`: none, as
    copy()). use_queue (moxing: feed workers from a queue) and client_id are
    accepted and unused: each worker process gets its whole share of the plan at start.

    Objects `a` and `a/b` both under src_url cannot both land on a local disk: that is
    MoxFileNameDuplicateException (a FileExistsError), before anything is copied.

    Args:
        src_url: the folder (or a file) to copy, local path or URL.
        dst_url: where its tree goes.
        file_list: see above (None: every file).
        threads: transfers at once.
        is_processing: spread many small files over worker processes.
        use_queue: accepted, unused.
        client_id: accepted, unused.
        progress: show progress.

    Raises:
        MoxFileNameDuplicateException: names that collide on a local disk.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    check(src_url, dst_url)
    try:
        tasks, dirs = plan_tree(src_url, dst_url, file_list)
    except NotADirectoryError:  # the listing found a file: no request spent to ask first
        tasks, dirs = [plan_file(src_url, dst_url)], []
    execute(tasks, threads=threads, desc=f"copy {src_url} -> {dst_url}", dirs=dirs, is_processing=is_processing,
            show_progress=progress)


def exists(url: str) -> bool:
    """Whether a file or folder (a bucket, a prefix with objects under it) is at url.

    Args:
        url: a local path or URL.

    Returns:
        True when something is there.

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return backend(url).exists(url)


def is_directory(url: str) -> bool:
    """Whether url is a local folder, a bucket, or a prefix with at least one object under it.

    Args:
        url: a local path or URL.

    Returns:
        True for a folder.

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return backend(url).isdir(url)


def list_directory(url: str, recursive: bool = False, remove_sep: bool = False, skip_file: bool = False,
                   skip_dir: bool = False) -> list[str]:
    """Names relative to url: the children, or with recursive=True every file and folder below.

    skip_file / skip_dir leave out files / folders. remove_sep: moxing strips the URL's trailing
    separator before listing; obs_io always treats `dir` and `dir/` alike, so it changes nothing.

    Args:
        url: the folder, a local path or URL.
        recursive: every file and folder below, not only the children.
        remove_sep: accepted; changes nothing (see above).
        skip_file: leave out files.
        skip_dir: leave out folders.

    Returns:
        The names, relative to url, sorted.

    Raises:
        FileNotFoundError: no such folder.
        NotADirectoryError: url is a file.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return [e.name for e in list_entries(url, recursive)
            if not (skip_dir if e.dir else skip_file)]


class _ScanDir:
    """What scan_dir returns: an iterator of entries that is also a context manager, as
    os.scandir's is (`with os.scandir(p) as it:` works for a URL under shift('os', 'mox'))."""

    def __init__(self, entries: list[DirEntry]):
        self._it = iter(entries)

    def __iter__(self) -> "_ScanDir":
        return self

    def __next__(self) -> DirEntry:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> "_ScanDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scan_dir(url: str) -> _ScanDir:
    """Children of url as entries with .name, .path, is_dir(), is_file(), stat(), from one
    listing.

    Args:
        url: the folder, a local path or URL.

    Returns:
        An iterator of DirEntry that is also a context manager (as os.scandir's).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return _ScanDir(list_entries(url))


def walk(url: str, topdown: bool = True, onerror=None,
         followlinks: bool = False) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk over a local folder or a prefix: (folder url, sub-folder names, file names).

    Locally every keyword is os.walk's. For a URL (as in moxing) onerror gets a listing's error
    and followlinks means nothing (objects have no links); topdown orders the folders, from the
    one listing of the whole prefix, so pruning `dirs` in place saves no request.

    Args:
        url: the folder, a local path or URL.
        topdown: a folder before its sub-folders.
        onerror: called with a listing's error instead of raising it.
        followlinks: os.walk's, locally.

    Yields:
        (folder, sub-folder names, file names).

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    if not is_remote(url):
        yield from os.walk(url, topdown=topdown, onerror=onerror, followlinks=followlinks)
        return
    try:
        entries = list_entries(url, recursive=True)
    except OSError as err:
        if onerror is not None:
            onerror(err)
            return
        raise
    tree: dict[str, tuple[list[str], list[str]]] = {"": ([], [])}
    for e in entries:  # sorted, so a folder comes before its contents
        parent, _, name = e.name.rpartition("/")
        tree.setdefault(parent, ([], []))[0 if e.dir else 1].append(name)
        if e.dir:
            tree.setdefault(e.name, ([], []))
    order = sorted(tree, key=lambda d: (d.count("/") if d else -1, d))
    for rel in (order if topdown else reversed(order)):
        dirs, files = tree[rel]
        yield join(url, rel) if rel else url, dirs, files


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def glob(url: str) -> list[str]:
    """Paths or URLs matching a shell pattern; `*` does not cross `/`. A URL's pattern costs
    one listing of the prefix before its first wildcard.

    Args:
        url: the pattern (local path or URL).

    Returns:
        The matches, sorted ([] for none).

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    pattern = url
    if not is_remote(pattern):
        return sorted(_glob.glob(pattern))
    u = ObjectURL.parse(pattern)
    parts = u.key.split("/")
    static = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
    if static == len(parts):
        return [pattern] if exists(pattern) else []
    base = f"{u.scheme}://{u.bucket}/" + "/".join(parts[:static])
    rest = parts[static:]
    try:
        entries = list_entries(base, recursive=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(join(base, e.name) for e in entries
                  if len(e.name.split("/")) == len(rest)
                  and all(fnmatch.fnmatchcase(a, b) for a, b in zip(e.name.split("/"), rest)))


def stat(url: str) -> StatResult:
    """What is at url: size, modification time, folder or file (an object's ETag too).

    Args:
        url: a local path or URL.

    Returns:
        The StatResult.

    Raises:
        FileNotFoundError: nothing there (on object storage moxing's
            MoxFileNotExistsException, a subclass).
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return backend(url).stat(url)


def get_size(url: str, recursive: bool = False) -> int:
    """Bytes in the file at url; with recursive=True, in every file under the folder url (one
    listing, no stat first). A folder without recursive counts 0, as a folder marker object
    does on OBS.

    Args:
        url: a file or folder, local path or URL.
        recursive: count every file under a folder.

    Returns:
        The size in bytes.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    if recursive:
        try:
            return sum(e.length for e in list_entries(url, recursive=True) if not e.dir)
        except NotADirectoryError:
            pass  # a file: its own size
    st = stat(url)
    return 0 if st.is_dir else st.length


def make_dirs(url: str) -> None:
    """Create a folder and its parents (on S3: a `key/` marker object, as moxing writes).

    Args:
        url: the folder, a local path or URL.

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    backend(url).makedirs(url)


def mk_dir(url: str) -> None:
    """Create one folder (its parent must exist locally; on S3 a `key/` marker object).

    Args:
        url: the folder, a local path or URL.

    Raises:
        FileExistsError: it exists (locally).
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    backend(url).mkdir(url)


def remove(url: str, recursive: bool = False) -> None:
    """Remove a file; a folder (every object under the prefix) only with recursive=True.

    A folder without recursive=True is IsADirectoryError (moxing silently does nothing), and a
    missing path is FileNotFoundError: a cleanup that removed nothing must not pass for done.

    Args:
        url: a file or folder, local path or URL.
        recursive: remove a folder and everything under it.

    Raises:
        IsADirectoryError: a folder without recursive=True.
        FileNotFoundError: nothing there.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    backend(url).rm(url, recursive)


def abort_uploads(folder: str, before: datetime.datetime | None = None, names: Iterable[str] | None = None) -> int:
    """Abort the incomplete multipart uploads below the folder `folder` (a URL) initiated
    before `before` (None: whenever), of the keys `names` (relative to the folder) only when
    given: what killed writers left there, whoever they were. Without `names`, for a folder
    that one writer owns, once nobody else uploads into it (e.g. a job's output once all its
    blocks are in).

    Args:
        folder: the folder (a URL).
        before: only uploads initiated before this time (None: whenever).
        names: only these keys, relative to the folder (None: every key below it).

    Returns:
        How many were aborted (0 on a store whose writers leave nothing).

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    return backend(folder).abort_uploads(folder, before, names)


def rename(src_url: str, dst_url: str) -> None:
    """Move a file or folder, across local disk and object storage too (copy, then delete:
    the source goes only once the copy is whole).

    Args:
        src_url: what to move, local path or URL.
        dst_url: its new name.

    Raises:
        FileNotFoundError: nothing at src_url.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    check(src_url, dst_url)
    if not is_remote(src_url) and not is_remote(dst_url):
        if os.path.dirname(os.path.abspath(dst_url)):
            os.makedirs(os.path.dirname(os.path.abspath(dst_url)), exist_ok=True)
        shutil.move(src_url, dst_url)
        return
    if is_directory(src_url):
        copy_parallel(src_url, dst_url)
        remove(src_url, recursive=True)
    else:
        copy(src_url, dst_url)
        remove(src_url)


def read(url: str, binary: bool = False, client_id=None):
    """The whole file. An object replaced while it is read (another writer's marker, say) is
    read again, up to three times, so the caller gets one whole version, never a mix.

    Args:
        url: the file, local path or URL.
        binary: bytes instead of str (UTF-8).
        client_id: accepted, unused (see above).

    Returns:
        The content, str or bytes.

    Raises:
        FileNotFoundError: nothing there.
        ObjectChanged: the object was replaced during each of three reads.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    for attempt in range(3):
        try:
            with File(url, "rb" if binary else "r") as f:
                return f.read()
        except ObjectChanged:
            if attempt == 2:
                raise


def write(url: str, data, binary: bool = False, client_id=None) -> None:
    """Replace the file with `data`, all or nothing: published on success only. client_id is
    accepted and unused (see above).

    Args:
        url: the file, local path or URL.
        data: str, or bytes with binary=True.
        binary: data is bytes.

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    with File(url, "wb" if binary else "w") as f:
        f.write(data)


def append(url: str, data, binary: bool = False, client_id=None) -> None:
    """Append to a file. On S3 (no append operation) the object is rewritten whole, and
    published on success only.

    Args:
        url: the file, local path or URL (created when missing).
        data: what to append: str, or bytes with binary=True.
        binary: data is bytes (else str, written as UTF-8).
        client_id: accepted, unused (see above).

    Raises:
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    with File(url, "ab" if binary else "a") as f:
        f.write(data)


def append_remote(src_url: str, dst_url: str, client_id=None) -> None:
    """Append the bytes of the file src_url to the file dst_url (moxing's append_remote; either
    may be local here). dst_url is rewritten whole and published on success only.

    Args:
        src_url: the file whose bytes are appended.
        dst_url: the file appended to.
        client_id: accepted, unused (see above).

    Raises:
        FileNotFoundError: nothing at src_url.
        ValueError: a malformed URL.
        OSError: the store's or the disk's one-line error (the module's docstring).
    """
    check(src_url, dst_url)
    with File(src_url, "rb") as src, File(dst_url, "ab") as dst:
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
