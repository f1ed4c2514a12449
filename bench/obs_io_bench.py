"""obs_io transfer speed against a plain boto3 loop, on the same S3 server, in the same run.

    PYTHONPATH=. .venv/bin/python bench/obs_io_bench.py [--folder-mib 1024] [--big-mib 512]
                                                        [--servers moto,s3rver]
                                                        [--placement split,shared]

Reference: a loop of boto3 `upload_file` / `download_file` with boto3's defaults (one file after
another, each with boto3's own multipart settings). Measured: mox.file.copy_parallel on a folder
of many small and some large files, and mox.file.copy of one big file, both directions. Goals:
>= 2x on folders, never slower on one big file.

Each server gets the same cases, both sides against the same server process:
- moto (server mode, the tests' server): Python, GIL-bound, sharing the cores with the client.
  Its every GET, ranged or not, reads the whole object under a per-object lock, so a big file's
  ranged download is bounded by the server whatever the client does.
- s3rver (npm, Node): objects as files, ranges read as ranges; installed on first use with npm
  into bench/_work/node (skipped with a note when npm is not there); see bench/s3servers.py.
Neither is OBS, and both run on the client's machine. Two placements, for every server:
- split: the server pinned to half of the CPUs, the bench (reference and ours alike) to the
  other half, as a server on its own machine would be. On this 2-core VM that is one core each.
- shared: nobody pinned; the server's threads and the client's compete for the same cores.
For each case the bench also prints the server's CPU seconds during our run: where the server
does its work on one thread (moto under its GIL, s3rver on Node's loop), wall time can never go
below that, so `ceiling` = reference wall / our run's server CPU bounds the speed-up any client
could show against that server.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import s3servers  # noqa: E402

MiB = 1024 * 1024


def make_folder(root: Path, total_mib: int, seed: int = 0) -> tuple[int, int]:
    """~70% of the bytes in 8 large files, the rest in many 16-256 KiB files (rank shards,
    strategy files, small tensors); returns (files, bytes)."""
    rng = random.Random(seed)
    block = rng.randbytes(4 * MiB)  # random-looking, cheap to produce
    total = total_mib * MiB
    large_each = int(total * 0.7) // 8
    files = nbytes = 0
    for i in range(8):
        path = root / f"rank_{i}" / "model.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = large_each
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        files, nbytes = files + 1, nbytes + large_each
    i = 0
    while nbytes < total:
        size = rng.randint(16 * 1024, 256 * 1024)
        path = root / f"part_{i % 16:02d}" / f"t{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        off = rng.randint(0, len(block) - size)
        path.write_bytes(block[off:off + size])
        files, nbytes, i = files + 1, nbytes + size, i + 1
    return files, nbytes


@dataclass
class Run:
    wall: float        # seconds
    server_cpu: float  # CPU seconds the server process spent meanwhile


def server_processes(server) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def server_cpu(server) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in server_processes(server)))


def place(server, placement: str) -> None:
    """split: the server on the upper half of the CPUs, this process (and every thread it starts
    from now on) on the lower half; shared: everyone everywhere."""
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    mine, theirs = (cpus[:len(cpus) // 2], cpus[len(cpus) // 2:]) if placement == "split" else (cpus, cpus)
    for proc in server_processes(server):
        proc.cpu_affinity(theirs)
    os.sched_setaffinity(0, mine)


def run_cases(server, args) -> list[tuple[str, int, Run, Run]]:
    """Every case against one server: (name, bytes, reference run, obs_io run)."""

    def timed(fn) -> Run:
        cpu0, start = server_cpu(server), time.perf_counter()
        fn()
        return Run(time.perf_counter() - start, server_cpu(server) - cpu0)

    os.environ.update(server.env())
    import obs_io as mox  # reads its settings from the environment on every call

    work = Path(tempfile.mkdtemp(prefix="obs_io_bench_"))
    client = server.client()  # plain boto3, default settings: the reference
    bucket = "bench"
    client.create_bucket(Bucket=bucket)
    rows = []
    try:
        src = work / "src"
        nfiles, nbytes = make_folder(src, args.folder_mib)
        rels = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
        print(f"folder: {nfiles} files, {nbytes / MiB:.0f} MiB; big file: {args.big_mib} MiB; "
              f"cpus: {os.cpu_count()}", flush=True)

        def loop_up():
            for rel in rels:
                client.upload_file(str(src / rel), bucket, f"ref/{rel}")

        def loop_down():
            for rel in rels:
                dst = work / "ref_down" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, f"ref/{rel}", str(dst))

        print("measuring folders (one run each) ...", flush=True)
        rows.append(("folder upload", nbytes, timed(loop_up),
                     timed(lambda: mox.file.copy_parallel(str(src), f"obs://{bucket}/ours",
                                                          threads=args.threads))))
        rows.append(("folder download", nbytes, timed(loop_down),
                     timed(lambda: mox.file.copy_parallel(f"obs://{bucket}/ours", str(work / "ours_down"),
                                                          threads=args.threads))))
        assert sorted(str(p.relative_to(work / "ours_down")) for p in (work / "ours_down").rglob("*")
                      if p.is_file()) == rels
        mox.file.remove(f"obs://{bucket}/ref", recursive=True)
        mox.file.remove(f"obs://{bucket}/ours", recursive=True)
        shutil.rmtree(src)
        shutil.rmtree(work / "ref_down")
        shutil.rmtree(work / "ours_down")

        big = work / "big.bin"
        make_big = random.Random(1).randbytes(4 * MiB)
        with open(big, "wb") as f:
            for _ in range(args.big_mib // 4):
                f.write(make_big)
        size = big.stat().st_size

        # One big file is a few seconds each way, so it is measured twice in alternating order
        # and the best time of each side kept: other load on a shared machine otherwise decides.
        def best_of_two(ref, ours) -> tuple[Run, Run]:
            r1, o1 = timed(ref), timed(ours)
            o2, r2 = timed(ours), timed(ref)
            return min(r1, r2, key=lambda r: r.wall), min(o1, o2, key=lambda r: r.wall)

        print("measuring one big file (best of two each) ...", flush=True)
        rows.append(("big file upload", size, *best_of_two(
            lambda: client.upload_file(str(big), bucket, "ref_big.bin"),
            lambda: mox.file.copy(str(big), f"obs://{bucket}/ours_big.bin"))))
        rows.append(("big file download", size, *best_of_two(
            lambda: client.download_file(bucket, "ref_big.bin", str(work / "ref_big.bin")),
            lambda: mox.file.copy(f"obs://{bucket}/ours_big.bin", str(work / "ours_big.bin")))))
        assert (work / "ours_big.bin").stat().st_size == size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder-mib", type=int, default=1024)
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--servers", default="moto,s3rver", help="comma-separated: moto, s3rver")
    ap.add_argument("--placement", default="split,shared", help="comma-separated: split, shared")
    args = ap.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    placements = [n.strip() for n in args.placement.split(",") if n.strip()]
    for flag, given, known in (("--servers", names, {"moto", "s3rver"}), ("--placement", placements, {"split", "shared"})):
        unknown = set(given) - known
        if unknown or not given:
            ap.error(f"{flag}: unknown or no value(s) {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(sorted(known))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill

    results = {}
    for placement in placements:
        for name in names:
            server = s3servers.start(name)
            if server is None:
                continue
            print(f"== {name} ({server.endpoint}), placement {placement}", flush=True)
            try:
                place(server, placement)
                results[(name, placement)] = run_cases(server, args)
            finally:
                server.stop()

    print(f"\n{'server':<8}{'placement':<10}{'case':<19}{'MiB':>6}{'boto3 loop s':>13}{'obs_io s':>9}"
          f"{'loop MiB/s':>11}{'obs_io MiB/s':>13}{'speed-up':>9}{'server CPU s':>13}{'ceiling':>8}")
    for (name, placement), rows in results.items():
        for case, n, ref, ours in rows:
            print(f"{name:<8}{placement:<10}{case:<19}{n / MiB:>6.0f}{ref.wall:>13.2f}{ours.wall:>9.2f}"
                  f"{n / MiB / ref.wall:>11.1f}{n / MiB / ours.wall:>13.1f}{ref.wall / ours.wall:>8.2f}x"
                  f"{ours.server_cpu:>13.2f}{ref.wall / ours.server_cpu:>7.2f}x")
    print("\ngoal: >= 2x on folders, >= 1x on the big file. server CPU s: the server's CPU time during "
          "our run; ceiling: reference wall / that, the most any client could gain against a server "
          f"that works on one thread. {os.cpu_count()} CPUs; neither server is OBS.")


if __name__ == "__main__":
    main()
