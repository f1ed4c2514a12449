"""Configuration (environment, set_auth, addressing style, clients), secrets, install_as_moxing
and the command line."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faultproxy import FaultProxy

import obs_io as mox
from obs_io.client import get_client

REPO = Path(__file__).resolve().parents[1]
SECRET = "zzSECRETzz-recognizable-0123456789"
TOKEN = "zzTOKENzz-recognizable-session"
HUAWEI = "obs.cn-north-4.myhuaweicloud.com"


@pytest.fixture(autouse=True)
def _fresh_config():
    mox.reset_config()
    yield
    mox.reset_config()


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("S3_ENDPOINT", "OBS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "ACCESS_KEY_ID",
                 "SECRET_ACCESS_KEY", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "SESSION_TOKEN", "SECURITY_TOKEN",
                 "S3_USE_HTTPS", "S3_ADDRESSING_STYLE", "S3_LIST_OBJECTS_V1", "S3_READ_PART_MIB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKFAKE")  # presigning needs some credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SKFAKE")
    return monkeypatch


def presigned(cfg) -> str:
    return get_client(cfg).generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})


def test_huawei_endpoint_is_virtual_style_https(clean_env):
    clean_env.setenv("S3_ENDPOINT", HUAWEI)
    cfg = mox.current_config()
    assert (cfg.endpoint, cfg.addressing_style, cfg.region) == (f"https://{HUAWEI}", "virtual", "cn-north-4")
    assert presigned(cfg).startswith(f"https://bkt.{HUAWEI}/k?")


def test_other_endpoint_is_path_style_and_overridable(clean_env):
    clean_env.setenv("OBS_ENDPOINT", "10.0.0.5:9000")
    clean_env.setenv("S3_USE_HTTPS", "0")
    cfg = mox.current_config()
    assert (cfg.endpoint, cfg.addressing_style) == ("http://10.0.0.5:9000", "path")
    assert presigned(cfg).startswith("http://10.0.0.5:9000/bkt/k?")
    clean_env.setenv("S3_ADDRESSING_STYLE", "virtual")
    assert mox.current_config().addressing_style == "virtual"
    clean_env.setenv("S3_ENDPOINT", HUAWEI)
    clean_env.setenv("S3_USE_HTTPS", "1")
    mox.file.set_auth(path_style=True)
    assert presigned(mox.current_config()).startswith(f"https://{HUAWEI}/bkt/k?")


def test_boolean_variables_that_are_neither_true_nor_false_are_errors(clean_env):
    clean_env.setenv("S3_ENDPOINT", HUAWEI)
    clean_env.setenv("S3_VERIFY_SSL", "ture")      # a typo must not turn certificate checks off
    with pytest.raises(ValueError, match="S3_VERIFY_SSL='ture'"):
        mox.current_config()
    clean_env.setenv("S3_VERIFY_SSL", "off")
    assert mox.current_config().verify_ssl is False


def test_client_settings_and_cache(clean_env):
    clean_env.setenv("S3_ENDPOINT", HUAWEI)
    mox.file.set_auth(ak="AK", sk=SECRET, retry=4)
    cfg = mox.current_config()
    client = get_client(cfg)
    conf = client.meta.config
    assert conf.signature_version == "s3v4"
    assert conf.request_checksum_calculation == "when_required"
    assert conf.response_checksum_validation == "when_required"
    assert conf.retries == {"mode": "standard", "total_max_attempts": 4}
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(get_client(mox.current_config()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c is client for c in seen)
    mox.file.set_auth(retry=5)
    assert get_client(mox.current_config()) is not client


def test_environment_names(clean_env):
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AK1")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "SK1")
    clean_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    cfg = mox.current_config()
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("AK1", "SK1", TOKEN)
    clean_env.setenv("ACCESS_KEY_ID", "AK2")  # the ModelArts name wins
    assert mox.current_config().access_key == "AK2"
    clean_env.setenv("S3_LIST_OBJECTS_V1", "true")
    assert mox.current_config().list_objects_v1
    assert mox.S3Config().part_size(10 ** 12) >= 10 ** 12 / 10_000  # 1 TB fits in 10,000 parts
    assert mox.S3Config().part_size(1) == 8 * 2 ** 20
    MiB = 2 ** 20   # downloads: about a range per thread, at least a part, at most S3_READ_PART_MIB
    assert mox.S3Config().range_size(512 * MiB, 16) == 16 * MiB
    assert mox.S3Config().range_size(10 * MiB, 16) == 8 * MiB
    assert mox.S3Config().range_size(10 ** 12, 16) == 16 * MiB
    assert mox.S3Config(read_part_bytes=64 * MiB).range_size(512 * MiB, 16) == 32 * MiB
    assert mox.S3Config(read_part_bytes=MiB).range_size(10 * MiB, 16) == MiB
    clean_env.setenv("S3_READ_PART_MIB", "64")
    assert mox.current_config().read_part_bytes == 64 * MiB
    clean_env.setenv("S3_READ_PART_MIB", "0")
    with pytest.raises(ValueError, match="S3_READ_PART_MIB"):
        mox.current_config()
    clean_env.delenv("S3_READ_PART_MIB")
    with pytest.raises(ValueError, match="bogus"):
        mox.configure(bogus=1)


def test_set_auth_overrides_environment(s3_server, clean_env, tmp_path):
    host, port = s3_server.endpoint.rsplit("//", 1)[1].split(":")
    clean_env.setenv("S3_ENDPOINT", "unreachable.invalid")
    s3_server.client().create_bucket(Bucket="auth-bucket")
    from s3server import ACCESS_KEY, SECRET_KEY
    mox.file.set_auth(ak=ACCESS_KEY, sk=SECRET_KEY, server=host, port=int(port), is_secure=False)
    mox.file.write("obs://auth-bucket/a.txt", "via set_auth")
    assert mox.file.read("obs://auth-bucket/a.txt") == "via set_auth"


def test_secrets_absent_from_logs_errors_and_reprs(s3_server, clean_env, tmp_path, caplog):
    clean_env.setenv("S3_USE_HTTPS", "0")
    s3_server.client().create_bucket(Bucket="secret-bucket")
    clean_env.setenv("ACCESS_KEY_ID", "AKIDSECRETTEST")
    clean_env.setenv("SECRET_ACCESS_KEY", SECRET)
    clean_env.setenv("SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    messages = []
    with FaultProxy(s3_server.endpoint) as proxy:
        clean_env.setenv("S3_ENDPOINT", proxy.endpoint)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f.txt").write_text("x")
        mox.file.copy_parallel(str(tmp_path / "src"), "obs://secret-bucket/ok")
        proxy.rules.append(lambda method, path: (403, "SignatureDoesNotMatch") if "denied" in path else None)
        proxy.rules.append(lambda method, path: (500, "InternalError") if "broken" in path else None)
        for call in (lambda: mox.file.read("obs://secret-bucket/missing"),
                     lambda: mox.file.read("obs://secret-bucket/denied"),
                     lambda: mox.file.copy(str(tmp_path / "src" / "f.txt"), "obs://secret-bucket/denied"),
                     lambda: mox.file.list_directory("obs://no-bucket-here/x"),
                     lambda: mox.file.stat("obs://secret-bucket/broken")):
            mox.configure(max_attempts=2)
            with pytest.raises(OSError) as info:
                call()
            messages.append(f"{type(info.value).__name__}: {info.value} {info.value!r}")
        messages.append(repr(mox.file.File("obs://secret-bucket/ok/f.txt", "rb")))
    assert messages[1].startswith("PermissionError") and "access denied" in messages[1]
    assert messages[2].startswith("PermissionError")
    assert all("\n" not in m for m in messages[:5])
    cfg = mox.current_config()
    everything = "\n".join(messages + [repr(cfg), str(cfg), caplog.text])
    assert "obs_io" in caplog.text  # progress lines were logged
    assert SECRET not in everything and TOKEN not in "\n".join(messages + [repr(cfg)])
    assert "credentials=set" in repr(cfg)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "obs_io", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_cli(s3_env, bucket, tmp_path):
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "f.txt").write_text("hello")
    ok = run_cli("cp", str(tmp_path / "src"), f"obs://{bucket}/cli")
    assert ok.returncode == 0, ok.stderr
    ls = run_cli("ls", "-r", f"obs://{bucket}/cli")
    assert (ls.returncode, ls.stdout.split()) == (0, ["d/", "d/f.txt"])
    st = run_cli("stat", f"obs://{bucket}/cli/d/f.txt")
    assert st.returncode == 0 and "5 bytes" in st.stdout
    for bad, culprit in ((("ls", "obs://"), "obs://"), (("stat", f"obs://{bucket}/nope"), "nope"),
                         (("ls", "obs://no-such-bucket-cli/x"), "no-such-bucket-cli"),
                         (("cp", "only-one-arg"), "dst"), (("frobnicate",), "frobnicate"),
                         (("cp", "--threads", "0", "a", "b"), "threads")):
        r = run_cli(*bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and culprit in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr
    rm = run_cli("rm", "-r", f"obs://{bucket}/cli")
    assert rm.returncode == 0 and not mox.file.exists(f"obs://{bucket}/cli")


def test_install_as_moxing(s3_env, bucket, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.ckpt").write_bytes(b"weights")
    code = f"""
import obs_io
obs_io.install_as_moxing()
import moxing as mox
import moxing.file
from moxing.file import copy_parallel
assert mox.file is moxing.file and mox is obs_io
mox.file.copy_parallel({str(tmp_path / 'src')!r}, 'obs://{bucket}/m')
print(mox.file.list_directory('obs://{bucket}/m'))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['w.ckpt']"


def test_is_remote():
    assert mox.is_remote("obs://b/k") and mox.is_remote("s3://b") and mox.is_remote("OBS://b/k")
    assert not mox.is_remote("/cache/x") and not mox.is_remote("relative/obs://x")


def test_missing_credentials_is_one_line_permission_error(s3_server, clean_env):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        clean_env.delenv(name)
    clean_env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    clean_env.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    clean_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clean_env.setenv("S3_ENDPOINT", s3_server.endpoint)
    with pytest.raises(PermissionError, match="no credentials") as info:
        mox.file.read("obs://some-bucket/x")
    assert "ACCESS_KEY_ID" in str(info.value) and "\n" not in str(info.value)
