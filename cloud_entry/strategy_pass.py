"""The destination strategy when the user gives none: a strategy pass of the launch command.

Each node runs the command once with `only_save_strategy: True` (MindFormers compiles, writes
<output_dir>/strategy/ and exits), publishes its files on the store with a node marker naming
them, then waits (bounded) for every node's marker of this run and downloads all files. The
markers, not a listing of strategy/, say what belongs to this run: old files may lie there.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import obs_io
from reshard.sources import strategy_files

from cloud_entry import config as config_mod
from cloud_entry import launch
from cloud_entry.errors import BlockFailed, EntryError
from cloud_entry.markers import write_atomic
from cloud_entry.paths import JobPaths, join
from cloud_entry.waits import Backoff, poll

log = logging.getLogger(__name__)


def node_marker(node: int) -> str:
    return f"strategy_saved_node_{node}.txt"   # .txt: never read as a strategy file


def failure_marker(node: int) -> str:
    return f"strategy_failed_node_{node}.txt"


def clear_own_markers(layout: JobPaths, node: int) -> None:
    """Before its pass a node removes its own markers of any earlier run: it is their only
    writer, and a run id repeated across runs (the argument digest) must not revive them."""
    if layout.store_strategy == layout.local_strategy:
        return
    for name in (node_marker(node), failure_marker(node)):
        try:
            obs_io.file.remove(join(layout.store_strategy, name))
        except FileNotFoundError:
            pass


def publish_failure(layout: JobPaths, node: int, run_id: str, error: str) -> None:
    """Tell the other nodes, waiting in gather(), that this node's strategy pass failed, so they
    stop with its error instead of at their timeout. One node with a local store: nobody waits."""
    if layout.store_strategy != layout.local_strategy:
        write_atomic(join(layout.store_strategy, failure_marker(node)),
                     json.dumps({"run_id": run_id, "error": error}))


def local_strategy_files(folder: str) -> list[str]:
    """The strategy files of a local folder of ours, by the engine's rule."""
    if not os.path.isdir(folder):
        return []
    return strategy_files([n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))], folder)


def run_pass(cfg: dict[str, Any], layout: JobPaths, launch_cmd: list[str], env: dict[str, str],
             timeout: float) -> list[str]:
    path = join(layout.work_dir, "strategy_pass_config.yaml")
    config_mod.dump(config_mod.for_strategy_pass(cfg, layout.output_dir), path)
    code = launch.run_command(launch.command(launch_cmd, path), dict(env, CLOUD_ENTRY_CONFIG=path),
                      timeout, what="strategy pass")
    if code != 0:
        raise EntryError(f"strategy pass: the launch command exited with {code} "
                         f"(config {path} has only_save_strategy: True)")
    files = local_strategy_files(layout.local_strategy)
    if not files:
        raise EntryError(f"strategy pass: the launch command wrote no *.ckpt/*.json into "
                         f"{layout.local_strategy}")
    log.info("strategy pass wrote %d file(s): %s", len(files), ", ".join(files))
    return files


def gather(layout: JobPaths, files: list[str], node: int, num_nodes: int, run_id: str,
           timeout: float, backoff: Backoff = Backoff(), **poll_kw: Callable) -> list[str]:
    """Publish this node's strategy files on the store and collect every node's into the local
    strategy folder. Returns all file names. One node with a local store: nothing to move."""
    store = layout.store_strategy
    if store == layout.local_strategy:
        return files
    obs_io.file.copy_parallel(layout.local_strategy, store, file_list=files)
    write_atomic(join(store, node_marker(node)), json.dumps({"run_id": run_id, "files": files}))
    listed: dict[int, list[str]] = {}

    def this_run(name: str) -> dict | None:
        try:
            data = json.loads(obs_io.file.read(join(store, name)))
        except (FileNotFoundError, ValueError):
            return None
        return data if data.get("run_id") == run_id else None

    def check():
        for other in range(num_nodes):
            if other in listed:
                continue
            saved = this_run(node_marker(other))
            if saved is not None:
                listed[other] = list(saved["files"])
                continue
            failed = this_run(failure_marker(other))
            if failed is not None:
                raise BlockFailed(f"strategy pass failed on node {other}: {failed.get('error')}")
        return True if len(listed) == num_nodes else None

    try:
        poll(check, timeout, "strategy files of every node", backoff,
             status=lambda: f"nodes {sorted(set(range(num_nodes)) - set(listed))} in {store}", **poll_kw)
    except EntryError as exc:
        missing = sorted(set(range(num_nodes)) - set(listed))
        raise type(exc)(f"{exc}: nodes {missing} published none in {store}") from None
    others = sorted({f for n, fs in listed.items() if n != node for f in fs} - set(files))
    if others:
        obs_io.file.copy_parallel(store, layout.local_strategy, file_list=others)
    return sorted(set(files) | set(others))
