"""S3 requests signed by hand, for the scripts and the tests that must see or shape the bytes.

boto3 hashes every body it sends, retries, and hides where a response is when a client goes
away. These sign with the proxy's own SigV4 code (``trios3.core.sigv4``) and send bodies as
``UNSIGNED-PAYLOAD``, so a client costs little CPU and holds nothing whole:

- :class:`S3`: httpx, one pooled connection, streamed GETs (the benchmarks);
- :class:`RawClient`: HTTP/1.1 written by hand over trio sockets, one connection per request,
  read as the bytes come (the flood, which disconnects exactly where it chooses);
- :class:`Keystream`: deterministic bytes addressable by offset, so that a script can send any
  part or range of a large object without holding it and check what comes back;
- :func:`signed_headers` and :func:`request_head`, what both clients and the shell tests'
  requests are made of; :func:`complete_multipart_body`, :func:`parse_upload_id` and
  :func:`completed`, the multipart documents either client sends or reads.

Reached as :mod:`harness` is (``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import httpx
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from harness import Endpoint
from trios3.core import sigv4

KiB = 1024
MiB = 1024 * KiB
REGION = "us-east-1"
UNSIGNED = "UNSIGNED-PAYLOAD"


def signed_headers(
    method: str,
    path: str,
    access_key: str,
    secret_key: str,
    *,
    host: str,
    query: Sequence[tuple[str, str]] = (),
    headers: Sequence[tuple[str, str]] = (),
    payload: str = sigv4.EMPTY_SHA256,
) -> list[tuple[str, str]]:
    """``host`` and ``headers``, then the SigV4 headers that sign them with ``query`` (decoded
    pairs) and ``payload`` (the body's hash, or ``UNSIGNED-PAYLOAD``), dated now."""
    out = [("host", host), *headers]
    out += sigv4.sign_request(
        method, path, list(query), out, payload, access_key, secret_key, REGION, datetime.now(UTC)
    )
    return out


def request_head(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An HTTP/1.1 request line and headers, as a client writes them to a socket."""
    lines = [f"{method} {_target(path, query)} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _target(path: str, query: Sequence[tuple[str, str]]) -> str:
    return path + ("?" + sigv4.canonical_query_string(list(query)) if query else "")


def _signed_for(
    endpoint: Endpoint,
    host: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    length: int | None,
) -> list[tuple[str, str]]:
    """:func:`signed_headers` with ``endpoint``'s keys, for a body of ``length`` bytes sent as
    UNSIGNED-PAYLOAD (None: no body)."""
    if length is not None:
        headers = [*headers, ("content-length", str(length))]
    payload = sigv4.EMPTY_SHA256 if length is None else UNSIGNED
    return signed_headers(
        method,
        path,
        endpoint.access_key,
        endpoint.secret_key,
        host=host,
        query=query,
        headers=headers,
        payload=payload,
    )


def complete_multipart_body(etags: Mapping[int, str]) -> bytes:
    """The CompleteMultipartUpload document for these parts (number: ETag), in part order."""
    parts = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etags[n])}</ETag></Part>"
        for n in sorted(etags)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


def parse_upload_id(body: bytes) -> str | None:
    """The UploadId in a CreateMultipartUpload response, if there is one."""
    found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
    return found.group(1).decode() if found else None


def completed(body: bytes) -> bool:
    """Whether a CompleteMultipartUpload's 200 response says it completed: as on AWS, the
    failure may come after the status line."""
    return b"<Error>" not in body and b"<CompleteMultipartUploadResult" in body


# -- httpx --------------------------------------------------------------------------------------


class S3Failure(RuntimeError):
    """An S3 answer other than the one expected."""


class S3:
    """A minimal path-style S3 client: httpx plus SigV4 with UNSIGNED-PAYLOAD bodies. It hashes
    nothing and keeps one pooled connection, so a benchmark measures the server, not itself."""

    def __init__(self, endpoint: Endpoint, timeout: float = 600) -> None:
        self.endpoint = endpoint
        self.url = httpx.URL(endpoint.url)
        self.host = self.url.netloc.decode("ascii")
        self.client = httpx.Client(timeout=timeout, verify=False)

    def close(self) -> None:
        self.client.close()

    def build(
        self,
        method: str,
        bucket: str,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        content: bytes | Iterable[bytes] | None = None,
        length: int | None = None,
    ) -> httpx.Request:
        """A signed request; ``query`` holds decoded pairs, ``headers`` more (signed) headers,
        and ``length`` the size of an iterable ``content``."""
        path = "/" + sigv4.uri_encode(bucket)
        if key is not None:
            path += "/" + sigv4.uri_encode(key, encode_slash=False)
        if content is None:
            length = None
        elif isinstance(content, bytes):
            length = len(content)
        lowered = [(n.lower(), v) for n, v in headers]
        signed = _signed_for(self.endpoint, self.host, method, path, query, lowered, length)
        url = self.url.copy_with(raw_path=_target(path, query).encode("ascii"))
        return self.client.build_request(
            method, url, headers=[(n, v) for n, v in signed if n != "host"], content=content
        )

    def call(self, what: str, request: httpx.Request, expect: Sequence[int] = (200,)):
        """Send ``request`` and read its response; an S3Failure unless its status is expected."""
        response = self.client.send(request)
        if response.status_code not in expect:
            raise S3Failure(f"{what}: {response.status_code} {response.text[:500]}")
        return response

    def create_bucket(self, bucket: str) -> None:
        self.call("CreateBucket", self.build("PUT", bucket, content=b""))

    def put(self, bucket: str, key: str, content, length: int | None = None) -> None:
        if isinstance(content, bytes) and len(content) > MiB:
            # httpcore's sync writer re-slices the remaining bytes after every send(): one
            # 256 MiB bytes body costs gigabytes of memcpy. Hand it over in 1 MiB pieces.
            content, length = pieces(content), len(content)
        self.call(f"PUT {key}", self.build("PUT", bucket, key, content=content, length=length))

    def get_into(self, bucket: str, key: str, sink: Callable[[bytes], object] | None = None) -> int:
        """GET streaming; feed every chunk to ``sink`` (if any); return the byte count."""
        response = self.client.send(self.build("GET", bucket, key), stream=True)
        try:
            if response.status_code != 200:
                response.read()
                raise S3Failure(f"GET {key}: {response.status_code} {response.text[:500]}")
            size = 0
            for chunk in response.iter_raw():
                size += len(chunk)
                if sink is not None:
                    sink(chunk)
            return size
        finally:
            response.close()

    def get(self, bucket: str, key: str) -> bytes:
        return self.call(f"GET {key}", self.build("GET", bucket, key)).content


def pieces(data: bytes, size: int = MiB) -> Iterator[bytes]:
    """``data`` in ``size`` pieces."""
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield bytes(view[offset : offset + size])


# -- raw HTTP/1.1 over trio -----------------------------------------------------------------------


class HTTPFailure(Exception):
    """The connection ended, or the response broke HTTP/1.1 framing, before it was read."""


@dataclass(frozen=True)
class RawClient:
    """Signed requests to ``endpoint`` written by hand, one connection each (``Connection:
    close``): the caller sends the head and the body when it likes, reads the response as it
    comes, and can disconnect at any point."""

    endpoint: Endpoint

    @property
    def host(self) -> str:
        return self.endpoint.url.split("://", 1)[1]

    def head_bytes(
        self,
        method: str,
        path: str,
        length: int | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        extra: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The request head for a body of ``length`` bytes (None: no body); ``query`` holds
        decoded pairs, ``extra`` more (signed) headers."""
        headers = _signed_for(self.endpoint, self.host, method, path, query, extra, length)
        return request_head(method, path, [*headers, ("connection", "close")], query)

    async def connect(self, rcvbuf: int | None = None) -> RawConnection:
        """A connection (``rcvbuf``: its receive buffer, to make a slow reader slower)."""
        sock = trio.socket.socket()
        if rcvbuf:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        host, port = self.host.rsplit(":", 1)
        await sock.connect((host, int(port)))
        return RawConnection(trio.SocketStream(sock))

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with a small (or no) body: (status, headers, the whole response body)."""
        conn = await self.connect()
        try:
            length = None if body is None else len(body)
            head = self.head_bytes(method, path, length, query=query, extra=extra)
            await conn.stream.send_all(head + (body or b""))
            status = await conn.head()
            data = bytearray()
            if method != "HEAD":
                await conn.body(data.extend)
        finally:
            await conn.aclose()
        text = bytes(data)
        if "chunked" in conn.headers.get("transfer-encoding", ""):
            text = _dechunk(text)
        return status, conn.headers, text


class RawConnection:
    """One request's connection: ``stream`` to send on, and the response read by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def head(self) -> int:
        """Read the status line and headers (names lowercased); the status."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > 64 * KiB:
                raise HTTPFailure("response head too long")
            data = await self.stream.receive_some(64 * KiB)
            if not data:
                raise HTTPFailure("connection closed before the status line")
            self.buf += data
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return self.status

    async def body(
        self, sink=None, *, stop_after: int | None = None, rate: float = 0, slow_for: float = 0
    ) -> int:
        """Read the body into ``sink``; stop after ``stop_after`` bytes; throttle to ``rate``
        bytes/s for the first ``slow_for`` seconds. Returns the bytes read."""
        length = self.headers.get("content-length")
        want = int(length) if length is not None else None
        got = 0
        started = time.monotonic()

        def take(data) -> None:
            nonlocal got
            if sink is not None:
                sink(data)
            got += len(data)

        if self.buf:
            piece = bytes(self.buf[: want if want is not None else len(self.buf)])
            self.buf.clear()
            take(piece)
        while want is None or got < want:
            if stop_after is not None and got >= stop_after:
                return got
            slow = rate and time.monotonic() - started < slow_for
            size = 64 * KiB if slow else MiB
            if want is not None:
                size = min(size, want - got)
            data = await self.stream.receive_some(size)
            if not data:
                if want is None:
                    return got
                raise HTTPFailure(f"connection closed after {got} of {want} body bytes")
            take(data)
            if slow:
                ahead = got / rate - (time.monotonic() - started)
                if ahead > 0:
                    await trio.sleep(min(ahead, slow_for))
        return got


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


# -- bodies -------------------------------------------------------------------------------------

_ZEROS = bytes(MiB)


class Keystream:
    """``size`` deterministic bytes named by ``name``: the AES-256-CTR keystream of a key derived
    from the name, so any offset can be generated on its own (a multipart object's parts are
    slices of its stream) and nothing is held whole."""

    def __init__(self, name: str, size: int) -> None:
        self.key = hashlib.sha256(name.encode()).digest()
        self.size = size

    def stream(self, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """``length`` bytes (default: to the end) from ``offset``, at most 1 MiB at a time."""
        block, skip = divmod(offset, 16)
        enc = Cipher(algorithms.AES(self.key), modes.CTR(block.to_bytes(16, "big"))).encryptor()
        if skip:
            enc.update(bytes(skip))
        left = self.size - offset if length is None else length
        while left:
            n = min(MiB, left)
            yield enc.update(_ZEROS[:n])
            left -= n

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.stream(offset, length))

    def sha256(self) -> bytes:
        h = hashlib.sha256()
        for chunk in self.stream():
            h.update(chunk)
        return h.digest()
