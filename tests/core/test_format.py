"""The v1 segment format: sizes, ranges, round trips and every tampering we can think of."""

from __future__ import annotations

import os

import pytest

from trios3.core.errors import TamperedError
from trios3.core.format import (
    DEFAULT_SEGMENT_SIZE,
    TAG_SIZE,
    SegmentOpener,
    SegmentSealer,
    SpanOpener,
    is_valid_segment_size,
    plaintext_size,
    segment_count,
    span_for_range,
    stored_size,
)

S = 4096
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def seal(plaintext: bytes, segment_size: int = S, key: bytes = KEY, chunk: int = 0) -> bytes:
    sealer = SegmentSealer(key, segment_size)
    out: list[bytes] = []
    step = chunk or max(1, len(plaintext))
    for i in range(0, len(plaintext), step):
        out.extend(sealer.feed(plaintext[i : i + step]))
    out.append(sealer.finish())
    assert sealer.plaintext_bytes == len(plaintext)
    return b"".join(out)


def open_(
    stored: bytes,
    size: int,
    segment_size: int = S,
    key: bytes = KEY,
    chunk: int = 0,
    first: int = 0,
    last: int | None = None,
) -> bytes:
    opener = SegmentOpener(key, segment_size, size, first, last)
    out: list[bytes] = []
    step = chunk or max(1, len(stored))
    for i in range(0, len(stored), step):
        out.extend(opener.feed(stored[i : i + step]))
    out.extend(opener.finish())
    return b"".join(out)


def segments(stored: bytes, size: int, segment_size: int = S) -> list[bytes]:
    stride = segment_size + TAG_SIZE
    return [stored[i : i + stride] for i in range(0, len(stored), stride)]


SIZES = [0, 1, S - 1, S, S + 1, 2 * S, 2 * S + 1, 7 * S + 123]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chunk", [1, 7, S + 3, 0])
def test_round_trip_is_independent_of_chunking(size: int, chunk: int) -> None:
    plaintext = os.urandom(size)
    reference = seal(plaintext)
    stored = seal(plaintext, chunk=chunk)
    # Same key and same nonces: chunking must not change a single stored byte.
    assert stored == reference
    assert len(stored) == stored_size(size, S)
    for open_chunk in (1, 7, S + 3, 0):
        assert open_(stored, size, chunk=open_chunk) == plaintext


@pytest.mark.parametrize("size", [0, 1, DEFAULT_SEGMENT_SIZE, 3 * DEFAULT_SEGMENT_SIZE + 5])
def test_round_trip_with_default_segment_size(size: int) -> None:
    plaintext = os.urandom(size)
    stored = seal(plaintext, DEFAULT_SEGMENT_SIZE, chunk=65536)
    assert len(stored) == stored_size(size, DEFAULT_SEGMENT_SIZE)
    assert open_(stored, size, DEFAULT_SEGMENT_SIZE, chunk=65536) == plaintext


def test_feed_accepts_reused_mutable_buffers() -> None:
    plaintext = os.urandom(3 * S + 10)
    sealer = SegmentSealer(KEY, S)
    buf = bytearray(1000)
    out: list[bytes] = []
    for i in range(0, len(plaintext), 1000):
        piece = plaintext[i : i + 1000]
        buf[: len(piece)] = piece
        out.extend(sealer.feed(memoryview(buf)[: len(piece)]))
        buf[:] = bytes(1000)  # the caller scribbles over its buffer after feeding
    out.append(sealer.finish())
    stored = b"".join(out)
    assert stored == seal(plaintext)
    opener = SegmentOpener(KEY, S, len(plaintext))
    got: list[bytes] = []
    for i in range(0, len(stored), 999):
        buf = bytearray(stored[i : i + 999])
        got.extend(opener.feed(buf))
        buf[:] = bytes(len(buf))
    got.extend(opener.finish())
    assert b"".join(got) == plaintext


def test_sealer_holds_back_a_full_segment_until_more_data() -> None:
    sealer = SegmentSealer(KEY, S)
    assert sealer.feed(bytes(S)) == []  # might be the final segment
    sealed = sealer.feed(b"x")
    assert [len(s) for s in sealed] == [S + TAG_SIZE]
    assert len(sealer.finish()) == 1 + TAG_SIZE


def test_empty_object_is_one_tag() -> None:
    stored = seal(b"")
    assert len(stored) == TAG_SIZE == stored_size(0, S)
    assert open_(stored, 0) == b""


