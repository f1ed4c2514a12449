"""A small HTTP proxy on loopback between obs_io and the moto server, for tests.

It records every request (method, path, Range, status, response body size) so tests can count
what was fetched, and injects faults: 503 SlowDown answers and dropped connections for a share
of requests, 500 InternalError for a share (error500), and, for a test of timeouts, a stall:
requests that are read and never answered (stall); requests held until the test lets them go
(hold, release), to keep one of two runs at a known point without timing; a burst of throttling
(503 SlowDown and 429 in turn) for a given time (burst); a store that does the work and loses its
answer (lost_answer: forwarded, then answered with an error or a dropped connection; hold_answer:
forwarded, the answer never sent). The choice is a hash of (seed, request, how often this
request was seen), so a run is reproducible whatever the thread interleaving, and a request is
faulted at most `max_faults` times in a row, so a client with retries always gets through.
"""
from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import socket
import ssl
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN_XML = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b'<Message>Please reduce your request rate.</Message></Error>')
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade", "expect", "content-length"}


@dataclass
class Record:
    method: str
    path: str            # with query string
    range: str | None
    status: int          # 0 for a dropped connection, -1 for a stalled request
    body_bytes: int      # response body bytes sent to the client
    headers: dict        # request headers, lower-case names
    at: float = 0.0      # time.monotonic() when it was recorded


