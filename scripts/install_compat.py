#!/usr/bin/env python3
"""Does the package install and run where its users are? Python 3.9-3.13, every dependency at its
floor, and beside another MindSpore, as in the images users train in.

Why a script and not the test suite: each row is a venv of its own with hundreds of MB of
packages; CI keeps Python 3.11 (README, "Compatibility"). Rows, each in `<root>/<row>/venv`:

- `python3.X`: the wheel with its dependencies as pip resolves them today (numpy 2.x and the
  newest protobuf), on every interpreter found (`--pythons`; default: python3.9 ... python3.13 on
  PATH or under pyenv's versions);
- `floors`: the oldest Python (3.9) with every dependency pinned to the floor pyproject.toml
  states (numpy 1.20, protobuf 3.13, ...: the ranges are only as wide as this row shows);
- `mindspore-X`: a venv that first gets mindspore==X from the index (a CPU build standing in for
  the Ascend build of an image, with its numpy and protobuf; `--mindspore`, default 2.7.2).
  Installing the wheel must change no installed package: pip's `--dry-run --report` is checked
  before (nothing it would install may already be installed at another version) and `pip freeze`
  before and after must agree on every package that was there; then the conversions are also
  compared with that MindSpore's own transform_checkpoints, in that venv;
- `--venvs`: existing environments (e.g. the MindFormers venvs of scripts/mindformers_compat.py,
  with MindSpore 2.7-2.10 and MindFormers' own pins): pip's `--dry-run --report` only, nothing
  installed there; a row passes when pip would change none of their packages.

In every row the installed `transform-checkpoint` runs the three conversions (complete -> 8 ranks
dp2·mp2·pp2 with optimizer sharding, 8 -> 4 dp1·mp2·pp2, 4 -> 1) on a small Llama checkpoint
(fp32/fp16/bf16), and every output file must be byte-identical to the one this project's own venv
writes, whose tensors equal MindSpore 2.10's transform_checkpoints bit for bit (the test oracle);
`cloud-entry --help` and `obs_io --version` must run. The table goes to stdout and
`<root>/report.md`. Run with the project's venv (it has MindSpore 2.10):

    .venv/bin/python scripts/install_compat.py [--pythons python3.9,python3.12] [--mindspore 2.7.2]

Exit codes: 0 every row passes; 1 a row fails; 2 bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".install-compat"
DEFAULT_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
DEFAULT_MINDSPORE = "2.7.2"
PIP_TIMEOUT = 3600
CONVERSIONS = ("complete -> 8", "8 -> 4", "4 -> 1")
_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)")


class BadInput(Exception):
    """One line naming the culprit; exit 2."""


@dataclasses.dataclass
class Row:
    name: str
    python: str = ""
    numpy: str = ""
    protobuf: str = ""
    mindspore: str = "-"
    install: str = ""           # what pip did, in a few words
    unchanged: str = "-"        # mindspore rows: did installing the wheel change an installed package?
    conversions: str = ""       # "3/3 identical" or what differed
    vs_mindspore: str = "-"     # mindspore rows: equal to that MindSpore's own conversion?
    seconds: float = 0.0
    ok: bool = False


# ================================================================ pure helpers (tested in the suite)

def floors(pyproject: str) -> list[str]:
    """`name==floor` for every runtime dependency of pyproject.toml with a `>=` floor: what the
    `floors` row installs. A dependency without a floor is an error (the row would not test it)."""
    text = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    pins = []
    for item in re.findall(r'"([^"]+)"', text):
        m = _FLOOR.match(item)
        if not m:
            raise BadInput(f"pyproject.toml: dependency {item!r} has no >= floor to test")
        pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


def freeze_map(text: str) -> dict[str, str]:
    """`pip freeze` output -> {canonical name: the whole line} (versions, or direct references)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = re.split(r"\s*(?:==|@|===)\s*", line, maxsplit=1)[0]
        out[re.sub(r"[-_.]+", "-", name).lower()] = line
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Packages installed before that are gone or at another version after: `old -> new`."""
    return [f"{line} -> {after.get(name, 'removed')}" for name, line in sorted(before.items())
            if after.get(name) != line]


def would_replace(report: dict, installed: dict[str, str]) -> list[str]:
    """From pip's `--dry-run --report`: each distribution pip would install that is already
    installed (any version: pip reinstalls only what changes), as `name old -> new`."""
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = re.sub(r"[-_.]+", "-", meta.get("name", "")).lower()
        if name in installed:
            out.append(f"{name} {installed[name]} -> {meta.get('version')}")
    return out


def find_pythons(versions: list[str]) -> dict[str, str]:
    """version -> interpreter: `python3.X` on PATH, else under pyenv's versions folder."""
    found = {}
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for v in versions:
        candidates = [shutil.which(f"python{v}") or ""]
        for root in filter(None, roots):
            candidates += sorted(glob.glob(os.path.join(root, "versions", f"{v}.*", "bin", f"python{v}")))
        for c in candidates:
            if c and subprocess.run([c, "-c", "import sys, venv; print(sys.version)"],
                                    capture_output=True).returncode == 0:
                found[v] = c
                break
    return found


