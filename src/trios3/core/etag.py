"""The ETag policy (docs/FORMAT.md, "ETag policy"): derived from the backend's ETag alone.

An object the proxy encrypted with a single PUT shows ``"<backend hex>-0"``: the ``-`` tells
rclone and s3cmd not to compare it with the MD5 of what they uploaded (it is the MD5 of the
ciphertext), and ``-0`` never occurs in a real S3 ETag, so it can be stripped again from
conditions before they go to the backend. Deriving it from the backend ETag alone keeps PUT,
HEAD, GET, listings and conditionals consistent without any extra request.
"""

from __future__ import annotations

import re

from trios3.core.numbers import parse_decimal

SUFFIX = "-0"
_PART_COUNT = re.compile(r'-([0-9]+)"?[ \t]*$')


def client_etag(backend_etag: str, encrypted: bool) -> str:
    """The ETag a client sees for a backend ETag (quoted as S3 sends it)."""
    if not encrypted or not backend_etag:
        return backend_etag
    inner = backend_etag.strip().strip('"')
    if "-" in inner:
        return backend_etag
    return f'"{inner}{SUFFIX}"'


def backend_condition(value: str) -> str:
    """An If-Match / If-None-Match value with the proxy's suffix taken off every ETag in it."""
    out = []
    for item in value.split(","):
        item = item.strip()
        weak = item.startswith("W/")
        core = item[2:] if weak else item
        quoted = core.startswith('"') and core.endswith('"') and len(core) >= 2
        inner = core[1:-1] if quoted else core
        if inner.endswith(SUFFIX) and inner != "*":
            inner = inner[: -len(SUFFIX)]
        core = f'"{inner}"' if quoted else inner
        out.append(("W/" if weak else "") + core)
    return ", ".join(out)


def part_count(etag: str) -> int | None:
    """N from a multipart ETag ``"<hex>-N"``; None for a single-part ETag (or the proxy's
    ``-0``)."""
    match = _PART_COUNT.search(etag)
    count = parse_decimal(match.group(1)) if match else None
    return count or None
