"""The ASGI application: a raw data path for S3, and Quart for the few routes that are not S3.

S3 traffic never goes through Quart: its request body buffers without limit and its
timeouts cut long streams. Each S3 request runs in a nursery of its own that owns everything
the request holds (the client channel, the budget lease, backend responses); a client
disconnect cancels that nursery, and leaving it releases all of them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from urllib.parse import unquote

import trio
from quart_trio import QuartTrio

from trios3.backend import Backend, BackendUnavailable, open_backend
from trios3.body import READ_UNIT, ClientChannel, ClientDisconnected
from trios3.budget import MemoryBudget
from trios3.config import ProxySettings
from trios3.core import access, sigv4
from trios3.core.errors import S3Error, TamperedError
from trios3.core.headers import request_headers
from trios3.core.routing import Target, resolve_target
from trios3.exchange import Exchange, Responder, Services
from trios3.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from trios3.metrics import Counts, Metrics
from trios3.ops import buckets, copy, get, multipart, put

log = logging.getLogger("trios3")

Operation = Callable[[Exchange], Awaitable[None]]

OPERATIONS: dict[str, Operation] = {
    "ListBuckets": buckets.passthrough,
    "CreateBucket": buckets.passthrough,
    "DeleteBucket": buckets.passthrough,
    "HeadBucket": buckets.passthrough,
    "GetBucketLocation": buckets.passthrough,
    "BucketSubresource": buckets.passthrough,
    "ListObjects": buckets.list_objects,
    "ListObjectsV2": buckets.list_objects,
    "ListObjectVersions": buckets.list_objects,
    "DeleteObjects": buckets.delete_objects,
    "GetObject": get.get_object,
    "HeadObject": get.head_object,
    "PutObject": put.put_object,
    "CopyObject": copy.copy_object,
    "DeleteObject": put.delete_object,
    "ObjectTagging": buckets.passthrough,
    "ObjectAcl": buckets.passthrough,
    "ObjectLock": buckets.passthrough,
    "CreateMultipartUpload": multipart.create_upload,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": multipart.upload_part_copy,
    "CompleteMultipartUpload": multipart.complete_upload,
    "AbortMultipartUpload": multipart.abort_upload,
    "ListParts": multipart.list_parts,
    "ListMultipartUploads": multipart.list_uploads,
}


def _admin_app(proxy: S3Proxy) -> QuartTrio:
    """The routes that are not S3: health, readiness and metrics. None needs credentials and
    none tells more than a probe or a dashboard needs."""
    admin = QuartTrio("trios3")
    admin.config.update(RESPONSE_TIMEOUT=None, BODY_TIMEOUT=None, MAX_CONTENT_LENGTH=1024)

    @admin.get("/healthz")
    async def healthz():
        return "ok\n", 200, {"content-type": "text/plain"}

    @admin.get("/readyz")
    async def readyz():
        problem = await proxy.readiness_problem()
        if problem:
            return f"not ready: {problem}\n", 503, {"content-type": "text/plain"}
        return "ready\n", 200, {"content-type": "text/plain"}

    @admin.get("/metrics")
    async def metrics():
        return proxy.metrics.render(), 200, {"content-type": METRICS_CONTENT_TYPE}

    return admin


ADMIN_PATHS = {"/healthz", "/readyz", "/metrics"}
# Refusals that count as authentication failures in the metrics.
AUTHENTICATION_FAILURES = frozenset(
    {
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "AuthorizationQueryParametersError",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
    }
)
READINESS_TIMEOUT = 2.0
# An early error reads up to this much of the request's body first, so the connection can end
# cleanly and the client gets to read the error (trios3.body.ClientChannel.discard).
DISCARD_LIMIT = 1024 * 1024
DISCARD_TIMEOUT = 5.0


class S3Proxy:
    """The ASGI callable hypercorn serves."""

    def __init__(
        self,
        settings: ProxySettings,
        backend: Backend | None = None,
        *,
        keys_problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self._keys_problem = keys_problem  # why master keys are unusable now (keystores.py)
        self.budget = MemoryBudget(settings.memory_budget, settings.admission_timeout)
        self.stats = Counts()
        self._backend = backend
        self._signing_keys = sigv4.SigningKeys()
        self.stopping = False  # set when the server stops taking connections (SIGTERM)
        self.metrics = Metrics(self.stats, self.budget.stats, self._pool_connections)
        self._admin = _admin_app(self)

    def _pool_connections(self) -> int | None:
        return None if self._backend is None else self._backend.pool_connections

    async def readiness_problem(self) -> str | None:
        """Why the proxy cannot serve S3 now, or None: the backend must answer (any HTTP
        answer will do: it is there) and the keys must be loaded (they are, once started)."""
        if self.stopping:
            return "shutting down"
        if self._keys_problem is not None and (problem := self._keys_problem()):
            return problem
        if self._backend is None:
            return "starting"
        with trio.move_on_after(READINESS_TIMEOUT):
            try:
                await self._backend.request("HEAD", max_body=0)
            except BackendUnavailable:
                return "the backend does not answer"
            return None
        return "the backend does not answer"

    @property
    def services(self) -> Services:
        if self._backend is None:
            raise RuntimeError("the backend client is opened by the ASGI lifespan")
        return Services(
            self._backend,
            self.settings.keyring,
            self.budget,
            self.settings.require_encrypted,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] in ADMIN_PATHS and not _carries_auth(scope):
                await self._admin(scope, receive, send)
            else:
                await self.handle(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        """Own the backend client for the server's lifetime (when none was given)."""
        async with AsyncExitStack() as stack:
            message = await receive()
            assert message["type"] == "lifespan.startup"
            if self._backend is None:
                self._backend = await stack.enter_async_context(open_backend(self.settings.backend))
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def handle(self, scope, receive, send) -> None:
        """Serve one S3 request inside a nursery that owns all it holds."""
        started = time.monotonic()
        request_id = secrets.token_hex(8).upper()
        method = scope["method"]
        respond = Responder(send, request_id, head_only=method == "HEAD")
        resource = unquote(scope.get("raw_path", b"/").decode("latin-1").split("?", 1)[0])
        operation = "-"
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        shutdown = False
        channel: ClientChannel | None = None
        target: Target | None = None
        try:
            async with trio.open_nursery() as nursery:
                channel = ClientChannel(
                    receive,
                    nursery.cancel_scope,
                    self.settings.body_timeout,
                    scope.get("state", {}).get(READ_UNIT),
                    self.settings.body_min_rate,
                )
                respond.before_last = channel.stop_reading
                nursery.start_soon(channel.run)
                try:
                    if stats.in_flight > self.settings.max_requests:
                        # Refused before anything is read or reserved.
                        stats.refused_busy += 1
                        raise S3Error("SlowDown", headers={"Retry-After": "1"})
                    try:
                        exchange = self._authenticate(scope, channel, respond)
                    except S3Error as err:
                        if err.code in AUTHENTICATION_FAILURES:
                            stats.auth_failures += 1
                        raise
                    target = exchange.target
                    operation = _operation_name(exchange)
                    await self._dispatch(operation, exchange)
                except Exception as exc:
                    error = self._failure(exc, request_id, operation, respond.started)
                    if error is not None and not respond.started:
                        if error.code != "RequestTimeout":
                            with trio.move_on_after(DISCARD_TIMEOUT):
                                await channel.discard(DISCARD_LIMIT)
                        await respond.error(error, resource)
                finally:
                    nursery.cancel_scope.cancel()
        except trio.Cancelled:
            shutdown = True  # cancelled from outside: the server is stopping
            raise
        finally:
            if channel is not None:
                channel.done()
            stats.in_flight -= 1
            disconnected = channel is not None and channel.disconnected
            cut = not respond.finished
            stats.disconnects += disconnected and cut
            stats.shutdown_cancellations += shutdown and cut and not disconnected
            stats.bytes_received += channel.received if channel is not None else 0
            stats.bytes_sent += respond.bytes_sent
            seconds = time.monotonic() - started
            self.metrics.observe(operation, respond.status or None, seconds)
            fields = {
                "request_id": request_id,
                "operation": operation,
                "method": method,
                "bucket": target.bucket if target else None,
                "key": target.key if target else None,
                "status": respond.status or None,
                "bytes_in": channel.received if channel is not None else 0,
                "bytes_out": respond.bytes_sent,
                "ms": round(seconds * 1000, 1),
                "complete": respond.finished,
            }
            log.info(
                "request id=%s op=%s method=%s bucket=%s key=%r status=%s in=%d out=%d ms=%.1f%s",
                request_id,
                operation,
                method,
                fields["bucket"] or "-",
                fields["key"],
                respond.status or "-",
                fields["bytes_in"],
                respond.bytes_sent,
                fields["ms"],
                "" if respond.finished else " (cut short)",
                extra={"request": fields},
            )

    def _failure(
        self, exc: Exception, request_id: str, operation: str, started: bool
    ) -> S3Error | None:
        """What a failed request tells its client (None: nobody is listening), logged and
        counted here, once. Call it from the ``except`` block that caught ``exc``."""
        if isinstance(exc, ClientDisconnected):
            return None
        if isinstance(exc, S3Error):
            if started:
                log.warning("%s %s cut short after the status line: %s", request_id, operation, exc)
            return exc
        if isinstance(exc, TamperedError):
            # Stored bytes or metadata that fail authentication: never served, always told.
            self.stats.tamper_failures += 1
            log.warning(
                "%s %s: stored object failed authentication: %s", request_id, operation, exc
            )
            return S3Error("InternalError", "The stored object failed authentication.")
        if isinstance(exc, BackendUnavailable):
            self.stats.backend_failures += 1
            log.warning("%s %s: the backend failed: %r", request_id, operation, exc)
            return S3Error("ServiceUnavailable", "The backend failed during the request.")
        log.exception("%s %s failed", request_id, operation)
        return S3Error("InternalError")

    def _authenticate(self, scope, channel: ClientChannel, respond: Responder) -> Exchange:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.decode("latin-1").split("?", 1)[0]
        query_string = scope.get("query_string", b"").decode("latin-1")
        pairs = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in scope["headers"]]
        headers = request_headers(pairs)
        target = resolve_target(
            scope["method"],
            raw_path,
            query_string,
            headers.get("host"),
            self.settings.virtual_host_domain,
            own_hosts=self.settings.own_hosts,
        )
        auth = sigv4.parse_auth(scope["method"], raw_path, query_string, pairs)
        if auth is None:
            raise S3Error("AccessDenied", "Anonymous requests are not accepted.")
        sigv4.check_signed_headers(headers, auth)
        credential = self.settings.credentials.get(auth.access_key)
        if credential is None:
            raise S3Error("InvalidAccessKeyId", fields={"AWSAccessKeyId": auth.access_key})
        secret = credential.secret_access_key
        signing_key = sigv4.verify(
            auth,
            secret,
            scope["method"],
            raw_path,
            query_string,
            pairs,
            datetime.now(UTC),
            keys=self._signing_keys,
        )
        # Authentic; now allowed? Decided from the request alone, before the backend hears
        # of it (trios3.core.access; the operations check what only their bodies say).
        access.authorize(
            credential.scope,
            target.operation,
            target.bucket,
            target.key,
            method=scope["method"],
            query=target.query,
            headers=headers,
        )
        return Exchange(
            services=self.services,
            target=target,
            method=scope["method"],
            headers=headers,
            auth=auth,
            signing_key=signing_key,
            channel=channel,
            respond=respond,
            credential=credential,
        )

    async def _dispatch(self, name: str, exchange: Exchange) -> None:
        operation = OPERATIONS.get(name)
        if operation is None:
            raise S3Error("NotImplemented", f"{name} is not supported by this proxy.")
        await operation(exchange)


def _operation_name(exchange: Exchange) -> str:
    """The S3 operation; a PUT with a copy source is a copy (routing sees no headers)."""
    name = exchange.target.operation
    if "x-amz-copy-source" in exchange.headers:
        name = {"PutObject": "CopyObject", "UploadPart": "UploadPartCopy"}.get(name, name)
    return name


def _carries_auth(scope) -> bool:
    if any(name == b"authorization" for name, _ in scope["headers"]):
        return True
    return b"X-Amz-Signature" in scope.get("query_string", b"")