# ================================================================ driver

def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = PIP_TIMEOUT,
         cwd: str | None = None) -> subprocess.CompletedProcess:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              timeout=timeout, cwd=cwd)
        f.write(proc.stdout)
    return proc


def _last_error(output: str) -> str:
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    lines = errors or output.strip().splitlines() or ["failed"]
    return lines[-1].removeprefix("ERROR: ")[:300]


def _clean_env() -> dict[str, str]:
    """A user's shell: none of this repository on PYTHONPATH, no job or platform variables."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(("MA_", "VC_", "CLOUD_ENTRY_", "RANK_"))}


def build_wheel(work: Path) -> Path:
    out = work / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
                   check=True, env=_clean_env())
    return next(out.glob("cloud_ckpt_transform-*.whl"))


def make_inputs(work: Path) -> dict[str, str]:
    """The checkpoint, strategies and MindSpore 2.10's references (the suite's own recipe)."""
    sys.path.insert(0, str(REPO / "tests"))
    import synth   # noqa: E402 - the test helpers, only in the driver
    root = work / "inputs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    params = synth.llama_params(num_layers=2, vocab=64, hidden=32, ffn=64)
    d = {"complete": synth.write_complete_checkpoint(str(root / "llama.ckpt"), params),
         "s8": str(root / "strategy8"), "merged8": str(root / "merged8.ckpt"), "s4": str(root / "strategy4")}
    synth.write_strategy(d["s8"], dp=2, mp=2, pp=2, opt_shard=-1, params=params, merged_file=d["merged8"])
    synth.write_strategy(d["s4"], dp=1, mp=2, pp=2, params=params)
    d["ref8"] = synth.ms_transform(d["complete"], str(root / "ref8"), None, d["s8"])
    d["ref4"] = synth.ms_transform(d["ref8"], str(root / "ref4"), d["merged8"], d["s4"])
    d["ref1"] = synth.ms_transform(d["ref4"], str(root / "ref1"), d["s4"], None)
    return d


def conversion_commands(bin_dir: Path, d: dict[str, str], out: Path) -> list[list[str]]:
    tool = str(bin_dir / "transform-checkpoint")
    return [[tool, "-q", f"--src_checkpoint={d['complete']}", f"--dst_strategy={d['s8']}", f"--dst_checkpoint={out}/out8"],
            [tool, "-q", f"--src_checkpoint={out}/out8", f"--src_strategy={d['merged8']}",
             f"--dst_strategy={d['s4']}", f"--dst_checkpoint={out}/out4"],
            [tool, "-q", f"--src_checkpoint={out}/out4", f"--src_strategy={d['s4']}", f"--dst_checkpoint={out}/out1"]]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("rank_*/*.ckpt"))}


def run_conversions(bin_dir: Path, d: dict[str, str], out: Path, log: Path) -> str:
    """The three conversions with the installed tool; "" or the first failure in one line."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for what, cmd in zip(CONVERSIONS, conversion_commands(bin_dir, d, out)):
        proc = _run(cmd, log, env=_clean_env(), timeout=600, cwd=str(out))
        if proc.returncode:
            return f"{what}: exit {proc.returncode}: {_last_error(proc.stdout)}"
    for cmd in ([str(bin_dir / "cloud-entry"), "--help"], [str(bin_dir / "obs_io"), "--version"]):
        proc = _run(cmd, log, env=_clean_env(), timeout=120, cwd=str(out))
        if proc.returncode:
            return f"{Path(cmd[0]).name} {cmd[1]}: exit {proc.returncode}: {_last_error(proc.stdout)}"
    return ""


