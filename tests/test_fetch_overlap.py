"""Download and conversion overlap: a fetched source file is read while it downloads
(reshard.fetch). A slow link (bench/linkproxy.py in front of the S3 server) makes the download
last seconds; a destination rank whose bytes lie in the first part of the file is written
before the download ends, and the result is MindSpore's, bit for bit. A download that fails,
or a fetched .ckpt whose CRC trailer does not match, stops the conversion with one line naming
the URL, and nothing made from that file stays."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import mindspore as ms
import pytest

import synth
from faultproxy import FaultProxy
from reshard import execute as execute_mod
from reshard import fetch
from reshard.formats import FormatError
from reshard.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.linkproxy import MB, LinkProxy  # noqa: E402
from conftest import errors_only


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An inference checkpoint (weights in file order: embedding, layer 0, layer 1, norm,
    lm_head; about 7 MB) and MindSpore's complete -> 8 (dp2 mp2 pp2) of it; the same saved with
    MindSpore's CRC trailer."""
    root = tmp_path_factory.mktemp("fetch_overlap")
    d = synth.world_8_4(root, vocab=4096, hidden=256, ffn=512, optimizer=False)
    d["crc"] = os.path.join(root, "crc", "full.ckpt")
    os.makedirs(os.path.dirname(d["crc"]))
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in d["params"].items()], d["crc"],
                       crc_check=True)
    return d


def _upload(s3_server, local: str, bucket: str, key: str, data: bytes | None = None) -> str:
    client = s3_server.client()
    if data is None:
        client.upload_file(local, bucket, key)
    else:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_ranks_convert_while_the_source_downloads(data, s3_server, bucket, monkeypatch, tmp_path, capsys):
    """complete -> 8 with the file fetched (--source_mode fetch) over a 1 MB/s link: the stage-0
    ranks (embedding and layer 0: the first half of the file) are written before the download
    ends; the ranks start in the order their bytes arrive; MindSpore's result, bit for bit."""
    url = _upload(s3_server, data["full"], bucket, "src/full.ckpt")
    size = os.path.getsize(data["full"])
    monkeypatch.setenv("S3_READ_PART_MIB", "1")     # every ranged read 1 MiB: the file grows
    from reshard import cli
    # 2 x 1 MiB at a time (ReshardConfig.fetch_threads, in the config the command builds)
    monkeypatch.setattr(cli, "ReshardConfig", functools.partial(cli.ReshardConfig, fetch_threads=2))
    with LinkProxy(s3_server.endpoint, down_bps=1 * MB) as link:
        monkeypatch.setenv("S3_ENDPOINT", link.endpoint)
        out, work = tmp_path / "out", tmp_path / "work"
        assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint", str(out),
                     "--source_mode", "fetch", "--process_num", "1", "--work_dir", str(work)]) == 0
    synth.assert_same_checkpoint_dirs(str(out), data["ms8"])
    lines = [m.removeprefix("INFO ") for m in capsys.readouterr().err.splitlines()]
    done = lines.index(f"downloaded {url}")
    at = {int(m.split()[1].rstrip(":")): i for i, m in enumerate(lines) if m.startswith("rank ") and ": wrote " in m}
    written = sorted(at, key=at.get)
    early = [r for r in written if at[r] < done]
    assert sorted(written) == list(range(8))
    assert set(early) >= {0, 1, 2, 3}, (early, lines)      # stage 0, before the last byte
    assert set(written[:4]) == {0, 1, 2, 3}                 # started first: their bytes come first
    assert size > 6 * MB
    assert not (work / ".transform-checkpoint-stage").exists()   # the stage is gone after success
    manifests = [f for f in _files(out) if f.startswith(".reshard")]
    assert len(manifests) == 8
    for m in manifests:                                     # settled: a rerun may reuse them
        assert "unverified" not in (out / m).read_text()


