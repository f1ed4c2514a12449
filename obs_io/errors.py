"""Turn botocore/s3transfer failures into the builtin errors moxing users expect, in one line.

A user should read "FileNotFoundError: obs://b/x: no such object or folder", not a botocore
traceback. The original exception is dropped (`from None`) on purpose: its text adds nothing a
user can act on, and one line is what the CLI prints.

moxing's own exception classes (MoxFileNotExistsException, MoxFileRespException,
MoxFileReadException, MoxFileNameDuplicateException) exist too, and what we raise is both: a
missing object is an ObjectNotFound, caught by `except FileNotFoundError`, by `except
mox.file.MoxFileNotExistsException` and by `except mox.file.MoxFileRespException` (moxing raises
the latter for a 404 answer to a read). So code written for either keeps working.
"""
from __future__ import annotations

from contextlib import contextmanager

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, IncompleteReadError, NoCredentialsError,
                                 PartialCredentialsError, ReadTimeoutError, ResponseStreamingError)
from s3transfer.exceptions import RetriesExceededError, S3UploadFailedError

from . import config as _config
from . import redact as _redact

_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
           "AccountProblem", "InvalidSecurity"}


class _MoxFileBaseRespException(OSError):
    """moxing's base of the errors that carry an HTTP answer: `resp` (here a dict with the
    status, error code and message, or None when the error did not come from an answer)."""

    resp: dict | None = None


class MoxFileRespException(_MoxFileBaseRespException):
    """moxing's error for an answer with HTTP status >= 300 (any storage error here)."""


class MoxFileReadException(_MoxFileBaseRespException):
    """moxing's error for a response body that broke off while it was read (status 200)."""


class MoxFileNotExistsException(FileNotFoundError):
    """moxing's error for a path or object that does not exist (mox.file.stat of nothing)."""


class MoxFileNameDuplicateException(FileExistsError):
    """moxing's error for a download whose names collide on a local disk: object storage
    allows both `a` and `a/b` as objects, a file system cannot have `a` as file and folder."""


class ObjectNotFound(MoxFileNotExistsException, MoxFileRespException):
    """No such object, folder or bucket: a FileNotFoundError and both of moxing's classes."""


class AccessDenied(PermissionError, MoxFileRespException):
    """403 and credential errors: a PermissionError and moxing's MoxFileRespException."""


class StreamBroken(ConnectionError, MoxFileReadException):
    """A body that kept breaking off after the retries: ConnectionError and moxing's
    MoxFileReadException."""


class ObjectChanged(MoxFileRespException):
    """An object was replaced between two requests of one read (a GET pinned to the ETag the
    first one saw): reading it again from the start gives one whole version."""


class StorageError(MoxFileRespException):
    """Any other error answer of the store: an OSError and moxing's MoxFileRespException."""


class Unreachable(ConnectionError, MoxFileRespException):
    """No answer from the store after the retries (refused, timed out, connection closed): a
    ConnectionError and moxing's MoxFileRespException, with `resp` None."""


# What users read ("FileNotFoundError: obs://b/x: no such object or folder", in logs and on the
# command line) names the builtin each class is, as before moxing's classes were added; their
# own names stay in __qualname__, by which worker processes report errors (workers.py).
for _cls, _shown in ((ObjectNotFound, "FileNotFoundError"), (AccessDenied, "PermissionError"),
                     (StreamBroken, "ConnectionError"), (StorageError, "OSError"), (Unreachable, "ConnectionError")):
    _cls.__name__ = _shown

MOXING_ERRORS = (ObjectNotFound, AccessDenied, StreamBroken, ObjectChanged, StorageError, Unreachable,
                 MoxFileRespException,
                 MoxFileReadException, MoxFileNotExistsException, MoxFileNameDuplicateException)


def _with_resp(error: _MoxFileBaseRespException, status, code: str, message: str) -> _MoxFileBaseRespException:
    error.resp = {"status": status, "code": code, "message": message}
    return error