def _versions(py: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform\n"
            "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return '-'\n"
            "print(json.dumps({'python': platform.python_version(), 'numpy': v('numpy'), "
            "'protobuf': v('protobuf'), 'mindspore': v('mindspore')}))")
    return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout)


def row_venv(name: str, python: str, root: Path, wheel: Path, d: dict[str, str], reference: dict[str, str],
             before_install: list[str] = (), constraints: list[str] = (), mindspore: str = "") -> Row:
    """One row: a fresh venv (`before_install` first: the image's packages), the wheel, the
    conversions compared with the reference digests and, with `mindspore`, with its own conversion."""
    started = time.monotonic()
    row = Row(name)
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log = folder / "log.txt"
    venv = folder / "venv"
    py, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    try:
        if _run([python, "-m", "venv", str(venv)], log).returncode:
            row.install = "no venv: " + _last_error(log.read_text())
            return row
        _run([*pip, "install", "--quiet", "--upgrade", "pip"], log)
        if before_install:
            proc = _run([*pip, "install", *before_install], log, env=_clean_env())
            if proc.returncode:
                row.install = f"{' '.join(before_install)}: {_last_error(proc.stdout)}"
                return row
        before = freeze_map(_run([*pip, "freeze", "--all"], log).stdout)
        if mindspore:
            report = folder / "dry-run.json"
            proc = _run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), str(wheel)], log,
                        env=_clean_env())
            if proc.returncode:
                row.install = f"dry run: {_last_error(proc.stdout)}"
                return row
            replaced = would_replace(json.loads(report.read_text()), before)
            if replaced:
                row.unchanged = "**no**, pip would replace " + ", ".join(replaced)
                return row
        pins = folder / "constraints.txt"
        pins.write_text("".join(f"{c}\n" for c in constraints))
        proc = _run([*pip, "install", "--constraint", str(pins), str(wheel)], log, env=_clean_env())
        if proc.returncode:
            row.install = _last_error(proc.stdout)
            return row
        after = freeze_map(_run([*pip, "freeze", "--all"], log).stdout)
        added = sorted(set(after) - set(before))
        row.install = f"{len(added)} packages added" + (f", pinned {', '.join(constraints)}" if constraints else "")
        if mindspore:
            lost = changed(before, after)
            row.unchanged = f"yes (pip freeze equal on all {len(before)} packages)" if not lost else \
                "**no**: " + "; ".join(lost)
        row.__dict__.update(_versions(py))
        problem = run_conversions(venv / "bin", d, folder / "out", log)
        if problem:
            row.conversions = f"**no**: {problem}"
            return row
        got = digests(folder / "out")
        differ = sorted(k for k in reference if got.get(k) != reference[k]) + sorted(set(got) - set(reference))
        row.conversions = (f"{len(CONVERSIONS)}/{len(CONVERSIONS)} identical ({len(got)} files)" if not differ
                           else f"**no**: {len(differ)} files differ, e.g. {differ[0]}")
        if mindspore:
            row.vs_mindspore = compare_with_own_mindspore(py, d, folder, log)
        row.ok = not differ and (not mindspore or (row.unchanged.startswith("yes")
                                                   and row.vs_mindspore.startswith("3/3")))
        return row
    except subprocess.TimeoutExpired as exc:
        row.install = row.install or f"timed out after {exc.timeout:.0f}s"
        return row
    finally:
        row.seconds = time.monotonic() - started


