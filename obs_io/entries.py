"""What stat() and scan_dir() return: the same small records for local files and objects."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StatResult:
    """moxing's stat result: `.length`, `.mtime_nsec`, `.is_dir` (folders on S3 have length 0)."""

    length: int
    mtime_nsec: int
    is_dir: bool
    path: str = ""

    @property
    def size(self) -> int:
        return self.length


@dataclass(frozen=True)
class DirEntry:
    """One child of a folder (or one descendant, with `name` relative, in a recursive listing).

    `etag` is the object's ETag (None locally): downloads compare it with the bytes they got.
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

    def stat(self) -> StatResult:
        return StatResult(self.length, self.mtime_nsec, self.dir, self.path)
