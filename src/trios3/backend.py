"""The backend S3 client: one pooled httpx client, every request signed with the backend's keys.

The client is owned by the scope that opens :func:`open_backend` (the app's lifespan), never
by a module. Bodies stream both ways: uploads go out with an explicit Content-Length (S3
refuses chunked transfer encoding), downloads are read raw (no Content-Encoding decoding:
the bytes are ciphertext).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx

from trios3.config import BackendSettings
from trios3.core import sigv4
from trios3.core.errors import S3Error
from trios3.core.s3xml import parse_error

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

    def __init__(self, settings: BackendSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._client = client
        base = httpx.URL(settings.url)
        self._base = base
        self._host = base.netloc.decode("ascii")
        self._prefix = base.raw_path.rstrip(b"/").decode("ascii")

    @property
    def pool_connections(self) -> int:
        """Connections currently held by the pool (open or in use), for tests and metrics."""
        pool = self._client._transport._pool  # type: ignore[attr-defined]
        return len(pool.connections)

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
    ) -> AsyncIterator[httpx.Response]:
        """Send one signed request; the response body is read inside the ``async with``.

        Leaving the block (normally, by error or by cancellation) closes the response, so a
        cancelled stream never leaves a connection half-read in the pool.
        """
        request = self._build(method, bucket, key, query, headers, body, content_length)
        # Transport failures (unreachable, silent, dropped) propagate as httpx errors, and the
        # app answers and counts them in one place, wherever in a request they happen.
        response = await self._client.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

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
    ) -> tuple[httpx.Response, bytes]:
        """A request whose response body is small (XML): read whole, up to ``max_body``."""
        async with self.stream(
            method, bucket, key, query=query, headers=headers, body=body
        ) as response:
            data = await read_limited(response, max_body)
        return response, data

    def _build(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        query: Sequence[tuple[str, str]],
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        content_length: int | None,
    ) -> httpx.Request:
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
        )
        raw_query = sigv4.canonical_query_string(list(query))
        raw_path = path.encode("ascii") + (b"?" + raw_query.encode("ascii") if raw_query else b"")
        url = self._base.copy_with(raw_path=raw_path)
        # The request target goes out as signed: httpx would otherwise normalise "." and ".."
        # segments (valid in S3 keys) after signing. The bytes are ciphertext or XML read raw,
        # so no content coding is asked for.
        out.append(("accept-encoding", "identity"))
        return self._client.build_request(
            method,
            url,
            headers=[(n, v) for n, v in out if n != "host"],
            content=body,
            extensions={"target": raw_path},
        )


def backend_error(response: httpx.Response, body: bytes) -> S3Error:
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
    return S3Error(code, message or None, status=status)


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read a whole (small) response body, refusing to hold more than ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise S3Error("InternalError", "The backend response was larger than expected.")
        parts.append(chunk)
    return b"".join(parts)


@asynccontextmanager
async def open_backend(settings: BackendSettings) -> AsyncIterator[Backend]:
    """One pooled client for the lifetime of the ``async with`` (the app's lifespan)."""
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=min(64, settings.max_connections),
        keepalive_expiry=30.0,
    )
    # Per-operation inactivity timeouts, not a total: a 5 GiB body may take long, but a
    # backend that stops sending for minutes is gone.
    silence = settings.timeout
    timeout = httpx.Timeout(connect=min(10.0, silence), read=silence, write=silence, pool=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        yield Backend(settings, client)
