"""Planning at cluster scale, from strategies (no checkpoint files), for a 70B-shaped model.

Llama 70B shape (80 layers, hidden 8192, ffn 28672, vocab 32000), parameter names as
tests/synth.py writes them, plus optimizer moments (adam_m. / adam_v.) for every parameter that
has a layout; parallel optimizer on (MindFormers' enable_parallel_optimizer, shard size = all
replicas; --opt_shard 0 turns it off). For each size, the source and destination strategies
(mp 8 throughout; dp doubles and pp halves, as in issue 22's case):

       64:  dp1·mp8·pp8    -> dp2·mp8·pp4
      256:  dp2·mp8·pp16   -> dp4·mp8·pp8
     1024:  dp8·mp8·pp16   -> dp16·mp8·pp8
     4096:  dp32·mp8·pp16  -> dp64·mp8·pp8
     8192:  dp64·mp8·pp16  -> dp128·mp8·pp8

are written as strategy folders in bench/_work/plan_bench/ the way a training job leaves them:
one protobuf file per rank, ckpt_strategy_rank_<r>.ckpt (the ranks of a stage write identical
bytes); written once and kept (not timed). Then, for each size, two FRESH child processes:

  api  `load_strategy` of both folders and `plan_from_strategies(None, src, dst)` for every
       destination rank: the time of those two steps, the tensors and pieces planned and how
       many distinct Piece objects hold them (the planner shares equal pieces);
  cli  the real command, `transform-checkpoint --src_strategy SRC --dst_strategy DST --dry_run`
       (the plan printed to a file, as `> plan.txt` would): its wall time from start to exit
       (interpreter and imports included), its CPU time (user + system: what the wall time is
       on an idle core) and its peak RSS (ru_maxrss of the child).

Each child is bounded by --timeout seconds. Growth: time per rank against the REFERENCE size
(1024 ranks, measured in the same run), 1.00x = linear. Goal (issue 22): 8192 ranks through
`transform-checkpoint --dry_run` in under 10 s and under 1 GB peak RSS, growing linearly. The
machine's load average is printed with the figures: on a loaded machine compare the ratios.
Usage:

    python3.11 dev.py bench plan_bench [--sizes 64,1024] [--modes api,cli] [--timeout 300]
                                       [--opt_shard -1|0]
                                       [--profile SIZE]   # cProfile the command at one size
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
SIZES = {64: ((1, 8), (2, 4)), 256: ((2, 16), (4, 8)), 1024: ((8, 16), (16, 8)),
         4096: ((32, 16), (64, 8)), 8192: ((64, 16), (128, 8))}
REFERENCE = 1024
GOAL_RANKS, GOAL_SECONDS, GOAL_BYTES = 8192, 10.0, 1 << 30
MODES = ("api", "cli")
# The command as its console script runs it (reshard.console), arguments after it.
CLI = "import sys; from reshard.console import transform_checkpoint; sys.exit(transform_checkpoint())"


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
    """ckpt_strategy_rank_<r>.ckpt for every rank r, as a job leaves them (the ranks of a stage
    write the same bytes). Kept between runs: rewritten only when its parameters change (a
    marker file records them). Returns the bytes of the folder."""
    marker = os.path.join(folder, ".written")
    want = json.dumps({"dp": dp, "mp": mp, "pp": pp, "opt_shard": opt_shard,
                       "layers": LAYERS, "files": "per rank"})
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if f.read() == want:
                return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                           if n.endswith(".ckpt"))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    total = 0
    for s, lays in stage_layouts(dp, mp, pp, opt_shard).items():
        data = stage_bytes(s, lays)
        for r in range(s * dp * mp, (s + 1) * dp * mp):
            with open(os.path.join(folder, f"ckpt_strategy_rank_{r}.ckpt"), "wb") as f:
                f.write(data)
            total += len(data)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(want)
    return total


# -- the children -------------------------------------------------------------------------------

def api_child(src_dir: str, dst_dir: str) -> None:
    """Load both strategies, plan every destination rank; one JSON line on stdout."""
    t0 = time.perf_counter()
    from reshard.api import load_strategy, plan_from_strategies
    t1 = time.perf_counter()
    src, dst = load_strategy(src_dir), load_strategy(dst_dir)
    t2 = time.perf_counter()
    plan = plan_from_strategies(None, src, dst)
    t3 = time.perf_counter()
    tensors = sum(len(rp.tensors) for rp in plan.ranks)
    pieces = sum(len(t.pieces) for rp in plan.ranks for t in rp.tensors)
    distinct = len({id(p) for rp in plan.ranks for t in rp.tensors for p in t.pieces})
    out = {"import_s": t1 - t0, "load_s": t2 - t1, "plan_s": t3 - t2,
           "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "ranks": len(plan.ranks), "params": len(src.layouts), "tensors": tensors,
           "pieces": pieces, "distinct_pieces": distinct,
           "src_ranks_read": len(plan.needed_source_ranks())}
    print(json.dumps(out), flush=True)


def profile_child(stats_file: str, argv: list[str]) -> int:
    """The command under cProfile (its stats written to stats_file)."""
    import cProfile
    from reshard.console import transform_checkpoint
    sys.argv = ["transform-checkpoint", *argv]
    prof = cProfile.Profile()
    try:
        return prof.runcall(transform_checkpoint)
    finally:
        prof.dump_stats(stats_file)


# -- the parent ----------------------------------------------------------------------------------

def spawn(cmd: list[str], timeout: float, stdout_path: str) -> dict:
    """Run one child (stdout to stdout_path): its wall time, CPU time (user + system) and peak
    RSS (its own rusage, from wait4); an error (exit code and the last line of its stderr, or
    the timeout) instead when it fails; killed after `timeout` seconds."""
    err_path = stdout_path + ".stderr"
    with open(stdout_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                             stdout=out, stderr=err)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                return {"error": f"timeout after {timeout:.0f} s (killed)"}
            time.sleep(0.005)
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(err_path, encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {stderr.strip().splitlines()[-1:]}"}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024}


def folders(n: int, opt_shard: int) -> tuple[str, str, dict]:
    """The size's two strategy folders (written if needed) and their description."""
    (sdp, spp), (ddp, dpp) = SIZES[n]
    src_dir, dst_dir = os.path.join(work(n, opt_shard), "src"), os.path.join(work(n, opt_shard), "dst")
    t0 = time.perf_counter()
    sb = write_strategy_folder(src_dir, sdp, MP, spp, opt_shard)
    db = write_strategy_folder(dst_dir, ddp, MP, dpp, opt_shard)
    return src_dir, dst_dir, {"n": n, "case": f"dp{sdp}·mp{MP}·pp{spp} -> dp{ddp}·mp{MP}·pp{dpp}",
                              "gen_s": time.perf_counter() - t0, "strategy_bytes": sb + db}


