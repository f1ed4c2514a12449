"""transform-checkpoint with a Checkpoint 2.0 source or output.

Reached through the registered format (format.Checkpoint2Format): reshard/cli.py asks every
format for its flags (add_arguments) and, before a source is classified, whether the run is its
(command -> wants, run). The source may be local, obs:// or s3:// (a Checkpoint 2.0, or a legacy
one: rank folders with --src_strategy, a complete checkpoint; read in place by ranged GETs or
fetched, as the engine reads them); strategies too (copied into the run's staging folder, as the
engine's path does). The conversion is planned first, nothing written: an output that holds its
result already (its integrity manifest records the result digest computed from the plan, and
every file is there whole) is left as it is, exit 0, nothing converted or uploaded; a local
Checkpoint 2.0 whose iteration folder holds anything else (another conversion's save) is refused
in one line, while one a killed run left (shards with the engine's records, no metadata.json)
resumes. An obs:// / s3:// output is written whole in the staging folder and then uploaded
(publish.py: the tracker last, never a partial object under a final name). --rank_id with a
Checkpoint 2.0 output writes the shards of the block's destination ranks into a shared local
output; the block that ends last (the output folder locked while it looks) finds every shard
there and finishes the set (metadata.json, common.json, the tracker, the manifest). Refused in
one line: --rank_id with a remote Checkpoint 2.0 output, --engine mindspore, --step (a step's
<epoch>_<step> names no iteration). Whole outputs get the integrity manifest (`--verify`, local
or remote).
"""
from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass, replace

from obs_io.cleanup import on_failure
from obs_io.urls import join as _join

from ... import integrity
from ...cli import (_Stage, _block, _check_no_stale_files, _claimed, _dst_flag, _show_as, _storage,
                    _strategy_arg, stage_root)
from ...claim import locked_folder
from ...config import DEFAULT
from ...errors import ReshardError
from ...plan import PlanPolicy, ranks_text
from ...run import conversion_inputs, inputs_id
from ...sources import DEFAULT_PREFIX, RANK_DIR, check_output, is_url
from ...strategy import Strategy
from . import publish
from .convert import (Checkpoint2Conversion, RankConversion, Written, open_checkpoint, plan, prepare_checkpoint2,
                      prepare_ranks)
from .folder import COMMON, ITERATION_PREFIX, METADATA, TRACKER, is_checkpoint2, iteration_dir, resolve_iteration
from .format import NO_STEP, Checkpoint2Format
from .write import RELEASES

FORMAT = Checkpoint2Format.name


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
    if args.fmt == FORMAT or args.iteration is not None or args.mindformers_release is not None:
        return True   # (the release without --format checkpoint2 is refused there: _refuse)
    if src and is_url(src):
        with _storage("--src_checkpoint", src):
            return is_checkpoint2(src)
    return bool(src and os.path.isdir(src) and is_checkpoint2(src))


@dataclass
class _Conversion:
    """What run converts, every flag resolved: the output as the user named it (dst: a local
    folder or an obs:// / s3:// URL) and where it is written (local: dst itself, or a remote
    output's copy in the run's staging folder); the strategies parsed (remote ones copied into
    the staging folder first); the kinds of source and output; the destination ranks (None:
    all) and the processes converting them."""
    dst: str
    local: str
    src_strategy: Strategy | None
    dst_strategy: Strategy | None
    from_ckpt2: bool
    to_ckpt2: bool
    dst_ranks: list[int] | None
    process_num: int

    @property
    def remote(self) -> bool:
        return is_url(self.dst)


