"""Offline tools that work on the backend directly: ``rewrap`` (key rotation) and ``inspect``.

Neither decrypts a body. ``rewrap`` moves objects to the primary master key by re-wrapping
their data key in a same-key server-side copy (part for part for multipart objects, which keeps
their layout and ETag), and seals an ``md5chksum`` left in the clear by older versions;
``inspect`` shows what the proxy would see of one object.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from trios3.backend import Backend, BackendUnavailable, Response, backend_error
from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core.errors import S3Error, TamperedError
from trios3.core.keys import Envelope, Keyring
from trios3.core.s3xml import parse_copy_object_result, parse_list_objects
from trios3.ops import stored
from trios3.ops.copy import copy_multipart, copy_source_header, source_tagging


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as (bucket, prefix)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ValueError(f"expected s3://BUCKET[/KEY], got {url!r}")
    bucket, _, rest = url[5:].partition("/")
    return bucket, rest


async def list_keys(
    backend: Backend, bucket: str, prefix: str, start_after: str | None
) -> AsyncIterator[str]:
    """Every key under ``prefix`` in order, one listing page (1000 keys) at a time."""
    token: str | None = None
    while True:
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")]
        if token:
            query.append(("continuation-token", token))
        elif start_after:
            query.append(("start-after", start_after))
        response, data = await backend.request("GET", bucket, query=query)
        if response.status_code != 200:
            raise backend_error(response, data)
        keys, token = parse_list_objects(data)
        for key in keys:
            yield key
        if not token:
            return


async def _head(backend: Backend, bucket: str, key: str) -> Response:
    response, data = await backend.request("HEAD", bucket, key, max_body=0)
    if response.status_code != 200:
        raise backend_error(response, data)
    return response


@dataclass
class RewrapSummary:
    rewrapped: int = 0
    current: int = 0  # already under the primary key
    foreign: int = 0  # not encrypted by the proxy
    failed: list[tuple[str, str]] = field(default_factory=list)
    last_key: str | None = None

    @property
    def seen(self) -> int:
        return self.rewrapped + self.current + self.foreign + len(self.failed)

    def line(self, dry_run: bool) -> str:
        verb = "to rewrap" if dry_run else "rewrapped"
        return (
            f"{self.seen} objects: {self.rewrapped} {verb}, {self.current} already on the "
            f"primary key, {self.foreign} not encrypted by trios3, {len(self.failed)} failed"
        )


async def rewrap_object(
    backend: Backend, keyring: Keyring, bucket: str, key: str, *, dry_run: bool = False
) -> str:
    """Re-wrap one object's data key under the primary key, in place; what was done (or, in
    a dry run, would be): ``rewrapped``, ``current`` or ``foreign``."""
    head = await _head(backend, bucket, key)
    envelope = Envelope.from_metadata(head.headers)
    if envelope is None:
        return "foreign"
    described, meta = hdr.described_by(head.headers)
    # An md5chksum in the clear (written before the proxy sealed it) is sealed now, so an
    # object on the primary key that has one is not done yet. Beside a sealed one, a clear
    # one is not the proxy's: it is dropped, never sealed.
    meta, content_md5 = hdr.take_content_md5(meta)
    if envelope.sealed_md5 is not None:
        content_md5 = None
    if envelope.key_id == keyring.primary.key_id and content_md5 is None:
        return "current"
    if dry_run:
        return "rewrapped"
    rewrapped = keyring.rewrap(envelope, bucket, key, bucket, key, content_md5=content_md5)
    headers = described + meta + list(rewrapped.to_metadata().items())
    obj = stored.StoredObject(
        bucket, key, (), head.headers.get("etag", ""), int(head.headers["content-length"])
    )
    if envelope.multipart:
        tagging = await source_tagging(backend, obj)
        if tagging:
            headers.append(("x-amz-tagging", tagging))
        await copy_multipart(backend, obj, envelope.segment_size, bucket, key, headers)
        return "rewrapped"
    headers += [
        ("x-amz-copy-source", copy_source_header(obj)),
        ("x-amz-metadata-directive", "REPLACE"),
        ("x-amz-copy-source-if-match", obj.etag),  # the object whose key was re-wrapped
    ]
    response, data = await backend.request("PUT", bucket, key, headers=headers)
    if response.status_code != 200:
        raise backend_error(response, data)
    parse_copy_object_result(data)
    return "rewrapped"


async def rewrap(
    backend: Backend,
    keyring: Keyring,
    bucket: str,
    prefix: str,
    *,
    dry_run: bool = False,
    start_after: str | None = None,
    max_objects: int | None = None,
    progress: Callable[[RewrapSummary], None] = lambda summary: None,
) -> RewrapSummary:
    """Move every object under ``prefix`` to the primary key. Safe to stop and run again:
    objects already on the primary key are skipped (``start_after`` skips the listing ahead)."""
    summary = RewrapSummary()
    async for key in list_keys(backend, bucket, prefix, start_after):
        if max_objects is not None and summary.seen >= max_objects:
            break
        try:
            outcome = await rewrap_object(backend, keyring, bucket, key, dry_run=dry_run)
        except (S3Error, TamperedError, BackendUnavailable) as exc:
            summary.failed.append((key, str(exc)))
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        summary.last_key = key
        progress(summary)
    return summary


async def inspect(backend: Backend, keyring: Keyring, bucket: str, key: str) -> list[str]:
    """Lines describing a stored object as the proxy sees it (nothing is decrypted)."""
    head = await _head(backend, bucket, key)
    stored_size = int(head.headers.get("content-length", "0"))
    etag = head.headers.get("etag", "")
    lines = [f"object: s3://{bucket}/{key}", f"stored size: {stored_size}", f"backend ETag: {etag}"]
    envelope = Envelope.from_metadata(head.headers)
    if envelope is None:
        return [*lines, "format: none (not encrypted by trios3: served as it is)"]
    known = envelope.key_id in keyring.key_ids
    primary = envelope.key_id == keyring.primary.key_id
    lines += [
        f"format: version {envelope.version}"
        + (" (multipart)" if envelope.multipart else " (single PUT)"),
        f"master key id: {envelope.key_id}"
        + (" (primary)" if primary else " (in the keyring)" if known else " (NOT in the keyring)"),
        f"segment size: {envelope.segment_size}",
    ]
    if envelope.sealed_md5 is not None:
        lines.append("content MD5: sealed (shown to clients as x-amz-meta-md5chksum)")
    if not envelope.multipart:
        size = fmt.plaintext_size(stored_size, envelope.segment_size)
        segments = fmt.segment_count(size, envelope.segment_size) if size is not None else "?"
        lines += [f"plaintext size: {size if size is not None else 'impossible'}"]
        lines += [f"segments: {segments}"]
        return lines
    obj = stored.StoredObject(bucket, key, (), etag, stored_size)
    layout, _ = await stored.find_layout(backend, obj, envelope.segment_size)
    lines.append(f"plaintext size: {layout.plaintext_size}")
    first, last = layout.place(1), layout.place(layout.count)
    lines.append(f"parts: {layout.count}")
    sizes = {layout.place(n).plaintext_size for n in range(1, layout.count)}
    if len(sizes) <= 1:
        lines.append(
            f"part size: {first.plaintext_size} (last part {last.plaintext_size})"
            if layout.count > 1
            else f"part size: {first.plaintext_size}"
        )
    else:
        lines.append(f"part sizes differ: {sorted(sizes)[:10]} (last part {last.plaintext_size})")
    aligned = all(s % envelope.segment_size == 0 for s in sizes)
    lines.append(
        "listing size: exact"
        if aligned
        else "listing size: over-reported (parts not whole segments)"
    )
    return lines


def print_progress(summary: RewrapSummary, dry_run: bool) -> None:
    print("\r" + summary.line(dry_run), end="", file=sys.stderr, flush=True)
