"""Object operations: PUT encrypts while streaming, GET decrypts while streaming.

Each operation that holds body bytes takes its budget lease before anything is sent, and
holds it until its last byte is gone: the ``async with`` blocks here are the lifetimes.
A GET of a single PUT's object is one backend request in the common case: the stored byte
window is computed from the client's Range and the default segment size before the object's
metadata is known, and is fetched again only when the object turns out to be foreign or
differently segmented. A multipart object (format v2) is read through trios3.ops.reads, after
its layout is known.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import quote, unquote, urlencode

import httpx
import trio

from trios3.backend import Backend, backend_error, read_limited
from trios3.core import format as fmt
from trios3.core import multipart as mp
from trios3.core.errors import S3Error, TamperedError
from trios3.core.etag import client_etag
from trios3.core.keys import Envelope, open_content_md5
from trios3.core.ranges import content_range, parse_range, stored_window
from trios3.core.s3xml import (
    parse_complete_result,
    parse_copy_object_result,
    parse_initiate_result,
    parse_tagging,
    render_complete_request,
    render_copy_object_result,
)
from trios3.core.sigv4 import uri_encode
from trios3.exchange import Exchange, Services
from trios3.ops import headers as hdr
from trios3.ops import reads
from trios3.pipeline import prefetched

log = logging.getLogger("trios3")

SMALL_RESPONSE = 64 * 1024
MAX_COPY_SOURCE = 5 * 1024**3


PIPELINE_DEPTH = 2  # pieces produced ahead of the one being sent (see trios3.pipeline)


def stream_window(segment_size: int) -> int:
    """Budget bytes one streaming request holds at most: the opener's or sealer's buffer
    (a segment and a network read), the pieces queued in its pipeline, the one being sent,
    and a 64 KiB network read on each side."""
    return (PIPELINE_DEPTH + 2) * segment_size + 2 * 64 * 1024


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class Fetched:
    """Where the bytes of a backend GET response sit in the stored object."""

    start: int
    end: int  # inclusive
    total: int

    @classmethod
    def of(cls, response: httpx.Response) -> Fetched:
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match:
                raise S3Error("InternalError", "The backend sent an unreadable Content-Range.")
            start, end, total = (int(g) for g in match.groups())
            return cls(start, end, total)
        length = int(response.headers.get("content-length", "0"))
        return cls(0, length - 1, length)


def _refusal(ex: Exchange, response: httpx.Response, body: bytes) -> S3Error:
    """The error for a backend GET/HEAD that did not succeed; a 304 keeps the validators
    (ETag, Last-Modified) a client needs to keep its cached copy, in the client's terms.

    A backend 304 may carry no metadata to tell whether the object is the proxy's; the
    client's own If-None-Match does (it names the ETag the client was given), and without
    one the object is taken to be the proxy's, as all objects written through it are.
    """
    error = backend_error(response, body)
    if response.status_code == 304:
        etag = response.headers.get("etag", "")
        encrypted = etag not in ex.headers.get("if-none-match", "")
        if any(n.startswith(hdr.RESERVED_META) for n in response.headers):
            encrypted = True
        if etag:
            error.headers["etag"] = client_etag(etag, encrypted)
        if "last-modified" in response.headers:
            error.headers["last-modified"] = response.headers["last-modified"]
    return error


async def get_object(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    query = ex.query_items(
        "versionId",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
    )
    client_range = ex.headers.get("range")
    window = stored_window(client_range, fmt.DEFAULT_SEGMENT_SIZE)
    async with ex.services.budget.lease(stream_window(fmt.DEFAULT_SEGMENT_SIZE)):
        for _attempt in range(4):
            headers = hdr.conditions(ex.headers)
            if window:
                headers.append(("range", window))
            async with ex.services.backend.stream(
                "GET", ex.bucket, ex.key, query=query, headers=headers
            ) as response:
                if response.status_code not in (200, 206):
                    if response.status_code == 416 and window != client_range:
                        # The guessed window starts past the stored end: learn the size from
                        # the last byte, then (for a foreign object) let the backend judge.
                        window = "bytes=-1" if window != "bytes=-1" else client_range
                        continue
                    raise _refusal(ex, response, await read_limited(response, SMALL_RESPONSE))
                envelope = Envelope.from_metadata(response.headers)
                if envelope is None:
                    ex.services.check_foreign()
                    _check_part_number(ex)
                    if window != client_range:
                        window = client_range
                        continue
                    await _send_foreign(ex, response)
                    return
                fetched = Fetched.of(response)
                if envelope.multipart:
                    whole = fetched.start == 0 and fetched.end == fetched.total - 1
                    if whole and client_range is None and "partNumber" not in ex.target.query:
                        await _get_multipart_whole(ex, response, envelope, fetched, query)
                        return
                    break
                _check_part_number(ex)
                size = fmt.plaintext_size(fetched.total, envelope.segment_size)
                if size is None:
                    raise S3Error("InternalError", "The stored object has an impossible size.")
                wanted = parse_range(client_range, size)
                start, end = wanted if wanted else (0, size - 1)
                span = fmt.span_for_range(size, start, end, envelope.segment_size)
                if not fetched.start <= span.stored_start or span.stored_end > fetched.end:
                    window = f"bytes={span.stored_start}-{span.stored_end}"
                    continue
                data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
                out = hdr.object_response_headers(response.headers, encrypted=True)
                out = _show_sealed_md5(out, envelope, data_key, ex.bucket, ex.key)
                out.append(("content-length", str(span.length)))
                status = 200
                if wanted:
                    status = 206
                    out.append(("content-range", content_range(start, end, size)))
                plaintext = _decrypt(response, fetched, span, data_key, envelope.segment_size, size)
                async with prefetched(plaintext, PIPELINE_DEPTH) as pieces:
                    await _send_stream(ex, status, out, pieces)
                return
        else:
            raise S3Error("InternalError", "The object changed while it was being read.")
        # A multipart object: its layout is in its part headers (trios3.ops.reads).
        stored = reads.StoredObject(
            ex.bucket, ex.key, query, response.headers.get("etag", ""), fetched.total
        )
        data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
        layout, known = await reads.find_layout(ex.services.backend, stored, envelope.segment_size)
        out = hdr.object_response_headers(response.headers, encrypted=True)
        out = _show_sealed_md5(out, envelope, data_key, ex.bucket, ex.key)
        start, end, status = _multipart_range(ex, layout, out)
        if end < start and layout.plaintext_size:  # an empty part of a non-empty object
            await ex.respond.whole(status, out, b"")
            return
        plaintext = reads.decrypt_range(
            ex.services.backend, stored, data_key, layout, known, start, end
        )
        async with prefetched(plaintext, PIPELINE_DEPTH) as pieces:
            await _send_stream(ex, status, out, pieces)


async def _get_multipart_whole(
    ex: Exchange,
    response: httpx.Response,
    envelope: Envelope,
    fetched: Fetched,
    query: list[tuple[str, str]],
) -> None:
    """A whole multipart object from the one backend response that is already streaming it:
    the first part's header is its first bytes, and only the last part's header is read
    apart (trios3.ops.reads.find_layout) before the status line."""
    stream = response.aiter_raw()
    head = b""
    while len(head) < mp.PART_HEADER_SIZE:
        chunk = await anext(stream, None)
        if chunk is None:
            raise TamperedError("the stored object ends inside its first part header")
        head += chunk
    head, rest = head[: mp.PART_HEADER_SIZE], head[mp.PART_HEADER_SIZE :]
    first = mp.PartHeader.parse(head)
    stored = reads.StoredObject(
        ex.bucket, ex.key, query, response.headers.get("etag", ""), fetched.total
    )
    data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
    backend = ex.services.backend
    layout, known = await reads.find_layout(backend, stored, envelope.segment_size, first)
    out = hdr.object_response_headers(response.headers, encrypted=True)
    out = _show_sealed_md5(out, envelope, data_key, ex.bucket, ex.key)
    start, end, status = _multipart_range(ex, layout, out)
    opener = mp.MultipartOpener(data_key, layout, start, end, known[1])
    if opener.window != (mp.PART_HEADER_SIZE, fetched.total - 1):
        raise TamperedError("the part headers do not add up to the stored size")

    async def plaintext() -> AsyncIterator[bytes]:
        for piece in opener.feed(rest):
            yield piece
        async for chunk in stream:
            for piece in opener.feed(chunk):
                yield piece
        for piece in opener.finish():
            yield piece

    async with prefetched(plaintext(), PIPELINE_DEPTH) as pieces:
        await _send_stream(ex, status, out, pieces)


def _multipart_range(
    ex: Exchange, layout: mp.Layout, out: list[tuple[str, str]]
) -> tuple[int, int, int]:
    """The plaintext bytes a GET or HEAD of a multipart object answers with (``0, -1`` for
    an empty object) and its status; adds Content-Length, Content-Range and, for a
    ``partNumber`` request, the part count, as S3 does."""
    size = layout.plaintext_size
    part = ex.target.query.get("partNumber")
    if part is not None:
        if not part.isascii() or not part.isdigit() or not 1 <= int(part) <= mp.MAX_PART_NUMBER:
            raise S3Error(
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                fields={"ArgumentName": "partNumber", "ArgumentValue": part},
            )
        if "range" in ex.headers:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber.")
        if int(part) > layout.count:
            raise S3Error(
                "InvalidPartNumber", "The requested partnumber is not satisfiable", status=416
            )
        place = layout.place(int(part))
        start, end = place.plaintext_start, place.plaintext_start + place.plaintext_size - 1
        out.append(("x-amz-mp-parts-count", str(layout.count)))
        out.append(("content-length", str(place.plaintext_size)))
        if place.plaintext_size:
            out.append(("content-range", content_range(start, end, size)))
        else:
            start, end = 0, -1
        return start, end, 206
    wanted = parse_range(ex.headers.get("range"), size)
    if wanted:
        start, end = wanted
        out.append(("content-length", str(end - start + 1)))
        out.append(("content-range", content_range(start, end, size)))
        return start, end, 206
    out.append(("content-length", str(size)))
    return 0, size - 1, 200


async def _decrypt(
    response: httpx.Response,
    fetched: Fetched,
    span: fmt.SegmentSpan,
    data_key: bytes,
    segment_size: int,
    size: int,
) -> AsyncIterator[bytes]:
    """Plaintext of ``span`` from a backend response that covers it (and maybe more)."""
    opener = fmt.SegmentOpener(data_key, segment_size, size, span.first_segment, span.last_segment)
    drop_stored = span.stored_start - fetched.start
    stored_left = span.stored_end - span.stored_start + 1
    drop_plain = span.skip
    plain_left = span.length

    def trim(pieces: list[bytes]):
        nonlocal drop_plain, plain_left
        for piece in pieces:
            if drop_plain:
                cut = min(drop_plain, len(piece))
                piece = piece[cut:]
                drop_plain -= cut
            piece = piece[:plain_left]
            plain_left -= len(piece)
            if piece:
                yield piece

    async for chunk in response.aiter_raw():
        if drop_stored:
            cut = min(drop_stored, len(chunk))
            chunk = chunk[cut:]
            drop_stored -= cut
        # Bytes past the span are read and dropped rather than left unread: the backend
        # window ends at the span in all but odd cases, and a response read to its end keeps
        # its connection in the pool.
        chunk = chunk[:stored_left]
        if not chunk:
            continue
        stored_left -= len(chunk)
        for piece in trim(opener.feed(chunk)):
            yield piece
    for piece in trim(opener.finish()):
        yield piece


async def _send_stream(ex: Exchange, status: int, headers, pieces: AsyncIterator[bytes]) -> None:
    """Send a streamed body. The first piece is decrypted before the status line, so an object
    whose first segment fails authentication gets an error status; a later failure can only
    cut the body short (the app logs it and drops the connection)."""
    first = await anext(pieces, b"")
    await ex.respond.start(status, headers)
    if first:
        await ex.respond.body(first, more=True)
    async for piece in pieces:
        await ex.respond.body(piece, more=True)
    await ex.respond.body(b"", more=False)


async def _send_foreign(ex: Exchange, response: httpx.Response) -> None:
    """An object the proxy did not encrypt: its bytes as they are (docs/FORMAT.md)."""
    out = hdr.object_response_headers(response.headers, encrypted=False)
    for name in ("content-length", "content-range"):
        if name in response.headers:
            out.append((name, response.headers[name]))
    await ex.respond.start(response.status_code, out)
    async for chunk in response.aiter_raw():
        await ex.respond.body(chunk, more=True)
    await ex.respond.body(b"", more=False)


def _check_part_number(ex: Exchange) -> None:
    """A single PUT's object has one part: part 1 is the whole object."""
    part = ex.target.query.get("partNumber")
    if part is not None and part != "1":
        raise S3Error(
            "InvalidPartNumber", "The requested partnumber is not satisfiable", status=416
        )


