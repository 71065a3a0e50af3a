"""Streaming bodies through the proxy: the budget a stream leases, decryption from a backend
response, sending to the client, and the sealing pipeline that encrypts into a backend PUT.

Each operation that holds body bytes takes its budget lease (:func:`lease_bytes`) before
anything is sent, and holds it until its last byte is gone. Both directions run through a
pipeline (trios3.pipeline): the next pieces are produced while the last one is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Protocol

from trios3.backend import SMALL_BODY, Response, backend_error, read_limited
from trios3.core import format as fmt
from trios3.exchange import Exchange
from trios3.pipeline import prefetched

PIPELINE_DEPTH = 2  # pieces produced ahead of the one being sent (see trios3.pipeline)
KiB = 1024
# The units a stream moves its bytes in (a network read, a piece decrypted or sealed, a send),
# largest first: the budget picks one by how much of it is free (MemoryBudget.lease_stream).
# Per unit, not per segment, is where a stream's CPU goes (system calls, task switches,
# HTTP framing); AES-GCM itself is a small share at any of these sizes.
UNITS = (1024 * KiB, 512 * KiB, 256 * KiB, 128 * KiB)
SMALLEST_UNIT = 4 * KiB


def units_for(size: int | None) -> tuple[int, ...]:
    """The units worth leasing for a body of ``size`` bytes (None: not known yet): none larger
    than the body needs, so a small object leases a small window."""
    if size is None or size >= UNITS[0]:
        return UNITS
    fitting = tuple(u for u in UNITS if u <= size)
    return fitting or (max(SMALLEST_UNIT, -(-size // SMALLEST_UNIT) * SMALLEST_UNIT),)


def _opener(unit: int, segment_size: int) -> int:
    # What an opener or a sealer holds: a part segment left over, and a unit fed to it.
    return unit + min(segment_size, unit) + fmt.TAG_SIZE


def read_cost(segment_size: int) -> Callable[[int], int]:
    """Budget bytes a decrypting stream (a GET) holds at most with a given unit: the
    backend read, the opener's buffer, the pieces queued in its pipeline, and the piece
    being sent to the client (with the copy HTTP framing makes of it)."""
    return lambda unit: unit + _opener(unit, segment_size) + (PIPELINE_DEPTH + 2) * unit


def write_cost(segment_size: int) -> Callable[[int], int]:
    """Budget bytes an encrypting stream (a PUT, an UploadPart) holds at most with a given
    unit: the client's body as hypercorn reads, parses and queues it (four units), the
    sealer's buffer, the sealed pieces queued, and the one being sent to the backend."""
    return lambda unit: 4 * unit + _opener(unit, segment_size) + (PIPELINE_DEPTH + 1) * unit


def copy_cost(segment_size: int) -> Callable[[int], int]:
    """A stream that decrypts a source and seals it again (UploadPartCopy): both sides."""
    return lambda unit: unit + 2 * _opener(unit, segment_size) + (2 * PIPELINE_DEPTH + 1) * unit


class Opener(Protocol):
    """Stored bytes in, plaintext out (trios3.core.format.SpanOpener,
    trios3.core.multipart.MultipartOpener)."""

    def feed(self, data: bytes | memoryview) -> list[bytes]: ...
    def finish(self) -> list[bytes]: ...


def _joined(pieces: list[bytes]) -> bytes:
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def opened(stored: AsyncIterable[bytes], opener: Opener) -> AsyncIterator[bytes]:
    """The plaintext ``opener`` makes of ``stored``, as it arrives: one piece for each piece
    of stored bytes (the segments it completes, joined), so a stream moves in the units it
    reads in, not in segments."""
    async for chunk in stored:
        pieces = opener.feed(chunk)
        if pieces:
            yield _joined(pieces)
    pieces = opener.finish()
    if pieces:
        yield _joined(pieces)


