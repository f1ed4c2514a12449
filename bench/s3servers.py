"""The local S3 servers the benchmarks run against: moto (the tests' server) and s3rver.

- moto (server mode, tests/s3server.py): Python, GIL-bound, sharing the cores with the client.
  Its every GET, ranged or not, reads the whole object under a per-object lock, so ranged reads
  (s3transfer's parts of a big object, a reader that fetches a file's tensors in place) are
  bounded by the server, not by the client or a link.
- s3rver (npm `s3rver@3.7.1`, Node): objects as files, ranges read as ranges; installed on first
  use with npm into bench/_work/node and run by bench/s3rver_main.js, which fills in what obs_io
  meets on OBS and s3rver lacks (ListMultipartUploads and AbortMultipartUpload, without which
  every multipart upload of obs_io failed; S3's `-<parts>` ETag for a multipart object; a PUT
  answered only once its file is in place; UploadPartCopy). Still unlike S3/OBS: it ignores
  If-Match and If-None-Match on PUT and answers `Range: bytes=0-0` with the whole object;
  nothing the benchmarks' jobs depend on.

Both have the interface of tests/s3server.S3Server: endpoint, env(), client(), stop().
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Union

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import s3server  # noqa: E402

NODE_DIR = REPO / "bench" / "_work" / "node"
S3RVER = "s3rver@3.7.1"
MAIN = Path(__file__).resolve().parent / "s3rver_main.js"   # s3rver with its gaps filled
SERVERS = ("moto", "s3rver")


@dataclass
class S3rver:
    """s3rver as a child process; the same interface as tests/s3server.S3Server."""

    endpoint: str
    process: subprocess.Popen
    data: str
    KEY = "S3RVER"  # s3rver's fixed credentials

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT": self.endpoint, "ACCESS_KEY_ID": self.KEY, "SECRET_ACCESS_KEY": self.KEY,
                "S3_USE_HTTPS": "0"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.KEY,
                            aws_secret_access_key=self.KEY, region_name="us-east-1")

    def stop(self) -> None:
        s3server.stop_process(self.process)
        shutil.rmtree(self.data, ignore_errors=True)


def start_s3rver(timeout: float = 30.0, data_root: str | None = None) -> S3rver | None:
    """Install s3rver with npm on first use; None (with the reason printed) when that fails.
    Its objects are files in a new folder under data_root (the system's temporary folder by
    default), removed by stop()."""
    exe = NODE_DIR / "node_modules" / ".bin" / "s3rver"
    node = shutil.which("node")
    if not exe.exists() or node is None:
        if not shutil.which("npm") or node is None:
            print("s3rver: skipped, npm or node is not installed", flush=True)
            return None
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                               S3RVER], capture_output=True, text=True)
        if done.returncode != 0 or not exe.exists():
            print(f"s3rver: skipped, npm install failed: {done.stderr.strip()[-300:]}", flush=True)
            return None
    port = s3server.free_port()
    if data_root:
        os.makedirs(data_root, exist_ok=True)
    data = tempfile.mkdtemp(prefix="s3rver_", dir=data_root)
    # s3rver's ListObjectsV2 continuation tokens use DES, which Node 17+ has only in OpenSSL's
    # legacy provider (without it every truncated listing is a 500).
    env = dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider")
    proc = subprocess.Popen([node, str(MAIN), data, "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
        except urllib.error.HTTPError:  # any S3 answer (403 for an anonymous list) means it is up
            return S3rver(endpoint, proc, data)
        except OSError:
            time.sleep(0.2)
            continue
        return S3rver(endpoint, proc, data)
    proc.kill()
    proc.wait(10)
    shutil.rmtree(data, ignore_errors=True)
    print(f"s3rver: skipped, it did not answer on {endpoint}", flush=True)
    return None


Server = Union[s3server.S3Server, S3rver]


def start(name: str, data_root: str | None = None) -> Server | None:
    """The server called `name` (one of SERVERS), or None when s3rver cannot be started (the
    reason printed). data_root: where s3rver keeps its objects (moto keeps them in memory)."""
    if name == "moto":
        return s3server.start()
    if name == "s3rver":
        return start_s3rver(data_root=data_root)
    raise ValueError(f"unknown S3 server {name!r}; one of {', '.join(SERVERS)}")
