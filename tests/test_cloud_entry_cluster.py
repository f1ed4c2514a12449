"""Topology as ModelArts / Volcano / msrun / HCCL rank tables give it (cloud_entry.cluster).

Pure functions: every test builds a JobSpec and an environment dict (rank tables in tmp_path)."""
from __future__ import annotations

import json

import pytest

from cloud_entry.cluster import is_modelarts, resolve_cluster
from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec

CMD = ("python", "x.py")


def spec(**kw) -> JobSpec:
    return JobSpec(launch_cmd=kw.pop("launch_cmd", CMD), **kw)


def topo(c) -> tuple:
    return c.num_nodes, c.node_index, c.cards_per_node, c.node_ranks, c.world_size


def fails(env, job=None, parallel_world=None) -> str:
    with pytest.raises(EntryError) as err:
        resolve_cluster(job or spec(), env, parallel_world)
    return str(err.value)


def v1_table(tmp_path, ips=("10.0.0.1", "10.0.0.2"), cards=4, **extra) -> str:
    """Version 1.0: server_list[].device[] with rank_id, servers numbered in order."""
    servers = [{"server_id": ip, "container_ip": f"172.16.0.{n + 1}", "host_ip": f"192.168.9.{n + 1}",
                "device": [{"device_id": str(d), "device_ip": f"192.168.{n}.{d}",
                            "rank_id": str(n * cards + d)} for d in range(cards)]}
               for n, ip in enumerate(ips)]
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps({"version": "1.0", "server_count": str(len(ips)), "server_list": servers,
                                "status": "completed", **extra}))
    return str(path)


def group_table(tmp_path, ips=("10.0.0.1", "10.0.0.2"), cards=4) -> str:
    """The older form: group_list[].instance_list[], one instance per device."""
    instances = [{"devices": [{"device_id": str(d), "device_ip": f"192.168.{n}.{d}"}],
                  "rank_id": str(n * cards + d), "server_id": ip}
                 for n, ip in enumerate(ips) for d in range(cards)]
    path = tmp_path / "hccl_group.json"
    path.write_text(json.dumps({"status": "completed", "group_count": "1", "group_list": [
        {"group_name": "hccl_world_group", "device_num": str(len(instances)), "server_num": str(len(ips)),
         "instance_count": str(len(instances)), "instance_list": instances}]}))
    return str(path)


# ---------------------------------------------------------------- each source

