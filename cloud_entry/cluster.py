"""Which machine this is (node count, node index, cards per node, this node's global ranks) and,
when the platform starts the boot command once per card, which card this process is.

Both shapes happen on ModelArts: preset Ascend images and per-rank launchers start the boot
command once per card (RANK_ID / DEVICE_ID / LOCAL_RANK set per process); custom images with
msrun start it once per node (none of those set).

Which source wins:
- the rank table (RANK_TABLE_FILE) is what HCCL will actually use, so its shape (servers, devices,
  ranks) must agree with every other source, arguments included;
- arguments (--node_num, --node_index, --npu_num_per_node) silence the environment: a user who
  passes --npu_num_per_node=16 knows better than a platform default;
- the environment (ModelArts, Volcano, Kubernetes Indexed Jobs, msrun / dynamic cluster, MindSpore)
  and msrun's own options
  in the launch command must agree with each other: silently picking one of two different values
  could make two nodes convert the same ranks while nobody converts the others.
Every number keeps its source, so errors and the start-up line say where it came from.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec
from cloud_entry.sync import ranges

# MindFormers' own test for "this is ModelArts" (it then imports moxing).
MODELARTS_VARS = ("MA_LOG_DIR", "MA_JOB_DIR", "MA_LOCAL_LOG_PATH", "S3_ACCESS_KEY_ID",
                  "S3_SECRET_ACCESS_KEY", "BATCH_GROUP_NAME")

NODES, INDEX, CARDS, WORLD, CARD = "node count", "node index", "cards per node", "world size", "card"
_FLAGS = {NODES: "--node_num", INDEX: "--node_index", CARDS: "--npu_num_per_node"}
# Kubernetes Indexed Job: the pod's index is JOB_COMPLETION_INDEX, and the Job's `completions`
# reach no variable, so the manifest states it in CLOUD_ENTRY_NODE_NUM (any scheduler may set it).
# Volcano (the env and svc plugins, task named `worker`): VC_TASK_INDEX, VC_WORKER_NUM, VC_WORKER_HOSTS.
NODE_NUM_VAR = "CLOUD_ENTRY_NODE_NUM"
_VARIABLES = {NODES: ("MA_NUM_HOSTS", "VC_WORKER_NUM", NODE_NUM_VAR),
              INDEX: ("VC_TASK_INDEX", "MS_NODE_RANK", "JOB_COMPLETION_INDEX"),
              CARDS: ("MA_NUM_GPUS", "DEVICE_NUM_PER_NODE", "MS_LOCAL_WORKER"),
              WORLD: ("RANK_SIZE", "MS_WORKER_NUM")}
_MSRUN_OPTIONS = {"--worker_num": WORLD, "--local_worker_num": CARDS, "--node_rank": INDEX}
_ZERO_IS_AN_INDEX = frozenset({"VC_TASK_INDEX", "MS_NODE_RANK", "RANK_ID", "LOCAL_RANK", "DEVICE_ID",
                               "--node_rank", "JOB_COMPLETION_INDEX"})
# ModelArts sets MA_NUM_GPUS=0 on a flavour without accelerators: that says no card count, but
# that a distributed job cannot run there (resolve_cluster).
_ZERO_SAYS_NOTHING = frozenset({"MA_NUM_GPUS"})


def _says_no_accelerator(env: Mapping[str, str]) -> bool:
    try:
        return int(env.get("MA_NUM_GPUS", "").strip()) == 0
    except ValueError:
        return False


@dataclass(frozen=True)
class Cluster:
    num_nodes: int
    node_index: int
    cards_per_node: int
    node_ranks: tuple[int, ...]     # this node's global ranks
    world_size: int
    local_rank: int | None = None   # this process's card on its node; None: boot once per node
    rank_id: int | None = None      # this process's global rank; None likewise
    sources: tuple[tuple[str, str], ...] = ()   # (what, where it came from), for describe()

    @property
    def per_card(self) -> bool:
        """True when the platform runs the boot command once per card, i.e. once per rank."""
        return self.local_rank is not None

    def world_text(self) -> str:
        """`4 ranks (2 nodes [MA_NUM_HOSTS=2] x 2 cards [MA_NUM_GPUS=2])`: the world with where
        its numbers came from, for messages that blame them."""
        said = dict(self.sources)
        nodes = f" [{said[NODES]}]" if NODES in said else ""
        cards = f" [{said[CARDS]}]" if CARDS in said else ""
        return (f"{_plural(self.world_size, 'rank')} ({_plural(self.num_nodes, 'node')}{nodes} x "
                f"{_plural(self.cards_per_node, 'card')}{cards})")

    def describe(self) -> str:
        """One line for the start of the log: every number with where it came from."""
        said = dict(self.sources)

        def where(what: str) -> str:
            return f" [{said[what]}]" if what in said else ""

        card = (f"boot once per card: card {self.local_rank}, rank {self.rank_id}{where(CARD)}"
                if self.per_card else "boot once per node")
        return (f"topology: {_plural(self.num_nodes, 'node')}{where(NODES)}, "
                f"this is node {self.node_index}{where(INDEX)}, "
                f"{_plural(self.cards_per_node, 'card')} per node{where(CARDS)}, "
                f"world {self.world_size}{where(WORLD)}, ranks {ranges(list(self.node_ranks))}; {card}")


@dataclass(frozen=True)
class _Said:
    """One source's claim about one number; `source` is how messages show it ("MA_NUM_HOSTS=2")."""
    value: int
    source: str


