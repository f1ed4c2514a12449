"""Logging: concise lines on the console, everything (with tracebacks) in one file per process."""
from __future__ import annotations

import logging
import os
import sys

FORMAT_FILE = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


def console(node_index: int | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if getattr(h, "_cloud_entry", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    tag = "cloud-entry" if node_index is None else f"cloud-entry[node {node_index}]"
    handler.setFormatter(logging.Formatter(f"{tag} %(levelname)s: %(message)s"))
    handler._cloud_entry = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def to_file(log_dir: str, node_index: int) -> str:
    """Start the per-process log file (only after the input was found good: bad input writes
    nothing)."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"cloud_entry_node{node_index}_pid{os.getpid()}.log")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FORMAT_FILE))
    handler._cloud_entry = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)
    return path
