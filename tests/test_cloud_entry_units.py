"""Unit tests of the pure parts of cloud_entry: arguments, config, cluster, blocks, waits."""
from __future__ import annotations

import json

import pytest
import yaml

from cloud_entry import args as args_mod
from cloud_entry import config as config_mod
from reshard.blocks import plan_blocks
from reshard.errors import ReshardError
from cloud_entry.cluster import resolve_cluster
from cloud_entry.errors import EntryError, WaitTimeout
from cloud_entry.jobspec import JobSpec
from cloud_entry.waits import Backoff, poll

LAUNCH = ["--", "python", "train.py", "--config", "{config}"]


def parse(*argv: str):
    return args_mod.parse_args([*argv, *LAUNCH])


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True),
                                         ("False", False), ("false", False), ("0", False),
                                         (" TRUE ", True)])
def test_booleans_as_modelarts_sends_them(text, value):
    assert parse(f"--auto_trans_ckpt={text}", "--load_checkpoint=x").auto_trans_ckpt is value
    assert parse(f"--use_parallel={text}").use_parallel is value


@pytest.mark.parametrize("text", ["yes please", "", "2", "Falsey"])
def test_bad_boolean_names_the_flag(text):
    with pytest.raises(EntryError, match="--only_save_strategy"):
        parse(f"--only_save_strategy={text}")


@pytest.mark.parametrize("argv, culprit", [
    (["--load_checkpoint"], "--load_checkpoint: expected one argument"),
    (["--launch_cmd=python \"x"], "--launch_cmd="),
    (["--transform_timeout=inf"], "--transform_timeout='inf': must be a finite number"),
])
def test_bad_arguments_are_one_entry_error(argv, culprit, capsys):
    with pytest.raises(EntryError, match=culprit.replace("(", r"\(")):
        args_mod.parse_args(argv)
    assert capsys.readouterr().err == ""    # no usage dump beside our one line


def test_unknown_arguments_are_passed_on_to_the_training_command(caplog):
    spec = parse("--data_url=obs://b/d", "--train_url=obs://b/t", "--npu_num_per_node=16")
    assert spec.passthrough == ("--data_url=obs://b/d", "--train_url=obs://b/t")
    assert spec.launch_cmd[-2:] == spec.passthrough
    assert spec.npu_num_per_node == 16
    assert spec.platform == {"data_url": "obs://b/d", "train_url": "obs://b/t"}
    assert spec.remote_save_url == "obs://b/t"          # ModelArts' output location by default


def test_dotted_overrides_are_yaml_scalars():
    spec = parse("--model.model_config.num_layers=4", "--parallel_config.vocab_emb_dp=False",
                 "--runner_config.sink_mode=true", "--processor.tokenizer.vocab_file=/a/b.model",
                 "--context.max_device_memory=31GB", "--data_parallel=2")
    assert spec.overrides == {"model.model_config.num_layers": 4, "parallel_config.vocab_emb_dp": False,
                              "runner_config.sink_mode": True,
                              "processor.tokenizer.vocab_file": "/a/b.model",
                              "context.max_device_memory": "31GB"}
    assert spec.parallel == {"data_parallel": 2}


def test_no_abbreviations_and_launch_command_is_kept_verbatim():
    spec = parse("--load=abc", "--transform_process_num=2")
    assert spec.load_checkpoint is None and "--load=abc" in spec.passthrough
    assert spec.launch_cmd == ("python", "train.py", "--config", "{config}", "--load=abc")
    spec = args_mod.parse_args(["--launch_cmd=python run.py --config {config}"])
    assert spec.launch_cmd == ("python", "run.py", "--config", "{config}")


@pytest.mark.parametrize("argv, culprit", [
    (["--transform_process_num=two"], "--transform_process_num"),
    (["--transform_process_num=0"], "--transform_process_num"),
    (["--npu_num_per_node=-8"], "--npu_num_per_node"),
    (["--transform_timeout=0"], "--transform_timeout"),
    (["--max_memory=lots"], "--max_memory"),
    (["--run_mode=training"], "--run_mode"),
    (["--load_ckpt_format=pt"], "--load_ckpt_format"),
    (["--prefix=a/b"], "--prefix"),
])
def test_bad_values_name_their_flag(argv, culprit):
    with pytest.raises(EntryError, match=culprit):
        parse(*argv)


