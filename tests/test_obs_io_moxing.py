"""Code written for Huawei's moxing runs unchanged on obs_io: moxing's keywords, File modes,
set_auth's ssl_verify/client_timeout (against the real server, through a stalling or TLS
proxy), moxing's exception classes, mox.file.shift, the launch choosing Huawei's moxing when
it is installed, and the command line's --version/--help."""
from __future__ import annotations

import importlib.metadata
import json
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from faultproxy import FaultProxy
from test_obs_io_api import _fresh_config, j, make_tree, root  # noqa: F401 - fixtures and helpers

import obs_io as mox
from cloud_entry import launch
from obs_io.client import get_client
from obs_io.errors import ObjectNotFound
from obs_io.workers import _ERRORS

REPO = Path(__file__).resolve().parents[1]

# moxing's documented keywords per mox.file function (ModelArts-Lab docs/moxing_api_doc/
# MoXing_API_File_apidoc.md, and client_id wherever moxing takes it).
MOXING_KEYWORDS = {
    "append": {"url", "data", "binary", "client_id"},
    "append_remote": {"src_url", "dst_url", "client_id"},
    "copy": {"src_url", "dst_url", "client_id"},
    "copy_parallel": {"src_url", "dst_url", "file_list", "threads", "is_processing", "use_queue", "client_id"},
    "exists": {"url"}, "get_size": {"url", "recursive"}, "glob": {"url"}, "is_directory": {"url"},
    "list_directory": {"url", "recursive", "remove_sep", "skip_file", "skip_dir"},
    "make_dirs": {"url"}, "mk_dir": {"url"}, "read": {"url", "client_id", "binary"},
    "remove": {"url", "recursive"}, "rename": {"src_url", "dst_url"}, "scan_dir": {"url"},
    "set_auth": {"ak", "sk", "server", "port", "is_secure", "ssl_verify", "long_conn_mode", "path_style",
                 "retry", "retry_wait", "client_timeout", "list_max_keys"},
    "stat": {"url"}, "walk": {"url", "topdown", "onerror", "followlinks"},
    "write": {"url", "data", "binary", "client_id"}, "shift": {"src", "dst"},
}


def test_every_moxing_function_takes_moxings_keywords():
    for name, keywords in MOXING_KEYWORDS.items():
        params = inspect.signature(getattr(mox.file, name)).parameters
        assert keywords <= set(params), f"mox.file.{name} lacks {keywords - set(params)}"
    for name in ("MoxFileNotExistsException", "MoxFileRespException", "MoxFileReadException",
                 "MoxFileNameDuplicateException", "File"):
        assert hasattr(mox.file, name)


def test_list_directory_skip_file_skip_dir_remove_sep(root):
    make_tree(root)
    ls = mox.file.list_directory
    assert ls(root) == ["a", "empty", "x.txt"]
    assert ls(root, skip_file=True) == ["a", "empty"]
    assert ls(root, skip_dir=True) == ["x.txt"]
    assert ls(root, skip_file=True, skip_dir=True) == []
    assert ls(root, recursive=True, skip_dir=True) == ["a/b/three.log", "a/b/two.txt", "a/one.bin", "x.txt"]
    assert ls(root, recursive=True, skip_file=True) == ["a", "a/b", "empty"]
    assert ls(root + "/", remove_sep=True) == ls(root, remove_sep=False) == ls(root)


def test_walk_followlinks_locally(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("x")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "link").symlink_to(tmp_path / "real")
    walked = lambda **kw: [(Path(d).name, sorted(files)) for d, _, files in mox.file.walk(str(tmp_path / "top"), **kw)]
    assert walked(followlinks=False) == [("top", [])]
    assert walked(followlinks=True) == [("top", []), ("link", ["f.txt"])]


def test_client_id_and_append_remote(root, tmp_path):
    mox.file.write(j(root, "a.txt"), "one\n", client_id="c1")
    mox.file.append(j(root, "a.txt"), "two\n", client_id="c1")
    mox.file.write(j(root, "b.bin"), data=b"\x00three\n", binary=True, client_id="c2")
    mox.file.append_remote(j(root, "b.bin"), j(root, "a.txt"), client_id="c3")
    assert mox.file.read(j(root, "a.txt"), client_id="c1", binary=True) == b"one\ntwo\n\x00three\n"
    mox.file.copy(j(root, "a.txt"), str(tmp_path / "a.txt"), client_id="c1")
    mox.file.copy_parallel(root, str(tmp_path / "tree"), client_id="c1", use_queue=True)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "tree" / "a.txt").read_bytes() == b"one\ntwo\n\x00three\n"
    assert mox.file.stat(j(root, "a.txt")).is_directory is False and mox.file.stat(root).is_directory


