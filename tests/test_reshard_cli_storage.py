"""transform-checkpoint with object storage (a real S3 server): only the files the plan reads
are downloaded, and storage failures (missing object or bucket, refused credentials, a server
answering 500, a URL without a bucket) are one line naming the flag and URL, exit code 2."""
from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reshard.cli import main
from tests import synth
from conftest import errors_only

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = synth.world_8_4(tmp_path_factory.mktemp("cli_storage"), vocab=64, hidden=32, ffn=64)
    d["ms4"] = synth.ms_transform(d["ms8"], os.path.join(d["root"], "ms4"), d["s8"], d["s4"])
    return d


def _fails(capsys, argv, *culprits):
    rc = main(argv)
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for c in culprits:
        assert c in err, err
    return err


def test_remote_source_downloads_only_what_the_plan_reads(data, tmp_path, bucket, monkeypatch):
    import obs_io
    mox = obs_io.file
    base = f"s3://{bucket}"
    mox.copy_parallel(data["ms4"], f"{base}/ms4")
    mox.copy(data["full"], f"{base}/ms4/rank_1/checkpoint_1-000.ckpt")   # older, sorts first
    mox.copy(data["full"], f"{base}/ms4/unrelated.ckpt")                 # beside the rank folders
    mox.copy_parallel(data["s4"], f"{base}/s4")
    mox.write(f"{base}/s4/README.txt", "not a strategy")
    copies = []
    real = mox.copy_parallel

    def recording(src, dst, file_list=None, **kw):
        copies.append((src, sorted(file_list) if file_list is not None else None))
        return real(src, dst, file_list=file_list, **kw)

    monkeypatch.setattr(mox, "copy_parallel", recording)
    fetched = []   # source files: downloaded while the conversion reads them (reshard.fetch)
    real_in_order = obs_io.streams.download_in_order

    def in_order(url, *args, **kw):
        fetched.append(url)
        return real_in_order(url, *args, **kw)
    monkeypatch.setattr(obs_io.streams, "download_in_order", in_order)
    out = str(tmp_path / "out")
    assert main(["--src_checkpoint", f"obs://{bucket}/ms4", "--src_strategy", f"{base}/s4",
                 "--dst_checkpoint", out, "--source_mode", "fetch"]) == 0
    ref = str(tmp_path / "ref")
    synth.ms_transform(data["ms4"], ref, data["s4"], None)
    synth.assert_same_checkpoint_dirs(ref, out)
    downloads = {src: names for src, names in copies}
    assert downloads[f"{base}/s4"] == sorted(os.listdir(data["s4"]))
    assert sorted(fetched) == [f"obs://{bucket}/ms4/rank_{r}/checkpoint_{r}.ckpt" for r in range(4)]
    # a complete file: that file alone; a remote output gets the written files only
    copies.clear()
    fetched.clear()
    assert main(["--src_checkpoint", f"{base}/ms4/unrelated.ckpt", "--dst_strategy",
                 f"{base}/s4", "--dst_checkpoint", f"{base}/out4"]) == 0
    assert fetched == [f"{base}/ms4/unrelated.ckpt"]
    assert sorted(mox.list_directory(f"{base}/out4", recursive=True)) == \
        ["conversion_manifest.json", "rank_0", "rank_0/checkpoint_0.ckpt", "rank_1",
         "rank_1/checkpoint_1.ckpt", "rank_2", "rank_2/checkpoint_2.ckpt", "rank_3",
         "rank_3/checkpoint_3.ckpt"]


def test_missing_objects_and_buckets(data, tmp_path, bucket, capsys):
    out = str(tmp_path / "out")
    _fails(capsys, ["--src_checkpoint", f"s3://{bucket}/nothing.ckpt", "--dst_strategy",
                    data["s8"], "--dst_checkpoint", out], f"--src_checkpoint s3://{bucket}/nothing")
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy",
                    f"obs://{bucket}/no/strategy", "--dst_checkpoint", out],
           f"--dst_strategy obs://{bucket}/no/strategy")
    _fails(capsys, ["--src_checkpoint", "s3://no-such-bucket-here/m.ckpt", "--dst_strategy",
                    data["s8"], "--dst_checkpoint", out],
           "--src_checkpoint s3://no-such-bucket-here/m.ckpt", "no-such-bucket-here")
    _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", data["s8"],
                    "--dst_checkpoint", "s3://no-such-bucket-here/out"],
           "--dst_checkpoint s3://no-such-bucket-here/out")
    for url in ("obs://", "obs:///m.ckpt", "s3:///x"):
        _fails(capsys, ["--src_checkpoint", url, "--dst_checkpoint", out],
               f"--src_checkpoint {url}: no bucket name")
    assert not os.path.exists(out)


def _answering(status, code):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args):
            pass
    return Handler


@pytest.mark.parametrize("status, code, says", [(403, "AccessDenied", "access denied"),
                                                (500, "InternalError", "error")])
