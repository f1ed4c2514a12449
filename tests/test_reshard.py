"""The engine against MindSpore's own transform_checkpoints, bit for bit, on small synthetic
Llama-shaped checkpoints with fp32/fp16/bf16 weights and optimizer moments."""
from __future__ import annotations

import os
import shutil

import pytest

from reshard import api
from tests import synth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One complete checkpoint, strategy folders for the documented layouts, and MindSpore's
    conversions of it (the references)."""
    root = tmp_path_factory.mktemp("reshard")
    params = synth.llama_params()
    w = {"root": root, "params": params}
    w["full"] = synth.write_complete_checkpoint(str(root / "full" / "llama.ckpt"), params)
    for key, kw in {"s8": dict(dp=2, mp=2, pp=2), "s4": dict(dp=1, mp=2, pp=2),
                    "s8o": dict(dp=2, mp=2, pp=2, opt_shard=-1),
                    "s8o2": dict(dp=4, mp=2, pp=1, opt_shard=2),
                    "smp4": dict(dp=1, mp=4, pp=1)}.items():
        w[key] = str(root / key)
        synth.write_strategy(w[key], params=params, **kw)
    w["ms8"] = synth.ms_transform(w["full"], str(root / "ms8"), None, w["s8"])
    return w


def test_complete_to_8_ranks(world, tmp_path):
    out = str(tmp_path / "out")
    rep = api.transform(world["full"], out, dst_strategy=world["s8"])
    assert rep.ranks_written == list(range(8))
    synth.assert_same_checkpoint_dirs(world["ms8"], out)


def test_8_to_4_and_4_to_complete(world, tmp_path):
    mine4, ref4 = str(tmp_path / "mine4"), str(tmp_path / "ref4")
    api.transform(world["ms8"], mine4, src_strategy=world["s8"], dst_strategy=world["s4"])
    synth.ms_transform(world["ms8"], ref4, world["s8"], world["s4"])
    synth.assert_same_checkpoint_dirs(ref4, mine4)
    mine1, ref1 = str(tmp_path / "mine1"), str(tmp_path / "ref1")
    api.transform(mine4, mine1, src_strategy=world["s4"])
    synth.ms_transform(ref4, ref1, world["s4"], None)
    synth.assert_same_checkpoint_dirs(ref1, mine1)
    # and the round trip is the identity
    full = {k: v for k, v in synth.load_params(world["full"]).items()}
    assert synth.load_params(os.path.join(mine1, "rank_0", "checkpoint_0.ckpt")) == full


def test_mp4(world, tmp_path):
    mine, ref = str(tmp_path / "mine"), str(tmp_path / "ref")
    api.transform(world["full"], mine, dst_strategy=world["smp4"])
    synth.ms_transform(world["full"], ref, None, world["smp4"])
    synth.assert_same_checkpoint_dirs(ref, mine)
    mine2, ref2 = str(tmp_path / "mine2"), str(tmp_path / "ref2")
    api.transform(mine, mine2, src_strategy=world["smp4"], dst_strategy=world["s8"])
    synth.ms_transform(ref, ref2, world["smp4"], world["s8"])
    synth.assert_same_checkpoint_dirs(ref2, mine2)


@pytest.mark.parametrize("opt", ["s8o", "s8o2"])
def test_optimizer_sharded(world, tmp_path, opt):
    mine, ref = str(tmp_path / "mine"), str(tmp_path / "ref")
    api.transform(world["full"], mine, dst_strategy=world[opt])
    synth.ms_transform(world["full"], ref, None, world[opt])
    synth.assert_same_checkpoint_dirs(ref, mine)
    # the opt shard really splits something: a norm slice is smaller than the norm
    norm = "model.layers.0.attention_norm.weight"
    sliced = synth.load_params(os.path.join(mine, "rank_1", "checkpoint_1.ckpt"))[norm][1]
    assert sliced[0] < world["params"][norm].shape[0]
    mine4, ref4 = str(tmp_path / "mine4"), str(tmp_path / "ref4")
    api.transform(mine, mine4, src_strategy=world[opt], dst_strategy=world["s4"])
    synth.ms_transform(ref, ref4, world[opt], world["s4"])
    synth.assert_same_checkpoint_dirs(ref4, mine4)


def test_safetensors_in_and_out(world, tmp_path):
    st = synth.write_complete_checkpoint(str(tmp_path / "full" / "llama.safetensors"),
                                         world["params"], fmt="safetensors")
    mine, ref = str(tmp_path / "mine"), str(tmp_path / "ref")
    api.transform(st, mine, dst_strategy=world["s8"], fmt="safetensors")
    synth.ms_transform(st, ref, None, world["s8"], fmt="safetensors")
    assert os.path.exists(os.path.join(mine, "rank_3", "checkpoint_3.safetensors"))
    synth.assert_same_checkpoint_dirs(ref, mine)
    # safetensors in, ckpt out; and ckpt in, safetensors out
    back = str(tmp_path / "back")
    api.transform(mine, back, src_strategy=world["s8"], dst_strategy=world["s4"], fmt="ckpt")
    ref4 = str(tmp_path / "ref4")
    synth.ms_transform(world["ms8"], ref4, world["s8"], world["s4"])
    synth.assert_same_checkpoint_dirs(ref4, back)
    st4 = str(tmp_path / "st4")
    api.transform(world["ms8"], st4, src_strategy=world["s8"], dst_strategy=world["s4"],
                  fmt="safetensors")
    synth.assert_same_checkpoint_dirs(ref4, st4)


def test_folder_of_complete_files(world, tmp_path):
    """Sharded complete safetensors: their union is the model."""
    names = list(world["params"])
    half = len(names) // 2
    folder = tmp_path / "shards"
    for i, part in enumerate((names[:half], names[half:])):
        synth.write_complete_checkpoint(str(folder / f"model-{i:05d}.safetensors"),
                                        {n: world["params"][n] for n in part}, fmt="safetensors")
    mine = str(tmp_path / "mine")
    api.transform(str(folder), mine, dst_strategy=world["s8"])
    synth.assert_same_checkpoint_dirs(world["ms8"], mine)


def test_shared_embedding_in_two_stages(world, tmp_path):
    s = str(tmp_path / "shared")
    synth.write_strategy(s, dp=2, mp=2, pp=2, params=world["params"], shared_embedding=True)
    mine, ref = str(tmp_path / "mine"), str(tmp_path / "ref")
    api.transform(world["full"], mine, dst_strategy=s)
    synth.ms_transform(world["full"], ref, None, s)
    synth.assert_same_checkpoint_dirs(ref, mine)
    emb = "model.tok_embeddings.embedding_weight"
    assert emb in synth.load_params(os.path.join(mine, "rank_7", "checkpoint_7.ckpt"))
    mine4, ref4 = str(tmp_path / "mine4"), str(tmp_path / "ref4")
    api.transform(mine, mine4, src_strategy=s, dst_strategy=world["s4"])
    synth.ms_transform(ref, ref4, s, world["s4"])
    synth.assert_same_checkpoint_dirs(ref4, mine4)


def test_nested_tensor_map(world, tmp_path):
    """A tensor dimension split over two device dimensions ((dp, mp) on the vocab)."""
    params = world["params"]
    lay = lambda tm: {"dev_matrix": [2, 2], "tensor_map": tm, "param_split_shape": [],
                      "indices_offset": [], "field": 0, "opt_weight_shard_step": 0,
                      "opt_weight_shard_size": 0}
    layouts = {n: lay([-1] * params[n].ndim) for n in synth.tensor_maps(2)}
    layouts["lm_head.weight"] = lay([[1, 0], -1])
    layouts["model.tok_embeddings.embedding_weight"] = lay([-1, [0, 1]])
    f = synth.write_stage_layouts(str(tmp_path / "nested" / "strategy.ckpt"), 0, layouts)
    mine, ref = str(tmp_path / "mine"), str(tmp_path / "ref")
    api.transform(world["full"], mine, dst_strategy=f)
    synth.ms_transform(world["full"], ref, None, f)
    synth.assert_same_checkpoint_dirs(ref, mine)
    head = synth.load_params(os.path.join(mine, "rank_1", "checkpoint_1.ckpt"))["lm_head.weight"]
    assert head[1] == (64, 64)
    mine4 = str(tmp_path / "mine4")
    api.transform(mine, mine4, src_strategy=f, dst_strategy=world["s4"])
    ref4 = str(tmp_path / "ref4")
    synth.ms_transform(ref, ref4, f, world["s4"])
    synth.assert_same_checkpoint_dirs(ref4, mine4)


def test_strategy_forms_give_the_same_result(world, tmp_path):
    """A merged file, a JSON folder, and oddly named per-rank files all mean the same layouts."""
    params = world["params"]
    merged = str(tmp_path / "merged.ckpt")
    synth.write_strategy(str(tmp_path / "pb"), dp=2, mp=2, pp=2, params=params,
                         merged_file=merged)
    js = str(tmp_path / "json")
    synth.write_strategy(js, dp=2, mp=2, pp=2, params=params, fmt="json")
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(os.path.join(world["s8"], "ckpt_strategy_rank_0.ckpt"),
                odd / "ckpt_strategy_rank_0-3.ckpt")
    shutil.copy(os.path.join(world["s8"], "ckpt_strategy_rank_5.ckpt"),
                odd / "ckpt_strategy_rank_5_rank_5.ckpt")
    shutil.copy(os.path.join(world["s8"], "ckpt_strategy_rank_6.ckpt"),
                odd / "ckpt_strategy_rank_6.ckpt")
    before = sorted(os.listdir(odd))
    for s in (merged, js, str(odd)):
        out = str(tmp_path / ("out_" + os.path.basename(s)))
        api.transform(world["full"], out, dst_strategy=s)
        synth.assert_same_checkpoint_dirs(world["ms8"], out)
    assert sorted(os.listdir(odd)) == before      # nothing written into the user's folder


def test_process_num_2_with_logs(world, tmp_path):
    """The workers' logs name every rank they wrote: converted, or a data-parallel replica (the
    same bytes) linked to the file the same worker converted; every rank is MindSpore's."""
    out, logs = str(tmp_path / "out"), str(tmp_path / "logs")
    rep = api.transform(world["full"], out, dst_strategy=world["s8"], process_num=2,
                        log_dir=logs)
    assert rep.ranks_written == list(range(8)) and rep.expected_peak_bytes > 0
    synth.assert_same_checkpoint_dirs(world["ms8"], out)
    worker_logs = [f for f in os.listdir(logs) if f.startswith("transform_")]
    assert 1 <= len(worker_logs) <= 2
    text = "".join(open(os.path.join(logs, f)).read() for f in worker_logs)
    assert all(f"rank {r}: wrote" in text for r in range(8))
    copies = rep.plan.same_as
    assert copies == {2: 0, 3: 1, 6: 4, 7: 5}
    for r, first in copies.items():
        assert f"(linked from rank {first}'s file" in text
        assert os.path.samefile(os.path.join(out, f"rank_{r}", f"checkpoint_{r}.ckpt"),
                                os.path.join(out, f"rank_{first}", f"checkpoint_{first}.ckpt"))


