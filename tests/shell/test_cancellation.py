"""Client disconnects and a spent budget, driven through the real ASGI app and a real backend.

The app is built in-process in front of the session's SeaweedFS. An in-process ASGI harness
(:class:`AsgiCall`) plays hypercorn's part: ``receive()`` yields ``http.request`` messages from
a bounded queue and then ``http.disconnect``; ``send()`` hands response messages over an
unbuffered channel (so the app blocks until the test reads, like a socket with backpressure)
and returns silently once the client is gone. One test goes through hypercorn and a real
socket. The backend is real, so these tests use the real clock under ``trio.fail_after``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import trio
import trio.testing
from hypercorn.trio import serve as hypercorn_serve

from trios3.app import ProxySettings, S3Proxy
from trios3.backend import Backend, BackendSettings, open_backend
from trios3.core import sigv4
from trios3.core.keys import Keyring, MasterKey
from trios3.ops.objects import stream_window
from trios3.serve import hypercorn_config, listening_socket

pytestmark = pytest.mark.integration

ACCESS_KEY = "shellclient"
SECRET_KEY = "shellsecret-" + uuid.uuid4().hex
REGION = "us-east-1"
HOST = "proxy.test"
PIECE = 64 * 1024
LARGE = 8 * 1024 * 1024
QUEUE = 10  # hypercorn's max_app_queue_size


# -- the in-process ASGI harness --------------------------------------------------------------


class AsgiCall:
    """One HTTP request to an ASGI app, with hypercorn's receive/send semantics."""

    def __init__(self) -> None:
        self._in_send, self._in_recv = trio.open_memory_channel[dict](QUEUE)
        self._out_send, self._out_recv = trio.open_memory_channel[dict](0)
        self.disconnected = False
        self.sends_after_disconnect = 0
        self.done = trio.Event()

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

    async def receive_frame(self) -> dict:
        return await self._out_recv.receive()

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
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


def signed_headers(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    payload_hash: str = sigv4.EMPTY_SHA256,
    host: str = HOST,
) -> list[tuple[str, str]]:
    out = [("host", host), *headers]
    out += sigv4.sign_request(
        method, path, [], out, payload_hash, ACCESS_KEY, SECRET_KEY, REGION, datetime.now(UTC)
    )
    return out


