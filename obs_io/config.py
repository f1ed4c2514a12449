"""Where obs_io's settings come from: the environment ModelArts images set, overridden by set_auth.

One frozen dataclass holds everything a client and a transfer need (the s3transfer habit), so a
client can be cached per configuration and two threads never see a half-applied change.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MiB = 1024 * 1024

# First name wins. ModelArts images use the bare names; the AWS_* ones are what every other
# S3 tool reads, and MindFormers looks at S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY.
_ENDPOINT_VARS = ("S3_ENDPOINT", "OBS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_ACCESS_KEY_VARS = ("ACCESS_KEY_ID", "S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
_SECRET_KEY_VARS = ("SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
_TOKEN_VARS = ("SESSION_TOKEN", "SECURITY_TOKEN", "AWS_SESSION_TOKEN")
_HUAWEI_ENDPOINT = re.compile(r"(^|\.)obs\.([a-z0-9-]+)\.myhuaweicloud\.com$")

# Defaults of the failure bound. A server that accepts connections and never answers costs a
# request max_attempts x (connect + read timeout) plus botocore's back-off between tries:
# 5 x (5 + 20) + 35 = 160 s (worst_case_seconds), under the 3 minutes a user may wait for
# "storage is down" (botocore's own defaults, 60 s read timeout and the 10 attempts obs_io had,
# multiplied by s3transfer's re-reads, made that about 20 minutes). 20 s of silence is far
# beyond a healthy OBS's first byte; raise S3_READ_TIMEOUT for a server known to think longer.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 20.0
DEFAULT_MAX_ATTEMPTS = 5
# One bound per command for a store that stopped answering, or only throttles or fails: from
# the first failure since it last answered well (retry.py). With the try in flight and one to
# publish the failure, a command ends within about 3 minutes of the store's last good answer.
DEFAULT_STALL_DEADLINE = 120.0
DEFAULT_READ_PART_MIB = 16
# botocore's standard retry mode: before retry i (1-based) it sleeps rand(0, 1) x min(2**(i-1),
# 20) s for throttling (1 s base scale; 50 ms for other errors), plus up to 5 s more when the
# answer carries x-amz-retry-after. The bound assumes the worst of both.
_BACKOFF_MAX, _RETRY_AFTER_EXTRA = 20.0, 5.0


@dataclass(frozen=True)
class S3Config:
    """Everything needed to talk to one object store. Hashable: clients are cached per value.

    Secrets are excluded from repr() and from comparisons' printed forms; never log asdict(self).
    Timeouts and retries are applied in one place (client.py; see worst_case_seconds).

    Attributes:
        endpoint: full URL with scheme, e.g. https://obs.cn-north-4.myhuaweicloud.com.
        access_key: the access key (not in repr).
        secret_key: the secret key (not in repr).
        session_token: temporary credentials' token (not in repr).
        region: the signing region.
        addressing_style: "virtual" or "path".
        list_objects_v1: list with ListObjects: parallel-file-system buckets have no
            ListObjectsV2.
        list_max_keys: keys per listing page (moxing's set_auth list_max_keys).
        verify_ssl: check the server's certificate.
        retry_mode: botocore's mode; its handler is replaced by retry.py's on every client.
        max_attempts: S3_MAX_ATTEMPTS: tries per request, the first included.
        connect_timeout: S3_CONNECT_TIMEOUT: seconds to open a connection.
        read_timeout: S3_READ_TIMEOUT: seconds the server may stay silent.
        stall_deadline: S3_STALL_DEADLINE: seconds a command keeps retrying (retry.py).
        multipart_threshold: S3_MULTIPART_THRESHOLD, bytes: below this a file goes in one
            request.
        min_part_size: bytes; S3 needs >= 5 MiB parts (OBS 100 KB); s3transfer enforces 5 MiB.
        max_parts: parts of one multipart upload at most.
        read_part_bytes: S3_READ_PART_MIB: the size of every ranged GET a large read is cut
            into, whichever reads: obs_io's downloads (range_size), a source file fetched
            while the conversion reads it, a source read in place. Larger: fewer requests
            (billed per request on OBS; a store whose GETs cost more for a bigger object, such
            as moto, reads it whole for each); smaller: a file fetched in order grows in finer
            steps, and less memory holds the bodies in flight.
        verify_md5: off for a server whose ETags are not MD5s and that does not say so
            (SSE-KMS/SSE-C headers are: transfer.etag_is_md5).
        sign_payload: SHA256 of upload bodies in the signature; None: only over plain http.
    """

    endpoint: str | None = None
    access_key: str | None = dataclasses.field(default=None, repr=False)
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    region: str = "us-east-1"
    addressing_style: str = "path"
    list_objects_v1: bool = False
    list_max_keys: int = 1000
    verify_ssl: bool = True
    retry_mode: str = "standard"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    stall_deadline: float = DEFAULT_STALL_DEADLINE
    multipart_threshold: int = 64 * MiB
    min_part_size: int = 8 * MiB
    max_parts: int = 10_000
    read_part_bytes: int = DEFAULT_READ_PART_MIB * MiB
    verify_md5: bool = True
    sign_payload: bool | None = None

    def worst_case_seconds(self) -> float:
        """How long one request may take to fail when every try times out: each try waits at
        most connect_timeout + read_timeout, and the back-off before retry i is at most
        min(2**(i-1), 20) + 5 s. Bodies that break off are fetched again at most max_attempts
        times (client.read_object, s3transfer), but a request given up on is never retried on
        top (client.py), so this bounds a call against a stalled server; a command's calls
        together are bounded by stall_deadline (retry.py)."""
        backoff = sum(min(2.0 ** (i - 1), _BACKOFF_MAX) + _RETRY_AFTER_EXTRA for i in range(1, self.max_attempts))
        return self.max_attempts * (self.connect_timeout + self.read_timeout) + backoff

    def __repr__(self) -> str:  # explicit so a future field can never leak a secret by default
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return f"S3Config({shown}, credentials={'set' if self.access_key else 'unset'})"

    def range_size(self, size: int, threads: int) -> int:
        """Ranged-GET size for downloading `size` bytes on `threads` threads: about one range
        per thread, at least part_size, at most read_part_bytes (the one setting of every
        ranged read). Fewer, larger GETs keep every thread busy all the same, and cost fewer
        requests (billed per request on OBS) and less server time where each request has a
        fixed cost. Uploads keep part_size: s3transfer holds each part being uploaded in
        memory."""
        per_thread = -(-size // max(1, threads))
        return min(self.read_part_bytes, max(self.part_size(size), -(-per_thread // MiB) * MiB))

    def part_size(self, size: int) -> int:
        """Part size for a file of `size` bytes: the minimum, grown so the file fits in max_parts."""
        needed = -(-size // self.max_parts)  # ceil
        part = max(self.min_part_size, needed)
        return -(-part // MiB) * MiB          # whole MiB, so parts stay aligned and readable in logs


def _first(names: tuple[str, ...]) -> str | None:
    return _first_named(names)[1]


def _first_named(names: tuple[str, ...]) -> tuple[str, str | None]:
    """(the variable that is set, its value), or (the first name, None)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return name, value
    return names[0], None


def _positive(name: str, kind: type, default: float) -> float:
    """A number > 0 from the environment; anything else is an error naming the variable (a
    typo must not silently mean "wait forever" or "never retry")."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = kind(value.strip())
    except ValueError:
        number = 0
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name}={value!r}: expected {'a whole number' if kind is int else 'seconds'} > 0")
    return number


def _flag(name: str, default: bool) -> bool:
    """A boolean environment variable; a value that is neither true nor false is an error, not
    False (S3_VERIFY_SSL=ture must not turn certificate checks off)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected true/false, 1/0, yes/no or on/off")


def strip_userinfo(url: str) -> str:
    """The URL without `user:password@`: what may be shown of an endpoint."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _endpoint_url(server: str | None, port: int | None, is_secure: bool, source: str = "S3_ENDPOINT") -> str | None:
    """ModelArts gives 'obs.cn-north-4.myhuaweicloud.com' without a scheme; boto3 wants a URL.

    An endpoint with user info (`http://AK:SK@host`) is refused, naming it without the user
    info: keys in a URL end up in process listings, shell histories and logs, and botocore
    would not use them anyway (it would send them to the host as a name to resolve)."""
    if not server:
        return None
    if "://" not in server:
        server = f"{'https' if is_secure else 'http'}://{server}"
    if "@" in urlsplit(server).netloc:
        raise ValueError(f"{source}: the endpoint {strip_userinfo(server)} was given with user info "
                         f"(user:password@ before the host), which is refused: set the keys in "
                         f"ACCESS_KEY_ID and SECRET_ACCESS_KEY (or set_auth(ak=, sk=)) instead")
    if port:
        parts = urlsplit(server)
        server = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
    return server.rstrip("/")


def _host(endpoint: str | None) -> str:
    return (urlsplit(endpoint).hostname or "") if endpoint else ""


def default_addressing_style(endpoint: str | None) -> str:
    """Public OBS endpoints reject path-style requests; other S3 servers often need path style."""
    host = _host(endpoint)
    if not endpoint or host.endswith(".myhuaweicloud.com") or host.endswith(".amazonaws.com"):
        return "virtual"
    return "path"


# set_auth() values; None means "take it from the environment".
_overrides: dict[str, object] = {}
_overrides_lock = threading.Lock()


def set_auth(ak: str | None = None, sk: str | None = None, server: str | None = None,
             port: int | None = None, is_secure: bool | None = None, ssl_verify: bool | None = None,
             long_conn_mode: bool | None = None, path_style: bool | None = None, retry: int | None = None,
             retry_wait: float | None = None, client_timeout: float | None = None,
             list_max_keys: int | None = None, session_token: str | None = None,
             list_objects_v1: bool | None = None) -> None:
    """moxing's set_auth: these values win over the environment for every later call.

    moxing's keywords, with moxing's meaning. Two have no counterpart in boto3 and are
    accepted only so moxing code runs: long_conn_mode (boto3 always keeps connections alive)
    and retry_wait (botocore's retry modes choose their own exponential back-off). Ours on
    top: session_token and list_objects_v1. None leaves a value to the environment.

    Args:
        ak: the access key.
        sk: the secret key (never logged).
        server: the endpoint's host (or URL).
        port: its port.
        is_secure: https.
        ssl_verify: check the server's certificate (S3_VERIFY_SSL otherwise).
        long_conn_mode: accepted, unused.
        path_style: path-style addressing (bucket in the path, not the host name).
        retry: attempts per request.
        retry_wait: accepted, unused.
        client_timeout: seconds a connection may take to open, and a response to send its
            next bytes (boto3's connect and read timeouts).
        list_max_keys: keys per listing page, at most 1000.
        session_token: temporary credentials' token.
        list_objects_v1: list with ListObjects (parallel-file-system buckets have no V2).

    Raises:
        ValueError: client_timeout not above 0, list_max_keys outside 1 to 1000.
    """
    if client_timeout is not None and not client_timeout > 0:
        raise ValueError(f"set_auth(client_timeout={client_timeout!r}): expected seconds > 0")
    if list_max_keys is not None and not 1 <= int(list_max_keys) <= 1000:
        raise ValueError(f"set_auth(list_max_keys={list_max_keys!r}): expected 1 to 1000")
    given = {"ak": ak, "sk": sk, "server": server, "port": port, "is_secure": is_secure,
             "ssl_verify": ssl_verify, "path_style": path_style, "retry": retry,
             "client_timeout": client_timeout, "list_max_keys": list_max_keys,
             "session_token": session_token, "list_objects_v1": list_objects_v1}
    with _overrides_lock:
        _overrides.update({k: v for k, v in given.items() if v is not None})


def configure(**fields) -> None:
    """Override S3Config fields directly (e.g. multipart_threshold in tests, max_attempts),
    for every later call of this process.

    Args:
        **fields: S3Config field names and their values.

    Raises:
        ValueError: a name that is not an S3Config field.
    """
    names = {f.name for f in dataclasses.fields(S3Config)}
    unknown = set(fields) - names
    if unknown:
        raise ValueError(f"unknown obs_io setting(s): {', '.join(sorted(unknown))}")
    with _overrides_lock:
        _overrides.update({f"field:{k}": v for k, v in fields.items()})


def reset() -> None:
    """Forget set_auth/configure overrides: back to the environment alone."""
    with _overrides_lock:
        _overrides.clear()


def current() -> S3Config:
    """The configuration in force now. Cheap: read on every call so env changes are honoured.

    Returns:
        The S3Config of the environment with set_auth/configure overrides applied.

    Raises:
        ValueError: a malformed variable (an endpoint, a number), naming it.
    """
    with _overrides_lock:
        o = dict(_overrides)
    is_secure = o.get("is_secure")
    if is_secure is None:
        is_secure = _flag("S3_USE_HTTPS", True)
    source, server = ("set_auth(server=...)", o["server"]) if o.get("server") else _first_named(_ENDPOINT_VARS)
    endpoint = _endpoint_url(server, o.get("port"), bool(is_secure), source)
    style = _addressing_style(o, endpoint)
    region = _region(endpoint)
    list_v1 = o.get("list_objects_v1")
    if list_v1 is None:
        list_v1 = _flag("S3_LIST_OBJECTS_V1", False)
    values = dict(
        endpoint=endpoint,
        access_key=o.get("ak") or _first(_ACCESS_KEY_VARS),
        secret_key=o.get("sk") or _first(_SECRET_KEY_VARS),
        session_token=o.get("session_token") or _first(_TOKEN_VARS),
        region=region, addressing_style=style, list_objects_v1=bool(list_v1),
        verify_ssl=bool(o["ssl_verify"]) if o.get("ssl_verify") is not None else _flag("S3_VERIFY_SSL", True),
        connect_timeout=_positive("S3_CONNECT_TIMEOUT", float, DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_positive("S3_READ_TIMEOUT", float, DEFAULT_READ_TIMEOUT),
        max_attempts=int(_positive("S3_MAX_ATTEMPTS", int, DEFAULT_MAX_ATTEMPTS)),
        stall_deadline=_positive("S3_STALL_DEADLINE", float, DEFAULT_STALL_DEADLINE),
        read_part_bytes=int(_positive("S3_READ_PART_MIB", int, DEFAULT_READ_PART_MIB)) * MiB,
        multipart_threshold=int(_positive("S3_MULTIPART_THRESHOLD", int, S3Config.multipart_threshold)),
    )
    _apply_overrides(values, o)
    return S3Config(**values)


def _addressing_style(o: dict, endpoint: str) -> str:
    """current(): set_auth(path_style=...), else S3_ADDRESSING_STYLE, else the endpoint's default."""
    if o.get("path_style") is not None:
        style = "path" if o["path_style"] else "virtual"
    else:
        style = (os.environ.get("S3_ADDRESSING_STYLE") or "").strip().lower() or default_addressing_style(endpoint)
    if style not in ("path", "virtual"):
        raise ValueError(f"S3_ADDRESSING_STYLE={style!r}: expected 'path' or 'virtual'")
    return style


def _region(endpoint: str) -> str:
    """current(): a Huawei endpoint's own region, else S3_REGION / AWS_REGION / AWS_DEFAULT_REGION."""
    match = _HUAWEI_ENDPOINT.search(_host(endpoint))
    return (match.group(2) if match else None) or os.environ.get("S3_REGION") \
        or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _apply_overrides(values: dict, o: dict) -> None:
    """current(): the overrides (set_auth and the like: o) over the environment's values, and
    S3_SIGN_PAYLOAD when set."""
    if o.get("client_timeout") is not None:
        values["connect_timeout"] = values["read_timeout"] = float(o["client_timeout"])
    if o.get("list_max_keys") is not None:
        values["list_max_keys"] = int(o["list_max_keys"])
    if os.environ.get("S3_SIGN_PAYLOAD"):
        values["sign_payload"] = _flag("S3_SIGN_PAYLOAD", True)
    if o.get("retry") is not None:
        values["max_attempts"] = max(1, int(o["retry"]))
    values.update({k.split(":", 1)[1]: v for k, v in o.items() if k.startswith("field:")})
