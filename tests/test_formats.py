"""reshard.formats against MindSpore and the safetensors library, bit for bit."""
from __future__ import annotations

import os

import mindspore as ms
import numpy as np
import pytest
import safetensors.numpy
from mindspore.train import serialization

from reshard.formats import FormatError, TensorMeta, open_reader, open_writer
from reshard.formats import ckpt_format

RNG = np.random.default_rng(7)

# MindSpore dtype name -> (mindspore dtype, how to make numpy data)
DTYPES = {
    "Float32": (ms.float32, lambda s: RNG.standard_normal(s).astype(np.float32)),
    "Float16": (ms.float16, lambda s: RNG.standard_normal(s).astype(np.float16)),
    "Float64": (ms.float64, lambda s: RNG.standard_normal(s)),
    "BFloat16": (ms.bfloat16, lambda s: RNG.standard_normal(s).astype(np.float32)),
    "Int8": (ms.int8, lambda s: RNG.integers(-128, 128, s, dtype=np.int8)),
    "Int16": (ms.int16, lambda s: RNG.integers(-2**15, 2**15, s, dtype=np.int16)),
    "Int32": (ms.int32, lambda s: RNG.integers(-2**31, 2**31, s, dtype=np.int32)),
    "Int64": (ms.int64, lambda s: RNG.integers(-2**63, 2**63 - 1, s, dtype=np.int64)),
    "UInt8": (ms.uint8, lambda s: RNG.integers(0, 2**8, s, dtype=np.uint8)),
    "UInt16": (ms.uint16, lambda s: RNG.integers(0, 2**16, s, dtype=np.uint16)),
    "UInt32": (ms.uint32, lambda s: RNG.integers(0, 2**32, s, dtype=np.uint32)),
    "UInt64": (ms.uint64, lambda s: RNG.integers(0, 2**64, s, dtype=np.uint64)),
    "Bool": (ms.bool_, lambda s: RNG.integers(0, 2, s).astype(np.bool_)),
}
SHAPES = [(3, 5), (7,), (), (2, 3, 4)]


def bits(value) -> np.ndarray:
    """A MindSpore tensor's exact bytes as its storage dtype (bfloat16 viewed as uint16)."""
    array = value.asnumpy()
    if str(value.dtype) == "BFloat16":
        return array.view(np.uint16)
    return array


def ms_params() -> dict[str, ms.Tensor]:
    params = {}
    for i, (name, (ms_type, make)) in enumerate(DTYPES.items()):
        shape = SHAPES[i % len(SHAPES)]
        params[f"p.{name}"] = ms.Tensor(make(shape), ms_type)
    return params


def save_ms(params, path, **kwargs):
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path), **kwargs)


def copy_checkpoint(src: str, dst: str, chunk_rows: int = 0, **options) -> None:
    """Re-write src through our reader and writer, axis-0 chunks of chunk_rows when > 0."""
    with open_reader(src) as reader:
        metas = list(reader.metas.values())
        with open_writer(dst, metas, **options) as writer:
            for meta in metas:
                if not meta.sliceable:
                    writer.write(meta.name, reader.read_raw(meta.name))
                elif chunk_rows and meta.shape and meta.shape[0] > chunk_rows:
                    for r in range(0, meta.shape[0], chunk_rows):
                        stop = min(r + chunk_rows, meta.shape[0])
                        region = ((r, stop),) + tuple((0, d) for d in meta.shape[1:])
                        writer.write(meta.name, reader.read(meta.name, region))
                else:
                    writer.write(meta.name, reader.read(meta.name))


@pytest.fixture
def small_records(monkeypatch):
    """MindSpore's 512 MiB record size shrunk to 1 KiB on both sides."""
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)          # KiB; records of 1024 * it
    monkeypatch.setattr(ckpt_format, "RECORD_BYTES", 1024)


# ------------------------------------------------------------------------------------ .ckpt
@pytest.mark.parametrize("crc_check", [False, True])
def test_reads_mindspore_ckpt_all_dtypes(tmp_path, crc_check):
    params = ms_params()
    path = tmp_path / "m.ckpt"
    save_ms(params, path, crc_check=crc_check, append_dict={"lr_name": "cosine", "epoch_num": 3})
    with open_reader(path) as reader:
        assert list(reader.metas) == [*params, "lr_name", "epoch_num"]
        for name, value in params.items():
            meta = reader.metas[name]
            assert (meta.dtype, meta.shape) == (str(value.dtype), value.shape)
            got = reader.read(name)
            assert got.dtype == meta.storage
            np.testing.assert_array_equal(got, bits(value))
        assert reader.metas["lr_name"].dtype == "str"
        assert reader.read_raw("lr_name") == np.array("cosine").tobytes()
        assert reader.read("epoch_num") == 3


