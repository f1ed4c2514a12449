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
# every logger of the three tools: what their records say reaches consoles and uploaded log files
_SCRUBBED = WIRE_LOGGERS + ("obs_io", "reshard", "cloud_entry")
MASK = "***"
# SigV4's credential scope (`Credential=AKIA.../date/region/s3/aws4_request`, also URL-encoded
# as X-Amz-Credential=AKIA...%2F...), and the session token as a header, canonical-request line
# or query parameter, in any quoting botocore's reprs use.
_PATTERNS = (
    re.compile(r"(Credential=)[^/\s,'\"&%]+", re.IGNORECASE),
    re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,&}]+", re.IGNORECASE),
)

# Names of secrets, in configs, arguments, URL queries and free text (`--api_key=...`,
# `model.obs_token`, `X-Amz-Signature=`, `AWSAccessKeyId=`): a name holding one of the strong
# words, or ending in key / token / key id / ak / sk. Only values can tell MindFormers'
# tokenizer keys (`pad_token: '<pad>'`, `add_bos_token: True`) and dataset keys
# (`construct_args_key: [input_ids, labels]`) apart from secrets: see secret_value.
_STRONG = {"secret", "secrets", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
           "signature"}
_LAST = {"key", "token", "ak", "sk"}
# what a tokenizer's special token looks like: '<pad>', '</s>', '[MASK]', '<|endoftext|>'
_SPECIAL_TOKEN = re.compile(r"^(<[^<>\s]{1,40}>|\[[A-Za-z_]{1,20}\]|<\|[^|\s]{1,40}\|>)$")
_WORDS = re.compile(r"[a-z0-9]+")


def _words(name: str) -> list[str]:
    return _WORDS.findall(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())


def secret_name(name: str) -> str | None:
    """'strong' for a name that says secret (secret, password, credential, signature: everything
    under it is one), 'weak' for one ending in key, token, key id, ak or sk (its text and numbers
    are, unless they look like a tokenizer's special token or a flag), None otherwise."""
    words = _words(str(name))
    if any(w in _STRONG for w in words):
        return "strong"
    if words and (words[-1] in _LAST or words[-2:] == ["key", "id"]):
        return "weak"
    return None


def secret_value(name: str, value) -> bool:
    """Whether `value`, found under `name` (a config key, an argument's name, a query parameter),
    is to be masked: anything under a strong name; under a weak one, text or a number that is
    not a boolean, empty, or a tokenizer's special token ('<pad>'). Lists and mappings under a
    weak name are walked by their own keys (`construct_args_key: [input_ids, labels]` stays)."""
    kind = secret_name(name)
    if kind is None or value is None or value == "" or isinstance(value, bool):
        return False
    if kind == "strong":
        return True
    if not isinstance(value, (str, int, float)):
        return False
    text = str(value).strip()
    return not (_SPECIAL_TOKEN.match(text) or text.lower() in ("true", "false", "none", "null")
                or text[:1] in "[{")


# URL user info (`scheme://AK:SK@host`, `obs://AK:SK@bucket`), a secret query parameter
# (`?X-Amz-Signature=...&token=...`), and `name=value` / `name: value` / `--name value` of a
# secret name in free text (a logged command, a config diff, an error quoting an argument).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_QUERY = re.compile(r"([?&;])([^=&\s#'\"]+)=([^&\s#'\"]*)")
_ASSIGNED = re.compile(r"(?<![\w.-])((?:--?)?[A-Za-z_][\w.-]*)(=|: ?)(['\"]?)([^\s'\",&]+)")
_FLAG_VALUE = re.compile(r"(?<![\w.-])(--?[A-Za-z_][\w.-]*)( )(['\"]?)([^\s'\",&-][^\s'\",&]*)")


def mask_text(text: str) -> str:
    """`text` with URL user info, secret query parameters and secret `name=value` pairs masked
    (see secret_name, secret_value); secrets known by value are scrub()'s."""
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _QUERY.sub(lambda m: m.group(1) + m.group(2) + "=" + (
        MASK if m.group(3) and secret_name(m.group(2)) else m.group(3)), text)

    def assigned(m: re.Match) -> str:
        name, sep, quote, value = m.groups()
        if value.startswith(MASK) or not secret_value(name.lstrip("-").rsplit(".", 1)[-1], value):
            return m.group(0)
        return f"{name}{sep}{quote}{MASK}"
    return _FLAG_VALUE.sub(assigned, _ASSIGNED.sub(assigned, text))


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
    """`text` with every registered secret (and `extra` ones), every SigV4 credential and what
    mask_text finds (URL user info, secret query parameters and name=value pairs) masked."""
    with _lock:
        secrets = set(_secrets)
    secrets.update(s for s in extra if s and len(s) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a key inside a token
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return mask_text(text)


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
