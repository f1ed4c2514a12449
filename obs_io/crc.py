"""CRC32 as zlib computes it (the same polynomial, values and chaining), at SIMD speed where
zlib-ng's Python binding (`zlib-ng` on PyPI, a dependency with wheels for x86_64 and aarch64) is
installed; the standard library's zlib otherwise, so nothing breaks without it.

Why one place: every checksum the tools record or compare (a converted file's CRC32 in the set
manifest, MindSpore's .ckpt CRC trailer, an object's S3 CRC32) must come from one function, or
two copies may one day disagree. Measured here on one core: zlib 0.6-2.9 GiB/s, zlib-ng 6.5-12
GiB/s; both release the GIL on large buffers (the engine's writer sums on a thread of its own).
Standard library only besides that: the engine's worker processes import it.
"""
from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
    FAST = True
except ImportError:   # no wheel for this platform: the same values, slower
    from zlib import crc32
    FAST = False

__all__ = ["crc32", "FAST"]
