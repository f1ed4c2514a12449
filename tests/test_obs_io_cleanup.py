"""Clean restarts and full disks: a rerun of a copy removes what a killed run left (temporary
files of dead writers, multipart uploads of the keys it writes) and nothing of a copy still
running; a full disk is one line naming the file, with nothing partial left; listings,
deletions and copies go past 1,000 keys."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import obs_io as mox
import test_obs_io_transfer as transfer_tests
from obs_io.atomic import STALE_SECONDS, write_atomic

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


_small_parts = transfer_tests._small_parts   # multipart from 5 MiB, autouse
proxy = transfer_tests.proxy                  # a recording proxy in front of the S3 server


def temp_names_of_a_process(folder: Path, names: list[str], wait: bool) -> subprocess.Popen:
    """Another process makes obs_io temporary files for `names` in `folder` (one of them as
    s3transfer names its own), prints READY, then ends, or with wait=True waits on stdin."""
    code = f"""
import os, sys
from obs_io.atomic import temp_name
for i, name in enumerate({names!r}):
    temp = temp_name(os.path.join({str(folder)!r}, name)) + (".0aF3b9C1" if i == 0 else "")
    open(temp, "wb").write(b"partial")
print("READY", flush=True)
if {wait!r}:
    sys.stdin.read()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_rerun_removes_temp_files_of_dead_writers_only(tmp_path, bucket, s3_server):
    client = s3_server.client()
    for name in ("a.bin", "b.bin", "sub/c.bin"):
        client.put_object(Bucket=bucket, Key=f"m/{name}", Body=name.encode() * 100)
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    temp_names_of_a_process(dst, ["a.bin", "b.bin"], wait=False).wait()          # killed run: gone
    temp_names_of_a_process(dst / "sub", ["c.bin"], wait=False).wait()
    alive = temp_names_of_a_process(dst, ["a.bin", "zz.bin"], wait=True)          # a copy still running
    try:
        dead = {p.name for p in dst.rglob(".*obsio*")} - {p.name for p in dst.glob(".*obsio*")}
        old_legacy, new_legacy = dst / ".a.bin.obsio-0123abcd.tmp", dst / ".b.bin.obsio-4567cdef.tmp"
        other_host = dst / ".a.bin.obsio-12-ffffffff-89abcdef.tmp"   # another machine, or a pid reused there
        for path in (old_legacy, new_legacy, other_host):
            path.write_bytes(b"partial")
        ancient = time.time() - STALE_SECONDS - 60
        os.utime(old_legacy, (ancient, ancient))
        (dst / ".hidden-user-file").write_bytes(b"mine")     # not ours: never touched
        (dst / "a.bin.obsio-0123abcd.tmp").write_bytes(b"x")  # not hidden: not a name we make
        before = {p.name for p in dst.glob(".*obsio*")}
        live = {n for n in before if f"obsio-{alive.pid}-" in n}
        assert len(live) == 2 and len(before) == 2 + 2 + 3 and dead
        mox.file.copy_parallel(f"s3://{bucket}/m", str(dst), is_processing=False)
        after = {p.name for p in dst.glob(".*obsio*")}
        assert after == live | {new_legacy.name, other_host.name}
        assert not list((dst / "sub").glob(".*obsio*"))
        assert (dst / ".hidden-user-file").exists() and (dst / "a.bin.obsio-0123abcd.tmp").exists()
        assert (dst / "sub" / "c.bin").read_bytes() == b"sub/c.bin" * 100
    finally:
        alive.stdin.close()
        alive.wait(10)


def test_rerun_aborts_multipart_uploads_of_a_killed_upload(tmp_path, bucket, s3_server):
    """Uploads of the keys being written, begun before the rerun, are aborted; an upload of
    another key under the same prefix, and one elsewhere, are not."""
    client = s3_server.client()
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 * MiB))
    (src / "small.txt").write_bytes(b"s")
    killed = client.create_multipart_upload(Bucket=bucket, Key="up/big.bin")["UploadId"]
    client.upload_part(Bucket=bucket, Key="up/big.bin", UploadId=killed, PartNumber=1, Body=b"p" * (5 * MiB))
    other = client.create_multipart_upload(Bucket=bucket, Key="up/not-ours.bin")["UploadId"]
    elsewhere = client.create_multipart_upload(Bucket=bucket, Key="else/big.bin")["UploadId"]
    time.sleep(1.1)   # Initiated has whole seconds on some servers
    mox.file.copy_parallel(str(src), f"s3://{bucket}/up", is_processing=False)
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert killed not in left and {other, elsewhere} <= left
    assert client.get_object(Bucket=bucket, Key="up/big.bin")["Body"].read() == (src / "big.bin").read_bytes()


