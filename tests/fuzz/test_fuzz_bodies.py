"""Fuzzing what a request body carries: aws-chunked framing and the client's checksums.

The decoder takes bytes in any split and ends in data and EndOfBody, or an S3Error; a body
an encoder made decodes to its data; and in the signed modes a body that decodes at all,
however it was damaged, decodes to exactly what was signed.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from fuzzing import cuts, damaged, pieces, text, usually
from hypothesis import given
from hypothesis import strategies as st

from trios3.core.checksums import (
    CHECKSUM_ALGORITHMS,
    XML_NAMES,
    PayloadChecks,
    checksum_b64,
    multipart_checksums,
)
from trios3.core.chunked import AwsChunkedDecoder, ChunkSigning, EndOfBody, NeedData
from trios3.core.errors import S3Error
from trios3.core.sigv4 import SigningScope, chunk_signature, derive_signing_key, trailer_signature
from trios3.core.upload_checksum import ChecksummedBody

pytestmark = pytest.mark.fuzz

SCOPE = SigningScope("20240524", "us-east-1", "s3")
DATE = "20240524T120000Z"
KEY = derive_signing_key("secret", SCOPE)
SEED = "5" * 64
SIGNING = ChunkSigning(KEY, DATE, SCOPE, SEED)
MODES = ("signed", "signed-trailer", "unsigned-trailer")
TRAILER = "x-amz-checksum-crc32"


def decoder(mode: str, decoded_length: int | None, names=(TRAILER,)) -> AwsChunkedDecoder:
    return AwsChunkedDecoder(
        decoded_length=decoded_length,
        signing=None if mode == "unsigned-trailer" else SIGNING,
        trailer_names=() if mode == "signed" else names,
        trailer_signed=mode == "signed-trailer",
    )


def run(decoder: AwsChunkedDecoder, wire: bytes, at: list[int]) -> tuple[bytes, dict[str, str]]:
    """Feed ``wire`` cut at ``at``; the data and trailers, or the decoder's S3Error."""
    out = bytearray()
    for piece in [*pieces(wire, at), b""]:
        decoder.receive_data(piece)
        while True:
            event = decoder.next_event()
            if event is NeedData:
                break
            if isinstance(event, EndOfBody):
                return bytes(out), event.trailers
            assert isinstance(event, bytes) and event
            out += event
    raise AssertionError("the input ended without EndOfBody or an error")


def encode(mode: str, data: bytes, sizes: list[int], trailers: dict[str, str]) -> bytes:
    """An aws-chunked body as a client writes it: ``data`` in chunks of ``sizes`` (cycled)."""
    signed = mode != "unsigned-trailer"
    out = bytearray()
    previous = SEED
    chunks, at = [], 0
    while at < len(data):
        size = sizes[len(chunks) % len(sizes)] if sizes else len(data)
        chunks.append(data[at : at + size])
        at += size
    for chunk in [*chunks, b""]:
        out += f"{len(chunk):x}".encode()
        if signed:
            previous = chunk_signature(
                KEY, DATE, SCOPE, previous, hashlib.sha256(chunk).hexdigest()
            )
            out += f";chunk-signature={previous}".encode()
        out += b"\r\n" + chunk + (b"\r\n" if chunk else b"")
    for name, value in trailers.items():
        out += f"{name}:{value}\r\n".encode()
    if mode == "signed-trailer":
        canonical = "".join(f"{n}:{v}\n" for n, v in sorted(trailers.items()))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        signature = trailer_signature(KEY, DATE, SCOPE, previous, digest)
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return bytes(out + b"\r\n")


bodies = st.binary(max_size=600)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=300), max_size=4)
modes = st.sampled_from(MODES)


@given(modes, bodies, chunk_sizes, cuts)
def test_a_body_an_encoder_made_decodes_to_its_data_in_any_split(mode, data, sizes, at):
    trailers = {} if mode == "signed" else {TRAILER: checksum_b64("crc32", data)}
    wire = encode(mode, data, sizes, trailers)
    assert run(decoder(mode, len(data)), wire, at) == (data, trailers)
    assert run(decoder(mode, None), wire, at) == (data, trailers)


@given(modes, bodies, chunk_sizes, st.data())
def test_a_damaged_signed_body_decodes_to_what_was_signed_or_is_refused(mode, data, sizes, draw):
    trailers = {} if mode == "signed" else {TRAILER: checksum_b64("crc32", data)}
    wire = draw.draw(damaged(encode(mode, data, sizes, trailers)))
    at = draw.draw(cuts)
    length = draw.draw(usually(len(data), st.none()))
    try:
        decoded, got = run(decoder(mode, length), wire, at)
    except S3Error as error:
        assert error.status in (400, 403)
        return
    if mode == "unsigned-trailer":  # nothing vouches for the bytes: only their count
        assert length is None or len(decoded) == length
    else:
        assert decoded == data
    if mode == "signed-trailer":
        assert got == trailers


@given(
    modes,
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
    st.binary(max_size=400),
    cuts,
)
def test_any_bytes_decode_or_are_an_s3_error(mode, length, wire, at):
    try:
        decoded, _ = run(decoder(mode, length), wire, at)
    except S3Error:
        return
    assert length is None or len(decoded) == length


