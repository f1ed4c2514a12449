"""Random dp/mp/pp/optimizer-shard layouts: complete -> A -> B -> complete is the identity and
A -> B equals MindSpore's conversion bit for bit."""
from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, note, settings, strategies as st

from reshard import api
from tests import synth

layouts = st.fixed_dictionaries({"dp": st.sampled_from([1, 2]), "mp": st.sampled_from([1, 2, 4]),
                                 "pp": st.sampled_from([1, 2]),
                                 "opt_shard": st.sampled_from([0, -1, 2])})


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(a=layouts, b=layouts, hidden=st.sampled_from([16, 32]), vocab=st.sampled_from([32, 48]),
       seed=st.integers(0, 2**16))
def test_round_trip_and_equal_to_mindspore(a, b, hidden, vocab, seed):
    if vocab % 4 and 4 in (a["mp"], b["mp"]):
        vocab = 32
    params = synth.llama_params(vocab=vocab, hidden=hidden, ffn=2 * hidden, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        j = lambda *p: os.path.join(tmp, *p)
        full = synth.write_complete_checkpoint(j("full", "m.ckpt"), params)
        synth.write_strategy(j("sa"), params=params, **a)
        synth.write_strategy(j("sb"), params=params, **b)
        api.transform(full, j("a"), dst_strategy=j("sa"))
        synth.assert_same_checkpoint_dirs(synth.ms_transform(full, j("ms_a"), None, j("sa")),
                                          j("a"))
        api.transform(j("a"), j("b"), src_strategy=j("sa"), dst_strategy=j("sb"))
        try:
            reference = synth.ms_transform(j("a"), j("ms_b"), j("sa"), j("sb"))
        except ValueError as exc:
            # MindSpore 2.10 itself fails some layout pairs, e.g. dp2 -> pp2 ("The checkpoint of
            # rank 0 is missing."): nothing to compare with; the round trip below still must hold.
            note(f"MindSpore refused {a} -> {b}: {exc}")
        else:
            synth.assert_same_checkpoint_dirs(reference, j("b"))
        api.transform(j("b"), j("c"), src_strategy=j("sb"))
        assert synth.load_params(j("c", "rank_0", "checkpoint_0.ckpt")) == synth.load_params(full)
