"""Object operations through the proxy, with boto3, over HTTP and over HTTPS.

The proxy in front of a real SeaweedFS must be transparent for the plaintext (bodies, ranges,
metadata, conditionals) while the backend only ever holds ciphertext bound to its key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import uuid
import zlib

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from harness import code, new_key, scratch_bucket, set_metadata, status
from trios3.core import format as fmt

pytestmark = pytest.mark.integration

SEG = fmt.DEFAULT_SEGMENT_SIZE  # what a PUT through the proxy uses
TAG = 16
ENCRYPTED_ETAG = re.compile(r'^"[0-9a-f]{32}-0"$')
RESERVED = ("trios3-v", "trios3-kid", "trios3-seg", "trios3-dek")


def stored_len(size: int, segment: int = SEG) -> int:
    return size + TAG * max(1, -(-size // segment))


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "objects")


@pytest.fixture(scope="module")
def other_bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "objects-other")


def assert_missing(client, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as info:
        client.head_object(Bucket=bucket, Key=key)
    assert status(info.value) == 404


def outcome(client, bucket: str, key: str, **kwargs):
    """(status, Content-Range, body or error code) of a GET, errors included."""
    try:
        resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
    except ClientError as err:
        headers = err.response["ResponseMetadata"]["HTTPHeaders"]
        return status(err), headers.get("content-range"), code(err)
    body = resp["Body"].read()
    assert resp["ContentLength"] == len(body)
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp.get("ContentRange"), body


def assert_get_fails(client, bucket: str, key: str, plaintext: bytes, **kwargs) -> None:
    """A GET of a tampered object must fail: an error status or a broken body."""
    try:
        resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
        body = resp["Body"].read()
    except ClientError as err:
        assert status(err) >= 500, err.response
        return
    except (BotoCoreError, Urllib3Error, OSError):
        return  # the body was cut short: the honest failure after the status line
    pytest.fail(
        f"GET of a tampered object succeeded: {len(body)} bytes, "
        f"equal to the plaintext: {body == plaintext}"
    )


def stored(backend, bucket: str, key: str):
    resp = backend.get_object(Bucket=bucket, Key=key)
    return resp["Body"].read(), resp["Metadata"], resp["ContentType"]


# -- round trips ---------------------------------------------------------------------------------


SIZES = sorted({0, 1, 65535, 65536, 65537, SEG - 1, SEG, SEG + 1, 1024 * 1024 + 3, 5 * 1024 * 1024})


@pytest.mark.parametrize("size", SIZES)
def test_put_get_head_delete_round_trip(s3, backend, bucket, size):
    data = os.urandom(size)
    key = new_key()
    put = s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert ENCRYPTED_ETAG.match(put["ETag"]), put["ETag"]

    got = s3.get_object(Bucket=bucket, Key=key)
    body = got["Body"].read()
    assert body == data
    assert got["ContentLength"] == size
    assert got["ETag"] == put["ETag"]

    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]
    assert not any(name.startswith("trios3-") for name in head["Metadata"])

    raw, meta, _ = stored(backend, bucket, key)
    assert len(raw) == stored_len(size)
    assert raw[:size] != data or size == 0
    if size >= 64:
        assert data[:32] not in raw
    assert put["ETag"] == f'"{hashlib.md5(raw).hexdigest()}-0"'
    for name in RESERVED:
        assert meta.get(name), f"{name} missing from the stored metadata {meta}"
    assert meta["trios3-v"] == "1"
    assert meta["trios3-seg"] == str(SEG)

    deleted = s3.delete_object(Bucket=bucket, Key=key)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert_missing(s3, bucket, key)
    assert_missing(backend, bucket, key)


def test_overwrite_replaces_the_object(s3, bucket):
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=b"first version")
    s3.put_object(Bucket=bucket, Key=key, Body=b"second")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"second"


def test_delete_missing_key_is_204(s3, bucket):
    resp = s3.delete_object(Bucket=bucket, Key=new_key("never"))
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_metadata_and_content_headers_kept(s3, backend, bucket):
    key = new_key()
    metadata = {"colour": "Blue sky", "x-y": "1", "empty-ish": "-"}
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"hello metadata",
        Metadata=metadata,
        ContentType="text/x-trios3; charset=utf-8",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="a.txt"',
        ContentLanguage="fr",
    )
    for resp in (
        s3.head_object(Bucket=bucket, Key=key),
        s3.get_object(Bucket=bucket, Key=key),
    ):
        assert resp["Metadata"] == metadata
        assert resp["ContentType"] == "text/x-trios3; charset=utf-8"
        assert resp["CacheControl"] == "max-age=60"
        assert resp["ContentDisposition"] == 'attachment; filename="a.txt"'
        assert resp["ContentLanguage"] == "fr"
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        assert not [h for h in headers if h.startswith("x-amz-meta-trios3")], headers
        assert not [h for h in headers if h.startswith("x-amz-checksum")] or (
            headers.get("x-amz-checksum-crc32") == crc32_b64(b"hello metadata")
        )

    _, meta, content_type = stored(backend, bucket, key)
    assert content_type == "text/x-trios3; charset=utf-8"
    assert {k: v for k, v in meta.items() if not k.startswith("trios3-")} == metadata
    assert set(RESERVED) <= set(meta)


def test_reserved_metadata_prefix_refused(s3, bucket):
    key = new_key()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata={"trios3-v": "2"})
    assert status(info.value) == 400
    assert code(info.value) == "InvalidArgument"
    assert_missing(s3, bucket, key)


def test_put_response_echoes_plaintext_checksum(s3, bucket):
    data = os.urandom(70000)
    put = s3.put_object(Bucket=bucket, Key=new_key(), Body=data, ChecksumAlgorithm="CRC32")
    assert put["ChecksumCRC32"] == crc32_b64(data)


# -- ranges ---------------------------------------------------------------------------------------

RANGE_SIZE = 2 * SEG + 1000


@pytest.fixture(scope="module", params=["proxy", "tls_proxy"])
def range_setup(request, seaweedfs, bucket):
    """The same plaintext stored encrypted (through one proxy) and raw (into SeaweedFS)."""
    endpoint = request.getfixturevalue(request.param)
    client = endpoint.client()
    direct = seaweedfs.client()
    prefix = f"range-{request.param}"
    data = os.urandom(RANGE_SIZE)
    small = os.urandom(100)
    for name, body in (("big", data), ("small", small), ("one", b"z"), ("empty", b"")):
        client.put_object(Bucket=bucket, Key=f"{prefix}/enc/{name}", Body=body)
        direct.put_object(Bucket=bucket, Key=f"{prefix}/raw/{name}", Body=body)
    return client, direct, bucket, prefix, {"big": data, "small": small, "one": b"z", "empty": b""}


S = RANGE_SIZE
TRANSPARENT_RANGES = [
    ("big", "bytes=10-20"),  # inside the first segment
    ("big", f"bytes={SEG - 5}-{SEG + 5}"),  # across a segment boundary
    ("big", f"bytes={SEG - 1}-{2 * SEG}"),  # across two boundaries
    ("big", f"bytes={SEG}-{2 * SEG - 1}"),  # exactly one segment
    ("big", f"bytes={2 * SEG}-{2 * SEG}"),  # the first byte of the last segment
    ("big", "bytes=0-"),
    ("big", f"bytes={SEG + 7}-"),
    ("big", f"bytes={S - 1}-"),
    ("big", "bytes=-100"),  # suffix inside the last segment
    ("big", f"bytes=-{SEG + 2000}"),  # suffix across segments
    ("big", "bytes=-10000000"),  # suffix longer than the object
    ("big", "bytes=0-0"),
    ("big", f"bytes=100-{S + 5000}"),  # end past the end: clamped
    ("big", f"bytes={S - 10}-{S + 10}"),
    ("big", f"bytes={S}-"),  # start at the end: 416
    ("big", f"bytes={S + 10}-{S + 20}"),  # start past the end: 416
    ("big", "bytes=-0"),
    ("big", "bytes=0-1,5-6"),  # several ranges: ignored
    ("big", "bytes=abc"),  # garbage: ignored
    ("small", "bytes=0-9"),
    ("small", "bytes=90-"),
    ("small", "bytes=-10"),
    ("small", "bytes=-200"),
    ("small", "bytes=50-500"),
    ("small", "bytes=100-"),
    ("one", "bytes=0-0"),
    ("one", "bytes=0-"),
    ("one", "bytes=-1"),
    ("one", "bytes=1-"),
    ("empty", "bytes=0-0"),
    ("empty", "bytes=0-"),
    ("empty", "bytes=-0"),
]


@pytest.mark.parametrize(("name", "header"), TRANSPARENT_RANGES)
def test_range_matches_seaweedfs(range_setup, name, header):
    client, direct, bucket, prefix, plaintexts = range_setup
    mine = outcome(client, bucket, f"{prefix}/enc/{name}", Range=header)
    theirs = outcome(direct, bucket, f"{prefix}/raw/{name}", Range=header)
    assert mine == theirs
    if mine[0] == 206:
        first, last, total = map(int, re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", mine[1]).groups())
        assert total == len(plaintexts[name])
        assert mine[2] == plaintexts[name][first : last + 1]
    elif mine[0] == 416:
        assert mine[2] == "InvalidRange"
        assert mine[1] == f"bytes */{len(plaintexts[name])}"


# Where SeaweedFS departs from AWS S3 the proxy follows AWS (see core/ranges.py).
AWS_RANGES = [
    ("big", "bytes=20-10", 200, None),  # first > last: ignored, whole object
    ("empty", "bytes=-5", 200, None),  # suffix of an empty object: served whole
]


@pytest.mark.parametrize(("name", "header", "expected", "content_range"), AWS_RANGES)
def test_range_follows_aws_where_seaweedfs_differs(
    range_setup, name, header, expected, content_range
):
    client, _, bucket, prefix, plaintexts = range_setup
    got = outcome(client, bucket, f"{prefix}/enc/{name}", Range=header)
    assert got == (expected, content_range, plaintexts[name])


def test_range_with_if_match(range_setup):
    client, _, bucket, prefix, plaintexts = range_setup
    etag = client.head_object(Bucket=bucket, Key=f"{prefix}/enc/big")["ETag"]
    got = outcome(client, bucket, f"{prefix}/enc/big", Range="bytes=5-9", IfMatch=etag)
    assert got == (206, f"bytes 5-9/{RANGE_SIZE}", plaintexts["big"][5:10])


# -- conditionals ---------------------------------------------------------------------------------


def _call_status(fn, **kwargs) -> int:
    try:
        resp = fn(**kwargs)
    except ClientError as err:
        return status(err)
    if "Body" in resp:
        resp["Body"].read()
    return resp["ResponseMetadata"]["HTTPStatusCode"]


def test_conditional_get_and_head(s3, bucket):
    key = new_key()
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"conditional body")["ETag"]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"] == etag
    modified = head["LastModified"]
    day = datetime.timedelta(days=1)
    other = '"0123456789abcdef0123456789abcdef-0"'
    cases = [
        ({"IfMatch": etag}, 200),
        ({"IfMatch": other}, 412),
        ({"IfMatch": "*"}, 200),
        ({"IfNoneMatch": etag}, 304),
        ({"IfNoneMatch": other}, 200),
        ({"IfModifiedSince": modified + day}, 304),
        ({"IfModifiedSince": modified - day}, 200),
        ({"IfUnmodifiedSince": modified - day}, 412),
        ({"IfUnmodifiedSince": modified + day}, 200),
    ]
    got = {
        (fn.__name__, str(kwargs)): _call_status(fn, Bucket=bucket, Key=key, **kwargs)
        for kwargs, _ in cases
        for fn in (s3.get_object, s3.head_object)
    }
    want = {
        (fn.__name__, str(kwargs)): expected
        for kwargs, expected in cases
        for fn in (s3.get_object, s3.head_object)
    }
    assert got == want
    assert s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read() == b"conditional body"


def test_conditional_put_if_none_match(s3, bucket):
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=b"original")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"replacement", IfNoneMatch="*")
    assert status(info.value) == 412
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"original"


# -- checksums and digests ------------------------------------------------------------------------


def test_get_with_checksum_mode_enabled(s3, bucket):
    data = os.urandom(SEG + 123)
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="CRC32")
    resp = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert resp["Body"].read() == data
    # A checksum, if any is shown, must be the plaintext's (boto3 validated it while reading).
    if "ChecksumCRC32" in resp:
        assert resp["ChecksumCRC32"] == crc32_b64(data)
    ranged = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", Range="bytes=10-20")
    assert ranged["Body"].read() == data[10:21]
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32", crc32_b64(data)) == crc32_b64(data)


def test_content_md5(s3, bucket):
    key = new_key()
    good = base64.b64encode(hashlib.md5(b"right").digest()).decode()
    s3.put_object(Bucket=bucket, Key=key, Body=b"right", ContentMD5=good)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"right"

    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"wrong body", ContentMD5=wrong)
    assert (status(info.value), code(info.value)) == (400, "BadDigest")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"right"

    fresh = new_key()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=fresh, Body=os.urandom(SEG * 2), ContentMD5=wrong)
    assert code(info.value) == "BadDigest"
    assert_missing(s3, bucket, fresh)


def test_wrong_crc32_header(s3, bucket):
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=b"kept")
    data = os.urandom(SEG + 1)
    wrong = crc32_b64(data + b"!")
    for target in (key, new_key()):
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=bucket, Key=target, Body=data, ChecksumCRC32=wrong)
        assert (status(info.value), code(info.value)) == (400, "BadDigest")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"kept"


def test_wrong_crc32_via_event_hook(s3, bucket):
    """The checksum boto3 computed itself, replaced before signing."""
    key = new_key()
    data = b"payload whose crc is replaced"

    def corrupt(request, **_):
        for name in list(request.headers.keys()):
            if name.lower() == "x-amz-checksum-crc32":
                request.headers.replace_header(name, crc32_b64(b"something else"))

    s3.meta.events.register("before-sign.s3.PutObject", corrupt)
    try:
        # In a header (not an aws-chunked trailer) so the hook can reach it.
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumCRC32=crc32_b64(data))
    finally:
        s3.meta.events.unregister("before-sign.s3.PutObject", corrupt)
    assert code(info.value) == "BadDigest"
    assert_missing(s3, bucket, key)


def test_wrong_crc32_raw_signed_request(proxy, bucket):
    key = new_key()
    data = b"raw signed body"
    url = f"{proxy.url}/{bucket}/{key}"
    request = AWSRequest(
        method="PUT", url=url, data=data, headers={"x-amz-checksum-crc32": crc32_b64(b"nope")}
    )
    S3SigV4Auth(Credentials(proxy.access_key, proxy.secret_key), "s3", "us-east-1").add_auth(
        request
    )
    resp = httpx.put(url, content=data, headers=dict(request.headers.items()))
    assert resp.status_code == 400
    assert "<Code>BadDigest</Code>" in resp.text
    assert_missing(proxy.client(), bucket, key)


def test_wrong_trailer_checksum(tls_proxy, bucket):
    """An unsigned aws-chunked body whose CRC32 trailer does not match."""
    client = tls_proxy.client()
    key = new_key()
    data = os.urandom(10000)

    def body(trailer_value: str) -> bytes:
        return (
            f"{len(data):x}\r\n".encode()
            + data
            + b"\r\n0\r\n"
            + f"x-amz-checksum-crc32:{trailer_value}\r\n\r\n".encode()
        )

    def send(trailer_value: str) -> httpx.Response:
        content = body(trailer_value)
        url = f"{tls_proxy.url}/{bucket}/{key}"
        headers = {
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        }
        request = AWSRequest(method="PUT", url=url, headers=headers)
        auth = S3SigV4Auth(
            Credentials(tls_proxy.access_key, tls_proxy.secret_key), "s3", "us-east-1"
        )
        auth.payload = lambda _request: "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        auth.add_auth(request)
        return httpx.put(
            url, content=content, headers=dict(request.headers.items()), verify=tls_proxy.ca_bundle
        )

    bad = send(crc32_b64(b"not the data"))
    assert bad.status_code == 400, bad.text
    assert "<Code>BadDigest</Code>" in bad.text
    assert_missing(client, bucket, key)
    good = send(crc32_b64(data))
    assert good.status_code == 200, good.text
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


# -- the content MD5 (format version 3) -----------------------------------------------------------


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_a_content_md5_is_sealed_and_shown_as_md5chksum(s3, backend, bucket):
    """rclone takes an object's MD5 from x-amz-meta-md5chksum when its ETag is not one."""
    data = os.urandom(SEG + 99)
    key = new_key("md5")
    put = s3.put_object(
        Bucket=bucket, Key=key, Body=data, ContentMD5=md5_b64(data), Metadata={"a": "1"}
    )
    assert ENCRYPTED_ETAG.match(put["ETag"]), put["ETag"]  # the ETag policy is unchanged
    expected = {"a": "1", "md5chksum": md5_b64(data)}
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == expected
    assert head["ETag"] == put["ETag"]
    got = s3.get_object(Bucket=bucket, Key=key)
    assert (got["Body"].read(), got["Metadata"]) == (data, expected)
    ranged = s3.get_object(Bucket=bucket, Key=key, Range="bytes=5-10")
    assert (ranged["Body"].read(), ranged["Metadata"]) == (data[5:11], expected)
    headers = got["ResponseMetadata"]["HTTPHeaders"]
    assert not [h for h in headers if h.startswith("x-amz-meta-trios3")], headers

    raw, meta, _ = stored(backend, bucket, key)
    assert meta["trios3-v"] == "3"
    assert len(raw) == stored_len(len(data))  # the body is laid out as in version 1
    assert {k: v for k, v in meta.items() if not k.startswith("trios3-")} == {"a": "1"}
    digest = hashlib.md5(data).digest()
    for form in (digest.hex(), md5_b64(data), md5_b64(data).rstrip("=")):
        assert form not in str(meta)  # sealed, never in the clear


