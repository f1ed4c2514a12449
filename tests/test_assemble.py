"""The pipelined assembly (reshard.assemble) and the writer's threads (formats.base._Checksummed):
chunks assembled in two halves of one buffer while the writer CRC-sums and writes the other
must give MindSpore's bytes even when the disk is slow (a half reused too early would corrupt
them), and a write error met on the writing thread must still reach the caller as one line."""
from __future__ import annotations

import errno
import os
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest

from reshard import api, assemble, plan, run
from reshard.config import DEFAULT
from reshard.formats import TensorMeta, open_reader, open_writer
from reshard.formats import base
from reshard.formats.ckpt_format import CRC_TRAILER_LEN
from tests import synth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("assemble")
    params = synth.llama_params()
    w = {"full": synth.write_complete_checkpoint(str(root / "full" / "llama.ckpt"), params),
         "s8": str(root / "s8")}
    synth.write_strategy(w["s8"], dp=2, mp=2, pp=2, params=params)
    w["ms8"] = synth.ms_transform(w["full"], str(root / "ms8"), None, w["s8"])
    w["ms1"] = synth.ms_transform(w["ms8"], str(root / "ms1"), w["s8"], None)
    return w


THREADED = replace(DEFAULT, write_inline_bytes=0)   # every block through the writer's threads


@pytest.fixture
def slow_disk(monkeypatch):
    """Every block the writing thread writes waits first: the assembly runs ahead of it."""
    real = base._Checksummed._write

    def slow(self, data):
        time.sleep(0.0005)
        real(self, data)
    monkeypatch.setattr(base._Checksummed, "_write", slow)


def _convert(src: str, dst: str, config, src_strategy=None, dst_strategy=None) -> None:
    """A local conversion through the orchestrator, with the test's config."""
    request = run.Request(api.find_sources(src), api.load_strategy(src_strategy),
                          api.load_strategy(dst_strategy), dst, source_mode=None)
    run.run(request, config)


@pytest.mark.parametrize("pipe_bytes, chunk_bytes", [
    (1024, plan.CHUNK_BYTES),   # many chunks per tensor, in turns through the two halves
    (DEFAULT.pipe_chunk_bytes, 1),   # buffer = the longest row: those take the whole buffer
])
def test_chunked_assembly_on_a_slow_disk_is_bit_for_bit(world, tmp_path, monkeypatch, slow_disk,
                                                         pipe_bytes, chunk_bytes):
    config = replace(THREADED, pipe_chunk_bytes=pipe_bytes)
    monkeypatch.setattr(plan, "CHUNK_BYTES", chunk_bytes)
    # 8 ranks in one process share its buffer: a rank starts while the last one is written
    _convert(world["full"], str(tmp_path / "8"), config, dst_strategy=world["s8"])
    synth.assert_same_checkpoint_dirs(world["ms8"], str(tmp_path / "8"))
    # merging column halves (mp) into one complete file
    _convert(world["ms8"], str(tmp_path / "1"), config, src_strategy=world["s8"])
    synth.assert_same_checkpoint_dirs(world["ms1"], str(tmp_path / "1"))


def test_halves_take_turns_and_wait_for_their_writer(tmp_path, slow_disk):
    buf = np.zeros(1 << 16, np.uint8)
    halves = assemble.Halves()
    meta = TensorMeta("w", "UInt8", (6, 1 << 14))
    with open_writer(str(tmp_path / "a.ckpt"), [meta], config=THREADED) as writer:
        seen = []
        for i in range(6):
            raw, turn = halves.take(buf, 1 << 14)
            seen.append((turn, raw.ctypes.data - buf.ctypes.data))
            raw[:] = i            # would overwrite a chunk still queued if take() did not wait
            halves.sent_from(turn, writer, writer.send("w", raw.reshape(1, -1)))
        whole, turn = halves.take(buf, 1 << 16)   # more than a half: the whole, both written
        assert turn is None and whole.nbytes == buf.nbytes
    assert seen == [(0, 0), (1, 1 << 15)] * 3
    got = open_reader(str(tmp_path / "a.ckpt")).read("w")
    assert (got == np.arange(6, dtype=np.uint8)[:, None]).all()


def test_write_returns_once_the_chunk_may_change(tmp_path, slow_disk):
    meta = TensorMeta("w", "Float32", (1 << 18,))
    chunk = np.arange(1 << 18, dtype=np.float32)
    expected = chunk.copy()
    with open_writer(str(tmp_path / "w.ckpt"), [meta], config=THREADED) as writer:
        writer.write("w", chunk)
        chunk[:] = -1
    assert (open_reader(str(tmp_path / "w.ckpt")).read("w") == expected).all()


def test_crc_trailer_is_the_running_checksum(tmp_path, slow_disk):
    """crc_check=True: the trailer is MindSpore's CRC32 of every record byte, now taken from
    the writer's own summing (computed on its thread)."""
    metas = [TensorMeta("a", "Float16", (300, 1000)), TensorMeta("b", "Int32", (7,))]
    path = str(tmp_path / "c.ckpt")
    with open_writer(path, metas, crc_check=True, config=THREADED) as writer:
        writer.send("a", np.ones((300, 1000), np.float16))
        writer.write("b", np.arange(7, dtype=np.int32))
    data = open(path, "rb").read()
    assert int.from_bytes(data[-10:], "big") == zlib.crc32(data[:-CRC_TRAILER_LEN])
    assert writer.checksum == (len(data), f"{zlib.crc32(data):08x}")
    with open_reader(path) as reader:
        reader.check_crc()    # MindSpore's check, as the engine runs it on a source


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, room: int):
        self.room = room
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> int:
        if len(self.written) + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += data
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


def test_write_error_on_the_writing_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(base, "_start_writeback", None)
    disk = _FullDisk(room=3 << 20)
    f = base._Checksummed(disk, "/out/rank_0/checkpoint_0.ckpt")
    block = bytes(1 << 20)
    for _ in range(5):          # queued: the 4th fails on the thread, the 5th is dropped
        f.write(block)
    f.wait(f.size)              # never raises: the failure is for the next write or flush
    with pytest.raises(OSError) as err:
        f.write(block)
    assert err.value.errno == errno.ENOSPC and err.value.filename == "/out/rank_0/checkpoint_0.ckpt"
    with pytest.raises(OSError, match="writing"):
        f.flush()
    assert len(disk.written) == 3 << 20   # the blocks after the failed one: dropped
    f.close(drop=True)
    assert disk.closed


def test_abort_drops_what_is_queued_and_the_temp_file(tmp_path, monkeypatch, slow_disk):
    meta = TensorMeta("w", "UInt8", (64, 1 << 16))
    writer = open_writer(str(tmp_path / "x.ckpt"), [meta], config=THREADED)
    ticket = 0
    for _ in range(64):
        ticket = writer.send("w", np.zeros((1, 1 << 16), np.uint8))
    writer.abort()
    writer.wait(ticket)            # returns: the dropped blocks count as consumed
    assert os.listdir(tmp_path) == []
