"""The bad-input catalogue: every case through every command it applies to (`transform-checkpoint`,
`cloud-entry`, `python -m obs_io`), each ending the same way: exit code 2, one line on stderr
naming the culprit (file, rank, parameter, flag or URL), no traceback, no file under a final name.

The README's troubleshooting table is the catalogue's other half: each case names its row, the
line printed must match one of the row's messages (`<...>` stands for any text), and every row
must be exercised here, so the table and the messages cannot drift apart.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import synth

REPO = Path(__file__).resolve().parent.parent
TOOLS = {
    "transform-checkpoint": [sys.executable, "-m", "reshard"],
    "cloud-entry": [sys.executable, "-m", "cloud_entry", "--transform_only=True", "--auto_trans_ckpt=True",
                    "--npu_num_per_node=4", "--data_parallel=1", "--model_parallel=2", "--pipeline_stage=2"],
    "obs_io": [sys.executable, "-m", "obs_io"],
}


# ---------------------------------------------------------------- the README's table

def troubleshooting_rows() -> dict[str, list[re.Pattern]]:
    """Row id -> the messages of its second column (each `...` fragment a pattern, <x> = any)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Troubleshooting"):]
    section = section[:section.find("\n## ", 5) if "\n## " in section[5:] else len(section)]
    rows: dict[str, list[re.Pattern]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`#"):
            continue
        row = cells[0].strip("`")[1:]
        rows[row] = [re.compile(".+?".join(map(re.escape, re.split(r"<[^<>]+>", frag))))
                     for frag in re.findall(r"`([^`]+)`", cells[1])]
    return rows


# ---------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def inputs(models, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("catalogue")
    m = {"complete": models["complete"], "s8": models["s8"], "s4": models["s4"], "ref8": models["ref8"],
         "ref4": models["ref4"], "root": str(root)}
    m["gap"] = str(root / "gap")
    shutil.copytree(models["ref8"], m["gap"])
    shutil.rmtree(os.path.join(m["gap"], "rank_3"))
    m["few"] = str(root / "few")
    for r in range(4):
        shutil.copytree(os.path.join(models["ref8"], f"rank_{r}"), os.path.join(m["few"], f"rank_{r}"))
    data = Path(models["complete"]).read_bytes()
    m["truncated"] = str(root / "truncated.ckpt")
    Path(m["truncated"]).write_bytes(data[:100])
    m["cut"] = str(root / "cut.ckpt")             # cut inside a record, past the first ones
    Path(m["cut"]).write_bytes(data[:len(data) * 2 // 3])
    m["emptyckpt"] = str(root / "empty.ckpt")
    Path(m["emptyckpt"]).write_bytes(b"")
    m["safetensors"] = str(root / "corrupt.safetensors")
    Path(m["safetensors"]).write_bytes(b"\xff" * 8 + b"{not json")
    m["encrypted"] = str(root / "encrypted.ckpt")
    import mindspore as ms
    import numpy as np
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((4, 4), np.float32))}], m["encrypted"],
                       enc_key=b"0123456789abcdef")
    m["foreign"] = str(root / "foreign_strategy.ckpt")   # names no parameter of the checkpoint
    synth.write_stage_layouts(m["foreign"], 0, {"vision.patch_embed.weight": {
        "dev_matrix": [1, 2], "tensor_map": [0, -1], "param_split_shape": [], "indices_offset": [],
        "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}})
    m["empty"] = str(root / "empty_strategy.ckpt")
    Path(m["empty"]).write_bytes(b"")
    m["garbage"] = str(root / "garbage_strategy.ckpt")
    Path(m["garbage"]).write_bytes(b"garbage, not a protobuf")
    m["afile"] = str(root / "a_file")
    Path(m["afile"]).write_text("a file where a folder should be")
    # what real training leaves: saves of two steps, rank_3 without the latest
    m["steps"] = synth.step_named(models["ref8"], str(root / "steps"),
                                  lambda r: f"llama_rank_{r}-{'5_2' if r == 3 else '10_2'}.ckpt")
    # a source strategy leaving out two sharded (frozen) weights; one without the optimizer
    # sharding the checkpoint has; a destination strategy of one layer of two; one naming a
    # parameter nobody has
    params = models["params"]
    frozen = ("model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w1.weight")
    stages = synth.strategy_stages(2, 2, 2, params, opt_shard=-1)
    m["pruned"] = synth.write_layouts(str(root / "pruned"), {s: {n: v for n, v in lay.items() if n not in frozen}
                                                            for s, lay in stages.items()}, 4)
    m["noopt"] = synth.write_layouts(str(root / "noopt"), synth.strategy_stages(2, 2, 2, params), 4)
    m["one_layer"] = str(root / "one_layer")
    synth.write_strategy(m["one_layer"], dp=1, mp=2, pp=2, num_layers=1, params=params)
    extra = synth.strategy_stages(1, 2, 2, params)
    extra[0]["model.layers.0.attention.extra.weight"] = dict(next(iter(extra[0].values())), tensor_map=[0, -1])
    m["extra"] = synth.write_layouts(str(root / "extra"), extra, 2)
    return m


@dataclass(frozen=True)
class Case:
    row: str                                     # README troubleshooting row id
    tool: str
    args: Callable[[dict[str, str], str], list[str]]   # (inputs, output location) -> arguments
    culprit: Callable[[dict[str, str]], str]      # text the one line must contain


def tc(*args: str) -> Callable[[dict[str, str], str], list[str]]:
    return lambda m, out: [a.format(out=out, **m) for a in args] + (
        [] if any(a.startswith("--dst_checkpoint") for a in args) else [f"--dst_checkpoint={out}"])


def entry(*args: str) -> Callable[[dict[str, str], str], list[str]]:
    return lambda m, out: [a.format(out=out, **m) for a in args] + (
        [] if any(a.startswith("--output_dir") for a in args) else [f"--output_dir={out}"])


def obs(*args: str) -> Callable[[dict[str, str], str], list[str]]:
    return lambda m, out: [a.format(out=out, **m) for a in args]


def said(text: str) -> Callable[[dict[str, str]], str]:
    return lambda m: text.format(**m)


CASES = [
    Case("source-missing", "transform-checkpoint",
         tc("--src_checkpoint={root}/nope", "--dst_strategy={s4}"), said("{root}/nope")),
    Case("source-missing", "cloud-entry",
         entry("--load_checkpoint={root}/nope", "--dst_strategy={s4}"), said("{root}/nope")),
    Case("source-missing", "obs_io", obs("cp", "{root}/nope", "{out}"), said("{root}/nope")),
    Case("rank-gap", "transform-checkpoint",
         tc("--src_checkpoint={gap}", "--src_strategy={s8}", "--dst_strategy={s4}"), said("rank_3")),
    Case("rank-gap", "cloud-entry",
         entry("--load_checkpoint={gap}", "--src_strategy_path_or_dir={s8}", "--dst_strategy={s4}"),
         said("rank_3")),
    Case("corrupt-checkpoint", "transform-checkpoint",
         tc("--src_checkpoint={truncated}", "--dst_strategy={s4}"), said("truncated.ckpt")),
    Case("corrupt-checkpoint", "cloud-entry",
         entry("--load_checkpoint={truncated}", "--dst_strategy={s4}"), said("truncated.ckpt")),
    Case("corrupt-checkpoint", "transform-checkpoint",
         tc("--src_checkpoint={cut}", "--dst_strategy={s4}"), said("cut.ckpt: truncated")),
    Case("output-holds-other-files", "transform-checkpoint",   # gap: 8 ranks' files, 4 written
         tc("--src_checkpoint={complete}", "--dst_strategy={s4}", "--dst_checkpoint={gap}"),
         said("rank_4/checkpoint_4.ckpt")),
    Case("corrupt-checkpoint", "transform-checkpoint",
         tc("--src_checkpoint={emptyckpt}", "--dst_strategy={s4}"), said("empty.ckpt: empty file")),
    Case("corrupt-checkpoint", "transform-checkpoint",
         tc("--src_checkpoint={safetensors}", "--dst_strategy={s4}", "--format=safetensors"),
         said("corrupt.safetensors")),
    Case("encrypted-checkpoint", "transform-checkpoint",
         tc("--src_checkpoint={encrypted}", "--dst_strategy={s4}"), said("encrypted.ckpt")),
    Case("encrypted-checkpoint", "cloud-entry",
         entry("--load_checkpoint={encrypted}", "--dst_strategy={s4}"), said("encrypted.ckpt")),
    Case("strategy-names-nothing", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={foreign}"), said("foreign_strategy.ckpt")),
    Case("strategy-names-nothing", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={foreign}", "--npu_num_per_node=2",
               "--model_parallel=2", "--pipeline_stage=1"), said("foreign_strategy.ckpt")),
    Case("too-few-rank-folders", "transform-checkpoint",
         tc("--src_checkpoint={few}", "--src_strategy={s8}", "--dst_strategy={s4}"), said("rank_4")),
    Case("too-few-rank-folders", "cloud-entry",
         entry("--load_checkpoint={few}", "--src_strategy_path_or_dir={s8}", "--dst_strategy={s4}"),
         said("rank_4")),
    Case("not-dividing", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--transform_process_num=3"),
         said("transform_process_num=3")),
    Case("not-dividing", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--npu_num_per_node=3",
               "--data_parallel=3", "--model_parallel=1", "--pipeline_stage=1"),
         said("npu_num_per_node=3")),
    Case("parallel-sizes", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--data_parallel=2"),
         said("data_parallel=2 x model_parallel=2 x pipeline_stage=2 = 8 devices")),
    Case("steps-differ", "transform-checkpoint",
         tc("--src_checkpoint={steps}", "--src_strategy={s8}", "--dst_strategy={s4}"), said("rank_3: 5_2")),
    Case("steps-differ", "cloud-entry",
         entry("--load_checkpoint={steps}", "--src_strategy_path_or_dir={s8}", "--dst_strategy={s4}"),
         said("rank_3: 5_2")),
    Case("steps-differ", "transform-checkpoint",
         tc("--src_checkpoint={steps}", "--src_strategy={s8}", "--dst_strategy={s4}", "--step=10_2"),
         said("missing in rank_3")),
    Case("strategy-leaves-out-shards", "transform-checkpoint",
         tc("--src_checkpoint={ref8}", "--src_strategy={pruned}", "--dst_strategy={s4}"),
         said("model.layers.0.attention.wq.weight")),
    Case("strategy-leaves-out-shards", "cloud-entry",
         entry("--load_checkpoint={ref8}", "--src_strategy_path_or_dir={pruned}", "--dst_strategy={s4}"),
         said("model.layers.0.attention.wq.weight")),
    Case("optimizer-sharding-mismatch", "transform-checkpoint",
         tc("--src_checkpoint={ref8}", "--src_strategy={noopt}", "--dst_strategy={s4}"), said("noopt")),
    Case("optimizer-sharding-mismatch", "cloud-entry",
         entry("--load_checkpoint={ref8}", "--src_strategy_path_or_dir={noopt}", "--dst_strategy={s4}"),
         said("noopt")),
    Case("stale-destination-strategy", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={one_layer}"), said("one_layer")),
    Case("stale-destination-strategy", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={one_layer}"), said("one_layer")),
    Case("checkpoint-lacks", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={extra}"), said("model.layers.0.attention.extra.weight")),
    Case("checkpoint-lacks", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={extra}"), said("model.layers.0.attention.extra.weight")),
    Case("beyond-source-strategy", "transform-checkpoint",
         tc("--src_checkpoint={ref8}", "--src_strategy={s4}", "--dst_strategy={s4}"), said("rank_4")),
    Case("beyond-source-strategy", "cloud-entry",
         entry("--load_checkpoint={ref8}", "--src_strategy_path_or_dir={s4}", "--dst_strategy={s4}"),
         said("rank_4")),
    Case("training-command-missing", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--", "python3.99", "train.py",
               "--config", "{{config}}"), said("python3.99")),
    Case("url-without-bucket", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={s4}", "--dst_checkpoint=obs://"), said("obs://")),
    Case("url-without-bucket", "transform-checkpoint",
         tc("--src_checkpoint=s3:///models/llama.ckpt", "--dst_strategy={s4}"), said("s3:///models")),
    Case("url-without-bucket", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--remote_save_url=obs://"),
         said("remote_save_url")),
    Case("url-without-bucket", "cloud-entry",
         entry("--load_checkpoint=obs:///llama.ckpt", "--dst_strategy={s4}"), said("load_checkpoint")),
    Case("url-without-bucket", "obs_io", obs("ls", "obs://"), said("obs://")),
    Case("mistyped-scheme", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={s4}", "--dst_checkpoint=obs:/job/out"),
         said("obs:/job/out")),
    Case("mistyped-scheme", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--remote_save_url=s3:job/out"),
         said("s3:job/out")),
    Case("mistyped-scheme", "obs_io", obs("cp", "{complete}", "obs:/job/out/llama.ckpt"), said("obs:/job/out")),
    Case("output-not-writable", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={s4}", "--dst_checkpoint={afile}"), said("a_file")),
    Case("output-not-writable", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={s4}", "--dst_checkpoint=/proc/out"), said("/proc/out")),
    Case("output-not-writable", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--output_dir={afile}"), said("output_dir")),
    Case("output-not-writable", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={s4}", "--output_dir=/proc/out"), said("/proc/out")),
    Case("output-not-writable", "obs_io", obs("cp", "{complete}", "{afile}/llama.ckpt"), said("a_file")),
    Case("bad-strategy-file", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={empty}"), said("empty_strategy.ckpt")),
    Case("bad-strategy-file", "transform-checkpoint",
         tc("--src_checkpoint={complete}", "--dst_strategy={garbage}"), said("garbage_strategy.ckpt")),
    Case("bad-strategy-file", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={empty}"), said("empty_strategy.ckpt")),
    Case("bad-strategy-file", "cloud-entry",
         entry("--load_checkpoint={complete}", "--dst_strategy={garbage}"), said("garbage_strategy.ckpt")),
]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MA_", "VC_", "RANK_", "CLOUD_ENTRY_", "DEVICE_", "MS_", "S3_", "AWS_",
                                "OBS_", "ACCESS_KEY", "SECRET_ACCESS"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_tool(tool: str, args: list[str], cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(TOOLS[tool] + args, cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=300)


def final_files(folder: Path) -> list[str]:
    """Converted files under a final name (no temporary ones) below folder: a rank_<r>/ folder's
    .ckpt/.safetensors (the job's copy of a strategy file is no checkpoint)."""
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.parent.name.startswith("rank_")
                  and re.search(r"\.(ckpt|safetensors)$", p.name))


def check_one_line(proc, culprit: str, row: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    last = proc.stderr.strip().splitlines()[-1]
    assert culprit in last, last
    patterns = troubleshooting_rows()[row]
    assert any(p.search(last) for p in patterns), f"{last!r} matches no message of README row #{row}"
    return last


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.row}-{c.tool}")
def test_bad_input_is_one_line_exit_2_nothing_written(case, inputs, tmp_path):
    out = tmp_path / "out"
    before = final_files(Path(inputs["root"]))
    proc = run_tool(case.tool, case.args(inputs, str(out)), tmp_path)
    check_one_line(proc, case.culprit(inputs), case.row)
    assert final_files(out) == []
    assert final_files(Path(inputs["root"])) == before
    assert not (tmp_path / "obs:").exists() and not (tmp_path / "s3:job").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a full disk the test can make (as root; skipped with the reason elsewhere)."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_no_space_left_is_one_line_for_every_tool(inputs, small_disk, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(512 << 10))
    filler = small_disk / "filler"
    cases = [("transform-checkpoint", tc("--src_checkpoint={complete}", "--dst_strategy={s4}")),
             ("cloud-entry", entry("--load_checkpoint={complete}", "--dst_strategy={s4}",
                                   f"--work_dir={tmp_path / 'work'}")),
             ("obs_io", obs("cp", str(big), "{out}/big.bin"))]
    for tool, args in cases:
        for p in small_disk.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        filler.write_bytes(b"\0" * (200 << 10))      # leaves about 56 KiB: less than any output
        out = small_disk / "out"
        proc = run_tool(tool, args(inputs, str(out)), tmp_path)
        last = check_one_line(proc, str(small_disk), "no-space")
        assert "No space left on device" in last or "no space left" in last.lower(), last
        leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        assert [p for p in leftovers if ".tmp" in p.name] == [], (tool, leftovers)
        assert [p for p in leftovers if p.suffix == ".bin"] == [], (tool, leftovers)
        for p in (p for p in leftovers if p.suffix == ".ckpt" and p.parent.name.startswith("rank_")):
            ref = Path(inputs["ref4"]) / p.parent.name / p.name   # committed before the disk filled: whole
            assert p.read_bytes() == ref.read_bytes(), (tool, p)


@pytest.fixture(scope="module")
def auth_store(inputs):
    """An object store that checks signatures and access keys, as OBS does, holding the model."""
    import s3server
    server = s3server.start(auth=True)
    try:
        server.client().create_bucket(Bucket="models")
        server.client().upload_file(inputs["complete"], "models", "llama/llama.ckpt")
        yield server
    finally:
        server.stop()


CREDENTIAL_CASES = [
    ("transform-checkpoint", tc("--src_checkpoint=s3://models/llama/llama.ckpt", "--dst_strategy={s4}")),
    ("cloud-entry", entry("--load_checkpoint=s3://models/llama/llama.ckpt", "--dst_strategy={s4}")),
    ("obs_io", obs("cp", "s3://models/llama/llama.ckpt", "{out}/llama.ckpt")),
]


@pytest.mark.parametrize("row, variable, value", [("wrong-credentials", "SECRET_ACCESS_KEY", "wrong-secret-0123"),
                                                  ("unknown-access-key", "ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")])
@pytest.mark.parametrize("tool, args", CREDENTIAL_CASES, ids=[c[0] for c in CREDENTIAL_CASES])
def test_refused_credentials_are_one_line_naming_what_to_check(inputs, auth_store, tmp_path, row, variable,
                                                               value, tool, args):
    env = {**clean_env(), **auth_store.env(), variable: value}
    out = tmp_path / "out"
    proc = run_tool(tool, args(inputs, str(out)), tmp_path, env)
    last = check_one_line(proc, "s3://models/llama", row)
    assert f"check {variable}" in last and auth_store.endpoint in last
    for secret in (auth_store.secret_key, value if variable == "SECRET_ACCESS_KEY" else "\0"):
        assert secret not in proc.stdout + proc.stderr
    assert final_files(out) == []


def test_every_troubleshooting_row_is_exercised():
    rows = set(troubleshooting_rows())
    covered = {c.row for c in CASES} | {"no-space", "wrong-credentials", "unknown-access-key"}
    assert rows == covered, (sorted(rows - covered), sorted(covered - rows))


@pytest.mark.parametrize("tool, args", [
    ("transform-checkpoint", lambda url, m: [f"--src_checkpoint={url}", f"--dst_strategy={m['s4']}"]),
    ("cloud-entry", lambda url, m: [f"--load_checkpoint={url}", f"--dst_strategy={m['s4']}"])])
def test_a_remote_source_is_named_by_its_url_not_our_copy(inputs, bucket, s3_env, tmp_path, tool, args):
    import obs_io
    url = f"s3://{bucket}/models/truncated.ckpt"
    obs_io.file.copy(inputs["truncated"], url)
    out = tmp_path / "out"
    extra = [f"--dst_checkpoint={out}"] if tool == "transform-checkpoint" else [f"--output_dir={out}"]
    proc = run_tool(tool, args(url, inputs) + extra, tmp_path, {**clean_env(), **s3_env})
    last = check_one_line(proc, url, "corrupt-checkpoint")
    assert str(tmp_path) not in last, last     # no staging folder or cache copy in the user's line


@pytest.mark.parametrize("row, args, culprit", [
    ("corrupt-checkpoint", ["--load_checkpoint={truncated}", "--dst_strategy={s4}"], "truncated.ckpt"),
    ("strategy-names-nothing", ["--load_checkpoint={complete}", "--dst_strategy={foreign}", "--npu_num_per_node=2",
                                "--model_parallel=2", "--pipeline_stage=1"], "foreign_strategy.ckpt")])
def test_cloud_entry_reads_the_source_before_writing_logs_or_markers(inputs, bucket, s3_env, tmp_path, row, args,
                                                                     culprit):
    """A truncated source or another model's strategy is found with the plan, before the log
    file, the claims, the write probes or a failure marker: nothing at all is written, locally
    or under remote_save_url."""
    import obs_io
    job = tmp_path / "job"
    job.mkdir()
    argv = [a.format(**inputs) for a in args] + [f"--remote_save_url=s3://{bucket}/out"]
    proc = run_tool("cloud-entry", argv, job, {**clean_env(), **s3_env})
    check_one_line(proc, culprit, row)
    assert os.listdir(job) == []
    assert not obs_io.file.exists(f"s3://{bucket}/out")


def test_transform_by_rank_and_zero_gpus_are_checked(inputs, tmp_path):
    """MindFormers' boolean flag takes a boolean; a flavour without accelerators cannot run a
    distributed job."""
    proc = run_tool("transform-checkpoint", [f"--src_checkpoint={inputs['complete']}", f"--dst_strategy={inputs['s4']}",
                                             f"--dst_checkpoint={tmp_path / 'out'}", "--transform_by_rank=maybe"], tmp_path)
    assert proc.returncode == 2 and "--transform_by_rank: 'maybe' is not True or False" in proc.stderr, proc.stderr
    proc = run_tool("cloud-entry", [f"--load_checkpoint={inputs['complete']}", f"--dst_strategy={inputs['s4']}",
                                    f"--output_dir={tmp_path / 'job'}"], tmp_path, {**clean_env(), "MA_NUM_GPUS": "0"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "cloud-entry: error: MA_NUM_GPUS=0: this node has no accelerator"), proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "job").exists()
