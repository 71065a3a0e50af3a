"""Access: every row of the table, allowed and refused, for each kind of scope."""

from __future__ import annotations

import pytest

from trios3.core import access
from trios3.core.access import (
    ADMIN,
    Credential,
    Need,
    Scope,
    authorize,
    authorize_copy_source,
    authorize_keys,
    bucket_matches,
    need,
    visible,
)
from trios3.core.errors import S3Error
from trios3.core.routing import BUCKET_SUBRESOURCES, OPERATIONS, resolve_target

SCOPES = {
    "admin": ADMIN,
    "admin-x": Scope(buckets=("x-*",), admin=True),
    "read-write": Scope(buckets=("team-a-*",)),
    "read-only": Scope(buckets=("team-a-*",), access="read-only"),
    "other-tenant": Scope(buckets=("team-b-*",)),
    "prefixed": Scope(buckets=("team-a-?",), prefixes=("in/",)),
}

BUCKET = "team-a-1"
INSIDE = "in/k"  # within the prefixed scope's prefixes
OUTSIDE = "out/k"


def allowed(scope: Scope, method: str, path: str, query: str = "", headers=None) -> bool:
    """Whether ``scope`` may make this request, routed as the app routes it."""
    target = resolve_target(method, path, query, None, None)
    try:
        authorize(
            scope,
            target.operation,
            target.bucket,
            target.key,
            method=method,
            query=target.query,
            headers=headers or {},
        )
    except S3Error as error:
        assert (error.code, error.status, error.message) == ("AccessDenied", 403, "Access Denied")
        return False
    return True


# (method, path, query) of one request per row of the table; {key} is INSIDE or OUTSIDE.
ROWS: dict[Need, list[tuple[str, str, str]]] = {
    Need.NOTHING: [("GET", "/", "")],
    Need.READ_BUCKET: [
        ("HEAD", "/{bucket}", ""),
        ("GET", "/{bucket}", "location"),
        *[("GET", "/{bucket}", name) for name in sorted(BUCKET_SUBRESOURCES)],
    ],
    Need.LIST: [
        ("GET", "/{bucket}", "prefix=in/"),
        ("GET", "/{bucket}", "list-type=2&prefix=in/"),
        ("GET", "/{bucket}", "versions&prefix=in/"),
        ("GET", "/{bucket}", "uploads&prefix=in/"),
    ],
    Need.READ_KEY: [
        ("GET", "/{bucket}/{key}", ""),
        ("HEAD", "/{bucket}/{key}", ""),
        ("GET", "/{bucket}/{key}", "attributes"),
        ("GET", "/{bucket}/{key}", "uploadId=u"),
        ("GET", "/{bucket}/{key}", "tagging"),
        ("GET", "/{bucket}/{key}", "acl"),
        ("GET", "/{bucket}/{key}", "retention"),
        ("GET", "/{bucket}/{key}", "legal-hold"),
    ],
    Need.WRITE_KEY: [
        ("PUT", "/{bucket}/{key}", ""),
        ("PUT", "/{bucket}/{key}", "partNumber=1&uploadId=u"),
        ("POST", "/{bucket}/{key}", "uploads"),
        ("POST", "/{bucket}/{key}", "uploadId=u"),
        ("DELETE", "/{bucket}/{key}", "uploadId=u"),
        ("DELETE", "/{bucket}/{key}", ""),
        ("PUT", "/{bucket}/{key}", "tagging"),
        ("DELETE", "/{bucket}/{key}", "tagging"),
        ("PUT", "/{bucket}/{key}", "retention"),
        ("PUT", "/{bucket}/{key}", "legal-hold"),
    ],
    Need.WRITE_KEYS: [("POST", "/{bucket}", "delete")],
    Need.WRITE_BUCKET: [
        ("PUT", "/{bucket}", ""),
        ("PUT", "/{bucket}", "tagging"),
        ("DELETE", "/{bucket}", "tagging"),
    ],
    Need.ADMIN: [
        ("DELETE", "/{bucket}", ""),
        *[
            (method, "/{bucket}", name)
            for name in sorted(BUCKET_SUBRESOURCES - {"tagging"})
            for method in ("PUT", "DELETE")
        ],
        ("PUT", "/{bucket}/{key}", "acl"),
        ("POST", "/{bucket}/{key}", "restore"),  # Unsupported
        ("POST", "/{bucket}", ""),  # PostObject: Unsupported
    ],
}

