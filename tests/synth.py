"""Synthetic Llama-shaped checkpoints and MindSpore strategy files for tests and benchmarks.

MindSpore cannot compile semi-auto-parallel graphs on CPU, so strategy files are written here
directly as `ParallelStrategyMap` protobufs (or their JSON form), laid out the way MindFormers'
Llama lays its parameters out over a [dp, mp] device matrix per pipeline stage. `ms_transform`
is the reference every conversion is compared against bit for bit.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import numpy as np

# tensor_map over dev_matrix [dp, mp] (counted from the right: 0 = mp, 1 = dp).
_COLUMN = [0, -1]     # output features split by mp (wq/wk/wv/w1/w3, lm_head over vocab)
_ROW = [-1, 0]        # input features split by mp (wo, w2)
_REPLICATED2 = [-1, -1]
_NORM = [-1]


def _layer_layouts(i: int) -> dict[str, list[int]]:
    p = f"model.layers.{i}."
    return {
        p + "attention.wq.weight": _COLUMN, p + "attention.wk.weight": _COLUMN,
        p + "attention.wv.weight": _COLUMN, p + "attention.wo.weight": _ROW,
        p + "feed_forward.w1.weight": _COLUMN, p + "feed_forward.w2.weight": _ROW,
        p + "feed_forward.w3.weight": _COLUMN,
        p + "attention_norm.weight": _NORM, p + "ffn_norm.weight": _NORM,
    }


def tensor_maps(num_layers: int = 2) -> dict[str, list[int]]:
    """Every parameter that has a layout -> its tensor_map (optimizer moments included)."""
    maps = {"model.tok_embeddings.embedding_weight": _REPLICATED2}   # vocab_emb_dp: True
    for i in range(num_layers):
        maps.update(_layer_layouts(i))
    maps["model.norm_out.weight"] = _NORM
    maps["lm_head.weight"] = _COLUMN
    for name in list(maps):
        if name.endswith(("wq.weight", "w2.weight")) or name == "model.norm_out.weight":
            maps["adam_m." + name] = maps[name]
            maps["adam_v." + name] = maps[name]
    return maps


def _bf16(x: np.ndarray) -> np.ndarray:
    import mindspore as ms
    return ms.Tensor(x.astype(np.float32), dtype=ms.bfloat16).asnumpy()


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return _bf16(x) if dtype == "bfloat16" else x.astype(dtype)


def llama_shapes(num_layers: int, vocab: int, hidden: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Every weight of a MindFormers Llama -> its full shape (no optimizer moments)."""
    shapes = {"model.tok_embeddings.embedding_weight": (vocab, hidden)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        for w in ("wq", "wk", "wv", "wo"):
            shapes[p + f"attention.{w}.weight"] = (hidden, hidden)
        shapes[p + "feed_forward.w1.weight"] = (ffn, hidden)
        shapes[p + "feed_forward.w2.weight"] = (hidden, ffn)
        shapes[p + "feed_forward.w3.weight"] = (ffn, hidden)
        shapes[p + "attention_norm.weight"] = (hidden,)
        shapes[p + "ffn_norm.weight"] = (hidden,)
    shapes["model.norm_out.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


# A Llama of a few KB, for llama_params(**SMALL_LLAMA) / write_strategy: the Checkpoint 2.0 tests' size
SMALL_LLAMA = dict(num_layers=2, vocab=16, hidden=8, ffn=16)


def llama_params(num_layers=2, vocab=256, hidden=64, ffn=128, seed=0,
                 dtypes=("float32", "float16", "bfloat16"), optimizer=True
                 ) -> dict[str, np.ndarray]:
    """name -> numpy array (bf16 as MindSpore's numpy bfloat16 dtype), as a training checkpoint
    holds them: weights in mixed dtypes, norms fp32, optimizer moments fp32, and parameters no
    strategy describes (global_step, learning_rate, a scale-sense value). optimizer=False
    leaves the moments out (an inference checkpoint)."""
    rng = np.random.default_rng(seed)
    shapes = llama_shapes(num_layers, vocab, hidden, ffn)
    params: dict[str, np.ndarray] = {}
    k = 0
    for name, shape in shapes.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm.weight") or name.endswith("norm_out.weight"):
            params[name] = x
        else:
            params[name] = _cast(x, dtypes[k % len(dtypes)])
            k += 1
    for name in tensor_maps(num_layers) if optimizer else ():
        if name.startswith(("adam_m.", "adam_v.")):
            params[name] = rng.standard_normal(shapes[name.split(".", 1)[1]], dtype=np.float32)
    params["global_step"] = np.array([1234], np.int32)
    params["learning_rate"] = np.array([3e-4], np.float32)
    params["scale_sense"] = np.array([65536.0], np.float32)
    return params


def write_complete_checkpoint(path, params, fmt="ckpt") -> str:
    import mindspore as ms
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in params.items()], path,
                       format=fmt)
    return path


