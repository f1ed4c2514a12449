"""Jobs killed at every phase, then run again: the rerun ends bit-exact and leaves no incomplete
multipart upload under the keys the job writes, whichever node (and run) began it.

Two-node jobs (complete -> 8 and 8 -> 4, no shared disk) talk to the S3 server through the fault
proxy, with every upload in multipart (S3_MULTIPART_THRESHOLD: a marker of a few hundred bytes
too), so a kill anywhere can leave one. The proxy holds one kind of request at the phase named,
the test waits until it has (a condition, not a time), then every process of the job is stopped
and SIGKILLed, as when the nodes die. The store is listed (ListMultipartUploads) before the rerun
(what the kill left) and after it (nothing under the job's folders; uploads of other writers
elsewhere untouched)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import obs_io
import synth
from faultproxy import FaultProxy
from platform_harness import ModelArtsJob, upload

THRESHOLD = "100"   # bytes: every object the job writes goes up in multipart
WAIT = 240.0        # bound on reaching a phase


def _get_source(method: str, path: str) -> bool:
    return method == "GET" and "/models/" in path and "?" not in path


def _rank_file(path: str) -> bool:
    return "/transformed_checkpoint/" in path and "/rank_" in path and ".ckpt?" in path


def _completes(name: str):
    """CompleteMultipartUpload of a key whose path holds `name`."""
    return lambda method, path: method == "POST" and name in path.split("?")[0] and "uploadId=" in path


class Phase:
    """Where the job is held: `stall` (the request is never forwarded) or `hold` (forwarded,
    the answer held), each a predicate on (method, path), given the requests seen so far."""

    def __init__(self, stall=None, hold=None, leaves_uploads: bool = True):
        self.stall, self.hold, self.leaves_uploads = stall, hold, leaves_uploads


def _after_the_claim(proxy: FaultProxy, predicate):
    """The predicate, once the job's claim of its output is on the store (reshard.claim: a
    small object under <output>/.claims/, stored whole before the job reads the source for
    the conversion)."""
    return lambda method, path: predicate(method, path) and any(
        r.method in ("PUT", "POST") and r.status == 200 and "/.claims/" in r.path
        and "?uploads" not in r.path and "partNumber=" not in r.path for r in list(proxy.records))


PHASES = {
    # the source being read: nothing uploaded yet
    "download": lambda proxy: Phase(stall=_after_the_claim(proxy, _get_source), leaves_uploads=False),
    # a rank converting: its multipart upload begun (the store made it; its answer held)
    "conversion": lambda proxy: Phase(hold=lambda m, p: m == "POST" and _rank_file(p) and p.endswith("?uploads")),
    # a rank written and uploaded while written: its completion never reaches the store
    "upload": lambda proxy: Phase(stall=lambda m, p: _rank_file(p) and m == "POST" and "uploadId=" in p),
    # a block's success marker going up
    "markers": lambda proxy: Phase(stall=_completes("transform_succeed_rank_")),
    # the set's manifest going up, last
    "manifest": lambda proxy: Phase(stall=_completes("conversion_manifest.json")),
}


def _jobs(models, bucket: str) -> dict[str, tuple[dict, int, int, str, str]]:
    """case -> (form, nodes, cards, MindSpore's reference, checkpoint name)."""
    src = upload(models["complete"], f"s3://{bucket}/models/llama.ckpt")
    s8 = upload(models["s8"], f"s3://{bucket}/strategy8")
    upload(models["ref8"], f"s3://{bucket}/models/llama8")
    merged8 = upload(models["merged8"], f"s3://{bucket}/strategy8m/merged_ckpt_strategy.ckpt")
    s4 = upload(models["s4"], f"s3://{bucket}/strategy4")
    common = {"auto_trans_ckpt": "True", "transform_process_num": "2", "model_parallel": "2",
              "pipeline_stage": "2", "remote_save_url": f"s3://{bucket}/out", "transform_only": "True"}
    return {"1to8": ({"load_checkpoint": src, "dst_strategy": s8, "data_parallel": "2", **common},
                     2, 4, models["ref8"], "llama"),
            "8to4": ({"load_checkpoint": f"s3://{bucket}/models/llama8", "src_strategy_path_or_dir": merged8,
                      "dst_strategy": s4, "data_parallel": "1", **common}, 2, 2, models["ref4"], "llama8")}


def incomplete(client, bucket: str) -> list[str]:
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def reach(job: ModelArtsJob, proxy: FaultProxy) -> None:
    """Wait until the proxy holds a request (the phase is reached) or the job ended."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if any(r.status == -1 for r in list(proxy.records)):
            return
        if all(proc.poll() is not None for _, _, proc in job.procs):
            break
        time.sleep(0.1)
    outputs = "\n".join(Path(job._output(n, c)).read_text() for n, c, _ in job.procs)
    job.kill()
    raise AssertionError(f"the job never reached the phase:\n{outputs}")


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("case", ["1to8", "8to4"])
def test_a_job_killed_at_each_phase_leaves_no_incomplete_upload_after_its_rerun(
        case, phase, models, bucket, s3_env, s3_server, tmp_path):
    """1 -> 8 reruns on the nodes' own disks, 8 -> 4 in fresh containers (empty disks)."""
    form, nodes, cards, reference, name = _jobs(models, bucket)[case]
    client = s3_server.client()
    # other writers' uploads: beside the job's folders, and in another prefix of the bucket
    for key in ("out/dataset/part-0.bin", "elsewhere/big.bin"):
        client.create_multipart_upload(Bucket=bucket, Key=key)
    env = {**s3_env, "S3_MULTIPART_THRESHOLD": THRESHOLD}
    with FaultProxy(s3_server.endpoint) as proxy:
        where = PHASES[phase](proxy)
        proxy.stall, proxy.hold_answer = where.stall, where.hold
        killed = ModelArtsJob(tmp_path / "run1", {**env, "S3_ENDPOINT": proxy.endpoint}, form, nodes=nodes,
                              cards=cards).start()
        reach(killed, proxy)
        killed.kill()
        killed.wait(30)
    # what the kill left behind, if anything; another node may be storing its claim when the
    # first one reaches the download (a claim is stored before the source is read)
    left = [k for k in incomplete(client, bucket) if k.startswith("out/") and not k.startswith("out/dataset/")
            and not (phase == "download" and k.startswith("out/.claims/"))]
    assert bool(left) == where.leaves_uploads, left
    rerun_root = tmp_path / ("run1" if case == "1to8" else "run2")
    results = ModelArtsJob(rerun_root, env, form, nodes=nodes, cards=cards).run()
    for r in results:
        assert r.code == 0 and "Traceback" not in r.output, r.output
    assert incomplete(client, bucket) == ["elsewhere/big.bin", "out/dataset/part-0.bin"]
    remote = f"s3://{bucket}/out/transformed_checkpoint/{name}"
    from reshard import integrity
    verdict = integrity.verify(remote)
    assert verdict.ok and verdict.checked == nodes * cards, verdict.lines()
    fetched = tmp_path / "fetched"
    obs_io.file.copy_parallel(remote, str(fetched))
    synth.assert_same_checkpoint_dirs(str(fetched), reference)
    for node in range(nodes):   # what each node's training would load: the same bytes
        local = rerun_root / f"node{node}" / "output" / "transformed_checkpoint" / name
        for r in range(node * cards, (node + 1) * cards):
            rel = Path(f"rank_{r}", f"checkpoint_{r}.ckpt")
            assert (local / rel).read_bytes() == (fetched / rel).read_bytes(), (node, rel)
