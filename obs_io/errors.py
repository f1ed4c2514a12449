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

from botocore.exceptions import (BotoCoreError, ClientError, IncompleteReadError, NoCredentialsError,
                                 PartialCredentialsError, ResponseStreamingError)
from s3transfer.exceptions import RetriesExceededError, S3UploadFailedError

from . import config as _config

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


# What users read ("FileNotFoundError: obs://b/x: no such object or folder", in logs and on the
# command line) names the builtin each class is, as before moxing's classes were added; their
# own names stay in __qualname__, by which worker processes report errors (workers.py).
for _cls, _shown in ((ObjectNotFound, "FileNotFoundError"), (AccessDenied, "PermissionError"),
                     (StreamBroken, "ConnectionError"), (StorageError, "OSError")):
    _cls.__name__ = _shown

MOXING_ERRORS = (ObjectNotFound, AccessDenied, StreamBroken, ObjectChanged, StorageError, MoxFileRespException,
                 MoxFileReadException, MoxFileNotExistsException, MoxFileNameDuplicateException)


def _with_resp(error: _MoxFileBaseRespException, status, code: str, message: str) -> _MoxFileBaseRespException:
    error.resp = {"status": status, "code": code, "message": message}
    return error


def scrub(text: str) -> str:
    """Remove the configured secrets from text, whatever put them there."""
    cfg = _config.current()
    for secret in (cfg.secret_key, cfg.session_token, cfg.access_key):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _bucket_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def translate(err: BaseException, url: str) -> BaseException:
    """The builtin exception that says what went wrong with `url`."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code") or status or "")
        message = scrub(str(error.get("Message") or code))
        if code == "NoSuchBucket":
            found = ObjectNotFound(f"bucket {_bucket_of(url)!r} does not exist (while accessing {url})")
        elif code in _NOT_FOUND:
            found = ObjectNotFound(f"{url}: no such object or folder")
        elif code in _DENIED:
            found = AccessDenied(f"{url}: access denied ({code}); check the access key, secret key "
                                 f"and the bucket's permissions")
        elif code in ("PreconditionFailed", "412"):
            found = ObjectChanged(f"{url}: the object changed while it was read ({code})")
        else:
            found = StorageError(f"{url}: object storage error {code}: {message}")
        return _with_resp(found, status, code, message)
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(f"{url}: no credentials; set ACCESS_KEY_ID and SECRET_ACCESS_KEY "
                            f"or call mox.file.set_auth(ak=..., sk=...)")
    if isinstance(err, S3UploadFailedError):
        # s3transfer wraps the ClientError in text only; recover its meaning from the text.
        text = str(err)
        if any(c in text for c in ("AccessDenied", "(403)", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
            return AccessDenied(f"{url}: access denied while uploading; check the access key, "
                                f"secret key and the bucket's permissions")
        if "NoSuchBucket" in text:
            return ObjectNotFound(f"bucket {_bucket_of(url)!r} does not exist (while uploading {url})")
        return StorageError(f"{url}: upload failed: {scrub(text)}")
    if isinstance(err, (IncompleteReadError, ResponseStreamingError)):
        return StreamBroken(f"{url}: the object's body broke off while it was read, also when "
                            f"tried again: {scrub(type(err).__name__ + ': ' + str(err))}")
    if isinstance(err, (BotoCoreError, RetriesExceededError)):
        endpoint = _config.current().endpoint or "the default endpoint"
        return ConnectionError(f"{url}: object storage at {endpoint} failed after retries: "
                               f"{scrub(type(err).__name__ + ': ' + str(err))}")
    return err


@contextmanager
def translating(url: str, keep: type | tuple = ()):
    """Run a block of boto3 calls; re-raise any storage failure as a one-line builtin error.

    `keep`: exception types the caller handles itself (e.g. ClientError to inspect a 404)."""
    try:
        yield
    except (ClientError, BotoCoreError, RetriesExceededError, S3UploadFailedError) as err:
        if keep and isinstance(err, keep):
            raise
        raise translate(err, url) from None