def test_without_a_content_md5_there_is_no_md5chksum(s3, backend, bucket):
    key = new_key("nomd5")
    s3.put_object(Bucket=bucket, Key=key, Body=b"no md5 sent")  # boto3 sends a CRC32 instead
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {}
    assert stored(backend, bucket, key)[1]["trios3-v"] == "1"


def test_the_clients_own_md5chksum_is_sealed_too(s3, backend, bucket):
    """rclone writes md5chksum itself where the ETag cannot be the MD5: it is a fingerprint of
    the plaintext, so the proxy seals it; it wins over the Content-MD5. A value that is not an
    MD5 is ordinary metadata."""
    key, odd = new_key("own"), new_key("odd")
    claimed = md5_b64(b"what the client says")
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"mine",
        ContentMD5=md5_b64(b"mine"),
        Metadata={"md5chksum": claimed, "mtime": "1"},
    )
    s3.put_object(Bucket=bucket, Key=odd, Body=b"odd", Metadata={"md5chksum": "not an md5"})
    for resp in (s3.head_object(Bucket=bucket, Key=key), s3.get_object(Bucket=bucket, Key=key)):
        assert resp["Metadata"] == {"md5chksum": claimed, "mtime": "1"}
    _, meta, _ = stored(backend, bucket, key)
    assert meta["trios3-v"] == "3"
    assert "md5chksum" not in meta and claimed not in str(meta)
    assert s3.head_object(Bucket=bucket, Key=odd)["Metadata"] == {"md5chksum": "not an md5"}
    _, meta, _ = stored(backend, bucket, odd)
    assert (meta["trios3-v"], meta["md5chksum"]) == ("1", "not an md5")


