"""The backend client's connections (trios3.connections, trios3.tls) over real sockets.

A scripted HTTP/1.1 server runs in the test's own trio run, on 127.0.0.1 port 0 (over TLS
with a self-signed certificate where a test says so): each connection it accepts is handled
by a coroutine the test gives (:class:`Peer` reads requests and sends bytes as told), and it
keeps what it saw (connections, request heads, the client closing). A :class:`ConnectionPool`
is pointed at it. Because server and client share one trio run, ``wait_all_tasks_blocked``
tells when both have done all they can, and an event tells the server when the client got as
far as a test needs: nothing waits on the clock but the timeouts under test (short ones).
Every test runs under ``DEADLINE`` (``scripted_server``), so a regression fails, not hangs.

The last test drives the same client, signed, against the session's real SeaweedFS.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager, nullcontext

import pytest
import trio
import trio.testing

from harness import new_key, self_signed_cert
from trios3.backend import SMALL_BODY, backend_error, read_limited
from trios3.connections import (
    BackendUnavailable,
    ConnectionPool,
    Response,
    SendFailed,
    Timeouts,
)
from trios3.core.errors import S3Error
from trios3.core.http1 import request_head
from trios3.core.s3xml import parse_error
from trios3.tls import TLSStream

DEADLINE = 10.0  # seconds a whole test may take
TIMEOUTS = Timeouts(connect=5.0, read=5.0, write=5.0, pool=5.0)
SHORT = 0.2  # the timeout under test, where one is
KiB = 1024
MiB = 1024 * KiB
TLS_RECORD = 16 * KiB  # the most plaintext one TLS record carries


# -- the scripted server ----------------------------------------------------------------------


class Peer:
    """One connection the server accepted, seen from the server's side."""

    def __init__(self, stream: trio.abc.Stream, number: int) -> None:
        self.stream = stream
        self.number = number  # 0 for the first connection accepted
        self.heads: list[bytes] = []  # the request heads read on it
        self.received = 0  # bytes received on it
        self.ended = trio.Event()  # the client closed it (EOF or reset)
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(MiB)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""  # a reset: the client closed with our bytes unread
        if not data:
            self.ended.set()
            return False
        self.received += len(data)
        self._buffer += data
        return True

    async def read_head(self) -> bytes | None:
        """The next request head, or None if the client closed the connection instead."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if not await self._fill():
                return None
        head = bytes(self._buffer[: end + 4])
        del self._buffer[: end + 4]
        self.heads.append(head)
        return head

    async def read_body(self, head: bytes) -> bytes | None:
        """The request body ``head`` announces with its Content-Length, or None if the
        client closed the connection before its end."""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            if not await self._fill():
                return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    async def read_request(self) -> tuple[bytes, bytes] | None:
        """The next request's head and body, or None if the client closed first."""
        head = await self.read_head()
        body = None if head is None else await self.read_body(head)
        return None if body is None else (head, body)

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False if the client had closed the connection."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def wait_closed(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        while await self._fill():
            self._buffer.clear()


Handler = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.peers: list[Peer] = []
        self.port = 0
        self.listening = trio.CancelScope()
        self.pools: list[ConnectionPool] = []
        # What the handlers raised: trio's serve_listeners closes a stream with an await in
        # a `finally`, where a cancellation (the test ending) would replace the error.
        self.failures: list[Exception] = []

    @property
    def heads(self) -> list[bytes]:
        """Every request head received, on any connection."""
        return [head for peer in self.peers for head in peer.heads]

    def pool(self, **options) -> ConnectionPool:
        """A pool of connections to this server (its idle ones closed with the server)."""
        options.setdefault("ssl_context", None)
        options.setdefault("timeouts", TIMEOUTS)
        options.setdefault("max_connections", 4)
        options.setdefault("max_idle", 4)
        pool = ConnectionPool("127.0.0.1", self.port, **options)
        self.pools.append(pool)
        return pool

    async def stop_listening(self) -> None:
        """Close the listening socket: connecting is refused from now on (connections
        accepted already go on)."""
        self.listening.cancel()
        await trio.testing.wait_all_tasks_blocked()  # the listener's task closed it

    async def _serve(self, stream: trio.abc.Stream) -> None:
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        peer = Peer(stream, len(self.peers))
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except Exception as exc:
            self.failures.append(exc)
            raise

    async def _listen(self, nursery: trio.Nursery, *, task_status) -> None:
        with self.listening:
            await trio.serve_tcp(
                self._serve,
                0,
                host="127.0.0.1",
                handler_nursery=nursery,
                task_status=task_status,
            )


@asynccontextmanager
async def scripted_server(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedServer]:
    """A server on 127.0.0.1 port 0 whose every connection ``handler`` handles, for the
    ``async with`` (the test's body, which must be over within DEADLINE)."""
    server = ScriptedServer(handler, ssl_context)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server._listen, nursery)
            server.port = listeners[0].socket.getsockname()[1]
            try:
                yield server
            finally:
                for pool in server.pools:
                    pool.close_idle()
                nursery.cancel_scope.cancel()
    if server.failures:
        raise server.failures[0]


