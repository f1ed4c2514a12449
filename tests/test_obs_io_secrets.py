"""Credentials: wrong ones are one line saying which setting to check (against a moto server
that checks signatures, as OBS does), and no key id, secret or session token ever reaches a
log line, also with DEBUG logging and the wire log on, nor an endpoint's user info a message."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import s3server

import obs_io as mox
from test_obs_io_api import _fresh_config  # noqa: F401 - autouse fixture

REPO = Path(__file__).resolve().parents[1]
KEY_ID = "AKIDLOGTEST0123456789"
SECRET = "zzSECRETzz/never+logged0123456789"
TOKEN = "zzTOKENzz/session+token=never-logged-0123456789"




@pytest.fixture(scope="module")
def auth_server():
    server = s3server.start(auth=True)
    server.client().create_bucket(Bucket="auth-bucket")
    server.client().put_object(Bucket="auth-bucket", Key="d/x.txt", Body=b"x")
    yield server
    server.stop()


@pytest.fixture
def auth_env(auth_server, monkeypatch):
    for name in ("OBS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "SESSION_TOKEN", "S3_ADDRESSING_STYLE", "S3_LIST_OBJECTS_V1"):
        monkeypatch.delenv(name, raising=False)
    for key, value in auth_server.env().items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_right_keys_work_on_the_checking_server(auth_server, auth_env):
    mox.file.write("s3://auth-bucket/ok.txt", "signed")
    assert mox.file.read("s3://auth-bucket/ok.txt") == "signed"
    assert mox.file.list_directory("s3://auth-bucket/d") == ["x.txt"]


@pytest.mark.parametrize("wrong", ["secret", "key_id"])
def test_wrong_credentials_say_which_to_check(wrong, auth_server, auth_env):
    """A wrong secret is SignatureDoesNotMatch, an unknown key id InvalidAccessKeyId: each a
    one-line PermissionError naming the URL, the endpoint and the variable to check. A HEAD's
    403 has no code, so stat/read ask once more with a GET to tell which."""
    key_id, secret = auth_server.access_key, auth_server.secret_key
    if wrong == "secret":
        auth_env.setenv("SECRET_ACCESS_KEY", "wrong-secret-0123456789")
        code, check = "SignatureDoesNotMatch", "SECRET_ACCESS_KEY"
    else:
        auth_env.setenv("ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        code, check = "InvalidAccessKeyId", "ACCESS_KEY_ID"
    calls = {"list": lambda: mox.file.list_directory("s3://auth-bucket/d"),
             "read (HEAD first)": lambda: mox.file.read("s3://auth-bucket/d/x.txt"),
             "stat": lambda: mox.file.stat("s3://auth-bucket/d/x.txt"),
             "write": lambda: mox.file.write("s3://auth-bucket/d/new.txt", "n")}
    for what, call in calls.items():
        with pytest.raises(PermissionError) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and code in text and f"check {check}" in text, (what, text)
        assert "s3://auth-bucket/d" in text and auth_server.endpoint in text, (what, text)
        for value in (key_id, secret, "wrong-secret-0123456789"):
            assert value not in text
    r = subprocess.run([sys.executable, "-m", "obs_io", "ls", "s3://auth-bucket/d"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert code in r.stderr and f"check {check}" in r.stderr and auth_server.endpoint in r.stderr


SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
import obs_io as mox
mox.file.write("s3://{bucket}/log/a.txt", "logged")
assert mox.file.read("s3://{bucket}/log/a.txt") == "logged"
mox.file.copy_parallel("s3://{bucket}/log", sys.argv[1])
print(mox.file.list_directory("s3://{bucket}/log", recursive=True))
try:
    mox.file.read("s3://{bucket}/log/missing.txt")
except FileNotFoundError as err:
    logging.getLogger("obs_io").debug("expected: %s", err)
"""


@pytest.mark.parametrize("wire", [False, True], ids=["default", "OBS_IO_WIRE_LOG=1"])
def test_debug_logging_never_shows_key_id_secret_or_token(wire, s3_server, bucket, tmp_path):
    """A script with logging.basicConfig(level=DEBUG), a session token set: botocore's request
    logs (Authorization names the key id; X-Amz-Security-Token and the canonical request carry
    the token) are held back, and with OBS_IO_WIRE_LOG=1 shown with those masked."""
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(REPO), "ACCESS_KEY_ID": KEY_ID,
           "SECRET_ACCESS_KEY": SECRET, "SESSION_TOKEN": TOKEN}
    env.pop("OBS_IO_WIRE_LOG", None)
    if wire:
        env["OBS_IO_WIRE_LOG"] = "1"
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(bucket=bucket), str(tmp_path / "down")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "a.txt" in r.stdout and "expected:" in r.stderr
    if wire:   # the wire log is there, with the places that held credentials masked
        assert "Sending http request" in r.stderr and "Credential=***/" in r.stderr
        assert "x-amz-security-token" in r.stderr.lower()
    else:
        assert "Sending http request" not in r.stderr and "DEBUG:botocore" not in r.stderr
    for secret in (KEY_ID, SECRET, TOKEN):
        assert secret not in r.stderr and secret not in r.stdout, secret
        for part in secret.split("/"):   # nor a recognisable piece (URL-encoded, split, ...)
            if len(part) >= 8:
                assert part not in r.stderr, part


