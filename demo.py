"""The Quickstart demo: the three documented conversions as ModelArts jobs, on two nodes that
share nothing but a local S3 server, each result checked bit for bit against MindSpore.

What it runs, end to end and with real parts (`python3.11 dev.py demo`; files in demo_work/):
0. A local S3 server (moto in server mode on 127.0.0.1) stands in for OBS. A 2-layer
   Llama-7b-shaped checkpoint (smaller hidden size, see MODEL) and the dp2·mp2·pp2 and
   dp1·mp2·pp2 strategies are uploaded to it.
1-3. Three training jobs, each started as the platform starts one (tests/platform_harness.py):
   the boot command `cloud-entry -- python tests/entry_launch_check.py --config {config}` with
   the job form's hyperparameters appended at its end, once per node, each node with its own
   MA_*/VC_* environment and its own local folder (no shared disk):
     1. complete -> 8 ranks dp2·mp2·pp2, transform_process_num 2, 2 nodes x 4 cards;
     2. those 8 -> 4 ranks dp1·mp2·pp2, transform_process_num 2, 2 nodes x 2 cards;
     3. those 4 -> 1, single-card predict (use_parallel False, run_mode predict), 1 node.
   Each job converts, uploads, then launches the stand-in training command, which loads its
   ranks with mindspore.load_checkpoint. The demo then downloads what the job uploaded and
   compares it bit for bit with mindspore.transform_checkpoints run on the same inputs.
4. The offline tool `transform-checkpoint` merges job 1's 8 ranks straight from s3:// into one
   complete checkpoint, compared bit for bit with the original.
Then a summary table: ranks, bytes downloaded / converted / uploaded, time, peak memory and
the verdict per scenario. How each number is measured: demo_support.py.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "demo_work"
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))   # the test suite's model writer, S3 server, platform harness
sys.path.insert(0, str(ROOT))

import demo_support as ds  # noqa: E402

# The documented case is a 2-layer llama-7b (vocab 32000, hidden 4096, ffn 11008: 1.3 GB of
# weights, plus optimizer moments). The demo keeps the layer count and the vocabulary and
# divides hidden and ffn by 32, so three jobs and three MindSpore references fit in two minutes.
MODEL = {"num_layers": 2, "vocab": 32000, "hidden": 128, "ffn": 344}
BUCKET = "demo"
CKPT_NAME = "llama_7b"          # the checkpoint's name: the converted folders are named after it
STAND_IN = "entry_launch_check.py"


def is_training_command(cmdline: list[str]) -> bool:
    """The launched stand-in (`python tests/entry_launch_check.py ...`), not the entry whose
    own command line names it after `--` (nor its conversion workers)."""
    return any(arg.endswith(STAND_IN) for arg in cmdline[:2])


@dataclass
class Scenario:
    """One documented conversion as one training job, and what MindSpore converts for it."""
    number: int
    title: str                 # the table's name for it
    headline: str              # what the step says it does
    nodes: int
    cards: int
    src_ranks: int
    layout: str
    form: dict[str, str]       # the training-job form: appended to the boot command in order
    src: str                   # local copy of the job's source, for MindSpore's conversion
    src_strategy: str | None   # local copies of the strategies, for MindSpore's conversion
    dst_strategy: str | None

    @property
    def uploaded(self) -> Path:
        """Where the demo downloads what the job uploaded: the next job's source, locally."""
        return WORK / f"job{self.number}" / "uploaded"

    @property
    def remote(self) -> str:
        return self.form["remote_save_url"]

    @property
    def dst_ranks(self) -> int:
        return self.nodes * self.cards if self.form.get("use_parallel", "True") == "True" else 1


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def shorten() -> dict[str, str]:
    """Local paths as the reader knows them (longest first, so one never eats another)."""
    return {sys.executable: "python", str(Path(sys.executable).parent) + "/": "",
            str(WORK) + "/": "demo_work/", str(TESTS) + "/": "tests/"}


