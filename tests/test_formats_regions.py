"""Region reads equal numpy slicing, whatever the shape, dtype, record split or destination."""
from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reshard.config import DEFAULT
from reshard.formats import TensorMeta, ckpt_format, open_reader, open_writer
from reshard.formats.meta import STORAGE_DTYPES


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(sorted(STORAGE_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=4)))
    region = []
    for d in shape:
        a = draw(st.integers(0, d))
        region.append((a, draw(st.integers(a, d))))
    return dtype, shape, tuple(region), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=150, deadline=None)
@given(case=cases(), fmt=st.sampled_from(["ckpt", "safetensors"]),
       record_bytes=st.sampled_from([8, 24, 1 << 20]),
       gap=st.sampled_from([0, 1 << 16]), scratch=st.sampled_from([16, 1 << 20]),
       scatter=st.sampled_from([(0, 1), (0, 500), (1 << 16, 2), (1 << 16, 500)]),
       strided_out=st.booleans())
def test_region_read_equals_numpy_slicing(tmp_path_factory, case, fmt, record_bytes, gap,
                                          scratch, scatter, strided_out):
    dtype, shape, region, seed = case
    meta = TensorMeta("t", dtype, shape)
    raw = np.random.default_rng(seed).integers(0, 256, meta.nbytes, dtype=np.uint8)
    if dtype == "Bool":
        raw &= 1
    data = raw.view(meta.storage).reshape(shape)
    others = [TensorMeta("before", "Int8", (3,)), meta, TensorMeta("after", "Int8", (2,))]
    path = tmp_path_factory.getbasetemp() / f"regions.{fmt}"
    config = replace(DEFAULT, read_coalesce_gap_bytes=gap, read_scratch_bytes=scratch,
                     read_scatter_gap_bytes=scatter[0], read_scatter_runs=scatter[1])
    with mock.patch.object(ckpt_format, "RECORD_BYTES", record_bytes):
        with open_writer(path, others) as writer:
            writer.write("before", np.full(3, -1, np.int8))
            writer.write("t", data)
            writer.write("after", np.full(2, -2, np.int8))
        expected = data[tuple(slice(a, b) for a, b in region)]
        with open_reader(path, config=config) as reader:
            np.testing.assert_array_equal(reader.read("t", region), expected)
            if strided_out:
                # a view with gaps, as the engine passes when gathering into a bigger tensor
                backing = np.zeros(tuple(2 * n + 1 for n in expected.shape), meta.storage)
                out = backing[tuple(slice(1, None, 2) for _ in expected.shape) or ...]
                result = reader.read("t", region, out=out)
                assert result.size == 0 or np.shares_memory(result, backing)
                np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(reader.read("after"), [-2, -2])
