"""boto3 with its current defaults through trios3, over HTTP and over HTTPS.

boto3 >= 1.36 computes a checksum for every upload (``request_checksum_calculation=
"when_supported"``: CRC32 unless told another algorithm; in a header over HTTP, in an
aws-chunked trailer over HTTPS) and validates whatever checksum a GET with
``ChecksumMode=ENABLED`` brings back. ``"when_required"`` turns the upload checksums off.
Presigned URLs: SigV4 (``signature_version="s3v4"``) works for GET and PUT; SigV2
(``signature_version="s3"``), which boto3 still makes for ``generate_presigned_url`` when the
signature version is not set, is refused with ``400 InvalidRequest``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import xml.etree.ElementTree as ET

import boto3
import botocore
import httpx
import pytest
from awscrt import checksums
from botocore.exceptions import ClientError

pytestmark = pytest.mark.clients

SIZES = [0, 1, 70_000, 300_000]
ALGORITHMS = ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]


class Sent:
    """How each request's body checksum travelled: ``header:ALG``, ``trailer:ALG`` or none."""

    def __init__(self, client) -> None:
        self.checksums: dict[str, list[str]] = {}
        client.meta.events.register("before-send.s3", self._send)

    def _send(self, request, event_name, **_):
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else str(v)
            for k, v in request.headers.items()
        }
        operation = event_name.rsplit(".", 1)[-1]
        trailer = headers.get("x-amz-trailer", "")
        named = sorted(
            h for h in headers if h.startswith("x-amz-checksum-") and h != "x-amz-checksum-mode"
        )
        if trailer.startswith("x-amz-checksum-"):
            how = "trailer:" + trailer.removeprefix("x-amz-checksum-")
        elif named:
            how = "header:" + named[0].removeprefix("x-amz-checksum-")
        else:
            how = "none"
        self.checksums.setdefault(operation, []).append(how)


def verify_of(endpoint):
    if endpoint.url.startswith("https"):
        return ssl.create_default_context(cafile=endpoint.ca_bundle)
    return True


def error_of(response: httpx.Response) -> tuple[str, str]:
    root = ET.fromstring(response.content)
    return root.findtext("Code") or "", root.findtext("Message") or ""


@pytest.mark.parametrize("size", SIZES)
def test_default_checksums_round_trip(endpoint, bucket, size):
    client = endpoint.client()
    sent = Sent(client)
    data = os.urandom(size)
    put = client.put_object(Bucket=bucket, Key="obj", Body=data)
    assert re.fullmatch(r'"[0-9a-f]{32}-0"', put["ETag"]), put["ETag"]
    how = "trailer" if endpoint.url.startswith("https") else "header"
    assert sent.checksums["PutObject"] == [f"{how}:crc32"]

    got = client.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert got["ContentLength"] == size
    assert got["ETag"] == put["ETag"]
    head = client.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [("obj", size, put["ETag"])]


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm in ("SHA1", "SHA256"):
        digest = hashlib.new(algorithm.lower(), data).digest()
    else:
        function = {"CRC32": checksums.crc32, "CRC32C": checksums.crc32c}.get(
            algorithm, checksums.crc64nvme
        )
        digest = function(data).to_bytes(8 if algorithm == "CRC64NVME" else 4, "big")
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_checksum_algorithm(endpoint, bucket, algorithm):
    """The client's checksum (computed by boto3, in a header over HTTP and a trailer over HTTPS)
    is verified over the plaintext and echoed in the PutObject answer. One given by the caller
    (always a header) that does not match stores nothing. A GET with the checksum mode on gets
    no checksum back (the proxy keeps none), so there is nothing for boto3 to validate."""
    client = endpoint.client()
    sent = Sent(client)
    data = os.urandom(100_000)
    put = client.put_object(Bucket=bucket, Key="obj", Body=data, ChecksumAlgorithm=algorithm)
    how = "trailer" if endpoint.url.startswith("https") else "header"
    assert sent.checksums["PutObject"] == [f"{how}:{algorithm.lower()}"]
    assert put[f"Checksum{algorithm}"] == checksum(algorithm, data)
    got = client.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert not [k for k in got if k.startswith("Checksum")], got

    with pytest.raises(ClientError) as refused:
        client.put_object(
            Bucket=bucket,
            Key="wrong",
            Body=data,
            **{f"Checksum{algorithm}": checksum(algorithm, b"not the body")},
        )
    assert refused.value.response["Error"]["Code"] == "BadDigest", refused.value.response
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["obj"]


