"""Byte ranges: a GET's Range resolved against the plaintext size the way AWS S3 does it, the
backend's Content-Range, and UploadPartCopy's ``x-amz-copy-source-range``.

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
from trios3.core.format import TAG_SIZE

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


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


def stored_window(header: str | None, segment_size: int) -> str | None:
    """The backend Range to fetch for a client's Range before the object's size is known,
    taking the object to be encrypted in segments of ``segment_size`` (plus a tag each).

    ``a-b`` maps to the segments that cover it, ``a-`` to everything from a's segment, and
    ``-n`` to enough trailing segments to hold n plaintext bytes wherever the last segment
    boundary falls. Anything else (no range, or one that will be ignored) fetches it all.
    The caller checks the answer against the real size and segment size, and asks again
    when the guess did not cover the span.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    unit = segment_size + TAG_SIZE
    if first and last:
        if int(first) > int(last):
            return None
        return f"bytes={int(first) // segment_size * unit}-{(int(last) // segment_size + 1) * unit - 1}"
    if first:
        return f"bytes={int(first) // segment_size * unit}-"
    if last and int(last) > 0:
        segments = -(-int(last) // segment_size) + 1
        return f"bytes=-{segments * unit}"
    return None


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value of a 206: ``bytes start-end/size``."""
    return f"bytes {start}-{end}/{size}"


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """A backend 206's ``Content-Range: bytes start-end/total`` as numbers, or None."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    start, end, total = (int(g) for g in match.groups())
    return start, end, total


def parse_copy_range(value: str | None, size: int) -> tuple[int, int]:
    """The source bytes an UploadPartCopy copies (inclusive): its ``x-amz-copy-source-range``,
    or the whole source of ``size`` bytes."""
    if value is None:
        return (0, size - 1)
    match = _COPY_RANGE.match(value.strip())
    if not match:
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
        )
    start, end = int(match.group(1)), int(match.group(2))
    if start > end or end >= size:
        raise S3Error(
            "InvalidRange",
            f"Range specified is not valid for source object of size: {size}",
            status=416,
        )
    return start, end


def _unsatisfiable(header: str, size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        fields={"RangeRequested": header, "ActualObjectSize": str(size)},
        headers={"Content-Range": f"bytes */{size}"},
    )