# Which scopes each need lets through on team-a-1, the key (or listed prefix) inside "in/".
ALLOWED: dict[Need, set[str]] = {
    Need.NOTHING: set(SCOPES),
    Need.READ_BUCKET: {"admin", "read-write", "read-only", "prefixed"},
    Need.LIST: {"admin", "read-write", "read-only", "prefixed"},
    Need.READ_KEY: {"admin", "read-write", "read-only", "prefixed"},
    Need.WRITE_KEY: {"admin", "read-write", "prefixed"},
    Need.WRITE_KEYS: {"admin", "read-write", "prefixed"},
    Need.WRITE_BUCKET: {"admin", "read-write"},
    Need.ADMIN: {"admin"},
}

# Outside "in/", the prefixed scope loses what it had on keys and listings only.
ALLOWED_OUTSIDE = {
    **ALLOWED,
    Need.LIST: ALLOWED[Need.LIST] - {"prefixed"},
    Need.READ_KEY: ALLOWED[Need.READ_KEY] - {"prefixed"},
    Need.WRITE_KEY: ALLOWED[Need.WRITE_KEY] - {"prefixed"},
}


def _cases(key: str, expected: dict[Need, set[str]]):
    for needed, requests in ROWS.items():
        for method, path, query in requests:
            if key == OUTSIDE:
                query = query.replace("prefix=in/", "prefix=out/")
            for name in SCOPES:
                yield pytest.param(
                    needed,
                    method,
                    path.format(bucket=BUCKET, key=key),
                    query,
                    name,
                    name in expected[needed],
                    id=f"{method} {path} ?{query} as {name}",
                )


def test_every_routed_operation_has_a_row():
    assert set(OPERATIONS) == set(access._TABLE) | {"BucketSubresource"}


@pytest.mark.parametrize(("needed", "method", "path", "query"), [
    pytest.param(n, m, p.format(bucket=BUCKET, key=INSIDE), q, id=f"{m} {p} ?{q}")
    for n, rows in ROWS.items()
    for m, p, q in rows
])  # fmt: skip
def test_each_request_needs_what_its_row_says(needed, method, path, query):
    target = resolve_target(method, path, query, None, None)
    assert need(target.operation, method, target.query, {}) is needed


@pytest.mark.parametrize(
    ("needed", "method", "path", "query", "scope", "expected"), list(_cases(INSIDE, ALLOWED))
)
def test_each_row_inside_the_prefixes(needed, method, path, query, scope, expected):
    assert allowed(SCOPES[scope], method, path, query) is expected


@pytest.mark.parametrize(
    ("needed", "method", "path", "query", "scope", "expected"),
    list(_cases(OUTSIDE, ALLOWED_OUTSIDE)),
)
def test_each_row_outside_the_prefixes(needed, method, path, query, scope, expected):
    assert allowed(SCOPES[scope], method, path, query) is expected


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [(m, p.format(bucket="x-1", key=INSIDE), q) for rows in ROWS.values() for m, p, q in rows],
)
def test_an_admin_of_some_buckets_may_do_everything_on_them(method, path, query):
    assert allowed(SCOPES["admin-x"], method, path, query)
    assert not allowed(SCOPES["read-write"], method, path, query) or (method, path) == ("GET", "/")


def test_an_admin_of_some_buckets_administers_no_other():
    scope = SCOPES["admin-x"]
    assert not allowed(scope, "DELETE", "/team-a-1")
    assert not allowed(scope, "GET", "/team-a-1/k")
    assert not allowed(scope, "PUT", "/y-1")  # CreateBucket outside its patterns


def test_an_unknown_operation_or_method_needs_an_admin():
    assert need("SomeFutureOperation", "GET", {}, {}) is Need.ADMIN
    assert need("GetObject", "PATCH", {}, {}) is Need.ADMIN
    assert need("BucketSubresource", "GET", {}, {}) is Need.ADMIN  # no selector
    assert need("BucketSubresource", "POST", {"tagging": ""}, {}) is Need.ADMIN
    for name in ("read-write", "read-only", "prefixed"):
        with pytest.raises(S3Error):
            authorize(
                SCOPES[name], "SomeFutureOperation", BUCKET, "k", method="GET", query={}, headers={}
            )
    authorize(ADMIN, "SomeFutureOperation", BUCKET, "k", method="GET", query={}, headers={})


def test_the_method_may_be_in_any_case():
    assert need("GetObject", "get", {}, {}) is Need.READ_KEY


# ListBuckets and bucket patterns


