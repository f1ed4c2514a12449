"""A conversion through the Checkpoint 2.0 path published on object storage (an obs:// / s3://
--dst_checkpoint): the set is written whole in the run's local staging folder, then uploaded
here with obs_io (copy_parallel: multipart through s3transfer, an object visible only once
complete, a failed or interrupted transfer's multipart upload aborted, and what a killed run left
incomplete under the same keys aborted by the next copy).

The order, so that a reader never trusts a partial set:

    1. a record, .reshard/checkpoint2.json: the iteration folder being written, the result's
       digest (reshard.run.result_digest), the source location and strategies, so that a rerun
       of the same conversion may write over what an interrupted one left in that folder, and
       nobody else's save is
    2. the set's files: a Checkpoint 2.0 iteration's shards, metadata.json, common.json (or the
       rank files of a rank-folder output)
    3. conversion_manifest.json (a whole set)
    4. the tracker, latest_checkpointed_iteration.txt, last: MindFormers reads the iteration it
       names, which is whole by then; a run stopped before it leaves the store's tracker as it
       was (none, or an earlier iteration's)
    5. the record removed

Before 2, a tracker on the store naming the iteration folder about to be written is removed (a
reader then finds no checkpoint rather than a mix of two). A rerun whose result the store holds
already (its manifest: the same result digest, every file listed there with its size) uploads
nothing. The job, which owns its output folder, removes what an earlier run left beside the new
set afterwards (stale_files).
"""
from __future__ import annotations

import json
import logging
from typing import Callable, Collection, Iterable

from ... import integrity
from ...errors import ReshardError
from ...execute import MANIFEST_DIR
from ...run import stale_outputs
from ...sources import _join
from .folder import ITERATION_PREFIX, TRACKER, iteration_dir

log = logging.getLogger("reshard")

RECORD = f"{MANIFEST_DIR}/checkpoint2.json"   # below the output: what an unfinished upload writes


def _listing(location: str) -> dict[str, int]:
    import obs_io
    try:
        return {e.name: e.length for e in obs_io.file.list_entries(location, recursive=True) if e.is_file()}
    except FileNotFoundError:   # not there yet
        return {}


def _remote_manifest(location: str) -> integrity.SetManifest | None:
    try:
        return integrity.read(location)
    except ReshardError:   # none, or not ours: a record or a refusal decides
        return None


def _record(location: str) -> dict:
    import obs_io
    try:
        data = json.loads(obs_io.file.read(_join(location, RECORD)))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def complete(location: str, manifest: integrity.SetManifest) -> bool:
    """Every file the manifest lists is at location with its size (the tracker among them: an
    upload stopped before it is not complete)."""
    present = _listing(location)
    return all(present.get(n) == r.size for n, r in manifest.files.items())


def holds(location: str, manifest: integrity.SetManifest) -> bool:
    """The store holds this very result: its manifest has the same result digest, lists every
    file this result writes, and is complete there."""
    return holds_result(location, manifest.result_digest, manifest.files)


def holds_result(location: str, result_digest: str, names: Collection[str]) -> bool:
    """holds() known before converting: the result's digest and the names of the files it
    writes (a local folder or obs:// / s3:// alike); and nothing else in the result's
    iteration folder (else a loader, or --verify, would find files beside it)."""
    theirs = _remote_manifest(location)
    if theirs is None or theirs.result_digest != result_digest or not set(names) <= set(theirs.files):
        return False
    present = _listing(location)
    folders = {n.split("/", 1)[0] for n in names if n.startswith(ITERATION_PREFIX) and "/" in n}
    beside = [n for n in present if n.split("/", 1)[0] in folders and n not in theirs.files
              and not n.rsplit("/", 1)[-1].startswith(".")]   # a file put in its iteration folder since
    return not beside and all(present.get(n) == r.size for n, r in theirs.files.items())


def stale_files(names: Iterable[str], keep: Collection[str]) -> list[str]:
    """Of the files below a Checkpoint 2.0 output (relative names), those beside the set `keep`
    that a loader could take for part of it: files of iteration folders not kept (another
    iteration, another layout's shards in this one) and rank folders' files (an earlier output of
    the legacy formats: reshard.run.stale_outputs keeping no rank). The tracker, the manifest
    and other files are not."""
    names = [n for n in names if n not in keep]
    ranks = set(stale_outputs(names, (), "", "ckpt"))
    return [n for n in names if n in ranks or (n.startswith(ITERATION_PREFIX) and "/" in n)]


