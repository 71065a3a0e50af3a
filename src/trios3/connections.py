"""Connections to the backend: a pool of HTTP/1.1 connections on trio streams.

The proxy's backend traffic is of one kind: requests it signed itself, to one endpoint,
answers framed by Content-Length (chunked for some listings). A general client (httpx over
httpcore and h11) pays per request for what this traffic never needs and copies each body
chunk three times on its way in; here a response head is parsed once (trios3.core.http1) and
a body goes from the socket to the caller as received, in reads of up to ``read_size`` bytes
(over TLS too: trios3.tls).

The guarantees are a pool's: a connection carries one exchange at a time and goes back to
the pool only when its response was read to the end, never half-read; an exchange left early,
by an error or a cancellation, closes its connection at once (synchronously, so also from a
cancelled scope). Every wait has a timeout: connecting (with the TLS handshake), each send and
each receive (silences, not totals: a large body may take long, a silent backend may not), and
waiting for a free connection. Transport failures are :class:`BackendUnavailable`.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import aclosing, asynccontextmanager, nullcontext
from dataclasses import dataclass

import trio

from trios3.core.http1 import (
    HEAD_END,
    MAX_HEAD,
    ChunkedReader,
    Framing,
    Headers,
    ProtocolError,
    parse_head,
)
from trios3.tls import TLSStream, holds_received_bytes

DEFAULT_READ_SIZE = 1024 * 1024
# A response head is read in small reads: what comes with it of the body must fit the
# smallest lease a stream takes (trios3.ops.streaming).
HEAD_READ_SIZE = 64 * 1024


class BackendUnavailable(Exception):
    """The backend could not be reached, or failed or fell silent during an exchange."""


class SendFailed(BackendUnavailable):
    """The backend stopped taking what was sent to it (it may have answered already)."""


class ConnectionLost(BackendUnavailable):
    """The backend closed or reset the connection before answering: on a kept-alive
    connection, most likely closed as idle just as it was taken, so worth one retry."""


_LOST = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)


def _lost(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    return isinstance(cause, OSError) and cause.errno in _LOST


@dataclass(frozen=True)
class Timeouts:
    """Seconds each wait may take."""

    connect: float
    read: float  # a silence while receiving
    write: float  # a silence while sending
    pool: float  # waiting for a free connection


class Connection:
    """One connection to the backend, and the timeouts its waits keep."""

    def __init__(self, stream: trio.abc.Stream, sock, timeouts: Timeouts) -> None:
        self._stream = stream
        self._socket = sock
        self._timeouts = timeouts
        self.idle_since = 0.0
        self.closed = False

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            with trio.fail_after(self._timeouts.write):
                await self._stream.send_all(data)
        except trio.TooSlowError:
            raise SendFailed("the backend stopped taking the request") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SendFailed(f"sending to the backend failed: {exc!r}") from None

    async def receive(self, max_bytes: int) -> bytes:
        try:
            with trio.fail_after(self._timeouts.read):
                return await self._stream.receive_some(max_bytes)
        except trio.TooSlowError:
            raise BackendUnavailable("the backend fell silent") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            kind = ConnectionLost if _lost(exc) else BackendUnavailable
            raise kind(f"receiving from the backend failed: {exc!r}") from None

    def looks_closed(self) -> bool:
        """An idle connection with something to read was closed by the backend (or is out of
        step with it): it must not carry another request."""
        if holds_received_bytes(self._stream):
            return True
        poller = select.poll()
        try:
            poller.register(self._socket.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        """Close at once: no TLS close_notify, nothing awaited. Idempotent."""
        if not self.closed:
            self.closed = True
            self._socket.close()


class Response:
    """One backend answer: its status and headers, and its body through :meth:`aiter_raw`."""

    def __init__(
        self,
        connection: Connection,
        status_code: int,
        headers: Headers,
        framing: Framing,
        rest: bytes,
        read_size: int,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._connection = connection
        self._framing = framing
        self._rest = rest
        self._read_size = read_size
        self.reusable = framing.keep_alive
        self.complete = framing.length == 0 and not framing.chunked
        if self.complete and rest:
            self.reusable = False  # bytes after a complete answer: this line is out of step

    async def aiter_raw(self, read_size: int | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of up to ``read_size`` bytes (the pool's by
        default) as received: never joined, never copied."""
        if self.complete:
            return
        size = read_size or self._read_size
        if self._framing.chunked:
            async for piece in self._chunked(ChunkedReader(), size):
                yield piece
            return
        left = self._framing.length
        if self._rest:
            rest, self._rest = self._rest, b""
            if left is not None:
                if len(rest) > left:
                    self.reusable = False
                    rest = rest[:left]
                left -= len(rest)
            for start in range(0, len(rest), size):  # what came with the head, in ``size``s
                yield rest[start : start + size] if len(rest) > size else rest
        while left is None or left > 0:
            data = await self._connection.receive(size if left is None else min(size, left))
            if not data:
                if left is None:
                    break
                raise BackendUnavailable("the backend's answer ended early")
            if left is not None:
                left -= len(data)
            yield data
        self.complete = True

    async def _chunked(self, reader: ChunkedReader, size: int) -> AsyncIterator[bytes]:
        # Chunked answers are small XML documents (listings): pieces as the chunks come.
        data, self._rest = self._rest, b""
        while True:
            try:
                pieces = reader.feed(data) if data else []
            except ProtocolError as exc:
                raise BackendUnavailable(str(exc)) from None
            for piece in pieces:
                yield piece
            if reader.done:
                break
            data = await self._connection.receive(size)
            if not data:
                raise BackendUnavailable("the backend's answer ended early")
        if reader.leftover:
            self.reusable = False
        self.complete = True


