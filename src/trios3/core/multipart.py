"""Format v2: multipart objects, their upload token and their layout (docs/FORMAT.md).

A client part becomes exactly one backend part: a 28-byte part header, then the part's
plaintext in v1-style segments under a *part key*. The part key comes from the upload's data
key, a random salt chosen afresh for every attempt at the part, the part number and the part's
plaintext size, so a retried part never reuses a (key, nonce) pair, and a part moved to another
position, upload or object fails its tags. Nothing is stored between requests: the data key
travels in the UploadId, wrapped and bound to the backend upload, and a reader learns the
layout from the part headers.
"""

from __future__ import annotations

import base64
import binascii
import os
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trios3.core import format as fmt
from trios3.core.errors import S3Error, TamperedError
from trios3.core.numbers import parse_decimal

VERSION = 2
SALT_SIZE = 16
PART_HEADER_SIZE = SALT_SIZE + 4 + 8
MIN_PART_SIZE = 5 * 1024 * 1024  # plaintext, every part but the last (as S3 enforces)
MAX_PART_SIZE = 5 * 1024**3
MAX_PART_NUMBER = 10_000

_PART_KEY_INFO = b"trios3 v2 part key\x00"
_SEGMENT_AAD_LABEL = b"trios3 v2 segment\x00"


# -- parts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartHeader:
    """salt(16) || u32 part number || u64 plaintext size: the first bytes of every stored part.

    Not authenticated by itself: every field goes into the part key, so an altered header
    makes the part's segments fail their tags.
    """

    salt: bytes
    part_number: int
    plaintext_size: int

    def encode(self) -> bytes:
        return (
            self.salt + self.part_number.to_bytes(4, "big") + self.plaintext_size.to_bytes(8, "big")
        )

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> PartHeader:
        if len(data) != PART_HEADER_SIZE:
            raise TamperedError("part header is cut short")
        raw = bytes(data)
        number = int.from_bytes(raw[SALT_SIZE : SALT_SIZE + 4], "big")
        size = int.from_bytes(raw[SALT_SIZE + 4 :], "big")
        if not 1 <= number <= MAX_PART_NUMBER or size > MAX_PART_SIZE:
            raise TamperedError("part header is malformed")
        return cls(raw[:SALT_SIZE], number, size)


def part_key(data_key: bytes, header: PartHeader) -> bytes:
    """HKDF(data key; salt = the attempt's salt; info = label || part number || size)."""
    info = (
        _PART_KEY_INFO
        + header.part_number.to_bytes(4, "big")
        + header.plaintext_size.to_bytes(8, "big")
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=info).derive(data_key)


def segment_aad_prefix(part_number: int) -> bytes:
    """What precedes ``u64 index || final`` in a part's segment AAD."""
    return _SEGMENT_AAD_LABEL + part_number.to_bytes(4, "big")


def part_stored_size(plaintext_size: int, segment_size: int) -> int:
    return PART_HEADER_SIZE + fmt.stored_size(plaintext_size, segment_size)


def max_part_plaintext(segment_size: int) -> int:
    """The largest part plaintext whose stored part still fits S3's 5 GiB part limit."""
    size = (
        MAX_PART_SIZE
        - PART_HEADER_SIZE
        - fmt.TAG_SIZE * fmt.segment_count(MAX_PART_SIZE, segment_size)
    )
    while part_stored_size(size + 1, segment_size) <= MAX_PART_SIZE:
        size += 1
    return size


def part_plaintext_size(stored_size: int, segment_size: int) -> int | None:
    """Inverse of :func:`part_stored_size`; None for sizes a part cannot have."""
    if stored_size <= PART_HEADER_SIZE:
        return None
    return fmt.plaintext_size(stored_size - PART_HEADER_SIZE, segment_size)