aws_chunked_noise = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"0\r\n",
                b"\r\n",
                b"5\r\nhello\r\n",
                b"0;chunk-signature=" + b"0" * 64 + b"\r\n",
                b"x-amz-checksum-crc32:AAAAAA==\r\n",
                b"x-amz-trailer-signature:" + b"0" * 64 + b"\r\n",
                b"ffffffffffffffffffff\r\n",
                b"0" * 5000 + b"1\r\n",
                b":\r\n",
            ]
        ),
        st.binary(max_size=20),
    ),
    max_size=8,
).map(b"".join)


@given(modes, aws_chunked_noise, cuts)
def test_framing_like_noise_decodes_or_is_an_s3_error(mode, wire, at):
    try:
        run(decoder(mode, None), wire, at)
    except S3Error:
        pass


@given(bodies, st.integers(min_value=1, max_value=700), cuts)
def test_the_proxys_own_checksummed_framing_is_aws_chunked_with_its_crc32c(data, chunk, at):
    framing = ChecksummedBody(len(data), chunk_size=chunk)
    wire = b"".join(framing.frame(p) for p in pieces(data, at)) + framing.trailer()
    assert len(wire) == framing.content_length
    checks = PayloadChecks.from_headers({"x-amz-trailer": "x-amz-checksum-crc32c"})
    decoded, trailers = run(
        decoder("unsigned-trailer", len(data), ("x-amz-checksum-crc32c",)), wire, at
    )
    checks.update(decoded)
    checks.verify(trailers)
    assert decoded == data


# -- the client's checksums ------------------------------------------------------------------

checksum_header_names = st.sampled_from(
    [
        "content-md5",
        "x-amz-content-sha256",
        "x-amz-trailer",
        "x-amz-sdk-checksum-algorithm",
        *(f"x-amz-checksum-{a}" for a in CHECKSUM_ALGORITHMS),
        "x-amz-checksum-md5",
    ]
)
checksum_values = st.one_of(
    st.sampled_from(["AAAAAA==", "DUoRhQ==", "", "CRC32", "x-amz-checksum-crc32", "e3b0" * 16]),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    text(40),
)


@given(
    st.dictionaries(checksum_header_names, checksum_values, max_size=4),
    st.binary(max_size=100),
    st.one_of(
        st.none(),
        st.dictionaries(st.sampled_from([TRAILER, "x-amz-checksum-sha1"]), checksum_values),
    ),
)
def test_payload_checks_of_any_headers_and_trailers_pass_or_are_an_s3_error(
    headers, data, trailers
):
    try:
        checks = PayloadChecks.from_headers(headers)
        checks.update(data)
        checks.verify(trailers)
    except S3Error as error:
        assert error.status == 400
        return
    assert all(v.isascii() for v in checks.response_headers().values())


@given(
    st.sampled_from(CHECKSUM_ALGORITHMS),
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=5),
    cuts,
)
def test_the_checksums_of_a_body_verify_and_of_another_body_do_not(algorithm, data, other, at):
    headers = {
        f"x-amz-checksum-{algorithm}": checksum_b64(algorithm, data),
        "content-md5": base64.b64encode(hashlib.md5(data).digest()).decode(),
        "x-amz-content-sha256": hashlib.sha256(data).hexdigest(),
    }
    checks = PayloadChecks.from_headers(headers)
    for piece in pieces(data, at):
        checks.update(piece)
    checks.verify()
    assert checks.response_headers() == {
        f"x-amz-checksum-{algorithm}": headers[f"x-amz-checksum-{algorithm}"]
    }
    wrong = PayloadChecks.from_headers(headers)
    wrong.update(data + other)
    with pytest.raises(S3Error) as exc:
        wrong.verify()
    assert exc.value.code in ("BadDigest", "XAmzContentSHA256Mismatch")


part_checksum_maps = st.dictionaries(
    st.sampled_from(sorted(XML_NAMES.values())), checksum_values, max_size=3
)


@given(
    st.dictionaries(
        st.sampled_from([f"x-amz-checksum-{a}" for a in CHECKSUM_ALGORITHMS]),
        checksum_values,
        max_size=2,
    ),
    st.lists(part_checksum_maps, min_size=0, max_size=5),
)
def test_multipart_checksums_of_any_listing_report_or_are_an_s3_error(headers, listed):
    sizes = [5] * len(listed)
    try:
        result = multipart_checksums(headers, listed, sizes)
    except S3Error as error:
        assert error.code in ("InvalidRequest", "BadDigest")
        return
    assert all(v.isascii() for v in result.values())


@given(
    st.sampled_from(["crc32", "crc32c", "crc64nvme"]),
    st.lists(st.binary(max_size=64), min_size=1, max_size=6),
)
def test_a_full_object_checksum_of_the_whole_is_its_parts_combined(algorithm, parts):
    listed = [{XML_NAMES[algorithm]: checksum_b64(algorithm, p)} for p in parts]
    whole = checksum_b64(algorithm, b"".join(parts))
    result = multipart_checksums(
        {f"x-amz-checksum-{algorithm}": whole}, listed, [len(p) for p in parts]
    )
    assert result == {XML_NAMES[algorithm]: whole, "ChecksumType": "FULL_OBJECT"}
