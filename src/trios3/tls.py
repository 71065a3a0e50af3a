"""TLS over trio streams at the cost of its cryptography, for both sides of the proxy.

trio's SSLStream hands out one TLS record (at most 16 KiB) per ``receive_some`` whatever is
asked for, and each of those calls goes through its general state machine (conflict
detectors, locks, a checkpoint, a refill read sized by its estimate): a megabyte received is
sixty-four trips through it, which cost more than the decryption itself. :class:`TLSStream`
is the same OpenSSL object over memory BIOs with a narrower contract: a receive decrypts every
record already received, up to the size asked for, and refills in reads of that size; a send
encrypts all it is given at once. It supports what hypercorn and the backend client do with a
stream: one task receiving while another sends, a handshake with ALPN, an EOF without
close_notify taken as the end (as HTTPS allows), and no renegotiation (TLS 1.3 has none; a
peer asking for one breaks the stream).
"""

from __future__ import annotations

import ssl

import trio

_REFILL = 64 * 1024  # the least one read of the transport asks for


class TLSStream(trio.abc.Stream):
    """TLS on ``transport_stream``; ``server_side`` for the proxy's listener, else a client of
    ``server_hostname``."""

    def __init__(
        self,
        transport_stream: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._handshake_lock = trio.Lock()
        self._handshook = False
        self._broken = False
        self._eof = False

    # -- the handshake ----------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the TLS handshake (once; later calls return at once)."""
        async with self._handshake_lock:
            while not self._handshook:
                self._check()
                try:
                    self._ssl.do_handshake()
                    self._handshook = True
                except ssl.SSLWantReadError:
                    await self._flush()
                    if not await self._refill(_REFILL):
                        self._broken = True
                        raise trio.BrokenResourceError(
                            "the peer left during the handshake"
                        ) from None
                except ssl.SSLError as exc:
                    self._broken = True
                    raise trio.BrokenResourceError(exc) from exc
            await self._flush()  # the last flight (and a TLS 1.3 server's session tickets)

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    # -- receiving --------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext, waiting only while none is to hand: every record
        already received is decrypted and joined; b"" at the end of the stream."""
        size = max_bytes or _REFILL
        if not self._handshook:
            await self.do_handshake()
        async with self._receive_lock:
            pieces: list[bytes] = []
            got = 0
            while got < size:
                self._check()
                try:
                    data = self._ssl.read(size - got)
                except ssl.SSLWantReadError:
                    if pieces or self._eof:
                        break
                    await self._flush()  # anything reading produced (a key update's answer)
                    await self._refill(size)
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self._eof = True  # close_notify, or an EOF without it (HTTPS allows)
                    break
                except ssl.SSLError as exc:
                    self._broken = True
                    raise trio.BrokenResourceError(exc) from exc
                if not data:
                    self._eof = True
                    break
                pieces.append(data)
                got += len(data)
            if not pieces:
                await trio.lowlevel.checkpoint()
                return b""
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _refill(self, size: int) -> bool:
        """One read of the transport into the incoming BIO; False at its end."""
        data = await self.transport_stream.receive_some(max(size, _REFILL))
        if not data:
            self._incoming.write_eof()
            self._eof = True
            return False
        self._incoming.write(data)
        return True

    # -- sending ----------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt all of ``data`` and send it. Cancelled midway, the stream is broken (as
        trio's SSLStream: a record may be half sent)."""
        if not self._handshook:
            await self.do_handshake()
        self._check()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:  # SSLWantReadError: a renegotiation, not supported
            self._broken = True
            raise trio.BrokenResourceError(exc) from exc
        await self._flush()

    async def _flush(self) -> None:
        """Send whatever the TLS object has written to the outgoing BIO, in order."""
        async with self._send_lock:
            if not self._outgoing.pending:
                return
            data = self._outgoing.read()
            try:
                await self.transport_stream.send_all(data)
            except BaseException:
                self._broken = True
                raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # -- closing ----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("the TLS stream is broken")

    async def aclose(self) -> None:
        """Send close_notify if the stream is whole (briefly: a peer that stopped reading
        cannot hold the close up), then close the transport."""
        if self._handshook and not self._broken:
            with trio.move_on_after(1):
                try:
                    self._ssl.unwrap()
                except ssl.SSLError:
                    pass  # the peer's close_notify has not come: ours is written all the same
                try:
                    await self._flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        self._broken = True
        await self.transport_stream.aclose()


class TLSListener(trio.abc.Listener[TLSStream]):
    """Accepts connections of ``transport_listener`` as server-side :class:`TLSStream`
    (the handshake is the connection handler's, as with trio's SSLListener)."""

    def __init__(self, transport_listener: trio.SocketListener, context: ssl.SSLContext) -> None:
        self.transport_listener = transport_listener
        self._context = context

    async def accept(self) -> TLSStream:
        transport = await self.transport_listener.accept()
        return TLSStream(transport, self._context, server_side=True)

    async def aclose(self) -> None:
        await self.transport_listener.aclose()


def holds_received_bytes(stream: trio.abc.Stream) -> bool:
    """Whether a TLS stream holds bytes it took off its socket but has not handed on: an idle
    connection that does was sent something it was not asked for."""
    if not isinstance(stream, TLSStream):
        return False
    return bool(stream._ssl.pending() or stream._incoming.pending)
