"""Routing: method + path + parsed query names -> S3 operation, never substrings."""

from __future__ import annotations

import pytest

from trios3.core.errors import S3Error
from trios3.core.routing import (
    BUCKET_SUBRESOURCES,
    OPERATIONS,
    CopySource,
    Target,
    parse_copy_source,
    resolve_target,
)

DOMAIN = "s3.example.com"


def route(method: str, path: str, query: str = "", host: str | None = None) -> Target:
    return resolve_target(method, path, query, host, DOMAIN if host else None)


def error_code(method: str, path: str, query: str = "", host: str | None = None) -> str:
    with pytest.raises(S3Error) as info:
        route(method, path, query, host)
    return info.value.code


@pytest.mark.parametrize(
    ("method", "path", "query", "operation"),
    [
        ("GET", "/", "", "ListBuckets"),
        ("GET", "/", "max-buckets=10&prefix=a", "ListBuckets"),
        ("PUT", "/bkt", "", "CreateBucket"),
        ("PUT", "/bkt/", "", "CreateBucket"),
        ("DELETE", "/bkt", "", "DeleteBucket"),
        ("HEAD", "/bkt", "", "HeadBucket"),
        ("GET", "/bkt", "location", "GetBucketLocation"),
        ("GET", "/bkt", "location=", "GetBucketLocation"),
        ("GET", "/bkt", "uploads", "ListMultipartUploads"),
        ("GET", "/bkt", "uploads&prefix=a%2F&max-uploads=5", "ListMultipartUploads"),
        ("GET", "/bkt", "versions", "ListObjectVersions"),
        ("GET", "/bkt", "versions&key-marker=k&version-id-marker=v", "ListObjectVersions"),
        ("GET", "/bkt", "list-type=2", "ListObjectsV2"),
        ("GET", "/bkt", "list-type=2&continuation-token=abc&fetch-owner=true", "ListObjectsV2"),
        ("GET", "/bkt", "", "ListObjects"),
        ("GET", "/bkt", "marker=m&max-keys=10&encoding-type=url", "ListObjects"),
        ("POST", "/bkt", "delete", "DeleteObjects"),
        ("POST", "/bkt", "delete=", "DeleteObjects"),
        ("POST", "/bkt", "", "Unsupported"),  # PostObject form upload
        ("GET", "/bkt/key", "", "GetObject"),
        ("GET", "/bkt/key", "partNumber=2", "GetObject"),
        ("GET", "/bkt/key", "versionId=v1", "GetObject"),
        ("GET", "/bkt/key", "response-content-type=text%2Fplain", "GetObject"),
        ("HEAD", "/bkt/key", "", "HeadObject"),
        ("HEAD", "/bkt/key", "partNumber=1&versionId=v", "HeadObject"),
        ("PUT", "/bkt/key", "", "PutObject"),
        ("PUT", "/bkt/key", "x-id=PutObject", "PutObject"),
        ("PUT", "/bkt/key", "partNumber=1&uploadId=u", "UploadPart"),
        ("POST", "/bkt/key", "uploads", "CreateMultipartUpload"),
        ("POST", "/bkt/key", "uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/bkt/key", "uploadId=u", "AbortMultipartUpload"),
        ("GET", "/bkt/key", "uploadId=u", "ListParts"),
        ("GET", "/bkt/key", "uploadId=u&part-number-marker=3&max-parts=2", "ListParts"),
        ("DELETE", "/bkt/key", "", "DeleteObject"),
        ("DELETE", "/bkt/key", "versionId=v", "DeleteObject"),
        ("GET", "/bkt/key", "tagging", "ObjectTagging"),
        ("PUT", "/bkt/key", "tagging", "ObjectTagging"),
        ("DELETE", "/bkt/key", "tagging&versionId=v", "ObjectTagging"),
        ("GET", "/bkt/key", "acl", "ObjectAcl"),
        ("PUT", "/bkt/key", "acl", "ObjectAcl"),
        ("GET", "/bkt/key", "retention", "ObjectLock"),
        ("PUT", "/bkt/key", "retention", "ObjectLock"),
        ("GET", "/bkt/key", "legal-hold", "ObjectLock"),
        ("PUT", "/bkt/key", "legal-hold", "ObjectLock"),
        ("GET", "/bkt/key", "attributes", "GetObjectAttributes"),
        ("POST", "/bkt/key", "restore", "Unsupported"),
        ("POST", "/bkt/key", "select&select-type=2", "Unsupported"),
        ("GET", "/bkt/key", "torrent", "Unsupported"),
    ],
)
def test_operation_is_decided_by_method_and_parameter_names(method, path, query, operation):
    assert route(method, path, query).operation == operation
    assert operation in OPERATIONS


