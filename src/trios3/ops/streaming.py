"""Streaming bodies through the proxy: the budget a stream leases, decryption from a backend
response, sending to the client, and the sealing pipeline that encrypts into a backend PUT.

Each operation that holds body bytes takes its budget lease (:func:`lease_bytes`) before
anything is sent, and holds it until its last byte is gone. Both directions run through a
pipeline (trios3.pipeline): the next pieces are produced while the last one is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

import httpx

from trios3.backend import SMALL_BODY, backend_error, read_limited
from trios3.core import format as fmt
from trios3.exchange import Exchange
from trios3.pipeline import prefetched

PIPELINE_DEPTH = 2  # pieces produced ahead of the one being sent (see trios3.pipeline)


def lease_bytes(segment_size: int) -> int:
    """Budget bytes one streaming request holds at most: the opener's or sealer's buffer
    (a segment and a network read), the pieces queued in its pipeline, the one being sent,
    and a 64 KiB network read on each side."""
    return (PIPELINE_DEPTH + 2) * segment_size + 2 * 64 * 1024


class Opener(Protocol):
    """Stored bytes in, plaintext out (trios3.core.format.SpanOpener,
    trios3.core.multipart.MultipartOpener)."""

    def feed(self, data: bytes | memoryview) -> list[bytes]: ...
    def finish(self) -> list[bytes]: ...


async def opened(stored: AsyncIterable[bytes], opener: Opener) -> AsyncIterator[bytes]:
    """The plaintext ``opener`` makes of ``stored``, as it arrives."""
    async for chunk in stored:
        for piece in opener.feed(chunk):
            yield piece
    for piece in opener.finish():
        yield piece


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


async def send_plaintext(
    ex: Exchange, status: int, headers, plaintext: AsyncIterator[bytes]
) -> None:
    """Send ``plaintext`` as the body, produced ahead of the client (:data:`PIPELINE_DEPTH`)."""
    async with prefetched(plaintext, PIPELINE_DEPTH) as pieces:
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
) -> tuple[httpx.Response, bytes]:
    """Encrypt ``plaintext`` with ``sealer`` while sending ``prefix`` and the sealed pieces
    in a backend PUT at the exchange's key; the response and its (small) body.

    The caller holds the budget lease. ``plaintext`` must raise if anything about it turns out
    wrong; the final segment is sent only after it has ended cleanly, so a failed upload never
    becomes an object or a part at the backend.
    """

    async def ciphertext() -> AsyncIterator[bytes]:
        async for piece in plaintext:
            for sealed in sealer.feed(piece):
                yield sealed
        yield sealer.finish()

    async with prefetched(ciphertext(), PIPELINE_DEPTH) as sealed:
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
) -> httpx.Response:
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
