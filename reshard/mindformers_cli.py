"""`transform_checkpoint.sh`: MindFormers' shell form of the offline tool, positional arguments

    transform_checkpoint.sh SRC SRC_STRATEGY DST DST_STRATEGY WORLD_SIZE PROCESS_NUM [PREFIX]

as MindFormers' mindformers/tools/ckpt_transform/transform_checkpoint.sh takes them (`None` for a
strategy: a complete checkpoint), so scripts written for it run unchanged. Its meaning: every
destination rank converted by PROCESS_NUM processes, each logging to ./log/transform_<i>.log.
MindFormers starts PROCESS_NUM copies of its Python script, one per block of ranks; here one
command converts every rank with PROCESS_NUM worker processes under one memory budget, which
writes the same files. Any flag of transform-checkpoint may follow the positional arguments
(`--max_memory=8G`, `--format=safetensors`, `--log_dir=DIR`, `--dry_run`).
"""
from __future__ import annotations

import argparse
import sys

from .cli import PROG as TOOL, _OneLineParser, convert_from_args, run_command
from .sources import DEFAULT_PREFIX
from obs_io.version import package_version

PROG = "transform_checkpoint.sh"
LOG_DIR = "log"   # MindFormers' script: ./log/transform_${i}.log, in the working folder


def build_parser() -> argparse.ArgumentParser:
    """The positional arguments of MindFormers' script; every other flag goes to transform-checkpoint."""
    p = _OneLineParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s SRC SRC_STRATEGY DST DST_STRATEGY WORLD_SIZE PROCESS_NUM [PREFIX] "
              f"[{TOOL} flags]",
        description="MindFormers' transform_checkpoint.sh, positional form of "
                    f"{TOOL}: convert every destination rank with PROCESS_NUM processes; logs in "
                    f"./{LOG_DIR}/transform_<i>.log.",
        epilog="examples:\n"
               "  # complete -> 8 ranks, 2 processes: out8/llama_7b/rank_0..7/ (MindFormers' layout)\n"
               f"  {PROG} llama_7b.ckpt None out8 strategy8/ 8 2\n"
               "  # 8 -> 4 ranks\n"
               f"  {PROG} out8/llama_7b strategy8/ out4 strategy4/ 4 2\n"
               "  # 4 -> complete, file names llama_0.ckpt\n"
               f"  {PROG} out4/llama_7b strategy4/ out1 None 1 1 llama_\n"
               f"any flag of {TOOL} may follow, e.g. --max_memory=8G; see {TOOL} --help")
    p.add_argument("src", metavar="SRC", help="source checkpoint: file, folder, or model_dir with rank_<r>/")
    p.add_argument("src_strategy", metavar="SRC_STRATEGY", help="its strategy file or folder; None: complete")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("dst_strategy", metavar="DST_STRATEGY",
                   help="destination strategy file or folder; None: complete")
    p.add_argument("world_size", metavar="WORLD_SIZE", type=int,
                   help="destination rank count, checked against DST_STRATEGY")
    p.add_argument("process_num", metavar="PROCESS_NUM", type=int, help="converting processes")
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default=DEFAULT_PREFIX,
                   help=f"output file name prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--version", action="version", version=f"{PROG} {package_version()}",
                   help="print the version and exit")
    return p


def to_tool_args(argv: list[str]) -> list[str]:
    """transform-checkpoint's arguments for the shell form's: the positional ones as MindFormers'
    script passes them to its Python script, the per-process logs in ./log unless --log_dir is
    given, then any further flags as given."""
    args, rest = build_parser().parse_known_args(argv)   # rest: checked by transform-checkpoint
    out = [f"--src_checkpoint={args.src}", f"--src_strategy={args.src_strategy}",
           f"--dst_checkpoint_dir={args.dst}", f"--dst_strategy={args.dst_strategy}",
           f"--world_size={args.world_size}", f"--process_num={args.process_num}",
           f"--prefix={args.prefix}"]
    if not any(a == "--log_dir" or a.startswith("--log_dir=") for a in rest):
        out.append(f"--log_dir={LOG_DIR}")
    return out + rest


def main_sh(argv: list[str] | None = None) -> int:
    """The console script `transform_checkpoint.sh`: exit codes as transform-checkpoint's (0;
    2 for bad input, one line; 130 on Ctrl-C, and the same command resumes)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(PROG, lambda: convert_from_args(to_tool_args(argv)))


if __name__ == "__main__":
    sys.exit(main_sh())
