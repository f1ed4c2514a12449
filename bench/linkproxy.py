"""A link-shaping HTTP proxy on loopback: a node's network link to OBS, for benchmarks.

Why: on this machine the S3 server (moto, Python) and the job share two cores and a local disk,
so an unshaped run measures the server's CPU and the disk, not how well a job uses its link. A
ModelArts node talks to OBS over a link with a bandwidth per direction and a round trip per
request; this proxy stands between the job and the local server and imposes exactly that:

- one token bucket per direction, shared by every connection in that direction (the node's link,
  not a per-connection limit), each direction independent of the other (full duplex);
- a fixed latency before the first byte of every request is forwarded (a round trip per request).

It speaks just enough HTTP/1.1 to find request and response boundaries on kept-alive
connections (Content-Length and chunked bodies, `Expect: 100-continue` answered by the proxy as
any HTTP/1.1 proxy may), so it can also count what went through: every request is recorded with
its S3 operation (GET / PUT / HEAD / LIST / POST / DELETE), status and body bytes each way.
Everything else passes through unchanged (headers included, so signatures stay valid).

    with LinkProxy("http://127.0.0.1:9000", down_bps=100e6, up_bps=100e6, latency_s=0.005) as p:
        ...  # S3_ENDPOINT=p.endpoint
        p.totals()   # Totals(down_bytes, up_bytes, requests by operation)

`python bench/linkproxy.py UPSTREAM [--down-mbps N] [--up-mbps N] [--latency-ms N]` runs one
in the foreground and prints its endpoint.
"""
from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024          # bytes moved per bucket reservation
MB = 1_000_000             # link rates are decimal, as network links are sold


class TokenBucket:
    """A rate limit shared by every coroutine that takes from it (one event loop, no lock).

    Virtual-time reservation: each take(n) books n / rate seconds after the previous booking,
    never earlier than `burst` bytes' worth of time in the past (idle credit, capped), and sleeps
    until its booking ends. Bookings are served in arrival order, so connections share fairly."""

    def __init__(self, rate: float | None, burst: int = 256 * 1024):
        self.rate = rate
        self.burst = burst
        self._next = 0.0

    async def take(self, n: int) -> None:
        if not self.rate or n <= 0:
            return
        now = time.monotonic()
        start = max(self._next, now - self.burst / self.rate)
        self._next = start + n / self.rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


@dataclass
class Record:
    """One request as it crossed the link."""
    op: str              # GET (an object), LIST, PUT, HEAD, POST, DELETE
    method: str
    path: str            # with the query string
    status: int          # 0 until the answer's head arrived
    up_bytes: int        # request body, counted as it passes
    down_bytes: int      # response body, counted as it passes


@dataclass
class Totals:
    """What crossed the link since the last reset: bodies each way and requests by operation."""
    down_bytes: int = 0
    up_bytes: int = 0
    wire_down: int = 0   # everything sent to clients, headers included
    wire_up: int = 0     # everything sent to the server, headers included
    requests: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) or "none"
        return f"down {self.down_bytes:,} B, up {self.up_bytes:,} B; requests: {ops}"