def run(args) -> int:
    """The conversion (flags already checked by the caller); prints the result line. Remote
    strategies are copied into the run's staging folder (reshard.cli.stage_root), a remote output
    is written there whole and then published (publish.py); the folder goes at the end. The
    conversion is planned first (nothing written): an output already holding its result (its
    manifest records the same result digest and the files are whole) is left as it is."""
    _refuse(args)
    _destination(args)
    stage = _Stage(stage_root(args))
    try:
        c = _resolve(args, stage)
        if args.dry_run:
            return _dry_run(args, c)
        conversion = _prepare(args, c)
        if _holds(args, c, conversion):
            return _held(c, "nothing converted" + (" or uploaded" if c.remote else ""))
        if c.remote:
            written = _convert_remote(args, c, conversion)
            if written is None:   # published by another run of it meanwhile
                return _held(c, "nothing uploaded")
        elif c.to_ckpt2 and c.dst_ranks is not None:
            return _convert_local(args, c, conversion, _write_block)
        else:
            written = _convert_local(args, c, conversion, _write_whole)
    finally:
        stage.close()
    print(f"done: {_wrote(written)} to {c.dst}" + (" (Checkpoint 2.0)" if c.to_ckpt2 else ""))
    return 0


def _held(c: _Conversion, what: str) -> int:
    print(f"done: {c.dst} already holds this conversion (its {integrity.MANIFEST_NAME} records the "
          f"same result and its files are whole); {what}")
    return 0


def _convert_remote(args, c: _Conversion, conversion) -> Written | None:
    """A remote output: converted privately in the staging folder, then published (claimed
    then); None when the store holds this very result by then (nothing uploaded)."""
    written = conversion.write_all()   # a block of rank folders is not a set: no manifest
    manifest = _manifest(args, conversion, written, c.local) if c.dst_ranks is None else None
    return None if _publish(args, c, written, manifest) else written


def _convert_local(args, c: _Conversion, conversion, write):
    """A local output: write(args, c, conversion) with the output claimed (another run writing
    it meanwhile is refused at once; the folder goes again if this run made it and nothing
    came), a Checkpoint 2.0's iteration folder checked first (write.check_iteration_free:
    nothing but shards of this conversion)."""
    made = not os.path.exists(c.dst)   # the claim makes it
    with on_failure(_remove_if_empty, c.dst) if made else contextlib.nullcontext(), \
            _claimed(args, None, c.src_strategy, c.dst_strategy, _run_id(args, c)):
        if c.to_ckpt2:
            conversion.check_free()
        return write(args, c, conversion)


def _write_whole(args, c: _Conversion, conversion) -> Written:
    """Every file of the conversion (a --rank_id block of rank folders: its ranks'), then a
    whole set's manifest."""
    written = conversion.write_all()
    if c.dst_ranks is None:   # a block of rank folders is not a set
        _manifest(args, conversion, written, c.local)
    return written


def _wrote(written: Written) -> str:
    """'wrote N file(s)', and how many this same conversion had written before (kept)."""
    kept = len(set(written.files) - set(written.files_written))   # a block's set files are written only
    return f"wrote {len(written.files_written)} file(s)" + \
        (f", kept {kept} written by this same conversion before" if kept else "")


def _remove_if_empty(folder: str) -> None:
    """The output folder this run made, removed when a failure left nothing in it."""
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _refuse(args) -> None:
    """What this path does not do, one line each, before anything is read."""
    if args.step is not None:
        raise ReshardError(f"--step does not go with a Checkpoint 2.0 source or output: {NO_STEP}; "
                           "--iteration names the iteration")
    if args.engine != "stream":
        raise ReshardError("--engine mindspore does not go with a Checkpoint 2.0 source or output")
    if args.mindformers_release is not None and args.fmt != FORMAT:
        raise ReshardError(f"--mindformers_release {args.mindformers_release}: names the release a "
                           f"Checkpoint 2.0 output is written for; it goes with --format {FORMAT}")
    if args.iteration is not None and args.iteration < 0:
        raise ReshardError(f"--iteration {args.iteration}: must be at least 0")
    if args.rank_id is not None and args.fmt == FORMAT and is_url(args.dst_checkpoint or args.dst_checkpoint_dir or ""):
        raise ReshardError(f"--rank_id with --format {FORMAT}: the blocks share a local output folder; "
                           "an obs:// / s3:// output is written whole (leave out --rank_id)")


def _destination(args) -> None:
    """args.dst_checkpoint as the conversion writes it: --dst_checkpoint_dir with the source's
    folder name added, as MindFormers lays it out (a local path or a URL alike)."""
    if args.dst_checkpoint_dir:
        src = args.src_checkpoint
        name = src.rstrip("/").rsplit("/", 1)[-1] if is_url(src) else os.path.basename(os.path.normpath(src))
        args.dst_checkpoint = _join(args.dst_checkpoint_dir, name)


