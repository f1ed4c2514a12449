"""boto3 clients and transfer settings, built in one place from an S3Config.

Timeouts live here, retries in retry.py (installed on every client here), and nowhere else, so
that a call against a store that is down ends within S3Config.worst_case_seconds() (160 s by
default) and a command within its stall deadline (retry.py):

- every request: retry.py's handler in place of botocore's, throttled answers (503, 429)
  retried apart from errors for as long as the operation's bound allows, errors
  (500/502/504, RequestTimeout, dropped and refused connections, timeouts) max_attempts tries
  in all (S3_MAX_ATTEMPTS), each bounded by connect_timeout (S3_CONNECT_TIMEOUT) and
  read_timeout (S3_READ_TIMEOUT: the longest silence while waiting for the answer or for the
  next bytes of a body), with exponential back-off;
- a body that breaks off after the headers came (truncated, reset, silent for read_timeout):
  fetched again by s3transfer (num_download_attempts) and by read_object() below, max_attempts
  times in all;
- never both: a GetObject that botocore already gave up on is re-raised as RequestGaveUp
  (_final), which s3transfer does not retry, so its tries do not multiply botocore's (with the
  former 120 s read timeout and 10 attempts a stalled request took 20 minutes, and s3transfer
  started that over up to 10 times).
"""
from __future__ import annotations

import base64
import hashlib
import threading

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from . import redact, retry
from .config import S3Config
from .errors import RequestGaveUp

MAX_THREADS = 64  # connection pool size, so a transfer's threads never wait for a socket

_clients: dict[S3Config, object] = {}
_clients_lock = threading.Lock()


def signs_payload(cfg: S3Config) -> bool:
    """Whether upload bodies are SHA256-hashed into the SigV4 signature.

    With checksums `when_required` (OBS rejects botocore's CRC32 trailers), botocore would
    SHA256 every upload body: a full extra pass over each byte on the client's CPU (~1.1 GB/s
    here, against ~2.7 GB/s for the CRC32 the AWS default sends). What that pass buys is an
    end-to-end check the server applies to the body. Over HTTPS, TLS already authenticates every
    byte in transit, so the body goes as UNSIGNED-PAYLOAD, as AWS SDKs do over TLS. Over plain
    HTTP nothing else protects the body, and the signed SHA256 is the cheapest check OBS accepts
    (Content-MD5 checks the same thing at ~470 MB/s), so it stays. Downloads are checked by us
    either way (size, and the MD5 or checksum the object has: transfer.verify). `sign_payload`
    (S3_SIGN_PAYLOAD) forces either choice, e.g. for a server that refuses unsigned payloads.
    """
    if cfg.sign_payload is not None:
        return cfg.sign_payload
    return not (cfg.endpoint or "https://").lower().startswith("https://")


def botocore_config(cfg: S3Config, max_pool_connections: int = MAX_THREADS) -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": cfg.addressing_style, "payload_signing_enabled": signs_payload(cfg)},
        retries={"mode": cfg.retry_mode, "total_max_attempts": cfg.max_attempts},
        # OBS rejects botocore's default CRC32 checksum headers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        max_pool_connections=max_pool_connections,
        tcp_keepalive=True,
    )


def _content_md5_instead_of_crc32(request, **kwargs) -> None:
    """DeleteObjects must carry a checksum; botocore >= 1.36 sends CRC32, which OBS (and other
    S3-compatible servers) reject. Send the classic Content-MD5 instead."""
    for name in [h for h in request.headers if h.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))]:
        del request.headers[name]
    body = request.body if isinstance(request.body, (bytes, bytearray)) else None
    if body is not None and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def _final(exception: BaseException, **kwargs) -> None:
    """A GetObject that failed after botocore's retries (which happen inside the call): raise
    it as RequestGaveUp, outside the errors s3transfer and read_object fetch a body again on,
    so a stalled server costs one series of tries, not one per re-read. A body that breaks
    off later is raised by its read, after the call returned, and is still fetched again."""
    if isinstance(exception, S3_RETRYABLE_DOWNLOAD_ERRORS):
        raise RequestGaveUp(exception) from exception


def get_client(cfg: S3Config):
    """A client per configuration, shared by all threads (botocore clients are thread-safe,
    sessions are not, hence the lock around creation)."""
    client = _clients.get(cfg)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(cfg)
        if client is None:
            redact.register(cfg.access_key, cfg.secret_key, cfg.session_token)
            redact.protect_logs()  # before the session: it logs at DEBUG too
            session = boto3.session.Session()
            client = session.client(
                "s3", endpoint_url=cfg.endpoint, region_name=cfg.region,
                aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key,
                aws_session_token=cfg.session_token, verify=cfg.verify_ssl,
                config=botocore_config(cfg),
            )
            client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5_instead_of_crc32)
            client.meta.events.register("after-call-error.s3.GetObject", _final)
            retry.install(client)   # throttling apart from errors, one stall deadline per command
            _clients[cfg] = client
        return client


def transfer_config(cfg: S3Config, size: int, threads: int, download: bool = False) -> TransferConfig:
    """Managed-transfer settings for a file of `size` bytes (the largest, for a batch)."""
    part = cfg.range_size(size, threads) if download else cfg.part_size(size)
    return TransferConfig(
        multipart_threshold=cfg.multipart_threshold,
        multipart_chunksize=part,
        max_concurrency=min(max(1, threads), MAX_THREADS),
        max_io_queue=1000,
        io_chunksize=256 * 1024,
        use_threads=True,
        num_download_attempts=cfg.max_attempts,
        # Force the classic s3transfer path even where awscrt is installed: same retries, same
        # tests, same behaviour on OBS.
        preferred_transfer_client="classic",
    )


def read_object(cfg: S3Config, bucket: str, key: str, **params) -> tuple[bytes, dict]:
    """One GetObject read whole: (body, the response without its Body, for its headers).

    botocore retries a request that fails before its response arrives, but not a body that
    breaks off mid-stream after the headers came: that is fetched again here, up to
    max_attempts times in all, on the errors s3transfer retries for the same reason. A request
    botocore gave up on raises RequestGaveUp (_final), which is not fetched again. `params`
    go to GetObject (Range, IfMatch, ...). Callers translate errors (errors.translating).
    """
    attempt = 1
    while True:
        try:
            response = get_client(cfg).get_object(Bucket=bucket, Key=key, **params)
            return response.pop("Body").read(), response
        except S3_RETRYABLE_DOWNLOAD_ERRORS:
            if attempt >= cfg.max_attempts or not retry.body_failed():
                raise
            attempt += 1
