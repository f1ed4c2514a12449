"""The checkpoint formats the engine knows: one line per format.

A format is `module:attribute` naming a formats.interface.CheckpointFormat instance. The
built-in ones are listed in BUILTIN; more come from the environment variable RESHARD_FORMATS
(comma-separated `module:attribute`, read at each look-up), so a format added outside this
package reaches every process the tools start: `transform-checkpoint`'s workers and
`cloud-entry`'s conversions alike. Modules are imported on first use, not when the engine is.

    names()            -> ('ckpt', 'safetensors', ...)   the choices of --format / load_ckpt_format
    get(name, flag)    -> CheckpointFormat               ReshardError naming the flag when unknown
    by_file(name)      -> CheckpointFormat | None        by the file name's ending, any case
    extensions(name)   -> ('.ckpt', ...)                 of one format, or (None) of every format
"""
from __future__ import annotations

import importlib
import os

from reshard.errors import ReshardError
from reshard.formats.interface import CheckpointFormat

BUILTIN = (
    "reshard.formats.ckpt_format:FORMAT",
    "reshard.formats.safetensors_format:FORMAT",
    "reshard.formats.checkpoint2.format:FORMAT",
)
ENV = "RESHARD_FORMATS"
DEFAULT = "ckpt"   # what --format and load_ckpt_format mean when not given

_loaded: tuple[str, dict[str, CheckpointFormat]] | None = None


def _formats() -> dict[str, CheckpointFormat]:
    global _loaded
    extra = os.environ.get(ENV, "")
    if _loaded is None or _loaded[0] != extra:
        specs = BUILTIN + tuple(s.strip() for s in extra.split(",") if s.strip())
        _loaded = (extra, _load(specs))
    return _loaded[1]


def _load(specs: tuple[str, ...]) -> dict[str, CheckpointFormat]:
    found: dict[str, CheckpointFormat] = {}
    for spec in specs:
        module, _, attribute = spec.partition(":")
        try:
            fmt = getattr(importlib.import_module(module), attribute or "FORMAT")
        except (ImportError, AttributeError) as exc:
            raise ReshardError(f"{ENV}: {spec}: {exc}") from None
        if not isinstance(fmt, CheckpointFormat) or not fmt.name or not fmt.extensions:
            raise ReshardError(f"{ENV}: {spec} is not a named CheckpointFormat with extensions")
        clash = next((f for f in found.values() if f.name == fmt.name or (
            set(f.extensions) & set(fmt.extensions) and f.name != fmt.shards_of
            and fmt.name != f.shards_of)), None)
        if clash is not None:
            raise ReshardError(f"{ENV}: {spec}: format {fmt.name!r} ({', '.join(fmt.extensions)}) "
                               f"clashes with {clash.name!r} ({', '.join(clash.extensions)})")
        found[fmt.name] = fmt
    return found


def names() -> tuple[str, ...]:
    return tuple(_formats())


def formats() -> tuple[CheckpointFormat, ...]:
    return tuple(_formats().values())


def get(name: str, flag: str = "format") -> CheckpointFormat:
    """The format `name`; ReshardError naming `flag` when there is none."""
    known = _formats()
    if name not in known:
        raise ReshardError(f"{flag} {name!r}: must be {' or '.join(known)}")
    return known[name]


def by_file(file_name: str) -> CheckpointFormat | None:
    """The format of a file, by the ending of its name (any case); None for no format's."""
    lowered = os.fspath(file_name).lower()
    return next((f for f in _formats().values() if f.shards_of is None
                 and lowered.endswith(tuple(e.lower() for e in f.extensions))), None)


def extensions(name: str | None = None) -> tuple[str, ...]:
    """The file-name endings of format `name`, or of every format (None)."""
    if name is not None:
        return get(name).extensions
    return tuple(dict.fromkeys(e for f in _formats().values() for e in f.extensions))
