"""GetObjectAttributes, answered in plaintext terms (trios3.core.attributes).

One HEAD of the object, and for a multipart object its layout from the part headers (as a
HEAD of it needs), so the sizes are the plaintext's and the parts the client uploaded.
"""

from __future__ import annotations

from trios3.backend import backend_error
from trios3.core import headers as hdr
from trios3.core.attributes import Attributes, parse_request, parts_page
from trios3.core.errors import S3Error
from trios3.core.etag import client_etag, part_count
from trios3.core.keys import Envelope
from trios3.core.reads import single_plaintext_size
from trios3.core.s3xml import render_object_attributes
from trios3.exchange import Exchange
from trios3.ops import stored
from trios3.ops.get import sealed_checksum

_ANSWER_HEADERS = ("last-modified", "x-amz-version-id", "x-amz-delete-marker")


async def get_object_attributes(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    request = parse_request(ex.headers)
    query = ex.query_items("versionId")
    response, _ = await ex.services.backend.request(
        "HEAD", ex.bucket, ex.key, query=query, headers=hdr.conditions(ex.headers), max_body=0
    )
    if response.status_code != 200:
        if response.status_code == 404 and response.headers.get("x-amz-delete-marker"):
            raise S3Error("NoSuchKey", headers={"x-amz-delete-marker": "true"})
        raise backend_error(response, b"")
    envelope = Envelope.from_metadata(response.headers)
    if envelope is None:
        ex.services.check_foreign()
    backend_etag = response.headers.get("etag", "")
    stored_size = int(response.headers.get("content-length", "0"))
    parts = None
    checksum: dict[str, str] = {}
    if envelope is None:
        size = stored_size
        count = part_count(backend_etag)
        if count is not None:
            parts = parts_page(None, count, request)
    elif envelope.multipart:
        obj = stored.StoredObject(ex.bucket, ex.key, query, backend_etag, stored_size)
        layout, _ = await stored.find_layout(ex.services.backend, obj, envelope.segment_size)
        size = layout.plaintext_size
        sizes = [layout.place(n).plaintext_size for n in range(1, layout.count + 1)]
        parts = parts_page(sizes, layout.count, request)
    else:
        size = single_plaintext_size(stored_size, envelope.segment_size)
    if envelope is not None and "Checksum" in request.names:
        checksum = sealed_checksum(ex, envelope)
    attributes = Attributes(
        etag=client_etag(backend_etag, envelope is not None).strip('"'),
        size=size,
        storage_class=response.headers.get("x-amz-storage-class", "STANDARD"),
        checksum=checksum,
        parts=parts,
    )
    out = [(n, response.headers[n]) for n in _ANSWER_HEADERS if n in response.headers]
    out.append(("content-type", "application/xml"))
    await ex.respond.whole(200, out, render_object_attributes(attributes, request.names))