@pytest.mark.parametrize("env, expected", [
    ({"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1", "MA_NUM_GPUS": "4"}, (2, 1, 4, (4, 5, 6, 7), 8)),
    ({"VC_WORKER_NUM": "2", "VC_TASK_INDEX": "1", "DEVICE_NUM_PER_NODE": "4"}, (2, 1, 4, (4, 5, 6, 7), 8)),
    ({"VC_WORKER_HOSTS": "10.0.0.1,10.0.0.2", "MA_CURRENT_IP": "10.0.0.2", "MA_NUM_GPUS": "2"},
     (2, 1, 2, (2, 3), 4)),
    ({"MS_WORKER_NUM": "16", "MS_LOCAL_WORKER": "8", "MS_NODE_RANK": "1"},
     (2, 1, 8, tuple(range(8, 16)), 16)),
    ({"RANK_SIZE": "16", "MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "0"}, (2, 0, 8, tuple(range(8)), 16)),
])
def test_each_environment_source(env, expected):
    assert topo(resolve_cluster(spec(), env)) == expected


@pytest.mark.parametrize("index", [0, 2])
def test_kubernetes_indexed_job(index):
    """An Indexed Job's pod knows its index (JOB_COMPLETION_INDEX) and, from the manifest, the
    Job's completions (CLOUD_ENTRY_NODE_NUM); the world comes from the parallel sizes."""
    env = {"JOB_COMPLETION_INDEX": str(index), "CLOUD_ENTRY_NODE_NUM": "4"}
    c = resolve_cluster(spec(), env, parallel_world=8)
    assert topo(c) == (4, index, 2, (2 * index, 2 * index + 1), 8)
    assert "[JOB_COMPLETION_INDEX=" in c.describe() and "[CLOUD_ENTRY_NODE_NUM=4]" in c.describe()
    assert topo(resolve_cluster(spec(node_num=4), {"JOB_COMPLETION_INDEX": str(index)}, 8))[:2] == (4, index)


def test_indexed_job_without_its_size_is_an_error_not_one_node():
    msg = fails({"JOB_COMPLETION_INDEX": "0"}, parallel_world=8)
    assert "JOB_COMPLETION_INDEX=0" in msg and "CLOUD_ENTRY_NODE_NUM" in msg and "--node_num" in msg
    assert "JOB_COMPLETION_INDEX=5" in fails({"JOB_COMPLETION_INDEX": "5", "CLOUD_ENTRY_NODE_NUM": "4"}, parallel_world=8)
    both = fails({"JOB_COMPLETION_INDEX": "1", "VC_TASK_INDEX": "0", "CLOUD_ENTRY_NODE_NUM": "2"}, parallel_world=8)
    assert "JOB_COMPLETION_INDEX=1" in both and "VC_TASK_INDEX=0" in both


def test_volcano_job_without_modelarts():
    """Volcano's env and svc plugins (task `worker`) alone: no MA_* variable, no accelerator count."""
    env = {"VC_TASK_INDEX": "1", "VC_WORKER_NUM": "2", "VC_WORKER_HOSTS": "conv-worker-0.conv,conv-worker-1.conv"}
    c = resolve_cluster(spec(), env, parallel_world=8)
    assert topo(c) == (2, 1, 4, (4, 5, 6, 7), 8) and not is_modelarts(env)


def test_worker_hosts_of_domain_names_give_the_count_not_the_index():
    # ModelArts lists domain names there; MA_CURRENT_IP (the container IP) cannot be compared.
    env = {"VC_WORKER_HOSTS": "job-worker-0.job,job-worker-1.job", "MA_CURRENT_IP": "172.16.0.9",
           "VC_TASK_INDEX": "1", "MA_NUM_GPUS": "8"}
    c = resolve_cluster(spec(), env)
    assert (c.num_nodes, c.node_index) == (2, 1)
    assert dict(c.sources)["node count"] == "VC_WORKER_HOSTS lists 2 hosts"


def test_arguments_beat_the_environment():
    env = {"MA_NUM_HOSTS": "2", "VC_WORKER_NUM": "2", "VC_TASK_INDEX": "1", "MA_NUM_GPUS": "8"}
    c = resolve_cluster(spec(node_num=4, node_index=3, npu_num_per_node=16), env)
    assert topo(c) == (4, 3, 16, tuple(range(48, 64)), 64)
    assert dict(c.sources) == {"node count": "--node_num=4", "node index": "--node_index=3",
                               "cards per node": "--npu_num_per_node=16"}
    # an argument also settles a disagreement in the environment
    c = resolve_cluster(spec(npu_num_per_node=4), {"MA_NUM_GPUS": "8", "MS_LOCAL_WORKER": "4"})
    assert c.cards_per_node == 4


def test_parallel_config_and_defaults():
    c = resolve_cluster(spec(), {}, parallel_world=8)
    assert topo(c) == (1, 0, 8, tuple(range(8)), 8) and dict(c.sources)["world size"] == "parallel_config"
    c = resolve_cluster(spec(), {})
    assert topo(c) == (1, 0, 1, (0,), 1) and not c.per_card
    assert dict(c.sources)["node count"] == "default"


def test_modelarts_cpu_flavour_reports_zero_gpus():
    """MA_NUM_GPUS=0 (a flavour without accelerators) gives no card count: a single-card job runs
    there; a distributed one is refused in one line naming it."""
    assert resolve_cluster(spec(), {"MA_NUM_GPUS": "0"}, parallel_world=1).cards_per_node == 1
    for env, world in (({"MA_NUM_GPUS": "0"}, 4), ({"MA_NUM_GPUS": " 0", "MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1"}, 2)):
        with pytest.raises(EntryError, match=r"^MA_NUM_GPUS=0: this node has no accelerator, but the job is "
                                             r"distributed over \d+ ranks"):
            resolve_cluster(spec(), env, parallel_world=world)


@pytest.mark.parametrize("launch_cmd", [
    ("msrun", "--worker_num=16", "--local_worker_num=8", "--node_rank=1", "run.py", "--node_rank=5"),
    ("/usr/local/bin/msrun", "--worker_num", "16", "--local_worker_num", "8", "--node_rank", "1",
     "--join", "True", "run.py"),
])
def test_msrun_options_in_the_launch_command(launch_cmd):
    c = resolve_cluster(spec(launch_cmd=launch_cmd), {})
    assert topo(c) == (2, 1, 8, tuple(range(8, 16)), 16)
    assert dict(c.sources)["node index"] == "msrun --node_rank=1"


def test_msrun_without_node_rank_assigns_ranks_itself():
    cmd = ("msrun", "--worker_num=8", "--local_worker_num=8", "--node_rank=-1", "run.py")
    assert topo(resolve_cluster(spec(launch_cmd=cmd), {})) == (1, 0, 8, tuple(range(8)), 8)
    assert "nothing says which one" in fails({}, spec(launch_cmd=("msrun", "--worker_num=16",
                                                                  "--local_worker_num=8", "run.py")))


def test_msrun_options_must_agree_with_the_environment():
    cmd = ("msrun", "--worker_num=16", "--local_worker_num=8", "--node_rank=1", "run.py")
    msg = fails({"MS_NODE_RANK": "0"}, spec(launch_cmd=cmd))
    assert "MS_NODE_RANK=0" in msg and "msrun --node_rank=1" in msg


# ---------------------------------------------------------------- conflicts

@pytest.mark.parametrize("env, both", [
    ({"MA_NUM_HOSTS": "2", "VC_WORKER_NUM": "4", "VC_TASK_INDEX": "0"},
     ("MA_NUM_HOSTS=2", "VC_WORKER_NUM=4")),
    ({"MA_NUM_HOSTS": "2", "VC_WORKER_HOSTS": "a,b,c", "VC_TASK_INDEX": "0"},
     ("MA_NUM_HOSTS=2", "VC_WORKER_HOSTS lists 3 hosts")),
    ({"VC_TASK_INDEX": "1", "MS_NODE_RANK": "0", "MA_NUM_HOSTS": "2", "MA_NUM_GPUS": "1"},
     ("VC_TASK_INDEX=1", "MS_NODE_RANK=0")),
    ({"MA_NUM_GPUS": "8", "DEVICE_NUM_PER_NODE": "4"}, ("MA_NUM_GPUS=8", "DEVICE_NUM_PER_NODE=4")),
    ({"RANK_SIZE": "8", "MS_WORKER_NUM": "16"}, ("RANK_SIZE=8", "MS_WORKER_NUM=16")),
    ({"RANK_SIZE": "12", "MA_NUM_HOSTS": "2", "MA_NUM_GPUS": "4", "VC_TASK_INDEX": "0"},
     ("RANK_SIZE=12", "MA_NUM_GPUS=4")),
    ({"MS_WORKER_NUM": "16", "MA_NUM_HOSTS": "4", "MS_LOCAL_WORKER": "8", "VC_TASK_INDEX": "0"},
     ("MS_WORKER_NUM=16", "MA_NUM_HOSTS=4")),
    ({"VC_WORKER_HOSTS": "10.0.0.1,10.0.0.2", "MA_CURRENT_IP": "10.0.0.2", "VC_TASK_INDEX": "0",
      "MA_NUM_GPUS": "1"}, ("MA_CURRENT_IP=10.0.0.2 is host 1", "VC_TASK_INDEX=0")),
])
def test_disagreeing_sources_name_both(env, both):
    msg = fails(env)
    assert all(part in msg for part in both), msg


def test_a_count_conflict_says_which_argument_settles_it():
    assert "pass --node_num" in fails({"MA_NUM_HOSTS": "2", "VC_WORKER_NUM": "4", "VC_TASK_INDEX": "0"})
    assert "pass --npu_num_per_node" in fails({"MA_NUM_GPUS": "8", "MS_LOCAL_WORKER": "4"})


def test_several_nodes_and_no_index_is_an_error_not_node_0():
    assert "set VC_TASK_INDEX" in fails({"MA_NUM_HOSTS": "2", "MA_NUM_GPUS": "4"})


def test_current_ip_missing_from_a_list_of_ips():
    msg = fails({"VC_WORKER_HOSTS": "10.0.0.1,10.0.0.2", "MA_CURRENT_IP": "10.0.0.9", "MA_NUM_GPUS": "4"})
    assert "MA_CURRENT_IP=10.0.0.9" in msg and "10.0.0.1,10.0.0.2" in msg


@pytest.mark.parametrize("env, culprit", [
    ({"MA_NUM_HOSTS": "0"}, "MA_NUM_HOSTS='0'"),
    ({"VC_TASK_INDEX": "-1"}, "VC_TASK_INDEX='-1'"),
    ({"RANK_SIZE": "x"}, "RANK_SIZE='x'"),
])
def test_bad_values(env, culprit):
    assert culprit in fails(env)


def test_index_variables_may_be_zero():
    env = {"VC_TASK_INDEX": "0", "MS_NODE_RANK": "0", "RANK_ID": "0", "LOCAL_RANK": "0", "DEVICE_ID": "0",
           "MA_NUM_GPUS": "2"}
    assert resolve_cluster(spec(), env).local_rank == 0


# ---------------------------------------------------------------- rank tables

@pytest.mark.parametrize("write", [v1_table, group_table])
def test_rank_table_forms(tmp_path, write):
    path = write(tmp_path)
    c = resolve_cluster(spec(), {"RANK_TABLE_FILE": path, "MA_CURRENT_IP": "10.0.0.2"})
    assert topo(c) == (2, 1, 4, (4, 5, 6, 7), 8)
    assert dict(c.sources)["node index"] == "RANK_TABLE_FILE: MA_CURRENT_IP=10.0.0.2 is server 1"


def test_rank_table_matches_container_and_host_ip(tmp_path):
    path = v1_table(tmp_path)
    assert resolve_cluster(spec(), {"RANK_TABLE_FILE": path, "MA_CURRENT_IP": "172.16.0.2"}).node_index == 1
    assert resolve_cluster(spec(), {"RANK_TABLE_FILE": path, "MA_CURRENT_IP": "192.168.9.1"}).node_index == 0


def test_group_table_groups_instances_by_server_in_order(tmp_path):
    path = tmp_path / "t.json"
    instances = [{"devices": [{"device_id": str(d), "device_ip": "x"}], "rank_id": str(r), "server_id": ip}
                 for ip, d, r in [("b", 0, 0), ("b", 1, 1), ("a", 0, 2), ("a", 1, 3)]]
    path.write_text(json.dumps({"group_count": "1", "group_list": [{"instance_list": instances}]}))
    c = resolve_cluster(spec(), {"RANK_TABLE_FILE": str(path), "MA_CURRENT_IP": "a"})
    assert topo(c) == (2, 1, 2, (2, 3), 4)


def test_current_ip_missing_from_the_table(tmp_path):
    msg = fails({"RANK_TABLE_FILE": v1_table(tmp_path), "MA_CURRENT_IP": "10.9.9.9", "VC_TASK_INDEX": "0"})
    assert "MA_CURRENT_IP=10.9.9.9" in msg and "10.0.0.1, 10.0.0.2" in msg


def test_table_and_task_index_disagree(tmp_path):
    msg = fails({"RANK_TABLE_FILE": v1_table(tmp_path), "MA_CURRENT_IP": "10.0.0.1", "VC_TASK_INDEX": "1"})
    assert "MA_CURRENT_IP=10.0.0.1 is server 0" in msg and "VC_TASK_INDEX=1" in msg


@pytest.mark.parametrize("env, both", [
    ({"MA_NUM_HOSTS": "3"}, ("MA_NUM_HOSTS=3", "RANK_TABLE_FILE: 2 servers")),
    ({"MA_NUM_GPUS": "8"}, ("MA_NUM_GPUS=8", "RANK_TABLE_FILE: 4 devices")),
    ({"RANK_SIZE": "16"}, ("RANK_SIZE=16", "RANK_TABLE_FILE: 8 ranks")),
])
def test_table_against_the_environment(tmp_path, env, both):
    msg = fails({"RANK_TABLE_FILE": v1_table(tmp_path), "MA_CURRENT_IP": "10.0.0.1", **env})
    assert all(part in msg for part in both), msg


def test_table_without_a_way_to_find_the_node(tmp_path):
    path = v1_table(tmp_path)
    assert "set MA_CURRENT_IP" in fails({"RANK_TABLE_FILE": path})
    # an explicit index, VC_TASK_INDEX / MS_NODE_RANK, or the server holding RANK_ID will do
    assert resolve_cluster(spec(node_index=1), {"RANK_TABLE_FILE": path}).node_ranks == (4, 5, 6, 7)
    assert resolve_cluster(spec(), {"RANK_TABLE_FILE": path, "MS_NODE_RANK": "1"}).node_index == 1
    c = resolve_cluster(spec(), {"RANK_TABLE_FILE": path, "RANK_ID": "5"})
    assert (c.node_index, c.local_rank, c.rank_id) == (1, 1, 5)
    # a single server needs nothing
    assert resolve_cluster(spec(), {"RANK_TABLE_FILE": v1_table(tmp_path, ips=("h",))}).node_index == 0


@pytest.mark.parametrize("content, culprit", [
    ("{", "not a rank table"),
    (json.dumps({"server_list": [{"server_id": "a", "device": [{"device_id": "0"}]}]}), "not a rank table"),
    (json.dumps({"status": "initializing", "server_list": []}), "status 'initializing'"),
    (json.dumps({"server_list": [{"server_id": "a", "device": [{"device_id": "0", "rank_id": "1"}]}]}),
     "0..N-1"),
])
def test_bad_rank_tables(tmp_path, content, culprit):
    path = tmp_path / "t.json"
    path.write_text(content)
    assert culprit in fails({"RANK_TABLE_FILE": str(path)})
    assert "no such file" in fails({"RANK_TABLE_FILE": str(tmp_path / "none.json")})


# ---------------------------------------------------------------- boot once per card

BASE = {"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1", "MA_NUM_GPUS": "4"}


@pytest.mark.parametrize("env, card, rank, source", [
    ({"LOCAL_RANK": "2"}, 2, 6, "LOCAL_RANK=2"),
    ({"RANK_ID": "6"}, 2, 6, "RANK_ID=6"),
    ({"DEVICE_ID": "3"}, 3, 7, "DEVICE_ID=3"),
    ({"LOCAL_RANK": "2", "RANK_ID": "6", "DEVICE_ID": "2"}, 2, 6, "LOCAL_RANK=2"),
])
def test_per_card_derivation(env, card, rank, source):
    c = resolve_cluster(spec(), {**BASE, **env})
    assert c.per_card and (c.local_rank, c.rank_id) == (card, rank)
    assert dict(c.sources)["card"] == source


def test_per_node_boot_has_no_card():
    c = resolve_cluster(spec(), BASE)
    assert not c.per_card and c.local_rank is None and c.rank_id is None


def test_rank_id_outside_the_node(tmp_path):
    msg = fails({**BASE, "RANK_ID": "2"})
    assert "RANK_ID=2" in msg and "4-7" in msg and "VC_TASK_INDEX=1" in msg
    msg = fails({"RANK_TABLE_FILE": v1_table(tmp_path), "MA_CURRENT_IP": "10.0.0.1", "RANK_ID": "5"})
    assert "RANK_ID=5" in msg and "0-3" in msg


@pytest.mark.parametrize("env, culprit", [
    ({"LOCAL_RANK": "4"}, "LOCAL_RANK=4"),
    ({"DEVICE_ID": "4"}, "DEVICE_ID=4"),
    ({"LOCAL_RANK": "1", "RANK_ID": "6"}, "LOCAL_RANK=1 is rank 5"),
])
def test_per_card_values_out_of_place(env, culprit):
    assert culprit in fails({**BASE, **env})


def test_rank_id_alone_finds_the_node():
    c = resolve_cluster(spec(), {"MA_NUM_HOSTS": "2", "MA_NUM_GPUS": "4", "RANK_ID": "5"})
    assert (c.node_index, c.local_rank) == (1, 1)


def test_device_id_in_a_rank_table_is_looked_up(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"server_list": [{"server_id": "a", "device": [
        {"device_id": "4", "rank_id": "0"}, {"device_id": "5", "rank_id": "1"}]}]}))
    c = resolve_cluster(spec(), {"RANK_TABLE_FILE": str(path), "DEVICE_ID": "5"})
    assert (c.local_rank, c.rank_id) == (1, 1)
    assert "DEVICE_ID=0" in fails({"RANK_TABLE_FILE": str(path), "DEVICE_ID": "0"})


# ---------------------------------------------------------------- describe

def test_describe_is_one_line_with_every_source():
    line = resolve_cluster(spec(), {**BASE, "RANK_ID": "6", "S3_SECRET_ACCESS_KEY": "hush"}).describe()
    assert line == ("topology: 2 nodes [MA_NUM_HOSTS=2], this is node 1 [VC_TASK_INDEX=1], 4 cards per node "
                    "[MA_NUM_GPUS=4], world 8, ranks 4-7; boot once per card: card 2, rank 6 [RANK_ID=6]")


def test_describe_per_node_and_table(tmp_path):
    c = resolve_cluster(spec(), {"RANK_TABLE_FILE": group_table(tmp_path), "MA_CURRENT_IP": "10.0.0.2"})
    line = c.describe()
    assert "\n" not in line and line.endswith("boot once per node")
    assert "this is node 1 [RANK_TABLE_FILE: MA_CURRENT_IP=10.0.0.2 is server 1]" in line
    assert "world 8 [RANK_TABLE_FILE: 8 ranks]" in line


def test_is_modelarts():
    assert is_modelarts({"MA_JOB_DIR": "/x"}) and is_modelarts({"MA_ANYTHING": ""})
    assert not is_modelarts({"HOME": "/root"})
