"""The backend client's HTTP/1.1 (trios3.core.http1), on bytes: response heads, the chunked
body decoder fed every way a network could split it, how a body is framed, request heads."""

from __future__ import annotations

import random

import pytest

from trios3.core.http1 import (
    ChunkedReader,
    Framing,
    Headers,
    ProtocolError,
    parse_head,
    request_head,
)

# -- parse_head -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status", "version"),
    [
        (b"HTTP/1.1 200 OK", 200, "HTTP/1.1"),
        (b"HTTP/1.1 404 Not Found", 404, "HTTP/1.1"),
        (b"HTTP/1.1 200", 200, "HTTP/1.1"),  # no reason phrase
        (b"HTTP/1.1 200 ", 200, "HTTP/1.1"),  # an empty one
        (b"HTTP/1.1 503 Slow Down, please", 503, "HTTP/1.1"),
        (b"HTTP/1.0 200 OK", 200, "HTTP/1.0"),
        (b"HTTP/1.1 100 Continue", 100, "HTTP/1.1"),
        (b"HTTP/1.1 599 Edge", 599, "HTTP/1.1"),
    ],
)
def test_a_status_line_gives_its_status_and_version(line, status, version):
    code, got_version, headers = parse_head(line)
    assert (code, got_version, len(headers)) == (status, version, 0)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"HTTP/1.1",
        b"HTTP/1.1 ",
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",
        b"HTTP/0.9 200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1  200 OK",  # two spaces: an empty status
        b"ICY 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 0200 OK",
        b"HTTP/1.1 +20 OK",
        b"HTTP/1.1 2_0 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 600 High",
        b"HTTP/1.1 999 High",
        b"HTTP/1.1 \xff\xfe\xfd OK",
    ],
)
def test_an_unreadable_status_line_is_a_protocol_error(line):
    with pytest.raises(ProtocolError, match="status line"):
        parse_head(line + b"\r\nContent-Length: 0")


def test_header_names_are_lower_cased_and_values_stripped():
    _, _, headers = parse_head(
        b'HTTP/1.1 200 OK\r\nContent-Length:   12 \t\r\nX-Amz-Meta-Colour:\tblue\r\nETag:"abc"'
    )
    assert list(headers) == ["content-length", "x-amz-meta-colour", "etag"]
    assert headers["content-length"] == "12"
    assert headers["x-amz-meta-colour"] == "blue"
    assert headers["etag"] == '"abc"'