async def send_stream(ex: Exchange, status: int, headers, pieces: AsyncIterator[bytes]) -> None:
    """Send a streamed body. The first piece is decrypted before the status line, so an object
    whose first segment fails authentication gets an error status; a later failure can only
    cut the body short (the app logs it and drops the connection)."""
    first = await anext(pieces, b"")
    await ex.respond.start(status, headers)
    if first:
        await ex.respond.body(first, more=True)
    async for piece in pieces:
        await ex.respond.body(piece, more=True)
    await ex.respond.body(b"", more=False)


# Bodies smaller than this are a piece or two: overlapping their two ends would only add a
# task and a channel to the request (what a small request's CPU goes to).
OVERLAP_FROM = 256 * KiB


@asynccontextmanager
async def overlapped(source: AsyncIterator[bytes], size: int):
    """``source`` produced ahead of its consumer (trios3.pipeline) when it is large enough
    to gain from it, as it is otherwise (closed on leaving, either way)."""
    if size < OVERLAP_FROM:
        async with aclosing(source):
            yield source
        return
    async with prefetched(source, PIPELINE_DEPTH) as pieces:
        yield pieces


async def send_plaintext(
    ex: Exchange, status: int, headers, plaintext: AsyncIterator[bytes], size: int
) -> None:
    """Send ``plaintext`` (``size`` bytes) as the body, produced ahead of the client."""
    async with overlapped(plaintext, size) as pieces:
        await send_stream(ex, status, headers, pieces)


class Sealer(Protocol):
    """Plaintext in, sealed segments out (trios3.core.format.SegmentSealer,
    trios3.core.multipart.PartSealer)."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]: ...
    def finish(self) -> bytes: ...


async def send_sealed(
    ex: Exchange,
    sealer: Sealer,
    plaintext: AsyncIterator[bytes],
    *,
    content_length: int,
    prefix: bytes = b"",
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    verified: bool = True,
) -> tuple[Response, bytes]:
    """Encrypt ``plaintext`` with ``sealer`` while sending ``prefix`` and the sealed pieces
    in a backend PUT at the exchange's key; the response and its (small) body.

    The caller holds the budget lease. ``plaintext`` must raise if anything about it turns out
    wrong; the final segment is sent only after it has ended cleanly, so a failed upload never
    becomes an object or a part at the backend. ``verified``: the backend checks a checksum of
    what it receives (trios3.backend).
    """

    async def ciphertext() -> AsyncIterator[bytes]:
        # The segments one piece of plaintext completes go out as one piece (one send).
        async for piece in plaintext:
            sealed = sealer.feed(piece)
            if sealed:
                yield _joined(sealed)
        yield sealer.finish()

    async with overlapped(ciphertext(), content_length) as sealed:
        # The backend request starts only with the first sealed segment in hand: a body that
        # fails its checks before then (every body of one segment) never reaches the
        # backend, where a dropped upload could still leave an empty object behind.
        first = await anext(sealed)

        async def body() -> AsyncIterator[bytes]:
            if prefix:
                yield prefix
            yield first
            async for piece in sealed:
                yield piece

        async with ex.services.backend.stream(
            "PUT",
            ex.bucket,
            ex.key,
            query=query or (),
            headers=headers or (),
            body=body(),
            content_length=content_length,
            verified=verified,
        ) as response:
            data = await read_limited(response, SMALL_BODY)
    return response, data


async def store_encrypted(
    ex: Exchange,
    headers: list[tuple[str, str]],
    length: int,
    plaintext: AsyncIterator[bytes],
    *,
    content_md5: bytes | None = None,
) -> Response:
    """Encrypt ``plaintext`` (``length`` bytes) into a new object at the exchange's key;
    ``content_md5``, when given, must be the plaintext's and is sealed with it."""
    data_key, envelope = ex.services.keyring.seal_new(ex.bucket, ex.key, content_md5=content_md5)
    response, data = await send_sealed(
        ex,
        fmt.SegmentSealer(data_key, envelope.segment_size),
        plaintext,
        content_length=fmt.stored_size(length, envelope.segment_size),
        headers=headers + list(envelope.to_metadata().items()),
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    return response
