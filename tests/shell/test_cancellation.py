"""Client disconnects and a spent budget, driven through the real ASGI app and a real backend.

The app is built in-process in front of the session's SeaweedFS, and each request is played
by :class:`inprocess.AsgiCall` as hypercorn would (a bounded request queue, an unbuffered
response channel, sends that vanish once the client is gone). One test goes through hypercorn
and a real socket. The backend is real, so these tests use the real clock under
``trio.fail_after``.
"""

from __future__ import annotations

import os
import uuid
from functools import partial

import pytest
import trio
import trio.testing
from inprocess import (
    PIECE,
    Observed,
    busy_connections,
    feed,
    open_call,
    raw_request,
    served,
)

from harness import scratch_bucket
from trios3.app import S3Proxy
from trios3.backend import Backend
from trios3.core import sigv4
from trios3.ops.streaming import UNITS, read_cost

pytestmark = pytest.mark.integration

LARGE = 8 * 1024 * 1024
asgi_call = partial(open_call, returns_within=30)


# -- helpers ----------------------------------------------------------------------------------


def assert_clean(app: S3Proxy, backend: Backend) -> None:
    """Nothing the finished requests held is still held."""
    assert app.budget.in_use == 0
    assert app.budget.stats.waiting == 0
    assert busy_connections(backend) == []
    assert backend.waiting_requests == 0


async def put(app, bucket: str, key: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    path = f"/{bucket}/{key}"
    headers = [("content-length", str(len(data)))]
    async with (
        asgi_call(app, "PUT", path, headers, payload_hash=sigv4.UNSIGNED_PAYLOAD) as call,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(feed, call, data, None)
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
def app(make_app) -> S3Proxy:
    return make_app()


@pytest.fixture
def raw_bucket(seaweedfs):
    """A fresh bucket made straight at SeaweedFS; emptied and removed afterwards."""
    yield from scratch_bucket(seaweedfs, "shell")


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
    window = read_cost(64 * 1024)(UNITS[-1])
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


async def test_socket_client_closes_mid_get(make_app, backend, raw_bucket):
    size = 48 * 1024 * 1024
    app = make_app()
    data = os.urandom(size)
    with trio.fail_after(120):
        status, _, _ = await put(app, raw_bucket, "huge", data)
    assert status == 200
    observed = Observed(app)
    async with served(observed, send_timeout=30) as port:
        request = raw_request("GET", f"/{raw_bucket}/huge", port)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        got = b""
        with trio.fail_after(30):
            await stream.send_all(request)
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
    await assert_still_works(app, backend, raw_bucket)
