"""aws-chunked decoding: AWS vectors, boto3's wire bytes, and every way a body can be wrong."""

from __future__ import annotations

import hashlib
import time

import pytest

from aws_vectors import BODY, DATE, KEY, SCOPE, SECRET, SEED, SIGNED  # noqa: F401
from trios3.core.checksums import PayloadChecks
from trios3.core.chunked import AwsChunkedDecoder, ChunkSigning, EndOfBody, NeedData
from trios3.core.errors import S3Error
from trios3.core.sigv4 import EMPTY_SHA256, chunk_signature

TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
SIGNED_TRAILER = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n"
    + b"a" * 65536
    + b"\r\n"
    + b"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n"
    + b"a" * 1024
    + b"\r\n"
    + b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
    + b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    + b"x-amz-trailer-signature:"
    + b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
    + b"\r\n"
)
BOTO3_WIRE = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"


def signed_decoder(seed=SEED, decoded_length=66560):
    return AwsChunkedDecoder(
        decoded_length=decoded_length,
        signing=ChunkSigning(KEY, DATE, SCOPE, seed),
        trailer_names=(),
        trailer_signed=False,
    )


def trailer_decoder(decoded_length=66560):
    return AwsChunkedDecoder(
        decoded_length=decoded_length,
        signing=ChunkSigning(KEY, DATE, SCOPE, TRAILER_SEED),
        trailer_names=("x-amz-checksum-crc32c",),
        trailer_signed=True,
    )


def unsigned_decoder(decoded_length=11, names=("x-amz-checksum-crc32",)):
    return AwsChunkedDecoder(
        decoded_length=decoded_length, signing=None, trailer_names=names, trailer_signed=False
    )


def decode(decoder, wire, step=None):
    """Feed ``wire`` in pieces of ``step`` bytes (all at once if None); return (data, trailers)."""
    out = bytearray()
    step = step or max(len(wire), 1)
    pieces = [wire[i : i + step] for i in range(0, len(wire), step)] + [b""]
    for piece in pieces:
        decoder.receive_data(piece)
        while True:
            event = decoder.next_event()
            if event is NeedData:
                break
            if isinstance(event, EndOfBody):
                return bytes(out), event.trailers
            assert isinstance(event, bytes) and 0 < len(event) <= max(len(piece), 1)
            out += event
    raise AssertionError("no EndOfBody")


def decode_error(decoder, wire, step=None) -> S3Error:
    with pytest.raises(S3Error) as exc:
        decode(decoder, wire, step)
    return exc.value


def test_aws_signed_chunk_vector_decodes():
    assert decode(signed_decoder(), SIGNED) == (BODY, {})


def test_aws_signed_trailer_vector_decodes():
    assert decode(trailer_decoder(), SIGNED_TRAILER) == (
        BODY,
        {"x-amz-checksum-crc32c": "sOO8/Q=="},
    )


def test_boto3_unsigned_trailer_wire_example():
    data, trailers = decode(unsigned_decoder(), BOTO3_WIRE)
    assert data == b"hello world" and trailers == {"x-amz-checksum-crc32": "DUoRhQ=="}
    checks = PayloadChecks.from_headers({"x-amz-trailer": "x-amz-checksum-crc32"})
    checks.update(data)
    checks.verify(trailers)
    assert checks.response_headers() == {"x-amz-checksum-crc32": "DUoRhQ=="}


@pytest.mark.parametrize(
    ("make", "wire"),
    [(signed_decoder, SIGNED), (trailer_decoder, SIGNED_TRAILER), (unsigned_decoder, BOTO3_WIRE)],
)
def test_byte_by_byte_feeding_matches_one_big_feed(make, wire):
    assert decode(make(), wire, step=1) == decode(make(), wire)
    assert decode(make(), wire, step=7) == decode(make(), wire)


def test_data_is_released_before_the_chunk_ends():
    decoder = signed_decoder()
    decoder.receive_data(SIGNED[:1000])
    first = decoder.next_event()
    assert isinstance(first, bytes) and 0 < len(first) < 1000
    assert decoder.next_event() is NeedData


def test_end_of_body_waits_for_end_of_input():
    decoder = unsigned_decoder()
    decoder.receive_data(BOTO3_WIRE)
    assert decoder.next_event() == b"hello world"
    assert decoder.next_event() is NeedData
    decoder.receive_data(b"")
    assert decoder.next_event() == EndOfBody({"x-amz-checksum-crc32": "DUoRhQ=="})


def test_wrong_chunk_signature_is_rejected():
    error = decode_error(signed_decoder(seed=TRAILER_SEED), SIGNED)
    assert error.code == "SignatureDoesNotMatch"


def test_tampered_chunk_data_is_rejected():
    wire = SIGNED.replace(b"a" * 10, b"b" + b"a" * 9, 1)
    assert decode_error(signed_decoder(), wire).code == "SignatureDoesNotMatch"


