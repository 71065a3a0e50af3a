"""The HTTP server: hypercorn's trio worker and protocol, and what trios3 adapts in them.

hypercorn parses HTTP and drives the ASGI app; this module is every place trios3 departs from
it, each for a reason hypercorn's own configuration cannot meet:

- :func:`listening_socket`: the listening socket carries ``TCP_USER_TIMEOUT``. hypercorn's
  sends are shielded from cancellation, so a client that stops reading would hold its
  response, and the memory lease behind it, for as long as it keeps the connection open.
- :func:`hypercorn_config`: HTTP/1.1 only (over TLS, Go clients would pick h2, whose flow
  control hypercorn keeps at 64 KiB per stream), no read timeout that cuts a long upload (the
  app has its own body timeout), small queues for request heads and bodies read before
  admission, no Server header, no hypercorn logs (trios3 writes one line per request).
- :func:`serve_connections`: hypercorn's worker loop (``hypercorn.trio.run.worker_serve``)
  with a connection cap: a connection past it waits in the listen backlog instead of being
  accepted, so idle or slow connections never pile up without bound.
- :func:`accept_retrying`: out of descriptors or memory (``EMFILE`` and kin), accepting waits
  and tries again, as ``trio.serve_listeners`` does, instead of ending the server.
- :class:`_Connection`: hypercorn's connection handler, ending as soon as its client has gone
  (hypercorn's idle timer would keep a closed connection, and its slot under the cap, for
  ``keep_alive_timeout``), and sending ``100 Continue`` with its reason phrase (h11 sends
  ``HTTP/1.1 100 \\r\\n``; the botocore inside aws cli v2, aws/aws-cli#9702, then never sends
  the body), giving a request head that has begun ``header_timeout`` seconds to be complete,
  and reading in the unit the request's lease allows into an h11 buffer that does not copy
  body bytes (:class:`_BodyBuffer`: hypercorn and h11 copy every uploaded byte four times).
- :class:`trios3.tls.TLSListener`: TLS that reads every record received at once.

tests/shell/test_server.py holds a test for each.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Callable
from contextlib import contextmanager

import trio
from h11._receivebuffer import ReceiveBuffer
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from trios3.body import READ_UNIT, ReadUnit
from trios3.config import Config
from trios3.tls import TLSListener

log = logging.getLogger("trios3")


@contextmanager
def listening_socket(listen: str, send_timeout: float):
    """The listening socket, made here so that it carries ``TCP_USER_TIMEOUT``.

    Hypercorn's sends are shielded from cancellation, so a client that stops reading would
    hold its response (and its budget lease) for as long as it keeps the connection open.
    With ``TCP_USER_TIMEOUT`` (inherited by accepted connections) the kernel drops a
    connection whose sent data stays unacknowledged that long; the send then fails and the
    request's scope ends as for any disconnect.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
        sock.bind((host, int(port)))
        sock.listen(1024)
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()


def hypercorn_config(
    config: Config, sock: socket.socket, shutdown_timeout: float | None = None
) -> HypercornConfig:
    """HTTP/1.1 only, no timeout that cuts a long stream, no body size cap, serving ``sock``
    (with ``config``'s certificate, if any). After SIGTERM, requests in flight get
    ``shutdown_timeout`` seconds (``None``: hypercorn's own graceful timeout)."""
    hc = HypercornConfig()
    # Hypercorn wraps the descriptor it is given and closes it when it stops: give it a
    # duplicate of its own, so that the socket's owner here can always close the original.
    hc.bind = [f"fd://{os.dup(sock.fileno())}"]
    # Go clients (restic, velero) would pick h2 over TLS, whose flow control hypercorn
    # keeps at 64 KiB per stream; S3 is served over HTTP/1.1.
    hc.alpn_protocols = ["http/1.1"]
    hc.keep_alive_timeout = 75
    hc.read_timeout = None
    # After SIGTERM: no new connections, and requests in flight get this long to finish
    # before they are cancelled (which releases all they hold).
    if shutdown_timeout is not None:
        hc.graceful_timeout = shutdown_timeout
    # Request line and headers: S3 allows 8 KiB of headers (2 KiB of user metadata); this is
    # what a connection that never finishes its headers can make the proxy hold.
    hc.h11_max_incomplete_size = 16 * 1024
    # Body messages hypercorn may queue for a request (64 KiB each) before TCP pushes back:
    # they are read before admission, so they sit outside the budget; keep them few.
    hc.max_app_queue_size = 2
    hc.include_server_header = False
    hc.accesslog = None
    hc.errorlog = None
    if config.tls_cert:
        hc.certfile = config.tls_cert
        hc.keyfile = config.tls_key
    return hc


