"""Uploading a file while it is written (obs_io.transfer.GrowingUpload) and the engine's use of
it (reshard.run with Request.upload_to): the parts go up as the bytes are written, the object exists only
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
from reshard import Subscriber

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
    assert done.wait(60)
    deadline = time.monotonic() + 60     # the 4 whole 5 MiB parts of 24 MiB can go before finish()
    while len(_parts(proxy)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = len(_parts(proxy))          # uploaded before the writer said it was complete
    assert not obs_io.file.exists(url)   # nothing under the key yet
    upload.finish(24 * MiB)
    assert before >= 3, before           # 5 MiB parts of 24 MiB: most went while writing
    assert obs_io.file.read(url, binary=True) == b"".join(blocks)


def test_the_first_part_leaves_once_written_whatever_the_multipart_threshold(bucket, proxy, tmp_path):
    """A file still growing has no size yet: s3transfer would read it up to the multipart
    threshold (64 MiB by default) before its first request, so the first 64 MiB of every file
    waited. The first part goes as soon as it is written: here with 12 MiB of a file whose
    threshold is 64 MiB, before the file is complete."""
    obs_io.configure(multipart_threshold=64 * MiB)
    path = str(tmp_path / "early.bin")
    head, tail = os.urandom(12 * MiB), os.urandom(3 * MiB)
    with open(path, "wb") as f:
        f.write(head)
    url = f"s3://{bucket}/up/early.bin"
    upload = GrowingUpload(path, url, size_hint=100 * MiB)
    try:
        deadline = time.monotonic() + 30
        while not _parts(proxy) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _parts(proxy)             # before the file is complete, below the threshold
    except BaseException:
        upload.abort()
        raise
    with open(path, "ab") as f:
        f.write(tail)
    upload.finish(15 * MiB)
    assert obs_io.file.read(url, binary=True) == head + tail


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


class LeftToCaller(Subscriber):
    """Appends to `told` the name of each rank the engine did not upload itself."""

    def __init__(self, told: list):
        self.told = told

    def on_rank_done(self, rank, uploaded: bool) -> None:
        if not uploaded:
            self.told.append(rank.path)


def test_the_engine_uploads_each_rank_while_writing_it(models, bucket, proxy, tmp_path):
    """complete -> 8 through reshard.run (Request.upload_to): every rank is on the store, equal to its
    local file and to MindSpore's conversion; the subscriber hears only of the rank left to the caller
    (upload_skip), which is not uploaded by the engine."""
    from reshard import ReshardConfig, Request, load_strategy, make_plan
    from reshard.run import run
    plan = make_plan(models["complete"], dst_strategy=load_strategy(models["s8"]))
    out, remote = tmp_path / "out", f"s3://{bucket}/converted"
    told = []
    request = Request(plan.source, None, plan.dst_strategy, str(out), upload_to=remote,
                      upload_skip=frozenset(["rank_5/checkpoint_5.ckpt"]))
    report = run(request, ReshardConfig(process_num=2),
                 LeftToCaller(told), plan=plan)
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
    """obs_io.streams.download_in_order: 40 parts through a window of 3, written in order,
    every GET ranged and pinned to the ETag (a replaced object fails, never splices)."""
    from obs_io.streams import download_in_order
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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """complete -> 8 (dp2 mp2 pp2) without optimizer sharding: ranks 2, 3, 6, 7 hold the slices
    of ranks 0, 1, 4, 5 (data-parallel replicas)."""
    return synth.world_8_4(tmp_path_factory.mktemp("replicas"), vocab=64, hidden=32, ffn=64)


def test_replicas_are_written_and_uploaded_once_then_copied(world, bucket, proxy, tmp_path):
    """Each distinct file is converted, written, summed and uploaded once; a data-parallel
    replica is another name of it locally (a hard link) and the store's own copy of its object
    (no body over the link); every rank, on disk and on the store, is MindSpore's, and the
    report lists each with its own checksum. The set's manifest then verifies all 8."""
    from reshard import ReshardConfig, Request, integrity, load_strategy, make_plan
    from reshard.cli import main
    from reshard.run import run
    plan = make_plan(world["full"], dst_strategy=load_strategy(world["s8"]))
    assert plan.same_as == {2: 0, 3: 1, 6: 4, 7: 5}
    out, remote = tmp_path / "out", f"s3://{bucket}/replicas"
    told = []
    report = run(Request(plan.source, None, plan.dst_strategy, str(out), upload_to=remote),
                 ReshardConfig(process_num=2),
                 LeftToCaller(told), plan=plan)
    assert report.ranks_written == list(range(8)) and told == []
    synth.assert_same_checkpoint_dirs(world["ms8"], str(out))
    back = tmp_path / "back"
    obs_io.file.copy_parallel(remote, str(back))
    synth.assert_same_checkpoint_dirs(world["ms8"], str(back))
    name = lambda r: f"rank_{r}/checkpoint_{r}.ckpt"  # noqa: E731
    puts = [r for r in proxy.records if r.method == "PUT" and r.status < 300]
    copied = sorted(r.path.split("?")[0].split("/replicas/")[1] for r in puts if "x-amz-copy-source" in r.headers)
    assert copied == [name(r) for r in (2, 3, 6, 7)]
    sent = sum(int(r.headers.get("content-length", 0)) for r in puts if "x-amz-copy-source" not in r.headers)
    assert sent == sum((out / name(r)).stat().st_size for r in (0, 1, 4, 5))
    for r, first in plan.same_as.items():
        assert os.path.samefile(out / name(r), out / name(first))
    for r in range(8):
        got = integrity.file_checksum(str(out / name(r)))
        assert report.checksums[name(r)] == (got.size, got.crc32)
    integrity.write(remote, integrity.SetManifest(integrity.records(report.checksums)))
    assert main(["--verify", remote]) == 0
    obs_io.file.write(f"{remote}/{name(6)}", b"not the same", binary=True)   # one copy damaged
    assert main(["--verify", remote]) == 2


def test_an_upload_failing_behind_the_next_rank_stops_the_conversion(world, bucket, proxy, tmp_path):
    """In the pool a rank's upload ends behind the worker's next rank: a failure there (the
    store refuses rank 4's object) still ends the conversion with one error naming the rank and
    URL, and no object is left under that key."""
    from reshard import ReshardConfig, Request, load_strategy, make_plan
    from reshard.errors import ReshardError
    from reshard.run import run
    proxy.rules.append(lambda method, path: (403, "AccessDenied")
                       if method in ("PUT", "POST") and "/refused/rank_4/" in path else None)
    plan = make_plan(world["full"], dst_strategy=load_strategy(world["s8"]))
    remote = f"s3://{bucket}/refused"
    with pytest.raises(ReshardError, match=r"rank 4: uploading s3://.*/refused/rank_4/checkpoint_4\.ckpt"):
        run(Request(plan.source, None, plan.dst_strategy, str(tmp_path / "out"), upload_to=remote),
            ReshardConfig(process_num=2), plan=plan)
    assert not obs_io.file.exists(f"{remote}/rank_4/checkpoint_4.ckpt")
