"""The hypercorn adaptations of trios3.server, one test for each repair: a trivial raw ASGI app
served by ``serve_connections`` on 127.0.0.1 port 0, driven over real sockets."""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace

import h11
import pytest
import trio
import trio.testing

from trios3.body import READ_UNIT, ReadUnit
from trios3.config import Config
from trios3.server import (
    ListenerShutDown,
    accept_retrying,
    hypercorn_config,
    listening_socket,
    serve_connections,
    use_body_buffer,
)

# hypercorn's idle timer keeps a connection this long; every wait below is far shorter.
KEEP_ALIVE = 75
WAIT = 10

# A response body that begins as h11's bare ``100 Continue`` line does.
LOOKALIKE = b"HTTP/1.1 100 \r\n\r\n"


class App:
    """A raw ASGI app: reads the request body, then answers 200 with ``ok:<body>`` (for
    ``/lookalike``, with LOOKALIKE). A request for ``/hold`` waits for ``release`` first.
    Each request's path goes to ``arrived`` once its body is read."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self._arrivals, self.arrived = trio.open_memory_channel[str](math.inf)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self._arrivals.send_nowait(scope["path"])
        if scope["path"] == "/hold":
            await self.release.wait()
        payload = LOOKALIKE if scope["path"] == "/lookalike" else b"ok:" + body
        headers = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def serving(app, *, max_connections: int = 16, config: Config | None = None):
    """``app`` served by serve_connections as trios3 serves; yields the port."""
    config = config or Config(listen="127.0.0.1:0")
    with listening_socket(config.listen, config.send_timeout) as sock:
        hc = hypercorn_config(config, sock, config.shutdown_timeout)
        assert hc.keep_alive_timeout == KEEP_ALIVE
        async with trio.open_nursery() as nursery:
            serve = partial(serve_connections, shutdown_trigger=trio.sleep_forever)
            binds = await nursery.start(serve, app, hc, max_connections)
            yield int(binds[0].rsplit(":", 1)[1])
            nursery.cancel_scope.cancel()
        # hypercorn closed its duplicate of the socket, never the original.
        assert sock.getsockname()[1] > 0


def request(path: str, body: bytes = b"", *, expect: bool = False) -> bytes:
    head = f"PUT {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n"
    if expect:
        return (head + "expect: 100-continue\r\n\r\n").encode()
    return (head + "\r\n").encode() + body


async def read_head(stream, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """(one message head, the bytes received after it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, "the server closed the connection"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


async def read_response(stream, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """(the response head, its body)."""
    head, body = await read_head(stream, buffer)
    lines = head.split(b"\r\n")
    length = next(
        int(v) for n, _, v in (x.partition(b":") for x in lines) if n == b"content-length"
    )
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return head, body


def status_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


async def test_100_continue_carries_its_reason_phrase():
    """aws cli v2's botocore never sends the body after h11's bare ``HTTP/1.1 100``."""
    async with serving(App()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(WAIT):
            await stream.send_all(request("/upload", b"hello", expect=True))
            head, rest = await read_head(stream)
            assert status_line(head) == b"HTTP/1.1 100 Continue"
            await stream.send_all(b"hello")
            head, body = await read_response(stream, rest)
        assert status_line(head).startswith(b"HTTP/1.1 200")
        assert body == b"ok:hello"
        await stream.aclose()


async def test_a_response_body_that_looks_like_a_bare_continue_is_sent_unchanged():
    async with serving(App()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(WAIT):
            await stream.send_all(request("/lookalike"))
            head, body = await read_response(stream)
        assert status_line(head).startswith(b"HTTP/1.1 200")
        assert body == LOOKALIKE
        await stream.aclose()


@pytest.mark.parametrize("when", ["after a response", "before any request"])
async def test_a_connection_whose_client_closed_frees_its_slot_at_once(when):
    """Not after keep_alive_timeout: with one slot, the next client is served at once."""
    app = App()
    async with serving(app, max_connections=1) as port:
        with trio.fail_after(WAIT):
            first = await trio.open_tcp_stream("127.0.0.1", port)
            if when == "after a response":
                await first.send_all(request("/first"))
                await read_response(first)
                # Until the server's side is idle: its keep-alive timer running.
                await trio.testing.wait_all_tasks_blocked()
            await first.aclose()
            second = await trio.open_tcp_stream("127.0.0.1", port)
            await second.send_all(request("/second", b"2"))
            head, body = await read_response(second)
        assert status_line(head).startswith(b"HTTP/1.1 200")
        assert body == b"ok:2"
        await second.aclose()


async def test_a_connection_past_the_cap_is_accepted_only_when_one_ends():
    app = App()
    async with serving(app, max_connections=2) as port:
        with trio.fail_after(WAIT):
            held = []
            for _ in range(2):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(request("/hold"))
                assert await app.arrived.receive() == "/hold"
                held.append(stream)
            third = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel's backlog
            await third.send_all(request("/third", b"3"))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                app.arrived.receive_nowait()  # not accepted, so not read
            app.release.set()
            await read_response(held[0])
            await held[0].aclose()  # one ends: the third is accepted
            _, body = await read_response(third)
            assert await app.arrived.receive() == "/third"
            await read_response(held[1])
        assert body == b"ok:3"
        for stream in (held[1], third):
            await stream.aclose()


class FlakyListener:
    """A listener whose accept raises each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: OSError) -> None:
        self.errors = list(errors)
        self.accepts = 0
        self.stream = object()

    async def accept(self):
        self.accepts += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.stream


async def test_accept_waits_and_retries_when_out_of_descriptors(autojump_clock, caplog):
    listener = FlakyListener(OSError(errno.EMFILE, "Too many open files"))
    began = trio.current_time()
    assert await accept_retrying(listener) is listener.stream
    assert listener.accepts == 2
    assert trio.current_time() - began >= 0.1  # it waited instead of spinning
    assert "cannot accept a connection (Too many open files)" in caplog.text


async def test_accept_raises_any_other_error():
    listener = FlakyListener(OSError(errno.EBADF, "Bad file descriptor"))
    with pytest.raises(OSError) as raised:
        await accept_retrying(listener)
    assert raised.value.errno == errno.EBADF


async def test_a_listening_socket_shut_by_a_sibling_ends_accepting_not_serving():
    """With --workers, the worker that gets SIGTERM first shuts the shared socket; the
    others' accepts then fail with EINVAL, which must end their accepting, not the worker
    (and its streams in flight)."""
    listener = FlakyListener(OSError(errno.EINVAL, "Invalid argument"))
    with pytest.raises(ListenerShutDown):
        await accept_retrying(listener)


async def test_a_sibling_shutting_the_socket_leaves_streams_in_flight_alone():
    app = App()
    config = Config(listen="127.0.0.1:0")
    with listening_socket(config.listen, config.send_timeout) as sock:
        hc = hypercorn_config(config, sock, config.shutdown_timeout)
        async with trio.open_nursery() as nursery:
            serve = partial(serve_connections, shutdown_trigger=trio.sleep_forever)
            binds = await nursery.start(serve, app, hc, 16)
            port = int(binds[0].rsplit(":", 1)[1])
            held = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(WAIT):
                await held.send_all(request("/hold"))
                assert await app.arrived.receive() == "/hold"
                sock.shutdown(socket.SHUT_RD)  # what another worker's SIGTERM does
                await trio.testing.wait_all_tasks_blocked()
                app.release.set()
                head, body = await read_response(held)
            assert status_line(head).startswith(b"HTTP/1.1 200") and body == b"ok:"
            await held.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_the_listening_socket_and_its_connections_carry_tcp_user_timeout(listen):
    """A client that stops reading is dropped by the kernel after ``send_timeout``."""
    if ":" in listen.rpartition(":")[0] and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with listening_socket(listen, send_timeout=2.5) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        with socket.create_connection(sock.getsockname()[:2]):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500


def test_hypercorn_config_has_no_timeout_that_cuts_a_stream():
    with listening_socket("127.0.0.1:0", send_timeout=30) as sock:
        hc = hypercorn_config(Config(), sock, shutdown_timeout=12.5)
        duplicate = int(hc.bind[0].removeprefix("fd://"))
        try:
            assert duplicate != sock.fileno()  # hypercorn closes the one it is given
            assert hc.alpn_protocols == ["http/1.1"]
            assert hc.read_timeout is None  # a pausing upload is the app's body timeout's
            assert hc.keep_alive_timeout == KEEP_ALIVE  # idle connections only
            assert hc.graceful_timeout == 12.5
            assert hc.h11_max_incomplete_size == 16 * 1024
            assert hc.max_app_queue_size == 2
            assert hc.include_server_header is False
            assert hc.accesslog is None and hc.errorlog is None
            assert hc.certfile is None and hc.keyfile is None
        finally:
            os.close(duplicate)


async def test_over_tls_http_1_1_is_chosen_even_when_the_client_prefers_h2(tmp_path):
    """Go clients would pick h2, whose flow control hypercorn keeps at 64 KiB per stream."""
    from harness import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    config = Config(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
    async with serving(App(), config=config) as port:
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2", "http/1.1"])
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
        with trio.fail_after(WAIT):
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == "http/1.1"
            await stream.send_all(request("/tls", b"s"))
            head, body = await read_response(stream)
        assert status_line(head).startswith(b"HTTP/1.1 200")
        assert body == b"ok:s"
        await stream.aclose()


# -- reads in the unit a request's lease allows -------------------------------------------------


class Sizes:
    """A raw ASGI app that records the size of every body message it is handed; a request to
    ``/large`` first raises its connection's read unit to 1 MiB, as an admitted PUT does."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await App()(scope, receive, send)
            return
        if scope["path"] == "/large":
            scope["state"][READ_UNIT].size = 1024 * 1024
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            self.sizes.append(len(message.get("body", b"")))
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        payload = str(total).encode()
        headers = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def upload(port: int, path: str, body: bytes, *, tls_context=None) -> bytes:
    """``body`` PUT at once (it waits in the socket buffers, so reads come as full as the
    server asks); the response body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls_context is not None:
        stream = trio.SSLStream(stream, tls_context, server_hostname="127.0.0.1")
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, request(path, body))
            _, answer = await read_response(stream)
    await stream.aclose()
    return answer


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_request_reads_its_body_in_the_unit_its_lease_allows(tmp_path, tls):
    """64 KiB reads until a request says more (what is read before admission is outside every
    lease); then reads of up to 1 MiB, over TLS too (trios3.tls joins its 16 KiB records)."""
    client_tls = None
    config = Config(listen="127.0.0.1:0")
    if tls:
        from harness import self_signed_cert

        cert, key = self_signed_cert(tmp_path)
        config = Config(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
        client_tls = ssl.create_default_context(cafile=str(cert))
    app = Sizes()
    body = os.urandom(8 * 1024 * 1024)
    async with serving(app, config=config) as port:
        assert await upload(port, "/small", body, tls_context=client_tls) == b"8388608"
        assert max(app.sizes) <= ReadUnit.DEFAULT
        app.sizes.clear()
        assert await upload(port, "/large", body, tls_context=client_tls) == b"8388608"
    assert max(app.sizes) <= 1024 * 1024
    assert max(app.sizes) > 4 * ReadUnit.DEFAULT


def h11_server() -> h11.Connection:
    """An h11 server connection with the body buffer, as hypercorn's protocol holds one."""
    connection = h11.Connection(h11.SERVER)
    protocol = SimpleNamespace(protocol=SimpleNamespace(connection=connection))
    assert use_body_buffer(protocol)
    assert not use_body_buffer(protocol)  # only once, and only while nothing is buffered
    return connection


def events(connection: h11.Connection) -> list:
    out = []
    while True:
        event = connection.next_event()
        if event in (h11.NEED_DATA, h11.PAUSED):
            return out
        out.append(event)


def test_body_bytes_reach_the_app_as_the_very_objects_read():
    connection = h11_server()
    connection.receive_data(b"PUT /k HTTP/1.1\r\nhost: t\r\ncontent-length: 200000\r\n\r\n")
    (head,) = events(connection)
    assert isinstance(head, h11.Request) and head.target == b"/k"
    pieces = [os.urandom(100000), os.urandom(60000), os.urandom(40000)]
    got = []
    for piece in pieces:
        connection.receive_data(piece)
        got += events(connection)
    data = [e.data for e in got if isinstance(e, h11.Data)]
    assert all(a is b for a, b in zip(data, pieces, strict=True))  # not copied
    assert isinstance(got[-1], h11.EndOfMessage)


def test_the_body_buffer_parses_what_h11_parses():
    """Heads, a body that ends inside a read with the next request after it (pipelined),
    chunked bodies and bytes fed one at a time: the same events as h11's own buffer."""
    stream = (
        b"PUT /a HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n"
        b"host: t\r\n\r\n"
    )
    chunked = (
        b"PUT /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )

    def run(connection: h11.Connection, data: bytes, split: int) -> list:
        seen = []
        for i in range(0, len(data), split):
            connection.receive_data(data[i : i + split])
            for event in events(connection):
                seen.append((type(event).__name__, bytes(getattr(event, "data", b""))))
                if isinstance(event, h11.EndOfMessage):
                    connection.send(
                        h11.Response(status_code=200, headers=[("content-length", "0")])
                    )
                    connection.send(h11.EndOfMessage())
                    connection.start_next_cycle()
        return seen

    for data in (stream, chunked):
        for split in (1, 7, len(data)):
            assert run(h11_server(), data, split) == run(h11.Connection(h11.SERVER), data, split)


async def test_a_request_head_not_finished_in_time_ends_its_connection():
    """A client that begins a head and trickles it (or stops) holds its slot only for
    header_timeout; a connection that sends nothing at all is idle, kept (keep-alive)."""
    app = App()
    config = Config(listen="127.0.0.1:0")
    with listening_socket(config.listen, config.send_timeout) as sock:
        hc = hypercorn_config(config, sock, config.shutdown_timeout)
        async with trio.open_nursery() as nursery:
            serve = partial(
                serve_connections, shutdown_trigger=trio.sleep_forever, header_timeout=0.5
            )
            binds = await nursery.start(serve, app, hc, 16)
            port = int(binds[0].rsplit(":", 1)[1])
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            slow = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(WAIT):
                await slow.send_all(b"PUT /trickle HTTP/1.1\r\nhost: t\r\n")
                started = trio.current_time()
                assert await slow.receive_some(1024) == b""  # closed by the server
                waited = trio.current_time() - started
            assert 0.4 <= waited < 5
            # The idle one is still served (its first byte starts its own head's clock).
            with trio.fail_after(WAIT):
                await idle.send_all(request("/ok", b"x"))
                head, body = await read_response(idle)
            assert status_line(head).startswith(b"HTTP/1.1 200") and body == b"ok:x"
            await idle.aclose()
            await slow.aclose()
            nursery.cancel_scope.cancel()


async def test_shutdown_refuses_new_connections_at_once_and_says_so_first():
    """on_shutdown runs first (the app's readiness goes false), then the shared listening
    socket refuses connections while connections already accepted are served to their end."""
    app = App()
    told = []
    stop = trio.Event()
    config = Config(listen="127.0.0.1:0")
    with listening_socket(config.listen, config.send_timeout) as sock:
        hc = hypercorn_config(config, sock, config.shutdown_timeout)
        async with trio.open_nursery() as nursery:
            serve = partial(
                serve_connections, shutdown_trigger=stop.wait, on_shutdown=lambda: told.append(1)
            )
            binds = await nursery.start(serve, app, hc, 16)
            port = int(binds[0].rsplit(":", 1)[1])
            held = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(WAIT):
                await held.send_all(request("/hold"))
                assert await app.arrived.receive() == "/hold"
                stop.set()
                await trio.testing.wait_all_tasks_blocked()
                assert told == [1]
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", port)
                app.release.set()
                head, body = await read_response(held)
            assert status_line(head).startswith(b"HTTP/1.1 200") and body == b"ok:"
            await held.aclose()
