"""The whole job at the speed of the network: cloud-entry against its link floor and MindFormers' path.

    python bench/job_bench.py [--scale full|medium|small] [--down-mbps 100] [--up-mbps 100] [--latency-ms 5]
                              [--variants current,no-overlap,mindformers,floor] [--cases 1,2,3]
                              [--no-rerun] [--server-check-mib 128] [--server moto|s3rver]

The 2-layer llama-7b case (bench/reshard_bench.py's model: vocab 32000, hidden 4096, ffn 11008,
1.33 GB, fp16/bf16 with fp32 norms; `--scale medium`: hidden 1536, ffn 4128, 0.31 GB; `--scale small`:
hidden 1024, ffn 2752, 0.18 GB) as three jobs:
1. complete -> 8 ranks dp2·mp2·pp2, transform_process_num 2, one node of 8 cards;
2. those 8 -> 4 ranks dp1·mp2·pp2, transform_process_num 2, one node of 4 cards;
3. those 4 -> 1 (use_parallel False, predict), one node of 1 card.
Each job is `python -m cloud_entry` started as the platform starts it (tests/platform_harness.py:
the form's hyperparameters appended, MA_*/VC_* environment, its own local folder), with
`--transform_only=True`, its S3_ENDPOINT pointing at a link-shaping proxy (bench/linkproxy.py:
a bandwidth cap per direction shared by all connections, a latency per request) in front of the
local S3 server. The proxy stands in for the node's link to OBS so that neither the local
server's CPU nor this machine's disk is what is measured: local folders are on tmpfs (/dev/shm),
and the server's own rate is measured first; the cap is lowered, with a note, when the server
cannot sustain it.

The server (`--server`, bench/s3servers.py): s3rver by default (Node, objects as files on the
same tmpfs, a ranged GET reads its range; installed with npm into bench/_work/node on first use,
and run with the S3 calls it lacks filled in: bench/s3rver_main.js), else moto with a note.
moto (tests/s3server.py) answers every GET, ranged or not, by reading the whole object under a
per-object lock; the job reads source objects in place by ranged GETs and s3transfer downloads
big objects in ranged parts, so against moto the full size takes 30-40 min here and measures
moto. s3rver ignores If-Match (no object changes during a run, so every pinned GET would match
anyway) and answers `Range: bytes=0-0` with the whole object (the job never asks for it).

Per case, each in a fresh process and a fresh local folder:
- current: the job as the code stands;
- no-overlap: the same with `--overlap=False`, when `cloud-entry --help` lists that flag;
- mindformers: MindFormers' path, a plain boto3 download loop of the whole source (one GET per
  object, as first written for moto, which answers every ranged GET by reading the whole object
  and so would penalise boto3's ranged download_file for the server's sake, not the link's; kept
  for every server so that figures stay comparable), mindspore.transform_checkpoints,
  a plain boto3 upload loop (upload_file, boto3's defaults);
- floor: through the same proxy, a boto3 download of exactly the source objects the job needs
  (all at once, one GET each) and, separately, an upload of exactly the files the job produced
  (all at once, upload_file); the link floor is max(down, up).
Measured from outside: wall time, peak RSS of the process tree (sampled every 50 ms), peak local
disk (allocated bytes under the job's folder, walked every 100 ms), body bytes each way and
requests by operation at the proxy. Case 1 then runs twice more with the same inputs and
remote_save_url: on the same node (its local folder kept), then on a fresh node (an empty local
folder, as the platform may rerun a job); printed: bytes and requests at the proxy, split into the
source and the job's own remote_save_url. Goals: within 1.3x of the floor (max(down, up)); where
data-parallel replicas are the same bytes, within 1.2x of the download alone plus the upload of
the distinct files alone; >= 3x faster than MindFormers' path; peak disk <= output + one source
file; a rerun on the same node moves 0 checkpoint bytes (a fresh node must still download its
converted ranks for the training command: reported, not a goal).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from bench import s3servers  # noqa: E402
from bench.reshard_bench import SCALES  # noqa: E402
from bench.linkproxy import MB, LinkProxy, Totals  # noqa: E402
from demo_support import PeakRSS, Sampler, settled  # noqa: E402

BUCKET = "jobbench"
NAME = "llama_7b"
MiB = 1 << 20


# ------------------------------------------------------------------ inputs

def build(scale: str) -> dict[str, str]:
    """The checkpoint and both strategies (reshard_bench.build_scaled)."""
    from bench import reshard_bench
    return reshard_bench.build_scaled(scale)


def s3_client(endpoint: str | None = None):
    """boto3 on the environment the job gets (S3_ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY)."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint or os.environ["S3_ENDPOINT"],
                        aws_access_key_id=os.environ["ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["SECRET_ACCESS_KEY"], region_name="us-east-1",
                        config=Config(max_pool_connections=32))


