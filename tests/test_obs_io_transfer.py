"""Transfers against a real S3 server: multipart, every direction, listing pagination, ranged
reads, integrity checks, path safety and injected faults (through tests/faultproxy.py)."""
from __future__ import annotations

import filecmp
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import FaultProxy

import obs_io as mox
from obs_io.fs import S3FS

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _small_parts():
    """Multipart from 5 MiB (S3's minimum part), so a 12 MiB file has 3 parts and tests stay fast."""
    mox.reset_config()
    mox.configure(multipart_threshold=5 * MiB, min_part_size=5 * MiB)
    yield
    mox.reset_config()


@pytest.fixture
def proxy(s3_server, s3_env, monkeypatch):
    with FaultProxy(s3_server.endpoint) as p:
        monkeypatch.setenv("S3_ENDPOINT", p.endpoint)
        yield p


def make_local_tree(base, big: int = 12 * MiB) -> str:
    rng = __import__("random").Random(1)
    os.makedirs(base / "sub" / "deep")
    (base / "big.bin").write_bytes(rng.randbytes(big))
    for i in range(12):
        (base / ("sub" if i % 2 else "sub/deep") / f"f{i}.dat").write_bytes(rng.randbytes(1000 + 997 * i))
    (base / "empty.txt").write_bytes(b"")
    return str(base)


def same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)

    def ok(c) -> bool:
        if c.left_only or c.right_only or c.funny_files:
            return False
        if filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)[1:] != ([], []):
            return False
        return all(ok(s) for s in c.subdirs.values())
    return ok(cmp)