_OWN_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import synth
out, d = sys.argv[2], dict(zip(("complete", "s8", "merged8", "s4"), sys.argv[3:7]))
ref8 = synth.ms_transform(d["complete"], out + "/ms8", None, d["s8"])
ref4 = synth.ms_transform(ref8, out + "/ms4", d["merged8"], d["s4"])
ref1 = synth.ms_transform(ref4, out + "/ms1", d["s4"], None)
for ours, theirs in (("out8", ref8), ("out4", ref4), ("out1", ref1)):
    synth.assert_same_checkpoint_dirs(out + "/" + ours, theirs)
print("equal")
"""


def row_dry_run(venv: Path, root: Path, wheel: Path) -> Row:
    """An existing environment, untouched: would installing the wheel change any of its packages?"""
    started = time.monotonic()
    row = Row(f"venv {venv.parent.name}/{venv.name}" if venv.name == "venv" else f"venv {venv.name}")
    py = venv / "bin" / "python"
    log = root / f"dry-run-{re.sub(r'[^A-Za-z0-9.]+', '_', str(venv))}.log"
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    try:
        row.__dict__.update(_versions(py))
        installed = freeze_map(_run([*pip, "freeze", "--all"], log).stdout)
        report = root / f"{log.stem}.json"
        proc = _run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), str(wheel)], log,
                    env=_clean_env())
        if proc.returncode:
            row.install = f"dry run: {_last_error(proc.stdout)}"
            return row
        planned = json.loads(report.read_text()).get("install", [])
        replaced = would_replace({"install": planned}, installed)
        row.install = f"dry run: {len(planned)} to add, nothing installed"
        row.unchanged = f"yes (none of its {len(installed)} packages)" if not replaced else \
            "**no**, pip would replace " + ", ".join(replaced)
        row.ok = not replaced
        return row
    finally:
        row.seconds = time.monotonic() - started


def compare_with_own_mindspore(py: Path, d: dict[str, str], folder: Path, log: Path) -> str:
    """The row's MindSpore converts the same inputs; ours must hold the same tensors bit for bit."""
    proc = _run([str(py), "-c", _OWN_CHECK, str(REPO / "tests"), str(folder / "out"),
                 d["complete"], d["s8"], d["merged8"], d["s4"]], log, env=_clean_env(), timeout=1200)
    return "3/3 equal, bit for bit" if proc.returncode == 0 and "equal" in proc.stdout else \
        f"**no**: {_last_error(proc.stdout)}"


