"""Planning alone, from strategies (no checkpoint files), for a 70B-shaped model at scale.

Llama 70B shape (80 layers, hidden 8192, ffn 28672, vocab 32000), parameter names as
tests/synth.py writes them, plus optimizer moments (adam_m. / adam_v.) for every parameter that
has a layout; parallel optimizer on (MindFormers' enable_parallel_optimizer, shard size = all
replicas; --opt_shard 0 turns it off). For each size, the source and destination strategies
(mp 8 throughout, dp halves and pp doubles):

       64:  dp2·mp8·pp4   -> dp1·mp8·pp8
      256:  dp4·mp8·pp8   -> dp2·mp8·pp16
     1024:  dp16·mp8·pp8  -> dp8·mp8·pp16
     4096:  dp64·mp8·pp8  -> dp32·mp8·pp16

are written as protobuf strategy folders in bench/_work/plan_bench/ (one file per pipeline
stage: the ranks of a stage write identical files, which load_strategy reads once anyway; not
timed). Then a FRESH child process per size (so its peak RSS is that of planning alone) runs
`load_strategy` of both and `plan_from_strategies(None, src, dst)` for every destination rank,
and reports the wall time of those two steps and its peak RSS (ru_maxrss, interpreter and
imports included), the tensors and pieces planned and how many distinct Piece objects hold
them (the planner shares equal pieces between tensors and ranks). Each child is bounded by
--timeout seconds. Goal: 4096 ranks in under 10 s and under 2 GB; growth should be about
linear in ranks. Usage:

    python3.11 dev.py bench plan_bench [--sizes 64,256] [--timeout 300] [--opt_shard -1|0]
                                       [--profile SIZE]   # cProfile the child of one size
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "_work", "plan_bench")
sys.path.insert(0, ROOT)

LAYERS, HIDDEN, FFN, VOCAB, MP = 80, 8192, 28672, 32000, 8
# destination ranks -> ((src dp, src pp), (dst dp, dst pp)); mp is MP everywhere.
SIZES = {64: ((2, 4), (1, 8)), 256: ((4, 8), (2, 16)), 1024: ((16, 8), (8, 16)),
         4096: ((64, 8), (32, 16))}
GOAL_RANKS, GOAL_SECONDS, GOAL_BYTES = 4096, 10.0, 2 << 30


# -- strategy files (not timed) ---------------------------------------------------------------

def shapes_70b() -> dict[str, tuple[int, ...]]:
    """Every laid-out parameter -> full shape; optimizer moments for every one of them."""
    from tests import synth
    shapes = synth.llama_shapes(LAYERS, VOCAB, HIDDEN, FFN)
    for name in list(shapes):
        shapes["adam_m." + name] = shapes[name]
        shapes["adam_v." + name] = shapes[name]
    return shapes


def stage_layouts(dp: int, mp: int, pp: int, opt_shard: int) -> dict[int, dict[str, dict]]:
    """stage -> {name: layout fields}, as synth._strategy_maps lays Llama out (its tensor maps,
    MindFormers' stage assignment, MindSpore's optimizer-shard rule), for every parameter."""
    from tests import synth
    base_maps = {n: m for n, m in synth.tensor_maps(LAYERS).items()
                 if not n.startswith(("adam_m.", "adam_v."))}
    stages: dict[int, dict[str, dict]] = {s: {} for s in range(pp)}
    for name, shape in shapes_70b().items():
        tmap = base_maps[name.split(".", 1)[1] if name.startswith("adam_") else name]
        dim0_slice = shape[0] // (mp if tmap[0] == 0 else 1)
        size, step = synth.layout_for(tmap, dp, mp, opt_shard, dim0_slice)
        for s in synth.pipeline_stage_of(name, LAYERS, pp):
            stages[s][name] = {"dev_matrix": [dp, mp], "tensor_map": list(tmap),
                               "opt_weight_shard_step": step, "opt_weight_shard_size": size}
    return stages


def stage_bytes(stage: int, layouts: dict[str, dict]) -> bytes:
    """One stage's strategy file: the ParallelStrategyMap a rank of that stage writes (the same
    schema as synth._stage_message, built with reshard's copy of it: no MindSpore import)."""
    from reshard._strategy_pb import ParallelStrategyMap
    m = ParallelStrategyMap()
    m.current_stage = stage
    item = m.parallel_strategy_item.add()
    item.node_name = "Default/network-_VirtualDatasetCell/MatMul-op0"
    item.parallel_strategys.stage = stage
    item.parallel_strategys.parallel_strategy.add().dim.extend([1, 1])
    for name, lay in layouts.items():
        li = m.parallel_layout_item.add()
        li.param_name = name
        pl = li.parallel_layouts
        pl.dev_matrix.add().dim.extend(lay["dev_matrix"])
        pl.tensor_map.add().dim.extend(lay["tensor_map"])
        pl.param_split_shape.add()
        pl.indices_offset.add()
        pl.field = 0
        pl.opt_weight_shard_step = lay["opt_weight_shard_step"]
        pl.opt_weight_shard_size = lay["opt_weight_shard_size"]
    return m.SerializeToString()