@pytest.mark.parametrize("subresource", sorted(BUCKET_SUBRESOURCES))
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_every_bucket_subresource_is_passed_through(subresource, method):
    target = route(method, "/bkt", subresource)
    assert target.operation == "BucketSubresource"
    assert target.query == {subresource: ""}


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("PUT", "/", ""),
        ("DELETE", "/", ""),
        ("POST", "/", ""),
        ("HEAD", "/", ""),
        ("PATCH", "/bkt", ""),
        ("POST", "/bkt", "acl"),
        ("PUT", "/bkt", "location"),
        ("DELETE", "/bkt", "uploads"),
        ("PUT", "/bkt", "versions"),
        ("GET", "/bkt", "delete"),
        ("POST", "/bkt/key", ""),
        ("HEAD", "/bkt/key", "tagging"),
        ("DELETE", "/bkt/key", "acl"),
        ("DELETE", "/bkt/key", "retention"),
        ("PUT", "/bkt/key", "attributes"),
        ("GET", "/bkt/key", "restore"),
        ("PUT", "/bkt/key", "uploads"),
        ("OPTIONS", "/bkt/key", ""),
    ],
)
def test_unknown_method_for_resource_is_method_not_allowed(method, path, query):
    assert error_code(method, path, query) == "MethodNotAllowed"


def test_method_is_case_insensitive():
    assert route("get", "/bkt/key").operation == "GetObject"


# -- the reference proxy's substring bugs ------------------------------------------------------


def test_listing_with_prefix_uploads_is_list_objects_v2():
    target = route("GET", "/bkt", "list-type=2&prefix=uploads/")
    assert target.operation == "ListObjectsV2"
    assert target.query == {"list-type": "2", "prefix": "uploads/"}


def test_prefix_containing_location_is_a_listing():
    assert route("GET", "/bkt", "prefix=location").operation == "ListObjects"
    assert route("GET", "/bkt", "list-type=2&prefix=my-location%2F").operation == "ListObjectsV2"


@pytest.mark.parametrize(
    "query",
    [
        "prefix=versions",
        "delimiter=%2F&prefix=acl",
        "start-after=uploadId&list-type=2",
        "marker=tagging",
        "prefix=x%26uploads",  # an encoded '&' stays inside the value
    ],
)
def test_selector_words_inside_values_never_route(query):
    assert route("GET", "/bkt", query).operation in ("ListObjects", "ListObjectsV2")


def test_selector_name_as_value_of_object_get_is_get_object():
    assert route("GET", "/bkt/key", "response-content-disposition=uploads").operation == (
        "GetObject"
    )


def test_parameter_names_are_case_sensitive():
    assert route("GET", "/bkt", "Location").operation == "ListObjects"
    assert route("GET", "/bkt", "UPLOADS").operation == "ListObjects"


def test_conflicting_selectors_are_refused():
    assert error_code("PUT", "/bkt/key", "tagging&partNumber=1&uploadId=u") == "InvalidArgument"
    assert error_code("GET", "/bkt", "location&uploads") == "InvalidArgument"
    assert error_code("GET", "/bkt/key", "acl&tagging") == "InvalidArgument"


def test_object_only_selectors_on_a_bucket_do_not_route():
    assert route("GET", "/bkt", "uploadId=u").operation == "ListObjects"


def test_bucket_only_selectors_on_an_object_do_not_route():
    assert route("GET", "/bkt/key", "versioning").operation == "GetObject"


def test_unknown_list_type_is_invalid_argument():
    assert error_code("GET", "/bkt", "list-type=3") == "InvalidArgument"


@pytest.mark.parametrize("query", ["partNumber=1", "uploadId=u"])
def test_put_with_half_of_an_upload_part_is_invalid_argument(query):
    assert error_code("PUT", "/bkt/key", query) == "InvalidArgument"


# -- query parsing ----------------------------------------------------------------------------


def test_query_values_are_decoded_and_bare_names_are_empty():
    target = route("GET", "/bkt", "list-type=2&prefix=a%20b%2Fc&delimiter=%2F&fetch-owner")
    assert target.query == {
        "list-type": "2",
        "prefix": "a b/c",
        "delimiter": "/",
        "fetch-owner": "",
    }


