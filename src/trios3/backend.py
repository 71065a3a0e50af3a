"""The backend S3 client: every request signed with the backend's keys, sent over the pool.

The client is owned by the scope that opens :func:`open_backend` (the app's lifespan), never
by a module. Bodies stream both ways: uploads go out with an explicit Content-Length (S3
refuses chunked transfer encoding), downloads are read as received (trios3.connections): the
bytes are ciphertext, never content-decoded.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit

from trios3.config import BackendSettings
from trios3.connections import BackendUnavailable, ConnectionPool, Response, Timeouts
from trios3.core import sigv4
from trios3.core.errors import S3Error
from trios3.core.http1 import request_head
from trios3.core.s3xml import parse_error
from trios3.core.upload_checksum import MISMATCH_CODES, ChecksummedBody

__all__ = ["SMALL_BODY", "Backend", "BackendUnavailable", "Response", "open_backend"]

# The most the proxy reads of a backend answer that is a small XML document (a result or an
# error): more means something is wrong at the backend.
SMALL_BODY = 64 * 1024
# Backend errors that mean the proxy's own backend credentials are wrong: the client did
# nothing wrong, so they must not be passed on as if it had.
_BACKEND_AUTH_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthorizationHeaderMalformed",
}


class Backend:
    """Signs and sends requests to the backend S3 endpoint (path-style)."""

    def __init__(self, settings: BackendSettings, pool: ConnectionPool) -> None:
        self.settings = settings
        self._pool = pool
        url = urlsplit(settings.url)
        self._host = url.netloc
        self._prefix = url.path.rstrip("/")
        self._keys = sigv4.SigningKeys()

    @property
    def pool_connections(self) -> int:
        """Connections the pool holds open now (idle or in use), for tests and metrics."""
        return self._pool.connections

    @property
    def busy_connections(self) -> int:
        """Connections carrying a request now (for tests: none once requests are over)."""
        return len(self._pool.busy)

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for a free connection."""
        return self._pool.waiting

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        bucket: str | None = None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        content_length: int | None = None,
        verified: bool = False,
    ) -> AsyncIterator[Response]:
        """Send one signed request; the response body is read inside the ``async with``.

        ``verified``: a streamed body (``content_length`` bytes) goes out framed with a
        checksum the backend verifies before it stores anything
        (trios3.core.upload_checksum), unless the backend cannot take one
        (``--backend-checksum off``): a byte changed on the way is an error, not a stored
        object.

        Leaving the block (normally, by error or by cancellation) before the body's end
        closes the connection, so a pooled connection is never left half-read. Transport
        failures (unreachable, silent, dropped) are :class:`BackendUnavailable`, and the app
        answers and counts them in one place, wherever in a request they happen.
        """
        payload_hash = None
        streamed = body is not None and not isinstance(body, bytes)
        if verified and streamed and self.settings.checksum:
            if content_length is None:
                raise ValueError("a streamed backend body needs its Content-Length")
            framing = ChecksummedBody(content_length)
            body = _framed(body, framing)
            # The object's own coding (gzip, say) follows the framing's: "aws-chunked, gzip".
            coding = [v for n, v in headers if n.lower() == "content-encoding"]
            headers = [(n, v) for n, v in headers if n.lower() != "content-encoding"]
            for name, value in framing.headers():
                if name == "content-encoding" and coding:
                    value = ", ".join([value, *coding])
                headers.append((name, value))
            content_length = framing.content_length
            payload_hash = framing.payload_hash
        head = self._head(method, bucket, key, query, headers, body, content_length, payload_hash)
        async with self._pool.exchange(method, head, body, content_length) as response:
            yield response

    async def request(
        self,
        method: str,
        bucket: str | None = None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        max_body: int = 16 * 1024 * 1024,
    ) -> tuple[Response, bytes]:
        """A request whose response body is small (XML): read whole, up to ``max_body``."""
        async with self.stream(
            method, bucket, key, query=query, headers=headers, body=body
        ) as response:
            data = await read_limited(response, max_body)
        return response, data

    def _head(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        query: Sequence[tuple[str, str]],
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        content_length: int | None,
        payload_hash: str | None = None,
    ) -> bytes:
        path = self._prefix + "/"
        if bucket:
            path += sigv4.uri_encode(bucket)
            if key is not None:
                path += "/" + sigv4.uri_encode(key, encode_slash=False)
        out = [(name.lower(), value) for name, value in headers]
        out.append(("host", self._host))
        if isinstance(body, bytes):
            payload_hash = hashlib.sha256(body).hexdigest()
            if body or method in ("PUT", "POST"):
                out.append(("content-length", str(len(body))))
        else:
            if payload_hash is None:
                payload_hash = sigv4.UNSIGNED_PAYLOAD if body is not None else sigv4.EMPTY_SHA256
            if body is not None:
                if content_length is None:
                    raise ValueError("a streamed backend body needs its Content-Length")
                out.append(("content-length", str(content_length)))
        out += sigv4.sign_request(
            method,
            path,
            list(query),
            out,
            payload_hash,
            self.settings.access_key,
            self.settings.secret_key,
            self.settings.region,
            datetime.now(UTC),
            keys=self._keys,
        )
        # The request target goes out exactly as signed ("." and ".." segments are valid in
        # S3 keys). The bytes are ciphertext or XML read raw: no content coding is asked for.
        raw_query = sigv4.canonical_query_string(list(query))
        target = path + ("?" + raw_query if raw_query else "")
        out.append(("accept-encoding", "identity"))
        return request_head(method, target.encode("ascii"), out)