def answer(body: bytes = b"", status: bytes = b"200 OK", *headers: bytes) -> bytes:
    """A whole response framed by its Content-Length."""
    lines = [b"HTTP/1.1 " + status, b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def answering(*answers: bytes) -> Handler:
    """A connection that reads each request whole and sends it the next of ``answers``,
    then waits for the client to close."""

    async def handle(peer: Peer) -> None:
        for data in answers:
            if await peer.read_request() is None:
                return
            await peer.send(data)
        await peer.wait_closed()

    return handle


def by_connection(*handlers: Handler) -> Handler:
    """The first connection handled by the first of ``handlers``, the second by the second..."""

    async def handle(peer: Peer) -> None:
        await handlers[peer.number](peer)

    return handle


def head(method: str = "GET", target: bytes = b"/bucket/key", length: int | None = None):
    headers = [("host", "backend.test")]
    if length is not None:
        headers.append(("content-length", str(length)))
    return request_head(method, target, headers)


async def fetch(
    pool: ConnectionPool,
    method: str = "GET",
    body: bytes | None = None,
    read_size: int | None = None,
) -> tuple[Response, list[bytes]]:
    """One exchange read to its end: the response and its body's pieces."""
    length = None if body is None else len(body)
    async with pool.exchange(method, head(method, length=length), body) as response:
        pieces = [piece async for piece in response.aiter_raw(read_size)]
    return response, pieces


class Source:
    """A streamed request body: ``pieces``, then ``error`` raised if one is given. Not an
    async generator, so nothing is left to finalize when the pool stops reading it early;
    ``pulled`` counts the bytes it gave."""

    def __init__(self, pieces: Iterable[bytes], error: Exception | None = None) -> None:
        self._pieces = iter(pieces)
        self._error = error
        self.pulled = 0

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        piece = next(self._pieces, None)
        if piece is None:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        self.pulled += len(piece)
        return piece


def chunks(data: bytes, size: int = 64 * KiB) -> Source:
    return Source(data[i : i + size] for i in range(0, len(data), size))


def repeated(size: int, piece: bytes = b"x" * (64 * KiB)) -> Source:
    """``size`` bytes (a multiple of the piece's) of a body, never held whole."""
    return Source(itertools.repeat(piece, size // len(piece)))


def assert_idle(pool: ConnectionPool, connections: int) -> None:
    """No exchange in flight, and ``connections`` connections left open (idle)."""
    assert (pool.connections, pool.busy, pool.waiting) == (connections, set(), 0)


def payload(size: int) -> bytes:
    return os.urandom(size)


# -- Content-Length bodies and reads ----------------------------------------------------------


async def test_a_content_length_body_is_read_whole_and_its_connection_kept():
    body = payload(300 * KiB)
    async with scripted_server(answering(answer(body, b"200 OK", b'ETag: "x"'))) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert response.status_code == 200
        assert response.headers["etag"] == '"x"'
        assert response.headers["Content-Length"] == str(len(body))
        assert b"".join(pieces) == body
        assert response.complete and response.reusable
        assert_idle(pool, 1)


def after_the_head(body: bytes, head_seen: trio.Event, sent: trio.Event | None = None) -> Handler:
    """A connection that sends an answer's head, and its body only once the client has it
    (so none of the body comes in the read that brings the head); ``sent`` is set once the
    body is all sent."""

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await head_seen.wait()
        await peer.send(body)
        if sent is not None:
            sent.set()
        await peer.wait_closed()

    return handle


@pytest.mark.parametrize(("pool_size", "asked"), [(8 * KiB, None), (MiB, 5000), (MiB, 1)])
async def test_a_body_comes_in_reads_of_at_most_the_read_size(pool_size, asked):
    body = payload(100 * KiB if asked != 1 else 3000)
    head_seen = trio.Event()
    async with scripted_server(after_the_head(body, head_seen)) as server:
        pool = server.pool(read_size=pool_size)
        async with pool.exchange("GET", head()) as response:
            head_seen.set()
            pieces = [piece async for piece in response.aiter_raw(asked)]
        assert b"".join(pieces) == body
        assert max(map(len, pieces)) <= (asked or pool_size)
        assert_idle(pool, 1)


async def test_what_has_arrived_is_taken_in_one_read():
    # not in reads of a small fixed size: one read of up to read_size takes it all
    body = payload(48 * KiB)
    head_seen, sent = trio.Event(), trio.Event()
    async with scripted_server(after_the_head(body, head_seen, sent)) as server:
        pool = server.pool(read_size=MiB)
        async with pool.exchange("GET", head()) as response:
            head_seen.set()
            await sent.wait()
            pieces = [piece async for piece in response.aiter_raw()]
        assert pieces == [body]


async def test_a_large_body_arrives_in_large_reads():
    # the reader lets the server fill the socket's buffers before each read: a read then
    # takes what is there, up to read_size (how much is there is the kernel's business)
    body = payload(4 * MiB)
    head_seen = trio.Event()
    async with scripted_server(after_the_head(body, head_seen)) as server:
        pool = server.pool(read_size=MiB)
        pieces = []
        async with pool.exchange("GET", head()) as response:
            head_seen.set()
            await trio.testing.wait_all_tasks_blocked()
            async for piece in response.aiter_raw():
                pieces.append(piece)
                await trio.testing.wait_all_tasks_blocked()
        assert b"".join(pieces) == body
        assert max(map(len, pieces)) <= MiB
        # on average larger than trio's default read (64 KiB)
        assert len(pieces) < len(body) // (64 * KiB), [len(p) for p in pieces]


async def test_body_bytes_read_with_the_head_keep_to_the_read_size():
    body = payload(8 * KiB)
    async with scripted_server(answering(answer(body))) as server:
        pool = server.pool()
        _, pieces = await fetch(pool, read_size=1000)
        assert b"".join(pieces) == body
        assert max(map(len, pieces)) <= 1000


async def test_a_connection_carries_the_next_exchange_once_its_answer_was_read():
    async with scripted_server(answering(answer(b"one"), answer(b"two"))) as server:
        pool = server.pool()
        for expected in (b"one", b"two"):
            _, pieces = await fetch(pool)
            assert b"".join(pieces) == expected
            assert_idle(pool, 1)
        assert len(server.peers) == 1 and len(server.heads) == 2


async def test_exchanges_at_once_take_a_connection_each_and_keep_them_idle():
    release = trio.Event()

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await release.wait()
        await peer.send(answer(b"ok"))
        await peer.wait_closed()

    async with scripted_server(handle) as server:
        pool = server.pool(max_idle=2)
        results = []

        async def one():
            results.append(await fetch(pool))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert (pool.connections, len(pool.busy), len(server.peers)) == (3, 3, 3)
            release.set()
        assert [b"".join(pieces) for _, pieces in results] == [b"ok"] * 3
        assert_idle(pool, 2)  # max_idle: the third was closed


async def test_an_idle_connection_past_its_expiry_is_not_used():
    async with scripted_server(answering(answer(b"a"), answer(b"b"))) as server:
        pool = server.pool(idle_expiry=0.0)
        await fetch(pool)
        await fetch(pool)
        assert len(server.peers) == 2
        await server.peers[0].ended.wait()  # the expired one was closed
        assert_idle(pool, 1)


async def test_close_idle_closes_every_idle_connection():
    async with scripted_server(answering(answer(b"a"))) as server:
        pool = server.pool()
        await fetch(pool)
        assert_idle(pool, 1)
        pool.close_idle()
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


# -- leaving early ----------------------------------------------------------------------------


def partial_answer(declared: int, sent: bytes) -> Handler:
    """A connection that announces ``declared`` body bytes, sends ``sent``, then only waits
    for the client to close."""

    async def handle(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % declared + sent)
        await peer.wait_closed()

    return handle


class Stop(Exception):
    pass


@pytest.mark.parametrize("how", ["break", "raise", "unread"])
async def test_leaving_a_response_before_its_end_closes_the_connection(how):
    handler = by_connection(partial_answer(MiB, b"x" * 1000), answering(answer(b"fresh")))
    async with scripted_server(handler) as server:
        pool = server.pool()
        with pytest.raises(Stop) if how == "raise" else nullcontext():
            async with pool.exchange("GET", head()) as response:
                if how == "break":
                    async with aclosing(response.aiter_raw()) as pieces:
                        async for piece in pieces:
                            assert piece
                            break
                elif how == "raise":
                    raise Stop
        assert not response.complete
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()  # the server saw it closed
        _, pieces = await fetch(pool)  # and the next exchange opens a new one
        assert b"".join(pieces) == b"fresh"
        assert len(server.peers) == 2


async def test_cancelling_in_the_middle_of_a_body_closes_the_connection():
    async with scripted_server(partial_answer(MiB, b"x" * 1000)) as server:
        pool = server.pool()
        pieces = []
        with trio.CancelScope() as scope:
            async with pool.exchange("GET", head()) as response:
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    scope.cancel()  # the next read is cancelled
        assert scope.cancelled_caught
        assert b"".join(pieces) == b"x" * 1000
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


async def test_cancelling_while_waiting_for_the_answer_closes_the_connection():
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed()

    async with scripted_server(silent) as server:
        pool = server.pool()
        with trio.CancelScope() as scope:

            async def cancel_when_stuck():
                await trio.testing.wait_all_tasks_blocked()
                assert len(pool.busy) == 1
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_stuck)
                async with pool.exchange("GET", head()):
                    raise AssertionError("the server never answered")
        assert scope.cancelled_caught
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


# -- a connection the backend closed ----------------------------------------------------------


def answer_then_close_on_next(first: bytes) -> Handler:
    """A connection that answers one request, then takes the next one's head and closes
    without a word (the backend closing an idle connection as the request arrived)."""

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(first)
        await peer.read_head()

    return handle


@pytest.mark.parametrize("body", [None, b"", b"small body"])
async def test_a_closed_kept_alive_connection_is_retried_once_afresh_with_a_bytes_body(body):
    handler = by_connection(
        answer_then_close_on_next(answer(b"first")), answering(answer(b"second"))
    )
    async with scripted_server(handler) as server:
        pool = server.pool()
        await fetch(pool)
        response, pieces = await fetch(pool, "PUT", body)
        assert (response.status_code, b"".join(pieces)) == (200, b"second")
        assert len(server.peers) == 2
        assert [h.split(b" ")[0] for h in server.heads] == [b"GET", b"PUT", b"PUT"]
        assert_idle(pool, 1)


async def test_a_closed_kept_alive_connection_is_not_retried_with_a_streamed_body():
    handler = by_connection(answer_then_close_on_next(answer(b"first")), answering())
    async with scripted_server(handler) as server:
        pool = server.pool()
        await fetch(pool)
        data = b"streamed" * 10
        with pytest.raises(BackendUnavailable):
            async with pool.exchange("PUT", head("PUT", length=len(data)), chunks(data, 8), 80):
                raise AssertionError("no answer was sent")
        assert len(server.peers) == 1
        assert_idle(pool, 0)


async def test_a_retry_is_made_once_only():
    def close_on_next(peer):
        return peer.read_head()

    handler = by_connection(answer_then_close_on_next(answer(b"first")), close_on_next)
    async with scripted_server(handler) as server:
        pool = server.pool()
        await fetch(pool)
        with pytest.raises(BackendUnavailable):
            await fetch(pool)
        assert len(server.peers) == 2
        assert_idle(pool, 0)


async def test_a_connection_closed_while_idle_is_not_used_again():
    async def answer_and_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(b"first"))  # keep-alive, but the server closes anyway

    handler = by_connection(answer_and_close, answering(answer(b"second")))
    async with scripted_server(handler) as server:
        pool = server.pool()
        await fetch(pool)
        await trio.testing.wait_all_tasks_blocked()  # the server's close arrived
        assert pool.connections == 1  # idle: nothing looked at it yet
        data = b"streamed" * 10
        async with pool.exchange("PUT", head("PUT", length=80), chunks(data, 8), 80) as response:
            assert b"".join([p async for p in response.aiter_raw()]) == b"second"
        assert len(server.peers) == 2
        assert [len(peer.heads) for peer in server.peers] == [1, 1]  # never sent on the old one
        assert_idle(pool, 1)


async def test_a_retry_that_cannot_connect_leaves_the_count_of_connections_right():
    async with scripted_server(answer_then_close_on_next(answer(b"first"))) as server:
        pool = server.pool()
        await fetch(pool)
        await server.stop_listening()
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await fetch(pool)
        assert pool.connections == 0


async def test_a_reused_connection_that_falls_silent_is_not_retried():
    async def answer_then_stall(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer(b"first"))
        await stall(peer)

    async def stall(peer: Peer) -> None:
        await peer.read_head()
        await peer.wait_closed()

    async with scripted_server(by_connection(answer_then_stall, stall)) as server:
        pool = server.pool(timeouts=Timeouts(connect=5.0, read=SHORT, write=5.0, pool=5.0))
        await fetch(pool)
        start = trio.current_time()
        with pytest.raises(BackendUnavailable):
            await fetch(pool, "POST", b"<CompleteMultipartUpload/>")
        assert len(server.heads) == 2, "the POST was sent more than once"
        assert trio.current_time() - start < 2 * SHORT


async def test_a_connection_is_reused_when_the_process_has_many_files_open():
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit < 1200:
        pytest.skip("needs more than 1200 open files")
    padding = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async with scripted_server(answering(answer(b"a"), answer(b"b"))) as server:
            pool = server.pool()
            await fetch(pool)
            await fetch(pool)
            assert len(server.peers) == 1
    finally:
        for fd in padding:
            os.close(fd)


# -- request bodies ---------------------------------------------------------------------------


async def test_a_streamed_body_arrives_whole():
    data = payload(MiB + 17)
    seen = []

    async def handle(peer: Peer) -> None:
        _, body = await peer.read_request()
        seen.append(body)
        await peer.send(answer(b"stored"))
        await peer.wait_closed()

    async with scripted_server(handle) as server:
        pool = server.pool()
        async with pool.exchange(
            "PUT", head("PUT", length=len(data)), chunks(data), len(data)
        ) as r:
            assert b"".join([p async for p in r.aiter_raw()]) == b"stored"
        assert seen == [data]
        assert_idle(pool, 1)


async def test_an_early_answer_is_the_response_not_an_error():
    # S3 refuses a PUT (403) after its head and closes while the body is still on its way
    async def refuse(peer: Peer) -> None:
        await peer.read_head()
        await peer.send(answer(b"<Error>denied</Error>", b"403 Forbidden", b"Connection: close"))

    total = 64 * MiB
    body = repeated(total)
    async with scripted_server(refuse) as server:
        pool = server.pool()
        async with pool.exchange("PUT", head("PUT", length=total), body, total) as response:
            assert response.status_code == 403
            assert b"".join([p async for p in response.aiter_raw()]) == b"<Error>denied</Error>"
        assert body.pulled < total  # it was an early answer indeed
        assert server.peers[0].received < total
        assert_idle(pool, 0)


async def test_a_connection_whose_request_was_not_sent_whole_is_not_kept():
    async def refuse_and_stop_reading(peer: Peer) -> None:
        await peer.read_head()
        await peer.send(answer(b"denied", b"403 Forbidden"))
        await trio.sleep_forever()  # neither reads nor closes

    total = 64 * MiB
    async with scripted_server(refuse_and_stop_reading) as server:
        pool = server.pool(timeouts=Timeouts(connect=5.0, read=5.0, write=SHORT, pool=5.0))
        async with pool.exchange("PUT", head("PUT", length=total), repeated(total), total) as r:
            assert r.status_code == 403
            assert b"".join([p async for p in r.aiter_raw()]) == b"denied"
        assert pool.connections == 0


async def test_a_failing_body_source_fails_as_itself_and_closes_the_connection():
    failing = Source([b"some"], Stop("the client's upload broke"))
    async with scripted_server(answering(answer(b"never"))) as server:
        pool = server.pool()
        with pytest.raises(Stop, match="upload broke"):
            async with pool.exchange("PUT", head("PUT", length=100), failing, 100):
                raise AssertionError("no response was expected")
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


async def test_a_body_source_failing_with_backend_unavailable_is_not_retried():
    # a copy's source is another backend response: its failure is its own
    own = BackendUnavailable("the copy source fell silent")
    failing = Source([b"some"], own)

    async with scripted_server(answering(answer(b"one"), answer(b"never"))) as server:
        pool = server.pool()
        await fetch(pool)  # so the next exchange is on a reused connection
        with pytest.raises(BackendUnavailable) as caught:
            async with pool.exchange("PUT", head("PUT", length=100), failing, 100):
                raise AssertionError("no response was expected")
        assert caught.value is own
        assert len(server.peers) == 1
        assert_idle(pool, 0)


@pytest.mark.parametrize(
    ("pieces", "declared", "message"),
    [([b"abc", b"def"], 5, "longer"), ([b"abc"], 5, "shorter"), ([], 1, "shorter")],
)
async def test_a_streamed_body_of_another_length_than_declared_is_refused(
    pieces, declared, message
):
    async with scripted_server(answering(answer(b"never"))) as server:
        pool = server.pool()
        source = Source(pieces)
        with pytest.raises(RuntimeError, match=message):
            async with pool.exchange("PUT", head("PUT", length=declared), source, declared):
                raise AssertionError("no response was expected")
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()
        assert server.peers[0].received <= len(server.heads[0]) + declared


# -- timeouts ---------------------------------------------------------------------------------


async def test_connecting_to_a_port_nobody_listens_on_is_backend_unavailable():
    with trio.fail_after(DEADLINE), socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # held, never listening: connecting is refused
        pool = ConnectionPool(
            "127.0.0.1",
            bound.getsockname()[1],
            ssl_context=None,
            timeouts=Timeouts(connect=SHORT, read=SHORT, write=SHORT, pool=SHORT),
            max_connections=1,
            max_idle=1,
        )
        for _ in range(2):  # the slot was given back: the second fails the same way
            with pytest.raises(BackendUnavailable, match="cannot connect"):
                await fetch(pool)
        assert_idle(pool, 0)


async def test_a_backend_that_never_answers_is_backend_unavailable_after_the_read_timeout():
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed()

    async with scripted_server(silent) as server:
        pool = server.pool(timeouts=Timeouts(connect=5.0, read=SHORT, write=5.0, pool=5.0))
        start = trio.current_time()
        with pytest.raises(BackendUnavailable, match="silent"):
            await fetch(pool)
        elapsed = trio.current_time() - start
        assert SHORT <= elapsed < 5 * SHORT
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


async def test_a_backend_silent_in_the_middle_of_a_body_is_backend_unavailable():
    async with scripted_server(partial_answer(100, b"x" * 10)) as server:
        pool = server.pool(timeouts=Timeouts(connect=5.0, read=SHORT, write=5.0, pool=5.0))
        pieces = []
        with pytest.raises(BackendUnavailable, match="silent"):
            async with pool.exchange("GET", head()) as response:
                async for piece in response.aiter_raw():
                    pieces.append(piece)
        assert pieces == [b"x" * 10]
        assert_idle(pool, 0)


async def test_a_backend_that_stops_taking_the_body_is_send_failed():
    async def stop_reading(peer: Peer) -> None:
        await peer.read_head()
        await trio.sleep_forever()

    total = 64 * MiB
    async with scripted_server(stop_reading) as server:
        pool = server.pool(timeouts=Timeouts(connect=5.0, read=SHORT, write=SHORT, pool=5.0))
        with pytest.raises(SendFailed, match="stopped taking"):
            async with pool.exchange("PUT", head("PUT", length=total), repeated(total), total):
                raise AssertionError("no response was expected")
        assert_idle(pool, 0)


async def test_waiting_for_a_free_connection_times_out_and_is_counted():
    async with scripted_server(answering(answer(b"held"), answer(b"after"))) as server:
        pool = server.pool(
            max_connections=1, timeouts=Timeouts(connect=5.0, read=5.0, write=5.0, pool=SHORT)
        )
        async with pool.exchange("GET", head()) as held:
            failures = []

            async def second():
                start = trio.current_time()
                with pytest.raises(BackendUnavailable, match="came free"):
                    await fetch(pool)
                failures.append(trio.current_time() - start)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.waiting == 1
            assert len(failures) == 1 and failures[0] >= SHORT
            assert pool.waiting == 0
            assert b"".join([p async for p in held.aiter_raw()]) == b"held"
        _, pieces = await fetch(pool)  # the slot came back, and the connection with it
        assert b"".join(pieces) == b"after"
        assert len(server.peers) == 1
        assert_idle(pool, 1)


async def test_a_waiting_exchange_gets_the_connection_when_it_comes_free():
    async with scripted_server(answering(answer(b"one"), answer(b"two"))) as server:
        pool = server.pool(max_connections=1)
        got = []
        async with trio.open_nursery() as nursery, pool.exchange("GET", head()) as response:

            async def second():
                got.append(b"".join((await fetch(pool))[1]))

            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.waiting == 1
            got.append(b"".join([p async for p in response.aiter_raw()]))
        assert got == [b"one", b"two"]
        assert len(server.peers) == 1
        assert_idle(pool, 1)


async def test_cancelling_a_wait_for_a_connection_leaves_nothing_counted():
    async with scripted_server(answering(answer(b"one"))) as server:
        pool = server.pool(max_connections=1)
        async with pool.exchange("GET", head()) as response:
            with trio.move_on_after(SHORT) as scope:
                await fetch(pool)
            assert scope.cancelled_caught
            assert pool.waiting == 0
            assert b"".join([p async for p in response.aiter_raw()]) == b"one"
        assert_idle(pool, 1)


# -- how an answer is framed ------------------------------------------------------------------


def sending(*pieces: bytes, close: bool = False) -> Handler:
    """A connection that reads one request and sends ``pieces`` one by one, letting the
    client read between them; then closes (``close``) or waits for the client to."""

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        for piece in pieces:
            await peer.send(piece)
            await trio.testing.wait_all_tasks_blocked()
        if not close:
            await peer.wait_closed()

    return handle


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_chunked_answer_is_decoded_and_its_connection_kept():
    chunked = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n"
    async with scripted_server(answering(chunked, answer(b"plain"))) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == b"hello"
        assert response.complete and response.reusable
        _, pieces = await fetch(pool)
        assert b"".join(pieces) == b"plain"
        assert len(server.peers) == 1
        assert_idle(pool, 1)


async def test_a_chunked_answer_in_pieces_is_handed_over_as_it_arrives():
    handler = sending(
        CHUNKED_HEAD + b"5\r\nhel",
        b"lo\r\n",
        b"7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n",
        b"\r\n",
    )
    async with scripted_server(handler) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert pieces == [b"hel", b"lo", b", world"]
        assert response.complete and response.reusable
        assert_idle(pool, 1)


async def test_bytes_after_a_chunked_answer_make_its_connection_not_reused():
    chunked = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"
    async with scripted_server(sending(chunked)) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == b"abc"
        assert response.complete and not response.reusable
        assert_idle(pool, 0)


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ((CHUNKED_HEAD + b"zz\r\nabc\r\n",), "chunk size"),
        ((CHUNKED_HEAD, b"3\r\nabcX\r\n"), "does not end"),
        ((CHUNKED_HEAD + b"5\r\nab",), "ended early"),
    ],
)
async def test_a_broken_chunked_answer_is_backend_unavailable(pieces, message):
    async with scripted_server(sending(*pieces, close=True)) as server:
        pool = server.pool()
        with pytest.raises(BackendUnavailable, match=message):
            await fetch(pool)
        assert_idle(pool, 0)


