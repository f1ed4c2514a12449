"""transform-checkpoint with a Checkpoint 2.0 source or output (local paths).

Reached through the registered format (format.Checkpoint2Format): reshard/cli.py asks every
format for its flags (add_arguments) and, before a source is classified, whether the run is its
(command -> wants, run). A Checkpoint 2.0 source may be local, obs:// or s3://. What
this path does not do yet is refused in one line: an obs:// / s3:// output or strategy, --rank_id
with a Checkpoint 2.0 output (written whole), --engine mindspore, --step. Whole outputs get the
integrity manifest (`--verify`).
"""
from __future__ import annotations

import argparse
import os

from ...errors import ReshardError
from ...plan import PlanPolicy
from ...sources import check_output, is_url
from ...strategy import load_strategy
from .convert import open_source, plan, transform
from .folder import is_checkpoint2
from .write import RELEASES

FORMAT = "checkpoint2"   # format.FORMAT.name
LEGACY_PREFIX = "checkpoint_"   # transform-checkpoint's --prefix default (rank file names)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iteration", type=int, default=None, metavar="N",
                   help="Checkpoint 2.0: the iteration of a Checkpoint 2.0 source to read "
                        "(default: the one latest_checkpointed_iteration.txt names); with another "
                        "source and --format checkpoint2, the iteration written (a Checkpoint 2.0 "
                        "source's is kept)")
    p.add_argument("--mindformers_release", choices=RELEASES, default=None,
                   help="--format checkpoint2: the MindFormers release that loads the output "
                        "(common.json's fields, metadata.json's form; default: the source's, else "
                        "2.1)")


def wants(args) -> bool:
    """Whether this run reads or writes Checkpoint 2.0: --format checkpoint2, --iteration, or a
    source folder holding latest_checkpointed_iteration.txt (or an iteration folder; on object
    storage one or two requests tell)."""
    src = args.src_checkpoint
    if args.fmt == FORMAT or args.iteration is not None:
        return True
    if src and is_url(src):
        from ...cli import _storage      # a storage failure: one line naming the flag
        with _storage("--src_checkpoint", src):
            return is_checkpoint2(src)
    return bool(src and os.path.isdir(src) and is_checkpoint2(src))


def run(args) -> int:
    """The conversion (flags already checked by the caller); prints the result line."""
    if args.step is not None:
        raise ReshardError("--step does not go with a Checkpoint 2.0 source or output (--iteration "
                           "names the iteration)")
    if args.engine != "stream":
        raise ReshardError("--engine mindspore does not go with a Checkpoint 2.0 source or output")
    dst_root = args.dst_checkpoint or args.dst_checkpoint_dir
    if args.dst_checkpoint_dir:
        dst_root = os.path.join(args.dst_checkpoint_dir,
                                os.path.basename(os.path.normpath(args.src_checkpoint)))
    for flag, value in (("--dst_checkpoint", dst_root), ("--src_strategy", args.src_strategy),
                        ("--dst_strategy", args.dst_strategy)):
        if value and is_url(value):
            raise ReshardError(f"{flag} {value}: Checkpoint 2.0 conversions take local paths here yet "
                               f"(a Checkpoint 2.0 source may be obs:// or s3://)")
    check_output(dst_root, "--dst_checkpoint", {"--src_checkpoint": args.src_checkpoint,
                                                "--src_strategy": args.src_strategy,
                                                "--dst_strategy": args.dst_strategy})
    to_ckpt2 = args.fmt == FORMAT
    from_ckpt2 = is_checkpoint2(args.src_checkpoint)
    dst_strategy = load_strategy(args.dst_strategy)
    world = dst_strategy.world_size if dst_strategy else 1
    if args.world_size is not None and world != args.world_size:
        raise ReshardError(f"--world_size {args.world_size} does not match the destination "
                           f"strategy's {world} ranks")
    dst_ranks, process_num = None, args.process_num
    if args.rank_id is not None:   # one block of rank folders, as the engine's path converts it
        if to_ckpt2:
            raise ReshardError("--rank_id: a Checkpoint 2.0 folder is written whole, not in blocks")
        from ...cli import _block
        dst_ranks, process_num = _block(args.rank_id, world, args.process_num), 1
    if args.dry_run:   # the plan (for a Checkpoint 2.0 output: of its shards, model and opt together)
        src = open_source(args.src_checkpoint, load_strategy(args.src_strategy),
                          iteration=args.iteration if from_ckpt2 else None,
                          local_root=os.path.join(dst_root, "<fetched>"))
        p = plan(src, dst_strategy, fmt="safetensors" if to_ckpt2 else args.fmt,
                 prefix=args.prefix, local_root=os.path.join(dst_root, "<fetched>"), dst_ranks=dst_ranks)
        print(p.dump(destination=dst_root))
        if to_ckpt2:
            print("output: a Checkpoint 2.0 iteration folder (each rank's model and opt values as "
                  "MindFormers' shards, metadata.json, common.json, the tracker)")
        return 0
    written = transform(args.src_checkpoint, dst_root, dst_strategy=dst_strategy, dst_ranks=dst_ranks,
                        src_strategy=load_strategy(args.src_strategy), fmt=args.fmt,
                        iteration=args.iteration if from_ckpt2 or not to_ckpt2 else None,
                        dst_iteration=None if from_ckpt2 else args.iteration,
                        release=args.mindformers_release,
                        prefix=None if to_ckpt2 and args.prefix == LEGACY_PREFIX else args.prefix,
                        process_num=process_num, max_memory=args.max_memory,
                        policy=PlanPolicy(args.allow_missing_params, args.keep_unnamed_params))
    if dst_ranks is None:   # a whole set: its integrity manifest, last, as the engine's path
        # writes it (a block is not a set)
        from ... import integrity
        from ...run import result_digest
        manifest = integrity.SetManifest(
            integrity.records(written.checksums), result_digest(written.plan, written.plan.local_root),
            {"location": args.src_checkpoint, "files": written.plan.source.used_names()},
            {"src": args.src_strategy or (written.plan.src_strategy.source if written.plan.src_strategy
                                          else ""), "dst": args.dst_strategy or ""},
            integrity.tool_version())
        integrity.write(dst_root, manifest)
    print(f"done: wrote {len(written.files)} file(s) to {dst_root}"
          + (" (Checkpoint 2.0)" if to_ckpt2 else ""))
    return 0