def test_copy_parallel_up_remote_remote_down(tmp_path, bucket, s3_server):
    src = make_local_tree(tmp_path / "src")
    mox.file.copy_parallel(src, f"obs://{bucket}/up", threads=8)
    head = s3_server.client().head_object(Bucket=bucket, Key="up/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # multipart, 3 parts of 5 MiB
    assert mox.file.get_size(f"obs://{bucket}/up", recursive=True) == sum(
        os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(src) for f in fs)
    mox.file.copy_parallel(f"obs://{bucket}/up", f"s3://{bucket}/copied", threads=8)
    mox.file.copy_parallel(f"s3://{bucket}/copied", str(tmp_path / "down"), threads=8)
    assert same_tree(src, str(tmp_path / "down"))
    assert not [n for n in os.listdir(tmp_path / "down") if n.endswith(".tmp")]


def test_copy_single_file_every_direction(tmp_path, bucket):
    src = make_local_tree(tmp_path / "src")
    big = os.path.join(src, "big.bin")
    mox.file.copy(big, f"obs://{bucket}/one/big.bin")
    mox.file.copy(f"obs://{bucket}/one/big.bin", f"obs://{bucket}/two/big.bin")  # multipart copy
    mox.file.copy(f"obs://{bucket}/two/big.bin", str(tmp_path / "back" / "big.bin"))
    assert filecmp.cmp(big, tmp_path / "back" / "big.bin", shallow=False)
    mox.file.copy(big, str(tmp_path / "local" / "big.bin"))
    assert filecmp.cmp(big, tmp_path / "local" / "big.bin", shallow=False)
    mox.file.rename(str(tmp_path / "local" / "big.bin"), f"obs://{bucket}/renamed.bin")
    assert not os.path.exists(tmp_path / "local" / "big.bin")
    mox.file.rename(f"obs://{bucket}/renamed.bin", str(tmp_path / "renamed.bin"))
    assert not mox.file.exists(f"obs://{bucket}/renamed.bin")
    assert filecmp.cmp(big, tmp_path / "renamed.bin", shallow=False)
    with pytest.raises(IsADirectoryError, match="copy_parallel"):
        mox.file.copy(f"obs://{bucket}/one", str(tmp_path / "x"))


def test_copy_parallel_file_list(tmp_path, bucket):
    src = make_local_tree(tmp_path / "src")
    mox.file.copy_parallel(src, f"obs://{bucket}/t", file_list=["sub/f1.dat", "big.bin"])
    assert mox.file.list_directory(f"obs://{bucket}/t", recursive=True) == ["big.bin", "sub", "sub/f1.dat"]
    mox.file.copy_parallel(f"obs://{bucket}/t", str(tmp_path / "d"), file_list=["sub/f1.dat"])
    assert os.listdir(tmp_path / "d" / "sub") == ["f1.dat"]
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        mox.file.copy_parallel(src, f"obs://{bucket}/t2", file_list=["missing.dat"])
    with pytest.raises(ValueError, match=r"\.\./x"):
        mox.file.copy_parallel(f"obs://{bucket}/t", str(tmp_path / "e"), file_list=["../x"])


@pytest.mark.parametrize("v1", [False, True], ids=["ListObjectsV2", "ListObjectsV1"])
def test_listing_and_glob_paginate_past_1000_keys(tmp_path, bucket, proxy, monkeypatch, v1):
    client = S3FS.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"many/k{i:04d}.txt", Body=b"x"),
                      range(1005)))
    client.put_object(Bucket=bucket, Key="many/sub/inner.txt", Body=b"yy")
    if v1:
        monkeypatch.setenv("S3_LIST_OBJECTS_V1", "1")
    proxy.records.clear()
    names = mox.file.list_directory(f"obs://{bucket}/many")
    assert len(names) == 1006 and names[-1] == "sub"
    lists = [r.path for r in proxy.records if r.method == "GET" and "prefix=" in r.path]
    assert len(lists) >= 2, [(r.method, r.path, r.status) for r in proxy.records][:20]  # more than one page
    assert all(("list-type=2" in p) != v1 for p in lists)
    assert any(("continuation-token=" if not v1 else "marker=") in p for p in lists[1:])
    assert len(mox.file.list_directory(f"obs://{bucket}/many", recursive=True)) == 1007
    assert len(mox.file.glob(f"obs://{bucket}/many/k*.txt")) == 1005
    assert mox.file.get_size(f"obs://{bucket}/many", recursive=True) == 1007
    proxy.records.clear()
    mox.file.remove(f"obs://{bucket}/many", recursive=True)  # > 1000 keys: two DeleteObjects
    assert not mox.file.exists(f"obs://{bucket}/many")
    deletes = [r for r in proxy.records if r.method == "POST" and "delete" in r.path]
    assert len(deletes) == 2
    # OBS wants Content-MD5 on DeleteObjects and rejects botocore's CRC32 headers
    assert all("content-md5" in r.headers and not any(h.startswith("x-amz-checksum") for h in r.headers)
               for r in deletes)


def test_ranged_read_fetches_little(bucket, proxy):
    data = os.urandom(20 * MiB)
    mox.file.write(f"obs://{bucket}/big.bin", data, binary=True)
    proxy.records.clear()
    with mox.file.File(f"obs://{bucket}/big.bin", "rb") as f:
        f.seek(15 * MiB)
        assert f.read(1024) == data[15 * MiB:15 * MiB + 1024]
        f.seek(100)
        assert f.read(10) == data[100:110]
    gets = [r for r in proxy.records if r.method == "GET"]
    assert gets and all(r.range for r in gets)
    assert sum(r.body_bytes for r in gets) <= 1 * MiB  # not the 20 MiB object


def test_download_never_escapes_destination(tmp_path, bucket, s3_server):
    c = s3_server.client()
    c.put_object(Bucket=bucket, Key="m/ok.txt", Body=b"ok")
    c.put_object(Bucket=bucket, Key="m/a/../../../escaped.txt", Body=b"evil")
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="m/")["Contents"]]
    assert "m/a/../../../escaped.txt" in keys  # the server kept the hostile key as is
    dst = tmp_path / "inside" / "dst"
    with pytest.raises(ValueError, match=r"m/a/\.\./\.\./\.\./escaped\.txt"):
        mox.file.copy_parallel(f"obs://{bucket}/m", str(dst))
    assert not dst.exists()  # nothing written at all, not even ok.txt
    assert not list(tmp_path.rglob("escaped.txt"))


