"""Streaming engine vs MindSpore's transform_checkpoints on a 2-layer llama-7b-shaped checkpoint.

Builds the checkpoint (vocab 32000, hidden 4096, ffn 11008, mixed fp32/fp16/bf16, about 1.3 GB)
in bench/_work/, then runs complete -> 8 (dp2·mp2·pp2), 8 -> 4 (dp1·mp2·pp2) and 4 -> 1 with
each engine, every run in a fresh subprocess (the CLI, `--engine stream|mindspore`), measuring
wall time and the peak RSS of the process tree by polling. The floor is a plain copy of the
bytes the step produced. Goals: >= 5x faster than MindSpore, <= 1/5 of its peak RSS, within 2x
of the copy floor. Each engine runs --repeat times per step (alternating which goes first) and
keeps its best time and its highest peak RSS. `--engines stream` leaves MindSpore out (a quick
look at this engine against the copy floor; MindSpore also refuses to load the 1.3 GB file when
the machine's free memory, page cache not counted, is below that: the bench gives it
MemAvailable, memory_guard_on_available). Everything written is removed at the end, failed or
interrupted (`--keep` keeps the outputs); the built inputs stay in bench/_work as a cache
(job_bench reads them too).

MindFormers Checkpoint 2.0 cases (`--cases checkpoint2`), same checkpoint; issue 18's goals (>= 10x
MindSpore's nearest equivalent, <= 1.3x the copy floor): complete -> Checkpoint 2.0 for
dp2·mp2·pp2 (destination), that Checkpoint 2.0 -> Checkpoint 2.0 for dp1·mp2·pp2 (source and
destination) and that -> complete safetensors (source). MindSpore has no Checkpoint 2.0
conversion; its nearest equivalents run on the same tensors as safetensors (its inputs are made
by this engine first, untimed, cached in bench/_work): transform_checkpoints (output_format
safetensors, which it writes only from safetensors) for complete -> 8 and 8 -> 4, and
unified_safetensors, its own merge of rank folders into a complete checkpoint (twice as fast as
transform_checkpoints there, same tensors), for 4 -> 1. `10x =` prints what 10x MindSpore would
mean in copy floors (MindSpore's time / 10 / the floor): below 1, no engine that writes the
bytes can reach it on this disk.

Both engines' outputs are made durable before the clock stops: ours fsyncs its files itself,
MindSpore's are fsynced by the bench right after its process ends (timed, included; printed apart
as `ms sync`), as the copy floor fsyncs what it copies. The children run with the repository's
modules compiled to bytecode first (this machine's environment sets PYTHONDONTWRITEBYTECODE, so a
source checkout would compile every module in every run: an installed package does not). Usage:
python bench/reshard_bench.py [--process_num N] [--repeat N] [--engines stream,mindspore]
                              [--cases legacy,checkpoint2] [--scale full|medium|small] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "_work")
sys.path.insert(0, ROOT)


def _params():
    """Mostly 16-bit weights (fp16 and bf16, fp32 norms), as a released 7b checkpoint: 1.3 GB."""
    from tests import synth
    return synth.llama_params(num_layers=2, vocab=32000, hidden=4096, ffn=11008, seed=0,
                              dtypes=("float16", "bfloat16"), optimizer=False)


# hidden / ffn of the 2-layer llama-7b-shaped checkpoint: full 1.33 GB, medium 0.31 GB, small 0.18 GB
SCALES = {"full": {"hidden": 4096, "ffn": 11008}, "medium": {"hidden": 1536, "ffn": 4128},
          "small": {"hidden": 1024, "ffn": 2752}}


def build_scaled(scale: str) -> dict:
    """The checkpoint and both strategies at `scale`: build(WORK) at full size (built once,
    shared), the same model with smaller hidden/ffn in WORK/job_bench_<scale> otherwise."""
    if scale == "full":
        return build(WORK)
    from tests import synth
    work = os.path.join(WORK, f"job_bench_{scale}")
    paths = {"full": os.path.join(work, "llama7b_2layer", "llama_7b.ckpt"),
             "s8": os.path.join(work, "strategy8"), "s4": os.path.join(work, "strategy4")}
    if not all(os.path.exists(p) for p in paths.values()):
        params = synth.llama_params(num_layers=2, vocab=32000, seed=0, dtypes=("float16", "bfloat16"),
                                    optimizer=False, **SCALES[scale])
        synth.write_complete_checkpoint(paths["full"], params)
        synth.write_strategy(paths["s8"], dp=2, mp=2, pp=2, params=params)
        synth.write_strategy(paths["s4"], dp=1, mp=2, pp=2, params=params)
    return paths


def build(work: str) -> dict:
    from tests import synth
    full = os.path.join(work, "llama7b_2layer", "llama_7b.ckpt")
    paths = {"full": full, "s8": os.path.join(work, "strategy8"),
             "s4": os.path.join(work, "strategy4")}
    params = None
    if not os.path.exists(full):
        params = _params()
        synth.write_complete_checkpoint(full, params)
    layouts = {"s8": dict(dp=2, mp=2, pp=2), "s4": dict(dp=1, mp=2, pp=2)}
    for key, layout in layouts.items():
        if not os.path.isdir(paths[key]):
            params = params or _params()
            synth.write_strategy(paths[key], params=params, **layout)
    return paths


def memory_guard_on_available() -> None:
    """MindSpore (2.10) refuses to load a .ckpt larger than the free memory, which it reads as
    MemFree (os.sysconf SC_AVPHYS_PAGES): on this machine, with tmpfs folders and the page cache
    holding most of the RAM, MemFree can be a few hundred MB while GBs are available, and the
    full-size checkpoint was refused before anything was converted. The guard is given
    MemAvailable (what the kernel can hand out without swapping), as on a node whose memory is
    not taken by cache; the conversion itself is untouched. Should memory then run out, this
    process (MindSpore holds the whole checkpoint and more) is the one the kernel ends, not a
    neighbour's."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    from mindspore.train import serialization
    if hasattr(serialization, "_get_available_memory"):
        serialization._get_available_memory = lambda: psutil.virtual_memory().available


