"""A training job as the platform runs it, for whole-job tests.

What ModelArts (and a per-card launcher, msrun or a plain S3 cloud) does, and so what this does:
- the boot command is the user's (`cloud-entry -- python <train> --config {config}`), and every
  hyperparameter of the training-job form is appended at its END as `--name=value`;
- each node gets its own environment (`MA_NUM_HOSTS`, `VC_TASK_INDEX`, `MA_NUM_GPUS`,
  `VC_WORKER_HOSTS`, `MA_CURRENT_IP`, ...; or msrun's `MS_WORKER_NUM`/`MS_LOCAL_WORKER`/
  `MS_NODE_RANK`; or an HCCL rank table) and its own local folders: no shared disk, only the
  object store;
- the boot command runs once per node, or once per card (`RANK_ID`, `DEVICE_ID`, `RANK_SIZE`,
  `LOCAL_RANK` per process), all processes of a node in the node's folder;
- a job is stopped with SIGTERM to every boot process.

    job = ModelArtsJob(tmp_path, s3_env, {"load_checkpoint": url, ...}, nodes=2, cards=4)
    results = job.run()              # [Result(node, card, code, output), ...]
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import obs_io
from s3server import ACCESS_KEY, SECRET_KEY

REPO = Path(__file__).resolve().parent.parent
CHECK = str(Path(__file__).resolve().parent / "entry_launch_check.py")
CLOUD_ENTRY = str(Path(sys.executable).parent / "cloud-entry")   # the console script users call
# The recommended boot command (README, "On ModelArts"), with the stand-in training script.
BOOT = [CLOUD_ENTRY, "--", sys.executable, CHECK, "--config", "{config}"]
TOPOLOGIES = ("modelarts", "msrun", "rank_table", "rank_table_groups")


@dataclass
class Result:
    node: int
    card: int | None       # None: the boot command ran once for the node
    code: int
    output: str            # stdout + stderr

    def errors(self) -> list[str]:
        return [x for x in self.output.splitlines() if x.startswith("cloud-entry: error")]


@dataclass
class ModelArtsJob:
    root: Path                              # node i works in root/node<i> (its local disk)
    s3_env: dict[str, str]
    hyperparameters: dict[str, str]         # the form, appended as --name=value in this order
    nodes: int = 1
    cards: int = 8
    per_card: bool = False
    topology: str = "modelarts"
    boot: list[str] = field(default_factory=lambda: list(BOOT))
    env: dict[str, str] = field(default_factory=dict)            # for every process
    node_env: dict[int, dict[str, str]] = field(default_factory=dict)   # per node
    card_dirs: bool = False                 # per card: each card's process in node<i>/rank_<r>/
    procs: list[tuple[int, int | None, subprocess.Popen]] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*self.boot, *(f"--{k}={v}" for k, v in self.hyperparameters.items())]

    def node_dir(self, node: int) -> Path:
        return self.root / f"node{node}"

    def _rank_table(self) -> str:
        path = self.root / "rank_table.json"
        ips = [self._ip(n) for n in range(self.nodes)]
        devices = [[{"device_id": str(d), "device_ip": f"192.168.{n}.{d}", "rank_id": str(n * self.cards + d)}
                    for d in range(self.cards)] for n in range(self.nodes)]
        if self.topology == "rank_table":
            table = {"version": "1.0", "server_count": str(self.nodes), "status": "completed",
                     "server_list": [{"server_id": ip, "container_ip": ip, "device": devs}
                                     for ip, devs in zip(ips, devices)]}
        else:   # the older group_list form: one instance per device
            table = {"status": "completed", "group_count": "1", "group_list": [{
                "group_name": "job", "device_num": str(self.nodes * self.cards), "server_num": str(self.nodes),
                "instance_count": str(self.nodes * self.cards),
                "instance_list": [{"rank_id": d["rank_id"], "server_id": ip,
                                   "devices": [{"device_id": d["device_id"], "device_ip": d["device_ip"]}]}
                                  for ip, devs in zip(ips, devices) for d in devs]}]}
        path.write_text(json.dumps(table))
        return str(path)

    @staticmethod
    def _ip(node: int) -> str:
        return f"10.0.0.{node + 1}"

    def environment(self, node: int, card: int | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MA_", "VC_", "MS_", "RANK_", "CLOUD_ENTRY_", "DEVICE_", "LOCAL_RANK",
                                    "ENTRY_CHECK_"))}
        env.update(self.s3_env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        world = self.nodes * self.cards
        if self.topology == "msrun":   # a plain Kubernetes/Volcano cloud with MindSpore's operator
            env.update(MS_WORKER_NUM=str(world), MS_LOCAL_WORKER=str(self.cards), MS_NODE_RANK=str(node),
                       MS_SCHED_HOST="10.0.0.1", MS_SCHED_PORT="8118")
        else:
            env.update(MA_JOB_DIR=str(self.node_dir(node)), MA_LOG_DIR=str(self.node_dir(node) / "ma_log"),
                       MA_CURRENT_IP=self._ip(node), VC_WORKER_NUM=str(self.nodes),
                       VC_WORKER_HOSTS=",".join(f"job-worker-{n}.job" for n in range(self.nodes)))
            if self.topology == "modelarts":
                env.update(MA_NUM_HOSTS=str(self.nodes), VC_TASK_INDEX=str(node), MA_NUM_GPUS=str(self.cards))
            else:
                env.update(RANK_TABLE_FILE=self._rank_table())
        if card is not None:
            env.update(RANK_ID=str(node * self.cards + card), DEVICE_ID=str(card), RANK_SIZE=str(world),
                       LOCAL_RANK=str(card))
        env.update(self.env)
        env.update(self.node_env.get(node, {}))
        return env

    def start(self) -> "ModelArtsJob":
        for node in range(self.nodes):
            for card in (range(self.cards) if self.per_card else [None]):
                cwd = self.node_dir(node)
                if self.card_dirs and card is not None:   # model-zoo launchers: `cd rank_<r>`
                    cwd = cwd / f"rank_{node * self.cards + card}"
                cwd.mkdir(parents=True, exist_ok=True)
                # output to a file, not a pipe: a full pipe would block a node the others wait for
                with open(self._output(node, card), "w") as out:
                    proc = subprocess.Popen(self.command(), env=self.environment(node, card), cwd=cwd,
                                            stdout=out, stderr=subprocess.STDOUT)
                self.procs.append((node, card, proc))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """As ModelArts stops a job: the signal to every boot process."""
        for _, _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def kill(self) -> None:
        """As nodes that die (their containers gone): every process of the job, the boot
        processes and all they started (conversion workers, upload helpers), is stopped first
        (none sees another die and acts on it), then SIGKILLed."""
        import psutil
        frozen: dict[int, psutil.Process] = {}
        while True:   # a process may start a child until it is stopped itself
            found = {}
            for _, _, proc in self.procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    boot = psutil.Process(proc.pid)
                    found.update({p.pid: p for p in [boot, *boot.children(recursive=True)]})
            new = [p for pid, p in found.items() if pid not in frozen]
            if not new:
                break
            for p in new:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.suspend()
                frozen[p.pid] = p
        for p in frozen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(list(frozen.values()), timeout=30)

    def _output(self, node: int, card: int | None) -> Path:
        return self.root / f"boot_node{node}" f"{'' if card is None else f'_card{card}'}.out"

    def wait(self, timeout: float = 240) -> list[Result]:
        results = []
        try:
            for node, card, proc in self.procs:
                proc.wait(timeout)
                results.append(Result(node, card, proc.returncode, self._output(node, card).read_text()))
        finally:
            for _, _, proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return results

    def run(self, timeout: float = 240) -> list[Result]:
        return self.start().wait(timeout)


@contextlib.contextmanager
def group_killed_after(p: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """`p` (started with start_new_session=True: signals to its group reach its children, as a
    terminal's Ctrl-C does), whose process group is SIGKILLed on the way out if it still runs
    (a failed check)."""
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def stopped_mid_way(argv: list[str], env: dict, proxy, at, stop: str) -> tuple[int, str, str]:
    """Run argv in its own process group through `proxy` (faultproxy.FaultProxy) until a request
    at(method, path) accepts reaches the proxy: the group is frozen there (SIGSTOP, the request
    held with it), then stopped: SIGKILL ('kill'), or Ctrl-C ('ctrl-c': SIGINT, then SIGCONT so
    the run handles it and its upload under way may end). Returns (exit code, stdout, stderr)."""
    import threading
    import time
    started, frozen = threading.Event(), threading.Event()
    procs: list[subprocess.Popen] = []

    def freeze(method: str, path: str):
        if not frozen.is_set() and at(method, path):
            started.wait(30)
            os.killpg(procs[0].pid, signal.SIGSTOP)
            frozen.set()
        return None

    proxy.rules.append(freeze)
    try:
        with group_killed_after(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True, start_new_session=True)) as p:
            procs.append(p)
            started.set()
            deadline = time.monotonic() + 240
            while not frozen.is_set() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert frozen.is_set(), p.communicate(timeout=60)
            for sig in (signal.SIGKILL,) if stop == "kill" else (signal.SIGINT, signal.SIGCONT):
                os.killpg(p.pid, sig)
            out, err = p.communicate(timeout=120)
    finally:
        proxy.rules.remove(freeze)
    return p.returncode, out, err


def upload(local: str, url: str) -> str:
    """Put a test's source or strategy (file or folder) on the object store; returns url."""
    (obs_io.file.copy_parallel if os.path.isdir(local) else obs_io.file.copy)(local, url)
    return url


def digest_tree(path: str) -> dict[str, str]:
    """relative path -> sha256 of every file below path: to show a folder was not touched."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def assert_no_secret(folder: Path) -> None:
    """No file the job left (logs, configs, markers, outputs of the boot command) holds a key."""
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix in (".log", ".yaml", ".txt", ".json", ".py", ".out"):
            text = p.read_text(errors="replace")
            assert SECRET_KEY not in text and ACCESS_KEY not in text, p