def fetch(url: str, local: Path) -> str:
    """Download a file or folder from the store (obs_io, the moxing API) for a comparison."""
    import obs_io
    (obs_io.file.copy_parallel if obs_io.file.is_directory(url) else obs_io.file.copy)(url, str(local))
    return str(local)


def mindspore_reference(s: Scenario) -> str:
    """mindspore.transform_checkpoints on the job's inputs (tests/synth.ms_transform)."""
    import synth
    t0 = time.monotonic()
    out = synth.ms_transform(s.src, str(WORK / "reference" / f"job{s.number}" / CKPT_NAME),
                             s.src_strategy, s.dst_strategy)
    print(f"MindSpore's own conversion of the same inputs (mindspore.transform_checkpoints): "
          f"{s.src_ranks} -> {s.dst_ranks} ranks in {time.monotonic() - t0:.1f} s -> "
          f"{Path(out).relative_to(ROOT)}", flush=True)
    return out


def run_job(s: Scenario, s3_env: dict[str, str], endpoint: str, reference: str) -> ds.Row:
    """Start the job's boot command on every node (each through its own recording proxy to
    the store), sample each node's memory, show what each node did; a failed node ends the demo."""
    from faultproxy import FaultProxy
    from platform_harness import ModelArtsJob

    root = WORK / f"job{s.number}"
    with contextlib.ExitStack() as stack:
        proxies = [stack.enter_context(FaultProxy(endpoint)) for _ in range(s.nodes)]
        job = ModelArtsJob(root, s3_env, s.form, nodes=s.nodes, cards=s.cards,
                           env={"ENTRY_CHECK_REFERENCE": reference},
                           node_env={n: {"S3_ENDPOINT": p.endpoint} for n, p in enumerate(proxies)})
        print("boot command, as ModelArts runs it on every node (the form's hyperparameters appended):")
        print(ds.boot_command(job.command(), shorten()))
        for n in range(s.nodes):
            env = job.environment(n, None)
            print(f"node {n}: " + " ".join(f"{k}={env[k]}" for k in ("MA_NUM_HOSTS", "VC_TASK_INDEX",
                                                                        "MA_NUM_GPUS", "MA_CURRENT_IP"))
                  + f", its own disk demo_work/job{s.number}/node{n}/, S3 through proxy {env['S3_ENDPOINT']}")
        print("each node: hyperparameters -> config; fetch the strategies; download only the source files "
              "its rank block reads;\nconvert the block; upload it and a success marker; wait for every "
              "block's marker; launch the training command")
        print(f"... running on {f'{s.nodes} nodes at once' if s.nodes > 1 else 'one node'}", flush=True)
        t0 = time.monotonic()
        job.start()
        with ds.PeakRSS([p.pid for _, _, p in job.procs], exclude=is_training_command) as memory:
            results = job.wait(timeout=300)
        seconds = time.monotonic() - t0
        per_node = [ds.traffic(ds.settled(p.records)) for p in proxies]
    for r, moved in zip(results, per_node):
        print(f"--- node {r.node} (exit {r.code}; whole output: demo_work/job{s.number}/boot_node{r.node}.out)")
        print("\n".join(ds.highlights(r.output, shorten())))
        print(f"node {r.node} on the wire: {moved.describe()}; peak RSS of the entry and its conversion "
              f"workers {ds.mib(memory.peaks[job.procs[r.node][2].pid])}", flush=True)
        if r.code != 0:
            sys.exit(f"demo: job {s.number} failed on node {r.node} (exit {r.code}); its output above")
    converted, ranks = ds.converted_bytes([job.node_dir(n) for n in range(s.nodes)], CKPT_NAME)
    if ranks != s.dst_ranks:
        sys.exit(f"demo: job {s.number} left {ranks} converted rank(s) on its nodes, expected {s.dst_ranks}")
    outputs = "\n".join(r.output for r in results)
    return ds.Row(f"{s.number} {s.title}", s.src_ranks, s.dst_ranks, f"{s.layout} on {s.nodes}x{s.cards}",
                  sum(per_node, ds.Traffic()), converted, seconds, ds.convert_seconds(outputs),
                  max(memory.peaks.values()), ds.expected_peak_mib(outputs), None)


