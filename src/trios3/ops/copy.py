"""Copies: CopyObject, the source side of UploadPartCopy, and the server-side multipart copy.

A copy of an object the proxy encrypted lets the backend copy the ciphertext and re-wraps only
the data key for the destination (part for part for a multipart source, any size). A source
the proxy did not encrypt is streamed through the encrypting PUT path instead, so a copy never
stores plaintext. UploadPartCopy (trios3.ops.multipart) reads its source as plaintext through
:func:`open_source`, since a part must be sealed under its upload's key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

import trio

from trios3.backend import SMALL_BODY, Backend, backend_error, read_limited
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core.errors import S3Error
from trios3.core.etag import client_etag
from trios3.core.http1 import Headers
from trios3.core.keys import Envelope
from trios3.core.reads import Fetched, single_plaintext_size
from trios3.core.routing import parse_copy_source
from trios3.core.s3xml import (
    parse_complete_result,
    parse_copy_object_result,
    parse_initiate_result,
    parse_tagging,
    render_complete_request,
    render_copy_object_result,
    xml_timestamp,
    xml_timestamp_of,
)
from trios3.core.sigv4 import uri_encode
from trios3.exchange import Exchange, Services
from trios3.ops import stored
from trios3.ops.stored import StoredObject
from trios3.ops.streaming import copy_cost, opened, store_encrypted, units_for

MAX_COPY_SOURCE = 5 * 1024**3


@dataclass(frozen=True)
class SourceObject:
    """A copy's source as its HEAD found it; later reads are pinned to its ETag."""

    obj: StoredObject
    version: str | None
    headers: Headers
    envelope: Envelope | None


async def head_copy_source(ex: Exchange) -> SourceObject:
    """HEAD the ``x-amz-copy-source`` under the client's ``x-amz-copy-source-if-*``."""
    source_name = parse_copy_source(ex.headers["x-amz-copy-source"])
    src_bucket, src_key, version = source_name.bucket, source_name.key, source_name.version
    query = [("versionId", version)] if version else []
    src_conditions = [
        (n.removeprefix("x-amz-copy-source-"), v)
        for n, v in hdr.conditions(ex.headers, hdr.COPY_CONDITIONS)
    ]
    response, _ = await ex.services.backend.request(
        "HEAD", src_bucket, src_key, query=query, headers=src_conditions, max_body=SMALL_BODY
    )
    if response.status_code != 200:
        err = backend_error(response, b"")
        if response.status_code in (304, 412):
            raise S3Error("PreconditionFailed")
        raise err
    envelope = Envelope.from_metadata(response.headers)
    if envelope is None:
        ex.services.check_foreign()
    obj = StoredObject(
        src_bucket,
        src_key,
        query,
        response.headers.get("etag", ""),
        int(response.headers.get("content-length", "0")),
    )
    return SourceObject(obj, source_name.version, response.headers, envelope)


@dataclass(frozen=True)
class OpenedSource:
    """A copy source ready to be read as plaintext: its size and a reader of byte ranges."""

    size: int
    # (start, end, read size), end=-1 when empty
    plaintext: Callable[[int, int, int], AsyncIterator[bytes]]


async def open_source(services: Services, source: SourceObject) -> OpenedSource:
    """Whatever the source's format: the proxy's single objects and multipart objects are
    decrypted, other objects read as they are (the caller re-encrypts what it writes)."""
    backend, obj, envelope = services.backend, source.obj, source.envelope
    if envelope is None:
        return OpenedSource(
            obj.stored_size,
            lambda start, end, unit: _raw_range(backend, obj, start, end, unit),
        )
    data_key = services.keyring.open(envelope, obj.bucket, obj.key)
    if envelope.multipart:
        layout, known = await stored.find_layout(backend, obj, envelope.segment_size)
        return OpenedSource(
            layout.plaintext_size,
            lambda start, end, unit: stored.decrypt_range(
                backend, obj, data_key, layout, known, start, end, unit
            ),
        )
    segment_size = envelope.segment_size
    size = single_plaintext_size(obj.stored_size, segment_size)
    return OpenedSource(
        size,
        lambda start, end, unit: _single_range(
            backend, obj, data_key, segment_size, size, start, end, unit
        ),
    )


async def _single_range(
    backend: Backend,
    obj: StoredObject,
    data_key: bytes,
    segment_size: int,
    size: int,
    start: int,
    end: int,
    unit: int,
) -> AsyncIterator[bytes]:
    span = fmt.span_for_range(size, start, end, segment_size)
    async with stored.pinned_window(backend, obj, span.stored_start, span.stored_end) as response:
        window_start = Fetched.of(
            response.status_code,
            response.headers.get("content-range"),
            response.headers.get("content-length"),
        ).start
        opener = fmt.SpanOpener(data_key, segment_size, size, span, window_start)
        async for piece in opened(response.aiter_raw(unit), opener):
            yield piece


