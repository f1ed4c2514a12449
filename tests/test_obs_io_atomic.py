"""obs_io.atomic (the one temp-name-then-rename writer), the package's light import, the
one-way import between transfer and workers, and the retry of bodies that break off in ranged
reads."""
from __future__ import annotations

import errno
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faultproxy import FaultProxy

import obs_io as mox
import obs_io.atomic
import obs_io.remote_file
from obs_io.atomic import Landing, write_atomic

REPO = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_atomic_and_package_import_without_boto():
    r = python("import obs_io.atomic, obs_io, sys\n"
               "assert obs_io.is_remote('obs://b/k') and obs_io.DirEntry and obs_io.current_config()\n"
               "heavy = [m for m in ('boto3', 'botocore', 's3transfer') if m in sys.modules]\n"
               "assert not heavy, heavy\n"
               "assert obs_io.file.copy_parallel and 'botocore' in sys.modules  # loads on first use\n")
    assert r.returncode == 0, r.stderr


def test_transfer_does_not_import_workers():
    r = python("import sys, obs_io.transfer\n"
               "assert 'obs_io.workers' not in sys.modules and 'obs_io.batch' not in sys.modules\n"
               "import obs_io.workers\n")
    assert r.returncode == 0, r.stderr


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".obsio-" in p.name]


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    """Every os.fsync call's descriptor, from here on."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_write_atomic_replaces_and_states_its_durability(tmp_path, fsyncs):
    path = tmp_path / "new" / "marker.txt"      # the folder is created
    write_atomic(str(path), "done\n", durable=True)
    assert path.read_text() == "done\n" and len(fsyncs) == 2  # the file, then its folder
    write_atomic(str(path), b"\x00\x01", durable=False)
    assert path.read_bytes() == b"\x00\x01" and len(fsyncs) == 2  # bulk data: no fsync
    assert leftovers(path.parent) == []


def test_a_failing_fill_leaves_no_temp_file_and_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="check failed"):
        with Landing(str(path), durable=True) as temp:
            Path(temp).write_text("half")
            raise RuntimeError("check failed")
    assert path.read_text() == "old" and leftovers(tmp_path) == []


class _FailingClose:
    """A file whose close() fails after closing, as a full disk's deferred write error does."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def failing_close_open(*args, **kwargs):
    return _FailingClose(open(*args, **kwargs))


def test_a_failing_close_publishes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    monkeypatch.setattr(obs_io.atomic, "open", failing_close_open, raising=False)
    with pytest.raises(OSError, match="No space"):
        write_atomic(str(path), "new", durable=True)
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    monkeypatch.setattr(obs_io.remote_file, "open", failing_close_open, raising=False)
    for binary in (True, False):
        f = mox.file.File(str(path), "wb" if binary else "w")
        f.write(b"new" if binary else "new")
        with pytest.raises(OSError, match="No space"):
            f.close()
        assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_file_writer_is_durable_downloads_are_not(tmp_path, bucket, fsyncs):
    mox.file.write(str(tmp_path / "marker.txt"), "ok")
    assert len(fsyncs) == 2
    mox.file.write(f"s3://{bucket}/d/a.bin", b"a" * 100, binary=True)
    mox.file.copy_parallel(f"s3://{bucket}/d", str(tmp_path / "down"))
    mox.file.copy(str(tmp_path / "marker.txt"), str(tmp_path / "copy.txt"))
    assert (tmp_path / "down" / "a.bin").read_bytes() == b"a" * 100 and len(fsyncs) == 2


def test_ranged_reads_fetch_a_broken_body_again(bucket, s3_server, s3_env, monkeypatch):
    data = os.urandom(300_000)
    s3_server.client().put_object(Bucket=bucket, Key="r.bin", Body=data)
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        numbers = itertools.count()
        proxy.truncate = lambda method, path: method == "GET" and next(numbers) % 2 == 0  # 1st, 3rd, ...
        with mox.file.File(f"s3://{bucket}/r.bin", "rb") as f:
            f.seek(1000)
            assert f.read(5000) == data[1000:6000]
            f.seek(0)
            assert f.read() == data
        gets = [r for r in proxy.records if r.method == "GET"]
        cut = [r.body_bytes < 2 * len(data) // 3 for r in gets]  # a broken body is half of one
        assert cut == [True, False, True, False]