def check_folder_free(location: str, folder: str, manifest: integrity.SetManifest | None = None,
                      shown: str = "") -> None:
    """Refuse (ReshardError, one line) an iteration folder on the store holding files that are
    not this conversion's: the record of an unfinished upload, or the manifest of a finished
    one, must name the folder as written by the same conversion (_same: the same result, or
    the same source location and strategies, e.g. a source file touched since); manifest None
    (before converting): by any conversion of this tool. Two saves never mix in one iteration
    folder. shown: the output as the user named it, with its flag, for the message."""
    held = [n for n in _listing(location) if n.startswith(f"{folder}/")]
    if not held:
        return
    record, theirs = _record(location), _remote_manifest(location)
    writers = [record] if record.get("folder") == folder else []
    if theirs is not None and any(n.startswith(f"{folder}/") for n in theirs.files):
        writers.append(_identity(theirs))
    if not any(manifest is None or _same(w, manifest) for w in writers):
        raise ReshardError(f"{shown or location}: {folder} exists there already with {len(held)} file(s) "
                           "(refusing to mix two saves in one iteration folder: remove it or choose "
                           "another output)")
    foreign = _foreign(held, manifest, theirs)
    if foreign:   # put there by someone else: it would stay beside the set
        raise ReshardError(f"{shown or location}: {folder} exists there already and holds {foreign[0]}"
                           f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which no "
                           "conversion of this one wrote (refusing to mix two saves in one iteration "
                           "folder: remove it or choose another output)")


def _foreign(held: list[str], manifest: integrity.SetManifest | None,
             theirs: integrity.SetManifest | None) -> list[str]:
    """Of the files `held` in an iteration folder, those neither this conversion's (manifest;
    None, before converting: none known yet) nor the finished set's there (theirs), hidden
    temporary names aside."""
    if manifest is None:
        return []
    ours = set(manifest.files) | set(theirs.files if theirs is not None else ())
    return sorted(n for n in held if n not in ours and not n.rsplit("/", 1)[-1].startswith("."))


def _identity(manifest: integrity.SetManifest) -> dict:
    """What a record says of the conversion that wrote a set (the record's body too)."""
    return {"result_digest": manifest.result_digest, "source": manifest.source.get("location"),
            "strategies": manifest.strategies}


def _same(writer: dict, manifest: integrity.SetManifest) -> bool:
    mine = _identity(manifest)
    return writer.get("result_digest") == mine["result_digest"] or \
        (writer.get("source"), writer.get("strategies")) == (mine["source"], mine["strategies"])


def unname(location: str, folder: str) -> None:
    """Remove the store's tracker if it names `folder` (whose files are about to be replaced)."""
    import obs_io
    tracker = _join(location, TRACKER)
    try:
        named = obs_io.file.read(tracker).strip()
    except FileNotFoundError:
        return
    if named.isdigit() and folder == iteration_dir(int(named)):
        log.info("removing %s (it names %s, which is written again now)", tracker, folder)
        obs_io.file.remove(tracker)


def upload_set(local: str, location: str, names: list[str], manifest: integrity.SetManifest | None,
               folder: str | None, still_ours: Callable[[], None] = lambda: None) -> None:
    """Upload the set written under local to location in the order of this module's docstring.
    names: the set's files relative to local (the tracker among them for a Checkpoint 2.0);
    manifest: None for a block of ranks (not a set); folder: the iteration folder written (None
    for rank folders: no record, no tracker); still_ours: raises when the output is no longer
    this run's (its claim), called before the manifest and tracker publish the set."""
    import obs_io
    mox = obs_io.file
    if folder is not None:
        assert manifest is not None
        unname(location, folder)
        mox.write(_join(location, RECORD), json.dumps({"folder": folder, **_identity(manifest)}))
    body = sorted(n for n in names if n != TRACKER)
    log.info("uploading %d file(s) to %s", len(body), location)
    mox.copy_parallel(local, location, file_list=body)
    still_ours()
    if manifest is not None:
        integrity.write(location, manifest)
    if TRACKER in names:   # last: the iteration it names is whole on the store now
        mox.copy(_join(local, TRACKER), _join(location, TRACKER))
    if folder is not None:
        mox.remove(_join(location, RECORD))
