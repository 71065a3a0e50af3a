"""The real ASGI app, built in-process in front of a backend, driven by a test that plays
hypercorn's part: what the shell tests that end requests every way share.

:class:`AsgiCall` is one HTTP request with hypercorn's receive/send semantics: ``receive()``
yields ``http.request`` messages from a bounded queue and then ``http.disconnect``; ``send()``
hands response messages over an unbuffered channel (so the app blocks until the test reads,
like a socket with backpressure) and returns silently once the client is gone. The app runs in
a cancel scope of the call's (a server shutdown cancels it), and the response channel closes
when the app returns (a client reading sees the connection end). :func:`open_call` runs the app
for one signed request; :func:`served` runs it behind hypercorn on a real socket instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace
from urllib.parse import unquote

import trio
from hypercorn.trio import serve as hypercorn_serve

import s3clients
from trios3.app import S3Proxy
from trios3.backend import Backend
from trios3.config import BackendSettings, ProxySettings
from trios3.core import sigv4
from trios3.core.keys import Keyring, MasterKey
from trios3.server import hypercorn_config, listening_socket

ACCESS_KEY = "shellclient"
SECRET_KEY = "shellsecret-" + uuid.uuid4().hex
REGION = "us-east-1"
HOST = "proxy.test"
PIECE = 64 * 1024  # a request body message
QUEUE = 10  # hypercorn's max_app_queue_size
# One keyring for every app of the run: an object one app stored, another reads.
KEYRING = Keyring([MasterKey(MasterKey.generate())])
APP_CALL_TASK = "asgi-app-call"


# -- the app, in-process ----------------------------------------------------------------------


def backend_settings(url: str, seaweedfs, **options) -> BackendSettings:
    """The settings of a backend client of ``url`` with the session SeaweedFS's credentials
    (``url`` is SeaweedFS's own, or a fake's in front of it)."""
    return BackendSettings.with_defaults(
        url, REGION, seaweedfs.access_key, seaweedfs.secret_key, **options
    )


# The in-process apps' default budget: small enough that a stream's unit is the smallest
# (a quarter of it fits no larger one), so their streams move in 128 KiB pieces, as the
# message counts of the cancellation tests assume; tests of larger units ask for more.
TEST_BUDGET = 4 * 1024 * 1024


def proxy_app(backend: Backend, **settings) -> S3Proxy:
    """The app in front of ``backend``, for the tests' one client, with ``settings``."""
    settings.setdefault("memory_budget", TEST_BUDGET)
    return S3Proxy(
        ProxySettings.with_defaults(
            credentials={ACCESS_KEY: SECRET_KEY},
            keyring=KEYRING,
            backend=backend.settings,
            **settings,
        ),
        backend,
    )


def busy_connections(backend: Backend) -> list:
    """The backend client's pooled connections that are neither idle nor closed."""
    return [f"busy connection {n}" for n in range(backend.busy_connections)]


def live_tasks() -> list[str]:
    """Every task of the run that belongs to the app or to an app call."""
    names = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task.name.startswith("trios3.") or task.name == APP_CALL_TASK:
            names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


# -- one request ------------------------------------------------------------------------------


