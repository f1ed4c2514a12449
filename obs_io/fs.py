"""The two stores obs_io ships (obs_io.store's interface): local disk and S3/OBS; the registry
(obs_io.registry) says which serves a URL, backend() asks it.

Folders on S3 are key prefixes: a folder exists when any object lives under `prefix/` (an empty
`prefix/` marker object, as moxing's make_dirs writes, counts).

list_entries() is the one listing for every caller that needs names with sizes or ETags
(copy_parallel's plan, get_size, walk, glob, scan_dir, the command line): one ListObjects
request per 1,000 keys, never a HEAD per object.
"""
from __future__ import annotations

import datetime
import os
import shutil

from botocore.exceptions import ClientError

from . import config as _config
from .atomic import Landing
from .client import get_client, read_object
from .entries import DirEntry, StatResult
from .errors import AccessDenied, ObjectNotFound, endpoint_shown, translate, translating
from .registry import store_for
from .store import ObjectInfo, ObjectStore, ObjectWriter
from .urls import ObjectURL, join


class _LocalWriter(ObjectWriter):
    """A local file written under a temporary name, renamed into place by commit()."""

    def __init__(self, path: str):
        self._landing = Landing(path, durable=False)
        self._f = open(self._landing.temp, "wb")

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def commit(self) -> None:
        self._f.close()
        self._landing.commit()

    def abort(self) -> None:
        self._f.close()
        self._landing.discard()