def split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def list_objects(s3, url: str) -> list[tuple[str, int]]:
    """(key, size) of the object at url, or of every object under url/."""
    bucket, key = split(url)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])
                if o["Key"] == key or o["Key"].startswith(key.rstrip("/") + "/")]
    return out


def delete_prefix(s3, url: str) -> None:
    """Free the server's memory and disk from a variant's outputs once they are measured."""
    bucket, _ = split(url)
    keys = [k for k, _ in list_objects(s3, url)]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


# ------------------------------------------------------------------ transfers (child processes)

def get_object(s3, bucket: str, key: str, dst: str) -> int:
    """One GET, streamed to dst: a plain download that asks the server for each byte once."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    n = 0
    with open(dst, "wb") as f:
        for chunk in iter(lambda: body.read(MiB), b""):
            f.write(chunk)
            n += len(chunk)
    return n


def download_all(s3, objects: list[tuple[str, str, str]], parallel: int) -> int:
    """(bucket, key, local) each with one GET, `parallel` at a time; bytes read."""
    with ThreadPoolExecutor(parallel) as pool:
        return sum(pool.map(lambda o: get_object(s3, *o), objects))


def upload_all(s3, files: list[tuple[str, str, str]], parallel: int) -> None:
    """(local, bucket, key) with boto3's upload_file and its defaults, `parallel` files at a time."""
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda f: s3.upload_file(*f), files))


def local_files(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())


def child_floor(argv: list[str]) -> int:
    """`_floor down DIR URL...` or `_floor up URL FILE...` (relative to the common folder)."""
    s3 = client_or_die()
    if argv[0] == "down":
        target, urls = argv[1], argv[2:]
        download_all(s3, [(*split(u), os.path.join(target, split(u)[1])) for u in urls], len(urls))
    else:
        url, base, files = argv[1], argv[2], argv[3:]
        bucket, key = split(url)
        upload_all(s3, [(f, bucket, f"{key}/{os.path.relpath(f, base)}") for f in files], len(files))
    return 0


def child_mindformers(argv: list[str]) -> int:
    """`_mindformers SRC SRC_STRATEGY|- DST_STRATEGY|- OUT_URL LOCAL`: MindFormers' path on a node
    without a shared disk: download everything, transform_checkpoints, upload everything."""
    import synth
    src, src_s, dst_s, out_url, local = argv
    s3 = client_or_die()
    objs = list_objects(s3, src)
    bucket, prefix = split(src)
    single = len(objs) == 1 and objs[0][0] == prefix
    src_local = os.path.join(local, "src", NAME if not single else os.path.basename(prefix))
    for key, _ in objs:   # the download loop, one object after another
        get_object(s3, bucket, key, src_local if single else os.path.join(src_local, key[len(prefix):].lstrip("/")))
    strategies = {}
    for tag, url in (("src_strategy", src_s), ("dst_strategy", dst_s)):
        if url == "-":
            strategies[tag] = None
            continue
        b, p = split(url)
        keys = list_objects(s3, url)
        for key, _ in keys:
            get_object(s3, b, key, os.path.join(local, tag, key[len(p):].lstrip("/") or os.path.basename(key)))
        only = len(keys) == 1 and keys[0][0] == p
        strategies[tag] = os.path.join(local, tag, os.path.basename(p)) if only else os.path.join(local, tag)
    out = os.path.join(local, "out", NAME)
    from bench.reshard_bench import memory_guard_on_available
    memory_guard_on_available()
    synth.ms_transform(src_local, out, strategies["src_strategy"], strategies["dst_strategy"])
    b, p = split(out_url)
    for f in local_files(out):   # the upload loop, one file after another
        s3.upload_file(f, b, f"{p}/{os.path.relpath(f, out)}")
    return 0