def test_list_buckets_is_allowed_to_all_and_filtered_by_visible():
    names = ["team-a-1", "team-a-22", "team-b-1", "x-logs", "shared"]
    for scope in SCOPES.values():
        assert allowed(scope, "GET", "/")
    assert [n for n in names if visible(SCOPES["admin"], n)] == names
    assert [n for n in names if visible(SCOPES["read-only"], n)] == ["team-a-1", "team-a-22"]
    assert [n for n in names if visible(SCOPES["prefixed"], n)] == ["team-a-1"]
    assert [n for n in names if visible(SCOPES["admin-x"], n)] == ["x-logs"]
    assert [n for n in names if visible(Scope(buckets=("shared", "x-*")), n)] == [
        "x-logs",
        "shared",
    ]


@pytest.mark.parametrize(
    ("pattern", "bucket", "matches"),
    [
        ("backups", "backups", True),
        ("backups", "backups-2", False),  # a name is the whole name, not a prefix
        ("backups", "my-backups", False),
        ("team-a-*", "team-a-", True),  # * may match nothing
        ("team-a-*", "team-a-restic.v2", True),
        ("team-a-*", "team-b-1", False),
        ("team-a-*", "Team-A-1", False),  # case-sensitive
        ("team-?", "team-a", True),
        ("team-?", "team-ab", False),
        ("team-?", "team-", False),
        ("*", "anything", True),
        ("*-logs", "web-logs", True),
        ("*-logs", "web-logs-old", False),
        ("a.b", "aXb", False),  # . is literal
        ("[ab]", "a", False),  # [ is literal: only * and ? are wildcards
        ("[ab]", "[ab]", True),
    ],
)
def test_bucket_patterns_have_star_and_question_mark_only(pattern, bucket, matches):
    assert bucket_matches(pattern, bucket) is matches


def test_create_bucket_needs_a_name_within_the_patterns():
    assert allowed(SCOPES["read-write"], "PUT", "/team-a-new")
    assert not allowed(SCOPES["read-write"], "PUT", "/team-b-new")
    assert not allowed(SCOPES["read-only"], "PUT", "/team-a-new")
    assert allowed(Scope(), "PUT", "/anything")  # read-write on every bucket, not an admin
    assert not allowed(Scope(), "DELETE", "/anything")


# Listings and prefixes


@pytest.mark.parametrize("listing", ["", "list-type=2&", "versions&", "uploads&"])
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (None, False),  # the whole bucket
        ("", False),
        ("in/", True),
        ("in/deeper/", True),
        ("in/k", True),
        ("in", False),  # would list "inbox/" too
        ("out/", False),
        ("i", False),
    ],
)
def test_a_listing_must_stay_within_the_prefixes(listing, prefix, expected):
    query = listing + ("" if prefix is None else f"prefix={prefix}")
    assert allowed(SCOPES["prefixed"], "GET", f"/{BUCKET}", query.rstrip("&")) is expected
    assert allowed(SCOPES["read-only"], "GET", f"/{BUCKET}", query.rstrip("&"))


def test_a_listing_with_several_prefixes_may_use_any_of_them():
    scope = Scope(prefixes=("a/", "b/"))
    assert allowed(scope, "GET", "/bkt", "prefix=a/x")
    assert allowed(scope, "GET", "/bkt", "list-type=2&prefix=b/")
    assert not allowed(scope, "GET", "/bkt", "list-type=2&prefix=c/")


def test_bucket_level_reads_ignore_the_prefixes():
    scope = SCOPES["prefixed"]
    assert allowed(scope, "HEAD", f"/{BUCKET}")
    assert allowed(scope, "GET", f"/{BUCKET}", "location")
    assert allowed(scope, "GET", f"/{BUCKET}", "versioning")


# Copies


COPIES = [("PUT", "/{bucket}/dest", ""), ("PUT", "/{bucket}/dest", "partNumber=1&uploadId=u")]


@pytest.mark.parametrize(("method", "path", "query"), COPIES)
def test_a_copy_between_tenants_is_refused(method, path, query):
    a, b = SCOPES["read-write"], SCOPES["other-tenant"]
    into_a = path.format(bucket="team-a-1")
    into_b = path.format(bucket="team-b-1")
    assert not allowed(a, method, into_a, query, {"x-amz-copy-source": "/team-b-1/secret"})
    assert not allowed(b, method, into_b, query, {"x-amz-copy-source": "team-a-1/backup"})
    assert not allowed(a, method, into_b, query, {"x-amz-copy-source": "team-a-1/backup"})
    assert allowed(a, method, into_a, query, {"x-amz-copy-source": "team-a-2/backup"})
    assert allowed(a, method, into_a, query, {"X-Amz-Copy-Source": "/team-a-1/k?versionId=3"})