def test_a_clear_md5chksum_beside_a_sealed_one_is_never_shown(s3, backend, bucket):
    """The proxy never stores a clear md5chksum that is an MD5 beside a sealed one: one
    written at the backend is not the proxy's and is dropped; the authenticated one is shown."""
    data = os.urandom(3000)
    key = new_key("planted")
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=md5_b64(data))
    _, meta, _ = stored(backend, bucket, key)
    set_metadata(backend, bucket, key, {**meta, "md5chksum": md5_b64(b"a lie")})
    for resp in (s3.head_object(Bucket=bucket, Key=key), s3.get_object(Bucket=bucket, Key=key)):
        assert resp["Metadata"] == {"md5chksum": md5_b64(data)}
    # Nor is it laundered into a copy's seal.
    copy = new_key("plantedcopy")
    s3.copy_object(Bucket=bucket, Key=copy, CopySource={"Bucket": bucket, "Key": key})
    assert s3.head_object(Bucket=bucket, Key=copy)["Metadata"] == {"md5chksum": md5_b64(data)}
    assert "md5chksum" not in stored(backend, bucket, copy)[1]


def test_a_bad_content_md5_stores_nothing_even_with_an_md5chksum(s3, bucket):
    key = new_key("bad")
    with pytest.raises(ClientError) as info:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=b"the body",
            ContentMD5=md5_b64(b"another body"),
            Metadata={"md5chksum": md5_b64(b"the body")},
        )
    assert (status(info.value), code(info.value)) == (400, "BadDigest")
    assert_missing(s3, bucket, key)


