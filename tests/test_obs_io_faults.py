"""Object storage that misbehaves, through tests/faultproxy.py on loopback: throttling (503
SlowDown), dropped connections, 500 for a share of requests, bodies cut short, and a server that
accepts connections and never answers. Each ends in identical bytes, or in one line naming the
URL and the endpoint, within the bound the configuration sets (S3Config.worst_case_seconds)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from s3server import ACCESS_KEY, SECRET_KEY, free_port

import obs_io as mox
import test_obs_io_transfer as transfer_tests
from obs_io.client import get_client, transfer_config
from obs_io.config import S3Config

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
# A stall test's bound: 2 tries of at most 0.5 + 1 s each, plus botocore's worst back-off.
FAST = {"S3_CONNECT_TIMEOUT": "0.5", "S3_READ_TIMEOUT": "1", "S3_MAX_ATTEMPTS": "2"}


_small_parts = transfer_tests._small_parts   # multipart from 5 MiB, autouse


@pytest.fixture
def proxy(s3_server, s3_env, monkeypatch):
    with FaultProxy(s3_server.endpoint, seed=7) as p:
        monkeypatch.setenv("S3_ENDPOINT", p.endpoint)
        yield p


def make_files(base: Path) -> dict[str, bytes]:
    data = {"big.bin": os.urandom(12 * MiB), "empty.txt": b""}
    data.update({f"d/f{i}.dat": os.urandom(1000 + 997 * i) for i in range(8)})
    for name, body in data.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(body)
    return data


def assert_one_line(err: BaseException, *names: str) -> str:
    text = f"{type(err).__name__}: {err}"
    assert "\n" not in text, text
    for name in names:
        assert name in text, (name, text)
    assert ACCESS_KEY not in text and SECRET_KEY not in text
    return text


def settled(proxy: FaultProxy) -> list:
    """The proxy's records once no more arrive (it records a request after answering it)."""
    n = -1
    while n != len(proxy.records):
        n = len(proxy.records)
        time.sleep(0.2)
    return list(proxy.records)


# -- the bound ---------------------------------------------------------------------------------

def test_default_worst_case_is_under_three_minutes(monkeypatch):
    """A stalled server costs a request attempts x (connect + read timeout) plus botocore's
    back-off (at most min(2**(i-1), 20) + 5 s before retry i): under 180 s by default."""
    for name in ("S3_CONNECT_TIMEOUT", "S3_READ_TIMEOUT", "S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    cfg = mox.current_config()
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts) == (5.0, 20.0, 5)
    backoff = sum(min(2 ** (i - 1), 20) + 5 for i in range(1, cfg.max_attempts))
    worst = cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout) + backoff
    assert cfg.worst_case_seconds() == worst == 160.0 < 180
    # what the client and s3transfer get is that configuration, nothing of their own defaults
    conf = get_client(cfg).meta.config
    assert (conf.connect_timeout, conf.read_timeout) == (5.0, 20.0)
    assert conf.retries == {"mode": "standard", "total_max_attempts": 5}
    assert transfer_config(cfg, 100 * MiB, 8, download=True).num_download_attempts == 5


