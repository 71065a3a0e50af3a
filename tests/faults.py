"""A TCP fault injector of the tests' own: it stands between trios3 and its backend, relays
every connection byte for byte in both directions, and breaks the one it is told to break.

Pure trio and the standard library. It listens on loopback (:func:`serving`, port 0 unless
told: a proxy process started before the injector needs a port that stays its backend's, see
:func:`harness.reserved_ports`) and opens one connection to the upstream (the real SeaweedFS)
for each connection it accepts. A :class:`Fault` says what to break:

- where: ``direction`` is ``"request"`` (what the proxy sends the backend) or ``"response"``
  (what the backend sends back); the connection is picked by ``connection`` (the n-th accepted,
  1-based: offsets count from the connection's first byte) or by ``request``, a request-line
  prefix such as ``b"GET /bucket/key"``, with ``nth`` (the n-th request that matches once the
  fault is added: offsets count from that request's first byte, or its response's).
  ``offset`` is counted from there, or from the end of the first occurrence of ``after``
  (``b"\\r\\n\\r\\n"``: the body) in those bytes;
- what, at that byte: ``close`` (the peers get exactly the bytes before it, then a FIN, each;
  what they still send is read and dropped until they close their ends), ``reset`` (RST both
  ways, SO_LINGER 0), ``stall`` (nothing more is relayed that way; both sockets stay open
  until :meth:`Fault.release`, until the proxy closes its end, or until the injector stops;
  see below for ``hold``), ``delay`` (every chunk from there on waits ``delay`` seconds) or
  ``flip`` (that byte is XORed with 0xFF, the rest relayed as is). Each fault acts once.

The proxy pools kept-alive connections and never pipelines, so requests are told apart by their
framing (each head and its Content-Length body; the proxy never sends a chunked request) and a
response starts with the first byte the backend sends after its request began: the previous
answer was read to its end before the proxy sent another request on that connection. A response
fault acts on the first byte at its offset when it arrives, so one past the end of an answer
never acts.

The injector counts open connections (``open_connections``: both sockets not yet closed),
records each connection, request and fault as it happens (``log``; ``requests``), and
:meth:`Injector.sever` closes every connection the proxy holds idle, waiting until the proxy's
kernel has acknowledged the FIN: a proxy that takes a pooled connection afterwards sees it
closed and opens a new one, so the next operation's exchanges start on fresh connections.

A stalled request is not a frozen socket: the injector keeps reading what the proxy sends (held,
and relayed if released), because a peer that stops reading never sees the proxy close a
connection that still has bytes queued for it. ``hold=False`` freezes it instead (nothing read,
so the proxy's sends block once the socket buffers are full); then the proxy's closing is seen
only after :meth:`Fault.release`, when what it had queued has been read.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import trio

Direction = Literal["request", "response"]
Kind = Literal["close", "reset", "stall", "delay", "flip"]
CHUNK = 64 * 1024  # the most one read takes in
MARKER_WINDOW = 64 * 1024  # how far into an exchange ``after`` is looked for
MAX_HEAD = 64 * 1024
# Linux tcp_info.tcpi_state: our FIN has been acknowledged once the socket is in one of these.
_FIN_ACKED = {5, 6, 7}  # FIN_WAIT2, TIME_WAIT, CLOSE


@dataclass(frozen=True)
class Hit:
    """Where a fault acted: the connection (1-based, in accept order), the request on it
    (1-based; 0 for a fault picked by connection), and the byte of the direction's stream."""

    connection: int
    exchange: int
    position: int

    @property
    def reused(self) -> bool:
        """Whether the request came on a connection that had carried one before (kept alive)."""
        return self.exchange > 1


@dataclass(eq=False)
class Fault:
    kind: Kind
    direction: Direction
    offset: int = 0
    after: bytes | None = None
    delay: float = 0.0
    connection: int | None = None
    request: bytes | None = None
    nth: int = 1
    hold: bool = True  # a request stall: keep reading the proxy (False: a frozen peer)
    triggered: trio.Event = field(default_factory=trio.Event)  # it has acted
    ended: trio.Event = field(default_factory=trio.Event)  # the connection it hit is closed
    released: trio.Event = field(default_factory=trio.Event)
    hit: Hit | None = None
    matched: int = 0  # requests that matched ``request`` so far

    def __post_init__(self) -> None:
        if (self.connection is None) == (self.request is None):
            raise ValueError("a fault picks its connection by number or by request line")

    def release(self) -> None:
        """Let a stalled direction go on (what it held is relayed)."""
        self.released.set()

    def __str__(self) -> str:
        which = f"connection {self.connection}" if self.connection else f"{self.request!r}"
        where = f"{self.after!r}+{self.offset}" if self.after else str(self.offset)
        return f"{self.kind} {self.direction} at {where} of {which} #{self.nth}"