def test_launch_command_required_unless_transform_only():
    with pytest.raises(EntryError, match="launch command"):
        args_mod.parse_args(["--auto_trans_ckpt=True"])
    assert args_mod.parse_args(["--transform_only=true"]).transform_only


def test_sizes():
    assert args_mod.parse_size("m", "8G") == 8 << 30
    assert args_mod.parse_size("m", "512MiB") == 512 << 20
    assert args_mod.parse_size("m", "1000") == 1000


# ---------------------------------------------------------------- config

def test_sample_config_and_diff():
    spec = parse("--config=run_llama_7b.yaml", "--load_checkpoint=obs://b/llama/rank_0/x.ckpt",
                 "--transform_process_num=1", "--use_parallel=False", "--run_mode=predict",
                 "--model_parallel=4", "--model.model_config.num_layers=4", "--new.key=3")
    base = config_mod.with_defaults(config_mod.read_base(spec.config))
    assert base["parallel_config"]["data_parallel"] == 2 and base["auto_trans_ckpt"] is True
    cfg = config_mod.build(spec, base)
    changes = {k: (old, new) for k, old, new in config_mod.diff(base, cfg)}
    assert changes == {
        "load_checkpoint": ("/worker/llama_7b_2layer/rank_0/llama_7b.ckpt", "obs://b/llama/rank_0/x.ckpt"),
        "transform_process_num": (2, 1), "use_parallel": (True, False), "run_mode": ("train", "predict"),
        "parallel_config.model_parallel": (2, 4), "model.model_config.num_layers": (2, 4),
        "new.key": (None, 3),
    }
    resolved = config_mod.resolve(spec, cfg)
    assert resolved.auto_trans_ckpt is True      # from the YAML: no argument said otherwise
    assert resolved.use_parallel is False and resolved.transform_process_num == 1


def test_minimal_config_without_base():
    spec = parse("--load_checkpoint=/ckpt/a.ckpt", "--auto_trans_ckpt=1", "--data_parallel=2")
    cfg = config_mod.build(spec, config_mod.read_base(spec.config))
    assert cfg["load_checkpoint"] == "/ckpt/a.ckpt" and cfg["auto_trans_ckpt"] is True
    assert cfg["parallel_config"] == {"data_parallel": 2} and cfg["output_dir"] == "./output"


