"""Converting from object storage without staging the source: transform-checkpoint reads each
remote source file in place by ranged GETs (--source_mode remote), or downloads it first
(fetch), as the plan says per file (auto; --dry_run prints it). Every request goes through a
recording proxy in front of the S3 server, so the tests count what was fetched, and downloads
(obs_io's copy functions) fail the test if they are called where nothing may be written."""
from __future__ import annotations

import os

import pytest

import synth
from faultproxy import FaultProxy
from reshard.cli import main
from conftest import errors_only


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tensors of 128 KiB to 2 MiB (larger than a header read-ahead) and MindSpore's
    conversions complete -> 8 (dp2 mp2 pp2) -> 4 (dp1 mp2 pp2) -> 1."""
    root = tmp_path_factory.mktemp("remote_source")
    d = synth.world_8_4(root, vocab=2048, hidden=256, ffn=512)
    d["ms4"] = synth.ms_transform(d["ms8"], os.path.join(root, "ms4"), d["s8"], d["s4"])
    d["ms1"] = synth.ms_transform(d["ms4"], os.path.join(root, "ms1"), d["s4"], None)
    return d


def _upload(s3_server, local: str, bucket: str, key: str) -> str:
    """local (a file or a folder) to s3://bucket/key, straight to the server (not counted)."""
    client = s3_server.client()
    if os.path.isfile(local):
        client.upload_file(local, bucket, key)
    for folder, _, files in os.walk(local):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), local).replace(os.sep, "/")
            client.upload_file(os.path.join(folder, f), bucket, f"{key}/{rel}")
    return f"s3://{bucket}/{key}"


@pytest.fixture
def proxy(s3_server, bucket, monkeypatch):
    """obs_io (here and in the worker processes, through the environment) talks to the server
    through a recording proxy."""
    with FaultProxy(s3_server.endpoint) as p:
        monkeypatch.setenv("S3_ENDPOINT", p.endpoint)
        yield p


@pytest.fixture
def no_downloads(monkeypatch):
    """Call it to make any copy through obs_io (how a source is staged) fail the test."""
    import obs_io

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    def arm() -> None:
        monkeypatch.setattr(obs_io.file, "copy_parallel", refuse)
        monkeypatch.setattr(obs_io.file, "copy", refuse)
    return arm


def _gets(proxy: FaultProxy, part: str, since: int = 0) -> list:
    """The GETs of objects whose path contains `part` (listings excluded)."""
    return [r for r in proxy.records[since:]
            if r.method == "GET" and part in r.path and "?" not in r.path]


CONVERSIONS = {   # name: (source, source strategy, destination strategy, MindSpore's result)
    "complete_to_8": ("full", None, "s8", "ms8"),
    "8_to_4": ("ms8", "s8", "s4", "ms4"),
    "4_to_1": ("ms4", "s4", None, "ms1"),
}


@pytest.mark.parametrize("conversion", list(CONVERSIONS))
def test_remote_mode_stages_nothing_and_matches_mindspore(data, s3_server, bucket, proxy,
                                                          no_downloads, tmp_path, conversion):
    src, src_s, dst_s, ref = CONVERSIONS[conversion]
    url = _upload(s3_server, data[src], bucket, f"src/{os.path.basename(data[src])}")
    work, out = tmp_path / "work", str(tmp_path / "out")
    no_downloads()
    mark = len(proxy.records)
    assert main(["--src_checkpoint", url, "--src_strategy", data[src_s] if src_s else "None",
                 "--dst_strategy", data[dst_s] if dst_s else "None", "--dst_checkpoint", out,
                 "--source_mode", "remote", "--process_num", "2", "--work_dir", str(work)]) == 0
    assert not work.exists()            # no staging folder was ever made (local strategies)
    synth.assert_same_checkpoint_dirs(out, data[ref])
    gets = _gets(proxy, f"/{bucket}/src/", mark)
    assert gets and all(r.range and r.range.startswith("bytes=") for r in gets), \
        [r.path for r in gets if not r.range]
    if conversion == "8_to_4":   # one replica of each slice is read: about half of the source
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data[src])
                   for f in fs)
        assert sum(r.body_bytes for r in gets) < size


def test_one_rank_reads_a_part_of_the_source(data, s3_server, bucket, proxy, tmp_path,
                                             no_downloads, capsys):
    """One destination rank of 8 from a complete source: auto reads the file in place (one rank
    reads it, a quarter of its bytes), by ranged GETs moving fewer bytes than the file holds."""
    url = _upload(s3_server, data["full"], bucket, "src/full.ckpt")
    out = tmp_path / "out"
    no_downloads()
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint",
                 str(out), "--rank_id", "0", "--transform_process_num", "8",
                 "--work_dir", str(tmp_path / "work")]) == 0
    assert f"reading 1 source file(s) in place from s3://{bucket}/src" in capsys.readouterr().err
    assert synth.load_params(str(out / "rank_0" / "checkpoint_0.ckpt")) == \
        synth.load_params(os.path.join(data["ms8"], "rank_0", "checkpoint_0.ckpt"))
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["rank_0"]
    gets = _gets(proxy, "/src/full.ckpt")
    assert gets and all(r.range for r in gets)
    read = sum(r.body_bytes for r in gets)
    assert read < 0.6 * os.path.getsize(data["full"]), (read, os.path.getsize(data["full"]))
    assert not (tmp_path / "work").exists()


