"""bench/linkproxy.py shapes like a node's link: a cap per direction shared by all connections,
directions independent, a latency per request, and counts bodies and operations exactly.

A plain threaded HTTP server on loopback is the upstream (fast, no moto), so the proxy's own
shaping is what the timings show. Each case moves a few MiB at a few MB/s: seconds, not minutes.
A cap is a floor on the time (nothing on a busy machine makes a capped transfer faster); what must
not be slower is shown by a ratio to a run in the same test, never by a fixed number of seconds.
"""
from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.linkproxy import MB, LinkProxy, s3_operation  # noqa: E402

BLOB = os.urandom(4 * MB)


class _Upstream(BaseHTTPRequestHandler):
    """GET /bucket/<n> -> n bytes of BLOB; PUT -> reads the body, answers its length."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # head and body written apart must not wait for a delayed ACK

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        n = int(urlsplit(self.path).path.rsplit("/", 1)[1] or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(BLOB[:n])

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "123")
        self.end_headers()

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = str(len(body)).encode() if body == BLOB[:len(body)] else b"corrupt"
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _conn(proxy: LinkProxy) -> http.client.HTTPConnection:
    u = urlsplit(proxy.endpoint)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def _get(proxy: LinkProxy, n: int, times: int = 1) -> None:
    conn = _conn(proxy)   # one kept-alive connection for all `times` requests
    for _ in range(times):
        conn.request("GET", f"/bucket/{n}")
        resp = conn.getresponse()
        assert resp.read() == BLOB[:n]
    conn.close()


def _put(proxy: LinkProxy, n: int, expect: bool = False) -> None:
    conn = _conn(proxy)
    headers = {"Content-Length": str(n)}
    if expect:
        headers["Expect"] = "100-continue"
    conn.request("PUT", "/bucket/key", body=BLOB[:n], headers=headers)
    assert conn.getresponse().read() == str(n).encode()
    conn.close()


def _timed(*jobs) -> float:
    threads = [threading.Thread(target=f, args=a) for f, *a in jobs]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def test_download_cap_is_shared_by_all_connections(upstream):
    with LinkProxy(upstream, down_bps=8 * MB) as proxy:
        one = _timed((_get, proxy, 4 * MB))                              # 0.5 s at 8 MB/s
        two = _timed((_get, proxy, 4 * MB), (_get, proxy, 4 * MB))       # 8 MB over one link: 1 s
        totals = proxy.totals()
    assert one >= 0.45, one          # the cap holds for one connection
    assert two >= 0.9, two           # and for two together (not 8 MB/s each)
    assert two <= 3 * one, (one, two)  # shared, not serialized behind a stall
    assert totals.down_bytes == 12 * MB and totals.up_bytes == 0
    assert totals.requests == {"GET": 3}


def test_directions_are_capped_independently(upstream):
    """Upload at 2 MB/s beside a download at 8 MB/s: neither waits for the other (2 MB up and
    8 MB down take 1 s each: together 1 s, serialized 2 s)."""
    with LinkProxy(upstream, down_bps=8 * MB, up_bps=2 * MB) as proxy:
        up_alone = _timed((_put, proxy, 2 * MB))                          # 1 s
        down_alone = _timed((_get, proxy, 4 * MB, 2))                    # 1 s
        both = _timed((_put, proxy, 2 * MB), (_get, proxy, 4 * MB, 2))   # still 1 s, not 2
        totals = proxy.totals()
    # a cap lets a first burst through (the proxy's bucket), hence 0.8 s for 1 s of bytes
    assert min(up_alone, down_alone, both) >= 0.8, (up_alone, down_alone, both)
    assert both <= 0.75 * (up_alone + down_alone), (up_alone, down_alone, both)
    assert totals.up_bytes == 4 * MB and totals.down_bytes == 16 * MB + 2 * len(str(2 * MB))
    assert totals.requests == {"PUT": 2, "GET": 4}


def test_latency_per_request_and_operations_counted(upstream):
    """Each request waits the latency once, kept-alive or not; HEAD, LIST, Expect pass through."""
    with LinkProxy(upstream, latency_s=0.05) as proxy:
        t = _timed((_get, proxy, 1000, 10))   # 10 requests on one connection: >= 0.5 s
        conn = _conn(proxy)
        conn.request("HEAD", "/bucket/key")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.request("GET", "/bucket/?list-type=2&prefix=x")
        conn.getresponse().read()
        conn.close()
        _put(proxy, 300_000, expect=True)   # the proxy answers 100 Continue itself
        totals = proxy.totals()
    assert t >= 0.5, t
    assert totals.requests == {"GET": 10, "HEAD": 1, "LIST": 1, "PUT": 1}
    assert totals.down_bytes == 10 * 1000 + len(b"300000") and totals.up_bytes == 300_000
    with LinkProxy(upstream) as fast:   # no latency, no cap: the same ten in well under that
        quick = _timed((_get, fast, 1000, 10))
    assert quick <= 0.6 * t, (quick, t)


def test_s3_operation():
    assert s3_operation("GET", "/b/k/x.ckpt") == "GET"
    assert s3_operation("GET", "/b?list-type=2&prefix=a%2F") == "LIST"
    assert s3_operation("GET", "/b/") == "LIST"
    assert s3_operation("PUT", "/b/k?partNumber=1&uploadId=u") == "PUT"