def verify(s: Scenario, reference: str) -> bool:
    """Download what the job uploaded (into s.uploaded: the next job's inputs, for MindSpore)
    and compare every rank with MindSpore's conversion bit for bit (names, dtypes, shapes,
    bytes; tests/synth.assert_same_checkpoint_dirs)."""
    import synth
    local = fetch(f"{s.remote}/transformed_checkpoint/{CKPT_NAME}", s.uploaded / CKPT_NAME)
    if s.dst_ranks > 1:
        fetch(f"{s.remote}/strategy/merged_ckpt_strategy.ckpt", s.uploaded / "merged_ckpt_strategy.ckpt")
    try:
        synth.assert_same_checkpoint_dirs(local, reference)
    except AssertionError as exc:
        print(f"job {s.number}: the uploaded checkpoint DIFFERS from MindSpore's: {exc}")
        return False
    print(f"job {s.number}: the {s.dst_ranks} rank(s) uploaded to {s.remote}/transformed_checkpoint/{CKPT_NAME}/ "
          f"are bit-identical to MindSpore's conversion", flush=True)
    return True


def offline_merge(job1: Scenario, env: dict[str, str], complete: str) -> bool:
    """The offline tool on job 1's upload, straight from s3://, back to one complete file."""
    import synth
    tool = str(Path(sys.executable).parent / "transform-checkpoint")
    cmd = [tool, f"--src_checkpoint={job1.remote}/transformed_checkpoint/{CKPT_NAME}",
           f"--src_strategy={job1.remote}/strategy/merged_ckpt_strategy.ckpt", "--dst_checkpoint=offline"]
    print(ds.boot_command(cmd, shorten()), flush=True)
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=WORK, capture_output=True, text=True)
    print("\n".join(line for line in (done.stdout + done.stderr).splitlines()
                    if ("wrote" in line and "WARN" not in line) or "error" in line))
    if done.returncode:
        sys.exit(f"demo: transform-checkpoint exited with {done.returncode}")
    merged = WORK / "offline" / "rank_0" / "checkpoint_0.ckpt"
    same = synth.load_params(str(merged)) == synth.load_params(complete)
    print(f"{merged.relative_to(ROOT)}: {'bit-identical to' if same else 'DIFFERENT FROM'} the original "
          f"complete checkpoint ({time.monotonic() - t0:.1f} s)", flush=True)
    return same


def run_scenario(s: Scenario, server) -> ds.Row:
    """MindSpore's reference first (the stand-in training command compares what it loads with
    it), then the job, then the check of its upload."""
    step(f"{s.number}. {s.headline}")
    reference = mindspore_reference(s)
    row = run_job(s, server.env(), server.endpoint, reference)
    row.verified = verify(s, reference)
    return row


def scenarios(complete: str, s8: str, s4: str) -> list[Scenario]:
    """The three documented cases as job forms, each reading what the one before uploaded."""
    common = {"config": "run_llama_7b.yaml", "auto_trans_ckpt": "True"}
    first = Scenario(1, "complete to shards", "Job 1: complete -> 8 ranks dp2·mp2·pp2, transform_process_num 2, "
                     "2 nodes x 4 cards", 2, 4, 1, "dp2·mp2·pp2", {
                         **common, "load_checkpoint": f"s3://{BUCKET}/models/{CKPT_NAME}.ckpt",
                         "dst_strategy": f"s3://{BUCKET}/strategy8", "transform_process_num": "2",
                         "data_parallel": "2", "model_parallel": "2", "pipeline_stage": "2",
                         "remote_save_url": f"s3://{BUCKET}/job1"}, complete, None, s8)
    second = Scenario(2, "reshard", "Job 2: those 8 ranks -> 4 ranks dp1·mp2·pp2, transform_process_num 2, "
                      "2 nodes x 2 cards", 2, 2, 8, "dp1·mp2·pp2", {
                          **common, "load_checkpoint": f"{first.remote}/transformed_checkpoint/{CKPT_NAME}",
                          "src_strategy_path_or_dir": f"{first.remote}/strategy/merged_ckpt_strategy.ckpt",
                          "dst_strategy": f"s3://{BUCKET}/strategy4", "transform_process_num": "2",
                          "data_parallel": "1", "model_parallel": "2", "pipeline_stage": "2",
                          "remote_save_url": f"s3://{BUCKET}/job2"},
                      str(first.uploaded / CKPT_NAME), str(first.uploaded / "merged_ckpt_strategy.ckpt"), s4)
    third = Scenario(3, "merge, predict", "Job 3: those 4 ranks -> 1, single-card predict (use_parallel False, "
                     "run_mode predict), 1 node x 1 card", 1, 1, 4, "single card", {
                         **common, "load_checkpoint": f"{second.remote}/transformed_checkpoint/{CKPT_NAME}",
                         "src_strategy_path_or_dir": f"{second.remote}/strategy/merged_ckpt_strategy.ckpt",
                         "transform_process_num": "1", "use_parallel": "False", "run_mode": "predict",
                         "remote_save_url": f"s3://{BUCKET}/job3"},
                     str(second.uploaded / CKPT_NAME), str(second.uploaded / "merged_ckpt_strategy.ckpt"), None)
    return [first, second, third]