def test_metadata_limit_leaves_room_for_the_envelope(s3, backend, bucket):
    """S3 allows 2 KiB of user metadata; the proxy's own fields take up to 213 bytes of it, so
    a client gets 1835: at most 2 KiB reach the backend, as AWS demands."""
    key = new_key("meta")
    value = "v" * (1835 - len("big") - len("md5chksum") - 24)
    metadata = {"big": value, "md5chksum": md5_b64(b"x")}
    s3.put_object(Bucket=bucket, Key=key, Body=b"x", ContentMD5=md5_b64(b"x"), Metadata=metadata)
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == metadata
    _, meta, _ = stored(backend, bucket, key)
    assert sum(len(n) + len(v) for n, v in meta.items()) <= 2048
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata={**metadata, "big": value + "v"})
    assert (status(info.value), code(info.value)) == (400, "MetadataTooLarge")
    assert info.value.response["Error"]["MaxSizeAllowed"] == "1835"


def test_copies_keep_the_sealed_md5(s3, backend, bucket, other_bucket):
    data = os.urandom(5000)
    src = new_key("md5src")
    s3.put_object(Bucket=bucket, Key=src, Body=data, ContentMD5=md5_b64(data))
    copied, replaced, restated = new_key("md5copy"), new_key("md5replace"), new_key("md5new")
    s3.copy_object(Bucket=other_bucket, Key=copied, CopySource={"Bucket": bucket, "Key": src})
    s3.copy_object(
        Bucket=bucket,
        Key=replaced,
        CopySource={"Bucket": bucket, "Key": src},
        MetadataDirective="REPLACE",
        Metadata={"new": "y"},
    )
    # REPLACE with an md5chksum of its own: sealed afresh (same data key, a new nonce).
    s3.copy_object(
        Bucket=bucket,
        Key=restated,
        CopySource={"Bucket": bucket, "Key": src},
        MetadataDirective="REPLACE",
        Metadata={"md5chksum": md5_b64(b"restated")},
    )
    for where, key, metadata in (
        (other_bucket, copied, {"md5chksum": md5_b64(data)}),
        (bucket, replaced, {"new": "y", "md5chksum": md5_b64(data)}),
        (bucket, restated, {"md5chksum": md5_b64(b"restated")}),
    ):
        got = s3.get_object(Bucket=where, Key=key)
        assert (got["Body"].read(), got["Metadata"]) == (data, metadata)
        _, meta, _ = stored(backend, where, key)
        assert meta["trios3-v"] == "3" and "md5chksum" not in meta