def s3_operation(method: str, target: str) -> str:
    """The S3 operation class of a path-style request: a GET on a bucket (no key) is a LIST."""
    parts = urlsplit(target)
    _, _, key = unquote(parts.path).lstrip("/").partition("/")
    if method == "GET" and (not key or "list-type" in parse_qs(parts.query)):
        return "LIST"
    return method


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    out = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            out.append((k.strip(), v.strip()))
    return lines[0], out


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _build(first: str, headers: list[tuple[str, str]]) -> bytes:
    return (first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


class LinkProxy:
    """The shaping proxy, its asyncio loop in a daemon thread; a context manager."""

    def __init__(self, upstream: str, down_bps: float | None = None, up_bps: float | None = None,
                 latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname or "127.0.0.1", u.port or 80
        self.down = TokenBucket(down_bps)
        self.up = TokenBucket(up_bps)
        self.latency_s = latency_s
        self.records: list[Record] = []
        self._host, self._port = host, port
        self._wire = [0, 0]   # down, up
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="linkproxy")
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LinkProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self._host, self._port, limit=1 << 20), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://{self._host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------------ counters
    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self._wire = [0, 0]

    def totals(self) -> Totals:
        with self._lock:
            t = Totals(wire_down=self._wire[0], wire_up=self._wire[1])
            for r in self.records:
                t.down_bytes += r.down_bytes
                t.up_bytes += r.up_bytes
                t.requests[r.op] += 1
        return t

    # ------------------------------------------------------------------ relaying
    async def _send(self, writer: asyncio.StreamWriter, data: bytes, bucket: TokenBucket, way: int) -> None:
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            await bucket.take(len(piece))
            writer.write(piece)
            await writer.drain()
            with self._lock:
                self._wire[way] += len(piece)

    async def _body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    headers: list[tuple[str, str]], bucket: TokenBucket, way: int, to_eof: bool,
                    count: Callable[[int], None]) -> int:
        """Relay one message body (Content-Length, chunked, or until EOF); its payload bytes.
        `count` is told each piece's payload before the piece is passed on, so whoever has
        read a whole answer finds it counted."""
        if (_get(headers, "transfer-encoding") or "").lower().endswith("chunked"):
            total = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0], 16)
                data = line + (await reader.readexactly(size + 2) if size else b"")
                total += size
                count(size)
                if size == 0:   # trailers, then the blank line
                    while data[-4:] != b"\r\n\r\n" and line != b"\r\n":
                        line = await reader.readuntil(b"\r\n")
                        data += line
                    await self._send(writer, data, bucket, way)
                    return total
                await self._send(writer, data, bucket, way)
        length = _get(headers, "content-length")
        left = int(length) if length is not None else (-1 if to_eof else 0)
        total = 0
        while left != 0:
            data = await reader.read(CHUNK if left < 0 else min(CHUNK, left))
            if not data:
                if left > 0:
                    raise ConnectionError("body cut short")
                break
            total += len(data)
            count(len(data))
            left = left - len(data) if left > 0 else left
            await self._send(writer, data, bucket, way)
        return total

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        u_writer = None
        try:
            u_reader, u_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port,
                                                               limit=1 << 20)
            while True:
                try:
                    head = await c_reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return   # the client closed its kept-alive connection
                first, headers = _headers(head)
                method, target = first.split(" ", 2)[:2]
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)   # the request's first byte, a round trip late
                if (_get(headers, "expect") or "").lower() == "100-continue":
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                    c_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await c_writer.drain()
                record = Record(s3_operation(method, target), method, target, 0, 0, 0)
                with self._lock:
                    self.records.append(record)

                def count_up(n: int, r: Record = record) -> None:
                    r.up_bytes += n

                def count_down(n: int, r: Record = record) -> None:
                    r.down_bytes += n

                await self._send(u_writer, _build(first, headers), self.up, 1)
                await self._body(c_reader, u_writer, headers, self.up, 1, False, count_up)
                while True:   # interim 1xx answers pass through; the final one follows
                    r_head = await u_reader.readuntil(b"\r\n\r\n")
                    status_line, r_headers = _headers(r_head)
                    status = int(status_line.split(" ", 2)[1])
                    record.status = status
                    await self._send(c_writer, r_head, self.down, 0)
                    if status >= 200:
                        break
                no_body = method == "HEAD" or status in (204, 304)
                close = (_get(r_headers, "connection") or "").lower() == "close"
                if not no_body:
                    await self._body(u_reader, c_writer, r_headers, self.down, 0,
                                     _get(r_headers, "content-length") is None, count_down)
                if close or (_get(headers, "connection") or "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError,
                asyncio.CancelledError):   # a peer gone, or the proxy closing
            return
        finally:
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("upstream", help="the S3 server, e.g. http://127.0.0.1:9000")
    ap.add_argument("--down-mbps", type=float, default=100.0, help="MB/s server -> client (0: no cap)")
    ap.add_argument("--up-mbps", type=float, default=100.0, help="MB/s client -> server (0: no cap)")
    ap.add_argument("--latency-ms", type=float, default=5.0, help="delay before each request")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    with LinkProxy(a.upstream, a.down_mbps * MB or None, a.up_mbps * MB or None, a.latency_ms / 1000,
                   port=a.port) as proxy:
        print(proxy.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(proxy.totals().describe())


if __name__ == "__main__":
    main()
