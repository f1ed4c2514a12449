"""The `mox.file` API: moxing's functions and signatures over local paths, obs:// and s3:// URLs.

Code written as `import moxing as mox; mox.file.copy_parallel(a, b)` runs unchanged with
`import obs_io as mox`. Differences from moxing, on purpose: copy_parallel's `use_queue` is
accepted and ignored (worker processes get their whole plan at start); writers publish on a
clean close only; list_entries (a listing with sizes and ETags) is an addition, and copy_parallel
takes its entries as file_list.
"""
from __future__ import annotations

import fnmatch
import glob as _glob
import os
import shutil
from collections.abc import Iterable, Iterator

from .batch import execute, plan_file, plan_tree
from .config import set_auth  # noqa: F401 - part of the mox.file API
from .entries import DirEntry, StatResult
from .errors import ObjectChanged
from .fs import backend, list_entries
from .remote_file import File
from .urls import ObjectURL, check, is_remote, join

__all__ = ["copy", "copy_parallel", "exists", "is_directory", "list_directory", "glob", "walk",
           "scan_dir", "list_entries", "stat", "get_size", "make_dirs", "mk_dir", "remove", "rename", "read",
           "write", "append", "File", "set_auth"]


def copy(src_url: str, dst_url: str) -> None:
    """Copy one file (either side local or remote). dst_url is the new file's full name."""
    execute([plan_file(src_url, dst_url)], threads=10, desc=f"copy {src_url}", show_progress=False)


def copy_parallel(src_url: str, dst_url: str, file_list: Iterable[str | DirEntry] | None = None,
                  threads: int = 16, is_processing: bool = True, use_queue: bool = False) -> None:
    """Copy the folder src_url to dst_url (a mirror of its tree), many files at once.

    file_list: only these files, relative to src_url: names (found in one listing of their
    common folder), or the DirEntry items of a listing the caller already has (e.g. from
    list_entries(src_url, recursive=True)), which cost no request before the copy itself. A
    file as src_url is copied like copy(). is_processing: as moxing, many small files go to
    worker processes (one per four threads, up to the CPUs; see workers.py), so one
    interpreter's GIL does not bound them. Progress (bytes, rate, files) shows on a terminal,
    else as periodic log lines.
    """
    check(src_url, dst_url)
    try:
        tasks, dirs = plan_tree(src_url, dst_url, file_list)
    except NotADirectoryError:  # the listing found a file: no request spent to ask first
        copy(src_url, dst_url)
        return
    execute(tasks, threads=threads, desc=f"copy {src_url} -> {dst_url}", dirs=dirs, is_processing=is_processing)


def exists(url: str) -> bool:
    return backend(url).exists(url)


def is_directory(url: str) -> bool:
    """True for a local folder, a bucket, or a prefix with at least one object under it."""
    return backend(url).isdir(url)


def list_directory(url: str, recursive: bool = False) -> list[str]:
    """Names relative to url: the children, or with recursive=True every file and folder below."""
    return [e.name for e in list_entries(url, recursive)]


def scan_dir(url: str) -> Iterator[DirEntry]:
    """Children of url as entries with .name, .path, is_dir(), is_file(), stat()."""
    return iter(list_entries(url))


def walk(url: str, topdown: bool = True, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk over a local folder or a prefix: (folder url, sub-folder names, file names)."""
    if not is_remote(url):
        yield from os.walk(url, topdown=topdown, onerror=onerror)
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


def glob(pattern: str) -> list[str]:
    """Paths or URLs matching a shell pattern; `*` does not cross `/`."""
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
    return backend(url).stat(url)


def get_size(url: str, recursive: bool = False) -> int:
    """Bytes in the file at url; with recursive=True, in every file under the folder url (one
    listing, no stat first). A folder without recursive counts 0, as a folder marker object
    does on OBS."""
    if recursive:
        try:
            return sum(e.length for e in list_entries(url, recursive=True) if not e.dir)
        except NotADirectoryError:
            pass  # a file: its own size
    st = stat(url)
    return 0 if st.is_dir else st.length


def make_dirs(url: str) -> None:
    """Create a folder and its parents (on S3: a `key/` marker object, as moxing writes)."""
    backend(url).makedirs(url)


def mk_dir(url: str) -> None:
    backend(url).mkdir(url)


def remove(url: str, recursive: bool = False) -> None:
    """Remove a file; a folder (every object under the prefix) only with recursive=True."""
    backend(url).rm(url, recursive)


def rename(src_url: str, dst_url: str) -> None:
    """Move a file or folder, across local disk and object storage too (copy, then delete)."""
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


def read(url: str, binary: bool = False):
    """The whole file. An object replaced while it is read (another writer's marker, say) is
    read again, up to three times, so the caller gets one whole version, never a mix."""
    for attempt in range(3):
        try:
            with File(url, "rb" if binary else "r") as f:
                return f.read()
        except ObjectChanged:
            if attempt == 2:
                raise


def write(url: str, content, binary: bool = False) -> None:
    with File(url, "wb" if binary else "w") as f:
        f.write(content)


def append(url: str, content, binary: bool = False) -> None:
    """Append to a file. On S3 (no append operation) the object is rewritten whole."""
    with File(url, "ab" if binary else "a") as f:
        f.write(content)
