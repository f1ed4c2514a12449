"""A real S3 server for the tests: moto's server mode as a child process on 127.0.0.1.

Why a process and not moto's in-process mock: the product talks HTTP through botocore and
s3transfer exactly as it would to OBS, so retries, multipart, ranged GETs and pagination are
exercised for real.
"""
from __future__ import annotations

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

    def env(self) -> dict[str, str]:
        """The environment a ModelArts-like container would give our code."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "ACCESS_KEY_ID": ACCESS_KEY,
            "SECRET_ACCESS_KEY": SECRET_KEY,
            "S3_USE_HTTPS": "0",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
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


def start(timeout: float = 60.0) -> S3Server:
    port = free_port()
    env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true", AWS_DEFAULT_REGION="us-east-1")
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
            return S3Server(endpoint, proc)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout}s")
