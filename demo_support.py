"""What the Quickstart demo (demo.py) measures from outside the jobs, and how it prints them.

Why from outside: the job entry reports its transfers in rounded MiB and does not report its
memory, and a demo that claims numbers should take them where they cannot be flattered. So:
- bytes on the wire: each simulated node talks to the S3 server through its own recording proxy
  (tests/faultproxy.py, no faults injected); object bodies sent (GET) and received (PUT) count;
- memory: a sampler thread sums the RSS of each node's process tree (entry and conversion
  workers) every 50 ms, leaving out the launched training command, which is not ours;
- bytes converted: the sizes of the rank files the conversion left in the nodes' folders.
Everything here is plain data and small functions so tests/test_demo.py can check each piece
without running the (minute-long) demo.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

import psutil

MiB = 1 << 20


# ------------------------------------------------------------------ bytes on the wire

@dataclass
class Traffic:
    """Object bytes one or more nodes moved, as a recording proxy saw them."""
    down_bytes: int = 0
    up_bytes: int = 0
    down_objects: set[str] = field(default_factory=set)   # bucket/key of every object read
    up_objects: set[str] = field(default_factory=set)     # bucket/key of every object written

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.down_bytes + other.down_bytes, self.up_bytes + other.up_bytes,
                       self.down_objects | other.down_objects, self.up_objects | other.up_objects)

    def describe(self) -> str:
        return (f"downloaded {mib(self.down_bytes)} in {len(self.down_objects)} object(s), "
                f"uploaded {mib(self.up_bytes)} in {len(self.up_objects)} object(s)")


def _object_key(path: str) -> str | None:
    """'bucket/key' of a path-style request for an object; None for a bucket-level request
    (a listing, a bucket HEAD, the start of a multipart upload has a key but no body)."""
    bucket, _, key = unquote(urlsplit(path).path).lstrip("/").partition("/")
    return f"{bucket}/{key}" if bucket and key else None


def traffic(records) -> Traffic:
    """Object bytes in `records` (tests/faultproxy.Record): bodies of successful GETs of an
    object (whole or ranged) count as downloaded, bodies of successful PUTs (whole objects and
    multipart parts) as uploaded. Listings, HEADs and failed requests move no object bytes."""
    t = Traffic()
    for r in records:
        key = _object_key(r.path)
        if key is None or not 200 <= r.status < 300:
            continue
        if r.method == "GET":
            t.down_bytes += r.body_bytes
            t.down_objects.add(key)
        elif r.method == "PUT":
            t.up_bytes += int(r.headers.get("content-length") or 0)
            t.up_objects.add(key)
    return t


def settled(records: list, quiet: float = 0.2, limit: float = 5.0) -> list:
    """The records once no more arrive: the proxy records a request after answering it, so
    the client may have exited before its last record is written."""
    deadline = time.monotonic() + limit
    n = -1
    while n != len(records) and time.monotonic() < deadline:
        n = len(records)
        time.sleep(quiet)
    return list(records)


# ------------------------------------------------------------------ memory

class Sampler:
    """Calls `sample()` every `interval` seconds in a thread, from `with` to its end, and once
    more at the end; subclasses keep their peak in sample()."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


class PeakRSS(Sampler):
    """Peak resident memory of process trees, sampled in a thread.

    For each root pid: the largest sum, over one sample, of the RSS of the root and its
    descendants, leaving out every process whose command line `exclude` accepts, and that
    process's own descendants. A sum at one instant, not a sum of each process's peak: what
    the node needs at once. One sample reads the process table once for all roots (a scan
    costs milliseconds, and the machine has two cores); a process that lives less than one
    interval may be missed."""

    def __init__(self, pids: list[int], exclude: Callable[[list[str]], bool] = lambda cmdline: False,
                 interval: float = 0.05):
        super().__init__(interval)
        self.exclude = exclude
        self.peaks: dict[int, int] = {pid: 0 for pid in pids}
        self._skip: dict[tuple[int, float], bool] = {}   # (pid, start time) -> excluded

    def _excluded(self, proc: psutil.Process) -> bool:
        """Only an exclusion is remembered: a child sampled between fork and exec still shows its
        parent's command line, and becomes the excluded command a moment later."""
        key = (proc.pid, proc.create_time())
        if not self._skip.get(key):
            self._skip[key] = self.exclude(proc.cmdline())
        return self._skip[key]

    def sample(self) -> None:
        procs: dict[int, psutil.Process] = {}
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            procs[proc.pid] = proc
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
        for root in self.peaks:
            total, todo = 0, [root] if root in procs else []
            while todo:
                pid = todo.pop()
                try:
                    if self._excluded(procs[pid]):
                        continue
                    total += procs[pid].memory_info().rss
                except psutil.Error:   # gone between the listing and the read
                    continue
                todo.extend(children.get(pid, ()))
            self.peaks[root] = max(self.peaks[root], total)