# -- File: moxing's modes -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["r", "rb", "br", "rt", "r+", "rb+", "br+", "+r"])
def test_file_read_modes_and_size(root, mode):
    mox.file.write(j(root, "f.txt"), "hello\nworld\n")
    with mox.file.File(j(root, "f.txt"), mode) as f:
        assert f.size() == 12 and f.mode == mode and f.name == j(root, "f.txt") and not f.isatty()
        data = f.read()
    assert data == (b"hello\nworld\n" if "b" in mode else "hello\nworld\n")


def test_file_plus_modes_change_in_place(root):
    url = j(root, "f.bin")
    mox.file.write(url, b"0123456789", binary=True)
    with mox.file.File(url, "rb+") as f:          # read, then overwrite the middle
        assert f.read(3) == b"012"
        f.seek(4)
        f.write(b"AB")
        assert f.size() == 10
    assert mox.file.read(url, binary=True) == b"0123AB6789"
    with mox.file.File(url, "ab+") as f:          # appends at the end wherever the position is
        f.seek(0)
        assert f.read(2) == b"01"
        f.seek(0)
        f.write(b"END")
        assert f.size() == 13
    assert mox.file.read(url, binary=True) == b"0123AB6789END"
    with mox.file.File(url, "w+") as f:           # truncated, then read back before close
        f.write("new text")
        f.seek(0)
        assert f.read() == "new text"
    assert mox.file.read(url) == "new text"
    with mox.file.File(url, "bw") as f:
        f.write(b"bw")
    with mox.file.File(url, "ba") as f:
        f.write(b"+ba")
    assert mox.file.read(url, binary=True) == b"bw+ba"


def test_file_r_plus_without_writes_uploads_nothing(bucket, s3_server, s3_env, monkeypatch):
    url = f"obs://{bucket}/keep.txt"
    mox.file.write(url, "same")
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        with mox.file.File(url, "r+") as f:
            assert f.read() == "same"
        assert [r for r in proxy.records if r.method == "PUT"] == []
        with mox.file.File(url, "r+") as f:
            f.write("S")
        assert [r.method for r in proxy.records if r.method == "PUT"] == ["PUT"]
        assert mox.file.read(url) == "Same"


def test_exclusive_create_mode(bucket, s3_env, tmp_path):
    with pytest.raises(ValueError, match=r"mode 'xb'.*obs://.*no exclusive create"):
        mox.file.File(f"obs://{bucket}/new.bin", "xb")
    with mox.file.File(str(tmp_path / "new.bin"), "xb") as f:   # locally: open()'s meaning
        f.write(b"1")
    with pytest.raises(FileExistsError):
        mox.file.File(str(tmp_path / "new.bin"), "x")


# -- set_auth: ssl_verify, client_timeout, list_max_keys (real server, real proxy) ------------

def test_client_timeout_reaches_the_client(bucket, s3_server, s3_env, monkeypatch):
    """A server that holds every request until the test lets it go: with client_timeout=0.5
    (one attempt) a read fails while the server still holds it; without it, the same read is
    still waiting when the server has it, and succeeds once it answers. Conditions, not a
    clock: a busy machine may take seconds to build a client."""
    import threading
    url = f"obs://{bucket}/slow.txt"
    mox.file.write(url, "slow")
    release, arrived = threading.Event(), threading.Event()

    def hold(method: str, path: str):
        if "slow.txt" in path:
            arrived.set()
            release.wait(120)
        return None
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        proxy.rules.append(hold)
        mox.file.set_auth(client_timeout=0.5, retry=1)
        cfg = mox.current_config()
        conf = get_client(cfg).meta.config                  # the client the read uses
        assert (cfg.connect_timeout, cfg.read_timeout) == (conf.connect_timeout, conf.read_timeout) == (0.5, 0.5)
        with pytest.raises(ConnectionError, match="slow.txt"):
            mox.file.read(url)
        assert arrived.is_set() and not release.is_set()    # given up while the server held it
        mox.reset_config()
        mox.file.set_auth(retry=1)
        arrived.clear()
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(mox.file.read(url)))
        reader.start()
        assert arrived.wait(120)
        assert reader.is_alive() and got == []              # waiting for the server's answer
        release.set()
        reader.join(120)
        assert got == ["slow"]
    with pytest.raises(ValueError, match="client_timeout=0"):
        mox.file.set_auth(client_timeout=0)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # self-signed on purpose