def test_plus_in_query_is_a_plus_as_the_signature_check_reads_it():
    # One decoding for verification and routing: otherwise a signature over prefix=a%2Bb
    # would also verify for prefix=a+b and the proxy would act on "a b".
    assert route("GET", "/bkt", "prefix=a+b%2Bc%20d").query == {"prefix": "a+b+c d"}


def test_unicode_query_value():
    assert route("GET", "/bkt", "prefix=%C3%A9t%C3%A9").query == {"prefix": "été"}


def test_repeated_query_parameter_is_invalid_argument():
    assert error_code("GET", "/bkt", "prefix=a&prefix=b") == "InvalidArgument"
    assert error_code("GET", "/bkt", "uploads&uploads") == "InvalidArgument"


def test_invalid_utf8_in_query_is_invalid_uri():
    assert error_code("GET", "/bkt", "prefix=%FF") == "InvalidURI"


def test_too_many_query_parameters_is_invalid_argument():
    query = "&".join(f"p{i}=x" for i in range(200))
    assert error_code("GET", "/bkt", query) == "InvalidArgument"


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("/bkt/a/b/c.txt", "a/b/c.txt"),
        ("/bkt/a%2Fb", "a/b"),
        ("/bkt/with%20space", "with space"),
        ("/bkt/with space", "with space"),
        ("/bkt/a+b", "a+b"),
        ("/bkt/a%2Bb", "a+b"),
        ("/bkt/%E2%82%AC%F0%9F%98%80", "€😀"),
        ("/bkt/dir/", "dir/"),
        ("/bkt//leading", "/leading"),
        ("/bkt/a%25b", "a%b"),
        ("/bkt/a?b", "a?b"),
        ("/bkt/%3F%23", "?#"),
        ("/bkt/..", ".."),
        ("/bkt/a/../b", "a/../b"),
    ],
)
def test_key_is_percent_decoded_and_otherwise_literal(raw, key):
    target = route("GET", raw)
    assert (target.operation, target.bucket, target.key) == ("GetObject", "bkt", key)


def test_empty_key_means_the_bucket():
    assert route("GET", "/bkt/") == Target("ListObjects", "bkt", None, {})
    assert route("GET", "/bkt") == Target("ListObjects", "bkt", None, {})


def test_key_of_1024_bytes_is_accepted_and_1025_is_too_long():
    assert route("GET", "/bkt/" + "a" * 1024).key == "a" * 1024
    assert error_code("GET", "/bkt/" + "a" * 1025) == "KeyTooLongError"


def test_key_length_counts_utf8_bytes_not_characters():
    euro = "%E2%82%AC"  # 3 bytes each
    assert route("PUT", "/bkt/" + euro * 341 + "a").key == "€" * 341 + "a"  # 1024 bytes
    assert error_code("PUT", "/bkt/" + euro * 342) == "KeyTooLongError"  # 1026 bytes


def test_invalid_utf8_in_path_is_invalid_uri():
    assert error_code("GET", "/bkt/%C3%28") == "InvalidURI"


def test_path_without_leading_slash_is_invalid_uri():
    assert error_code("GET", "bkt/key") == "InvalidURI"


# -- bucket names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bkt", "my.bucket-1", "a", "Legacy_Bucket", "x" * 255])
def test_legacy_bucket_names_are_accepted(name):
    assert route("HEAD", f"/{name}").bucket == name


@pytest.mark.parametrize(
    "raw",
    ["/..", "/.", "/%2E%2E/key", "/a%2Fb/key", "/bad%00name", "/bad%0Aname", "/sp%20ace",
     "/" + "x" * 256, "/b%C3%A9", "/a:b", "//key"],
)  # fmt: skip
def test_bad_bucket_names_are_invalid_bucket_name(raw):
    assert error_code("GET", raw) == "InvalidBucketName"


# -- virtual-hosted style ---------------------------------------------------------------------


def test_virtual_hosted_bucket_takes_the_whole_path_as_key():
    target = route("GET", "/a/b%20c", host="bkt.s3.example.com")
    assert (target.operation, target.bucket, target.key) == ("GetObject", "bkt", "a/b c")


def test_virtual_hosted_root_is_the_bucket():
    assert route("GET", "/", "list-type=2", host="bkt.s3.example.com") == Target(
        "ListObjectsV2", "bkt", None, {"list-type": "2"}
    )
    assert route("PUT", "/", host="bkt.s3.example.com").operation == "CreateBucket"
    assert route("POST", "/", "delete", host="bkt.s3.example.com").operation == "DeleteObjects"


