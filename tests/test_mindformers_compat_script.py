"""scripts/mindformers_compat.py without MindFormers and without installing anything: its
arguments, the entry jobs it runs (real `python -m cloud_entry`), its probe in an interpreter
that has no MindFormers, and how it judges probe results."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "mindformers_compat.py"


def _load():
    spec = importlib.util.spec_from_file_location("mindformers_compat", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mindformers_compat"] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mfc = _load()


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_help_names_the_options():
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--versions", "--root", "--mindspore", "--python", "--stub-missing"):
        assert flag in proc.stdout
    assert "--probe" not in proc.stdout     # internal role, not for users


@pytest.mark.parametrize("args, culprit", [
    (["--versions=2.1.0,latest"], "latest"),
    (["--versions=,"], "empty"),
    (["--root", str(REPO / ".venv" / "mf")], ".venv"),
    (["--python", "/nonexistent/python3"], "/nonexistent/python3"),
])
def test_bad_input_one_line_exit_2_nothing_created(tmp_path, args, culprit):
    proc = run_script(*args, "--work", str(tmp_path / "jobs"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "jobs").exists() and not (REPO / ".venv" / "mf").exists()


def test_probe_without_mindformers_reports_the_import_error(tmp_path):
    """The probe role in an interpreter without MindFormers (the project's): a result file that
    says so, no crash; the config is not read then."""
    config = tmp_path / "c.yaml"
    config.write_text("load_checkpoint: /x\n")
    out = tmp_path / "probe.json"
    proc = run_script("--probe", str(config), "--probe-out", str(out), "--probe-ranks", "0,1")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert sorted(results) == ["0", "1"]
    result = results["1"]
    assert result["import"].startswith("ModuleNotFoundError") and "mindformers" in result["import"]
    assert result["config"] is None
    assert not list(tmp_path.glob("*.tmp"))


def test_entry_jobs_write_both_config_formats(tmp_path):
    """The real entry, once per scenario: the launched config points MindFormers' keys at our
    converted folder (both keys when there is a section), with auto_trans_ckpt off; train with a
    section is converted too and launched with the legacy format (section dropped)."""
    jobs = mfc.make_jobs(tmp_path / "jobs")
    assert [j.scenario for j in jobs] == list(mfc.SCENARIOS)
    for job in jobs:
        assert not job.error, job.error
        config = yaml.safe_load(Path(job.config).read_text())
        assert config["auto_trans_ckpt"] is False
        converted = str(Path(job.cwd) / "output" / "transformed_checkpoint" / mfc.CKPT_NAME)
        assert config["load_checkpoint"] == converted
        legacy_launch = job.scenario.section and job.scenario.run_mode == "train"
        assert ("checkpoint" in config) == (job.scenario.section and not legacy_launch)
        if legacy_launch:
            assert config["use_legacy_format"] is True
        elif job.scenario.section:
            assert config["checkpoint"]["load_path"] == converted
        for rank in range(mfc.WORLD):
            assert Path(job.expected[rank]).is_file()
            assert len(job.expected_names[rank]) > 10


def _job(scenario: int = 0) -> "mfc.Job":
    expected = {r: f"/j/output/transformed_checkpoint/llama/rank_{r}/checkpoint_{r}.ckpt" for r in range(2)}
    return mfc.Job(mfc.SCENARIOS[scenario], "/j", "/j/c.yaml", "/m/llama.ckpt", expected,
                   {0: ["a", "b"], 1: ["a", "b"]})


def _probe(rank: int, **kw) -> dict:
    base = {"import": "ok", "config": "ok", "transform": "no", "route": "transform_and_load_checkpoint",
            "loaded_files": [f"/j/output/transformed_checkpoint/llama/rank_{rank}/checkpoint_{rank}.ckpt"],
            "loaded_names": ["a", "b"]}
    return {**base, **kw}


def test_judge_matches_only_exactly_our_files_without_a_transformation():
    inst = mfc.Install("9.9.9", mindspore="2.10.0", mode="resolved")
    good = mfc.judge(inst, _job(), {0: _probe(0), 1: _probe(1)})
    assert good.matches and good.retransform == "no" and good.imported == "yes"
    assert "rank_1/checkpoint_1.ckpt" in good.loads and good.loads.startswith("r0: output/")
    swapped = mfc.judge(inst, _job(), {0: _probe(1), 1: _probe(0)})
    assert not swapped.matches
    again = mfc.judge(inst, _job(), {0: _probe(0, transform="yes: TransformCkpt(x)"), 1: _probe(1)})
    assert not again.matches and "TransformCkpt" in again.retransform
    fewer = mfc.judge(inst, _job(), {0: _probe(0, loaded_names=["a"]), 1: _probe(1)})
    assert not fewer.matches
    refused = mfc.judge(inst, _job(), {0: _probe(0, error="ValueError: no"), 1: _probe(1)})
    assert not refused.matches and "ValueError: no" in refused.notes
    no_import = mfc.judge(inst, _job(), {r: {"import": "ImportError: x"} for r in range(2)})
    assert not no_import.matches and no_import.imported == "no: ImportError: x"


def test_judge_wants_our_files_in_every_scenario():
    """Train with a section too: MindFormers' online resharding of the unconverted source is
    not a match (it cannot read a .ckpt there; the entry converts)."""
    inst = mfc.Install("9.9.9", mindspore="2.10.0", mode="resolved")
    assert mfc.judge(inst, _job(3), {0: _probe(0), 1: _probe(1)}).matches
    online = {"import": "ok", "config": "ok", "transform": "no", "load_path": "/m/llama.ckpt",
              "route": "non-legacy mindformers.checkpoint load (online resharding)", "loaded_files": []}
    assert not mfc.judge(inst, _job(3), {0: online, 1: online}).matches


def test_table_lists_releases_that_did_not_install():
    rows = [mfc.Row("2.0.0", "2.10.0", "legacy keys, predict", "yes", "yes", "r0: x", "no", True)]
    installs = [mfc.Install("2.0.0", mindspore="2.10.0", mode="resolved", pins=["pyarrow<26"]),
                mfc.Install("1.0.0", error="mindformers==1.0.0: No matching distribution")]
    text = mfc.table(rows, installs)
    assert "| 2.0.0 | 2.10.0 | legacy keys, predict | yes | yes | r0: x | no | yes |" in text
    assert "| 1.0.0 | - | (not installed) | no: mindformers==1.0.0: No matching distribution" in text
    note = mfc.installs_note(installs)
    assert "1.0.0: cannot install" in note and "2.0.0 with mindspore 2.10.0: pip resolved" in note
    assert "with pyarrow<26" in note


def test_pip_output_parsing():
    out = ("Collecting x\nERROR: Could not find a version that satisfies the requirement "
           "hyper-parallel~=1.0.0 (from mindformers)\n"
           "ERROR: No matching distribution found for hyper-parallel~=1.0.0\n")
    assert mfc._pip_reason(out) == "No matching distribution found for hyper-parallel~=1.0.0"
    assert mfc.PIP_MISSING.search(out).group(1) == "hyper-parallel"
    assert mfc._dist_name("hyper-parallel~=1.0.0") == "hyper-parallel"
    assert mfc._dist_name("rouge_chinese>=1.0.3") == "rouge-chinese"
    assert mfc._dist_name("mindspore ~=2.10.0; python_version>'3'") == "mindspore"
    assert mfc._pip_reason("just a line\n") == "just a line"


def test_stub_makes_any_name_and_submodule_importable(tmp_path):
    """What --stub-missing writes for a package no index holds: imports of names and submodules
    (as mindformers 2.0.0 does with hyper_parallel) succeed, nothing else is pretended."""
    (tmp_path / "absent_pkg").mkdir()
    (tmp_path / "absent_pkg" / "__init__.py").write_text(mfc.STUB_SOURCE)
    code = ("from absent_pkg import DTensor; from absent_pkg.core.dtensor.dtensor import distribute_tensor\n"
            "import absent_pkg.platform.x as x\n"
            "assert isinstance(DTensor(1, k=2), DTensor) and not isinstance(object(), DTensor)\n"
            "assert x.anything is x.anything\n"
            "import absent_pkg; assert not hasattr(absent_pkg, '__wrapped__')\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- the model check: the driver's half (the MindFormers half runs in the release venvs) -------

def test_model_jobs_go_through_the_entry_and_break_the_variants(tmp_path):
    """complete -> 8 -> 4 -> 1 (predict) and 8 -> 1 (train, resume) through the real entry: the
    single-card configs load the converted file (predict, train) or the set's folder (resume);
    each broken variant differs from the predict checkpoint in exactly the parameter it breaks."""
    import numpy as np
    import mindspore as ms
    jobs = mfc.make_model_jobs(tmp_path)
    assert not jobs.error, jobs.error
    configs = {name: yaml.safe_load(Path(path).read_text()) for name, path in jobs.configs.items()}
    assert [configs[n]["run_mode"] for n in ("predict", "train", "resume")] == ["predict", "train", "train"]
    assert all(c["use_parallel"] is False and c["auto_trans_ckpt"] is False for c in configs.values())
    assert configs["predict"]["load_checkpoint"].endswith("/llama/rank_0/checkpoint_0.ckpt")
    assert configs["train"]["load_checkpoint"].endswith("/llama/rank_0/checkpoint_0.ckpt")
    assert configs["resume"]["resume_training"] is True
    assert configs["resume"]["load_checkpoint"].endswith("/transformed_checkpoint/llama")
    original = {n: p.asnumpy() for n, p in ms.load_checkpoint(jobs.original).items()}
    good = {n: p.asnumpy() for n, p in ms.load_checkpoint(configs["predict"]["load_checkpoint"]).items()}
    assert set(good) == set(original) and all(np.array_equal(good[n], original[n]) for n in good)
    wq = "model.layers.0.attention.wq.weight"
    for name, path in jobs.broken.items():
        broken = {n: p.asnumpy() for n, p in ms.load_checkpoint(path).items()}
        differ = sorted(n for n in good if n not in broken or not np.array_equal(broken[n], good[n]))
        assert differ == ([wq] if name != "stale" else ["model.layers.1.feed_forward.w2.weight"]), (name, differ)
    assert mfc.TRAINING_STATE["global_step"] == int(original["global_step"][0])


def test_model_probe_without_mindformers_says_so(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": mfc.MODEL}))
    out = tmp_path / "model.json"
    proc = run_script("--model-probe", str(spec), "--probe-out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["error"].startswith("import: ModuleNotFoundError")


def _model_result(**cases) -> dict:
    good = {"equal": True, "max_abs_diff": "0", "not_loaded": [], "what": "logits equal"}
    state = {"state_ok": True, "state": "42/42 AdamW moments equal; global_step 1234"}
    broken = {"equal": False, "max_abs_diff": "0.3"}
    result = {"predict": good, "train": good, "resume": {**good, **state},
              **{name: broken for name in mfc.BROKEN}}
    result.update(cases)
    return {"cases": result}


def test_judge_model_needs_equal_outputs_the_training_state_and_teeth():
    inst = mfc.Install("9.9.9", mindspore="2.10.0")
    assert mfc.judge_model(inst, _model_result()).ok
    assert not mfc.judge_model(inst, _model_result(predict={"equal": False, "max_abs_diff": "1"})).ok
    assert not mfc.judge_model(inst, _model_result(resume={"equal": True, "state_ok": False})).ok
    row = mfc.judge_model(inst, _model_result(stale={"equal": True, "max_abs_diff": "0"}))
    assert not row.ok and "stale: **not changed**" in row.teeth
    row = mfc.judge_model(inst, {"error": "import: ModuleNotFoundError: mindformers"})
    assert not row.ok and "ModuleNotFoundError" in row.predict
    assert "| 9.9.9 | 2.10.0 | yes" in mfc.model_table([mfc.judge_model(inst, _model_result())])