def test_opener_yields_each_segment_as_soon_as_it_is_complete() -> None:
    plaintext = os.urandom(3 * S)
    stored = seal(plaintext)
    opener = SegmentOpener(KEY, S, len(plaintext))
    assert opener.feed(stored[: S + TAG_SIZE - 1]) == []
    assert opener.feed(stored[S + TAG_SIZE - 1 : S + TAG_SIZE]) == [plaintext[:S]]


def test_sizes_are_inverse_for_every_small_size() -> None:
    for p in range(0, 5 * S + 1):
        assert plaintext_size(stored_size(p, S), S) == p
    for p in [10**9, 5 * 2**30 + 17, 5 * 2**40 - 1, 2**50]:
        for seg in (S, DEFAULT_SEGMENT_SIZE, 2**24):
            assert plaintext_size(stored_size(p, seg), seg) == p


def test_invalid_stored_sizes_are_none() -> None:
    valid = {stored_size(p, S) for p in range(0, 5 * S + 1)}
    for c in range(-1, stored_size(5 * S, S) + 1):
        assert (plaintext_size(c, S) is not None) == (c in valid), c
    assert plaintext_size(0, S) is None
    assert plaintext_size(TAG_SIZE, S) == 0
    assert plaintext_size(S + TAG_SIZE + 1, S) is None  # one full segment + a 1-byte tail
    assert plaintext_size(S + 2 * TAG_SIZE, S) is None


def test_segment_count_and_worked_example() -> None:
    assert segment_count(0, S) == 1
    assert segment_count(S, S) == 1
    assert segment_count(S + 1, S) == 2
    # docs/FORMAT.md: 1 000 000 bytes at 64 KiB -> 16 segments, 1 000 256 stored.
    assert segment_count(1_000_000, 65536) == 16
    assert stored_size(1_000_000, 65536) == 1_000_256
    assert plaintext_size(1_000_256, 65536) == 1_000_000


def test_segment_size_validity() -> None:
    assert is_valid_segment_size(4096)
    assert is_valid_segment_size(2**24)
    assert is_valid_segment_size(DEFAULT_SEGMENT_SIZE)
    assert (5 * 2**20) % DEFAULT_SEGMENT_SIZE == 0
    for bad in (0, 2048, 4095, 6144, 2**25, -4096):
        assert not is_valid_segment_size(bad)
    with pytest.raises(ValueError):
        SegmentSealer(KEY, 1000)
    with pytest.raises(ValueError):
        SegmentSealer(KEY[:16], S)


def decrypt_span(stored: bytes, size: int, start: int, end: int, seg: int = S) -> bytes:
    span = span_for_range(size, start, end, seg)
    fetched = stored[span.stored_start : span.stored_end + 1]
    assert len(fetched) == span.stored_end - span.stored_start + 1
    plain = open_(fetched, size, seg, first=span.first_segment, last=span.last_segment, chunk=5)
    return plain[span.skip : span.skip + span.length]


def test_span_for_range_exhaustive_on_a_small_object() -> None:
    seg = 4096
    size = 3 * seg + 100
    plaintext = os.urandom(size)
    stored = seal(plaintext, seg)
    points = sorted(
        {
            0,
            1,
            seg - 1,
            seg,
            seg + 1,
            2 * seg - 1,
            2 * seg,
            3 * seg - 1,
            3 * seg,
            size - 2,
            size - 1,
        }
        | set(range(0, size, 997))
    )
    for start in points:
        for end in points:
            if start <= end:
                assert decrypt_span(stored, size, start, end, seg) == plaintext[start : end + 1]


def test_span_for_range_every_pair_on_a_tiny_segment_grid() -> None:
    # Small object, every (start, end): exercised through the arithmetic only, then decrypted
    # on a sample, since opening costs a few microseconds each.
    size = 2 * S + 3
    plaintext = os.urandom(size)
    stored = seal(plaintext)
    for start in range(0, size, 61):
        for end in range(start, size, 89):
            span = span_for_range(size, start, end, S)
            assert span.first_segment == start // S
            assert span.last_segment == end // S
            assert span.stored_end < len(stored)
            assert span.length == end - start + 1
    for start, end in [(0, size - 1), (S - 1, S), (size - 1, size - 1), (2 * S, size - 1)]:
        assert decrypt_span(stored, size, start, end) == plaintext[start : end + 1]