def test_rerun_skips_complete_files_and_redoes_changed(world, tmp_path):
    out = str(tmp_path / "out")
    api.transform(world["full"], out, dst_strategy=world["s8"])
    rep = api.transform(world["full"], out, dst_strategy=world["s8"])
    assert rep.ranks_written == [] and rep.ranks_skipped == list(range(8))
    # a damaged output (other size) and a changed source are converted again; rank 2 is the
    # same file as rank 0 (a data-parallel replica, hard-linked), so appending to it changes both
    victim = os.path.join(out, "rank_2", "checkpoint_2.ckpt")
    with open(victim, "ab") as f:
        f.write(b"junk")
    rep = api.transform(world["full"], out, dst_strategy=world["s8"])
    assert rep.ranks_written == [0, 2]
    synth.assert_same_checkpoint_dirs(world["ms8"], out)
    replaced = os.path.join(out, "rank_3", "checkpoint_3.ckpt")   # a new file under its name
    os.remove(replaced)
    shutil.copyfile(os.path.join(out, "rank_0", "checkpoint_0.ckpt"), replaced)
    rep = api.transform(world["full"], out, dst_strategy=world["s8"])
    assert rep.ranks_written == [3]            # made again from rank 1, which is intact
    synth.assert_same_checkpoint_dirs(world["ms8"], out)
    src = str(tmp_path / "src.ckpt")
    shutil.copy(world["full"], src)
    rep = api.transform(src, out, dst_strategy=world["s8"])
    assert rep.ranks_written == list(range(8))


