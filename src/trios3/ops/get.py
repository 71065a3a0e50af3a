"""GetObject and HeadObject: decrypt while streaming, answer in plaintext terms.

What to fetch next from each backend answer is decided by trios3.core.reads.ReadPlan; this
module carries out the plan and streams. A multipart object's layout comes from its part
headers (trios3.ops.stored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from trios3.backend import SMALL_BODY, Response, backend_error, read_limited
from trios3.budget import StreamLease
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core import multipart as mp
from trios3.core.errors import S3Error, TamperedError
from trios3.core.keys import Envelope, open_content_md5
from trios3.core.reads import (
    FetchAgain,
    ReadPlan,
    Refuse,
    ServeForeign,
    StreamMultipartWhole,
    StreamSingle,
    check_single_part_number,
    multipart_answer,
    single_answer,
    single_plaintext_size,
)
from trios3.exchange import Exchange
from trios3.ops import stored
from trios3.ops.streaming import opened, read_cost, send_plaintext, units_for

# The query parameters of a GET that the backend is given (response-* rewrite its headers).
GET_QUERY = (
    "versionId",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
)


def _refusal(ex: Exchange, response: Response, body: bytes) -> S3Error:
    """The error for a backend GET/HEAD that did not succeed (a 304 keeps its validators)."""
    error = backend_error(response, body)
    if response.status_code == 304:
        error.headers.update(
            hdr.not_modified_headers(response.headers, ex.headers.get("if-none-match"))
        )
    return error


def _shown_headers(
    ex: Exchange, response: Response, envelope: Envelope | None, data_key: bytes | None
) -> list[tuple[str, str]]:
    """The backend's object headers a client sees, with the sealed MD5 opened (where rclone
    looks for the MD5 of an object whose ETag is not one: ``x-amz-meta-md5chksum``)."""
    out = hdr.object_response_headers(response.headers, encrypted=envelope is not None)
    if envelope is None or envelope.sealed_md5 is None or data_key is None:
        return out
    md5 = open_content_md5(data_key, envelope.sealed_md5, ex.bucket, ex.key)
    return hdr.with_content_md5(out, md5)


async def get_object(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    query = ex.query_items(*GET_QUERY)
    plan = ReadPlan(ex.headers.get("range"), ex.target.query.get("partNumber"))
    range_header = plan.first_range()
    cost = read_cost(fmt.DEFAULT_SEGMENT_SIZE)
    async with ex.services.budget.lease_stream(cost, units_for(None)) as lease:
        while True:
            headers = hdr.conditions(ex.headers)
            if range_header:
                headers.append(("range", range_header))
            async with ex.services.backend.stream(
                "GET", ex.bucket, ex.key, query=query, headers=headers
            ) as response:
                envelope = None
                if response.status_code in (200, 206):
                    envelope = Envelope.from_metadata(response.headers)
                    if envelope is None:
                        ex.services.check_foreign()
                action = plan.on_response(
                    response.status_code,
                    response.headers.get("content-range"),
                    response.headers.get("content-length"),
                    envelope,
                )
                match action:
                    case FetchAgain():
                        range_header = action.range
                        continue
                    case Refuse():
                        data = await read_limited(response, SMALL_BODY)
                        raise _refusal(ex, response, data)
                    case ServeForeign():
                        length = response.headers.get("content-length", "")
                        if length.isascii() and length.isdigit():
                            lease.shrink(units_for(int(length))[0])
                        await _send_foreign(ex, response, lease.unit)
                        return
                assert envelope is not None
                data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
                match action:
                    case StreamSingle():
                        lease.shrink(
                            units_for(action.span.stored_end - action.span.stored_start + 1)[0]
                        )
                        await _send_single(ex, response, envelope, data_key, action, lease.unit)
                        return
                    case StreamMultipartWhole():
                        lease.shrink(units_for(action.fetched.total)[0])
                        await _send_multipart_whole(
                            ex, response, envelope, data_key, action, lease.unit
                        )
                        return
            # ReadMultipart: this response is dropped; the layout comes from the part headers.
            obj = stored.StoredObject(
                ex.bucket, ex.key, query, response.headers.get("etag", ""), action.stored_size
            )
            headers = _shown_headers(ex, response, envelope, data_key)
            await _send_multipart(ex, obj, envelope.segment_size, data_key, headers, lease)
            return


async def _send_single(
    ex: Exchange,
    response: Response,
    envelope: Envelope,
    data_key: bytes,
    action: StreamSingle,
    unit: int,
) -> None:
    """A single PUT's object, or a range of it, from the response that covers its span."""
    out = _shown_headers(ex, response, envelope, data_key) + action.answer.headers
    opener = fmt.SpanOpener(
        data_key, envelope.segment_size, action.plaintext_size, action.span, action.fetched.start
    )
    plaintext = opened(response.aiter_raw(unit), opener)
    await send_plaintext(ex, action.answer.status, out, plaintext, action.span.length)


