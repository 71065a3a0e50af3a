"""Fuzzing what comes back from the backend: stored ciphertext, envelopes, upload tokens and
the HTTP/1.1 responses themselves.

Damaged ciphertext yields only plaintext that authenticated (a prefix of the truth) and then
TamperedError, never other plaintext; malformed metadata is TamperedError, a forged UploadId
NoSuchUpload, a malformed response ProtocolError: never another exception.
"""

from __future__ import annotations

import base64

import pytest
from fuzzing import cuts, damaged, numbers, pieces, text, usually
from hypothesis import given
from hypothesis import strategies as st

from trios3.core import format as fmt
from trios3.core import keys
from trios3.core import multipart as mp
from trios3.core.errors import S3Error, TamperedError
from trios3.core.http1 import ChunkedReader, Framing, Headers, ProtocolError, parse_head

pytestmark = pytest.mark.fuzz

KEY = bytes(range(32))
S = fmt.MIN_SEGMENT_SIZE
plaintexts = st.binary(max_size=3 * S + 100)


def seal(plain: bytes, at: list[int]) -> bytes:
    sealer = fmt.SegmentSealer(KEY, S)
    out = [c for piece in pieces(plain, at) for c in sealer.feed(piece)]
    return b"".join([*out, sealer.finish()])


def opened(opener, stored: bytes, at: list[int]) -> tuple[bytes, bool]:
    """(plaintext released, whether the stream authenticated to its end)."""
    out = []
    try:
        for piece in pieces(stored, at):
            out.extend(opener.feed(piece))
        out.extend(opener.finish())
    except TamperedError:
        return b"".join(out), False
    return b"".join(out), True


# -- single objects (format v1) ---------------------------------------------------------------


@given(plaintexts, cuts, cuts)
def test_sealed_segments_open_to_the_plaintext_in_any_split(plain, seal_at, open_at):
    stored = seal(plain, seal_at)
    assert len(stored) == fmt.stored_size(len(plain), S)
    assert fmt.plaintext_size(len(stored), S) == len(plain)
    assert opened(fmt.SegmentOpener(KEY, S, len(plain)), stored, open_at) == (plain, True)


@given(plaintexts, cuts, st.data())
def test_damaged_segments_release_only_authentic_plaintext(plain, at, data):
    stored = seal(plain, at)
    bad = data.draw(damaged(stored))
    out, whole = opened(fmt.SegmentOpener(KEY, S, len(plain)), bad, data.draw(cuts))
    assert whole == (bad == stored)  # two flips of one byte can undo each other
    # Whole segments only: all of them, then bytes after the last one, is still an error.
    assert plain.startswith(out) and (len(out) % S == 0 or out == plain)


@given(st.integers(min_value=0, max_value=3 * S + 100), st.binary(max_size=3 * S + 200), cuts)
def test_bytes_that_were_never_sealed_are_tampered(size, stored, at):
    out, whole = opened(fmt.SegmentOpener(KEY, S, size), stored, at)
    assert not whole and out == b""


@st.composite
def spans(draw, size: int) -> tuple[int, int]:
    if size == 0:
        return 0, -1
    start = draw(st.integers(min_value=0, max_value=size - 1))
    return start, draw(st.integers(min_value=start, max_value=size - 1))


@given(plaintexts, st.data())
def test_a_span_opens_to_its_bytes_or_only_a_prefix_of_them_when_damaged(plain, data):
    stored = seal(plain, [])
    start, end = data.draw(spans(len(plain)))
    span = fmt.span_for_range(len(plain), start, end, S)
    window_start = data.draw(st.integers(min_value=0, max_value=span.stored_start))
    window_end = data.draw(st.integers(min_value=span.stored_end, max_value=len(stored) - 1))
    window = stored[window_start : window_end + 1]
    expected = plain[start : end + 1]
    opener = fmt.SpanOpener(KEY, S, len(plain), span, window_start)
    assert opened(opener, window, data.draw(cuts)) == (expected, True)
    bad = data.draw(damaged(window))
    opener = fmt.SpanOpener(KEY, S, len(plain), span, window_start)
    out, whole = opened(opener, bad, data.draw(cuts))
    assert expected.startswith(out)
    assert not whole or out == expected


@given(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([S, 2 * S, fmt.DEFAULT_SEGMENT_SIZE]),
)
def test_a_stored_size_maps_back_to_a_plaintext_size_or_none(stored, segment):
    size = fmt.plaintext_size(stored, segment)
    if size is not None:
        assert size >= 0 and fmt.stored_size(size, segment) == stored


# -- multipart objects (format v2) -----------------------------------------------------------


