#!/usr/bin/env python3
"""Does MindFormers load what `cloud-entry` converted? Checked against real MindFormers releases.

Why this exists: the entry's effective config is only right if MindFormers' own checkpoint logic
(`Trainer._check_config_rules` -> `convert_checkpoint_config`, then `transform_and_load_checkpoint`
/ `get_load_checkpoint_result`, or the non-legacy `mindformers.checkpoint` path) picks the folder
we converted and does not transform it again. That logic moves between releases, so it is run
for real, not re-implemented: each MindFormers release goes into its own venv
(`<root>/<version>/venv`, never the project's `.venv`), tiny jobs are run through
`python -m cloud_entry` in the project's interpreter (a complete checkpoint -> 2 ranks, the
launch command copies `{config}` out), and every effective config is loaded in that venv with
`MindFormerConfig` and driven through MindFormers' own functions up to the point that needs a
network. Only what needs a network or devices is replaced by recorders (`compile_model`,
`TransformCkpt`, `load_param_into_net`); `mindspore.load_checkpoint` really reads the file.

The same file runs in two roles: the driver (project venv: installs, runs the entry, prints the
table) and, with `--probe`, the probe inside a MindFormers venv (stdlib and MindFormers only;
nothing from this project is imported there).

Exit codes: 0 every checked row matches; 1 a row does not (or nothing could be checked);
2 bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".mf-compat"
DEFAULT_VERSIONS = ("2.1.0", "2.0.0", "1.9.0", "1.8.0")
# The mindspore a release is installed with when pip cannot resolve its own pins (see
# ensure_venv): the project's pin.
FALLBACK_MINDSPORE = "mindspore~=2.10.0"
WORLD = 2
CKPT_NAME = "llama"
PREFIX = "checkpoint_"
VERSION_RE = re.compile(r"^\d+(\.\d+){1,3}$")
PIP_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")
PIP_TIMEOUT = 3600
# Added to every install (recorded in install.json): pyarrow 26 refuses numpy<2 at import
# without declaring it, while mindformers pins numpy<2.0.0 and 2.0.0/2.1.0 ask pyarrow>=23.0.1:
# pip's pick (26.x) makes `import mindformers` fail ("pyarrow requires NumPy 2.0 or newer").
EXTRA_PINS = ("pyarrow<26",)


# --stub-missing: an importable stand-in for a requirement no index holds (hyper-parallel, which
# mindformers 2.x imports at `import mindformers` for its PyNative models only). Every name is a
# do-nothing class, every submodule such a module: enough for imports, nothing the checkpoint
# logic checked here calls (a call into it would show up as an error in the row).
STUB_SOURCE = '''"""Stand-in written by scripts/mindformers_compat.py --stub-missing: no package index
holds the real distribution. Importable names only; nothing works."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Module(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _Module
'''


class BadInput(Exception):
    """One line naming the culprit; exit 2."""


# ================================================================ data

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One config format the entry writes, in one run mode.

    `section`: the base config has a non-empty `checkpoint:` section (MindFormers' newer format);
    else only the legacy top-level keys. The entry converts in every case (with a section in
    train/finetune it launches with the legacy format: MindFormers' loader for the section cannot
    read the rank_x/ layout)."""
    name: str
    section: bool
    run_mode: str

    def base_config(self) -> dict[str, Any]:
        """A minimal MindFormers config: what the checkpoint logic reads, nothing of a model."""
        config: dict[str, Any] = {
            "run_mode": self.run_mode, "use_parallel": True, "load_checkpoint": "",
            "auto_trans_ckpt": False, "load_ckpt_format": "ckpt", "output_dir": "./output",
            "resume_training": False,
            "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1},
            "model": {"model_config": {"checkpoint_name_or_path": ""}},
        }
        if self.section:
            config["checkpoint"] = {"load_path": "", "no_load_optim": True}
        return config


SCENARIOS = (
    Scenario("legacy keys, predict", False, "predict"),
    Scenario("legacy keys, train", False, "train"),
    Scenario("checkpoint: section, predict", True, "predict"),
    Scenario("checkpoint: section, train", True, "train"),
)


@dataclasses.dataclass
class Job:
    """One entry run: where it ran and what MindFormers should load for each rank."""
    scenario: Scenario
    cwd: str
    config: str                     # the file the launch command got as {config}
    source: str
    expected: dict[int, str]        # rank -> the file MindFormers should load
    expected_names: dict[int, list[str]]
    error: str = ""


@dataclasses.dataclass
class Install:
    """How one MindFormers release got into its venv."""
    version: str
    python: str = ""
    mindspore: str = ""
    mode: str = ""                  # "resolved" (pip's own pins) or "no-deps + <spec>"
    dropped: list[str] = dataclasses.field(default_factory=list)
    pins: list[str] = dataclasses.field(default_factory=list)
    resolve_error: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclasses.dataclass
class Row:
    """One line of the table: one release, one config format, every rank."""
    mindformers: str
    mindspore: str
    scenario: str
    imported: str
    config_loads: str
    loads: str
    retransform: str
    matches: bool
    notes: str = ""


# ================================================================ driver: install

def _run(cmd: list[str], log: Path, timeout: float = PIP_TIMEOUT, cwd: str | None = None) -> tuple[int, str]:
    """Run, appending output to `log`; the output is returned too (pip's reasons are in it)."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, cwd=cwd)
        f.write(proc.stdout)
    return proc.returncode, proc.stdout


def _pip_reason(output: str) -> str:
    """pip's own one-line reason (its last ERROR line), without the noise around it."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    if not errors:
        lines = output.strip().splitlines()
        return lines[-1] if lines else "pip failed"
    preferred = [e for e in errors if "No matching distribution" in e or "conflict" in e.lower()]
    return (preferred or errors)[-1].removeprefix("ERROR: ")


def _installed(python: Path, dist: str) -> str:
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def _requirements(python: Path) -> list[str]:
    """mindformers' own Requires-Dist, from its installed metadata."""
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m, json; "
                          "print(json.dumps(m.requires('mindformers') or []))"],
                         capture_output=True, text=True, check=True)
    return [r for r in json.loads(out.stdout) if "extra ==" not in r]


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def ensure_venv(version: str, root: Path, python: str, mindspore: str | None, reinstall: bool) -> Install:
    """`<root>/<version>/venv` with mindformers==version, recorded in install.json (reused).

    First pip resolves the release with its own pins (mindformers 1.9.0 pins mindspore~=2.9.0,
    2.1.0 pins ~=2.11.0); if that fails (a pin no index holds), the reason is recorded and the
    release goes in with --no-deps, its other requirements with `mindspore` replaced by
    FALLBACK_MINDSPORE, dropping (and recording) any requirement no index holds.
    `mindspore`: skip the resolution and use this spec from the start."""
    folder = root / version
    record = folder / "install.json"
    venv_python = folder / "venv" / "bin" / "python"
    if record.is_file() and venv_python.is_file() and not reinstall:
        inst = Install(**json.loads(record.read_text()))
        if inst.ok and inst.pins == list(EXTRA_PINS) and _installed(venv_python, "mindformers") == version:
            print(f"[{version}] reusing {folder / 'venv'} (mindspore {inst.mindspore}, {inst.mode})", flush=True)
            return inst
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "install.log"
    inst = Install(version)
    print(f"[{version}] installing into {folder / 'venv'} (log: {log})", flush=True)
    if reinstall or not venv_python.is_file():
        code, out = _run([python, "-m", "venv", "--clear", str(folder / "venv")], log)
        if code:
            inst.error = f"venv: {_pip_reason(out)}"
            return _save(inst, record)
    pip = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check"]
    inst.python = subprocess.run([str(venv_python), "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True).stdout.strip()
    inst.pins = list(EXTRA_PINS)
    if mindspore is None:
        code, out = _run([*pip, f"mindformers=={version}", *EXTRA_PINS], log)
        if code == 0:
            inst.mode = "resolved"
        else:
            inst.resolve_error = _pip_reason(out)
            print(f"[{version}] pip cannot resolve its pins: {inst.resolve_error}; "
                  f"retrying with --no-deps and {FALLBACK_MINDSPORE}", flush=True)
    if not inst.mode:
        spec = mindspore or FALLBACK_MINDSPORE
        code, out = _run([*pip, "--no-deps", f"mindformers=={version}"], log)
        if code:
            inst.error = f"mindformers=={version}: {_pip_reason(out)}"
            return _save(inst, record)
        wanted = [r for r in _requirements(venv_python) if _dist_name(r) != "mindspore"] + [spec, *EXTRA_PINS]
        for _ in range(8):
            code, out = _run([*pip, *wanted], log)
            missing = PIP_MISSING.search(out)
            if code == 0 or not missing:
                break
            name = _dist_name(missing.group(1))
            inst.dropped.append(next(r for r in wanted if _dist_name(r) == name))
            wanted = [r for r in wanted if _dist_name(r) != name]
            print(f"[{version}] no index holds {inst.dropped[-1]}: installing without it", flush=True)
        if code:
            inst.error = f"requirements with {spec}: {_pip_reason(out)}"
            return _save(inst, record)
        inst.mode = f"no-deps + {spec}"
    inst.mindspore = _installed(venv_python, "mindspore")
    return _save(inst, record)


def _stub_folders(inst: Install, root: Path) -> list[Path]:
    site = subprocess.run([str(root / inst.version / "venv" / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return [Path(site) / _dist_name(r).replace("-", "_") for r in inst.dropped]


def stubs_in_place(inst: Install, root: Path) -> list[str]:
    """The dropped requirements a previous --stub-missing run stood in for (still there)."""
    return [f.name for f in _stub_folders(inst, root)
            if (f / "__init__.py").is_file() and (f / "__init__.py").read_text() == STUB_SOURCE]


def stub_dropped(inst: Install, root: Path) -> list[str]:
    """Write STUB_SOURCE as the module of every dropped requirement; the modules stubbed. Only
    called when `import mindformers` fails without them: a release that imports them optionally
    (2.1.0) must not take a stub for the real package."""
    modules = []
    for folder in _stub_folders(inst, root):
        folder.mkdir(exist_ok=True)
        tmp = folder / "__init__.py.tmp"
        tmp.write_text(STUB_SOURCE)
        os.replace(tmp, folder / "__init__.py")
        modules.append(folder.name)
    return modules


def _save(inst: Install, record: Path) -> Install:
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(inst), indent=1))
    os.replace(tmp, record)
    if inst.error:
        print(f"[{inst.version}] cannot install: {inst.error}", flush=True)
    return inst


# ================================================================ driver: entry jobs

def make_jobs(work: Path) -> list[Job]:
    """Run the entry once per scenario: complete checkpoint -> 2 ranks (mp2), launch command =
    copy `{config}` out. Uses the test suite's synthetic Llama (tests/synth.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    import synth   # noqa: E402 - the project's own helpers, only in the driver role

    work.mkdir(parents=True, exist_ok=True)
    params = synth.llama_params(num_layers=2, vocab=64, hidden=32, ffn=64)
    source = synth.write_complete_checkpoint(str(work / "models" / f"{CKPT_NAME}.ckpt"), params)
    strategy = str(work / f"strategy_mp{WORLD}")
    synth.write_strategy(strategy, dp=1, mp=WORLD, pp=1, params=params)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_NUM", "MS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    jobs = []
    for i, sc in enumerate(SCENARIOS):
        cwd = work / f"job{i}_{re.sub(r'[^a-z]+', '_', sc.name.lower()).strip('_')}"
        cwd.mkdir(parents=True, exist_ok=True)
        base = cwd / "base.yaml"
        base.write_text(json.dumps(sc.base_config(), indent=1))   # JSON is YAML
        launched = cwd / "launched_config.yaml"
        launched.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "cloud_entry", f"--config={base}", f"--load_checkpoint={source}",
               f"--dst_strategy={strategy}", "--auto_trans_ckpt=True", f"--model_parallel={WORLD}",
               f"--npu_num_per_node={WORLD}", "--node_num=1", "--",
               sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
               "{config}", str(launched)]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        (cwd / "entry.log").write_text(proc.stdout + proc.stderr)
        converted = cwd / "output" / "transformed_checkpoint" / CKPT_NAME
        expected, names = {}, {}
        for r in range(WORLD):
            path = str(converted / f"rank_{r}" / f"{PREFIX}{r}.ckpt")
            expected[r] = path
            names[r] = sorted(synth.load_params(path)) if os.path.isfile(path) else []
        error = "" if proc.returncode == 0 and launched.is_file() else \
            f"cloud_entry exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        jobs.append(Job(sc, str(cwd), str(launched), source, expected, names, error))
        print(f"[entry] {sc.name}: {'ok' if not error else error} ({cwd / 'entry.log'})", flush=True)
    return jobs


# ================================================================ the model check (driver)

# MindFormers' own Llama, as small as it gets: what the probe builds in each release's venv and
# what the driver's checkpoint holds (names and shapes are MindFormers' LlamaForCausalLM's).
# Every dtype float32: CPU kernels, and logits that must be equal to the last bit. The fused
# RmsNorm kernel and the rotary embedding's broadcasting BatchMatMul have no CPU kernel:
# MindFormers' own alternatives (fused_rms_norm=False, use_rope_slice=True) compute the same.
MODEL = {"batch_size": 1, "seq_length": 16, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
         "vocab_size": 128, "intermediate_size": 128, "compute_dtype": "float32",
         "layernorm_compute_type": "float32", "softmax_compute_type": "float32", "rotary_dtype": "float32",
         "param_init_type": "float32", "use_past": False, "use_flash_attention": False,
         "fused_rms_norm": False, "use_rope_slice": True}
# What a MindFormers training checkpoint carries beside the weights and their AdamW moments; the
# resume check expects MindFormers to restore exactly these.
TRAINING_STATE = {"global_step": 1234, "epoch_num": 3, "step_num": 1234, "loss_scale": 1024.0}
INPUT_IDS = [(7 * i + 3) % MODEL["vocab_size"] for i in range(MODEL["seq_length"])]
# The model cases: (name, run mode, entry arguments beyond the common ones, source key).
MODEL_CASES = (("predict", "predict", "ranks4"), ("train", "train", "ranks8"), ("resume", "train", "ranks8"))
# Broken variants of the predict checkpoint: each must change the logits (the check has teeth).
BROKEN = ("wrong slice", "stale", "missing")


@dataclasses.dataclass
class ModelJobs:
    """The model check's inputs, made once by the driver with the entry (the product's path)."""
    original: str                          # the complete checkpoint the reference loads
    configs: dict[str, str]                # case -> effective config the entry launched with
    broken: dict[str, str]                 # broken variant -> checkpoint file
    error: str = ""


def model_params(seed: int = 0) -> dict[str, Any]:
    """MindFormers' tiny Llama as a training checkpoint: float32 weights (norms near 1), an AdamW
    moment pair for every weight, and the training state."""
    import numpy as np
    sys.path.insert(0, str(REPO / "tests"))
    import synth   # noqa: E402 - the project's own helpers, only in the driver role
    rng = np.random.default_rng(seed)
    shapes = synth.llama_shapes(MODEL["num_layers"], MODEL["vocab_size"], MODEL["hidden_size"],
                                MODEL["intermediate_size"])
    params: dict[str, Any] = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        params[name] = (1 + 0.1 * x) if name.endswith("norm.weight") else 0.1 * x
    for name, shape in shapes.items():
        params[f"adam_m.{name}"] = 0.01 * rng.standard_normal(shape, dtype=np.float32)
        params[f"adam_v.{name}"] = 0.001 * rng.random(shape, dtype=np.float32)
    for name, value in TRAINING_STATE.items():
        params[name] = np.array([value], np.float32 if isinstance(value, float) else np.int32)
    return params


def _entry(cwd: Path, args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """One `python -m cloud_entry` job whose launch command copies `{config}` out; returns (the
    launched config, "" or the entry's last error line)."""
    cwd.mkdir(parents=True, exist_ok=True)
    launched = cwd / "launched_config.yaml"
    launched.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cloud_entry", *args, "--node_num=1", "--",
           sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{config}", str(launched)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    (cwd / "entry.log").write_text(proc.stdout + proc.stderr)
    launches = "--transform_only=True" not in args
    error = "" if proc.returncode == 0 and (launched.is_file() or not launches) else \
        f"cloud_entry exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return str(launched), error


def make_model_jobs(work: Path) -> ModelJobs:
    """The original complete checkpoint -> 8 ranks (dp2·mp2·pp2, optimizer sharded) -> 4 ranks
    (dp1·mp2·pp2), each through the entry; then single-card jobs as the platform runs them: 4 ->
    1 for predict, 8 -> 1 for train and for resume (resume_training: True). The effective
    configs are what MindFormers gets. The broken variants are the predict checkpoint with one
    parameter altered as a bug would: two mp slices swapped, one from another checkpoint, one left out."""
    import numpy as np
    import yaml
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    import mindspore as ms   # noqa: E402 - the driver's MindSpore 2.10 writes the test files
    import synth   # noqa: E402

    work = work / "model"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = model_params()
    original = synth.write_complete_checkpoint(str(work / "source" / f"{CKPT_NAME}.ckpt"), params)
    s8, s4, merged8 = str(work / "strategy8"), str(work / "strategy4"), str(work / "merged8.ckpt")
    synth.write_strategy(s8, dp=2, mp=2, pp=2, opt_shard=-1, params=params, merged_file=merged8)
    synth.write_strategy(s4, dp=1, mp=2, pp=2, params=params)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_NUM", "MS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base = {"use_parallel": True, "load_checkpoint": "", "auto_trans_ckpt": False, "load_ckpt_format": "ckpt",
            "output_dir": "./output", "resume_training": False, "only_save_strategy": False,
            "load_ckpt_async": False, "remove_redundancy": False, "use_legacy_format": True,
            "runner_config": {"sink_mode": True, "epochs": 1, "batch_size": 1},
            "callbacks": [],
            "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1},
            "model": {"model_config": {"type": "LlamaConfig", **MODEL, "checkpoint_name_or_path": ""},
                      "arch": {"type": "LlamaForCausalLM"}}}
    jobs = ModelJobs(original, {}, {})

    def run(name: str, config: dict, args: list[str]) -> str:
        folder = work / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "base.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        launched, error = _entry(folder, [f"--config={folder / 'base.yaml'}", *args], env)
        print(f"[entry] model, {name}: {error or 'ok'} ({folder / 'entry.log'})", flush=True)
        jobs.error = jobs.error or (f"{name}: {error}" if error else "")
        return launched

    run("to 8 ranks", base, [f"--load_checkpoint={original}", f"--dst_strategy={s8}", "--auto_trans_ckpt=True",
                             "--data_parallel=2", "--model_parallel=2", "--pipeline_stage=2",
                             "--npu_num_per_node=8", "--transform_only=True"])
    ranks8 = str(work / "to_8_ranks" / "output" / "transformed_checkpoint" / CKPT_NAME)
    run("to 4 ranks", base, [f"--load_checkpoint={ranks8}", f"--src_strategy_path_or_dir={merged8}",
                             f"--dst_strategy={s4}", "--auto_trans_ckpt=True", "--data_parallel=1",
                             "--model_parallel=2", "--pipeline_stage=2", "--npu_num_per_node=4",
                             "--transform_only=True"])
    ranks4 = str(work / "to_4_ranks" / "output" / "transformed_checkpoint" / CKPT_NAME)
    sources = {"ranks8": (ranks8, merged8), "ranks4": (ranks4, s4)}
    for name, mode, source in MODEL_CASES:
        config = dict(base, run_mode=mode, use_parallel=False, resume_training=name == "resume")
        src, strategy = sources[source]
        jobs.configs[name] = run(name, config, [f"--load_checkpoint={src}", f"--src_strategy_path_or_dir={strategy}",
                                                "--auto_trans_ckpt=True"])
    if jobs.error:
        return jobs
    converted = yaml.safe_load(Path(jobs.configs["predict"]).read_text())["load_checkpoint"]
    good = {n: p.asnumpy() for n, p in ms.load_checkpoint(converted).items()}
    other = model_params(seed=1)
    wq, w2 = "model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w2.weight"
    half = good[wq].shape[0] // 2
    variants = {"wrong slice": {**good, wq: np.concatenate([good[wq][half:], good[wq][:half]])},
                "stale": {**good, w2: other[w2]},
                "missing": {n: v for n, v in good.items() if n != wq}}
    for name, values in variants.items():
        path = work / "broken" / f"{name.replace(' ', '_')}.ckpt"
        jobs.broken[name] = synth.write_complete_checkpoint(str(path), values)
    return jobs


def run_model_probe(python: Path, jobs: ModelJobs, out: Path) -> dict[str, Any]:
    """The model probe in a MindFormers venv, in a folder of its own (MindFormers writes logs
    under the working folder)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = out.with_suffix(".spec.json")
    spec.write_text(json.dumps({"model": MODEL, "original": jobs.original, "configs": jobs.configs,
                                "broken": jobs.broken, "input_ids": INPUT_IDS, "state": TRAINING_STATE}))
    cwd = out.parent / "model_probe"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RANK_", "MS_"))}
    env.update(GLOG_v="3")
    out.unlink(missing_ok=True)
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--model-probe", str(spec),
                           "--probe-out", str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    Path(str(out) + ".log").write_text(proc.stdout + proc.stderr)
    if not out.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe died (exit {proc.returncode}): {tail[:300]}"}
    return json.loads(out.read_text())


@dataclasses.dataclass
class ModelRow:
    """One release: MindFormers' Llama on CPU with what the entry converted."""
    mindformers: str
    mindspore: str
    predict: str
    train: str
    resume: str
    teeth: str
    ok: bool


def judge_model(inst: Install, result: dict[str, Any]) -> ModelRow:
    if result.get("error"):
        text = f"**no**: {result['error']}"
        return ModelRow(inst.version, inst.mindspore, text, "-", "-", "-", False)
    cases = result.get("cases", {})

    def cell(name: str) -> tuple[str, bool]:
        c = cases.get(name, {})
        if c.get("error"):
            return f"**no**: {c['error']}", False
        ok = c.get("equal") is True and not c.get("not_loaded") and c.get("state_ok", True)
        text = (f"{'yes' if ok else '**no**'}: {c.get('what', '')}; max |Δ| {c.get('max_abs_diff', '?')}"
                + (f"; not loaded: {', '.join(c['not_loaded'])}" if c.get("not_loaded") else "")
                + (f"; {c['state']}" if c.get("state") else ""))
        return text, ok

    (predict, p_ok), (train, t_ok), (resume, r_ok) = cell("predict"), cell("train"), cell("resume")
    teeth, teeth_ok = [], True
    for name in BROKEN:
        c = cases.get(name, {})
        changed = c.get("max_abs_diff") is not None and not c.get("equal")
        teeth_ok &= changed and not c.get("error")
        teeth.append(f"{name}: " + (f"changed (max |Δ| {c['max_abs_diff']})" if changed else
                                    f"**not changed** {c.get('error', '')}".rstrip()))
    return ModelRow(inst.version, inst.mindspore, predict, train, resume, "; ".join(teeth),
                    p_ok and t_ok and r_ok and teeth_ok)


def model_table(rows: list[ModelRow]) -> str:
    lines = ["| mindformers | mindspore | predict: 8 -> 4 -> 1, logits | train: 8 -> 1, loss | "
             "resume: 8 -> 1, loss, AdamW state, global_step | a wrong slice / stale / missing parameter |",
             "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r.mindformers} | {r.mindspore} | {r.predict} | {r.train} | {r.resume} | {r.teeth} |")
    return "\n".join(lines)


# ================================================================ driver: probe and table

def run_probe(python: Path, job: Job, out: Path) -> dict[int, dict[str, Any]]:
    """The probe in the MindFormers venv, in the job's folder (the config's relative output_dir
    is read from there, as the launched command would), once per rank of WORLD in one process
    (MindFormers reads the rank from RANK_ID at each call; importing it takes most of the time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RANK_", "MS_"))}
    env.update(RANK_SIZE=str(WORLD), GLOG_v="3")
    out.unlink(missing_ok=True)
    proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--probe", job.config,
                           "--probe-out", str(out), "--probe-ranks", ",".join(map(str, range(WORLD)))],
                          cwd=job.cwd, env=env, capture_output=True, text=True, timeout=900)
    Path(str(out) + ".log").write_text(proc.stdout + proc.stderr)
    if not out.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {r: {"import": f"probe died (exit {proc.returncode}): {tail}"} for r in range(WORLD)}
    return {int(r): result for r, result in json.loads(out.read_text()).items()}


def _short(path: str, cwd: str) -> str:
    return os.path.relpath(path, cwd) if path and os.path.isabs(path) else (path or "-")


def judge(inst: Install, job: Job, probes: dict[int, dict[str, Any]]) -> Row:
    """One table row from the probes of every rank: matches when every rank's MindFormers loads
    exactly the file we converted for it (same tensor names), with no transformation of its own."""
    first = probes[min(probes)]
    imported = "yes" if first.get("import") == "ok" else f"no: {first.get('import')}"
    config_loads = "yes" if first.get("config") == "ok" else \
        ("-" if first.get("config") is None else f"no: {first.get('config')}")
    loads, retrans, ok, notes = [], [], True, []
    for rank, p in sorted(probes.items()):
        files = p.get("loaded_files") or []
        route = p.get("route", "")
        where = ", ".join(_short(f, job.cwd) for f in files) or _short(p.get("load_path", ""), job.cwd)
        loads.append(f"r{rank}: {where}" + (f" ({route})" if route else ""))
        retrans.append(p.get("transform") or "?")
        if p.get("import") != "ok" or p.get("config") != "ok":
            ok = False
            continue
        if p.get("error"):
            notes.append(f"r{rank}: {p['error']}")
            ok = False
            continue
        if files != [job.expected[rank]]:
            notes.append(f"r{rank}: ours is {_short(job.expected[rank], job.cwd)}")
            ok = False
        elif p.get("loaded_names") != job.expected_names[rank]:
            notes.append(f"r{rank}: other tensor names than ours")
            ok = False
        if p.get("transform") != "no":
            notes.append(f"r{rank}: transforms again")
            ok = False
    retransform = retrans[0] if len(set(retrans)) == 1 else "; ".join(retrans)
    return Row(inst.version, inst.mindspore or "-", job.scenario.name, imported, config_loads,
               "<br>".join(loads), retransform, ok and first.get("import") == "ok", "; ".join(notes))


def table(rows: list[Row], installs: list[Install]) -> str:
    head = ("| mindformers | mindspore | config format | import | config loads | "
            "MindFormers loads | transforms again? | matches our output? |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        match = "yes" if r.matches else "**no**" + (f": {r.notes}" if r.notes else "")
        lines.append(f"| {r.mindformers} | {r.mindspore} | {r.scenario} | {r.imported} | "
                     f"{r.config_loads} | {r.loads} | {r.retransform} | {match} |")
    for i in installs:
        if not i.ok:
            lines.append(f"| {i.version} | - | (not installed) | no: {i.error} | - | - | - | - |")
    return "\n".join(lines)


def installs_note(installs: list[Install]) -> str:
    out = []
    for i in installs:
        if not i.ok:
            out.append(f"- mindformers {i.version}: cannot install: {i.error}")
            continue
        how = "pip resolved its own pins" if i.mode == "resolved" else \
            f"installed {i.mode} (pip: {i.resolve_error})" if i.resolve_error else f"installed {i.mode}"
        if i.dropped:
            how += f"; left out (no index holds them): {', '.join(i.dropped)}"
        if i.pins:
            how += f"; with {', '.join(i.pins)}"
        out.append(f"- mindformers {i.version} with mindspore {i.mindspore}: {how}")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="mindformers_compat.py",
        description="Install MindFormers releases into their own venvs and check that MindFormers' "
                    "own checkpoint logic loads what cloud-entry converted, for both config formats.")
    ap.add_argument("--versions", default=",".join(DEFAULT_VERSIONS),
                    help="comma-separated mindformers releases (default: %(default)s)")
    ap.add_argument("--root", default=str(DEFAULT_ROOT),
                    help="one venv per release under <root>/<version>/venv (default: %(default)s)")
    ap.add_argument("--python", default=getattr(sys, "_base_executable", sys.executable),
                    help="interpreter the venvs are made from (default: %(default)s)")
    ap.add_argument("--mindspore", default=None,
                    help="install every release --no-deps with this mindspore spec (e.g. "
                         "'mindspore==2.10.0') instead of letting pip resolve its pins first")
    ap.add_argument("--reinstall", action="store_true", help="rebuild venvs that exist")
    ap.add_argument("--stub-missing", action="store_true",
                    help="make requirements no index holds (hyper-parallel for mindformers 2.x) "
                         "importable as do-nothing stubs, so the checkpoint logic can run; the "
                         "table says so")
    ap.add_argument("--work", default=None,
                    help="folder of the entry jobs (default: <root>/jobs)")
    ap.add_argument("--no-model", action="store_true",
                    help="skip the model check (MindFormers' Llama on CPU: logits, loss, resume)")
    ap.add_argument("--probe", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--model-probe", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-ranks", default="0", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe or args.model_probe:
        return args
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    bad = [v for v in versions if not VERSION_RE.match(v)]
    if bad or not versions:
        raise BadInput(f"--versions={args.versions}: {bad[0] if bad else 'empty'} is not a release number like 2.1.0")
    args.versions = versions
    if not os.access(args.python, os.X_OK):
        raise BadInput(f"--python={args.python}: not an executable")
    root = Path(args.root).resolve()
    if root == REPO / ".venv" or (REPO / ".venv") in root.parents:
        raise BadInput(f"--root={args.root}: inside the project's .venv; give a folder of its own")
    args.root = root
    args.work = Path(args.work).resolve() if args.work else root / "jobs"
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except BadInput as exc:
        print(f"mindformers_compat: error: {exc}", file=sys.stderr)
        return 2
    if args.probe:
        return probe_main(args.probe, args.probe_out, [int(r) for r in args.probe_ranks.split(",")])
    if args.model_probe:
        return write_result(model_probe(args.model_probe), args.probe_out)
    started = time.monotonic()
    jobs = make_jobs(args.work)
    model_jobs = None if args.no_model else make_model_jobs(args.work)
    installs, rows, model_rows = [], [], []
    for version in args.versions:
        try:
            inst = ensure_venv(version, args.root, args.python, args.mindspore, args.reinstall)
        except subprocess.TimeoutExpired as exc:
            inst = Install(version, error=f"timed out after {exc.timeout:.0f}s")
        installs.append(inst)
        if not inst.ok:
            continue
        python = args.root / version / "venv" / "bin" / "python"
        ms_label = inst.mindspore
        stubs = stubs_in_place(inst, args.root) if inst.dropped else []
        if args.stub_missing and inst.dropped and not stubs and not _imports(python, "mindformers"):
            stubs = stub_dropped(inst, args.root)
        if stubs:
            ms_label += f" (stub: {', '.join(stubs)})"
        for i, job in enumerate(jobs):
            if job.error:
                rows.append(Row(version, ms_label, job.scenario.name, "-", "-", "-", "-", False, job.error))
                continue
            probes = run_probe(python, job, args.root / version / f"probe_job{i}.json")
            rows.append(dataclasses.replace(judge(inst, job, probes), mindspore=ms_label))
            print(f"[{version}] {job.scenario.name}: {'matches' if rows[-1].matches else 'DOES NOT MATCH'}",
                  flush=True)
        if model_jobs is not None:
            inst.mindspore = ms_label
            result = {"error": f"entry: {model_jobs.error}"} if model_jobs.error else \
                run_model_probe(python, model_jobs, args.root / version / "model_probe.json")
            model_rows.append(judge_model(inst, result))
            print(f"[{version}] model: {'ok' if model_rows[-1].ok else 'FAILED'}", flush=True)
    text = table(rows, installs)
    if model_jobs is not None:
        text += "\n\nMindFormers' Llama on CPU (2 layers, hidden 64, vocab 128, float32):\n\n" + model_table(model_rows)
    good = [r for r in rows if r.matches]
    verdict = ("compatible: every checked row loads exactly what cloud-entry converted, "
               "with no transformation of MindFormers' own" if rows and len(good) == len(rows) else
               f"NOT compatible: {len(rows) - len(good)} of {len(rows)} rows do not match" if rows else
               "nothing checked: no release could be installed")
    report = f"{text}\n\n{installs_note(installs)}\n\nVerdict: {verdict}\n"
    print("\n" + report)
    (args.root / "report.md").write_text(report)
    print(f"(report: {args.root / 'report.md'}; {time.monotonic() - started:.0f}s)")
    return 0 if rows and len(good) == len(rows) and all(r.ok for r in model_rows) else 1


# ================================================================ probe (MindFormers venv)

def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class _Recorder:
    """Replaces a module global for the probe; remembers its calls, returns `result(*args)`."""

    def __init__(self, name: str, result: Callable[..., Any] = lambda *a, **k: None):
        self.name, self.result, self.calls = name, result, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs)


def _patch(module: Any, name: str, value: Any, undo: list) -> bool:
    if not hasattr(module, name):
        return False
    undo.append((module, name, getattr(module, name)))
    setattr(module, name, value)
    return True


def trainer_rules(trainer_mod: Any, config: Any) -> Any:
    """What run_mindformer.py's main and the Trainer do with the config before loading, in
    MindFormers' own code: evaluate(eval_checkpoint=config.load_checkpoint) /
    predict(predict_checkpoint=config.load_checkpoint) write it back, then the config rules run
    (convert_checkpoint_config from 1.9 on). Returns the Trainer (made without __init__, which
    would build the network and the dataset)."""
    trainer = trainer_mod.Trainer.__new__(trainer_mod.Trainer)
    trainer.config = config
    if config.run_mode in ("predict", "eval"):
        given = config.load_checkpoint
        if given is True:
            config.load_checkpoint = trainer.get_last_checkpoint()
        elif isinstance(given, str) and given:
            if config.model and config.model.model_config:
                config.model.model_config.checkpoint_name_or_path = None
            config.load_checkpoint = given
    trainer._check_config_type()
    trainer._check_config_rules()
    return trainer


def probe(config_path: str) -> dict[str, Any]:
    """What MindFormers does with `config_path` up to loading: run_mindformer.py main ->
    Trainer.train/predict/evaluate (config rules, convert_checkpoint_config) -> the base
    trainer's choice of loader -> transform_and_load_checkpoint -> get_load_checkpoint_result,
    every one MindFormers' own code; recorders stand in for what needs a network."""
    res: dict[str, Any] = {"config": None, "transform": "?"}
    try:
        import importlib.metadata as md
        import mindformers  # noqa: F401
        import mindspore
        from mindformers.tools.register import MindFormerConfig
        import mindformers.trainer.trainer as trainer_mod
        import mindformers.trainer.utils as tu
        res.update(mindformers=md.version("mindformers"), mindspore=mindspore.__version__)
    except BaseException as exc:  # noqa: BLE001 - the row says why
        res["import"] = _one_line(exc)
        return res
    res["import"] = "ok"
    try:
        config = MindFormerConfig(config_path)
    except BaseException as exc:  # noqa: BLE001
        res["config"] = _one_line(exc)
        return res
    res["config"] = "ok"
    mode = config.run_mode
    res["keys_in"] = {"load_checkpoint": config.load_checkpoint, "auto_trans_ckpt": config.auto_trans_ckpt,
                      "checkpoint.load_path": (config.checkpoint or {}).get("load_path")}
    # Where this release keeps the path it loads: `checkpoint.load_path` since
    # convert_checkpoint_config (1.9), the top-level `load_checkpoint` before (1.8 has no
    # checkpoint: section at all).
    sectioned = hasattr(tu, "convert_checkpoint_config")
    res["load_key"] = "checkpoint.load_path" if sectioned else "load_checkpoint"

    def get_path() -> Any:
        return config.checkpoint.load_path if sectioned else config.load_checkpoint

    def set_path(value: Any) -> None:
        if sectioned:
            config.checkpoint.load_path = value
        else:
            config.load_checkpoint = value

    undo: list = []
    loaded: list[str] = []
    names: list[str] = []
    transforms: list[str] = []

    def spy_load(path: str, *args: Any, **kwargs: Any) -> dict:
        loaded.append(os.path.abspath(path))
        data = real_load(path, *args, **kwargs)
        names.extend(sorted(data))
        return data

    real_load = tu.load_checkpoint
    transform_ckpt = _Recorder("TransformCkpt")

    class _Transform:   # TransformCkpt(...)(src_checkpoint=..., src_strategy=...) -> the new path
        def __init__(self, *a: Any, **k: Any) -> None:
            transform_ckpt(*a, **k)

        def __call__(self, src_checkpoint: str = "", src_strategy: str = "", **k: Any) -> str:
            transforms.append(f"TransformCkpt({src_checkpoint})")
            return src_checkpoint

    def load_ckpt(config: Any, network: Any, optimizer: Any = None, model: Any = None, future: Any = None) -> None:
        # load_ckpt's own first steps; the rest (load_param_into_net) needs the network
        if hasattr(tu, "format_path"):
            set_path(tu.format_path(get_path()))
        tu.get_load_checkpoint_result(config)

    def sf_loader(config: Any, *a: Any, **k: Any) -> None:
        res["route"] = "legacy safetensors loader (load_checkpoint_with_safetensors, not run)"

    def clear_output(*a: Any, **k: Any) -> None:
        transforms.append("clear_auto_trans_output")

    try:
        _patch(tu, "load_checkpoint", spy_load, undo)
        _patch(tu, "TransformCkpt", _Transform, undo)
        _patch(tu, "compile_model", _Recorder("compile_model"), undo)
        _patch(tu, "check_shared_disk", _Recorder("check_shared_disk", lambda *a, **k: True), undo)
        _patch(tu, "load_ckpt", load_ckpt, undo)
        _patch(tu, "load_checkpoint_with_safetensors", sf_loader, undo)
        _patch(trainer_mod, "clear_auto_trans_output", clear_output, undo)
        trainer = trainer_rules(trainer_mod, config)
        legacy = bool(config.get("use_legacy_format", True))
        res["use_legacy_format"] = legacy
        if mode in ("train", "finetune") and not legacy:
            # Trainer.train: get_checkpoint_path; base_trainer training_process then loads
            # through mindformers/checkpoint/checkpoint.py (online resharding)
            res["route"] = "non-legacy mindformers.checkpoint load (online resharding)"
            res["load_path"] = trainer_mod.get_checkpoint_path(get_path()) \
                if hasattr(trainer_mod, "get_checkpoint_path") else get_path()
            if res["load_path"]:
                res["online"] = True
        else:
            set_path(trainer.get_load_checkpoint(get_path()))
            import mindformers.trainer.base_trainer as bt
            if hasattr(bt, "get_load_path_after_hf_convert") and config.load_ckpt_format == "safetensors":
                res["note"] = "safetensors: HF conversion check needs the network, not run"
            res["load_path"] = get_path()
            res["route"] = "transform_and_load_checkpoint"
            if get_path() or config.only_save_strategy:
                tu.transform_and_load_checkpoint(config, None, None, None, do_eval=mode == "eval",
                                                 do_predict=mode == "predict")
        res["auto_trans_ckpt_after_rules"] = config.auto_trans_ckpt
    except BaseException as exc:  # noqa: BLE001 - MindFormers refusing the config is a finding
        res["error"] = _one_line(exc)
        res["traceback"] = traceback.format_exc()[-3000:]
    finally:
        for module, name, value in reversed(undo):
            setattr(module, name, value)
    res["loaded_files"] = loaded
    res["loaded_names"] = sorted(set(names))
    res["transform"] = "yes: " + ", ".join(transforms) if transforms else \
        "online resharding (MindFormers' own)" if res.get("online") else "no"
    return res


# ================================================================ the model check (MindFormers venv)

def model_probe(spec_path: str) -> dict[str, Any]:
    """MindFormers' own Llama from the tiny config, on CPU: a reference loaded from the original
    complete checkpoint by mindspore.load_checkpoint, then each case loaded as MindFormers' trainer
    loads it (training_process / predict: load_resume_context_from_checkpoint when resuming, then
    transform_and_load_checkpoint -> load_ckpt -> load_param_into_net, all MindFormers' and
    MindSpore's own code, nothing replaced), and its logits, loss, optimizer state and training
    counters compared with the reference's."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        import numpy as np
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
        from mindformers.models.llama import LlamaConfig, LlamaForCausalLM
        from mindformers.tools.register import MindFormerConfig
        from mindformers.core.optim import AdamW
        import mindformers.trainer.utils as tu
        import mindformers.trainer.trainer as trainer_mod
    except BaseException as exc:  # noqa: BLE001 - the row says why
        return {"error": f"import: {_one_line(exc)}"}
    loader = getattr(tu, "transform_and_load_checkpoint", None)
    resume_context = getattr(tu, "load_resume_context_from_checkpoint", None)
    if loader is None or resume_context is None:
        return {"error": "this release has no transform_and_load_checkpoint / load_resume_context_from_checkpoint"}
    seq = spec["model"]["seq_length"]
    ids = ms.Tensor(np.array([spec["input_ids"]], np.int32))
    train_ids = ms.Tensor(np.array([spec["input_ids"] + spec["input_ids"][:1]], np.int32))   # seq + 1: shifted labels

    def build() -> Any:
        return LlamaForCausalLM(LlamaConfig(**spec["model"]))

    def outputs(net: Any) -> dict[str, Any]:
        net.set_train(False)
        out = net(ids)
        logits = (out[0] if isinstance(out, tuple) else out).asnumpy().reshape(-1, spec["model"]["vocab_size"])
        net.set_train(True)
        loss = float(net(train_ids).asnumpy())
        return {"logits": logits[:seq], "loss": loss}

    not_loaded: list[str] = []      # what load_param_into_net says it left out of the network
    current: dict[str, Any] = {}
    real_into_net = tu.load_param_into_net

    def into_net(target: Any, params: dict, *args: Any, **kwargs: Any) -> Any:   # records, changes nothing
        result = real_into_net(target, params, *args, **kwargs)
        if target is current.get("net"):
            not_loaded.extend((result[0] if isinstance(result, tuple) else result) or [])
        return result

    res: dict[str, Any] = {"cases": {}}
    try:
        reference = build()
        ms.load_checkpoint(spec["original"], reference)
        ref = outputs(reference)
        original = {n: p.asnumpy() for n, p in ms.load_checkpoint(spec["original"]).items()}
        res["reference"] = {"loss": ref["loss"], "logits_max": float(np.abs(ref["logits"]).max())}
    except BaseException as exc:  # noqa: BLE001
        return {"error": f"reference: {_one_line(exc)}", "traceback": traceback.format_exc()[-3000:]}
    tu.load_param_into_net = into_net
    cases = [(name, path, None) for name, path in spec["configs"].items()] + \
        [(name, spec["configs"]["predict"], path) for name, path in spec["broken"].items()]
    try:
        for name, config_path, override in cases:
            case: dict[str, Any] = {}
            res["cases"][name] = case
            not_loaded.clear()
            try:
                config = MindFormerConfig(config_path)
                if override:
                    config.load_checkpoint = override
                trainer_rules(trainer_mod, config)
                case["load_checkpoint"] = config.load_checkpoint
                net = current["net"] = build()
                optimizer = None
                if config.resume_training:   # base_trainer.training_process, resume branch
                    optimizer = AdamW(net.trainable_params(), learning_rate=1e-4)
                    resume_context(config, None)
                loader(config, None, net, None, optimizer=optimizer, do_predict=config.run_mode == "predict")
                got = outputs(net)
                diff = float(np.abs(got["logits"] - ref["logits"]).max())
                loss_diff = abs(got["loss"] - ref["loss"])
                case["max_abs_diff"] = f"{max(diff, loss_diff):.3g}"
                case["equal"] = diff <= 1e-5 * max(1.0, res["reference"]["logits_max"]) and loss_diff <= 1e-5 * max(1.0, abs(ref["loss"]))
                case["not_loaded"] = sorted(set(not_loaded))
                case["what"] = ("logits" if config.run_mode == "predict" else "logits and loss") + \
                    f" equal to the original's" if case["equal"] else "logits differ"
                if optimizer is not None:
                    moments = {p.name: p.asnumpy() for p in list(optimizer.exp_avg) + list(optimizer.exp_avg_sq)}
                    wrong = [n for n, v in moments.items() if n not in original or not np.array_equal(v, original[n])]
                    state = spec["state"]
                    got_state = {"global_step": int(optimizer.global_step.asnumpy().reshape(-1)[0]),
                                 "initial_step": int(config.runner_config.initial_step),
                                 "initial_epoch": int(config.runner_config.initial_epoch)}
                    want = {"global_step": state["global_step"], "initial_step": state["step_num"],
                            "initial_epoch": state["epoch_num"]}
                    case["state_ok"] = not wrong and got_state == want
                    case["state"] = (f"{len(moments) - len(wrong)}/{len(moments)} AdamW moments equal; "
                                     + ", ".join(f"{k} {got_state[k]}" + ("" if got_state[k] == want[k] else f" (want {want[k]})")
                                                 for k in want))
            except BaseException as exc:  # noqa: BLE001 - MindFormers refusing it is a finding
                case["error"] = _one_line(exc)
                case["traceback"] = traceback.format_exc()[-3000:]
    finally:
        tu.load_param_into_net = real_into_net
    return res


def probe_main(config_path: str, out: str | None, ranks: list[int]) -> int:
    """Each rank's probe on a fresh config."""
    results = {}
    for rank in ranks:
        os.environ["RANK_ID"] = os.environ["DEVICE_ID"] = str(rank)
        results[rank] = probe(config_path)
    return write_result(results, out)


def write_result(results: Any, out: str | None) -> int:
    """The probe's result, written whole or not at all."""
    text = json.dumps(results, indent=1, default=str)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
