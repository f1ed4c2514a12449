"""The integrity manifest of a converted set, and checking a set against it later.

Why: a converted checkpoint outlives the run that made it (on disk, on OBS, copied between
buckets); a user must be able to tell, any time later, that it is complete and intact before a
long training job loads it. `conversion_manifest.json` sits beside the `rank_<r>/` folders
(never inside one: MindFormers loads the last file in name order there) and is written last,
after every file it lists, so its presence means the set was complete when it was written.

Per file it records the size and a CRC32 of the bytes (computed by the writer while writing,
`CheckpointWriter.checksum`, never by reading the file again), and for the set the source's
and strategies' identities, a digest of what defines the result, and the tool version.
`verify(location)` lists the folder, reads every file once (local, obs:// or s3://) and says
what is missing, extra or different.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from reshard.errors import ReshardError
from obs_io.atomic import write_atomic
from obs_io.crc import crc32
from reshard.sources import _join, is_url

MANIFEST_NAME = "conversion_manifest.json"
FORMAT = 1
READ_BYTES = 8 << 20


@dataclass(frozen=True)
class FileRecord:
    size: int        # bytes
    crc32: str       # 8 hex digits (CRC32 as zlib computes it, of the whole file)


@dataclass(frozen=True)
class SetManifest:
    """What a converted set holds. files: relative name ('rank_<r>/<prefix><r>.<fmt>') -> record."""
    files: dict[str, FileRecord]
    result_digest: str = ""                 # what defines the result (plan or job run id)
    source: dict[str, Any] = field(default_factory=dict)        # location and identity
    strategies: dict[str, Any] = field(default_factory=dict)    # src / dst identities
    tool: str = ""

    def to_json(self) -> str:
        body = asdict(self)
        body["files"] = {n: asdict(r) for n, r in sorted(self.files.items())}
        return json.dumps({"format": FORMAT, **body}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "SetManifest":
        try:
            body = json.loads(text)
            files = {n: FileRecord(int(r["size"]), str(r["crc32"])) for n, r in body["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReshardError(f"{where}: not a conversion manifest ({exc})") from None
        return cls(files, body.get("result_digest", ""), body.get("source", {}),
                   body.get("strategies", {}), body.get("tool", ""))


def tool_version() -> str:
    """The manifest's `tool` field: which release wrote a set ('cloud-ckpt-transform <version>'),
    for telling later which tool's conversion a set is when a bug is found in one."""
    from obs_io.version import package_version
    return f"cloud-ckpt-transform {package_version()}"


def write(location: str, manifest: SetManifest) -> str:
    """Write `<location>/conversion_manifest.json` atomically (a temporary name renamed, or one
    PUT on object storage). Call it after every file it lists is under its final name."""
    path = _join(location, MANIFEST_NAME)
    if is_url(location):
        import obs_io
        obs_io.file.write(path, manifest.to_json())
    else:   # without obs_io.file, which imports boto3: a local conversion does not pay for it
        write_atomic(path, manifest.to_json().encode(), durable=True)
    return path


def read(location: str) -> SetManifest:
    """The manifest of the converted set at `location` (a local folder, obs:// or s3://): what a
    rerun and the job's sync compare with before trusting files already there.

    Returns:
        The SetManifest read from `<location>/conversion_manifest.json`.

    Raises:
        ReshardError: one line naming the location when there is no manifest (not a converted
            set, or its conversion did not finish), or naming the file when it is not one.
    """
    path = _join(location, MANIFEST_NAME)
    try:
        if is_url(path):
            import obs_io
            text = obs_io.file.read(path)
        else:   # without obs_io.file, which imports boto3 (a local run's start: see file_checksum)
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:
        raise ReshardError(f"{location}: no {MANIFEST_NAME} (not a converted set, or its "
                           "conversion did not finish)") from None
    return SetManifest.from_json(text, path)


def file_checksum(path: str) -> FileRecord:
    """Size and CRC32 of a file or object, read once in READ_BYTES pieces (a local file without
    obs_io.file, which imports boto3: the engine's workers use this)."""
    crc, size = 0, 0
    if is_url(path):
        import obs_io
        opened = obs_io.file.File(path, "rb")
    else:
        opened = open(path, "rb")
    with opened as f:
        while True:
            block = f.read(READ_BYTES)
            if not block:
                break
            crc = crc32(block, crc)
            size += len(block)
    return FileRecord(size, f"{crc:08x}")


@dataclass(frozen=True)
class Verdict:
    location: str
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    different: tuple[tuple[str, str], ...] = ()   # (name, what differs)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def lines(self) -> list[str]:
        out = [f"missing: {n}" for n in self.missing]
        out += [f"extra: {n} (not in {MANIFEST_NAME})" for n in self.extra]
        out += [f"different: {n}: {why}" for n, why in self.different]
        return out

    def summary(self) -> str:
        if self.ok:
            return f"{self.location}: {self.checked} file(s) intact, as {MANIFEST_NAME} lists them"
        parts = [f"{len(v)} {k}" for k, v in (("missing", self.missing), ("extra", self.extra),
                                              ("different", self.different)) if v]
        first = (self.missing or self.extra or [d[0] for d in self.different])[0]
        return f"{self.location}: {', '.join(parts)} (first: {first})"


def _listed(location: str) -> list[tuple[str, int]]:
    """(relative name, size) of every file of the set, as the registered formats say (in_set):
    rank_<r>/ folders' checkpoint files, a Checkpoint 2.0 set's tracker and iteration_<n>/ files."""
    import obs_io
    from reshard.formats import registry
    entries = obs_io.file.list_entries(location, recursive=True)
    return [(e.name, e.length) for e in entries
            if e.is_file() and any(f.in_set(e.name) for f in registry.formats())]


def verify(location: str, manifest: SetManifest | None = None) -> Verdict:
    """Check a converted set (local folder or obs:// / s3:// URL) against its manifest: every
    listed file present with its size and CRC32, no other checkpoint file in its rank folders.
    Raises ReshardError when there is no readable manifest; FileNotFoundError for no folder."""
    manifest = manifest or read(location)
    present = dict(_listed(location))
    missing = tuple(sorted(set(manifest.files) - set(present)))
    extra = tuple(sorted(set(present) - set(manifest.files)))
    different = []
    checked = 0
    for name in sorted(set(manifest.files) & set(present)):
        want = manifest.files[name]
        if present[name] != want.size:
            different.append((name, f"{present[name]} bytes, {want.size} written"))
            continue
        got = file_checksum(_join(location, name))
        checked += 1
        if got != want:
            different.append((name, f"crc32 {got.crc32}, {want.crc32} written"))
    return Verdict(location, missing, extra, tuple(different), checked)


def records(checksums: Mapping[str, tuple[int, str]]) -> dict[str, FileRecord]:
    """The manifest's `files` from a conversion's checksums.

    Args:
        checksums: relative file name -> (size in bytes, CRC32 as 8 hex digits), as the writers
            computed them while writing (TransformReport.checksums).

    Returns:
        relative file name -> FileRecord.
    """
    return {n: FileRecord(int(s), str(c)) for n, (s, c) in checksums.items()}


__all__ = ["MANIFEST_NAME", "FileRecord", "SetManifest", "Verdict", "write", "read", "verify",
           "file_checksum", "records", "tool_version"]