def test_copies_seal_an_md5chksum_that_was_in_the_clear(s3, backend, bucket):
    """Objects written before the proxy sealed md5chksum, and foreign objects (migration),
    have it in the clear: a copy through the proxy seals it."""
    data = os.urandom(4000)
    legacy, foreign = new_key("legacy"), new_key("foreign")
    s3.put_object(Bucket=bucket, Key=legacy, Body=data)  # version 1 ...
    _, meta, _ = stored(backend, bucket, legacy)
    # ... given an md5chksum in the clear, as older versions left rclone's
    set_metadata(backend, bucket, legacy, {**meta, "md5chksum": md5_b64(data)})
    backend.put_object(Bucket=bucket, Key=foreign, Body=data, Metadata={"md5chksum": md5_b64(data)})
    for source in (legacy, foreign):
        assert s3.head_object(Bucket=bucket, Key=source)["Metadata"] == {"md5chksum": md5_b64(data)}
        copy = new_key("sealedcopy")
        s3.copy_object(Bucket=bucket, Key=copy, CopySource={"Bucket": bucket, "Key": source})
        got = s3.get_object(Bucket=bucket, Key=copy)
        assert (got["Body"].read(), got["Metadata"]) == (data, {"md5chksum": md5_b64(data)})
        _, meta, _ = stored(backend, bucket, copy)
        assert meta["trios3-v"] == "3" and "md5chksum" not in meta


