"""Shared fixtures: a real S3 server (moto server mode on loopback) and a fresh bucket per test."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers as plain modules

import s3server  # noqa: E402

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3_server():
    server = s3server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point obs_io at the test server through the environment, as ModelArts images do."""
    for name in ("OBS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "S3_ADDRESSING_STYLE", "S3_LIST_OBJECTS_V1"):
        monkeypatch.delenv(name, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


@pytest.fixture
def bucket(s3_server, s3_env) -> str:
    """A new empty bucket; its name, e.g. 'test-bucket-3'."""
    name = f"test-bucket-{next(_bucket_ids)}"
    s3_server.client().create_bucket(Bucket=name)
    return name
