#!/usr/bin/env python3
"""Build MindFormers "Checkpoint 2.0" folders with MindFormers' own saving code, and read any such
folder back through MindFormers' own loader (the test oracle of issue 18; from the issue's
research, research/make_fixture.py, with --small fixtures and check --dump-full added).

Run it with the python of a venv that holds mindformers (and the mindspore it pins), e.g.

    PY=/work/wt/issue-19/.mf-compat/1.9.0/venv/bin/python
    $PY make_fixture.py write --layout dp2mp2pp2 --out /tmp/ck
    $PY make_fixture.py check /tmp/ck --expect-synth dp2mp2pp2 --reshard-to mp4

MindFormers 1.7.0 has a venv of its own like the others (scripts/mindformers_compat.py's
ensure_venv: pip resolves its pins, mindspore 2.7.2); `--mf-src <unzipped wheel>` runs another
release's code on a venv of the same MindSpore instead.

What is real and what is stood in for (see CHECKPOINT2.md, "Running MindFormers' code on CPU"):
- real: MindFormers' `save_checkpoint` (file names, iteration folder, tracker, common.json,
  metadata.json via `save_metadata`/`get_total_params_file_mapping_info`, `BalancedSaveStrategy`
  for save_remove_redundancy), MindSpore's `save_checkpoint(cell, format="safetensors")` with its
  graph-parallel rule that skips parameters a rank does not hold (`not param.sliced`), MindFormers'
  `get_sharded_tensor_from_strategy_metadata` (global_offset, replica_id, axis_fragmentations),
  and MindSpore's own `_NetStrategyInfo._layout_process` turning a compiler StrategyInfo (dev_matrix,
  tensor_map, opt_weight_shard_size, rank_list) into the `mindspore.parallel.Layout` MindFormers
  serialises;
- stood in for: the compiler (its StrategyInfo per parameter is built here from synth's Llama
  layouts), the communication group (RANK_ID/RANK_SIZE, `barrier_world` a no-op, the ranks saved
  one after another in one process), and the device data (each rank's Parameters hold the slice
  the layout gives it, computed by `local_slice` below independently of MindFormers' reshard code).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from types import SimpleNamespace

import numpy as np

SYNTH_DIR = os.environ.get("SYNTH_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests"))
ITERATION = 1234
COMMON = {"epoch_num": 3, "step_num": ITERATION, "global_step": ITERATION, "loss_scale": 65536.0,
          "global_batch_size": 16}
SHAPE = {"num_layers": 2, "vocab": 64, "hidden": 32, "ffn": 64}
SMALL_SHAPE = {"num_layers": 2, "vocab": 16, "hidden": 8, "ffn": 16}   # tests/data fixtures
# dp x mp per pipeline stage; opt_shard as synth.layout_for takes it (0 none, -1 all replicas).
LAYOUTS = {
    "mp2": {"dp": 1, "mp": 2, "pp": 1, "optimizer": False, "opt_shard": 0},
    "mp4": {"dp": 1, "mp": 4, "pp": 1, "optimizer": True, "opt_shard": 0},
    "dp2mp2pp2": {"dp": 2, "mp": 2, "pp": 2, "optimizer": True, "opt_shard": 0},
    "dp2mp2pp2-optshard": {"dp": 2, "mp": 2, "pp": 2, "optimizer": True, "opt_shard": -1},
    "single": {"dp": 1, "mp": 1, "pp": 1, "optimizer": True, "opt_shard": 0},
}
NO_LAYOUT = ("global_step", "learning_rate")
DTYPES = ("float32", "float16", "bfloat16")
DTYPES_NO_BF16 = ("float32", "float16")   # optimizer Parameters no strategy describes


# ----------------------------------------------------------------------------- environment

def mf_version() -> tuple[int, ...]:
    import mindformers
    ver = getattr(mindformers, "__version__", None)
    if ver is None:
        from importlib.metadata import version
        ver = version("mindformers")
    return tuple(int(x) for x in re.findall(r"\d+", ver)[:3])


def _synth():
    if SYNTH_DIR not in sys.path:
        sys.path.insert(0, SYNTH_DIR)
    import synth  # noqa: E402  (the repository's tests/synth.py, read only)
    return synth


def _modules(prefix="mindformers.checkpoint"):
    return [m for n, m in list(sys.modules.items()) if n.startswith(prefix) and m is not None]


def fake_world(rank: int, size: int, global_layouts=None):
    """Make MindFormers believe it runs as `rank` of `size` ranks whose compiler reported
    `global_layouts` ({rank: {name: [Layout, type, shape]}})."""
    os.environ["RANK_ID"], os.environ["RANK_SIZE"] = str(rank), str(size)
    importlib.import_module("mindformers.checkpoint.checkpoint")
    import mindspore.parallel.strategy as mss

    def get_strategy_metadata(network=None, rank_id=None):
        if not global_layouts:
            return None
        return {rank_id: global_layouts[rank_id]} if rank_id is not None else global_layouts

    def get_current_strategy_metadata(network=None):
        return {0: global_layouts[rank]} if global_layouts else None

    mss.get_strategy_metadata = get_strategy_metadata
    mss.get_current_strategy_metadata = get_current_strategy_metadata
    for mod in _modules():
        if hasattr(mod, "barrier_world"):
            mod.barrier_world = lambda *a, **k: None
        if hasattr(mod, "get_rank"):          # 1.7 calls MindSpore's get_rank/get_group_size
            mod.get_rank = lambda *a, **k: rank
        if hasattr(mod, "get_group_size"):
            mod.get_group_size = lambda *a, **k: size
        if hasattr(mod, "get_strategy_metadata"):
            mod.get_strategy_metadata = get_strategy_metadata
        if hasattr(mod, "get_current_strategy_metadata"):
            mod.get_current_strategy_metadata = get_current_strategy_metadata
        if hasattr(mod, "LayoutAdapter"):     # 2.x: the static-graph (GRAPH_MODE) branch
            mod.LayoutAdapter.is_pynative_mode = staticmethod(lambda: False)


# ----------------------------------------------------------------------------- layouts

def ms_type(arr) -> str:
    import mindspore as ms
    return str(ms.Tensor(arr).dtype)        # "Float32", "BFloat16", ... as str(param.dtype)


def compiler_layout(tensor_map, dev_matrix, rank_list, opt_size, type_str, shape):
    """[Layout, type, global_shape] exactly as mindspore.parallel.strategy.get_strategy_metadata
    builds it from the compiler's StrategyInfo of one parameter."""
    from mindspore.parallel.strategy import _NetStrategyInfo
    info = SimpleNamespace(opt_weight_shard_size=opt_size, dev_matrix=list(dev_matrix),
                           tensor_map=[[k] for k in tensor_map], rank_list=list(rank_list),
                           tensor_type=type_str, tensor_shape=list(shape))
    return object.__new__(_NetStrategyInfo)._layout_process(info)