def stop_listening(sock: socket.socket) -> None:
    """Refuse new connections on a listening socket (and reset those waiting in its backlog,
    not yet accepted) while it stays open: Linux's shutdown(SHUT_RD) on a listening socket."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already shut, or not a listening socket any more


# Out of descriptors or memory: wait and accept again, as trio.serve_listeners does.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class ListenerShutDown(Exception):
    """The listening socket no longer listens: shut down at SIGTERM, by this process or by a
    worker sharing it (trios3.workers) that got its SIGTERM first."""


async def accept_retrying(listener):
    """The next connection of ``listener``. Out of descriptors or memory, accepting again at
    once would fail again (and a raise would end the server): wait 100 ms, and retry. A
    socket shut down (EINVAL) is :class:`ListenerShutDown`: accepting is over, serving what
    was accepted is not."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise ListenerShutDown from None
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("cannot accept a connection (%s): retrying in 100 ms", exc.strerror)
            await trio.sleep(0.1)


class _BodyBuffer(ReceiveBuffer):
    """h11's receive buffer, without its copies of body bytes.

    h11 appends every read to a bytearray, copies a body's bytes out of it twice, and
    hypercorn copies them once more into bytes: four copies of every byte a client uploads,
    a third of a large PUT's CPU. This buffer keeps a read as the bytes it arrived as while
    nothing else is buffered, and hands it on whole when the body takes all of it, so the
    app gets the very object the socket read; it turns into h11's bytearray only when a
    head is parsed or a read holds more than the body.
    """

    def __iadd__(self, data):
        if not self._data and type(data) is bytes:
            self._data = data  # type: ignore[assignment]
            return self
        self._mutable()
        self._data += data
        return self

    def _mutable(self) -> None:
        if type(self._data) is bytes:
            self._data = bytearray(self._data)

    def maybe_extract_at_most(self, count: int):
        data = self._data
        if not data:
            return None
        if count >= len(data):
            self._data = bytearray()
            self._next_line_search = 0
            self._multiple_lines_search = 0
            return data
        self._mutable()
        return super().maybe_extract_at_most(count)

    def maybe_extract_next_line(self):
        self._mutable()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self):
        self._mutable()
        return super().maybe_extract_lines()


def use_body_buffer(protocol) -> bool:
    """Give the h11 connection behind hypercorn's ``protocol`` a :class:`_BodyBuffer`
    (before it has received anything); False if hypercorn or h11 no longer look as expected,
    which only costs the copies again (tests/shell/test_server.py notices)."""
    connection = getattr(getattr(protocol, "protocol", None), "connection", None)
    current = getattr(connection, "_receive_buffer", None)
    if type(current) is not ReceiveBuffer or current:
        return False
    connection._receive_buffer = _BodyBuffer()  # type: ignore[union-attr]
    return True


