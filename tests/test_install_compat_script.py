"""scripts/install_compat.py, cheaply: its rules (dependency floors from pyproject.toml, what counts
as a changed package, what pip's dry-run report would replace), its bad input, and pyproject's
promise that no runtime dependency is MindSpore's. The venvs themselves (Python 3.9-3.13, floors,
another MindSpore) are built by the script; their figures are in the README."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install_compat.py"


def _load():
    spec = importlib.util.spec_from_file_location("install_compat", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["install_compat"] = module
    spec.loader.exec_module(module)
    return module


ic = _load()


def test_floors_are_pyprojects_and_never_mindspore():
    pins = ic.floors((REPO / "pyproject.toml").read_text())
    names = [p.split("==")[0] for p in pins]
    assert "numpy==1.20" in pins and "protobuf==3.13" in pins
    assert not {"mindspore", "safetensors"} & set(names)   # optional: the engine never imports them
    with pytest.raises(ic.BadInput, match="no >= floor"):
        ic.floors('dependencies = [\n    "numpy<3",\n]\n')


def test_changed_packages_and_what_pip_would_replace():
    before = ic.freeze_map("numpy==1.26.4\nprotobuf==3.20.3\nmindspore @ file:///w/mindspore.whl\n# comment\n")
    assert before == {"numpy": "numpy==1.26.4", "protobuf": "protobuf==3.20.3",
                      "mindspore": "mindspore @ file:///w/mindspore.whl"}
    after = dict(before, boto3="boto3==1.40.0")            # an added package changes nothing
    assert ic.changed(before, after) == []
    assert ic.changed(before, dict(after, numpy="numpy==2.0.0")) == ["numpy==1.26.4 -> numpy==2.0.0"]
    assert ic.changed(before, {k: v for k, v in after.items() if k != "protobuf"}) == \
        ["protobuf==3.20.3 -> removed"]
    report = {"install": [{"metadata": {"name": "boto3", "version": "1.40.0"}},
                          {"metadata": {"name": "NumPy", "version": "2.0.0"}}]}
    assert ic.would_replace(report, before) == ["numpy numpy==1.26.4 -> 2.0.0"]


@pytest.mark.parametrize("args, culprit", [(["--pythons", "3.x"], "3.x"), (["--mindspore", "latest"], "latest"),
                                          (["--root", str(REPO / ".venv" / "x")], ".venv"),
                                          (["--venvs", "/nonexistent/venv"], "/nonexistent/venv"),
                                          (["--only-venvs"], "--only-venvs")])
def test_bad_input_is_one_line_exit_2(args, culprit, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and culprit in proc.stderr, proc.stderr
    assert not (REPO / ".venv" / "x").exists()


def test_the_interpreters_it_finds_are_that_version():
    found = ic.find_pythons(["3.11", "2.1"])
    assert "2.1" not in found
    version = subprocess.run([found["3.11"], "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "(3, 11)"