def test_download_rejects_leading_slash_key(tmp_path, bucket, s3_server):
    c = s3_server.client()
    c.put_object(Bucket=bucket, Key="/abs.txt", Body=b"evil")
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["/abs.txt"]
    with pytest.raises(ValueError, match="abs.txt"):
        mox.file.copy_parallel(f"obs://{bucket}/", str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


def test_corrupted_download_is_not_published(tmp_path, bucket, proxy):
    mox.file.write(f"obs://{bucket}/d/a.bin", os.urandom(4096), binary=True)
    mox.file.write(f"obs://{bucket}/d/b.bin", os.urandom(4096), binary=True)
    proxy.corrupt = lambda method, path: method == "GET" and path.split("?")[0].endswith("/d/b.bin")
    with pytest.raises(OSError, match="MD5"):
        mox.file.copy_parallel(f"obs://{bucket}/d", str(tmp_path / "dst"))
    assert not (tmp_path / "dst" / "b.bin").exists()
    assert not [p for p in (tmp_path / "dst").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("size,failing", [(12 * MiB, "partNumber=2"), (1000, "")],
                         ids=["multipart", "single-put"])
def test_failed_upload_leaves_no_object(tmp_path, bucket, proxy, s3_server, size, failing):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    proxy.rules.append(lambda method, p: (403, "AccessDenied")
                       if method == "PUT" and "/up/f.bin" in p and failing in p else None)
    with pytest.raises(PermissionError, match="access denied"):
        mox.file.copy(str(path), f"obs://{bucket}/up/f.bin")
    c = s3_server.client()
    assert c.list_objects_v2(Bucket=bucket, Prefix="up/").get("KeyCount", 0) == 0
    assert not c.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the MPU was aborted


def test_injected_faults_transfers_still_byte_identical(tmp_path, bucket, proxy):
    src = make_local_tree(tmp_path / "src")
    proxy.seed, proxy.slowdown, proxy.drop = 7, 0.2, 0.15
    mox.file.copy_parallel(src, f"obs://{bucket}/f", threads=8)
    mox.file.copy_parallel(f"obs://{bucket}/f", str(tmp_path / "down"), threads=8)
    assert same_tree(src, str(tmp_path / "down"))
    faults = proxy.faults()
    assert faults[503] > 0 and faults[0] > 0  # both kinds were really injected


def test_bodies_breaking_off_mid_stream_are_fetched_again(tmp_path, bucket, proxy):
    """Every object's first GET body stops half-way (small objects take obs_io's own GET path,
    the big one s3transfer's ranged path): each is fetched again, and the copies are exact."""
    src = make_local_tree(tmp_path / "src")
    big = os.urandom(70 * MiB)  # above the multipart threshold: ranged GETs through s3transfer
    with open(os.path.join(src, "big.bin"), "wb") as f:
        f.write(big)
    mox.file.copy_parallel(src, f"obs://{bucket}/t", threads=8)
    broken: set = set()

    def first_get_of_each(method, path):
        if method != "GET" or "/t/" not in path or path in broken:
            return False
        broken.add(path)
        return True

    proxy.truncate = first_get_of_each
    mox.file.copy_parallel(f"obs://{bucket}/t", str(tmp_path / "down"), threads=8)
    assert same_tree(src, str(tmp_path / "down"))
    gets = [r for r in proxy.records if r.method == "GET" and "/t/" in r.path]
    assert len(broken) >= 5 and len(gets) >= 2 * len(broken)  # each broken body was asked for again


def many_small_files(base, n: int = 150) -> str:
    rng = __import__("random").Random(2)
    for i in range(n):
        path = base / f"d{i % 7}" / f"s{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(0, 3000)))
    (base / "big.bin").write_bytes(rng.randbytes(6 * MiB))  # multipart: stays in this process
    return str(base)


def test_worker_count_and_partition(monkeypatch):
    from obs_io.transfer import CopyTask
    from obs_io.workers import partition, worker_count

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert worker_count(True, 16, 1000) == 4          # one per four threads
    assert worker_count(True, 64, 1000) == 8          # at most the CPUs
    assert worker_count(True, 16, 100) == 1           # too few files to repay an interpreter
    assert worker_count(False, 16, 1000) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert worker_count(True, 16, 1000) == 1
    rng = __import__("random").Random(3)
    tasks = [CopyTask(f"s{i}", f"d{i}", rng.randint(0, 4 * MiB)) for i in range(300)]
    groups = partition(tasks, 3)
    assert sorted(t.src for g in groups for t in g) == sorted(t.src for t in tasks)
    costs = [sum(t.size + 512 * 1024 for t in g) for g in groups]
    assert len(groups) == 3 and max(costs) - min(costs) <= 4 * MiB + 512 * 1024
    assert len(partition(tasks[:2], 3)) == 2          # no empty groups


def test_is_processing_spreads_small_files_over_worker_processes(tmp_path, bucket, monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    src = many_small_files(tmp_path / "src")
    caplog.set_level("DEBUG", logger="obs_io")
    mox.file.copy_parallel(src, f"obs://{bucket}/many", threads=8)
    mox.file.copy_parallel(f"obs://{bucket}/many", str(tmp_path / "down"), threads=8)
    assert same_tree(src, str(tmp_path / "down"))
    assert caplog.text.count("150 small files over 2 worker processes") == 2
    caplog.clear()
    mox.file.copy_parallel(f"obs://{bucket}/many", str(tmp_path / "down2"), threads=8, is_processing=False)
    assert same_tree(src, str(tmp_path / "down2")) and "worker processes" not in caplog.text


def test_a_failing_worker_stops_the_batch_and_leaves_no_temp_files(tmp_path, bucket, proxy, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    src = many_small_files(tmp_path / "src")
    mox.file.copy_parallel(src, f"obs://{bucket}/w", threads=8)
    proxy.rules.append(lambda method, p: (403, "AccessDenied") if method == "GET" and "s0077" in p else None)
    with pytest.raises(PermissionError) as info:
        mox.file.copy_parallel(f"obs://{bucket}/w", str(tmp_path / "down"), threads=8)
    assert f"obs://{bucket}/w/d0/s0077.bin" in str(info.value) and "\n" not in str(info.value)
    left = [p for p in (tmp_path / "down").rglob("*") if p.is_file()]
    assert not [p for p in left if ".obsio-" in p.name]
    assert not (tmp_path / "down" / "d0" / "s0077.bin").exists()


def test_bad_input(tmp_path, bucket):
    for url in ("obs://", "s3://", "obs:///key", "obs://bad bucket/x"):
        with pytest.raises(ValueError) as info:
            mox.file.exists(url)
        assert url in str(info.value)
        with pytest.raises(ValueError):
            mox.file.copy_parallel(str(tmp_path), url)
    with pytest.raises(FileNotFoundError, match="no-such-bucket-1"):
        mox.file.list_directory("obs://no-such-bucket-1/x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-1"):
        mox.file.read("obs://no-such-bucket-1/x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-1"):
        mox.file.write("obs://no-such-bucket-1/x", "a")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-1"):
        mox.file.copy(str(tmp_path / "f.txt"), "obs://no-such-bucket-1/x")
    assert not mox.file.exists("obs://no-such-bucket-1/x")
    with pytest.raises(FileNotFoundError, match=f"obs://{bucket}/missing/key"):
        mox.file.copy(f"obs://{bucket}/missing/key", str(tmp_path / "y"))
    assert not (tmp_path / "y").exists()


def test_md5_of_download_matches(tmp_path, bucket):
    data = os.urandom(3000)
    mox.file.write(f"obs://{bucket}/x.bin", data, binary=True)
    mox.file.copy(f"obs://{bucket}/x.bin", str(tmp_path / "x.bin"))
    assert hashlib.md5((tmp_path / "x.bin").read_bytes()).digest() == hashlib.md5(data).digest()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # self-signed on purpose
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_upload_body_signed_over_http_only(tmp_path, bucket, s3_server, s3_env, monkeypatch, tls):
    """Over plain http the SHA256 of each body is in the signature (the only end-to-end check of
    the bytes OBS accepts); over TLS it is not computed (UNSIGNED-PAYLOAD), and uploads still
    arrive intact."""
    small, big = os.urandom(3000), os.urandom(11 * MiB)  # one PUT, and 3 parts (5+5+1 MiB)
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    with FaultProxy(s3_server.endpoint, tls=tls) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("S3_VERIFY_SSL", "0")  # the proxy's certificate is self-signed
        assert proxy.endpoint.startswith("https://" if tls else "http://")
        mox.file.copy_parallel(str(tmp_path), f"obs://{bucket}/sig", threads=4)
        puts = [r for r in proxy.records if r.method == "PUT"]
        parts = [r.headers["x-amz-content-sha256"] for r in puts if "/sig/big.bin?" in r.path]
        whole = [r.headers["x-amz-content-sha256"] for r in puts if r.path.endswith("/sig/small.bin")]
        assert len(parts) == 3 and len(whole) == 1, [r.path for r in puts]
        if tls:
            assert set(parts + whole) == {"UNSIGNED-PAYLOAD"}
        else:
            assert whole == [hashlib.sha256(small).hexdigest()]
            part_bodies = [big[:5 * MiB], big[5 * MiB:10 * MiB], big[10 * MiB:]]
            assert sorted(parts) == sorted(hashlib.sha256(b).hexdigest() for b in part_bodies)
        mox.file.copy_parallel(f"obs://{bucket}/sig", str(tmp_path / "back"))
    assert (tmp_path / "back" / "small.bin").read_bytes() == small
    assert (tmp_path / "back" / "big.bin").read_bytes() == big


def test_sign_payload_can_be_forced(s3_env, monkeypatch):
    from obs_io.client import signs_payload
    monkeypatch.setenv("S3_ENDPOINT", "https://obs.cn-north-4.myhuaweicloud.com")
    assert not signs_payload(mox.current_config())
    monkeypatch.setenv("S3_SIGN_PAYLOAD", "1")
    assert signs_payload(mox.current_config())
    monkeypatch.setenv("S3_ENDPOINT", "http://10.0.0.5:9000")
    mox.configure(sign_payload=False)
    assert not signs_payload(mox.current_config())


def test_a_remote_copy_is_the_stores_own(bucket, proxy):
    """Object to object is copied by the store: CopyObject below the multipart threshold,
    UploadPartCopy parts above it; no body crosses the client's link either way."""
    big, small = os.urandom(12 * MiB + 5), os.urandom(3 * MiB)
    mox.file.write(f"s3://{bucket}/cp/big.bin", big, binary=True)
    mox.file.write(f"s3://{bucket}/cp/small.bin", small, binary=True)
    proxy.records.clear()
    mox.file.copy(f"s3://{bucket}/cp/big.bin", f"s3://{bucket}/cp2/big.bin")
    mox.file.copy(f"s3://{bucket}/cp/small.bin", f"s3://{bucket}/cp2/small.bin")
    puts = [r for r in proxy.records if r.method == "PUT"]
    assert all("x-amz-copy-source" in r.headers for r in puts)
    parts = [r for r in puts if "/cp2/big.bin" in r.path]
    assert len(parts) == 3 and all("partNumber=" in r.path for r in parts)       # UploadPartCopy
    assert [r for r in puts if "/cp2/small.bin" in r.path and "partNumber=" not in r.path]  # CopyObject
    assert sum(int(r.headers.get("content-length", 0)) for r in puts) == 0
    assert sum(r.body_bytes for r in proxy.records if r.method == "GET") < 64 * 1024   # nothing read back
    assert mox.file.read(f"s3://{bucket}/cp2/big.bin", binary=True) == big
    assert mox.file.read(f"s3://{bucket}/cp2/small.bin", binary=True) == small
