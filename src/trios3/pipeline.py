"""Overlap the two ends of a stream: produce the next pieces while the last one is sent.

Without it a stream alternates between reading (backend or client) and writing (client or
backend), and each side idles while the other works. A bounded channel of ``depth`` pieces
between a producer task and the consumer keeps both busy; the memory it adds is exactly
``depth`` pieces, which the stream's budget window counts. The producer lives in a nursery
owned by the ``async with``: leaving it, by completion, error or cancellation, ends the
producer and drops whatever it had queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class _Failure:
    error: Exception


@asynccontextmanager
async def prefetched(
    source: AsyncIterator[bytes], depth: int
) -> AsyncIterator[AsyncIterator[bytes]]:
    """``source`` driven by a task of its own, at most ``depth`` pieces ahead of the reader.

    An exception raised by ``source`` reaches the reader as itself, in order, after the
    pieces produced before it (not wrapped in an exception group).
    """
    send, receive = trio.open_memory_channel[bytes | _Failure](depth)

    async def produce() -> None:
        # Closing the channel is synchronous (no checkpoint to lose an error to a cancel);
        # closing the source runs its clean-up now, not whenever it is collected.
        async with aclosing(source):
            with send:
                try:
                    async for piece in source:
                        await send.send(piece)
                except Exception as exc:
                    await send.send(_Failure(exc))

    async def consume() -> AsyncIterator[bytes]:
        async for item in receive:
            if isinstance(item, _Failure):
                raise item.error
            yield item

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            with receive:
                try:
                    yield consume()
                finally:
                    # Cancel before the channel closes, so the producer ends by cancellation
                    # and never sees a closed channel as an error of its own.
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The producer never raises (it hands its error over), so a group here holds the
        # reader's own error: give it back as itself, as if there were no task in between.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
