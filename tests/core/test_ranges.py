"""Range header resolution, as AWS S3 answers it."""

from __future__ import annotations

import pytest

from trios3.core import format as fmt
from trios3.core.errors import S3Error
from trios3.core.ranges import (
    content_range,
    parse_content_range,
    parse_copy_range,
    parse_range,
    stored_window,
)


def invalid_range(header: str, size: int) -> S3Error:
    with pytest.raises(S3Error) as info:
        parse_range(header, size)
    assert info.value.code == "InvalidRange"
    assert info.value.status == 416
    return info.value


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=5-100", 10, (5, 9)),  # end past the object is clamped
        ("bytes=0-", 10, (0, 9)),
        ("bytes=9-", 10, (9, 9)),
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-11", 10, (0, 9)),  # a suffix longer than the object is all of it
        ("bytes=-99999999999999999999", 10, (0, 9)),
        ("bytes=0-0", 1, (0, 0)),
        ("bytes=007-008", 10, (7, 8)),
        ("BYTES=1-2", 10, (1, 2)),
        (" bytes=1-2 ", 10, (1, 2)),
        ("bytes=0-99999999999999999999999", 10, (0, 9)),
    ],
)
def test_satisfiable_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=5-2",  # a > b: AWS ignores the header
        "bytes=100-1",  # a > b even with a past the end: still ignored, not 416
        "bytes=0-1,5-6",  # several ranges: AWS serves the whole object
        "bytes=0-1, 5-6",
        "bytes=-1,-2",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes 1-2",
        "items=0-1",
        "bytes=1.5-2",
        "bytes=+1-2",
        "bytes= 1-2",
        "bytes=\uff11-\uff12",  # fullwidth digits are not ASCII digits
        "garbage",
    ],
)
def test_unusable_header_is_ignored(header):
    assert parse_range(header, 10) is None


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=11-12", "bytes=10-10"])
def test_start_at_or_past_the_end_is_invalid_range(header):
    error = invalid_range(header, 10)
    assert error.fields == {"RangeRequested": header, "ActualObjectSize": "10"}
    assert error.headers == {"Content-Range": "bytes */10"}


def test_zero_length_suffix_is_invalid_range():
    error = invalid_range("bytes=-0", 10)
    assert error.headers == {"Content-Range": "bytes */10"}


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=0-", "bytes=0-100", "bytes=1-2"])
def test_any_first_byte_range_on_an_empty_object_is_invalid_range(header):
    error = invalid_range(header, 0)
    assert error.fields == {"RangeRequested": header, "ActualObjectSize": "0"}
    assert error.headers == {"Content-Range": "bytes */0"}


def test_suffix_range_on_an_empty_object_serves_it_whole():
    assert parse_range("bytes=-5", 0) is None
    assert parse_range("bytes=-1", 0) is None


def test_zero_length_suffix_on_an_empty_object_is_invalid_range():
    invalid_range("bytes=-0", 0)


def test_unusable_header_on_an_empty_object_is_ignored():
    assert parse_range("bytes=0-1,2-3", 0) is None
    assert parse_range("bytes=3-1", 0) is None


def test_range_error_keeps_the_header_as_sent():
    assert invalid_range("BYTES=20-", 10).fields["RangeRequested"] == "BYTES=20-"


def test_content_range():
    assert content_range(0, 0, 1) == "bytes 0-0/1"
    assert content_range(7, 9, 10) == "bytes 7-9/10"
    assert content_range(*parse_range("bytes=-3", 10), 10) == "bytes 7-9/10"


# -- the stored window fetched before the object's size is known ------------------------------


def _window_bounds(window: str | None, stored: int) -> tuple[int, int]:
    """What a backend serves for ``window`` from an object of ``stored`` bytes."""
    if window is None:
        return 0, stored - 1
    first, last = window.removeprefix("bytes=").split("-")
    if not first:
        return max(0, stored - int(last)), stored - 1
    return int(first), stored - 1 if not last else min(int(last), stored - 1)


@pytest.mark.parametrize("size", [1, 100, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
def test_the_stored_window_always_covers_the_segments_of_the_range(size):
    segment = 4096
    stored = fmt.stored_size(size, segment)
    points = sorted({0, 1, segment - 1, segment, segment + 1, size // 2, size - 2, size - 1})
    points = [p for p in points if 0 <= p < size]
    headers = [f"bytes={a}-{b}" for a in points for b in points if a <= b]
    headers += [f"bytes={a}-" for a in points]
    headers += [f"bytes=-{n}" for n in (1, 2, segment - 1, segment, segment + 1, size, size + 7)]
    for header in headers:
        start, end = parse_range(header, size)
        span = fmt.span_for_range(size, start, end, segment)
        low, high = _window_bounds(stored_window(header, segment), stored)
        assert low <= span.stored_start and span.stored_end <= high, header


@pytest.mark.parametrize("header", [None, "bytes=5-3", "bytes=0-1,4-5", "items=0-1", "bytes=-0"])
def test_ranges_that_will_be_ignored_or_refused_fetch_everything(header):
    assert stored_window(header, 4096) is None


def test_a_range_inside_one_segment_fetches_only_that_segment():
    assert stored_window("bytes=5000-5010", 4096) == f"bytes={4112}-{2 * 4112 - 1}"


# -- the backend's Content-Range --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 0-4127/4128", (0, 4127, 4128)),
        ("bytes 4112-8223/20000", (4112, 8223, 20000)),
        ("bytes 007-008/010", (7, 8, 10)),
        ("bytes 0-99999999999999999999/100000000000000000000", (0, 10**20 - 1, 10**20)),
    ],
)
def test_content_range_of_a_backend_206_is_read_as_numbers(value, expected):
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes */10",  # a 416's form: no range was served
        "bytes 0-9/*",  # unknown total: the proxy needs the stored size
        "bytes=0-9/10",
        "bytes 0-9",
        "items 0-9/10",
        "BYTES 0-9/10",
        " bytes 0-9/10",
        "bytes 0-9/10 ",
        "bytes  0-9/10",
        "bytes -9/10",
        "bytes 0-/10",
        "bytes 0-9/10, bytes 20-29/10",
    ],
)
def test_unreadable_content_range_is_none(value):
    assert parse_content_range(value) is None


