"""Which headers cross the proxy and how they are rewritten: the allowlists and every policy."""

from __future__ import annotations

import base64
import hashlib

import pytest

from trios3.core import keys
from trios3.core.errors import S3Error
from trios3.core.headers import (
    CONDITIONS,
    CONTENT_MD5_META,
    COPY_CONDITIONS,
    HOP_HEADERS,
    MAX_USER_METADATA,
    OBJECT_RESPONSE_HEADERS,
    RESERVED_META,
    SINGLE_HEADERS,
    UPLOAD_HEADERS,
    conditions,
    described_by,
    not_modified_headers,
    object_response_headers,
    parse_md5,
    reject_sse_c,
    request_headers,
    take_content_md5,
    upload_headers,
    user_metadata,
    with_content_md5,
)

MD5 = hashlib.md5(b"hello", usedforsecurity=False).digest()
MD5_B64 = base64.b64encode(MD5).decode("ascii")
OTHER_MD5_B64 = base64.b64encode(bytes(16)).decode("ascii")
BACKEND_ETAG = '"5d41402abc4b2a76b9719d911017c592"'
CLIENT_ETAG = '"5d41402abc4b2a76b9719d911017c592-0"'
MULTIPART_ETAG = '"5d41402abc4b2a76b9719d911017c592-3"'
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def s3_error(call, *args) -> S3Error:
    with pytest.raises(S3Error) as info:
        call(*args)
    return info.value


# -- the tables -------------------------------------------------------------------------------

