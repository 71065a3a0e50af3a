"""Which headers cross the proxy, in each direction, and how they are rewritten.

Allowlists, not denylists: a header the proxy does not understand could describe the
ciphertext (checksums, lengths) or carry the client's own signature, so it does not pass.
Everything here takes and returns plain strings: the operations (trios3.ops) decide nothing
about headers themselves.

What goes to the backend is US-ASCII. S3 documents user metadata as US-ASCII over REST (and
answers other characters with SignatureDoesNotMatch whenever the client signed them as UTF-8),
and a header value is bytes the proxy holds as latin-1 text: signed as text but sent as bytes,
a value beyond ASCII would be canonicalised one way by the proxy and another by a backend that
reads its bytes as UTF-8, and the backend would refuse the proxy's own signature. Such a value
is the client's error (InvalidArgument, naming the header), never a backend request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

from trios3.core.errors import S3Error
from trios3.core.etag import backend_condition, client_etag
from trios3.core.keys import ENVELOPE_METADATA_SIZE, MD5_SIZE, META_PREFIX, parse_base64

# The proxy's own metadata (trios3.core.keys): clients may neither set nor see it.
RESERVED_META = META_PREFIX
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


# Headers that authentication, routing or body checks read: a repeat would let the signature
# cover one value while the proxy acts on another. Every x-amz-* header is one of them too.
SINGLE_HEADERS = frozenset(
    {
        "authorization",
        "content-encoding",
        "content-length",
        "content-md5",
        "content-type",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "range",
    }
)


def request_headers(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A request's (lower-case) header pairs as one mapping: repeats of a header that may
    appear only once are InvalidArgument, others are joined with commas as HTTP allows."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        if name in headers:
            if name.startswith("x-amz-") or name in SINGLE_HEADERS:
                # The signature covers the first of two; the proxy could act on either.
                raise S3Error("InvalidArgument", f"The header {name} may appear only once.")
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value
    return headers


def without_aws_chunked(value: str) -> str:
    """A Content-Encoding without its ``aws-chunked`` coding (a transfer framing)."""
    codings = [c.strip() for c in value.split(",")]
    return ", ".join(c for c in codings if c and c.lower() != "aws-chunked")


def ascii_header(name: str, value: str) -> str:
    """``value``, if it may go to the backend as it is: US-ASCII (see the module's note);
    InvalidArgument naming the header otherwise."""
    if not value.isascii():
        raise S3Error(
            "InvalidArgument",
            f"The value of the {name} header must be US-ASCII "
            "(encode other characters, e.g. as RFC 2047 or percent-encoding).",
            fields={"ArgumentName": name, "ArgumentValue": value},
        )
    return value


def user_metadata(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The client's own ``x-amz-meta-*``, US-ASCII; the proxy's reserved prefix is refused."""
    meta = [(n, v) for n, v in headers.items() if n.startswith("x-amz-meta-")]
    for name, value in meta:
        if name.startswith(RESERVED_META):
            raise S3Error("InvalidArgument", f"The metadata prefix {RESERVED_META} is reserved.")
        ascii_header(name, value)
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
    """Client headers that describe the object (not its bytes), passed on to the backend;
    each must be US-ASCII."""
    out = [(n, ascii_header(n, v)) for n, v in headers.items() if n in UPLOAD_HEADERS]
    encoding = without_aws_chunked(headers.get("content-encoding", ""))
    if encoding:
        out.append(("content-encoding", ascii_header("content-encoding", encoding)))
    return out


def conditions(headers: Mapping[str, str], names=CONDITIONS) -> list[tuple[str, str]]:
    """Conditional headers for the backend, with the proxy's ETag suffix removed; each must be
    US-ASCII."""
    out = []
    for name in names:
        if name in headers:
            value = ascii_header(name, headers[name])
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
        if name == "content-encoding":
            # aws-chunked framed the upload (the proxy's own, trios3.core.upload_checksum),
            # it does not describe the object; some backends keep it all the same.
            value = without_aws_chunked(value)
            if not value:
                continue
        if name in OBJECT_RESPONSE_HEADERS or (
            name.startswith("x-amz-meta-") and not name.startswith(RESERVED_META)
        ):
            out.append((name, value))
    if "etag" in backend_headers:
        out.append(("etag", client_etag(backend_headers["etag"], encrypted)))
    return out


def not_modified_headers(
    backend_headers: Mapping[str, str], if_none_match: str | None
) -> dict[str, str]:
    """The validators a 304 keeps (ETag, Last-Modified), in the client's terms, so that it
    can keep its cached copy.

    A backend 304 may carry no metadata to tell whether the object is the proxy's; the
    client's own If-None-Match does (it names the ETag the client was given), and without
    one the object is taken to be the proxy's, as all objects written through it are.
    """
    out: dict[str, str] = {}
    etag = backend_headers.get("etag", "")
    encrypted = etag not in (if_none_match or "")
    if any(n.startswith(RESERVED_META) for n in backend_headers):
        encrypted = True
    if etag:
        out["etag"] = client_etag(etag, encrypted)
    if "last-modified" in backend_headers:
        out["last-modified"] = backend_headers["last-modified"]
    return out


def described_by(
    source: Mapping[str, str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a copy with the COPY directive carries over from its source's HEAD: the headers
    that describe the object, and the user metadata (never the proxy's own).

    A source whose value is not US-ASCII (written to the backend directly) cannot be carried
    over as it is: InvalidRequest, so that the client can REPLACE it.
    """
    described = [
        (n, v) for n, v in source.items() if n in UPLOAD_HEADERS or n == "content-encoding"
    ]
    meta = [
        (n, v)
        for n, v in source.items()
        if n.startswith("x-amz-meta-") and not n.startswith(RESERVED_META)
    ]
    for name, value in [*described, *meta]:
        if not value.isascii():
            raise S3Error(
                "InvalidRequest",
                f"The source object's {name} is not US-ASCII and cannot be copied as it is; "
                "copy it with x-amz-metadata-directive: REPLACE.",
            )
    return described, meta