def test_a_sealed_md5_from_another_object_fails(s3, backend, bucket):
    a, b = new_key("md5a"), new_key("md5b")
    data_a, data_b = os.urandom(3000), os.urandom(3000)
    s3.put_object(Bucket=bucket, Key=a, Body=data_a, ContentMD5=md5_b64(data_a))
    s3.put_object(Bucket=bucket, Key=b, Body=data_b, ContentMD5=md5_b64(data_b))
    _, meta_a, _ = stored(backend, bucket, a)
    _, meta_b, _ = stored(backend, bucket, b)

    def rewrite(metadata):
        set_metadata(backend, bucket, b, metadata)

    rewrite({**meta_b, "trios3-md5": meta_a["trios3-md5"]})  # a's MD5 under b's data key
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key=b)
    assert status(info.value) == 500
    assert_get_fails(s3, bucket, b, data_b)
    rewrite({k: v for k, v in meta_b.items() if k != "trios3-md5"})  # the MD5 dropped
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key=b)
    assert status(info.value) == 500
    assert_get_fails(s3, bucket, b, data_b)
    rewrite(meta_b)  # put back as it was: served again
    assert s3.head_object(Bucket=bucket, Key=b)["Metadata"] == {"md5chksum": md5_b64(data_b)}


# -- copy -----------------------------------------------------------------------------------------


def test_copy_with_metadata_copy(s3, backend, bucket):
    src, dst = new_key("src"), new_key("dst")
    data = os.urandom(SEG + 77)
    s3.put_object(
        Bucket=bucket, Key=src, Body=data, Metadata={"a": "1", "b": "two"}, ContentType="image/png"
    )
    result = s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    etag = result["CopyObjectResult"]["ETag"]
    assert ENCRYPTED_ETAG.match(etag), etag
    head = s3.head_object(Bucket=bucket, Key=dst)
    assert head["ETag"] == etag
    assert head["Metadata"] == {"a": "1", "b": "two"}
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(data)
    assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == data
    # The source is untouched and the copy's data key is wrapped for its own name.
    assert s3.get_object(Bucket=bucket, Key=src)["Body"].read() == data
    src_raw, src_meta, _ = stored(backend, bucket, src)
    dst_raw, dst_meta, _ = stored(backend, bucket, dst)
    assert dst_raw == src_raw
    assert dst_meta["trios3-dek"] != src_meta["trios3-dek"]


def test_copy_with_metadata_replace(s3, bucket):
    src, dst = new_key("src"), new_key("dst")
    s3.put_object(Bucket=bucket, Key=src, Body=b"replace me", Metadata={"old": "x"})
    s3.copy_object(
        Bucket=bucket,
        Key=dst,
        CopySource={"Bucket": bucket, "Key": src},
        MetadataDirective="REPLACE",
        Metadata={"new": "y"},
        ContentType="text/plain",
    )
    got = s3.get_object(Bucket=bucket, Key=dst)
    assert got["Body"].read() == b"replace me"
    assert got["Metadata"] == {"new": "y"}
    assert got["ContentType"] == "text/plain"
    assert s3.head_object(Bucket=bucket, Key=src)["Metadata"] == {"old": "x"}


def test_copy_to_itself(s3, bucket):
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=b"self", Metadata={"v": "1"})
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key})
    assert (status(info.value), code(info.value)) == (400, "InvalidRequest")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"self"

    s3.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={"v": "2"},
    )
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == b"self"
    assert got["Metadata"] == {"v": "2"}