class AsgiCall:
    """One HTTP request to an ASGI app, with hypercorn's receive/send semantics."""

    def __init__(self) -> None:
        self._in_send, self._in_recv = trio.open_memory_channel[dict](QUEUE)
        self._out_send, self._out_recv = trio.open_memory_channel[dict](0)
        self.disconnected = False
        self.sends_after_disconnect = 0
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.returned = False  # set once open_call has seen the app return

    async def run(self, app, scope: dict) -> None:
        try:
            with self.scope:
                await app(scope, self.receive, self.send)
        finally:
            self._out_send.close()  # the connection is over for the client
            self.done.set()

    async def receive(self) -> dict:
        try:
            return await self._in_recv.receive()
        except trio.EndOfChannel:
            return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if self.disconnected:
            self.sends_after_disconnect += 1
            return
        try:
            await self._out_send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.sends_after_disconnect += 1
            return  # the client went away while the app was sending

    async def send_body(self, data: bytes, *, more: bool) -> None:
        """Blocks while the app has QUEUE unread messages (TCP backpressure)."""
        await self._in_send.send({"type": "http.request", "body": data, "more_body": more})

    def disconnect(self) -> None:
        """The client is gone: queued body messages, then ``http.disconnect``; sends vanish."""
        self.disconnected = True
        self._in_send.close()
        self._out_recv.close()

    def shutdown(self) -> None:
        """The server stops: what hypercorn's nursery does to the app's task."""
        self.scope.cancel()

    async def receive_frame(self) -> dict:
        return await self._out_recv.receive()

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a response that ends."""
        start = await self.receive_frame()
        assert start["type"] == "http.response.start"
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in start["headers"]}
        parts = []
        while True:
            frame = await self.receive_frame()
            assert frame["type"] == "http.response.body"
            parts.append(frame.get("body", b""))
            if not frame.get("more_body", False):
                break
        return start["status"], headers, b"".join(parts)

    async def read_until_closed(self) -> tuple[dict | None, bytes, bool]:
        """(status message, body bytes, whether the response was finished), read until the
        app returns."""
        start, parts, finished = None, [], False
        while True:
            try:
                frame = await self.receive_frame()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return start, b"".join(parts), finished
            if frame["type"] == "http.response.start":
                start = frame
            else:
                parts.append(frame.get("body", b""))
                finished = not frame.get("more_body", False)


def signed_headers(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    payload_hash: str = sigv4.EMPTY_SHA256,
    host: str = HOST,
    query: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """A request's headers signed for the tests' client."""
    return s3clients.signed_headers(
        method,
        path,
        ACCESS_KEY,
        SECRET_KEY,
        host=host,
        query=query,
        headers=headers,
        payload=payload_hash,
    )


def http_scope(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]] = (),
) -> dict:
    """The ASGI scope hypercorn would build for this request line and these headers."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("ascii"),
        "query_string": sigv4.canonical_query_string(list(query)).encode("ascii"),
        "root_path": "",
        "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


@asynccontextmanager
async def open_call(
    app,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    query: Sequence[tuple[str, str]] = (),
    *,
    returns_within: float = 10,
    **sign,
) -> AsyncIterator[AsgiCall]:
    """Run ``app`` for one signed request (``sign``: :func:`signed_headers`'s options); leaving
    the block waits up to ``returns_within`` seconds for it to return."""
    headers = signed_headers(method, path, headers, query=query, **sign)
    scope = http_scope(method, path, headers, query)
    call = AsgiCall()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run, app, scope, name=APP_CALL_TASK)
        yield call
        with trio.fail_after(returns_within):
            await call.done.wait()
    call.returned = True


async def feed(call: AsgiCall, data: bytes, pieces: int | None) -> None:
    """Send ``data`` as a request body, or only its first ``pieces`` pieces (then wait)."""
    chunks = [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]
    for i, chunk in enumerate(chunks[:pieces]):
        await call.send_body(chunk, more=i < len(chunks) - 1)


# -- through hypercorn and a real socket ------------------------------------------------------


class Observed:
    """Wraps the app to note when each HTTP request's call returns and what it sent."""

    def __init__(self, app) -> None:
        self.app = app
        self.finished = trio.Event()
        self.body_bytes = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            self.body_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.finished.set()


@asynccontextmanager
async def served(app, *, send_timeout: float) -> AsyncIterator[int]:
    """``app`` served by hypercorn as ``trios3 serve`` configures it, on a loopback port of its
    own (its sockets' ``send_timeout``: the TCP user timeout), for the block: yields the port."""
    settings = SimpleNamespace(listen="127.0.0.1:0", tls_cert=None, tls_key=None)
    with listening_socket(settings.listen, send_timeout=send_timeout) as sock:
        config = hypercorn_config(settings, sock)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn_serve, app, config))
            yield int(binds[0].rsplit(":", 1)[1])
            nursery.cancel_scope.cancel()


def raw_request(
    method: str,
    path: str,
    port: int,
    headers: Sequence[tuple[str, str]] = (),
    payload_hash: str = sigv4.EMPTY_SHA256,
) -> bytes:
    """The head of a signed request to :func:`served` on ``port``, as a client writes it."""
    signed = signed_headers(method, path, headers, payload_hash, host=f"127.0.0.1:{port}")
    return s3clients.request_head(method, path, signed)