def test_a_rank_read_while_downloading_is_reused_only_once_checked(data, tmp_path, s3_server, bucket,
                                                                    monkeypatch):
    """A record written from a file still downloading says so; is_done refuses it (a run killed
    before the file was checked whole converts that rank again), settle_manifests accepts it."""
    url = _upload(s3_server, data["full"], bucket, "src2/full.ckpt")
    out = tmp_path / "out"
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint", str(out),
                 "--source_mode", "fetch", "--work_dir", str(tmp_path / "w")]) == 0
    from reshard.api import complete_plan, plan_from_strategies
    from reshard import load_strategy
    from reshard.sources import classify, SourceEntry
    source = classify(url, [SourceEntry("full.ckpt", os.path.getsize(data["full"]), 0)], "ckpt", is_file=True)
    plan = complete_plan(plan_from_strategies(source, None, load_strategy(data["s8"])), str(tmp_path / "w2"),
                         source_mode="fetch")
    files = execute_mod.SourceFiles(str(tmp_path / "w2"), f"s3://{bucket}/src2",
                                    indexes={n: u.index for n, u in plan.source_use.items()})
    rp = plan.ranks[0]
    assert execute_mod.is_done(files, str(out), rp, plan.fmt)   # identity: the object, not a local copy
    record = out / ".reshard" / "rank_0.json"
    text = record.read_text()
    record.write_text(text[:-1] + ', "unverified": ["full.ckpt"]}')
    assert not execute_mod.is_done(files, str(out), rp, plan.fmt)
    execute_mod.settle_manifests(str(out), [rp], verified=True)
    assert execute_mod.is_done(files, str(out), rp, plan.fmt)
    record.write_text(text[:-1] + ', "unverified": ["full.ckpt"]}')
    execute_mod.settle_manifests(str(out), [rp], verified=False)
    assert not record.exists() and not (out / rp.path).exists()


def test_a_corrupt_fetched_file_fails_and_leaves_nothing_made_from_it(data, s3_server, bucket, tmp_path,
                                                                       capsys, monkeypatch):
    """A .ckpt with MindSpore's CRC trailer whose last value's bytes were damaged at rest: its
    headers read fine, ranks are written while it downloads, its CRC (computed while writing)
    fails at the end: one line naming the URL, exit 2, every rank made from it removed, no
    temporary file in the stage or the output."""
    raw = bytearray(open(data["crc"], "rb").read())
    raw[-200] ^= 0xFF                          # inside the last value (lm_head), before the trailer
    url = _upload(s3_server, "", bucket, "bad/full.ckpt", bytes(raw))
    out, work = tmp_path / "out", tmp_path / "work"
    with LinkProxy(s3_server.endpoint, down_bps=4 * MB) as link:
        monkeypatch.setenv("S3_ENDPOINT", link.endpoint)
        code = main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint", str(out),
                     "--source_mode", "fetch", "--process_num", "2", "--work_dir", str(work)])
    err = errors_only(capsys.readouterr().err).splitlines()
    assert code == 2
    assert len(err) == 1 and url in err[0] and "corrupt checkpoint" in err[0] and "Traceback" not in err[0]
    assert [f for f in (_files(out) if out.exists() else []) if f.endswith(".ckpt")] == []
    assert not work.exists() or _files(work) == []


def test_a_download_that_fails_stops_the_conversion(data, s3_server, bucket, tmp_path, capsys, monkeypatch):
    """The object becomes unreadable once its headers were read (403 on every later GET): the
    conversion stops with one line naming the URL, exit 2; no rank, no temporary file."""
    url = _upload(s3_server, data["full"], bucket, "gone/full.ckpt")
    armed = []
    start = fetch.SourceFetcher.start

    def arm(self):
        armed.append(True)
        return start(self)
    monkeypatch.setattr(fetch.SourceFetcher, "start", arm)
    out, work = tmp_path / "out", tmp_path / "work"
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.rules.append(lambda method, path: (403, "AccessDenied")
                           if armed and method == "GET" and "/gone/full.ckpt" in path else None)
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        code = main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint", str(out),
                     "--source_mode", "fetch", "--process_num", "2", "--work_dir", str(work)])
    err = errors_only(capsys.readouterr().err).splitlines()
    assert code == 2 and armed
    assert len(err) == 1 and url in err[0] and "download failed" in err[0], err
    assert [f for f in (_files(out) if out.exists() else []) if f.endswith(".ckpt")] == []
    assert not work.exists() or _files(work) == []