def http_scope(method: str, path: str, headers: Sequence[tuple[str, str]]) -> dict:
    """The ASGI scope hypercorn would build for this request line and these headers."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


@asynccontextmanager
async def asgi_call(
    app, method: str, path: str, headers: Sequence[tuple[str, str]] = (), **sign
) -> AsyncIterator[AsgiCall]:
    """Run ``app`` for one request; leaving the block waits (bounded) for the app to return."""
    scope = http_scope(method, path, signed_headers(method, path, headers, **sign))
    call = AsgiCall()

    async def run_app() -> None:
        try:
            await app(scope, call.receive, call.send)
        finally:
            call.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_app)
        yield call
        with trio.fail_after(30):
            await call.done.wait()


# -- helpers ----------------------------------------------------------------------------------


def busy_connections(backend: Backend) -> list:
    pool = backend._client._transport._pool
    return [c for c in pool.connections if not (c.is_idle() or c.is_closed())]


def assert_clean(app: S3Proxy, backend: Backend) -> None:
    """Nothing the finished requests held is still held."""
    assert app.budget.in_use == 0
    assert app.budget.stats.waiting == 0
    assert busy_connections(backend) == []
    assert backend._client._transport._pool._requests == []


async def put(app, bucket: str, key: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    path = f"/{bucket}/{key}"
    headers = [("content-length", str(len(data)))]
    async with asgi_call(app, "PUT", path, headers, payload_hash=sigv4.UNSIGNED_PAYLOAD) as call:
        pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]

        async def feed() -> None:
            for i, piece in enumerate(pieces):
                await call.send_body(piece, more=i < len(pieces) - 1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            response = await call.read_response()
    return response


async def get(app, bucket: str, key: str) -> tuple[int, dict[str, str], bytes]:
    async with asgi_call(app, "GET", f"/{bucket}/{key}") as call:
        await call.send_body(b"", more=False)
        return await call.read_response()


async def head_backend(seaweedfs, bucket: str, key: str) -> int:
    """The status of a HEAD straight to SeaweedFS (not through the proxy)."""
    from botocore.exceptions import ClientError

    def head() -> int:
        try:
            seaweedfs.client().head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            return int(err.response["ResponseMetadata"]["HTTPStatusCode"])
        return 200

    return await trio.to_thread.run_sync(head)


async def assert_still_works(app, backend, bucket: str) -> None:
    key = "after-" + uuid.uuid4().hex[:8]
    data = os.urandom(200_000)
    with trio.fail_after(30):
        status, _, _ = await put(app, bucket, key, data)
        assert status == 200
        status, _, body = await get(app, bucket, key)
    assert status == 200
    assert body == data
    assert_clean(app, backend)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def backend_settings(seaweedfs) -> BackendSettings:
    return BackendSettings(seaweedfs.url, REGION, seaweedfs.access_key, seaweedfs.secret_key)


@pytest.fixture
async def backend(backend_settings):
    async with open_backend(backend_settings) as client:
        yield client


@pytest.fixture
def make_app(backend, backend_settings):
    keyring = Keyring([MasterKey(MasterKey.generate())])

    def make(**settings) -> S3Proxy:
        return S3Proxy(
            ProxySettings(
                credentials={ACCESS_KEY: SECRET_KEY},
                keyring=keyring,
                backend=backend_settings,
                **settings,
            ),
            backend,
        )

    return make


@pytest.fixture
def app(make_app) -> S3Proxy:
    return make_app()


@pytest.fixture
def raw_bucket(seaweedfs):
    """A fresh bucket made straight at SeaweedFS; emptied and removed afterwards."""
    client = seaweedfs.client()
    name = "shell-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    yield name
    for item in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture
async def large_object(app, raw_bucket):
    data = os.urandom(LARGE)
    with trio.fail_after(60):
        status, _, body = await put(app, raw_bucket, "large", data)
    assert status == 200, body
    return "large", data


# -- tests ------------------------------------------------------------------------------------


async def test_get_that_completes_releases_everything(app, backend, raw_bucket, large_object):
    key, data = large_object
    with trio.fail_after(30):
        status, headers, body = await get(app, raw_bucket, key)
    assert status == 200
    assert int(headers["content-length"]) == len(data)
    assert body == data
    assert_clean(app, backend)


async def test_completed_get_keeps_backend_connection_alive(app, backend, raw_bucket, seaweedfs):
    """A GET read to its end should hand its backend connection back for reuse, as a GET of
    a foreign (unencrypted) object does."""
    data = os.urandom(1_000_000)
    await trio.to_thread.run_sync(
        partial(seaweedfs.client().put_object, Bucket=raw_bucket, Key="foreign", Body=data)
    )
    with trio.fail_after(30):
        status, _, body = await get(app, raw_bucket, "foreign")
    assert (status, body) == (200, data)
    assert backend.pool_connections == 1  # kept alive
    with trio.fail_after(30):
        await put(app, raw_bucket, "encrypted", data)
        status, _, body = await get(app, raw_bucket, "encrypted")
    assert (status, body) == (200, data)
    assert_clean(app, backend)
    assert backend.pool_connections == 1, "the encrypted GET closed its backend connection"


@pytest.mark.parametrize("body_messages", [None, 0, 1, 12])
async def test_get_disconnect(app, backend, raw_bucket, large_object, body_messages):
    """None: before the status line; 0: after it, before the first body byte; 1: after the
    first body message; 12: mid-stream (768 KiB of 8 MiB read)."""
    key, data = large_object
    async with asgi_call(app, "GET", f"/{raw_bucket}/{key}") as call:
        await call.send_body(b"", more=False)
        received = b""
        if body_messages is not None:
            with trio.fail_after(30):
                start = await call.receive_frame()
                assert start["type"] == "http.response.start"
                assert start["status"] == 200
                for _ in range(body_messages):
                    frame = await call.receive_frame()
                    assert frame["more_body"]
                    received += frame["body"]
            assert received == data[: len(received)]
        call.disconnect()
        with trio.fail_after(5):
            await call.done.wait()
    # The disconnect cancelled the request: it did not go on streaming the rest into the void
    # (8 MiB is 128 body messages).
    assert call.sends_after_disconnect <= 4
    assert_clean(app, backend)
    await assert_still_works(app, backend, raw_bucket)


async def test_put_disconnect_mid_body_stores_nothing(app, backend, raw_bucket, seaweedfs):
    key = "cut-" + uuid.uuid4().hex[:8]
    data = os.urandom(LARGE)
    headers = [("content-length", str(len(data)))]
    async with asgi_call(
        app, "PUT", f"/{raw_bucket}/{key}", headers, payload_hash=sigv4.UNSIGNED_PAYLOAD
    ) as call:
        with trio.fail_after(30):
            for i in range(40):  # 2.5 MiB of 8 MiB
                await call.send_body(data[i * PIECE : (i + 1) * PIECE], more=True)
        call.disconnect()
        with trio.fail_after(5):
            await call.done.wait()
    assert_clean(app, backend)
    assert await head_backend(seaweedfs, raw_bucket, key) == 404
    await assert_still_works(app, backend, raw_bucket)
    assert await head_backend(seaweedfs, raw_bucket, key) == 404


async def test_put_disconnect_before_any_body_stores_nothing(app, backend, raw_bucket, seaweedfs):
    key = "empty-cut-" + uuid.uuid4().hex[:8]
    headers = [("content-length", str(LARGE))]
    async with asgi_call(
        app, "PUT", f"/{raw_bucket}/{key}", headers, payload_hash=sigv4.UNSIGNED_PAYLOAD
    ) as call:
        call.disconnect()
        with trio.fail_after(5):
            await call.done.wait()
    assert_clean(app, backend)
    assert await head_backend(seaweedfs, raw_bucket, key) == 404
    await assert_still_works(app, backend, raw_bucket)


@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_spent_budget_waits_then_slowdown(make_app, backend, raw_bucket, method):
    window = stream_window(64 * 1024)
    app = make_app(memory_budget=window, admission_timeout=0.5)
    status, _, _ = await put(app, raw_bucket, "small", b"x" * 1000)
    assert status == 200
    key = "small" if method == "GET" else "blocked"
    headers = [("content-length", "1000")] if method == "PUT" else []
    sign = {"payload_hash": sigv4.UNSIGNED_PAYLOAD} if method == "PUT" else {}
    async with app.budget.lease(window):
        started = trio.current_time()
        async with asgi_call(app, method, f"/{raw_bucket}/{key}", headers, **sign) as call:
            await call.send_body(b"x" * 1000 if method == "PUT" else b"", more=False)
            # Admission needs no backend I/O: the request is queued on the budget.
            await trio.testing.wait_all_tasks_blocked()
            assert app.budget.stats.waiting == 1
            with trio.fail_after(5):
                status, headers_out, body = await call.read_response()
        waited = trio.current_time() - started
        assert app.budget.in_use == window  # only the test's own lease
    assert status == 503
    assert b"<Code>SlowDown</Code>" in body
    assert headers_out.get("retry-after") == "1"
    assert waited >= 0.5
    assert app.budget.stats.rejected == 1
    assert_clean(app, backend)
    await assert_still_works(app, backend, raw_bucket)


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


async def test_socket_client_closes_mid_get(make_app, backend, raw_bucket):
    size = 48 * 1024 * 1024
    app = make_app()
    data = os.urandom(size)
    with trio.fail_after(120):
        status, _, _ = await put(app, raw_bucket, "huge", data)
    assert status == 200
    observed = Observed(app)
    settings = SimpleNamespace(listen="127.0.0.1:0", tls_cert=None, tls_key=None)
    with listening_socket(settings.listen, send_timeout=30) as sock:
        config = hypercorn_config(settings, sock)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn_serve, observed, config))
            port = int(binds[0].rsplit(":", 1)[1])
            host = f"127.0.0.1:{port}"
            headers = signed_headers("GET", f"/{raw_bucket}/huge", host=host)
            request = f"GET /{raw_bucket}/huge HTTP/1.1\r\n"
            request += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            got = b""
            with trio.fail_after(30):
                await stream.send_all(request.encode("latin-1"))
                while b"\r\n\r\n" not in got or len(got) < 256 * 1024:
                    chunk = await stream.receive_some(65536)
                    assert chunk, "the server closed first"
                    got += chunk
            head, _, first = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert first == data[: len(first)]
            await stream.aclose()
            with trio.fail_after(10):
                await observed.finished.wait()
            assert app.budget.in_use == 0
            assert busy_connections(backend) == []
            # The request was cut, not streamed to its end into the void.
            assert observed.body_bytes < size
            nursery.cancel_scope.cancel()
    await assert_still_works(app, backend, raw_bucket)