def measure(cmd: list[str], limit: float = 1800.0) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) summed over the process tree, polled every 20 ms.
    Dirty pages of the previous run are flushed first, so no run pays for another's writes.
    stderr goes to a file (a pipe nobody reads would block a chatty child); `limit` bounds it."""
    os.sync()
    with tempfile.TemporaryFile() as errors:
        t0 = time.monotonic()
        proc = psutil.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=subprocess.DEVNULL, stderr=errors)
        peak, procs = 0, [proc]
        try:
            while proc.poll() is None:
                try:
                    procs = [proc] + proc.children(recursive=True)
                except psutil.NoSuchProcess:
                    procs = []
                if time.monotonic() - t0 > limit:
                    raise SystemExit(f"killed after {limit:.0f}s: {' '.join(cmd)}")
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak = max(peak, rss)
                time.sleep(0.02)
        except BaseException:   # over the limit, or interrupted: no child outlives the bench
            for p in reversed(procs):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            raise
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"failed: {' '.join(cmd)}\n"
                             f"{errors.read().decode(errors='replace')[-2000:]}")
    return wall, peak


def copy_floor(produced: str, scratch: str) -> float:
    """Seconds to plainly copy the bytes a step produced (read + write, fsync like the writer);
    a file that is another name of one copied already (the engine hard-links data-parallel
    replicas) is linked, as `cp -a` does: the floor writes the distinct bytes once too."""
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.monotonic()
    copied: dict[tuple[int, int], str] = {}
    for dirpath, _, files in os.walk(produced):
        if ".reshard" in dirpath:
            continue
        rel = os.path.relpath(dirpath, produced)
        os.makedirs(os.path.join(scratch, rel), exist_ok=True)
        for f in files:
            src, dst = os.path.join(dirpath, f), os.path.join(scratch, rel, f)
            st = os.stat(src)
            if (st.st_dev, st.st_ino) in copied:
                os.link(copied[st.st_dev, st.st_ino], dst)
                continue
            shutil.copyfile(src, dst)
            copied[st.st_dev, st.st_ino] = dst
            with open(dst, "rb+") as fh:
                os.fsync(fh.fileno())
    secs = time.monotonic() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return secs


def fsync_tree(root: str) -> float:
    """Seconds to fsync every file and folder below root: what makes an output durable. Ours is
    when its process ends (this then costs next to nothing); MindSpore leaves its output in the
    page cache, for the kernel to write back later."""
    t0 = time.monotonic()
    for dirpath, _, files in os.walk(root):
        for path in [os.path.join(dirpath, f) for f in files] + [dirpath]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.monotonic() - t0


def compile_sources() -> None:
    """Bytecode for the repository's packages (into their __pycache__, ignored by git), as an
    installed package has it: this machine's environment sets PYTHONDONTWRITEBYTECODE, so every
    child run from the source checkout would compile each module again (about 0.1 s here), a
    cost no installed run pays."""
    import compileall
    for package in ("reshard", "obs_io"):
        compileall.compile_dir(os.path.join(ROOT, package), quiet=1)


def unified(src_dir: str, strategy: str, dst_dir: str, process_num: int) -> None:
    """MindSpore's unified_safetensors (its merge of safetensors rank folders into a complete
    checkpoint: part<k>.safetensors, param_name_map.json, hyper_param.safetensors), the strategy
    folder merged into the one file it takes first (as _run_mindspore does for
    transform_checkpoints)."""
    import mindspore as ms
    from reshard.api import write_merged_strategy
    with tempfile.TemporaryDirectory() as tmp:
        merged = os.path.join(tmp, "strategy.ckpt")
        write_merged_strategy(strategy, merged)
        ms.parallel.unified_safetensors(src_dir, merged, dst_dir, max_process_num=process_num)


def cli(engine, src, dst, src_s, dst_s, process_num, extra=()):
    """transform-checkpoint as the user runs it (`python -m reshard`); MindSpore's engine through
    this file's `_mindspore` child, which gives MindSpore's memory guard MemAvailable first."""
    head = [sys.executable, "-m", "reshard"] if engine == "stream" else [sys.executable, __file__, "_mindspore"]
    cmd = head + ["--engine", engine, "--src_checkpoint", src,
                  "--dst_checkpoint", dst, "--process_num", str(process_num), *extra]
    if src_s:
        cmd += ["--src_strategy", src_s]
    if dst_s:
        cmd += ["--dst_strategy", dst_s]
    return cmd


def main() -> None:
    if sys.argv[1:2] == ["_mindspore"]:
        memory_guard_on_available()
        from reshard.cli import main as transform_checkpoint
        sys.exit(transform_checkpoint(sys.argv[2:]))
    if sys.argv[1:2] == ["_unified"]:
        memory_guard_on_available()
        unified(*sys.argv[2:5], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--process_num", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the outputs in bench/_work")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each engine per step, alternating which goes first; the best "
                         "time of each is kept (this VM's disk throughput varies run to run)")
    ap.add_argument("--engines", default="stream,mindspore",
                    help="comma-separated: stream, mindspore (default both)")
    ap.add_argument("--cases", default="legacy,checkpoint2",
                    help="comma-separated: legacy (.ckpt rank folders), checkpoint2 (MindFormers' "
                         "Checkpoint 2.0 against MindSpore on safetensors rank folders)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full",
                    help="checkpoint size: full 1.33 GB, medium 0.31 GB, small 0.18 GB")
    args = ap.parse_args()
    engines = tuple(e for e in ("stream", "mindspore") if e in args.engines.split(","))
    if "stream" not in engines:
        ap.error("--engines must include stream (the copy floor copies its output)")
    os.makedirs(WORK, exist_ok=True)
    compile_sources()
    p = build_scaled(args.scale)
    size = os.path.getsize(p["full"])
    print(f"checkpoint: {p['full']} ({size / 1e9:.2f} GB), process_num={args.process_num}")
    out = {e: os.path.join(WORK, f"out_{e}") for e in ("stream", "mindspore")}
    scratch = os.path.join(WORK, "copy_scratch")
    cases = args.cases.split(",")
    try:
        if "legacy" in cases:
            report(run_steps(args, engines, p, out, scratch), engines, LEGACY_GOALS)
        if "checkpoint2" in cases:
            report(run_checkpoint2_steps(args, engines, p, out, scratch), engines, CHECKPOINT2_GOALS)
    finally:   # nothing of this run stays behind, failed or not (the inputs are a cache)
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            for d in out.values():
                shutil.rmtree(d, ignore_errors=True)


def run_steps(args, engines, p, out, scratch) -> list:
    for d in out.values():
        shutil.rmtree(d, ignore_errors=True)

    def step(src, src_s, dst_s):
        return lambda e, dst: cli(e, src(e), dst, src_s, dst_s, args.process_num)
    steps = [("complete -> 8", step(lambda e: p["full"], None, p["s8"]), "8"),
             ("8 -> 4", step(lambda e: os.path.join(out[e], "8"), p["s8"], p["s4"]), "4"),
             ("4 -> 1", step(lambda e: os.path.join(out[e], "4"), p["s4"], None), "1")]
    return measure_steps(args, engines, out, scratch, steps)


def safetensors_inputs(p: dict) -> dict:
    """MindSpore's inputs for the Checkpoint 2.0 cases: the same tensors as safetensors, complete
    and rank folders for 8 and 4 ranks (MindSpore writes safetensors only from safetensors; this
    engine's conversion, untimed; cached in bench/_work)."""
    here = os.path.dirname(os.path.dirname(p["full"]))
    made = {t: os.path.join(here, f"safetensors{t}") for t in ("1", "8", "4")}
    for tag, strategy in (("1", None), ("8", p["s8"]), ("4", p["s4"])):
        if not os.path.isdir(made[tag]):
            subprocess.run(cli("stream", p["full"], made[tag] + ".tmp", None, strategy, 2,
                               ["--format", "safetensors"]), cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL)
            os.replace(made[tag] + ".tmp", made[tag])
    return made


def run_checkpoint2_steps(args, engines, p, out, scratch) -> list:
    """Checkpoint 2.0 as destination, source and both, against MindSpore on safetensors."""
    for d in out.values():
        shutil.rmtree(d, ignore_errors=True)
    st = safetensors_inputs(p) if "mindspore" in engines else {}
    to_ck2 = ["--format", "checkpoint2", "--iteration", "1000"]
    to_st = ["--format", "safetensors"]
    n = args.process_num

    def step(ours, transform):
        """ours: (source, destination strategy, extra flags); MindSpore's transform_checkpoints:
        (source, source strategy, destination strategy)."""
        return lambda e, dst: (cli(e, ours[0], dst, None, ours[1], n, ours[2]) if e == "stream"
                               else cli(e, transform[0], dst, transform[1], transform[2], n, to_st))

    def merge(e, dst):
        """4 -> 1: ours to complete safetensors; MindSpore's unified_safetensors."""
        if e == "stream":
            return cli(e, os.path.join(out[e], "c4"), dst, None, None, n, to_st)
        return [sys.executable, __file__, "_unified", st["4"], p["s4"], dst, str(n)]
    steps = [("complete -> ck2 8", step((p["full"], p["s8"], to_ck2), (st.get("1"), None, p["s8"])), "c8"),
             ("ck2 8 -> ck2 4", step((os.path.join(out["stream"], "c8"), p["s4"], to_ck2),
                                     (st.get("8"), p["s8"], p["s4"])), "c4"),
             ("ck2 4 -> 1", merge, "c1")]
    return measure_steps(args, engines, out, scratch, steps, chained=False)


def measure_steps(args, engines, out, scratch, steps, chained: bool = True) -> list:
    """Each step (title, command(engine, destination) -> argv, output tag) with each engine
    (--repeat times, alternating which goes first), the output then fsynced (timed: fsync_tree),
    and the copy floor of this engine's output; rows of (title, best stream (s, RSS),
    MindSpore's (s, RSS, of which fsync s), floor). chained: MindSpore's step reads its previous
    output (else it is removed once measured: the full-size Checkpoint 2.0 cases then fit in
    about 5 GB of free disk instead of 9)."""
    rows = []
    for title, command, tag in steps:
        runs: dict[str, list[tuple[float, int, float]]] = {e: [] for e in engines}
        floors = []
        for rep in range(args.repeat):
            for engine in engines[::1 if rep % 2 == 0 else -1]:
                dst = os.path.join(out[engine], tag)
                shutil.rmtree(dst, ignore_errors=True)
                wall, rss = measure(command(engine, dst))
                sync = fsync_tree(dst)
                runs[engine].append((wall + sync, rss, sync))
                if engine != "stream" and not chained:   # no later step reads it: free its disk now
                    shutil.rmtree(dst, ignore_errors=True)
            floors.append(copy_floor(os.path.join(out["stream"], tag), scratch))
        times = [f"{e} {[round(t, 2) for t, _, _ in runs[e]]} s (fsync {[round(s, 2) for _, _, s in runs[e]]})"
                 for e in engines]
        print(f"{title}: {', '.join(times)}, copy {[round(f, 2) for f in floors]} s", flush=True)
        # per engine: (best time, the fsync of that run, highest peak RSS)
        best = {e: (*min((t, s) for t, _, s in r), max(m for _, m, _ in r)) for e, r in runs.items()}
        rows.append((title, (best["stream"][0], best["stream"][2]), best.get("mindspore"), min(floors)))
    return rows


# (speed-up over MindSpore at least, its peak RSS over ours at least, copy floors at most)
LEGACY_GOALS = (5.0, 5.0, 2.0)
CHECKPOINT2_GOALS = (10.0, 5.0, 1.3)   # issue 18


def report(rows, engines, goals) -> None:
    """The table of rows (title, ours (s, peak RSS), MindSpore's (s, of which its output's fsync
    s, peak RSS) or None, copy floor s) and whether `goals` are met. `10x =`: MindSpore's time
    / 10 in copy floors, what a 10x speed-up needs (below 1x: faster than copying the bytes)."""
    speedup, rss_ratio, floors = goals
    print(f"{'step':<18}{'stream s':>9}{'ms s':>8}{'ms sync':>8}{'speedup':>9}{'stream RSS':>12}"
          f"{'ms RSS':>9}{'RSS ratio':>10}{'copy s':>8}{'vs copy':>9}{'10x =':>8}")
    for title, (ts, rs), ms, floor in rows:
        vs_ms = (f"{ms[0]:>8.2f}{ms[1]:>8.2f}{ms[0] / ts:>8.1f}x" if ms else f"{'-':>8}{'-':>8}{'-':>9}")
        ms_rss = (f"{ms[2] / 2**20:>8.0f}M{ms[2] / rs:>9.1f}x" if ms else f"{'-':>9}{'-':>10}")
        ten = f"{ms[0] / 10 / floor:>7.2f}x" if ms else f"{'-':>8}"
        print(f"{title:<18}{ts:>9.2f}{vs_ms}{rs / 2**20:>10.0f}M{ms_rss}{floor:>8.2f}"
              f"{ts / floor:>8.2f}x{ten}")
    ok = all((ms is None or (ms[0] / ts >= speedup and ms[2] / rs >= rss_ratio)) and ts / floor <= floors
             for _, (ts, rs), ms, floor in rows)
    print(f"goals (>={speedup:g}x faster, <=1/{rss_ratio:g} RSS, <={floors:g}x copy floor):",
          "met" if ok else "MISSED", "" if "mindspore" in engines else "(MindSpore not run)")


if __name__ == "__main__":
    main()