def client_or_die():
    try:
        return s3_client()
    except KeyError as exc:
        raise SystemExit(f"job_bench: {exc.args[0]} is not set") from None


# ------------------------------------------------------------------ measuring

class DiskPeak(Sampler):
    """Peak allocated bytes under a folder, walked every `interval` s in a thread. Allocated
    (st_blocks), not apparent sizes: what the node's disk holds; a file being written counts,
    a file with several names (hard links) once."""

    def __init__(self, folder: Path, interval: float = 0.1):
        super().__init__(interval)
        self.folder, self.peak = folder, 0

    def sample(self) -> None:
        seen: dict[tuple[int, int], int] = {}
        for dirpath, _, files in os.walk(self.folder):
            for f in files:
                try:
                    st = os.lstat(os.path.join(dirpath, f))
                except OSError:
                    continue
                seen[st.st_dev, st.st_ino] = st.st_blocks * 512
        self.peak = max(self.peak, sum(seen.values()))


@dataclass
class Run:
    """One measured run through the proxy."""
    seconds: float
    peak_rss: int
    peak_disk: int
    link: Totals
    ok: bool = True
    note: str = ""
    records: list = field(default_factory=list)   # linkproxy.Record of every request

    def checkpoint_bytes(self) -> int:
        """Bytes of checkpoint objects (.ckpt, .safetensors) either way; markers, manifests and
        logs aside."""
        return sum(r.down_bytes + r.up_bytes for r in self.records
                   if urlsplit(r.path).path.endswith((".ckpt", ".safetensors")))

    def moved(self, prefix: str) -> tuple[int, int, int]:
        """(bytes read, bytes written, requests) of object bodies under s3://<prefix>."""
        _, key = split(prefix)
        mine = [r for r in self.records if unquote(urlsplit(r.path).path).lstrip("/").partition("/")[2]
                .startswith(key)]
        return sum(r.down_bytes for r in mine), sum(r.up_bytes for r in mine), len(mine)


def measure(cmd: list[str], cwd: Path, env: dict[str, str], proxy: LinkProxy, timeout: float = 3600) -> Run:
    """A child process (tree) through the proxy: wall time, peak RSS, peak disk under cwd, link."""
    import psutil
    cwd.mkdir(parents=True, exist_ok=True)
    proxy.reset()
    out = cwd.parent / f"{cwd.name}.out"
    with open(out, "w") as log, DiskPeak(cwd) as disk:
        t0 = time.monotonic()
        proc = psutil.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with PeakRSS([proc.pid]) as memory:
            try:
                code = proc.wait(timeout)
            except psutil.TimeoutExpired:
                for p in [proc, *proc.children(recursive=True)]:
                    p.kill()
                code = -9
        seconds = time.monotonic() - t0
    settled(proxy.records, quiet=0.1, limit=2)
    tail = "" if code == 0 else " | ".join(out.read_text(errors="replace").strip().splitlines()[-3:])
    return Run(seconds, memory.peaks[proc.pid], disk.peak, proxy.totals(), code == 0,
               f"exit {code}: {tail} (whole output {out})" if code else "", list(proxy.records))


# ------------------------------------------------------------------ the cases

@dataclass
class Case:
    number: int
    title: str
    cards: int
    form: dict[str, str]              # the job form without load/remote (per variant)
    src_url: str
    src_strategy_url: str | None
    dst_strategy_url: str | None
    src_strategy_local: str | None    # for needed_source_ranks
    dst_strategy_local: str | None
    rows: dict[str, Run] = field(default_factory=dict)
    floor_down: Run | None = None
    floor_up: Run | None = None
    floor_up_unique: Run | None = None   # the distinct files alone (replicas are hard links)
    output_bytes: int = 0
    one_source_file: int = 0
    reruns: dict[str, Run] = field(default_factory=dict)   # "kept" / "fresh" local folder
    ideal: float = 0.0   # max(needed source bytes / down cap, output bytes / up cap): the link alone

    def remote(self, variant: str) -> str:
        return f"s3://{BUCKET}/case{self.number}_{variant}"


