#!/usr/bin/env python3
"""MindFormers' own loader on the Checkpoint 2.0 folders this tool writes (issue 18's oracle).

For each MindFormers release with a venv (scripts/mindformers_compat.py's, or --venvs) and each
destination layout: convert tests/data/checkpoint2/<source> (1.7/1.8, which cannot assemble
bfloat16 slices on CPU: a float-only fixture that release saves first, and the float-only 1.7.0
fixture saved with save_remove_redundancy, whose storage records have no rank_group) with
reshard (this venv) into a Checkpoint 2.0 folder for that release, then run
scripts/ckpt2_oracle.py check in the release's venv: MindFormers' load_checkpoint into complete
tensors (compared bit for bit with the complete tensors MindFormers loaded from the source
fixture) and as every rank of the written layout (MindFormers' loader with the saved layout =
the live one). Then cloud-entry's checkpoint2_mode=online node copies (1.9+ reshard through
ReshardLoader, 1.7/1.8 through categorize_params): the source files two ranks of an mp4 job
read, with metadata.json cut to them (cloud_entry.checkpoint2), loaded by MindFormers as those
ranks (online reshard) and compared with the complete tensors. One JSON line per run; exit 1 if
any failed.

    .venv/bin/python scripts/ckpt2_oracle_matrix.py [--venvs .mf-compat] [--releases 1.7.0,2.1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
DATA = os.path.join(ROOT, "tests", "data", "checkpoint2")
# oracle layout name -> (dp, mp, pp, opt_shard) of the destination strategy (ckpt2_oracle.LAYOUTS)
LAYOUTS = {"mp4": (1, 4, 1, 0), "dp2mp2pp2": (2, 2, 2, 0), "dp2mp2pp2-optshard": (2, 2, 2, -1)}
SOURCES = ("1.7.0-dp2mp2pp2-rr", "1.9.0-dp2mp2pp2-optshard", "2.1.0-dp2mp2pp2")
FLOAT_SOURCES = ("1.7.0-dp2mp2pp2-rr",)   # what 1.7/1.8 can load on CPU


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venvs", default=os.environ.get("MF_COMPAT_VENVS", os.path.join(ROOT, ".mf-compat")),
                    help="folder of <release>/venv (scripts/mindformers_compat.py makes them)")
    ap.add_argument("--releases", default="1.7.0,1.8.0,1.9.0,2.0.0,2.1.0")
    args = ap.parse_args()
    import synth
    from reshard.formats.checkpoint2.convert import convert_checkpoint
    from reshard.strategy import load_strategy
    params = synth.llama_params(num_layers=2, vocab=16, hidden=8, ffn=16, optimizer=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ckpt2-oracle-") as tmp:
        for release in args.releases.split(","):
            py = os.path.join(args.venvs, release, "venv", "bin", "python")
            short = ".".join(release.split(".")[:2])
            sources = {s: os.path.join(DATA, s) for s in SOURCES}
            if release < "1.9":   # 1.7/1.8 cannot assemble bfloat16 slices on CPU: a float-only
                # fixture, saved by that release itself
                made = os.path.join(tmp, f"{release}-dp2mp2pp2-optshard-float")
                for cmd in (["write", "--small", "--no-bf16", "--layout", "dp2mp2pp2-optshard", "--out", made],
                            ["check", made, "--dump-full", f"{made}.full.safetensors"]):
                    subprocess.run([py, os.path.join(HERE, "ckpt2_oracle.py"), *cmd], cwd=tmp,
                                   capture_output=True, check=True, timeout=900)
                sources = {os.path.basename(made): made,
                           **{s: os.path.join(DATA, s) for s in FLOAT_SOURCES}}
            for source, source_path in sources.items():
                for layout, (dp, mp, pp, opt) in LAYOUTS.items():
                    strat = os.path.join(tmp, f"strategy-{layout}")
                    if not os.path.isdir(strat):
                        synth.write_strategy(strat, dp=dp, mp=mp, pp=pp, opt_shard=opt, params=params)
                    out = os.path.join(tmp, f"{release}-{source}-{layout}")
                    t = time.time()
                    convert_checkpoint(source_path, out, dst_strategy=load_strategy(strat),
                              fmt="checkpoint2", release=short)
                    seconds_write = round(time.time() - t, 2)
                    ok, rep = oracle_check(py, tmp, out, source_path, layout)
                    failed += not ok
                    print(json.dumps({"release": release, "source": source, "written_as": layout,
                                      "ok": ok, "write_s": seconds_write,
                                      "params": rep.get("params"), "slices_checked": rep.get("reshard_checked"),
                                      "mismatch": rep.get("mismatch"), "missing": rep.get("missing"),
                                      "error": rep.get("error")}), flush=True)
            failed += node_copies(py, release, sources, tmp, params)
    return 1 if failed else 0


def oracle_check(py: str, tmp: str, folder: str, source_path: str, layout: str, *more: str) -> tuple[bool, dict]:
    """ckpt2_oracle.py check in the release's venv: (passed, its JSON report or the error)."""
    proc = subprocess.run(
        [py, os.path.join(HERE, "ckpt2_oracle.py"), "check", folder, "--expect-safetensors",
         f"{source_path}.full.safetensors", "--reshard-to", layout, *more],
        cwd=tmp, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    try:
        rep = json.loads(lines[-1])
    except (IndexError, ValueError):
        rep = {"error": proc.stderr.strip().splitlines()[-1:]}
    return proc.returncode == 0, rep


def node_copies(py: str, release: str, sources: dict, tmp: str, params: dict) -> int:
    """checkpoint2_mode=online: each node of a 2-node mp4 job (ranks 0,1 and 2,3) gets the source
    files its ranks read and a pruned metadata.json; MindFormers loads them as those ranks."""
    import synth
    from cloud_entry.checkpoint2 import _node_copy
    from reshard.formats.checkpoint2 import read_checkpoint2
    from reshard.formats.checkpoint2.select import files_read
    from reshard.strategy import load_strategy
    strat = os.path.join(tmp, "strategy-mp4")
    if not os.path.isdir(strat):
        synth.write_strategy(strat, dp=1, mp=4, pp=1, opt_shard=0, params=params)
    failed = 0
    for source, source_path in sources.items():
        saved_by = tuple(int(x) for x in source.split("-")[0].split("."))
        if saved_by > tuple(int(x) for x in release.split(".")):   # an older loader cannot read
            continue   # a newer release's common.json (CommonInfo(**)), copy or not
        ck = read_checkpoint2(source_path)
        for ranks in ("0,1", "2,3"):
            names = files_read(ck, load_strategy(strat), [int(r) for r in ranks.split(",")])
            out = os.path.join(tmp, f"{release}-{source}-node-{ranks}")
            _node_copy(ck, names, out, None)
            ok, rep = oracle_check(py, tmp, out, source_path, "mp4", "--ranks", ranks)
            failed += not ok
            total = sum(len(f) for f in ck.files.values())
            print(json.dumps({"release": release, "source": source, "node_copy_of_mp4_ranks": ranks,
                              "files": f"{len(names)}/{total}", "ok": ok,
                              "slices_checked": rep.get("reshard_checked"), "mismatch": rep.get("mismatch"),
                              "missing": rep.get("missing"), "error": rep.get("error")}), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
