"""Starting the user's command (`{config}` substitution, environment, the moxing stand-in)
and stopping it with the entry.

Why a shim package on PYTHONPATH: MindFormers imports `moxing` whenever it believes it runs on
ModelArts; the launched process is a new interpreter, so installing obs_io in our own process
is not enough. The shim is a `moxing` package whose import installs obs_io in its place.

Not where Huawei's own moxing is installed (ModelArts' preset images have it): the command
then gets the real one. real_moxing() asks the interpreter that will run the command, in the
command's environment, without importing anything: the first `moxing` on its sys.path, unless
it is one of our shims, counts as Huawei's when it is a package with a `framework` or `file`
subpackage (moxing.framework.file is where mox.file lives). PyPI's unrelated `moxing` has
neither, so it does not count, and our shim, first on PYTHONPATH, wins over it.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import obs_io
from reshard.parent_death import kill_with_parent

from cloud_entry import signals
from cloud_entry.config import mask_args
from cloud_entry.errors import EntryError, WaitTimeout

log = logging.getLogger(__name__)

# ModelArts runs each task of a training job as a Kubernetes Pod (Huawei, "训练容器生命周期",
# support.huaweicloud.com/usermanual-standard-modelarts/develop-container-0001.html), and
# Kubernetes SIGKILLs a container terminationGracePeriodSeconds after its SIGTERM: 30 s unless
# the Pod sets it. ModelArts' own value is documented nowhere we found (unconfirmed). 20 s
# leaves the entry about 10 s of those 30 to kill the group's rest and upload the logs.
STOP_GRACE = 20.0

SHIM_MARK = "Written by cloud_entry: on this job `import moxing` is obs_io"


def shim_source(packages: Sequence[str] = ()) -> str:
    """The stand-in `moxing/__init__.py`. The training command's own packages come first: only
    when it cannot import obs_io (or what obs_io needs: boto3, ...) are `packages` (default: the
    folder holding this installation's obs_io and our interpreter's site-packages) appended to
    its sys.path, at `import moxing` and never before, so its numpy, MindSpore and protobuf stay
    its own."""
    packages = list(packages) or list(dict.fromkeys(
        [str(Path(obs_io.__file__).resolve().parent.parent), sysconfig.get_paths()["purelib"],
         sysconfig.get_paths()["platlib"]]))
    return f'''"""{SHIM_MARK} (Huawei's moxing API)."""
import sys

try:
    import obs_io
    obs_io.file
except ImportError:   # the command's own packages first; this installation's for what it lacks
    sys.path.extend(p for p in {packages!r} if p not in sys.path)
    import obs_io

obs_io.install_as_moxing()
'''
PROBE_TIMEOUT = 60.0

# Run by the command's interpreter: where the `moxing` it would import lives, if that is
# Huawei's (see the module docstring); nothing is imported, so nothing of moxing runs here.
_PROBE = """
import importlib.machinery, sys
mark = sys.argv[1].encode()
for entry in sys.path:
    spec = importlib.machinery.PathFinder.find_spec("moxing", [entry])
    if spec is None:
        continue
    if spec.origin and spec.has_location:
        try:
            with open(spec.origin, "rb") as f:
                if mark in f.read(4096):
                    continue
        except OSError:
            pass
    places = list(spec.submodule_search_locations or [])
    if places and any(importlib.machinery.PathFinder.find_spec("moxing." + sub, places)
                      for sub in ("framework", "file")):
        print(places[0])
    break
"""


def command(launch_cmd: Sequence[str], config_path: str) -> list[str]:
    return [part.replace("{config}", config_path) for part in launch_cmd]


# Python options that take a value in the next argument (before the script)
_PY_VALUE_OPTIONS = ("-W", "-X", "-Q")


def _is_python(program: str) -> bool:
    """`python`, `python3`, `python3.11`, or a path to one."""
    name = os.path.basename(program)
    return name.startswith("python") and name[6:].replace(".", "").isdigit()


def check_command(launch_cmd: Sequence[str], env: Mapping[str, str]) -> None:
    """Before anything is converted, what can be known of the training command: its program is
    found on the environment's PATH (a `python` the image lacks is found in the first second,
    not after the conversion and the upload), and a python's script file exists (relative to
    the working folder the command runs in). EntryError naming them."""
    if not launch_cmd:
        return
    program, path = launch_cmd[0], env.get("PATH", os.defpath)
    if shutil.which(program, path=path) is None:
        where = "is not an executable file" if os.sep in program else f"is not on PATH ({path})"
        raise EntryError(f"the training command's program {program!r} {where}: fix the boot command "
                         "or the image")
    if not _is_python(program):
        return
    args = list(launch_cmd[1:])
    while args and args[0].startswith("-") and args[0] not in ("-", "-m", "-c"):
        args = args[2:] if args[0] in _PY_VALUE_OPTIONS else args[1:]
    if args and args[0] not in ("-", "-m", "-c") and args[0].endswith(".py") and "{config}" not in args[0] \
            and not os.path.isfile(args[0]):
        raise EntryError(f"the training command's script {args[0]} does not exist (relative to "
                         f"{os.getcwd()}): fix the boot command")


def interpreter(env: Mapping[str, str], launch_cmd: Sequence[str] = ()) -> str:
    """The Python that will run the training: the command's own first word when it is a
    python, else the `python` (or `python3`) its PATH finds (msrun, bash scripts and torchrun
    start that one), else ours."""
    path = env.get("PATH", os.defpath)
    if launch_cmd and _is_python(launch_cmd[0]):
        found = shutil.which(launch_cmd[0], path=path)
        if found:
            return found
    return shutil.which("python", path=path) or shutil.which("python3", path=path) or sys.executable


def real_moxing(env: Mapping[str, str], launch_cmd: Sequence[str] = ()) -> str | None:
    """The folder of Huawei's moxing package as the training command's interpreter would import
    it with environment `env` (without our shim), or None (none, or PyPI's unrelated one).
    A probe that fails is logged and taken as None: the stand-in then serves the command."""
    return _probe(interpreter(env, launch_cmd), tuple(sorted(env.items())), os.getcwd())


@lru_cache(maxsize=8)
def _probe(python: str, env_items: tuple[tuple[str, str], ...], cwd: str) -> str | None:
    """real_moxing()'s question, asked once per interpreter, environment and folder (the
    entry asks it for the strategy pass and for the launch, with the same answer)."""
    try:
        done = subprocess.run([python, "-c", _PROBE, SHIM_MARK], env=dict(env_items), cwd=cwd, capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not ask %s whether Huawei's moxing is installed (%s): using obs_io's stand-in",
                    python, exc)
        return None
    if done.returncode != 0:
        log.warning("could not ask %s whether Huawei's moxing is installed (exit %d: %s): using obs_io's "
                    "stand-in", python, done.returncode, done.stderr.strip().splitlines()[-1:] or "")
        return None
    return done.stdout.strip() or None


def write_moxing_shim(shim_dir: str, env: Mapping[str, str] | None = None) -> str:
    """Write the stand-in `moxing` package into shim_dir, unless the training command's
    interpreter has Huawei's own (env: the command's environment, ours by default)."""
    real = real_moxing(os.environ if env is None else env)
    if real:
        log.info("Huawei's moxing is installed (%s): the launched command uses it, not obs_io's stand-in", real)
        return shim_dir
    obs_io.file.write(str(Path(shim_dir) / "moxing" / "__init__.py"), shim_source())
    return shim_dir


def environment(base: Mapping[str, str], config_path: str, node_ranks: Sequence[int],
                shim_dir: str | None) -> dict[str, str]:
    """The launched command's environment: ours (it needs the storage keys too, in memory
    only), plus the effective config path, this node's ranks and, on ModelArts, the shim's
    folder first on PYTHONPATH unless Huawei's moxing is installed for the command
    (real_moxing). Nothing else of ours: the training interpreter imports its own numpy,
    MindSpore and protobuf, never this installation's (shim_source)."""
    env = dict(base)
    env["CLOUD_ENTRY_CONFIG"] = config_path
    env["CLOUD_ENTRY_LOCAL_RANKS"] = ",".join(map(str, node_ranks))
    if shim_dir and not real_moxing(base):
        paths = [shim_dir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def stop_grace(env: Mapping[str, str]) -> float:
    """Seconds a stopped command gets to end before its group is SIGKILLed: STOP_GRACE, or
    CLOUD_ENTRY_STOP_GRACE where the platform's own grace is known to be longer or shorter."""
    text = env.get("CLOUD_ENTRY_STOP_GRACE", "").strip()
    if not text:
        return STOP_GRACE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise EntryError(f"CLOUD_ENTRY_STOP_GRACE={text!r}: expected a number of seconds >= 0")
    return value


def run_command(cmd: Sequence[str], env: Mapping[str, str], timeout: float | None = None,
        what: str = "launch command") -> int:
    """Run to completion in its own process group and return its exit code (128+N when
    signal N ended it, as shells report it). With a timeout (the strategy pass) the group is
    stopped when it runs out and WaitTimeout raised; the training itself is not bounded by us.

    A stop request meanwhile (SIGTERM, SIGHUP, SIGINT) is passed on to the group, which gets
    stop_grace() seconds before SIGKILL; then Terminated is raised carrying the command's exit
    code, for the entry to exit with. Raised, not returned: after the strategy pass the entry
    must not go on converting because the command ended well. Any other exception on our side
    stops the group the same way: no training process outlives the entry."""
    grace = stop_grace(env)
    log.info("running %s: %s", what, " ".join(mask_args(cmd)))
    log.debug("%s environment: PYTHONPATH=%r, CLOUD_ENTRY_CONFIG=%r, CLOUD_ENTRY_LOCAL_RANKS=%r", what,
              env.get("PYTHONPATH", ""), env.get("CLOUD_ENTRY_CONFIG", ""), env.get("CLOUD_ENTRY_LOCAL_RANKS", ""))
    with signals.raising():
        try:
            proc = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True,
                                    preexec_fn=kill_with_parent)
        except OSError as exc:
            raise EntryError(f"{what} {cmd[0]!r}: cannot start ({exc.strerror or exc})") from None
        try:
            return _shell_code(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            _stop(proc, signal.SIGTERM, grace)
            raise WaitTimeout(f"{what} did not finish within {timeout:g}s (--transform_timeout): "
                              "killed") from None
        except (signals.Terminated, KeyboardInterrupt) as exc:
            sig = exc.signum if isinstance(exc, signals.Terminated) else signal.SIGINT
            log.warning("%s received: passing it on to the %s, waiting up to %gs",
                        signal.Signals(sig).name, what, grace)
            code = _stop(proc, sig, grace)
            log.warning("%s stopped: exit code %d", what, code)
            # the training's own code is the job's; a stopped strategy pass is just a stop
            raise signals.Terminated(sig, code if timeout is None else None) from None
        except BaseException:   # the last of this chain, which stops the group per exception kind
            _stop(proc, signal.SIGTERM, grace)
            raise


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the group; False if no process of it is left (sig 0 only asks)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, sig: int, grace: float) -> int:
    """sig to the command's group; up to `grace` seconds for the whole group (its leader, and
    the workers a launcher like msrun started) to end; SIGKILL to what is left, also when a
    second stop request cuts the grace short. Returns the leader's exit code."""
    deadline = time.monotonic() + grace
    try:
        _signal_group(proc.pid, sig)
        proc.wait(grace)
        while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    return _shell_code(proc.returncode)
