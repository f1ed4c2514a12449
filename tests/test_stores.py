"""Stores as plug-ins (obs_io.store, obs_io.registry): the store contract (store_contract.py)
run against the local disk, the S3 server and the toy store (toy_store.py), and a checkpoint
converted through both tools with source, strategies and output on the toy store, which
obs_io learns of only from the environment (OBS_IO_STORES), as every child process does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import obs_io
import synth
import toy_store
from obs_io.fs import LocalFS, S3FS
from platform_harness import ModelArtsJob, upload
from store_contract import StoreContract

TRANSFORM = str(Path(sys.executable).parent / "transform-checkpoint")


@pytest.fixture
def toy(tmp_path, monkeypatch) -> str:
    """The toy store registered the way child processes see it; returns a bucket's URL."""
    monkeypatch.setenv("OBS_IO_STORES", toy_store.REGISTRATION)
    monkeypatch.setenv(toy_store.DIR_ENV, str(tmp_path / "toy"))
    return toy_store.make_bucket("bucket")


class TestLocalDisk(StoreContract):
    versions = False
    keeps_metadata = False

    @pytest.fixture
    def store(self):
        return obs_io.store_for("/")

    @pytest.fixture
    def root(self, tmp_path):
        return str(tmp_path / "store")


class TestS3(StoreContract):
    @pytest.fixture
    def store(self, s3_env):
        return obs_io.store_for("s3://x/")

    @pytest.fixture
    def root(self, bucket):
        return f"s3://{bucket}/contract"


class TestToyStore(StoreContract):
    @pytest.fixture
    def store(self, toy):
        return obs_io.store_for(toy)

    @pytest.fixture
    def root(self, toy):
        return f"{toy}/contract"


def test_the_registry_serves_each_scheme_by_its_store(toy, monkeypatch):
    assert isinstance(obs_io.store_for("obs://b/k"), S3FS) and obs_io.store_for("S3://b/k") is obs_io.store_for("obs://b/k")
    assert isinstance(obs_io.store_for("/tmp/x"), LocalFS) and isinstance(obs_io.store_for("rel/x"), LocalFS)
    assert type(obs_io.store_for("toy://bucket/k")).__name__ == "ToyStore"
    assert obs_io.is_remote("toy://bucket/k") and obs_io.is_remote("OBS://b/k")
    assert not obs_io.is_remote("/tmp/x") and not obs_io.is_remote("gs://b/k")   # no store: a path
    monkeypatch.delenv("OBS_IO_STORES")
    assert not obs_io.is_remote("toy://bucket/k")
    obs_io.register("toy", toy_store.ToyStore)    # in this process only
    try:
        assert obs_io.is_remote("toy://bucket/k")
    finally:
        obs_io.registry.unregister("toy")


def test_a_store_that_cannot_be_loaded_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OBS_IO_STORES", f"nope={tmp_path}/missing.py:Store,bad=no_such_module:Store")
    for url, culprit in (("nope://b/k", "missing.py:Store"), ("bad://b/k", "no_such_module:Store")):
        with pytest.raises(ValueError, match=f"cannot load the object store .*{culprit}"):
            obs_io.store_for(url)


def test_an_installed_package_registers_a_store_by_entry_point(tmp_path, monkeypatch):
    """An entry point in the group obs_io.stores (name: the scheme) is a registration too."""
    dist = tmp_path / "toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[obs_io.stores]\ntoy = toy_store:ToyStore\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OBS_IO_STORES", raising=False)
    monkeypatch.setattr(obs_io.registry, "_entry_points", None)   # read again, with this package
    assert obs_io.is_remote("toy://bucket/k")
    assert type(obs_io.store_for("toy://bucket/k")).__name__ == "ToyStore"


def test_obs_io_alone_imports_boto3_and_botocore():
    """No module outside obs_io imports boto3, botocore or s3transfer."""
    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for package in ("reshard", "cloud_entry"):
        for path in (repo / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1 \
                        and words[1].split(".")[0] in ("boto3", "botocore", "s3transfer"):
                    offenders.append(f"{path.relative_to(repo)}: {line.strip()}")
    assert not offenders, offenders


# ---------------------------------------------------------------- both tools on the toy store

def test_transform_checkpoint_converts_from_and_to_the_toy_store(models, toy, tmp_path):
    src = upload(models["ref8"], f"{toy}/src/llama8")
    merged = upload(models["merged8"], f"{toy}/strategy/merged8.ckpt")
    dst_strategy = upload(models["s4"], f"{toy}/strategy4")
    out = f"{toy}/out"
    done = subprocess.run([TRANSFORM, "--src_checkpoint", src, "--src_strategy", merged,
                           "--dst_strategy", dst_strategy, "--dst_checkpoint", out],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    obs_io.file.copy_parallel(out, str(tmp_path / "fetched"))
    synth.assert_same_checkpoint_dirs(str(tmp_path / "fetched"), models["ref4"])
    leftovers = [n for n in os.listdir(os.path.join(os.environ[toy_store.DIR_ENV], "bucket"))
                 if n.startswith(".tmp-")]
    assert not leftovers, leftovers


def test_cloud_entry_converts_from_and_to_the_toy_store(models, toy, tmp_path):
    form = {"config": "run_llama_7b.yaml", "load_checkpoint": upload(models["ref8"], f"{toy}/src/llama8"),
            "src_strategy_path_or_dir": upload(models["merged8"], f"{toy}/strategy/merged8.ckpt"),
            "dst_strategy": upload(models["s4"], f"{toy}/strategy4"),
            "auto_trans_ckpt": "True", "transform_only": "True", "remote_save_url": f"{toy}/job",
            "data_parallel": "1", "model_parallel": "2", "pipeline_stage": "2"}
    job = ModelArtsJob(tmp_path / "job", {}, form, nodes=1, cards=4)
    (r,) = job.run()
    assert r.code == 0 and "Traceback" not in r.output, r.output
    obs_io.file.copy_parallel(f"{toy}/job/transformed_checkpoint/llama8", str(tmp_path / "fetched"))
    synth.assert_same_checkpoint_dirs(str(tmp_path / "fetched"), models["ref4"])