def test_dry_run_shows_the_mode_of_each_file(data, s3_server, bucket, proxy, no_downloads,
                                             capsys):
    url = _upload(s3_server, data["full"], bucket, "src/full.ckpt")
    no_downloads()
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dry_run"]) == 0
    text = capsys.readouterr().out
    assert "source files: 0 read in place by ranged GETs (nothing of them on local disk), 1 " \
           "downloaded first" in text, text
    assert f"  fetch {url}: " in text and "8 destination rank(s) read" in text, text
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dry_run",
                 "--rank_id", "4", "--transform_process_num", "8"]) == 0
    text = capsys.readouterr().out
    assert f"  remote {url}: " in text and "1 destination rank(s) read" in text, text
    for mode in ("fetch", "remote"):
        assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dry_run",
                     "--source_mode", mode]) == 0
        assert f"  {mode} {url}: " in capsys.readouterr().out
    gets = _gets(proxy, "/src/full.ckpt")   # headers only, four times
    assert gets and all(r.range for r in gets)
    assert sum(r.body_bytes for r in gets) < os.path.getsize(data["full"])
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dry_run",
                 "--source_mode", "sometimes"]) == 2
    assert "--source_mode" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("mode", ["auto", "fetch"])
def test_a_bad_remote_source_fails_before_any_download(data, bucket, proxy, tmp_path,
                                                       no_downloads, capsys, damage, mode):
    """A source that would be fetched whole fails on its headers, read by ranged GETs: one
    line naming the user's URL, exit 2, nothing downloaded, staged or written."""
    with open(data["full"], "rb") as f:
        body = f.read()
    body = body[:len(body) // 2] if damage == "truncated" else b"\x0a\xff" + os.urandom(5000)
    import obs_io
    url = f"obs://{bucket}/bad/model.ckpt"
    obs_io.file.write(url, body, binary=True)
    no_downloads()
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(["--src_checkpoint", url, "--dst_strategy", data["s8"], "--dst_checkpoint",
                 str(out), "--source_mode", mode, "--work_dir", str(work)]) == 2
    err = errors_only(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and url in err, err
    assert not out.exists() and not work.exists()
    gets = _gets(proxy, "/bad/model.ckpt")
    assert gets and all(r.range for r in gets)
    if damage == "truncated":   # its headers only: a small part of it
        assert sum(r.body_bytes for r in gets) < len(body) // 2


@pytest.mark.parametrize("process_num, mode", [(8, "remote"), (1, "fetch")])
def test_the_job_reads_in_place_or_fetches_by_the_same_rule(data, s3_server, bucket, proxy,
                                                           tmp_path, process_num, mode):
    """The job's conversion steps (cloud_entry.job.transform): this node leads the first block.
    A block of one rank reads a quarter of the complete file: in place, no local copy; a block
    of all eight ranks reads every byte of it twice (dp2): fetched once into the cache."""
    from cloud_entry import convert, sync
    from reshard import load_strategy, run
    from reshard.blocks import plan_blocks
    url = _upload(s3_server, data["full"], bucket, "src/full.ckpt")
    source = sync.inspect_source(url, "ckpt")
    mine = plan_blocks(8, process_num).blocks[:1]
    cache, out = tmp_path / "cache", tmp_path / "out"
    request = convert.request(source, None, load_strategy(data["s8"]), mine, "checkpoint_", "ckpt",
                              str(cache), dst_root=str(out))
    plan = run.prepare(request)
    assert plan.files_in_mode(mode) == ["full.ckpt"]
    assert not cache.exists()                    # headers by ranged GETs only
    report = run.run(request, convert.config(mine, None, str(tmp_path / "log"), True),
                     convert.JobSubscriber(str(out), None, False), plan=plan)
    assert report.ranks_written == list(mine[0].ranks)
    for r in mine[0].ranks:
        name = os.path.join(f"rank_{r}", f"checkpoint_{r}.ckpt")
        assert synth.load_params(str(out / name)) == \
            synth.load_params(os.path.join(data["ms8"], name))
    assert (cache / "full.ckpt").is_file() == (mode == "fetch")
    gets = _gets(proxy, "/src/full.ckpt")
    assert gets and (mode == "fetch" or all(r.range for r in gets))
