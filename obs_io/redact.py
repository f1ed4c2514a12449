"""Keep access keys, secrets and session tokens out of every message and log line.

botocore logs each request at DEBUG: its headers (Authorization names the access key id,
X-Amz-Security-Token is the session token), the canonical request it signs (the token again),
and urllib3 logs the URLs it fetches (a presigned one carries both). A script that turns on
`logging.basicConfig(level=logging.DEBUG)` to see its own debug lines must not get those. Two
measures, both installed by protect_logs() when obs_io builds a client:

- the wire loggers (botocore, boto3, s3transfer, urllib3) are held at INFO unless the user set
  their level, or asked for the wire log with OBS_IO_WIRE_LOG=1;
- every record those loggers (and obs_io's) create is scrubbed, wire log or not: the secrets of
  every configuration a client was built for, and the places where SigV4 puts credentials
  (`Credential=<key id>/...`, `X-Amz-Security-Token: ...`), are replaced by `***`. A record
  factory does it, not a filter: a filter on `botocore` would not see records of
  `botocore.endpoint`, and loggers created later would miss it.

Standard library only.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import quote

WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
_SCRUBBED = WIRE_LOGGERS + ("obs_io",)
MASK = "***"
# SigV4's credential scope (`Credential=AKIA.../date/region/s3/aws4_request`, also URL-encoded
# as X-Amz-Credential=AKIA...%2F...), and the session token as a header, canonical-request line
# or query parameter, in any quoting botocore's reprs use.
_PATTERNS = (
    re.compile(r"(Credential=)[^/\s,'\"&%]+", re.IGNORECASE),
    re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,&}]+", re.IGNORECASE),
)

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False
_quieted: set[str] = set()  # wire loggers whose level we set, so OBS_IO_WIRE_LOG=1 can undo it


def register(*secrets: str | None) -> None:
    """Remember secrets to mask from now on (also URL-encoded, as a presigned URL has them).
    Values shorter than 4 characters are not masked: they would mangle ordinary text."""
    with _lock:
        for secret in secrets:
            if secret and len(secret) >= 4:
                _secrets.update({secret, quote(secret, safe="")})


def scrub(text: str, extra: tuple[str | None, ...] = ()) -> str:
    """`text` with every registered secret (and `extra` ones) and every SigV4 credential masked."""
    with _lock:
        secrets = set(_secrets)
    secrets.update(s for s in extra if s and len(s) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a key inside a token
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def _scrubbing_factory(previous):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.split(".", 1)[0] in _SCRUBBED:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a record that cannot format is logging's to report
                return record
            clean = scrub(text)
            if clean != text:
                record.msg, record.args = clean, None
        return record

    factory.__obs_io_scrubbing__ = True
    return factory


def protect_logs() -> None:
    """Install the record scrubbing (once per process) and set the wire loggers' levels for the
    current OBS_IO_WIRE_LOG: INFO when it is off (only for loggers whose level nobody set),
    back to NOTSET when it is on."""
    global _installed
    with _lock:
        if not _installed:
            current = logging.getLogRecordFactory()
            if not getattr(current, "__obs_io_scrubbing__", False):
                logging.setLogRecordFactory(_scrubbing_factory(current))
            _installed = True
        wire = os.environ.get("OBS_IO_WIRE_LOG", "").strip().lower() in ("1", "true", "yes", "on")
        for name in WIRE_LOGGERS:
            logger = logging.getLogger(name)
            if wire and name in _quieted:
                logger.setLevel(logging.NOTSET)
                _quieted.discard(name)
            elif not wire and logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
                _quieted.add(name)