def work(n: int, opt_shard: int) -> str:
    """The size's folder under WORK (one per optimizer shard setting)."""
    return os.path.join(WORK, str(n) if opt_shard == -1 else f"{n}-opt_shard{opt_shard}")


def cli_args(src_dir: str, dst_dir: str) -> list[str]:
    return ["--src_strategy", src_dir, "--dst_strategy", dst_dir, "--dry_run"]


def run_api(src_dir: str, dst_dir: str, timeout: float) -> dict:
    out = os.path.join(os.path.dirname(src_dir), "api.json")
    got = spawn([sys.executable, os.path.abspath(__file__), "--api_child", src_dir, dst_dir],
                timeout, out)
    if "error" in got:
        return got
    with open(out, encoding="utf-8") as f:
        got.update(json.loads(f.read().strip().splitlines()[-1]))
    return got


def run_cli(src_dir: str, dst_dir: str, timeout: float) -> dict:
    out = os.path.join(os.path.dirname(src_dir), "dry_run.txt")
    got = spawn([sys.executable, "-c", CLI, *cli_args(src_dir, dst_dir)], timeout, out)
    if "error" not in got:
        with open(out, "rb") as f:
            data = f.read()
        got.update(out_bytes=len(data), out_lines=data.count(b"\n"))
    return got


def _mb(b: float) -> str:
    return f"{b / 1e6:.0f} MB"


def _load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + \
        f" on {os.cpu_count()} cores"