def _resolve(args, stage: _Stage) -> _Conversion:
    """The flags as one _Conversion, checked (one line naming the flag): the output not an
    input, the world size the destination strategy's, --rank_id a block's leader, a remote
    output free for this result."""
    dst = args.dst_checkpoint or ""   # none: a --dry_run's
    if dst:
        check_output(dst, _dst_flag(args), {"--src_checkpoint": args.src_checkpoint,
                                            "--src_strategy": args.src_strategy,
                                            "--dst_strategy": args.dst_strategy})
    src_strategy = _strategy_arg("--src_strategy", args.src_strategy, stage)
    dst_strategy = _strategy_arg("--dst_strategy", args.dst_strategy, stage)
    world = dst_strategy.world_size if dst_strategy else 1
    if args.world_size is not None and world != args.world_size:
        raise ReshardError(f"--world_size {args.world_size} does not match the destination "
                           f"strategy's {world} ranks")
    dst_ranks, process_num = None, args.process_num
    if args.rank_id is not None:   # one block of rank folders, as the engine's path converts it
        dst_ranks, process_num = _block(args.rank_id, world, args.process_num), 1
    to_ckpt2 = args.fmt == FORMAT
    c = _Conversion(dst, dst, src_strategy, dst_strategy, is_checkpoint2(args.src_checkpoint), to_ckpt2,
                    dst_ranks, process_num)
    if args.iteration is not None and not (to_ckpt2 or c.from_ckpt2) and _no_iterations(args.src_checkpoint):
        raise ReshardError(f"--iteration {args.iteration}: --src_checkpoint {args.src_checkpoint} holds no "
                           f"Checkpoint 2.0 (no {TRACKER}, no {ITERATION_PREFIX}<n> folder); --iteration "
                           f"reads one, or names the iteration --format {FORMAT} writes")
    if not to_ckpt2:
        _check_no_stale_files(args, world)   # the engine's rule for rank folders
    elif c.remote:
        _check_iteration_free(args, c)
    elif dst:
        _check_no_other_save(args, c)
    if c.remote and not args.dry_run:
        c.local = stage.dir("dst_checkpoint")
        _show_as(c.local, dst)
    return c


def _output_iteration(args, c: _Conversion) -> int | None:
    """The iteration a Checkpoint 2.0 output gets, where it is known before converting: a
    Checkpoint 2.0 source's (the one --iteration or its tracker names), else --iteration
    (None: the legacy source's step, read when converting)."""
    if not c.from_ckpt2:
        return args.iteration
    with _storage("--src_checkpoint", args.src_checkpoint):
        return resolve_iteration(args.src_checkpoint, args.iteration)[2]


def _check_iteration_free(args, c: _Conversion) -> None:
    """A remote Checkpoint 2.0 output whose iteration is known before converting (a Checkpoint
    2.0 source's, or --iteration): its folder there holds no other save (checked again with
    the result's digest before the upload)."""
    iteration = _output_iteration(args, c)
    if iteration is not None:
        with _storage(_dst_flag(args), c.dst):
            publish.check_folder_free(c.dst, iteration_dir(iteration), shown=f"{_dst_flag(args)} {c.dst}")


def _no_iterations(src: str) -> bool:
    """A local source folder without any iteration_<n> folder (a URL: not looked at here)."""
    return not is_url(src) and os.path.isdir(src) and \
        not any(n.startswith(ITERATION_PREFIX) for n in os.listdir(src))


def _check_no_other_save(args, c: _Conversion) -> None:
    """A local Checkpoint 2.0 output holds no other save: no other iteration folder and no
    rank folders (the tracker this run writes would name one iteration beside files of others:
    a loader, or a later --iteration, could take them for this conversion's), as the engine's
    rule refuses other rank files in a rank-folder output. The iteration this run writes may
    hold its own unfinished shards (write.check_iteration_free decides)."""
    if not os.path.isdir(c.dst):
        return
    iteration = _output_iteration(args, c)
    own = iteration_dir(iteration) if iteration is not None else None
    other = sorted(n for n in os.listdir(c.dst)
                   if n != own and (n.startswith(ITERATION_PREFIX) or RANK_DIR.match(n))
                   and os.path.isdir(os.path.join(c.dst, n)) and os.listdir(os.path.join(c.dst, n)))
    if other:
        raise ReshardError(f"{_dst_flag(args)} {c.dst} holds another save ({', '.join(other[:3])}"
                           f"{', ...' if len(other) > 3 else ''}): the tracker this conversion writes "
                           "would sit beside it; choose an empty folder or remove it")


