"""Starting the user's command: `{config}` substitution, environment, the moxing stand-in.

Why a shim package on PYTHONPATH: MindFormers imports `moxing` whenever it believes it runs on
ModelArts; the launched process is a new interpreter, so installing obs_io in our own process
is not enough. The shim is a `moxing` package whose import installs obs_io in its place.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import obs_io

from cloud_entry.errors import EntryError, WaitTimeout

log = logging.getLogger(__name__)

SHIM = '''"""Written by cloud_entry: on this job `import moxing` is obs_io (Huawei's moxing API)."""
import obs_io

obs_io.install_as_moxing()
'''


def command(launch_cmd: Sequence[str], config_path: str) -> list[str]:
    return [part.replace("{config}", config_path) for part in launch_cmd]


def write_moxing_shim(shim_dir: str) -> str:
    obs_io.file.write(str(Path(shim_dir) / "moxing" / "__init__.py"), SHIM)
    return shim_dir


def environment(base: Mapping[str, str], config_path: str, node_ranks: Sequence[int],
                shim_dir: str | None) -> dict[str, str]:
    """The launched command's environment: ours (it needs the storage keys too, in memory
    only), plus the effective config path, this node's ranks and, on ModelArts, the shim."""
    env = dict(base)
    env["CLOUD_ENTRY_CONFIG"] = config_path
    env["CLOUD_ENTRY_LOCAL_RANKS"] = ",".join(map(str, node_ranks))
    if shim_dir:
        obs_io_parent = str(Path(obs_io.__file__).resolve().parent.parent)
        paths = [shim_dir, obs_io_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run(cmd: Sequence[str], env: Mapping[str, str], timeout: float | None = None,
        what: str = "launch command") -> int:
    """Run to completion and return its exit code. With a timeout (the strategy pass) the
    process group is killed when it runs out; the training itself is not bounded by us."""
    log.info("running %s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True)
    except OSError as exc:
        raise EntryError(f"{what} {cmd[0]!r}: cannot start ({exc.strerror or exc})") from None
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise WaitTimeout(f"{what} did not finish within {timeout:g}s (--transform_timeout): killed") from None
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