class _Connection(TCPServer):
    """Hypercorn's connection handler, with these repairs.

    - It ends as soon as the client has gone: hypercorn's idle timer would otherwise keep a
      closed connection (and its slot) for ``keep_alive_timeout``.
    - A request head, once begun, must be complete within ``header_timeout``: a client that
      never finishes its headers would otherwise hold its connection slot for as long as it
      trickles them (hypercorn has no such timeout; its read timeout would cut bodies too).
    - It reads in the unit the current request's lease allows (:class:`trios3.body.ReadUnit`),
      into an h11 buffer that does not copy body bytes (:class:`_BodyBuffer`).
    - Its ``100 Continue`` carries the reason phrase: h11 sends ``HTTP/1.1 100 \\r\\n``, and the
      botocore inside aws cli v2 (aws/aws-cli#9702) wants three words in that line, or it
      never sends the body. Only the bytes before a request's response head are looked at,
      never a body.
    """

    _before_head = True  # no response head sent yet for the current request

    def __init__(self, app, config, context, state, stream, header_timeout: float = math.inf):
        super().__init__(app, config, context, state, stream)
        self.read_unit = ReadUnit()
        state[READ_UNIT] = self.read_unit  # each request's scope state is a copy of this
        self._header_timeout = header_timeout
        self._awaiting_head = True  # no request in progress: the next bytes begin a head
        self._head_deadline = math.inf

    async def _read_data(self) -> None:
        """hypercorn's read loop, reading in the unit the current request may hold (64 KiB
        until a request's lease says more), over TLS as much as over plain TCP, into an h11
        buffer that does not copy body bytes."""
        use_body_buffer(self.protocol)
        while True:
            try:
                with trio.move_on_at(self._head_deadline) as waited:
                    data = await self.stream.receive_some(self.read_unit.size)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if waited.cancelled_caught:
                break  # a head begun and not finished in time: the connection ends
            if data and self._awaiting_head and self._head_deadline == math.inf:
                self._head_deadline = trio.current_time() + self._header_timeout
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
        await self.protocol.handle(Closed())
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            # A request head is in (not idle), or its response is over (idle) and the next
            # head, once its first byte comes, has header_timeout seconds to be complete.
            self._awaiting_head = event.idle
            self._head_deadline = math.inf
        if isinstance(event, Updated) and not event.idle:
            self._before_head = True  # a request has come in
        elif isinstance(event, RawData) and self._before_head:
            if event.data.startswith(_BARE_CONTINUE):
                rest = event.data[len(_BARE_CONTINUE) :]
                event = RawData(b"HTTP/1.1 100 Continue\r\n" + rest, event.address)
            elif event.data.startswith(b"HTTP/1.1 "):
                self._before_head = False
        await super().protocol_send(event)


_BARE_CONTINUE = b"HTTP/1.1 100 \r\n"


async def serve_connections(
    app,
    hc: HypercornConfig,
    max_connections: int,
    *,
    shutdown_trigger,
    header_timeout: float = math.inf,
    on_shutdown: Callable[[], None] = lambda: None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's trio worker loop (``hypercorn.trio.run.worker_serve``) with one change:
    at most ``max_connections`` connections at once. A connection past the cap is not
    accepted until one ends: it waits in the kernel's listen backlog (its client sees a
    request that takes long, not an error), so idle or slow connections never pile up
    without bound. An idle keep-alive connection holds its place until it closes or times
    out (``keep_alive_timeout``). Shutdown is hypercorn's: stop accepting, give requests in flight
    ``graceful_timeout`` seconds, then cancel them. ``task_status`` gets the bound URLs.
    """
    asgi = wrap_app(app, hc.wsgi_max_body_size, None)
    lifespan_state: dict = {}
    lifespan = Lifespan(asgi, hc, lifespan_state)
    context = WorkerContext(None)
    slots = trio.CapacityLimiter(max_connections)

    async def connection(stream, slot: object) -> None:
        try:
            state = ConnectionState(lifespan_state.copy())
            await _Connection(asgi, hc, context, state, stream, header_timeout)
        finally:
            # As trio.serve_listeners does: a handler may return without closing (a failed
            # TLS handshake does).
            await trio.aclose_forcefully(stream)
            slots.release_on_behalf_of(slot)

    async def accept_loop(listener, connections) -> None:
        async with listener:
            while True:
                slot = object()
                await slots.acquire_on_behalf_of(slot)
                try:
                    stream = await accept_retrying(listener)
                except ListenerShutDown:
                    slots.release_on_behalf_of(slot)
                    return
                except BaseException:
                    slots.release_on_behalf_of(slot)
                    raise
                connections.start_soon(connection, stream, slot)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = hc.create_sockets()
            listeners = []
            binds = []
            ssl_context = hc.create_ssl_context()
            for sock in sockets.insecure_sockets + sockets.secure_sockets:
                sock.listen(hc.backlog)
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                scheme = "http"
                if ssl_context is not None:
                    listener = TLSListener(listener, ssl_context)
                    scheme = "https"
                listeners.append(listener)
                binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(accept_loop, listener, connections)
                    await shutdown_trigger()
                    # Refuse new connections from this moment (load balancers and clients go
                    # elsewhere at once), not only stop accepting them: a socket that still
                    # listens completes their handshakes into its backlog, where they hang
                    # until the process exits. Shared by workers, it stops for all of them.
                    on_shutdown()
                    # Accepting ends first: an accept woken by the shut socket would fail.
                    accepting.cancel_scope.cancel()
                    for sock in sockets.insecure_sockets + sockets.secure_sockets:
                        stop_listening(sock)
            finally:
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