class _Armed:
    """A fault bound to one connection, with where it acts in its direction's stream."""

    def __init__(self, fault: Fault, exchange: int, base: int | None) -> None:
        self.fault = fault
        self.exchange = exchange
        self.base = base  # the exchange's first byte in the stream (None: not arrived yet)
        self.seen = bytearray()  # the exchange's first bytes, to find ``after`` in
        self.position: int | None = None
        if base is not None and fault.after is None:
            self.position = base + fault.offset

    def look(self, start: int, data: bytes | bytearray) -> None:
        """Note ``data`` (stream bytes from ``start``); find where the fault acts if it can."""
        if self.position is not None or self.base is None:
            return
        fault = self.fault
        assert fault.after is not None
        skip = max(0, self.base - start)
        room = MARKER_WINDOW - len(self.seen)
        if room > 0 and skip < len(data):
            self.seen += data[skip : skip + room]
        found = self.seen.find(fault.after)
        if found >= 0:
            self.position = self.base + found + len(fault.after) + fault.offset


class _Ended(Exception):
    """One side of a relayed connection is gone: the connection ends."""


class _RequestFraming:
    """Where each request the proxy sends starts, and its request line: fed the request
    direction's bytes in order. Heads end at the blank line; bodies are Content-Length long
    (a chunked or unreadable head loses the thread: no later request is told apart)."""

    def __init__(self) -> None:
        self.position = 0  # stream bytes fed so far
        self.start = 0  # where the current request starts
        self.state = "line"  # line, head, body, lost
        self.head = bytearray()
        self.body_left = 0

    @property
    def ready(self) -> int:
        """Stream bytes up to which every request line is known (a request's bytes wait
        until its line is complete, so that a fault on it can act from its first byte)."""
        return self.start if self.state == "line" else self.position

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """The (start, request line) of each request whose line completes in ``data``."""
        found = []
        at, size = 0, len(data)
        while at < size and self.state != "lost":
            if self.state == "body":
                take = min(self.body_left, size - at)
                at += take
                self.body_left -= take
                if not self.body_left:
                    self._next(self.position + at)
                continue
            before = len(self.head)
            self.head += data[at:]
            marker = b"\r\n" if self.state == "line" else b"\r\n\r\n"
            index = self.head.find(marker, max(0, before - len(marker) + 1))
            if index < 0:
                at = size
                if len(self.head) > MAX_HEAD:
                    self.state = "lost"
                break
            stop = index + len(marker)
            at += stop - before
            del self.head[stop:]
            if self.state == "line":
                found.append((self.start, bytes(self.head[:index])))
                self.state = "head"
                continue
            length = _content_length(bytes(self.head))
            if length is None:
                self.state = "lost"
            elif length:
                self.state, self.body_left = "body", length
            else:
                self._next(self.position + at)
        self.position += size
        return found

    def _next(self, start: int) -> None:
        self.start = start
        self.state = "line"
        self.head = bytearray()