@dataclass(frozen=True)
class _Claims:
    """What the arguments and the environment say about each number, before settling."""
    arguments: dict[str, _Said]
    environment: dict[str, list[_Said]]

    def settle(self, what: str, facts: Sequence[_Said] = ()) -> _Said | None:
        """The argument, else every environment claim, must agree with each other and with the
        rank table's `facts`; the table's word is returned first because HCCL follows it."""
        said = [self.arguments[what]] if what in self.arguments else self.environment.get(what, [])
        claims = [*said, *facts]
        for other in claims[1:]:
            if other.value != claims[0].value:
                # Every node gets the same hyperparameters, so --node_index cannot settle this.
                hint = (f"; pass {_FLAGS[what]} to settle it" if what in _FLAGS and what != INDEX
                        and what not in self.arguments and other not in facts else "")
                raise EntryError(f"{what}: {claims[0].source} but {other.source}{hint}")
        return ([*facts, *claims] or [None])[0]


@dataclass(frozen=True)
class _Server:
    """One server of a rank table: the names MA_CURRENT_IP may match (server_id first) and its
    (device_id, rank_id) pairs."""
    names: tuple[str, ...]
    devices: tuple[tuple[int, int], ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted(rank for _, rank in self.devices))


@dataclass(frozen=True)
class _Topology:
    """The settled numbers, each with its source, and this node's ranks."""
    nodes: _Said
    index: _Said
    cards: _Said
    ranks: tuple[int, ...]
    world: _Said
    server: _Server | None          # this node in the rank table, if there is one


def _parse_int(label: str, name: str, text: str) -> int | None:
    """An integer setting; 0 only where it is an index (a count of 0 is a misconfiguration)."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise EntryError(f"{label}={text!r}: expected an integer") from None
    if value == 0 and name in _ZERO_SAYS_NOTHING:
        return None
    if value < 0 or (value == 0 and name not in _ZERO_IS_AN_INDEX):
        raise EntryError(f"{label}={text!r}: out of range")
    return value


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    return _parse_int(f"environment {name}", name, env.get(name, ""))


def _variables(env: Mapping[str, str]) -> dict[str, list[_Said]]:
    """Claims of the plain integer variables, and VC_WORKER_HOSTS's length as a node count."""
    said: dict[str, list[_Said]] = {}
    for what, names in _VARIABLES.items():
        for name in names:
            value = _env_int(env, name)
            if value is not None:
                said.setdefault(what, []).append(_Said(value, f"{name}={value}"))
    hosts = _worker_hosts(env)
    if hosts:
        said.setdefault(NODES, []).append(_Said(len(hosts), f"VC_WORKER_HOSTS lists {len(hosts)} hosts"))
    return said


