"""The client's request body: read only as fast as it is consumed, decoded and verified.

Hypercorn hands a raw ASGI app one bounded queue of body messages per request; reading them
through :class:`ClientChannel` keeps TCP backpressure intact (Quart's ``request.body`` does
not). The same channel watches for ``http.disconnect`` for the request's whole life and
cancels the request's scope when it comes, because hypercorn itself never cancels a raw ASGI
app whose client went away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import trio

from trios3.core.checksums import PayloadChecks
from trios3.core.chunked import AwsChunkedDecoder, ChunkSigning, EndOfBody, NeedData
from trios3.core.errors import S3Error
from trios3.core.numbers import parse_decimal
from trios3.core.sigv4 import STREAMING_MODES, RequestAuth

MAX_SINGLE_PUT = 5 * 1024**3


class ClientDisconnected(Exception):
    """The client closed the connection before its body ended."""


# The key of a connection's ReadUnit in the ASGI scope's state (trios3.server puts it there).
READ_UNIT = "trios3.read_unit"


class ReadUnit:
    """How much one read of a client's connection takes in.

    Until a request is admitted, what the server reads of its body sits outside every lease,
    so reads are small (:attr:`DEFAULT`); a request whose lease covers larger reads raises
    it for its own body (:meth:`ClientChannel.read_in`), and it drops back when the request
    ends. One per connection: HTTP/1.1 serves one request at a time on it.
    """

    DEFAULT = 64 * 1024
    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = self.DEFAULT


class ClientChannel:
    """Owns the ASGI ``receive`` callable for one request.

    ``run`` is a task in the request's nursery. It hands body messages over one at a time,
    with no buffer of its own (a message waits here only while the request is not reading),
    so hypercorn's small queue fills and TCP pushes back on the client. After the body, or
    once the request has said it will read no more (:meth:`stop_reading`), it keeps
    listening and discards, so that a disconnect cancels ``scope`` at once, whatever the
    request is awaiting, and hypercorn is never left blocked on a full queue.
    """

    def __init__(
        self,
        receive,
        scope: trio.CancelScope,
        body_timeout: float,
        read_unit: ReadUnit | None = None,
        min_rate: float = 0.0,
    ) -> None:
        self._receive = receive
        self._scope = scope
        self._body_timeout = body_timeout
        self._min_rate = min_rate
        self._read_unit = read_unit
        self._send, self._recv = trio.open_memory_channel[bytes](0)
        self.disconnected = False
        self.received = 0  # body bytes that came in, read or discarded

    async def run(self) -> None:
        body_open = True
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "http.disconnect":
                self.disconnected = True
                self._scope.cancel()
                return
            if kind != "http.request" or not body_open:
                continue
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if chunk:
                try:
                    await self._send.send(chunk)
                except trio.BrokenResourceError:
                    pass  # the request stopped reading: what hypercorn still holds is dropped
            if not message.get("more_body", False):
                body_open = False
                self._send.close()

    def read_in(self, size: int) -> None:
        """Let the connection read this request's body ``size`` bytes at a time (what its
        lease covers); :meth:`done` puts it back."""
        if self._read_unit is not None:
            self._read_unit.size = max(ReadUnit.DEFAULT, size)

    def done(self) -> None:
        """The request is over: the connection's reads are small again."""
        if self._read_unit is not None:
            self._read_unit.size = ReadUnit.DEFAULT

    def stop_reading(self) -> None:
        """The request reads no more of its body: from now on it is drained and dropped.

        Called before the last response message. When a response ends before its request
        body was read (an error, a 503), hypercorn closes the connection and must be able to
        hand this request its disconnect, which it cannot while its queue is full.
        """
        self.done()
        self._recv.close()

    async def discard(self, limit: int) -> None:
        """Read and drop what is left of a small body before an early error response.

        A response that ends while request bytes sit unread makes hypercorn close the
        connection, and the kernel then resets it: the client may lose the error response
        it was about to read (over TLS it sees an EOF). Past ``limit`` bytes the rest is left
        to that close; the caller bounds the time.
        """
        left = limit
        while left > 0:
            try:
                left -= len(await self._recv.receive())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw body bytes as they arrive; ends at the end of the body.

        A client that stops sending for ``body_timeout`` seconds gets ``RequestTimeout``, and
        so does one that keeps sending, but slower on average than ``min_rate`` bytes a
        second once ``body_timeout`` seconds have passed: a trickling upload (a byte a second
        restarts any pause timer) must not hold its budget lease and request slot forever.
        """
        started = trio.current_time()
        received = 0
        while True:
            deadline = trio.current_time() + self._body_timeout
            if self._min_rate:
                # The moment the average since the start would fall below the floor.
                deadline = min(deadline, started + self._body_timeout + received / self._min_rate)
            try:
                with trio.fail_at(deadline):
                    chunk = await self._recv.receive()
            except trio.TooSlowError:
                raise S3Error("RequestTimeout") from None
            except trio.EndOfChannel:
                return
            received += len(chunk)
            yield chunk


def plaintext_length(headers: Mapping[str, str], content_sha256: str | None) -> int:
    """The number of payload bytes the client declared: S3 requires one for every upload.

    ASCII digits only, read in bounded time (trios3.core.numbers): ``"²"`` is no number, and
    a length of thousands of digits is EntityTooLarge, as any length over 5 GiB.
    """

    if content_sha256 in STREAMING_MODES:
        declared = headers.get("x-amz-decoded-content-length")
    else:
        declared = headers.get("content-length")
    if declared is None:
        raise S3Error("MissingContentLength")
    length = parse_decimal(declared)
    if length is None:
        raise S3Error("InvalidArgument", "The declared content length is not a number.")
    if length > MAX_SINGLE_PUT:
        raise S3Error(
            "EntityTooLarge",
            fields={"ProposedSize": declared, "MaxSizeAllowed": str(MAX_SINGLE_PUT)},
        )
    return length


class RequestBody:
    """The verified plaintext payload of one request.

    ``chunks()`` yields plaintext as it arrives. Signed chunk signatures are checked at the
    end of each chunk, and the length and every checksum the client asserted only at the end:
    a consumer must treat nothing as committed until ``chunks()`` has finished without error
    (the object path holds back the final encrypted segment until then).
    """

    def __init__(
        self,
        channel: ClientChannel,
        headers: Mapping[str, str],
        auth: RequestAuth,
        signing_key: bytes,
    ) -> None:
        self._channel = channel
        self.length = plaintext_length(headers, auth.payload_hash)
        self.checks = PayloadChecks.from_headers(headers)
        mode = auth.payload_hash
        self._decoder: AwsChunkedDecoder | None = None
        if mode in STREAMING_MODES:
            signing = None
            if mode.startswith("STREAMING-AWS4-HMAC-SHA256"):
                signing = ChunkSigning(signing_key, auth.amz_date, auth.scope, auth.signature)
            trailer = headers.get("x-amz-trailer", "")
            names = [n.strip().lower() for n in trailer.split(",") if n.strip()]
            self._decoder = AwsChunkedDecoder(
                decoded_length=self.length,
                signing=signing,
                trailer_names=names,
                trailer_signed=mode.endswith("PAYLOAD-TRAILER") and signing is not None,
            )

    async def chunks(self) -> AsyncIterator[bytes]:
        received = 0
        trailers: Mapping[str, str] | None = None
        if self._decoder is None:
            async for chunk in self._channel.chunks():
                received += len(chunk)
                if received > self.length:
                    raise S3Error("IncompleteBody", "More bytes than the declared length.")
                self.checks.update(chunk)
                yield chunk
        else:
            decoder = self._decoder
            raw = self._channel.chunks()
            ended = False
            while not ended:
                event = decoder.next_event()
                if event is NeedData:
                    chunk = await anext(raw, b"")
                    decoder.receive_data(chunk)
                elif isinstance(event, EndOfBody):
                    trailers = event.trailers
                    ended = True
                else:
                    received += len(event)
                    self.checks.update(event)
                    yield event
            async for extra in raw:
                if extra:
                    raise S3Error("IncompleteBody", "Bytes after the end of the aws-chunked body.")
        if self._channel.disconnected:
            raise ClientDisconnected
        if received != self.length:
            raise S3Error("IncompleteBody")
        self.checks.verify(trailers)

    async def read_all(self, limit: int) -> bytes:
        """The whole body, for small XML documents only (bounded by ``limit``)."""
        if self.length > limit:
            raise S3Error("EntityTooLarge", f"This request's body may not exceed {limit} bytes.")
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)
