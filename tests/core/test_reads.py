"""The read plan of a GET (trios3.core.reads), on plain data: every path the shell can take."""

from __future__ import annotations

import os
import re

import pytest

from trios3.core import format as fmt
from trios3.core import multipart as mp
from trios3.core.errors import S3Error
from trios3.core.keys import Envelope
from trios3.core.ranges import parse_range
from trios3.core.reads import (
    MAX_RESPONSES,
    Answer,
    FetchAgain,
    Fetched,
    ReadMultipart,
    ReadPlan,
    Refuse,
    ServeForeign,
    StreamMultipartWhole,
    StreamSingle,
    check_single_part_number,
    multipart_answer,
    single_answer,
)

S = fmt.DEFAULT_SEGMENT_SIZE
SINGLE = Envelope(1, "0" * 16, S, b"\0" * 60)
MULTIPART = Envelope(2, "0" * 16, S, b"\0" * 60)


def envelope(segment_size: int = S, version: int = 1) -> Envelope:
    return Envelope(version, "0" * 16, segment_size, b"\0" * 60)


def backend_answer(stored_size: int, range_header: str | None):
    """(status, Content-Range, Content-Length) as S3 answers a GET of an object of
    ``stored_size`` bytes with ``range_header``."""
    if range_header is None:
        return 200, None, str(stored_size)
    first, last = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header).groups()
    if not first:
        start, end = max(0, stored_size - int(last)), stored_size - 1
    else:
        start = int(first)
        if start >= stored_size:
            return 416, None, None
        end = min(int(last), stored_size - 1) if last else stored_size - 1
    return 206, f"bytes {start}-{end}/{stored_size}", str(end - start + 1)


def run_plan(plan: ReadPlan, stored_size: int, env: Envelope | None):
    """The plan against an S3 that holds ``stored_size`` bytes: (final action, GETs sent)."""
    range_header = plan.first_range()
    sent = []
    while True:
        sent.append(range_header)
        status, content_range, content_length = backend_answer(stored_size, range_header)
        action = plan.on_response(
            status, content_range, content_length, env if status in (200, 206) else None
        )
        if not isinstance(action, FetchAgain):
            return action, sent
        range_header = action.range


# -- single PUT objects ------------------------------------------------------------------------


def test_a_whole_get_of_a_single_object_is_one_backend_request():
    size = 3 * S + 5
    action, sent = run_plan(ReadPlan(None, None), fmt.stored_size(size, S), SINGLE)
    assert sent == [None]
    assert isinstance(action, StreamSingle)
    assert action.answer == Answer(200, 0, size - 1, [("content-length", str(size))])
    assert action.plaintext_size == size
    assert action.fetched == Fetched(0, fmt.stored_size(size, S) - 1, fmt.stored_size(size, S))


def test_a_ranged_get_fetches_only_the_covering_segments_in_one_request():
    size = 10 * S
    action, sent = run_plan(ReadPlan(f"bytes={S + 1}-{2 * S + 2}", None), size + 160, SINGLE)
    stride = S + fmt.TAG_SIZE
    assert sent == [f"bytes={stride}-{3 * stride - 1}"]
    assert isinstance(action, StreamSingle)
    assert action.answer.status == 206
    assert ("content-range", f"bytes {S + 1}-{2 * S + 2}/{size}") in action.answer.headers
    assert (action.span.first_segment, action.span.last_segment) == (1, 2)


def test_an_object_with_smaller_segments_is_fetched_again_exactly():
    small = 4096
    size = 50 * small
    action, sent = run_plan(
        ReadPlan(f"bytes=10000-{S - 1}", None), fmt.stored_size(size, small), envelope(small)
    )
    assert len(sent) == 2
    span = fmt.span_for_range(size, 10000, S - 1, small)
    assert sent[1] == f"bytes={span.stored_start}-{span.stored_end}"
    assert isinstance(action, StreamSingle) and action.span == span


def test_a_range_past_the_guessed_end_learns_the_size_from_the_last_byte():
    # Stored is smaller than the segment the range starts in: the guess gets 416.
    size = 100
    with pytest.raises(S3Error) as err:
        run_plan(ReadPlan(f"bytes={S}-", None), fmt.stored_size(size, S), SINGLE)
    assert err.value.code == "InvalidRange"
    assert err.value.fields["ActualObjectSize"] == str(size)
    assert err.value.headers["Content-Range"] == f"bytes */{size}"