def test_content_range_reads_back_what_content_range_writes():
    assert parse_content_range(content_range(7, 9, 10)) == (7, 9, 10)


# -- UploadPartCopy's x-amz-copy-source-range -------------------------------------------------


def test_no_copy_range_copies_the_whole_source():
    assert parse_copy_range(None, 10) == (0, 9)
    assert parse_copy_range(None, 1) == (0, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=0-9", (0, 9)),
        ("bytes=3-3", (3, 3)),
        ("bytes=9-9", (9, 9)),
        ("bytes=2-7", (2, 7)),
        ("bytes=002-007", (2, 7)),
        (" bytes=2-7 ", (2, 7)),  # surrounding whitespace is allowed
        ("\tbytes=2-7\r\n", (2, 7)),
    ],
)
def test_a_copy_range_is_inclusive_offsets(value, expected):
    assert parse_copy_range(value, 10) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes=",
        "bytes=2-",  # unlike Range, both ends are required
        "bytes=-3",
        "bytes=a-b",
        "bytes=1-2,4-5",
        "bytes= 1-2",
        "bytes=1 -2",
        "bytes=1.0-2",
        "BYTES=1-2",
        "bytes 1-2",
        "bytes=+1-2",
        "bytes=1-2-3",
    ],
)
def test_a_malformed_copy_range_is_invalid_argument(value):
    with pytest.raises(S3Error) as info:
        parse_copy_range(value, 10)
    assert info.value.code == "InvalidArgument" and info.value.status == 400
    assert "bytes=first-last" in info.value.message


@pytest.mark.parametrize("value", ["bytes=5-4", "bytes=10-10", "bytes=0-10", "bytes=9-100"])
def test_a_copy_range_outside_the_source_or_backwards_is_416(value):
    with pytest.raises(S3Error) as info:
        parse_copy_range(value, 10)
    assert info.value.code == "InvalidRange" and info.value.status == 416
    assert info.value.message.endswith("source object of size: 10")


def test_any_copy_range_of_an_empty_source_is_416():
    with pytest.raises(S3Error) as info:
        parse_copy_range("bytes=0-0", 0)
    assert info.value.status == 416


@pytest.mark.parametrize("value", ["bytes=\u0661-\u0662", "bytes=\uff11-\uff12"])
def test_a_copy_range_in_non_ascii_digits_is_invalid_argument(value):
    with pytest.raises(S3Error) as info:
        parse_copy_range(value, 10)
    assert info.value.code == "InvalidArgument"


# -- numbers too long for int(): S3's answer for a huge number, never a ValueError ------------

HUGE = "9" * 5000  # past int()'s 4 300-digit limit


def test_a_range_starting_past_any_object_is_invalid_range_however_long_its_digits():
    error = invalid_range(f"bytes={HUGE}-", 10)
    assert error.fields["RangeRequested"] == f"bytes={HUGE}-"
    invalid_range(f"bytes={HUGE}-{HUGE}9", 10)


def test_a_huge_range_end_or_suffix_is_clamped_to_the_object():
    assert parse_range(f"bytes=2-{HUGE}", 10) == (2, 9)
    assert parse_range(f"bytes=-{HUGE}", 10) == (0, 9)
    assert parse_range(f"bytes=0000{'0' * 5000}3-{'0' * 5000}4", 10) == (3, 4)


def test_a_huge_backwards_range_is_ignored_as_any_backwards_range():
    assert parse_range(f"bytes={HUGE}9-{HUGE}", 10) is None
    assert stored_window(f"bytes={HUGE}9-{HUGE}", 4096) is None


def test_the_window_of_a_huge_range_stays_within_a_backend_int64():
    for header in (f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={HUGE}-{HUGE}"):
        window = stored_window(header, 4096)
        assert window is not None
        assert all(int(n) < 2**63 for n in window[len("bytes=") :].split("-") if n)


def test_a_huge_copy_range_is_416_not_a_value_error():
    for value in (f"bytes=0-{HUGE}", f"bytes={HUGE}-{HUGE}"):
        with pytest.raises(S3Error) as info:
            parse_copy_range(value, 10)
        assert info.value.code == "InvalidRange"
    with pytest.raises(S3Error) as info:
        parse_copy_range(f"bytes={HUGE}9-{HUGE}", 10**6)
    assert info.value.code == "InvalidRange"


def test_a_backend_content_range_of_huge_numbers_is_read_without_a_value_error():
    start, end, total = parse_content_range(f"bytes 0-{HUGE}/{HUGE}")
    assert start == 0 and end == total > 10**63


@pytest.mark.parametrize("header", ["bytes=\xb2-", "bytes=0-\xb2", "bytes=-\xb9", "bytes=1-2\xa0"])
def test_a_range_with_latin1_digits_or_spaces_is_ignored(header):
    assert parse_range(header, 10) is None
    assert stored_window(header, 4096) is None


def test_a_range_unit_matches_ascii_case_only():
    assert parse_range("BYTES=1-2", 10) == (1, 2)
    assert parse_range("byte\u017f=1-2", 10) is None  # LATIN SMALL LETTER LONG S