def test_reads_chunked_mindspore_ckpt(tmp_path, small_records):
    big = RNG.standard_normal((37, 50)).astype(np.float32)       # 7400 bytes -> 8 records
    params = {"big": ms.Tensor(big), "after": ms.Tensor(np.arange(4, dtype=np.int32))}
    path = tmp_path / "m.ckpt"
    save_ms(params, path)
    assert open(path, "rb").read().count(b"\n\x03big") == 8
    with open_reader(path) as reader:
        assert reader.metas["big"].shape == (37, 50)
        np.testing.assert_array_equal(reader.read("big"), big)
        # rows that straddle a record boundary (1024 bytes = row 5, column 6)
        np.testing.assert_array_equal(reader.read("big", ((4, 9), (3, 47))), big[4:9, 3:47])
        np.testing.assert_array_equal(reader.read("after"), np.arange(4))


@pytest.mark.parametrize("chunk_rows", [0, 3])
def test_written_ckpt_is_what_mindspore_writes(tmp_path, small_records, chunk_rows):
    """Same bytes as save_checkpoint (records split at 1 KiB here), and loads bit-exactly."""
    params = ms_params()
    params["big"] = ms.Tensor(RNG.standard_normal((37, 50)).astype(np.float32), ms.bfloat16)
    reference = tmp_path / "ref.ckpt"
    save_ms(params, reference, append_dict={"lr_name": "cosine"})
    ours = tmp_path / "ours.ckpt"
    copy_checkpoint(str(reference), str(ours), chunk_rows=chunk_rows)
    assert ours.read_bytes() == reference.read_bytes()
    loaded = ms.load_checkpoint(str(ours))
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(bits(loaded[name]), bits(value))
    assert loaded["lr_name"] == "cosine"
    assert sorted(os.listdir(tmp_path)) == ["ours.ckpt", "ref.ckpt"]   # no temp left behind


def test_default_record_size_is_mindspores():
    assert ckpt_format.RECORD_BYTES == 1024 * serialization.SLICE_SIZE == 512 * 1024 * 1024


def test_written_ckpt_with_crc_matches_mindspore(tmp_path):
    params = ms_params()
    reference = tmp_path / "ref.ckpt"
    save_ms(params, reference, crc_check=True)
    ours = tmp_path / "ours.ckpt"
    copy_checkpoint(str(reference), str(ours), crc_check=True)
    assert ours.read_bytes() == reference.read_bytes()
    loaded = ms.load_checkpoint(str(ours), crc_check=True)
    np.testing.assert_array_equal(bits(loaded["p.BFloat16"]), bits(params["p.BFloat16"]))


def test_empty_tensor_survives(tmp_path):
    metas = [TensorMeta("empty", "Float32", (0, 4)), TensorMeta("x", "Int32", (2,))]
    path = tmp_path / "e.ckpt"
    with open_writer(path, metas) as writer:
        writer.write("x", np.array([1, 2], np.int32))          # empty one needs no write()
    with open_reader(path) as reader:
        assert reader.metas["empty"].shape == (0, 4)
        assert reader.read("empty").shape == (0, 4)
    loaded = ms.load_checkpoint(str(path))
    assert loaded["empty"].shape == (0, 4)


# ------------------------------------------------------------------------------ safetensors
def test_reads_mindspore_safetensors(tmp_path):
    params = ms_params()
    path = tmp_path / "m.safetensors"
    save_ms(params, path, format="safetensors")
    with open_reader(path) as reader:
        assert reader.metadata == {"format": "ms"}
        assert set(reader.metas) == set(params)
        for name, value in params.items():
            assert (reader.metas[name].dtype, reader.metas[name].shape) == (str(value.dtype),
                                                                             value.shape)
            np.testing.assert_array_equal(reader.read(name), bits(value))