@pytest.mark.parametrize(("method", "path", "query"), COPIES)
def test_a_copy_needs_read_on_the_source_and_write_on_the_destination(method, path, query):
    dest = path.format(bucket=BUCKET)
    source = {"x-amz-copy-source": f"{BUCKET}/in/src"}
    assert not allowed(SCOPES["read-only"], method, dest, query, source)  # may read, not write
    prefixed = SCOPES["prefixed"]
    inside = f"/{BUCKET}/in/dest"
    assert allowed(prefixed, method, inside, query, source)
    assert not allowed(prefixed, method, inside, query, {"x-amz-copy-source": f"{BUCKET}/out/s"})
    assert not allowed(prefixed, method, f"/{BUCKET}/out/dest", query, source)
    assert allowed(ADMIN, method, dest, query, {"x-amz-copy-source": "anywhere/at/all"})


def test_authorize_copy_source_checks_read_on_the_parsed_source():
    authorize_copy_source(SCOPES["read-only"], "team-a-9", "k")
    authorize_copy_source(SCOPES["prefixed"], BUCKET, "in/k")
    for scope, bucket, key in [
        (SCOPES["read-only"], "team-b-1", "k"),
        (SCOPES["prefixed"], BUCKET, "out/k"),
        (SCOPES["admin-x"], BUCKET, "k"),
    ]:
        with pytest.raises(S3Error) as info:
            authorize_copy_source(scope, bucket, key)
        assert info.value.code == "AccessDenied"


def test_a_malformed_copy_source_is_the_copy_s_own_error():
    with pytest.raises(S3Error) as info:
        authorize(
            ADMIN,
            "PutObject",
            BUCKET,
            "k",
            method="PUT",
            query={},
            headers={"x-amz-copy-source": "no-key"},
        )
    assert info.value.code == "InvalidArgument"


def test_a_copy_source_header_on_other_operations_is_not_a_copy():
    assert allowed(SCOPES["read-write"], "GET", "/team-a-1/k", "", {"x-amz-copy-source": "b/k"})


# DeleteObjects


def test_delete_objects_checks_every_key_of_its_body():
    prefixed = SCOPES["prefixed"]
    authorize_keys(prefixed, BUCKET, ["in/a", "in/b/c"])
    authorize_keys(prefixed, BUCKET, [])
    authorize_keys(SCOPES["read-write"], BUCKET, ["anything", "out/k"])
    for scope, bucket, keys in [
        (prefixed, BUCKET, ["in/a", "out/b"]),  # one key outside refuses them all
        (prefixed, BUCKET, ["in"]),
        (SCOPES["read-only"], BUCKET, ["k"]),
        (SCOPES["other-tenant"], BUCKET, ["k"]),
    ]:
        with pytest.raises(S3Error) as info:
            authorize_keys(scope, bucket, keys)
        assert info.value.code == "AccessDenied"


def test_authorize_keys_reads_its_keys_lazily_and_stops_at_the_first_refusal():
    seen = []

    def keys():
        for key in ("in/a", "out/b", "in/c"):
            seen.append(key)
            yield key

    with pytest.raises(S3Error):
        authorize_keys(SCOPES["prefixed"], BUCKET, keys())
    assert seen == ["in/a", "out/b"]


# Headers that need an admin


@pytest.mark.parametrize(
    "acl", ["public-read", "public-read-write", "authenticated-read", "aws-exec-read", "Private"]
)
@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("PUT", "/team-a-1/k", ""),
        ("POST", "/team-a-1/k", "uploads"),
        ("PUT", "/team-a-1", ""),
        ("GET", "/team-a-1/k", ""),  # any request
    ],
)
def test_a_public_acl_header_needs_an_admin(acl, method, path, query):
    headers = {"x-amz-acl": acl}
    assert not allowed(SCOPES["read-write"], method, path, query, headers)
    assert not allowed(SCOPES["read-write"], method, path, query, {"X-Amz-Acl": acl})
    assert allowed(ADMIN, method, path, query, headers)


@pytest.mark.parametrize("acl", ["private", "bucket-owner-read", "bucket-owner-full-control"])
def test_a_private_acl_header_needs_nothing_more(acl):
    assert allowed(SCOPES["read-write"], "PUT", "/team-a-1/k", "", {"x-amz-acl": acl})
    assert allowed(SCOPES["read-write"], "PUT", "/team-a-1/k", "", {"x-amz-acl": f" {acl} "})
    assert not allowed(SCOPES["read-only"], "PUT", "/team-a-1/k", "", {"x-amz-acl": acl})


