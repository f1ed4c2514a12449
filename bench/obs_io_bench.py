"""obs_io transfer speed against a plain boto3 loop, on the same moto server, in the same run.

    PYTHONPATH=. .venv/bin/python bench/obs_io_bench.py [--folder-mib 1024] [--big-mib 512]

Reference: a loop of boto3 `upload_file` / `download_file` (one file after another, each with
boto3's own multipart defaults). Measured: mox.file.copy_parallel on a folder of many small and
some large files, and mox.file.copy of one big file, both directions. Goals: >= 2x on folders,
never slower on one big file. moto is a Python server: on a small machine it, not the network,
is the bottleneck, so the ratios here understate what a real OBS endpoint gives.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import s3server  # noqa: E402

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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder-mib", type=int, default=1024)
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill

    server = s3server.start()
    os.environ.update(server.env())
    import obs_io as mox  # after the environment points at the server

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
        def best_of_two(ref, ours) -> tuple[float, float]:
            r1, o1 = timed(ref), timed(ours)
            o2, r2 = timed(ours), timed(ref)
            return min(r1, r2), min(o1, o2)

        rows.append(("big file upload", size, *best_of_two(
            lambda: client.upload_file(str(big), bucket, "ref_big.bin"),
            lambda: mox.file.copy(str(big), f"obs://{bucket}/ours_big.bin"))))
        rows.append(("big file download", size, *best_of_two(
            lambda: client.download_file(bucket, "ref_big.bin", str(work / "ref_big.bin")),
            lambda: mox.file.copy(f"obs://{bucket}/ours_big.bin", str(work / "ours_big.bin")))))
        assert (work / "ours_big.bin").stat().st_size == size
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()

    print(f"\n{'case':<20}{'MiB':>8}{'boto3 loop s':>14}{'obs_io s':>10}{'loop MiB/s':>12}"
          f"{'obs_io MiB/s':>14}{'speed-up':>10}")
    for name, n, ref, ours in rows:
        print(f"{name:<20}{n / MiB:>8.0f}{ref:>14.2f}{ours:>10.2f}{n / MiB / ref:>12.1f}"
              f"{n / MiB / ours:>14.1f}{ref / ours:>9.2f}x")
    print("\ngoal: >= 2x on folders, >= 1x on the big file. moto is CPU-bound Python "
          f"sharing {os.cpu_count()} cores with the client; ratios are a floor, not OBS figures.")


if __name__ == "__main__":
    main()