async def test_an_answer_without_a_length_ends_when_the_backend_closes():
    body = payload(200 * KiB)
    handler = sending(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", body, close=True)
    async with scripted_server(handler) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == body
        assert response.complete and not response.reusable
        assert_idle(pool, 0)


async def test_an_answer_shorter_than_its_content_length_is_backend_unavailable():
    async with scripted_server(sending(answer(b"0123456789")[:-4], close=True)) as server:
        pool = server.pool()
        with pytest.raises(BackendUnavailable, match="ended early"):
            await fetch(pool)
        assert_idle(pool, 0)


@pytest.mark.parametrize("together", [True, False])
async def test_an_interim_100_continue_is_skipped(together):
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = answer(b"done", b"201 Created")
    pieces = (interim + final,) if together else (interim, final)
    async with scripted_server(sending(*pieces)) as server:
        pool = server.pool()
        response, body = await fetch(pool, "PUT", b"data")
        assert (response.status_code, b"".join(body)) == (201, b"done")
        assert_idle(pool, 1)


@pytest.mark.parametrize("body", [b"abc", b""])
async def test_bytes_after_a_complete_answer_make_its_connection_not_reused(body):
    handler = by_connection(
        sending(answer(body) + b"HTTP/1.1 200 OK\r\n\r\nstale"), answering(answer(b"fresh"))
    )
    async with scripted_server(handler) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == body
        assert not response.reusable
        assert_idle(pool, 0)
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == b"fresh"
        assert len(server.peers) == 2


STALE = answer(b"stale")


def answer_then_extra(head_seen: trio.Event) -> Handler:
    """A connection that answers ``hello`` with a stale answer right behind it, sent after
    the client has the head (so the client reads the body by its length and leaves the
    rest unread), then answers the next request truly."""

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        await head_seen.wait()
        await peer.send(b"hello" + STALE)
        await answering(answer(b"fresh"))(peer)

    return handle


async def check_no_stale_answer(server: ScriptedServer, pool: ConnectionPool, head_seen):
    async with pool.exchange("GET", head()) as response:
        head_seen.set()
        assert b"".join([p async for p in response.aiter_raw()]) == b"hello"
    response, pieces = await fetch(pool)
    assert b"".join(pieces) != b"stale", "the second request got the first's extra bytes"
    assert b"".join(pieces) == b"fresh"
    assert len(server.peers) == 2


async def test_bytes_after_a_complete_answer_are_found_before_the_next_exchange():
    head_seen = trio.Event()
    handler = by_connection(answer_then_extra(head_seen), answering(answer(b"fresh")))
    async with scripted_server(handler) as server:
        await check_no_stale_answer(server, server.pool(), head_seen)


@pytest.mark.parametrize(
    "status",
    [b"200 OK", b"404 Not Found"],
)
async def test_the_answer_to_a_head_has_no_body_whatever_its_content_length(status):
    handler = answering(
        b"HTTP/1.1 " + status + b"\r\nContent-Length: 12345\r\n\r\n", answer(b"next")
    )
    async with scripted_server(handler) as server:
        pool = server.pool()
        response, pieces = await fetch(pool, "HEAD")
        assert response.headers["content-length"] == "12345"
        assert pieces == [] and response.complete and response.reusable
        _, pieces = await fetch(pool)
        assert b"".join(pieces) == b"next"
        assert len(server.peers) == 1


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_204_and_304_have_no_body(status):
    handler = answering(b"HTTP/1.1 " + status + b'\r\nETag: "e"\r\n\r\n', answer(b"next"))
    async with scripted_server(handler) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert pieces == [] and response.complete and response.reusable
        _, pieces = await fetch(pool)
        assert b"".join(pieces) == b"next"
        assert len(server.peers) == 1


@pytest.mark.parametrize(
    "status_and_headers",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 5",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5",
    ],
)
async def test_an_answer_that_does_not_keep_its_connection_closes_it(status_and_headers):
    async with scripted_server(answering(status_and_headers + b"\r\n\r\nxxxxx")) as server:
        pool = server.pool()
        response, pieces = await fetch(pool)
        assert b"".join(pieces) == b"xxxxx"
        assert response.complete and not response.reusable
        assert_idle(pool, 0)
        await server.peers[0].ended.wait()


