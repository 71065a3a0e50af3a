"""Bucket operations: listings rewritten to plaintext terms, everything else passed through.

Passed-through requests are re-signed with the backend's credentials (the proxy's clients
have keys of their own), with small bodies read whole under a budget lease.
"""

from __future__ import annotations

import base64
import hashlib

from trios3.backend import backend_error, read_limited
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core import multipart as mp
from trios3.core import sigv4
from trios3.core.etag import client_etag, part_count
from trios3.core.headers import HOP_HEADERS
from trios3.core.s3xml import parse_delete_objects, render_delete_objects, rewrite_listing
from trios3.exchange import Exchange

MAX_SMALL_BODY = 1024 * 1024  # bucket configurations, tagging, ACLs, DeleteObjects
MAX_LISTING = 4 * 1024 * 1024  # a listing page: at most 1000 entries
# Query parameters of the client's own presigned signature: never forwarded.
_PRESIGN_PARAMS = {*sigv4.PRESIGN_PARAMS, "X-Amz-Security-Token"}
# Response headers a passthrough may return.
_PASS_RESPONSE = {
    "content-type",
    "etag",
    "last-modified",
    "location",
    "x-amz-bucket-region",
    "x-amz-version-id",
    "x-amz-delete-marker",
    "x-amz-access-point-alias",
}


def _forward_query(ex: Exchange) -> list[tuple[str, str]]:
    return [(n, v) for n, v in ex.target.query.items() if n not in _PRESIGN_PARAMS]


def _forward_headers(ex: Exchange) -> list[tuple[str, str]]:
    return [
        (n, hdr.ascii_header(n, v))  # sent as signed: a value that is not ASCII cannot be
        for n, v in ex.headers.items()
        if n not in HOP_HEADERS
        # Checksums describe the client's body (re-sent with the proxy's digest), and a copy
        # source must never turn a passthrough into a write of stored bytes.
        and not n.startswith(("x-amz-checksum-", "x-amz-copy-source"))
    ]


def _md5_header(body: bytes) -> list[tuple[str, str]]:
    """Content-MD5 for a body the proxy re-sends: S3 demands it for several operations."""
    if not body:
        return []
    return [("content-md5", base64.b64encode(hashlib.md5(body).digest()).decode())]  # noqa: S324


async def passthrough(ex: Exchange) -> None:
    """Forward the request, re-signed, and return the backend's answer unchanged."""
    target = ex.target
    has_body = ex.method in ("PUT", "POST")
    async with ex.services.budget.lease(MAX_SMALL_BODY + MAX_LISTING):
        body = await ex.body.read_all(MAX_SMALL_BODY) if has_body else None
        headers = _forward_headers(ex) + (_md5_header(body) if body else [])
        async with ex.services.backend.stream(
            ex.method,
            target.bucket,
            target.key,
            query=_forward_query(ex),
            headers=headers,
            body=body,
        ) as response:
            data = b"" if ex.method == "HEAD" else await read_limited(response, MAX_LISTING)
    if response.status_code >= 300:
        raise backend_error(response, data)
    out = [
        (n, v)
        for n, v in response.headers.items()
        if n in _PASS_RESPONSE or n.startswith("x-amz-meta-")
    ]
    if ex.method == "HEAD":
        await ex.respond.start(response.status_code, [*out, ("content-length", "0")])
        await ex.respond.body(b"", more=False)
        return
    await ex.respond.whole(response.status_code, out, data)


def _plaintext_size(stored: int, etag: str) -> int:
    """From the entry alone: a ``-N`` ETag is a multipart object (format v2, exact when its
    parts are whole segments, docs/FORMAT.md), any other a single PUT (v1) or foreign."""
    count = part_count(etag)
    if count is not None:
        size = mp.listing_plaintext_size(stored, count, fmt.DEFAULT_SEGMENT_SIZE)
    else:
        size = fmt.plaintext_size(stored, fmt.DEFAULT_SEGMENT_SIZE)
    return stored if size is None else size


def _listing_etag(etag: str, stored: int) -> str:
    encrypted = fmt.plaintext_size(stored, fmt.DEFAULT_SEGMENT_SIZE) is not None
    return client_etag(etag, encrypted)


async def list_objects(ex: Exchange) -> None:
    """ListObjects v1/v2 and ListObjectVersions, with plaintext sizes from the entries alone."""
    async with ex.services.budget.lease(2 * MAX_LISTING):
        response, data = await ex.services.backend.request(
            "GET", ex.bucket, query=_forward_query(ex), max_body=MAX_LISTING
        )
        if response.status_code != 200:
            raise backend_error(response, data)
        document = rewrite_listing(data, _plaintext_size, _listing_etag)
    await ex.respond.whole(200, [("content-type", "application/xml")], document)


async def delete_objects(ex: Exchange) -> None:
    """DeleteObjects: the client's document is parsed, and the backend gets a document the
    proxy wrote from what was parsed (with its own Content-MD5), never the client's bytes: a
    document two parsers could read differently must not choose what the backend deletes."""
    async with ex.services.budget.lease(MAX_SMALL_BODY + MAX_LISTING):
        quiet, objects = parse_delete_objects(await ex.body.read_all(MAX_SMALL_BODY))
        document = render_delete_objects(quiet, objects)
        response, data = await ex.services.backend.request(
            "POST",
            ex.bucket,
            query=[("delete", "")],
            headers=[("content-type", "application/xml"), *_md5_header(document)],
            body=document,
            max_body=MAX_LISTING,
        )
    if response.status_code != 200:
        raise backend_error(response, data)
    await ex.respond.whole(200, [("content-type", "application/xml")], data)