class ConnectionPool:
    """Connections to one backend endpoint, at most ``max_connections`` at once; an idle one
    is kept for ``idle_expiry`` seconds, ``max_idle`` of them at most."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        timeouts: Timeouts,
        max_connections: int,
        max_idle: int,
        idle_expiry: float = 30.0,
        read_size: int = DEFAULT_READ_SIZE,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._timeouts = timeouts
        self._slots = trio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._idle_expiry = idle_expiry
        self._idle: list[Connection] = []
        self._open = 0
        self.busy: set[Connection] = set()  # carrying an exchange now
        self.waiting = 0  # exchanges waiting for a free connection
        self.read_size = read_size

    @property
    def connections(self) -> int:
        """Connections open now, idle or carrying an exchange."""
        return self._open

    @asynccontextmanager
    async def exchange(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None = None,
        content_length: int | None = None,
    ) -> AsyncIterator[Response]:
        """Send ``head`` (request line and headers, ending in the blank line) and ``body``
        (``content_length`` bytes when streamed), and hand over the answer, whose body is
        read inside the ``async with``. Leaving it before the body's end closes the
        connection."""
        self.waiting += 1
        try:
            with trio.fail_after(self._timeouts.pool):
                await self._slots.acquire()
        except trio.TooSlowError:
            raise BackendUnavailable("no backend connection came free in time") from None
        finally:
            self.waiting -= 1
        try:
            connection = self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            self.busy.add(connection)
            try:
                try:
                    response = await self._send(connection, method, head, body, content_length)
                except ConnectionLost:
                    if not reused or not (body is None or isinstance(body, bytes)):
                        raise
                    # A kept-alive connection the backend had just closed: once more, afresh.
                    self._close(connection)
                    connection = await self._connect()
                    self.busy.add(connection)
                    response = await self._send(connection, method, head, body, content_length)
                yield response
            except BaseException:
                self._close(connection)
                raise
            if response.complete and response.reusable and len(self._idle) < self._max_idle:
                self.busy.discard(connection)
                connection.idle_since = trio.current_time()
                self._idle.append(connection)
            else:
                self._close(connection)
        finally:
            self._slots.release()

    def close_idle(self) -> None:
        """Close every idle connection (at the end of the pool's life)."""
        while self._idle:
            self._close(self._idle.pop())

    async def _connect(self) -> Connection:
        try:
            with trio.fail_after(self._timeouts.connect):
                tcp = await trio.open_tcp_stream(self._host, self._port)
                try:
                    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                    stream: trio.abc.Stream = tcp
                    if self._ssl_context is not None:
                        stream = TLSStream(tcp, self._ssl_context, server_hostname=self._host)
                        await stream.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
        except trio.TooSlowError:
            raise BackendUnavailable("connecting to the backend timed out") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise BackendUnavailable(f"cannot connect to the backend: {exc!r}") from None
        self._open += 1
        return Connection(stream, tcp.socket, self._timeouts)

    def _idle_connection(self) -> Connection | None:
        now = trio.current_time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < self._idle_expiry and not connection.looks_closed():
                return connection
            self._close(connection)
        return None

    def _close(self, connection: Connection) -> None:
        if not connection.closed:
            self._open -= 1
        self.busy.discard(connection)
        connection.close()

    async def _send(
        self,
        connection: Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        content_length: int | None,
    ) -> Response:
        try:
            if body is None or isinstance(body, bytes):
                await connection.send(head + body if body else head)
            else:
                await connection.send(head)
                # A failure of the body's own source (the client's upload, a copy source)
                # ends the exchange as itself: only a failed send may hide an early answer.
                closing = aclosing(body) if hasattr(body, "aclose") else nullcontext(body)
                async with closing as source:
                    sent = 0
                    async for chunk in source:
                        sent += len(chunk)
                        if content_length is not None and sent > content_length:
                            raise RuntimeError("a backend request body is longer than it said")
                        await connection.send(chunk)
                if content_length is not None and sent != content_length:
                    raise RuntimeError("a backend request body is shorter than it said")
        except SendFailed as failed:
            # The backend may have answered early (a refusal) and closed: read that answer.
            try:
                response = await self._receive_head(connection, method)
            except BackendUnavailable:
                if _lost(failed.__context__ or failed):
                    raise ConnectionLost(str(failed)) from None
                raise failed from None
            response.reusable = False  # part of the request was never sent
            return response
        return await self._receive_head(connection, method)

    async def _receive_head(self, connection: Connection, method: str) -> Response:
        buffer = bytearray()
        while True:
            end = buffer.find(HEAD_END)
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BackendUnavailable("the backend sent an overlong response head")
                try:
                    data = await connection.receive(HEAD_READ_SIZE)
                except ConnectionLost:
                    if buffer:  # part of an answer came: not a connection closed as idle
                        raise BackendUnavailable("the backend reset the connection") from None
                    raise
                if not data:
                    kind = BackendUnavailable if buffer else ConnectionLost
                    raise kind("the backend closed the connection, no answer")
                buffer += data
                continue
            try:
                status, version, headers = parse_head(bytes(buffer[:end]))
                del buffer[: end + 4]
                if status < 200:  # an interim answer (100 Continue): the real one follows
                    continue
                framing = Framing(status, version, headers, method)
            except ProtocolError as exc:
                raise BackendUnavailable(str(exc)) from None
            return Response(connection, status, headers, framing, bytes(buffer), self.read_size)
