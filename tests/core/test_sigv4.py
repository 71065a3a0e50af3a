"""SigV4: AWS documentation vectors, botocore as an oracle, and the ways a request can be wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from trios3.core.errors import S3Error
from trios3.core.sigv4 import (
    EMPTY_SHA256,
    PAYLOAD_LITERALS,
    STREAMING_MODES,
    UNSIGNED_PAYLOAD,
    RequestAuth,
    SigningScope,
    canonical_query_string,
    check_signed_headers,
    chunk_signature,
    derive_signing_key,
    parse_auth,
    sign_request,
    trailer_signature,
    uri_encode,
    verify,
)

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_TIME = datetime(2013, 5, 24, tzinfo=UTC)
DOC_DATE = "20130524T000000Z"
DOC_SCOPE = SigningScope("20130524", "us-east-1", "s3")
HOST = "examplebucket.s3.amazonaws.com"


def _auth_header(signed: str, signature: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={signature}"
    )


def _check(method, path, query, headers, now=DOC_TIME, secret=SECRET):
    auth = parse_auth(method, path, query, headers)
    assert auth is not None
    return auth, verify(auth, secret, method, path, query, headers, now)


# -- AWS documentation vectors --------------------------------------------------------------------


def test_aws_vector_get_object_with_range():
    headers = [
        ("host", HOST),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("x-amz-date", DOC_DATE),
        (
            "authorization",
            _auth_header(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            ),
        ),
    ]
    auth, key = _check("GET", "/test.txt", "", headers)
    assert key == derive_signing_key(SECRET, DOC_SCOPE)
    assert auth.access_key == AKID and not auth.presigned


def test_aws_vector_put_object_encodes_dollar_in_path():
    headers = [
        ("host", HOST),
        ("date", "Fri, 24 May 2013 00:00:00 GMT"),
        ("x-amz-date", DOC_DATE),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        (
            "x-amz-content-sha256",
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        ),
        (
            "authorization",
            _auth_header(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            ),
        ),
    ]
    # Sent raw ("$") and sent encoded ("%24") both canonicalise to /test%24file.text.
    _check("PUT", "/test$file.text", "", headers)
    _check("PUT", "/test%24file.text", "", headers)


def _lifecycle_headers(signature: str) -> list[tuple[str, str]]:
    return [
        ("host", HOST),
        ("x-amz-date", DOC_DATE),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("authorization", _auth_header("host;x-amz-content-sha256;x-amz-date", signature)),
    ]


def test_aws_vector_get_bucket_lifecycle_key_without_value():
    sig = "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    _check("GET", "/", "lifecycle", _lifecycle_headers(sig))
    _check("GET", "/", "lifecycle=", _lifecycle_headers(sig))


def test_aws_vector_list_objects_sorts_query():
    sig = "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    _check("GET", "/", "max-keys=2&prefix=J", _lifecycle_headers(sig))
    _check("GET", "/", "prefix=J&max-keys=2", _lifecycle_headers(sig))


PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_aws_vector_presigned_url():
    auth, _ = _check("GET", "/test.txt", PRESIGNED_QUERY, [("host", HOST)])
    assert auth.presigned and auth.expires == 86400 and auth.payload_hash == "UNSIGNED-PAYLOAD"


def test_presigned_url_expires():
    later = DOC_TIME + timedelta(seconds=86401)
    with pytest.raises(S3Error) as exc:
        _check("GET", "/test.txt", PRESIGNED_QUERY, [("host", HOST)], now=later)
    assert exc.value.code == "AccessDenied" and exc.value.message == "Request has expired"
    # Exactly at the expiry it is still valid.
    _check("GET", "/test.txt", PRESIGNED_QUERY, [("host", HOST)], now=later - timedelta(seconds=1))


def test_presigned_url_from_the_future_is_denied():
    with pytest.raises(S3Error) as exc:
        _check(
            "GET", "/test.txt", PRESIGNED_QUERY, [("host", HOST)], now=DOC_TIME - timedelta(hours=1)
        )
    assert exc.value.code == "AccessDenied"


def test_aws_vector_chunk_signatures():
    key = derive_signing_key(SECRET, DOC_SCOPE)
    import hashlib

    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    s1 = chunk_signature(key, DOC_DATE, DOC_SCOPE, seed, hashlib.sha256(b"a" * 65536).hexdigest())
    assert s1 == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    s2 = chunk_signature(key, DOC_DATE, DOC_SCOPE, s1, hashlib.sha256(b"a" * 1024).hexdigest())
    assert s2 == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    s3 = chunk_signature(key, DOC_DATE, DOC_SCOPE, s2, EMPTY_SHA256)
    assert s3 == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def test_aws_vector_trailer_signature():
    import hashlib

    key = derive_signing_key(SECRET, DOC_SCOPE)
    final = "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
    digest = hashlib.sha256(b"x-amz-checksum-crc32c:sOO8/Q==\n").hexdigest()
    assert (
        trailer_signature(key, DOC_DATE, DOC_SCOPE, final, digest)
        == "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
    )


STREAMING_HEADERS = [
    ("host", "s3.amazonaws.com"),
    ("x-amz-date", DOC_DATE),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    ("content-encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
    ("content-length", "66824"),
]


def test_aws_vector_streaming_seed_signature():
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    signed = (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class"
    )
    headers = [*STREAMING_HEADERS, ("authorization", _auth_header(signed, seed))]
    auth, _ = _check("PUT", "/examplebucket/chunkObject.txt", "", headers)
    assert auth.payload_hash == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def test_aws_vector_streaming_trailer_seed_signature():
    seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
    signed = (
        "content-encoding;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer"
    )
    headers = [
        (k, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" if k == "x-amz-content-sha256" else v)
        for k, v in STREAMING_HEADERS
    ]
    headers += [
        ("x-amz-trailer", "x-amz-checksum-crc32c"),
        ("authorization", _auth_header(signed, seed)),
    ]
    _check("PUT", "/examplebucket/chunkObject.txt", "", headers)


# -- primitives -----------------------------------------------------------------------------------


def test_scope_renders_as_credential_scope():
    assert str(DOC_SCOPE) == "20130524/us-east-1/s3/aws4_request"


def test_uri_encode_keeps_unreserved_and_uppercases_hex():
    assert uri_encode("a b+c~d_e-f.g/h") == "a%20b%2Bc~d_e-f.g%2Fh"
    assert uri_encode("a/b é", encode_slash=False) == "a/b%20%C3%A9"


def test_canonical_query_string_sorts_encoded_pairs():
    query = [("prefix", "a b"), ("list-type", "2"), ("delimiter", "/"), ("k", "")]
    assert canonical_query_string(query) == "delimiter=%2F&k=&list-type=2&prefix=a%20b"


# -- botocore as an oracle ------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
BOTO_KEY = "AKIDEXAMPLE"
BOTO_SECRET = "s3cr3t/with+chars"
KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign",
    "tilde~x",
    "ünïcödé/日本.bin",
    "a%b&c=d",
    "(x)*!'$",
]


def _boto_request(method, url, headers=None, body=b"", presign=False, expires=3600):
    from unittest import mock

    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    creds = Credentials(BOTO_KEY, BOTO_SECRET)
    signer = (
        S3SigV4QueryAuth(creds, "s3", "eu-west-1", expires=expires)
        if presign
        else S3SigV4Auth(creds, "s3", "eu-west-1")
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        signer.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    wire_headers = [(k.lower(), v) for k, v in prepared.headers.items()]
    if not any(k == "host" for k, _ in wire_headers):
        wire_headers.append(("host", parts.netloc))
    return parts.path, parts.query, wire_headers


def _quote_key(key: str) -> str:
    from urllib.parse import quote

    return quote(key, safe="/~")


@pytest.mark.parametrize("key", KEYS)
def test_botocore_header_auth_verifies(key):
    url = f"https://s3.example.com/bucket/{_quote_key(key)}"
    path, query, headers = _boto_request("PUT", url, {"Content-Type": "text/plain"}, b"hello")
    auth = parse_auth("PUT", path, query, headers)
    assert auth is not None and auth.payload_hash != "UNSIGNED-PAYLOAD"
    verify(auth, BOTO_SECRET, "PUT", path, query, headers, NOW)


def test_botocore_header_auth_with_several_query_params():
    url = (
        "https://s3.example.com/bucket?list-type=2&prefix=dir%2Fsub%20x%2By&delimiter=%2F"
        "&max-keys=10&encoding-type=url&start-after=%C3%A9~"
    )
    path, query, headers = _boto_request("GET", url)
    _, key = _check("GET", path, query, headers, now=NOW, secret=BOTO_SECRET)
    assert len(key) == 32


@pytest.mark.parametrize("key", KEYS)
def test_botocore_presigned_url_verifies(key):
    url = f"https://s3.example.com/bucket/{_quote_key(key)}?versionId=v%2B1&response-content-type=a%2Fb"
    path, query, headers = _boto_request("GET", url, presign=True, expires=600)
    auth, _ = _check(
        "GET", path, query, headers, now=NOW + timedelta(seconds=30), secret=BOTO_SECRET
    )
    assert auth.presigned and auth.expires == 600


def test_tampered_query_is_rejected():
    url = "https://s3.example.com/bucket?list-type=2&prefix=a"
    path, query, headers = _boto_request("GET", url)
    with pytest.raises(S3Error) as exc:
        _check(
            "GET", path, query.replace("prefix=a", "prefix=b"), headers, now=NOW, secret=BOTO_SECRET
        )
    assert exc.value.code == "SignatureDoesNotMatch"
    assert set(exc.value.fields) == {
        "AWSAccessKeyId",
        "StringToSign",
        "SignatureProvided",
        "CanonicalRequest",
    }


def test_tampered_presigned_query_is_rejected():
    url = "https://s3.example.com/bucket/k?versionId=1"
    path, query, headers = _boto_request("GET", url, presign=True)
    with pytest.raises(S3Error) as exc:
        _check(
            "GET",
            path,
            query.replace("versionId=1", "versionId=2"),
            headers,
            now=NOW,
            secret=BOTO_SECRET,
        )
    assert exc.value.code == "SignatureDoesNotMatch"


def test_tampered_header_is_rejected():
    path, query, headers = _boto_request(
        "PUT", "https://s3.example.com/bucket/k", {"x-amz-meta-a": "1"}, b"x"
    )
    headers = [(k, "2" if k == "x-amz-meta-a" else v) for k, v in headers]
    with pytest.raises(S3Error) as exc:
        _check("PUT", path, query, headers, now=NOW, secret=BOTO_SECRET)
    assert exc.value.code == "SignatureDoesNotMatch"


def test_wrong_secret_is_rejected():
    path, query, headers = _boto_request("GET", "https://s3.example.com/bucket/k")
    with pytest.raises(S3Error) as exc:
        _check("GET", path, query, headers, now=NOW, secret="wrong")
    assert exc.value.code == "SignatureDoesNotMatch"


def test_clock_skew_is_rejected():
    path, query, headers = _boto_request("GET", "https://s3.example.com/bucket/k")
    _check("GET", path, query, headers, now=NOW + timedelta(minutes=14), secret=BOTO_SECRET)
    with pytest.raises(S3Error) as exc:
        _check("GET", path, query, headers, now=NOW - timedelta(minutes=16), secret=BOTO_SECRET)
    assert exc.value.code == "RequestTimeTooSkewed"
    assert exc.value.fields["MaxAllowedSkewMilliseconds"] == "900000"


def test_header_values_are_trimmed_and_duplicates_joined():
    headers = [("host", "h"), ("x-amz-meta-a", "  one   two "), ("x-amz-meta-a", "three")]
    added = sign_request("GET", "/b/k", [], headers, EMPTY_SHA256, "AK", "SK", "r", NOW)
    wire = headers + added
    _check("GET", "/b/k", "", wire, now=NOW, secret="SK")
    squeezed = [("host", "h"), ("x-amz-meta-a", "one two"), ("x-amz-meta-a", "three"), *added]
    _check("GET", "/b/k", "", squeezed, now=NOW, secret="SK")


# -- sign_request ---------------------------------------------------------------------------------


def test_sign_request_matches_botocore_and_verifies():
    query = [("uploadId", "a+b/c"), ("partNumber", "3")]
    path = "/bucket/" + uri_encode("dir/ä b+c", encode_slash=False)
    qs = canonical_query_string(query)
    headers = [("host", "backend:8333"), ("content-length", "5"), ("x-amz-meta-k", "v")]
    payload = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    added = sign_request(
        "PUT", path, query, headers, payload, BOTO_KEY, BOTO_SECRET, "eu-west-1", NOW
    )
    assert [k for k, _ in added] == ["x-amz-date", "x-amz-content-sha256", "authorization"]
    wire = headers + added
    _check("PUT", path, qs, wire, now=NOW, secret=BOTO_SECRET)

    # botocore signs the same request (same headers, same payload hash) to the same signature.
    boto_path, boto_query, boto_headers = _boto_request(
        "PUT",
        f"http://backend:8333{path}?{qs}",
        {"content-length": "5", "x-amz-meta-k": "v", "x-amz-content-sha256": payload},
        b"hello",
    )
    assert (boto_path, boto_query) == (path, qs)
    ours = dict(added)["authorization"]
    theirs = dict(boto_headers)["authorization"]
    assert ours.split("Signature=")[1] == theirs.split("Signature=")[1]


def test_sign_request_refuses_headers_it_adds():
    with pytest.raises(ValueError):
        sign_request(
            "GET", "/", [], [("host", "h"), ("x-amz-date", "x")], EMPTY_SHA256, "a", "b", "r", NOW
        )


# -- parse_auth -----------------------------------------------------------------------------------


def test_anonymous_request_has_no_auth():
    assert parse_auth("GET", "/b/k", "versionId=1", [("host", "h")]) is None


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", [("authorization", "AWS AKIAIOSFODNN7EXAMPLE:qgk2+6Sv9/oM7G3qLEjTH1a1l1g=")]),
        ("AWSAccessKeyId=AK&Expires=1&Signature=abc", []),
    ],
)
def test_sigv2_is_rejected(query, headers):
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/b/k", query, [("host", "h"), *headers])
    assert exc.value.code == "InvalidRequest"
    assert "Please use AWS4-HMAC-SHA256" in exc.value.message


def test_sigv4a_is_not_implemented():
    header = (
        "AWS4-ECDSA-P256-SHA256 Credential=AK/20130524/s3/aws4_request, "
        "SignedHeaders=host, Signature=ab"
    )
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/", "", [("host", "h"), ("authorization", header)])
    assert exc.value.code == "NotImplemented"


GOOD_SIG = "a" * 64
CRED = "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,"


def _header_auth(authorization, content_sha256=EMPTY_SHA256, date=DOC_DATE):
    headers = [("host", "h"), ("authorization", authorization)]
    if content_sha256 is not None:
        headers.append(("x-amz-content-sha256", content_sha256))
    if date is not None:
        headers.append(("x-amz-date", date))
    return parse_auth("GET", "/", "", headers)


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3,SignedHeaders=host,Signature="
        + GOOD_SIG,
        "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,Signature=" + GOOD_SIG,
        CRED + "SignedHeaders=range,Signature=" + GOOD_SIG,
        CRED + "SignedHeaders=host,Signature=xyz",
        CRED.replace("20130524", "2013-05-24") + "SignedHeaders=host,Signature=" + GOOD_SIG,
    ],
)
def test_malformed_authorization_header(authorization):
    with pytest.raises(S3Error) as exc:
        _header_auth(authorization)
    assert exc.value.code == "AuthorizationHeaderMalformed"


VALID_AUTH = CRED + " SignedHeaders=host, Signature=" + GOOD_SIG


def test_header_auth_accepts_spaces_after_commas():
    auth = _header_auth(VALID_AUTH)
    assert auth == RequestAuth(
        "AK", DOC_SCOPE, ("host",), GOOD_SIG, DOC_DATE, False, None, EMPTY_SHA256
    )


def test_header_auth_requires_content_sha256():
    with pytest.raises(S3Error) as exc:
        _header_auth(VALID_AUTH, content_sha256=None)
    assert exc.value.code == "InvalidRequest"
    assert exc.value.message == "Missing required header for this request: x-amz-content-sha256"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("nonsense", "InvalidArgument"),
        ("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "NotImplemented"),
    ],
)
def test_bad_content_sha256(value, code):
    with pytest.raises(S3Error) as exc:
        _header_auth(VALID_AUTH, content_sha256=value)
    assert exc.value.code == code


def test_date_header_stands_in_for_x_amz_date():
    headers = [
        ("host", "h"),
        ("authorization", VALID_AUTH),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("date", "Fri, 24 May 2013 00:00:00 GMT"),
    ]
    auth = parse_auth("GET", "/", "", headers)
    assert auth is not None and auth.amz_date == DOC_DATE


def test_missing_date_is_denied():
    with pytest.raises(S3Error) as exc:
        _header_auth(VALID_AUTH, date=None)
    assert exc.value.code == "AccessDenied"


def test_scope_date_must_match_request_date():
    auth = _header_auth(VALID_AUTH, date="20130525T000000Z")
    with pytest.raises(S3Error) as exc:
        verify(auth, SECRET, "GET", "/", "", [], datetime(2013, 5, 25, tzinfo=UTC))
    assert exc.value.code == "AuthorizationHeaderMalformed"


def test_scope_service_must_be_s3():
    auth = _header_auth(VALID_AUTH.replace("/s3/", "/iam/"))
    with pytest.raises(S3Error) as exc:
        verify(auth, SECRET, "GET", "/", "", [], DOC_TIME)
    assert exc.value.code == "AuthorizationHeaderMalformed"


@pytest.mark.parametrize(
    "change",
    [
        ("X-Amz-Expires=86400", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=86400", "X-Amz-Expires=0"),
        ("X-Amz-Expires=86400", "X-Amz-Expires=soon"),
        ("&X-Amz-SignedHeaders=host", ""),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=HMAC"),
        ("X-Amz-Date=20130524T000000Z", "X-Amz-Date=2013-05-24"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=range"),
    ],
)
def test_malformed_presigned_parameters(change):
    query = PRESIGNED_QUERY.replace(*change)
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/test.txt", query, [("host", HOST)])
    assert exc.value.code == "AuthorizationQueryParametersError"


def test_presign_and_header_together_are_rejected():
    with pytest.raises(S3Error) as exc:
        parse_auth(
            "GET", "/test.txt", PRESIGNED_QUERY, [("host", HOST), ("authorization", VALID_AUTH)]
        )
    assert exc.value.code == "InvalidArgument"


def test_presigned_sigv4a_is_not_implemented():
    query = PRESIGNED_QUERY.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/test.txt", query, [("host", HOST)])
    assert exc.value.code == "NotImplemented"


# -- which headers must be signed -------------------------------------------------------------


def _signed(*names: str, presigned: bool = False) -> RequestAuth:
    return RequestAuth(
        "AK", DOC_SCOPE, names, GOOD_SIG, DOC_DATE, presigned, None, UNSIGNED_PAYLOAD
    )


def _headers_not_signed(headers, auth) -> S3Error:
    with pytest.raises(S3Error) as exc:
        check_signed_headers(headers, auth)
    assert exc.value.code == "AccessDenied" and exc.value.status == 403
    assert exc.value.message == "There were headers present in the request which were not signed"
    return exc.value


def test_signed_x_amz_headers_pass():
    auth = _signed("host", "x-amz-copy-source", "x-amz-date", "x-amz-meta-a")
    headers = {
        "host": HOST,
        "x-amz-copy-source": "b/k",
        "x-amz-date": DOC_DATE,
        "x-amz-meta-a": "1",
    }
    assert check_signed_headers(headers, auth) is None


def test_x_amz_content_sha256_may_go_unsigned():
    headers = {"host": HOST, "x-amz-content-sha256": UNSIGNED_PAYLOAD}
    assert check_signed_headers(headers, _signed("host")) is None


def test_headers_other_than_x_amz_may_go_unsigned():
    headers = {"host": HOST, "content-type": "text/plain", "range": "bytes=0-1", "x-amzfoo": "1"}
    assert check_signed_headers(headers, _signed("host")) is None
    assert check_signed_headers({}, _signed()) is None


def test_an_unsigned_x_amz_header_is_access_denied():
    error = _headers_not_signed({"host": HOST, "x-amz-copy-source": "b/k"}, _signed("host"))
    assert error.fields == {"HeadersNotSigned": "x-amz-copy-source"}


def test_every_unsigned_x_amz_header_is_listed_sorted():
    headers = {
        "x-amz-tagging": "a=b",
        "host": HOST,
        "x-amz-content-sha256": UNSIGNED_PAYLOAD,
        "x-amz-acl": "public-read",
        "x-amz-date": DOC_DATE,
        "x-amz-meta-z": "1",
        "content-type": "text/plain",
    }
    error = _headers_not_signed(headers, _signed("host", "x-amz-date"))
    assert error.fields == {"HeadersNotSigned": "x-amz-acl, x-amz-meta-z, x-amz-tagging"}


def test_a_presigned_url_cannot_be_turned_into_a_copy():
    auth = _signed("host", presigned=True)
    error = _headers_not_signed(["host", "x-amz-copy-source"], auth)
    assert error.fields == {"HeadersNotSigned": "x-amz-copy-source"}


def test_streaming_modes_are_the_three_aws_chunked_payload_literals():
    assert sorted(STREAMING_MODES) == [
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    ]
    assert STREAMING_MODES < PAYLOAD_LITERALS
    assert sorted(PAYLOAD_LITERALS - STREAMING_MODES) == [UNSIGNED_PAYLOAD]
    assert EMPTY_SHA256 not in STREAMING_MODES


# -- numbers and dates a client sends: S3's error, never a ValueError -------------------------


@pytest.mark.parametrize("expires", ["9" * 5000, "0" * 10 + "604801", "9" * 19])
def test_a_presign_expiry_of_any_length_past_a_week_is_the_week_error(expires):
    query = PRESIGNED_QUERY.replace("X-Amz-Expires=86400", f"X-Amz-Expires={expires}")
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/test.txt", query, [("host", HOST)])
    assert exc.value.code == "AuthorizationQueryParametersError"
    assert "less than a week" in exc.value.message


def test_a_presign_expiry_with_leading_zeros_is_its_number():
    query = PRESIGNED_QUERY.replace("X-Amz-Expires=86400", "X-Amz-Expires=" + "0" * 5000 + "86400")
    auth = parse_auth("GET", "/test.txt", query, [("host", HOST)])
    assert auth is not None and auth.expires == 86400


@pytest.mark.parametrize("expires", ["%C2%B2", "%D9%A1", "%EF%BC%91", "1%C2%A0", "-1", "+1", "1_0"])
def test_a_presign_expiry_that_is_not_ascii_digits_is_not_a_number(expires):
    query = PRESIGNED_QUERY.replace("X-Amz-Expires=86400", f"X-Amz-Expires={expires}")
    with pytest.raises(S3Error) as exc:
        parse_auth("GET", "/test.txt", query, [("host", HOST)])
    assert exc.value.code == "AuthorizationQueryParametersError"
    assert exc.value.message == "X-Amz-Expires should be a number"


def test_a_credential_date_in_non_ascii_digits_is_malformed():
    fullwidth = "".join(chr(0xFF10 + int(c)) for c in "20130524")
    with pytest.raises(S3Error) as exc:
        _header_auth(VALID_AUTH.replace("20130524", fullwidth))
    assert exc.value.code == "AuthorizationHeaderMalformed"
