"""What obs_io asks the server, counted through tests/faultproxy.py: one listing serves every
caller (copy_parallel plans from a caller's entries with no request at all), and downloads of
objects whose ETag is not an MD5 (server-side encryption) are checked by what the server does
give, while a corrupted body still fails."""
from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest
import test_obs_io_transfer as transfer_tests
from faultproxy import FaultProxy

import obs_io as mox

# the transfer tests' fixtures: parts from 5 MiB (autouse), and a recording proxy
_small_parts, proxy = transfer_tests._small_parts, transfer_tests.proxy
MiB = transfer_tests.MiB
RANKS = 8
FOUR = {f"rank_{r}/x.ckpt" for r in (1, 3, 4, 6)}


def settled(proxy: FaultProxy) -> list:
    """The proxy's records once no more arrive: it records a request after answering it, so a
    caller may be done before the last record is."""
    n = -1
    while n != len(proxy.records):
        n = len(proxy.records)
        time.sleep(0.2)
    return list(proxy.records)


def kinds(records: list) -> dict[str, int]:
    lists = [r for r in records if r.method == "GET" and "prefix=" in r.path]
    return {"LIST": len(lists), "HEAD": sum(r.method == "HEAD" for r in records),
            "GET": sum(r.method == "GET" for r in records) - len(lists), "all": len(records)}


def eight_ranks(s3_server, bucket: str) -> dict[str, bytes]:
    c = s3_server.client()
    data = {f"rank_{r}/x.ckpt": os.urandom(1000 + r) for r in range(RANKS)}
    for name, body in data.items():
        c.put_object(Bucket=bucket, Key=f"m/{name}", Body=body)
    return data


def test_copy_parallel_from_entries_makes_no_listing_or_head(tmp_path, bucket, proxy, s3_server):
    """Before (string names only): LIST 2 (an is_directory probe, then the folder), HEAD 0,
    GET 4; entries were not accepted. Now: entries cost only list_entries' own page."""
    data = eight_ranks(s3_server, bucket)
    src = f"s3://{bucket}/m"
    settled(proxy)
    proxy.records.clear()
    entries = mox.file.list_entries(src, recursive=True)
    assert kinds(settled(proxy)) == {"LIST": 1, "HEAD": 0, "GET": 0, "all": 1}  # < 1000 keys: one page
    chosen = [e for e in entries if e.name in FOUR]
    assert len(chosen) == 4 and all(e.etag and e.length for e in chosen)
    mox.file.copy_parallel(src, str(tmp_path / "e"), file_list=chosen)
    records = settled(proxy)
    assert kinds(records) == {"LIST": 1, "HEAD": 0, "GET": 4, "all": 5}
    assert sorted(r.path.split("?")[0] for r in records if "prefix=" not in r.path) == \
        sorted(f"/{bucket}/m/{n}" for n in FOUR)
    for name in FOUR:
        assert (tmp_path / "e" / name).read_bytes() == data[name]
    assert not (tmp_path / "e" / "rank_0").exists()


def test_copy_parallel_from_names_lists_once(tmp_path, bucket, proxy, s3_server):
    """String names: one listing of their common folder (not one per folder, not a HEAD each)."""
    data = eight_ranks(s3_server, bucket)
    settled(proxy)
    proxy.records.clear()
    mox.file.copy_parallel(f"s3://{bucket}/m", str(tmp_path / "s"), file_list=sorted(FOUR))
    records = settled(proxy)
    assert kinds(records) == {"LIST": 1, "HEAD": 0, "GET": 4, "all": 5}
    assert all(data[n] == (tmp_path / "s" / n).read_bytes() for n in FOUR)
    proxy.records.clear()  # names in one folder: only that folder is listed
    mox.file.copy_parallel(f"s3://{bucket}/m", str(tmp_path / "one"), file_list=["rank_5/x.ckpt"])
    lists = [r.path for r in settled(proxy) if "prefix=" in r.path]
    assert len(lists) == 1 and "prefix=m%2Frank_5%2F" in lists[0]
    with pytest.raises(FileNotFoundError, match="rank_9/x.ckpt"):
        mox.file.copy_parallel(f"s3://{bucket}/m", str(tmp_path / "x"), file_list=["rank_9/x.ckpt"])