TABLES = {
    "UPLOAD_HEADERS": UPLOAD_HEADERS,
    "OBJECT_RESPONSE_HEADERS": OBJECT_RESPONSE_HEADERS,
    "HOP_HEADERS": HOP_HEADERS,
    "SINGLE_HEADERS": SINGLE_HEADERS,
    "CONDITIONS": frozenset(CONDITIONS),
    "COPY_CONDITIONS": frozenset(COPY_CONDITIONS),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_holds_lower_case_names_only(name):
    table = TABLES[name]
    assert table
    assert all(h == h.lower().strip() and h for h in table)


def test_no_header_is_both_passed_on_uploads_and_dropped_as_a_hop_header():
    assert not UPLOAD_HEADERS & HOP_HEADERS


@pytest.mark.parametrize("name", ["UPLOAD_HEADERS", "OBJECT_RESPONSE_HEADERS"])
def test_allowlists_never_carry_ciphertext_descriptions_or_signatures(name):
    table = TABLES[name]
    assert not {h for h in table if h.startswith("x-amz-checksum-")}
    assert not {h for h in table if h.startswith("x-amz-meta-")}
    for ciphertext in (
        "content-length",
        "content-range",
        "content-md5",
        "etag",
        "x-amz-mp-parts-count",
    ):
        assert ciphertext not in table
    for signature in (
        "authorization",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
    ):
        assert signature not in table


def test_allowlists_never_carry_sse_c_headers():
    for table in (UPLOAD_HEADERS, OBJECT_RESPONSE_HEADERS):
        assert not {h for h in table if "customer" in h}


def test_every_condition_is_a_single_header():
    assert set(CONDITIONS) <= SINGLE_HEADERS
    assert all(c.startswith("x-amz-") for c in COPY_CONDITIONS)  # single as every x-amz-* is


def test_copy_conditions_name_the_source_versions_of_each_condition():
    assert COPY_CONDITIONS == (
        "x-amz-copy-source-if-match",
        "x-amz-copy-source-if-none-match",
        "x-amz-copy-source-if-modified-since",
        "x-amz-copy-source-if-unmodified-since",
    )


def test_reserved_prefix_covers_every_envelope_field_and_leaves_room_for_it():
    assert RESERVED_META == keys.META_PREFIX
    for name in (
        keys.META_VERSION,
        keys.META_KEY_ID,
        keys.META_SEGMENT_SIZE,
        keys.META_DATA_KEY,
        keys.META_CONTENT_MD5,
    ):
        assert name.startswith(RESERVED_META)
    assert MAX_USER_METADATA == 2048 - keys.ENVELOPE_METADATA_SIZE
    assert not CONTENT_MD5_META.startswith(RESERVED_META)


# -- request_headers --------------------------------------------------------------------------


def test_request_headers_map_each_name_to_its_value():
    assert request_headers([("host", "h"), ("x-amz-date", "d"), ("accept", "*/*")]) == {
        "host": "h",
        "x-amz-date": "d",
        "accept": "*/*",
    }


def test_repeats_of_an_ordinary_header_are_joined_with_commas_in_order():
    pairs = [("accept", "a"), ("host", "h"), ("accept", "b"), ("accept", "c")]
    assert request_headers(pairs) == {"accept": "a,b,c", "host": "h"}


@pytest.mark.parametrize(
    "name", ["x-amz-copy-source", "x-amz-meta-color", "x-amz-content-sha256", "x-amz-unknown"]
)
def test_a_repeated_x_amz_header_is_invalid_argument(name):
    error = s3_error(request_headers, [(name, "a"), ("host", "h"), (name, "b")])
    assert error.code == "InvalidArgument" and error.status == 400
    assert name in error.message


@pytest.mark.parametrize("name", sorted(SINGLE_HEADERS))
def test_a_repeated_single_header_is_invalid_argument(name):
    error = s3_error(request_headers, [(name, "a"), (name, "a")])
    assert error.code == "InvalidArgument"
    assert name in error.message


def test_no_pairs_is_no_headers():
    assert request_headers([]) == {}


# -- user_metadata ----------------------------------------------------------------------------


def test_user_metadata_is_the_x_amz_meta_headers_only():
    headers = {
        "content-type": "text/plain",
        "x-amz-meta-color": "blue",
        "x-amz-metadata-directive": "REPLACE",
        "x-amz-meta-md5chksum": MD5_B64,
    }
    assert user_metadata(headers) == [("x-amz-meta-color", "blue"), (CONTENT_MD5_META, MD5_B64)]


@pytest.mark.parametrize("name", [RESERVED_META + "v", keys.META_DATA_KEY, RESERVED_META])
def test_the_proxy_reserved_metadata_prefix_is_refused(name):
    error = s3_error(user_metadata, {name: "1"})
    assert error.code == "InvalidArgument"
    assert RESERVED_META in error.message


def test_metadata_at_exactly_the_limit_passes():
    # S3 counts the name after x-amz-meta- and the value.
    name = "x-amz-meta-k"
    headers = {name: "v" * (MAX_USER_METADATA - 1)}
    assert user_metadata(headers) == list(headers.items())


def test_metadata_one_byte_over_the_limit_is_metadata_too_large():
    # "k" + value, then "j" + "vv": 1 + (MAX - 4) + 1 + 2 + 1 = MAX + 1.
    headers = {"x-amz-meta-k": "v" * (MAX_USER_METADATA - 4), "x-amz-meta-j": "vvv"}
    error = s3_error(user_metadata, headers)
    assert error.code == "MetadataTooLarge" and error.status == 400
    assert error.fields == {"MaxSizeAllowed": str(MAX_USER_METADATA)}
    headers["x-amz-meta-j"] = "vv"  # exactly the limit, spread over two entries
    assert user_metadata(headers) == list(headers.items())


def test_the_metadata_limit_counts_names_as_well_as_values():
    name = "x-amz-meta-" + "n" * MAX_USER_METADATA
    assert s3_error(user_metadata, {name: "x"}).code == "MetadataTooLarge"
    assert user_metadata({"x-amz-meta-" + "n" * (MAX_USER_METADATA - 1): "x"})


# -- the rclone md5chksum ---------------------------------------------------------------------


def test_parse_md5_takes_standard_base64_of_sixteen_bytes_only():
    assert parse_md5(MD5_B64) == MD5
    assert parse_md5(f"  {MD5_B64} ") == MD5
    assert parse_md5(MD5.hex()) is None
    assert parse_md5(base64.b64encode(bytes(15)).decode()) is None
    assert parse_md5(base64.b64encode(bytes(17)).decode()) is None
    assert parse_md5(base64.urlsafe_b64encode(b"\xff" * 16).decode()) is None
    assert parse_md5("") is None


def test_an_md5chksum_that_is_an_md5_is_taken_out_to_be_sealed():
    meta = [("x-amz-meta-a", "1"), (CONTENT_MD5_META, MD5_B64), ("x-amz-meta-b", "2")]
    assert take_content_md5(meta) == ([("x-amz-meta-a", "1"), ("x-amz-meta-b", "2")], MD5)


def test_an_md5chksum_that_is_not_an_md5_stays_as_ordinary_metadata():
    meta = [("x-amz-meta-a", "1"), (CONTENT_MD5_META, "not an md5")]
    assert take_content_md5(meta) == (meta, None)


def test_no_md5chksum_leaves_the_metadata_alone():
    meta = [("x-amz-meta-a", "1")]
    assert take_content_md5(meta) == (meta, None)
    assert take_content_md5([]) == ([], None)


def test_the_sealed_md5_is_shown_as_md5chksum():
    out = [("content-type", "text/plain")]
    assert with_content_md5(out, MD5) == [
        ("content-type", "text/plain"),
        (CONTENT_MD5_META, MD5_B64),
    ]


def test_a_clear_md5_beside_a_sealed_one_is_dropped_for_the_sealed_one():
    out = [(CONTENT_MD5_META, OTHER_MD5_B64), ("content-type", "text/plain")]
    assert with_content_md5(out, MD5) == [
        ("content-type", "text/plain"),
        (CONTENT_MD5_META, MD5_B64),
    ]


def test_a_clear_md5chksum_that_is_not_an_md5_is_the_clients_own_and_is_shown_as_is():
    out = [(CONTENT_MD5_META, "rclone-says-hi"), ("content-type", "text/plain")]
    assert with_content_md5(out, MD5) == out


def test_take_then_show_round_trips_the_md5():
    kept, md5 = take_content_md5([(CONTENT_MD5_META, MD5_B64)])
    assert kept == [] and md5 is not None
    assert with_content_md5(kept, md5) == [(CONTENT_MD5_META, MD5_B64)]


# -- SSE-C ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-server-side-encryption-customer-key",
        "x-amz-server-side-encryption-customer-key-md5",
        "x-amz-copy-source-server-side-encryption-customer-algorithm",
        "x-amz-copy-source-server-side-encryption-customer-key",
        "x-amz-copy-source-server-side-encryption-customer-key-md5",
    ],
)
def test_sse_c_headers_of_either_family_are_not_implemented(name):
    error = s3_error(reject_sse_c, {"host": "h", name: "AES256"})
    assert error.code == "NotImplemented" and error.status == 501
    assert "SSE-C" in error.message