def test_timeouts_and_attempts_from_the_environment(monkeypatch):
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    cfg = mox.current_config()
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts) == (0.5, 1.0, 2)
    assert cfg.worst_case_seconds() == 2 * 1.5 + 1 + 5
    mox.file.set_auth(client_timeout=3, retry=4)  # moxing's keywords win over the environment
    cfg = mox.current_config()
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts) == (3.0, 3.0, 4)
    for name, bad in (("S3_READ_TIMEOUT", "0"), ("S3_CONNECT_TIMEOUT", "soon"), ("S3_MAX_ATTEMPTS", "2.5"),
                      ("S3_READ_TIMEOUT", "inf"), ("S3_MAX_ATTEMPTS", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name}='{bad}'"):
            mox.current_config()
        monkeypatch.delenv(name)
    assert S3Config(max_attempts=1, connect_timeout=2, read_timeout=3).worst_case_seconds() == 5


# -- faults that pass: identical bytes ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["slowdown", "drop", "error500", "truncate"])
def test_each_fault_kind_still_gives_identical_bytes(kind, tmp_path, bucket, proxy):
    """Up (multipart and single PUTs), server-side copy, down (ranged and small GETs): every
    kind of fault is retried to the same bytes."""
    data = make_files(tmp_path / "src")
    cut: list[str] = []
    if kind == "truncate":   # the first GET of each object breaks off half-way

        def first_get(method: str, path: str) -> bool:
            if method == "GET" and "prefix=" not in path and path not in cut:
                cut.append(path)
                return True
            return False
        proxy.truncate = first_get
    else:
        setattr(proxy, kind, 0.3)
    mox.file.copy_parallel(str(tmp_path / "src"), f"s3://{bucket}/up", is_processing=False)
    mox.file.copy_parallel(f"s3://{bucket}/up", f"s3://{bucket}/copied", is_processing=False)
    mox.file.copy_parallel(f"s3://{bucket}/copied", str(tmp_path / "down"), is_processing=False)
    for name, body in data.items():
        assert (tmp_path / "down" / name).read_bytes() == body, name
    statuses = Counter(r.status for r in proxy.records)
    injected = {"slowdown": statuses[503], "drop": statuses[0], "error500": statuses[500],
                "truncate": len(cut)}
    assert injected[kind] > 0, statuses   # the fault did happen
    assert not [p for p in (tmp_path / "down").rglob(".*obsio*")]


# -- faults that do not pass: one line naming the URL and the endpoint -----------------------

def test_persistent_failures_are_one_line_oserrors_naming_the_endpoint(tmp_path, bucket, proxy, monkeypatch):
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    (tmp_path / "f.txt").write_bytes(b"x")
    mox.file.copy(str(tmp_path / "f.txt"), f"s3://{bucket}/ok.txt")
    proxy.rules.append(lambda method, path: (500, "InternalError") if "broken" in path else None)
    proxy.rules.append(lambda method, path: (403, "AccessDenied") if method == "PUT" and "ro/" in path else None)
    url = f"s3://{bucket}/broken/x.bin"
    with pytest.raises(OSError) as info:
        mox.file.read(url, binary=True)
    assert_one_line(info.value, url, proxy.endpoint, "500", "2 attempt(s)")
    assert info.value.resp["status"] == 500
    assert sum(1 for r in settled(proxy) if "broken" in r.path) == 2   # botocore's tries, no more
    with pytest.raises(PermissionError) as info:   # a read-only bucket refuses the upload
        mox.file.copy(str(tmp_path / "f.txt"), f"s3://{bucket}/ro/f.txt")
    assert_one_line(info.value, f"s3://{bucket}/ro/f.txt", proxy.endpoint, "AccessDenied")
    with pytest.raises(FileNotFoundError) as info:
        mox.file.copy(str(tmp_path / "f.txt"), "s3://no-such-bucket-here/f.txt")
    assert_one_line(info.value, "no-such-bucket-here", proxy.endpoint)
    refused = f"http://127.0.0.1:{free_port()}"   # nobody listens there
    monkeypatch.setenv("S3_ENDPOINT", refused)
    with pytest.raises(ConnectionError) as info:
        mox.file.list_directory(f"s3://{bucket}/x")
    assert_one_line(info.value, f"s3://{bucket}/x", refused, "cannot connect")


def run_cli(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "obs_io", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), **env})
    return r, time.monotonic() - start


def test_cli_exit_2_and_one_line_for_each_storage_failure(tmp_path, bucket, proxy, s3_env):
    (tmp_path / "f.txt").write_bytes(b"x")
    proxy.rules.append(lambda method, path: (500, "InternalError") if "broken" in path else None)
    proxy.rules.append(lambda method, path: (403, "AccessDenied") if method == "PUT" and "ro/" in path else None)
    proxy.stall = lambda method, path: "stalled" in path
    env = {**s3_env, "S3_ENDPOINT": proxy.endpoint, **FAST}
    bound = S3Config(connect_timeout=0.5, read_timeout=1, max_attempts=2).worst_case_seconds()
    refused = f"http://127.0.0.1:{free_port()}"
    cases = [(("stat", f"s3://{bucket}/broken/x"), env, ("OSError", "500", proxy.endpoint)),
             (("cp", str(tmp_path / "f.txt"), f"s3://{bucket}/ro/f.txt"), env, ("PermissionError", proxy.endpoint)),
             (("ls", "s3://no-such-bucket-cli/x"), env, ("FileNotFoundError", "no-such-bucket-cli", proxy.endpoint)),
             (("ls", f"s3://{bucket}/x"), {**env, "S3_ENDPOINT": refused}, ("ConnectionError", refused)),
             (("cp", f"s3://{bucket}/stalled/x", str(tmp_path / "d")), env,
              ("ConnectionError", "did not answer", proxy.endpoint))]
    for args, environment, names in cases:
        r, elapsed = run_cli(*args, env=environment)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        for name in names:
            assert name in r.stderr, (name, r.stderr)
        assert SECRET_KEY not in r.stderr + r.stdout
        assert elapsed < bound + 15, (args, elapsed)   # the interpreter's start included


