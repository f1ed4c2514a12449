"""Every mox.file function, on local paths, obs:// and s3:// alike (real moto server)."""
from __future__ import annotations

import os
import re

import pytest

import obs_io as mox


@pytest.fixture(autouse=True)
def _fresh_config():
    mox.reset_config()
    yield
    mox.reset_config()


@pytest.fixture(params=["local", "obs", "s3"])
def root(request, tmp_path) -> str:
    """An empty folder: a local directory, or a prefix in a fresh bucket."""
    if request.param == "local":
        path = tmp_path / "root"
        path.mkdir()
        return str(path)
    bucket = request.getfixturevalue("bucket")
    url = f"{request.param}://{bucket}/root"
    mox.file.make_dirs(url)
    return url


def j(root: str, rel: str) -> str:
    return f"{root}/{rel}"


def make_tree(root: str) -> None:
    mox.file.write(j(root, "x.txt"), "top\n")
    mox.file.write(j(root, "a/one.bin"), b"\x00\x01" * 50, binary=True)
    mox.file.write(j(root, "a/b/two.txt"), "two\n")
    mox.file.write(j(root, "a/b/three.log"), "333")
    mox.file.make_dirs(j(root, "empty"))


def test_write_read_append_text_and_binary(root):
    mox.file.write(j(root, "t.txt"), "hello\n")
    mox.file.append(j(root, "t.txt"), "world\n")
    assert mox.file.read(j(root, "t.txt")) == "hello\nworld\n"
    mox.file.write(j(root, "b.bin"), b"\x00\xff", binary=True)
    mox.file.append(j(root, "b.bin"), b"\x01", binary=True)
    assert mox.file.read(j(root, "b.bin"), binary=True) == b"\x00\xff\x01"
    assert mox.file.exists(j(root, "t.txt"))
    assert not mox.file.exists(j(root, "nope.txt"))
    assert not mox.file.is_directory(j(root, "t.txt"))
    st = mox.file.stat(j(root, "b.bin"))
    assert (st.length, st.is_dir) == (3, False) and st.mtime_nsec > 0
    assert mox.file.get_size(j(root, "t.txt")) == 12


def test_append_creates_missing_file(root):
    mox.file.append(j(root, "new.txt"), "a")
    assert mox.file.read(j(root, "new.txt")) == "a"


def test_file_modes_seek_tell_readline(root):
    url = j(root, "f.txt")
    with mox.file.File(url, "w") as f:
        f.write("line1\nline2\n")
        f.writelines(["line3\n"])
        f.flush()
    with mox.file.File(url, "r") as f:
        assert f.readline() == "line1\n"
        assert f.readlines() == ["line2\n", "line3\n"]
    with mox.file.File(url, "a") as f:
        f.write("line4\n")
    with mox.file.File(url, "rb") as f:
        f.seek(6)
        assert f.read(5) == b"line2"
        assert f.tell() == 11
        f.seek(-6, os.SEEK_END)
        assert f.read() == b"line4\n"
        f.seek(0)
        assert [line for line in f][0] == b"line1\n"
    with mox.file.File(j(root, "g.bin"), "wb") as f:
        f.write(b"abc")
    with mox.file.File(j(root, "g.bin"), "ab") as f:
        f.write(b"def")
    assert mox.file.read(j(root, "g.bin"), binary=True) == b"abcdef"
    f = mox.file.File(j(root, "g.bin"), "rb")
    assert f.read(2) == b"ab" and not f.closed
    f.close()
    assert f.closed


