"""The framing of a verified backend upload (trios3.core.upload_checksum), on plain bytes:
its length is known in advance, it decodes to the body, and its trailer is the CRC32C."""

from __future__ import annotations

import base64
import random

import pytest
from awscrt.checksums import crc32c

from trios3.core.chunked import AwsChunkedDecoder, EndOfBody, NeedData
from trios3.core.upload_checksum import (
    TRAILER,
    ChecksummedBody,
    encoded_length,
)


def frame(data: bytes, pieces: list[int], chunk_size: int) -> bytes:
    body = ChecksummedBody(len(data), chunk_size)
    out, at = [], 0
    for size in pieces:
        out.append(body.frame(data[at : at + size]))
        at += size
    out.append(body.frame(data[at:]))
    out.append(body.trailer())
    wire = b"".join(out)
    assert len(wire) == body.content_length == encoded_length(len(data), chunk_size)
    return wire


def decode(wire: bytes, length: int) -> tuple[bytes, dict]:
    """What S3 reads of it: the proxy's own aws-chunked decoder, as a backend would decode."""
    decoder = AwsChunkedDecoder(
        decoded_length=length, signing=None, trailer_names=[TRAILER], trailer_signed=False
    )
    decoder.receive_data(wire)
    decoder.receive_data(b"")
    data = b""
    while True:
        event = decoder.next_event()
        if isinstance(event, EndOfBody):
            return data, dict(event.trailers)
        assert event is not NeedData
        data += event


@pytest.mark.parametrize("length", [0, 1, 100, 4096, 65536, 65537, 300_001])
@pytest.mark.parametrize("chunk_size", [8192, 65536])
def test_a_framed_body_decodes_to_itself_with_its_crc32c(length, chunk_size):
    rng = random.Random(length * 7 + chunk_size)
    data = rng.randbytes(length)
    cuts = sorted(rng.randrange(length + 1) for _ in range(rng.randrange(6)))
    pieces = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    wire = frame(data, pieces, chunk_size)
    decoded, trailers = decode(wire, length)
    assert decoded == data
    expected = base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()
    assert trailers == {TRAILER: expected}


def test_chunks_are_of_the_fixed_size_whatever_the_pieces():
    data = bytes(range(256)) * 100  # 25 600 bytes
    wire = frame(data, [1, 5000, 3, 12_000], 8192)
    sizes = []
    rest = wire
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if not size:
            break
        sizes.append(size)
        rest = rest[size + 2 :]
    assert sizes == [8192, 8192, 8192, 1024]


def test_the_headers_describe_the_framing():
    body = ChecksummedBody(1000)
    assert dict(body.headers()) == {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "1000",
        "x-amz-trailer": "x-amz-checksum-crc32c",
    }
    assert body.payload_hash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


def test_a_body_longer_or_shorter_than_declared_is_refused():
    body = ChecksummedBody(10)
    with pytest.raises(ValueError):
        body.frame(b"x" * 11)
    body.frame(b"x" * 9)
    with pytest.raises(ValueError):
        body.trailer()
