"""Markers, waits on them, the strategy gather, and the clearing rules: on a local folder
(a shared disk) and on the real S3 server."""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest

import obs_io
import reshard
from cloud_entry import markers, strategy_pass
from cloud_entry.errors import BlockFailed, WaitTimeout
from cloud_entry.paths import JobPaths, clear_reason, clear_safely
from cloud_entry.waits import Backoff

FAST = Backoff(0.05, 1.5, 0.2)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store" / "transformed_checkpoint" / "llama")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/jobs/out/transformed_checkpoint/llama"


def test_publish_scan_and_parse(store):
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    markers.publish(store, markers.Marker(markers.FAILED, 4, "run-a", "ReshardError: rank 5: bad shape"))
    got = sorted(markers.scan(store), key=lambda m: m.rank)
    assert all(abs(m.written - time.time()) < 60 for m in got)     # the store's time of writing
    got = [dataclasses.replace(m, written=0.0) for m in got]
    assert got == [markers.Marker("succeed", 0, "run-a", ""),
                   markers.Marker("failed", 4, "run-a", "ReshardError: rank 5: bad shape")]
    assert sorted(obs_io.file.list_directory(store)) == ["transform_failed_rank_4.txt",
                                                         "transform_succeed_rank_0.txt"]


def test_the_sets_marker_beside_the_blocks(store):
    """A set assembled after every block (a Checkpoint 2.0's metadata.json) has a marker of its
    own, waited for with the blocks': its failure ends the wait naming the set; a block's
    marker is never taken for it, nor the reverse; its leader clears it like a block's."""
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    markers.publish(store, markers.Marker(markers.FAILED, markers.SET, "run-a", "no metadata.json"))
    assert {markers.marker_name(m.state, m.rank) for m in markers.scan(store)} == {
        "transform_succeed_rank_0.txt", "transform_failed_set.txt"}
    with pytest.raises(BlockFailed, match="^the set assembled after every block failed: no metadata.json$"):
        markers.wait_for_blocks(store, [0, markers.SET], "run-a", timeout=60, backoff=FAST)
    assert markers.clear_own(store, [markers.SET]) == ["transform_failed_set.txt"]
    with pytest.raises(WaitTimeout, match="rank\\(s\\) set in"):
        markers.wait_for_blocks(store, [0, markers.SET], "run-a", timeout=0.3, backoff=FAST)
    markers.publish(store, markers.Marker(markers.SUCCEED, markers.SET, "run-a"))
    assert {m.rank for m in markers.wait_for_blocks(store, [0, markers.SET], "run-a", timeout=20,
                                                     backoff=FAST)} == {0, markers.SET}


def test_wait_succeeds_when_all_blocks_publish(store):
    def later():
        time.sleep(0.3)
        markers.publish(store, markers.Marker(markers.SUCCEED, 4, "run-a"))
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    t = threading.Thread(target=later)
    t.start()
    markers.wait_for_blocks(store, [0, 4], "run-a", timeout=20, backoff=FAST)
    t.join()


def test_failure_marker_ends_the_wait_with_its_error(store):
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    markers.publish(store, markers.Marker(markers.FAILED, 4, "run-a", "rank 6: out of memory"))
    t0 = time.monotonic()
    with pytest.raises(BlockFailed, match="block led by rank 4 failed: rank 6: out of memory"):
        markers.wait_for_blocks(store, [0, 4], "run-a", timeout=60, backoff=FAST)
    assert time.monotonic() - t0 < 30


def test_markers_of_another_run_are_ignored_and_cleared_by_their_leader(store):
    markers.publish(store, markers.Marker(markers.FAILED, 4, "old-run", "old error"))
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "old-run"))
    with pytest.raises(WaitTimeout, match=r"no marker from the block leader rank\(s\) 0, 4"):
        markers.wait_for_blocks(store, [0, 4], "new-run", timeout=0.5, backoff=FAST)
    assert markers.clear_own(store, [4]) == ["transform_failed_rank_4.txt"]
    assert [m.rank for m in markers.scan(store)] == [0]      # other blocks' markers untouched


