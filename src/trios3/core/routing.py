"""Which S3 operation a request is, from its method, path, query and Host.

The decision is made on *parsed* query parameter names, never on substrings of the raw query
string: the reference proxy's ``"uploads" in query`` sent ``?list-type=2&prefix=uploads/`` to
ListMultipartUploads. Parameters that select an operation ("selectors": ``uploads``,
``uploadId``, ``tagging``, ``acl``…) are looked up by exact name; every other parameter
(``prefix``, ``x-id``, ``X-Amz-Signature``…) is a plain argument and never changes the route.

A request naming two selectors at once (``?tagging&uploadId=…``) is refused with
InvalidArgument rather than resolved by a priority list: if the proxy and the backend picked
different operations for the same request, a pass-through operation could, for example, store
an unencrypted part. For the same reason handlers should build the backend's query from the
``Target.query`` entries they understand, not forward the client's raw query string.

Virtual-hosted style applies only when the proxy is configured with a domain and the Host is
``<bucket>.<domain>``; everything else is path style. Without a domain, a Host that is
``<something>.<a name the proxy is reached by>`` is a client that believes it addresses a
bucket by its Host: read as path style, its ``DELETE /key`` would be DeleteBucket ``key``, so
it is refused instead.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from trios3.core.errors import S3Error

# Operations the app dispatches on. The three special names cover groups the app handles
# alike: "BucketSubresource" (bucket configuration passed through), "Unsupported" (answered
# with NotImplemented) and the object groups "ObjectTagging", "ObjectAcl", "ObjectLock".
# "PutObject" also covers CopyObject and "UploadPart" covers UploadPartCopy: the difference is
# the x-amz-copy-source header, which routing does not see.
OPERATIONS: frozenset[str] = frozenset(
    {
        "ListBuckets",
        "CreateBucket",
        "DeleteBucket",
        "HeadBucket",
        "GetBucketLocation",
        "ListMultipartUploads",
        "ListObjectVersions",
        "ListObjectsV2",
        "ListObjects",
        "DeleteObjects",
        "BucketSubresource",
        "GetObject",
        "HeadObject",
        "PutObject",
        "UploadPart",
        "CreateMultipartUpload",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
        "DeleteObject",
        "ObjectTagging",
        "ObjectAcl",
        "ObjectLock",
        "GetObjectAttributes",
        "Unsupported",
    }
)

# Bucket configuration subresources, all passed through as "BucketSubresource".
BUCKET_SUBRESOURCES: frozenset[str] = frozenset(
    {
        "acl",
        "cors",
        "encryption",
        "lifecycle",
        "logging",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "tagging",
        "versioning",
        "website",
        "accelerate",
        "analytics",
        "intelligent-tiering",
        "inventory",
        "metrics",
    }
)

# (selector, method) -> operation, for requests on a bucket. None is "no selector".
_BUCKET_ROUTES: dict[tuple[str | None, str], str] = {
    (None, "PUT"): "CreateBucket",
    (None, "DELETE"): "DeleteBucket",
    (None, "HEAD"): "HeadBucket",
    (None, "GET"): "ListObjects",  # or ListObjectsV2, decided by list-type
    (None, "POST"): "Unsupported",  # PostObject (browser form upload)
    ("location", "GET"): "GetBucketLocation",
    ("uploads", "GET"): "ListMultipartUploads",
    ("versions", "GET"): "ListObjectVersions",
    ("delete", "POST"): "DeleteObjects",
    **{
        (name, method): "BucketSubresource"
        for name in BUCKET_SUBRESOURCES
        for method in ("GET", "PUT", "DELETE")
    },
}
_BUCKET_SELECTORS = frozenset(s for s, _ in _BUCKET_ROUTES if s is not None)

# (selector, method) -> operation, for requests on an object.
_OBJECT_ROUTES: dict[tuple[str | None, str], str] = {
    (None, "GET"): "GetObject",
    (None, "HEAD"): "HeadObject",
    (None, "PUT"): "PutObject",
    (None, "DELETE"): "DeleteObject",
    ("uploads", "POST"): "CreateMultipartUpload",
    ("uploadId", "PUT"): "UploadPart",
    ("uploadId", "POST"): "CompleteMultipartUpload",
    ("uploadId", "DELETE"): "AbortMultipartUpload",
    ("uploadId", "GET"): "ListParts",
    ("tagging", "GET"): "ObjectTagging",
    ("tagging", "PUT"): "ObjectTagging",
    ("tagging", "DELETE"): "ObjectTagging",
    ("acl", "GET"): "ObjectAcl",
    ("acl", "PUT"): "ObjectAcl",
    ("retention", "GET"): "ObjectLock",
    ("retention", "PUT"): "ObjectLock",
    ("legal-hold", "GET"): "ObjectLock",
    ("legal-hold", "PUT"): "ObjectLock",
    ("attributes", "GET"): "GetObjectAttributes",
    ("restore", "POST"): "Unsupported",
    ("select", "POST"): "Unsupported",
    ("torrent", "GET"): "Unsupported",
}
_OBJECT_SELECTORS = frozenset(s for s, _ in _OBJECT_ROUTES if s is not None)

MAX_KEY_BYTES = 1024
_MAX_QUERY_FIELDS = 100
# Lenient on purpose: legacy buckets may have uppercase letters or underscores and up to 255
# characters; what matters here is that a name can never smuggle a path or control character.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


@dataclass(frozen=True)
class Target:
    """The S3 operation a request names, and what it names it on."""

    operation: str
    bucket: str | None
    key: str | None  # decoded; may contain '/', spaces, any unicode
    query: dict[str, str] = field(default_factory=dict)  # decoded; a bare name maps to ""


def resolve_target(
    method: str,
    raw_path: str,
    query_string: str,
    host: str | None,
    virtual_host_domain: str | None,
    own_hosts: frozenset[str] = frozenset(),
) -> Target:
    """Resolve a request to its :class:`Target`, or raise the S3Error AWS would send.

    ``raw_path`` is the still-percent-encoded path (``+`` is a literal plus there);
    ``query_string`` is the raw query without ``?``, decoded form-style (``+`` is a space).
    ``own_hosts`` are the names the proxy is reached by: with no ``virtual_host_domain``, a
    Host below one of them (``bucket.proxy``) is InvalidRequest (empty: no such check).
    """
    method = method.upper()
    query = parse_query(query_string)
    if not raw_path.startswith("/"):
        raise S3Error("InvalidURI")

    bucket = _virtual_host_bucket(host, virtual_host_domain)
    if bucket is None and not virtual_host_domain and own_hosts:
        _refuse_unconfigured_virtual_host(host, own_hosts)
    if bucket is not None:
        key_part = raw_path[1:]
    else:
        bucket_part, _, key_part = raw_path[1:].partition("/")
        if not bucket_part:
            if key_part:  # "//key": a key with no bucket
                raise S3Error("InvalidBucketName", fields={"BucketName": ""})
            return Target(_service_operation(method), None, None, query)
        bucket = _decode(bucket_part)
    _check_bucket_name(bucket)

    key = _decode(key_part)
    if not key:
        return Target(_bucket_operation(method, query), bucket, None, query)
    _check_key_length(key)
    return Target(_object_operation(method, query), bucket, key, query)


@dataclass(frozen=True)
class CopySource:
    """The object an ``x-amz-copy-source`` names."""

    bucket: str
    key: str
    version: str | None


def parse_copy_source(value: str) -> CopySource:
    """``x-amz-copy-source`` (``[/]bucket/key[?versionId=v]``, percent-encoded).

    Read as strictly as a request path: UTF-8 only, a valid bucket name, a key within S3's
    length; one optional parameter, ``versionId``. Anything else is refused here, before a
    name the proxy would not accept in a path could reach the backend.
    """
    path, _, query = value.partition("?")
    path = _decode_copy_source(path).removeprefix("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )
    _check_bucket_name(bucket)
    _check_key_length(key)
    version = None
    if query:
        name, equals, raw_version = query.partition("=")
        if name != "versionId" or not equals or not raw_version or "&" in raw_version:
            raise S3Error("InvalidArgument", "Unsupported copy source parameter.")
        version = _decode_copy_source(raw_version)
    return CopySource(bucket, key, version)


def _decode_copy_source(raw: str) -> str:
    try:
        return _decode(raw)
    except S3Error:
        raise S3Error(
            "InvalidArgument",
            "Invalid copy source encoding: it must be percent-encoded UTF-8.",
            fields={"ArgumentName": "x-amz-copy-source"},
        ) from None


def parse_query(query_string: str) -> dict[str, str]:
    """Decode a raw query string; a repeated parameter is InvalidArgument.

    Percent-decoding only: ``+`` stays a plus, exactly as the signature check reads it, so
    the query the proxy acts on is the one that was verified (SigV4 clients send spaces as
    ``%20``).
    """
    pairs = [part.partition("=") for part in query_string.split("&") if part]
    if len(pairs) > _MAX_QUERY_FIELDS:
        raise S3Error("InvalidArgument", "Too many query parameters.")
    query: dict[str, str] = {}
    for raw_name, _, raw_value in pairs:
        name, value = _decode(raw_name), _decode(raw_value)
        if name in query:
            raise S3Error(
                "InvalidArgument",
                f"Query parameter {name!r} is given more than once.",
                fields={"ArgumentName": name},
            )
        query[name] = value
    return query


def _decode(raw: str) -> str:
    try:
        return unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise S3Error("InvalidURI") from exc


def _virtual_host_bucket(host: str | None, domain: str | None) -> str | None:
    """The bucket named by ``<bucket>.<domain>``, or None for path style."""
    if not host or not domain:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never a bucket host
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    suffix = "." + domain.strip().lower().strip(".")
    if host.endswith(suffix) and len(host) > len(suffix):
        return host[: -len(suffix)]
    return None


def _refuse_unconfigured_virtual_host(host: str | None, own_hosts: frozenset[str]) -> None:
    """InvalidRequest when ``host`` is ``<label>.<own name>``: a virtual-hosted request to a
    proxy configured without a virtual-host domain."""
    name = _host_name(host)
    if name is None:
        return
    for own in own_hosts:
        own = own.strip().lower().rstrip(".")
        if own and name != own and name.endswith("." + own):
            raise S3Error(
                "InvalidRequest",
                "Virtual-hosted-style requests need --virtual-host-domain; this proxy serves "
                "path-style requests (http://host/bucket/key).",
            )


def _host_name(host: str | None) -> str | None:
    """A Host header's name, lower-case, without its port or a final dot; None for none or
    an IP literal (never a bucket's host)."""
    if not host:
        return None
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal, with or without a port
        return None
    name = name.rpartition(":")[0] if ":" in name else name
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name or None
    return None


def _check_key_length(key: str) -> None:
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise S3Error(
            "KeyTooLongError", fields={"MaxSizeAllowed": str(MAX_KEY_BYTES), "Size": str(size)}
        )


def _check_bucket_name(name: str) -> None:
    if name in (".", "..") or not _BUCKET_NAME.fullmatch(name):
        raise S3Error("InvalidBucketName", fields={"BucketName": name})


def _service_operation(method: str) -> str:
    if method == "GET":
        return "ListBuckets"
    raise S3Error("MethodNotAllowed", fields={"Method": method, "ResourceType": "SERVICE"})


def _selector(query: dict[str, str], selectors: frozenset[str]) -> str | None:
    found = [name for name in query if name in selectors]
    if len(found) > 1:
        raise S3Error(
            "InvalidArgument",
            f"Conflicting subresources in one request: {', '.join(sorted(found))}.",
        )
    return found[0] if found else None


def _bucket_operation(method: str, query: dict[str, str]) -> str:
    selector = _selector(query, _BUCKET_SELECTORS)
    operation = _BUCKET_ROUTES.get((selector, method))
    if operation is None:
        raise S3Error("MethodNotAllowed", fields={"Method": method, "ResourceType": "BUCKET"})
    if operation == "ListObjects" and "list-type" in query:
        if query["list-type"] != "2":
            raise S3Error(
                "InvalidArgument",
                "Invalid List Type specified",
                fields={"ArgumentName": "list-type", "ArgumentValue": query["list-type"]},
            )
        return "ListObjectsV2"
    return operation


def _object_operation(method: str, query: dict[str, str]) -> str:
    selector = _selector(query, _OBJECT_SELECTORS)
    operation = _OBJECT_ROUTES.get((selector, method))
    if operation is None:
        raise S3Error("MethodNotAllowed", fields={"Method": method, "ResourceType": "OBJECT"})
    if method == "PUT" and operation in ("PutObject", "UploadPart"):
        # partNumber and uploadId only make sense together on a PUT; one without the other
        # is refused rather than silently stored as a whole object.
        has_part, has_upload = "partNumber" in query, "uploadId" in query
        if has_part != has_upload:
            missing = "uploadId" if has_part else "partNumber"
            raise S3Error(
                "InvalidArgument",
                f"An UploadPart request needs both partNumber and uploadId; {missing} is missing.",
                fields={"ArgumentName": missing},
            )
    return operation