# -- a server that accepts connections and never answers ------------------------------------

def stalled_calls(bucket: str, tmp_path: Path) -> list[tuple[str, object, int, bool]]:
    """(what, call, requests in flight at once, an upload): each must fail against a stalled
    server. A failed upload asks once more, in one try, whether the store has its object after
    all (streams.settle_failed_upload)."""
    (tmp_path / "up.txt").write_bytes(b"up")
    return [("HEAD (read)", lambda: mox.file.read(f"s3://{bucket}/stall/small.txt"), 1, False),
            ("GetObject (small download)", lambda: mox.file.copy_parallel(
                f"s3://{bucket}/stall", str(tmp_path / "small"), file_list=["small.txt"]), 1, False),
            ("ranged GetObjects (s3transfer)", lambda: mox.file.copy_parallel(
                f"s3://{bucket}/stall", str(tmp_path / "big"), file_list=["big.bin"]), 3, False),
            ("PutObject (upload)", lambda: mox.file.copy(str(tmp_path / "up.txt"), f"s3://{bucket}/stall/up.txt"),
             1, True)]


def test_a_stalled_server_fails_within_the_configured_bound(tmp_path, bucket, proxy, s3_server, monkeypatch):
    """With 0.5 s to connect, 1 s to answer and 2 attempts, every kind of call fails in one
    line after exactly 2 tries per request (s3transfer's re-reads do not multiply them: before,
    a ranged download tried 2 x 2 times), within worst_case_seconds() (9 s here; about 2 s in
    practice)."""
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="stall/small.txt", Body=b"small")
    client.put_object(Bucket=bucket, Key="stall/big.bin", Body=os.urandom(12 * MiB))
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    cfg = mox.current_config()
    bound = cfg.worst_case_seconds()
    assert bound == 9.0
    # listings answer (so plans are made), everything else under stall/ never does
    proxy.stall = lambda method, path: "/stall/" in path and "prefix=" not in path
    for what, call, in_flight, upload in stalled_calls(bucket, tmp_path):
        proxy.records.clear()
        mox.reset_config()   # each call as a command of its own: its own stall clock
        start = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            call()
        elapsed = time.monotonic() - start
        assert_one_line(info.value, f"s3://{bucket}/stall/", proxy.endpoint, "did not answer", "S3_READ_TIMEOUT")
        settle = cfg.connect_timeout + cfg.read_timeout if upload else 0.0
        assert cfg.max_attempts * cfg.read_timeout * 0.9 <= elapsed < bound + settle + 3, (what, elapsed)
        # each request is tried max_attempts times, never max_attempts x s3transfer's re-reads
        tries = Counter((r.method, r.path, r.range) for r in proxy.records if r.status == -1)
        settled_by = [k for k in tries if upload and k[0] == "HEAD"]
        assert [tries.pop(k) for k in settled_by] == ([1] if upload else []), (what, settled_by)
        assert tries and set(tries.values()) == {cfg.max_attempts} and len(tries) <= in_flight, (what, tries)
    # within one command, a request given up on leaves the later ones one try each until the
    # store answers something well (here nothing does): the command ends about when its first
    # request does, not once per request
    proxy.records.clear()
    mox.reset_config()
    calls = {what: call for what, call, _, _ in stalled_calls(bucket, tmp_path)}
    for what in ("HEAD (read)", "PutObject (upload)"):
        with pytest.raises(ConnectionError):
            calls[what]()
    tries = Counter((r.method, r.path.split("/")[-1]) for r in proxy.records if r.status == -1)
    assert tries == {("HEAD", "small.txt"): cfg.max_attempts, ("PUT", "up.txt"): 1, ("HEAD", "up.txt"): 1}, tries
    assert not [p for p in tmp_path.rglob(".*obsio*")]


# -- throttling: retried apart from the attempts, for as long as the bound allows ----------------

