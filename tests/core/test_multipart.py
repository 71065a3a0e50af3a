"""Format v2: part headers and keys, layouts, listing sizes, completion, the UploadId token, and
reading multipart objects back through every range and every tampering we can think of."""

from __future__ import annotations

import base64
import dataclasses
import os
from dataclasses import dataclass

import pytest

from trios3.core import format as fmt
from trios3.core.errors import S3Error, TamperedError
from trios3.core.keys import Envelope, Keyring, MasterKey
from trios3.core.multipart import (
    MAX_PART_NUMBER,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    PART_HEADER_SIZE,
    SALT_SIZE,
    VERSION,
    Layout,
    MultipartOpener,
    PartHeader,
    PartPlace,
    PartSealer,
    PlannedPart,
    UploadToken,
    last_header_offset,
    listing_plaintext_size,
    normalise_etag,
    parse_part_number,
    part_key,
    part_plaintext_size,
    part_stored_size,
    plan_completion,
    segment_aad_prefix,
    uniform_layout,
)

S = 4096
STRIDE = S + fmt.TAG_SIZE
DEFAULT = fmt.DEFAULT_SEGMENT_SIZE
MIB = 1024 * 1024
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SALT = bytes(range(16))


# --- helpers -------------------------------------------------------------------------------


def seal_part(
    data: bytes, number: int, key: bytes = KEY, segment_size: int = S, chunk: int = 0
) -> tuple[PartHeader, bytes]:
    """One stored part: header.encode() + sealed segments."""
    sealer = PartSealer(key, segment_size, number, len(data))
    out = [sealer.header.encode()]
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        out.extend(sealer.feed(data[i : i + step]))
    out.append(sealer.finish())
    stored = b"".join(out)
    assert len(stored) == sealer.stored_size == part_stored_size(len(data), segment_size)
    return sealer.header, stored


@dataclass
class Sealed:
    plain: bytes
    layout: Layout
    headers: list[PartHeader]
    parts: list[bytes]  # stored bytes of each part, header included

    @property
    def stored(self) -> bytes:
        return b"".join(self.parts)


def seal_object(sizes: list[int], key: bytes = KEY) -> Sealed:
    plain = os.urandom(sum(sizes))
    headers, parts, offset = [], [], 0
    for number, size in enumerate(sizes, start=1):
        header, stored = seal_part(plain[offset : offset + size], number, key)
        headers.append(header)
        parts.append(stored)
        offset += size
    return Sealed(plain, Layout(S, sizes), headers, parts)


def feed_all(opener: MultipartOpener, data: bytes, chunk: int = 0) -> bytes:
    out: list[bytes] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        out.extend(opener.feed(data[i : i + step]))
    out.extend(opener.finish())
    return b"".join(out)


def opener_for(
    obj: Sealed,
    start: int,
    end: int,
    key: bytes = KEY,
    first_header: PartHeader | None = None,
) -> MultipartOpener:
    number = obj.layout.part_at(start) if end >= start else 1
    header = obj.headers[number - 1] if first_header is None else first_header
    return MultipartOpener(key, obj.layout, start, end, header)


def read(
    obj: Sealed,
    start: int,
    end: int,
    chunk: int = 0,
    stored: bytes | None = None,
    key: bytes = KEY,
    first_header: PartHeader | None = None,
) -> bytes:
    """Plaintext start..end, fed from the opener's window of the stored object."""
    opener = opener_for(obj, start, end, key, first_header)
    low, high = opener.window
    stored = obj.stored if stored is None else stored
    return feed_all(opener, stored[low : high + 1], chunk)


def reference_places(sizes: list[int], segment_size: int) -> list[PartPlace]:
    places, start, stored = [], 0, 0
    for number, size in enumerate(sizes, start=1):
        stored_size = part_stored_size(size, segment_size)
        places.append(PartPlace(number, start, size, stored, stored_size))
        start += size
        stored += stored_size
    return places


def reference_part_at(sizes: list[int], offset: int) -> int:
    start = 0
    for number, size in enumerate(sizes, start=1):
        if start <= offset < start + size:
            return number
        start += size
    raise AssertionError(f"offset {offset} is outside the object")


# --- part headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "size"),
    [(1, 0), (1, 1), (42, 5_300_000), (MAX_PART_NUMBER, MAX_PART_SIZE), (9999, 2**32 + 7)],
)
def test_part_header_round_trip(number: int, size: int) -> None:
    header = PartHeader(os.urandom(SALT_SIZE), number, size)
    raw = header.encode()
    assert len(raw) == PART_HEADER_SIZE == 28
    assert raw[:SALT_SIZE] == header.salt
    assert raw[SALT_SIZE:20] == number.to_bytes(4, "big")
    assert raw[20:] == size.to_bytes(8, "big")
    assert PartHeader.parse(raw) == header
    assert PartHeader.parse(bytearray(raw)) == header
    assert PartHeader.parse(memoryview(raw)) == header


@pytest.mark.parametrize("length", [0, 1, PART_HEADER_SIZE - 1, PART_HEADER_SIZE + 1, 56])
def test_part_header_parse_refuses_wrong_length(length: int) -> None:
    with pytest.raises(TamperedError):
        PartHeader.parse(bytes(length))


@pytest.mark.parametrize(
    ("number", "size"),
    [
        (0, 10),
        (MAX_PART_NUMBER + 1, 10),
        (2**32 - 1, 10),
        (1, MAX_PART_SIZE + 1),
        (1, 2**64 - 1),
        (0, MAX_PART_SIZE + 1),
    ],
)
def test_part_header_parse_refuses_impossible_fields(number: int, size: int) -> None:
    raw = SALT + number.to_bytes(4, "big") + size.to_bytes(8, "big")
    with pytest.raises(TamperedError):
        PartHeader.parse(raw)


# --- part sizes ----------------------------------------------------------------------------


def _boundary_sizes(segment_size: int) -> list[int]:
    s = segment_size
    return [
        0,
        1,
        s - 1,
        s,
        s + 1,
        2 * s - 1,
        2 * s,
        2 * s + 1,
        3 * s,
        40 * s,
        40 * s + 1,
        5 * MIB - 1,
        5 * MIB,
        5 * MIB + 1,
        8 * MIB,
        5_300_000,
        MAX_PART_SIZE - 1,
        MAX_PART_SIZE,
    ]