def test_stale_upload_sweep_pages_and_keeps_newer_uploads(bucket, s3_server):
    from obs_io.transfer import CopyTask, abort_stale_uploads

    client = s3_server.client()
    ids = [client.create_multipart_upload(Bucket=bucket, Key=f"p/k{i}.bin")["UploadId"] for i in range(3)]
    task = [CopyTask("/x", f"s3://{bucket}/p/k{i}.bin", 6 * MiB) for i in range(3)]
    initiated = client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"]
    # begun after "this run" started: a concurrent copy's, kept (moto dates every upload alike)
    assert abort_stale_uploads(task, initiated - datetime.timedelta(seconds=1)) == 0
    assert abort_stale_uploads(task[:1] + [CopyTask("/x", f"s3://{bucket}/p/k1.bin", 10)],
                               datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)) == 1
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == set(ids[1:])   # k1 is written in one PUT: its uploads are not this copy's


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root may mount one here; anything else skips, saying why)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {r.stderr.strip() or r.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing(tiny_disk, bucket, s3_server):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="f/small.bin", Body=os.urandom(2 * MiB))   # one GET (_get_small)
    client.put_object(Bucket=bucket, Key="g/big.bin", Body=os.urandom(6 * MiB))     # s3transfer, ranged
    for src, name in ((f"s3://{bucket}/f", "small.bin"), (f"s3://{bucket}/g", "big.bin")):
        dst = tiny_disk / "d"
        with pytest.raises(OSError) as info:
            mox.file.copy_parallel(src, str(dst), is_processing=False)
        text = str(info.value)
        assert "\n" not in text and f"no space left on device writing {dst / name}" in text, text
        assert os.listdir(dst) == [], os.listdir(dst)
    with pytest.raises(OSError, match="No space left"):     # the atomic writer itself
        write_atomic(str(tiny_disk / "state.json"), b"x" * (2 * MiB), durable=True)
    assert os.listdir(tiny_disk) == ["d"]
    r = subprocess.run([sys.executable, "-m", "obs_io", "cp", f"s3://{bucket}/f", str(tiny_disk / "cli")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, **s3_server.env(), "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no space left on device writing" in r.stderr and os.listdir(tiny_disk / "cli") == []


def test_listing_removal_and_copy_go_past_1000_keys(tmp_path, bucket, s3_server, proxy):
    """1,001 keys: two listing pages, two DeleteObjects (at most 1,000 keys each), a copy plan
    from both pages, one GET per object and no HEAD: obs_io's requests counted at the proxy
    (the set-up PUTs go to the server directly)."""
    client = s3_server.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"many/d{i % 3}/k{i:04d}", Body=b"%d" % i),
                      range(1001)))
    url = f"s3://{bucket}/many"
    names = mox.file.list_directory(url, recursive=True)
    assert len(names) == 1001 + 3 and "d1/k1000" in names
    assert _requests(proxy, {"LIST": 2})
    proxy.records.clear()
    mox.file.copy_parallel(url, str(tmp_path / "down"), threads=16)
    got = sorted(p for p in (tmp_path / "down").rglob("k*"))
    assert len(got) == 1001 and (tmp_path / "down" / "d1" / "k1000").read_bytes() == b"1000"
    assert _requests(proxy, {"LIST": 2, "GET": 1001})
    proxy.records.clear()
    mox.file.remove(url, recursive=True)
    assert _requests(proxy, {"HEAD": 2, "LIST": 2, "DELETE-MANY": 2})
    assert not mox.file.exists(url)


def _requests(proxy, expected: dict[str, int]) -> bool:
    """True when the proxy's records, by kind, are `expected`: waits (up to 60 s) until as many
    have arrived, since the proxy records a request after answering it."""
    deadline = time.monotonic() + 60
    while len(proxy.records) < sum(expected.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = _kinds(list(proxy.records))
    assert got == expected, got
    return True


def _kinds(records: list) -> dict[str, int]:
    """Requests by kind: LIST (GET with a prefix), DELETE-MANY (POST ?delete), else the method."""
    out: dict[str, int] = {}
    for r in records:
        kind = ("LIST" if r.method == "GET" and "prefix=" in r.path
                else "DELETE-MANY" if r.method == "POST" and "?delete" in r.path else r.method)
        out[kind] = out.get(kind, 0) + 1
    return out