@pytest.mark.parametrize(
    ("answer_bytes", "message"),
    [
        (b"SMTP ready\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer coding"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (70 * KiB), "overlong"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "no answer"),
    ],
)
async def test_an_unreadable_answer_is_backend_unavailable_and_closes(answer_bytes, message):
    cut_short = message == "no answer"  # the server closes in the middle of the head
    async with scripted_server(sending(answer_bytes, close=cut_short)) as server:
        pool = server.pool()
        with pytest.raises(BackendUnavailable, match=message):
            await fetch(pool)
        assert_idle(pool, 0)
        if not cut_short:
            await server.peers[0].ended.wait()


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a self-signed 127.0.0.1."""
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_a_large_body_over_tls_arrives_in_reads_far_larger_than_a_record(tls_contexts):
    server_context, client_context = tls_contexts
    body = payload(4 * MiB)
    handler = answering(answer(body), answer(b"again"))
    async with scripted_server(handler, ssl_context=server_context) as server:
        pool = server.pool(ssl_context=client_context, read_size=MiB)
        _, pieces = await fetch(pool)
        assert b"".join(pieces) == body
        assert max(map(len, pieces)) <= MiB
        # Every record already received, decrypted in one read (trio's SSLStream: one
        # record, 16 KiB, a read); how much has arrived depends on the loopback's pace.
        assert max(map(len, pieces)) > 2 * TLS_RECORD, [len(p) for p in pieces]
        assert len(pieces) < len(body) // (2 * TLS_RECORD)
        assert_idle(pool, 1)
        _, pieces = await fetch(pool)  # the TLS connection is kept, too
        assert b"".join(pieces) == b"again"
        assert len(server.peers) == 1


async def test_a_tls_backend_with_an_untrusted_certificate_is_backend_unavailable(tls_contexts):
    server_context, _ = tls_contexts
    async with scripted_server(answering(answer(b"x")), ssl_context=server_context) as server:
        pool = server.pool(ssl_context=ssl.create_default_context())
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await fetch(pool)
        assert_idle(pool, 0)


async def test_bytes_after_a_complete_answer_over_tls_are_found_before_the_next_exchange(
    tls_contexts,
):
    server_context, client_context = tls_contexts
    head_seen = trio.Event()
    handler = by_connection(answer_then_extra(head_seen), answering(answer(b"fresh")))
    async with scripted_server(handler, ssl_context=server_context) as server:
        await check_no_stale_answer(server, server.pool(ssl_context=client_context), head_seen)


async def tls_client(server: ScriptedServer, client_context) -> TLSStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    stream = TLSStream(tcp, client_context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def test_a_tls_receive_decrypts_every_record_already_received(tls_contexts):
    """trio's SSLStream gives one record (16 KiB) per receive; TLSStream all it holds."""
    server_context, client_context = tls_contexts
    data = payload(200 * KiB)  # thirteen TLS records

    async def send_all_at_once(peer: Peer) -> None:
        await peer.read_head()
        await peer.send(data)
        await peer.wait_closed()

    async with scripted_server(send_all_at_once, ssl_context=server_context) as server:
        stream = await tls_client(server, client_context)
        try:
            await stream.send_all(head())
            await trio.testing.wait_all_tasks_blocked()  # sent as far as the buffers take it
            got = await stream.receive_some(MiB)
            assert len(got) > TLS_RECORD  # more than one record's worth, in one call
            rest = bytearray(got)
            while len(rest) < len(data):
                more = await stream.receive_some(50 * KiB)
                assert 0 < len(more) <= 50 * KiB
                rest += more
            assert rest == data
        finally:
            await trio.aclose_forcefully(stream)