@pytest.mark.parametrize("segment_size", [S, 8192, DEFAULT, fmt.MAX_SEGMENT_SIZE])
def test_part_sizes_are_inverse_around_segment_boundaries(segment_size: int) -> None:
    for size in _boundary_sizes(segment_size):
        stored = part_stored_size(size, segment_size)
        segments = max(1, -(-size // segment_size))
        assert stored == PART_HEADER_SIZE + size + fmt.TAG_SIZE * segments, size
        assert part_plaintext_size(stored, segment_size) == size, size


def test_part_sizes_are_inverse_for_every_small_size() -> None:
    valid = {}
    for size in range(0, 4 * S + 2):
        stored = part_stored_size(size, S)
        assert part_plaintext_size(stored, S) == size
        valid[stored] = size
    for stored in range(-1, part_stored_size(4 * S, S) + 1):
        assert part_plaintext_size(stored, S) == valid.get(stored), stored


@pytest.mark.parametrize(
    "stored",
    [
        -1,
        0,
        1,
        PART_HEADER_SIZE - 1,
        PART_HEADER_SIZE,  # a header and not even the empty segment's tag
        PART_HEADER_SIZE + 1,
        PART_HEADER_SIZE + fmt.TAG_SIZE - 1,
        PART_HEADER_SIZE + STRIDE + 1,  # a full segment, then a 1-byte "segment"
        PART_HEADER_SIZE + STRIDE + fmt.TAG_SIZE,  # a full segment, then a bare tag
        PART_HEADER_SIZE + 3 * STRIDE + 7,
        part_stored_size(5 * MIB, S) + 1,
    ],
)
def test_impossible_part_sizes_are_none(stored: int) -> None:
    assert part_plaintext_size(stored, S) is None


def test_smallest_part_is_a_header_and_one_tag() -> None:
    assert part_stored_size(0, S) == PART_HEADER_SIZE + fmt.TAG_SIZE == 44
    assert part_plaintext_size(44, S) == 0
    assert part_plaintext_size(45, S) == 1
    assert part_plaintext_size(PART_HEADER_SIZE + STRIDE + fmt.TAG_SIZE + 1, S) == S + 1


# --- sealing parts, freshness --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 3 * S + 17])
@pytest.mark.parametrize("chunk", [1, 7, S + 3, 0])
def test_part_is_a_header_then_v1_style_segments_under_the_part_key(size: int, chunk: int) -> None:
    if chunk == 1 and size > S + 1:
        chunk = 5  # keep the 1-byte feeds for the small sizes
    data = os.urandom(size)
    header, stored = seal_part(data, 7, chunk=chunk)
    assert stored[:PART_HEADER_SIZE] == header.encode()
    assert (header.part_number, header.plaintext_size) == (7, size)
    assert len(header.salt) == SALT_SIZE
    opener = fmt.SegmentOpener(part_key(KEY, header), S, size, aad_prefix=segment_aad_prefix(7))
    body = stored[PART_HEADER_SIZE:]
    assert b"".join(opener.feed(body)) + b"".join(opener.finish()) == data
    # Under the data key itself, or v1's AAD, or another part number, nothing opens.
    for wrong_key, prefix in [
        (KEY, segment_aad_prefix(7)),
        (part_key(KEY, header), b"trios3 v1 segment\x00"),
        (part_key(KEY, header), segment_aad_prefix(8)),
    ]:
        wrong = fmt.SegmentOpener(wrong_key, S, size, aad_prefix=prefix)
        with pytest.raises(TamperedError):
            wrong.feed(body)
            wrong.finish()


def test_two_attempts_at_the_same_part_use_fresh_salts_and_differ() -> None:
    data = os.urandom(2 * S + 5)
    header_a, stored_a = seal_part(data, 3)
    header_b, stored_b = seal_part(data, 3)
    assert header_a.salt != header_b.salt
    assert (header_a.part_number, header_a.plaintext_size) == (3, len(data))
    assert (header_b.part_number, header_b.plaintext_size) == (3, len(data))
    assert part_key(KEY, header_a) != part_key(KEY, header_b)
    body_a, body_b = stored_a[PART_HEADER_SIZE:], stored_b[PART_HEADER_SIZE:]
    assert len(body_a) == len(body_b)
    # Not one segment (nor its first 16 bytes) in common: no (key, nonce) pair is reused.
    for i in range(0, len(body_a), STRIDE):
        assert body_a[i : i + 16] != body_b[i : i + 16]


def test_salts_are_random_across_many_sealers() -> None:
    salts = {PartSealer(KEY, S, 1, 0).header.salt for _ in range(200)}
    assert len(salts) == 200


def test_part_key_depends_on_every_input() -> None:
    base = PartHeader(SALT, 5, 6 * MIB)
    key = part_key(KEY, base)
    assert len(key) == 32
    assert part_key(KEY, PartHeader(SALT, 5, 6 * MIB)) == key  # deterministic
    others = [
        part_key(KEY, dataclasses.replace(base, salt=bytes(16))),
        part_key(KEY, dataclasses.replace(base, salt=SALT[:-1] + b"\xff")),
        part_key(KEY, dataclasses.replace(base, part_number=6)),
        part_key(KEY, dataclasses.replace(base, part_number=1)),
        part_key(KEY, dataclasses.replace(base, plaintext_size=6 * MIB + 1)),
        part_key(KEY, dataclasses.replace(base, plaintext_size=0)),
        part_key(OTHER_KEY, base),
        key,
    ]
    assert len(set(others)) == len(others)


def test_segment_aad_prefix_names_the_part() -> None:
    prefixes = {segment_aad_prefix(n) for n in (1, 2, 256, MAX_PART_NUMBER)}
    assert len(prefixes) == 4
    assert segment_aad_prefix(1) != b"trios3 v1 segment\x00"
    assert segment_aad_prefix(258).endswith((258).to_bytes(4, "big"))


@pytest.mark.parametrize(
    ("number", "size"),
    [(0, 1), (MAX_PART_NUMBER + 1, 1), (-1, 1), (1, -1), (1, MAX_PART_SIZE + 1)],
)
def test_part_sealer_refuses_out_of_range_numbers_and_sizes(number: int, size: int) -> None:
    with pytest.raises(ValueError):
        PartSealer(KEY, S, number, size)


def test_part_sealer_accepts_the_extremes() -> None:
    assert PartSealer(KEY, S, MAX_PART_NUMBER, MAX_PART_SIZE).header.part_number == 10_000
    assert PartSealer(KEY, S, 1, 0).stored_size == 44


@pytest.mark.parametrize("segment_size", [1000, 2048, 6144, 2**25])
def test_part_sealer_checks_its_segment_size(segment_size: int) -> None:
    with pytest.raises(ValueError):
        PartSealer(KEY, segment_size, 1, 10)


@pytest.mark.parametrize("fed", [0, 99, 101, 2 * S])
def test_part_sealer_refuses_a_body_of_another_size(fed: int) -> None:
    sealer = PartSealer(KEY, S, 1, 100)
    sealer.feed(bytes(fed))
    with pytest.raises(ValueError):
        sealer.finish()


# --- layout --------------------------------------------------------------------------------


UNIFORM_SHAPES = [
    # (segment size, count, first, last)
    (S, 1, 0, 0),
    (S, 1, 3 * S + 5, 3 * S + 5),
    (S, 2, S, 1),
    (S, 3, 2 * S, 2 * S),
    (S, 4, S + 100, 7),
    (S, 3, S, 3 * S + 1),  # a last part larger than the others
    (S, 3, 2 * S, 0),  # an empty last part
    (DEFAULT, 5, 5 * MIB, 1),
    (DEFAULT, 10, 8 * MIB, 8 * MIB),
    (DEFAULT, 7, 5_300_000, 123_456),
    (DEFAULT, MAX_PART_NUMBER, MAX_PART_SIZE, MAX_PART_SIZE),
]


@pytest.mark.parametrize(("segment_size", "count", "first", "last"), UNIFORM_SHAPES)
def test_uniform_and_explicit_layouts_agree(
    segment_size: int, count: int, first: int, last: int
) -> None:
    sizes = [first] * (count - 1) + [last]
    uniform = Layout.uniform(segment_size, count, first, last)
    listed = Layout(segment_size, sizes)
    few = sorted({1, 2, count // 2, count - 1, count} & set(range(1, count + 1)))
    numbers = range(1, count + 1) if count <= 50 else few
    reference = reference_places(sizes, segment_size) if count <= 50 else None
    for layout in (uniform, listed):
        assert layout.count == count
        assert layout.segment_size == segment_size
        assert layout.plaintext_size == sum(sizes)
        assert layout.stored_size == (count - 1) * part_stored_size(
            first, segment_size
        ) + part_stored_size(last, segment_size)
        for number in numbers:
            place = layout.place(number)
            assert place == listed.place(number) == uniform.place(number)
            if reference is not None:
                assert place == reference[number - 1]
            assert place.stored_size == part_stored_size(place.plaintext_size, segment_size)
            if place.plaintext_size:
                begin = place.plaintext_start
                finish = begin + place.plaintext_size - 1
                assert layout.part_at(begin) == number
                assert layout.part_at(finish) == number
                if begin:
                    assert layout.part_at(begin - 1) == number - 1
        if layout.plaintext_size:
            assert layout.part_at(layout.plaintext_size - 1) == (count if last else count - 1)


def test_uniform_single_part_ignores_first() -> None:
    layout = Layout.uniform(S, 1, 999_999, 10)
    assert layout.place(1) == PartPlace(1, 0, 10, 0, part_stored_size(10, S))
    assert layout.plaintext_size == 10
    assert layout.part_at(9) == 1


UNEVEN = [
    [S + 1, 3 * S, 17, 2 * S - 5, S],
    [5 * MIB, 6 * MIB, 5 * MIB, 1],
    [S, 2 * S, 0],
    [S, 0, 0, S],  # empty parts in the middle: part_at skips them
    [1, 1, 2, 1],
    [2 * S, S, S, S, S],
]


@pytest.mark.parametrize("sizes", UNEVEN)
def test_uneven_layout_matches_a_reference_at_every_boundary(sizes: list[int]) -> None:
    layout = Layout(S, sizes)
    reference = reference_places(sizes, S)
    assert layout.count == len(sizes)
    assert layout.plaintext_size == sum(sizes)
    assert layout.stored_size == sum(p.stored_size for p in reference)
    for number, place in enumerate(reference, start=1):
        assert layout.place(number) == place
    offsets = set()
    for place in reference:
        for b in (place.plaintext_start, place.plaintext_start + place.plaintext_size):
            offsets |= {b - 1, b, b + 1}
    for offset in sorted(o for o in offsets if 0 <= o < layout.plaintext_size):
        assert layout.part_at(offset) == reference_part_at(sizes, offset), offset


def test_layout_part_at_every_offset_of_a_tiny_uneven_object() -> None:
    sizes = [3, 1, 4, 1, 5, 9, 2, 6]
    layout = Layout(S, sizes)
    for offset in range(sum(sizes)):
        assert layout.part_at(offset) == reference_part_at(sizes, offset)


def test_layout_refuses_no_parts_and_unknown_part_numbers() -> None:
    with pytest.raises(ValueError):
        Layout(S, [])
    for layout in (Layout(S, [S, S, 5]), Layout(S, [S, 2 * S, 5]), Layout.uniform(S, 3, S, 5)):
        for number in (0, -1, 4):
            with pytest.raises(ValueError):
                layout.place(number)


def test_layout_with_an_empty_first_part_is_read_or_refused() -> None:
    obj = seal_object([0, 10])
    layout = uniform_layout(len(obj.stored), 2, obj.headers[0], obj.headers[1], S)
    if layout is None:
        return  # refusing the layout is fine too
    assert layout.part_at(0) == reference_part_at([0, 10], 0) == 2
    assert read(dataclasses.replace(obj, layout=layout), 0, 9) == obj.plain


# --- finding a uniform layout from two headers ----------------------------------------------


def _headers(count: int, first: int, last: int) -> tuple[PartHeader, PartHeader, int]:
    layout = Layout.uniform(S, count, first, last)
    return PartHeader(SALT, 1, first), PartHeader(SALT, count, last), layout.stored_size


@pytest.mark.parametrize(("count", "first", "last"), [(2, S, 1), (3, 2 * S, 2 * S), (5, 7, 7 * S)])
def test_uniform_layout_accepts_consistent_headers(count: int, first: int, last: int) -> None:
    head, tail, stored = _headers(count, first, last)
    layout = uniform_layout(stored, count, head, tail, S)
    assert layout is not None
    expected = Layout(S, [first] * (count - 1) + [last])
    assert [layout.place(n) for n in range(1, count + 1)] == [
        expected.place(n) for n in range(1, count + 1)
    ]
    assert layout.stored_size == stored
    assert last_header_offset(count, head, S) == expected.place(count).stored_start


def test_uniform_layout_of_a_real_object_and_its_last_header_offset() -> None:
    obj = seal_object([2 * S + 100, 2 * S + 100, 2 * S + 100, 50])
    stored = obj.stored
    first, last = obj.headers[0], obj.headers[-1]
    offset = last_header_offset(4, first, S)
    assert PartHeader.parse(stored[offset : offset + PART_HEADER_SIZE]) == last
    layout = uniform_layout(len(stored), 4, first, last, S)
    assert layout is not None
    assert layout.plaintext_size == len(obj.plain)
    assert read(dataclasses.replace(obj, layout=layout), 0, len(obj.plain) - 1) == obj.plain


def test_uniform_layout_of_one_part() -> None:
    head = PartHeader(SALT, 1, 3 * S + 1)
    stored = part_stored_size(3 * S + 1, S)
    layout = uniform_layout(stored, 1, head, head, S)
    assert layout is not None
    assert (layout.count, layout.plaintext_size, layout.stored_size) == (1, 3 * S + 1, stored)
    assert last_header_offset(1, head, S) == 0
    for wrong in (stored - 1, stored + 1, stored + STRIDE):
        assert uniform_layout(wrong, 1, head, head, S) is None
    empty = PartHeader(SALT, 1, 0)
    assert uniform_layout(44, 1, empty, empty, S) is not None
    assert uniform_layout(45, 1, empty, empty, S) is None


def test_uniform_layout_refuses_mismatches() -> None:
    head, tail, stored = _headers(4, 2 * S, 100)
    assert uniform_layout(stored, 4, head, tail, S) is not None
    # wrong count
    assert uniform_layout(stored, 3, head, tail, S) is None
    assert uniform_layout(stored, 5, head, tail, S) is None
    # the last header is not part N, or the first not part 1
    assert uniform_layout(stored, 4, head, dataclasses.replace(tail, part_number=3), S) is None
    assert uniform_layout(stored, 4, dataclasses.replace(head, part_number=2), tail, S) is None
    assert uniform_layout(stored, 4, tail, tail, S) is None
    # a count that agrees with the last header but not with the stored size
    assert uniform_layout(stored, 3, head, dataclasses.replace(tail, part_number=3), S) is None
    assert uniform_layout(stored, 5, head, dataclasses.replace(tail, part_number=5), S) is None
    # sizes that do not add up to the stored size
    for wrong in (stored - 1, stored + 1, stored - STRIDE, stored + PART_HEADER_SIZE):
        assert uniform_layout(wrong, 4, head, tail, S) is None
    assert uniform_layout(stored, 4, head, dataclasses.replace(tail, plaintext_size=101), S) is None
    assert (
        uniform_layout(stored, 4, dataclasses.replace(head, plaintext_size=2 * S + 1), tail, S)
        is None
    )
    # one-part objects: first and last must both be part 1
    one = PartHeader(SALT, 1, 10)
    assert uniform_layout(part_stored_size(10, S), 1, one, tail, S) is None


def test_uniform_layout_refuses_an_uneven_object() -> None:
    obj = seal_object([2 * S, 3 * S, 2 * S, 10])
    stored = obj.stored
    offset = last_header_offset(4, obj.headers[0], S)
    # What sits where the last header would be is not part 4's header ...
    assert stored[offset : offset + PART_HEADER_SIZE] != obj.headers[3].encode()
    # ... and even the true last header does not make the sizes add up.
    assert uniform_layout(len(stored), 4, obj.headers[0], obj.headers[3], S) is None


# --- listing sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("segment_size", [S, DEFAULT])
@pytest.mark.parametrize("whole", [1, 2, 40, 64])
@pytest.mark.parametrize("count", [1, 2, 3, 10, 1000])
def test_listing_size_is_exact_for_whole_segment_parts(
    segment_size: int, whole: int, count: int
) -> None:
    part = whole * segment_size
    for last in (1, 100, segment_size - 1, segment_size, segment_size + 1, 3 * segment_size + 7):
        if count == 1:
            last = part + last  # a one-part object is its own last part: any size
        sizes_total = (count - 1) * part + last
        stored = (count - 1) * part_stored_size(part, segment_size) + part_stored_size(
            last, segment_size
        )
        assert listing_plaintext_size(stored, count, segment_size) == sizes_total
    full = count * part
    stored = count * part_stored_size(part, segment_size)
    assert listing_plaintext_size(stored, count, segment_size) == full


@pytest.mark.parametrize(
    ("sizes", "segment_size"),
    [
        ([5 * MIB] * 3 + [1], DEFAULT),
        ([8 * MIB] * 12 + [8 * MIB], DEFAULT),
        ([16 * MIB, 16 * MIB, 3], DEFAULT),
        ([0], S),
        ([0], DEFAULT),
        ([5 * MIB], DEFAULT),
    ],
)
def test_listing_size_of_common_uploads(sizes: list[int], segment_size: int) -> None:
    stored = sum(part_stored_size(s, segment_size) for s in sizes)
    assert listing_plaintext_size(stored, len(sizes), segment_size) == sum(sizes)


def test_listing_size_needs_a_part_count() -> None:
    assert listing_plaintext_size(part_stored_size(10, S), 0, S) is None
    assert listing_plaintext_size(part_stored_size(10, S), -1, S) is None


@pytest.mark.parametrize(
    ("sizes", "over"),
    [
        ([5_300_000, 1000], 16),
        ([5_300_000, 5_300_000], 16),
        ([5_300_000, 5_300_000, 1000], 32),
        # Three short tails (57 120 bytes each) fill more than one 128 KiB segment between
        # them, so the over-report is 32, not 3 * 16: "up to 16 bytes a part".
        ([5_300_000] * 3 + [1000], 32),
        ([5_300_000] * 4, 32),
    ],
)
def test_listing_size_over_reports_non_whole_segment_parts(sizes: list[int], over: int) -> None:
    stored = sum(part_stored_size(s, DEFAULT) for s in sizes)
    got = listing_plaintext_size(stored, len(sizes), DEFAULT)
    assert got is not None
    assert got - sum(sizes) == over
    partial = sum(1 for s in sizes[:-1] if s % DEFAULT)
    assert 0 <= got - sum(sizes) <= 16 * partial  # the docstring's rule


@pytest.mark.parametrize("segment_size", [S, DEFAULT])
def test_listing_size_is_exact_with_an_empty_last_part(segment_size: int) -> None:
    sizes = [5 * MIB, 0]
    plan = plan_completion(
        [(1, "a"), (2, "b")],
        {1: [("a", part_stored_size(sizes[0], segment_size))], 2: [("b", 44)]},
        segment_size,
    )
    assert [p.plaintext_size for p in plan] == sizes  # the proxy completes such an upload
    stored = sum(part_stored_size(s, segment_size) for s in sizes)
    assert listing_plaintext_size(stored, 2, segment_size) == 5 * MIB


@pytest.mark.parametrize(
    ("sizes", "segment_size"),
    [
        ([5_300_000, 73_940], DEFAULT),
        ([5 * MIB + 100, DEFAULT - 100], DEFAULT),
        ([5_300_000] * 55, S),
        ([5_300_000] * 129 + [100], S),
    ],
)
def test_listing_size_over_reports_at_most_16_bytes_a_part(
    sizes: list[int], segment_size: int
) -> None:
    stored = sum(part_stored_size(s, segment_size) for s in sizes)
    got = listing_plaintext_size(stored, len(sizes), segment_size)
    assert got is not None
    assert 0 <= got - sum(sizes) <= 16 * len(sizes)


# --- completing an upload ------------------------------------------------------------------


def etag(number: int, attempt: int = 0) -> str:
    return f'"{number:08x}{attempt:024x}"'


def held(*sizes: int, segment_size: int = S) -> dict[int, list[tuple[str, int]]]:
    return {n: [(etag(n), part_stored_size(s, segment_size))] for n, s in enumerate(sizes, 1)}


def ask(count: int) -> list[tuple[int, str]]:
    return [(n, etag(n)) for n in range(1, count + 1)]


def completion_error(
    requested: list[tuple[int, str]],
    uploaded: dict[int, list[tuple[str, int]]],
    segment_size: int = S,
) -> S3Error:
    with pytest.raises(S3Error) as info:
        plan_completion(requested, uploaded, segment_size)
    return info.value


def test_plan_of_a_valid_upload() -> None:
    sizes = [5 * MIB, 5 * MIB, 5 * MIB + 1, 17]
    plan = plan_completion(ask(4), held(*sizes), S)
    assert plan == [
        PlannedPart(n, etag(n), size, part_stored_size(size, S))
        for n, size in enumerate(sizes, start=1)
    ]


@pytest.mark.parametrize("sizes", [[0], [1], [MAX_PART_SIZE], [5 * MIB, 1], [5 * MIB, 0]])
def test_plan_accepts_small_or_empty_last_parts(sizes: list[int]) -> None:
    plan = plan_completion(ask(len(sizes)), held(*sizes), S)
    assert [p.plaintext_size for p in plan] == sizes


def test_plan_of_nothing_is_malformed() -> None:
    assert completion_error([], held(5 * MIB)).code == "MalformedXML"


@pytest.mark.parametrize(
    "numbers", [[2, 1], [1, 1], [1, 2, 2], [1, 3, 2], [0, 1], [1, 2, 0], [3, 2, 1]]
)
def test_plan_refuses_parts_out_of_order(numbers: list[int]) -> None:
    uploaded = held(5 * MIB, 5 * MIB, 5 * MIB)
    requested = [(n, etag(n)) for n in numbers]
    assert completion_error(requested, uploaded).code == "InvalidPartOrder"


def test_plan_refuses_an_unknown_part() -> None:
    error = completion_error(ask(3), held(5 * MIB, 5 * MIB))
    assert error.code == "InvalidPart"
    assert error.fields["PartNumber"] == "3"
    assert error.fields["ETag"] == etag(3)


def test_plan_refuses_a_wrong_etag() -> None:
    requested = [(1, etag(1)), (2, etag(2, attempt=9))]
    error = completion_error(requested, held(5 * MIB, 10))
    assert error.code == "InvalidPart"
    assert error.fields["PartNumber"] == "2"


@pytest.mark.parametrize(("numbers", "missing"), [([1, 3], "2"), ([2, 3], "1"), ([1, 2, 4], "3")])
def test_plan_refuses_a_gap_in_numbering(numbers: list[int], missing: str) -> None:
    uploaded = held(5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB)
    error = completion_error([(n, etag(n)) for n in numbers], uploaded)
    assert error.code == "InvalidPart"
    assert error.fields["PartNumber"] == missing


@pytest.mark.parametrize(
    "stored",
    [
        0,
        PART_HEADER_SIZE,
        PART_HEADER_SIZE + 15,
        PART_HEADER_SIZE + 2 * STRIDE + 16,
        part_stored_size(5 * MIB, S) + 1,
    ],
)
def test_plan_refuses_a_part_trios3_did_not_write(stored: int) -> None:
    uploaded = held(5 * MIB, 5 * MIB)
    uploaded[2] = [(etag(2), stored)]
    error = completion_error(ask(2), uploaded)
    assert error.code == "InvalidPart"
    assert error.fields["PartNumber"] == "2"


@pytest.mark.parametrize(
    ("sizes", "number"),
    [
        ([5 * MIB - 1, 5 * MIB], "1"),
        ([5 * MIB, 1, 1], "2"),
        ([5 * MIB, 5 * MIB, 0, 5 * MIB], "3"),
        ([0, 0], "1"),
    ],
)
def test_plan_refuses_small_parts_before_the_last(sizes: list[int], number: str) -> None:
    error = completion_error(ask(len(sizes)), held(*sizes))
    assert error.code == "EntityTooSmall"
    assert error.fields["PartNumber"] == number
    assert error.fields["ProposedSize"] == str(sizes[int(number) - 1])
    assert error.fields["MinSizeAllowed"] == str(MIN_PART_SIZE)


def test_plan_picks_the_attempt_whose_etag_matches() -> None:
    uploaded = held(5 * MIB, 5 * MIB, 3)
    uploaded[2] = [
        (etag(2, 0), part_stored_size(6 * MIB, S)),
        (etag(2, 1), part_stored_size(5 * MIB, S)),
        (etag(2, 2), part_stored_size(7 * MIB, S)),
    ]
    for attempt, size in [(0, 6 * MIB), (1, 5 * MIB), (2, 7 * MIB)]:
        requested = [(1, etag(1)), (2, etag(2, attempt)), (3, etag(3))]
        plan = plan_completion(requested, uploaded, S)
        assert plan[1] == PlannedPart(2, etag(2, attempt), size, part_stored_size(size, S))
    requested = [(1, etag(1)), (2, etag(2, 3)), (3, etag(3))]
    assert completion_error(requested, uploaded).code == "InvalidPart"


@pytest.mark.parametrize(
    "sent",
    [
        "0123456789abcdef0123456789abcdef",
        '"0123456789abcdef0123456789abcdef"',
        '"0123456789abcdef0123456789abcdef-0"',
        "0123456789abcdef0123456789abcdef-0",
        '"0123456789ABCDEF0123456789ABCDEF-0"',
        ' "0123456789abcdef0123456789abcdef" ',
    ],
)
@pytest.mark.parametrize(
    "stored",
    ['"0123456789abcdef0123456789abcdef"', "0123456789abcdef0123456789abcdef"],
)
def test_plan_compares_etags_without_quotes_or_the_proxy_suffix(sent: str, stored: str) -> None:
    plan = plan_completion([(1, sent)], {1: [(stored, part_stored_size(10, S))]}, S)
    assert plan[0].backend_etag == stored
    assert normalise_etag(sent) == normalise_etag(stored) == "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "sent", ['"0123456789abcdef0123456789abcdef-1"', "0123456789abcdef0123456789abcde", '""']
)
def test_plan_does_not_over_normalise_etags(sent: str) -> None:
    uploaded = {1: [('"0123456789abcdef0123456789abcdef"', part_stored_size(10, S))]}
    assert completion_error([(1, sent)], uploaded).code == "InvalidPart"


AMBIGUOUS = [
    # middle parts differ, but their stored sizes add up to whole first parts
    [6 * MIB, 6 * MIB - S, 6 * MIB + S, 1000],
    [6 * MIB, 6 * MIB + S, 6 * MIB - S, 6 * MIB],
    [6 * MIB, 6 * MIB - 2 * S, 6 * MIB, 6 * MIB + 2 * S, 1],
    [7 * MIB, 6 * MIB, 8 * MIB, 7 * MIB, 6 * MIB, 8 * MIB, 5 * MIB],
]


@pytest.mark.parametrize("sizes", AMBIGUOUS)
def test_plan_refuses_an_ambiguous_uneven_upload(sizes: list[int]) -> None:
    error = completion_error(ask(len(sizes)), held(*sizes))
    assert error.code == "InvalidRequest"
    # Why: the two headers a reader checks would pass for a uniform layout, a wrong one.
    n = len(sizes)
    true = Layout(S, sizes)
    first, last = PartHeader(SALT, 1, sizes[0]), PartHeader(SALT, n, sizes[-1])
    assert last_header_offset(n, first, S) == true.place(n).stored_start
    fooled = uniform_layout(true.stored_size, n, first, last, S)
    assert fooled is not None
    assert any(fooled.place(k) != true.place(k) for k in range(2, n))


UNAMBIGUOUS = [
    [6 * MIB, 6 * MIB - 100, 6 * MIB + 100, 1000],  # plaintext adds up, stored does not
    [5 * MIB, 6 * MIB, 7 * MIB, 1],
    [6 * MIB, 5 * MIB, 1000],  # three parts: one middle part cannot be ambiguous
    [6 * MIB, 6 * MIB, 6 * MIB, 7 * MIB],  # uniform but for a larger last part
    [5 * MIB] * 5 + [3],  # uniform
    [5 * MIB + 1, 5 * MIB + 1, 5 * MIB + 1, 5 * MIB + 1],
]


@pytest.mark.parametrize("sizes", UNAMBIGUOUS)
def test_plan_accepts_an_unambiguous_upload(sizes: list[int]) -> None:
    plan = plan_completion(ask(len(sizes)), held(*sizes), S)
    assert [p.plaintext_size for p in plan] == sizes
    n, true = len(sizes), Layout(S, sizes)
    first, last = PartHeader(SALT, 1, sizes[0]), PartHeader(SALT, n, sizes[-1])
    found = uniform_layout(true.stored_size, n, first, last, S)
    if found is not None:  # a reader that takes the shortcut gets the true layout
        assert all(found.place(k) == true.place(k) for k in range(1, n + 1))
    else:
        assert any(s != sizes[0] for s in sizes[1:-1])


def test_plan_ambiguity_rule_at_the_default_segment_size() -> None:
    s = DEFAULT
    ambiguous = [8 * MIB, 8 * MIB - s, 8 * MIB + s, 1]
    assert completion_error(ask(4), held(*ambiguous, segment_size=s), s).code == "InvalidRequest"
    fine = [8 * MIB, 8 * MIB - 1, 8 * MIB + 1, 1]
    assert len(plan_completion(ask(4), held(*fine, segment_size=s), s)) == 4


# --- the upload token ----------------------------------------------------------------------


KEY_ID = "0123456789abcdef"


@pytest.mark.parametrize(
    "backend_id",
    ["abc", "2~x/Y+z=", "ünïcødé-upload", "x" * 500, "VXBsb2FkSWQ", "a.b.c"],
)
@pytest.mark.parametrize("segment_size", [S, DEFAULT, fmt.MAX_SEGMENT_SIZE])
def test_token_round_trip(backend_id: str, segment_size: int) -> None:
    token = UploadToken(backend_id, KEY_ID, segment_size, os.urandom(60))
    text = token.encode()
    assert text.startswith("t3.")
    assert text.isascii()
    assert "=" not in text and "/" not in text and "+" not in text
    assert UploadToken.decode(text) == token
    assert token.carries_key


@pytest.mark.parametrize("backend_id", ["abc", "ünïcødé", "y" * 300])
def test_listed_token_round_trip(backend_id: str) -> None:
    token = UploadToken(backend_id)
    text = token.encode()
    assert text.startswith("t3l.")
    decoded = UploadToken.decode(text)
    assert decoded == token
    assert not decoded.carries_key
    assert decoded.key_id is None and decoded.segment_size is None


def test_token_missing_any_key_field_encodes_as_listed() -> None:
    for token in [
        UploadToken("u", None, S, bytes(60)),
        UploadToken("u", KEY_ID, None, bytes(60)),
        UploadToken("u", KEY_ID, S, None),
    ]:
        assert UploadToken.decode(token.encode()) == UploadToken("u")


def _raw_token(
    key_id: bytes = bytes(8), exponent: int = 12, wrapped: bytes = bytes(60), upload: bytes = b"u"
) -> str:
    raw = key_id + bytes([exponent]) + wrapped + upload
    return "t3." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


GOOD = UploadToken("backend-upload-1", KEY_ID, S, bytes(range(60))).encode()


@pytest.mark.parametrize(
    "upload_id",
    [
        "",
        "garbage",
        "t3",
        "t3.",
        "t3l.",
        "t3l",
        "T3." + GOOD[3:],  # prefixes are case-sensitive
        "t4." + GOOD[3:],
        "t3:" + GOOD[3:],
        GOOD[3:],  # no prefix at all
        GOOD[:43],  # cut inside the wrapped key: no backend id left
        GOOD[: 3 + 92],  # cut right after the wrapped key: no backend id
        GOOD[:4],
        GOOD[:-1] + "é",  # non-ASCII
        "t3." + "é" * 100,
        "t3l.ü",
        "t3.A",  # a single base64 character cannot encode anything
        GOOD + "AAA",  # base64 of a length no encoder produces (4k + 1)
        "t3l.A",
        "t3l.!!!!",
        "t3l." + base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        _raw_token(upload=b"\xff\xfe"),  # backend id not UTF-8
        _raw_token(upload=b""),
        _raw_token(exponent=11),  # 2 KiB: below the smallest segment size
        _raw_token(exponent=25),  # 32 MiB: above the largest
        _raw_token(exponent=0),
        _raw_token(exponent=255),
    ],
)
def test_token_decode_refuses_what_the_proxy_never_handed_out(upload_id: str) -> None:
    with pytest.raises(S3Error) as info:
        UploadToken.decode(upload_id)
    assert info.value.code == "NoSuchUpload"
    assert info.value.status == 404


def test_token_decode_accepts_the_raw_layout_it_documents() -> None:
    token = UploadToken.decode(_raw_token(bytes(range(8)), 17, bytes(range(60)), b"up"))
    assert token == UploadToken("up", bytes(range(8)).hex(), 2**17, bytes(range(60)))


# --- the token's data key, bound to its upload ----------------------------------------------


@pytest.fixture
def ring() -> Keyring:
    return Keyring([MasterKey.from_bytes(bytes(range(32)))])


def _issue(ring: Keyring, bucket: str, key: str, upload: str) -> tuple[bytes, Envelope, str]:
    """What CreateMultipartUpload does: a v2 data key, its object envelope, and the UploadId."""
    data_key, envelope = ring.seal_new(bucket, key, S, version=VERSION)
    bound = ring.bind_to_upload(data_key, envelope, bucket, key, upload)
    assert (bound.version, bound.key_id, bound.segment_size) == (VERSION, envelope.key_id, S)
    assert bound.wrapped_key != envelope.wrapped_key
    token = UploadToken(upload, bound.key_id, bound.segment_size, bound.wrapped_key)
    return data_key, envelope, token.encode()


def _envelope(token: UploadToken) -> Envelope:
    """What UploadPart rebuilds from the token (as ops.multipart does)."""
    assert token.key_id is not None and token.segment_size is not None
    return Envelope(VERSION, token.key_id, token.segment_size, token.wrapped_key or b"")


def test_token_opens_for_its_own_upload(ring: Keyring) -> None:
    data_key, envelope, upload_id = _issue(ring, "bucket", "a/key", "upload-1")
    token = UploadToken.decode(upload_id)
    assert ring.open(_envelope(token), "bucket", "a/key", token.backend_upload_id) == data_key
    assert ring.open(envelope, "bucket", "a/key") == data_key


@pytest.mark.parametrize(
    ("bucket", "key", "upload"),
    [
        ("bucket", "a/key", "upload-2"),
        ("bucket", "a/key", "upload-"),
        ("bucket", "a/key", ""),
        ("bucket", "a/key2", "upload-1"),
        ("bucket2", "a/key", "upload-1"),
        ("bucketa", "/key", "upload-1"),
        ("bucket", "a/keyupload-1", ""),
    ],
)
def test_token_fails_for_another_upload_key_or_bucket(
    ring: Keyring, bucket: str, key: str, upload: str
) -> None:
    _, _, upload_id = _issue(ring, "bucket", "a/key", "upload-1")
    token = UploadToken.decode(upload_id)
    with pytest.raises(TamperedError):
        ring.open(_envelope(token), bucket, key, upload)


def test_token_moved_to_another_backend_upload_fails(ring: Keyring) -> None:
    _, _, upload_id = _issue(ring, "b", "k", "upload-1")
    token = UploadToken.decode(upload_id)
    moved = UploadToken.decode(dataclasses.replace(token, backend_upload_id="upload-2").encode())
    with pytest.raises(TamperedError):
        ring.open(_envelope(moved), "b", "k", moved.backend_upload_id)
    # The other upload's own token carries another data key altogether.
    other_key, _, other_id = _issue(ring, "b", "k", "upload-2")
    other = UploadToken.decode(other_id)
    assert ring.open(_envelope(other), "b", "k", "upload-2") == other_key
    swapped = dataclasses.replace(other, wrapped_key=token.wrapped_key)
    with pytest.raises(TamperedError):
        ring.open(_envelope(swapped), "b", "k", "upload-2")


def test_token_with_an_altered_segment_size_fails(ring: Keyring) -> None:
    _, _, upload_id = _issue(ring, "b", "k", "u")
    token = UploadToken.decode(upload_id)
    altered = UploadToken.decode(dataclasses.replace(token, segment_size=2 * S).encode())
    assert altered.segment_size == 2 * S
    with pytest.raises(TamperedError):
        ring.open(_envelope(altered), "b", "k", "u")


def test_token_with_a_flipped_wrapped_key_fails(ring: Keyring) -> None:
    _, _, upload_id = _issue(ring, "b", "k", "u")
    token = UploadToken.decode(upload_id)
    assert token.wrapped_key is not None
    for i in range(0, len(token.wrapped_key), 7):
        damaged = bytearray(token.wrapped_key)
        damaged[i] ^= 0x40
        again = UploadToken.decode(dataclasses.replace(token, wrapped_key=bytes(damaged)).encode())
        with pytest.raises(TamperedError):
            ring.open(_envelope(again), "b", "k", "u")


def test_object_envelope_and_token_are_not_interchangeable(ring: Keyring) -> None:
    _, envelope, upload_id = _issue(ring, "b", "k", "u")
    token = UploadToken.decode(upload_id)
    # The object's envelope does not open as the token's (bound to the upload id) ...
    with pytest.raises(TamperedError):
        ring.open(envelope, "b", "k", "u")
    as_token = UploadToken("u", envelope.key_id, envelope.segment_size, envelope.wrapped_key)
    with pytest.raises(TamperedError):
        ring.open(_envelope(UploadToken.decode(as_token.encode())), "b", "k", "u")
    # ... and the token's copy does not open as an object's envelope, nor with an empty id.
    with pytest.raises(TamperedError):
        ring.open(_envelope(token), "b", "k")
    with pytest.raises(TamperedError):
        ring.open(_envelope(token), "b", "k", "")
    with pytest.raises(TamperedError):
        ring.open(_envelope(token), "b", "k", "u", "")


def test_token_under_an_unknown_master_key_fails(ring: Keyring) -> None:
    _, _, upload_id = _issue(ring, "b", "k", "u")
    token = UploadToken.decode(upload_id)
    stranger = Keyring([MasterKey.from_bytes(bytes(range(50, 82)))])
    with pytest.raises(TamperedError):
        stranger.open(_envelope(token), "b", "k", "u")


# --- reading: round trips ------------------------------------------------------------------


LAYOUTS = {
    "empty": [0],
    "one-byte": [1],
    "one-part": [3 * S + 5],
    "one-part-whole-segments": [2 * S],
    "uniform-short-last": [2 * S, 2 * S, 2 * S, 100],
    "uniform-full-last": [S, S, S],
    "not-segment-multiples": [S + 100, S + 100, S + 100, 7],
    "larger-last": [S, S, 3 * S + 1],
    "empty-last": [2 * S, 2 * S, 0],
    "uneven": [S + 1, 3 * S, 17, 2 * S - 5, S],
    "empty-middle": [S + 3, 0, 0, S],  # not uploadable (EntityTooSmall), but readable
    "big-uniform": [20 * S, 20 * S, 5],  # windows larger than 64 KiB
}
OBJECTS = {name: seal_object(sizes) for name, sizes in LAYOUTS.items()}


def interesting_offsets(layout: Layout) -> list[int]:
    """Part boundaries +-1, and each side of a part's first and last segment boundaries."""
    size = layout.plaintext_size
    points = {0, 1, size - 2, size - 1}
    for number in range(1, layout.count + 1):
        place = layout.place(number)
        begin, end = place.plaintext_start, place.plaintext_start + place.plaintext_size
        points |= {begin - 1, begin, begin + 1, end - 1, end, end + 1}
        last_cut = begin + (place.plaintext_size - 1) // S * S if place.plaintext_size else begin
        for cut in {begin + S, last_cut} - {begin, end}:
            points |= {cut - 1, cut}
    return sorted(p for p in points if 0 <= p < size)


def all_ranges(layout: Layout) -> list[tuple[int, int]]:
    if layout.plaintext_size == 0:
        return [(0, -1)]
    offsets = interesting_offsets(layout)
    return [(a, b) for a in offsets for b in offsets if a <= b]


def sample_ranges(layout: Layout, tiny: bool = False) -> list[tuple[int, int]]:
    """A few ranges per part boundary, plus the whole object: for the slow chunk sizes.
    ``tiny``: only ranges of a byte or two (for byte-at-a-time feeding)."""
    size = layout.plaintext_size
    if size == 0:
        return [(0, -1)]
    ranges = {(0, 0), (size - 1, size - 1)}
    if size > S:
        ranges.add((S - 1, S))  # a segment boundary inside the first part
    if not tiny:
        ranges |= {(0, size - 1), (min(1, size - 1), max(0, size - 2))}
    for number in range(2, layout.count + 1):
        b = layout.place(number).plaintext_start
        if 0 < b < size:
            ranges.add((b - 1, b))
            if not tiny:
                ranges |= {(max(0, b - S - 1), min(size - 1, b + S)), (b, size - 1)}
                ranges |= {(0, b - 1), (b - 1, b - 1), (b, b)}
    return sorted(ranges)


def check_window(obj: Sealed, opener: MultipartOpener, start: int, end: int) -> None:
    low, high = opener.window
    stored = obj.stored
    assert 0 < low <= high < len(stored)
    number = obj.layout.part_at(start) if end >= start else 1
    place = obj.layout.place(number)
    # The window starts at a segment of the part holding `start`, after that part's header.
    assert stored[place.stored_start : place.stored_start + PART_HEADER_SIZE] == (
        obj.headers[number - 1].encode()
    )
    first_segment = max(0, start - place.plaintext_start) // S
    assert low == place.stored_start + PART_HEADER_SIZE + first_segment * STRIDE
    if end == obj.layout.plaintext_size - 1:
        assert high == len(stored) - 1  # a read to the end takes in empty trailing parts
        return
    # ... and ends with the tag of the segment holding `end`.
    last = obj.layout.place(obj.layout.part_at(end) if end >= start else 1)
    segment = max(0, end - last.plaintext_start) // S
    in_segment = min(S, last.plaintext_size - segment * S)
    tag_end = last.stored_start + PART_HEADER_SIZE + segment * STRIDE + in_segment + 15
    assert high == tag_end
    assert high < last.stored_start + last.stored_size
    if end == obj.layout.plaintext_size - 1 and last.number == obj.layout.count:
        assert high == len(stored) - 1


@pytest.mark.parametrize(
    ("name", "chunk"),
    [(name, 0) for name in LAYOUTS] + [("big-uniform", 65536)],  # the only window > 64 KiB
)
def test_every_boundary_range_round_trips(name: str, chunk: int) -> None:
    obj = OBJECTS[name]
    assert len(obj.stored) == obj.layout.stored_size
    for start, end in all_ranges(obj.layout):
        opener = opener_for(obj, start, end)
        check_window(obj, opener, start, end)
        assert opener.length == max(0, end - start + 1)
        low, high = opener.window
        got = feed_all(opener, obj.stored[low : high + 1], chunk)
        assert got == obj.plain[start : end + 1], (start, end)


# A call per byte is slow (about 6 us): byte-at-a-time runs on the layouts with the most
# varied boundaries, over ranges of a byte or two across each of them.
BYTE_AT_A_TIME = [
    "empty",
    "one-byte",
    "one-part",
    "uniform-short-last",
    "not-segment-multiples",
    "uneven",
]


@pytest.mark.parametrize(
    ("name", "chunk"),
    [(name, 1) for name in BYTE_AT_A_TIME]
    + [(name, 7) for name in LAYOUTS]
    + [(name, S + 3) for name in LAYOUTS],
)
def test_sampled_ranges_round_trip_in_odd_chunks(name: str, chunk: int) -> None:
    obj = OBJECTS[name]
    size = obj.layout.plaintext_size
    for start, end in sample_ranges(obj.layout, tiny=chunk == 1):
        low, high = opener_for(obj, start, end).window
        # At 7 bytes: windows of a few segments, and the whole of the smaller objects.
        small = high - low < 4 * STRIDE or (
            high - low < 8 * STRIDE and (start, end) == (0, size - 1)
        )
        if chunk == 7 and not small:
            continue
        assert read(obj, start, end, chunk) == obj.plain[start : end + 1], (start, end)


def test_empty_object_window_is_its_one_tag() -> None:
    obj = OBJECTS["empty"]
    opener = opener_for(obj, 0, -1)
    assert opener.window == (PART_HEADER_SIZE, PART_HEADER_SIZE + fmt.TAG_SIZE - 1)
    assert opener.length == 0
    assert feed_all(opener, obj.stored[PART_HEADER_SIZE:], 1) == b""
    with pytest.raises(TamperedError):
        feed_all(opener_for(obj, 0, -1), obj.stored[PART_HEADER_SIZE:-1])
    with pytest.raises(TamperedError):
        feed_all(opener_for(obj, 0, -1), obj.stored[PART_HEADER_SIZE:] + b"\x00")


def test_reads_a_retried_part_attempt() -> None:
    """Any attempt at a part opens in its place: its salt is in its own header."""
    obj = seal_object([2 * S, 2 * S, 10])
    header, stored = seal_part(obj.plain[2 * S : 4 * S], 2)
    assert header.salt != obj.headers[1].salt
    retried = dataclasses.replace(
        obj,
        headers=[obj.headers[0], header, obj.headers[2]],
        parts=[obj.parts[0], stored, obj.parts[2]],
    )
    assert read(retried, 0, len(obj.plain) - 1, chunk=7) == obj.plain
    assert read(retried, 2 * S + 5, 2 * S + 9) == obj.plain[2 * S + 5 : 2 * S + 10]


@pytest.mark.parametrize(
    "sizes",
    [[(7 * n) % 53 + 1 for n in range(300)], [40] * 299 + [3]],
    ids=["uneven", "uniform"],
)
def test_reads_across_hundreds_of_small_parts(sizes: list[int]) -> None:
    obj = seal_object(sizes)
    size = len(obj.plain)
    assert obj.layout.count == 300
    for start, end in [
        (0, size - 1),
        (1, size - 2),
        (size // 3, 2 * size // 3),
        (size - 1, size - 1),
    ]:
        assert read(obj, start, end, chunk=S + 3) == obj.plain[start : end + 1], (start, end)
    # Part 150 dropped: every later header is then one place early.
    gone = b"".join(obj.parts[:149] + obj.parts[150:])
    with pytest.raises(TamperedError):
        read(obj, 0, size - 1, stored=gone + bytes(len(obj.parts[149])))


def test_opener_accepts_reused_mutable_buffers() -> None:
    obj = OBJECTS["not-segment-multiples"]
    opener = opener_for(obj, 5, len(obj.plain) - 1)
    low, high = opener.window
    window = obj.stored[low : high + 1]
    out: list[bytes] = []
    buf = bytearray(999)
    for i in range(0, len(window), 999):
        piece = window[i : i + 999]
        buf[: len(piece)] = piece
        out.extend(opener.feed(memoryview(buf)[: len(piece)]))
        buf[:] = bytes(999)
    out.extend(opener.finish())
    assert b"".join(out) == obj.plain[5:]


def test_opener_yields_plaintext_as_segments_complete() -> None:
    obj = OBJECTS["uniform-full-last"]
    opener = opener_for(obj, 0, len(obj.plain) - 1)
    low, _ = opener.window
    stored = obj.stored
    assert opener.feed(stored[low : low + STRIDE - 1]) == []
    assert opener.feed(stored[low + STRIDE - 1 : low + STRIDE]) == [obj.plain[:S]]
    # Part 2's header alone yields nothing; its one segment yields part 2.
    after = low + STRIDE
    assert opener.feed(stored[after : after + PART_HEADER_SIZE]) == []
    assert opener.feed(stored[after + PART_HEADER_SIZE : after + PART_HEADER_SIZE + STRIDE]) == [
        obj.plain[S : 2 * S]
    ]


@pytest.mark.parametrize(("start", "end"), [(0, 100 * S), (5, 4), (-1, 3), (0, -1), (3, -1)])
def test_opener_refuses_ranges_outside_the_object(start: int, end: int) -> None:
    obj = OBJECTS["uniform-short-last"]
    with pytest.raises(ValueError):
        MultipartOpener(KEY, obj.layout, start, end, obj.headers[0])


def test_opener_refuses_a_range_of_an_empty_object_other_than_the_whole() -> None:
    obj = OBJECTS["empty"]
    for start, end in [(0, 0), (1, 0), (-1, -1)]:
        with pytest.raises(ValueError):
            MultipartOpener(KEY, obj.layout, start, end, obj.headers[0])


# --- reading: tampering --------------------------------------------------------------------


TAMPER_SIZES = [2 * S + 100, 2 * S + 100, 2 * S + 100, 50]
T = seal_object(TAMPER_SIZES)
T_SIZE = len(T.plain)
P2 = T.layout.place(2).stored_start  # where part 2 (its header) starts in the stored object
P4 = T.layout.place(4).stored_start


def assert_tampered(
    stored: bytes,
    start: int = 0,
    end: int = T_SIZE - 1,
    chunk: int = 0,
    key: bytes = KEY,
    first_header: PartHeader | None = None,
) -> None:
    with pytest.raises(TamperedError):
        read(T, start, end, chunk, stored, key, first_header)


def replace_part(number: int, new: bytes) -> bytes:
    parts = list(T.parts)
    parts[number - 1] = new
    return b"".join(parts)


def test_the_tamper_object_reads_cleanly() -> None:
    assert read(T, 0, T_SIZE - 1) == T.plain
    assert read(T, 0, T_SIZE - 1, chunk=7) == T.plain


@pytest.mark.parametrize(
    "position",
    [
        PART_HEADER_SIZE,  # part 1, first segment, first byte
        PART_HEADER_SIZE + STRIDE - 1,  # part 1, first segment's tag
        P2 - 1,  # part 1, last (short) segment's tag
        P2 + PART_HEADER_SIZE + 5,  # part 2, first segment
        P2 + PART_HEADER_SIZE + 2 * STRIDE + 3,  # part 2, short last segment
        P4 + PART_HEADER_SIZE,  # the last part's only segment
        len(T.stored) - 1,  # the object's last byte
    ],
)
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_a_flipped_bit_in_a_segment_is_detected(position: int, bit: int) -> None:
    damaged = bytearray(T.stored)
    damaged[position] ^= bit
    assert_tampered(bytes(damaged))
    assert_tampered(bytes(damaged), chunk=7)


@pytest.mark.parametrize("part", [2, 3, 4])
def test_every_bit_of_a_later_part_header_is_covered(part: int) -> None:
    offset = T.layout.place(part).stored_start
    for position in range(PART_HEADER_SIZE):
        for bit in (0x01, 0x10, 0x80):
            damaged = bytearray(T.stored)
            damaged[offset + position] ^= bit
            assert_tampered(bytes(damaged))
            # A range that starts in the part before still reads the damaged header.
            start = T.layout.place(part - 1).plaintext_start + 3
            end = min(start + 2 * S + 200, T_SIZE - 1)
            assert_tampered(bytes(damaged), start=start, end=end)


@pytest.mark.parametrize(
    "field",
    [
        {"salt": bytes(16)},
        {"part_number": 3},
        {"part_number": 1},
        {"plaintext_size": 2 * S + 99},
        {"plaintext_size": 2 * S + 101},
    ],
)
def test_a_rewritten_later_header_is_detected(field: dict[str, object]) -> None:
    header = dataclasses.replace(T.headers[1], **field)  # type: ignore[arg-type]
    damaged = replace_part(2, header.encode() + T.parts[1][PART_HEADER_SIZE:])
    assert_tampered(damaged)
    assert_tampered(damaged, chunk=7)


def test_flipped_bits_in_the_first_header_are_detected() -> None:
    """The caller reads the first part's header; whatever it got, a wrong one fails."""
    real = T.headers[0]
    for wrong in [
        dataclasses.replace(real, salt=real.salt[:-1] + bytes([real.salt[-1] ^ 1])),
        dataclasses.replace(real, salt=T.headers[1].salt),
        T.headers[1],
    ]:
        with pytest.raises(TamperedError):
            read(T, 0, T_SIZE - 1, first_header=wrong)


@pytest.mark.parametrize(
    "header",
    [
        PartHeader(SALT, 2, TAMPER_SIZES[0]),  # another part's number
        PartHeader(SALT, 1, TAMPER_SIZES[0] + 1),  # another size
        PartHeader(SALT, 1, 0),
        PartHeader(SALT, 4, 50),
    ],
)
def test_a_first_header_that_does_not_match_the_layout_is_refused(header: PartHeader) -> None:
    with pytest.raises(TamperedError):
        MultipartOpener(KEY, T.layout, 0, T_SIZE - 1, header)
    with pytest.raises(TamperedError):
        MultipartOpener(KEY, T.layout, 5, 6, header)


def test_first_header_of_a_middle_part_is_checked() -> None:
    start = T.layout.place(3).plaintext_start + 1
    assert read(T, start, start + 10) == T.plain[start : start + 11]
    for wrong in (T.headers[0], T.headers[1], T.headers[3]):
        with pytest.raises(TamperedError):
            MultipartOpener(KEY, T.layout, start, start + 10, wrong)


def test_swapped_parts_are_detected() -> None:
    parts = list(T.parts)
    swapped = b"".join([parts[0], parts[2], parts[1], parts[3]])
    assert len(swapped) == len(T.stored)
    assert_tampered(swapped)
    # Relabelled so the headers name the places they now sit in: the part keys differ.
    relabelled = b"".join(
        [
            parts[0],
            dataclasses.replace(T.headers[2], part_number=2).encode() + parts[2][PART_HEADER_SIZE:],
            dataclasses.replace(T.headers[1], part_number=3).encode() + parts[1][PART_HEADER_SIZE:],
            parts[3],
        ]
    )
    assert_tampered(relabelled)
    # A range starting in a swapped part, with the header the caller found there.
    start = T.layout.place(2).plaintext_start
    with pytest.raises(TamperedError):
        read(
            T,
            start,
            start + 10,
            stored=relabelled,
            first_header=PartHeader.parse(relabelled[P2 : P2 + PART_HEADER_SIZE]),
        )


def test_swapped_first_part_is_detected() -> None:
    parts = list(T.parts)
    swapped = b"".join([parts[1], parts[0], parts[2], parts[3]])
    with pytest.raises(TamperedError):
        read(T, 0, T_SIZE - 1, stored=swapped, first_header=T.headers[1])
    relabelled_header = dataclasses.replace(T.headers[1], part_number=1)
    with pytest.raises(TamperedError):
        read(T, 0, T_SIZE - 1, stored=swapped, first_header=relabelled_header)


def test_a_part_sealed_for_another_number_is_detected() -> None:
    data = T.plain[TAMPER_SIZES[0] : 2 * TAMPER_SIZES[0]]  # part 2's own plaintext
    header, stored = seal_part(data, 3)
    assert_tampered(replace_part(2, stored))
    relabelled = dataclasses.replace(header, part_number=2).encode() + stored[PART_HEADER_SIZE:]
    assert_tampered(replace_part(2, relabelled))


def test_a_part_under_another_data_key_is_detected() -> None:
    data = T.plain[TAMPER_SIZES[0] : 2 * TAMPER_SIZES[0]]
    _, stored = seal_part(data, 2, key=OTHER_KEY)
    assert_tampered(replace_part(2, stored))
    # And the whole object read under another data key.
    assert_tampered(T.stored, key=OTHER_KEY)


def test_a_header_from_another_attempt_is_detected() -> None:
    """Header of one attempt, segments of another: the salts (so the keys) differ."""
    data = T.plain[TAMPER_SIZES[0] : 2 * TAMPER_SIZES[0]]
    header, stored = seal_part(data, 2)
    assert_tampered(replace_part(2, T.headers[1].encode() + stored[PART_HEADER_SIZE:]))
    assert_tampered(replace_part(2, header.encode() + T.parts[1][PART_HEADER_SIZE:]))


def test_a_segment_moved_between_parts_is_detected() -> None:
    # Part 2's first segment in place of part 3's first: same position, another part key.
    damaged = bytearray(T.stored)
    p3 = T.layout.place(3).stored_start + PART_HEADER_SIZE
    damaged[p3 : p3 + STRIDE] = T.stored[P2 + PART_HEADER_SIZE : P2 + PART_HEADER_SIZE + STRIDE]
    assert_tampered(bytes(damaged))


@pytest.mark.parametrize(
    "cut",
    [
        1,  # one byte short
        fmt.TAG_SIZE,  # the last part's tag
        len(T.parts[3]),  # the whole last part: ends exactly at a part boundary
        len(T.parts[3]) - PART_HEADER_SIZE,  # just the last part's header left
        len(T.parts[3]) - 10,  # inside the last part's header
        len(T.parts[3]) + len(T.parts[2]),  # two parts
    ],
)
@pytest.mark.parametrize("chunk", [0, 7])
def test_the_stream_ending_early_is_detected(cut: int, chunk: int) -> None:
    opener = opener_for(T, 0, T_SIZE - 1)
    low, high = opener.window
    with pytest.raises(TamperedError):
        feed_all(opener, T.stored[low : high + 1 - cut], chunk)


def test_an_empty_stream_is_detected() -> None:
    opener = opener_for(T, 10, 20)
    with pytest.raises(TamperedError):
        opener.finish()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, T_SIZE - 1),
        (0, TAMPER_SIZES[0] - 1),  # ends at a part boundary: the next part's header follows
        (5, 10),  # ends mid-part
        (TAMPER_SIZES[0], TAMPER_SIZES[0] + S),
    ],
)
@pytest.mark.parametrize("extra", [1, PART_HEADER_SIZE, STRIDE])
def test_bytes_after_the_window_are_detected(start: int, end: int, extra: int) -> None:
    opener = opener_for(T, start, end)
    low, high = opener.window
    after = T.stored[high + 1 : high + 1 + extra]
    tail = after if len(after) == extra else os.urandom(extra)
    with pytest.raises(TamperedError):
        feed_all(opener, T.stored[low : high + 1] + tail)
    opener = opener_for(T, start, end)
    opener.feed(T.stored[low : high + 1])
    with pytest.raises(TamperedError):
        opener.feed(tail)


def test_an_appended_part_is_detected() -> None:
    """A fifth part, genuinely sealed under the same data key, after the last one."""
    _, extra = seal_part(os.urandom(100), 5)
    opener = opener_for(T, 0, T_SIZE - 1)
    low, high = opener.window
    with pytest.raises(TamperedError):
        feed_all(opener, T.stored[low : high + 1] + extra)


def test_a_dropped_middle_part_is_detected() -> None:
    """Part 3 removed and the layout read as if the object were uniform: part 4 is out of place."""
    parts = list(T.parts)
    dropped = b"".join([parts[0], parts[1], parts[3]])
    layout = Layout(S, [TAMPER_SIZES[0], TAMPER_SIZES[1], TAMPER_SIZES[3]])
    assert layout.stored_size == len(dropped)
    obj = dataclasses.replace(T, layout=layout, parts=[parts[0], parts[1], parts[3]])
    with pytest.raises(TamperedError):
        read(obj, 0, layout.plaintext_size - 1)
    # The reader's shortcut refuses it too: the last header names part 4, not part 3.
    assert uniform_layout(len(dropped), 3, T.headers[0], T.headers[3], S) is None


def test_a_window_from_a_parts_first_segment_may_carry_that_parts_header() -> None:
    sizes = [3 * S + 5, 3 * S + 5, 2 * S]
    obj = seal_object(sizes)
    starts = [0] + [sum(sizes[:n]) for n in range(1, len(sizes))]
    for start, end in [(starts[1], starts[2] + 10), (starts[1] + S - 1, starts[1] + S), (0, 5)]:
        opener = MultipartOpener(KEY, obj.layout, start, end, None)
        window_start, window_end = opener.window
        assert window_start == obj.layout.place(obj.layout.part_at(start)).stored_start
        out = b"".join(opener.feed(obj.stored[window_start : window_end + 1]))
        out += b"".join(opener.finish())
        assert out == obj.plain[start : end + 1]
    with pytest.raises(ValueError):  # past the first segment the header is not in reach
        MultipartOpener(KEY, obj.layout, starts[1] + S, starts[1] + S + 1, None)
    # A header in the stream that names another part is refused.
    opener = MultipartOpener(KEY, obj.layout, starts[1], starts[1] + 10, None)
    window_start, window_end = opener.window
    forged = obj.stored[:window_start] + obj.headers[2].encode()
    with pytest.raises(TamperedError):
        opener.feed(forged[window_start:])


@pytest.mark.parametrize("sizes", [[3 * S, 0], [2 * S + 5, 0], [S, S, 0]])
def test_a_read_to_the_end_takes_in_an_empty_last_part(sizes: list[int]) -> None:
    obj = seal_object(sizes)
    size = sum(sizes)
    for start in (0, size - 1):
        opener = MultipartOpener(
            KEY, obj.layout, start, size - 1, obj.headers[0] if start < sizes[0] else None
        )
        window_start, window_end = opener.window
        assert window_end == len(obj.stored) - 1  # the empty part's header and tag are read
        out = b"".join(opener.feed(obj.stored[window_start:])) + b"".join(opener.finish())
        assert out == obj.plain[start:]
    # Its tag is checked: a flipped bit in the empty part's segment is refused.
    damaged = bytearray(obj.stored)
    damaged[-1] ^= 1
    opener = MultipartOpener(KEY, obj.layout, 0, size - 1, obj.headers[0])
    with pytest.raises(TamperedError):
        opener.feed(bytes(damaged[opener.window[0] :]))
        opener.finish()


# --- the partNumber query value ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"), [("1", 1), ("2", 2), ("9999", 9999), ("10000", 10_000), ("01", 1)]
)
def test_part_numbers_from_1_to_10000_are_accepted(text, number):
    # "01" is read as 1: leading zeros are digits (AWS behaviour not verified here).
    assert parse_part_number(text) == number
    assert MAX_PART_NUMBER == 10_000


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "00",
        "10001",
        "99999999999999999999",
        "",
        None,
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "one",
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0661",  # Arabic-Indic one: int() would read it
        "\uff11",  # fullwidth one
    ],
)
def test_other_part_numbers_are_invalid_argument(text):
    with pytest.raises(S3Error) as exc:
        parse_part_number(text)
    error = exc.value
    assert error.code == "InvalidArgument" and error.status == 400
    assert error.message == "Part number must be an integer between 1 and 10000, inclusive"
    assert error.fields == {"ArgumentName": "partNumber", "ArgumentValue": text or ""}


@pytest.mark.parametrize("text", ["9" * 5000, "1" + "0" * 4400])
def test_a_part_number_past_int_digit_limit_is_invalid_argument(text):
    with pytest.raises(S3Error) as exc:
        parse_part_number(text)
    assert exc.value.code == "InvalidArgument"
    assert exc.value.fields["ArgumentValue"] == text


def test_a_part_number_with_thousands_of_leading_zeros_is_its_number():
    assert parse_part_number("0" * 5000 + "7") == 7
