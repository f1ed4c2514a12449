"""transform-checkpoint with a Checkpoint 2.0 source or output and an obs:// / s3:// output or
strategies (reshard/formats/checkpoint2/cli.py, publish.py), against the real S3 server the
suite starts (moto in server mode): the uploaded set equals the local conversion file for file,
byte for byte, and verifies; the tracker goes up last, so an interrupted upload (Ctrl-C, a kill)
leaves no tracker and, once rerun, no orphan multipart upload; a rerun of a finished conversion
uploads nothing; another save in the iteration folder, stale rank files, or another run
uploading there are refused in one line with nothing written.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import obs_io
import synth
from conftest import errors_only
from platform_harness import stopped_mid_way, upload
from reshard import integrity
from reshard.cli import main
from reshard.formats.checkpoint2 import TRACKER
from reshard.formats.checkpoint2.publish import RECORD

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "checkpoint2"
FIXTURE = "1.9.0-dp2mp2pp2-optshard"
ITERATION = "iteration_00001234"


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("strategy") / "mp4"
    synth.write_strategy(str(folder), dp=1, mp=4, pp=1, params=synth.llama_params(**synth.SMALL_LLAMA, optimizer=True))
    return str(folder)


def files(root: Path) -> dict[str, bytes]:
    """relative name -> bytes of every file of a set (the manifest aside: it names the inputs
    as given, a URL or a path; the engine's private state files aside)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != integrity.MANIFEST_NAME and ".reshard" not in p.parts}


def downloaded(url: str, local: Path) -> dict[str, bytes]:
    obs_io.file.copy_parallel(url, str(local), progress=False)
    return files(local)


def keys(client, bucket: str, prefix: str = "") -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_checkpoint2_output_and_strategies_on_s3_equal_the_local_conversion(tmp_path, bucket, s3_server, mp4,
                                                                          capsys, monkeypatch):
    """A Checkpoint 2.0 source on s3:// with an s3:// destination strategy, written as Checkpoint
    2.0 to s3:// (also by --dst_checkpoint_dir's layout) and as rank folders to obs://: every file
    the same bytes as the local conversion, --verify intact on the store, the staging folder
    and the upload record gone, no multipart upload left; the same command again converts and
    uploads nothing (the store's result found from the plan, before the engine runs)."""
    from reshard.formats.checkpoint2 import convert
    client = s3_server.client()
    src = upload(str(DATA / FIXTURE), f"s3://{bucket}/src/{FIXTURE}")
    dst_strategy = upload(mp4, f"s3://{bucket}/strategy/mp4")
    work = tmp_path / "work"
    for fmt, scheme in (("checkpoint2", "s3"), ("safetensors", "obs")):
        local = tmp_path / f"local-{fmt}"
        assert main(["--src_checkpoint", src, "--dst_strategy", mp4, "--format", fmt,
                     "--dst_checkpoint", str(local)]) == 0
        url = f"{scheme}://{bucket}/out-{fmt}"
        argv = ["--src_checkpoint", src, "--dst_strategy", dst_strategy, "--format", fmt,
                "--dst_checkpoint", url, "--work_dir", str(work)]
        assert main(argv) == 0
        assert f"to {url}" in capsys.readouterr().out
        assert downloaded(url, tmp_path / f"back-{fmt}") == files(local)
        assert main(["--verify", url]) == 0
        listed = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
        with monkeypatch.context() as m:            # a rerun: the store holds it already
            m.setattr(convert, "_execute", lambda *a, **k: pytest.fail("the engine ran on a rerun"))
            assert main(argv) == 0
        assert "already holds this conversion" in capsys.readouterr().out
        assert {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])} == listed
        assert not any(work.iterdir())              # the staging folder went each time
        assert not keys(client, bucket, f"out-{fmt}/{RECORD.split('/')[0]}/")
    url = f"s3://{bucket}/out-checkpoint2"   # the set, with something beside it on the store
    argv = ["--src_checkpoint", src, "--dst_strategy", dst_strategy, "--dst_checkpoint", url, "--work_dir", str(work)]
    client.put_object(Bucket=bucket, Key=f"out-checkpoint2/{ITERATION}/CKP-model-0000000-0000002.safetensors",
                      Body=b"x")
    listed = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    for fmt, culprit in (("checkpoint2", f"{ITERATION} exists there already"),   # not 'already holds'
                         ("safetensors", f"holds a Checkpoint 2.0 save ({TRACKER}")):   # rank folders beside it
        assert main([*argv, "--format", fmt]) == 2
        err = errors_only(capsys.readouterr().err)
        assert culprit in err and len(err.splitlines()) == 1, err
    assert {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])} == listed
    assert main(["--src_checkpoint", src, "--dst_strategy", dst_strategy, "--format", "safetensors",
                 "--rank_id", "2", "--transform_process_num", "2", "--dst_checkpoint", f"s3://{bucket}/block",
                 "--work_dir", str(work)]) == 0   # one block: its ranks' files, no manifest (not a set)
    block = files(tmp_path / "local-safetensors")
    assert downloaded(f"s3://{bucket}/block", tmp_path / "back-block") == \
        {n: b for n, b in block.items() if n.startswith(("rank_2/", "rank_3/"))}
    assert f"block/{integrity.MANIFEST_NAME}" not in keys(client, bucket, "block/")
    ck2 = files(tmp_path / "local-checkpoint2")
    assert TRACKER in ck2 and f"{ITERATION}/CKP-opt-0000003-0000004.safetensors" in ck2
    assert main(["--src_checkpoint", src, "--dst_strategy", dst_strategy, "--format", "checkpoint2",
                 "--dst_checkpoint_dir", f"s3://{bucket}/parent", "--work_dir", str(work)]) == 0
    assert downloaded(f"s3://{bucket}/parent/{FIXTURE}", tmp_path / "back-dir") == ck2
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_what_is_in_the_way_on_the_store_is_refused_nothing_written(tmp_path, bucket, s3_server, mp4, capsys):
    """Another save in the iteration folder this conversion writes, or rank files a rank-folder
    output would leave beside its own: one line naming the output, exit 2, nothing uploaded."""
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=f"ck/{ITERATION}/CKP-model-0000000-0000001.safetensors", Body=b"x")
    client.put_object(Bucket=bucket, Key="ranks/rank_7/checkpoint_7.safetensors", Body=b"x")
    before = keys(client, bucket)
    for fmt, url, culprit in (("checkpoint2", f"s3://{bucket}/ck", f"s3://{bucket}/ck: {ITERATION} exists there already"),
                              ("safetensors", f"s3://{bucket}/ranks", "rank_7/checkpoint_7.safetensors")):
        rc = main(["--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4, "--format", fmt,
                   "--dst_checkpoint", url, "--work_dir", str(tmp_path / "w")])
        err = errors_only(capsys.readouterr().err)
        assert rc == 2 and len(err.splitlines()) == 1 and culprit in err and "--dst_checkpoint" in err, err
    assert keys(client, bucket) == before
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    from reshard.claim import CLAIMS, OutputClaim
    with OutputClaim(f"s3://{bucket}/busy", "another conversion", "transform-checkpoint", "busy"):
        rc = main(["--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4, "--format", "checkpoint2",
                   "--dst_checkpoint", f"s3://{bucket}/busy", "--work_dir", str(tmp_path / "w")])
        err = errors_only(capsys.readouterr().err)
        assert rc == 2 and len(err.splitlines()) == 1 and "in use by another run" in err, err
        assert {k for k in keys(client, bucket, "busy/") if not k.startswith(f"busy/{CLAIMS}/")} == set()