class PartSealer:
    """Encrypts one attempt at one part: the header, then sealed segments.

    The plaintext size must be known up front (it is in the header and the key), as it is for
    an UploadPart: its Content-Length, or the decoded length of an aws-chunked body.
    """

    def __init__(
        self, data_key: bytes, segment_size: int, part_number: int, plaintext_size: int
    ) -> None:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise ValueError(f"part number {part_number} is out of range")
        if not 0 <= plaintext_size <= MAX_PART_SIZE:
            raise ValueError(f"part size {plaintext_size} is out of range")
        self.header = PartHeader(os.urandom(SALT_SIZE), part_number, plaintext_size)
        self.stored_size = part_stored_size(plaintext_size, segment_size)
        self._segments = fmt.SegmentSealer(
            part_key(data_key, self.header), segment_size, segment_aad_prefix(part_number)
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        return self._segments.feed(data)

    def finish(self) -> bytes:
        if self._segments.plaintext_bytes != self.header.plaintext_size:
            raise ValueError("part plaintext does not match its declared size")
        return self._segments.finish()


# -- the upload token -------------------------------------------------------------------------

# The UploadId CreateMultipartUpload hands out (it carries the data key, wrapped).
_TOKEN_PREFIX = "t3."  # noqa: S105 - a prefix, not a secret
_LISTED_PREFIX = "t3l."  # an UploadId from ListMultipartUploads: the backend id alone
_KEY_ID_BYTES = 8
_WRAPPED_BYTES = 60


@dataclass(frozen=True)
class UploadToken:
    """What an UploadId carries: the backend's upload id and, unless it came from a listing,
    the upload's data key wrapped and bound to (v2, key id, segment size, bucket, key,
    backend upload id), so it cannot be forged, altered or moved to another upload."""

    backend_upload_id: str
    key_id: str | None = None
    segment_size: int | None = None
    wrapped_key: bytes | None = None

    @property
    def carries_key(self) -> bool:
        return self.wrapped_key is not None

    def encode(self) -> str:
        upload = self.backend_upload_id.encode("utf-8")
        if self.wrapped_key is None or self.key_id is None or self.segment_size is None:
            return _LISTED_PREFIX + _b64(upload)
        raw = (
            bytes.fromhex(self.key_id)
            + (self.segment_size.bit_length() - 1).to_bytes(1, "big")
            + self.wrapped_key
            + upload
        )
        return _TOKEN_PREFIX + _b64(raw)

    @classmethod
    def decode(cls, upload_id: str) -> UploadToken:
        """NoSuchUpload for anything this proxy could not have handed out."""
        try:
            if upload_id.startswith(_LISTED_PREFIX):
                backend_id = _unb64(upload_id[len(_LISTED_PREFIX) :]).decode("utf-8")
                if backend_id:
                    return cls(backend_id)
            elif upload_id.startswith(_TOKEN_PREFIX):
                raw = _unb64(upload_id[len(_TOKEN_PREFIX) :])
                head = _KEY_ID_BYTES + 1 + _WRAPPED_BYTES
                segment_size = 1 << raw[_KEY_ID_BYTES]
                backend_id = raw[head:].decode("utf-8")
                if backend_id and fmt.is_valid_segment_size(segment_size):
                    return cls(
                        backend_id,
                        raw[:_KEY_ID_BYTES].hex(),
                        segment_size,
                        raw[_KEY_ID_BYTES + 1 : head],
                    )
        except (ValueError, IndexError, UnicodeDecodeError):
            pass
        raise S3Error("NoSuchUpload")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64") from None


# -- completing an upload ---------------------------------------------------------------------


def normalise_etag(etag: str) -> str:
    """A part ETag as sent by a client or the backend, compared without quotes or the proxy's
    ``-0`` suffix."""
    inner = etag.strip().strip('"').lower()
    return inner.removesuffix("-0")


@dataclass(frozen=True)
class PlannedPart:
    number: int
    backend_etag: str
    plaintext_size: int
    stored_size: int


def plan_completion(
    requested: Sequence[tuple[int, str]],
    uploaded: Mapping[int, Sequence[tuple[str, int]]],
    segment_size: int,
) -> list[PlannedPart]:
    """Check a CompleteMultipartUpload part list as S3 does, against the parts the backend
    holds (part number -> [(ETag, stored size)]: some backends, SeaweedFS among them, keep
    and list every attempt at a part), plus the two rules the v2 layout needs.

    - Part numbers must be consecutive from 1: a reader finds a dropped middle part by the gap.
    - Parts whose sizes differ must not *look* uniform to a reader (see :func:`find_layout`).
    """
    if not requested:
        raise S3Error("MalformedXML")
    previous = 0
    for number, _ in requested:
        if number <= previous:
            raise S3Error("InvalidPartOrder")
        previous = number
    planned = []
    for number, etag in requested:
        wanted = normalise_etag(etag)
        held = next((a for a in uploaded.get(number, ()) if normalise_etag(a[0]) == wanted), None)
        if held is None:
            raise S3Error(
                "InvalidPart",
                "One or more of the specified parts could not be found.  The part may not have "
                "been uploaded, or the specified entity tag may not match the part's entity tag.",
                fields={"PartNumber": str(number), "ETag": etag},
            )
        size = part_plaintext_size(held[1], segment_size)
        if size is None:
            raise S3Error(
                "InvalidPart",
                f"Part {number} was not written by trios3.",
                fields={"PartNumber": str(number)},
            )
        planned.append(PlannedPart(number, held[0], size, held[1]))
    for index, part in enumerate(planned, start=1):
        if part.number != index:
            raise S3Error(
                "InvalidPart",
                f"trios3 needs consecutive part numbers starting at 1; part {index} is missing.",
                fields={"PartNumber": str(index)},
            )
    for part in planned[:-1]:
        if part.plaintext_size < MIN_PART_SIZE:
            raise S3Error(
                "EntityTooSmall",
                fields={
                    "PartNumber": str(part.number),
                    "ProposedSize": str(part.plaintext_size),
                    "MinSizeAllowed": str(MIN_PART_SIZE),
                },
            )
    if len(planned) >= 4:
        first = planned[0]
        middle = planned[1:-1]
        uneven = any(p.plaintext_size != first.plaintext_size for p in middle)
        stored = sum(p.stored_size for p in middle)
        if uneven and stored == len(middle) * first.stored_size:
            raise S3Error(
                "InvalidRequest",
                "trios3 cannot complete an upload whose middle parts differ in size but add up "
                "to whole multiples of the first part: its layout would be ambiguous. Upload "
                "parts of one size (all but the last).",
            )
    return planned


def parse_part_number(text: str | None) -> int:
    """A ``partNumber`` query value: 1..10 000, in digits, or S3's InvalidArgument."""
    text = text or ""
    number = parse_decimal(text)
    if number is None or not 1 <= number <= MAX_PART_NUMBER:
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            fields={"ArgumentName": "partNumber", "ArgumentValue": text},
        )
    return number