def test_whole_folder_and_size_use_one_listing(tmp_path, bucket, proxy, s3_server):
    eight_ranks(s3_server, bucket)
    settled(proxy)
    proxy.records.clear()
    mox.file.copy_parallel(f"s3://{bucket}/m", str(tmp_path / "all"))
    assert kinds(settled(proxy)) == {"LIST": 1, "HEAD": 0, "GET": RANKS, "all": RANKS + 1}
    proxy.records.clear()
    assert mox.file.get_size(f"s3://{bucket}/m", recursive=True) == sum(1000 + r for r in range(RANKS))
    assert kinds(settled(proxy)) == {"LIST": 1, "HEAD": 0, "GET": 0, "all": 1}


def test_file_list_entries_local_source_and_checks(tmp_path, bucket):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.bin").write_bytes(b"1" * 10)
    (src / "two.bin").write_bytes(b"2" * 20)
    entries = mox.file.list_entries(str(src), recursive=True)  # folders included: skipped
    mox.file.copy_parallel(str(src), f"s3://{bucket}/up", file_list=entries)
    assert mox.file.list_directory(f"s3://{bucket}/up", recursive=True) == ["a", "a/one.bin", "two.bin"]
    evil = mox.DirEntry("../outside.bin", str(tmp_path / "outside.bin"), False, 3)
    with pytest.raises(ValueError, match="outside"):
        mox.file.copy_parallel(str(src), str(tmp_path / "dst"), file_list=[evil])
    stale = mox.DirEntry("two.bin", str(src / "two.bin"), False, 99)  # the file changed since
    with pytest.raises(OSError, match="expected 99"):
        mox.file.copy_parallel(str(src), str(tmp_path / "dst"), file_list=[stale])
    assert not (tmp_path / "dst" / "two.bin").exists()


class EncryptingProxy(FaultProxy):
    """A FaultProxy that makes objects under `/<bucket>/enc/` look as a server with server-side
    encryption (KMS or a customer key) shows them: each answer about them carries `headers`, and
    their ETag, in object responses and in listings alike, is a value that is not their MD5. The
    If-Match the client sends with that ETag is mapped back for the real server."""

    def __init__(self, upstream: str, bucket: str, headers: dict[str, str]):
        super().__init__(upstream)
        self.prefix, self.headers = f"/{bucket}/enc/", headers
        self.fake: dict[str, str] = {}  # real ETag (quoted) -> what clients see

    def disguise(self, body: bytes) -> None:
        real = f'"{hashlib.md5(body).hexdigest()}"'
        self.fake[real] = f'"{hashlib.md5(b"kms" + body).hexdigest()}"'  # looks like an MD5, is not

    def _handler_class(self):
        base, proxy = super()._handler_class(), self

        class Handler(base):
            def _targeted(self) -> bool:
                return self.path.split("?")[0].startswith(proxy.prefix)

            def _handle(self):
                match = self.headers.get("If-Match")
                real = {v: k for k, v in proxy.fake.items()}
                if match in real:
                    self.headers.replace_header("If-Match", real[match])
                super()._handle()

            do_GET = do_HEAD = _handle

            def _send(self, status, body, headers=()):
                for real, fake in proxy.fake.items():  # listings: the ETag inside the XML
                    for q in ("&quot;", '"'):
                        body = body.replace(real.replace('"', q).encode(), fake.replace('"', q).encode())
                super()._send(status, body, headers)

            def send_header(self, keyword, value):
                if self._targeted() and keyword.lower() == "etag":
                    value = proxy.fake.get(value, value)
                super().send_header(keyword, value)

            def end_headers(self):
                if self._targeted():
                    for k, v in proxy.headers.items():
                        super().send_header(k, v)
                super().end_headers()

        return Handler


SSE = {"s3-kms": {"x-amz-server-side-encryption": "aws:kms"},
       "s3-sse-c": {"x-amz-server-side-encryption-customer-algorithm": "AES256"},
       "obs-kms": {"x-obs-server-side-encryption": "kms"}}


