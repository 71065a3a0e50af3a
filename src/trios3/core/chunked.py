"""Incremental aws-chunked decoder, in the shape of h11: feed bytes, pull events.

Handles the three framings S3 clients send with ``Content-Encoding: aws-chunked``::

    STREAMING-AWS4-HMAC-SHA256-PAYLOAD          signed chunks, no trailer
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER  signed chunks, signed trailer block
    STREAMING-UNSIGNED-PAYLOAD-TRAILER          plain chunks, unsigned trailer block

Wire format: ``hex-size[;chunk-signature=sig]\\r\\n data \\r\\n`` repeated, then
``0[;chunk-signature=sig]\\r\\n``, then optional ``name:value\\r\\n`` trailer lines (and, when
signed, ``x-amz-trailer-signature:sig\\r\\n``), then ``\\r\\n``.

Memory is bounded: chunk data is released as it arrives, never buffered as a whole chunk. The
price is that a chunk's signature is checked only when the chunk ends, so bytes of a forged chunk
have already been handed out when :class:`S3Error` ``SignatureDoesNotMatch`` is raised. The
consumer must therefore not commit anything (the app holds back the final encrypted segment and
never completes the upload) until :class:`EndOfBody` arrives.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from trios3.core.errors import S3Error
from trios3.core.numbers import parse_hex
from trios3.core.sigv4 import SigningScope, chunk_signature, trailer_signature

_SIGNATURE_EXT = b";chunk-signature="
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
# Compact the buffer only once this much has been consumed: keeps deletes amortised O(1).
_COMPACT_AT = 64 * 1024

_SIZE_LINE, _DATA, _DATA_END, _TRAILER, _FINISHED, _DONE = range(6)


class NeedData:
    """Returned by :meth:`AwsChunkedDecoder.next_event` when more input is needed."""


@dataclass(frozen=True)
class EndOfBody:
    """The body ended well-formed and fully verified; ``trailers`` has lower-case names."""

    trailers: dict[str, str]


@dataclass(frozen=True)
class ChunkSigning:
    """What verifying chunk signatures needs: the request's signing key, date, scope and seed."""

    signing_key: bytes
    amz_date: str
    scope: SigningScope
    seed_signature: str