def test_wrong_final_chunk_signature_is_rejected():
    wire = SIGNED.replace(b"0;chunk-signature=b6c6", b"0;chunk-signature=b6c7")
    assert decode_error(signed_decoder(), wire).code == "SignatureDoesNotMatch"


def test_missing_chunk_signature_is_rejected():
    assert decode_error(
        signed_decoder(decoded_length=11), b"b\r\nhello world\r\n0\r\n\r\n"
    ).code == ("InvalidRequest")


def test_bad_trailer_signature_is_rejected():
    wire = SIGNED_TRAILER.replace(b"sig" + b"nature:d81f", b"signature:d81e")
    assert decode_error(trailer_decoder(), wire).code == "SignatureDoesNotMatch"
    wire = SIGNED_TRAILER.replace(b"sOO8/Q==", b"AAAAAA==")
    assert decode_error(trailer_decoder(), wire).code == "SignatureDoesNotMatch"


def test_missing_trailer_signature_is_rejected():
    wire = SIGNED_TRAILER.split(b"x-amz-trailer-signature")[0] + b"\r\n"
    assert decode_error(trailer_decoder(), wire).code == "MalformedTrailerError"


@pytest.mark.parametrize("cut", [1, 50, 1000, len(SIGNED) - 3, len(SIGNED) - 1])
def test_truncated_stream_is_incomplete(cut):
    assert decode_error(signed_decoder(), SIGNED[:cut]).code == "IncompleteBody"


def test_empty_input_is_incomplete():
    assert decode_error(signed_decoder(), b"").code == "IncompleteBody"


def test_bytes_after_the_end_are_rejected():
    assert decode_error(signed_decoder(), SIGNED + b"x").code == "InvalidRequest"
    assert decode_error(unsigned_decoder(), BOTO3_WIRE + b"\r\n", step=1).code == "InvalidRequest"


def test_decoded_length_mismatch_is_incomplete():
    assert decode_error(signed_decoder(decoded_length=66561), SIGNED).code == "IncompleteBody"
    # Exceeding the declared length fails at the chunk header, before its data is released.
    decoder = signed_decoder(decoded_length=100)
    decoder.receive_data(SIGNED[:200])
    with pytest.raises(S3Error) as exc:
        decoder.next_event()
    assert exc.value.code == "IncompleteBody"


def test_errors_are_sticky():
    decoder = signed_decoder(decoded_length=100)
    decoder.receive_data(SIGNED[:200])
    for _ in range(2):
        with pytest.raises(S3Error):
            decoder.next_event()


@pytest.mark.parametrize(
    "size", [b"zz", b"-1", b"0x10", b"", b" b", b"+b", b"\xb2", b"\xef\xbc\x91"]
)
def test_non_hex_sizes_are_rejected(size):
    wire = size + b"\r\nhello world\r\n0\r\n\r\n"
    assert decode_error(unsigned_decoder(names=()), wire).code == "InvalidRequest"


@pytest.mark.parametrize("size", [b"1" * 17, b"f" * 4000])
def test_a_chunk_size_of_any_length_past_the_decoded_length_is_refused(size):
    wire = size + b"\r\nhello world\r\n0\r\n\r\n"
    error = decode_error(unsigned_decoder(names=()), wire)
    assert error.code == "IncompleteBody" and "longer" in error.message


def test_a_chunk_size_may_have_leading_zeros():
    wire = b"0" * 40 + b"b\r\nhello world\r\n0\r\n\r\n"
    assert decode(unsigned_decoder(names=()), wire) == (b"hello world", {})


def test_a_trailer_after_signed_chunks_without_trailer_signing_is_refused():
    # STREAMING-AWS4-HMAC-SHA256-PAYLOAD: nothing signs a trailer, so none may come, announced
    # (x-amz-trailer) or not.
    final = (
        b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n"
    )
    wire = SIGNED[: SIGNED.index(final) + len(final)] + b"x-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    assert decode_error(signed_decoder(), wire).code == "MalformedTrailerError"
    announced = AwsChunkedDecoder(
        decoded_length=66560,
        signing=ChunkSigning(KEY, DATE, SCOPE, SEED),
        trailer_names=("x-amz-checksum-crc32",),
        trailer_signed=False,
    )
    assert decode_error(announced, wire).code == "MalformedTrailerError"
    for step in (1, 7, 4096):
        assert decode_error(signed_decoder(), wire, step).code == "MalformedTrailerError"


def test_a_signed_trailer_block_without_its_signature_is_refused_however_it_ends():
    unsigned = SIGNED_TRAILER.split(b"x-amz-trailer-signature")[0]
    for wire, code in ((unsigned + b"\r\n", "MalformedTrailerError"), (unsigned, "IncompleteBody")):
        for step in (None, 1, 13):
            assert decode_error(trailer_decoder(), wire, step).code == code


