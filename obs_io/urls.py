"""URLs are the user's language: `obs://bucket/key`, `s3://bucket/key` (or the scheme of any
store in obs_io.registry) or a local path. The one place that says what a URL is (is_remote)
and how a name is joined to one (join)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .registry import is_remote

__all__ = ["is_remote", "ObjectURL", "check", "join", "safe_relative"]

# S3/OBS bucket naming rules, loosely: what a user could have meant as a bucket.
_BUCKET = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}$")
# `obs:/job/x`, `s3:job/x`, `OBS:`: a scheme without its `//`. Taken as a local path it would
# "upload" into ./obs:/job/x and report success: nobody means a folder named `obs:`.
_MISTYPED = re.compile(r"^(obs|s3):(?!//)", re.IGNORECASE)




@dataclass(frozen=True)
class ObjectURL:
    """A parsed remote URL. `key` has no leading slash; '' is the bucket root."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "ObjectURL":
        if not is_remote(url):
            raise ValueError(f"not an obs://, s3:// or other object-store URL: {url!r}")
        scheme, rest = url.split("://", 1)
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"malformed URL {url!r}: no bucket name")
        if "@" in bucket:   # obs://AK:SK@bucket: keys in a URL end up in logs and histories
            raise ValueError(f"malformed URL {url!r}: user info (user:password@) before the bucket is "
                             "refused: give the keys in ACCESS_KEY_ID and SECRET_ACCESS_KEY")
        if not _BUCKET.match(bucket):
            raise ValueError(f"malformed URL {url!r}: {bucket!r} is not a valid bucket name")
        return cls(scheme.lower(), bucket, key.lstrip("/"))

    @property
    def dir_prefix(self) -> str:
        """The key prefix of everything 'inside' this URL seen as a folder."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def check(*urls: str) -> None:
    """Raise ValueError naming the first malformed remote URL, or a path that is an obs:// or
    s3:// URL with its scheme mistyped, before any work starts."""
    for url in urls:
        if isinstance(url, str) and _MISTYPED.match(url):
            raise ValueError(f"{url!r} looks like a mistyped URL: expected obs://bucket/key or "
                             "s3://bucket/key (a local path may not start with obs: or s3:)")
        if is_remote(url):
            ObjectURL.parse(url)


def join(url: str, *relative: str) -> str:
    """url + '/' + each relative name, for URLs and local paths alike, without doubling
    slashes (names are '/'-separated; locally they become os.sep-separated). A string rule:
    URLs are checked where they come in (check), not here."""
    for name in relative:
        if not name:
            continue
        if is_remote(url):
            url = f"{url.rstrip('/')}/{name.lstrip('/')}"
        else:
            url = os.path.join(url, *name.split("/"))
    return url


def safe_relative(relative: str, what: str) -> str:
    """Reject a relative path that could escape its destination folder (`..`, leading `/`).

    Object keys are arbitrary strings; a key such as `a/../../etc/x` must never decide where a
    download lands. `what` names the culprit (the full key) in the error.
    """
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or ".." in parts \
            or os.path.isabs(relative) or (parts and re.match(r"^[A-Za-z]:", parts[0])):
        raise ValueError(f"refusing to copy {what!r}: its name would land outside the destination folder")
    return "/".join(p for p in parts if p not in ("", "."))