def test_local_marker_write_is_atomic(tmp_path):
    target = tmp_path / "m" / "transform_succeed_rank_0.txt"
    markers.write_atomic(str(target), "run_id x\n")
    assert target.read_text() == "run_id x\n"
    assert os.listdir(target.parent) == [target.name]


def test_run_id_depends_only_on_the_result():
    """The job's run id is the engine's inputs_id of its result (one notion of the same inputs)."""
    key = {"source": ["s3://b/m", [["rank_0/a.ckpt", 10, "etag0"]]], "world": 8}
    assert reshard.inputs_id(key) == reshard.inputs_id(dict(reversed(list(key.items()))))
    assert reshard.inputs_id(key) != reshard.inputs_id({**key, "world": 4})
    assert reshard.inputs_id(key, "job-7") == f"job-7-{reshard.inputs_id(key)}"


def test_wait_reports_missing_blocks_and_other_runs(store, caplog):
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    markers.publish(store, markers.Marker(markers.SUCCEED, 4, "run-old"))
    caplog.set_level("INFO")
    with pytest.raises(WaitTimeout):
        markers.wait_for_blocks(store, [0, 4], "run-a", timeout=0.6, backoff=FAST, report_every=0.1)
    lines = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert lines and "block markers: blocks led by rank(s) 4 in" in lines[0]
    assert "transform_succeed_rank_4.txt (run run-old)" in lines[0]


# ---------------------------------------------------------------- strategy gather

def _layout(tmp_path, node, remote):
    out = tmp_path / f"node{node}" / "output"
    (out / "strategy").mkdir(parents=True)
    return JobPaths(str(out), str(out / "cloud_entry"), str(out / "log"), "llama", "", remote)