@pytest.mark.parametrize(
    "grant",
    [
        "x-amz-grant-read",
        "x-amz-grant-write",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "X-Amz-Grant-Full-Control",
    ],
)
def test_a_grant_header_needs_an_admin(grant):
    headers = {grant: 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'}
    assert not allowed(SCOPES["read-write"], "PUT", "/team-a-1/k", "", headers)
    assert not allowed(SCOPES["read-write"], "PUT", "/team-a-1", "", headers)
    assert allowed(ADMIN, "PUT", "/team-a-1/k", "", headers)


@pytest.mark.parametrize("value", ["true", "True", " TRUE ", "yes", ""])
@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("DELETE", "/team-a-1/k", ""),
        ("DELETE", "/team-a-1/k", "versionId=1"),
        ("PUT", "/team-a-1/k", "retention"),
        ("POST", "/team-a-1", "delete"),
    ],
)
def test_bypassing_governance_retention_needs_an_admin(value, method, path, query):
    headers = {"x-amz-bypass-governance-retention": value}
    assert not allowed(SCOPES["read-write"], method, path, query, headers)
    assert allowed(ADMIN, method, path, query, headers)
    assert allowed(SCOPES["admin-x"], method, path.replace("team-a-1", "x-1"), query, headers)


def test_not_bypassing_governance_retention_needs_nothing_more():
    headers = {"x-amz-bypass-governance-retention": "false"}
    assert allowed(SCOPES["read-write"], "DELETE", "/team-a-1/k", "", headers)
    assert not allowed(SCOPES["read-only"], "DELETE", "/team-a-1/k", "", headers)


OBJECT_LOCK_HEADERS = {
    "x-amz-object-lock-mode": "COMPLIANCE",
    "x-amz-object-lock-retain-until-date": "2030-01-01T00:00:00Z",
    "x-amz-object-lock-legal-hold": "ON",
}


@pytest.mark.parametrize(
    ("method", "path", "query", "extra"),
    [
        ("PUT", "/team-a-1/k", "", {}),
        ("POST", "/team-a-1/k", "uploads", {}),
        ("PUT", "/team-a-1/k", "", {"x-amz-copy-source": "team-a-1/src"}),
    ],
)
def test_object_lock_headers_need_only_read_write(method, path, query, extra):
    headers = {**OBJECT_LOCK_HEADERS, **extra}
    assert allowed(SCOPES["read-write"], method, path, query, headers)
    assert not allowed(SCOPES["read-only"], method, path, query, headers)


def test_create_bucket_with_object_lock_needs_only_read_write_but_ownership_an_admin():
    lock = {"x-amz-bucket-object-lock-enabled": "true"}
    assert allowed(SCOPES["read-write"], "PUT", "/team-a-1", "", lock)
    ownership = {"x-amz-object-ownership": "ObjectWriter"}  # switches the bucket's ACLs on
    assert not allowed(SCOPES["read-write"], "PUT", "/team-a-1", "", ownership)
    assert allowed(ADMIN, "PUT", "/team-a-1", "", ownership)


def test_a_header_that_needs_an_admin_on_list_buckets_needs_an_admin_of_every_bucket():
    headers = {"x-amz-acl": "public-read"}
    assert allowed(ADMIN, "GET", "/", "", headers)
    assert not allowed(SCOPES["admin-x"], "GET", "/", "", headers)
    assert not allowed(SCOPES["read-write"], "GET", "/", "", headers)


# Scope and Credential


@pytest.mark.parametrize(
    "fields",
    [
        {"access": "read-only", "admin": True},
        {"prefixes": ("a/",), "admin": True},
        {"access": "write-only"},
        {"access": "readonly"},
    ],
)
def test_a_contradictory_scope_is_refused(fields):
    with pytest.raises(ValueError):
        Scope(**fields)


def test_a_scope_defaults_to_read_write_everywhere_but_not_admin():
    assert Scope() == Scope(buckets=None, prefixes=None, access="read-write", admin=False)
    assert Scope(admin=True) == ADMIN


def test_a_credential_never_shows_its_secret():
    credential = Credential("AKIA1", "very-secret", ADMIN)
    assert "very-secret" not in repr(credential)
    assert "AKIA1" in repr(credential)
