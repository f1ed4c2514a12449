"""`transform-checkpoint`: the offline tool, with the flags of MindFormers' transform_checkpoint.py.

Bad input -> one line on stderr naming the culprit, exit code 2, nothing written. Remote
(obs:// / s3://) inputs are staged to a local temporary folder and results published back by
obs_io; all of that lives in `_staged` so the engine itself only sees local paths.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile

from .api import ReshardError, load_strategy, transform, write_merged_strategy

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1048576' -> bytes."""
    t = text.strip().upper()
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[:-len(suffix)]
            break
    unit = t[-1] if t and t[-1] in "KMGT" else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8G or 512M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return int(value * _UNITS[unit])


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors are bad input like any other: one line, exit 2 (via main)."""

    def error(self, message):
        raise ReshardError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="transform-checkpoint",
                       description="Convert a MindSpore checkpoint between parallel layouts.")
    p.add_argument("--src_checkpoint", default=None,
                   help="complete file, folder of complete files, or model_dir with rank_<r>/")
    p.add_argument("--src_strategy", default=None,
                   help="strategy file or folder of the source (empty/None: complete)")
    p.add_argument("--dst_checkpoint", default=None, help="output folder")
    p.add_argument("--dst_strategy", default=None,
                   help="strategy file or folder of the destination (empty/None: complete)")
    p.add_argument("--prefix", default="checkpoint_")
    p.add_argument("--world_size", type=int, default=None,
                   help="destination rank count; checked against the destination strategy")
    p.add_argument("--process_num", type=int, default=1)
    p.add_argument("--format", dest="fmt", choices=("ckpt", "safetensors"), default="ckpt")
    p.add_argument("--engine", choices=("stream", "mindspore"), default="stream",
                   help="mindspore: run MindSpore's own transform_checkpoints (for comparison)")
    p.add_argument("--max_memory", type=parse_size, default=None,
                   help="host memory budget, e.g. 8G (default: half of the available memory)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan (from strategies alone when no checkpoint is given)")
    p.add_argument("--log_dir", default=None, help="one log file per converting process")
    return p


def _none(value: str | None) -> str | None:
    return None if value in (None, "", "None", "none") else value


@contextlib.contextmanager
def _staged(args):
    """Local view of the arguments: remote inputs copied down, the output written to a local
    folder and copied up only after a successful conversion."""
    values = (args.src_checkpoint, args.src_strategy, args.dst_strategy, args.dst_checkpoint)
    if not any(v and "://" in v for v in values):     # local run: don't import boto3 at all
        yield args, None
        return
    import obs_io
    mox = obs_io.file
    with tempfile.TemporaryDirectory(prefix="reshard-stage-") as tmp:
        local = argparse.Namespace(**vars(args))
        for key in ("src_checkpoint", "src_strategy", "dst_strategy"):
            url = getattr(args, key)
            if url and obs_io.is_remote(url):
                if not mox.exists(url):
                    raise ReshardError(f"--{key} {url} does not exist")
                dst = os.path.join(tmp, key, os.path.basename(url.rstrip("/")) or key)
                if mox.is_directory(url):
                    mox.copy_parallel(url, dst)
                else:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    mox.copy(url, dst)
                setattr(local, key, dst)
        upload = None
        if args.dst_checkpoint and obs_io.is_remote(args.dst_checkpoint):
            local.dst_checkpoint = os.path.join(tmp, "dst")
            upload = args.dst_checkpoint
        yield local, upload


def _run_mindspore(a) -> None:
    """MindSpore's own conversion, for comparison: it needs rank_<r>/ folders and one merged
    strategy file, which are prepared in a temporary folder (never in the user's)."""
    import mindspore as ms
    with tempfile.TemporaryDirectory(prefix="reshard-ms-") as tmp:
        src_dir = a.src_checkpoint
        if os.path.isfile(src_dir):
            os.makedirs(os.path.join(tmp, "src", "rank_0"))
            os.symlink(os.path.abspath(src_dir),
                       os.path.join(tmp, "src", "rank_0", os.path.basename(src_dir)))
            src_dir = os.path.join(tmp, "src")
        strategies = []
        for i, s in enumerate((a.src_strategy, a.dst_strategy)):
            if s and os.path.isdir(s):
                out = os.path.join(tmp, f"strategy_{i}.ckpt")
                write_merged_strategy(s, out)
                s = out
            strategies.append(s)
        ms.transform_checkpoints(src_dir, a.dst_checkpoint, a.prefix, strategies[0],
                                 strategies[1], process_num=a.process_num, output_format=a.fmt)


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.src_strategy, args.dst_strategy = _none(args.src_strategy), _none(args.dst_strategy)
    for flag in ("src_checkpoint", "dst_checkpoint"):
        if getattr(args, flag) is None and not args.dry_run:
            raise ReshardError(f"--{flag} is required")
    if args.dry_run and args.engine == "mindspore":
        raise ReshardError("--dry_run prints this engine's plan: it does not go with --engine mindspore")
    if args.process_num < 1:
        raise ReshardError(f"--process_num {args.process_num}: must be at least 1")
    with _staged(args) as (a, upload):
        if args.world_size is not None:
            dst = load_strategy(a.dst_strategy)
            world = dst.world_size if dst else 1
            if world != args.world_size:
                raise ReshardError(f"--world_size {args.world_size} does not match the "
                                   f"destination strategy's {world} ranks")
        if a.engine == "mindspore":
            _run_mindspore(a)
        else:
            report = transform(a.src_checkpoint, a.dst_checkpoint, src_strategy=a.src_strategy,
                               dst_strategy=a.dst_strategy, prefix=a.prefix, fmt=a.fmt,
                               process_num=a.process_num, max_memory=a.max_memory,
                               dry_run=a.dry_run, log_dir=a.log_dir)
            if a.dry_run:
                print(report.plan.dump())
                print(f"expected peak memory: {report.expected_peak_bytes / 2**20:.1f} MiB")
                return 0
            print(f"wrote ranks {report.ranks_written}, skipped (already complete) "
                  f"{report.ranks_skipped}; expected peak {report.expected_peak_bytes / 2**20:.1f}"
                  f" MiB; {report.seconds:.2f}s")
        if upload:
            import obs_io
            obs_io.file.copy_parallel(a.dst_checkpoint, upload)
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(argv)
    except ReshardError as e:
        print(f"transform-checkpoint: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