def test_refused_credentials_and_a_server_answering_500(data, tmp_path, s3_env, capsys,
                                                         monkeypatch, status, code, says):
    """A server that refuses the credentials (403) or fails (500) on every request."""
    import obs_io
    server = ThreadingHTTPServer(("127.0.0.1", 0), _answering(status, code))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("S3_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        obs_io.configure(max_attempts=1)
        out = str(tmp_path / "out")
        err = _fails(capsys, ["--src_checkpoint", "s3://bkt/m.ckpt", "--dst_strategy",
                              data["s8"], "--dst_checkpoint", out],
                     "--src_checkpoint s3://bkt/m.ckpt")
        assert says in err.lower() and s3_env["SECRET_ACCESS_KEY"] not in err
        _fails(capsys, ["--src_checkpoint", data["full"], "--dst_strategy", "obs://bkt/s8/",
                        "--dst_checkpoint", out], "--dst_strategy obs://bkt/s8/")
        assert not os.path.exists(out)
    finally:
        obs_io.reset_config()
        server.shutdown()
        server.server_close()


def test_engine_mindspore_with_remote_paths(data, tmp_path, bucket):
    import obs_io
    base = f"s3://{bucket}"
    obs_io.file.copy(data["full"], f"{base}/in/full.ckpt")
    obs_io.file.copy_parallel(data["s8"], f"{base}/s8")
    assert main(["--src_checkpoint", f"{base}/in/full.ckpt", "--dst_strategy", f"{base}/s8",
                 "--dst_checkpoint", f"{base}/ms", "--engine", "mindspore"]) == 0
    local = str(tmp_path / "back")
    obs_io.file.copy_parallel(f"{base}/ms", local)
    synth.assert_same_checkpoint_dirs(data["ms8"], local)


def test_a_finished_remote_conversion_run_again_moves_nothing(data, tmp_path, bucket, capsys):
    """transform-checkpoint with an s3:// output, run twice: the second finds the set's manifest
    with this plan and the source's versions, converts and uploads nothing; a replaced source
    object (another version) is converted again."""
    import obs_io
    base = f"s3://{bucket}"
    obs_io.file.copy(data["full"], f"{base}/src/full.ckpt")
    argv = ["--src_checkpoint", f"{base}/src/full.ckpt", "--dst_strategy", data["s8"],
            "--dst_checkpoint", f"{base}/out8", "--work_dir", str(tmp_path / "w")]
    assert main(argv) == 0
    first = {e.name: e.etag for e in obs_io.file.list_entries(f"{base}/out8", recursive=True) if e.is_file()}
    capsys.readouterr()
    assert main(argv) == 0
    assert "nothing converted or uploaded" in capsys.readouterr().out
    assert {e.name: e.etag for e in obs_io.file.list_entries(f"{base}/out8", recursive=True) if e.is_file()} == first
    raw = bytearray(open(data["full"], "rb").read())
    from reshard.formats import open_reader
    with open_reader(data["full"]) as reader:             # another version: a value changed
        offset = max(reader.index().extents.values(), key=lambda e: e.nbytes).pieces[0][0]
    raw[offset + 10] ^= 0xFF
    obs_io.file.write(f"{base}/src/full.ckpt", bytes(raw), binary=True)
    assert main(argv) == 0
    assert "nothing converted" not in capsys.readouterr().out


def test_a_local_source_changed_in_place_is_converted_again_to_a_remote_output(data, tmp_path, bucket, capsys):
    """The rerun skip of a remote output knows a local source by path, size and modification
    time: the same file rewritten (same size, one value changed) is converted again, never
    taken for the finished conversion."""
    import shutil
    from reshard.formats import open_reader
    src = tmp_path / "full.ckpt"
    shutil.copyfile(data["full"], src)
    argv = ["--src_checkpoint", str(src), "--dst_strategy", data["s8"],
            "--dst_checkpoint", f"s3://{bucket}/local8", "--work_dir", str(tmp_path / "w")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "nothing converted" in capsys.readouterr().out
    raw = bytearray(src.read_bytes())
    with open_reader(str(src)) as reader:
        offset = max(reader.index().extents.values(), key=lambda e: e.nbytes).pieces[0][0]
    raw[offset + 10] ^= 0xFF
    src.write_bytes(bytes(raw))
    os.utime(src, ns=(1, 1))                               # even with an old modification time
    assert main(argv) == 0
    assert "nothing converted" not in capsys.readouterr().out


@pytest.mark.parametrize("stop", ["kill", "ctrl-c"])
def test_a_remote_output_keeps_the_ranks_uploaded_before_a_stop(stop, data, tmp_path, bucket, s3_env, s3_server):
    """transform-checkpoint to an s3:// output, stopped mid-way (SIGKILL to its process group,
    or Ctrl-C, after which the upload under way may end) as rank 3 begins to go up: the same
    command again keeps the ranks whose upload the
    stopped run recorded (each record checked: this plan's rank, its object there as uploaded),
    converts and uploads only the others (counted on the server), aborts what the kill left
    incomplete, removes the records once the manifest is written, and equals MindSpore's
    conversion."""
    import subprocess
    import sys
    from faultproxy import FaultProxy
    from platform_harness import stopped_mid_way
    import obs_io
    from reshard import integrity
    from reshard.plan import ranks_text
    client = s3_server.client()

    def uploads(records) -> set[int]:   # ranks whose file a run began to upload
        return {int(r.path.split("/out8/rank_")[1].split("/")[0]) for r in records
                if "/out8/rank_" in r.path and "?" not in r.path.replace("?uploads", "")
                and r.method in ("PUT", "POST")}

    with FaultProxy(s3_server.endpoint) as proxy:
        env = {**os.environ, **s3_env, "S3_ENDPOINT": proxy.endpoint, "S3_MULTIPART_THRESHOLD": "1000",
               "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "reshard", "--src_checkpoint", data["full"], "--dst_strategy", data["s8"],
                "--dst_checkpoint", f"s3://{bucket}/out8", "--work_dir", str(tmp_path / "w")]
        # the run's process group held still as rank 3 goes up
        code, out, err = stopped_mid_way(argv, env, proxy, lambda method, path: "/out8/rank_3/" in path, stop)
        if stop == "ctrl-c":   # its last line, after the log lines
            assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == \
                "transform-checkpoint: interrupted; rerun the same command to resume", out + err
        recorded = {int(o["Key"].split("rank_")[1].split(".")[0])
                    for o in client.list_objects_v2(Bucket=bucket, Prefix="out8/.reshard/").get("Contents", [])}
        assert {0, 1} <= recorded and len(recorded) < 8, recorded      # mid-way: some up, not all
        proxy.rules.clear()
        mark = len(proxy.records)
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"kept ranks {ranks_text(sorted(recorded))}" in rerun.stdout, rerun.stdout
        assert uploads(proxy.records[mark:]) == set(range(8)) - recorded
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket, Prefix="out8/.reshard/").get("KeyCount") == 0
    assert integrity.verify(f"s3://{bucket}/out8").ok
    obs_io.file.copy_parallel(f"s3://{bucket}/out8", str(tmp_path / "back"))
    synth.assert_same_checkpoint_dirs(data["ms8"], str(tmp_path / "back"))


def test_a_block_converted_to_a_remote_output_is_kept_by_the_whole_run(data, tmp_path, bucket, s3_server, capsys):
    """--rank_id 4 of 2 blocks, the source downloaded while converting (its ranks recorded only
    once the download was checked whole), to an s3:// output: ranks 4-7 go up with their
    records (a block writes no manifest); the whole conversion then keeps them, converts ranks
    0-3, writes the manifest and removes the records."""
    import obs_io
    from reshard import integrity
    base = f"s3://{bucket}"
    obs_io.file.copy(data["full"], f"{base}/src/full.ckpt")
    argv = ["--src_checkpoint", f"{base}/src/full.ckpt", "--dst_strategy", data["s8"], "--dst_checkpoint",
            f"{base}/out8", "--work_dir", str(tmp_path / "w"), "--source_mode", "fetch"]
    assert main([*argv, "--rank_id", "4", "--transform_process_num", "2"]) == 0
    client = s3_server.client()
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out8/")["Contents"]}
    assert listed == {f"out8/{d}/{n}" for r in range(4, 8)
                      for d, n in ((f"rank_{r}", f"checkpoint_{r}.ckpt"), (".reshard", f"rank_{r}.json"))}
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote ranks 0-3" in out and "kept ranks 4-7" in out, out
    assert client.list_objects_v2(Bucket=bucket, Prefix="out8/.reshard/").get("KeyCount") == 0
    assert integrity.verify(f"{base}/out8").ok
    obs_io.file.copy_parallel(f"{base}/out8", str(tmp_path / "back"))
    synth.assert_same_checkpoint_dirs(data["ms8"], str(tmp_path / "back"))


def test_a_replica_of_a_rank_kept_on_the_store_only_is_made_from_another(data):
    """Data-parallel replicas are copies of their first rank's file (Plan.same_as); a first
    rank kept on the store only (a rerun of a remote output: no local file) hands its replicas
    to the lowest of them, converted in its place; stored replicas need nothing."""
    from reshard.api import complete_plan, find_sources, load_strategy, plan_from_strategies
    from reshard.execute import same_as
    source = find_sources(data["full"])
    plan = complete_plan(plan_from_strategies(source, None, load_strategy(data["s8"])), source.base)
    groups: dict[int, list[int]] = {}
    for rank, first in sorted(plan.same_as.items()):
        groups.setdefault(first, []).append(rank)
    assert groups and same_as(plan) == plan.same_as
    first, replicas = next(iter(groups.items()))
    moved = same_as(plan, {first})
    assert replicas[0] not in moved and all(moved[r] == replicas[0] for r in replicas[1:])
    assert {r: f for r, f in moved.items() if f != replicas[0]} == \
        {r: f for r, f in plan.same_as.items() if f != first}
    assert same_as(plan, {first, *replicas}) == {r: f for r, f in plan.same_as.items() if f != first}