def _content_length(head: bytes) -> int | None:
    """A request head's body length (0 without Content-Length); None if chunked or unreadable."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return None
            length = int(value)
    return length


class _CloseCleanly(Exception):
    """A ``close`` fault acted: FIN both ways, then drain until both peers close."""


class _Link:
    """One relayed connection: the proxy's socket, the upstream's, and the faults on it."""

    def __init__(self, number: int, client: trio.SocketStream, upstream: trio.SocketStream):
        self.number = number
        self.client = client
        self.upstream = upstream
        self.armed: dict[Direction, list[_Armed]] = {"request": [], "response": []}
        self.framing = _RequestFraming()
        self.exchanges = 0
        self.awaiting_response: int | None = None  # an exchange whose answer has not begun
        self.backlog = bytearray()  # what the proxy sent while its direction was stalled
        self.scope = trio.CancelScope()
        self.closed = False

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client.socket, self.upstream.socket  # type: ignore[return-value]


class Injector:
    """The fault injector (see the module's docstring); made by :func:`serving`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.faults: list[Fault] = []
        self.log: list[str] = []
        self.requests: list[tuple[int, int, bytes]] = []  # (connection, exchange, request line)
        self.accepted = 0
        self.links: dict[int, _Link] = {}
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self.links)

    def add(self, fault: Fault | None = None, **spec) -> Fault:
        """Arm ``fault`` (or ``Fault(**spec)``) for the connections and requests to come."""
        fault = fault if fault is not None else Fault(**spec)
        self.faults.append(fault)
        return fault

    def matching(self, prefix: bytes) -> list[tuple[int, int, bytes]]:
        """The requests seen so far whose request line starts with ``prefix``."""
        return [entry for entry in self.requests if entry[2].startswith(prefix)]

    def report(self) -> str:
        """What happened, for an assertion's message."""
        return "\n".join(["injector log:", *self.log[-60:]])

    async def changed(self) -> None:
        """Wait until a connection opens or closes."""
        await self._changed.wait()

    def _note(self, text: str) -> None:
        self.log.append(f"{trio.current_time():.3f} {text}")

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- one connection -------------------------------------------------------------------------

    async def handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        number = self.accepted
        try:
            upstream = await trio.open_tcp_stream(*self.upstream)
        except OSError as exc:
            self._note(f"conn {number}: upstream unreachable ({exc!r})")
            await client.aclose()
            return
        link = _Link(number, client, upstream)
        self.links[number] = link
        self._signal()
        self._note(f"conn {number}: opened")
        for fault in self.faults:
            if fault.connection == number and fault.hit is None:
                link.armed[fault.direction].append(_Armed(fault, 0, 0))
        how = "cancelled (severed)"
        try:
            with link.scope:
                clean = False
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._requests, link)
                        nursery.start_soon(self._responses, link)
                except* _CloseCleanly:
                    clean = True
                except* _Ended as group:
                    how = str(group.exceptions[0])
                except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                    how = f"broken ({group.exceptions[0]!r})"
                if clean:
                    how = "closed by a fault"
                    await self._close_cleanly(link)
        finally:
            await self._close(link)
            self._note(f"conn {number}: {how}")

    async def _close(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        with trio.CancelScope(shield=True):
            for stream in (link.client, link.upstream):
                await stream.aclose()
        del self.links[link.number]
        for side in link.armed.values():
            for armed in side:
                if armed.fault.hit is not None and armed.fault.hit.connection == link.number:
                    armed.fault.ended.set()
        self._signal()

    async def _requests(self, link: _Link) -> None:
        """The proxy's bytes to the upstream, request by request."""
        pending = bytearray()  # received, not yet relayed (from stream position ``sent``)
        sent = 0
        while True:
            if link.backlog:
                data, link.backlog = bytes(link.backlog), bytearray()
            else:
                data = await link.client.receive_some(CHUNK)
                if not data:
                    raise _Ended("the proxy closed")
            pending += data
            for start, line in link.framing.feed(data):
                self._request_begins(link, start, line)
            ready = link.framing.ready - sent
            if ready > 0:
                piece = pending[:ready]
                del pending[:ready]
                sent = await self._relay(link, "request", sent, piece, link.upstream)

    async def _responses(self, link: _Link) -> None:
        """The upstream's bytes to the proxy."""
        sent = 0
        while True:
            data = await link.upstream.receive_some(CHUNK)
            if not data:
                raise _Ended("the upstream closed")
            if link.awaiting_response is not None:
                for armed in link.armed["response"]:
                    if armed.exchange == link.awaiting_response and armed.base is None:
                        armed.base = sent
                        if armed.fault.after is None:
                            armed.position = sent + armed.fault.offset
                link.awaiting_response = None
            sent = await self._relay(link, "response", sent, bytearray(data), link.client)

    def _request_begins(self, link: _Link, start: int, line: bytes) -> None:
        link.exchanges += 1
        exchange = link.exchanges
        link.awaiting_response = exchange
        self.requests.append((link.number, exchange, line))
        self._note(f"conn {link.number}: request {exchange} at {start}: {line[:120]!r}")
        for fault in self.faults:
            if fault.request is None or fault.hit is not None or fault.matched >= fault.nth:
                continue
            if line.startswith(fault.request):
                fault.matched += 1
                if fault.matched == fault.nth:
                    base = start if fault.direction == "request" else None
                    link.armed[fault.direction].append(_Armed(fault, exchange, base))

    async def _relay(
        self, link: _Link, direction: Direction, start: int, data: bytearray, sink
    ) -> int:
        """Send ``data`` (stream bytes from ``start``) on, doing what the faults say; the
        stream position after it."""
        end = start + len(data)
        sent = start
        armed = link.armed[direction]
        for entry in armed:
            entry.look(start, data)
        while True:
            due = [
                a
                for a in armed
                if a.position is not None and a.fault.hit is None and sent <= a.position < end
            ]
            if not due:
                break
            entry = min(due, key=lambda a: a.position or 0)
            position = entry.position
            assert position is not None
            await self._send(link, direction, sink, data[sent - start : position - start])
            sent = position
            fault = entry.fault
            fault.hit = Hit(link.number, entry.exchange, position)
            self._note(f"conn {link.number}: {fault.kind} {direction} at {position} ({fault})")
            fault.triggered.set()
            if fault.kind == "flip":
                data[position - start] ^= 0xFF
            elif fault.kind == "close":
                raise _CloseCleanly
            elif fault.kind == "reset":
                for sock in link.sockets():
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raise _Ended("reset by a fault")
            elif fault.kind == "stall":
                await self._stall(link, direction, fault)
                self._note(f"conn {link.number}: released")
        await self._send(link, direction, sink, data[sent - start :])
        return end

    async def _send(self, link: _Link, direction: Direction, sink, data) -> None:
        if not data:
            return
        for entry in link.armed[direction]:
            if entry.fault.kind == "delay" and entry.fault.hit is not None:
                await trio.sleep(entry.fault.delay)
        await sink.send_all(data)

    async def _stall(self, link: _Link, direction: Direction, fault: Fault) -> None:
        """Relay nothing more this way until released. What the upstream sends meanwhile is
        left unread; what the proxy sends is read and held (its closing is seen)."""
        if direction == "response" or not fault.hold:
            await fault.released.wait()
            return
        async with trio.open_nursery() as nursery:

            async def hold() -> None:
                while True:
                    data = await link.client.receive_some(CHUNK)
                    if not data:
                        raise _Ended("the proxy closed a stalled connection")
                    link.backlog += data

            async def release() -> None:
                await fault.released.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(hold)
            nursery.start_soon(release)

    async def _close_cleanly(self, link: _Link) -> None:
        """FIN both ways after what was relayed, then read and drop until both peers close."""
        for sock in link.sockets():
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        async def drain(stream: trio.SocketStream) -> None:
            try:
                while await stream.receive_some(CHUNK):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, link.client)
            nursery.start_soon(drain, link.upstream)

    # -- all connections ------------------------------------------------------------------------

    async def sever(self) -> None:
        """Close every open connection: first a FIN to the proxy, and once the proxy's kernel
        has acknowledged it (so its socket reads as closed), both sockets; wait until none is
        open. Meant for connections the proxy holds idle: call it when nothing is in flight
        (under a deadline: an acknowledgement is polled for, the kernel tells of it no other
        way)."""
        links = list(self.links.values())
        for link in links:
            try:
                link.client.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone
        for link in links:
            while not link.closed and not _fin_acknowledged(link.client.socket):  # noqa: ASYNC110
                await trio.sleep(0.001)
            link.scope.cancel()
        while self.links:
            await self.changed()


