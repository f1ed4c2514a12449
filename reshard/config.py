"""ReshardConfig: the numbers a conversion runs by, in one object (as s3transfer's
TransferConfig), instead of parameter lists passed down four levels and constants spread over
the modules. Units are in the field names. The defaults are the engine's measured choices; a
caller changes a field with dataclasses.replace.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReshardConfig:
    """How a finished plan is executed (reshard.run).

    process_count: destination ranks converted at once, in as many worker processes (1: in
        this process, each rank's commit overlapping the next rank's reads).
    max_memory_bytes: host-memory budget of the whole conversion (None: half of the memory
        available when the plan is finished, reshard.finish.default_max_memory).
    process_base_bytes: what a converting process costs besides its assembly buffer
        (interpreter, numpy, the plan).
    reader_bytes: per open source reader, its bounded scratch buffer
        (formats.regions.SCRATCH_BYTES) plus its index.
    poll_seconds: how often the scheduler asks a running download whether it failed, and a
        worker with a commit pending whether it is alive.
    stop_grace_seconds: what a stopped worker has to abort its rank before it is killed.
    upload_chunks: parts in memory per rank being uploaded while it is written
        (the store's growing_upload, obs_io.streams.GrowingUpload).
    fetch_threads: GETs in flight (of obs_io's read_part_bytes each) of a source file
        downloaded while converting (reshard.fetch).
    fetch_chunks: its parts fetched or being fetched, not yet written (in order): the
        download's memory.
    durable: each output fsynced before its rename (False where the local files only stage an
        upload: the store holds the ranks).
    release_downloads: a source file downloaded by this run is removed as soon as every rank
        reading it is written (a cache the caller does not keep).
    log_dir: one log file per converting process, LOG_NAME (None: none).
    """
    process_count: int = 1
    max_memory_bytes: int | None = None
    process_base_bytes: int = 80 << 20
    reader_bytes: int = 10 << 20
    poll_seconds: float = 0.5
    stop_grace_seconds: float = 10.0
    upload_chunks: int = 4
    fetch_threads: int = 4
    fetch_chunks: int = 6
    durable: bool = True
    release_downloads: bool = False
    log_dir: str | None = None

    def __post_init__(self) -> None:
        from .errors import ReshardError
        if self.process_count < 1:
            raise ReshardError(f"process_num {self.process_count}: must be at least 1")


DEFAULT = ReshardConfig()
