"""Who may do what: a credential's :class:`Scope`, and the one table every request is checked
against before the proxy sends anything to the backend.

Today's single-tenant proxy made every credential an administrator; with tenants one leaked
credential must expose only its own buckets, and only what it may do there. The decision is made
from the request alone (operation, bucket, key, method, query, headers), so a refused request
never reaches the backend, and every refusal is the same ``403 AccessDenied`` AWS sends: it
does not say which rule failed, nor whether the bucket or key exists.

The words of the table:

- a scope *sees* a bucket when ``buckets`` is None or one of its patterns matches the whole
  name (:func:`bucket_matches`: ``*`` is any run of characters, ``?`` one character, nothing
  else is special, case-sensitive);
- *read on the bucket*: the scope sees it (read-only or read-write);
- *read on the key*: read on the bucket, and the key starts with one of ``prefixes`` (None:
  every key);
- *write on the key*: read on the key, and ``access`` is read-write;
- *write on the whole bucket*: the scope sees the bucket, is read-write and has no
  ``prefixes`` (a credential confined to prefixes shares the bucket with others and changes
  only its own keys, never the bucket);
- *admin of the bucket*: ``admin`` and the scope sees the bucket. An admin is read-write with
  no prefixes (a Scope refuses anything else), so it also has every other need on the buckets
  it sees, and only there: an admin with ``buckets = ("x-*",)`` administers the x- buckets.

==========================================================  =====================================
Request                                                     Needs
==========================================================  =====================================
ListBuckets                                                 nothing; lists only the buckets the
                                                            scope sees (:func:`visible`)
HeadBucket, GetBucketLocation, GET of a BucketSubresource   read on the bucket
ListObjects, ListObjectsV2, ListObjectVersions,             read on the bucket; with
ListMultipartUploads                                        ``prefixes``, the ``prefix`` query
                                                            starts with one of them
GetObject, HeadObject, GetObjectAttributes, ListParts,      read on the key
GET of ObjectTagging, ObjectAcl, ObjectLock
PutObject, UploadPart, CreateMultipartUpload,               write on the key
CompleteMultipartUpload, AbortMultipartUpload,
DeleteObject, PUT/DELETE of ObjectTagging, PUT of
ObjectLock (retention, legal hold)
CopyObject, UploadPartCopy (``x-amz-copy-source``)          write on the key, and read on the
                                                            source key
DeleteObjects                                               read-write on the bucket, and write
                                                            on each key of its body
CreateBucket, PUT/DELETE of BucketSubresource ``tagging``   write on the whole bucket
DeleteBucket, PUT/DELETE of every other BucketSubresource   admin of the bucket
(policy, acl, cors, website, lifecycle, replication,
encryption, object-lock, versioning, publicAccessBlock,
ownershipControls, notification, logging, …), PUT of
ObjectAcl, an Unsupported operation
any request with ``x-amz-acl`` other than ``private``,      admin of the bucket
``bucket-owner-read``, ``bucket-owner-full-control``;
with an ``x-amz-grant-*`` header; with
``x-amz-bypass-governance-retention`` other than
``false``; with ``x-amz-object-ownership``
``x-amz-object-lock-*`` on PutObject,                       nothing more than the operation's
CreateMultipartUpload, CopyObject;                          need: they keep data longer, never
``x-amz-bucket-object-lock-enabled`` on CreateBucket        shorter
==========================================================  =====================================

An operation and method the table does not name needs admin of the bucket: a route added
later is closed until someone decides who may use it. Public ACLs and grants make objects
readable by anyone, governance bypass deletes data Object Lock still protects and
``x-amz-object-ownership`` switches a bucket's ACLs on: each is a bucket-wide decision, so it
needs an admin whichever operation carries it.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from trios3.core.errors import S3Error
from trios3.core.routing import BUCKET_SUBRESOURCES, parse_copy_source

Access = Literal["read-only", "read-write"]
ACCESS_LEVELS: tuple[Access, ...] = ("read-only", "read-write")


@dataclass(frozen=True)
class Scope:
    """What one credential may reach; the defaults are every bucket and key, read-write, not
    admin. A contradiction (an admin that is read-only or confined to prefixes) is refused
    here, so the table never has to decide it."""

    buckets: tuple[str, ...] | None = None  # names or * ? patterns; None: every bucket
    prefixes: tuple[str, ...] | None = None  # key prefixes; None: every key
    access: Access = "read-write"
    admin: bool = False
    key_id: str | None = None  # master key its objects are written under; None: the primary

    def __post_init__(self) -> None:
        if self.access not in ACCESS_LEVELS:
            raise ValueError(f"access must be read-only or read-write, not {self.access!r}")
        if self.admin and self.access != "read-write":
            raise ValueError("an admin is read-write")
        if self.admin and self.prefixes is not None:
            raise ValueError("an admin reaches every key of its buckets: no prefixes")


ADMIN = Scope(admin=True)  # today's meaning of every credential: everything, everywhere


@dataclass(frozen=True)
class Credential:
    """A client's access key pair and what it may reach."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    scope: Scope


