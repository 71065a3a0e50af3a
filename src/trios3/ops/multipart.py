"""Multipart uploads, encrypted and stateless (format v2, docs/FORMAT.md).

CreateMultipartUpload makes a data key, stores it wrapped in the backend upload's metadata
and hands the client an UploadId that carries it too, wrapped and bound to the backend upload.
Every other call finds all it needs in that UploadId and at the backend, so any proxy
process can serve any call of any upload, and nothing is kept between requests.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from trios3.backend import SMALL_BODY, Response, backend_error
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core import multipart as mp
from trios3.core.checksums import multipart_checksums
from trios3.core.errors import S3Error, TamperedError
from trios3.core.etag import client_etag
from trios3.core.keys import Envelope
from trios3.core.ranges import parse_copy_range
from trios3.core.s3xml import (
    parse_complete_request,
    parse_complete_result,
    parse_initiate_result,
    parse_list_parts,
    render_complete_request,
    render_complete_result,
    render_copy_part_result,
    render_initiate_result,
    rewrite_list_parts,
    rewrite_list_uploads,
    xml_timestamp,
)
from trios3.exchange import Exchange
from trios3.ops.copy import head_copy_source, open_source
from trios3.ops.stored import StoredObject, find_layout
from trios3.ops.streaming import copy_cost, overlapped, send_sealed, units_for, write_cost

MAX_COMPLETE_BODY = 4 * 1024 * 1024  # 10 000 parts with ETags and checksums fit in ~2 MiB
MAX_PART_LIST_PAGE = 1024 * 1024
_CHECKSUM_REQUEST_HEADERS = ("x-amz-checksum-algorithm", "x-amz-checksum-type")


# -- the UploadId -----------------------------------------------------------------------------


def _token(ex: Exchange) -> mp.UploadToken:
    return mp.UploadToken.decode(ex.target.query.get("uploadId", ""))


def _data_key(ex: Exchange, token: mp.UploadToken) -> tuple[bytes, int]:
    """The upload's data key and segment size from an UploadId that carries them."""
    if not token.carries_key or token.key_id is None or token.segment_size is None:
        raise S3Error(
            "InvalidArgument",
            "This UploadId came from ListMultipartUploads and cannot take new parts through "
            "trios3: only the UploadId CreateMultipartUpload returned carries the upload's "
            "data key. It can still be listed, completed or aborted.",
            fields={"ArgumentName": "uploadId"},
        )
    envelope = Envelope(mp.VERSION, token.key_id, token.segment_size, token.wrapped_key or b"")
    try:
        key = ex.services.keyring.open(envelope, ex.bucket, ex.key, token.backend_upload_id)
    except TamperedError:
        # Altered, forged, or made for another object or upload: as S3 says for any id it
        # never issued.
        raise S3Error("NoSuchUpload") from None
    return key, token.segment_size


def _segment_size(token: mp.UploadToken) -> int:
    return token.segment_size or fmt.DEFAULT_SEGMENT_SIZE


def _upload_query(token: mp.UploadToken) -> list[tuple[str, str]]:
    return [("uploadId", token.backend_upload_id)]


def _no_such_upload(response: Response, data: bytes) -> S3Error:
    error = backend_error(response, data)
    if response.status_code == 404 and error.code != "NoSuchBucket":
        return S3Error("NoSuchUpload")
    return error


# -- create, upload, abort --------------------------------------------------------------------