def test_span_of_the_whole_empty_object() -> None:
    span = span_for_range(0, 0, -1, S)
    assert (span.first_segment, span.last_segment) == (0, 0)
    assert (span.stored_start, span.stored_end) == (0, TAG_SIZE - 1)
    assert (span.skip, span.length) == (0, 0)
    assert decrypt_span(seal(b""), 0, 0, -1) == b""


def test_span_rejects_ranges_outside_the_object() -> None:
    for start, end in [(0, 10), (5, 4), (-1, 3)]:
        with pytest.raises(ValueError):
            span_for_range(10, start, end, S)


# --- tampering -----------------------------------------------------------------------------

SIZE = 3 * S + 100
PLAIN = os.urandom(SIZE)
STORED = seal(PLAIN)


def assert_tampered(stored: bytes, size: int = SIZE, key: bytes = KEY, **kw: object) -> None:
    with pytest.raises(TamperedError):
        open_(stored, size, key=key, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "position",
    [
        0,  # first segment, first byte
        S // 2,  # first segment, middle
        S + TAG_SIZE - 1,  # first segment's tag
        S + TAG_SIZE + 5,  # second segment
        2 * (S + TAG_SIZE) + S,  # third segment's tag
        len(STORED) - TAG_SIZE - 1,  # last segment's body
        len(STORED) - 1,  # last segment's tag
    ],
)
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_any_bit_flip_is_detected(position: int, bit: int) -> None:
    damaged = bytearray(STORED)
    damaged[position] ^= bit
    assert_tampered(bytes(damaged))
    assert_tampered(bytes(damaged), chunk=7)


def test_every_byte_position_flip_is_detected_on_a_small_object() -> None:
    plain = os.urandom(S + 10)
    stored = seal(plain)
    for position in range(0, len(stored), 37):
        damaged = bytearray(stored)
        damaged[position] ^= 0x04
        assert_tampered(bytes(damaged), size=len(plain))


def test_swapped_segments_are_detected() -> None:
    seg = segments(STORED, SIZE)
    assert_tampered(b"".join([seg[1], seg[0], *seg[2:]]))
    assert_tampered(b"".join([seg[0], seg[2], seg[1], seg[3]]))
    # A range read that starts at a segment fetched from elsewhere in the same object.
    assert_tampered(seg[2], first=1, last=1)


def test_segment_from_another_object_is_detected() -> None:
    other = seal(os.urandom(SIZE), key=OTHER_KEY)
    mine, theirs = segments(STORED, SIZE), segments(other, SIZE)
    assert_tampered(b"".join([mine[0], theirs[1], *mine[2:]]))
    # Note: a segment of another upload under the SAME data key would pass; that is why every
    # upload gets a fresh data key (tested in test_keys.py).


def test_truncation_at_a_segment_boundary_is_detected() -> None:
    seg = segments(STORED, SIZE)
    truncated = b"".join(seg[:-1])
    # The transport stopped early: the opener knows the size and wants the final segment.
    assert_tampered(truncated)
    # The stored object itself was truncated: its size now says the previous segment is the
    # final one, but it was sealed as non-final.
    new_size = plaintext_size(len(truncated), S)
    assert new_size == 3 * S
    assert_tampered(truncated, size=new_size)


def test_truncation_to_an_exact_multiple_is_detected() -> None:
    plain = os.urandom(3 * S)
    stored = seal(plain)
    truncated = stored[: 2 * (S + TAG_SIZE)]
    assert_tampered(truncated, size=len(plain))
    assert_tampered(truncated, size=plaintext_size(len(truncated), S))  # type: ignore[arg-type]


def test_truncation_mid_segment_is_detected() -> None:
    for cut in (1, S, S + TAG_SIZE + 1, len(STORED) - 1):
        assert_tampered(STORED[:cut])
    assert_tampered(b"", size=0)  # an empty object is still one tag


def test_extension_is_detected() -> None:
    assert_tampered(STORED + b"\x00")
    assert_tampered(STORED + os.urandom(S + TAG_SIZE))
    # A valid-looking extra segment (index 4, sealed under the same key, final) appended.
    longer = seal(PLAIN + os.urandom(S))
    extra = segments(longer, SIZE + S)[-1]
    assert_tampered(STORED + extra)
    size = plaintext_size(len(STORED + extra), S)
    assert size is not None
    assert_tampered(STORED + extra, size=size)
    # Extending an object whose final segment was full.
    full = seal(PLAIN[: 3 * S])
    more = segments(seal(PLAIN[: 3 * S] + b"x" * 50), 3 * S + 50)[-1]
    assert_tampered(full + more, size=3 * S + 50)