def _prepare(args, c: _Conversion) -> RankConversion | Checkpoint2Conversion:
    """The conversion planned into c.local, every check of the input done, nothing written
    (the iteration folder of a Checkpoint 2.0 output not checked yet: it may hold this very
    result)."""
    common = dict(dst_strategy=c.dst_strategy, src_strategy=c.src_strategy,
                  process_num=c.process_num, max_memory=args.max_memory,
                  policy=PlanPolicy(args.allow_missing_params, args.keep_unnamed_params))
    if not c.to_ckpt2:
        return prepare_ranks(args.src_checkpoint, c.local, fmt=args.fmt, iteration=args.iteration,
                             prefix=args.prefix, dst_ranks=c.dst_ranks, **common)
    return prepare_checkpoint2(
        args.src_checkpoint, c.local, iteration=args.iteration if c.from_ckpt2 else None,
        dst_iteration=None if c.from_ckpt2 else args.iteration, release=args.mindformers_release,
        prefix=None if args.prefix == DEFAULT_PREFIX else args.prefix, check_free=False, **common)


def _holds(args, c: _Conversion, conversion) -> bool:
    """The output holds this very result already, whole (publish.holds_result: its manifest
    records the result digest computed from the plan, and every file this result writes is
    there with its recorded size, nothing else in its iteration folder), on the store or, for a
    Checkpoint 2.0, in a local folder. A local rank-folder output: no (the engine keeps
    the ranks its records vouch for); a block of rank folders: no (not a set)."""
    if not (c.remote or c.to_ckpt2) or (c.dst_ranks is not None and not c.to_ckpt2):
        return False
    with _storage(_dst_flag(args), c.dst):
        return publish.holds_result(c.dst, conversion.result_digest(), conversion.names())


def _write_block(args, c: _Conversion, conversion: Checkpoint2Conversion) -> int:
    """--rank_id with a Checkpoint 2.0 output: the shards of the block's destination ranks
    (write_ranks), then, with the output folder locked (claim.locked_folder: two blocks ending
    at once take turns; where flock is not supported both may finish, writing identical
    files), the set finished if every shard of the plan is there as the engine recorded writing
    it for this conversion (by this run or another block's): metadata.json, common.json, the
    tracker, then the integrity manifest. Prints the result line."""
    written = conversion.write_ranks(c.dst_ranks)
    ranks = f"destination ranks {ranks_text(c.dst_ranks)} of {conversion.iteration.world}"
    with locked_folder(c.dst, DEFAULT.claim_lock_seconds, f"{_dst_flag(args)} {c.dst}"):
        if _holds(args, c, conversion):
            status = "every block is written: the set was finished by another block"
        elif (shards := conversion.shards_done()) is None:
            status = (f"the set is finished ({METADATA}, {COMMON}, {TRACKER}) by the block that "
                      "ends last")
        else:
            finished = conversion.finish()
            every = {**shards, **finished}
            _manifest(args, conversion, Written(sorted(every), every, conversion.plan, []), c.local)
            written.files_written.extend(finished)
            status = f"every block is written: the set finished ({METADATA}, {COMMON}, {TRACKER})"
    print(f"done: {_wrote(written)} to {c.dst} (Checkpoint 2.0, {ranks}); {status}")
    return 0