async def test_a_tls_receive_waits_only_for_the_first_byte(tls_contexts):
    server_context, client_context = tls_contexts
    more = trio.Event()

    async def send_a_little(peer: Peer) -> None:
        await peer.read_head()
        await peer.send(b"hello")
        await more.wait()
        await peer.send(b"world")
        await peer.wait_closed()

    async with scripted_server(send_a_little, ssl_context=server_context) as server:
        stream = await tls_client(server, client_context)
        try:
            await stream.send_all(head())
            assert await stream.receive_some(MiB) == b"hello"  # no wait for more
            more.set()
            assert await stream.receive_some(MiB) == b"world"
        finally:
            await trio.aclose_forcefully(stream)


async def test_a_tls_stream_ends_at_close_notify_and_at_a_bare_eof(tls_contexts):
    """An EOF without close_notify is the end too, as HTTPS allows (and trio's
    https_compatible does)."""
    server_context, client_context = tls_contexts
    for polite in (True, False):

        async def say_and_leave(peer: Peer, polite=polite) -> None:
            await peer.read_head()
            await peer.send(b"bye")
            if polite:
                await peer.stream.aclose()
            else:
                await trio.aclose_forcefully(peer.stream.transport_stream)

        async with scripted_server(say_and_leave, ssl_context=server_context) as server:
            stream = await tls_client(server, client_context)
            try:
                await stream.send_all(head())
                got = b""
                while chunk := await stream.receive_some(MiB):
                    got += chunk
                assert got == b"bye"
                assert await stream.receive_some(MiB) == b""
            finally:
                await trio.aclose_forcefully(stream)