def main(argv: list[str]) -> int:
    if argv:
        print(f"demo.py: unexpected argument {argv[0]!r}: the demo takes none", file=sys.stderr)
        return 2
    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    import obs_io
    import s3server
    import synth
    from platform_harness import upload

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    step("0. A local S3 server stands in for OBS; the model and the strategies go up to it")
    server = s3server.start()
    try:
        os.environ.update(server.env())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server.client().create_bucket(Bucket=BUCKET)
        print(f"endpoint {server.endpoint}, bucket s3://{BUCKET}")
        inputs = WORK / "inputs"
        params = synth.llama_params(**MODEL)
        complete = synth.write_complete_checkpoint(str(inputs / f"{CKPT_NAME}.ckpt"), params)
        s8, s4 = str(inputs / "strategy8"), str(inputs / "strategy4")
        synth.write_strategy(s8, dp=2, mp=2, pp=2, opt_shard=-1, params=params)   # parallel optimizer on
        synth.write_strategy(s4, dp=1, mp=2, pp=2, params=params)
        for local, url in ((complete, f"s3://{BUCKET}/models/{CKPT_NAME}.ckpt"),
                           (s8, f"s3://{BUCKET}/strategy8"), (s4, f"s3://{BUCKET}/strategy4")):
            upload(local, url)
            print(f"  {url}: {ds.human(obs_io.file.get_size(url, recursive=True))}")
        print(f"model: a {MODEL['num_layers']}-layer Llama-7b-shaped checkpoint ({len(params)} tensors, "
              f"fp32/fp16/bf16 weights, Adam moments), vocab {MODEL['vocab']} as llama-7b but hidden "
              f"{MODEL['hidden']} and ffn {MODEL['ffn']} instead of 4096 and 11008, to keep the demo fast")

        jobs = scenarios(complete, s8, s4)
        rows = [run_scenario(s, server) for s in jobs]

        step("4. The offline tool: job 1's 8 ranks from s3:// back into one complete checkpoint")
        offline_ok = offline_merge(jobs[0], env, complete)
    finally:
        server.stop()

    step("Summary")
    print(ds.table(rows))
    print("downloaded / uploaded: object bodies on the wire, all nodes of the job (each node's own proxy);\n"
          "converted: the converted checkpoint's bytes; time: the job's boot to its last node's exit, the\n"
          "entry's conversion in brackets; peak RSS/node: the entry and its conversion workers on the busiest\n"
          "node, sampled every 50 ms, the training command left out (plan: what the entry's plan expected,\n"
          "MiB); verified: bit-identical to mindspore.transform_checkpoints on the same inputs.")
    ok = offline_ok and all(r.verified for r in rows)
    print(f"\ndemo: {'all verified' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f} s "
          f"(load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, "
          f"{os.cpu_count()} CPUs); files in demo_work/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
