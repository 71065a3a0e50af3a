"""The Range header of a GET, resolved against the plaintext size the way AWS S3 does it.

AWS serves one byte range or the whole object; it never answers multipart/byteranges:

- ``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` select one range; an end past the object is
  clamped to its last byte, and a suffix longer than the object selects all of it (206).
- A header it cannot use is *ignored* and the whole object is served with 200: wrong syntax,
  another unit, ``a > b``, or several ranges (``bytes=0-1,5-6``).
- A first byte at or past the end (``bytes=a-`` / ``bytes=a-b`` with ``a >= size``, which
  includes any such range on an empty object) is ``416 InvalidRange`` with
  ``Content-Range: bytes */size``.
- A suffix range on an *empty* object is accepted and the (empty) object served whole; a
  zero-length suffix ``bytes=-0`` is unsatisfiable (RFC 9110 §14.1.2) and InvalidRange.
"""

from __future__ import annotations

import re

from trios3.core.errors import S3Error

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive to serve with 206, or None to serve the whole object (200).

    Raises ``S3Error("InvalidRange")`` when the range is well-formed but unsatisfiable.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:  # garbage, another unit, or several ranges: ignored, as AWS does
        return None
    first, last = match.groups()
    if not first:
        if not last:  # "bytes=-"
            return None
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(header, size)
        if size == 0:
            return None
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and start > end:
        return None
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, size - 1 if end is None else min(end, size - 1)


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value of a 206: ``bytes start-end/size``."""
    return f"bytes {start}-{end}/{size}"


def _unsatisfiable(header: str, size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        fields={"RangeRequested": header, "ActualObjectSize": str(size)},
        headers={"Content-Range": f"bytes */{size}"},
    )
