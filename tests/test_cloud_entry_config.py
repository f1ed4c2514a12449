"""cloud_entry.config: base_config inheritance and the checkpoint keys, as MindFormers reads them.

The rules come from MindFormers 1.9-2.1: `mindformers/tools/register/config.py` (base_config),
`mindformers/trainer/utils.py` convert_checkpoint_config (the `checkpoint:` section),
`mindformers/trainer/base_trainer.py` (which loader runs).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

import obs_io
from cloud_entry import config as config_mod
from cloud_entry.errors import EntryError
from cloud_entry.jobspec import JobSpec


def write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def effective(base: dict, **spec_fields) -> tuple[dict, JobSpec]:
    spec = JobSpec(**spec_fields)
    cfg = config_mod.build(spec, config_mod.with_defaults(base))
    return cfg, config_mod.resolve(spec, cfg)


SECTION = {"checkpoint": {"load_path": "/ckpt/section", "load_balanced": False, "no_load_optim": True},
           "load_checkpoint": ""}


# ---------------------------------------------------------------- base_config

def test_base_config_string_nested_relative_paths(tmp_path):
    write(tmp_path / "common" / "base.yaml",
          {"a": {"x": 1, "y": 2}, "lst": [1, 2], "only_base": "b", "load_checkpoint": "/from/base"})
    write(tmp_path / "model" / "mid.yaml", {"base_config": "../common/base.yaml", "a": {"y": 3}, "lst": [9]})
    top = write(tmp_path / "model" / "run" / "top.yaml", {"base_config": "../mid.yaml", "a": {"z": 4}})
    cfg = config_mod.read_base(top)
    assert cfg["a"] == {"x": 1, "y": 3, "z": 4}        # mappings merge deeply, the includer wins
    assert cfg["lst"] == [9]                            # lists are replaced, not appended
    assert cfg["only_base"] == "b" and cfg["load_checkpoint"] == "/from/base"
    assert "base_config" not in cfg


def test_base_config_list_later_base_replaces_whole_keys(tmp_path):
    write(tmp_path / "b1.yaml", {"a": {"x": 1}, "k": 1})
    write(tmp_path / "b2.yaml", {"a": {"y": 2}})
    absolute = write(tmp_path / "elsewhere" / "b3.yaml", {"m": 3})
    top = write(tmp_path / "cfg" / "top.yaml",
                {"base_config": ["../b1.yaml", "../b2.yaml", absolute], "a": {"z": 3}})
    cfg = config_mod.read_base(top)
    # MindFormers combines bases with dict.update: b2's `a` replaced b1's; then the file merges in
    assert cfg["a"] == {"y": 2, "z": 3}
    assert cfg["k"] == 1 and cfg["m"] == 3 and "base_config" not in cfg


def test_base_config_shared_twice_is_no_cycle(tmp_path):
    write(tmp_path / "common.yaml", {"c": 1})
    write(tmp_path / "left.yaml", {"base_config": "common.yaml", "l": 1})
    write(tmp_path / "right.yaml", {"base_config": "common.yaml", "r": 1})
    top = write(tmp_path / "top.yaml", {"base_config": ["left.yaml", "right.yaml"]})
    assert config_mod.read_base(top) == {"c": 1, "l": 1, "r": 1}


def test_base_config_cycle_names_the_files(tmp_path):
    write(tmp_path / "a.yaml", {"base_config": "sub/b.yaml"})
    write(tmp_path / "sub" / "b.yaml", {"base_config": "../a.yaml"})
    with pytest.raises(EntryError, match=r"base_config cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        config_mod.read_base(str(tmp_path / "a.yaml"))
    self_ref = write(tmp_path / "self.yaml", {"base_config": "./self.yaml"})
    with pytest.raises(EntryError, match="base_config cycle"):
        config_mod.read_base(self_ref)


def test_missing_or_bad_base_names_the_referring_file(tmp_path):
    top = write(tmp_path / "cfg" / "top.yaml", {"base_config": "../nope/base.yaml"})
    with pytest.raises(EntryError) as err:
        config_mod.read_base(top)
    assert top in str(err.value) and "../nope/base.yaml" in str(err.value) and "not found" in str(err.value)
    bad = write(tmp_path / "bad.yaml", {"base_config": 3})
    with pytest.raises(EntryError, match="base_config must be a path or a list"):
        config_mod.read_base(bad)
    (tmp_path / "broken.yaml").write_text("a: [1\n")
    includer = write(tmp_path / "inc.yaml", {"base_config": "broken.yaml"})
    with pytest.raises(EntryError, match=r"inc\.yaml: base_config broken\.yaml .*not valid YAML"):
        config_mod.read_base(includer)


def test_base_config_on_object_storage_is_relative_to_the_url(bucket):
    obs_io.reset_config()
    try:
        obs_io.file.write(f"obs://{bucket}/shared/base.yaml", yaml.safe_dump({"a": {"x": 1}, "b": 1}))
        obs_io.file.write(f"obs://{bucket}/cfg/top.yaml",
                          yaml.safe_dump({"base_config": "../shared/base.yaml", "a": {"y": 2}}))
        assert config_mod.read_base(f"obs://{bucket}/cfg/top.yaml") == {"a": {"x": 1, "y": 2}, "b": 1}
        obs_io.file.write(f"obs://{bucket}/esc.yaml", yaml.safe_dump({"base_config": "../x.yaml"}))
        with pytest.raises(EntryError, match="above the bucket root"):
            config_mod.read_base(f"obs://{bucket}/esc.yaml")
    finally:
        obs_io.reset_config()


# ---------------------------------------------------------------- resolve: where the source is

def test_legacy_form_source_and_empty_argument_keeps_the_yaml():
    cfg, job = effective({"load_checkpoint": "/ckpt/yaml", "src_strategy_path_or_dir": "/s"})
    assert job.load_checkpoint == "/ckpt/yaml" and job.src_strategy == "/s"   # "" args wipe nothing
    assert "checkpoint" not in cfg and config_mod.uses_legacy_format(cfg)
    cfg, job = effective({"load_checkpoint": "/ckpt/yaml"}, load_checkpoint="/ckpt/arg")
    assert job.load_checkpoint == cfg["load_checkpoint"] == "/ckpt/arg"


def test_section_form_source_and_argument_goes_where_mindformers_reads():
    cfg, job = effective(SECTION)
    assert job.load_checkpoint == "/ckpt/section" and not config_mod.uses_legacy_format(cfg)
    cfg, job = effective(SECTION, load_checkpoint="obs://b/ckpt")
    assert cfg["checkpoint"]["load_path"] == cfg["load_checkpoint"] == job.load_checkpoint == "obs://b/ckpt"
    assert cfg["checkpoint"]["no_load_optim"] is True
    assert SECTION["checkpoint"]["load_path"] == "/ckpt/section"             # base untouched


def test_section_without_load_path_takes_the_top_level_key():
    cfg, job = effective({"checkpoint": {"save_max": 2}}, load_checkpoint="/ckpt/arg")
    assert "load_path" not in cfg["checkpoint"]                           # MindFormers copies it over
    assert job.load_checkpoint == "/ckpt/arg"


def test_empty_section_is_no_section():
    cfg, job = effective({"checkpoint": {}, "only_save_strategy": True}, load_checkpoint="/ckpt/arg")
    assert cfg["checkpoint"] == {} and config_mod.uses_legacy_format(cfg)
    assert job.load_checkpoint == "/ckpt/arg" and job.only_save_strategy is True


@pytest.mark.parametrize("section_path, expected", [("/ckpt/section", "/ckpt/section"), ("", "")])
def test_conflicting_forms_section_wins_with_a_warning(caplog, section_path, expected):
    base = {"checkpoint": {"load_path": section_path}, "load_checkpoint": "/ckpt/top"}
    with caplog.at_level(logging.WARNING, logger="cloud_entry.config"):
        _, job = effective(base)
    assert job.load_checkpoint == expected
    assert f"checkpoint.load_path={section_path!r}" in caplog.text and "'/ckpt/top'" in caplog.text


def test_argument_and_dotted_override_disagree_section_wins(caplog):
    with caplog.at_level(logging.WARNING, logger="cloud_entry.config"):
        _, job = effective(SECTION, load_checkpoint="/a", overrides={"checkpoint.load_path": "/b"})
    assert job.load_checkpoint == "/b" and "disagree" in caplog.text


def test_format_is_read_at_the_top_level_in_both_forms():
    _, job = effective({**SECTION, "load_ckpt_format": "safetensors"})
    assert job.load_ckpt_format == "safetensors"
    _, job = effective({}, load_ckpt_format="safetensors")
    assert job.load_ckpt_format == "safetensors"


def test_non_legacy_training_converts_and_launches_with_the_legacy_format(caplog):
    """MindFormers' non-legacy train loader reads neither a .ckpt nor rank_x/ folders (found with
    scripts/mindformers_compat.py on 1.8-2.1): the entry converts and drops the section."""
    with caplog.at_level(logging.WARNING, logger="cloud_entry.config"):
        cfg, job = effective({**SECTION, "auto_trans_ckpt": True})
    assert job.auto_trans_ckpt is True and "use_legacy_format: True" in caplog.text
    out = config_mod.for_launch(cfg, "/local/transformed/src", converted=True)
    assert "checkpoint" not in out and out["use_legacy_format"] is True
    assert out["load_checkpoint"] == "/local/transformed/src" and config_mod.uses_legacy_format(out)
    assert config_mod.resolve(JobSpec(), out).load_checkpoint == "/local/transformed/src"
    # not converted (auto_trans_ckpt off): the user's section is left for MindFormers' own loader
    kept = config_mod.for_launch(cfg, "/local/src")
    assert kept["checkpoint"]["load_path"] == "/local/src" and not config_mod.uses_legacy_format(kept)
    _, job = effective({"use_legacy_format": False, "load_checkpoint": "/c"}, auto_trans_ckpt=True,
                       run_mode="finetune")
    assert job.auto_trans_ckpt is True
    # predict and eval load through transform_and_load_checkpoint in both formats: section kept
    cfg, job = effective({**SECTION, "auto_trans_ckpt": True}, run_mode="predict")
    assert job.auto_trans_ckpt is True and job.load_checkpoint == "/ckpt/section"
    assert config_mod.for_launch(cfg, "/t", converted=True)["checkpoint"]["load_path"] == "/t"
    _, job = effective({"load_checkpoint": "/c", "auto_trans_ckpt": True})
    assert job.auto_trans_ckpt is True


def test_own_only_save_strategy_with_non_legacy_format_is_refused_early():
    with pytest.raises(EntryError, match="only_save_strategy=True.*use_legacy_format: True"):
        effective(SECTION, only_save_strategy=True)
    with pytest.raises(EntryError, match="expected a mapping"):
        effective({"checkpoint": "/not/a/section"})


# ---------------------------------------------------------------- for_launch

def test_for_launch_legacy_form_creates_no_section():
    cfg, _ = effective({"load_checkpoint": "obs://b/src", "auto_trans_ckpt": True, "checkpoint": {}})
    out = config_mod.for_launch(cfg, "/local/transformed/src")
    assert out["load_checkpoint"] == "/local/transformed/src" and out["auto_trans_ckpt"] is False
    assert out["checkpoint"] == {} and config_mod.uses_legacy_format(out)
    assert cfg["load_checkpoint"] == "obs://b/src" and cfg["auto_trans_ckpt"] is True     # a copy


def test_for_launch_section_form_sets_both_keys():
    cfg, _ = effective({**SECTION, "auto_trans_ckpt": True}, load_checkpoint="obs://b/src", run_mode="eval")
    out = config_mod.for_launch(cfg, "/local/transformed/src")
    assert out["checkpoint"]["load_path"] == out["load_checkpoint"] == "/local/transformed/src"
    assert out["checkpoint"]["no_load_optim"] is True and out["auto_trans_ckpt"] is False
    assert config_mod.resolve(JobSpec(), out).load_checkpoint == "/local/transformed/src"
    assert cfg["checkpoint"]["load_path"] == "obs://b/src"


@pytest.mark.parametrize("yaml_value, given, expected", [
    ("obs://b/strategy/", None, ""),                       # never a stale URL
    ("s3://b/strategy/merged.ckpt", "/local/s.ckpt", "/local/s.ckpt"),
    ("/local/strategy", None, "/local/strategy"),
    ("", "/local/s.ckpt", "/local/s.ckpt"),
])
def test_for_launch_src_strategy(yaml_value, given, expected):
    cfg, _ = effective({"load_checkpoint": "/c", "src_strategy_path_or_dir": yaml_value})
    assert config_mod.for_launch(cfg, "/t", given)["src_strategy_path_or_dir"] == expected


# ---------------------------------------------------------------- for_strategy_pass

def test_strategy_pass_legacy_form():
    cfg, _ = effective({"load_checkpoint": "/c", "auto_trans_ckpt": True, "resume_training": True})
    out = config_mod.for_strategy_pass(cfg, "/out")
    assert out["only_save_strategy"] is True and out["auto_trans_ckpt"] is False
    assert out["load_checkpoint"] == "" and out["resume_training"] is False and out["output_dir"] == "/out"
    assert "checkpoint" not in out and "use_legacy_format" not in out
    assert cfg["only_save_strategy"] is False and cfg["load_checkpoint"] == "/c"


@pytest.mark.parametrize("base", [{**SECTION, "run_mode": "predict"},
                                  {"use_legacy_format": False, "load_checkpoint": "/c"},
                                  {"ckpt_use_legacy_format": False, "load_checkpoint": "/c"}])   # 1.7
def test_strategy_pass_switches_to_the_legacy_format(base):
    cfg, _ = effective(base)
    out = config_mod.for_strategy_pass(cfg, "/out")
    assert "checkpoint" not in out and out["use_legacy_format"] is True
    assert out.get("ckpt_use_legacy_format", True) is True
    assert config_mod.uses_legacy_format(out) and out["load_checkpoint"] == ""
    job = config_mod.resolve(JobSpec(), out)            # what MindFormers accepts: no EntryError
    assert job.only_save_strategy is True and job.load_checkpoint == ""
    assert not config_mod.uses_legacy_format(cfg)       # the job's own config is untouched


# ---------------------------------------------------------------- hostile configs

def _laughs(levels: int = 9) -> str:
    """'Billion laughs': each alias lists the previous one ten times, 10**levels values in all."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bombs_deep_nesting_and_oversized_configs_are_refused_in_one_line(tmp_path):
    cases = {"bomb.yaml": (_laughs(), "YAML aliases expand to more than"),
             "self.yaml": ("a: &a [1, *a]\n", "refers to a value holding it"),
             "deep.yaml": ("x: " + "[" * 3000 + "]" * 3000 + "\n", "levels deep"),
             "huge.yaml": ("k: v\n" * (config_mod.MAX_CONFIG_BYTES // 5 + 1), "more than the")}
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(EntryError) as info:
            config_mod.read_base(str(tmp_path / name))
        assert str(info.value).startswith(f"--config={tmp_path / name}: ") and said in str(info.value), info.value
        assert "\n" not in str(info.value)
    # within the bounds: anchors and aliases as people write them still work
    (tmp_path / "ok.yaml").write_text("common: &c {lr: 0.1, layers: [1, 2]}\nmodel: *c\nother: {<<: *c, lr: 0.2}\n")
    assert config_mod.read_base(str(tmp_path / "ok.yaml"))["other"] == {"lr": 0.2, "layers": [1, 2]}


def test_the_entry_refuses_an_alias_bomb_at_once(tmp_path):
    """Through the command, as the job runs it: a bomb in --config, in a base_config, and in a
    dotted override's value end in one line and exit 2 within seconds (it hung in mask_secrets,
    memory growing, before), with nothing written."""
    import os
    import subprocess
    import sys
    import time
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "bomb.yaml").write_text(_laughs())
    (tmp_path / "child.yaml").write_text("base_config: bomb.yaml\nmodel: {}\n")
    bomb_value = "[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + [f"&b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]" for i in range(8)]) + "]"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_"))}
    env["PYTHONPATH"] = str(repo)
    for args, culprit in (([f"--config={tmp_path / 'bomb.yaml'}"], "bomb.yaml"),
                          ([f"--config={tmp_path / 'child.yaml'}"], "bomb.yaml"),
                          ([f"--model.extra={bomb_value}"], "--model.extra")):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cloud_entry", *args, "--", "true", "{config}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in proc.stderr, proc.stderr
        assert "alias" in lines[0], lines[0]
        assert elapsed < 60, elapsed
        assert not (tmp_path / "output").exists()


def test_mindformers_17_switch_counts():
    """MindFormers 1.7 loads Checkpoint 2.0 with a top-level ckpt_use_legacy_format: False (no
    checkpoint: section then); a converted legacy set is launched with it set True."""
    cfg, job = effective({"ckpt_use_legacy_format": False, "load_checkpoint": "/c", "auto_trans_ckpt": True})
    assert not config_mod.uses_legacy_format(cfg) and job.auto_trans_ckpt is True
    out = config_mod.for_launch(cfg, "/local/transformed/c", converted=True)
    assert out["ckpt_use_legacy_format"] is True and config_mod.uses_legacy_format(out)
    kept = config_mod.for_launch(cfg, "/local/c")     # not converted: 1.7's own loader reads it
    assert kept["ckpt_use_legacy_format"] is False and kept["load_checkpoint"] == "/local/c"
