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
from trios3.core.numbers import DECIMAL, MAX_DIGITS, parse_decimal

# ASCII digits only, and ASCII case-insensitivity (no "\u017f" for "s"). A number too long
# for any object reads as larger than every object (trios3.core.numbers).
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE | re.ASCII)
_CONTENT_RANGE = re.compile(f"bytes ({DECIMAL})-({DECIMAL})/({DECIMAL})")
_COPY_RANGE = re.compile(f"bytes=({DECIMAL})-({DECIMAL})")
_SPACE = " \t\r\n"  # ASCII whitespace, not str.strip()'s Unicode spaces (latin-1 has two)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive to serve with 206, or None to serve the whole object (200).

    Raises ``S3Error("InvalidRange")`` when the range is well-formed but unsatisfiable.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip(_SPACE))
    if match is None:  # garbage, another unit, or several ranges: ignored, as AWS does
        return None
    first, last = match.groups()
    if not first:
        if not last:  # "bytes=-"
            return None
        suffix = _number(last)
        if suffix == 0:
            raise _unsatisfiable(header, size)
        if size == 0:
            return None
        return max(0, size - suffix), size - 1
    if last and _greater(first, last):
        return None
    start = _number(first)
    end = _number(last) if last else None
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
    match = _RANGE.fullmatch(header.strip(_SPACE))
    if match is None:
        return None
    first, last = match.groups()
    unit = segment_size + TAG_SIZE
    if first and last:
        if _greater(first, last):
            return None
        start, end = _number(first), _number(last)
        return f"bytes={start // segment_size * unit}-{(end // segment_size + 1) * unit - 1}"
    if first:
        return f"bytes={_number(first) // segment_size * unit}-"
    if last and _number(last) > 0:
        segments = -(-_number(last) // segment_size) + 1
        return f"bytes=-{segments * unit}"
    return None


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value of a 206: ``bytes start-end/size``."""
    return f"bytes {start}-{end}/{size}"


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """A backend 206's ``Content-Range: bytes start-end/total`` as numbers, or None."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if not match:
        return None
    # Exact to 64 digits: these are the backend's numbers, checked against each other.
    start, end, total = (_number(g, 64) for g in match.groups())
    return start, end, total


def parse_copy_range(value: str | None, size: int) -> tuple[int, int]:
    """The source bytes an UploadPartCopy copies (inclusive): its ``x-amz-copy-source-range``,
    or the whole source of ``size`` bytes."""
    if value is None:
        return (0, size - 1)
    match = _COPY_RANGE.fullmatch(value.strip(_SPACE))
    if not match:
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
        )
    start, end = _number(match.group(1)), _number(match.group(2))
    if _greater(match.group(1), match.group(2)) or end >= size:
        raise S3Error(
            "InvalidRange",
            f"Range specified is not valid for source object of size: {size}",
            status=416,
        )
    return start, end


def _number(digits: str, max_digits: int = MAX_DIGITS) -> int:
    """ASCII digits (the patterns above matched them) as a number, saturated past 18 digits:
    beyond any object's size, which is all a range check needs to know."""
    value = parse_decimal(digits, max_digits)
    assert value is not None
    return value


def _greater(a: str, b: str) -> bool:
    """Whether the number ``a`` is greater than ``b``, exactly, however long both are."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) > (len(b), b)


def _unsatisfiable(header: str, size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        fields={"RangeRequested": header, "ActualObjectSize": str(size)},
        headers={"Content-Range": f"bytes */{size}"},
    )