def test_an_output_not_fsynced_is_checked_before_a_rerun_trusts_it(world, tmp_path):
    """durable=False (a local copy that only stages an upload): no fsync, and its record says so;
    a rerun reads such a file once and keeps it only with its recorded CRC32, so bytes a crash of
    the machine left zeroed (same size, same time) are converted again, not trusted."""
    import json
    from reshard import ReshardConfig, Request
    from reshard.run import run
    plan = api.make_plan(world["full"], dst_strategy=world["s8"])
    out = tmp_path / "out"
    request, config = Request(plan.source, None, plan.dst_strategy, str(out)), ReshardConfig(durable=False)
    run(request, config, plan=plan)
    record = json.loads((out / ".reshard" / "rank_1.json").read_text())
    assert record["fsynced"] is False
    rep = run(request, config, plan=plan)
    assert rep.ranks_written == [] and rep.ranks_skipped == list(range(8))
    victim = out / "rank_1" / "checkpoint_1.ckpt"           # rank 3 is another name of it
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(bytes(4096))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    rep = run(request, config, plan=plan)
    assert rep.ranks_written == [1, 3]
    synth.assert_same_checkpoint_dirs(world["ms8"], str(out))


def test_rank_block_needs_only_its_source_ranks(world, tmp_path):
    """cloud_entry downloads only needed_source_ranks(...) for its block."""
    block = [2, 3]
    needed = api.needed_source_ranks(world["s8"], world["s4"], block)
    assert needed and set(needed) <= set(range(4, 8))
    partial = tmp_path / "partial"
    for r in needed:
        shutil.copytree(os.path.join(world["ms8"], f"rank_{r}"), partial / f"rank_{r}")
    mine = str(tmp_path / "mine")
    rep = api.transform(str(partial), mine, src_strategy=world["s8"], dst_strategy=world["s4"],
                        dst_ranks=block)
    assert rep.ranks_written == block
    ref = str(tmp_path / "ref")
    synth.ms_transform(world["ms8"], ref, world["s8"], world["s4"])
    for r in (0, 1):
        shutil.rmtree(os.path.join(ref, f"rank_{r}"))
    synth.assert_same_checkpoint_dirs(ref, mine)


def test_needed_source_ranks_same_stages_as_mindspore(world):
    """We may read a replica MindSpore would not (reads are spread over replicas), but only
    from the stages MindSpore reads."""
    import mindspore as ms
    merged = str(world["root"] / "s8_merged.ckpt")
    api.write_merged_strategy(world["s8"], merged)
    merged4 = str(world["root"] / "s4_merged.ckpt")
    api.write_merged_strategy(world["s4"], merged4)
    for r in range(4):
        ours = set(api.needed_source_ranks(world["s8"], world["s4"], [r]))
        theirs = set(ms.rank_list_for_transform(r, merged, merged4))
        assert ours and {x // 4 for x in ours} == {x // 4 for x in theirs}
    assert api.needed_source_ranks(None, world["s8"], [5]) == [0]