def table(rows: list[Row]) -> str:
    lines = ["| row | Python | numpy | protobuf | MindSpore in the venv | install | installed packages unchanged | "
             "3 conversions vs the oracle's bytes | vs that MindSpore's own conversion | time |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.name} | {r.python or '-'} | {r.numpy or '-'} | {r.protobuf or '-'} | {r.mindspore} | "
                     f"{r.install} | {r.unchanged} | {r.conversions or '-'} | {r.vs_mindspore} | {r.seconds:.0f} s |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="install_compat.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pythons", default=",".join(DEFAULT_PYTHONS),
                    help="comma-separated versions (3.9) or interpreter paths (default: %(default)s, those found)")
    ap.add_argument("--mindspore", default=DEFAULT_MINDSPORE,
                    help="the MindSpore of the image stand-in row; 'none' skips it (default: %(default)s)")
    ap.add_argument("--no-floors", action="store_true", help="skip the floors row")
    ap.add_argument("--venvs", default="",
                    help="comma-separated existing venvs to check by pip's dry run only (nothing installed there)")
    ap.add_argument("--only-venvs", action="store_true", help="only the --venvs rows (no new venv, no conversion)")
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="one folder per row (default: %(default)s)")
    args = ap.parse_args(argv)
    items = [p.strip() for p in args.pythons.split(",") if p.strip()]
    bad = [p for p in items if not (re.fullmatch(r"3\.\d+", p) or os.access(p, os.X_OK))]
    if bad or not items:
        raise BadInput(f"--pythons={args.pythons}: {bad[0] if bad else 'empty'} is neither a version like 3.9 "
                       "nor an interpreter")
    if args.mindspore != "none" and not re.fullmatch(r"\d+(\.\d+){1,3}(\.post\d+)?", args.mindspore):
        raise BadInput(f"--mindspore={args.mindspore}: a version like 2.7.2, or none")
    args.pythons = items
    args.venvs = [Path(v.strip()).resolve() for v in args.venvs.split(",") if v.strip()]
    missing = [v for v in args.venvs if not (v / "bin" / "python").is_file()]
    if missing:
        raise BadInput(f"--venvs: {missing[0]} is not a venv (no bin/python)")
    if args.only_venvs and not args.venvs:
        raise BadInput("--only-venvs needs --venvs")
    args.root = Path(args.root).resolve()
    if args.root == REPO / ".venv" or (REPO / ".venv") in args.root.parents:
        raise BadInput(f"--root={args.root}: inside the project's .venv; give a folder of its own")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except BadInput as exc:
        print(f"install_compat: error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    args.root.mkdir(parents=True, exist_ok=True)
    versions = [p for p in args.pythons if re.fullmatch(r"3\.\d+", p)]
    found = find_pythons(versions)
    found.update({subprocess.run([p, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip(): p
                  for p in args.pythons if p not in versions})
    wheel = build_wheel(args.root)
    if args.only_venvs:
        return finish([row_dry_run(v, args.root, wheel) for v in args.venvs], args.root, started)
    d = make_inputs(args.root)
    print(f"wheel {wheel.name}; inputs and MindSpore 2.10 references in {args.root / 'inputs'}", flush=True)
    # The reference bytes: this project's own venv (Python 3.11, MindSpore 2.10), checked against
    # MindSpore 2.10's conversions first.
    sys.path.insert(0, str(REPO / "tests"))
    import synth   # noqa: E402
    ref_out = args.root / "reference"
    problem = run_conversions(Path(sys.executable).parent, d, ref_out, args.root / "reference.log")
    if problem:
        print(f"install_compat: the project's own venv fails: {problem}", file=sys.stderr)
        return 1
    for ours, theirs in (("out8", "ref8"), ("out4", "ref4"), ("out1", "ref1")):
        synth.assert_same_checkpoint_dirs(str(ref_out / ours), d[theirs])
    reference = digests(ref_out)
    rows = []
    for version in versions:
        if version not in found:
            rows.append(Row(f"python{version}", install="no interpreter found"))
    for version, python in sorted(found.items(), key=lambda kv: tuple(map(int, kv[0].split(".")))):
        print(f"[python{version}] {python}", flush=True)
        rows.append(row_venv(f"python{version}", python, args.root, wheel, d, reference))
        print(f"[python{version}] {'ok' if rows[-1].ok else 'FAILED'}", flush=True)
    if not args.no_floors and found:
        oldest = min(found, key=lambda v: tuple(map(int, v.split("."))))
        pins = floors((REPO / "pyproject.toml").read_text())
        print(f"[floors] python{oldest}: {', '.join(pins)}", flush=True)
        rows.append(row_venv(f"floors (python{oldest})", found[oldest], args.root, wheel, d, reference,
                             constraints=pins))
    if args.mindspore != "none":
        python = found.get("3.11") or sys.executable
        print(f"[mindspore-{args.mindspore}] {python}", flush=True)
        rows.append(row_venv(f"mindspore-{args.mindspore}", python, args.root, wheel, d, reference,
                             before_install=[f"mindspore=={args.mindspore}"], mindspore=args.mindspore))
    rows += [row_dry_run(v, args.root, wheel) for v in args.venvs]
    return finish(rows, args.root, started)


def finish(rows: list[Row], root: Path, started: float) -> int:
    """Print the table, write it to <root>/report.md; 0 when every row passes."""
    good = sum(r.ok for r in rows)
    report = f"{table(rows)}\n\n{good} of {len(rows)} rows pass ({time.monotonic() - started:.0f} s)\n"
    print("\n" + report)
    (root / "report.md").write_text(report)
    return 0 if rows and good == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