def test_other_server_side_encryption_headers_are_not_sse_c():
    headers = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "k",
        "x-amz-server-side-encryption-context": "e30=",
    }
    assert reject_sse_c(headers) is None
    assert reject_sse_c({}) is None


# -- upload_headers ---------------------------------------------------------------------------


def test_upload_headers_pass_only_the_allowlist():
    headers = {
        "content-type": "text/plain",
        "cache-control": "no-cache",
        "x-amz-storage-class": "STANDARD_IA",
        "x-amz-tagging": "a=b",
        "content-length": "5",
        "content-md5": MD5_B64,
        "x-amz-checksum-crc32": "AAAAAA==",
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "x-amz-decoded-content-length": "5",
        "x-amz-meta-color": "blue",
        "authorization": "AWS4-HMAC-SHA256 ...",
        "x-amz-copy-source": "b/k",
        "x-unknown": "1",
    }
    assert upload_headers(headers) == [
        ("content-type", "text/plain"),
        ("cache-control", "no-cache"),
        ("x-amz-storage-class", "STANDARD_IA"),
        ("x-amz-tagging", "a=b"),
    ]


@pytest.mark.parametrize("header", sorted(UPLOAD_HEADERS))
def test_every_allowlisted_upload_header_passes(header):
    assert upload_headers({header: "v"}) == [(header, "v")]