# -- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartPlace:
    number: int
    plaintext_start: int
    plaintext_size: int
    stored_start: int
    stored_size: int


class Layout:
    """Where each part of a multipart object sits, in plaintext and in stored bytes.

    Uniform layouts (every part but the last of one size: nearly every client) are kept as
    three numbers; others as per-part size arrays.
    """

    def __init__(self, segment_size: int, sizes: Sequence[int]) -> None:
        if not sizes:
            raise ValueError("a multipart object has at least one part")
        self.segment_size = segment_size
        self.count = len(sizes)
        head = sizes[:-1]
        self._uniform = all(s == sizes[0] for s in head)
        self._first = sizes[0]
        self._last = sizes[-1]
        self._starts: array | None = None
        self._stored_starts: array | None = None
        if not self._uniform:
            starts, stored = array("q", [0]), array("q", [0])
            for size in sizes:
                starts.append(starts[-1] + size)
                stored.append(stored[-1] + part_stored_size(size, segment_size))
            self._starts, self._stored_starts = starts, stored
        last = self.place(self.count)
        self.plaintext_size = last.plaintext_start + last.plaintext_size
        self.stored_size = last.stored_start + last.stored_size

    @classmethod
    def uniform(cls, segment_size: int, count: int, first: int, last: int) -> Layout:
        layout = cls.__new__(cls)
        layout.segment_size = segment_size
        layout.count = count
        layout._uniform = True
        layout._first = first if count > 1 else last
        layout._last = last
        layout._starts = layout._stored_starts = None
        place = layout.place(count)
        layout.plaintext_size = place.plaintext_start + place.plaintext_size
        layout.stored_size = place.stored_start + place.stored_size
        return layout

    def place(self, number: int) -> PartPlace:
        if not 1 <= number <= self.count:
            raise ValueError(f"part {number} is not in a {self.count}-part object")
        if self._starts is not None and self._stored_starts is not None:
            start, stored_start = self._starts[number - 1], self._stored_starts[number - 1]
            size = self._starts[number] - start
        else:
            size = self._last if number == self.count else self._first
            start = (number - 1) * self._first
            stored_start = (number - 1) * part_stored_size(self._first, self.segment_size)
        return PartPlace(
            number, start, size, stored_start, part_stored_size(size, self.segment_size)
        )

    def part_at(self, offset: int) -> int:
        """The part holding plaintext byte ``offset`` (0 <= offset < plaintext_size)."""
        if self._starts is not None:
            return bisect_right(self._starts, offset, 0, self.count)
        if self.count == 1 or self._first == 0:  # empty leading parts (only a forged object)
            return self.count
        return min(offset // self._first + 1, self.count)


def listing_plaintext_size(stored_size: int, part_count: int, segment_size: int) -> int | None:
    """A multipart object's plaintext size from its listing entry alone (size, ETag ``-N``).

    With ``c`` the stored size less the N headers, the object holds ``c = P + 16·T`` for T
    segments in all, each carrying at most S bytes, so ``T >= ⌈c / (S+16)⌉`` and T >= N.
    Taking ``T = max(N, ⌈c / (S+16)⌉)`` is exact when every part but the last is a whole number
    of segments (their segments then line up with one v1 object's); for other part sizes some
    parts end in short segments with tags of their own, T is larger, and this over-reports by
    up to 16 bytes a part.
    """
    if part_count < 1:
        return None
    body = stored_size - part_count * PART_HEADER_SIZE
    if body < fmt.TAG_SIZE * part_count:
        return None
    segments = max(part_count, -(-body // (segment_size + fmt.TAG_SIZE)))
    return body - fmt.TAG_SIZE * segments


def uniform_layout(
    stored_size: int, part_count: int, first: PartHeader, last: PartHeader, segment_size: int
) -> Layout | None:
    """The layout, if the headers of the first and last parts say every part but the last has
    the first's size; None when they do not (the reader then walks every header)."""
    if first.part_number != 1 or last.part_number != part_count:
        return None
    if part_count == 1:
        if part_stored_size(first.plaintext_size, segment_size) != stored_size:
            return None
        return Layout.uniform(segment_size, 1, first.plaintext_size, first.plaintext_size)
    layout = Layout.uniform(segment_size, part_count, first.plaintext_size, last.plaintext_size)
    return layout if layout.stored_size == stored_size else None


def last_header_offset(part_count: int, first: PartHeader, segment_size: int) -> int:
    """Where the last part's header sits if the layout is uniform."""
    return (part_count - 1) * part_stored_size(first.plaintext_size, segment_size)


# -- reading ----------------------------------------------------------------------------------


class MultipartOpener:
    """Decrypts plaintext bytes ``start..end`` (inclusive) of a multipart object from one
    contiguous stored window (:attr:`window`), part after part.

    The window starts at the first needed segment of the first part, whose header the caller
    supplies (it sits before the window). Without it, the window starts at that header
    instead, which only a range starting in the part's first segment may ask for. Every
    header read from the stream must name the part and size the layout expects.
    ``start=0, end=-1`` reads an empty object.
    """

    def __init__(
        self,
        data_key: bytes,
        layout: Layout,
        start: int,
        end: int,
        first_header: PartHeader | None,
    ) -> None:
        self._data_key = data_key
        self._layout = layout
        size = layout.plaintext_size
        if size == 0 and (start, end) == (0, -1):
            first_part = last_part = 1
        elif 0 <= start <= end < size:
            first_part, last_part = layout.part_at(start), layout.part_at(end)
            if end == size - 1:
                # A read to the end takes in empty parts after the last byte too, so the
                # window ends where the object does and their segments are authenticated.
                last_part = layout.count
        else:
            raise ValueError(f"range {start}-{end} is outside a {size}-byte object")
        self._start, self._end = start, end
        self._next, self._last_part = first_part, last_part
        first_place, first_span = self._part_plan(first_part)
        last_place, last_span = self._part_plan(last_part)
        window_start = first_place.stored_start + PART_HEADER_SIZE + first_span.stored_start
        if first_header is None:
            if first_span.first_segment != 0:
                raise ValueError("only a range from a part's first segment reads its header")
            window_start = first_place.stored_start
        self.window = (
            window_start,
            last_place.stored_start + PART_HEADER_SIZE + last_span.stored_end,
        )
        self.length = 0 if size == 0 else end - start + 1
        self._header = bytearray()
        self._opener: fmt.SegmentOpener | None = None
        self._stored_left = 0
        self._trimmed = fmt.SpanTrim(fmt.span_for_range(0, 0, -1, layout.segment_size))
        if first_header is not None:
            self._open_part(first_header)

    def _part_plan(self, number: int) -> tuple[PartPlace, fmt.SegmentSpan]:
        """Where part ``number`` is, and which of its segments the range needs (computed per
        part as the stream reaches it: an object may have 10 000 parts)."""
        layout = self._layout
        place = layout.place(number)
        if layout.plaintext_size == 0:
            return place, fmt.span_for_range(0, 0, -1, layout.segment_size)
        part_end = place.plaintext_start + place.plaintext_size - 1
        local_start = max(self._start, place.plaintext_start) - place.plaintext_start
        local_end = min(self._end, part_end) - place.plaintext_start
        span = fmt.span_for_range(place.plaintext_size, local_start, local_end, layout.segment_size)
        return place, span

    def _open_part(self, header: PartHeader) -> None:
        place, span = self._part_plan(self._next)
        if header.part_number != place.number or header.plaintext_size != place.plaintext_size:
            raise TamperedError(f"part {place.number} is missing or out of place")
        self._opener = fmt.SegmentOpener(
            part_key(self._data_key, header),
            self._layout.segment_size,
            place.plaintext_size,
            span.first_segment,
            span.last_segment,
            segment_aad_prefix(place.number),
        )
        self._stored_left = span.stored_end - span.stored_start + 1
        self._trimmed = fmt.SpanTrim(span)
        self._next += 1

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        while view.nbytes:
            if self._opener is None:
                if self._next > self._last_part:
                    raise TamperedError("stored bytes continue after the requested range")
                take = min(PART_HEADER_SIZE - len(self._header), view.nbytes)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == PART_HEADER_SIZE:
                    self._open_part(PartHeader.parse(self._header))
                    self._header.clear()
                continue
            take = min(self._stored_left, view.nbytes)
            out.extend(self._trimmed(self._opener.feed(view[:take])))
            view = view[take:]
            self._stored_left -= take
            if not self._stored_left:
                out.extend(self._trimmed(self._opener.finish()))
                self._opener = None
        return out

    def finish(self) -> list[bytes]:
        if self._opener is not None or self._header or self._next <= self._last_part:
            raise TamperedError("stored bytes end before the requested range does")
        return []