def bucket_matches(pattern: str, bucket: str) -> bool:
    """Whether a bucket name or pattern matches the whole of ``bucket``: ``*`` is any run of
    characters (none included), ``?`` exactly one; everything else, ``[`` too, is literal and
    case-sensitive. Not :func:`fnmatch.fnmatch`: its ``[seq]`` and case folding on some
    platforms would make a scope wider than it reads."""
    return _pattern(pattern).fullmatch(bucket) is not None


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def visible(scope: Scope, bucket: str) -> bool:
    """Whether ``bucket`` is one the scope sees: ListBuckets lists only those."""
    return scope.buckets is None or any(bucket_matches(p, bucket) for p in scope.buckets)


class Need(enum.StrEnum):
    """What a request needs, in the words of the module docstring."""

    NOTHING = "nothing"
    READ_BUCKET = "read on the bucket"
    LIST = "read on the bucket and on the listed prefix"
    READ_KEY = "read on the key"
    WRITE_KEY = "write on the key"
    WRITE_KEYS = "read-write on the bucket, each key checked once the body is read"
    WRITE_BUCKET = "write on the whole bucket"
    ADMIN = "admin of the bucket"


# operation -> method -> need: the rows of the table. BucketSubresource is decided by its
# selector (_subresource_need); an operation or method not here needs admin.
_TABLE: dict[str, dict[str, Need]] = {
    "ListBuckets": {"GET": Need.NOTHING},
    "HeadBucket": {"HEAD": Need.READ_BUCKET},
    "GetBucketLocation": {"GET": Need.READ_BUCKET},
    "ListObjects": {"GET": Need.LIST},
    "ListObjectsV2": {"GET": Need.LIST},
    "ListObjectVersions": {"GET": Need.LIST},
    "ListMultipartUploads": {"GET": Need.LIST},
    "GetObject": {"GET": Need.READ_KEY},
    "HeadObject": {"HEAD": Need.READ_KEY},
    "GetObjectAttributes": {"GET": Need.READ_KEY},
    "ListParts": {"GET": Need.READ_KEY},
    "ObjectTagging": {"GET": Need.READ_KEY, "PUT": Need.WRITE_KEY, "DELETE": Need.WRITE_KEY},
    "ObjectAcl": {"GET": Need.READ_KEY, "PUT": Need.ADMIN},
    "ObjectLock": {"GET": Need.READ_KEY, "PUT": Need.WRITE_KEY},
    "PutObject": {"PUT": Need.WRITE_KEY},
    "UploadPart": {"PUT": Need.WRITE_KEY},
    "CreateMultipartUpload": {"POST": Need.WRITE_KEY},
    "CompleteMultipartUpload": {"POST": Need.WRITE_KEY},
    "AbortMultipartUpload": {"DELETE": Need.WRITE_KEY},
    "DeleteObject": {"DELETE": Need.WRITE_KEY},
    "DeleteObjects": {"POST": Need.WRITE_KEYS},
    "CreateBucket": {"PUT": Need.WRITE_BUCKET},
    "DeleteBucket": {"DELETE": Need.ADMIN},
    "Unsupported": {},
}

# x-amz-acl values that keep an object private to the bucket's owner.
PRIVATE_ACLS = frozenset({"private", "bucket-owner-read", "bucket-owner-full-control"})
_COPIES = frozenset({"PutObject", "UploadPart"})