def _dry_run(args, c: _Conversion) -> int:
    """The plan; for a Checkpoint 2.0 output, per destination rank the shard files it writes
    (model, opt), then what the set is made of: destination ranks and shard files counted
    apart."""
    if not c.to_ckpt2:
        fetched = os.path.join(c.dst or ".", "<fetched>")
        src = open_checkpoint(args.src_checkpoint, c.src_strategy,
                              iteration=args.iteration if c.from_ckpt2 else None, local_root=fetched)
        p = plan(src, c.dst_strategy, fmt=args.fmt, prefix=args.prefix, local_root=fetched,
                 dst_ranks=c.dst_ranks)
        print(p.dump(destination=c.dst))
        _describe_source(src)
        return 0
    c.local = c.dst or "<destination>"
    conversion = _prepare(args, c)
    it = conversion.iteration
    block = it.block(c.dst_ranks)
    shards: dict[int, list[str]] = {}
    for rp in block.ranks:
        shards.setdefault(it.shard_of(rp.rank)[0], []).append(rp.path)
    p = conversion.plan
    shown = replace(p, ranks=tuple(replace(rp, path=" + ".join(shards[rp.rank])) for rp in p.ranks if rp.rank in shards),
                    same_as={d: f for d, f in p.same_as.items() if d in shards and f in shards})
    print(shown.dump(destination=c.dst))
    _describe_source(conversion.src)
    kinds = [it.shard_of(rp.rank)[1] for rp in block.ranks]
    extra = "" if c.dst_ranks is not None else f", then {METADATA}, {COMMON} and {TRACKER}"
    print(f"output: Checkpoint 2.0 {it.folder}: destination ranks {ranks_text(sorted(shards))} of {it.world}, "
          f"{len(kinds)} shard file(s) ({kinds.count('model')} model, {kinds.count('opt')} opt){extra}")
    return 0


def _describe_source(src) -> None:
    """A Checkpoint 2.0 source's shard files as the plan numbers them (source ranks)."""
    ck = src.checkpoint2
    if ck is not None:
        world = ck.world_size
        print(f"source shards: Checkpoint 2.0 {iteration_dir(ck.iteration)} of {world} rank(s): the plan's source "
              f"ranks 0-{world - 1} are its model shard files"
              + (f", {world}-{2 * world - 1} its opt shard files" if ck.files["opt"] else ""))


def _manifest(args, conversion, written: Written, local: str) -> integrity.SetManifest:
    """A whole set's integrity manifest, written last into local, as the engine's path writes
    it; its result digest the conversion's (computable before converting: a rerun's check)."""
    p = written.plan
    manifest = integrity.SetManifest(
        integrity.records(written.checksums), conversion.result_digest(),
        {"location": args.src_checkpoint, "files": p.source.used_names()},
        {"src": args.src_strategy or (p.src_strategy.source if p.src_strategy else ""),
         "dst": args.dst_strategy or ""},
        integrity.tool_version())
    integrity.write(local, manifest)
    return manifest


def _publish(args, c: _Conversion, written: Written, manifest: integrity.SetManifest | None) -> bool:
    """The set written in c.local uploaded to c.dst (publish.upload_set: the tracker last);
    True when the store holds this very result already (nothing uploaded)."""
    folder = None
    if c.to_ckpt2:
        folder = next(n.split("/", 1)[0] for n in written.files if n.startswith(ITERATION_PREFIX))
    with _storage(_dst_flag(args), c.dst), \
            _claimed(args, None, c.src_strategy, c.dst_strategy, _run_id(args, c)) as claim:
        if manifest is not None and publish.holds(c.dst, manifest):
            return True
        if folder is not None:
            publish.check_folder_free(c.dst, folder, manifest, f"{_dst_flag(args)} {c.dst}")
        publish.upload_set(c.local, c.dst, written.files, manifest, folder, claim.check)
    return False


def _run_id(args, c: _Conversion) -> str:
    """What defines this conversion's result, for its claim on a remote output (reshard.claim:
    a run of other inputs uploading there meanwhile is refused; the same command again joins
    it): the engine's conversion_inputs (strategies, prefix, format) with the source as named,
    its iteration and the release, as reshard.inputs_id digests them."""
    src = args.src_checkpoint if is_url(args.src_checkpoint) else os.path.abspath(args.src_checkpoint)
    return inputs_id({**conversion_inputs(None, c.src_strategy, c.dst_strategy, args.prefix, args.fmt),
                      "source": src, "iteration": args.iteration, "release": args.mindformers_release})