def test_failed_write_publishes_nothing(root):
    url = j(root, "half.bin")
    with pytest.raises(RuntimeError):
        with mox.file.File(url, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not mox.file.exists(url)
    assert mox.file.list_directory(root) == []


def test_tree_listing_walk_scan_glob_size(root):
    make_tree(root)
    assert mox.file.list_directory(root) == ["a", "empty", "x.txt"]
    assert mox.file.list_directory(root, recursive=True) == [
        "a", "a/b", "a/b/three.log", "a/b/two.txt", "a/one.bin", "empty", "x.txt"]
    assert mox.file.list_directory(j(root, "a")) == ["b", "one.bin"]
    assert mox.file.list_directory(j(root, "empty")) == []
    assert mox.file.is_directory(j(root, "a/b")) and mox.file.is_directory(j(root, "empty"))
    assert mox.file.exists(j(root, "a"))
    assert mox.file.stat(j(root, "a")).is_dir

    walked = {r[len(root):]: (sorted(d), sorted(f)) for r, d, f in mox.file.walk(root)}
    assert walked == {"": (["a", "empty"], ["x.txt"]), "/a": (["b"], ["one.bin"]),
                      "/a/b": ([], ["three.log", "two.txt"]), "/empty": ([], [])}

    entries = {e.name: e for e in mox.file.scan_dir(j(root, "a"))}
    assert entries["b"].is_dir() and entries["one.bin"].is_file()
    assert entries["one.bin"].stat().length == 100
    assert entries["one.bin"].path == j(root, "a/one.bin")

    assert mox.file.glob(j(root, "a/b/*.txt")) == [j(root, "a/b/two.txt")]
    assert mox.file.glob(j(root, "*/one.bin")) == [j(root, "a/one.bin")]
    assert mox.file.glob(j(root, "a/*")) == [j(root, "a/b"), j(root, "a/one.bin")]
    assert mox.file.glob(j(root, "*.none")) == []

    assert mox.file.get_size(root, recursive=True) == 4 + 100 + 4 + 3
    assert mox.file.get_size(j(root, "a/b"), recursive=True) == 7


def test_mk_dir_and_make_dirs(root):
    mox.file.make_dirs(j(root, "p/q/r"))
    assert mox.file.is_directory(j(root, "p/q/r"))
    mox.file.mk_dir(j(root, "single"))
    assert mox.file.is_directory(j(root, "single"))
    mox.file.make_dirs(j(root, "p/q/r"))  # idempotent


def test_remove_file_and_tree(root):
    make_tree(root)
    mox.file.remove(j(root, "x.txt"))
    assert not mox.file.exists(j(root, "x.txt"))
    with pytest.raises(IsADirectoryError, match="recursive"):
        mox.file.remove(j(root, "a"))
    mox.file.remove(j(root, "a"), recursive=True)
    assert not mox.file.exists(j(root, "a"))
    assert mox.file.list_directory(root) == ["empty"]
    with pytest.raises(FileNotFoundError, match="nope"):
        mox.file.remove(j(root, "nope"))


def test_rename_and_copy_within(root):
    make_tree(root)
    mox.file.rename(j(root, "x.txt"), j(root, "moved/x2.txt"))
    assert mox.file.read(j(root, "moved/x2.txt")) == "top\n"
    assert not mox.file.exists(j(root, "x.txt"))
    mox.file.rename(j(root, "a"), j(root, "c"))
    assert mox.file.list_directory(j(root, "c"), recursive=True) == [
        "b", "b/three.log", "b/two.txt", "one.bin"]
    assert not mox.file.exists(j(root, "a"))
    mox.file.copy(j(root, "c/one.bin"), j(root, "copy.bin"))
    assert mox.file.read(j(root, "copy.bin"), binary=True) == b"\x00\x01" * 50
    mox.file.copy_parallel(j(root, "c"), j(root, "d"))
    assert mox.file.list_directory(j(root, "d"), recursive=True) == [
        "b", "b/three.log", "b/two.txt", "one.bin"]
    mox.file.copy_parallel(j(root, "c"), j(root, "e"), file_list=["b/two.txt"])
    assert mox.file.list_directory(j(root, "e"), recursive=True) == ["b", "b/two.txt"]


def test_missing_things_raise_file_not_found_naming_url(root):
    missing = j(root, "nope/deeper.txt")
    for call in (lambda: mox.file.read(missing), lambda: mox.file.stat(missing),
                 lambda: mox.file.list_directory(missing), lambda: mox.file.get_size(missing),
                 lambda: mox.file.File(missing, "rb"), lambda: mox.file.copy(missing, j(root, "y")),
                 lambda: mox.file.copy_parallel(j(root, "nope"), j(root, "z"))):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert "nope" in str(info.value)


@pytest.mark.parametrize("mode", ["rw", "q", "rbb", "rbt", "+"])
def test_unsupported_mode_is_value_error(root, mode):
    with pytest.raises(ValueError, match=re.escape(f"mode {mode!r}")):
        mox.file.File(j(root, "x"), mode)