def test_endpoint_with_user_info_is_refused_without_showing_it(s3_server, s3_env, monkeypatch, bucket):
    host = s3_server.endpoint.split("//", 1)[1]
    monkeypatch.setenv("S3_ENDPOINT", f"http://AKUSERINFO123:SKUSERINFO456@{host}")
    with pytest.raises(ValueError) as info:
        mox.file.list_directory(f"s3://{bucket}/")
    text = str(info.value)
    assert "S3_ENDPOINT" in text and f"http://{host}" in text and "user info" in text
    assert "AKUSERINFO123" not in text and "SKUSERINFO456" not in text
    r = subprocess.run([sys.executable, "-m", "obs_io", "ls", f"s3://{bucket}/"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "AKUSERINFO123" not in r.stderr + r.stdout and "SKUSERINFO456" not in r.stderr + r.stdout
    assert f"http://{host}" in r.stderr
    mox.file.set_auth(server=f"https://AK2USERINFO:SK2USERINFO@{host}")
    with pytest.raises(ValueError, match=r"set_auth\(server=...\)") as info:
        mox.current_config()
    assert "SK2USERINFO" not in str(info.value) and "AK2USERINFO" not in str(info.value)


def test_secrets_in_arguments_and_urls_never_reach_a_line_a_dump_or_an_uploaded_log(s3_server, s3_env, tmp_path, models):
    """A job given secrets the ways users give them: in a URL's user info and a presigned query
    (passed on to the training command), as the training's own --api_key, and as a dotted config
    override: none of them in the console, the log files, the logs uploaded to remote_save_url
    or the effective config; the training command still gets the real values. A failing job's
    one line and transform-checkpoint's mask a URL's user info too."""
    import json
    import obs_io
    from platform_harness import upload
    from test_cloud_entry_jobs import LAUNCH, PARALLEL4, entry_env, run_entry
    bucket = "secrets-bucket"
    s3_server.client().create_bucket(Bucket=bucket)
    secrets = {"userinfo AK": "AKUSERINFO7788", "userinfo SK": "SKUSERINFO9900", "presigned key": "AKIDPRESIGN1122",
               "presigned token": "TOKPRESIGN3344", "presigned signature": "SIGPRESIGN5566",
               "api key": "APIKEYSECRET1234", "obs token": "OBSTOKENSECRET5678"}
    passed_on = [f"--data_url=obs://{secrets['userinfo AK']}:{secrets['userinfo SK']}@data-bucket/set",
                 f"--presigned=https://host/x?X-Amz-Credential={secrets['presigned key']}%2F20250101"
                 f"&X-Amz-Security-Token={secrets['presigned token']}&X-Amz-Signature={secrets['presigned signature']}",
                 f"--api_key={secrets['api key']}"]
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    env = entry_env(s3_env, ENTRY_CHECK_REFERENCE=models["ref4"], ENTRY_CHECK_RESULT=tmp_path / "check.json")
    job = tmp_path / "job"
    code, out = run_entry([f"--load_checkpoint={src}", f"--dst_strategy={models['s4']}", "--auto_trans_ckpt=True",
                           "--npu_num_per_node=4", f"--remote_save_url=s3://{bucket}/out",
                           f"--model.obs_token={secrets['obs token']}", *PARALLEL4, *LAUNCH, *passed_on], env, job)
    assert code == 0, out
    assert json.loads((tmp_path / "check.json").read_text())["argv"] == passed_on   # the real values
    assert "running launch command" in out and "--api_key=***" in out and "obs://***@data-bucket/set" in out
    assert "model.obs_token" in out
    obs_io.file.copy_parallel(f"s3://{bucket}/out/logs", str(tmp_path / "uploaded"))
    uploaded = [p for p in (tmp_path / "uploaded").rglob("*.log")]
    assert uploaded
    texts = {"console": out, **{str(p): p.read_text(errors="replace") for p in [*job.rglob("*"), *uploaded]
                                if p.is_file() and p.suffix in (".log", ".yaml", ".txt", ".json")}}
    assert any("effective_config.yaml" in name for name in texts)
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, (what, where)
    # a failing job's one line, and transform-checkpoint's
    code, out = run_entry([f"--load_checkpoint=s3://{secrets['userinfo AK']}:{secrets['userinfo SK']}@{bucket}/nope",
                           f"--dst_strategy={models['s4']}", "--auto_trans_ckpt=True", "--npu_num_per_node=4",
                           *PARALLEL4, *LAUNCH], env, tmp_path / "job2")
    assert code == 2 and "cloud-entry: error" in out, out
    r = subprocess.run([sys.executable, "-m", "reshard",
                        f"--src_checkpoint=s3://{secrets['userinfo AK']}:{secrets['userinfo SK']}@{bucket}/nope",
                        f"--dst_strategy={models['s4']}", f"--dst_checkpoint={tmp_path / 'out'}"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    for text in (out, r.stdout + r.stderr):
        assert secrets["userinfo AK"] not in text and secrets["userinfo SK"] not in text, text