def test_strategy_gather_between_two_nodes(tmp_path, bucket):
    remote = f"s3://{bucket}/out"
    obs_io.file.write(f"{remote}/strategy/ckpt_strategy_rank_9.ckpt", "stale")   # an older run's
    obs_io.file.write(f"{remote}/strategy/{strategy_pass.node_marker(1)}", '{"run_id": "old", "files": []}')
    layouts = [_layout(tmp_path, n, remote) for n in (0, 1)]
    for n, lay in enumerate(layouts):
        for r in range(4 * n, 4 * n + 4):
            (tmp_path / f"node{n}" / "output" / "strategy" / f"ckpt_strategy_rank_{r}.ckpt").write_text(str(r))
    results = {}

    def node(n):
        files = strategy_pass.local_strategy_files(layouts[n].local_strategy)
        results[n] = strategy_pass.gather(layouts[n], files, n, 2, "run-1", timeout=30, backoff=FAST)
    threads = [threading.Thread(target=node, args=(n,)) for n in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = sorted(f"ckpt_strategy_rank_{r}.ckpt" for r in range(8))
    assert results[0] == results[1] == want
    assert strategy_pass.local_strategy_files(layouts[0].local_strategy) == want
    assert (tmp_path / "node0" / "output" / "strategy" / "ckpt_strategy_rank_6.ckpt").read_text() == "6"


def test_strategy_gather_times_out_naming_missing_nodes(tmp_path, bucket):
    lay = _layout(tmp_path, 0, f"s3://{bucket}/out")
    (tmp_path / "node0" / "output" / "strategy" / "s.ckpt").write_text("s")
    with pytest.raises(WaitTimeout, match=r"nodes \[1, 2\] published none"):
        strategy_pass.gather(lay, ["s.ckpt"], 0, 3, "run-1", timeout=0.5, backoff=FAST)


# ---------------------------------------------------------------- clearing rules

def test_clear_only_inside_output_and_never_the_inputs(tmp_path):
    out = tmp_path / "output"
    (out / "strategy").mkdir(parents=True)
    (out / "strategy" / "old.ckpt").write_text("x")
    (out / "transformed_checkpoint" / "llama" / "rank_0").mkdir(parents=True)
    src = out / "transformed_checkpoint" / "llama"
    assert clear_reason(str(out / "strategy"), str(out), [str(src)]) is None
    assert "holds or is inside the input" in clear_reason(str(out / "transformed_checkpoint"), str(out), [str(src)])
    assert "holds or is inside" in clear_reason(str(out / "strategy"), str(out), [str(out / "strategy" / "old.ckpt")])
    assert "not inside the output folder" in clear_reason(str(tmp_path / "elsewhere"), str(out), [])
    assert "not inside the output folder" in clear_reason(str(out), str(out), [])
    # the output folder inside the source checkpoint folder: nothing in it may go
    assert "holds or is inside" in clear_reason(str(out / "strategy"), str(out), [str(tmp_path)])
    assert clear_reason("s3://b/out/strategy", str(out), []) == "it is on object storage"
    link = out / "strategy_link"
    os.symlink(tmp_path / "outside", link)
    assert "not inside the output folder" in clear_reason(str(link), str(out), [])
    assert not clear_safely(str(out / "transformed_checkpoint"), str(out), [str(src)])
    assert (src / "rank_0").is_dir()
    assert clear_safely(str(out / "strategy"), str(out), [str(src)])
    assert not (out / "strategy").exists()


def test_source_cache_is_refreshed_and_pruned(bucket, tmp_path):
    """Shards downloaded by an earlier run are reused only while the object is the same, and a
    rank folder of the cache keeps no older checkpoint the engine would pick instead."""
    from cloud_entry import sync

    url = f"s3://{bucket}/models/llama8"
    for r in (0, 1):
        obs_io.file.write(f"{url}/rank_{r}/step_1000.ckpt", b"v1-%d" % r, binary=True)
    source = sync.inspect_source(url, "ckpt")
    cache = tmp_path / "cache"
    (cache / "rank_0").mkdir(parents=True)
    (cache / "rank_0" / "step_2000.ckpt").write_bytes(b"older run, sorts last")
    sync.fetch_source(source, sorted(source.rank_files.values()), str(cache))
    assert sorted(os.listdir(cache / "rank_0")) == ["step_1000.ckpt"]
    assert (cache / "rank_1" / "step_1000.ckpt").read_bytes() == b"v1-1"
    time.sleep(0.01)
    obs_io.file.write(f"{url}/rank_1/step_1000.ckpt", b"v2-1", binary=True)   # same size, new
    source = sync.inspect_source(url, "ckpt")         # the next run's listing sees the new object
    names = sorted(source.rank_files.values())
    assert sync.cache_source(source, names, str(cache)) == (str(cache), ["rank_1/step_1000.ckpt"])
    sync.fetch_source(source, names, str(cache))
    assert (cache / "rank_1" / "step_1000.ckpt").read_bytes() == b"v2-1"
    assert sync.cache_source(source, names, str(cache)) == (str(cache), [])


def test_a_failure_marker_of_an_earlier_attempt_is_waited_out(store):
    """A job restarted after a stop has the same run id; the old failure marker of a block that
    has not run again yet must not stop the new attempt."""
    markers.publish(store, markers.Marker(markers.FAILED, 4, "run-a", "stopped by SIGTERM"))
    markers.publish(store, markers.Marker(markers.SUCCEED, 0, "run-a"))
    started = time.time() + 60      # this attempt started after that marker was written
    with pytest.raises(WaitTimeout, match=r"rank\(s\) 4"):
        markers.wait_for_blocks(store, [0, 4], "run-a", timeout=0.5, backoff=FAST, not_before=started)
    with pytest.raises(BlockFailed, match="stopped by SIGTERM"):   # a fresh one stops the wait
        markers.wait_for_blocks(store, [0, 4], "run-a", timeout=0.5, backoff=FAST, not_before=started - 120)