def _growth(rows: list[dict], key: str) -> None:
    """r[key + '_per_rank']: time per rank against REFERENCE's (None without it)."""
    ref = next((r for r in rows if r["n"] == REFERENCE and key in r), None)
    for r in rows:
        r[key + "_per_rank"] = ((r[key] / r["n"]) / (ref[key] / ref["n"])
                                if ref is not None and key in r else None)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help=f"destination rank counts, a subset of {sorted(SIZES)}")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="api (load_strategy + plan_from_strategies), cli (transform-checkpoint "
                         "--dry_run), or both (default)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    ap.add_argument("--opt_shard", type=int, default=-1,
                    help="optimizer shard size (-1: all replicas, 0: no parallel optimizer)")
    ap.add_argument("--profile", type=int, default=None, metavar="SIZE",
                    help="also cProfile transform-checkpoint --dry_run at this size (a separate "
                         "run, not timed)")
    ap.add_argument("--api_child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--profile_child", nargs=3, metavar=("STATS", "SRC", "DST"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.api_child:
        api_child(*args.api_child)
        return 0
    if args.profile_child:
        stats, src_dir, dst_dir = args.profile_child
        return profile_child(stats, cli_args(src_dir, dst_dir))
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"--sizes: {bad} not among {sorted(SIZES)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: {args.modes!r}: a subset of {','.join(MODES)}")
    if args.profile is not None and args.profile not in SIZES:
        ap.error(f"--profile: {args.profile} not among {sorted(SIZES)}")
    print(f"plan_bench: 70B-shaped model ({LAYERS} layers, hidden {HIDDEN}, ffn {FFN}, vocab "
          f"{VOCAB}, adam_m/adam_v for every parameter, opt_shard {args.opt_shard}); strategies "
          f"only, one file per rank; each size and mode in a fresh process (timeout "
          f"{args.timeout:.0f} s); {_load()}", flush=True)
    rows, failed = [], False
    for n in sizes:
        src_dir, dst_dir, r = folders(n, args.opt_shard)
        rows.append(r)
        if "api" in modes:
            got = run_api(src_dir, dst_dir, args.timeout)
            if "error" in got:
                r["api_error"], failed = got["error"], True
            else:
                r.update(api_wall=got["load_s"] + got["plan_s"], api_rss=got["maxrss"],
                         **{k: got[k] for k in ("load_s", "plan_s", "params", "tensors",
                                                "pieces", "distinct_pieces")})
        if "cli" in modes:
            got = run_cli(src_dir, dst_dir, args.timeout)
            if "error" in got:
                r["cli_error"], failed = got["error"], True
            else:
                r.update(cli_wall=got["wall"], cli_cpu=got["cpu"], cli_rss=got["maxrss"],
                         out_bytes=got["out_bytes"], out_lines=got["out_lines"])
        done = ", ".join(f"{m} {r[m + '_wall']:.1f} s" if m + "_wall" in r else
                         f"{m} {r.get(m + '_error')}" for m in modes)
        print(f"  {n}: {r['case']}: {done} ({_load()})", flush=True)
    _growth(rows, "api_wall")
    _growth(rows, "cli_wall")
    _growth(rows, "cli_cpu")
    print()
    if "api" in modes:
        print("api: load_strategy x2 + plan_from_strategies (a fresh process; import excluded)")
        print()
        print("| dst ranks | case | params | tensors / pieces planned (distinct pieces) | "
              f"load_strategy x2 | plan | wall (load+plan) | per rank vs {REFERENCE} | peak RSS |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "api_error" in r:
                print(f"| {r['n']} | {r['case']} | | | | | {r['api_error']} | | |")
            elif "api_wall" in r:
                print(f"| {r['n']} | {r['case']} | {r['params']} | {r['tensors']:,} / "
                      f"{r['pieces']:,} ({r['distinct_pieces']:,}) | {r['load_s']:.2f} s | "
                      f"{r['plan_s']:.2f} s | {r['api_wall']:.2f} s | "
                      f"{_ratio(r['api_wall_per_rank'])} | {_mb(r['api_rss'])} |")
        print()
    if "cli" in modes:
        print("cli: transform-checkpoint --src_strategy SRC --dst_strategy DST --dry_run, from "
              "start to exit (interpreter and imports included), the plan printed to a file")
        print()
        print(f"| dst ranks | case | strategy files read | wall | per rank vs {REFERENCE} | "
              f"CPU (user+sys) | per rank vs {REFERENCE} | peak RSS | plan printed |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            files = f"{2 * r['n']:,} ({_mb(r['strategy_bytes'])})"
            if "cli_error" in r:
                print(f"| {r['n']} | {r['case']} | {files} | {r['cli_error']} | | | | | |")
            elif "cli_wall" in r:
                print(f"| {r['n']} | {r['case']} | {files} | {r['cli_wall']:.2f} s | "
                      f"{_ratio(r['cli_wall_per_rank'])} | {r['cli_cpu']:.2f} s | "
                      f"{_ratio(r['cli_cpu_per_rank'])} | {_mb(r['cli_rss'])} | "
                      f"{r['out_lines']:,} lines, {_mb(r['out_bytes'])} |")
        print()
    goal = next((r for r in rows if r["n"] == GOAL_RANKS), None)
    verdict = "not run"
    if goal is not None and "cli" in modes:
        if "cli_error" in goal:
            verdict = f"NOT MET ({goal['cli_error']})"
        else:
            ok = goal["cli_wall"] < GOAL_SECONDS and goal["cli_rss"] < GOAL_BYTES
            verdict = (f"{'MET' if ok else 'NOT MET'} ({goal['cli_wall']:.2f} s wall, "
                       f"{goal['cli_cpu']:.2f} s CPU, {_mb(goal['cli_rss'])})")
    print(f"goal: transform-checkpoint --dry_run of {GOAL_RANKS} destination ranks in under "
          f"{GOAL_SECONDS:.0f} s and under {GOAL_BYTES >> 30} GB peak RSS: {verdict}; growth "
          f"linear in ranks (time per rank near 1.00x of the {REFERENCE}-rank reference's)")
    print(f"measured with {_load()}")
    if args.profile is not None:
        import pstats
        src_dir, dst_dir, _ = folders(args.profile, args.opt_shard)
        stats = os.path.join(work(args.profile, args.opt_shard), "profile.stats")
        got = spawn([sys.executable, os.path.abspath(__file__), "--profile_child", stats,
                     src_dir, dst_dir], args.timeout,
                    os.path.join(work(args.profile, args.opt_shard), "dry_run.profiled.txt"))
        print(f"\ncProfile of transform-checkpoint --dry_run at {args.profile} ranks:")
        if "error" in got:
            print(got["error"])
            return 1
        for order in ("cumulative", "tottime"):
            pstats.Stats(stats, stream=sys.stdout).sort_stats(order).print_stats(20)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
