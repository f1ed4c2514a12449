"""Shared fixtures: a real S3 server (moto server mode on loopback) and a fresh bucket per test."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers as plain modules

import s3server  # noqa: E402
import synth  # noqa: E402

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


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Sources and MindSpore references: complete -> 8 (dp2 mp2 pp2, optimizer sharded) -> 4
    (dp1 mp2 pp2) -> 1."""
    root = tmp_path_factory.mktemp("entry_models")
    params = synth.llama_params(num_layers=2, vocab=64, hidden=32, ffn=64)
    m = {"root": root, "params": params,
         "complete": synth.write_complete_checkpoint(str(root / "llama.ckpt"), params)}
    m["s8"] = str(root / "strategy8")
    synth.write_strategy(m["s8"], dp=2, mp=2, pp=2, opt_shard=-1, params=params,
                         merged_file=str(root / "merged8.ckpt"))
    m["merged8"] = str(root / "merged8.ckpt")
    m["s4"] = str(root / "strategy4")
    synth.write_strategy(m["s4"], dp=1, mp=2, pp=2, params=params)
    m["ref8"] = synth.ms_transform(m["complete"], str(root / "ckpt8" / "llama8"), None, m["s8"])
    m["ref4"] = synth.ms_transform(m["ref8"], str(root / "ckpt4" / "llama4"), m["merged8"], m["s4"])
    m["ref1"] = synth.ms_transform(m["ref4"], str(root / "ref1"), m["s4"], None)
    m["s8pass"] = str(root / "strategy8_pass")        # what the fake strategy pass writes
    synth.write_strategy(m["s8pass"], dp=2, mp=2, pp=2, num_layers=2)
    m["ref8pass"] = synth.ms_transform(m["complete"], str(root / "ref8pass"), None, m["s8pass"])
    return m


def errors_only(stderr: str) -> str:
    """A tool's stderr without its log lines (`INFO ...`, `DEBUG ...`: transform-checkpoint logs
    to stderr, as cloud-entry does): what is left is the one-line error, if any."""
    return "\n".join(line for line in stderr.strip().splitlines()
                     if not line.startswith(("INFO ", "DEBUG ")))


# The slow part of the suite is what starts the S3 server or builds MindSpore's references (the
# closure of a test's fixtures names one) and the modules that start tools, images or venvs as
# processes: those tests are marked `slow` here, the one place that says so, and
# `pytest -m "not slow"` is the quick subset (under a minute) while `.ci/run` runs them all.
_SLOW_FIXTURES = {"s3_server", "models"}
_SLOW_MODULES = {"test_mindformers_compat_script", "test_install_compat_script", "test_transform_dropin",
                 "test_cloud_entry_launch", "test_assemble", "test_packaging", "test_cli_conventions",
                 "test_linkproxy", "test_reshard_property"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if (_SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or item.path.stem in _SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