@pytest.fixture
def encrypted(request, s3_server, s3_env, bucket, monkeypatch):
    """(proxy, objects): a small object (obs_io's own GET) and one of 6 MiB (s3transfer's ranged
    GETs) under enc/, stored by a single PUT, seen through an EncryptingProxy."""
    headers = dict(SSE[request.param])
    objects = {"small.bin": os.urandom(3000), "big.bin": os.urandom(6 * MiB)}
    c = s3_server.client()
    for name, body in objects.items():
        c.put_object(Bucket=bucket, Key=f"enc/{name}", Body=body)
    with EncryptingProxy(s3_server.endpoint, bucket, headers) as p:
        for body in objects.values():
            p.disguise(body)
        monkeypatch.setenv("S3_ENDPOINT", p.endpoint)
        yield p, objects


@pytest.mark.parametrize("encrypted", list(SSE), indirect=True)
def test_encrypted_objects_download_by_size(tmp_path, bucket, encrypted):
    proxy, objects = encrypted
    entries = mox.file.list_entries(f"s3://{bucket}/enc")
    assert {e.etag for e in entries} == set(proxy.fake.values())  # the listing shows the fake ETags
    mox.file.copy_parallel(f"s3://{bucket}/enc", str(tmp_path / "d"))
    for name, body in objects.items():
        assert (tmp_path / "d" / name).read_bytes() == body
    mox.file.copy(f"s3://{bucket}/enc/small.bin", str(tmp_path / "one.bin"))  # HEAD-planned too
    assert (tmp_path / "one.bin").read_bytes() == objects["small.bin"]
    # the small object's own GET told: no HEAD; the ranged one asked once, after its MD5 missed
    heads = [r.path for r in settled(proxy) if r.method == "HEAD" and "big.bin" in r.path]
    assert len(heads) == 1


@pytest.mark.parametrize("encrypted", ["s3-kms"], indirect=True)
def test_encrypted_objects_checked_by_the_checksum_the_server_gives(tmp_path, bucket, encrypted):
    proxy, objects = encrypted
    body = objects["small.bin"]
    proxy.headers["x-amz-checksum-sha256"] = base64.b64encode(hashlib.sha256(body).digest()).decode()
    mox.file.copy(f"s3://{bucket}/enc/small.bin", str(tmp_path / "ok.bin"))
    assert (tmp_path / "ok.bin").read_bytes() == body
    proxy.corrupt = lambda method, path: method == "GET" and "small.bin" in path
    with pytest.raises(OSError, match="SHA256 checksum"):
        mox.file.copy(f"s3://{bucket}/enc/small.bin", str(tmp_path / "bad.bin"))
    assert not (tmp_path / "bad.bin").exists()
    del proxy.headers["x-amz-checksum-sha256"]
    proxy.headers["x-amz-checksum-crc32"] = base64.b64encode(b"\0\0\0\0").decode()  # wrong for big
    proxy.corrupt = None
    with pytest.raises(OSError, match="CRC32 checksum"):
        mox.file.copy(f"s3://{bucket}/enc/big.bin", str(tmp_path / "big.bin"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("size", [3000, 6 * MiB], ids=["own-get", "s3transfer"])
def test_corrupted_body_with_plain_md5_etag_still_fails(tmp_path, bucket, proxy, s3_server, size):
    """Same size, other bytes, a plain MD5 ETag and no encryption header: not published."""
    s3_server.client().put_object(Bucket=bucket, Key="p/f.bin", Body=os.urandom(size))
    proxy.corrupt = lambda method, path: method == "GET" and path.split("?")[0].endswith("/p/f.bin")
    with pytest.raises(OSError, match="MD5"):
        mox.file.copy_parallel(f"s3://{bucket}/p", str(tmp_path / "d"))
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


def test_a_whole_read_of_an_object_replaced_meanwhile_is_read_again(bucket, s3_env):
    """read() makes a HEAD, then GETs pinned to its ETag: a writer replacing the object between
    the two must not make the read fail (the pin answers 412) nor mix two versions."""
    from obs_io import remote_file

    url = f"s3://{bucket}/markers/m.txt"
    mox.file.write(url, "old version")
    real_get = remote_file._RangedReader._get
    replaced = []

    def get_after_a_replace(self, start, end):
        if not replaced:
            replaced.append(True)
            mox.file.write(url, "new version, longer")
        return real_get(self, start, end)
    remote_file._RangedReader._get = get_after_a_replace
    try:
        assert mox.file.read(url) == "new version, longer"
    finally:
        remote_file._RangedReader._get = real_get
