"""mox.file.shift('os', 'mox'): the Python built-ins moxing documents as patched take OBS URLs.

moxing's "one-click switch" ("一键切换", ModelArts' MoXing guide, "mox.file与本地接口的对应关系和
切换") maps these to mox.file: glob.glob, os.listdir, os.makedirs, os.mkdir, os.path.exists,
os.path.getsize, os.path.isdir, os.remove, os.rename, os.scandir, os.stat, os.walk, open,
shutil.copyfile, shutil.copytree, shutil.rmtree. Each patched function sends a call whose path
is an obs:// or s3:// URL to mox.file and every other call, unchanged, to the original
function: local paths, file descriptors, Path objects and every keyword behave exactly as
before. shift('os', 'os') puts the originals back.

Patching reaches code that looks the functions up at call time (`os.listdir(p)`, `open(p)`);
a name imported before the shift (`from os import listdir`) keeps the original, as in moxing.
"""
from __future__ import annotations

import builtins
import functools
import glob
import os
import os.path
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from .urls import is_remote


@dataclass(frozen=True)
class _Patch:
    """One function replaced: where it lives, its name there, and how a remote call is done."""

    module: ModuleType
    name: str
    paths: tuple[str, ...]    # the original's path parameters, in order (positional or keyword)
    remote: Callable          # called with the original call's arguments when a path is a URL


def _mox():
    from . import file  # at call time: this module is imported by obs_io.file itself
    return file


def _makedirs(name, mode=0o777, exist_ok=False):
    if not exist_ok and _mox().is_directory(name):
        raise FileExistsError(f"{name} exists (os.makedirs without exist_ok=True)")
    _mox().make_dirs(name)


def _rmtree(path, ignore_errors=False, onerror=None, **_):
    try:
        _mox().remove(path, recursive=True)
    except OSError:
        if not ignore_errors:
            raise


def _copyfile(src, dst, **_):
    _mox().copy(src, dst)
    return dst


def _copytree(src, dst, *args, **kwargs):
    _mox().copy_parallel(src, dst)
    return dst


def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    return _mox().File(file, mode, buffering, encoding, errors, newline)


_PATCHES = (
    _Patch(glob, "glob", ("pathname",), lambda pathname, **_: _mox().glob(pathname)),
    _Patch(os, "listdir", ("path",), lambda path=".": _mox().list_directory(path)),
    _Patch(os, "makedirs", ("name",), _makedirs),
    _Patch(os, "mkdir", ("path",), lambda path, mode=0o777, **_: _mox().mk_dir(path)),
    _Patch(os.path, "exists", ("path",), lambda path: _mox().exists(path)),
    _Patch(os.path, "getsize", ("filename",), lambda filename: _mox().get_size(filename)),
    _Patch(os.path, "isdir", ("s",), lambda s: _mox().is_directory(s)),
    _Patch(os, "remove", ("path",), lambda path, **_: _mox().remove(path, recursive=False)),
    _Patch(os, "rename", ("src", "dst"), lambda src, dst, **_: _mox().rename(src, dst)),
    _Patch(os, "scandir", ("path",), lambda path=".": _mox().scan_dir(path)),
    _Patch(os, "stat", ("path",), lambda path, **_: _mox().stat(path)),
    _Patch(os, "walk", ("top",), lambda top, topdown=True, onerror=None, followlinks=False:
           _mox().walk(top, topdown, onerror, followlinks)),
    _Patch(builtins, "open", ("file",), _open),
    _Patch(shutil, "copyfile", ("src", "dst"), _copyfile),
    _Patch(shutil, "copytree", ("src", "dst"), _copytree),
    _Patch(shutil, "rmtree", ("path",), _rmtree),
)

_originals: dict[tuple[str, str], Callable] = {}   # (module name, function name) -> original, while shifted
_lock = threading.Lock()


def _routed(patch: _Patch, original: Callable) -> Callable:
    """`original`, except that a call with a URL among its path arguments goes to mox.file."""

    @functools.wraps(original)
    def call(*args, **kwargs):
        paths = list(args[:len(patch.paths)]) + [kwargs[n] for n in patch.paths[len(args):] if n in kwargs]
        if any(is_remote(a) for a in paths):
            return patch.remote(*args, **kwargs)
        return original(*args, **kwargs)

    call.__obs_io_shifted__ = True
    return call


def shift(src: str, dst: str) -> None:
    """moxing's mox.file.shift: shift('os', 'mox') makes the built-ins listed in this module's
    docstring accept obs:// and s3:// URLs; shift('os', 'os') restores the originals. Either is
    idempotent.

    Args:
        src: 'os'.
        dst: 'mox' to route the built-ins through obs_io, 'os' to restore them.

    Raises:
        ValueError: other arguments, naming them.
    """
    if (src, dst) == ("os", "mox"):
        with _lock:
            for p in _PATCHES:
                key = (p.module.__name__, p.name)
                if key not in _originals:
                    original = getattr(p.module, p.name)
                    _originals[key] = original
                    setattr(p.module, p.name, _routed(p, original))
        return
    if (src, dst) == ("os", "os"):
        with _lock:
            for p in _PATCHES:
                original = _originals.pop((p.module.__name__, p.name), None)
                if original is not None:
                    setattr(p.module, p.name, original)
        return
    raise ValueError(f"shift({src!r}, {dst!r}): expected shift('os', 'mox') to let the os/open "
                     f"built-ins take OBS URLs, or shift('os', 'os') to undo it")