def test_ssl_verify_reaches_the_client(bucket, s3_server, s3_env, monkeypatch):
    """Over TLS with a self-signed certificate: ssl_verify=False connects, ssl_verify=True
    refuses the certificate, whatever S3_VERIFY_SSL says."""
    with FaultProxy(s3_server.endpoint, tls=True) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("S3_VERIFY_SSL", "1")
        mox.file.set_auth(ssl_verify=False, retry=1)
        mox.file.write(f"obs://{bucket}/tls.txt", "over tls")
        assert mox.file.read(f"obs://{bucket}/tls.txt") == "over tls"
        assert [r.method for r in proxy.records] and mox.current_config().verify_ssl is False
        monkeypatch.setenv("S3_VERIFY_SSL", "0")
        mox.file.set_auth(ssl_verify=True)
        with pytest.raises(ConnectionError, match="(?i)certificate|ssl"):
            mox.file.read(f"obs://{bucket}/tls.txt")


def test_list_max_keys_sets_the_page_size(bucket, s3_server, s3_env, monkeypatch):
    for i in range(5):
        mox.file.write(f"obs://{bucket}/many/{i}.txt", str(i))
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        mox.file.set_auth(list_max_keys=2, long_conn_mode=True, retry_wait=1)
        assert len(mox.file.list_directory(f"obs://{bucket}/many", recursive=True)) == 5
        lists = [r.path for r in proxy.records if r.method == "GET" and "list-type=2" in r.path]
        assert len(lists) == 3 and all("max-keys=2" in p for p in lists)


# -- moxing's exception classes ---------------------------------------------------------------

def test_errors_are_moxings_classes_and_builtins(bucket, s3_server, s3_env, monkeypatch, tmp_path):
    missing = f"obs://{bucket}/missing.txt"
    for call in (lambda: mox.file.stat(missing), lambda: mox.file.read(missing),
                 lambda: mox.file.list_directory(f"obs://{bucket}/nothing"),
                 lambda: mox.file.copy(missing, str(tmp_path / "m"))):
        with pytest.raises(mox.file.MoxFileNotExistsException) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, mox.file.MoxFileRespException)
        assert type(info.value).__name__ == "FileNotFoundError"   # what logs and the CLI show
    with FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("S3_ENDPOINT", proxy.endpoint)
        proxy.rules.append(lambda method, path: (403, "AccessDenied") if "denied" in path else None)
        proxy.rules.append(lambda method, path: (500, "InternalError") if "broken" in path else None)
        mox.configure(max_attempts=1)
        with pytest.raises(mox.file.MoxFileRespException) as info:
            mox.file.write(f"obs://{bucket}/denied.txt", "x")
        assert isinstance(info.value, PermissionError)
        with pytest.raises(mox.file.MoxFileRespException) as info:
            mox.file.read(f"obs://{bucket}/broken.txt")
        assert info.value.resp["status"] == 500   # a HEAD: the status is all the answer says
    assert _ERRORS["ObjectNotFound"] is ObjectNotFound   # kept across copy_parallel's worker processes


