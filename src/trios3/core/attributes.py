"""GetObjectAttributes: what a request asks for, and the answer, in the client's terms.

S3 answers the object's ETag, checksum, parts (paginated), storage class and size, as the
request's ``x-amz-object-attributes`` names them. The proxy answers them in plaintext terms:
the plaintext size, the part sizes from the part headers, the ETag clients see everywhere else,
and the checksum the client gave (sealed in the object), never the backend's of the ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trios3.core.errors import S3Error
from trios3.core.numbers import parse_decimal

ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
DEFAULT_MAX_PARTS = 1000


@dataclass(frozen=True)
class AttributesRequest:
    """The attributes asked for, and the page of parts (``part_number_marker`` exclusive)."""

    names: frozenset[str]
    max_parts: int = DEFAULT_MAX_PARTS
    part_number_marker: int = 0


def parse_request(headers: dict[str, str] | object) -> AttributesRequest:
    """From the request's headers (a mapping of lower-case names): InvalidArgument as S3 for
    an unknown attribute, none at all, or a malformed max-parts or marker."""
    get = headers.get  # type: ignore[attr-defined]
    listed = [n.strip() for n in (get("x-amz-object-attributes") or "").split(",") if n.strip()]
    if not listed:
        raise S3Error(
            "InvalidArgument",
            "Invalid attribute name specified.",
            fields={"ArgumentName": "x-amz-object-attributes"},
        )
    for name in listed:
        if name not in ATTRIBUTES:
            raise S3Error(
                "InvalidArgument",
                "Invalid attribute name specified.",
                fields={"ArgumentName": "x-amz-object-attributes", "ArgumentValue": name},
            )
    max_parts = _number(get("x-amz-max-parts"), "x-amz-max-parts", DEFAULT_MAX_PARTS)
    marker = _number(get("x-amz-part-number-marker"), "x-amz-part-number-marker", 0)
    return AttributesRequest(frozenset(listed), min(max_parts, DEFAULT_MAX_PARTS), marker)


def _number(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    value = parse_decimal(text.strip(), 10)
    if value is None:
        raise S3Error(
            "InvalidArgument",
            f"Invalid value for {name}.",
            fields={"ArgumentName": name, "ArgumentValue": text},
        )
    return value


@dataclass(frozen=True)
class PartsPage:
    """One page of an object's parts: (number, plaintext size) each."""

    count: int
    parts: list[tuple[int, int]]
    marker: int
    max_parts: int
    next_marker: int | None  # None: not truncated


def parts_page(sizes: list[int] | None, count: int, request: AttributesRequest) -> PartsPage:
    """The page of parts after the request's marker; ``sizes`` None when only the count is
    known (an object the proxy did not encrypt)."""
    if sizes is None:
        return PartsPage(count, [], request.part_number_marker, request.max_parts, None)
    after = [(n, s) for n, s in enumerate(sizes, start=1) if n > request.part_number_marker]
    page = after[: request.max_parts]
    truncated = len(after) > len(page)
    next_marker = page[-1][0] if truncated and page else None
    return PartsPage(count, page, request.part_number_marker, request.max_parts, next_marker)


@dataclass(frozen=True)
class Attributes:
    """What the answer may hold; the request's names choose what it does hold."""

    etag: str  # unquoted, as GetObjectAttributes writes it
    size: int
    storage_class: str
    checksum: dict[str, str] = field(default_factory=dict)  # XML names -> values
    parts: PartsPage | None = None  # None: not a multipart object
