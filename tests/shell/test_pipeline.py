"""The prefetching pipeline: bounded look-ahead, errors in order, nothing left behind."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trios3.pipeline import prefetched


async def endless(finished: trio.Event):
    """Pieces for ever; sets ``finished`` when it is closed."""
    try:
        while True:
            yield b"x"
    finally:
        finished.set()


async def test_pieces_arrive_in_order_and_the_producer_stays_depth_ahead():
    produced = []

    async def source():
        for i in range(10):
            produced.append(i)
            yield bytes([i])

    async with prefetched(source(), 2) as pieces:
        first = await anext(pieces)
        await trio.testing.wait_all_tasks_blocked()
        # One handed over, two queued, one more produced and waiting for room.
        assert first == b"\x00"
        assert len(produced) <= 1 + 2 + 1
        rest = [piece async for piece in pieces]
    assert [first, *rest] == [bytes([i]) for i in range(10)]


async def test_a_producer_error_reaches_the_reader_as_itself_after_earlier_pieces():
    async def source():
        yield b"a"
        raise ValueError("boom")

    received = []
    with pytest.raises(ValueError, match="boom"):
        async with prefetched(source(), 2) as pieces:
            async for piece in pieces:
                received.append(piece)
    assert received == [b"a"]


async def test_a_reader_error_is_raised_as_itself_and_stops_the_producer():
    finished = trio.Event()
    source = endless(finished)

    with pytest.raises(KeyError):
        async with prefetched(source, 1) as pieces:
            await anext(pieces)
            raise KeyError("reader")
    assert finished.is_set()


async def test_cancelling_the_reader_ends_the_producer():
    finished = trio.Event()
    source = endless(finished)

    with trio.CancelScope() as scope:
        async with prefetched(source, 1) as pieces:
            await anext(pieces)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert finished.is_set()
