"""The Quickstart demo's measurements and printing (demo_support.py), piece by piece: the demo
itself runs three two-node jobs and MindSpore's conversions (a minute or more), too long for the
suite, so each number it prints is checked here where it could go wrong: bytes counted on the
wire through the recording proxy against a real S3 server, peak memory of a process tree with
the training command left out, the entry's output lines it reads, and the summary table."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import test_obs_io_transfer as transfer_tests
from faultproxy import Record

import demo_support as ds
import obs_io as mox

# the transfer tests' fixtures: multipart from 5 MiB (autouse), and a recording proxy
_small_parts, proxy = transfer_tests._small_parts, transfer_tests.proxy
ROOT = Path(__file__).resolve().parent.parent
MiB = ds.MiB


def test_traffic_counts_object_bodies_up_and_down_but_not_listings(tmp_path, bucket, proxy):
    """A folder with a multipart file (12 MiB: 3 parts) and two small ones goes up and comes
    back through the proxy: exactly their bytes each way, each object once, while the
    listings, HEADs and multipart bookkeeping the copies also made count for nothing."""
    src = tmp_path / "src"
    (src / "rank_0").mkdir(parents=True)
    sizes = {"big.ckpt": 12 * MiB + 5, "rank_0/a.ckpt": 1000, "rank_0/b.txt": 24}
    for name, n in sizes.items():
        (src / name).write_bytes(os.urandom(n))
    mox.file.copy_parallel(str(src), f"s3://{bucket}/m")
    mox.file.copy_parallel(f"s3://{bucket}/m", str(tmp_path / "back"))
    records = ds.settled(proxy.records)
    moved = ds.traffic(records)
    keys = {f"{bucket}/m/{name}" for name in sizes}
    assert moved.up_bytes == moved.down_bytes == sum(sizes.values())
    assert moved.up_objects == moved.down_objects == keys
    assert sum(r.method == "PUT" and "partNumber=" in r.path for r in records) == 3
    assert any(r.method == "GET" and "prefix=" in r.path for r in records)      # listed, not counted
    assert "downloaded 12.0 MiB in 3 object(s), uploaded 12.0 MiB in 3 object(s)" == moved.describe()


def test_traffic_leaves_out_failed_requests_and_adds_up_per_node():
    records = [Record("GET", "/b/k?partNumber=1", None, 206, 100, {}),
               Record("GET", "/b/k", None, 503, 50, {}),                        # a SlowDown answer
               Record("PUT", "/b/x%20y", None, 200, 0, {"content-length": "7"}),
               Record("PUT", "/b/x%20y", None, 0, 0, {"content-length": "7"}),  # a dropped connection
               Record("GET", "/b?list-type=2&prefix=k", None, 200, 900, {})]
    one = ds.traffic(records)
    assert (one.down_bytes, one.up_bytes, one.down_objects, one.up_objects) == (100, 7, {"b/k"}, {"b/x y"})
    both = one + ds.traffic(records[:1])
    assert (both.down_bytes, both.down_objects) == (200, {"b/k"})


# A node's boot process holding 80 MiB that starts a "training command" holding 200 MiB; each
# writes its ready file once its block is written (so resident) and then waits to be killed.
_CHILD = """
import sys, time
block = b"\\x01" * (200 << 20)
open(sys.argv[1], "w").close()
time.sleep(60)
"""
_PARENT = f"CHILD = {_CHILD!r}\n" + """
import subprocess, sys, time
block = b"\\x01" * (80 << 20)
subprocess.Popen([sys.executable, "-c", CHILD, sys.argv[1] + ".child", "training-stand-in"])
open(sys.argv[1], "w").close()
time.sleep(60)
"""


def test_peak_rss_sums_the_tree_and_leaves_out_the_training_command(tmp_path):
    """With the training command left out the peak is the boot process's 80 MiB (plus its
    interpreter), not the child's 200 MiB; without the rule it is both; a thread sampling a
    pid that is gone records nothing for it."""
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and Path(f"{ready}.child").exists()):
            assert time.monotonic() < deadline and parent.poll() is None, "the memory holders did not start"
            time.sleep(0.05)
        ours = ds.PeakRSS([parent.pid], exclude=lambda cmdline: "training-stand-in" in cmdline)
        everything = ds.PeakRSS([parent.pid])
        for _ in range(3):
            ours.sample()
            everything.sample()
        assert 80 * MiB <= ours.peaks[parent.pid] < 200 * MiB, ours.peaks
        assert everything.peaks[parent.pid] >= 280 * MiB, everything.peaks
        with ds.PeakRSS([parent.pid, 999_999_999], interval=0.01) as threaded:
            time.sleep(0.2)
        assert threaded.peaks[parent.pid] >= 280 * MiB and threaded.peaks[999_999_999] == 0
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait(10)


OUTPUT = """\
cloud-entry[node 1] INFO: config remote_save_url: '' -> 's3://demo/job1'
cloud-entry[node 1] INFO: topology: 2 nodes [MA_NUM_HOSTS=2], this is node 1 [VC_TASK_INDEX=1], world 8, ranks 4-7
cloud-entry[node 1] INFO: this process (pid 14000) leads this node's sync and conversion
cloud-entry[node 1] INFO: copy s3://demo/models -> /w/demo_work/job1/node1/output/cloud_entry/source/llama_7b: 1/1 files
cloud-entry[node 1] INFO: plan: 4 destination ranks, 1 process(es), expected peak 97.8 MiB (budget 11140.0 MiB)
cloud-entry[node 1] INFO: plan: 4 destination ranks, 1 process(es), expected peak 112.5 MiB (budget 11140.0 MiB)
cloud-entry[node 1] INFO: rank 4: wrote /w/demo_work/job1/node1/output/x/rank_4/checkpoint_4.ckpt (20 tensors) in 0.23s
cloud-entry[node 1] INFO: converted ranks [4, 5, 6, 7], reused none (already complete and verified) in 1.0s
cloud-entry[node 1] INFO: converted ranks [4], reused none (already complete and verified) in 12.5s
cloud-entry[node 1] WARNING: transform_process_num 4 is more than the world 2: 2
entry_launch_check: ranks [4, 5, 6, 7] loaded and match
cloud-entry[node 1] INFO: logs uploaded: 2 file(s) to s3://demo/job1/logs/node_1/
"""


def test_the_entry_output_it_reads():
    assert ds.expected_peak_mib(OUTPUT) == 112.5 and ds.expected_peak_mib("no plan") is None
    assert ds.convert_seconds(OUTPUT) == 12.5 and ds.convert_seconds("") is None
    shown = ds.highlights(OUTPUT, {"/w/demo_work/": "demo_work/"})
    assert [line.split(": ", 1)[1].split(" ")[0] for line in shown] == [
        "topology:", "copy", "plan:", "plan:", "converted", "converted", "transform_process_num", "ranks"]
    assert "-> demo_work/job1/node1/output/cloud_entry/source/llama_7b" in shown[1]
    assert not any("/w/" in line for line in shown)


def test_converted_bytes_counts_each_rank_once(tmp_path):
    """Node 1 also holds rank 0, downloaded from node 0: the same bytes, counted once; files
    that are not checkpoints (a marker, a temporary) are not counted."""
    for node, ranks in ((0, (0, 1)), (1, (0, 2, 3))):
        for r in ranks:
            folder = tmp_path / f"node{node}" / "output" / "transformed_checkpoint" / "m" / f"rank_{r}"
            folder.mkdir(parents=True)
            (folder / f"checkpoint_{r}.ckpt").write_bytes(b"x" * (100 + r))
    (tmp_path / "node0/output/transformed_checkpoint/m/rank_0/part.tmp").write_bytes(b"x" * 999)
    (tmp_path / "node0/output/transformed_checkpoint/m/transform_succeed_rank_0.txt").write_text("ok")
    assert ds.converted_bytes([tmp_path / "node0", tmp_path / "node1"], "m") == (100 + 101 + 102 + 103, 4)
    assert ds.converted_bytes([tmp_path / "node0"], "other") == (0, 0)


def test_boot_command_is_shortened_and_wrapped():
    cmd = ["/venv/bin/cloud-entry", "--", "/venv/bin/python", "/r/tests/entry_launch_check.py", "--config",
           "{config}"] + [f"--hyperparameter_{i}=s3://bucket/some/long/path/{i}" for i in range(6)]
    text = ds.boot_command(cmd, {"/venv/bin/python": "python", "/venv/bin/": "", "/r/": ""}, width=80)
    lines = text.splitlines()
    assert lines[0].startswith("$ cloud-entry -- python tests/entry_launch_check.py --config {config}")
    assert len(lines) > 3 and all(len(x) <= 82 for x in lines)
    assert all(x.endswith(" \\") for x in lines[:-1]) and not lines[-1].endswith("\\")
    words = text.replace("\\\n", " ").split()
    assert words == ["$", "cloud-entry", "--", "python", "tests/entry_launch_check.py", "--config", "{config}"] \
        + cmd[6:]


def _row(verified, **kw) -> ds.Row:
    moved = ds.Traffic(down_bytes=int(66.4 * MiB), up_bytes=int(33.2 * MiB))
    fields = dict(scenario="1 complete to shards", src_ranks=1, dst_ranks=8, layout="dp2·mp2·pp2 on 2x4",
                  traffic=moved, converted=int(33.2 * MiB), seconds=14.44, convert_seconds=0.12,
                  peak_rss=158 * MiB, expected_peak_mib=93.9, verified=verified)
    return ds.Row(**{**fields, **kw})


def test_summary_table_lines_up_and_gives_each_verdict():
    text = ds.table([_row(True), _row(False, scenario="2 reshard", convert_seconds=None),
                     _row(None, scenario="3 merge, predict", expected_peak_mib=None)])
    lines = text.splitlines()
    assert len(lines) == 5 and len({len(x) for x in lines}) == 1          # columns line up
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(ds.HEADER)
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first == ["1 complete to shards", "1 -> 8", "dp2·mp2·pp2 on 2x4", "66.4 MiB", "33.2 MiB", "33.2 MiB",
                     "14.4 s (0.1 s)", "158 MiB (94)", "verified"]
    assert lines[3].rstrip(" |").endswith("DIFFERENT") and "| 14.4 s " in lines[3]
    assert lines[4].rstrip(" |").endswith("not checked") and "| 158 MiB " in lines[4]


def test_the_demo_takes_no_arguments():
    """A wrong call costs one line and exit 2, before anything starts or demo_work/ is cleared."""
    marker = ROOT / "demo_work" / "kept-by-test_demo"
    existed = marker.parent.exists()
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("x")
    try:
        done = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--fast"], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.splitlines() == ["demo.py: unexpected argument '--fast': the demo takes none"]
        assert marker.exists()
    finally:
        marker.unlink()
        if not existed:
            marker.parent.rmdir()
