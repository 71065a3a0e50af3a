"""Reads of a stored object pinned to what was first seen of it: windows, part headers, layouts.

Every read after the first is pinned to the ETag it started with (:func:`pinned_window`), so an
object replaced meanwhile is never read half old, half new. A multipart object's (format v2)
part sizes are in its part headers, not its metadata (metadata is fixed when the upload
starts). For the usual uniform upload two small ranged GETs find the layout: the first part's
header and the header where the last part must then start. Anything else is walked header by
header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from trios3.backend import SMALL_BODY, Backend, Response, read_limited
from trios3.core import multipart as mp
from trios3.core.errors import S3Error, TamperedError
from trios3.core.etag import part_count
from trios3.ops.streaming import opened


def changed() -> S3Error:
    return S3Error(
        "SlowDown",
        "The object changed while it was being read; please retry.",
        headers={"Retry-After": "1"},
    )


@dataclass(frozen=True)
class StoredObject:
    """The backend object a read is pinned to."""

    bucket: str
    key: str
    query: Sequence[tuple[str, str]]  # versionId, if any
    etag: str
    stored_size: int


async def read_header(backend: Backend, obj: StoredObject, offset: int) -> mp.PartHeader:
    if offset + mp.PART_HEADER_SIZE > obj.stored_size:
        raise TamperedError("a part header lies past the end of the stored object")
    end = offset + mp.PART_HEADER_SIZE - 1
    async with pinned_window(backend, obj, offset, end) as response:
        data = await read_limited(response, 4 * mp.PART_HEADER_SIZE)
    if len(data) != mp.PART_HEADER_SIZE:
        raise S3Error("InternalError", "The backend did not return a part header.")
    return mp.PartHeader.parse(data)


async def find_layout(
    backend: Backend, obj: StoredObject, segment_size: int, first: mp.PartHeader | None = None
) -> tuple[mp.Layout, dict[int, mp.PartHeader]]:
    """The object's layout and the part headers read on the way (by part number); ``first``
    is the first part's header when the caller has it already."""
    count = part_count(obj.etag)
    if first is None:
        first = await read_header(backend, obj, 0)
    headers = {1: first}
    if count is not None and count <= mp.MAX_PART_NUMBER:
        last = first
        if count > 1:
            offset = mp.last_header_offset(count, first, segment_size)
            try:
                last = await read_header(backend, obj, offset)
            except TamperedError:
                last = None
        if last is not None:
            layout = mp.uniform_layout(obj.stored_size, count, first, last, segment_size)
            if layout is not None:
                headers[count] = last
                return layout, headers
    return await _walk(backend, obj, first, segment_size, count), headers


async def _walk(
    backend: Backend,
    obj: StoredObject,
    first: mp.PartHeader,
    segment_size: int,
    count: int | None,
) -> mp.Layout:
    """Every part header in turn: for uploads whose parts differ in size (rare), and for
    copies whose ETag no longer tells the part count. When the ETag tells it (``-N``), the
    headers must be N: parts dropped from the end, or added, with sizes that still add up
    are found here."""
    sizes: list[int] = []
    header, offset = first, 0
    while True:
        if header.part_number != len(sizes) + 1:
            raise TamperedError(f"part {len(sizes) + 1} is missing or out of place")
        sizes.append(header.plaintext_size)
        offset += mp.part_stored_size(header.plaintext_size, segment_size)
        if offset == obj.stored_size:
            if count is not None and len(sizes) != count:
                raise TamperedError(
                    f"{len(sizes)} part headers in an object whose ETag says {count} parts"
                )
            return mp.Layout(segment_size, sizes)
        if offset > obj.stored_size or len(sizes) >= mp.MAX_PART_NUMBER:
            raise TamperedError("the part headers do not add up to the stored size")
        header = await read_header(backend, obj, offset)


async def decrypt_range(
    backend: Backend,
    obj: StoredObject,
    data_key: bytes,
    layout: mp.Layout,
    known: dict[int, mp.PartHeader],
    start: int,
    end: int,
    read_size: int,
) -> AsyncIterator[bytes]:
    """Plaintext bytes ``start..end`` (``0, -1`` for an empty object), streamed in reads of
    ``read_size``: one GET of exactly the segments they need. The first part's header, when it is not known, comes in
    the same GET if the range starts in that part's first segment (as ranges aligned to parts
    do: aws cli and boto3 download in part-sized ranges), else from a read of its own."""
    first_part = layout.part_at(start) if end >= start else 1
    header = known.get(first_part)
    place = layout.place(first_part)
    if header is None and max(start, 0) - place.plaintext_start >= layout.segment_size:
        header = await read_header(backend, obj, place.stored_start)
    opener = mp.MultipartOpener(data_key, layout, start, end, header)
    async with pinned_window(backend, obj, *opener.window) as response:
        async for piece in opened(response.aiter_raw(read_size), opener):
            yield piece


@asynccontextmanager
async def pinned_window(
    backend: Backend, obj: StoredObject, start: int, end: int
) -> AsyncIterator[Response]:
    """A streamed GET of stored bytes ``start..end`` of the object as it was first seen:
    ``503 SlowDown`` if it changed since, an error unless the backend sends that window (a
    206, or a 200 when the window is the whole object)."""
    async with backend.stream(
        "GET",
        obj.bucket,
        obj.key,
        query=obj.query,
        headers=[("range", f"bytes={start}-{end}"), ("if-match", obj.etag)],
    ) as response:
        if response.status_code in (404, 412):
            raise changed()
        whole = (start, end) == (0, obj.stored_size - 1)
        if response.status_code != 206 and not (whole and response.status_code == 200):
            await read_limited(response, SMALL_BODY)
            raise S3Error("InternalError", "The backend refused a read of a stored window.")
        yield response
