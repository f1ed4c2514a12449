"""obs_io.crc: the one CRC32 every checksum of the tools comes from gives zlib's values (the
set manifest's, MindSpore's .ckpt CRC trailer, S3's CRC32), chained or whole, and is the fast
one (zlib-ng's) where the package's dependencies are installed."""
from __future__ import annotations

import zlib

from hypothesis import given, settings, strategies as st

from obs_io import crc


def test_the_fast_crc32_is_the_one_in_use():
    assert crc.FAST, "zlib-ng (a dependency) is not importable: CRC32 falls back to zlib"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1 << 16), st.integers(0, 1 << 16), st.integers(0, 2**32 - 1))
def test_the_same_values_as_zlib_whole_and_chained(data, cut, start):
    cut = min(cut, len(data))
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(data, start) == zlib.crc32(data, start)
    assert crc.crc32(data[cut:], crc.crc32(data[:cut])) == zlib.crc32(data)
    assert crc.crc32(memoryview(data)[cut:], zlib.crc32(data[:cut])) == zlib.crc32(data)


def test_large_buffers():
    data = bytes(range(256)) * (3 << 14) + b"tail"       # 12 MiB and a few bytes
    assert crc.crc32(data) == zlib.crc32(data)
