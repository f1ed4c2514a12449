"""ReshardConfig: the numbers a conversion runs by, in one object (as s3transfer's
TransferConfig), instead of parameter lists passed down four levels and constants spread over
the modules. Units are in the field names. The defaults are the engine's measured choices; a
caller changes a field with dataclasses.replace. Each field's docstring says what it bounds and
why its default is what it is.

What stays a named constant in its module is fixed by something other than the run: a file
format (a .ckpt record's size, a header's length limit), the operating system, or an agreement
between processes that do not share a config.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReshardConfig:
    """How a plan is finished and executed (reshard.run), and the bounds of its waits.

    Raises:
        ReshardError: process_num below 1.
    """
    process_num: int = 1
    """Destination ranks converted at once, in as many worker processes (1: in this process,
    each rank's commit overlapping the next rank's reads)."""
    max_memory_bytes: int | None = None
    """Host-memory budget of the whole conversion (None: half of the memory available when the
    plan is finished, reshard.finish.default_max_memory: the training that follows needs the
    rest)."""
    process_base_bytes: int = 80 << 20
    """What a converting process costs besides its assembly buffer (interpreter, numpy, the
    plan): measured at about 70 MiB for a worker."""
    reader_bytes: int = 10 << 20
    """Per open source reader: its bounded scratch buffer (read_scratch_bytes) plus its index
    (a remote one holds its read-ahead on top: remote_window_bytes)."""
    poll_seconds: float = 0.5
    """How often the scheduler asks a running download whether it failed, and a worker with a
    commit pending whether it is alive: a failure is seen within half a second, at no cost."""
    stop_grace_seconds: float = 10.0
    """What a stopped worker has to abort its rank before it is killed: an abort removes one
    temporary file and one multipart upload, seconds at most."""
    upload_chunks: int = 4
    """Parts in memory per rank being uploaded while it is written (the store's
    growing_upload, obs_io.streams.GrowingUpload): enough to keep the link busy while the
    writer fills the next."""
    fetch_threads: int = 4
    """GETs in flight (of obs_io's read_part_bytes each) of a source file downloaded while
    converting (reshard.fetch): one connection rarely fills a node's link."""
    fetch_chunks: int = 6
    """Parts of such a download fetched or being fetched, not yet written (in order): its
    memory; fetch_threads plus two, so a slow part does not stall the others."""
    preload_value_bytes: int = 64 << 10
    """A value every rank carries as it is (global_step, learning_rate, ...: at the end of a
    MindSpore checkpoint) up to this size is read by a ranged GET before the file's download
    (reshard.fetch.preload_runs), so a rank waits only for its slices. Scalars and small
    vectors: a larger value is worth waiting for in file order."""
    preload_file_bytes: int = 4 << 20
    """Preloaded bytes per downloaded file at most: they go to every worker with the plan."""
    preload_gap_bytes: int = 64 << 10
    """Preloaded values this close are read by one GET (the gap costs less than a request)."""
    download_poll_seconds: float = 0.01
    """How often a read of a source file still downloading looks at its size while it waits
    (formats.growing): a look is one stat, and the download writes parts of MiBs."""
    download_stall_seconds: float = 900.0
    """A read of a downloading file that sees no growth for this long gives up: obs_io fails a
    stalled request within its own bound (about 160 s by default) and removes the file, so this
    is a last bound, not the usual way a stalled download ends."""
    read_scratch_bytes: int = 1 << 20
    """Upper bound of a source reader's scratch buffer, where runs read as one span land before
    they are scattered, and non-contiguous destinations bounce (formats.regions): small enough
    to stay in cache between the read and the scatter (8 MiB measured ~1.5x slower)."""
    read_coalesce_gap_bytes: int = 8 << 10
    """Runs of a region whose gap is at most this are read as one span: one preadv costs
    ~1.6 us of Python and syscall overhead, about what copying 8 KiB twice costs (measured:
    column halves of (65536, 128) fp16 take 106 ms run by run and 3 ms coalesced, while for
    4096x11008, 11 KiB gaps, both ways take the same ~15 ms per half)."""
    read_scatter_gap_bytes: int = 64 << 10
    """Strided runs whose gaps are at most this (or four times the run) are read by one preadv
    per batch of runs, the gaps landing in a junk buffer: a syscall per run costs more than
    copying the gap from the page cache."""
    read_scatter_runs: int = 500
    """Runs per such batch: each batch stays under IOV_MAX (1024 buffers: a run and a gap
    each)."""
    pipe_chunk_bytes: int = 8 << 20
    """Bytes per assembled chunk (reshard.assemble), the unit the assembly and the writer take
    turns on: small enough that the start and the end of each tensor (read with nothing to
    write, written with nothing to read) cost little, large enough that the per-chunk Python
    work (a read per piece, a hand-off) stays negligible."""
    write_slice_bytes: int = 4 << 20
    """A checkpoint writer writes to its file in slices of at most this: one write() of
    hundreds of MiB runs at a third of the speed of the same bytes in MiB-sized writes
    (measured: 520 vs 1650 MB/s)."""
    write_inline_bytes: int = 64 << 10
    """A block this small, with nothing queued, is written and summed by the caller instead of
    the writer's threads: a hand-off costs more than the work."""
    writeback_bytes: int = 32 << 20
    """The writer starts the disk's writeback (Linux sync_file_range) every this many bytes, so
    the fsync at commit finds little left to write."""
    remote_window_bytes: int = 8 << 20
    """Read-ahead of a source file read in place (formats.remote): a miss fetches this much of
    the runs a region reads next, so the runs of a slice cost a few GETs, not one per run.
    Held per open remote reader: it counts in each rank's cost (execute.rank_cost)."""
    remote_gap_bytes: int = 2 << 20
    """A gap between such runs up to this is read through rather than skipped: about what one
    more GET costs in time at ~100 MB/s."""
    remote_threads: int = 4
    """GETs in flight of one large read in place: one connection rarely fills the link; each
    holds a part of obs_io's read_part_bytes (counted in execute.rank_cost)."""
    header_threads: int = 8
    """Headers of remote source files read at once while planning (each costs a few GETs of
    latency, little data); also the sampled comparisons of the plan's copy checks."""
    checked_layouts: int = 16
    """The plan compares replicas and optimizer-shard members of at most this many parameters
    (the largest): a strategy that does not match its checkpoint shows in all of them."""
    shard_members: int = 8
    """In an optimizer-shard group so checked, the first member with up to this many minus one
    others."""
    sample_bytes: int = 64 << 10
    """What of each copy those checks compare (reshard.compare; the whole value when it is
    smaller): enough to tell real shards of a weight apart at once, a few reads per copy rather
    than a second pass over the checkpoint."""
    sample_windows: int = 4
    """Windows that sample is spread over, from the value's first row to its last."""
    compare_slice_bytes: int = 16 << 20
    """Tied copies of a complete folder are compared whole (reshard.compare.same_bytes), in
    slices of at most this: two slices in memory at once."""
    claim_heartbeat_seconds: float = 15.0
    """How often each process of a run rewrites its heartbeat in the output's claims folder
    (reshard.claim): a PUT of a few bytes, far inside claim_stale_seconds."""
    claim_stale_seconds: float = 120.0
    """Another machine's process whose heartbeat is silent this long is gone, and its claim is
    taken over: eight missed heartbeats, more than a store's usual stall. Every run writing an
    output must use the same value."""
    claim_settle_seconds: float = 2.0
    """Object storage has no lock: from writing a claim to reading the others, the time a
    store takes to list what was just written."""
    claim_lock_seconds: float = 30.0
    """The local claim lock is held for a few file operations: a bound for waiting on it."""
    durable: bool = True
    """Each output fsynced before its rename (False where the local files only stage an upload:
    the store holds the ranks)."""
    release_downloads: bool = False
    """A source file downloaded by this run is removed as soon as every rank reading it is
    written (a cache the caller does not keep)."""
    log_dir: str | None = None
    """One log file per converting process, execute.LOG_NAME, where MindFormers' users look for
    them (None: none)."""

    def __post_init__(self) -> None:
        from .errors import ReshardError
        if self.process_num < 1:
            raise ReshardError(f"process_num {self.process_num}: must be at least 1")


DEFAULT = ReshardConfig()