def test_virtual_hosted_host_ignores_port_and_case():
    target = route("PUT", "/k", host="My.Bucket.S3.Example.COM:8443")
    assert (target.bucket, target.key, target.operation) == ("my.bucket", "k", "PutObject")


def test_virtual_hosted_key_may_start_with_a_slash_segment():
    assert route("GET", "//k", host="bkt.s3.example.com").key == "/k"


def test_host_equal_to_domain_is_path_style():
    target = route("GET", "/bkt/key", host="s3.example.com:9000")
    assert (target.bucket, target.key) == ("bkt", "key")
    assert route("GET", "/", host="s3.example.com").operation == "ListBuckets"


def test_other_hosts_are_path_style():
    for host in ("127.0.0.1:9000", "[::1]:9000", "bkt.other.com", "evils3.example.com"):
        target = route("GET", "/bkt/key", host=host)
        assert (target.bucket, target.key) == ("bkt", "key")


def test_without_a_domain_host_is_ignored():
    target = resolve_target("GET", "/bkt/key", "", "other.s3.example.com", None)
    assert (target.bucket, target.key) == ("bkt", "key")


def test_virtual_hosted_invalid_bucket_is_refused():
    assert error_code("GET", "/k", host="bad_bucket!.s3.example.com") == "InvalidBucketName"


def test_virtual_hosted_key_too_long():
    assert error_code("PUT", "/" + "k" * 1025, host="bkt.s3.example.com") == "KeyTooLongError"


def test_operations_constant_names_every_route():
    assert len(OPERATIONS) == 25


# -- x-amz-copy-source ------------------------------------------------------------------------


def copy_source_error(value: str) -> S3Error:
    with pytest.raises(S3Error) as info:
        parse_copy_source(value)
    assert info.value.code == "InvalidArgument" and info.value.status == 400
    return info.value


@pytest.mark.parametrize("value", ["bkt/key", "/bkt/key"])
def test_copy_source_leading_slash_is_optional(value):
    assert parse_copy_source(value) == CopySource("bkt", "key", None)


def test_copy_source_key_keeps_its_slashes():
    assert parse_copy_source("/bkt/a/b/c.txt") == CopySource("bkt", "a/b/c.txt", None)
    assert parse_copy_source("bkt//k").key == "/k"


def test_copy_source_is_percent_decoded():
    source = parse_copy_source("/bkt/dir%2Fa%20b%2Bc%3Fd%E2%82%AC")
    assert source == CopySource("bkt", "dir/a b+c?d\u20ac", None)
    assert parse_copy_source("bkt%2Fkey") == CopySource("bkt", "key", None)


def test_copy_source_plus_is_a_literal_plus():
    assert parse_copy_source("bkt/a+b").key == "a+b"


def test_copy_source_version_id_is_read_and_decoded():
    assert parse_copy_source("/bkt/key?versionId=3HL4kqtJ") == CopySource("bkt", "key", "3HL4kqtJ")
    assert parse_copy_source("bkt/key?versionId=a%2Bb%3D").version == "a+b="


def test_copy_source_key_may_hold_an_encoded_question_mark_and_a_version():
    assert parse_copy_source("bkt/what%3F?versionId=v") == CopySource("bkt", "what?", "v")


@pytest.mark.parametrize(
    "value", ["", "/", "bkt", "/bkt", "bkt/", "/bkt/", "/key-only?versionId=v"]
)
def test_copy_source_without_bucket_and_key_is_invalid_argument(value):
    error = copy_source_error(value)
    assert "sourcebucket/sourcekey" in error.message


def test_copy_source_without_a_bucket_is_invalid_argument():
    assert "sourcebucket/sourcekey" in copy_source_error("//key").message


@pytest.mark.parametrize(
    "value",
    ["bkt/key?partNumber=1", "bkt/key?versionid=v", "bkt/key?versionId", "bkt/key?versionId="],
)
def test_copy_source_with_an_unknown_or_empty_parameter_is_invalid_argument(value):
    assert copy_source_error(value).message == "Unsupported copy source parameter."


def test_copy_source_with_a_second_parameter_is_invalid_argument():
    copy_source_error("bkt/key?versionId=v&partNumber=1")


def test_copy_source_that_is_not_utf8_is_refused():
    with pytest.raises(S3Error):
        parse_copy_source("bkt/caf%E9")


@pytest.mark.parametrize(
    "value", ["bkt/caf%E9", "bkt/%FF", "bkt/%C3", "b%E9/k", "bkt/k?versionId=%E9"]
)
def test_copy_source_that_is_not_utf8_is_invalid_argument(value):
    error = copy_source_error(value)
    assert "encoding" in error.message
    assert error.fields == {"ArgumentName": "x-amz-copy-source"}


