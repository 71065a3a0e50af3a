"""One S3 exchange: the authenticated request as the operations see it, and its response.

An operation reads what it needs from :class:`Exchange` (target, headers, body) and answers
through it, so the path of a request is: app (authenticate, route) -> ops (stream bytes) ->
backend, and back, with nothing else in between.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from trios3.backend import Backend
from trios3.body import ClientChannel, RequestBody
from trios3.budget import MemoryBudget
from trios3.core.access import Credential
from trios3.core.checksums import CHECKSUM_ALGORITHMS
from trios3.core.errors import S3Error
from trios3.core.keys import Keyring
from trios3.core.routing import Target
from trios3.core.s3xml import render_error
from trios3.core.sigv4 import RequestAuth


@dataclass(frozen=True)
class Services:
    """What every operation may use; built once per app and passed down."""

    backend: Backend
    keyring: Keyring
    budget: MemoryBudget
    require_encrypted: bool = False

    def check_foreign(self) -> None:
        """An object without trios3 metadata: served as it is, unless the operator has said
        that every object must be the proxy's (then it may be plaintext planted at the
        backend, and is refused)."""
        if self.require_encrypted:
            raise S3Error(
                "AccessDenied", "The object was not encrypted by this proxy (--require-encrypted)."
            )


class Responder:
    """Sends one ASGI response; remembers whether the status line has gone out."""

    def __init__(self, send, request_id: str, head_only: bool) -> None:
        self._send = send
        # Called just before the last message (the request's body reader stops reading).
        self.before_last: Callable[[], None] = lambda: None
        self.request_id = request_id
        self.head_only = head_only
        self.started = False
        self.finished = False
        self.status = 0
        self.bytes_sent = 0

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        out = [(b"x-amz-request-id", self.request_id.encode())]
        out += [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": out})

    async def body(self, data: bytes, *, more: bool) -> None:
        if self.head_only:
            data = b""
        self.bytes_sent += len(data)
        message = {"type": "http.response.body", "body": data, "more_body": more}
        if more:
            await self._send(message)
            return
        # Sending the last message makes hypercorn recycle the connection (and tell this
        # request's channel it is over) inside this very call; a cancel landing here would cut
        # that short and leave the keep-alive connection without its idle timer.
        self.before_last()
        with trio.CancelScope(shield=True):
            await self._send(message)
        self.finished = True

    async def whole(self, status: int, headers: Sequence[tuple[str, str]], data: bytes) -> None:
        headers = [*headers, ("content-length", str(len(data)))]
        await self.start(status, headers)
        await self.body(data, more=False)

    async def error(self, err: S3Error, resource: str) -> None:
        headers = list(err.headers.items())
        if err.status == 304 or self.head_only:
            # HEAD and 304 answers carry no body: the status alone tells the client.
            await self.start(err.status, [*headers, ("content-length", "0")])
            await self.body(b"", more=False)
            return
        headers.append(("content-type", "application/xml"))
        await self.whole(err.status, headers, render_error(err, resource, self.request_id))


@dataclass
class Exchange:
    """An authenticated, routed request and the means to answer it."""

    services: Services
    target: Target
    method: str
    headers: Mapping[str, str]
    auth: RequestAuth
    signing_key: bytes
    channel: ClientChannel
    respond: Responder
    credential: Credential  # who asked, and what it may reach (trios3.core.access)
    _body: RequestBody | None = field(default=None, init=False)

    @property
    def body(self) -> RequestBody:
        """The request payload; created on first use so bodiless requests never parse one."""
        if self._body is None:
            self._body = RequestBody(self.channel, self.headers, self.auth, self.signing_key)
        return self._body

    def document_body(self) -> RequestBody:
        """The body of a CompleteMultipartUpload, whose ``x-amz-checksum-*`` headers describe
        the object being completed, not the body: those are left out of the body's checks."""
        if self._body is None:
            headers = {
                n: v
                for n, v in self.headers.items()
                if n.removeprefix("x-amz-checksum-") not in CHECKSUM_ALGORITHMS
            }
            self._body = RequestBody(self.channel, headers, self.auth, self.signing_key)
        return self._body

    @property
    def bucket(self) -> str:
        assert self.target.bucket is not None
        return self.target.bucket

    @property
    def key(self) -> str:
        assert self.target.key is not None
        return self.target.key

    def query_items(self, *names: str) -> list[tuple[str, str]]:
        """The given query parameters that the client sent, to pass on to the backend."""
        return [(n, self.target.query[n]) for n in names if n in self.target.query]