def test_config_errors(tmp_path):
    with pytest.raises(EntryError, match="--config=nope.yaml"):
        config_mod.read_base("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(EntryError, match="not valid YAML"):
        config_mod.read_base(str(bad))
    spec = parse("--a.b=1")
    with pytest.raises(EntryError, match="--a.b: a is not a mapping"):
        config_mod.build(spec, {"a": 3})
    spec = parse()
    with pytest.raises(EntryError, match="auto_trans_ckpt=True needs load_checkpoint"):
        config_mod.resolve(spec, config_mod.build(spec, {"auto_trans_ckpt": True}))
    with pytest.raises(EntryError, match="use_parallel='yes'"):
        config_mod.resolve(spec, config_mod.build(spec, {"use_parallel": "yes"}))


def test_secrets_are_masked_in_dumps(tmp_path):
    cfg = {"obs": {"access_key_id": "AKIA123", "secret_access_key": "s3cr3t", "sk": "x", "ak": "y",
                   "endpoint": "http://e", "auth_token": "a"}, "token": "t",
           "tokenizer": {"vocab_file": "v", "pad_token_id": 0, "tokenizer_file": "f"},
           "model": {"model_config": {"bos_token_id": 1, "use_past_token": True, "task": "x"}}}
    out = tmp_path / "c.yaml"
    config_mod.dump(cfg, str(out))
    text = out.read_text()
    for secret in ("AKIA123", "s3cr3t"):
        assert secret not in text
    loaded = yaml.safe_load(text)
    assert loaded["obs"]["endpoint"] == "http://e"
    # MindFormers' *_token_id / tokenizer keys reach the launched command as they are
    assert loaded["tokenizer"] == cfg["tokenizer"] and loaded["model"] == cfg["model"]
    assert loaded["obs"]["ak"] == loaded["obs"]["auth_token"] == loaded["token"] == config_mod.MASK
    assert cfg["obs"]["sk"] == "x"               # the original is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


# ---------------------------------------------------------------- cluster

def test_cluster_from_arguments_over_environment():
    env = {"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1", "MA_NUM_GPUS": "8"}
    c = resolve_cluster(JobSpec(npu_num_per_node=16), env)
    assert (c.num_nodes, c.node_index, c.cards_per_node, c.world_size) == (2, 1, 16, 32)
    assert c.node_ranks == tuple(range(16, 32))
    c = resolve_cluster(JobSpec(node_num=4, node_index=3), env)
    assert c.node_ranks == tuple(range(24, 32))


def test_cluster_from_environment_only():
    c = resolve_cluster(JobSpec(), {"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "0", "DEVICE_NUM_PER_NODE": "4"})
    assert c.world_size == 8 and c.node_ranks == (0, 1, 2, 3)
    c = resolve_cluster(JobSpec(), {"RANK_SIZE": "16", "MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1"})
    assert c.cards_per_node == 8 and c.node_ranks[0] == 8
    c = resolve_cluster(JobSpec(), {}, parallel_world=8)
    assert (c.num_nodes, c.world_size, c.node_ranks) == (1, 8, tuple(range(8)))
    assert resolve_cluster(JobSpec(), {}).world_size == 1


def test_cluster_rank_table(tmp_path):
    table = {"server_list": [
        {"server_id": "10.0.0.1", "device": [{"device_id": str(i), "rank_id": str(i)} for i in range(4)]},
        {"server_id": "10.0.0.2", "device": [{"device_id": str(i), "rank_id": str(4 + i)} for i in range(4)]}]}
    path = tmp_path / "rank_table.json"
    path.write_text(json.dumps(table))
    c = resolve_cluster(JobSpec(), {"RANK_TABLE_FILE": str(path), "MA_CURRENT_IP": "10.0.0.2"})
    assert (c.num_nodes, c.node_index, c.cards_per_node, c.node_ranks) == (2, 1, 4, (4, 5, 6, 7))
    c = resolve_cluster(JobSpec(node_index=0), {"RANK_TABLE_FILE": str(path)})
    assert c.node_ranks == (0, 1, 2, 3)
    with pytest.raises(EntryError, match="--npu_num_per_node=8 but RANK_TABLE_FILE"):
        resolve_cluster(JobSpec(npu_num_per_node=8), {"RANK_TABLE_FILE": str(path)})
    with pytest.raises(EntryError, match="RANK_TABLE_FILE=.*no such file"):
        resolve_cluster(JobSpec(), {"RANK_TABLE_FILE": str(tmp_path / "none.json")})


@pytest.mark.parametrize("env, spec, culprit", [
    ({"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "2", "MA_NUM_GPUS": "8"}, JobSpec(), "VC_TASK_INDEX=2"),
    ({"MA_NUM_HOSTS": "two"}, JobSpec(), "MA_NUM_HOSTS"),
    ({"RANK_SIZE": "8", "MA_NUM_GPUS": "4"}, JobSpec(), "RANK_SIZE=8"),
    ({"RANK_SIZE": "6", "MA_NUM_HOSTS": "4"}, JobSpec(), "world size 6"),
])
def test_cluster_errors_name_the_variable(env, spec, culprit):
    with pytest.raises(EntryError, match=culprit):
        resolve_cluster(spec, env)


# ---------------------------------------------------------------- blocks

def test_blocks_spec_examples():
    plan = plan_blocks(8, 2)
    assert [b.ranks for b in plan.blocks] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [b.leader for b in plan.led_by(range(4, 8))] == [4]
    assert [b.ranks for b in plan_blocks(4, 2).blocks] == [(0, 1), (2, 3)]
    assert [b.leader for b in plan_blocks(16, 2, 2, shared_disk=True).blocks] == [0, 8]
    assert len(plan_blocks(8, 1).blocks) == 1 and plan_blocks(8, 1).warnings == ()


def test_blocks_rules():
    with pytest.raises(ReshardError, match="transform_process_num=0"):
        plan_blocks(8, 0)
    with pytest.raises(ReshardError, match="transform_process_num=3 does not divide the world size 8"):
        plan_blocks(8, 3)
    clamped = plan_blocks(4, 16)
    assert clamped.process_num == 4 and "using 4" in clamped.warnings[0]
    raised = plan_blocks(8, 1, num_nodes=2, shared_disk=False)
    assert raised.process_num == 2 and "node count 2" in raised.warnings[0]
    assert plan_blocks(8, 1, num_nodes=2, shared_disk=True).process_num == 1
    uneven = plan_blocks(12, 3, num_nodes=2, shared_disk=False)   # block 1 spans both nodes
    assert [b.ranks for b in uneven.led_by(range(6))] == [(0, 1, 2, 3), (4, 5, 6, 7)]


def test_blocks_cover_every_rank_once():
    for world in (1, 2, 4, 8, 12, 16):
        for p in range(1, world + 1):
            if world % p == 0:
                ranks = [r for b in plan_blocks(world, p).blocks for r in b.ranks]
                assert ranks == list(range(world))


# ---------------------------------------------------------------- waits

class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s):
        assert s > 0
        self.sleeps.append(s)
        self.now += s

    def clock(self):
        return self.now


def test_poll_backs_off_and_times_out():
    fake = FakeClock()
    with pytest.raises(WaitTimeout, match="timed out after 30s waiting for things"):
        poll(lambda: None, 30, "things", Backoff(0.5, 2.0, 4.0), sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert fake.now == pytest.approx(30) and len(fake.sleeps) < 12


def test_poll_returns_when_ready_and_propagates_errors():
    fake = FakeClock()
    answers = iter([None, None, "ok"])
    assert poll(lambda: next(answers), 10, "x", sleep=fake.sleep, clock=fake.clock) == "ok"

    def boom():
        raise EntryError("block 1 failed")
    with pytest.raises(EntryError, match="block 1 failed"):
        poll(boom, 10, "x", sleep=fake.sleep, clock=fake.clock)


# ---------------------------------------------------------------- the platform's command line

BOOT = ["--", "python", "run_mindformer.py", "--config", "{config}"]


def test_hyperparameters_appended_after_the_training_command_are_ours():
    spec = args_mod.parse_args([*BOOT, "--load_checkpoint=obs://b/llama.ckpt", "--auto_trans_ckpt=True",
                                "--data_parallel=2", "--model.model_config.num_layers=2", "--epochs=3",
                                "--data_url=obs://b/data", "--train_url=obs://b/out", "--init_method=tcp://h:1"])
    assert spec.load_checkpoint == "obs://b/llama.ckpt" and spec.auto_trans_ckpt is True
    assert spec.parallel == {"data_parallel": 2} and spec.overrides == {"model.model_config.num_layers": 2}
    # consumed ones never reach the training command; the rest do, in order
    assert spec.launch_cmd == ("python", "run_mindformer.py", "--config", "{config}", "--epochs=3",
                               "--data_url=obs://b/data", "--train_url=obs://b/out", "--init_method=tcp://h:1")
    assert spec.remote_save_url == "obs://b/out"      # ModelArts' output location
    assert spec.platform["init_method"] == "tcp://h:1"


def test_space_form_inside_the_training_command_and_its_own_config():
    spec = args_mod.parse_args(["--", "python", "run_mindformer.py", "--config", "configs/llama.yaml",
                                "--load_checkpoint", "/data/ckpt", "--run_mode", "predict"])
    assert spec.config == "configs/llama.yaml"        # the command's config is the base
    assert spec.load_checkpoint == "/data/ckpt" and spec.run_mode == "predict"
    assert spec.launch_cmd == ("python", "run_mindformer.py", "--config={config}")
    # a hyperparameter config wins over the command's, which still gets the effective config
    spec = args_mod.parse_args(["--", "python", "r.py", "--config=a.yaml", "--config=b.yaml"])
    assert spec.config == "b.yaml" and spec.launch_cmd == ("python", "r.py", "--config={config}")


def test_local_train_url_is_not_remote_save_url():
    spec = args_mod.parse_args([*BOOT, "--train_url=/home/ma-user/modelarts/outputs/train_url_0/"])
    assert spec.remote_save_url is None and spec.launch_cmd[-1].startswith("--train_url=")


@pytest.mark.parametrize("typo, meant", [("auto_trans_ckp", "auto_trans_ckpt"), ("Auto-Trans-Ckpt", "auto_trans_ckpt"),
                                         ("auto_trans", "auto_trans_ckpt"), ("load_checkpont", "load_checkpoint"),
                                         ("transfrom_process_num", "transform_process_num"),
                                         ("src_strategy_path_or_di", "src_strategy_path_or_dir"),
                                         ("remote_save_ur", "remote_save_url"), ("prefx", "prefix")])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_near_miss_of_a_hyperparameter_is_an_error(typo, meant, where):
    arg = f"--{typo}=True"
    argv = [arg, *BOOT] if where == "before" else [*BOOT, arg]
    with pytest.raises(EntryError, match=f"^unknown argument --{typo}: did you mean --{meant}\\? \\(if it is the training command"):
        args_mod.parse_args(argv)


@pytest.mark.parametrize("name", ["epochs", "seed", "data_url", "lr", "node_rank", "worker_num", "batch_size",
                                  "dataset_dir", "num_layers", "rank", "world_size", "max_steps", "profile"])
def test_other_arguments_are_not_taken_for_typos(name):
    assert args_mod.near_miss(name) is None
    assert f"--{name}=1" in args_mod.parse_args([*BOOT, f"--{name}=1"]).launch_cmd


def test_a_training_command_without_the_config_is_refused():
    with pytest.raises(EntryError, match=r"takes no config from the entry"):
        args_mod.parse_args(["--", "python", "train.py", "--load_checkpoint=x"])


def test_poll_says_what_it_still_waits_for(caplog):
    fake = FakeClock()
    caplog.set_level("INFO")
    with pytest.raises(WaitTimeout):
        poll(lambda: None, 100, "block markers", Backoff(1, 1, 1), sleep=fake.sleep, clock=fake.clock,
             status=lambda: "blocks led by rank(s) 4")
    lines = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(lines) == 3 and lines[0] == "still waiting after 30s (of 100s) for block markers: blocks led by rank(s) 4"


def test_review_findings_on_the_command_line():
    # the appended --config (later) wins over one before --, as every other hyperparameter does
    spec = args_mod.parse_args(["--config=A.yaml", "--load_checkpoint=X", "--", "python", "t.py", "--config",
                                "{config}", "--config=B.yaml", "--load_checkpoint=Y"])
    assert (spec.config, spec.load_checkpoint) == ("B.yaml", "Y")
    # --launch_cmd's own hyperparameters are ours too, and typo-checked
    spec = args_mod.parse_args(["--launch_cmd=python run.py --config {config} --load_checkpoint=obs://b/l.ckpt "
                                "--auto_trans_ckpt=True --epochs=2"])
    assert spec.load_checkpoint == "obs://b/l.ckpt" and spec.auto_trans_ckpt is True
    assert spec.launch_cmd == ("python", "run.py", "--config", "{config}", "--epochs=2")
    with pytest.raises(EntryError, match="did you mean --auto_trans_ckpt"):
        args_mod.parse_args(["--launch_cmd=python run.py --config {config} --auto_trans_ckp=True"])
    # extensions of our names are typos; a custom script's short words are not; --pass_args lets one through
    for typo, meant in (("transform_process_number", "transform_process_num"),
                        ("load_checkpoint_path", "load_checkpoint")):
        assert args_mod.near_miss(typo) == meant
    for word in ("model", "train", "predict", "output", "strategy", "epoch", "batch", "dataset_dir",
                 "num_layers", "learning_rate", "save_checkpoint_steps", "seq_length", "data_path", "load_path"):
        assert args_mod.near_miss(word) is None, word
    # a second review's misses: other spellings and other tools' names for ours
    for typo, meant in (("auto_transform_ckpt", "auto_trans_ckpt"), ("trans_ckpt", "auto_trans_ckpt"),
                        ("autotrans", "auto_trans_ckpt"), ("src_strategy", "src_strategy_path_or_dir"),
                        ("load_ckpt", "load_checkpoint"), ("npu_num", "npu_num_per_node")):
        assert args_mod.near_miss(typo) == meant, typo
    assert args_mod.near_miss("configs") == "config"
    spec = args_mod.parse_args([*BOOT, "--configs=a,b", "--pass_args=configs"])
    assert spec.launch_cmd[-1] == "--configs=a,b"
    # micro_batch_interleave_num is a top-level key in MindFormers
    assert args_mod.parse_args([*BOOT, "--micro_batch_interleave_num=2"]).overrides == {"micro_batch_interleave_num": 2}
    # an empty hyperparameter clears the config's value
    spec = args_mod.parse_args([*BOOT, "--src_strategy_path_or_dir="])
    assert config_mod.build(spec, {"src_strategy_path_or_dir": "s3://b/m.ckpt"})["src_strategy_path_or_dir"] == ""


@pytest.mark.parametrize("text, value", [("2", 2), ("012", 12), ("1e-4", 1e-4), ("True", True), ("none", None),
                                         ("[1, 2]", [1, 2]), ("llama 7b: v2", "llama 7b: v2"), ("#x", "#x"),
                                         ("31GB", "31GB")])
def test_dotted_values_are_scalars_as_written(text, value):
    assert args_mod.parse_scalar("a.b", text) == value


@pytest.mark.parametrize("arg", ["--data_parallel=abc", "--pipeline_stage=None", "--data_parallel=abc:",
                                 "--data_parallel=0", "--model_parallel=-2", "--data_parallel=2.5",
                                 "--vocab_emb_dp=maybe"])
def test_bad_parallel_values_are_one_line_errors(arg):
    with pytest.raises(EntryError, match=arg.split("=")[0]):
        args_mod.parse_args([*BOOT, arg])


def test_secret_arguments_are_masked_in_logged_commands():
    cmd = ["python", "t.py", "--secret_access_key=SK1", "--access_key_id", "AK1", "--sk", "x", "--epochs=2",
           "--pad_token_id=0"]
    assert config_mod.mask_args(cmd) == ["python", "t.py", f"--secret_access_key={config_mod.MASK}", "--access_key_id", config_mod.MASK,
                                         "--sk", config_mod.MASK, "--epochs=2", "--pad_token_id=0"]


def test_a_near_miss_of_a_config_key_in_a_dotted_override_is_an_error(caplog):
    from cloud_entry.job import _check_overrides
    base = config_mod.read_base("run_llama_7b.yaml")
    with pytest.raises(EntryError, match=r"did you mean --parallel_config\.data_parallel\?"):
        _check_overrides(parse("--parallel_config.data_paralel=2"), base)
    with pytest.raises(EntryError, match=r"did you mean --model\.model_config\.num_layers\?"):
        _check_overrides(parse("--model.model_config.num_layer=4"), base)
    caplog.set_level("WARNING")
    _check_overrides(parse("--runner_config.sink_mode=true", "--model.model_config.use_flash_attention=true"), base)
    assert "adds a key the config does not have" in caplog.text


@pytest.mark.parametrize("config, launch, resumes", [
    ({}, (), False),
    ({"resume_training": True}, (), True),
    ({"resume_training": "llama_rank_0-3_2.ckpt"}, (), True),      # MindFormers' named form
    ({"resume_training": False}, ("python", "run.py", "--resume_training=True"), True),
    ({"resume_training": True}, ("python", "run.py", "--resume_training", "False"), False),
    ({}, ("python", "run.py", "--resume_training"), True),
    ({"resume_training": None}, ("python", "run.py", "--resume_training=false"), False),
])
def test_a_single_card_resume_is_recognised_from_the_config_and_the_command(config, launch, resumes):
    """A single-card .ckpt resume gets the set's folder (MindFormers 1.9+ refuses a file there);
    run_mindformer.py's own --resume_training overrides the config."""
    from cloud_entry.job import _resumes
    assert _resumes(config, launch) is resumes