def test_range_read_rejects_bytes_past_its_last_segment() -> None:
    seg = segments(STORED, SIZE)
    assert open_(seg[1], SIZE, first=1, last=1) == PLAIN[S : 2 * S]
    assert_tampered(seg[1] + seg[2], first=1, last=1)
    assert_tampered(seg[1][:-1], first=1, last=1)


def test_wrong_data_key_is_detected() -> None:
    assert_tampered(STORED, key=OTHER_KEY)


def test_wrong_size_is_detected() -> None:
    assert_tampered(STORED, size=SIZE - 1)
    assert_tampered(STORED, size=SIZE + 1)


def test_opener_stays_failed_after_tampering() -> None:
    damaged = bytearray(STORED)
    damaged[0] ^= 1
    opener = SegmentOpener(KEY, S, SIZE)
    with pytest.raises(TamperedError):
        opener.feed(bytes(damaged))
    with pytest.raises(TamperedError):
        opener.feed(b"")
    with pytest.raises(TamperedError):
        opener.finish()


def test_same_plaintext_under_fresh_keys_differs() -> None:
    plain = os.urandom(2 * S)
    assert seal(plain, key=os.urandom(32)) != seal(plain, key=os.urandom(32))


# --- SpanOpener: one span's plaintext from a window of stored bytes ------------------------

STRIDE = S + TAG_SIZE


def open_window(
    stored: bytes,
    size: int,
    start: int,
    end: int,
    window_start: int | None = None,
    window_end: int | None = None,
    chunk: int = 0,
) -> bytes:
    """The plaintext SpanOpener gives for bytes start..end from ``stored[window_start:
    window_end + 1]`` (by default exactly the span), fed in pieces of ``chunk`` bytes."""
    span = span_for_range(size, start, end, S)
    if window_start is None:
        window_start = span.stored_start
    if window_end is None:
        window_end = span.stored_end
    opener = SpanOpener(KEY, S, size, span, window_start)
    window = stored[window_start : window_end + 1]
    step = chunk or max(1, len(window))
    pieces: list[bytes] = []
    for i in range(0, len(window), step):
        pieces.extend(opener.feed(window[i : i + step]))
    pieces.extend(opener.finish())
    assert all(pieces), "no empty pieces"
    return b"".join(pieces)


SPAN_POINTS = sorted(
    {0, 1, S - 1, S, S + 1, 2 * S - 1, 2 * S, 2 * S + 1, 3 * S - 1, 3 * S, SIZE - 2, SIZE - 1}
)


def test_span_plaintext_is_exactly_the_requested_bytes_for_every_pair_of_points() -> None:
    for start in SPAN_POINTS:
        for end in SPAN_POINTS:
            if start > end:
                continue
            span = span_for_range(SIZE, start, end, S)
            expected = PLAIN[start : end + 1]
            # The exact span; a window from the object's start; one past the span's end.
            assert open_window(STORED, SIZE, start, end) == expected, (start, end)
            assert open_window(STORED, SIZE, start, end, 0, len(STORED) - 1) == expected
            widest = STORED + b"past the end of the object"
            assert open_window(widest, SIZE, start, end, 0, len(widest) - 1) == expected
            assert (
                open_window(STORED, SIZE, start, end, window_end=span.stored_end + 1, chunk=1000)
                == expected
            )


@pytest.mark.parametrize("chunk", [1, 7, TAG_SIZE, STRIDE - 1, STRIDE, STRIDE + 1])
def test_span_plaintext_is_independent_of_how_the_window_is_split(chunk: int) -> None:
    start, end = 2 * S - 3, 2 * S + 5  # the tail of segment 1 to the head of segment 2
    window_end = 3 * STRIDE + 7  # inside segment 3: the span ends before it
    got = open_window(STORED, SIZE, start, end, 100, window_end, chunk=chunk)
    assert got == PLAIN[start : end + 1]
    got = open_window(STORED, SIZE, start, end, 100, len(STORED) - 1, chunk=chunk)
    assert got == PLAIN[start : end + 1]


