"""Which machine this is: node count, node index, cards per node, this node's global ranks.

Arguments win over the environment because a user who passes `--npu_num_per_node=16` knows
better than a platform default; the rank table wins over the arithmetic because it is what
the collective library will actually use.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Mapping

from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec

log = logging.getLogger(__name__)

# MindFormers' own test for "this is ModelArts" (it then imports moxing).
MODELARTS_VARS = ("MA_LOG_DIR", "MA_JOB_DIR", "MA_LOCAL_LOG_PATH", "S3_ACCESS_KEY_ID",
                  "S3_SECRET_ACCESS_KEY", "BATCH_GROUP_NAME")


@dataclass(frozen=True)
class Cluster:
    num_nodes: int
    node_index: int
    cards_per_node: int
    node_ranks: tuple[int, ...]     # this node's global ranks
    world_size: int


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise EntryError(f"environment {name}={text!r}: expected an integer") from None
    if value < 0 or (value == 0 and name != "VC_TASK_INDEX"):
        raise EntryError(f"environment {name}={text!r}: out of range")
    return value


def _first(*pairs: tuple[str, int | None]) -> tuple[str, int | None]:
    for source, value in pairs:
        if value is not None:
            return source, value
    return "", None


def _rank_table(path: str, node_index: int | None, env: Mapping[str, str]) -> tuple[int, int, tuple[int, ...]]:
    """(node count, this node's index, its ranks) from a JSON rank table."""
    try:
        with open(path, encoding="utf-8") as f:
            servers = json.load(f)["server_list"]
        ranks = [tuple(sorted(int(d["rank_id"]) for d in s["device"])) for s in servers]
    except FileNotFoundError:
        raise EntryError(f"RANK_TABLE_FILE={path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EntryError(f"RANK_TABLE_FILE={path}: not a rank table "
                         f"(server_list[].device[].rank_id): {exc}") from None
    if not ranks:
        raise EntryError(f"RANK_TABLE_FILE={path}: empty server_list")
    if node_index is None:
        ip = env.get("MA_CURRENT_IP", "")
        ids = [str(s.get("server_id", s.get("host_ip", ""))) for s in servers]
        node_index = ids.index(ip) if ip and ip in ids else 0
    if node_index >= len(ranks):
        raise EntryError(f"RANK_TABLE_FILE={path}: no server for node index {node_index} "
                         f"({len(ranks)} servers)")
    return len(ranks), node_index, ranks[node_index]


def resolve_cluster(spec: JobSpec, env: Mapping[str, str] | None = None,
                    parallel_world: int | None = None) -> Cluster:
    """Topology from arguments, then environment, then the config's parallel sizes."""
    env = os.environ if env is None else env
    nodes_src, nodes = _first(("--node_num", spec.node_num), ("MA_NUM_HOSTS", _env_int(env, "MA_NUM_HOSTS")))
    index_src, index = _first(("--node_index", spec.node_index),
                              ("VC_TASK_INDEX", _env_int(env, "VC_TASK_INDEX")))
    table = env.get("RANK_TABLE_FILE", "").strip()
    if table:
        t_nodes, index, ranks = _rank_table(table, index, env)
        if nodes is not None and nodes != t_nodes:
            raise EntryError(f"{nodes_src}={nodes} but RANK_TABLE_FILE lists {t_nodes} servers")
        cards = len(ranks)
        if spec.npu_num_per_node is not None and spec.npu_num_per_node != cards:
            raise EntryError(f"--npu_num_per_node={spec.npu_num_per_node} but RANK_TABLE_FILE "
                             f"gives node {index} {cards} devices")
        return Cluster(t_nodes, index, cards, ranks, t_nodes * cards)
    nodes = nodes or 1
    index = index or 0
    if index >= nodes:
        raise EntryError(f"{index_src}={index}: node index must be < node count {nodes}")
    rank_size = _env_int(env, "RANK_SIZE")
    cards_src, cards = _first(("--npu_num_per_node", spec.npu_num_per_node),
                              ("MA_NUM_GPUS", _env_int(env, "MA_NUM_GPUS")),
                              ("DEVICE_NUM_PER_NODE", _env_int(env, "DEVICE_NUM_PER_NODE")))
    if cards is None:
        world = rank_size or parallel_world or 1
        if world % nodes:
            raise EntryError(f"world size {world} (RANK_SIZE or parallel_config) does not split "
                             f"over {nodes} nodes")
        cards = world // nodes
    elif rank_size is not None and rank_size != nodes * cards:
        raise EntryError(f"RANK_SIZE={rank_size} but {nodes} nodes x {cards_src}={cards} "
                         f"cards = {nodes * cards}")
    first = index * cards
    return Cluster(nodes, index, cards, tuple(range(first, first + cards)), nodes * cards)


def is_modelarts(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(name) for name in MODELARTS_VARS) or any(k.startswith("MA_") for k in env)