@pytest.mark.parametrize("stop", ["ctrl-c", "kill"])
def test_an_interrupted_upload_leaves_no_tracker_and_a_rerun_completes(stop, tmp_path, bucket, s3_env, s3_server,
                                                                      mp4):
    """The upload of a Checkpoint 2.0 output stopped while a shard goes up in parts (Ctrl-C to
    the process group, or SIGKILL): no tracker on the store (a reader sees no iteration), after
    Ctrl-C no multipart upload left either; the same command again completes the set (what a
    kill left incomplete aborted), equal to the local conversion, verified, no record left."""
    from faultproxy import FaultProxy
    client = s3_server.client()
    local = tmp_path / "local"
    assert main(["--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4, "--format", "checkpoint2",
                 "--dst_checkpoint", str(local)]) == 0
    with FaultProxy(s3_server.endpoint) as proxy:
        env = {**os.environ, **s3_env, "S3_ENDPOINT": proxy.endpoint, "S3_MULTIPART_THRESHOLD": "1000",
               "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "reshard", "--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4,
                "--format", "checkpoint2", "--dst_checkpoint", f"s3://{bucket}/out", "--work_dir", str(tmp_path / "w")]
        code, out, err = stopped_mid_way(   # the run held still as a shard's part goes up
            argv, env, proxy, lambda method, path: method == "PUT" and f"/out/{ITERATION}/" in path
            and "partNumber=" in path, stop)
        if stop == "ctrl-c":
            assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == \
                "transform-checkpoint: interrupted; rerun the same command to resume", out + err
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        else:   # the kill left the shard's upload incomplete: the rerun aborts it
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        up = keys(client, bucket, "out/")
        assert f"out/{TRACKER}" not in up and f"out/{RECORD}" in up, up
        proxy.rules.clear()
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert f"out/{RECORD}" not in keys(client, bucket, "out/")
    assert integrity.verify(f"s3://{bucket}/out").ok
    assert downloaded(f"s3://{bucket}/out", tmp_path / "back") == files(local)