@pytest.mark.parametrize("value", ["aws-chunked", "AWS-Chunked", " aws-chunked ", "aws-chunked,"])
def test_aws_chunked_alone_leaves_no_content_encoding(value):
    assert upload_headers({"content-encoding": value}) == []


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("gzip", "gzip"),
        ("aws-chunked,gzip", "gzip"),
        ("gzip, aws-chunked", "gzip"),
        ("aws-chunked, gzip, br", "gzip, br"),
        ("gzip,br", "gzip, br"),
        ("identity", "identity"),
    ],
)
def test_other_content_encodings_are_kept(value, kept):
    assert upload_headers({"content-type": "x", "content-encoding": value}) == [
        ("content-type", "x"),
        ("content-encoding", kept),
    ]


# -- conditions -------------------------------------------------------------------------------


def test_conditions_strip_the_proxy_suffix_from_if_match_and_if_none_match():
    headers = {
        "if-match": CLIENT_ETAG,
        "if-none-match": f'W/{CLIENT_ETAG}, "abc-0"',
        "host": "h",
    }
    assert conditions(headers) == [
        ("if-match", BACKEND_ETAG),
        ("if-none-match", f'W/{BACKEND_ETAG}, "abc"'),
    ]


def test_conditions_leave_multipart_etags_and_the_wildcard_alone():
    headers = {"if-match": MULTIPART_ETAG, "if-none-match": "*"}
    assert conditions(headers) == [("if-match", MULTIPART_ETAG), ("if-none-match", "*")]


def test_condition_dates_pass_untouched():
    odd = "Wed, 21 Oct 2015 07:28:00 GMT-0"  # the suffix rule applies to ETags only
    headers = {"if-modified-since": DATE, "if-unmodified-since": odd}
    assert conditions(headers) == [("if-modified-since", DATE), ("if-unmodified-since", odd)]


def test_conditions_come_in_table_order_and_only_when_present():
    headers = {"if-unmodified-since": DATE, "if-match": CLIENT_ETAG}
    assert conditions(headers) == [("if-match", BACKEND_ETAG), ("if-unmodified-since", DATE)]
    assert conditions({"range": "bytes=0-1"}) == []


def test_copy_conditions_are_read_under_their_own_names():
    headers = {
        "if-match": CLIENT_ETAG,  # the destination's condition: not a copy condition
        "x-amz-copy-source-if-match": CLIENT_ETAG,
        "x-amz-copy-source-if-none-match": '"abc-0"',
        "x-amz-copy-source-if-modified-since": DATE,
        "x-amz-copy-source-if-unmodified-since": DATE,
    }
    assert conditions(headers, COPY_CONDITIONS) == [
        ("x-amz-copy-source-if-match", BACKEND_ETAG),
        ("x-amz-copy-source-if-none-match", '"abc"'),
        ("x-amz-copy-source-if-modified-since", DATE),
        ("x-amz-copy-source-if-unmodified-since", DATE),
    ]


def test_conditions_for_a_subset_of_names():
    headers = {"if-match": CLIENT_ETAG, "if-modified-since": DATE}
    assert conditions(headers, ("if-match", "if-none-match")) == [("if-match", BACKEND_ETAG)]


# -- object_response_headers ------------------------------------------------------------------

BACKEND_GET = {
    "content-type": "text/plain",
    "content-length": "4128",
    "content-range": "bytes 0-4127/4128",
    "content-md5": MD5_B64,
    "last-modified": DATE,
    "accept-ranges": "bytes",
    "x-amz-version-id": "v1",
    "x-amz-checksum-crc32": "AAAAAA==",
    "x-amz-checksum-type": "FULL_OBJECT",
    "x-amz-mp-parts-count": "3",
    "x-amz-meta-color": "blue",
    keys.META_VERSION: "1",
    keys.META_DATA_KEY: "d2VsbA==",
    "x-amz-request-id": "R",
    "server": "SeaweedFS",
    "etag": BACKEND_ETAG,
}