@pytest.mark.parametrize(
    "value",
    [
        "bkt/key?versionId=v&partNumber=1",
        "bkt/key?versionId=v&versionId=w",
        "bkt/key?versionId=v&",
        "bkt/key?partNumber=1&versionId=v",
        "bkt/key?&versionId=v",
    ],
)
def test_copy_source_takes_one_parameter_only(value):
    error = copy_source_error(value)
    assert error.message == "Unsupported copy source parameter."


def test_copy_source_version_may_hold_an_encoded_ampersand():
    assert parse_copy_source("bkt/k?versionId=a%26b").version == "a&b"


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        ("/../b/k", ".."),
        ("../b/k", ".."),
        ("%2E%2E/b/k", ".."),
        ("./k", "."),
        ("bad_bucket!/k", "bad_bucket!"),
        ("b%20b/k", "b b"),
        ("b%0Ab/k", "b\nb"),
        ("caf%C3%A9/k", "caf\u00e9"),
        ("b" * 256 + "/k", "b" * 256),
    ],
)
def test_copy_source_bucket_must_be_a_bucket_name(value, bucket):
    with pytest.raises(S3Error) as info:
        parse_copy_source(value)
    assert info.value.code == "InvalidBucketName"
    assert info.value.fields == {"BucketName": bucket}


def test_copy_source_key_is_limited_as_a_path_key_is():
    assert parse_copy_source("bkt/" + "k" * 1024).key == "k" * 1024
    with pytest.raises(S3Error) as info:
        parse_copy_source("bkt/" + "%C3%A9" * 513)
    assert info.value.code == "KeyTooLongError"
    assert info.value.fields == {"MaxSizeAllowed": "1024", "Size": "1026"}
    assert error_code("PUT", "/bkt/" + "%C3%A9" * 513) == "KeyTooLongError"


# -- virtual-hosted requests to a proxy without --virtual-host-domain -----------------------

OWN = frozenset({"localhost", "proxy", "proxy.corp.example"})


def route_own(method: str, path: str, host: str | None) -> Target:
    return resolve_target(method, path, "", host, None, own_hosts=OWN)


@pytest.mark.parametrize(
    "host",
    [
        "bkt.localhost",
        "bkt.localhost:8080",
        "BKT.LocalHost",
        "bkt.proxy",
        "bkt.proxy.",
        "my.dotted.bucket.proxy:9000",
        "bkt.proxy.corp.example",
        "proxy.proxy",
    ],
)
def test_a_host_below_an_own_name_without_a_domain_is_invalid_request(host):
    for method, path in (("DELETE", "/key"), ("GET", "/"), ("PUT", "/bkt/key")):
        with pytest.raises(S3Error) as info:
            route_own(method, path, host)
        assert info.value.code == "InvalidRequest" and info.value.status == 400
        assert "--virtual-host-domain" in info.value.message


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "localhost",
        "localhost:8080",
        "PROXY",
        "proxy.",
        "proxy.corp.example:443",
        "127.0.0.1",
        "127.0.0.1:9000",
        "[::1]",
        "[::1]:9000",
        "10.1.2.3",
        "other.example.com",  # not a name of the proxy: a load balancer's, say
        "notproxy",
        "corp.example",
    ],
)
def test_own_names_ip_literals_and_other_hosts_are_path_style(host):
    target = route_own("DELETE", "/key", host)
    assert (target.operation, target.bucket, target.key) == ("DeleteBucket", "key", None)


def test_without_own_names_any_host_is_path_style():
    target = resolve_target("DELETE", "/key", "", "bkt.localhost", None)
    assert (target.operation, target.bucket) == ("DeleteBucket", "key")


def test_own_names_are_compared_case_blind_and_without_a_final_dot():
    with pytest.raises(S3Error):
        resolve_target("GET", "/", "", "b.proxy", None, own_hosts=frozenset({"Proxy."}))


def test_with_a_domain_the_own_names_are_not_consulted():
    target = resolve_target("DELETE", "/key", "", "bkt.s3.example.com", DOMAIN, own_hosts=OWN)
    assert (target.operation, target.bucket, target.key) == ("DeleteObject", "bkt", "key")
    target = resolve_target("DELETE", "/key", "", "bkt.localhost", DOMAIN, own_hosts=OWN)
    assert (target.operation, target.bucket) == ("DeleteBucket", "key")