# -- the real backend -------------------------------------------------------------------------


@pytest.mark.integration
async def test_signed_exchanges_with_seaweedfs_share_one_connection(backend, bucket):
    data = payload(3 * MiB)
    key = new_key("connections")
    with trio.fail_after(60):
        async with backend.stream(
            "PUT", bucket, key, body=chunks(data, 256 * KiB), content_length=len(data)
        ) as response:
            assert response.status_code == 200, await read_limited(response, 64 * KiB)
            await read_limited(response, 64 * KiB)
            etag = response.headers["etag"]
        assert etag.strip('"') == hashlib.md5(data).hexdigest()  # S3's ETag
        assert (backend.pool_connections, backend.busy_connections) == (1, 0)

        async with backend.stream("GET", bucket, key) as response:
            assert response.status_code == 200
            assert b"".join([piece async for piece in response.aiter_raw()]) == data

        async with backend.stream("HEAD", bucket, key) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(len(data))
            assert [piece async for piece in response.aiter_raw()] == []

        async with backend.stream(
            "GET", bucket, key, headers=[("Range", "bytes=1000-1999")]
        ) as response:
            assert response.status_code == 206
            assert response.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
            assert b"".join([piece async for piece in response.aiter_raw()]) == data[1000:2000]

        async with backend.stream("GET", bucket, key + "-missing") as missing:
            body = await read_limited(missing, SMALL_BODY)
        assert missing.status_code == 404
        assert parse_error(body)[0] == "NoSuchKey"
        assert backend_error(missing, body).code == "NoSuchKey"

        deleted, _ = await backend.request("DELETE", bucket, key)
        assert deleted.status_code == 204
        gone, body = await backend.request("HEAD", bucket, key)
        assert gone.status_code == 404 and body == b""

        assert (backend.pool_connections, backend.busy_connections) == (1, 0)
        assert backend.waiting_requests == 0

        # a body over read_limited's limit is refused, and its connection not kept half-read
        with pytest.raises(S3Error, match="larger than expected"):
            async with backend.stream("GET", bucket, key) as response:
                await read_limited(response, 16)
        assert response.status_code == 404
        assert (backend.pool_connections, backend.busy_connections) == (0, 0)