def test_chunk_data_must_end_with_crlf():
    wire = b"a\r\nhello world\r\n0\r\n\r\n"  # 10 declared, 11 sent
    assert (
        decode_error(unsigned_decoder(decoded_length=None, names=()), wire).code == "InvalidRequest"
    )


def test_overlong_lines_are_rejected():
    decoder = AwsChunkedDecoder(
        decoded_length=None, signing=None, trailer_names=(), trailer_signed=False, max_line=64
    )
    assert decode_error(decoder, b"0" * 100, step=1).code == "IncompleteBody"
    long_trailer = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:" + b"A" * 5000 + b"\r\n\r\n"
    assert decode_error(unsigned_decoder(), long_trailer).code == "MalformedTrailerError"


def test_unannounced_trailer_is_rejected():
    wire = b"b\r\nhello world\r\n0\r\nx-amz-checksum-sha256:abc\r\n\r\n"
    assert decode_error(unsigned_decoder(), wire).code == "MalformedTrailerError"
    assert decode_error(unsigned_decoder(names=()), wire).code == "MalformedTrailerError"


def test_announced_trailer_missing_is_rejected():
    wire = b"b\r\nhello world\r\n0\r\n\r\n"
    assert decode_error(unsigned_decoder(), wire).code == "MalformedTrailerError"


def test_duplicate_trailer_is_rejected():
    wire = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:a\r\nx-amz-checksum-crc32:a\r\n\r\n"
    assert decode_error(unsigned_decoder(), wire).code == "MalformedTrailerError"


def test_missing_blank_line_after_complete_trailers_is_tolerated():
    _, trailers = decode(unsigned_decoder(), BOTO3_WIRE[:-2])
    assert trailers == {"x-amz-checksum-crc32": "DUoRhQ=="}
    assert decode(trailer_decoder(), SIGNED_TRAILER[:-2])[0] == BODY
    # ... but not when no trailer was expected.
    assert decode_error(signed_decoder(), SIGNED[:-2]).code == "IncompleteBody"


def test_bad_trailer_checksum_is_caught_by_payload_checks():
    wire = BOTO3_WIRE.replace(b"DUoRhQ==", b"AAAAAA==")
    data, trailers = decode(unsigned_decoder(), wire)
    checks = PayloadChecks.from_headers({"x-amz-trailer": "x-amz-checksum-crc32"})
    checks.update(data)
    with pytest.raises(S3Error) as exc:
        checks.verify(trailers)
    assert exc.value.code == "BadDigest"


def _sign_chunks(chunks, seed="0" * 64):
    previous, out = seed, bytearray()
    for chunk in [*chunks, b""]:
        previous = chunk_signature(KEY, DATE, SCOPE, previous, hashlib.sha256(chunk).hexdigest())
        out += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + b"\r\n"
    return bytes(out)  # the last b"\r\n" is the blank line after the zero-length chunk


def test_large_body_in_64k_reads_is_linear():
    chunk = bytes(range(256)) * 4096  # 1 MiB, boto3's chunk size
    n_chunks = 64
    wire = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(n_chunks))
    wire += b"0\r\n\r\n"
    decoder = AwsChunkedDecoder(
        decoded_length=len(chunk) * n_chunks, signing=None, trailer_names=(), trailer_signed=False
    )
    started = time.perf_counter()
    total = 0
    view = memoryview(wire)
    for i in range(0, len(wire), 65536):
        decoder.receive_data(bytes(view[i : i + 65536]))
        while (event := decoder.next_event()) is not NeedData:
            total += len(event)
    decoder.receive_data(b"")
    assert isinstance(decoder.next_event(), EndOfBody)
    assert total == len(chunk) * n_chunks
    assert time.perf_counter() - started < 2.0  # 64 MiB; quadratic copying would take far longer


def test_signed_chunks_with_odd_split_points():
    chunks = [b"x" * 8192, b"y" * 9000, b"z" * 3]
    wire = _sign_chunks(chunks)
    for step in (1, 3, 8191, 8200, 65536):
        decoder = AwsChunkedDecoder(
            decoded_length=17195,
            signing=ChunkSigning(KEY, DATE, SCOPE, "0" * 64),
            trailer_names=(),
            trailer_signed=False,
        )
        assert decode(decoder, wire, step)[0] == b"".join(chunks)


def test_empty_signed_body():
    previous = chunk_signature(KEY, DATE, SCOPE, "0" * 64, EMPTY_SHA256)
    wire = f"0;chunk-signature={previous}\r\n\r\n".encode()
    decoder = AwsChunkedDecoder(
        decoded_length=0,
        signing=ChunkSigning(KEY, DATE, SCOPE, "0" * 64),
        trailer_names=(),
        trailer_signed=False,
    )
    assert decode(decoder, wire) == (b"", {})
