"""PutObject and DeleteObject: a PUT encrypts while streaming into a new object.

The client's ``md5chksum``, or else its Content-MD5, is sealed into the metadata before the
body is read (trios3.core.keys): the body is held to a Content-MD5, and a mismatch stores
nothing.
"""

from __future__ import annotations

from trios3.backend import SMALL_BODY, backend_error
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core.etag import client_etag
from trios3.exchange import Exchange
from trios3.ops.streaming import store_encrypted, units_for, write_cost


async def put_object(ex: Exchange) -> None:
    hdr.reject_sse_c(ex.headers)
    meta, content_md5 = hdr.take_content_md5(hdr.user_metadata(ex.headers))
    body = ex.body
    headers = hdr.upload_headers(ex.headers) + meta
    headers += hdr.conditions(ex.headers, ("if-match", "if-none-match"))
    cost = write_cost(fmt.DEFAULT_SEGMENT_SIZE)
    async with ex.services.budget.lease_stream(cost, units_for(body.length)) as lease:
        ex.channel.read_in(lease.unit)
        response = await store_encrypted(
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


async def delete_object(ex: Exchange) -> None:
    response, data = await ex.services.backend.request(
        "DELETE", ex.bucket, ex.key, query=ex.query_items("versionId"), max_body=SMALL_BODY
    )
    if response.status_code not in (200, 204):
        raise backend_error(response, data)
    out = [
        (n, response.headers[n])
        for n in ("x-amz-version-id", "x-amz-delete-marker")
        if n in response.headers
    ]
    await ex.respond.whole(204, out, b"")
