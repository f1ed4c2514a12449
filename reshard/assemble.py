"""Assembling destination tensors in the two halves of the process's assembly buffer, in turn.

A tensor is assembled in axis-0 chunks of about ReshardConfig.pipe_chunk_bytes: while the source readers fill one
half of the buffer, the writer's threads CRC-sum and write the chunk in the other
(CheckpointWriter.send), so reading, summing and writing each keep a core busy instead of
taking turns. Chunks this small also keep the pipeline full across tensors and ranks: the
next tensor's first chunk is read while the last one of this tensor is still being written.

Memory: the buffer is the one execute._assembly_buffer sizes for the rank (its largest tensor
or chunk), no second one: only the pipe_chunk_bytes chunks of its two halves are ever touched, so a
rank's resident cost is at most what the plan counts for it (rank_cost), usually far less. A
chunk that does not fit in half of the buffer (a row longer than half of it) takes the whole
buffer, once both halves are written.

One converting thread per process, as the process-wide buffer already assumes: the halves'
state is per process.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reshard.config import DEFAULT, ReshardConfig
from reshard.formats import CheckpointReader, CheckpointWriter, TensorMeta
from reshard.plan import TensorPlan
_ALIGN = 64   # the second half starts on a cache line


@dataclass
class Halves:
    """Which writer still holds each half of the buffer, up to which of its tickets. The
    holder may be another rank's writer, being committed while the next rank assembles."""
    sent: list[tuple[CheckpointWriter, int] | None] = field(default_factory=lambda: [None, None])
    turn: int = 0

    def take(self, buf: np.ndarray, nbytes: int) -> tuple[np.ndarray, int | None]:
        """The next half (or, for a chunk larger than a half, the whole buffer: turn None),
        once the chunk last sent from it is consumed: its first nbytes bytes."""
        half = (buf.nbytes // 2) // _ALIGN * _ALIGN
        if nbytes <= half:
            turn, self.turn = self.turn, self.turn ^ 1
            self._release(turn)
            return buf[turn * half:turn * half + nbytes], turn
        self._release(0)
        self._release(1)
        return buf[:nbytes], None

    def sent_from(self, turn: int | None, writer: CheckpointWriter, ticket: int) -> None:
        for i in ((0, 1) if turn is None else (turn,)):
            self.sent[i] = (writer, ticket)

    def _release(self, i: int) -> None:
        if self.sent[i] is not None:
            writer, ticket = self.sent[i]
            self.sent[i] = None
            writer.wait(ticket)


_halves = Halves()


def chunk_rows(t: TensorPlan, meta: TensorMeta, buf: np.ndarray, config: ReshardConfig = DEFAULT) -> int:
    """Axis-0 rows per chunk: about config.pipe_chunk_bytes, at most the plan's chunk
    (t.chunk_rows(), the most its buffer holds) and, when a row allows, at most half of the
    buffer."""
    row_bytes = meta.nbytes // meta.shape[0] if meta.shape[0] else 0
    if row_bytes == 0:
        return max(1, meta.shape[0])
    rows = min(t.chunk_rows(), max(1, config.pipe_chunk_bytes // row_bytes))
    half_rows = (buf.nbytes // 2) // _ALIGN * _ALIGN // row_bytes
    return max(1, min(rows, half_rows)) if half_rows else rows


def assemble_and_write(t: TensorPlan, meta: TensorMeta, buf: np.ndarray,
                       readers: dict[str, CheckpointReader], writer: CheckpointWriter,
                       config: ReshardConfig = DEFAULT) -> None:
    """Assemble tensor plan `t` (its pieces, read by `readers`: source file -> reader) chunk
    by chunk in the halves of `buf` and send each chunk to `writer`; returns with the last
    chunk possibly still being written (the next take() of its half waits for it)."""
    storage = meta.storage
    if not meta.shape:
        raw, turn = _halves.take(buf, meta.itemsize)
        view = raw.view(storage).reshape(())
        readers[t.pieces[0].src_file].read(t.name, (), out=view)
        _halves.sent_from(turn, writer, writer.send(t.name, view))
        return
    rows = chunk_rows(t, meta, buf, config)
    row_bytes = meta.nbytes // meta.shape[0] if meta.shape[0] else 0
    for r0 in range(0, meta.shape[0], rows):
        r1 = min(meta.shape[0], r0 + rows)
        raw, turn = _halves.take(buf, (r1 - r0) * row_bytes)
        view = raw.view(storage).reshape((r1 - r0,) + meta.shape[1:])
        for p in t.pieces:
            (a, b), (sa, _) = p.dst_region[0], p.src_region[0]
            lo, hi = max(a, r0), min(b, r1)
            if lo >= hi:
                continue
            src_region = ((sa + lo - a, sa + hi - a),) + p.src_region[1:]
            dst = (slice(lo - r0, hi - r0),) + tuple(slice(x, y) for x, y in p.dst_region[1:])
            readers[p.src_file].read(t.name, src_region, out=view[dst])
        _halves.sent_from(turn, writer, writer.send(t.name, view))
