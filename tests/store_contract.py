"""The contract every object store (obs_io.store.ObjectStore) keeps, as a base class of tests
(fsspec's tests/abstract is the model): a store's test class inherits StoreContract and gives
two fixtures, `store` (the instance) and `root` (an empty folder URL, or path, to work under),
and, where the store differs, the class attributes below. tests/test_stores.py runs it against
the local disk, the S3 server and the toy store.

What it holds a store to: the primitives (list, head, read_range, open_writer, delete), the
derived file-system view obs_io.file uses, the moxing API over the store, and the rules of
DEVELOPERS.md: nothing under a final name before a writer committed, nothing left by an
aborted one, reads pinned to one version.
"""
from __future__ import annotations

import io
import os

import pytest

import obs_io
from obs_io.errors import ObjectChanged
from obs_io.store import ObjectStore
from obs_io.streams import UPLOAD_TOKEN, UploadCancelled, download_in_order, upload_size
from obs_io.urls import join

MiB = 1 << 20


class StoreContract:
    versions = True          # head() gives an ETag, and a read pinned to a replaced one fails
    keeps_metadata = True    # head() returns the user metadata a writer set
    large = 12 * MiB         # a write that goes in several parts where the store has parts

    @pytest.fixture
    def store(self) -> ObjectStore:
        raise NotImplementedError("a store's test class gives its store")

    @pytest.fixture
    def root(self) -> str:
        raise NotImplementedError("a store's test class gives an empty folder to work under")

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def put(store: ObjectStore, url: str, data: bytes, metadata=None, pieces: int = 1) -> None:
        writer = store.open_writer(url, len(data), metadata)
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
        writer.commit()

    # -- head, write, read ---------------------------------------------------------------------
    def test_a_written_object_is_there_whole_with_its_size_version_and_metadata(self, store, root):
        url = join(root, "a/b.bin")
        assert store.head(url) is None
        data = os.urandom(100_000)
        self.put(store, url, data, {UPLOAD_TOKEN: "t1"}, pieces=7)
        info = store.head(url)
        assert info is not None and info.size == len(data)
        assert store.read_range(url, 0, len(data), info.etag) == data
        if self.versions:
            assert info.etag
        if self.keeps_metadata:
            assert info.metadata.get(UPLOAD_TOKEN) == "t1"
            assert upload_size(url, "t1") == len(data) and upload_size(url, "t2") is None

    def test_ranged_reads_return_the_bytes_asked_for_and_stop_at_the_end(self, store, root):
        url = join(root, "r.bin")
        data = bytes(range(256)) * 40
        self.put(store, url, data)
        etag = store.head(url).etag
        assert store.read_range(url, 0, 10, etag) == data[:10]
        assert store.read_range(url, 1000, 3000, etag) == data[1000:4000]
        assert store.read_range(url, len(data) - 5, 100, etag) == data[-5:]
        got = []
        download_in_order(url, got.append, len(data), etag, part=1024, threads=3, chunks=2)
        assert b"".join(got) == data

    def test_a_read_pinned_to_a_replaced_version_fails(self, store, root):
        url = join(root, "v.bin")
        self.put(store, url, b"first version")
        old = store.head(url).etag
        self.put(store, url, b"second version, longer")
        if not self.versions:   # a store without versions says so: no ETag to pin a read to
            assert not old and store.read_range(url, 0, 6) == b"second"
            return
        with pytest.raises(ObjectChanged):
            store.read_range(url, 0, 5, old)

    def test_an_empty_object(self, store, root):
        url = join(root, "empty")
        self.put(store, url, b"")
        assert store.head(url).size == 0
        assert store.read_range(url, 0, 0, store.head(url).etag) == b""
        assert obs_io.file.read(url, binary=True) == b""

    def test_a_large_object_written_in_many_pieces(self, store, root):
        url = join(root, "large.bin")
        data = os.urandom(self.large)
        self.put(store, url, data, pieces=50)
        assert store.head(url).size == len(data)
        assert store.read_range(url, 5 * MiB, MiB, store.head(url).etag) == data[5 * MiB:6 * MiB]
        assert store.abort_uploads(root) == 0      # nothing left half-way

    def test_nothing_is_under_the_key_before_commit_nor_after_abort(self, store, root):
        url = join(root, "w.bin")
        writer = store.open_writer(url, 3 * MiB)
        writer.write(os.urandom(3 * MiB))
        assert store.head(url) is None
        writer.abort()
        writer.abort()   # twice is harmless
        assert store.head(url) is None
        assert not store.exists(url)
        assert store.abort_uploads(root) == 0

    def test_a_failed_replacement_keeps_the_old_object(self, store, root):
        url = join(root, "keep.bin")
        self.put(store, url, b"old")
        writer = store.open_writer(url, 10)
        writer.write(b"new and half")
        writer.abort()
        assert store.read_range(url, 0, 10) == b"old"

    def test_a_file_uploaded_while_it_grows_and_one_abandoned(self, store, root, tmp_path):
        path = tmp_path / "growing.bin"
        data = os.urandom(3 * MiB)
        with open(path, "wb") as f:
            upload = store.growing_upload(str(path), join(root, "grown.bin"), len(data))
            for i in range(0, len(data), MiB):
                f.write(data[i:i + MiB])
                f.flush()
        upload.finish(len(data))
        assert store.read_range(join(root, "grown.bin"), 0, len(data)) == data
        got = io.BytesIO()
        store.download_fileobj(join(root, "grown.bin"), got, len(data))
        assert got.getvalue() == data
        path.write_bytes(b"half")
        abandoned = store.growing_upload(str(path), join(root, "abandoned.bin"), MiB)
        abandoned.abort()
        assert store.head(join(root, "abandoned.bin")) is None
        with pytest.raises(UploadCancelled):   # finish() after abort(): the upload did not happen
            abandoned.finish(4)
        assert store.abort_uploads(root) == 0

    # -- listing, delete, folders -------------------------------------------------------------
    def test_list_gives_children_or_descendants_with_sizes(self, store, root):
        for name, size in (("x/1.bin", 3), ("x/2.bin", 5), ("x/sub/3.bin", 7), ("y.bin", 1)):
            self.put(store, join(root, name), b"z" * size)
        assert [(e.name, e.dir, e.length) for e in store.list(join(root, "x"))] == \
            [("1.bin", False, 3), ("2.bin", False, 5), ("sub", True, 0)]
        files = {e.name: e.length for e in store.list(root, recursive=True) if not e.dir}
        assert files == {"x/1.bin": 3, "x/2.bin": 5, "x/sub/3.bin": 7, "y.bin": 1}
        assert {e.name for e in store.list(root, recursive=True) if e.dir} == {"x", "x/sub"}
        if self.versions:
            assert all(e.etag for e in store.list(join(root, "x")) if not e.dir)

    def test_a_missing_folder_and_an_object_are_not_listed(self, store, root):
        self.put(store, join(root, "f.bin"), b"1")
        with pytest.raises(FileNotFoundError):
            store.list(join(root, "nothing"))
        with pytest.raises(NotADirectoryError):
            store.list(join(root, "f.bin"))

    def test_delete_and_the_derived_file_system_view(self, store, root):
        self.put(store, join(root, "d/a.bin"), b"abc")
        self.put(store, join(root, "d/e/b.bin"), b"de")
        assert store.exists(join(root, "d/a.bin")) and store.isdir(join(root, "d"))
        assert store.stat(join(root, "d/a.bin")).length == 3 and store.stat(join(root, "d")).is_dir
        store.delete(join(root, "d/a.bin"))
        store.delete(join(root, "d/a.bin"))   # nothing there: no error
        assert not store.exists(join(root, "d/a.bin"))
        with pytest.raises(IsADirectoryError):
            store.rm(join(root, "d"), recursive=False)
        store.rm(join(root, "d"), recursive=True)
        assert not store.exists(join(root, "d"))
        with pytest.raises(FileNotFoundError):
            store.rm(join(root, "d"), recursive=True)

    def test_makedirs_makes_an_empty_folder(self, store, root):
        store.makedirs(join(root, "made"))
        assert store.isdir(join(root, "made"))

    def test_a_copy_inside_the_store_server_side_where_it_has_it(self, store, root):
        self.put(store, join(root, "c1"), b"copied bytes", {UPLOAD_TOKEN: "t"})
        if store.server_side_copy:
            store.copy(join(root, "c1"), join(root, "c2"))
        else:   # no copy of its own: it says so, and obs_io copies through its reads and writes
            with pytest.raises(NotImplementedError):
                store.copy(join(root, "c1"), join(root, "c2"))
            obs_io.file.copy(join(root, "c1"), join(root, "c2"))
        assert store.read_range(join(root, "c2"), 0, 100) == b"copied bytes"

    # -- the moxing API over the store ----------------------------------------------------------
    def test_the_moxing_api_round_trip(self, store, root, tmp_path):
        mox = obs_io.file
        local = tmp_path / "tree"
        (local / "rank_0").mkdir(parents=True)
        (local / "rank_0" / "a.ckpt").write_bytes(os.urandom(300_000))
        (local / "b.json").write_text("{}")
        mox.copy_parallel(str(local), join(root, "tree"))
        assert sorted(mox.list_directory(join(root, "tree"), recursive=True)) == \
            ["b.json", "rank_0", "rank_0/a.ckpt"]
        back = tmp_path / "back"
        mox.copy_parallel(join(root, "tree"), str(back))
        assert (back / "rank_0" / "a.ckpt").read_bytes() == (local / "rank_0" / "a.ckpt").read_bytes()
        mox.write(join(root, "m.txt"), "hello")
        mox.append(join(root, "m.txt"), " world")
        assert mox.read(join(root, "m.txt")) == "hello world"
        with mox.File(join(root, "tree/rank_0/a.ckpt"), "rb") as f:
            f.seek(1000)
            assert f.read(10) == (local / "rank_0" / "a.ckpt").read_bytes()[1000:1010]
        store.upload_fileobj(io.BytesIO(b"record"), join(root, "r.json"), 6)
        assert mox.read(join(root, "r.json")) == "record"
        mox.copy(join(root, "m.txt"), join(root, "m2.txt"))
        assert mox.get_size(join(root, "tree"), recursive=True) == 300_002
        mox.remove(join(root, "tree"), recursive=True)
        assert not mox.exists(join(root, "tree"))
