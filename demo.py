"""The Quickstart demo: one ModelArts-style job on a local S3 server, then the offline tool.

What it shows, end to end and with real parts:
1. A local S3 server (moto in server mode on 127.0.0.1) stands in for OBS; a small Llama-shaped
   checkpoint (fp32/fp16/bf16) and a dp2·mp2·pp2 destination strategy are uploaded to it.
2. `python -m cloud_entry` runs as a ModelArts boot command with the job's hyperparameters
   (auto_trans_ckpt=True, transform_process_num=2, npu_num_per_node=8): it syncs down, converts
   complete -> 8 ranks in two rank blocks, publishes markers, uploads the result and launches a
   stand-in training script that loads its checkpoint with mindspore.load_checkpoint.
3. The offline tool `transform-checkpoint` prints the plan of 8 -> 4 ranks (`--dry_run`) and
   merges the 8 uploaded ranks straight from s3:// back into one complete checkpoint, which is
   checked bit for bit against the original.

Run it with `python3.11 dev.py demo`; it leaves its files in demo_work/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "demo_work"
sys.path.insert(0, str(ROOT / "tests"))   # the synthetic model and strategy writer of the test suite


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show_and_run(cmd: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(cmd[:3] + ["..."] if len(cmd) > 8 else cmd), flush=True)
    code = subprocess.run(cmd, env=env, cwd=WORK).returncode
    if code:
        sys.exit(f"demo: the command above exited with {code}")


def trainer(config_path: str) -> int:
    """The stand-in training command: what MindFormers would get from the entry."""
    import yaml
    import mindspore as ms

    cfg = yaml.safe_load(Path(config_path).read_text())
    ckpt = Path(cfg["load_checkpoint"])
    ranks = sorted(int(p.name.split("_")[1]) for p in ckpt.glob("rank_*"))
    params = ms.load_checkpoint(str(ckpt / "rank_0" / "checkpoint_0.ckpt"))
    emb = params["model.tok_embeddings.embedding_weight"]
    print(f"[trainer] config {config_path}: auto_trans_ckpt={cfg['auto_trans_ckpt']}, "
          f"parallel_config={cfg['parallel_config']}")
    print(f"[trainer] load_checkpoint={ckpt} holds ranks {ranks}; rank 0 loads {len(params)} "
          f"parameters with mindspore.load_checkpoint (embedding slice {tuple(emb.shape)} {emb.dtype})")
    return 0


def main() -> int:
    import obs_io
    import s3server
    import synth
    from reshard.formats import open_reader

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    step("A local S3 server stands in for OBS")
    server = s3server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_"))}
        env.update(server.env(), PYTHONPATH=str(ROOT))
        os.environ.update(server.env())
        server.client().create_bucket(Bucket="demo")
        print(f"endpoint {server.endpoint}, bucket s3://demo")

        step("A small Llama checkpoint and a dp2·mp2·pp2 strategy, uploaded with obs_io (moxing API)")
        params = synth.llama_params(num_layers=2, vocab=512, hidden=128, ffn=256)
        complete = synth.write_complete_checkpoint(str(WORK / "llama_demo.ckpt"), params)
        synth.write_strategy(str(WORK / "strategy8"), dp=2, mp=2, pp=2, opt_shard=-1, params=params)
        obs_io.file.copy(complete, "s3://demo/models/llama_demo.ckpt")
        obs_io.file.copy_parallel(str(WORK / "strategy8"), "s3://demo/strategy8")
        keys = obs_io.file.list_directory("s3://demo", recursive=True)
        print(f"  s3://demo/models/llama_demo.ckpt ({obs_io.file.get_size('s3://demo/models/llama_demo.ckpt')} bytes)")
        print(f"  s3://demo/strategy8/: {sum(k.startswith('strategy8/') and k.endswith('.ckpt') for k in keys)} strategy files")

        step("The job: ModelArts hyperparameters -> config, sync, convert in 2 rank blocks, upload, launch")
        show_and_run([sys.executable, "-m", "cloud_entry", "--config=run_llama_7b.yaml",
             "--load_checkpoint=s3://demo/models/llama_demo.ckpt", "--dst_strategy=s3://demo/strategy8",
             "--auto_trans_ckpt=True", "--transform_process_num=2", "--npu_num_per_node=8",
             "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2",
             "--remote_save_url=s3://demo/output", "--output_dir=output",
             "--", sys.executable, str(ROOT / "demo.py"), "--trainer", "{config}"], env)
        remote = [k for k in obs_io.file.list_directory("s3://demo/output", recursive=True)
                  if k.endswith((".ckpt", ".txt"))]
        print(f"on s3://demo/output/: {len(remote)} files, e.g.:")
        for key in remote[:2] + remote[-4:]:
            print("  " + key)

        step("Offline tool: the plan of 8 -> 4 ranks (dp1·mp2·pp2), from strategies alone")
        synth.write_strategy(str(WORK / "strategy4"), dp=1, mp=2, pp=2, params=params)
        plan = subprocess.run(
            [sys.executable, "-m", "reshard", "--dry_run", "--src_strategy=s3://demo/output/strategy",
             "--dst_strategy=strategy4"],
            env=env, cwd=WORK, check=True, capture_output=True, text=True).stdout.splitlines()
        print("\n".join(plan[:14] + [f"... ({len(plan)} lines)"]))

        step("Offline tool: merge the 8 uploaded ranks from s3:// back into one complete checkpoint")
        show_and_run([sys.executable, "-m", "reshard",
             "--src_checkpoint=s3://demo/output/transformed_checkpoint/llama_demo",
             "--src_strategy=s3://demo/output/strategy/merged_ckpt_strategy.ckpt",
             "--dst_checkpoint=merged"], env)
        merged = WORK / "merged" / "rank_0" / "checkpoint_0.ckpt"
        with open_reader(complete) as a, open_reader(str(merged)) as b:
            same = a.metas == b.metas and all(
                a.read_raw(n) == b.read_raw(n) if not m.sliceable else
                a.read(n).tobytes() == b.read(n).tobytes() for n, m in a.metas.items())
        print(f"{merged.relative_to(WORK)}: {len(b.metas)} parameters, "
              f"{'bit-identical to' if same else 'DIFFERENT FROM'} the original checkpoint")
        return 0 if same else 1
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--trainer":
        sys.exit(trainer(sys.argv[2]))
    sys.exit(main())
