"""The `{config}` launch command of the whole-job tests: what a training script would see.

Loads this node's ranks from the effective config's load_checkpoint with mindspore.load_checkpoint
and checks them, and the config, against what the entry promised. With only_save_strategy: True
in the config it plays MindFormers' strategy pass instead: writes this node's
output/strategy/ckpt_strategy_rank_<r>.ckpt (layout from parallel_config) and exits.
Exit 0 when all is well, 3 on any mismatch (the reason on stderr); ENTRY_CHECK_EXIT overrides 0;
ENTRY_CHECK_PASS_EXIT makes the strategy pass fail.
"""
from __future__ import annotations

import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fail(msg: str) -> None:
    print(f"entry_launch_check: {msg}", file=sys.stderr)
    sys.exit(3)


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


def main(config_path: str) -> int:
    if os.environ.get("CLOUD_ENTRY_CONFIG") != config_path:
        fail(f"CLOUD_ENTRY_CONFIG={os.environ.get('CLOUD_ENTRY_CONFIG')!r} is not {config_path!r}")
    text = open(config_path, encoding="utf-8").read()
    for name in ("SECRET_ACCESS_KEY", "ACCESS_KEY_ID"):
        if os.environ.get(name) and os.environ[name] in text:
            fail(f"the effective config holds the value of {name}")
    cfg = yaml.safe_load(text)
    ranks = [int(r) for r in os.environ["CLOUD_ENTRY_LOCAL_RANKS"].split(",")]
    if any(k.startswith("MA_") for k in os.environ):
        import moxing
        import obs_io
        if moxing.file is not obs_io.file:
            fail("import moxing did not give obs_io")
    if cfg.get("only_save_strategy"):
        if os.environ.get("ENTRY_CHECK_PASS_EXIT"):   # a strategy pass that fails (compile error)
            fail("strategy pass failed as asked by ENTRY_CHECK_PASS_EXIT")
        strategy_pass(cfg, ranks)
        return 0
    if cfg.get("auto_trans_ckpt") is not False:
        fail(f"auto_trans_ckpt is {cfg.get('auto_trans_ckpt')!r}, expected False")
    root = cfg["load_checkpoint"]
    if not os.path.isabs(root) or not os.path.exists(root):
        fail(f"load_checkpoint {root!r} is not an existing local path")
    import mindspore as ms
    import synth

    if not cfg.get("use_parallel", True):
        ranks = [0]
    reference = os.environ.get("ENTRY_CHECK_REFERENCE")
    prefix = os.environ.get("ENTRY_CHECK_PREFIX", "checkpoint_")
    fmt = cfg.get("load_ckpt_format") or "ckpt"
    loaded = {}
    for r in ranks:
        path = root if os.path.isfile(root) else os.path.join(root, f"rank_{r}", f"{prefix}{r}.{fmt}")
        if not os.path.isfile(path):
            fail(f"rank {r}: {path} missing")
        params = ms.load_checkpoint(path, format=fmt)
        if not params:
            fail(f"rank {r}: {path} holds no parameters")
        loaded[r] = len(params)
        if reference:
            want = synth.load_params(os.path.join(reference, f"rank_{r}", f"checkpoint_{r}.{fmt}"))
            got = synth.load_params(path)
            if want != got:
                fail(f"rank {r}: {path} differs from MindSpore's conversion")
    out = os.environ.get("ENTRY_CHECK_RESULT")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"ranks": sorted(loaded), "params": loaded, "config": config_path}, f)
    print(f"entry_launch_check: ranks {sorted(loaded)} loaded and match")
    return int(os.environ.get("ENTRY_CHECK_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