def test_a_throttling_burst_is_outlasted_and_counted(tmp_path, bucket, proxy, monkeypatch, caplog):
    """6 s of nothing but 503 SlowDown and 429 answers, with 2 attempts per request: throttled
    tries do not count against the attempts (each request is throttled many times over), every
    byte arrives, and the log counts what was throttled."""
    import logging
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    mox.reset_config()
    caplog.set_level(logging.INFO, logger="obs_io.retry")
    data = make_files(tmp_path / "src")
    proxy.burst(6.0)
    start = time.monotonic()
    mox.file.copy_parallel(str(tmp_path / "src"), f"s3://{bucket}/up", is_processing=False)
    mox.file.copy_parallel(f"s3://{bucket}/up", str(tmp_path / "down"), is_processing=False)
    elapsed = time.monotonic() - start
    for name, body in data.items():
        assert (tmp_path / "down" / name).read_bytes() == body, name
    statuses = Counter(r.status for r in settled(proxy))
    assert statuses[503] and statuses[429], statuses
    per_request = Counter((r.method, r.path) for r in proxy.records if r.status in (429, 503))
    assert max(per_request.values()) > 2, per_request        # more throttled tries than attempts
    assert elapsed >= 6.0, elapsed                          # it waited the burst out
    assert "is throttling requests" in caplog.text
    counted = [int(m) for m in re.findall(r"object storage throttled (\d+) request", caplog.text)]
    assert sum(counted) == statuses[503] + statuses[429], (counted, statuses)


def test_throttling_past_the_stall_deadline_is_one_line_naming_it(tmp_path, bucket, proxy, monkeypatch):
    """A store that does nothing but throttle: the request ends when S3_STALL_DEADLINE says
    (3 s here), in one line naming it; neither sooner (the attempts do not end it) nor much
    later."""
    monkeypatch.setenv("S3_STALL_DEADLINE", "3")
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    mox.reset_config()
    (tmp_path / "f.txt").write_bytes(b"x")
    proxy.burst(600.0)
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        mox.file.copy(str(tmp_path / "f.txt"), f"s3://{bucket}/f.txt")
    elapsed = time.monotonic() - start
    text = assert_one_line(info.value, f"s3://{bucket}/f.txt", proxy.endpoint, "S3_STALL_DEADLINE=3s ended the retries")
    assert "throttled" in text
    assert 3.0 * 0.9 <= elapsed < 3.0 + 15, elapsed
    assert sum(1 for r in settled(proxy) if r.status in (429, 503)) > 2


# -- a store that does the work and loses its answer -----------------------------------------

def _complete(method: str, path: str) -> bool:
    """CompleteMultipartUpload: POST /<bucket>/<key>?uploadId=..."""
    return method == "POST" and "uploadId=" in path


def _put(method: str, path: str) -> bool:
    """A single-request upload: PUT /<bucket>/<key>, no part number."""
    return method == "PUT" and "partNumber=" not in path and "uploadId=" not in path


def incomplete_uploads(client, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


LOST = {"multipart, every answer 500": (_complete, (500, "InternalError")),
        "multipart, every answer dropped": (_complete, "drop"),
        "single PUT, every answer 500": (_put, (500, "InternalError"))}


@pytest.mark.parametrize("how", sorted(LOST))
def test_an_upload_whose_answer_was_lost_is_a_success(how, tmp_path, bucket, proxy, s3_server, monkeypatch):
    """The store completed the upload, then its answer was lost (500 or a dropped connection to
    every try, the first one included): the object is there, as sent, so copy(),
    write() and an upload while written (GrowingUpload) succeed; before, they raised with the
    object in place. Nothing incomplete is left."""
    from obs_io.transfer import GrowingUpload
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "3")
    which, answer = LOST[how]
    lost: list[str] = []

    def lose(method: str, path: str):
        if which(method, path) and "/lost/" in path:
            lost.append(path)
            return answer
        return None
    proxy.lost_answer = lose
    size = 12 * MiB if "multipart" in how else MiB
    body = os.urandom(size)
    (tmp_path / "big.bin").write_bytes(body)
    mox.file.copy(str(tmp_path / "big.bin"), f"s3://{bucket}/lost/copied.bin")
    mox.file.write(f"s3://{bucket}/lost/written.bin", body, binary=True)
    growing = tmp_path / "growing.bin"
    growing.write_bytes(body)
    upload = GrowingUpload(str(growing), f"s3://{bucket}/lost/growing.bin", size_hint=size)
    upload.finish(size)
    assert len(lost) >= 3, lost   # each of the three lost its answer at least once
    client = s3_server.client()
    for name in ("copied", "written", "growing"):
        assert client.get_object(Bucket=bucket, Key=f"lost/{name}.bin")["Body"].read() == body, name
    assert incomplete_uploads(client, bucket) == []