def need(operation: str, method: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Need:
    """What a request needs: its row of the table, raised to admin by a header that needs it.
    Public so that a refusal can be logged with its reason (the client is told nothing)."""
    if _needs_admin(headers):
        return Need.ADMIN
    method = method.upper()
    if operation == "BucketSubresource":
        return _subresource_need(method, query)
    return _TABLE.get(operation, {}).get(method, Need.ADMIN)


def authorize(
    scope: Scope,
    operation: str,
    bucket: str | None,
    key: str | None,
    *,
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
) -> None:
    """Raise ``S3Error("AccessDenied")`` unless ``scope`` may make this request.

    ``operation``, ``bucket``, ``key`` and ``query`` are the request's routing Target;
    header names may be in any case. A copy's ``x-amz-copy-source`` is checked here too (read
    on the source), so a caller that forgets :func:`authorize_copy_source` is still safe; a
    malformed one raises InvalidArgument, as the copy would. DeleteObjects' keys are in its
    body: the operation calls :func:`authorize_keys` once it has parsed them.
    """
    needed = need(operation, method, query, headers)
    if not _has(scope, needed, bucket, key, query):
        raise _denied()
    if operation in _COPIES:
        source = _header(headers, "x-amz-copy-source")
        if source is not None:
            copied = parse_copy_source(source)
            authorize_copy_source(scope, copied.bucket, copied.key)


def authorize_copy_source(scope: Scope, bucket: str, key: str) -> None:
    """Raise AccessDenied unless ``scope`` may read the object a copy reads from: without
    this, a tenant could copy another's object into its own bucket and read it there."""
    if not _has(scope, Need.READ_KEY, bucket, key, {}):
        raise _denied()


def authorize_keys(scope: Scope, bucket: str, keys: Iterable[str]) -> None:
    """Raise AccessDenied unless ``scope`` may delete every one of ``keys`` (DeleteObjects'
    body). One key outside the scope refuses the whole request, so nothing is half done."""
    for key in keys:
        if not _has(scope, Need.WRITE_KEY, bucket, key, {}):
            raise _denied()


def _subresource_need(method: str, query: Mapping[str, str]) -> Need:
    names = [name for name in query if name in BUCKET_SUBRESOURCES]
    if len(names) != 1:  # routing refuses this; closed should it ever get here
        return Need.ADMIN
    if method == "GET":
        return Need.READ_BUCKET
    if method in ("PUT", "DELETE") and names[0] == "tagging":
        return Need.WRITE_BUCKET
    return Need.ADMIN


def _needs_admin(headers: Mapping[str, str]) -> bool:
    for name, value in headers.items():
        name = name.lower()
        if name == "x-amz-acl" and value.strip() not in PRIVATE_ACLS:
            return True
        if name.startswith("x-amz-grant-") or name == "x-amz-object-ownership":
            return True
        if name == "x-amz-bypass-governance-retention" and value.strip().lower() != "false":
            return True
    return False


def _header(headers: Mapping[str, str], wanted: str) -> str | None:
    for name, value in headers.items():
        if name.lower() == wanted:
            return value
    return None


def _has(
    scope: Scope, needed: Need, bucket: str | None, key: str | None, query: Mapping[str, str]
) -> bool:
    """Whether ``scope`` has ``needed`` on this bucket and key: the words of the table."""
    if needed is Need.NOTHING:
        return True
    if bucket is None:  # only ListBuckets names no bucket: more on it is for a global admin
        return scope.admin and scope.buckets is None
    if not visible(scope, bucket):
        return False
    writable = scope.access == "read-write"
    match needed:
        case Need.READ_BUCKET:
            return True
        case Need.LIST:
            return _within(scope, query.get("prefix", ""))
        case Need.READ_KEY:
            return key is not None and _within(scope, key)
        case Need.WRITE_KEY:
            return writable and key is not None and _within(scope, key)
        case Need.WRITE_KEYS:
            return writable
        case Need.WRITE_BUCKET:
            return writable and scope.prefixes is None
        case Need.ADMIN:
            return scope.admin
    return False


def _within(scope: Scope, key: str) -> bool:
    return scope.prefixes is None or any(key.startswith(p) for p in scope.prefixes)


def _denied() -> S3Error:
    return S3Error("AccessDenied")