def test_names_that_cannot_both_land_locally(bucket, s3_env, tmp_path):
    mox.file.write(f"obs://{bucket}/d/a", "file a")
    mox.file.write(f"obs://{bucket}/d/a/b", "file a/b")
    mox.file.write(f"obs://{bucket}/d/c", "file c")
    with pytest.raises(mox.file.MoxFileNameDuplicateException, match=r"d/a is both an object and a folder"):
        mox.file.copy_parallel(f"obs://{bucket}/d", str(tmp_path / "d"))
    with pytest.raises(FileExistsError):
        mox.file.copy_parallel(f"obs://{bucket}/d", str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()   # refused before anything was copied


# -- shift('os', 'mox') ------------------------------------------------------------------------

SHIFTED = textwrap.dedent("""\
    import builtins, glob, os, shutil, sys
    import moxing as mox
    base, local = sys.argv[1], sys.argv[2]
    original_open = open
    mox.file.shift('os', 'mox')
    os.makedirs(base + "/dir/sub")
    try:
        os.makedirs(base + "/dir/sub")
        raise SystemExit("makedirs of an existing folder did not fail")
    except FileExistsError:
        pass
    os.makedirs(base + "/dir/sub", exist_ok=True)
    with open(base + "/dir/a.txt", "w") as f:
        f.write("hello")
    with open(file=base + "/dir/sub/b.bin", mode="wb") as f:
        f.write(b"12345")
    assert open(base + "/dir/a.txt").read() == "hello"
    assert sorted(os.listdir(base + "/dir")) == ["a.txt", "sub"], os.listdir(base + "/dir")
    assert os.path.exists(base + "/dir/a.txt") and not os.path.exists(base + "/nope")
    assert os.path.isdir(base + "/dir/sub") and not os.path.isdir(base + "/dir/a.txt")
    assert os.path.getsize(base + "/dir/sub/b.bin") == 5 == os.stat(base + "/dir/sub/b.bin").st_size
    with os.scandir(base + "/dir") as it:
        assert sorted((e.name, e.is_dir()) for e in it) == [("a.txt", False), ("sub", True)]
    assert [(len(d), f) for _, d, f in os.walk(base + "/dir")] == [(1, ["a.txt"]), (0, ["b.bin"])]
    assert glob.glob(base + "/dir/*.txt") == [base + "/dir/a.txt"]
    assert shutil.copyfile(base + "/dir/a.txt", local + "/a.txt") == local + "/a.txt"
    shutil.copytree(base + "/dir", local + "/tree")
    assert original_open(local + "/tree/sub/b.bin", "rb").read() == b"12345"
    os.rename(base + "/dir/a.txt", base + "/dir/c.txt")
    os.remove(base + "/dir/c.txt")
    assert not os.path.exists(base + "/dir/c.txt")
    shutil.rmtree(base + "/dir")
    assert not os.path.exists(base + "/dir")
    # local paths, descriptors and keywords still reach the originals
    with open(local + "/l.txt", "w", newline="") as f:
        f.write("local")
    assert os.stat(os.open(local + "/l.txt", os.O_RDONLY)).st_size == 5
    assert "l.txt" in os.listdir(local) and os.path.isdir(local)
    mox.file.shift('os', 'os')
    assert builtins.open is original_open
    try:
        open(base + "/x")
        raise SystemExit("open of a URL worked after shift('os', 'os')")
    except FileNotFoundError:
        pass
    print("shift ok")
    """)


@pytest.mark.parametrize("where", ["obs", "local"])
def test_shift_os_mox_patches_and_restores(tmp_path, bucket, s3_env, where):
    (tmp_path / "script.py").write_text(SHIFTED)
    (tmp_path / "local").mkdir()
    base = f"obs://{bucket}/shifted" if where == "obs" else str(tmp_path / "base")
    shim = tmp_path / "shim" / "moxing"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(launch.shim_source())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shim"), str(REPO)]))
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), base, str(tmp_path / "local")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "shift ok" in done.stdout, done.stderr


def test_shift_refuses_other_arguments():
    with pytest.raises(ValueError, match=r"shift\('mox', 'tf'\)"):
        mox.file.shift("mox", "tf")


# -- the launch: Huawei's moxing when it is installed, ours otherwise --------------------------

WHICH_MOXING = "import moxing, sys; open(sys.argv[1], 'w').write(moxing.WHO if hasattr(moxing, 'WHO') else " \
               "('obs_io' if moxing.file is __import__('obs_io').file else moxing.__file__))"