def test_written_safetensors_load_in_mindspore_and_safetensors(tmp_path):
    params = ms_params()
    source = tmp_path / "m.ckpt"
    save_ms(params, source)
    ours = tmp_path / "ours.safetensors"
    copy_checkpoint(str(source), str(ours), chunk_rows=2)
    assert (8 + int.from_bytes(ours.read_bytes()[:8], "little")) % 8 == 0
    loaded = ms.load_checkpoint(str(ours), format="safetensors")
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(bits(loaded[name]), bits(value))
    # safetensors.numpy has no bfloat16; every other dtype must load through the library
    plain = tmp_path / "plain.safetensors"
    metas = [m for m in open_reader(ours).metas.values() if m.dtype != "BFloat16"]
    with open_reader(ours) as reader, open_writer(plain, metas) as writer:
        for meta in metas:
            writer.write(meta.name, reader.read(meta.name))
    by_library = safetensors.numpy.load_file(str(plain))
    assert set(by_library) == {m.name for m in metas}
    for meta in metas:
        np.testing.assert_array_equal(by_library[meta.name], bits(params[meta.name]))
    with safetensors.safe_open(str(plain), framework="np") as handle:
        assert handle.metadata() == {"format": "ms"}


def test_reads_library_safetensors(tmp_path):
    tensors = {"b": RNG.standard_normal((4, 6)).astype(np.float16),
               "a": np.arange(10, dtype=np.int64), "flag": np.array(True)}
    path = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"k": "v"})
    with open_reader(path) as reader:
        assert reader.metadata == {"k": "v"}
        assert reader.metas["flag"] == TensorMeta("flag", "Bool", ())
        for name, array in tensors.items():
            np.testing.assert_array_equal(reader.read(name), array)
        np.testing.assert_array_equal(reader.read("b", ((1, 3), (2, 5))), tensors["b"][1:3, 2:5])


def test_safetensors_refuses_str(tmp_path):
    with pytest.raises(FormatError, match="lr_name"):
        open_writer(tmp_path / "x.safetensors", [TensorMeta("lr_name", "str", (0,), 8)])
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------ temp then rename
@pytest.mark.parametrize("suffix", ["ckpt", "safetensors"])
def test_exception_mid_write_leaves_nothing(tmp_path, suffix):
    path = tmp_path / f"out.{suffix}"
    metas = [TensorMeta("a", "Float32", (4, 4)), TensorMeta("b", "Float32", (4,))]
    with pytest.raises(RuntimeError):
        with open_writer(path, metas) as writer:
            writer.write("a", np.zeros((2, 4), np.float32))
            (left,) = os.listdir(tmp_path)
            assert left.startswith(f".out.{suffix}.obsio-{os.getpid()}-") and left.endswith(".tmp")
            raise RuntimeError("disk on fire")
    assert os.listdir(tmp_path) == []


def test_incomplete_commit_and_old_file_kept(tmp_path):
    path = tmp_path / "out.ckpt"
    path.write_bytes(b"previous")
    writer = open_writer(path, [TensorMeta("a", "Float32", (4, 4))])
    writer.write("a", np.zeros((3, 4), np.float32))
    with pytest.raises(FormatError, match="'a' incomplete"):
        writer.commit()
    assert os.listdir(tmp_path) == ["out.ckpt"] and path.read_bytes() == b"previous"


def test_writer_checks_order_and_shapes(tmp_path):
    metas = [TensorMeta("a", "Float32", (4, 4)), TensorMeta("b", "Float16", (2,))]
    with open_writer(tmp_path / "o.ckpt", metas) as writer:
        with pytest.raises(FormatError, match="'b' written out of order"):
            writer.write("b", np.zeros(2, np.float16))
        with pytest.raises(FormatError, match="does not fit"):
            writer.write("a", np.zeros((2, 3), np.float32))
        with pytest.raises(FormatError, match="does not match"):
            writer.write("a", np.zeros((2, 4), np.float64))
        writer.abort()
    assert os.listdir(tmp_path) == []


def test_writer_takes_non_contiguous_chunks(tmp_path):
    full = RNG.standard_normal((6, 8)).astype(np.float32)
    transposed = np.asfortranarray(full)                 # same values, column-major memory
    path = tmp_path / "nc.safetensors"
    with open_writer(path, [TensorMeta("w", "Float32", (6, 8)), TensorMeta("v", "Int8", (3,))]) \
            as writer:
        writer.write("w", transposed[:4])
        writer.write("w", full[4:, :][:, ::1])
        writer.write("v", np.arange(6, dtype=np.int8)[::2])
    loaded = safetensors.numpy.load_file(str(path))
    np.testing.assert_array_equal(loaded["w"], full)
    np.testing.assert_array_equal(loaded["v"], [0, 2, 4])