async def _send_multipart_whole(
    ex: Exchange,
    response: Response,
    envelope: Envelope,
    data_key: bytes,
    action: StreamMultipartWhole,
    unit: int,
) -> None:
    """A whole multipart object from the one backend response that is already streaming it:
    the first part's header is its first bytes, and only the last part's header is read
    apart (trios3.ops.stored.find_layout) before the status line."""
    stream = response.aiter_raw(unit)
    head = b""
    while len(head) < mp.PART_HEADER_SIZE:
        chunk = await anext(stream, None)
        if chunk is None:
            raise TamperedError("the stored object ends inside its first part header")
        head += chunk
    head, rest = head[: mp.PART_HEADER_SIZE], head[mp.PART_HEADER_SIZE :]
    first = mp.PartHeader.parse(head)
    total = action.fetched.total
    query = ex.query_items(*GET_QUERY)
    obj = stored.StoredObject(ex.bucket, ex.key, query, response.headers.get("etag", ""), total)
    layout, known = await stored.find_layout(ex.services.backend, obj, envelope.segment_size, first)
    answer = multipart_answer(layout, None, None)
    out = _shown_headers(ex, response, envelope, data_key) + answer.headers
    opener = mp.MultipartOpener(data_key, layout, answer.start, answer.end, known[1])
    if opener.window != (mp.PART_HEADER_SIZE, total - 1):
        raise TamperedError("the part headers do not add up to the stored size")

    async def rest_then_stream() -> AsyncIterator[bytes]:
        yield rest
        async for chunk in stream:
            yield chunk

    plaintext = opened(rest_then_stream(), opener)
    await send_plaintext(ex, answer.status, out, plaintext, layout.plaintext_size)


async def _send_multipart(
    ex: Exchange,
    obj: stored.StoredObject,
    segment_size: int,
    data_key: bytes,
    headers: list[tuple[str, str]],
    lease: StreamLease,
) -> None:
    """A range or part of a multipart object: its layout from the part headers, then one GET
    of exactly the segments the answer needs."""
    backend = ex.services.backend
    layout, known = await stored.find_layout(backend, obj, segment_size)
    answer = multipart_answer(layout, ex.target.query.get("partNumber"), ex.headers.get("range"))
    out = headers + answer.headers
    if answer.empty and layout.plaintext_size:  # an empty part of a non-empty object
        await ex.respond.whole(answer.status, out, b"")
        return
    lease.shrink(units_for(answer.end - answer.start + 1)[0])
    plaintext = stored.decrypt_range(
        backend, obj, data_key, layout, known, answer.start, answer.end, lease.unit
    )
    await send_plaintext(ex, answer.status, out, plaintext, answer.end - answer.start + 1)


async def _send_foreign(ex: Exchange, response: Response, unit: int) -> None:
    """An object the proxy did not encrypt: its bytes as they are (docs/FORMAT.md)."""
    out = hdr.object_response_headers(response.headers, encrypted=False)
    for name in ("content-length", "content-range"):
        if name in response.headers:
            out.append((name, response.headers[name]))
    await ex.respond.start(response.status_code, out)
    async for chunk in response.aiter_raw(unit):
        await ex.respond.body(chunk, more=True)
    await ex.respond.body(b"", more=False)


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
    data_key = None
    if envelope is not None and envelope.sealed_md5 is not None:
        data_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
    out = _shown_headers(ex, response, envelope, data_key)
    stored_size = int(response.headers.get("content-length", "0"))
    if envelope is not None and envelope.multipart:
        etag = response.headers.get("etag", "")
        obj = stored.StoredObject(ex.bucket, ex.key, query, etag, stored_size)
        layout, _ = await stored.find_layout(ex.services.backend, obj, envelope.segment_size)
        answer = multipart_answer(
            layout, ex.target.query.get("partNumber"), ex.headers.get("range")
        )
    else:
        check_single_part_number(ex.target.query.get("partNumber"))
        size = stored_size
        if envelope is not None:
            size = single_plaintext_size(stored_size, envelope.segment_size)
        # A Range on HEAD is answered as S3 does: 206 with the range's length and Content-Range.
        answer = single_answer(size, ex.headers.get("range"))
    await ex.respond.start(answer.status, out + answer.headers)
    await ex.respond.body(b"", more=False)