def cases(p: dict[str, str], wanted: list[int]) -> list[Case]:
    common = {"config": "run_llama_7b.yaml", "auto_trans_ckpt": "True", "transform_only": "True"}
    c1 = f"s3://{BUCKET}/case1_current"
    c2 = f"s3://{BUCKET}/case2_current"
    out = [
        Case(1, "1 complete -> 8 (dp2·mp2·pp2, 1x8)", 8,
             {**common, "transform_process_num": "2", "data_parallel": "2", "model_parallel": "2",
              "pipeline_stage": "2"},
             f"s3://{BUCKET}/in/{NAME}.ckpt", None, f"s3://{BUCKET}/in/strategy8", None, p["s8"]),
        Case(2, "2 8 -> 4 (dp1·mp2·pp2, 1x4)", 4,
             {**common, "transform_process_num": "2", "data_parallel": "1", "model_parallel": "2",
              "pipeline_stage": "2"},
             f"{c1}/transformed_checkpoint/{NAME}", f"{c1}/strategy/merged_ckpt_strategy.ckpt",
             f"s3://{BUCKET}/in/strategy4", p["s8"], p["s4"]),
        Case(3, "3 4 -> 1 (predict, 1x1)", 1,
             {**common, "transform_process_num": "1", "use_parallel": "False", "run_mode": "predict"},
             f"{c2}/transformed_checkpoint/{NAME}", f"{c2}/strategy/merged_ckpt_strategy.ckpt",
             None, p["s4"], None),
    ]
    return [c for c in out if c.number in wanted]


def job_form(case: Case, variant: str) -> dict[str, str]:
    form = {**case.form, "load_checkpoint": case.src_url, "remote_save_url": case.remote(variant)}
    if case.src_strategy_url:
        form["src_strategy_path_or_dir"] = case.src_strategy_url
    if case.dst_strategy_url:
        form["dst_strategy"] = case.dst_strategy_url
    if variant == "no-overlap":
        form["overlap"] = "False"
    return form


def run_job(case: Case, variant: str, local: Path, s3_env: dict[str, str], proxy: LinkProxy) -> Run:
    """`python -m cloud_entry` as ModelArtsJob starts it on one node of case.cards cards, its
    local folder local/node0."""
    from platform_harness import ModelArtsJob
    form = job_form(case, variant)
    job = ModelArtsJob(local, {**s3_env, "S3_ENDPOINT": proxy.endpoint}, form, nodes=1, cards=case.cards,
                       boot=[sys.executable, "-m", "cloud_entry"])
    return measure(job.command(), job.node_dir(0), job.environment(0, None), proxy)


def needed_source_urls(s3, case: Case) -> list[str]:
    """The source objects the job must read: the plan's source ranks, from strategies alone."""
    from reshard.api import needed_source_ranks
    if case.src_strategy_local is None:
        return [case.src_url]
    ranks = set(needed_source_ranks(case.src_strategy_local, case.dst_strategy_local))
    bucket, _ = split(case.src_url)
    return [f"s3://{bucket}/{k}" for k, _ in list_objects(s3, case.src_url)
            if k.endswith(".ckpt") and any(f"/rank_{r}/" in k for r in ranks)]


# ------------------------------------------------------------------ server check

