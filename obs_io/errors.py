"""Turn botocore/s3transfer failures into the builtin errors moxing users expect, in one line.

A user should read "FileNotFoundError: obs://b/x: no such object or folder", not a botocore
traceback. The original exception is dropped (`from None`) on purpose: its text adds nothing a
user can act on, and one line is what the CLI prints.
"""
from __future__ import annotations

from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from s3transfer.exceptions import RetriesExceededError, S3UploadFailedError

from . import config as _config

_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
           "AccountProblem", "InvalidSecurity"}


class ObjectChanged(OSError):
    """An object was replaced between two requests of one read (a GET pinned to the ETag the
    first one saw): reading it again from the start gives one whole version."""


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
        code = str(error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code == "NoSuchBucket":
            return FileNotFoundError(f"bucket {_bucket_of(url)!r} does not exist (while accessing {url})")
        if code in _NOT_FOUND:
            return FileNotFoundError(f"{url}: no such object or folder")
        if code in _DENIED:
            return PermissionError(f"{url}: access denied ({code}); check the access key, secret key "
                                   f"and the bucket's permissions")
        message = scrub(str(error.get("Message") or code))
        if code in ("PreconditionFailed", "412"):
            return ObjectChanged(f"{url}: the object changed while it was read ({code})")
        return OSError(f"{url}: object storage error {code}: {message}")
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return PermissionError(f"{url}: no credentials; set ACCESS_KEY_ID and SECRET_ACCESS_KEY "
                               f"or call mox.file.set_auth(ak=..., sk=...)")
    if isinstance(err, S3UploadFailedError):
        # s3transfer wraps the ClientError in text only; recover its meaning from the text.
        text = str(err)
        if any(c in text for c in ("AccessDenied", "(403)", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
            return PermissionError(f"{url}: access denied while uploading; check the access key, "
                                   f"secret key and the bucket's permissions")
        if "NoSuchBucket" in text:
            return FileNotFoundError(f"bucket {_bucket_of(url)!r} does not exist (while uploading {url})")
        return OSError(f"{url}: upload failed: {scrub(text)}")
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