@pytest.mark.parametrize("release", [True, False])
def test_a_downloaded_file_goes_once_its_ranks_are_written(data, s3_server, bucket, tmp_path, release):
    """8 -> 4 through the engine's API, every source file fetched while converting: with
    release (a cache not kept) each local copy is removed once the ranks reading it are written;
    without, all stay."""
    from reshard import ReshardConfig, Request, Stage, load_strategy
    from reshard.api import complete_plan, plan_from_strategies
    from reshard.run import run
    from reshard.sources import SourceEntry, classify
    base = f"s3://{bucket}/rel{int(release)}/ms8"
    entries = []
    for folder, _, names in os.walk(data["ms8"]):
        for n in names:
            rel = os.path.relpath(os.path.join(folder, n), data["ms8"])
            _upload(s3_server, os.path.join(folder, n), bucket, f"rel{int(release)}/ms8/{rel}")
            entries.append(SourceEntry(rel, os.path.getsize(os.path.join(folder, n)), 0))
    source = classify(base, entries, "ckpt")
    cache, out = tmp_path / "cache", tmp_path / "out"
    plan = complete_plan(plan_from_strategies(source, load_strategy(data["s8"]), load_strategy(data["s4"])),
                         str(cache), source_mode="fetch")
    fetched = plan.files_in_mode("fetch")
    report = run(Request(source, plan.src_strategy, plan.dst_strategy, str(out), stage=Stage(str(cache))),
                 ReshardConfig(release_downloads=release), plan=plan)
    assert report.ranks_written == [0, 1, 2, 3]
    ref = synth.ms_transform(data["ms8"], str(tmp_path / "ms4"), data["s8"], data["s4"])
    synth.assert_same_checkpoint_dirs(str(out), ref)
    left = [f for f in (_files(cache) if cache.exists() else []) if f.endswith(".ckpt")]
    assert left == ([] if release else sorted(fetched))


@pytest.mark.parametrize("then", ["committed", "committed and removed", "discarded"])
def test_a_worker_never_takes_a_download_that_ends_between_its_looks_for_a_short_file(tmp_path, monkeypatch,
                                                                                        then):
    """The fetcher completes (renames the file to its final name, maybe removes it at once, as a
    released cache does) or fails (removes its temporary file) right after a waiting worker read
    the file's size and before it looked at the names: forced here by a hook on the worker's
    size look, no timing. A completed download is read whole, never taken for a short or empty
    file ("0 bytes, not the 121611 its headers were read from", seen under load); a failed one
    is one line saying where it stopped."""
    from reshard.formats.growing import Growing, GrowingBytes
    data = os.urandom(121611)
    final, temp = tmp_path / "full.ckpt", tmp_path / ".full.ckpt.part"
    temp.write_bytes(b"")
    src = GrowingBytes(str(final), Growing(str(temp)), len(data))
    look, looks = GrowingBytes._look, []

    def download_ends_after_the_look(self):
        have = look(self)
        looks.append(have)
        if len(looks) == 1:        # the worker has seen 0 bytes; now the fetcher finishes
            if then == "discarded":
                os.remove(temp)
            else:
                with open(temp, "ab") as f:
                    f.write(data)
                os.replace(temp, final)
                if then == "committed and removed":
                    os.remove(final)
        return have
    monkeypatch.setattr(GrowingBytes, "_look", download_ends_after_the_look)
    try:
        if then == "discarded":
            with pytest.raises(FormatError, match="its download stopped at byte 0 of 121611"):
                src.read_at(0, len(data))
        else:
            assert src.read_at(0, len(data)) == data
    finally:
        src.close()
    assert looks[0] == 0


def test_a_worker_opening_a_file_renamed_or_removed_meanwhile(tmp_path):
    """A worker opens the temporary name first: a download committed before the open is found
    under its final name; one that stopped (neither name) is one line."""
    from reshard.formats.growing import Growing, GrowingBytes
    final, temp = tmp_path / "full.ckpt", tmp_path / ".full.ckpt.part"
    final.write_bytes(b"x" * 100)                       # committed: the temporary name is gone
    src = GrowingBytes(str(final), Growing(str(temp)), 100)
    assert src.read_at(0, 100) == b"x" * 100
    src.close()
    final.unlink()
    with pytest.raises(FormatError, match="its download stopped before this read"):
        GrowingBytes(str(final), Growing(str(temp)), 100)