def _launched_moxing(tmp_path: Path, pythonpath: str) -> str:
    """Which moxing a command launched as the entry launches it imports."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MA_JOB_DIR=str(tmp_path), PATH=os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]]))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    shim = str(tmp_path / "shim")
    launch.write_moxing_shim(shim, env)
    cmd = launch.command([sys.executable, "-c", WHICH_MOXING, "{config}"], str(tmp_path / "who"))
    assert launch.run_command(cmd, launch.environment(env, str(tmp_path / "who"), [0], shim)) == 0
    return (tmp_path / "who").read_text()


def fake_moxing(folder: Path, who: str, real: bool) -> str:
    (folder / "moxing").mkdir(parents=True)
    (folder / "moxing" / "__init__.py").write_text(f"WHO = {who!r}\n")
    if real:   # Huawei's has moxing.file (moxing.framework.file); PyPI's unrelated one does not
        (folder / "moxing" / "file").mkdir()
        (folder / "moxing" / "file" / "__init__.py").write_text("")
    return str(folder)


def test_launch_uses_huaweis_moxing_when_installed(tmp_path):
    real = fake_moxing(tmp_path / "huawei", "huawei", real=True)
    assert launch.real_moxing(dict(os.environ, PYTHONPATH=real)) == str(tmp_path / "huawei" / "moxing")
    assert _launched_moxing(tmp_path, real) == "huawei"
    assert not (tmp_path / "shim" / "moxing").exists()   # no stand-in written


def test_launch_uses_obs_io_without_huaweis_moxing(tmp_path):
    impostor = fake_moxing(tmp_path / "pypi", "pypi impostor", real=False)
    assert launch.real_moxing(dict(os.environ, PYTHONPATH=impostor)) is None
    assert _launched_moxing(tmp_path / "a", impostor) == "obs_io"
    assert _launched_moxing(tmp_path / "b", "") == "obs_io"


def test_our_shim_is_never_taken_for_huaweis(tmp_path):
    shim = tmp_path / "old_shim" / "moxing"
    (shim / "file").mkdir(parents=True)          # even with a file/ folder beside it
    (shim / "__init__.py").write_text(launch.shim_source())
    assert launch.real_moxing(dict(os.environ, PYTHONPATH=str(tmp_path / "old_shim"))) is None


# -- the command line -------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "obs_io", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)


def test_version_and_help():
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"obs_io {importlib.metadata.version('cloud-ckpt-transform')}"
    from obs_io.cli import _parser
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for p in [parser, *subparsers.values()]:
        for action in p._actions:
            assert action.help, f"{p.prog}: {action.option_strings or action.dest} has no description"
        text = _cli(*p.prog.split()[3:], "--help").stdout
        last = text.rstrip().splitlines()[-1]
        assert re.match(r"\s+python -m obs_io \w+", last), f"{p.prog} --help does not end with an example: {last!r}"


IMAGE_CHECK = """\
import json, sys
seen = {"path": list(sys.path)}
try:
    import numpy
    seen["numpy"] = numpy.__file__
except ImportError:
    seen["numpy"] = None
import moxing
seen["moxing_exists"] = moxing.file.exists(sys.argv[2])
seen["obs_io"] = moxing.__file__
open(sys.argv[1], "w").write(json.dumps(seen))
"""


def test_training_command_sees_its_own_environment_not_ours(tmp_path):
    """The training interpreter (here a bare venv standing in for an image's Python, without
    numpy) gets only the moxing stand-in from us: our site-packages is not on its PYTHONPATH, so
    our numpy is not importable there; `import moxing` still works (obs_io found at that import,
    after the command's own packages)."""
    import venv
    image = tmp_path / "image"
    venv.EnvBuilder(with_pip=False).create(image)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MA_JOB_DIR=str(tmp_path), PATH=os.pathsep.join([str(image / "bin"), env["PATH"]]))
    shim = str(tmp_path / "shim")
    launch.write_moxing_shim(shim, env)
    launched = launch.environment(env, str(tmp_path / "seen.json"), [0], shim)
    assert launched["PYTHONPATH"] == shim                      # nothing of ours but the stand-in
    cmd = launch.command([str(image / "bin" / "python"), "-c", IMAGE_CHECK, "{config}", str(tmp_path)],
                         str(tmp_path / "seen.json"))
    assert launch.run_command(cmd, launched) == 0
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["numpy"] is None, f"the image's Python imported our numpy: {seen['numpy']}"
    ours = str(Path(np.__file__).resolve().parent.parent)
    assert ours not in seen["path"], seen["path"]
    assert seen["moxing_exists"] is True and seen["obs_io"].startswith(str(REPO)), seen
