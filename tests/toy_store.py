"""A toy object store, `toy://bucket/key`, in one file: what adding a store to obs_io takes.

Objects live as files in the folder $TOY_STORE_DIR (shared by every process of a test, so
transform-checkpoint's and cloud-entry's subprocesses see the same store): a bucket is a
folder, an object one file named by its quoted key, holding the object's bytes followed by a
JSON trailer (ETag, user metadata) and the trailer's length (8 bytes). A write goes to a
temporary file renamed over the object by commit(): the object appears whole or not at all.

Registered by the environment (obs_io.registry), so child processes load it too:
    OBS_IO_STORES=toy=<this file>:ToyStore   (REGISTRATION below)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from urllib.parse import quote, unquote

from obs_io.entries import DirEntry
from obs_io.errors import ObjectChanged, ObjectNotFound
from obs_io.store import ObjectInfo, ObjectStore, ObjectWriter
from obs_io.urls import ObjectURL, join

DIR_ENV = "TOY_STORE_DIR"
REGISTRATION = f"toy={os.path.abspath(__file__)}:ToyStore"   # the one registry line (OBS_IO_STORES)
_TRAILER = struct.Struct("<Q")


class _Writer(ObjectWriter):
    def __init__(self, path: str, metadata):
        self._path, self._metadata = path, dict(metadata or {})
        self._temp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
        self._f = open(self._temp, "wb")
        self._md5 = hashlib.md5()

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._md5.update(data)

    def commit(self) -> None:
        trailer = json.dumps({"etag": f'"{self._md5.hexdigest()}"', "metadata": self._metadata}).encode()
        self._f.write(trailer + _TRAILER.pack(len(trailer)))
        self._f.close()
        os.replace(self._temp, self._path)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._temp):
            os.remove(self._temp)


class ToyStore(ObjectStore):
    server_side_copy = True

    def _bucket(self, url: str) -> tuple[ObjectURL, str]:
        u = ObjectURL.parse(url)
        folder = os.path.join(os.environ[DIR_ENV], u.bucket)
        if not os.path.isdir(folder):
            raise ObjectNotFound(f"bucket {u.bucket!r} does not exist (while accessing {url})")
        return u, folder

    def _path(self, url: str) -> str:
        u, folder = self._bucket(url)
        return os.path.join(folder, quote(u.key, safe=""))

    @staticmethod
    def _trailer(f) -> tuple[int, dict]:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - _TRAILER.size)
        (n,) = _TRAILER.unpack(f.read(_TRAILER.size))
        f.seek(end - _TRAILER.size - n)
        return end - _TRAILER.size - n, json.loads(f.read(n))

    def check_bucket(self, url: str) -> None:
        self._bucket(url)

    def head(self, url: str, cfg=None) -> ObjectInfo | None:
        u, _ = self._bucket(url)
        if not u.key or u.key.endswith("/"):
            return None
        try:
            with open(self._path(url), "rb") as f:
                size, trailer = self._trailer(f)
                mtime = os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None
        return ObjectInfo(size, trailer["etag"], mtime, trailer["metadata"])

    def read_range(self, url: str, offset: int, length: int, etag: str | None = None, cfg=None) -> bytes:
        try:
            with open(self._path(url), "rb") as f:
                size, trailer = self._trailer(f)
                if etag is not None and trailer["etag"] != etag:
                    raise ObjectChanged(f"{url}: the object was replaced while it was read")
                return os.pread(f.fileno(), max(0, min(length, size - offset)), offset)
        except FileNotFoundError:
            raise ObjectNotFound(f"{url}: no such object") from None

    def open_writer(self, url: str, size_hint: int = 0, metadata=None, cfg=None) -> ObjectWriter:
        return _Writer(self._path(url), metadata)

    def delete(self, url: str) -> None:
        try:
            os.remove(self._path(url))
        except FileNotFoundError:
            pass

    def copy(self, src: str, dst: str) -> None:
        temp = os.path.join(os.path.dirname(self._path(dst)), f".tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(self._path(src), temp)
        except FileNotFoundError:
            raise ObjectNotFound(f"{src}: no such object") from None
        os.replace(temp, self._path(dst))

    def list(self, url: str, recursive: bool = False) -> list[DirEntry]:
        u, folder = self._bucket(url)
        prefix = u.dir_prefix
        out: dict[str, DirEntry] = {}
        found = False
        for name in os.listdir(folder):
            key = unquote(name)
            if name.startswith(".tmp-") or not key.startswith(prefix):
                continue
            found, rel = True, key[len(prefix):]
            parts = rel.split("/")
            dirs = range(1, len(parts)) if recursive else range(1, min(2, len(parts)))
            for i in dirs:   # the folders above an object (and the one a `x/` marker names)
                d = "/".join(parts[:i])
                out.setdefault(d, DirEntry(d, join(url, d), True))
            if rel and not rel.endswith("/") and (recursive or len(parts) == 1):
                info = self.head(str(ObjectURL(u.scheme, u.bucket, key)))
                if info is not None:
                    out[rel] = DirEntry(rel, join(url, rel), False, info.size, info.mtime_ns, info.etag)
        if not found and prefix:
            if self.head(url) is not None:
                raise NotADirectoryError(f"{url} is an object, not a folder")
            raise ObjectNotFound(f"{url}: no such folder")
        return sorted(out.values(), key=lambda e: e.name)


def make_bucket(name: str) -> str:
    """A bucket in the toy store ($TOY_STORE_DIR must be set); returns its URL."""
    os.makedirs(os.path.join(os.environ[DIR_ENV], name), exist_ok=True)
    return f"toy://{name}"