def test_a_range_starting_at_the_plaintext_end_is_invalid_range_with_the_plaintext_size():
    size = 2 * S
    with pytest.raises(S3Error) as err:
        run_plan(ReadPlan(f"bytes={size}-", None), fmt.stored_size(size, S), SINGLE)
    assert err.value.code == "InvalidRange"
    assert err.value.fields["ActualObjectSize"] == str(size)


def test_an_empty_object_streams_its_one_empty_segment():
    action, sent = run_plan(ReadPlan(None, None), fmt.TAG_SIZE, SINGLE)
    assert sent == [None]
    assert isinstance(action, StreamSingle)
    assert action.answer == Answer(200, 0, -1, [("content-length", "0")])
    assert action.span.length == 0 and action.answer.empty


def test_part_one_of_a_single_object_is_all_of_it_and_other_parts_are_unsatisfiable():
    action, _ = run_plan(ReadPlan(None, "1"), fmt.stored_size(10, S), SINGLE)
    assert isinstance(action, StreamSingle) and action.answer.status == 200
    with pytest.raises(S3Error) as err:
        run_plan(ReadPlan(None, "2"), fmt.stored_size(10, S), SINGLE)
    assert (err.value.code, err.value.status) == ("InvalidPartNumber", 416)


def test_an_impossible_stored_size_is_an_internal_error():
    with pytest.raises(S3Error) as err:
        run_plan(ReadPlan(None, None), S + fmt.TAG_SIZE + 3, SINGLE)
    assert err.value.code == "InternalError"


def test_an_unreadable_content_range_is_an_internal_error():
    plan = ReadPlan("bytes=0-10", None)
    with pytest.raises(S3Error) as err:
        plan.on_response(206, "bytes 0-10", "11", SINGLE)
    assert err.value.code == "InternalError"


def test_a_read_that_never_settles_gives_up_after_max_responses():
    plan = ReadPlan("bytes=0-10", None)
    plan.first_range()
    for attempt in range(MAX_RESPONSES):
        # Each answer covers less than the span needs (the object keeps changing under it).
        answer = lambda: plan.on_response(206, "bytes 0-5/1000016", "6", SINGLE)  # noqa: E731
        if attempt < MAX_RESPONSES - 1:
            assert isinstance(answer(), FetchAgain)
        else:
            with pytest.raises(S3Error) as err:
                answer()
            assert "changed" in err.value.message


@pytest.mark.parametrize("segment_size", [4096, S])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, S - 1, S, S + 1, 2 * S + 777])
def test_every_range_gives_exactly_the_bytes_s3_would_from_at_most_three_requests(
    segment_size, size
):
    """The plan, a simulated S3 and the SpanOpener together, against slicing the plaintext."""
    plaintext = os.urandom(size)
    data_key = bytes(range(32))
    sealer = fmt.SegmentSealer(data_key, segment_size)
    stored = b"".join(sealer.feed(plaintext)) + sealer.finish()
    ranges = [None, "bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-2", "junk"]
    ranges += [f"bytes={a}-{b}" for a in (0, 1, 4095, 4096, S - 1, S) for b in (a, a + 4096, "")]
    ranges += [f"bytes=-{n}" for n in (1, 4096, S, S + 1, 10 * S)]
    for client_range in ranges:
        try:
            expected = parse_range(client_range, size)
        except S3Error as err:
            with pytest.raises(S3Error) as got:
                run_plan(ReadPlan(client_range, None), len(stored), envelope(segment_size))
            assert got.value.code == err.code == "InvalidRange"
            continue
        action, sent = run_plan(ReadPlan(client_range, None), len(stored), envelope(segment_size))
        assert len(sent) <= 3, (client_range, sent)
        assert isinstance(action, StreamSingle)
        start, end = expected if expected else (0, size - 1)
        assert (action.answer.start, action.answer.end) == (start, end)
        assert action.answer.status == (206 if expected else 200)
        window = stored[action.fetched.start : action.fetched.end + 1]
        opener = fmt.SpanOpener(data_key, segment_size, size, action.span, action.fetched.start)
        got = b"".join(opener.feed(window)) + b"".join(opener.finish())
        assert got == plaintext[start : end + 1], client_range


# -- objects the proxy did not encrypt ---------------------------------------------------------


def test_a_foreign_object_without_range_is_served_from_the_first_response():
    action, sent = run_plan(ReadPlan(None, None), 1000, None)
    assert isinstance(action, ServeForeign) and sent == [None]


def test_a_foreign_object_is_fetched_again_with_the_clients_own_range():
    action, sent = run_plan(ReadPlan("bytes=10-20", None), 1000, None)
    assert isinstance(action, ServeForeign)
    assert sent[-1] == "bytes=10-20" and len(sent) == 2