def pipeline_stage_of(name: str, num_layers: int, pp: int) -> list[int]:
    """MindFormers' assignment: embedding in stage 0, layers evenly, norm_out/lm_head last."""
    base = name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name
    if base.startswith("model.tok_embeddings"):
        return [0]
    if base.startswith("model.layers."):
        i = int(base.split(".")[2])
        return [i * pp // num_layers]
    return [pp - 1]


def layout_for(tensor_map, dp, mp, opt_shard, dim0_slice):
    """(opt_weight_shard_size, opt_weight_shard_step) as MindSpore's parallel optimizer sets them:
    the replicas of a slice (dev dims no tensor dim maps to) shard dim 0 further, innermost first."""
    if not opt_shard:
        return 0, 0
    dev = [dp, mp]
    used = {len(dev) - 1 - k for k in tensor_map if k != -1}
    repeated = [i for i, v in enumerate(dev) if i not in used and v > 1]
    replicas = int(np.prod([dev[i] for i in repeated])) if repeated else 1
    size = replicas if opt_shard == -1 else min(opt_shard, replicas)
    if size <= 1 or dim0_slice % size:
        return 0, 0
    step = int(np.prod(dev[repeated[-1] + 1:]))   # stride between shard-group members
    return size, step


def _strategy_maps(dp, mp, pp, opt_shard, num_layers, params):
    """stage -> {param_name: layout dict}."""
    maps = tensor_maps(num_layers)
    stages: dict[int, dict[str, dict]] = {s: {} for s in range(pp)}
    for name, tmap in maps.items():
        if params is not None and name not in params:
            continue
        shape = params[name].shape if params is not None else None
        split0 = mp if tmap[0] == 0 else 1
        dim0_slice = shape[0] // split0 if shape is not None else 1 << 20
        size, step = layout_for(tmap, dp, mp, opt_shard, dim0_slice)
        for s in pipeline_stage_of(name, num_layers, pp):
            stages[s][name] = {"dev_matrix": [dp, mp], "tensor_map": list(tmap),
                               "param_split_shape": [], "indices_offset": [], "field": 0,
                               "opt_weight_shard_step": step, "opt_weight_shard_size": size}
    return stages


def _stage_message(stage, layouts, node_name="Default/network-_VirtualDatasetCell/MatMul-op0"):
    from mindspore.train import node_strategy_pb2 as pb
    m = pb.ParallelStrategyMap()
    m.current_stage = stage
    item = m.parallel_strategy_item.add()
    item.node_name = node_name
    item.parallel_strategys.stage = stage
    st = item.parallel_strategys.parallel_strategy.add()
    st.dim.extend([1, 1])
    for name, lay in layouts.items():
        li = m.parallel_layout_item.add()
        li.param_name = name
        pl = li.parallel_layouts
        pl.dev_matrix.add().dim.extend(lay["dev_matrix"])
        tms = lay["tensor_map"]
        if any(isinstance(t, (list, tuple)) for t in tms):   # nested: one TensorMap per tensor dim
            for t in tms:
                pl.tensor_map.add().dim.extend(t if isinstance(t, (list, tuple)) else [t])
        else:
            pl.tensor_map.add().dim.extend(tms)
        pl.param_split_shape.add().dim.extend(lay["param_split_shape"])
        pl.indices_offset.add().dim.extend(lay["indices_offset"])
        pl.field = lay["field"]
        pl.opt_weight_shard_step = lay["opt_weight_shard_step"]
        pl.opt_weight_shard_size = lay["opt_weight_shard_size"]
    return m


def _stage_json(stage, layouts):
    return {"current_stage": stage,
            "parallel_strategy_item": {"Default/MatMul-op0": {"stage": stage,
                                                              "parallel_strategy": [[1, 1]]}},
            "parallel_layout_item": {n: {k: v for k, v in lay.items() if k != "indices_offset"}
                                     for n, lay in layouts.items()}}


def write_stage_layouts(path, stage, layouts, fmt="pb"):
    """One strategy file holding `layouts` (name -> layout dict) of one pipeline stage."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_stage_json(stage, layouts), f)
    else:
        with open(path, "wb") as f:
            f.write(_stage_message(stage, layouts).SerializeToString())
    return path


def write_strategy(folder_or_file, *, dp, mp, pp, opt_shard=0, num_layers=2, params=None,
                   per_rank=True, merged_file=None, fmt="pb", shared_embedding=False) -> list[str]:
    """Strategy files as a real job writes them: per_rank -> `ckpt_strategy_rank_<r>.<ext>` in the
    folder for every rank (each holds its stage's parameters; ranks of one stage write identical
    files); else one file (only meaningful for pp == 1). `merged_file`: also MindSpore's merged
    file via mindspore.merge_pipeline_strategys. `shared_embedding`: the embedding also lives in
    the last stage (a parameter present in several stages). Returns the paths written."""
    stages = _strategy_maps(dp, mp, pp, opt_shard, num_layers, params)
    if shared_embedding and pp > 1:
        for name in list(stages[0]):
            if "tok_embeddings" in name:
                stages[pp - 1][name] = dict(stages[0][name])
    ext = "json" if fmt == "json" else "ckpt"
    written = []
    if per_rank:
        os.makedirs(folder_or_file, exist_ok=True)
        per_stage = dp * mp
        for r in range(per_stage * pp):
            written.append(write_stage_layouts(
                os.path.join(folder_or_file, f"ckpt_strategy_rank_{r}.{ext}"), r // per_stage,
                stages[r // per_stage], fmt))
    else:
        if pp != 1:
            raise ValueError("a single strategy file describes one stage; use per_rank for pp > 1")
        written.append(write_stage_layouts(folder_or_file, 0, stages[0], fmt))
    if merged_file:
        import mindspore as ms
        folder = folder_or_file if per_rank else os.path.dirname(folder_or_file)
        ms.merge_pipeline_strategys(folder, merged_file)
        written.append(merged_file)
    return written


def strategy_stages(dp, mp, pp, params, opt_shard=0, num_layers=2) -> dict[int, dict[str, dict]]:
    """stage -> {parameter name: layout dict} as write_strategy lays them out: edit them (leave
    parameters out, add adapters) and write them with write_layouts."""
    return _strategy_maps(dp, mp, pp, opt_shard, num_layers, params)


def write_layouts(folder, stages, stage_devices) -> str:
    """A per-rank strategy folder (`ckpt_strategy_rank_<r>.ckpt`) holding `stages` (stage ->
    {name: layout dict}), stage_devices ranks per stage. Returns the folder."""
    for stage, layouts in stages.items():
        for local in range(stage_devices):
            rank = stage * stage_devices + local
            write_stage_layouts(os.path.join(folder, f"ckpt_strategy_rank_{rank}.ckpt"), stage, layouts)
    return folder


def step_named(src_dir, dst_dir, name) -> str:
    """dst_dir/rank_<r>/<name(r)>: copies of src_dir's rank files under the names training
    gives its saves (e.g. lambda r: f"llama_rank_{r}-10_2.ckpt"). Returns dst_dir."""
    for rdir in sorted(glob.glob(os.path.join(src_dir, "rank_*"))):
        r = int(os.path.basename(rdir)[5:])
        os.makedirs(os.path.join(dst_dir, f"rank_{r}"), exist_ok=True)
        shutil.copy(_rank_files(src_dir)[r], os.path.join(dst_dir, f"rank_{r}", name(r)))
    return dst_dir


def _as_merged_file(strategy, tmp):
    """MindSpore needs one file holding every stage: merge a folder first (into tmp)."""
    if strategy is None or not os.path.isdir(strategy):
        return strategy
    import mindspore as ms
    ext = ".json" if glob.glob(os.path.join(strategy, "*.json")) else ".ckpt"
    out = os.path.join(tmp, f"merged_{len(os.listdir(tmp))}{ext}")
    ms.merge_pipeline_strategys(strategy, out)
    return out


def ms_transform(src_dir, dst_dir, src_strategy, dst_strategy, prefix="checkpoint_", fmt="ckpt"):
    """MindSpore's reference conversion. src_dir: model_dir with rank_<r>/ or a complete file.
    MindSpore refuses safetensors output from .ckpt input: then its .ckpt output is converted
    with MindSpore's own ckpt -> safetensors (content comparison is format-agnostic anyway)."""
    import mindspore as ms
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isfile(src_dir):
            os.makedirs(os.path.join(tmp, "src", "rank_0"))
            os.symlink(os.path.abspath(src_dir),
                       os.path.join(tmp, "src", "rank_0", os.path.basename(src_dir)))
            src_dir = os.path.join(tmp, "src")
        os.makedirs(os.path.join(tmp, "strategies"))
        src_s = _as_merged_file(src_strategy, os.path.join(tmp, "strategies"))
        dst_s = _as_merged_file(dst_strategy, os.path.join(tmp, "strategies"))
        src_is_ckpt = bool(glob.glob(os.path.join(src_dir, "rank_*", "*.ckpt")))
        if fmt == "safetensors" and src_is_ckpt:
            ms.transform_checkpoints(src_dir, os.path.join(tmp, "out"), prefix, src_s, dst_s)
            for rdir in sorted(glob.glob(os.path.join(tmp, "out", "rank_*"))):
                os.makedirs(os.path.join(dst_dir, os.path.basename(rdir)), exist_ok=True)
                for f in glob.glob(os.path.join(rdir, "*.ckpt")):
                    params = ms.load_checkpoint(f)
                    out = os.path.join(dst_dir, os.path.basename(rdir),
                                       os.path.basename(f)[:-5] + ".safetensors")
                    ms.save_checkpoint(list(params.values()), out, format="safetensors")
        else:
            ms.transform_checkpoints(src_dir, dst_dir, prefix, src_s, dst_s, output_format=fmt)
    return dst_dir


def load_params(path) -> dict[str, tuple[str, tuple, bytes]]:
    """Bit-exact view of one file: name -> (tensor_type, shape, raw bytes)."""
    import mindspore as ms
    fmt = "safetensors" if path.endswith(".safetensors") else "ckpt"
    out = {}
    for name, p in ms.load_checkpoint(path, format=fmt).items():
        a = np.ascontiguousarray(p.asnumpy())
        out[name] = (str(p.dtype), tuple(p.shape), a.tobytes())
    return out


def _rank_files(d):
    files = {}
    for rdir in glob.glob(os.path.join(d, "rank_*")):
        cands = sorted(glob.glob(os.path.join(rdir, "*.ckpt")) +
                       glob.glob(os.path.join(rdir, "*.safetensors")))
        files[int(os.path.basename(rdir)[5:])] = cands[-1] if cands else None
    return files


def assert_same_checkpoint_dirs(dir_a, dir_b):
    """Every rank_<r> file: same names, dtypes, shapes, bytes (format-agnostic)."""
    fa, fb = _rank_files(dir_a), _rank_files(dir_b)
    assert sorted(fa) == sorted(fb), f"rank folders differ: {sorted(fa)} vs {sorted(fb)}"
    for r in sorted(fa):
        a, b = load_params(fa[r]), load_params(fb[r])
        assert sorted(a) == sorted(b), \
            f"rank {r}: names differ: only in a {sorted(set(a) - set(b))}, only in b {sorted(set(b) - set(a))}"
        for name in a:
            assert a[name][:2] == b[name][:2], f"rank {r} {name}: {a[name][:2]} vs {b[name][:2]}"
            assert a[name][2] == b[name][2], f"rank {r} {name}: bytes differ"



def remove_redundancy(src_dir, dst_dir, strategy_folder, stage_devices, fmt="ckpt"):
    """A copy of the distributed checkpoint src_dir (rank_<r>/ folders) as
    save_checkpoint(..., remove_redundancy=True) leaves it: each replicated slice kept by one
    rank only, chosen by MindSpore's own rule (mindspore.train._utils.get_parameter_redundancy
    and remove_param_redundancy on each rank's strategy file, ranks counted from the first of
    its pipeline stage). Values no strategy describes stay in every file. Returns
    {rank: names kept}."""
    import mindspore as ms
    from mindspore.train._utils import get_parameter_redundancy, remove_param_redundancy
    kept = {}
    for rdir in sorted(glob.glob(os.path.join(src_dir, "rank_*"))):
        r = int(os.path.basename(rdir)[5:])
        strategy = os.path.join(strategy_folder, f"ckpt_strategy_rank_{r}.ckpt")
        redundancy = get_parameter_redundancy(strategy, initial_rank=r // stage_devices * stage_devices)
        single = remove_param_redundancy(redundancy)
        src = sorted(glob.glob(os.path.join(rdir, f"*.{fmt}")))[-1]
        params = ms.load_checkpoint(src, format=fmt)
        keep = [n for n in params if n not in redundancy or n in single.get(r, ())]
        kept[r] = set(keep)
        out = os.path.join(dst_dir, os.path.basename(rdir), os.path.basename(src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        ms.save_checkpoint([{"name": n, "data": params[n]} for n in keep], out, format=fmt)
    return kept


def world_8_4(root, **param_kw) -> dict:
    """A complete checkpoint and the documented strategies under root: 'full', 's8' (dp2 mp2
    pp2), 's4' (dp1 mp2 pp2) folders, 'ms8' = MindSpore's complete -> 8 conversion, 'params'."""
    root = str(root)
    params = llama_params(**param_kw)
    d = {"root": root, "params": params,
         "full": write_complete_checkpoint(os.path.join(root, "full.ckpt"), params),
         "s8": os.path.join(root, "s8"), "s4": os.path.join(root, "s4")}
    write_strategy(d["s8"], dp=2, mp=2, pp=2, params=params)
    write_strategy(d["s4"], dp=1, mp=2, pp=2, params=params)
    d["ms8"] = ms_transform(d["full"], os.path.join(root, "ms8"), None, d["s8"])
    return d
