#!/usr/bin/env python3.11
"""Set up `.venv/` at the repository root and run the demo, the tests or a benchmark.

Why a Python script and not make or a shell script: a fresh machine is promised only
Python 3.11. The venv is (re)installed only when pyproject.toml changed since the last
install, so repeated runs start at once.

    python3.11 dev.py demo              # set up, then run the demo
    python3.11 dev.py test [pytest args]
    python3.11 dev.py bench NAME [args] # bench/NAME.py
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".installed-pyproject-sha256"


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_venv() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"dev.py: needs Python 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    _run([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(PY), "-m", "pip", "install", "--quiet", "-e", ".[test]"])
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "setup"}:
        print(__doc__)
        return 2
    ensure_venv()
    what, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if what == "setup":
        return 0
    if what == "demo":
        cmd = [str(PY), str(ROOT / "demo.py"), *rest]
    elif what == "test":
        cmd = [str(PY), "-m", "pytest", *rest]
    else:
        if not rest:
            print("dev.py bench NAME: one of", sorted(p.stem for p in (ROOT / "bench").glob("*_bench.py")))
            return 2
        cmd = [str(PY), str(ROOT / "bench" / f"{rest[0]}.py"), *rest[1:]]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