def _msrun_options(launch_cmd: Sequence[str]) -> dict[str, list[_Said]]:
    """msrun's own topology options when the launch command runs msrun: they are what msrun will
    use. Its defaults are not claims, nor --node_rank=-1 (msrun then assigns ranks itself)."""
    starts = [i for i, item in enumerate(launch_cmd) if os.path.basename(item) == "msrun"]
    if not starts:
        return {}
    rest, said = list(launch_cmd[starts[0] + 1:]), {}
    while rest and rest[0].startswith("--"):        # msrun's options end where its script begins
        name, eq, text = rest.pop(0).partition("=")
        if not eq and rest:                          # every msrun option takes a value
            text = rest.pop(0)
        what = _MSRUN_OPTIONS.get(name)
        if what is None or (name == "--node_rank" and text.strip() == "-1"):
            continue
        value = _parse_int(f"msrun {name}", name, text)
        if value is not None:
            said.setdefault(what, []).append(_Said(value, f"msrun {name}={value}"))
    return said


def _worker_hosts(env: Mapping[str, str]) -> list[str]:
    return [h.strip() for h in env.get("VC_WORKER_HOSTS", "").split(",") if h.strip()]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _located(env: Mapping[str, str], servers: Sequence[_Server]) -> list[_Said]:
    """Node index claims from MA_CURRENT_IP: its server in the rank table, its place in
    VC_WORKER_HOSTS. An IP that a list of IPs lacks is an error, never node 0; ModelArts fills
    VC_WORKER_HOSTS with domain names, which an IP cannot be compared with."""
    ip = env.get("MA_CURRENT_IP", "").strip()
    if not ip:
        return []
    said = []
    if servers:
        found = [i for i, s in enumerate(servers) if ip in s.names]
        if len(found) != 1:
            what = "no server" if not found else "several servers"
            raise EntryError(f"MA_CURRENT_IP={ip} matches {what} of RANK_TABLE_FILE (server ids "
                             f"{', '.join(s.names[0] for s in servers)})")
        said.append(_Said(found[0], f"RANK_TABLE_FILE: MA_CURRENT_IP={ip} is server {found[0]}"))
    hosts = _worker_hosts(env)
    if ip in hosts:
        said.append(_Said(hosts.index(ip), f"VC_WORKER_HOSTS: MA_CURRENT_IP={ip} is host {hosts.index(ip)}"))
    elif hosts and all(_is_ip(h) for h in hosts):
        raise EntryError(f"MA_CURRENT_IP={ip} is not in VC_WORKER_HOSTS={','.join(hosts)}")
    return said