class LocalFS(ObjectStore):
    """Local disk: paths, no buckets; no ETags (None), mtimes from the file system."""

    def list(self, url: str, recursive: bool = False) -> list[DirEntry]:
        return self.find(url) if recursive else self.ls(url)

    def head(self, url: str, cfg=None) -> ObjectInfo | None:
        if not os.path.isfile(url):
            return None
        st = os.stat(url)
        return ObjectInfo(st.st_size, None, st.st_mtime_ns)

    def read_range(self, url: str, offset: int, length: int, etag: str | None = None,
                   cfg=None) -> bytes:
        with open(url, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def open_writer(self, url: str, size_hint: int = 0, metadata=None, cfg=None) -> ObjectWriter:
        return _LocalWriter(url)

    def delete(self, url: str) -> None:
        try:
            os.remove(url)
        except FileNotFoundError:
            pass

    def exists(self, url: str) -> bool:
        return os.path.exists(url)

    def isdir(self, url: str) -> bool:
        return os.path.isdir(url)

    def stat(self, url: str) -> StatResult:
        st = os.stat(url)
        return StatResult(st.st_size, st.st_mtime_ns, os.path.isdir(url), url)

    def ls(self, url: str) -> list[DirEntry]:
        with os.scandir(url) as it:
            entries = [self._entry(e.name, e.path, e.is_dir()) for e in it]
        return sorted(entries, key=lambda e: e.name)

    def find(self, url: str) -> list[DirEntry]:
        if not os.path.isdir(url):
            raise (NotADirectoryError if os.path.exists(url) else FileNotFoundError)(
                f"{url}: no such folder")
        out = []
        for root, dirs, files in os.walk(url):
            rel_root = os.path.relpath(root, url)
            for name, is_dir in [(d, True) for d in dirs] + [(f, False) for f in files]:
                rel = name if rel_root == "." else f"{rel_root.replace(os.sep, '/')}/{name}"
                out.append(self._entry(rel, os.path.join(root, name), is_dir))
        return sorted(out, key=lambda e: e.name)

    @staticmethod
    def _entry(name: str, path: str, is_dir: bool) -> DirEntry:
        st = os.stat(path)
        return DirEntry(name, path, is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)

    def rm(self, url: str, recursive: bool) -> None:
        if os.path.isdir(url) and not os.path.islink(url):
            if not recursive:
                raise IsADirectoryError(f"{url} is a folder: use recursive=True to remove it")
            shutil.rmtree(url)
        else:
            os.remove(url)

    def makedirs(self, url: str) -> None:
        os.makedirs(url, exist_ok=True)

    def mkdir(self, url: str) -> None:
        os.mkdir(url)


class S3FS(ObjectStore):
    """S3 and OBS through boto3 (obs_io.client: timeouts, retries) and s3transfer."""

    server_side_copy = True

    @staticmethod
    def client(cfg: _config.S3Config | None = None):
        return get_client(cfg or _config.current())

    def head(self, url: str, cfg: _config.S3Config | None = None) -> ObjectInfo | None:
        """HeadObject (with cfg's client: its tries), or None when no object has that key. A
        missing bucket raises."""
        u = ObjectURL.parse(url)
        if not u.key or u.key.endswith("/"):
            return None
        try:
            with translating(url, keep=ClientError):
                answer = self.client(cfg).head_object(Bucket=u.bucket, Key=u.key)
        except ClientError as err:
            error = translate(err, url)
            if not isinstance(error, FileNotFoundError):
                raise self._explained(error, url, lambda: self.client().get_object(
                    Bucket=u.bucket, Key=u.key, Range="bytes=0-0")["Body"].close()) from None
        else:
            return ObjectInfo(answer["ContentLength"], answer.get("ETag"),
                              int(answer["LastModified"].timestamp() * 1e9), answer.get("Metadata", {}))
        self.check_bucket(url)
        return None

    def list(self, url: str, recursive: bool = False) -> list[DirEntry]:
        return self.find(url) if recursive else self.ls(url)

    def read_range(self, url: str, offset: int, length: int, etag: str | None = None,
                   cfg: _config.S3Config | None = None) -> bytes:
        """One ranged GetObject (IfMatch the ETag: never two versions spliced), read whole;
        a body that breaks off is fetched again (client.read_object)."""
        if length <= 0:
            return b""
        u = ObjectURL.parse(url)
        pinned = {"IfMatch": etag} if etag else {}
        with translating(url):
            body, _ = read_object(cfg or _config.current(), u.bucket, u.key,
                                  Range=f"bytes={offset}-{offset + length - 1}", **pinned)
        return body

    def open_writer(self, url: str, size_hint: int = 0, metadata=None,
                    cfg: _config.S3Config | None = None) -> ObjectWriter:
        from .transfer import S3Writer
        self.check_bucket(url)
        return S3Writer(url, size_hint, metadata, cfg)

    def delete(self, url: str) -> None:
        u = ObjectURL.parse(url)
        with translating(url):
            self.client().delete_object(Bucket=u.bucket, Key=u.key)

    def copy(self, src: str, dst: str) -> None:
        from .transfer import CopyTask, execute_remote
        info = self.head(src)
        if info is None:
            raise ObjectNotFound(f"{src}: no such object")
        execute_remote([CopyTask(src, dst, info.size, info.etag)], 1, None)

    def abort_uploads(self, folder: str, before: datetime.datetime | None = None, names=None) -> int:
        from .transfer import abort_uploads
        return abort_uploads(folder, before, names)

    def transfer(self, tasks: list, threads: int, progress, is_processing: bool) -> None:
        """s3transfer's managed transfers (multipart, ranged downloads, retries), small files
        over worker processes with is_processing (batch.py); first the multipart uploads a
        killed run of these tasks left are aborted."""
        from .batch import execute_s3
        execute_s3(tasks, threads, progress, is_processing)

    def upload_fileobj(self, fileobj, url: str, size: int, threads: int = 8, cfg=None) -> None:
        from .transfer import upload_fileobj
        upload_fileobj(fileobj, url, size, threads, cfg)

    def download_fileobj(self, url: str, fileobj, size: int, threads: int = 8) -> None:
        from .transfer import download_fileobj
        download_fileobj(url, fileobj, size, threads)

    def growing_upload(self, path: str, url: str, size_hint: int, cfg=None, chunks: int = 4):
        from .transfer import GrowingUpload
        return GrowingUpload(path, url, size_hint, cfg, chunks=chunks)

    @staticmethod
    def _explained(error: BaseException, url: str, probe) -> BaseException:
        """A HEAD request's 403 comes without a body, so without the code that says whether the
        access key id is unknown or the secret wrong: `probe` (a GET of the same thing, made
        only after such a refusal) gets the code. Anything else is returned as it is."""
        if not (isinstance(error, AccessDenied) and (error.resp or {}).get("code") == "403"):
            return error
        try:
            with translating(url, keep=ClientError):
                probe()
        except ClientError as err:
            better = translate(err, url)
            if isinstance(better, AccessDenied):
                return better
        except OSError:
            pass
        return error

    def check_bucket(self, url: str) -> None:
        """Raise FileNotFoundError naming the bucket if it does not exist."""
        bucket = ObjectURL.parse(url).bucket
        try:
            with translating(url, keep=ClientError):
                self.client().head_bucket(Bucket=bucket)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or err.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                raise ObjectNotFound(f"bucket {bucket!r} does not exist at {endpoint_shown()} "
                                     f"(while accessing {url})") from None
            raise self._explained(translate(err, url), url, lambda: self.client().list_objects_v2(
                Bucket=bucket, MaxKeys=1)) from None

    def pages(self, url: str, prefix: str, delimiter: str | None = None, max_keys: int | None = None):
        """ListObjects pages (v2, or v1 with Marker for parallel-file-system buckets)."""
        u = ObjectURL.parse(url)
        cfg = _config.current()
        op = "list_objects" if cfg.list_objects_v1 else "list_objects_v2"
        kwargs = {"Bucket": u.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if max_keys:
            kwargs["PaginationConfig"] = {"MaxItems": max_keys, "PageSize": max_keys}
        elif cfg.list_max_keys != 1000:   # the server's default page is 1000 keys
            kwargs["PaginationConfig"] = {"PageSize": cfg.list_max_keys}
        with translating(url):
            yield from get_client(cfg).get_paginator(op).paginate(**kwargs)

    def _has_children(self, url: str) -> bool:
        prefix = ObjectURL.parse(url).dir_prefix
        return any(page.get("Contents") or page.get("CommonPrefixes")
                   for page in self.pages(url, prefix, max_keys=1))

    def isdir(self, url: str) -> bool:
        try:
            if not ObjectURL.parse(url).key.strip("/"):
                self.check_bucket(url)
                return True
            return self._has_children(url)
        except FileNotFoundError:
            return False

    def ls(self, url: str) -> list[DirEntry]:
        u = ObjectURL.parse(url)
        prefix, found, out = u.dir_prefix, False, {}
        for page in self.pages(url, prefix, delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(prefix):].rstrip("/")
                out[name] = DirEntry(name, join(url, name), True)
                found = True
            for obj in page.get("Contents", []):
                found = True
                if obj["Key"] != prefix:
                    out[obj["Key"][len(prefix):]] = self._file_entry(url, obj, prefix)
        return self._listed(url, found, out)

    def _listed(self, url: str, found: bool, entries: dict) -> list[DirEntry]:
        """A listing that found nothing is a missing folder, an object, or an empty bucket."""
        if not found and ObjectURL.parse(url).key.strip("/"):
            if self.head(url) is not None:
                raise NotADirectoryError(f"{url} is an object, not a folder")
            raise ObjectNotFound(f"{url}: no such folder")
        if not found:
            self.check_bucket(url)
        return sorted(entries.values(), key=lambda e: e.name)

    @staticmethod
    def _file_entry(url: str, obj: dict, prefix: str) -> DirEntry:
        rel = obj["Key"][len(prefix):]
        return DirEntry(rel, join(url, rel), False, obj["Size"],
                        int(obj["LastModified"].timestamp() * 1e9), obj.get("ETag"))

    def find(self, url: str) -> list[DirEntry]:
        """Every object and implied folder under url, names relative to url."""
        u = ObjectURL.parse(url)
        prefix, found, out = u.dir_prefix, False, {}
        for page in self.pages(url, prefix):
            for obj in page.get("Contents", []):
                found = True
                rel = obj["Key"][len(prefix):]
                parts = rel.split("/")
                for i in range(1, len(parts)):  # ancestors, and the folder a `x/` marker names
                    d = "/".join(parts[:i])
                    if d and d not in out:
                        out[d] = DirEntry(d, join(url, d), True)
                if rel and not rel.endswith("/"):
                    out[rel] = self._file_entry(url, obj, prefix)
        return self._listed(url, found, out)

    def rm(self, url: str, recursive: bool) -> None:
        u = ObjectURL.parse(url)
        client = self.client()
        is_object = self.head(url) is not None
        if not recursive:
            if is_object:
                with translating(url):
                    client.delete_object(Bucket=u.bucket, Key=u.key)
                return
            if self.isdir(url):
                raise IsADirectoryError(f"{url} is a folder: use recursive=True to remove it")
            raise ObjectNotFound(f"{url}: no such object or folder")
        keys = [u.key] if is_object else []
        if u.key.strip("/") or not is_object:
            keys += [obj["Key"] for page in self.pages(url, u.dir_prefix) for obj in page.get("Contents", [])]
        if not keys:
            raise ObjectNotFound(f"{url}: no such object or folder")
        with translating(url):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i:i + 1000]]
                resp = client.delete_objects(Bucket=u.bucket, Delete={"Objects": batch, "Quiet": True})
                if resp.get("Errors"):
                    first = resp["Errors"][0]
                    raise OSError(f"{url}: could not delete {first.get('Key')!r}: {first.get('Code')} "
                                  f"({len(resp['Errors'])} keys failed)")

    def makedirs(self, url: str) -> None:
        u = ObjectURL.parse(url)
        if not u.dir_prefix:
            self.check_bucket(url)
            return
        with translating(url):
            self.client().put_object(Bucket=u.bucket, Key=u.dir_prefix, Body=b"")

    mkdir = makedirs


def backend(url: str) -> ObjectStore:
    """The store behind a path or URL (obs_io.registry): S3 for obs:// and s3://, a plug-in's
    for its scheme, else the local disk."""
    return store_for(url)


def list_entries(url: str, recursive: bool = False) -> list[DirEntry]:
    """The children of folder `url` (with recursive=True every file and folder below it, names
    relative to url) as entries: name, size, modification time and, for objects, the ETag, all
    from the listing requests themselves. Raises FileNotFoundError for a missing folder and
    NotADirectoryError for a file."""
    fs = backend(url)
    return fs.find(url) if recursive else fs.ls(url)