def test_a_window_that_starts_before_the_span_and_ends_after_it() -> None:
    # Segment 2 only, from a window that starts mid-segment 0 and ends inside segment 3.
    start, end = 2 * S + 10, 2 * S + 20
    span = span_for_range(SIZE, start, end, S)
    assert span.stored_start == 2 * STRIDE
    assert open_window(STORED, SIZE, start, end, 5, 3 * STRIDE + 50) == PLAIN[start : end + 1]


def test_an_exact_window_gives_exactly_the_span() -> None:
    span = span_for_range(SIZE, S, 2 * S - 1, S)
    assert (span.stored_start, span.stored_end) == (STRIDE, 2 * STRIDE - 1)
    opener = SpanOpener(KEY, S, SIZE, span, STRIDE)
    assert opener.feed(STORED[STRIDE : 2 * STRIDE]) == [PLAIN[S : 2 * S]]
    assert opener.finish() == []


def test_span_plaintext_is_released_a_segment_at_a_time() -> None:
    start, end = 10, 2 * S + 10
    span = span_for_range(SIZE, start, end, S)
    opener = SpanOpener(KEY, S, SIZE, span, 0)
    assert opener.feed(STORED[: STRIDE - 1]) == []
    assert opener.feed(STORED[STRIDE - 1 : STRIDE]) == [PLAIN[10:S]]
    assert opener.feed(STORED[STRIDE : 3 * STRIDE]) == [PLAIN[S : 2 * S], PLAIN[2 * S : 2 * S + 11]]
    assert opener.feed(STORED[3 * STRIDE :]) == []  # past the span: dropped unread
    assert opener.finish() == []


def test_a_window_starting_after_the_span_is_a_value_error() -> None:
    span = span_for_range(SIZE, S, S, S)
    with pytest.raises(ValueError):
        SpanOpener(KEY, S, SIZE, span, span.stored_start + 1)


def test_the_whole_empty_object_through_a_span_opener() -> None:
    stored = seal(b"")
    span = span_for_range(0, 0, -1, S)
    opener = SpanOpener(KEY, S, 0, span, 0)
    assert opener.feed(stored) == []
    assert opener.finish() == []


@pytest.mark.parametrize("cut", [1, TAG_SIZE, S, STRIDE + 1])
def test_a_window_that_ends_before_the_span_does_is_tampered_at_finish(cut: int) -> None:
    start, end = S, 2 * S + 5  # segments 1 and 2
    span = span_for_range(SIZE, start, end, S)
    opener = SpanOpener(KEY, S, SIZE, span, 0)
    opener.feed(STORED[: span.stored_end + 1 - cut])
    with pytest.raises(TamperedError):
        opener.finish()


def test_a_window_that_ends_before_the_span_starts_is_tampered_at_finish() -> None:
    span = span_for_range(SIZE, 2 * S, 2 * S, S)
    opener = SpanOpener(KEY, S, SIZE, span, 0)
    assert opener.feed(STORED[: span.stored_start]) == []
    with pytest.raises(TamperedError):
        opener.finish()


@pytest.mark.parametrize(
    "offset", [0, S // 2, S + TAG_SIZE - 1, STRIDE, STRIDE + S, 2 * STRIDE - 1]
)
def test_a_flipped_byte_inside_the_span_is_tampered(offset: int) -> None:
    start, end = S + 1, 2 * S + 1  # segments 1 and 2
    span = span_for_range(SIZE, start, end, S)
    damaged = bytearray(STORED)
    damaged[span.stored_start + offset] ^= 0x01
    with pytest.raises(TamperedError):
        open_window(bytes(damaged), SIZE, start, end, 0, len(STORED) - 1)


def test_flipped_bytes_outside_the_span_are_dropped_unread() -> None:
    start, end = S + 1, 2 * S + 1
    span = span_for_range(SIZE, start, end, S)
    damaged = bytearray(STORED)
    damaged[span.stored_start - 1] ^= 0x01
    damaged[span.stored_end + 1] ^= 0x01
    assert (
        open_window(bytes(damaged), SIZE, start, end, 0, len(STORED) - 1) == PLAIN[start : end + 1]
    )


def test_a_span_opener_accepts_memoryviews() -> None:
    start, end = 5, S + 5
    span = span_for_range(SIZE, start, end, S)
    opener = SpanOpener(KEY, S, SIZE, span, 0)
    view = memoryview(STORED)
    out = opener.feed(view[:1000]) + opener.feed(view[1000:])
    out += opener.finish()
    assert b"".join(out) == PLAIN[start : end + 1]