def _read_rank_table(path: str) -> tuple[_Server, ...]:
    """Servers of an HCCL rank table in either form: version 1.0 (server_list[].device[] with
    rank_id) or the older group_list[].instance_list[] (one instance per device, with rank_id and
    server_id; its servers are the server_ids in order of first appearance)."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        status = table.get("status", "completed")
        if "server_list" in table:
            servers = tuple(
                _Server((str(s["server_id"]), *(str(s[k]) for k in ("container_ip", "host_ip") if s.get(k))),
                        tuple((int(d["device_id"]), int(d["rank_id"])) for d in s["device"]))
                for s in table["server_list"])
        else:
            grouped: dict[str, list[tuple[int, int]]] = {}
            for group in table["group_list"]:
                for inst in group["instance_list"]:
                    grouped.setdefault(str(inst["server_id"]), []).extend(
                        (int(d["device_id"]), int(inst["rank_id"])) for d in inst["devices"])
            servers = tuple(_Server((sid,), tuple(devices)) for sid, devices in grouped.items())
    except FileNotFoundError:
        raise EntryError(f"RANK_TABLE_FILE={path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EntryError(f"RANK_TABLE_FILE={path}: not a rank table (server_list[].device[] or "
                         f"group_list[].instance_list[], each with rank_id): {exc!r}") from None
    if status != "completed":
        raise EntryError(f"RANK_TABLE_FILE={path}: status {status!r}, not 'completed' "
                         f"(the platform has not finished writing it)")
    ranks = sorted(rank for s in servers for rank in s.ranks)
    if not servers or any(not s.devices for s in servers) or ranks != list(range(len(ranks))):
        raise EntryError(f"RANK_TABLE_FILE={path}: needs servers with devices whose rank ids are "
                         f"0..N-1, each once; found ranks {ranks}")
    return servers


def _node_index(claims: _Claims, env: Mapping[str, str], nodes: _Said,
                holder: Callable[[int], _Said], how: str) -> _Said:
    """This node's index: the settled claims, else the node holding RANK_ID (a per-card boot),
    else 0 on a single node; with several nodes and no clue an error saying `how` to tell."""
    rank = _env_int(env, "RANK_ID")
    index = claims.settle(INDEX) or (holder(rank) if rank is not None else None)
    if index is None and nodes.value == 1:
        index = _Said(0, "")
    if index is None:
        raise EntryError(f"{nodes.value} nodes [{nodes.source}] but nothing says which one this is: {how}")
    if index.value >= nodes.value:
        raise EntryError(f"{INDEX}: {index.source} but the node count is {nodes.value} [{nodes.source}]")
    return index


def _from_table(claims: _Claims, env: Mapping[str, str], servers: Sequence[_Server]) -> _Topology:
    """The rank table: its servers are the nodes, their devices the cards, their rank_ids the ranks."""
    def holder(rank: int) -> _Said:
        found = [i for i, s in enumerate(servers) if rank in s.ranks]
        if not found:
            raise EntryError(f"RANK_ID={rank} is on no server of RANK_TABLE_FILE")
        return _Said(found[0], f"RANK_TABLE_FILE: RANK_ID={rank} is on server {found[0]}")

    nodes = claims.settle(NODES, [_Said(len(servers), f"RANK_TABLE_FILE: {len(servers)} servers")])
    cards = claims.settle(CARDS)
    if cards is not None:        # a per-node claim speaks for every server
        for s in servers:
            if len(s.devices) != cards.value:
                raise EntryError(f"{CARDS}: {cards.source} but RANK_TABLE_FILE: {len(s.devices)} "
                                 f"devices on server {s.names[0]}")
    index = _node_index(claims, env, nodes, holder,
                        "set MA_CURRENT_IP to this server's id in RANK_TABLE_FILE, or VC_TASK_INDEX")
    server = servers[index.value]
    cards = cards or _Said(len(server.devices),
                           f"RANK_TABLE_FILE: {len(server.devices)} devices on server {server.names[0]}")
    total = sum(len(s.devices) for s in servers)
    world = claims.settle(WORLD, [_Said(total, f"RANK_TABLE_FILE: {total} ranks")])
    return _Topology(nodes, index, cards, server.ranks, world, server)


def _from_arithmetic(claims: _Claims, env: Mapping[str, str], parallel_world: int | None) -> _Topology:
    """No rank table: node i holds ranks i*cards .. (i+1)*cards-1. Of nodes, cards and world,
    two given give the third (msrun and MS_* say world and cards, not nodes)."""
    nodes, cards, world = claims.settle(NODES), claims.settle(CARDS), claims.settle(WORLD)
    if nodes is None:
        nodes = (_Said(world.value // cards.value, f"{world.source} / {cards.value} cards")
                 if world and cards else _Said(1, "default"))
    if cards is None:
        world = world or (_Said(parallel_world, "parallel_config") if parallel_world else _Said(1, "default"))
        if world.value % nodes.value:
            raise EntryError(f"world size {world.value} [{world.source}] does not split over "
                             f"{_plural(nodes.value, 'node')} [{nodes.source}]")
        cards = _Said(world.value // nodes.value,
                      world.source if nodes.value == 1 else f"{world.source} / {nodes.value} nodes")
    else:
        product = nodes.value * cards.value
        if world is not None and world.value != product:
            raise EntryError(f"{WORLD}: {world.source} but {_plural(nodes.value, 'node')} [{nodes.source}]"
                             f" x {_plural(cards.value, 'card')} [{cards.source}] = {product}")
        world = world or _Said(product, "")
    def holder(rank: int) -> _Said:
        return _Said(rank // cards.value, f"RANK_ID={rank} / {cards.value} cards per node")

    index = _node_index(claims, env, nodes, holder, "set VC_TASK_INDEX or MS_NODE_RANK")
    first = index.value * cards.value
    return _Topology(nodes, index, cards, tuple(range(first, first + cards.value)), world, None)


def _this_card(env: Mapping[str, str], topo: _Topology) -> tuple[int | None, int | None, str]:
    """(local rank, global rank, source) of a process started once per card; Nones when the boot
    command runs once per node. LOCAL_RANK, else RANK_ID, else DEVICE_ID says which card."""
    local, rank, device = (_env_int(env, n) for n in ("LOCAL_RANK", "RANK_ID", "DEVICE_ID"))
    ranks = topo.ranks
    if rank is not None and rank not in ranks:
        raise EntryError(f"RANK_ID={rank} is not among the ranks {ranges(list(ranks))} of node "
                         f"{topo.index.value} [{topo.index.source or 'the only node'}]")
    if local is not None:
        if local >= len(ranks):
            raise EntryError(f"LOCAL_RANK={local} but this node has {len(ranks)} cards")
        if rank is not None and ranks[local] != rank:
            raise EntryError(f"LOCAL_RANK={local} is rank {ranks[local]} on this node but RANK_ID={rank}")
        return local, ranks[local], f"LOCAL_RANK={local}"
    if rank is not None:
        return ranks.index(rank), rank, f"RANK_ID={rank}"
    if device is None:
        return None, None, ""
    if topo.server is not None:
        on_server = dict(topo.server.devices)
        if device not in on_server:
            raise EntryError(f"DEVICE_ID={device} is not among the devices {sorted(on_server)} of "
                             f"server {topo.server.names[0]} in RANK_TABLE_FILE")
        return ranks.index(on_server[device]), on_server[device], f"DEVICE_ID={device}"
    if device >= len(ranks):
        raise EntryError(f"DEVICE_ID={device} but this node has {len(ranks)} cards")
    return device, ranks[device], f"DEVICE_ID={device}"


def resolve_cluster(spec: JobSpec, env: Mapping[str, str] | None = None,
                    parallel_world: int | None = None) -> Cluster:
    """Topology from the rank table, arguments, environment and msrun options, then the config's
    parallel sizes; any disagreement is an EntryError naming both values and their sources."""
    env = os.environ if env is None else env
    arguments = {what: _Said(value, f"{_FLAGS[what]}={value}")
                 for what, value in ((NODES, spec.node_num), (INDEX, spec.node_index),
                                     (CARDS, spec.npu_num_per_node)) if value is not None}
    environment = _variables(env)
    for what, said in _msrun_options(spec.launch_cmd).items():
        environment.setdefault(what, []).extend(said)
    table_path = env.get("RANK_TABLE_FILE", "").strip()
    servers = _read_rank_table(table_path) if table_path else ()
    if spec.node_index is None:      # the argument silences MA_CURRENT_IP too
        environment[INDEX] = _located(env, servers) + environment.get(INDEX, [])
    claims = _Claims(arguments, environment)
    if env.get("JOB_COMPLETION_INDEX", "").strip() and claims.settle(NODES) is None:
        # an Indexed Job without its size: pod 0 would convert the whole world as a single node
        raise EntryError(f"JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX'].strip()} (a Kubernetes Indexed "
                         f"Job) but nothing says how many pods it has: set {NODE_NUM_VAR} to the Job's "
                         "completions, or pass --node_num")
    topo = _from_table(claims, env, servers) if servers else _from_arithmetic(claims, env, parallel_world)
    local, rank, card_source = _this_card(env, topo)
    if topo.world.value > 1 and _says_no_accelerator(env):
        raise EntryError(f"MA_NUM_GPUS=0: this node has no accelerator, but the job is distributed over "
                         f"{topo.world.value} ranks ({topo.cards.value} card(s) per node [{topo.cards.source}]): "
                         "choose a flavour with accelerators, or run single-card with use_parallel=False")
    sources = tuple((what, source) for what, source in
                    ((NODES, topo.nodes.source), (INDEX, topo.index.source), (CARDS, topo.cards.source),
                     (WORLD, topo.world.source), (CARD, card_source)) if source)
    return Cluster(topo.nodes.value, topo.index.value, topo.cards.value, topo.ranks, topo.world.value,
                   local, rank, sources)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def is_modelarts(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(name) for name in MODELARTS_VARS) or any(k.startswith("MA_") for k in env)