class AwsChunkedDecoder:
    """Decode one aws-chunked body; pure state machine, no I/O.

    Feed input with :meth:`receive_data` (``b""`` once the input has ended) and call
    :meth:`next_event` until it returns :class:`NeedData`. Events are ``bytes`` (decoded data,
    in order), and finally one :class:`EndOfBody`. :class:`EndOfBody` is only returned after the
    input has ended, so bytes after the terminating ``\\r\\n`` are rejected rather than ignored.
    Errors raise :class:`S3Error` and are sticky: later calls raise the same error.
    """

    def __init__(
        self,
        *,
        decoded_length: int | None,
        signing: ChunkSigning | None,
        trailer_names: Sequence[str],
        trailer_signed: bool,
        max_line: int = 4096,
    ) -> None:
        if trailer_signed and signing is None:
            raise ValueError("a signed trailer needs signing")
        self._decoded_length = decoded_length
        self._signing = signing
        self._previous_signature = signing.seed_signature if signing else ""
        self._trailer_names = tuple(name.strip().lower() for name in trailer_names)
        self._trailer_signed = trailer_signed
        # Unsigned trailers only after unsigned chunks.
        self._trailers_allowed = signing is None or trailer_signed
        self._max_line = max_line
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0  # where the search for the next CRLF resumes
        self._eof = False
        self._state = _SIZE_LINE
        self._remaining = 0  # bytes left in the current chunk
        self._decoded = 0
        self._chunk_hash: hashlib._Hash | None = None
        self._chunk_claimed = b""
        self._trailers: dict[str, str] = {}
        self._trailer_claimed: str | None = None
        self._error: S3Error | None = None
        self._end: EndOfBody | None = None

    def receive_data(self, data: bytes) -> None:
        """Add input; ``b""`` means the input ended."""
        if self._eof:
            if data:
                raise RuntimeError("receive_data after the input ended")
            return
        if not data:
            self._eof = True
            return
        if self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def next_event(self) -> bytes | type[NeedData] | EndOfBody:
        """Return decoded bytes, NeedData, or EndOfBody; raise S3Error on a bad body."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except S3Error as exc:
            self._error = exc
            raise

    # -- internals ------------------------------------------------------------------------------

    def _next_event(self) -> bytes | type[NeedData] | EndOfBody:
        while True:
            state = self._state
            if state == _DATA:
                return self._data()
            if state == _SIZE_LINE:
                line = self._line("IncompleteBody")
                if line is None:
                    return self._need_data()
                self._size_line(line)
            elif state == _DATA_END:
                if len(self._buf) - self._pos < 2:
                    return self._need_data()
                if self._buf[self._pos : self._pos + 2] != b"\r\n":
                    raise S3Error("InvalidRequest", "Chunk data is not followed by CRLF.")
                self._consume(2)
                self._state = _SIZE_LINE
            elif state == _TRAILER:
                line = self._line("MalformedTrailerError")
                if line is None:
                    if self._eof and self._pos == len(self._buf) and self._trailer_complete():
                        # Input ended right after the last trailer line: the trailers are whole
                        # and verified, only the closing blank line is missing. Accept it.
                        self._finish_trailers()
                        continue
                    return self._need_data()
                if line:
                    self._trailer_line(line)
                else:
                    self._finish_trailers()
            elif state == _FINISHED:
                if self._pos != len(self._buf):
                    raise S3Error(
                        "InvalidRequest", "Unexpected data after the end of the aws-chunked body."
                    )
                if not self._eof:
                    return NeedData
                self._state = _DONE
                self._end = EndOfBody(dict(self._trailers))
            else:
                assert self._end is not None
                return self._end

    def _need_data(self) -> type[NeedData]:
        if self._eof:
            raise S3Error("IncompleteBody", "The aws-chunked body ended early.")
        return NeedData

    def _consume(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._scan = self._pos

    def _line(self, code: str) -> bytes | None:
        """The next CRLF-terminated line without its CRLF, or None if it has not all arrived."""
        buf = self._buf
        limit = self._pos + self._max_line + 2
        end = buf.find(b"\r\n", max(self._scan, self._pos), limit)
        if end < 0:
            if len(buf) >= limit:
                raise S3Error(
                    code, f"A line of the aws-chunked body exceeds {self._max_line} bytes."
                )
            self._scan = max(self._pos, len(buf) - 1)
            return None
        line = bytes(buf[self._pos : end])
        self._consume(end + 2 - self._pos)
        return line

    def _size_line(self, line: bytes) -> None:
        size_part = line.partition(b";")[0]
        # Saturated past 16 digits: more than any x-amz-decoded-content-length.
        size = parse_hex(size_part)
        if size is None:
            raise S3Error("InvalidRequest", "Invalid aws-chunked chunk size.")
        if self._signing is not None:
            claimed = line[len(size_part) + len(_SIGNATURE_EXT) :]
            if not line[len(size_part) :].startswith(_SIGNATURE_EXT) or len(claimed) != 64:
                raise S3Error("InvalidRequest", "Missing or malformed chunk-signature.")
            self._chunk_claimed = claimed
            self._chunk_hash = hashlib.sha256()
        if self._decoded_length is not None and self._decoded + size > self._decoded_length:
            raise S3Error(
                "IncompleteBody",
                "The aws-chunked body is longer than x-amz-decoded-content-length.",
            )
        if size:
            self._remaining = size
            self._state = _DATA
            return
        self._verify_chunk()
        if self._decoded_length is not None and self._decoded != self._decoded_length:
            raise S3Error(
                "IncompleteBody",
                "The aws-chunked body is shorter than x-amz-decoded-content-length.",
            )
        self._state = _TRAILER

    def _data(self) -> bytes | type[NeedData]:
        available = len(self._buf) - self._pos
        if not available:
            return self._need_data()
        n = min(available, self._remaining)
        data = bytes(memoryview(self._buf)[self._pos : self._pos + n])
        self._consume(n)
        self._remaining -= n
        self._decoded += n
        if self._chunk_hash is not None:
            self._chunk_hash.update(data)
        if not self._remaining:
            self._verify_chunk()
            self._state = _DATA_END
        return data

    def _verify_chunk(self) -> None:
        signing = self._signing
        if signing is None:
            return
        assert self._chunk_hash is not None
        expected = chunk_signature(
            signing.signing_key,
            signing.amz_date,
            signing.scope,
            self._previous_signature,
            self._chunk_hash.hexdigest(),
        )
        if not hmac.compare_digest(expected.encode(), self._chunk_claimed):
            raise S3Error("SignatureDoesNotMatch", "The chunk signature does not match.")
        self._previous_signature = expected
        self._chunk_hash = None

    def _trailer_line(self, line: bytes) -> None:
        if not self._trailers_allowed:
            raise S3Error(
                "MalformedTrailerError",
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD carries no trailers; signed trailers need "
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER.",
            )
        if self._trailer_claimed is not None:
            raise S3Error("MalformedTrailerError", "Data after x-amz-trailer-signature.")
        name_b, sep, value_b = line.partition(b":")
        if not sep:
            raise S3Error("MalformedTrailerError", "A trailer line has no ':'.")
        name = name_b.decode("latin-1").strip().lower()
        value = value_b.decode("latin-1").strip()
        if name == _TRAILER_SIGNATURE and self._trailer_signed:
            self._trailer_claimed = value
            return
        if name not in self._trailer_names:
            raise S3Error("MalformedTrailerError", f"The trailer {name!r} was not announced.")
        if name in self._trailers:
            raise S3Error("MalformedTrailerError", f"The trailer {name!r} was sent twice.")
        self._trailers[name] = value

    def _trailer_complete(self) -> bool:
        if not self._trailer_names or len(self._trailers) != len(self._trailer_names):
            return False
        return not self._trailer_signed or self._trailer_claimed is not None

    def _finish_trailers(self) -> None:
        missing = [name for name in self._trailer_names if name not in self._trailers]
        if missing:
            raise S3Error("MalformedTrailerError", f"Missing trailer {', '.join(missing)}.")
        if self._trailer_signed:
            assert self._signing is not None
            if self._trailer_claimed is None:
                raise S3Error("MalformedTrailerError", "Missing x-amz-trailer-signature.")
            canonical = "".join(
                f"{name}:{self._trailers[name]}\n" for name in sorted(self._trailers)
            )
            expected = trailer_signature(
                self._signing.signing_key,
                self._signing.amz_date,
                self._signing.scope,
                self._previous_signature,
                hashlib.sha256(canonical.encode("latin-1")).hexdigest(),
            )
            if not hmac.compare_digest(expected.encode(), self._trailer_claimed.encode("latin-1")):
                raise S3Error("SignatureDoesNotMatch", "The trailer signature does not match.")
        self._state = _FINISHED
