"""The training command of the whole-job tests: what a MindFormers training script would see.

Reads its config as MindFormers does (the `checkpoint:` section's load_path wins over the
top-level load_checkpoint), loads this process's ranks with mindspore.load_checkpoint and checks
them, and the config, against what the entry promised. Ranks: its own RANK_ID when the boot
command runs once per card, else the node's (CLOUD_ENTRY_LOCAL_RANKS). With only_save_strategy:
True it plays MindFormers' strategy pass instead: writes this node's
output/strategy/ckpt_strategy_rank_<r>.ckpt (layout from parallel_config) and exits.

Arguments: the config path as `{config}`, `--config {config}` or `--config={config}`, then any
others (recorded). Exit 0 when all is well, 3 on any mismatch (the reason on stderr).
Environment: ENTRY_CHECK_REFERENCE (folder to compare with), ENTRY_CHECK_RESULT (a JSON record
of what was loaded; `{id}` in it becomes this process's RANK_ID or node), ENTRY_CHECK_EXIT
(exit code instead of 0), ENTRY_CHECK_PASS_EXIT (the strategy pass fails), ENTRY_CHECK_SLEEP
(seconds to keep running after the checks; a SIGTERM then ends it with 42 after writing
`<result>.sigterm`), ENTRY_CHECK_PREFIX (file prefix, default checkpoint_). A MindFormers Checkpoint 2.0 to load (the
tracker in it) is checked as MindFormers' loader needs it (check_checkpoint2): with
ENTRY_CHECK_FULL (the complete tensors) and ENTRY_CHECK_DST_STRATEGY (the job's layout).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fail(msg: str) -> None:
    print(f"entry_launch_check: {msg}", file=sys.stderr)
    sys.exit(3)


def config_path(argv: list[str]) -> tuple[str, list[str]]:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--config="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    if argv and not argv[0].startswith("--"):
        return argv[0], argv[1:]
    fail(f"no config in {argv}")
    raise AssertionError


def result_path() -> str | None:
    out = os.environ.get("ENTRY_CHECK_RESULT")
    if not out:
        return None
    who = os.environ.get("RANK_ID") or "node" + os.environ["CLOUD_ENTRY_LOCAL_RANKS"].split(",")[0]
    return out.replace("{id}", who)


def strategy_pass(cfg: dict, ranks: list[int]) -> None:
    import synth

    pc = cfg["parallel_config"]
    folder = os.path.join(cfg["output_dir"], "strategy")
    tmp = os.path.join(cfg["output_dir"], "strategy_all.tmp")
    synth.write_strategy(tmp, dp=pc["data_parallel"], mp=pc["model_parallel"], pp=pc["pipeline_stage"],
                         opt_shard=int(os.environ.get("ENTRY_CHECK_OPT_SHARD", "0")),
                         num_layers=cfg["model"]["model_config"]["num_layers"])
    os.makedirs(folder, exist_ok=True)
    for r in ranks:   # a real node writes only its own ranks' files
        os.replace(os.path.join(tmp, f"ckpt_strategy_rank_{r}.ckpt"),
                   os.path.join(folder, f"ckpt_strategy_rank_{r}.ckpt"))
    print(f"entry_launch_check: strategy pass wrote ranks {ranks}")


def load_path(cfg: dict) -> str:
    """Where MindFormers takes the checkpoint from: checkpoint.load_path when that section sets
    it (the top-level key is then ignored), else load_checkpoint."""
    section = cfg.get("checkpoint") or {}
    if section.get("load_path"):
        if section.get("auto_trans_ckpt") not in (None, False):
            fail(f"checkpoint.auto_trans_ckpt is {section.get('auto_trans_ckpt')!r}, expected False")
        return section["load_path"]
    return cfg["load_checkpoint"]


def main(argv: list[str]) -> int:
    path, others = config_path(argv)
    if os.environ.get("CLOUD_ENTRY_CONFIG") != path:
        fail(f"CLOUD_ENTRY_CONFIG={os.environ.get('CLOUD_ENTRY_CONFIG')!r} is not {path!r}")
    text = open(path, encoding="utf-8").read()
    for name in ("SECRET_ACCESS_KEY", "ACCESS_KEY_ID"):
        if os.environ.get(name) and os.environ[name] in text:
            fail(f"the effective config holds the value of {name}")
    cfg = yaml.safe_load(text)
    node_ranks = [int(r) for r in os.environ["CLOUD_ENTRY_LOCAL_RANKS"].split(",")]
    if any(k.startswith("MA_") for k in os.environ):
        import moxing
        import obs_io
        if moxing.file is not obs_io.file:
            fail("import moxing did not give obs_io")
    if cfg.get("only_save_strategy"):
        if os.environ.get("ENTRY_CHECK_PASS_EXIT"):   # a strategy pass that fails (compile error)
            fail("strategy pass failed as asked by ENTRY_CHECK_PASS_EXIT")
        strategy_pass(cfg, node_ranks)
        return 0
    if cfg.get("auto_trans_ckpt") is not False:
        fail(f"auto_trans_ckpt is {cfg.get('auto_trans_ckpt')!r}, expected False")
    root = load_path(cfg)
    if not os.path.isabs(root) or not os.path.exists(root):
        fail(f"the checkpoint to load {root!r} is not an existing local path")
    ranks = [int(os.environ["RANK_ID"])] if os.environ.get("RANK_ID") else node_ranks
    if not cfg.get("use_parallel", True):
        ranks = [0]
    if os.path.isfile(os.path.join(root, "latest_checkpointed_iteration.txt")):
        loaded = check_checkpoint2(root, ranks)
        ranks = []
    import mindspore as ms
    import synth

    reference = os.environ.get("ENTRY_CHECK_REFERENCE")
    prefix = os.environ.get("ENTRY_CHECK_PREFIX", "checkpoint_")
    fmt = cfg.get("load_ckpt_format") or (cfg.get("checkpoint") or {}).get("load_ckpt_format") or "ckpt"
    loaded = loaded if not ranks else {}
    for r in ranks:
        folder = root if os.path.isfile(root) else os.path.join(root, f"rank_{r}")
        if os.path.isdir(folder):   # MindSpore loads the last checkpoint in name order
            names = sorted(n for n in os.listdir(folder) if n.endswith(f".{fmt}"))
            if names != [f"{prefix}{r}.{fmt}"]:
                fail(f"rank {r}: {folder} holds {names}, expected only {prefix}{r}.{fmt}")
        file = folder if os.path.isfile(folder) else os.path.join(folder, f"{prefix}{r}.{fmt}")
        if not os.path.isfile(file):
            fail(f"rank {r}: {file} missing")
        params = ms.load_checkpoint(file, format=fmt)
        if not params:
            fail(f"rank {r}: {file} holds no parameters")
        loaded[r] = len(params)
        if reference:
            want = synth.load_params(os.path.join(reference, f"rank_{r}", f"checkpoint_{r}.{fmt}"))
            if want != synth.load_params(file):
                fail(f"rank {r}: {file} differs from MindSpore's conversion")
    out = result_path()
    record = {"ranks": sorted(loaded), "params": loaded, "config": path, "argv": others, "pid": os.getpid(),
              "load_path": root}
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(record, f)
    print(f"entry_launch_check: ranks {sorted(loaded)} loaded and match")
    sleep = float(os.environ.get("ENTRY_CHECK_SLEEP", "0"))
    if sleep:
        def stopped(signum, frame):
            if out:
                with open(out + ".sigterm", "w", encoding="utf-8") as f:
                    f.write(str(signum))
            sys.exit(42)
        signal.signal(signal.SIGTERM, stopped)
        print("entry_launch_check: running", flush=True)
        time.sleep(sleep)
    return int(os.environ.get("ENTRY_CHECK_EXIT", "0"))


def check_checkpoint2(root: str, ranks: list[int]) -> dict[int, int]:
    """What MindFormers' Checkpoint 2.0 loader needs of the folder it is given (research
    CHECKPOINT2.md, section 5), checked independently of the engine's reader: every file
    storage_data names exists (verify_ckpt_valid), every chunk listed has a storage record; and
    each of `ranks`' slices of every parameter its stage holds in the job's layout (taken whole
    over the optimizer shard) is assembled from the chunks the folder lists and equals the
    complete tensors. Returns rank -> parameters checked."""
    import ast
    from reshard.formats import open_reader
    from reshard.layout import TensorLayout
    from reshard.strategy import load_strategy

    it = open(os.path.join(root, "latest_checkpointed_iteration.txt")).read()
    if it != it.strip():
        fail(f"{root}: the tracker holds {it!r}, MindFormers writes the number alone")
    folder = os.path.join(root, f"iteration_{int(it):08d}")
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    storage = {ast.literal_eval(k): v for k, v in meta["storage_data"].items()}
    for (name, _), records in storage.items():
        for rec in records:
            if not os.path.isfile(os.path.join(folder, rec["file_name"])):
                fail(f"{folder}: {rec['file_name']} (parameter {name}) missing: verify_ckpt_valid fails")
    for name, entry in meta["state_dict_metadata"].items():
        for c in entry["chunk"]:
            if (name, tuple(c["global_offset"])) not in storage:
                fail(f"{folder}: no storage record for parameter {name} slice {c['global_offset']}")
    with open_reader(os.environ["ENTRY_CHECK_FULL"]) as r:
        full = {n: r.read(n) for n in r.metas}
    dst = load_strategy(os.environ["ENTRY_CHECK_DST_STRATEGY"])
    readers: dict[str, dict] = {}
    checked: dict[int, int] = {}
    for r in ranks:
        checked[r] = 0
        for name, lays in dst.layouts.items():
            lay = next((x for x in lays if x.stage == dst.stage_of(r)), None)
            if lay is None or name not in full:
                continue
            entry = meta["state_dict_metadata"].get(name)
            if entry is None:
                fail(f"rank {r}: parameter {name} is not in {folder}/metadata.json")
            want = full[name]
            model = TensorLayout(lay.dev_matrix, lay.tensor_map, 1, 0, lay.stage)
            box = model.region(model.block_of(r % dst.stage_devices), want.shape)
            got = want[tuple(slice(a, b) for a, b in box)].copy()
            got[...] = 0
            covered = 0
            frags = entry["axis_fragmentations"]
            for c in entry["chunk"]:
                block, rest = [], c["global_offset"][0]
                for f in reversed(frags):
                    block.append(rest % f)
                    rest //= f
                cbox = [(b * n, (b + 1) * n) for b, n in zip(reversed(block), c["local_shape"])]
                inter = [(max(a, c0), min(b, c1)) for (a, b), (c0, c1) in zip(box, cbox)]
                if any(lo >= hi for lo, hi in inter):
                    continue
                file = os.path.join(folder, storage[(name, tuple(c["global_offset"]))][0]["file_name"])
                if file not in readers:
                    with open_reader(file) as fr:
                        readers[file] = {n: fr.read(n) for n in fr.metas}
                part = readers[file][name]
                got[tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inter, box))] = \
                    part[tuple(slice(lo - c0, hi - c0) for (lo, hi), (c0, _) in zip(inter, cbox))]
                covered += 1
            if not covered or got.tobytes() != want[tuple(slice(a, b) for a, b in box)].tobytes():
                fail(f"rank {r}: parameter {name} assembled from {folder} differs from the complete tensor")
            checked[r] += 1
        if not checked[r]:
            fail(f"rank {r}: no parameter of its stage checked")
    return checked


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
