"""Which headers cross the proxy, in each direction, and how they are rewritten.

Allowlists, not denylists: a header the proxy does not understand could describe the
ciphertext (checksums, lengths) or carry the client's own signature, so it does not pass.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from trios3.core.errors import S3Error
from trios3.core.etag import backend_condition, client_etag
from trios3.core.keys import ENVELOPE_METADATA_SIZE, MD5_SIZE, parse_base64

RESERVED_META = "x-amz-meta-trios3-"
# rclone's name for an object's MD5 when its ETag is not one; sealed by the proxy.
CONTENT_MD5_META = "x-amz-meta-md5chksum"
# S3's 2 KiB of user metadata, less what the proxy adds to every object it encrypts.
MAX_USER_METADATA = 2048 - ENVELOPE_METADATA_SIZE

# Client -> backend on uploads and copies (x-amz-meta-* handled apart).
UPLOAD_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-language",
        "content-type",
        "expires",
        "x-amz-acl",
        "x-amz-grant-full-control",
        "x-amz-grant-read",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "x-amz-object-lock-legal-hold",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-bucket-key-enabled",
        "x-amz-server-side-encryption-context",
        "x-amz-storage-class",
        "x-amz-tagging",
        "x-amz-website-redirect-location",
    }
)
# Backend -> client on GET and HEAD of objects (x-amz-meta-* handled apart).
OBJECT_RESPONSE_HEADERS = frozenset(
    {
        "accept-ranges",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-type",
        "expires",
        "last-modified",
        "x-amz-delete-marker",
        "x-amz-expiration",
        "x-amz-object-lock-legal-hold",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-replication-status",
        "x-amz-restore",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-bucket-key-enabled",
        "x-amz-storage-class",
        "x-amz-tagging-count",
        "x-amz-version-id",
        "x-amz-website-redirect-location",
    }
)
CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
COPY_CONDITIONS = tuple(f"x-amz-copy-source-{c}" for c in CONDITIONS)
# Never passed on by the bucket passthrough: they belong to the client's own hop or describe
# a body the proxy re-sends itself.
HOP_HEADERS = frozenset(
    {
        "accept-encoding",
        "authorization",
        "connection",
        "content-length",
        "content-md5",
        "expect",
        "host",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-decoded-content-length",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-security-token",
        "x-amz-trailer",
        "content-encoding",
    }
)


def user_metadata(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The client's own ``x-amz-meta-*``; the proxy's reserved prefix is refused."""
    meta = [(n, v) for n, v in headers.items() if n.startswith("x-amz-meta-")]
    for name, _ in meta:
        if name.startswith(RESERVED_META):
            raise S3Error("InvalidArgument", f"The metadata prefix {RESERVED_META} is reserved.")
    if sum(len(n) - len("x-amz-meta-") + len(v) for n, v in meta) > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", fields={"MaxSizeAllowed": str(MAX_USER_METADATA)})
    return meta


def take_content_md5(meta: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bytes | None]:
    """Take ``x-amz-meta-md5chksum`` out of user metadata, to be sealed (trios3.core.keys).

    rclone keeps a file's MD5 there, base64, when the ETag cannot be its MD5: a fingerprint of
    the plaintext, so the backend never gets it in the clear. A value that is not an MD5 is
    ordinary metadata and stays.
    """
    for i, (name, value) in enumerate(meta):
        if name == CONTENT_MD5_META:
            md5 = parse_md5(value)
            if md5 is None:
                return meta, None
            return meta[:i] + meta[i + 1 :], md5
    return meta, None


def parse_md5(value: str) -> bytes | None:
    """An MD5 given as standard base64 (rclone's md5chksum), or None."""
    return parse_base64(value, MD5_SIZE)


def with_content_md5(out: list[tuple[str, str]], md5: bytes) -> list[tuple[str, str]]:
    """Response headers showing an object's (authenticated) MD5 as md5chksum.

    A clear md5chksum that is an MD5 cannot be the client's own beside a sealed one (the proxy
    takes those out), so it is dropped, never shown; one that is not an MD5 is the client's
    own metadata and is shown as it is, instead of the sealed one.
    """
    clear = [v for n, v in out if n == CONTENT_MD5_META]
    if clear and parse_md5(clear[0]) is None:
        return out
    shown = [(n, v) for n, v in out if n != CONTENT_MD5_META]
    return [*shown, (CONTENT_MD5_META, base64.b64encode(md5).decode("ascii"))]


def reject_sse_c(headers: Mapping[str, str]) -> None:
    """SSE-C keys would have to travel to the backend on every read: not supported."""
    if any(n.startswith("x-amz-server-side-encryption-customer-") for n in headers):
        raise S3Error("NotImplemented", "SSE-C is not supported through this proxy.")
    if any(n.startswith("x-amz-copy-source-server-side-encryption-customer-") for n in headers):
        raise S3Error("NotImplemented", "SSE-C is not supported through this proxy.")


def upload_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Client headers that describe the object (not its bytes), passed on to the backend."""
    out = [(n, v) for n, v in headers.items() if n in UPLOAD_HEADERS]
    encoding = [
        e.strip()
        for e in headers.get("content-encoding", "").split(",")
        if e.strip() and e.strip().lower() != "aws-chunked"
    ]
    if encoding:
        out.append(("content-encoding", ", ".join(encoding)))
    return out


def conditions(headers: Mapping[str, str], names=CONDITIONS) -> list[tuple[str, str]]:
    """Conditional headers for the backend, with the proxy's ETag suffix removed."""
    out = []
    for name in names:
        if name in headers:
            value = headers[name]
            if name.endswith("match"):
                value = backend_condition(value)
            out.append((name, value))
    return out


def object_response_headers(
    backend_headers: Mapping[str, str], encrypted: bool
) -> list[tuple[str, str]]:
    """Backend object headers a client may see; checksums and lengths of ciphertext dropped."""
    out = []
    for name, value in backend_headers.items():
        if name in OBJECT_RESPONSE_HEADERS or (
            name.startswith("x-amz-meta-") and not name.startswith(RESERVED_META)
        ):
            out.append((name, value))
    if "etag" in backend_headers:
        out.append(("etag", client_etag(backend_headers["etag"], encrypted)))
    return out
