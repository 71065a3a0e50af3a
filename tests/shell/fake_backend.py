"""A misbehaving S3 backend for the shell tests: an in-process HTTP/1.1 server on trio sockets.

It stands between a test app and the real SeaweedFS and forwards every request there byte for
byte (the signature the app made for the fake's host still verifies, as SeaweedFS checks the
Host header it receives), one request per connection (it adds ``Connection: close``). A
:class:`Script` makes it misbehave on one request instead, with real headers and bytes:

- ``cut``: relay the response head and ``after`` body bytes, then close (backend error
  mid-stream);
- ``stall``: relay the response head and ``after`` body bytes, then send nothing more and keep
  the connection open (a backend that hangs mid-stream, or a stream paused for the test);
- ``hang``: never answer and never forward (a backend that hangs before its status line);
- ``close``: close the connection as soon as the request head is in, forwarding nothing;
- ``drop``: forward the request head and ``after`` request body bytes, then close both sides
  without an answer (the backend fails in the middle of an upload).

A script acts once, on the first request that matches its method and path once it has let
``skip`` matching requests through (a multipart GET reads one path several times: the n-th
read is ``skip=n-1``), and sets ``triggered`` when it acts and ``closed`` when that connection
is gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import trio

Action = Literal["cut", "stall", "hang", "close", "drop"]


@dataclass
class Script:
    method: str
    path: str
    action: Action
    after: int = 0
    skip: int = 0  # matching requests to let through before acting
    triggered: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)
    used: bool = False
    matched: int = 0  # matching requests seen so far


class FakeBackend:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.scripts: list[Script] = []
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.open_connections = 0
        self._idle = trio.Event()
        self._idle.set()
        self._arrivals: dict[tuple[str, str], trio.Event] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(
        self, method: str, path: str, action: Action, after: int = 0, skip: int = 0
    ) -> Script:
        script = Script(method, path, action, after, skip)
        self.scripts.append(script)
        return script

    def _arrival(self, method: str, path: str) -> trio.Event:
        return self._arrivals.setdefault((method, path), trio.Event())

    async def arrived(self, method: str, path: str) -> None:
        """Wait until a request for ``method`` ``path`` has come in."""
        await self._arrival(method, path).wait()

    async def idle(self) -> None:
        """Wait until no connection to the fake is open."""
        await self._idle.wait()

    def _match(self, method: str, path: str) -> Script | None:
        """The script that acts on this request, if any: every waiting script counts it."""
        chosen = None
        for script in self.scripts:
            if script.used or (script.method, script.path) != (method, path):
                continue
            script.matched += 1
            if chosen is None and script.matched > script.skip:
                script.used = True
                chosen = script
        return chosen

    async def handle(self, client: trio.SocketStream) -> None:
        self.open_connections += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        script = None
        try:
            head, rest = await _read_head(client)
            if head is None:
                return
            method, target = head.split(b" ", 2)[:2]
            path = target.decode("latin-1").split("?", 1)[0]
            self.seen.append((method.decode(), path))
            self._arrival(method.decode(), path).set()
            script = self._match(method.decode(), path)
            if script is not None and script.action == "hang":
                script.triggered.set()
                await _drain(client)  # until the app gives up and closes
                return
            if script is not None and script.action == "close":
                script.triggered.set()
                return
            upstream = await trio.open_tcp_stream(*self.upstream)
            async with upstream, trio.open_nursery() as nursery:
                line, _, headers = head.partition(b"\r\n")
                await upstream.send_all(line + b"\r\nconnection: close\r\n" + headers + b"\r\n\r\n")
                nursery.start_soon(self._requests, client, upstream, rest, script, nursery)
                await self._responses(upstream, client, script)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._idle.set()
            with trio.CancelScope(shield=True):
                await client.aclose()
            if script is not None:
                script.closed.set()

    async def _requests(self, client, upstream, rest: bytes, script, nursery) -> None:
        """Client to upstream; the client closing ends the connection."""
        limit = script.after if script is not None and script.action == "drop" else None
        if await _relay(client, upstream, rest, limit):
            script.triggered.set()  # then close both sides, no answer
        nursery.cancel_scope.cancel()

    async def _responses(self, upstream, client, script) -> None:
        """Upstream to client, cut or stalled as the script says."""
        head, body = await _read_head(upstream)
        if head is None:
            return
        await client.send_all(head + b"\r\n\r\n")
        limit = None
        if script is not None and script.action in ("cut", "stall"):
            limit = script.after
        if await _relay(upstream, client, body, limit):
            script.triggered.set()
            if script.action == "stall":
                await trio.sleep_forever()  # until the client closes (see _requests)


async def _relay(source, sink, data: bytes, limit: int | None) -> bool:
    """Send ``data``, then what ``source`` sends, to ``sink``: True once ``limit`` bytes are
    sent, False when ``source`` closes first."""
    sent = 0
    while True:
        if limit is not None and sent + len(data) >= limit:
            await sink.send_all(data[: limit - sent])
            return True
        if data:
            await sink.send_all(data)
            sent += len(data)
        data = await source.receive_some(65536)
        if not data:
            return False


async def _read_head(stream) -> tuple[bytes | None, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


async def _drain(stream) -> None:
    while await stream.receive_some(65536):
        pass


@asynccontextmanager
async def fake_backend(upstream: tuple[str, int]) -> AsyncIterator[FakeBackend]:
    """Serve a :class:`FakeBackend` on a port of its own for the ``async with``."""
    fake = FakeBackend(upstream)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        fake.port = listeners[0].socket.getsockname()[1]
        yield fake
        nursery.cancel_scope.cancel()