def test_a_failed_upload_is_one_line_and_leaves_no_tracker_nor_upload(tmp_path, bucket, s3_server, s3_env, mp4,
                                                                     monkeypatch, capsys):
    """The store refuses a shard's part (403 on its UploadPart, multipart forced by a small
    threshold): one line naming --dst_checkpoint, exit 2; the shard's multipart upload aborted,
    no object under its name, no tracker; the staging folder gone."""
    from faultproxy import FaultProxy
    client = s3_server.client()
    shard = f"{ITERATION}/CKP-model-0000002-0000004.safetensors"
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("S3_MULTIPART_THRESHOLD", "1000")
        proxy.rules.append(lambda method, path: (403, "AccessDenied")
                           if method == "PUT" and f"/out/{shard}" in path and "partNumber=" in path else None)
        rc = main(["--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4, "--format", "checkpoint2",
                   "--dst_checkpoint", f"s3://{bucket}/out", "--work_dir", str(tmp_path / "w")])
        assert any("?uploads" in r.path and shard in r.path for r in proxy.records)   # it went multipart
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and len(err.splitlines()) == 1 and f"--dst_checkpoint s3://{bucket}/out" in err, err
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    up = keys(client, bucket, "out/")
    assert f"out/{shard}" not in up and f"out/{TRACKER}" not in up, up
    assert not any((tmp_path / "w").iterdir())


def test_the_same_command_after_its_source_was_touched_writes_again(tmp_path, bucket, s3_server, mp4, capsys):
    """A source file touched since the set went up (another result digest, the same source and
    strategies): the same command converts and uploads again over its own iteration folder;
    another source into that output is refused, one line, nothing uploaded."""
    import shutil
    src = tmp_path / "src" / FIXTURE
    shutil.copytree(DATA / FIXTURE, src)
    argv = ["--src_checkpoint", str(src), "--dst_strategy", mp4, "--format", "checkpoint2",
            "--dst_checkpoint", f"s3://{bucket}/out", "--work_dir", str(tmp_path / "w")]
    assert main(argv) == 0
    before = integrity.read(f"s3://{bucket}/out")
    for path in src.rglob("*.safetensors"):
        os.utime(path, ns=(1, 1))
    capsys.readouterr()
    assert main(argv) == 0
    assert "already holds" not in capsys.readouterr().out
    after = integrity.read(f"s3://{bucket}/out")
    assert after.result_digest != before.result_digest and after.files == before.files
    assert integrity.verify(f"s3://{bucket}/out").ok
    other = tmp_path / "other" / FIXTURE
    shutil.copytree(DATA / FIXTURE, other)
    listed = keys(s3_server.client(), bucket, "out/")
    rc = main([*argv[:1], str(other), *argv[2:]])
    err = errors_only(capsys.readouterr().err)
    assert rc == 2 and f"{ITERATION} exists there already" in err and len(err.splitlines()) == 1, err
    assert keys(s3_server.client(), bucket, "out/") == listed


def test_legacy_source_on_the_store_to_checkpoint2_equals_the_local_conversion(tmp_path, bucket, s3_server, mp4,
                                                                               capsys):
    """A legacy source on object storage (a complete file; rank folders with an s3:// --src_strategy)
    with --format checkpoint2, to a local and to an s3:// output: every file the same bytes as
    the conversion of the same source on local disk (the manifest aside: it names the source as
    given), --verify intact; the staging folder gone; the same command again: 'already holds'."""
    local_ranks = tmp_path / "ranks"
    assert main(["--src_checkpoint", str(DATA / FIXTURE), "--dst_strategy", mp4, "--format", "safetensors",
                 "--dst_checkpoint", str(local_ranks)]) == 0
    full = upload(str(DATA / f"{FIXTURE}.full.safetensors"), f"s3://{bucket}/legacy/full.safetensors")
    ranks = upload(str(local_ranks), f"s3://{bucket}/legacy/ranks")
    strategy = upload(mp4, f"s3://{bucket}/legacy/mp4")
    dp2 = tmp_path / "dp2"
    synth.write_strategy(str(dp2), dp=2, mp=2, pp=2, opt_shard=-1,
                         params=synth.llama_params(**synth.SMALL_LLAMA, optimizer=True))
    work = tmp_path / "work"
    cases = [("full", full, str(DATA / f"{FIXTURE}.full.safetensors"), []),
             ("ranks", ranks, str(local_ranks), ["--src_strategy", strategy])]
    for name, url, local_src, more in cases:
        common = ["--dst_strategy", str(dp2), "--format", "checkpoint2", "--iteration", "5", *more]
        want = tmp_path / f"want-{name}"
        assert main(["--src_checkpoint", local_src, *[mp4 if a == strategy else a for a in common],
                     "--dst_checkpoint", str(want)]) == 0
        got = tmp_path / f"got-{name}"
        assert main(["--src_checkpoint", url, *common, "--dst_checkpoint", str(got), "--work_dir", str(work)]) == 0
        assert files(got) == files(want) and TRACKER in files(got)
        assert main(["--verify", str(got)]) == 0
        out = f"s3://{bucket}/ck2-{name}"
        argv = ["--src_checkpoint", url, *common, "--dst_checkpoint", out, "--work_dir", str(work)]
        assert main(argv) == 0
        assert downloaded(out, tmp_path / f"back-{name}") == files(want)
        assert main(["--verify", out]) == 0
        capsys.readouterr()
        assert main(argv) == 0
        assert "already holds this conversion" in capsys.readouterr().out
        assert not any(work.iterdir())
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".reshard-source")]