def test_checksums_only_when_required(endpoint, bucket):
    client = endpoint.client(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    sent = Sent(client)
    data = os.urandom(200_000)
    client.put_object(Bucket=bucket, Key="plain", Body=data)
    assert sent.checksums["PutObject"] == ["none"]
    assert client.get_object(Bucket=bucket, Key="plain")["Body"].read() == data
    got = client.get_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    # DeleteObjects is one of the operations that require a checksum (Content-MD5 or CRC32).
    client.put_object(Bucket=bucket, Key="other", Body=b"x")
    deleted = client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "plain"}, {"Key": "other"}]}
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["other", "plain"]
    assert sent.checksums["DeleteObjects"] != ["none"]
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_presigned_sigv4_get_and_put(endpoint, bucket):
    client = endpoint.client()
    verify = verify_of(endpoint)
    data = os.urandom(150_000)

    put_url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "dir/pre signed"}, ExpiresIn=300
    )
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in put_url, put_url
    put = httpx.put(put_url, content=data, verify=verify, timeout=60)
    assert put.status_code == 200, put.text
    assert re.fullmatch(r'"[0-9a-f]{32}-0"', put.headers["etag"]), put.headers

    get_url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "dir/pre signed"}, ExpiresIn=300
    )
    got = httpx.get(get_url, verify=verify, timeout=60)
    assert got.status_code == 200, got.text
    assert got.content == data
    assert int(got.headers["content-length"]) == len(data)
    assert got.headers["etag"] == put.headers["etag"]

    ranged = httpx.get(get_url, headers={"Range": "bytes=100-199"}, verify=verify, timeout=60)
    assert ranged.status_code == 206
    assert ranged.content == data[100:200]

    # The URL signs the method: a PUT URL does not read, a GET URL does not write.
    assert httpx.get(put_url, verify=verify, timeout=60).status_code == 403
    denied = httpx.put(get_url, content=b"overwrite", verify=verify, timeout=60)
    assert denied.status_code == 403
    assert error_of(denied)[0] == "SignatureDoesNotMatch"
    assert httpx.get(get_url, verify=verify, timeout=60).content == data


def test_presigned_sigv2_is_refused_clearly(endpoint, bucket):
    client = endpoint.client()
    client.put_object(Bucket=bucket, Key="obj", Body=b"secret")
    v2 = endpoint.client(signature_version="s3")
    verify = verify_of(endpoint)
    for method, operation in (("GET", "get_object"), ("PUT", "put_object")):
        url = v2.generate_presigned_url(
            operation, Params={"Bucket": bucket, "Key": "obj"}, ExpiresIn=300
        )
        assert "AWSAccessKeyId=" in url and "X-Amz-Signature" not in url, url
        response = httpx.request(method, url, content=b"x" if method == "PUT" else None,
                                 verify=verify, timeout=60)  # fmt: skip
        assert response.status_code == 400, (method, response.text)
        code, message = error_of(response)
        assert code == "InvalidRequest", response.text
        assert "AWS4-HMAC-SHA256" in message, message

    # A SigV2 Authorization header gets the same answer, and nothing was overwritten.
    with pytest.raises(ClientError) as refused:
        v2.get_object(Bucket=bucket, Key="obj")
    error = refused.value.response["Error"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "InvalidRequest", error
    assert "AWS4-HMAC-SHA256" in error["Message"], error
    assert client.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"secret"


def test_versions_under_test():
    """Which boto3 the suite drives (its defaults changed at 1.36)."""
    major, minor = (int(x) for x in boto3.__version__.split(".")[:2])
    assert (major, minor) >= (1, 36), boto3.__version__
    assert botocore.__version__
