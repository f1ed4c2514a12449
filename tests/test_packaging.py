"""The package as a user installs it: a wheel built from this tree, installed into a fresh venv,
run from a folder outside the repository. configs/ must ship inside the package (not be found
through the repository, nor in site-packages/configs, where MindFormers installs its own), and the
metadata must say what PyPI and pip need (SPDX license, license file, typed, URLs, version)."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (whl,) = out.glob("cloud_ckpt_transform-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """A fresh venv holding only the wheel; its dependencies (mindspore, boto3, ...) are seen
    through a .pth line naming the test venv's site-packages, so nothing is downloaded and the
    repository's own editable install (whose finder lives in a .pth of that folder and is
    therefore not processed) cannot shadow the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(purelib, "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    # Without PYTHONPATH: `dev.py test` puts the repository there, whose *.egg-info would make pip
    # take the package for installed already in the new venv and install nothing.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stdout + install.stderr
    outside = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("MA_", "VC_", "CLOUD_ENTRY_", "RANK_"))}
    return {"bin": str(venv / "bin"), "py": str(py), "cwd": str(outside), "purelib": purelib,
            "env": json.dumps(env)}


def run(installed, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=installed["cwd"], env=json.loads(installed["env"]),
                          capture_output=True, text=True, timeout=300)


def test_wheel_holds_configs_license_and_typing_markers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {Path(n).name for n in names if n.startswith("cloud_entry/configs/")}
    assert shipped == {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {"cloud_entry/py.typed", "obs_io/py.typed", "reshard/py.typed"} <= names
    assert not any(n.startswith("configs/") for n in names)        # never site-packages/configs
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta
    assert "Project-URL: Source," in meta
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_installed_entry_runs_outside_the_repository_with_a_shipped_config(installed):
    where = run(installed, installed["py"], "-c", "import cloud_entry, reshard, obs_io; "
                "print(cloud_entry.__file__, reshard.__file__, obs_io.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(installed["purelib"]) for p in where.stdout.split()), where.stdout
    show = (f"{installed['py']} -c \"import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); "
            "print('LOADED', c['model']['model_config']['num_layers'], c['parallel_config']['data_parallel'], "
            "c['run_mode'])\" {config}")
    proc = run(installed, f"{installed['bin']}/cloud-entry", "--config=run_llama_7b_dp1mp2pp2.yaml",
               "--auto_trans_ckpt=False", "--load_checkpoint=None", "--launch_cmd", show)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED 2 1 train" in proc.stdout, proc.stdout + proc.stderr   # base_config resolved in the package
    missing = run(installed, f"{installed['bin']}/cloud-entry", "--config=no_such_config.yaml", "--", "true", "{config}")
    assert missing.returncode == 2
    assert "cloud_entry/configs" in missing.stderr and "site-packages/configs)" not in missing.stderr


def test_mindspore_is_an_extra_and_python_39_is_enough(wheel):
    """The images users have ship their own MindSpore (an Ascend build), numpy and protobuf: the
    package must not ask for MindSpore (nor the correctness pins that go with it) to run."""
    names = zipfile.ZipFile(wheel).namelist()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert "Requires-Python: >=3.9" in meta.splitlines()
    assert not [r for r in runtime if r.lower().startswith(("mindspore", "safetensors"))], runtime
    assert any(r.startswith("numpy>=1.20") for r in runtime) and any(r.startswith("protobuf>=3.13") for r in runtime)
    assert not [r for r in runtime if "numpy" in r and "<" in r], runtime    # numpy 2 is fine
    extra = [r for r in requires if 'extra == "mindspore"' in r]
    assert any(r.startswith("mindspore>=") for r in extra) and any(r.startswith("numpy<2") for r in extra), extra
    assert "obs_io = reshard.console:obs_io" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("dist-info/entry_points.txt"))).decode()


@pytest.mark.parametrize("command", ["cloud-entry", "transform-checkpoint", "transform_checkpoint.sh", "obs_io"])
def test_every_command_has_version(installed, command):
    proc = run(installed, f"{installed['bin']}/{command}", "--version")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(f" {_project_version()}"), proc.stdout


def test_obs_io_module_has_version(installed):
    proc = run(installed, installed["py"], "-m", "obs_io", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"obs_io {_project_version()}"


def _project_version() -> str:
    import tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_dev_checkout_finds_configs_through_the_package_too():
    """The repository's configs/ and the package's configs are one folder (a symlink), so a rule
    for finding configs cannot differ between a checkout and an install."""
    from cloud_entry.config import CONFIGS_DIR
    assert CONFIGS_DIR.resolve() == (REPO / "configs").resolve()
    base = yaml.safe_load((REPO / "configs" / "predict_llama_7b.yaml").read_text())
    assert base["base_config"] == "run_llama_7b.yaml"