def job_layouts(spec: dict, params: dict) -> tuple[int, dict, dict]:
    """world size, {rank: {name: [Layout, type, shape]}}, {name: stage}."""
    synth = _synth()
    dp, mp, pp = spec["dp"], spec["mp"], spec["pp"]
    per_stage = dp * mp
    layouts = {r: {} for r in range(per_stage * pp)}
    stage_of = {}
    for name, tmap in synth.tensor_maps(SHAPE["num_layers"]).items():
        if name not in params:
            continue
        shape = params[name].shape
        split0 = mp if tmap[0] == 0 else 1
        size, _ = synth.layout_for(tmap, dp, mp, spec["opt_shard"], shape[0] // split0)
        (stage,) = synth.pipeline_stage_of(name, SHAPE["num_layers"], pp)
        stage_of[name] = stage
        ranks = list(range(stage * per_stage, (stage + 1) * per_stage))
        entry = compiler_layout(tmap, [dp, mp], ranks, size, ms_type(params[name]), shape)
        for r in ranks:
            layouts[r][name] = entry
    return per_stage * pp, layouts, stage_of


def local_slice(full: np.ndarray, layout, rank: int) -> np.ndarray:
    """The slice of `full` that `rank` holds under a mindspore.parallel.Layout (tensor_map entries
    are device-dimension indices counted from the right, a tuple = several device dimensions, the
    first one outermost)."""
    d = layout.to_dict()
    dev, tmap, ranks = list(d["device_matrix"]), d["tensor_map"], list(d["rank_list"])
    coord = np.unravel_index(ranks.index(rank), dev)
    index = []
    for dim, axes in enumerate(tmap):
        axes = [a for a in (axes if isinstance(axes, (list, tuple)) else (axes,)) if a != -1]
        parts, idx = 1, 0
        for a in axes:
            k = len(dev) - 1 - a
            idx, parts = idx * dev[k] + int(coord[k]), parts * dev[k]
        step = full.shape[dim] // parts
        index.append(slice(idx * step, (idx + 1) * step))
    return full[tuple(index)]


def make_cell(params: dict):
    """A Cell holding MindSpore Parameters under exactly these names."""
    import mindspore.nn as nn

    class Holder(nn.Cell):
        def convert_name(self, name):            # MindFormers 1.8's loader asks the network
            return name

        def convert_concat_name(self, name):
            return name

    cell = Holder()
    for name, param in params.items():
        cell.insert_param_to_cell(name.replace(".", "_"), param, check_name_contain_dot=False)
    return cell


# ----------------------------------------------------------------------------- write

def synth_params(layout: str, no_bf16: bool) -> dict:
    """synth.llama_params for this layout (weights cycle float32/float16/bfloat16)."""
    return _synth().llama_params(num_layers=SHAPE["num_layers"], vocab=SHAPE["vocab"],
                                 hidden=SHAPE["hidden"], ffn=SHAPE["ffn"],
                                 optimizer=LAYOUTS[layout]["optimizer"],
                                 dtypes=DTYPES_NO_BF16 if no_bf16 else DTYPES)


def write(layout: str, out: str, prefix: str, remove_redundancy: bool, no_bf16: bool) -> dict:
    import mindspore as ms
    from mindspore import Parameter, Tensor
    ver = mf_version()
    spec = LAYOUTS[layout]
    params = synth_params(layout, no_bf16)
    params.pop("scale_sense")                  # lives in the train wrapper: common.json loss_scale
    world, layouts, stage_of = job_layouts(spec, params)
    model_names = [n for n in params if n in stage_of and not n.startswith(("adam_m.", "adam_v."))]
    opt_names = [n for n in params if n not in model_names] if spec["optimizer"] else []
    ms.set_context(mode=ms.GRAPH_MODE)       # MindSpore's save skips unsliced params only here

    fake_world(0, world, layouts)
    ck = importlib.import_module("mindformers.checkpoint.checkpoint")
    st = importlib.import_module("mindformers.checkpoint.sharded_tensor")
    fake_world(0, world, layouts)              # patch modules imported by the line above too

    for rank in range(world):
        fake_world(rank, world, layouts)

        def cell_for(names):
            held = {}
            for n in names:
                owned = n in layouts[rank] or (n in NO_LAYOUT)
                data = local_slice(params[n], layouts[rank][n][0], rank) if n in layouts[rank] \
                    else params[n]
                p = Parameter(Tensor(np.ascontiguousarray(data)), name=n, requires_grad=False)
                p.sliced = owned                   # what the parallel pass sets on its stage's params
                p.param_info.is_param_init = owned
                held[n] = p
            return make_cell(held)

        network = cell_for(model_names)
        optimizer = cell_for(opt_names) if opt_names else None
        model_keys = set(model_names)
        filt = None if optimizer is not None else (lambda x: x in model_keys)
        common = ck.CommonInfo(**{k: v for k, v in COMMON.items()
                                  if k in ck.CommonInfo.__dataclass_fields__})
        kwargs = dict(iteration=ITERATION, network=network, optimizer=optimizer, common_info=common,
                      keep_max_num=5, user_prefix=prefix, save_checkpoint_path=out,
                      remove_redundancy=remove_redundancy)
        if ver < (1, 8):                       # 1.7: the raw strategy info, metadata built inside
            kwargs["global_strategy_info"] = layouts
        elif ver < (2, 1):                     # 1.8-2.0: every rank builds all ranks' metas
            kwargs["sharded_tensor_metas"] = st.get_all_sharded_tensor(network, filt)
        else:                                  # 2.1: rank 0 only, from a deduplicated index
            kwargs["sharded_tensor_metas"] = st.get_all_sharded_tensor_on_rank0(
                network=network, filter_func=filt, optimizer=optimizer,
                saved_cells=[network] + ([optimizer] if optimizer is not None else []))
            kwargs["current_ckpt_step_list"] = []
        if (1, 9) <= ver < (2, 1):
            kwargs["current_ckpt_step_list"] = []
        ck.save_checkpoint(**kwargs)
    return {"mindformers": ".".join(map(str, ver)), "layout": layout, "world": world,
            "remove_redundancy": remove_redundancy, "bf16": not no_bf16, "out": out}


# ----------------------------------------------------------------------------- check

def _metadata_api():
    try:
        from mindformers.checkpoint.metadata import get_metadata_of_checkpoint
    except ImportError:                        # 1.7/1.8 keep it in checkpoint.py
        from mindformers.checkpoint.checkpoint import get_metadata_of_checkpoint
    from mindformers.checkpoint.checkpoint import get_checkpoint_path
    return get_checkpoint_path, get_metadata_of_checkpoint


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and str(a.dtype) == str(b.dtype) and a.tobytes() == b.tobytes()


def check(folder: str, expect: dict | None, reshard_to: str | None, dump_full: str | None = None,
          ranks: list[int] | None = None) -> dict:
    """Load `folder` with MindFormers' own load_checkpoint: once as a single rank into full-shape
    Parameters, and, with `reshard_to`, as every rank of that layout (MindFormers' online reshard).
    ranks: only these ranks of `reshard_to`, and no single-rank load (a node's copy holding the
    files those ranks read: the full tensors are `expect`)."""
    import mindspore as ms
    from mindspore import Parameter, Tensor
    fake_world(0, 1)
    ck = importlib.import_module("mindformers.checkpoint.checkpoint")
    fake_world(0, 1)
    get_checkpoint_path, get_metadata_of_checkpoint = _metadata_api()
    iter_dir = get_checkpoint_path(folder)
    metas, mappings = get_metadata_of_checkpoint(iter_dir)
    files = {}
    for key, stored in mappings.items():
        name = key.split("'")[1]
        files.setdefault(name, set()).update(s["file_name"] for s in stored)
    is_opt = {n: all(re.search(r"(^|-)opt-\d+-\d+\.safetensors$", f) for f in fs)
              for n, fs in files.items()}
    common = json.load(open(os.path.join(iter_dir, "common.json"), encoding="utf-8"))
    report = {"iteration_dir": os.path.basename(iter_dir), "params": len(metas),
              "common": common, "mismatch": [], "missing": []}

    def expected_full(name):
        return expect.get(name) if expect is not None else None

    def cells(shape_of, names):
        net, opt = {}, {}
        for n in names:
            sample = metas[n][0]
            dst = opt if is_opt.get(n) else net
            dst[n] = Parameter(Tensor(np.zeros(shape_of(n)), dtype=sample.dtype), name=n,
                               requires_grad=False)
        if opt:
            opt["global_step"] = Parameter(Tensor([0], ms.int32), name="global_step",
                                           requires_grad=False)
        return make_cell(net), (make_cell(opt) if opt else None)

    global_shape = {n: metas[n][0].global_shape for n in metas}
    dummy = {n: np.zeros(global_shape[n], np.float32) for n in metas}
    types = {n: str(metas[n][0].dtype) for n in metas}

    def layouts_for(layout_name):
        world, layouts, _ = job_layouts(LAYOUTS[layout_name], dummy)
        for lay in layouts.values():             # dtype strings as the checkpoint records them
            for n, entry in lay.items():
                entry[1] = types[n]
        return world, layouts

    # 1. one rank, full tensors. MindFormers 1.7 always asks MindSpore for the current strategy
    # (None on a single card, and then fails), so it gets a one-device layout instead.
    if ranks is not None:   # a node's copy: its ranks only, against the complete tensors expected
        loaded = {n: expect[n] for n in metas if n in expect}
    elif mf_version() < (1, 8):
        fake_world(0, 1, layouts_for("single")[1])
    if ranks is None:
        network, optimizer = cells(lambda n: global_shape[n], list(metas))
        ck.load_checkpoint(folder, network, optimizer)
    if ranks is None and dump_full:   # the complete tensors MindFormers' loader gives, for our tests
        held = list(network.get_parameters()) + (
            [p for p in optimizer.get_parameters() if p.name != "global_step"] if optimizer else [])
        ms.save_checkpoint([{"name": p.name, "data": p} for p in held], dump_full,
                           format="safetensors")
    if ranks is None:
        loaded = {p.name: p.asnumpy() for p in network.get_parameters()}
        if optimizer is not None:
            loaded.update({p.name: p.asnumpy() for p in optimizer.get_parameters()})
            report["global_step_loaded"] = int(loaded.pop("global_step")[0])
    report["full"] = loaded
    if expect is not None and ranks is None:
        for n, arr in loaded.items():
            if n not in expect:
                report["missing"].append(f"{n}: not in the expected tensors")
            elif not _same(arr, expect[n]):
                report["mismatch"].append(f"full {n}")
        for n in expect:
            if n not in loaded and n not in NO_LAYOUT and n != "scale_sense":
                report["missing"].append(f"{n}: expected, not loaded")

    # 2. every rank of another layout (MindFormers resharding at load time)
    if reshard_to:
        world, layouts = layouts_for(reshard_to)
        checked = 0
        for rank in (range(world) if ranks is None else ranks):
            fake_world(rank, world, layouts)
            names = [n for n in layouts[rank] if n in metas]
            if ranks is not None:
                missing = [n for n in layouts[rank] if n not in metas and n in expect]
                report["missing"] += [f"rank {rank} {n}: not in the node's metadata.json" for n in missing]
            network, optimizer = cells(
                lambda n: local_slice(dummy[n], layouts[rank][n][0], rank).shape, names)
            ck.load_checkpoint(folder, network, optimizer)
            got = {p.name: p.asnumpy() for p in network.get_parameters()}
            if optimizer is not None:
                got.update({p.name: p.asnumpy() for p in optimizer.get_parameters()
                            if p.name != "global_step"})
            for n in names:
                want = local_slice(loaded[n], layouts[rank][n][0], rank)
                checked += 1
                if not _same(got[n], want):
                    report["mismatch"].append(f"{reshard_to} rank {rank} {n}")
        report["reshard_checked"] = checked
        fake_world(0, 1)
    return report


def load_expect(args) -> dict | None:
    if args.expect_synth:
        p = synth_params(args.expect_synth, args.no_bf16)
        return {k: v for k, v in p.items() if k not in ("scale_sense",) + NO_LAYOUT}
    if args.expect_safetensors:
        import mindspore as ms
        return {k: v.asnumpy() for k, v in
                ms.load_checkpoint(args.expect_safetensors, format="safetensors").items()}
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--mf-src", help="prepend an unzipped mindformers wheel to sys.path")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="save a fixture with MindFormers' save_checkpoint")
    w.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    w.add_argument("--out", required=True, help="checkpoint root (save_checkpoint_path)")
    w.add_argument("--prefix", default="CKP", help="user_prefix (MindFormers' default 'CKP')")
    w.add_argument("--remove-redundancy", action="store_true",
                   help="save_remove_redundancy: BalancedSaveStrategy")
    w.add_argument("--small", action="store_true", help=f"shapes {SMALL_SHAPE} (test fixtures)")
    w.add_argument("--no-bf16", action="store_true",
                   help="weights in float32/float16 only (MindFormers 1.7/1.8 cannot reshard "
                        "bfloat16 on CPU)")
    c = sub.add_parser("check", help="load a folder with MindFormers' load_checkpoint")
    c.add_argument("folder", help="checkpoint root or iteration folder")
    c.add_argument("--expect-synth", choices=sorted(LAYOUTS),
                   help="compare with synth.llama_params as `write --layout` made them")
    c.add_argument("--expect-safetensors", help="compare with a complete safetensors file")
    c.add_argument("--no-bf16", action="store_true", help="the fixture was written --no-bf16")
    c.add_argument("--dump-full", help="save the complete tensors loaded as this safetensors file")
    c.add_argument("--reshard-to", choices=sorted(LAYOUTS),
                   help="also load as every rank of this layout (online reshard)")
    c.add_argument("--ranks", help="with --reshard-to and an expected set: only these ranks "
                                   "(comma-separated), no single-rank load (a node's copy)")
    args = ap.parse_args(argv)
    if args.mf_src:
        sys.path.insert(0, os.path.abspath(args.mf_src))
    if args.cmd == "write":
        if args.small:
            SHAPE.update(SMALL_SHAPE)
        print(json.dumps(write(args.layout, os.path.abspath(args.out), args.prefix,
                               args.remove_redundancy, args.no_bf16)))
        return 0
    rep = check(os.path.abspath(args.folder), load_expect(args), args.reshard_to, args.dump_full,
                [int(r) for r in args.ranks.split(",")] if args.ranks else None)
    rep.pop("full")
    rep["mindformers"] = ".".join(map(str, mf_version()))
    print(json.dumps(rep, default=str))
    return 1 if rep["mismatch"] or rep["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
