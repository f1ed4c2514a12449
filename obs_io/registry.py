"""Which object store serves a URL: a registry keyed by URL scheme (the fsspec idea).

    store_for("obs://bucket/key")   -> the S3 store (obs_io.fs.S3FS), one instance per class
    store_for("/cache/ckpt")        -> the local disk (obs_io.fs.LocalFS)
    is_remote("toy://b/k")          -> True once a store is registered for toy://

A store is named by "module:Class" and imported on first use, so asking whether a string is a
URL never imports boto3. Three ways to add one, looked up in this order, so that every process
of a job (transform-checkpoint's workers, cloud-entry and the commands it starts) sees it:

- register(scheme, store) in the process (a test, an embedding program);
- the environment: OBS_IO_STORES="toy=my_pkg.toy:ToyStore,gs=/path/to/gcs_store.py:GCSStore"
  (a module or a file path, then the class), inherited by child processes;
- an installed package's entry point in the group `obs_io.stores` (name: the scheme, value:
  "module:Class"), read once, only for a scheme not found above.

Only remote stores are registered: a path without a scheme is the local disk's.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import threading

from .cleanup import on_failure

ENV = "OBS_IO_STORES"
ENTRY_POINT_GROUP = "obs_io.stores"
LOCAL = "obs_io.fs:LocalFS"
# The registry line of each store shipped with obs_io: scheme -> "module:Class".
STORES = {"obs": "obs_io.fs:S3FS", "s3": "obs_io.fs:S3FS"}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_registered: dict[str, object] = {}      # register(): scheme -> "module:Class", a class or a store
_instances: dict[object, object] = {}    # one store per class
_entry_points: dict[str, str] | None = None
_lock = threading.Lock()


def scheme_of(url: str) -> str | None:
    """The scheme of `url` in lower case ('obs' for OBS://b/k), None without `scheme://`."""
    m = _SCHEME.match(url) if isinstance(url, str) else None
    return m.group(1).lower() if m else None


def register(scheme: str, store) -> None:
    """Serve `scheme`:// URLs by `store`. In this process only; see the module docstring for
    child processes.

    Args:
        scheme: the URL scheme, any case ("toy" for toy://).
        store: an ObjectStore instance, its class, or "module:Class" (loaded on first use).
    """
    with _lock:
        _registered[scheme.lower()] = store


def unregister(scheme: str) -> None:
    """Forget what register() said for `scheme` (the environment and entry points still count)."""
    with _lock:
        _registered.pop(scheme.lower(), None)


def _from_env(scheme: str) -> str | None:
    for item in os.environ.get(ENV, "").split(","):
        name, sep, spec = item.strip().partition("=")
        if sep and name.strip().lower() == scheme:
            return spec.strip()
    return None


def _from_entry_points(scheme: str) -> str | None:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points
        eps = entry_points()
        group = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") \
            else eps.get(ENTRY_POINT_GROUP, ())   # Python 3.9: a dict of groups
        _entry_points = {ep.name.lower(): ep.value for ep in group}
    return _entry_points.get(scheme)


def _spec(scheme: str):
    """What serves `scheme`, or None: register(), the environment, obs_io's own, entry points."""
    found = _registered.get(scheme) or _from_env(scheme) or STORES.get(scheme)
    return found if found is not None else _from_entry_points(scheme)


def is_remote(url: str) -> bool:
    """Whether `url` is an object-store URL: the one place that says so.

    Args:
        url: a local path or URL.

    Returns:
        True when a store is registered for its scheme (obs://, s3:// and any plug-in's, in
        any case); False for local paths and for strings whose scheme no store serves.
    """
    scheme = scheme_of(url)
    return scheme is not None and _spec(scheme) is not None


def _load(spec: str):
    """The class "module:Class" or "/path/to/file.py:Class" names; ValueError naming the spec
    when it cannot be loaded."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"{ENV}: {spec!r} is not module:Class")
    try:
        return getattr(_module(where), name)
    except (ImportError, AttributeError, OSError) as err:
        raise ValueError(f"cannot load the object store {spec!r}: {err}") from None


def _module(where: str):
    if where.endswith(".py"):
        module_name = f"obs_io_store_{abs(hash(os.path.abspath(where)))}"
        module = sys.modules.get(module_name)
        if module is None:
            file_spec = importlib.util.spec_from_file_location(module_name, where)
            if file_spec is None or file_spec.loader is None:
                raise ImportError(f"no Python file at {where}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[module_name] = module
            with on_failure(sys.modules.pop, module_name, None):
                file_spec.loader.exec_module(module)
        return module
    return importlib.import_module(where)


def _instance(found):
    if not isinstance(found, (str, type)):
        return found   # a store instance, as register() was given it
    key = found
    store = _instances.get(key)
    if store is None:
        with _lock:
            store = _instances.get(key)
            if store is None:
                store = (_load(found) if isinstance(found, str) else found)()
                _instances[key] = store
    return store


def store_for(url: str):
    """The ObjectStore (obs_io.store) serving `url`.

    Args:
        url: a local path or URL.

    Returns:
        The registered store of its scheme, else the local disk's.

    Raises:
        ValueError: the store's "module:Class" cannot be loaded.
    """
    scheme = scheme_of(url)
    found = _spec(scheme) if scheme is not None else None
    return _instance(found if found is not None else LOCAL)