def test_copy_across_buckets_with_odd_keys(s3, bucket, other_bucket):
    other = other_bucket
    src = new_key("dir/a b+c%d ü")
    dst = new_key("copied/é +%2F x")
    s3.put_object(Bucket=bucket, Key=src, Body=b"odd keys")
    s3.copy_object(Bucket=other, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    assert s3.get_object(Bucket=other, Key=dst)["Body"].read() == b"odd keys"


def test_copy_conditions_and_missing_source(s3, bucket):
    src = new_key("src")
    etag = s3.put_object(Bucket=bucket, Key=src, Body=b"cond")["ETag"]
    dst = new_key("dst")
    with pytest.raises(ClientError) as info:
        s3.copy_object(
            Bucket=bucket,
            Key=dst,
            CopySource={"Bucket": bucket, "Key": src},
            CopySourceIfMatch='"0123456789abcdef0123456789abcdef-0"',
        )
    assert status(info.value) == 412
    assert_missing(s3, bucket, dst)
    s3.copy_object(
        Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, CopySourceIfMatch=etag
    )
    assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": "nope"})
    assert status(info.value) == 404


# -- tampering at the backend ---------------------------------------------------------------------


def test_metadata_moved_to_another_key_fails(s3, backend, bucket):
    data = os.urandom(SEG + 10)
    key = new_key("orig")
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    moved = new_key("moved")
    backend.copy_object(Bucket=bucket, Key=moved, CopySource={"Bucket": bucket, "Key": key})
    _, meta, _ = stored(backend, bucket, moved)
    assert set(RESERVED) <= set(meta), "SeaweedFS did not keep the metadata on copy"
    assert_get_fails(s3, bucket, moved, data)
    assert_get_fails(s3, bucket, moved, data, Range="bytes=0-10")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_ciphertext_swapped_between_objects_fails(s3, backend, bucket):
    a, b = new_key("a"), new_key("b")
    data_a, data_b = os.urandom(5000), os.urandom(5000)
    s3.put_object(Bucket=bucket, Key=a, Body=data_a)
    s3.put_object(Bucket=bucket, Key=b, Body=data_b)
    raw_a, _, _ = stored(backend, bucket, a)
    _, meta_b, _ = stored(backend, bucket, b)
    backend.put_object(Bucket=bucket, Key=b, Body=raw_a, Metadata=meta_b)
    try:
        body = s3.get_object(Bucket=bucket, Key=b)["Body"].read()
    except (ClientError, BotoCoreError, Urllib3Error, OSError):
        return
    pytest.fail(f"swapped ciphertext was served ({body == data_a=}, {body == data_b=})")


FLIPS = [
    ("first segment", 10),
    ("first tag", SEG + TAG - 1),
    ("middle segment", SEG + TAG + 5),
    ("last segment", 2 * (SEG + TAG) + 3),
    ("last tag", -1),
]


@pytest.mark.parametrize(("where", "offset"), FLIPS, ids=[f[0] for f in FLIPS])
def test_bit_flip_fails(s3, backend, bucket, where, offset):
    data = os.urandom(2 * SEG + 500)
    key = new_key("flip")
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    raw, meta, content_type = stored(backend, bucket, key)
    damaged = bytearray(raw)
    damaged[offset] ^= 0x01
    backend.put_object(
        Bucket=bucket, Key=key, Body=bytes(damaged), Metadata=meta, ContentType=content_type
    )
    assert_get_fails(s3, bucket, key, data)
    flipped_segment = (offset % len(raw)) // (SEG + TAG)
    plain_start = flipped_segment * SEG
    assert_get_fails(s3, bucket, key, data, Range=f"bytes={plain_start}-{plain_start + 9}")
    # Segments that were not touched still read (each one is authenticated on its own).
    intact = 0 if flipped_segment else 1
    got = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={intact * SEG}-{intact * SEG + 99}")
    assert got["Body"].read() == data[intact * SEG : intact * SEG + 100]


@pytest.mark.parametrize(
    "cut", [1, TAG, 500 + TAG], ids=["one byte", "one tag", "whole last segment"]
)
def test_truncated_stored_object_fails(s3, backend, bucket, cut):
    data = os.urandom(2 * SEG + 500)
    key = new_key("cut")
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    raw, meta, content_type = stored(backend, bucket, key)
    backend.put_object(
        Bucket=bucket, Key=key, Body=raw[:-cut], Metadata=meta, ContentType=content_type
    )
    assert_get_fails(s3, bucket, key, data)


# -- objects the proxy did not encrypt ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 10, 116, SEG + TAG + 100])
def test_foreign_objects_served_as_they_are(s3, backend, bucket, size):
    data = os.urandom(size)
    key = new_key("foreign")
    put = backend.put_object(
        Bucket=bucket, Key=key, Body=data, Metadata={"origin": "direct"}, ContentType="x/y"
    )
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ETag"] == put["ETag"]
    assert got["Metadata"] == {"origin": "direct"}
    assert got["ContentType"] == "x/y"
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]
    if size:
        header = f"bytes={size // 2}-"
        assert outcome(s3, bucket, key, Range=header) == outcome(backend, bucket, key, Range=header)