def test_a_foreign_object_shorter_than_the_guess_lets_the_backend_judge_the_range():
    # 416 on the guess, the last byte shows a foreign object, the client's own range gets 416
    # again: that one is the backend's answer to pass on.
    action, sent = run_plan(ReadPlan(f"bytes={S + 5}-{S + 9}", None), 100, None)
    assert isinstance(action, Refuse)
    assert sent == [f"bytes={S + fmt.TAG_SIZE}-{2 * (S + fmt.TAG_SIZE) - 1}", "bytes=-1", sent[2]]
    assert sent[2] == f"bytes={S + 5}-{S + 9}"


def test_a_foreign_object_with_a_part_number_other_than_one_is_unsatisfiable():
    with pytest.raises(S3Error) as err:
        run_plan(ReadPlan(None, "3"), 1000, None)
    assert err.value.code == "InvalidPartNumber"


@pytest.mark.parametrize("status", [304, 403, 404, 412, 500, 503])
def test_a_backend_refusal_is_passed_on(status):
    plan = ReadPlan(None, None)
    assert isinstance(plan.on_response(status, None, None, None), Refuse)


def test_a_second_416_after_the_last_byte_is_passed_on():
    plan = ReadPlan("bytes=999999-", None)
    first = plan.first_range()
    assert first != "bytes=999999-"
    assert plan.on_response(416, None, None, None) == FetchAgain("bytes=-1")
    assert plan.on_response(416, None, None, None) == FetchAgain("bytes=999999-")
    assert isinstance(plan.on_response(416, None, None, None), Refuse)


# -- multipart objects -------------------------------------------------------------------------


def test_a_whole_get_of_a_multipart_object_streams_from_the_first_response():
    action, sent = run_plan(ReadPlan(None, None), 10_000_000, MULTIPART)
    assert sent == [None]
    assert action == StreamMultipartWhole(Fetched(0, 9_999_999, 10_000_000))


@pytest.mark.parametrize(("client_range", "part"), [("bytes=5-10", None), (None, "2")])
def test_a_ranged_or_part_get_of_a_multipart_object_reads_its_layout(client_range, part):
    action, _ = run_plan(ReadPlan(client_range, part), 10_000_000, MULTIPART)
    assert action == ReadMultipart(10_000_000)


# -- answers -----------------------------------------------------------------------------------


def layout(*sizes: int) -> mp.Layout:
    return mp.Layout(S, list(sizes))


def test_multipart_answer_of_a_part_carries_the_part_count():
    five = 5 * 1024 * 1024
    answer = multipart_answer(layout(five, five, 10), "2", None)
    assert answer.status == 206
    assert (answer.start, answer.end) == (five, 2 * five - 1)
    assert answer.headers == [
        ("x-amz-mp-parts-count", "3"),
        ("content-length", str(five)),
        ("content-range", f"bytes {five}-{2 * five - 1}/{2 * five + 10}"),
    ]


def test_multipart_answer_of_an_empty_part_has_no_content_range():
    answer = multipart_answer(layout(5 * 1024 * 1024, 0), "2", None)
    assert answer == Answer(206, 0, -1, [("x-amz-mp-parts-count", "2"), ("content-length", "0")])
    assert answer.empty


def test_multipart_answer_refuses_a_part_number_with_a_range_or_past_the_last_part():
    with pytest.raises(S3Error) as err:
        multipart_answer(layout(10), "1", "bytes=0-1")
    assert err.value.code == "InvalidRequest"
    with pytest.raises(S3Error) as err:
        multipart_answer(layout(10), "2", None)
    assert (err.value.code, err.value.status) == ("InvalidPartNumber", 416)
    with pytest.raises(S3Error) as err:
        multipart_answer(layout(10), "0", None)
    assert err.value.code == "InvalidArgument"


def test_multipart_answer_of_a_range_and_of_the_whole_object():
    assert multipart_answer(layout(10, 5), None, "bytes=3-") == Answer(
        206, 3, 14, [("content-length", "12"), ("content-range", "bytes 3-14/15")]
    )
    assert multipart_answer(layout(10, 5), None, None) == Answer(
        200, 0, 14, [("content-length", "15")]
    )


def test_single_answer_ignores_a_range_aws_would_ignore():
    assert single_answer(100, "bytes=0-1,5-6") == Answer(200, 0, 99, [("content-length", "100")])


def test_single_part_number_check():
    check_single_part_number(None)
    check_single_part_number("1")
    with pytest.raises(S3Error):
        check_single_part_number("01")
