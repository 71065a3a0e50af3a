"""Numbers as clients send them: decimal digits, read strictly and in bounded time.

Every number in a header, a query or a document goes through :func:`parse_decimal`, never
through ``int()`` on what arrived: ``int()`` accepts signs, spaces, ``_`` and any Unicode
digit (``str.isdigit()`` even accepts ``"²"``, which ``int()`` then refuses), and it raises
ValueError past 4 300 digits. Only ``[0-9]`` passes here, and a number longer than its field
can hold comes back *saturated*, larger than any value the field allows, so the caller's
range check answers it as S3 answers a huge number (InvalidRange, EntityTooLarge, ...)
instead of failing to parse it.
"""

from __future__ import annotations

import re

DECIMAL = "[0-9]+"  # for patterns that capture a number: never \d, which is any Unicode digit
_DECIMAL = re.compile(DECIMAL)
_HEX = re.compile("[0-9a-fA-F]+")
# Enough for any byte count or offset S3 knows (5 TiB has 13 digits) and within an int64, so
# a saturated value still fits a backend's Range.
MAX_DIGITS = 18


def parse_decimal(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of ``text`` if it is one or more ASCII digits (leading zeros allowed, no sign
    or space), else None. More than ``max_digits`` significant digits gives
    ``10 ** max_digits``: too large for the field, whatever the exact value."""
    if not _DECIMAL.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return 10**max_digits
    return int(significant or "0")


def parse_hex(text: str | bytes, max_digits: int = 16) -> int | None:
    """The value of ASCII hexadecimal digits (an aws-chunked or HTTP chunk size), else None;
    saturated at ``16 ** max_digits`` as :func:`parse_decimal` is."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not _HEX.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return 16**max_digits
    return int(significant or "0", 16)