def test_copy_of_foreign_object_never_stores_plaintext(s3, backend, bucket):
    src, dst = new_key("foreign"), new_key("dst")
    backend.put_object(Bucket=bucket, Key=src, Body=b"plain foreign bytes")
    try:
        s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    except ClientError as err:
        assert status(err) == 501
        assert_missing(backend, bucket, dst)
        return
    raw, meta, _ = stored(backend, bucket, dst)
    assert raw != b"plain foreign bytes"
    assert set(RESERVED) <= set(meta)
    assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == b"plain foreign bytes"


# -- parts and multipart --------------------------------------------------------------------------


def test_part_numbers(s3, bucket):
    data = os.urandom(SEG + 5)
    key = new_key()
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    first = s3.get_object(Bucket=bucket, Key=key, PartNumber=1)
    assert first["ResponseMetadata"]["HTTPStatusCode"] in (200, 206)
    assert first["Body"].read() == data
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key=key, PartNumber=2)
    assert 400 <= status(info.value) < 500
    assert code(info.value) == "InvalidPartNumber"
    head = s3.head_object(Bucket=bucket, Key=key, PartNumber=1)
    assert head["ContentLength"] == len(data)


def test_upload_ids_the_proxy_never_issued_are_no_such_upload(s3, backend, bucket):
    key = new_key("mpu")
    calls = [
        lambda: s3.upload_part(Bucket=bucket, Key=key, UploadId="x", PartNumber=1, Body=b"p"),
        lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId="x"),
        lambda: s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId="x",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        ),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId="x"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as info:
            call()
        assert (status(info.value), code(info.value)) == (404, "NoSuchUpload")
    assert_missing(backend, bucket, key)


@pytest.mark.parametrize("key", ["a/../b", "x/./y", "..", "./z"])
def test_keys_with_dot_segments_reach_the_backend_as_signed(proxy, seaweedfs, bucket, key):
    """The key goes out exactly as signed (no "." / ".." normalisation on the way), so the
    proxy answers as the backend does for that key: SeaweedFS refuses dot segments."""

    def outcome(client):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"dots")
        except ClientError as exc:
            return status(exc), exc.response["Error"]["Code"]
        return 200, client.get_object(Bucket=bucket, Key=key)["Body"].read()

    direct = outcome(seaweedfs.client())
    through = outcome(proxy.client())
    assert through[0] == direct[0] and through[0] < 500
    if direct[0] == 200:
        assert through[1] == b"dots"
    else:
        assert through[1] == direct[1]


def test_not_modified_keeps_the_validators_in_the_clients_terms(endpoint, bucket):
    key = f"etag304-{uuid.uuid4().hex[:8]}"
    s3 = endpoint.client()
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"cached")["ETag"]
    head = s3.head_object(Bucket=bucket, Key=key)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    verify = endpoint.ca_bundle if endpoint.url.startswith("https") else True
    response = httpx.get(url, headers={"If-None-Match": etag}, verify=verify)
    assert response.status_code == 304
    assert response.headers["etag"] == etag
    # Last-Modified is passed on when the backend sends it (SeaweedFS does not on a 304).
    if "last-modified" in response.headers:
        expected = head["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
        assert response.headers["last-modified"] == expected


@pytest.mark.parametrize(
    ("header", "status_code", "length", "content_range"),
    [
        ("bytes=10-19", 206, 10, "bytes 10-19/300000"),
        ("bytes=-5", 206, 5, "bytes 299995-299999/300000"),
        ("bytes=299990-", 206, 10, "bytes 299990-299999/300000"),
        ("bytes=9-2", 200, 300000, None),
    ],
)
def test_head_with_a_range_answers_like_get(
    endpoint, bucket, header, status_code, length, content_range
):
    key = f"headrange-{uuid.uuid4().hex[:8]}"
    s3 = endpoint.client()
    s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(300000))
    head = s3.head_object(Bucket=bucket, Key=key, Range=header)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == status_code
    assert head["ContentLength"] == length
    assert head.get("ContentRange") == content_range


def test_copying_a_foreign_object_onto_itself_encrypts_it_in_place(s3, backend, bucket):
    key = f"migrate-{uuid.uuid4().hex[:8]}"
    plaintext = os.urandom(200_000)
    backend.put_object(Bucket=bucket, Key=key, Body=plaintext, Metadata={"owner": "me"})
    s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key})
    stored = backend.get_object(Bucket=bucket, Key=key)
    assert "trios3-dek" in stored["Metadata"] and stored["Metadata"]["owner"] == "me"
    assert stored["Body"].read() != plaintext
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == plaintext