# ------------------------------------------------------------------ the entry's own output

_EXPECTED_PEAK = re.compile(r"expected peak ([\d.]+) MiB")
_CONVERTED_IN = re.compile(r"converted ranks \[[\d, ]*\].* in ([\d.]+)s$")
# the lines of an entry's output that tell the story; the rest stays in the node's .out file
_HIGHLIGHTS = ("topology:", "this node converts", "copy ", "downloaded ", "plan:", "converted ranks",
               "published ", "waiting ", "checkpoint ready", "running launch command", "entry_launch_check:",
               "launch command exited", "WARNING", "error")


def expected_peak_mib(output: str) -> float | None:
    """The largest memory the entry's plan said it expected, in MiB (None: no plan line)."""
    found = [float(x) for x in _EXPECTED_PEAK.findall(output)]
    return max(found) if found else None


def convert_seconds(output: str) -> float | None:
    """The conversion time the entry reported ('converted ranks [...] ... in 1.4s')."""
    found = [float(m.group(1)) for line in output.splitlines() if (m := _CONVERTED_IN.search(line))]
    return max(found) if found else None


def highlights(output: str, replace: dict[str, str] | None = None) -> list[str]:
    """The lines of an entry's output worth showing, with long local paths shortened."""
    out = []
    for line in output.splitlines():
        if any(h in line for h in _HIGHLIGHTS):
            for old, new in (replace or {}).items():
                line = line.replace(old, new)
            out.append(line)
    return out


def converted_bytes(node_dirs: list[Path], ckpt_name: str) -> tuple[int, int]:
    """(bytes, ranks) of the converted checkpoint the nodes hold, each rank counted once (a
    node that downloads a rank another node converted holds the same bytes)."""
    sizes: dict[str, int] = {}
    for node in node_dirs:
        for f in (node / "output" / "transformed_checkpoint" / ckpt_name).glob("rank_*/*"):
            if f.is_file() and f.suffix in (".ckpt", ".safetensors"):
                sizes.setdefault(f.parent.name, f.stat().st_size)
    return sum(sizes.values()), len(sizes)


# ------------------------------------------------------------------ what is printed

def mib(n: int | float) -> str:
    return f"{n / MiB:.1f} MiB"


def human(n: int) -> str:
    """MiB, or KiB below one MiB (strategy files are a few KiB)."""
    return mib(n) if n >= MiB else f"{n / 1024:.1f} KiB"


def boot_command(command: list[str], replace: dict[str, str], width: int = 100) -> str:
    """The boot command as the platform runs it, shortened for the screen: local paths
    replaced (`replace`), one shell line continued with `\\` every `width` characters."""
    words = []
    for w in command:
        for old, new in replace.items():
            w = w.replace(old, new)
        words.append(w)
    lines, line = [], "$"
    for w in words:
        if len(line) + 1 + len(w) > width and line.strip() not in ("$", ""):
            lines.append(line + " \\")
            line = "   "
        line += " " + w
    lines.append(line)
    return "\n".join(lines)


@dataclass
class Row:
    """One scenario of the summary table."""
    scenario: str            # "1 complete -> 8"
    src_ranks: int           # 1 for a complete checkpoint
    dst_ranks: int
    layout: str              # "dp2·mp2·pp2 on 2x4"
    traffic: Traffic
    converted: int           # bytes of the converted checkpoint
    seconds: float           # the job's wall time, boot to the last node's exit
    convert_seconds: float | None
    peak_rss: int            # bytes: the largest node's entry + conversion workers
    expected_peak_mib: float | None
    verified: bool | None    # None: not checked yet


HEADER = ("scenario", "ranks", "layout (nodes x cards)", "downloaded", "converted", "uploaded",
          "time (convert)", "peak RSS/node (plan)", "vs MindSpore")


def _cells(row: Row) -> tuple[str, ...]:
    convert = f" ({row.convert_seconds:.1f} s)" if row.convert_seconds is not None else ""
    plan = f" ({row.expected_peak_mib:.0f})" if row.expected_peak_mib is not None else ""
    verdict = {True: "verified", False: "DIFFERENT", None: "not checked"}[row.verified]
    return (row.scenario, f"{row.src_ranks} -> {row.dst_ranks}", row.layout, mib(row.traffic.down_bytes),
            mib(row.converted), mib(row.traffic.up_bytes), f"{row.seconds:.1f} s{convert}",
            f"{row.peak_rss / MiB:.0f} MiB{plan}", verdict)


def table(rows: list[Row]) -> str:
    """The summary as a markdown table whose columns line up in a terminal too."""
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(c) for c in cells[1:]])