def _self_signed(cert_path: str, key_path: str) -> None:
    """A throw-away certificate for 127.0.0.1 (cryptography comes with moto)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def error_xml(code: str, message: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f'<Message>{message or code}</Message></Error>').encode()


class FaultProxy:
    """Start with `with FaultProxy(upstream, ...) as proxy:`; point S3_ENDPOINT at proxy.endpoint.

    rules: callables (method, path) -> (status, error code) or None, checked before faults; a
    deterministic way to make one kind of request fail (e.g. every UploadPart with 403).
    corrupt: callable (method, path) -> bool; damages matching response bodies in flight.
    tls: serve HTTPS with a fresh self-signed certificate for 127.0.0.1 (clients must not verify
    it: S3_VERIFY_SSL=0), so code paths that depend on the scheme run over real TLS.
    """

    def __init__(self, upstream: str, seed: int = 0, slowdown: float = 0.0, drop: float = 0.0,
                 max_faults: int = 2, tls: bool = False, error500: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.seed, self.slowdown, self.drop, self.max_faults = seed, slowdown, drop, max_faults
        self.error500 = error500
        self.stall = None  # callable (method, path) -> bool: read the request, never answer it
        self.hold = None   # callable (method, path) -> bool: held until release(), then answered
        self._released = threading.Event()
        self._burst: tuple | None = None   # (seconds, match, started at or None): see burst()
        self._closing = threading.Event()  # set on exit: stalled handlers end
        self.records: list[Record] = []
        self.rules: list = []
        self.corrupt = None  # callable (method, path) -> bool: flip the first body byte if true
        self.truncate = None  # callable (method, path) -> bool: send half the body, then hang up
        # callable (method, path) -> (status, error code) | "drop" | None: the request is forwarded
        # (the store does the work), then this is answered instead: a store that lost its answer
        self.lost_answer = None
        # callable (method, path) -> bool: forwarded (the store does the work), the answer held
        # until exit, as `stall` holds requests that are never forwarded
        self.hold_answer = None
        self._seen: Counter = Counter()
        self._connections: set = set()  # open client sockets, closed on exit
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as d:
                cert, key = f"{d}/cert.pem", f"{d}/key.pem"
                _self_signed(cert, key)
                context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        # Kill kept-alive connections too: a cached boto3 client of a later test whose proxy
        # got the same port must not keep talking to this (dead) proxy's handler threads.
        with self._lock:
            for sock in self._connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def burst(self, seconds: float, match=lambda method, path: True) -> None:
        """Throttle for `seconds` from the first request that `match`es: every matching request
        meanwhile is answered 503 SlowDown or 429 TooManyRequests, in turn (status 503 / 429
        in the records)."""
        self._burst = (seconds, match, None)

    def _bursting(self, method: str, path: str) -> int | None:
        """The status to answer with while the burst lasts, else None."""
        if self._burst is None:
            return None
        seconds, match, started = self._burst
        if not match(method, path):
            return None
        with self._lock:
            if started is None:
                started = time.monotonic()
                self._burst = (seconds, match, started)
            if time.monotonic() - started >= seconds:
                return None
            n = sum(1 for r in self.records if r.status in (429, 503))
        return 503 if n % 2 == 0 else 429

    def release(self) -> None:
        """Let the requests `hold` keeps waiting go on (and every later one through)."""
        self._released.set()

    def faults(self) -> Counter:
        """How many 503s and drops were injected (status 503 / 0)."""
        with self._lock:
            return Counter(r.status for r in self.records if r.status in (0, 503))

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self._seen[(method, path)] += 1
            n = self._seen[(method, path)]
        if n > self.max_faults:
            return None
        digest = hashlib.sha256(f"{self.seed}|{method}|{path}|{n}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < self.slowdown:
            return "slowdown"
        if u < self.slowdown + self.drop:
            return "drop"
        if u < self.slowdown + self.drop + self.error500:
            return "error500"
        return None

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def _record(self, status: int, nbytes: int) -> None:
                with proxy._lock:
                    proxy.records.append(Record(self.command, self.path, self.headers.get("Range"),
                                                status, nbytes,
                                                {k.lower(): v for k, v in self.headers.items()},
                                                time.monotonic()))

            def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                # recorded before the client can have its answer: a test that checks the records
                # right after a call returns sees every request of it
                self._record(status, 0 if self.command == "HEAD" else len(body))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _hang_up(self) -> None:
                """Close the connection without an answer (recorded with status 0)."""
                self._record(0, 0)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _never_answer(self) -> None:
                """Never answer (recorded with status -1): the client gives up, or the proxy exits."""
                self._record(-1, 0)
                proxy._closing.wait()
                self.close_connection = True

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                for rule in proxy.rules:
                    hit = rule(self.command, self.path)
                    if hit:
                        status, code = hit
                        self._send(status, error_xml(code), [("Content-Type", "application/xml")])
                        return
                if proxy.hold is not None and not proxy._released.is_set() and proxy.hold(self.command, self.path):
                    while not (proxy._released.wait(0.1) or proxy._closing.is_set()):
                        pass
                if proxy.stall is not None and proxy.stall(self.command, self.path):
                    self._never_answer()
                    return
                throttled = proxy._bursting(self.command, self.path)
                if throttled == 503:
                    self._send(503, SLOWDOWN_XML, [("Content-Type", "application/xml")])
                    return
                if throttled == 429:
                    self._send(429, error_xml("TooManyRequests", "Too many requests."),
                               [("Content-Type", "application/xml")])
                    return
                fault = proxy._decide(self.command, self.path)
                if fault == "error500":
                    self._send(500, error_xml("InternalError", "We encountered an internal error."),
                               [("Content-Type", "application/xml")])
                    return
                if fault == "slowdown":
                    self._send(503, SLOWDOWN_XML, [("Content-Type", "application/xml")])
                    return
                if fault == "drop":
                    self._hang_up()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Host"] = proxy.upstream.netloc
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                finally:
                    conn.close()
                if proxy.hold_answer is not None and proxy.hold_answer(self.command, self.path):
                    self._never_answer()
                    return
                lost = proxy.lost_answer(self.command, self.path) if proxy.lost_answer is not None else None
                if lost == "drop":
                    self._hang_up()
                    return
                if lost:
                    status, code = lost
                    self._send(status, error_xml(code), [("Content-Type", "application/xml")])
                    return
                if self.command == "HEAD":
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length":
                            self.send_header(k, v)
                    self._record(resp.status, 0)
                    self.end_headers()
                    return
                if data and proxy.corrupt is not None and proxy.corrupt(self.command, self.path):
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if data and proxy.truncate is not None and proxy.truncate(self.command, self.path):
                    self._send_truncated(resp.status, data, out)
                    return
                self._send(resp.status, data, out)

            def _send_truncated(self, status: int, body: bytes, headers) -> None:
                """The full Content-Length, half the bytes, a closed connection: a body that
                breaks off mid-stream."""
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self._record(status, len(body) // 2)
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
