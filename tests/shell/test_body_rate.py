"""A request body must keep a minimum average rate (trios3.body.ClientChannel): a client that
trickles a byte at a time restarts any pause timer, and would otherwise hold its lease and its
request slot for as long as it likes. On the virtual clock: no real waiting."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trios3.body import ClientChannel
from trios3.core.errors import S3Error


async def trickle(channel_send, pieces: int, interval: float) -> None:
    for _ in range(pieces):
        await trio.sleep(interval)
        await channel_send({"type": "http.request", "body": b"x", "more_body": True})
    await channel_send({"type": "http.request", "body": b"", "more_body": False})


async def read_body(*, pieces: int, interval: float, body_timeout=10.0, min_rate=4.0):
    """(bytes read, seconds it took) of a body trickled ``pieces`` bytes, one per
    ``interval``; raises what the channel raises."""
    send, receive = trio.open_memory_channel(0)
    started = trio.current_time()
    received = 0
    error: S3Error | None = None
    async with trio.open_nursery() as nursery:
        channel = ClientChannel(
            receive.receive, nursery.cancel_scope, body_timeout, min_rate=min_rate
        )
        nursery.start_soon(channel.run)
        nursery.start_soon(trickle, send.send, pieces, interval)
        try:
            async for chunk in channel.chunks():
                received += len(chunk)
        except S3Error as exc:
            error = exc  # raised as itself, not in the nursery's group
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return received, trio.current_time() - started


async def test_a_body_that_trickles_below_the_minimum_rate_times_out(autojump_clock):
    """A byte a second against 4 bytes a second: the grace (body_timeout) passes, then the
    average falls short at once."""
    with pytest.raises(S3Error) as err:
        await read_body(pieces=1000, interval=1.0)
    assert err.value.code == "RequestTimeout"
    assert 10 <= trio.current_time() <= 14


async def test_a_slow_body_at_the_minimum_rate_is_read_whole(autojump_clock):
    received, seconds = await read_body(pieces=200, interval=0.2)  # 5 bytes a second
    assert received == 200
    assert seconds == pytest.approx(40, abs=1)


async def test_a_small_body_finishes_within_the_grace_whatever_its_pace(autojump_clock):
    received, _ = await read_body(pieces=9, interval=1.0)
    assert received == 9


async def test_a_pause_longer_than_the_body_timeout_times_out(autojump_clock):
    with pytest.raises(S3Error) as err:
        await read_body(pieces=3, interval=11.0, min_rate=0.0)
    assert err.value.code == "RequestTimeout"
