"""A backend upload the backend verifies: aws-chunked, with a CRC32C of the bytes in a trailer.

The proxy streams ciphertext to the backend without knowing its digest in advance, so a plain
``UNSIGNED-PAYLOAD`` PUT lets a byte flipped on the way (or a backend that answers 200 without
storing what it got) go unnoticed until someone reads the object back: for a backup, at
restore time. Framed as ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` with an
``x-amz-checksum-crc32c`` trailer, the backend checks what it received before it stores it
(AWS S3, MinIO, Ceph and SeaweedFS do) and refuses it otherwise, so the proxy can tell its
client the upload failed. CRC32C costs about 0.1 s per GiB here.

The framing re-chunks whatever pieces it is given into chunks of one fixed size, so the
encoded length (the request's Content-Length, which S3 requires up front) is known from the
body's length alone.
"""

from __future__ import annotations

import base64

from awscrt.checksums import crc32c

from trios3.core.sigv4 import STREAMING_UNSIGNED_PAYLOAD_TRAILER

CHUNK_SIZE = 1024 * 1024
TRAILER = "x-amz-checksum-crc32c"
_TRAILER_LINE = len(TRAILER) + 1 + 8 + 2  # name, colon, base64 of four bytes, CRLF
# The backend's answers to a body whose trailer does not match what it received.
MISMATCH_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"})


def encoded_length(length: int, chunk_size: int = CHUNK_SIZE) -> int:
    """The bytes on the wire for a body of ``length`` bytes."""
    full, last = divmod(length, chunk_size)
    size = full * (len(f"{chunk_size:x}") + 2 + chunk_size + 2)
    if last:
        size += len(f"{last:x}") + 2 + last + 2
    return size + len(b"0\r\n") + _TRAILER_LINE + 2


class ChecksummedBody:
    """Frames a body of ``length`` bytes, fed in pieces of any size, and checksums it."""

    def __init__(self, length: int, chunk_size: int = CHUNK_SIZE) -> None:
        self.length = length
        self.content_length = encoded_length(length, chunk_size)
        self._chunk_size = chunk_size
        self._left_in_chunk = 0
        self._left = length
        self._crc = 0

    def headers(self) -> list[tuple[str, str]]:
        """The request headers that describe the framing."""
        return [
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", str(self.length)),
            ("x-amz-trailer", TRAILER),
        ]

    payload_hash = STREAMING_UNSIGNED_PAYLOAD_TRAILER  # what the request is signed with

    def frame(self, piece: bytes | bytearray | memoryview) -> bytes:
        """``piece`` with the chunk headers and ends that fall within it."""
        if len(piece) > self._left:
            raise ValueError("more bytes than the body's declared length")
        self._crc = crc32c(piece, self._crc)
        self._left -= len(piece)
        out: list[bytes | memoryview] = []
        view = memoryview(piece)
        while view.nbytes:
            if not self._left_in_chunk:
                size = min(self._chunk_size, view.nbytes + self._left)
                out.append(f"{size:x}\r\n".encode("ascii"))
                self._left_in_chunk = size
            take = min(self._left_in_chunk, view.nbytes)
            out.append(view[:take])
            view = view[take:]
            self._left_in_chunk -= take
            if not self._left_in_chunk:
                out.append(b"\r\n")
        return b"".join(out)

    def trailer(self) -> bytes:
        """The last chunk and the checksum of everything framed."""
        if self._left or self._left_in_chunk:
            raise ValueError("the body ended before its declared length")
        value = base64.b64encode(self._crc.to_bytes(4, "big")).decode("ascii")
        return f"0\r\n{TRAILER}:{value}\r\n\r\n".encode("ascii")