def test_object_response_headers_pass_the_allowlist_and_user_metadata():
    assert object_response_headers(BACKEND_GET, encrypted=True) == [
        ("content-type", "text/plain"),
        ("last-modified", DATE),
        ("accept-ranges", "bytes"),
        ("x-amz-version-id", "v1"),
        ("x-amz-meta-color", "blue"),
        ("etag", CLIENT_ETAG),
    ]


def test_ciphertext_lengths_checksums_and_the_envelope_never_pass():
    names = {n for n, _ in object_response_headers(BACKEND_GET, encrypted=True)}
    names |= {n for n, _ in object_response_headers(BACKEND_GET, encrypted=False)}
    assert not {n for n in names if n.startswith("x-amz-checksum-")}
    assert not {n for n in names if n.startswith(RESERVED_META)}
    assert not names & {"content-length", "content-range", "content-md5", "x-amz-mp-parts-count"}


@pytest.mark.parametrize("header", sorted(OBJECT_RESPONSE_HEADERS))
def test_every_allowlisted_response_header_passes(header):
    assert object_response_headers({header: "v"}, encrypted=True) == [(header, "v")]


def test_the_etag_is_rewritten_only_for_an_encrypted_object():
    assert object_response_headers({"etag": BACKEND_ETAG}, encrypted=True) == [
        ("etag", CLIENT_ETAG)
    ]
    assert object_response_headers({"etag": BACKEND_ETAG}, encrypted=False) == [
        ("etag", BACKEND_ETAG)
    ]
    assert object_response_headers({"etag": MULTIPART_ETAG}, encrypted=True) == [
        ("etag", MULTIPART_ETAG)
    ]


def test_no_backend_etag_means_no_etag():
    assert object_response_headers({"content-type": "x"}, encrypted=True) == [("content-type", "x")]


# -- not_modified_headers ---------------------------------------------------------------------


def test_a_304_without_if_none_match_is_taken_to_be_the_proxys_object():
    backend = {"etag": BACKEND_ETAG, "last-modified": DATE, "content-type": "x"}
    assert not_modified_headers(backend, None) == {"etag": CLIENT_ETAG, "last-modified": DATE}


def test_a_304_whose_if_none_match_names_the_backend_etag_is_a_foreign_object():
    backend = {"etag": BACKEND_ETAG, "last-modified": DATE}
    assert not_modified_headers(backend, BACKEND_ETAG) == {
        "etag": BACKEND_ETAG,
        "last-modified": DATE,
    }
    listed = f'"other", {BACKEND_ETAG}'
    assert not_modified_headers(backend, listed)["etag"] == BACKEND_ETAG


def test_a_304_whose_if_none_match_names_the_client_etag_is_the_proxys_object():
    backend = {"etag": BACKEND_ETAG}
    assert not_modified_headers(backend, CLIENT_ETAG) == {"etag": CLIENT_ETAG}


def test_a_304_with_the_envelope_is_the_proxys_object_whatever_the_client_sent():
    backend = {"etag": BACKEND_ETAG, keys.META_VERSION: "1"}
    assert not_modified_headers(backend, BACKEND_ETAG) == {"etag": CLIENT_ETAG}


def test_a_304_keeps_only_the_validators_it_has():
    assert not_modified_headers({}, None) == {}
    assert not_modified_headers({"last-modified": DATE}, None) == {"last-modified": DATE}
    assert not_modified_headers({"etag": MULTIPART_ETAG}, None) == {"etag": MULTIPART_ETAG}


# -- described_by -----------------------------------------------------------------------------


