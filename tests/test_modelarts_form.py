"""configs/modelarts_form.yaml and `cloud-entry --help` are made from the parser's definitions:
these tests keep the shipped file in step and check that every form field is accepted."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloud_entry import form
from cloud_entry.args import build_parser, parse_args

FORM = Path(__file__).resolve().parent.parent / "configs" / "modelarts_form.yaml"

SAMPLE = {"Boolean": "True", "Integer": "2", "Float": "30", "String": "x"}
VALUES = {"load_ckpt_format": "ckpt", "run_mode": "train", "max_memory": "8G", "prefix": "checkpoint_",
          "launch_cmd": "python train.py --config {config}", "config": "run_llama_7b.yaml",
          "data_parallel": "2", "model_parallel": "2", "pipeline_stage": "2", "micro_batch_num": "2",
          "gradient_aggregation_group": "4", "context_parallel": "1", "expert_parallel": "1",
          "load_checkpoint_step": "10_2", "checkpoint2_mode": "online"}


def test_shipped_form_is_the_generated_one():
    assert FORM.read_text() == form.render(), "run: python -m cloud_entry.form > configs/modelarts_form.yaml"


def test_every_form_field_is_a_flag_the_entry_accepts():
    rows = yaml.safe_load(FORM.read_text())["hyperparameters"]
    parser_flags = {o for a in build_parser()._actions for o in a.option_strings
                    if o.startswith("--")} - {"--help", "--version"}
    assert {f"--{r['name']}" for r in rows} == parser_flags
    for row in rows:
        assert row["type"] in SAMPLE and row["description"].strip(), row
        value = VALUES.get(row["name"], SAMPLE[row["type"]])
        parse_args([f"--{row['name']}={value}", "--", "python", "train.py", "--config", "{config}"])


def test_help_describes_every_flag_and_ends_with_examples(capsys):
    parser = build_parser()
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    examples = text[text.index("examples:"):]
    assert examples.count("cloud-entry ") >= 4 and "run_mindformer.py --config {config}" in examples


def test_help_shows_each_flags_type_and_default(capsys):
    """aws-cli/huggingface-cli users read `--help` for what a flag takes and what happens without
    it: every value is named by its type (never a bare VALUE) and every flag says its default."""
    parser = build_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        assert action.metavar and action.metavar != "VALUE", action.option_strings
        assert "(default: " in action.help, action.option_strings
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--auto_trans_ckpt BOOL", "--transform_timeout SECONDS", "(default: 3600)",
                  "--max_memory SIZE", "--run_mode {train,finetune,eval,predict}", "--data_parallel INT",
                  "-q [BOOL], --quiet [BOOL]", "(default: checkpoint_)"):
        assert shown in text, shown
    assert " VALUE" not in text[:text.index("Any other --a.b.c=VALUE")]   # the epilog names one


@pytest.mark.parametrize("flag, field", [("src_strategy_path_or_dir", "src_strategy"),
                                         ("dst_strategy", "dst_strategy"),
                                         ("load_checkpoint", "load_checkpoint")])
@pytest.mark.parametrize("none", ["None", "none", "null"])
def test_none_means_no_strategy_or_checkpoint(flag, field, none):
    spec = parse_args([f"--{flag}={none}", "--", "python", "train.py", "--config", "{config}"])
    assert getattr(spec, field) == ""