def seal_parts(plain: bytes, sizes: list[int]) -> tuple[list[mp.PartHeader], bytes]:
    headers, stored, at = [], [], 0
    for number, size in enumerate(sizes, start=1):
        sealer = mp.PartSealer(KEY, S, number, size)
        headers.append(sealer.header)
        stored += [sealer.header.encode(), *sealer.feed(plain[at : at + size]), sealer.finish()]
        at += size
    return headers, b"".join(stored)


part_sizes = st.lists(st.integers(min_value=0, max_value=2 * S + 10), min_size=1, max_size=4)


@given(part_sizes, st.data())
def test_a_multipart_range_opens_to_its_bytes_or_only_a_prefix_of_them_when_damaged(sizes, data):
    plain = data.draw(st.binary(min_size=sum(sizes), max_size=sum(sizes)))
    headers, stored = seal_parts(plain, sizes)
    layout = mp.Layout(S, sizes)
    assert layout.stored_size == len(stored) and layout.plaintext_size == len(plain)
    start, end = data.draw(spans(len(plain)))
    number = layout.part_at(start) if end >= start else 1

    def opener() -> mp.MultipartOpener:
        return mp.MultipartOpener(KEY, layout, start, end, headers[number - 1])

    low, high = opener().window
    window = stored[low : high + 1]
    expected = plain[start : end + 1]
    assert opened(opener(), window, data.draw(cuts)) == (expected, True)
    out, whole = opened(opener(), data.draw(damaged(window)), data.draw(cuts))
    assert expected.startswith(out)
    assert not whole or out == expected


@given(st.binary(min_size=mp.PART_HEADER_SIZE, max_size=mp.PART_HEADER_SIZE))
def test_any_part_header_parses_or_is_tampered(raw):
    try:
        header = mp.PartHeader.parse(raw)
    except TamperedError:
        return
    assert header.encode() == raw


@given(
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-5, max_value=20_000)
)
def test_a_listing_size_maps_to_a_plaintext_size_or_none(stored, count):
    size = mp.listing_plaintext_size(stored, count, fmt.DEFAULT_SEGMENT_SIZE)
    assert size is None or size >= 0


# -- UploadId tokens -------------------------------------------------------------------------

backend_ids = text(60).filter(bool)


@given(
    backend_ids,
    st.binary(min_size=8, max_size=8).map(bytes.hex),
    st.sampled_from([S, 2 * S, fmt.DEFAULT_SEGMENT_SIZE, fmt.MAX_SEGMENT_SIZE]),
    st.binary(min_size=60, max_size=60),
)
def test_an_upload_token_decodes_to_what_it_encodes(backend_id, key_id, segment_size, wrapped):
    token = mp.UploadToken(backend_id, key_id, segment_size, wrapped)
    assert mp.UploadToken.decode(token.encode()) == token
    listed = mp.UploadToken(backend_id)
    assert mp.UploadToken.decode(listed.encode()) == listed


upload_ids = st.one_of(
    text(120),
    st.builds(lambda p, b: p + b, st.sampled_from(["t3.", "t3l.", "t3", ""]), text(120)),
    st.builds(
        lambda p, raw: p + base64.urlsafe_b64encode(raw).decode().rstrip("="),
        st.sampled_from(["t3.", "t3l."]),
        st.binary(max_size=120),
    ),
)


@given(upload_ids)
def test_any_upload_id_decodes_or_is_no_such_upload(upload_id):
    try:
        token = mp.UploadToken.decode(upload_id)
    except S3Error as error:
        assert error.code == "NoSuchUpload"
        return
    assert token.backend_upload_id
    assert token.segment_size is None or fmt.is_valid_segment_size(token.segment_size)


# -- envelopes -------------------------------------------------------------------------------

envelope_fields = [keys.META_VERSION, keys.META_KEY_ID, keys.META_SEGMENT_SIZE, keys.META_DATA_KEY]
good_envelope = keys.Envelope(
    4, "0123456789abcdef", fmt.DEFAULT_SEGMENT_SIZE, bytes(keys.WRAPPED_KEY_SIZE), bytes(44)
).to_metadata()