def _fin_acknowledged(sock) -> bool:
    """Whether the peer's kernel has acknowledged our FIN (or the socket is gone)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return True
    return state in _FIN_ACKED


@asynccontextmanager
async def serving(
    upstream: tuple[str, int], port: int = 0, *, receive_buffer: int | None = None
) -> AsyncIterator[Injector]:
    """An :class:`Injector` in front of ``upstream`` on 127.0.0.1:``port`` for the block. On
    leaving, it stops accepting, then severs every connection it still relays (see
    :meth:`Injector.sever`), so that the next injector on the port starts afresh.

    ``receive_buffer``: the SO_RCVBUF of the connections it accepts (which stops the kernel
    from growing it), so that a frozen stall blocks the proxy after a known amount at most."""
    injector = Injector(upstream)
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    listener = listeners[0]
    if receive_buffer is not None:
        listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    injector.port = listener.socket.getsockname()[1]
    accepting = trio.CancelScope()
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            try:
                with accepting:
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(injector.handle, stream)
            finally:
                stopped.set()

        nursery.start_soon(accept)
        try:
            yield injector
        finally:
            with trio.CancelScope(shield=True):
                accepting.cancel()
                await stopped.wait()
                await listener.aclose()
                with trio.fail_after(10):
                    await injector.sever()
            nursery.cancel_scope.cancel()
