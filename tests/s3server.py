"""A real S3 server for the tests: moto's server mode as a child process on 127.0.0.1.

Why a process and not moto's in-process mock: the product talks HTTP through botocore and
s3transfer exactly as it would to OBS, so retries, multipart, ranged GETs and pagination are
exercised for real.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

ACCESS_KEY = "AKIATESTACCESSKEY01"
SECRET_KEY = "tEsTsEcReTkEy/DoNotLog+0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    access_key: str = ACCESS_KEY   # an auth-checking server (start(auth=True)) has its own
    secret_key: str = SECRET_KEY

    def env(self) -> dict[str, str]:
        """The environment a ModelArts-like container would give our code."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "ACCESS_KEY_ID": self.access_key,
            "SECRET_ACCESS_KEY": self.secret_key,
            "S3_USE_HTTPS": "0",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate, and kill if it does not end within 10 s: a wait with a bound."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# The unauthenticated IAM actions _make_user spends before moto starts checking every request.
_SETUP_ACTIONS = 3


def start(timeout: float = 60.0, auth: bool = False) -> S3Server:
    """A moto server on a free loopback port. auth=True: one that checks every request's
    signature and access key id (moto's INITIAL_NO_AUTH_ACTION_COUNT), as OBS does, with an
    IAM user allowed everything whose keys the returned server carries; wrong keys then get
    InvalidAccessKeyId or SignatureDoesNotMatch, as from a real store."""
    port = free_port()
    env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true", AWS_DEFAULT_REGION="us-east-1")
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return _make_user(S3Server(endpoint, proc)) if auth else S3Server(endpoint, proc)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout}s")


def _make_user(server: S3Server) -> S3Server:
    """Exactly _SETUP_ACTIONS unauthenticated IAM calls: a user, an allow-all policy, its key."""
    import boto3

    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="obs-io-test")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="obs-io-test", PolicyName="everything", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="obs-io-test")["AccessKey"]
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    return server