async def _raw_range(
    backend: Backend, obj: StoredObject, start: int, end: int, unit: int
) -> AsyncIterator[bytes]:
    """Bytes start..end of an object the proxy did not encrypt, as they are."""
    if end < start:
        return
    received = 0
    async with stored.pinned_window(backend, obj, start, end) as response:
        async for chunk in response.aiter_raw(unit):
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
    copied = await head_copy_source(ex)
    src_bucket, src_key = copied.obj.bucket, copied.obj.key
    version, source_headers, envelope = copied.version, copied.headers, copied.envelope
    query = list(copied.obj.query)
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
        described, meta = hdr.described_by(source_headers)
        for name in ("x-amz-storage-class", "x-amz-tagging", "x-amz-acl"):
            if name in ex.headers:
                described = [(n, v) for n, v in described if n != name]
                described.append((name, hdr.ascii_header(name, ex.headers[name])))
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
            ex,
            src_bucket,
            src_key,
            query,
            source_headers,
            described + meta,
            content_md5=content_md5,
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
            tagging = await source_tagging(ex.services.backend, copied.obj)
        if tagging:
            headers.append(("x-amz-tagging", tagging))
        etag = await copy_multipart(
            ex.services.backend, copied.obj, envelope.segment_size, ex.bucket, ex.key, headers
        )
        last_modified = xml_timestamp(datetime.now(UTC))
        out = [("content-type", "application/xml")]
        if version:
            out.append(("x-amz-copy-source-version-id", version))
        await ex.respond.whole(200, out, render_copy_object_result(etag, last_modified))
        return
    headers += [
        ("x-amz-copy-source", copy_source_header(copied.obj)),
        ("x-amz-metadata-directive", "REPLACE"),
        # The source must still be the one whose data key was just re-wrapped.
        ("x-amz-copy-source-if-match", copied.obj.etag),
    ]
    if "x-amz-tagging-directive" in ex.headers:
        headers.append(("x-amz-tagging-directive", ex.headers["x-amz-tagging-directive"]))
    response, data = await ex.services.backend.request(
        "PUT", ex.bucket, ex.key, headers=headers, max_body=SMALL_BODY
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
    source: Headers,
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
    cost = copy_cost(fmt.DEFAULT_SEGMENT_SIZE)
    lease = ex.services.budget.lease_stream(cost, units_for(length))
    fetch = ex.services.backend.stream("GET", src_bucket, src_key, query=query, headers=pinned)
    async with lease as held, fetch as source_response:
        if source_response.status_code != 200:
            data = await read_limited(source_response, SMALL_BODY)
            raise backend_error(source_response, data)

        async def plaintext() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in source_response.aiter_raw(held.unit):
                received += len(chunk)
                yield chunk
            if received != length:
                raise S3Error("InternalError", "The copy source ended early.")

        response = await store_encrypted(ex, headers, length, plaintext(), content_md5=content_md5)
    last_modified = xml_timestamp_of(response.headers.get("last-modified"))
    etag = client_etag(response.headers.get("etag", ""), True)
    await ex.respond.whole(
        200,
        [("content-type", "application/xml")],
        render_copy_object_result(etag, last_modified),
    )


async def source_tagging(backend: Backend, obj: StoredObject) -> str:
    """The object's tags as an ``x-amz-tagging`` value (empty when it has none)."""
    response, data = await backend.request(
        "GET",
        obj.bucket,
        obj.key,
        query=[("tagging", ""), *obj.query],
        max_body=SMALL_BODY,
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    return urlencode(parse_tagging(data), quote_via=quote)


COPY_PARALLEL = 4  # server-side part copies in flight for one multipart copy


def copy_source_header(obj: StoredObject) -> str:
    value = "/" + uri_encode(obj.bucket) + "/" + uri_encode(obj.key, encode_slash=False)
    for name, version in obj.query:
        if name == "versionId":
            value += "?versionId=" + uri_encode(version)
    return value


async def copy_multipart(
    backend: Backend,
    obj: StoredObject,
    segment_size: int,
    bucket: str,
    key: str,
    headers: list[tuple[str, str]],
) -> str:
    """Copy a multipart object to ``bucket``/``key`` server-side, part for part: the same
    parts at the same numbers under the same data key (re-wrapped in ``headers``), so no
    byte is decrypted and the copy has the source's layout. Any size, including past
    CopyObject's 5 GiB. Returns the copy's ETag."""
    layout, _ = await stored.find_layout(backend, obj, segment_size)
    response, data = await backend.request(
        "POST", bucket, key, query=[("uploads", "")], headers=headers, max_body=SMALL_BODY
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
                    ("x-amz-copy-source", copy_source_header(obj)),
                    ("x-amz-copy-source-range", f"bytes={place.stored_start}-{end}"),
                    ("x-amz-copy-source-if-match", obj.etag),
                ],
                max_body=SMALL_BODY,
            )
            if response.status_code == 412:
                raise stored.changed()
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
            "POST", bucket, key, query=upload, body=document, max_body=SMALL_BODY
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