@given(
    st.dictionaries(
        st.sampled_from([*envelope_fields, keys.META_CONTENT_MD5, keys.META_PREFIX + "x", "etag"]),
        st.one_of(
            numbers(), text(100), st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode())
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_any_metadata_is_an_envelope_none_or_tampered(changes, start_from_good):
    headers = {**(good_envelope if start_from_good else {}), **changes}
    try:
        envelope = keys.Envelope.from_metadata(headers)
    except TamperedError:
        return
    if envelope is not None:
        assert envelope.version in keys.READABLE_VERSIONS
        assert fmt.is_valid_segment_size(envelope.segment_size)
        assert keys.Envelope.from_metadata(envelope.to_metadata()) == envelope


@given(
    st.sampled_from(sorted(keys.READABLE_VERSIONS)),
    st.binary(min_size=8, max_size=8).map(bytes.hex),
    st.sampled_from([S, fmt.DEFAULT_SEGMENT_SIZE, fmt.MAX_SEGMENT_SIZE]),
    st.binary(min_size=keys.WRAPPED_KEY_SIZE, max_size=keys.WRAPPED_KEY_SIZE),
    st.binary(min_size=keys.SEALED_MD5_SIZE, max_size=keys.SEALED_MD5_SIZE),
)
def test_an_envelope_reads_back_from_its_metadata(version, key_id, segment, wrapped, md5):
    sealed = md5 if version in keys.WITH_SEALED_MD5.values() else None
    envelope = keys.Envelope(version, key_id, segment, wrapped, sealed)
    assert keys.Envelope.from_metadata(envelope.to_metadata()) == envelope


@given(st.binary(max_size=keys.WRAPPED_KEY_SIZE + 4), text(20), text(20))
def test_a_wrapped_key_that_is_not_this_objects_is_tampered(wrapped, bucket, key):
    ring = keys.Keyring([keys.MasterKey(bytes(32))])
    envelope = keys.Envelope(1, ring.primary.key_id, S, wrapped)
    with pytest.raises(TamperedError):
        ring.open(envelope, bucket, key)


# -- the backend's HTTP/1.1 ------------------------------------------------------------------

status_lines = st.one_of(
    st.builds(
        lambda v, s, r: f"{v} {s}{r}",
        usually("HTTP/1.1", st.sampled_from(["HTTP/1.0", "HTTP/2", "http/1.1", ""])),
        usually("200", numbers(), st.sampled_from(["099", "600", "20", "2000"])),
        st.sampled_from(["", " OK", " ", "OK"]),
    ),
    text(30),
)
header_lines = st.one_of(
    st.builds(
        lambda n, v: f"{n}:{v}",
        st.sampled_from(["content-length", "transfer-encoding", "connection", "etag", "x", ""]),
        st.one_of(numbers(), st.sampled_from(["chunked", " close", "gzip, chunked"]), text(20)),
    ),
    text(30),
)


@given(status_lines, st.lists(header_lines, max_size=5), st.sampled_from(["GET", "HEAD", "PUT"]))
def test_any_response_head_parses_or_is_a_protocol_error(status_line, lines, method):
    head = "\r\n".join([status_line, *lines]).encode("utf-8", "surrogatepass")
    try:
        status, version, headers = parse_head(head)
        framing = Framing(status, version, headers, method)
    except ProtocolError:
        return
    assert 100 <= status <= 599
    assert framing.length is None or framing.length >= 0


@given(st.binary(max_size=300))
def test_any_bytes_as_a_response_head_parse_or_are_a_protocol_error(head):
    try:
        parse_head(head)
    except ProtocolError:
        pass


def chunked(data: bytes, sizes: list[int], extension: str, trailers: list[str]) -> bytes:
    out, at, n = bytearray(), 0, 0
    while at < len(data):
        piece = data[at : at + (sizes[n % len(sizes)] if sizes else len(data))]
        out += f"{len(piece):x}{extension}\r\n".encode() + piece + b"\r\n"
        at, n = at + len(piece), n + 1
    out += f"0{extension}\r\n".encode()
    for line in trailers:
        out += line.encode() + b"\r\n"
    return bytes(out + b"\r\n")


@given(
    st.binary(max_size=500),
    st.lists(st.integers(min_value=1, max_value=200), max_size=3),
    st.sampled_from(["", ";a=b", ";x"]),
    st.lists(st.sampled_from(["x-amz-checksum-crc32: AAAAAA==", "a: b"]), max_size=2),
    cuts,
)
def test_a_chunked_body_reads_back_in_any_split(data, sizes, extension, trailers, at):
    reader = ChunkedReader()
    out = b"".join(
        b"".join(reader.feed(piece))
        for piece in pieces(chunked(data, sizes, extension, trailers), at)
    )
    assert out == data and reader.done and not reader.leftover


@given(st.binary(max_size=300), st.data())
def test_any_chunked_bytes_read_or_are_a_protocol_error(data, draw):
    wire = draw.draw(st.one_of(st.binary(max_size=300), damaged(chunked(data, [7], "", []))))
    reader = ChunkedReader()
    try:
        for piece in pieces(wire, draw.draw(cuts)):
            reader.feed(piece)
    except ProtocolError:
        pass


@given(
    st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True), text(20)), max_size=6)
)
def test_response_headers_are_a_case_blind_mapping(pairs):
    headers = Headers(pairs)
    for name, _ in pairs:
        assert name in headers and headers.get(name.upper()) == headers[name]