def server_rate(s3, mib: int, scratch: Path) -> tuple[float, float, float, float]:
    """What the S3 server sustains here without the proxy, as the job's transfers use it
    (obs_io): MB/s down and up alone, then down and up at once. Each one object of `mib`."""
    import obs_io
    scratch.mkdir(parents=True, exist_ok=True)
    blob = scratch / "rate.bin"
    with open(blob, "wb") as f:
        f.write(os.urandom(mib * MiB))
    url = f"s3://{BUCKET}/rate/x.bin"
    n = mib * MiB / MB
    t0 = time.monotonic()
    obs_io.file.copy(str(blob), url)
    up = n / (time.monotonic() - t0)
    t0 = time.monotonic()
    obs_io.file.copy(url, str(scratch / "back.bin"))
    down = n / (time.monotonic() - t0)
    times = {}

    def timed(tag: str, src: str, dst: str) -> None:
        t = time.monotonic()
        obs_io.file.copy(src, dst)
        times[tag] = time.monotonic() - t
    threads = [threading.Thread(target=timed, args=("down", url, str(scratch / "back2.bin"))),
               threading.Thread(target=timed, args=("up", str(blob), f"s3://{BUCKET}/rate/y.bin"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    delete_prefix(s3, f"s3://{BUCKET}/rate")
    shutil.rmtree(scratch, ignore_errors=True)
    return down, up, n / times["down"], n / times["up"]


# ------------------------------------------------------------------ printing

def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


def secs(run: Run | None) -> str:
    if run is None:
        return "n/a"
    return f"{run.seconds:.1f}" if run.ok else "FAILED"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows[1:]])


def report(all_cases: list[Case]) -> tuple[str, bool]:
    head = ["case", "this project (s)", "no-overlap (s)", "MindFormers path (s)", "link floor (s)",
            "bytes/cap (s)", "vs floor", "vs down + unique up", "vs MindFormers", "peak RSS", "peak disk (goal)",
            "down / up"]
    rows, ok = [head], True
    for c in all_cases:
        cur = c.rows.get("current")
        floor = max(c.floor_down.seconds, c.floor_up.seconds) if c.floor_down and c.floor_up else None
        mf = c.rows.get("mindformers")
        good = cur is not None and cur.ok
        ratio = f"{cur.seconds / floor:.2f}x" if good and floor else "n/a"
        speed = f"{mf.seconds / cur.seconds:.1f}x" if good and mf and mf.ok else "n/a"
        goal = c.output_bytes + c.one_source_file
        unique = None
        if c.floor_up_unique is not None and c.floor_down is not None:
            unique = c.floor_down.seconds + c.floor_up_unique.seconds
        rows.append([c.title, secs(cur), secs(c.rows.get("no-overlap")), secs(mf),
                     f"{floor:.1f} ({c.floor_down.seconds:.1f} / {c.floor_up.seconds:.1f})" if floor else "n/a",
                     f"{c.ideal:.1f}" if c.ideal else "n/a", ratio,
                     f"{cur.seconds / unique:.2f}x ({c.floor_down.seconds:.1f} + {c.floor_up_unique.seconds:.1f})"
                     if good and unique else "n/a", speed,
                     f"{cur.peak_rss / MiB:.0f} MiB" if cur else "n/a",
                     f"{mb(cur.peak_disk)} ({mb(goal)})" if cur else "n/a",
                     f"{mb(cur.link.down_bytes)} / {mb(cur.link.up_bytes)}" if cur else "n/a"])
        ok = ok and good and floor is not None and cur.seconds <= 1.3 * floor
        ok = ok and (unique is None or cur.seconds <= 1.2 * unique)
        ok = ok and (mf is None or (mf.ok and mf.seconds >= 3 * cur.seconds)) and cur.peak_disk <= goal
    return table(rows), ok


# ------------------------------------------------------------------ main

def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--down-mbps", type=float, default=100.0, help="link cap server -> node, MB/s")
    ap.add_argument("--up-mbps", type=float, default=100.0, help="link cap node -> server, MB/s")
    ap.add_argument("--latency-ms", type=float, default=5.0, help="delay before each request, ms")
    ap.add_argument("--variants", default="current,no-overlap,mindformers,floor",
                    help="comma-separated: current, no-overlap, mindformers, floor")
    ap.add_argument("--cases", default="1,2,3", help="comma-separated case numbers (2 needs 1, 3 needs 2)")
    ap.add_argument("--no-rerun", dest="rerun", action="store_false", help="skip the reruns of case 1")
    ap.add_argument("--server-check-mib", type=int, default=128,
                    help="object size for measuring the server's own rate (0: skip the check)")
    ap.add_argument("--local", default="/dev/shm/job_bench",
                    help="the nodes' local folders and s3rver's objects (tmpfs by default: the disk "
                         "is not the bottleneck)")
    ap.add_argument("--keep-logs", default=None, metavar="DIR",
                    help="copy each case's job logs (this project's run) to DIR/case<N>")
    ap.add_argument("--server", default=None,
                    help="the local S3 server(s), comma-separated, each run in turn: moto, s3rver "
                         "(default: s3rver when it can be started, else moto)")
    a = ap.parse_args(argv)
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    a.server = [v.strip() for v in a.server.split(",") if v.strip()] if a.server else None
    if a.server is not None and (not a.server or not set(a.server) <= set(s3servers.SERVERS)):
        ap.error(f"--server: a comma-separated list of {', '.join(s3servers.SERVERS)}")
    bad = [v for v in a.variants if v not in ("current", "no-overlap", "mindformers", "floor")]
    if bad or "current" not in a.variants:
        ap.error(f"--variants: {bad[0] if bad else 'current'} " + ("is not a variant" if bad else "is required"))
    try:
        a.cases = sorted({int(x) for x in a.cases.split(",")})
    except ValueError:
        ap.error(f"--cases: {a.cases!r} is not a list of case numbers")
    if not set(a.cases) <= {1, 2, 3} or a.cases != list(range(1, max(a.cases) + 1)):
        ap.error(f"--cases: {a.cases} (each case reads the one before: 1, 1,2 or 1,2,3)")
    if min(a.down_mbps, a.up_mbps) <= 0 or a.latency_ms < 0:
        ap.error("--down-mbps/--up-mbps must be > 0 and --latency-ms >= 0")
    return a


def overlap_available() -> bool:
    done = subprocess.run([sys.executable, "-m", "cloud_entry", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return "--overlap" in done.stdout


def main(argv: list[str]) -> int:
    if argv[:1] == ["_floor"]:
        return child_floor(argv[1:])
    if argv[:1] == ["_mindformers"]:
        return child_mindformers(argv[1:])
    a = parse(argv)
    t_start = time.monotonic()
    local = Path(a.local) / f"run{os.getpid()}"
    paths = build(a.scale)
    size = os.path.getsize(paths["full"])
    print(f"model: 2-layer llama-7b shape, scale {a.scale} ({SCALES[a.scale]}), {size / MB:.0f} MB complete; "
          f"local folders under {local} (tmpfs); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          flush=True)
    overlap = overlap_available()
    if "no-overlap" in a.variants and not overlap:
        print("no-overlap: not available (`cloud-entry --help` lists no --overlap); column shows n/a")
    ok = True
    for wanted in a.server or [None]:
        ok = run_server(wanted, a, paths, local, overlap) and ok
    print(f"goals: {'met' if ok else 'NOT all met'}; bench took {time.monotonic() - t_start:.0f} s")
    return 0


def run_server(wanted: str | None, a: argparse.Namespace, paths: dict[str, str], local: Path,
               overlap: bool) -> bool:
    """Every case against one S3 server (`wanted`, or the default); prints its table; whether
    its goals are met."""
    from platform_harness import upload
    server, name = start_server(wanted, local)
    base_env = dict(os.environ)
    env = {**os.environ, **server.env(), "PYTHONPATH": str(ROOT)}
    os.environ.update(server.env())
    import obs_io
    obs_io.reset_config()
    part = obs_io.current_config().read_part_bytes
    try:
        s3 = s3_client(server.endpoint)
        s3.create_bucket(Bucket=BUCKET)
        down, up = a.down_mbps, a.up_mbps
        if a.server_check_mib:
            d1, u1, d2, u2 = server_rate(s3, a.server_check_mib, local / "rate")
            print(f"{name} alone (obs_io, {a.server_check_mib} MiB, no proxy): down {d1:.0f} MB/s, up {u1:.0f} MB/s; "
                  f"both at once: down {d2:.0f} MB/s, up {u2:.0f} MB/s", flush=True)
            # the cap must sit well below what the server sustains with both directions busy
            d_max, u_max = 0.7 * d2, 0.7 * u2
            if down > d_max or up > u_max:
                down, up = min(down, max(5, d_max // 5 * 5)), min(up, max(5, u_max // 5 * 5))
                print(f"link cap lowered to down {down:.0f} MB/s, up {up:.0f} MB/s (asked "
                      f"{a.down_mbps:.0f}/{a.up_mbps:.0f}): {name} cannot sustain more here with both "
                      f"directions busy, and the cap must be what limits", flush=True)
        print(f"link: down {down:.0f} MB/s, up {up:.0f} MB/s, {a.latency_ms:.0f} ms per request; ranged "
              f"reads of {part >> 20} MiB (S3_READ_PART_MIB)", flush=True)
        for src, url in ((paths["full"], f"s3://{BUCKET}/in/{NAME}.ckpt"),
                         (paths["s8"], f"s3://{BUCKET}/in/strategy8"), (paths["s4"], f"s3://{BUCKET}/in/strategy4")):
            upload(src, url)
        all_cases = cases(paths, a.cases)
        with LinkProxy(server.endpoint, down * MB, up * MB, a.latency_ms / 1000) as proxy:
            for case in all_cases:
                if not run_case(case, a, overlap, local / f"case{case.number}", env, s3, proxy):
                    break
    finally:
        server.stop()
        shutil.rmtree(local, ignore_errors=True)
        os.environ.clear()
        os.environ.update(base_env)
    text, ok = report(all_cases)
    print(f"\nlink: down {down:.0f} MB/s, up {up:.0f} MB/s, {a.latency_ms:.0f} ms per request; scale {a.scale}; "
          f"server {name}; ranged reads of {part >> 20} MiB")
    print(text)
    c1 = all_cases[0]
    for how, run in c1.reruns.items():
        print(f"rerun of case 1, {how} local folder: {secs(run)} s, {run.link.describe()}; {rerun_detail(c1, run)}")
    if "kept" in c1.reruns:   # the same node's rerun: no checkpoint byte may cross the link
        kept = c1.reruns["kept"]
        ok = ok and kept.ok and kept.checkpoint_bytes() == 0
    print("vs floor: this project / max(download alone, upload alone) through the same link (goal <= 1.3x); "
          "vs down + unique up: this project / (download alone + the distinct files' upload alone), where "
          "data-parallel replicas are the same bytes (goal <= 1.2x);\nvs MindFormers: its time / ours (goal "
          ">= 3x); peak disk: allocated bytes under the node's folder, a hard-linked file once (goal: output + "
          "one source file); down / up: object bodies at the proxy.")
    print(f"{name}: goals {'met' if ok else 'NOT all met'}", flush=True)
    return ok


def start_server(wanted: str | None, local: Path) -> tuple["s3servers.Server", str]:
    """The S3 server and its name: `wanted`, or s3rver when it starts, else moto with a note.
    s3rver keeps its objects under `local` (tmpfs by default), removed by its stop()."""
    server = s3servers.start(wanted or "s3rver", data_root=str(local))
    if server is not None:
        return server, wanted or "s3rver"
    if wanted == "s3rver":
        raise SystemExit("job_bench: --server s3rver: it could not be started (the reason is above)")
    print("server: moto, as s3rver could not be started (the reason is above); moto reads the whole "
          "object for every ranged GET, so it, not the link, bounds the job's ranged reads: "
          "prefer --scale small", flush=True)
    return s3servers.start("moto"), "moto"


def run_case(case: Case, a: argparse.Namespace, overlap: bool, local: Path, env: dict[str, str], s3,
             proxy: LinkProxy) -> bool:
    """Every variant of one case, each in a fresh process and local folder; the current run's
    output stays on the store (the next case's source), the other variants' are deleted.
    False when the job itself failed: nothing is left to compare with, and the next case would
    read an output that is not there."""
    print(f"\n=== case {case.title}", flush=True)
    env = {**env, "S3_ENDPOINT": proxy.endpoint}   # every variant through the same link
    objs = dict((f"s3://{BUCKET}/{k}", s) for k, s in list_objects(s3, case.src_url))
    needed = needed_source_urls(s3, case)
    case.one_source_file = max(objs[u] for u in needed)
    cur = case.rows["current"] = run_job(case, "current", local / "current", env, proxy)
    show("current", cur)
    if a.keep_logs:   # the job's own logs (its timeline), before its folder goes
        shutil.copytree(local / "current" / "node0" / "output" / "cloud_entry" / "log",
                        Path(a.keep_logs) / f"case{case.number}", dirs_exist_ok=True)
    if not cur.ok:
        print(f"case {case.number}: the job failed, so its other variants and the later cases are skipped",
              flush=True)
        return False
    produced = [f for f in local_files(str(local / "current" / "node0" / "output" / "transformed_checkpoint"))
                if f.endswith((".ckpt", ".safetensors"))]
    # data-parallel replicas are hard links of one file: the disk holds (and the link needs) its bytes once
    distinct = sorted({(os.stat(f).st_dev, os.stat(f).st_ino): f for f in produced}.values())
    case.output_bytes = sum(os.path.getsize(f) for f in distinct)
    case.ideal = max(sum(objs[u] for u in needed) / proxy.down.rate, case.output_bytes / proxy.up.rate)
    if "floor" in a.variants:
        case.floor_down = measure([sys.executable, __file__, "_floor", "down", str(local / "floor_down" / "data"),
                                   *needed], local / "floor_down", env, proxy)
        show("floor download", case.floor_down, f"{len(needed)} object(s) the job needs")
        shutil.rmtree(local / "floor_down", ignore_errors=True)
        base = str(local / "current" / "node0" / "output" / "transformed_checkpoint")
        case.floor_up = measure([sys.executable, __file__, "_floor", "up", case.remote("floor"), base, *produced],
                                local / "floor_up", env, proxy)
        show("floor upload", case.floor_up, f"{len(produced)} file(s) the job produced")
        delete_prefix(s3, case.remote("floor"))
        if len(distinct) < len(produced):   # data-parallel replicas: the same bytes, hard-linked
            case.floor_up_unique = measure([sys.executable, __file__, "_floor", "up", case.remote("floor"), base,
                                            *distinct], local / "floor_up_unique", env, proxy)
            show("floor upload, distinct files", case.floor_up_unique,
                 f"{len(distinct)} of the {len(produced)} file(s) (the others are replicas, the same bytes)")
            delete_prefix(s3, case.remote("floor"))
    if case.number == 1 and a.rerun:
        for how in ("kept", "fresh"):   # the same node again, then a new node (as the platform reruns)
            folder = local / ("current" if how == "kept" else "rerun_fresh")
            run = case.reruns[how] = run_job(case, "current", folder, env, proxy)
            show(f"rerun, {how} local folder", run, rerun_detail(case, run))
        shutil.rmtree(local / "rerun_fresh", ignore_errors=True)
    shutil.rmtree(local / "current", ignore_errors=True)
    if "no-overlap" in a.variants and overlap:
        case.rows["no-overlap"] = run_job(case, "no-overlap", local / "no-overlap", env, proxy)
        show("no-overlap", case.rows["no-overlap"])
        shutil.rmtree(local / "no-overlap", ignore_errors=True)
        delete_prefix(s3, case.remote("no-overlap"))
    if "mindformers" in a.variants:
        cmd = [sys.executable, __file__, "_mindformers", case.src_url, case.src_strategy_url or "-",
               case.dst_strategy_url or "-", case.remote("mindformers") + f"/transformed_checkpoint/{NAME}",
               str(local / "mindformers" / "node0")]
        run = case.rows["mindformers"] = measure(cmd, local / "mindformers" / "node0", env, proxy)
        show("MindFormers path", run)
        shutil.rmtree(local / "mindformers", ignore_errors=True)
        delete_prefix(s3, case.remote("mindformers"))
    return True


def rerun_detail(case: Case, run: Run) -> str:
    """Where a rerun's bytes went: the source, the job's own outputs (remote_save_url), the rest."""
    src = run.moved(case.src_url)
    out = run.moved(case.remote("current"))
    return (f"source read {src[0]:,} B in {src[2]} requests; remote_save_url read {out[0]:,} B, written "
            f"{out[1]:,} B in {out[2]} requests")


def show(what: str, run: Run, extra: str = "") -> None:
    print(f"{what}: {secs(run)} s, peak RSS {run.peak_rss / MiB:.0f} MiB, peak disk {mb(run.peak_disk)}; "
          f"{run.link.describe()}{'; ' + extra if extra else ''}{' ' + run.note if run.note else ''}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