def write_strategy_folder(folder: str, dp: int, mp: int, pp: int, opt_shard: int) -> int:
    """ckpt_strategy_rank_<first rank of the stage>.ckpt for every stage (the other ranks of a
    stage would write the same bytes). Returns the bytes written."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    total = 0
    for s, lays in stage_layouts(dp, mp, pp, opt_shard).items():
        data = stage_bytes(s, lays)
        with open(os.path.join(folder, f"ckpt_strategy_rank_{s * dp * mp}.ckpt"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


# -- the child: planning alone ------------------------------------------------------------------

def child(src_dir: str, dst_dir: str, profile: bool) -> None:
    """Load both strategies, plan every destination rank; one JSON line on stdout."""
    t0 = time.perf_counter()
    from reshard.api import load_strategy, plan_from_strategies
    t1 = time.perf_counter()
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    src, dst = load_strategy(src_dir), load_strategy(dst_dir)
    t2 = time.perf_counter()
    plan = plan_from_strategies(None, src, dst)
    t3 = time.perf_counter()
    if prof is not None:
        prof.disable()
    tensors = sum(len(rp.tensors) for rp in plan.ranks)
    pieces = sum(len(t.pieces) for rp in plan.ranks for t in rp.tensors)
    distinct = len({id(p) for rp in plan.ranks for t in rp.tensors for p in t.pieces})
    out = {"import_s": t1 - t0, "load_s": t2 - t1, "plan_s": t3 - t2,
           "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "ranks": len(plan.ranks), "params": len(src.layouts), "tensors": tensors,
           "pieces": pieces, "distinct_pieces": distinct,
           "src_ranks_read": len(plan.needed_source_ranks())}
    if prof is not None:
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(12)
        out["profile"] = buf.getvalue()
    print(json.dumps(out), flush=True)


# -- the parent ----------------------------------------------------------------------------------

def run_size(n: int, opt_shard: int, timeout: float, profile: bool) -> dict:
    (sdp, spp), (ddp, dpp) = SIZES[n]
    src_dir, dst_dir = os.path.join(WORK, str(n), "src"), os.path.join(WORK, str(n), "dst")
    t0 = time.perf_counter()
    sb = write_strategy_folder(src_dir, sdp, MP, spp, opt_shard)
    db = write_strategy_folder(dst_dir, ddp, MP, dpp, opt_shard)
    gen = time.perf_counter() - t0
    cmd = [sys.executable, os.path.abspath(__file__), "--child", src_dir, dst_dir]
    if profile:
        cmd.append("--child_profile")
    res = {"n": n, "case": f"dp{sdp}·mp{MP}·pp{spp} -> dp{ddp}·mp{MP}·pp{dpp}",
           "gen_s": gen, "strategy_bytes": sb + db}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:          # subprocess.run kills the child
        res.update(error=f"timeout after {timeout:.0f} s (killed)")
        return res
    res["child_s"] = time.perf_counter() - t0
    if p.returncode != 0:
        res.update(error=f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        return res
    res.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return res


def _mb(b: float) -> str:
    return f"{b / 1e6:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help=f"destination rank counts, a subset of {sorted(SIZES)}")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    ap.add_argument("--opt_shard", type=int, default=-1,
                    help="optimizer shard size (-1: all replicas, 0: no parallel optimizer)")
    ap.add_argument("--profile", type=int, default=None, metavar="SIZE",
                    help="also cProfile the child of this size (a separate run, not timed)")
    ap.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--child_profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child, args.child_profile)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"--sizes: {bad} not among {sorted(SIZES)}")
    sizes = sorted(sizes)
    print(f"plan_bench: 70B-shaped model ({LAYERS} layers, hidden {HIDDEN}, ffn {FFN}, vocab "
          f"{VOCAB}, adam_m/adam_v for every parameter, opt_shard {args.opt_shard}); strategies "
          f"only, load_strategy x2 + plan_from_strategies(None, src, dst) for all destination "
          f"ranks, each size in a fresh process (timeout {args.timeout:.0f} s)", flush=True)
    rows, prev, failed = [], None, False
    for n in sizes:
        r = run_size(n, args.opt_shard, args.timeout, profile=False)
        rows.append(r)
        if "error" in r:
            print(f"  {n}: {r['case']}: {r['error']}", flush=True)
            failed = True
            prev = None
            continue
        r["wall"] = r["load_s"] + r["plan_s"]
        r["ratio_t"] = r["wall"] / prev["wall"] if prev else None
        r["ratio_m"] = r["maxrss"] / prev["maxrss"] if prev else None
        r["ratio_n"] = n / prev["n"] if prev else None
        print(f"  {n}: done in {r['child_s']:.1f} s (child process)", flush=True)
        prev = r
    print()
    print("| dst ranks | case | params | tensors / pieces planned (distinct pieces) | "
          "load_strategy x2 | plan | "
          "wall (load+plan) | peak RSS | vs previous: ranks, wall, RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['n']} | {r['case']} | | | | | {r['error']} | | |")
            continue
        ratio = (f"{r['ratio_n']:.0f}x, {r['ratio_t']:.2f}x, {r['ratio_m']:.2f}x"
                 if r["ratio_t"] else "-")
        print(f"| {r['n']} | {r['case']} | {r['params']} | {r['tensors']:,} / {r['pieces']:,} "
              f"({r['distinct_pieces']:,}) | "
              f"{r['load_s']:.2f} s | {r['plan_s']:.2f} s | {r['wall']:.2f} s | "
              f"{_mb(r['maxrss'])} | {ratio} |")
    print()
    goal = next((r for r in rows if r["n"] == GOAL_RANKS), None)
    verdict = "not run"
    if goal is not None:
        if "error" in goal:
            verdict = f"NOT MET ({goal['error']})"
        else:
            ok = goal["wall"] < GOAL_SECONDS and goal["maxrss"] < GOAL_BYTES
            verdict = (f"{'MET' if ok else 'NOT MET'} ({goal['wall']:.2f} s, "
                       f"{_mb(goal['maxrss'])})")
    print(f"goal: {GOAL_RANKS} destination ranks planned in under {GOAL_SECONDS:.0f} s and "
          f"under {GOAL_BYTES >> 30} GB peak RSS: {verdict}; growth about linear in ranks "
          f"(wall and RSS ratios near 1x per 1x of ranks, 4x per 4x)")
    if args.profile is not None:
        if args.profile not in SIZES:
            ap.error(f"--profile: {args.profile} not among {sorted(SIZES)}")
        r = run_size(args.profile, args.opt_shard, args.timeout, profile=True)
        print(f"\ncProfile of {args.profile} ranks (load + plan, cumulative):")
        print(r.get("profile") or r.get("error"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