# --------------------------------------------------------------------------- bad files
def test_truncated_ckpt(tmp_path):
    path = tmp_path / "t.ckpt"
    save_ms(ms_params(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 5])
    with pytest.raises(FormatError, match=f"^{path}: .*truncated"):
        open_reader(path)


def test_encrypted_ckpt(tmp_path):
    path = tmp_path / "enc.ckpt"
    save_ms(ms_params(), path, enc_key=b"0123456789abcdef")
    with pytest.raises(FormatError, match=f"^{path}: not a readable MindSpore checkpoint"):
        open_reader(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"\n\x05hello", b"{}" * 10])
def test_garbage_ckpt(tmp_path, content):
    path = tmp_path / "g.ckpt"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=f"^{path}: ") as info:
        open_reader(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mutate", [
    lambda d: d[:-3],                                     # truncated data
    lambda d: d[:5],                                      # truncated length prefix
    lambda d: d[:8] + b"[" + d[9:],                      # broken JSON
    lambda d: os.urandom(len(d)),                         # garbage
])
def test_bad_safetensors(tmp_path, mutate):
    path = tmp_path / "bad.safetensors"
    safetensors.numpy.save_file({"a": np.zeros((3, 3), np.float32)}, str(path))
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(FormatError, match=f"^{path}: "):
        open_reader(path)


def test_missing_file_and_parameter(tmp_path):
    with pytest.raises(FormatError, match="nothere.ckpt: cannot open"):
        open_reader(tmp_path / "nothere.ckpt")
    with pytest.raises(FormatError, match="not a .ckpt or .safetensors"):
        open_reader(tmp_path / "x.bin")
    path = tmp_path / "m.ckpt"
    save_ms({"a": ms.Tensor(np.zeros(2, np.float32))}, path)
    with open_reader(path) as reader, pytest.raises(FormatError, match="no parameter 'b'"):
        reader.read("b")


def test_index_of_sparse_file_over_4_gib(tmp_path):
    """A value of 4.5 GiB in nine 512 MiB records (sparse file, so no disk is used): indexing
    reads only headers, and a region near the end lands at the right byte."""
    huge = TensorMeta("huge", "Float32", (1152, 1024, 1024))
    small = TensorMeta("small", "Int32", (2,))
    record = ckpt_format.RECORD_BYTES
    path = tmp_path / "sparse.ckpt"
    with open(path, "wb") as f:
        for _ in range(huge.nbytes // record):
            f.write(ckpt_format.record_header(huge, record))
            f.seek(record, os.SEEK_CUR)
        f.seek(-8, os.SEEK_CUR)
        f.write(np.array([1.5, -2.0], np.float32).tobytes())      # last two elements
        f.write(ckpt_format.record_header(small, 8) + np.array([7, 8], np.int32).tobytes())
    assert path.stat().st_size > 4 * 2**30
    with open_reader(path) as reader:
        assert list(reader.metas.values()) == [huge, small]
        tail = reader.read("huge", ((1151, 1152), (1023, 1024), (1020, 1024)))
        np.testing.assert_array_equal(tail.ravel(), [0, 0, 1.5, -2.0])
        np.testing.assert_array_equal(reader.read("small"), [7, 8])


def test_mindspore_bfloat16_arrays_move_as_bits(tmp_path):
    """MindSpore's numpy bfloat16 arrays are accepted by the writer and as `out`, bits intact
    (a float32 detour would quiet this signalling-NaN pattern)."""
    value = ms.Tensor(RNG.standard_normal((4, 6)).astype(np.float32), ms.bfloat16)
    array = value.asnumpy()
    array.view(np.uint16)[0, 0] = 0x7F81
    path = tmp_path / "bf.ckpt"
    with open_writer(path, [TensorMeta("w", "BFloat16", (4, 6))]) as writer:
        writer.write("w", array[:1])
        writer.write("w", array[1:])
    out = np.zeros((4, 3), dtype=array.dtype)
    with open_reader(path) as reader:
        reader.read("w", ((0, 4), (3, 6)), out=out)
    np.testing.assert_array_equal(out.view(np.uint16), array.view(np.uint16)[:, 3:])
    np.testing.assert_array_equal(bits(ms.load_checkpoint(str(path))["w"]), array.view(np.uint16))
