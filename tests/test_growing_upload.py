"""Uploading a file while it is written (obs_io.transfer.GrowingUpload) and the engine's use of
it (execute(upload_to=...)): the parts go up as the bytes are written, the object exists only
once complete, and an abandoned file leaves no object and no multipart upload behind. Requests
are counted at a proxy in front of the S3 server."""
from __future__ import annotations

import os
import threading
import time

import pytest

import obs_io
import synth
from obs_io.transfer import GrowingUpload

MiB = 1 << 20


# 5 MiB parts (autouse) and the recording proxy, as the transfer tests have them
from test_obs_io_transfer import _small_parts, proxy  # noqa: E402,F401


def _writer(path: str, blocks: list[bytes], pause: float, done: threading.Event) -> threading.Thread:
    def run():
        with open(path, "ab") as f:
            for b in blocks:
                f.write(b)
                f.flush()
                time.sleep(pause)
        done.set()
    return threading.Thread(target=run, daemon=True)


def _parts(proxy) -> list:
    return [r for r in proxy.records if r.method == "PUT" and "partNumber=" in r.path and r.status < 300]


def test_parts_go_up_while_the_file_is_written(bucket, proxy, tmp_path):
    path = str(tmp_path / "growing.bin")
    blocks = [os.urandom(MiB) for _ in range(24)]
    open(path, "wb").close()
    url = f"s3://{bucket}/up/growing.bin"
    upload = GrowingUpload(path, url, size_hint=24 * MiB)
    done = threading.Event()
    _writer(path, blocks, 0.05, done).start()
    done.wait(30)
    time.sleep(0.5)
    before = len(_parts(proxy))          # uploaded before the writer said it was complete
    assert not obs_io.file.exists(url)   # nothing under the key yet
    upload.finish(24 * MiB)
    assert before >= 3, before           # 5 MiB parts of 24 MiB: most went while writing
    assert obs_io.file.read(url, binary=True) == b"".join(blocks)


def test_an_abandoned_file_leaves_no_object_and_no_upload(bucket, proxy, tmp_path, s3_server):
    path = str(tmp_path / "abandoned.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(12 * MiB))
    url = f"s3://{bucket}/up/abandoned.bin"
    upload = GrowingUpload(path, url, size_hint=40 * MiB)
    deadline = time.monotonic() + 30
    while not _parts(proxy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _parts(proxy)                 # a multipart upload was under way
    upload.abort()
    assert not obs_io.file.exists(url)
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_file_shorter_than_finish_says_is_not_published(bucket, proxy, tmp_path):
    path = str(tmp_path / "short.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(2 * MiB))
    url = f"s3://{bucket}/up/short.bin"
    upload = GrowingUpload(path, url, size_hint=MiB)
    with pytest.raises(OSError, match="ends at"):
        upload.finish(3 * MiB)
    assert not obs_io.file.exists(url)


def test_the_engine_uploads_each_rank_while_writing_it(models, bucket, proxy, tmp_path):
    """complete -> 8 through execute(upload_to=...): every rank is on the store, equal to its
    local file and to MindSpore's conversion; on_file hears only of the rank left to the caller
    (upload_skip), which is not uploaded by the engine."""
    from reshard import load_strategy, make_plan
    from reshard.api import execute
    plan = make_plan(models["complete"], dst_strategy=load_strategy(models["s8"]))
    out, remote = tmp_path / "out", f"s3://{bucket}/converted"
    told = []
    report = execute(plan, os.path.dirname(models["complete"]), str(out), process_num=2,
                     upload_to=remote, upload_skip=["rank_5/checkpoint_5.ckpt"],
                     on_file=lambda name, checksum: told.append(name))
    assert report.ranks_written == list(range(8))
    synth.assert_same_checkpoint_dirs(str(out), models["ref8"])
    assert told == ["rank_5/checkpoint_5.ckpt"]
    for r in range(8):
        name = f"rank_{r}/checkpoint_{r}.ckpt"
        if r == 5:
            assert not obs_io.file.exists(f"{remote}/{name}")
            continue
        assert obs_io.file.read(f"{remote}/{name}", binary=True) == (out / name).read_bytes()


def test_a_download_in_order_has_many_more_parts_than_its_window(bucket, proxy, tmp_path):
    """obs_io.transfer.download_in_order: 40 parts through a window of 3, written in order,
    every GET ranged and pinned to the ETag (a replaced object fails, never splices)."""
    from obs_io.transfer import download_in_order
    blob = os.urandom(40 * 256 * 1024 + 123)
    url = f"s3://{bucket}/in_order/blob.bin"
    obs_io.file.write(url, blob, binary=True)
    etag = next(e.etag for e in obs_io.file.list_entries(f"s3://{bucket}/in_order") if e.name == "blob.bin")
    assert etag
    got, offsets = bytearray(), []

    def write(data: bytes) -> None:
        offsets.append(len(got))
        got.extend(data)
    download_in_order(url, write, len(blob), etag, part=256 * 1024, threads=4, chunks=3)
    assert bytes(got) == blob and len(offsets) == 41
    gets = [r for r in proxy.records if r.method == "GET" and "blob.bin" in r.path]
    assert len(gets) == 41 and all(r.range for r in gets)
    with pytest.raises(OSError):
        download_in_order(url, write, len(blob), '"0123456789abcdef0123456789abcdef"', part=256 * 1024)