def test_a_value_keeps_its_inner_spaces_and_colons():
    _, _, headers = parse_head(b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 10:11:12 GMT")
    assert headers["date"] == "Tue, 01 Jan 2030 10:11:12 GMT"


def test_an_empty_value_is_kept_empty():
    _, _, headers = parse_head(b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Blank:   ")
    assert headers["x-empty"] == "" and headers["x-blank"] == ""


def test_repeated_headers_are_joined_with_a_comma_in_order():
    _, _, headers = parse_head(
        b"HTTP/1.1 200 OK\r\nVary: Origin\r\nX-Other: 1\r\nvary: Accept\r\nVARY: Range"
    )
    assert headers["vary"] == "Origin, Accept, Range"
    assert len(headers) == 2


def test_header_bytes_are_read_as_latin_1():
    _, _, headers = parse_head(b"HTTP/1.1 200 OK\r\nX-Amz-Meta-Name: caf\xe9 \xff\r\nX-\xc4: 1")
    assert headers["x-amz-meta-name"] == "caf\u00e9 \u00ff"
    assert headers["x-\u00e4"] == "1"  # lower-cased as latin-1


@pytest.mark.parametrize(
    "line",
    [
        b" folded continuation",  # obsolete line folding
        b"\tfolded continuation",
        b" Content-Length: 5",  # leading whitespace
        b"Content-Length : 5",  # whitespace before the colon
        b"Content-Length\t: 5",
        b"no colon at all",
        b": no name",
        b"",  # an empty line inside the head
    ],
)
def test_a_malformed_header_line_is_a_protocol_error(line):
    with pytest.raises(ProtocolError, match="header line"):
        parse_head(b"HTTP/1.1 200 OK\r\nX-First: 1\r\n" + line + b"\r\nX-Last: 2")


def test_a_bare_line_feed_in_a_header_line_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse_head(b"HTTP/1.1 200 OK\r\nX-A: b\nX-B: c")


# -- Headers ----------------------------------------------------------------------------------


def test_headers_are_found_whatever_the_case_of_the_name_asked_for():
    _, _, headers = parse_head(b'HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nETag: "e"')
    for name in ("content-type", "Content-Type", "CONTENT-TYPE"):
        assert headers[name] == "text/xml"
        assert name in headers
        assert headers.get(name) == "text/xml"
    assert headers.get("ETAG") == '"e"'


def test_missing_headers_are_missing():
    headers = Headers([("etag", '"e"')])
    assert "content-length" not in headers
    assert headers.get("Content-Length") is None
    assert headers.get("Content-Length", "7") == "7"
    with pytest.raises(KeyError):
        headers["Content-Length"]
    assert 5 not in headers  # not a name at all
    assert None not in headers


def test_headers_iterate_their_lower_case_names_once_each_in_first_seen_order():
    headers = Headers([("b", "1"), ("a", "2"), ("b", "3")])
    assert list(headers) == ["b", "a"]
    assert len(headers) == 2
    assert dict(headers) == {"b": "1, 3", "a": "2"}
    assert dict(headers.items()) == {"b": "1, 3", "a": "2"}
    assert set(headers.keys()) == {"a", "b"}


def test_empty_headers():
    headers = Headers([])
    assert len(headers) == 0 and list(headers) == [] and not headers
    assert "a" not in headers


def test_headers_built_with_mixed_case_names_are_found():
    headers = Headers([("Content-Length", "5"), ("content-length", "5")])
    assert headers["content-length"] == "5, 5"


# -- ChunkedReader ----------------------------------------------------------------------------

CHUNKED = (
    b"5\r\nhello\r\n"
    b"1;name=value\r\n \r\n"
    b"0000000000000010\r\n" + bytes(range(16)) + b"\r\n"
    b"A\r\n0123456789\r\n"
    b'c ; quoted="a;b"\r\n' + b"x" * 12 + b"\r\n"
    b"0\r\n"
    b"X-Amz-Checksum-Crc32: abc\r\n"
    b"Another-Trailer: 1\r\n"
    b"\r\n"
)
DECODED = b"hello " + bytes(range(16)) + b"0123456789" + b"x" * 12


def feed_all(reader: ChunkedReader, pieces) -> bytes:
    out = []
    for piece in pieces:
        assert not (piece and reader.done)  # not done before the last byte is in
        out += reader.feed(piece)
    return b"".join(out)


def splits(data: bytes, rng: random.Random):
    """``data`` cut at random points, empty pieces included."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_a_chunked_body_in_one_piece():
    reader = ChunkedReader()
    assert b"".join(reader.feed(CHUNKED)) == DECODED
    assert reader.done and not reader.leftover


def test_a_chunked_body_byte_by_byte():
    reader = ChunkedReader()
    assert feed_all(reader, [CHUNKED[i : i + 1] for i in range(len(CHUNKED))]) == DECODED
    assert reader.done and not reader.leftover


@pytest.mark.parametrize("seed", range(50))
def test_a_chunked_body_in_random_pieces(seed):
    reader = ChunkedReader()
    assert feed_all(reader, splits(CHUNKED, random.Random(seed))) == DECODED
    assert reader.done and not reader.leftover


def test_chunk_data_is_handed_over_as_it_arrives():
    reader = ChunkedReader()
    assert reader.feed(b"a\r\n0123") == [b"0123"]
    assert reader.feed(b"45") == [b"45"]
    assert reader.feed(b"6789\r") == [b"6789"]
    assert reader.feed(b"\n") == []
    assert not reader.done


def test_done_only_after_the_blank_line_that_ends_the_trailers():
    reader = ChunkedReader()
    assert reader.feed(b"3\r\nabc\r\n0\r\n") == [b"abc"]
    assert not reader.done
    assert reader.feed(b"Trailer: x\r\n") == []
    assert not reader.done
    assert reader.feed(b"\r\n") == []
    assert reader.done and not reader.leftover


def test_an_empty_chunked_body():
    reader = ChunkedReader()
    assert reader.feed(b"0\r\n\r\n") == []
    assert reader.done and not reader.leftover


def test_bytes_after_the_end_are_kept_back_as_leftover():
    reader = ChunkedReader()
    assert reader.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n") == [b"abc"]
    assert reader.done and reader.leftover
    assert reader.feed(b"more") == []  # nothing more is decoded once done


def test_leftover_needs_the_end():
    reader = ChunkedReader()
    reader.feed(b"3\r\nab")
    assert not reader.leftover


@pytest.mark.parametrize(
    "size_line",
    [
        b"",  # no size
        b";ext=1",  # an extension, no size
        b"   ",
        b"g",
        b"0x10",
        b"-1",
        b"+1",
        b"1 0",
        b"1_0",
        b"\xff",
        b"1" * 17,  # more than 16 hex digits
        b"0" * 17,
    ],
)
def test_an_unreadable_chunk_size_is_a_protocol_error(size_line):
    reader = ChunkedReader()
    with pytest.raises(ProtocolError, match="chunk size"):
        reader.feed(size_line + b"\r\nabc\r\n0\r\n\r\n")


def test_sixteen_hex_digits_are_a_size():
    reader = ChunkedReader()
    assert reader.feed(b"000000000000000A\r\n0123456789") == [b"0123456789"]
    assert not reader.done  # the chunk's CRLF is still to come


def test_a_chunk_size_may_have_spaces_around_it():
    reader = ChunkedReader()
    assert reader.feed(b" 3 ;ext\r\nabc\r\n0\r\n\r\n") == [b"abc"]
    assert reader.done


@pytest.mark.parametrize("after", [b"X\r\n", b"bc\r\n0\r\n\r\n", b" \r\n"])
def test_a_chunk_not_followed_by_crlf_is_a_protocol_error(after):
    reader = ChunkedReader()
    with pytest.raises(ProtocolError, match="does not end"):
        reader.feed(b"1\r\na" + after)


def test_a_chunk_not_followed_by_crlf_is_found_byte_by_byte_too():
    reader = ChunkedReader()
    with pytest.raises(ProtocolError, match="does not end"):
        for byte in b"1\r\naXY\r\n0\r\n\r\n":
            reader.feed(bytes([byte]))


@pytest.mark.parametrize("state", ["size", "trailer"])
def test_an_overlong_line_is_a_protocol_error_before_its_end_arrives(state):
    reader = ChunkedReader()
    if state == "trailer":
        reader.feed(b"0\r\n")
    reader.feed(b"1;" + b"x" * 4000)  # 4002 bytes without a line end: still waiting
    with pytest.raises(ProtocolError, match="overlong"):
        reader.feed(b"x" * 100)


def test_a_long_extension_within_the_limit_is_read():
    reader = ChunkedReader()
    assert reader.feed(b"1;" + b"x" * 4000 + b"\r\na\r\n0\r\n\r\n") == [b"a"]
    assert reader.done


def test_an_overlong_line_is_a_protocol_error_however_it_arrives():
    reader = ChunkedReader()
    with pytest.raises(ProtocolError, match="overlong"):
        reader.feed(b"1;" + b"x" * 8000 + b"\r\na\r\n0\r\n\r\n")


# -- Framing ----------------------------------------------------------------------------------


def framing(head: bytes, method: str = "GET") -> Framing:
    status, version, headers = parse_head(head)
    return Framing(status, version, headers, method)


def test_a_content_length_frames_the_body_and_keeps_the_connection():
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Length: 1234")
    assert (got.length, got.chunked, got.keep_alive) == (1234, False, True)


@pytest.mark.parametrize("value", [b"0", b" 17 ", b"\t17", b"000", b"9" * 18])
def test_a_valid_content_length(value):
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Length:" + value)
    assert got.length == int(value) and not got.chunked and got.keep_alive


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"-1",
        b"+1",
        b"1.0",
        b"0x10",
        b"1 2",
        b"12abc",
        b"1e3",
        b"5, 5",  # two Content-Length headers
        b"9" * 19,  # huge
        b"\xb2",  # superscript two: a digit to str.isdigit, not to HTTP
        "\u0663".encode("utf-8"),  # an Arabic-Indic three
    ],
)
def test_an_invalid_content_length_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="Content-Length"):
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: " + value)


def test_two_content_length_headers_are_refused():
    with pytest.raises(ProtocolError, match="Content-Length"):
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5")


@pytest.mark.parametrize(
    ("status", "method"),
    [(200, "HEAD"), (404, "HEAD"), (204, "GET"), (304, "GET"), (100, "PUT"), (103, "GET")],
)
def test_answers_without_a_body(status, method):
    got = framing(
        b"HTTP/1.1 %d X\r\nContent-Length: 99\r\nTransfer-Encoding: chunked" % status, method
    )
    assert (got.length, got.chunked, got.keep_alive) == (0, False, True)


def test_a_bodiless_answer_may_carry_an_unreadable_content_length():
    # it describes the GET the HEAD stands for, and is not read as a length here
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Length: nonsense", "HEAD")
    assert got.length == 0


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b" CHUNKED "])
def test_a_chunked_body(value):
    got = framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value)
    assert (got.length, got.chunked, got.keep_alive) == (None, True, True)


def test_chunked_wins_over_a_content_length():
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked")
    assert got.chunked and got.length is None


@pytest.mark.parametrize("value", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity"])
def test_a_transfer_coding_other_than_chunked_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="transfer coding"):
        framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value)


def test_neither_length_nor_chunked_reads_until_the_end_and_closes():
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
    assert (got.length, got.chunked, got.keep_alive) == (None, False, False)


def test_an_http_1_0_answer_does_not_keep_its_connection():
    got = framing(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive")
    assert got.length == 3 and not got.keep_alive


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close", b" CLOSE "])
def test_connection_close_does_not_keep_the_connection(value):
    got = framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: " + value)
    assert got.length == 3 and not got.keep_alive


def test_connection_close_counts_for_an_answer_without_a_body_too():
    assert not framing(b"HTTP/1.1 204 No Content\r\nConnection: close").keep_alive


def test_connection_keep_alive_keeps_it():
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive").keep_alive


# -- request_head -----------------------------------------------------------------------------


def test_a_request_head_is_exactly_its_line_its_headers_and_a_blank_line():
    head = request_head(
        "PUT",
        b"/bucket/a%20key?partNumber=1&uploadId=x",
        [("host", "s3.test:8333"), ("content-length", "5"), ("x-amz-meta-name", "caf\u00e9")],
    )
    assert head == (
        b"PUT /bucket/a%20key?partNumber=1&uploadId=x HTTP/1.1\r\n"
        b"host: s3.test:8333\r\n"
        b"content-length: 5\r\n"
        b"x-amz-meta-name: caf\xe9\r\n"
        b"\r\n"
    )


def test_a_request_head_without_headers():
    assert request_head("GET", b"/", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_a_request_head_keeps_header_order_and_repeats():
    head = request_head("GET", b"/", [("b", "1"), ("a", "2"), ("b", "3")])
    assert head == b"GET / HTTP/1.1\r\nb: 1\r\na: 2\r\nb: 3\r\n\r\n"


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\rb", "a\nb", "\r\n"])
def test_a_line_break_in_a_header_value_is_refused(value):
    with pytest.raises(ValueError, match="x-amz-meta-evil"):
        request_head("GET", b"/", [("host", "h"), ("x-amz-meta-evil", value)])


def test_a_request_head_round_trips_through_the_response_parser_s_rules():
    # the same header rules both ways: what is sent parses back to the same pairs
    pairs = [("host", "h"), ("x-a", "1, 2"), ("x-b", "")]
    head = request_head("GET", b"/", pairs)
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    _, _, headers = parse_head(b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(lines[1:]))
    assert list(headers.items()) == pairs
