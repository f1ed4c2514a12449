"""What stat() and scan_dir() return: the same small records for local files and objects."""
from __future__ import annotations

import stat as _stat
from dataclasses import dataclass


@dataclass(frozen=True)
class StatResult:
    """moxing's stat result, with os.stat_result's names too (st_size, st_mtime, ...).

    Attributes:
        length: size in bytes (folders on S3 have length 0).
        mtime_nsec: modification time in ns since the epoch.
        is_dir: a folder.
        path: what was stat'ed.
    """

    length: int
    mtime_nsec: int
    is_dir: bool
    path: str = ""

    @property
    def size(self) -> int:
        return self.length

    @property
    def is_directory(self) -> bool:
        """moxing's spelling of is_dir (`mox.file.stat(url).is_directory`)."""
        return self.is_dir

    # os.stat_result's names, so code written for os.stat (or running under
    # mox.file.shift('os', 'mox')) reads a stat of an object too.
    @property
    def st_size(self) -> int:
        return self.length

    @property
    def st_mtime(self) -> float:
        return self.mtime_nsec / 1e9

    @property
    def st_mtime_ns(self) -> int:
        return self.mtime_nsec

    @property
    def st_mode(self) -> int:
        return (_stat.S_IFDIR | 0o755) if self.is_dir else (_stat.S_IFREG | 0o644)


@dataclass(frozen=True)
class DirEntry:
    """One child of a folder (or one descendant, with `name` relative, in a recursive listing),
    as os.DirEntry reads it (is_dir(), is_file(), stat()).

    Attributes:
        name: relative to the folder listed ('/'-separated).
        path: the full path or URL.
        dir: a folder.
        length: size in bytes.
        mtime_nsec: modification time in ns since the epoch.
        etag: the object's ETag (None locally): downloads compare it with the bytes they got.
    """

    name: str
    path: str
    dir: bool
    length: int = 0
    mtime_nsec: int = 0
    etag: str | None = None

    def is_dir(self) -> bool:
        return self.dir

    def is_file(self) -> bool:
        return not self.dir

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> StatResult:
        return StatResult(self.length, self.mtime_nsec, self.dir, self.path)