class RequestGaveUp(Exception):
    """botocore's last error for a request it retried up to max_attempts times, re-raised as
    this (client.py) so that s3transfer, which fetches a download again on a read timeout,
    does not start the whole series of tries once more. `error` is botocore's exception."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _current() -> _config.S3Config | None:
    """The configuration, or None when it cannot be built (a bad variable: its own error)."""
    try:
        return _config.current()
    except ValueError:
        return None


def scrub(text: str) -> str:
    """Remove the configured secrets (and any SigV4 credential) from text, whatever put them there."""
    cfg = _current()
    extra = (cfg.secret_key, cfg.session_token, cfg.access_key) if cfg else ()
    return _redact.scrub(text, extra)


def endpoint_shown() -> str:
    """The endpoint as messages name it: its URL without user info, or what boto3 falls back to."""
    cfg = _current()
    return _config.strip_userinfo(cfg.endpoint) if cfg and cfg.endpoint else "the default AWS S3 endpoint"


def _bucket_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


# What to check, per credential error code: the one line tells which setting is wrong.
_CHECK = {
    "InvalidAccessKeyId": "the access key id is unknown there; check ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key id; check SECRET_ACCESS_KEY",
    "ExpiredToken": "the session token has expired; renew SESSION_TOKEN",
    "TokenRefreshRequired": "the session token has expired; renew SESSION_TOKEN",
    "InvalidToken": "the session token is not valid; check SESSION_TOKEN",
}
_RETRIED_STATUS = {429, 500, 502, 503, 504}


def _bound_hint(cfg: _config.S3Config | None, gave_up: str | None = None) -> str:
    """The bounds that applied, and why the retries stopped when retry.py said (a throttling or
    a stall that outlasted S3_STALL_DEADLINE, or the operation's own bound)."""
    if cfg is None:
        return ""
    why = f"{gave_up}; " if gave_up and "attempt" not in gave_up else ""
    return (f" ({why}{cfg.max_attempts} attempt(s), connect timeout {cfg.connect_timeout:g}s, read timeout "
            f"{cfg.read_timeout:g}s, stall deadline {cfg.stall_deadline:g}s: S3_MAX_ATTEMPTS, S3_CONNECT_TIMEOUT, "
            "S3_READ_TIMEOUT, S3_STALL_DEADLINE)")


def _client_error(err: ClientError, url: str) -> _MoxFileBaseRespException:
    error = err.response.get("Error", {})
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.get("Code") or status or "")
    message = scrub(str(error.get("Message") or code))
    where = endpoint_shown()
    if code == "NoSuchBucket":
        found = ObjectNotFound(f"bucket {_bucket_of(url)!r} does not exist at {where} (while accessing {url})")
    elif code in _NOT_FOUND:
        found = ObjectNotFound(f"{url}: no such object or folder")
    elif code in _DENIED:
        check = _CHECK.get(code, "check ACCESS_KEY_ID/SECRET_ACCESS_KEY and the bucket's permissions")
        found = AccessDenied(f"{url}: access denied by {where} ({code}): {check}")
    elif code in ("PreconditionFailed", "412"):
        found = ObjectChanged(f"{url}: the object changed while it was read ({code})")
    else:
        gave_up = err.response.get("ResponseMetadata", {}).get("ObsIoGaveUp")
        retried = _bound_hint(_current(), gave_up) \
            if status in _RETRIED_STATUS or code in ("SlowDown", "503") or gave_up else ""
        found = StorageError(f"{url}: object storage at {where} answered {status} {code}: {message}{retried}")
    return _with_resp(found, status, code, message)


def _connection_error(err: BaseException, url: str) -> OSError:
    """No answer at all, after the retries: what failed, where, and the bound that applied."""
    cfg, where = _current(), endpoint_shown()
    if isinstance(err, EndpointConnectionError) and not isinstance(err, ConnectTimeoutError):
        what = f"cannot connect to object storage at {where}"
    elif isinstance(err, ConnectTimeoutError):
        what = f"connecting to object storage at {where} timed out"
    elif isinstance(err, ReadTimeoutError):
        what = f"object storage at {where} did not answer in time"
    elif isinstance(err, ConnectionClosedError):
        what = f"object storage at {where} closed the connection without an answer"
    else:
        what = f"object storage at {where} failed: {scrub(type(err).__name__ + ': ' + str(err))}"
    return Unreachable(f"{url}: {what}{_bound_hint(cfg, getattr(err, 'obs_io_gave_up', None))}")


def translate(err: BaseException, url: str) -> BaseException:
    """The builtin exception that says what went wrong with `url`, in one line naming the
    endpoint for a failure of the store itself."""
    if isinstance(err, RequestGaveUp):
        err = err.error
    if isinstance(err, RetriesExceededError) and err.last_exception is not None:
        last = err.last_exception   # s3transfer: a download's body kept breaking off
        if not isinstance(last, (IncompleteReadError, ResponseStreamingError)):
            return _connection_error(last, url)
        err = last
    if isinstance(err, ClientError):
        return _client_error(err, url)
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(f"{url}: no credentials; set ACCESS_KEY_ID and SECRET_ACCESS_KEY "
                            f"or call mox.file.set_auth(ak=..., sk=...)")
    if isinstance(err, S3UploadFailedError):
        # s3transfer wraps the ClientError in text only; recover its meaning from the text.
        text = str(err)
        for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket"):
            if code in text:
                return _client_error(ClientError({"Error": {"Code": code}}, "Upload"), url)
        return StorageError(f"{url}: upload to {endpoint_shown()} failed: {scrub(text)}")
    if isinstance(err, (IncompleteReadError, ResponseStreamingError)):
        return StreamBroken(f"{url}: the object's body broke off while it was read from {endpoint_shown()}, "
                            f"also when tried again: {scrub(type(err).__name__ + ': ' + str(err))}")
    if isinstance(err, BotoCoreError):
        return _connection_error(err, url)
    return err


@contextmanager
def translating(url: str, keep: type | tuple = ()):
    """Run a block of boto3 calls; re-raise any storage failure as a one-line builtin error.

    `keep`: exception types the caller handles itself (e.g. ClientError to inspect a 404)."""
    try:
        yield
    except (ClientError, BotoCoreError, RetriesExceededError, S3UploadFailedError, RequestGaveUp) as err:
        if keep and isinstance(err, keep):
            raise
        raise translate(err, url) from None