async def head_object(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    query = ex.query_items("versionId")
    async with ex.services.backend.stream(
        "HEAD", ex.bucket, ex.key, query=query, headers=hdr.conditions(ex.headers)
    ) as response:
        pass
    if response.status_code != 200:
        raise _refusal(ex, response, b"")
    envelope = Envelope.from_metadata(response.headers)
    if envelope is None:
        ex.services.check_foreign()
    out = hdr.object_response_headers(response.headers, encrypted=envelope is not None)
    if envelope is not None and envelope.sealed_md5 is not None:
        data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
        out = _show_sealed_md5(out, envelope, data_key, ex.bucket, ex.key)
    stored = int(response.headers.get("content-length", "0"))
    if envelope is not None and envelope.multipart:
        etag = response.headers.get("etag", "")
        obj = reads.StoredObject(ex.bucket, ex.key, query, etag, stored)
        layout, _ = await reads.find_layout(ex.services.backend, obj, envelope.segment_size)
        _, _, status = _multipart_range(ex, layout, out)
        await ex.respond.start(status, out)
        await ex.respond.body(b"", more=False)
        return
    _check_part_number(ex)
    size = stored
    if envelope is not None:
        size = fmt.plaintext_size(stored, envelope.segment_size)
        if size is None:
            raise S3Error("InternalError", "The stored object has an impossible size.")
    # A Range on HEAD is answered as S3 does: 206 with the range's length and Content-Range.
    wanted = parse_range(ex.headers.get("range"), size)
    if wanted:
        start, end = wanted
        out.append(("content-length", str(end - start + 1)))
        out.append(("content-range", content_range(start, end, size)))
    else:
        out.append(("content-length", str(size)))
    await ex.respond.start(206 if wanted else 200, out)
    await ex.respond.body(b"", more=False)


def _show_sealed_md5(
    out: list[tuple[str, str]], envelope: Envelope, data_key: bytes, bucket: str, key: str
) -> list[tuple[str, str]]:
    """``out`` with the object's sealed MD5, if it has one, where rclone looks for the MD5 of
    an object whose ETag is not one (``x-amz-meta-md5chksum``)."""
    if envelope.sealed_md5 is None:
        return out
    md5 = open_content_md5(data_key, envelope.sealed_md5, bucket, key)
    return hdr.with_content_md5(out, md5)


async def put_object(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    meta, content_md5 = hdr.take_content_md5(hdr.user_metadata(ex.headers))
    body = ex.body
    headers = hdr.upload_headers(ex.headers) + meta
    headers += hdr.conditions(ex.headers, ("if-match", "if-none-match"))
    async with ex.services.budget.lease(stream_window(fmt.DEFAULT_SEGMENT_SIZE)):
        # The client's md5chksum, or else its Content-MD5, is sealed into the metadata before
        # the body is read: the body is held to a Content-MD5, and a mismatch stores nothing.
        response = await _store_encrypted(
            ex,
            headers,
            body.length,
            body.chunks(),
            content_md5=content_md5 or body.checks.content_md5,
        )
    out = [("etag", client_etag(response.headers.get("etag", ""), True))]
    out += [(n, v) for n, v in body.checks.response_headers().items()]
    for name in ("x-amz-version-id", "x-amz-server-side-encryption"):
        if name in response.headers:
            out.append((name, response.headers[name]))
    await ex.respond.whole(200, out, b"")


class Sealer(Protocol):
    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]: ...
    def finish(self) -> bytes: ...


async def send_sealed(
    ex: Exchange,
    sealer: Sealer,
    plaintext: AsyncIterator[bytes],
    *,
    content_length: int,
    prefix: bytes = b"",
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[httpx.Response, bytes]:
    """Encrypt ``plaintext`` with ``sealer`` while sending ``prefix`` and the sealed pieces
    in a backend PUT at the exchange's key; the response and its (small) body.

    The caller holds the budget lease. ``plaintext`` must raise if anything about it turns out
    wrong; the final segment is sent only after it has ended cleanly, so a failed upload never
    becomes an object or a part at the backend.
    """

    async def ciphertext() -> AsyncIterator[bytes]:
        async for piece in plaintext:
            for sealed in sealer.feed(piece):
                yield sealed
        yield sealer.finish()

    async with prefetched(ciphertext(), PIPELINE_DEPTH) as sealed:
        # The backend request starts only with the first sealed segment in hand: a body that
        # fails its checks before then (every body of one segment) never reaches the
        # backend, where a dropped upload could still leave an empty object behind.
        first = await anext(sealed)

        async def body() -> AsyncIterator[bytes]:
            if prefix:
                yield prefix
            yield first
            async for piece in sealed:
                yield piece

        async with ex.services.backend.stream(
            "PUT",
            ex.bucket,
            ex.key,
            query=query or (),
            headers=headers or (),
            body=body(),
            content_length=content_length,
        ) as response:
            data = await read_limited(response, SMALL_RESPONSE)
    return response, data


async def _store_encrypted(
    ex: Exchange,
    headers: list[tuple[str, str]],
    length: int,
    plaintext: AsyncIterator[bytes],
    *,
    content_md5: bytes | None = None,
) -> httpx.Response:
    """Encrypt ``plaintext`` (``length`` bytes) into a new object at the exchange's key;
    ``content_md5``, when given, must be the plaintext's and is sealed with it."""
    data_key, envelope = ex.services.keyring.seal_new(ex.bucket, ex.key, content_md5=content_md5)
    response, data = await send_sealed(
        ex,
        fmt.SegmentSealer(data_key, envelope.segment_size),
        plaintext,
        content_length=fmt.stored_size(length, envelope.segment_size),
        headers=headers + list(envelope.to_metadata().items()),
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    return response


async def delete_object(ex: Exchange) -> None:
    response, data = await ex.services.backend.request(
        "DELETE", ex.bucket, ex.key, query=ex.query_items("versionId"), max_body=SMALL_RESPONSE
    )
    if response.status_code not in (200, 204):
        raise backend_error(response, data)
    out = [
        (n, response.headers[n])
        for n in ("x-amz-version-id", "x-amz-delete-marker")
        if n in response.headers
    ]
    await ex.respond.whole(204, out, b"")


def _copy_source(value: str) -> tuple[str, str, str | None]:
    """``x-amz-copy-source`` as (bucket, key, versionId)."""
    path, _, query = value.partition("?")
    path = unquote(path).lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )
    version = None
    if query:
        name, _, version = query.partition("=")
        if name != "versionId" or not version:
            raise S3Error("InvalidArgument", "Unsupported copy source parameter.")
        version = unquote(version)
    return bucket, key, version


@dataclass(frozen=True)
class CopySource:
    """A copy's source as its HEAD found it; later reads are pinned to its ETag."""

    stored: reads.StoredObject
    version: str | None
    headers: httpx.Headers
    envelope: Envelope | None


async def copy_source_object(ex: Exchange) -> CopySource:
    """HEAD the ``x-amz-copy-source`` under the client's ``x-amz-copy-source-if-*``."""
    src_bucket, src_key, version = _copy_source(ex.headers["x-amz-copy-source"])
    query = [("versionId", version)] if version else []
    src_conditions = [
        (n.removeprefix("x-amz-copy-source-"), v)
        for n, v in hdr.conditions(ex.headers, hdr.COPY_CONDITIONS)
    ]
    source, _ = await ex.services.backend.request(
        "HEAD", src_bucket, src_key, query=query, headers=src_conditions, max_body=SMALL_RESPONSE
    )
    if source.status_code != 200:
        err = backend_error(source, b"")
        if source.status_code in (304, 412):
            raise S3Error("PreconditionFailed")
        raise err
    envelope = Envelope.from_metadata(source.headers)
    if envelope is None:
        ex.services.check_foreign()
    stored = reads.StoredObject(
        src_bucket,
        src_key,
        query,
        source.headers.get("etag", ""),
        int(source.headers.get("content-length", "0")),
    )
    return CopySource(stored, version, source.headers, envelope)


@dataclass(frozen=True)
class OpenedSource:
    """A copy source ready to be read as plaintext: its size and a reader of byte ranges."""

    size: int
    plaintext: Callable[[int, int], AsyncIterator[bytes]]  # (start, end), end=-1 when empty


async def open_source(services: Services, source: CopySource) -> OpenedSource:
    """Whatever the source's format: the proxy's single objects and multipart objects are
    decrypted, other objects read as they are (the caller re-encrypts what it writes)."""
    backend, stored, envelope = services.backend, source.stored, source.envelope
    if envelope is None:
        return OpenedSource(
            stored.stored_size, lambda start, end: _raw_range(backend, stored, start, end)
        )
    data_key = services.keyring.open(envelope, stored.bucket, stored.key)
    if envelope.multipart:
        layout, known = await reads.find_layout(backend, stored, envelope.segment_size)
        return OpenedSource(
            layout.plaintext_size,
            lambda start, end: reads.decrypt_range(
                backend, stored, data_key, layout, known, start, end
            ),
        )
    segment_size = envelope.segment_size
    size = fmt.plaintext_size(stored.stored_size, segment_size)
    if size is None:
        raise S3Error("InternalError", "The stored object has an impossible size.")
    return OpenedSource(
        size,
        lambda start, end: _single_range(backend, stored, data_key, segment_size, size, start, end),
    )


async def _single_range(
    backend: Backend,
    stored: reads.StoredObject,
    data_key: bytes,
    segment_size: int,
    size: int,
    start: int,
    end: int,
) -> AsyncIterator[bytes]:
    span = fmt.span_for_range(size, start, end, segment_size)
    async with reads.pinned_window(backend, stored, span.stored_start, span.stored_end) as response:
        fetched = Fetched.of(response)
        async for piece in _decrypt(response, fetched, span, data_key, segment_size, size):
            yield piece


async def _raw_range(
    backend: Backend, stored: reads.StoredObject, start: int, end: int
) -> AsyncIterator[bytes]:
    """Bytes start..end of an object the proxy did not encrypt, as they are."""
    if end < start:
        return
    received = 0
    async with reads.pinned_window(backend, stored, start, end) as response:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            yield chunk
    if received != end - start + 1:
        raise S3Error("InternalError", "The copy source ended early.")


async def copy_object(ex: Exchange) -> None:
    """Server-side copy: the ciphertext is copied by the backend and only the data key is
    re-wrapped for the destination (part by part for a multipart source). A source the proxy
    did not encrypt is streamed through the encrypting PUT path instead, so a copy never
    stores plaintext."""
    hdr.reject_sse_c(ex.headers)
    directive = ex.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.")
    copied = await copy_source_object(ex)
    src_bucket, src_key = copied.stored.bucket, copied.stored.key
    version, source, envelope = copied.version, copied.headers, copied.envelope
    query = list(copied.stored.query)
    if directive == "COPY":
        # Copying a foreign object onto itself changes its encryption: that is a migration.
        itself = (src_bucket, src_key) == (ex.bucket, ex.key) and envelope is not None
        if itself and not _changes_something(ex):
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata, storage class, website redirect "
                "location or encryption attributes.",
            )
        described, meta = described_by(source)
        for name in ("x-amz-storage-class", "x-amz-tagging", "x-amz-acl"):
            if name in ex.headers:
                described = [(n, v) for n, v in described if n != name]
                described.append((name, ex.headers[name]))
    else:
        described = hdr.upload_headers(ex.headers)
        meta = hdr.user_metadata(ex.headers)
    # An md5chksum in the clear (the client's, or the source's from before the proxy sealed
    # it) is sealed; otherwise the source's sealed MD5 comes along. A clear one beside the
    # source's sealed one is not the proxy's (hdr.with_content_md5) and is not carried.
    meta, content_md5 = hdr.take_content_md5(meta)
    if directive == "COPY" and envelope is not None and envelope.sealed_md5 is not None:
        content_md5 = None
    if envelope is None:
        await _copy_foreign(
            ex, src_bucket, src_key, query, source, described + meta, content_md5=content_md5
        )
        return
    rewrapped = ex.services.keyring.rewrap(
        envelope, src_bucket, src_key, ex.bucket, ex.key, content_md5=content_md5
    )
    headers = described + meta + list(rewrapped.to_metadata().items())
    if envelope.multipart:
        # A backend CopyObject copies the tags itself; a part-for-part copy must carry them.
        headers = [(n, v) for n, v in headers if n != "x-amz-tagging"]
        if ex.headers.get("x-amz-tagging-directive", "COPY").upper() == "REPLACE":
            tagging = ex.headers.get("x-amz-tagging", "")
        else:
            tagging = await source_tagging(ex.services.backend, copied.stored)
        if tagging:
            headers.append(("x-amz-tagging", tagging))
        etag = await copy_multipart(
            ex.services.backend, copied.stored, envelope.segment_size, ex.bucket, ex.key, headers
        )
        last_modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        out = [("content-type", "application/xml")]
        if version:
            out.append(("x-amz-copy-source-version-id", version))
        await ex.respond.whole(200, out, render_copy_object_result(etag, last_modified))
        return
    headers += [
        ("x-amz-copy-source", copy_source_header(copied.stored)),
        ("x-amz-metadata-directive", "REPLACE"),
        # The source must still be the one whose data key was just re-wrapped.
        ("x-amz-copy-source-if-match", copied.stored.etag),
    ]
    if "x-amz-tagging-directive" in ex.headers:
        headers.append(("x-amz-tagging-directive", ex.headers["x-amz-tagging-directive"]))
    response, data = await ex.services.backend.request(
        "PUT", ex.bucket, ex.key, headers=headers, max_body=SMALL_RESPONSE
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    etag, last_modified = parse_copy_object_result(data)
    out = [(n, response.headers[n]) for n in ("x-amz-version-id",) if n in response.headers]
    if version:
        out.append(("x-amz-copy-source-version-id", version))
    out.append(("content-type", "application/xml"))
    await ex.respond.whole(
        200, out, render_copy_object_result(client_etag(etag, True), last_modified)
    )


async def _copy_foreign(
    ex: Exchange,
    src_bucket: str,
    src_key: str,
    query: list[tuple[str, str]],
    source: httpx.Headers,
    headers: list[tuple[str, str]],
    *,
    content_md5: bytes | None,
) -> None:
    """Copy an object the proxy did not encrypt by streaming it through the encrypting PUT
    path: a copy through the proxy never stores plaintext (and so migrates the object)."""
    length = int(source.get("content-length", "0"))
    if length > MAX_COPY_SOURCE:
        raise S3Error(
            "InvalidRequest",
            "The specified copy source is larger than the maximum allowable size for a copy "
            f"source: {MAX_COPY_SOURCE}",
        )
    pinned = [("if-match", source.get("etag", ""))]
    lease = ex.services.budget.lease(stream_window(fmt.DEFAULT_SEGMENT_SIZE))
    fetch = ex.services.backend.stream("GET", src_bucket, src_key, query=query, headers=pinned)
    async with lease, fetch as response:
        if response.status_code != 200:
            raise backend_error(response, await read_limited(response, SMALL_RESPONSE))

        async def plaintext() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                yield chunk
            if received != length:
                raise S3Error("InternalError", "The copy source ended early.")

        stored = await _store_encrypted(ex, headers, length, plaintext(), content_md5=content_md5)
    last_modified = stored.headers.get("last-modified", "")
    try:
        last_modified = parsedate_to_datetime(last_modified).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    except (TypeError, ValueError):
        last_modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    etag = client_etag(stored.headers.get("etag", ""), True)
    await ex.respond.whole(
        200,
        [("content-type", "application/xml")],
        render_copy_object_result(etag, last_modified),
    )


def described_by(source: httpx.Headers) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a copy with the COPY directive carries over from its source's HEAD: the headers
    that describe the object, and the user metadata (never the proxy's own)."""
    described = [
        (n, v) for n, v in source.items() if n in hdr.UPLOAD_HEADERS or n == "content-encoding"
    ]
    meta = [
        (n, v)
        for n, v in source.items()
        if n.startswith("x-amz-meta-") and not n.startswith(hdr.RESERVED_META)
    ]
    return described, meta


async def source_tagging(backend: Backend, stored: reads.StoredObject) -> str:
    """The object's tags as an ``x-amz-tagging`` value (empty when it has none)."""
    response, data = await backend.request(
        "GET",
        stored.bucket,
        stored.key,
        query=[("tagging", ""), *stored.query],
        max_body=SMALL_RESPONSE,
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    return urlencode(parse_tagging(data), quote_via=quote)


COPY_PARALLEL = 4  # server-side part copies in flight for one multipart copy


def copy_source_header(stored: reads.StoredObject) -> str:
    value = "/" + uri_encode(stored.bucket) + "/" + uri_encode(stored.key, encode_slash=False)
    for name, version in stored.query:
        if name == "versionId":
            value += "?versionId=" + uri_encode(version)
    return value


async def copy_multipart(
    backend: Backend,
    stored: reads.StoredObject,
    segment_size: int,
    bucket: str,
    key: str,
    headers: list[tuple[str, str]],
) -> str:
    """Copy a multipart object to ``bucket``/``key`` server-side, part for part: the same
    parts at the same numbers under the same data key (re-wrapped in ``headers``), so no
    byte is decrypted and the copy has the source's layout. Any size, including past
    CopyObject's 5 GiB. Returns the copy's ETag."""
    layout, _ = await reads.find_layout(backend, stored, segment_size)
    response, data = await backend.request(
        "POST", bucket, key, query=[("uploads", "")], headers=headers, max_body=SMALL_RESPONSE
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    upload = [("uploadId", parse_initiate_result(data))]
    etags: list[str] = [""] * layout.count
    numbers = iter(range(1, layout.count + 1))

    failures: list[Exception] = []

    async def copy_parts(scope: trio.CancelScope) -> None:
        try:
            await copy_each()
        except Exception as exc:  # the first failure ends the copy, as itself (no group)
            failures.append(exc)
            scope.cancel()

    async def copy_each() -> None:
        for number in numbers:
            place = layout.place(number)
            end = place.stored_start + place.stored_size - 1
            response, data = await backend.request(
                "PUT",
                bucket,
                key,
                query=[("partNumber", str(number)), *upload],
                headers=[
                    ("x-amz-copy-source", copy_source_header(stored)),
                    ("x-amz-copy-source-range", f"bytes={place.stored_start}-{end}"),
                    ("x-amz-copy-source-if-match", stored.etag),
                ],
                max_body=SMALL_RESPONSE,
            )
            if response.status_code == 412:
                raise reads.changed()
            if response.status_code != 200:
                raise backend_error(response, data)
            etags[number - 1] = parse_copy_object_result(data)[0]

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(COPY_PARALLEL, layout.count)):
                nursery.start_soon(copy_parts, nursery.cancel_scope)
        if failures:
            raise failures[0]
        document = render_complete_request(list(enumerate(etags, start=1)))
        response, data = await backend.request(
            "POST", bucket, key, query=upload, body=document, max_body=SMALL_RESPONSE
        )
        if response.status_code != 200:
            raise backend_error(response, data)
        return parse_complete_result(data)
    except BaseException:
        # Leave no half-copied upload behind, even when cancelled (bounded, shielded).
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await backend.request("DELETE", bucket, key, query=upload)
        raise


def _changes_something(ex: Exchange) -> bool:
    return any(
        n in ex.headers
        for n in (
            "x-amz-storage-class",
            "x-amz-website-redirect-location",
            "x-amz-server-side-encryption",
            "x-amz-tagging",
        )
    )