async def create_upload(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    meta, content_md5 = hdr.take_content_md5(hdr.user_metadata(ex.headers))
    headers = hdr.upload_headers(ex.headers) + meta
    data_key, envelope = ex.services.keyring.seal_new(
        ex.bucket, ex.key, version=mp.VERSION, content_md5=content_md5
    )
    response, data = await ex.services.backend.request(
        "POST",
        ex.bucket,
        ex.key,
        query=[("uploads", "")],
        headers=headers + list(envelope.to_metadata().items()),
        max_body=SMALL_BODY,
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    backend_id = parse_initiate_result(data)
    bound = ex.services.keyring.bind_to_upload(data_key, envelope, ex.bucket, ex.key, backend_id)
    token = mp.UploadToken(backend_id, bound.key_id, bound.segment_size, bound.wrapped_key)
    # The checksum the client asked for is the proxy's to verify (over the plaintext), so it
    # is not passed on; it is acknowledged as S3 acknowledges it.
    out = [(n, ex.headers[n]) for n in _CHECKSUM_REQUEST_HEADERS if n in ex.headers]
    out.append(("content-type", "application/xml"))
    await ex.respond.whole(200, out, render_initiate_result(ex.bucket, ex.key, token.encode()))


async def upload_part(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    token = _token(ex)
    number = mp.parse_part_number(ex.target.query.get("partNumber"))
    data_key, segment_size = _data_key(ex, token)
    body = ex.body
    limit = mp.max_part_plaintext(segment_size)  # so that the stored part fits in 5 GiB
    if body.length > limit:
        raise S3Error("EntityTooLarge", fields={"MaxSizeAllowed": str(limit)})
    cost = write_cost(segment_size)
    async with ex.services.budget.lease_stream(cost, units_for(body.length)) as lease:
        ex.channel.read_in(lease.unit)
        response = await _store_part(
            ex, token, data_key, segment_size, number, body.length, body.chunks()
        )
    out = [("etag", client_etag(response.headers.get("etag", ""), True))]
    out += list(body.checks.response_headers().items())
    await ex.respond.whole(200, out, b"")


async def _store_part(
    ex: Exchange,
    token: mp.UploadToken,
    data_key: bytes,
    segment_size: int,
    number: int,
    length: int,
    plaintext: AsyncIterator[bytes],
) -> Response:
    """Encrypt one attempt at a part (a fresh salt, so a fresh key) and send it, as a PUT
    is sent (trios3.ops.streaming.send_sealed)."""
    sealer = mp.PartSealer(data_key, segment_size, number, length)
    response, data = await send_sealed(
        ex,
        sealer,
        plaintext,
        content_length=sealer.stored_size,
        prefix=sealer.header.encode(),
        query=[("partNumber", str(number)), *_upload_query(token)],
        # Not yet: a backend upload with part checksums must be created with their algorithm
        # and completed with each part's (AWS refuses a part checksum it was not told of).
        verified=False,
    )
    if response.status_code != 200:
        raise _no_such_upload(response, data)
    return response


async def abort_upload(ex: Exchange) -> None:
    token = _token(ex)
    response, data = await ex.services.backend.request(
        "DELETE", ex.bucket, ex.key, query=_upload_query(token), max_body=SMALL_BODY
    )
    if response.status_code not in (200, 204):
        raise _no_such_upload(response, data)
    await ex.respond.whole(204, [], b"")


# -- listing ----------------------------------------------------------------------------------


async def list_parts(ex: Exchange) -> None:
    token = _token(ex)
    segment_size = _segment_size(token)
    query = _upload_query(token) + ex.query_items("max-parts", "part-number-marker")
    response, data = await ex.services.backend.request(
        "GET", ex.bucket, ex.key, query=query, max_body=MAX_PART_LIST_PAGE
    )
    if response.status_code != 200:
        raise _no_such_upload(response, data)

    def size_of(stored: int) -> int:
        size = mp.part_plaintext_size(stored, segment_size)
        return stored if size is None else size

    body = rewrite_list_parts(
        data, ex.target.query["uploadId"], size_of, lambda etag: client_etag(etag, True)
    )
    await ex.respond.whole(200, [("content-type", "application/xml")], body)


async def list_uploads(ex: Exchange) -> None:
    query = ex.query_items("delimiter", "encoding-type", "key-marker", "max-uploads", "prefix")
    marker = ex.target.query.get("upload-id-marker")
    if marker:
        query.append(("upload-id-marker", mp.UploadToken.decode(marker).backend_upload_id))
    query.append(("uploads", ""))
    response, data = await ex.services.backend.request(
        "GET", ex.bucket, query=query, max_body=4 * 1024 * 1024
    )
    if response.status_code != 200:
        raise backend_error(response, data)
    body = rewrite_list_uploads(data, lambda upload_id: mp.UploadToken(upload_id).encode())
    await ex.respond.whole(200, [("content-type", "application/xml")], body)


# -- complete ---------------------------------------------------------------------------------


async def _uploaded_parts(ex: Exchange, token: mp.UploadToken) -> dict[int, list[tuple[str, int]]]:
    """Part number -> [(backend ETag, stored size)], every page of the backend's ListParts."""
    parts: dict[int, list[tuple[str, int]]] = {}
    marker: str | None = None
    for _page in range(mp.MAX_PART_NUMBER // 100 + 2):
        query = [*_upload_query(token), ("max-parts", "1000")]
        if marker:
            query.append(("part-number-marker", marker))
        response, data = await ex.services.backend.request(
            "GET", ex.bucket, ex.key, query=query, max_body=MAX_PART_LIST_PAGE
        )
        if response.status_code != 200:
            raise _no_such_upload(response, data)
        page, marker = parse_list_parts(data)
        for number, etag, size in page:
            parts.setdefault(number, []).append((etag, size))
        if marker is None:
            return parts
    raise S3Error("InternalError", "The backend's part list does not end.")


async def complete_upload(ex: Exchange) -> None:
    token = _token(ex)
    segment_size = _segment_size(token)
    body = ex.document_body()
    if body.length > MAX_COMPLETE_BODY:
        raise S3Error("MalformedXML")
    # The request, its parsed form and the backend's part list, all bounded by 10 000 parts.
    # The document is parsed as it is read (trios3.core.s3xml): about its size, and 1 MiB.
    async with ex.services.budget.lease(2 * body.length + 3 * MAX_PART_LIST_PAGE):
        requested = parse_complete_request(await body.read_all(MAX_COMPLETE_BODY))
        try:
            uploaded = await _uploaded_parts(ex, token)
        except S3Error as err:
            if err.code != "NoSuchUpload":
                raise
            # Gone: completed already? Every SDK retries a Complete whose answer was lost.
            done = await _completed_before(ex, token, requested)
            if done is None:
                raise
            await _answer_complete(ex, *done)
            return
        plan = mp.plan_completion(
            [(number, etag) for number, etag, _ in requested], uploaded, segment_size
        )
        checksums = multipart_checksums(
            ex.headers, [c for _, _, c in requested], [p.plaintext_size for p in plan]
        )
        document = render_complete_request([(p.number, p.backend_etag) for p in plan])
        del requested, uploaded
        response, data = await ex.services.backend.request(
            "POST",
            ex.bucket,
            ex.key,
            query=_upload_query(token),
            headers=hdr.conditions(ex.headers, ("if-match", "if-none-match")),
            body=document,
            max_body=SMALL_BODY,
        )
    if response.status_code != 200:
        raise _no_such_upload(response, data)
    version = response.headers.get("x-amz-version-id")
    await _answer_complete(ex, parse_complete_result(data), checksums, version)


async def _answer_complete(
    ex: Exchange, etag: str, checksums: dict[str, str], version: str | None
) -> None:
    out = [("x-amz-version-id", version)] if version else []
    out.append(("content-type", "application/xml"))
    location = f"/{ex.bucket}/{ex.key}"
    await ex.respond.whole(
        200, out, render_complete_result(location, ex.bucket, ex.key, etag, checksums)
    )


async def _completed_before(
    ex: Exchange, token: mp.UploadToken, requested: list[tuple[int, str, dict[str, str]]]
) -> tuple[str, dict[str, str], str | None] | None:
    """The answer to a Complete of an upload that no longer exists because it was completed
    (by this request's lost first attempt, as S3 does: 200 with the object's ETag again), or
    None. The proof is the data key: the object at the key is this upload's only if its key
    unwraps to the one this UploadId carries (a random 32 bytes per upload); an UploadId
    from ListMultipartUploads carries none, and so cannot prove it."""
    if not token.carries_key:
        return None
    data_key, segment_size = _data_key(ex, token)
    response, _ = await ex.services.backend.request("HEAD", ex.bucket, ex.key, max_body=0)
    if response.status_code != 200:
        return None
    try:
        envelope = Envelope.from_metadata(response.headers)
        if envelope is None or not envelope.multipart:
            return None
        stored_key = ex.services.keyring.open(envelope, ex.bucket, ex.key)
    except TamperedError:
        return None
    if not hmac.compare_digest(stored_key, data_key):
        return None  # another upload (or a PUT) has replaced it since
    etag = response.headers.get("etag", "")
    obj = StoredObject(
        ex.bucket, ex.key, (), etag, int(response.headers.get("content-length", "0"))
    )
    layout, _ = await find_layout(ex.services.backend, obj, segment_size)
    if layout.count != len(requested):
        return None
    sizes = [layout.place(n).plaintext_size for n in range(1, layout.count + 1)]
    checksums = multipart_checksums(ex.headers, [c for _, _, c in requested], sizes)
    return etag, checksums, response.headers.get("x-amz-version-id")


# -- UploadPartCopy ---------------------------------------------------------------------------


async def upload_part_copy(ex: Exchange) -> None:
    """A part from a range of another object: decrypted and re-encrypted while streaming,
    since a part must be sealed under this upload's key, its number and a fresh salt."""
    hdr.reject_sse_c(ex.headers)
    token = _token(ex)
    number = mp.parse_part_number(ex.target.query.get("partNumber"))
    data_key, segment_size = _data_key(ex, token)
    source = await head_copy_source(ex)
    services = ex.services
    # Two streams at once: the source read and the part written.
    cost = copy_cost(max(segment_size, fmt.DEFAULT_SEGMENT_SIZE))
    async with services.budget.lease_stream(cost, units_for(None)) as lease:
        opened = await open_source(services, source)
        start, end = parse_copy_range(ex.headers.get("x-amz-copy-source-range"), opened.size)
        length = end - start + 1
        if length > mp.max_part_plaintext(segment_size):
            raise S3Error(
                "InvalidRequest", "The specified copy range is larger than the maximum part size."
            )
        lease.shrink(units_for(length)[0])
        plaintext = opened.plaintext(start, end, lease.unit)
        async with overlapped(plaintext, length) as pieces:
            response = await _store_part(ex, token, data_key, segment_size, number, length, pieces)
    etag = client_etag(response.headers.get("etag", ""), True)
    last_modified = xml_timestamp(datetime.now(UTC))
    out = [("content-type", "application/xml")]
    if source.version:
        out.append(("x-amz-copy-source-version-id", source.version))
    await ex.respond.whole(200, out, render_copy_part_result(etag, last_modified))