async def _framed(body: AsyncIterable[bytes], framing: ChecksummedBody) -> AsyncIterator[bytes]:
    async for piece in body:
        yield framing.frame(piece)
    yield framing.trailer()


def backend_error(response: Response, body: bytes) -> S3Error:
    """The S3 error to give the client for a failed backend response."""
    parsed = parse_error(body) if body else None
    status = response.status_code
    if parsed is None:
        code = {
            304: "NotModified",
            404: "NoSuchKey",
            412: "PreconditionFailed",
            416: "InvalidRange",
        }
        fallback = code.get(status, "InternalError" if status < 500 else "ServiceUnavailable")
        return S3Error(fallback, status=status if status in code else None)
    code, message = parsed
    if code in _BACKEND_AUTH_ERRORS:
        return S3Error("InternalError", "The backend refused the proxy's credentials.")
    if code in MISMATCH_CODES and status == 400:
        # The client's own digests are the proxy's to check and never go to the backend:
        # a digest the backend refuses is the one the proxy sent, over what it sent.
        return S3Error(
            "InternalError",
            "The upload was changed on its way to the backend, which stored nothing. Please retry.",
        )
    return S3Error(code, message or None, status=status)


async def read_limited(response: Response, limit: int) -> bytes:
    """Read a whole (small) response body, refusing to hold more than ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise S3Error("InternalError", "The backend response was larger than expected.")
        parts.append(chunk)
    return b"".join(parts)


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verification against the system's trusted CAs, or only those of ``ca_bundle`` (a
    backend with a private CA); HTTP/1.1 only."""
    context = ssl.create_default_context(cafile=ca_bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


@asynccontextmanager
async def open_backend(settings: BackendSettings) -> AsyncIterator[Backend]:
    """One connection pool for the lifetime of the ``async with`` (the app's lifespan)."""
    url = urlsplit(settings.url)
    tls = url.scheme == "https"
    # Per-operation silences, not totals: a 5 GiB body may take long, but a backend that
    # stops sending for minutes is gone.
    silence = settings.timeout
    pool = ConnectionPool(
        url.hostname or "",
        url.port or (443 if tls else 80),
        ssl_context=ssl_context(getattr(settings, "ca_bundle", None)) if tls else None,
        timeouts=Timeouts(connect=min(10.0, silence), read=silence, write=silence, pool=60.0),
        max_connections=settings.max_connections,
        max_idle=min(64, settings.max_connections),
    )
    try:
        yield Backend(settings, pool)
    finally:
        pool.close_idle()