def test_a_copy_carries_over_what_describes_the_object_and_the_users_metadata():
    source = {
        "content-type": "text/plain",
        "content-encoding": "gzip",
        "content-length": "4128",
        "cache-control": "no-cache",
        "etag": BACKEND_ETAG,
        "last-modified": DATE,
        "x-amz-checksum-crc32": "AAAAAA==",
        "x-amz-version-id": "v1",
        "x-amz-meta-color": "blue",
        CONTENT_MD5_META: MD5_B64,
        keys.META_VERSION: "1",
        keys.META_DATA_KEY: "d2VsbA==",
    }
    described, meta = described_by(source)
    assert described == [
        ("content-type", "text/plain"),
        ("content-encoding", "gzip"),
        ("cache-control", "no-cache"),
    ]
    assert meta == [("x-amz-meta-color", "blue"), (CONTENT_MD5_META, MD5_B64)]


def test_a_source_with_nothing_to_carry_over():
    assert described_by({"etag": BACKEND_ETAG, keys.META_VERSION: "1"}) == ([], [])


# -- non-ASCII values: refused before they reach a backend request ----------------------------

# A header value is bytes held as latin-1 text: "é" sent as UTF-8 arrives as "\xc3\xa9".
NON_ASCII = ["\xc3\xa9t\xc3\xa9", "caf\xe9", "\xa0", "x\xff"]


def _invalid_argument(call, name: str) -> S3Error:
    with pytest.raises(S3Error) as exc:
        call()
    assert exc.value.code == "InvalidArgument" and exc.value.status == 400
    assert exc.value.fields["ArgumentName"] == name
    assert name in exc.value.message
    return exc.value


@pytest.mark.parametrize("value", NON_ASCII)
def test_a_non_ascii_metadata_value_is_invalid_argument_naming_it(value):
    headers = {"x-amz-meta-ok": "plain", "x-amz-meta-name": value}
    _invalid_argument(lambda: user_metadata(headers), "x-amz-meta-name")


@pytest.mark.parametrize("value", NON_ASCII)
@pytest.mark.parametrize("name", sorted(UPLOAD_HEADERS))
def test_a_non_ascii_value_of_any_forwarded_upload_header_is_invalid_argument(name, value):
    _invalid_argument(lambda: upload_headers({name: value}), name)


def test_a_non_ascii_content_disposition_is_invalid_argument():
    value = 'attachment; filename="\xc3\xa9t\xc3\xa9.txt"'
    error = _invalid_argument(
        lambda: upload_headers({"content-disposition": value}), "content-disposition"
    )
    assert error.fields["ArgumentValue"] == value


def test_a_non_ascii_content_encoding_is_invalid_argument():
    _invalid_argument(
        lambda: upload_headers({"content-encoding": "aws-chunked, gz\xefp"}), "content-encoding"
    )


def test_rfc2047_and_percent_encoded_values_pass():
    headers = {
        "content-disposition": "attachment; filename*=UTF-8''%C3%A9t%C3%A9.txt",
        "x-amz-meta-name": "=?UTF-8?B?w6l0w6k=?=",
    }
    assert upload_headers(headers) == [("content-disposition", headers["content-disposition"])]
    assert user_metadata(headers) == [("x-amz-meta-name", "=?UTF-8?B?w6l0w6k=?=")]


@pytest.mark.parametrize("name", [*CONDITIONS, *COPY_CONDITIONS])
def test_a_non_ascii_condition_is_invalid_argument(name):
    names = COPY_CONDITIONS if name in COPY_CONDITIONS else CONDITIONS
    _invalid_argument(lambda: conditions({name: '"\xe9"'}, names), name)


def test_a_copy_source_with_non_ascii_metadata_cannot_be_carried_over():
    for source in ({"x-amz-meta-name": "caf\xe9"}, {"content-disposition": "caf\xe9"}):
        with pytest.raises(S3Error) as exc:
            described_by(source)
        assert exc.value.code == "InvalidRequest"
        assert "REPLACE" in exc.value.message