def test_the_cli_reports_an_upload_whose_answer_was_lost_as_done(tmp_path, bucket, proxy, s3_env, s3_server):
    """The issue's case: `python -m obs_io cp big.bin s3://.../big.bin` exited 2 ("answered
    500 ... attempts") with the complete object on the server; now 0, with the object."""
    proxy.lost_answer = lambda method, path: (500, "InternalError") if _complete(method, path) else None
    body = os.urandom(12 * MiB)
    (tmp_path / "big.bin").write_bytes(body)
    r, _ = run_cli("cp", str(tmp_path / "big.bin"), f"s3://{bucket}/big2/big.bin",
                   env={**s3_env, "S3_ENDPOINT": proxy.endpoint, "S3_MAX_ATTEMPTS": "2",
                        "S3_MULTIPART_THRESHOLD": str(5 * MiB)})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "the store did not confirm the upload" in r.stderr, r.stderr
    assert any(_complete(x.method, x.path) and x.status == 500 for x in proxy.records)
    client = s3_server.client()
    assert client.get_object(Bucket=bucket, Key="big2/big.bin")["Body"].read() == body
    assert incomplete_uploads(client, bucket) == []


def test_an_upload_the_store_refused_leaves_no_object_and_an_older_one_alone(tmp_path, bucket, proxy, s3_server,
                                                                             monkeypatch):
    """The completion (or the PUT) refused before the store did it: one line, exit 2, no object
    (the multipart upload aborted); an object an earlier upload left under that key is not this
    upload's and stays as it was."""
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "2")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="refused/older.bin", Body=b"an older version")
    proxy.rules.append(lambda method, path: (500, "InternalError")
                       if "/refused/" in path and (_complete(method, path) or _put(method, path)) else None)
    (tmp_path / "big.bin").write_bytes(os.urandom(12 * MiB))
    (tmp_path / "small.bin").write_bytes(b"small")
    for src, key in (("big.bin", "refused/new.bin"), ("big.bin", "refused/older.bin"),
                     ("small.bin", "refused/small.bin")):
        with pytest.raises(OSError) as info:
            mox.file.copy(str(tmp_path / src), f"s3://{bucket}/{key}")
        assert_one_line(info.value, f"s3://{bucket}/{key}", "500")
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]) == ["refused/older.bin"]
    assert client.get_object(Bucket=bucket, Key="refused/older.bin")["Body"].read() == b"an older version"
    assert incomplete_uploads(client, bucket) == []
    r, _ = run_cli("cp", str(tmp_path / "big.bin"), f"s3://{bucket}/refused/cli.bin",
                   env={**os.environ, "S3_ENDPOINT": proxy.endpoint, "S3_MAX_ATTEMPTS": "2",
                        "S3_MULTIPART_THRESHOLD": str(5 * MiB)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["refused/older.bin"]


def test_a_failed_upload_settles_by_its_own_token_and_size(bucket, s3_server):
    """settle_failed_upload's judgement, object by object: this upload's token and size: a
    success; its token and another size (no complete upload of ours makes that): removed, the
    error stands; another token, or none: left alone, the error stands."""
    from obs_io.streams import UPLOAD_TOKEN, settle_failed_upload
    client = s3_server.client()
    error = OSError("answered 500")
    client.put_object(Bucket=bucket, Key="s/ours.bin", Body=b"12345", Metadata={UPLOAD_TOKEN: "t1"})
    settle_failed_upload(f"s3://{bucket}/s/ours.bin", "t1", 5, error)          # no exception: done
    client.put_object(Bucket=bucket, Key="s/short.bin", Body=b"123", Metadata={UPLOAD_TOKEN: "t2"})
    client.put_object(Bucket=bucket, Key="s/other.bin", Body=b"12345", Metadata={UPLOAD_TOKEN: "t0"})
    client.put_object(Bucket=bucket, Key="s/plain.bin", Body=b"12345")
    for key, token in (("short", "t2"), ("other", "t3"), ("plain", "t4"), ("missing", "t5")):
        with pytest.raises(OSError, match="answered 500"):
            settle_failed_upload(f"s3://{bucket}/s/{key}.bin", token, 5, error)
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == ["s/other.bin", "s/ours.bin", "s/plain.bin"]
