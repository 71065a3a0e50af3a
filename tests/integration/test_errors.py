"""Bad input gets the S3 error AWS would send, nothing is stored, and the proxy keeps serving."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import ssl
import uuid
from dataclasses import replace
from unittest import mock

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from harness import code, new_key, scratch_bucket, status
from trios3.core.sigv4 import SigningScope, chunk_signature, derive_signing_key

pytestmark = pytest.mark.integration

STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def xml_code(response: httpx.Response) -> str | None:
    text = response.text
    if "<Code>" not in text:
        return None
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def verify_of(endpoint):
    return endpoint.ca_bundle if endpoint.url.startswith("https") else True


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    """One bucket for the module."""
    yield from scratch_bucket(seaweedfs, "errors")


def assert_serving(endpoint, bucket: str) -> None:
    """A normal request still works after the bad one."""
    client = endpoint.client()
    key = new_key("alive")
    client.put_object(Bucket=bucket, Key=key, Body=b"still here")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"still here"


def assert_missing(endpoint, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as info:
        endpoint.client().head_object(Bucket=bucket, Key=key)
    assert status(info.value) == 404


class DeclaredPayloadAuth(S3SigV4Auth):
    """SigV4 with whatever x-amz-content-sha256 the test declares."""

    def __init__(self, credentials, declared: str):
        super().__init__(credentials, "s3", "us-east-1")
        self.declared = declared

    def payload(self, request):
        return self.declared


def signed(endpoint, method, path, *, headers=None, declared=None, query=""):
    """Signed headers for a request built by hand (sent with httpx)."""
    url = f"{endpoint.url}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    credentials = Credentials(endpoint.access_key, endpoint.secret_key)
    auth = (
        DeclaredPayloadAuth(credentials, declared)
        if declared
        else S3SigV4Auth(credentials, "s3", "us-east-1")
    )
    auth.add_auth(request)
    return url, dict(request.headers.items())


# -- authentication --------------------------------------------------------------------------------


def test_wrong_secret(endpoint, bucket):
    bad = replace(endpoint, secret_key=endpoint.secret_key + "x")
    with pytest.raises(ClientError) as info:
        bad.client().list_objects_v2(Bucket=bucket)
    assert (status(info.value), code(info.value)) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as info:
        bad.client().put_object(Bucket=bucket, Key="never", Body=b"x")
    assert code(info.value) == "SignatureDoesNotMatch"
    assert_missing(endpoint, bucket, "never")
    assert_serving(endpoint, bucket)


def test_unknown_access_key(endpoint, bucket):
    bad = replace(endpoint, access_key="nobody-" + uuid.uuid4().hex[:6])
    with pytest.raises(ClientError) as info:
        bad.client().list_buckets()
    assert (status(info.value), code(info.value)) == (403, "InvalidAccessKeyId")
    assert_serving(endpoint, bucket)


def test_anonymous(endpoint, bucket):
    key = new_key()
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"private")
    for method in ("GET", "PUT", "DELETE"):
        resp = httpx.request(
            method, f"{endpoint.url}/{bucket}/{key}", content=b"anon", verify=verify_of(endpoint)
        )
        assert resp.status_code == 403, (method, resp.text)
        assert xml_code(resp) == "AccessDenied"
        assert b"private" not in resp.content
    assert endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"private"
    assert_serving(endpoint, bucket)


def test_presigned_get(endpoint, bucket):
    client = endpoint.client()
    key = new_key("pre dir/ü+")
    data = os.urandom(70000)
    client.put_object(Bucket=bucket, Key=key, Body=data)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    resp = httpx.get(url, verify=verify_of(endpoint))
    assert resp.status_code == 200, resp.text
    assert resp.content == data
    ranged = httpx.get(url, headers={"range": "bytes=10-19"}, verify=verify_of(endpoint))
    assert (ranged.status_code, ranged.content) == (206, data[10:20])


def test_presigned_get_expired(endpoint, bucket):
    client = endpoint.client()
    key = new_key()
    client.put_object(Bucket=bucket, Key=key, Body=b"expired")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)

    def two_hours_ago(remove_tzinfo=True):
        return past.replace(tzinfo=None) if remove_tzinfo else past

    # botocore signs with awscrt when it is installed: pin the clock of both signers.
    with (
        mock.patch("botocore.auth.get_current_datetime", two_hours_ago),
        mock.patch("botocore.crt.auth.get_current_datetime", two_hours_ago),
    ):
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60
        )
    assert f"X-Amz-Date={past:%Y%m%dT%H}" in url
    resp = httpx.get(url, verify=verify_of(endpoint))
    assert resp.status_code == 403
    assert xml_code(resp) == "AccessDenied"
    assert b"expired</" not in resp.content or "Request has expired" in resp.text
    assert resp.content != b"expired"
    assert_serving(endpoint, bucket)


def test_presigned_put(endpoint, seaweedfs, bucket):
    client = endpoint.client()
    key = new_key()
    data = os.urandom(5000)
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    resp = httpx.put(url, content=data, verify=verify_of(endpoint))
    assert resp.status_code == 200, resp.text
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    stored = seaweedfs.client().get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() != data
    assert "trios3-dek" in stored["Metadata"]


def test_presigned_tampered_signature(endpoint, bucket):
    client = endpoint.client()
    key = new_key()
    client.put_object(Bucket=bucket, Key=key, Body=b"x")
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    head, _, signature = url.rpartition("X-Amz-Signature=")
    forged = head + "X-Amz-Signature=" + ("0" if signature[0] != "0" else "1") + signature[1:]
    resp = httpx.get(forged, verify=verify_of(endpoint))
    assert (resp.status_code, xml_code(resp)) == (403, "SignatureDoesNotMatch")


def test_sigv2_presign_refused(endpoint, bucket):
    client = endpoint.client(signature_version="s3")
    key = new_key()
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"v2")
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    assert "AWSAccessKeyId=" in url
    resp = httpx.get(url, verify=verify_of(endpoint))
    assert (resp.status_code, xml_code(resp)) == (400, "InvalidRequest")
    assert_serving(endpoint, bucket)


def test_sigv2_header_refused(proxy, bucket):
    resp = httpx.get(
        f"{proxy.url}/{bucket}", headers={"authorization": "AWS proxyclient:c2lnbmF0dXJl"}
    )
    assert (resp.status_code, xml_code(resp)) == (400, "InvalidRequest")


# -- malformed requests ----------------------------------------------------------------------------


def test_malformed_delete_objects_xml(endpoint, bucket):
    key = new_key()
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"survive")
    for body in (f"<Delete><Object><Key>{key}</Key>".encode(), b"not xml at all", b"<Other/>"):
        headers = {
            "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
            "content-type": "application/xml",
        }
        url, signed_headers = signed(
            endpoint,
            "POST",
            f"/{bucket}",
            headers=headers,
            declared=hashlib.sha256(body).hexdigest(),
            query="delete=",
        )
        resp = httpx.post(url, content=body, headers=signed_headers, verify=verify_of(endpoint))
        assert (resp.status_code, xml_code(resp)) == (400, "MalformedXML"), (body, resp.text)
    assert endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"survive"
    assert_serving(endpoint, bucket)


def test_missing_key_and_bucket(endpoint, bucket):
    client = endpoint.client()
    with pytest.raises(ClientError) as info:
        client.get_object(Bucket=bucket, Key=new_key("missing"))
    assert (status(info.value), code(info.value)) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as info:
        client.head_object(Bucket=bucket, Key=new_key("missing"))
    assert status(info.value) == 404
    missing_bucket = "missing-" + uuid.uuid4().hex[:12]
    with pytest.raises(ClientError) as info:
        client.get_object(Bucket=missing_bucket, Key="k")
    assert (status(info.value), code(info.value)) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as info:
        client.list_objects_v2(Bucket=missing_bucket)
    assert (status(info.value), code(info.value)) == (404, "NoSuchBucket")
    assert_serving(endpoint, bucket)


@pytest.mark.parametrize("header", ["bytes=abc", "items=0-5", "bytes=", "bytes=1-2-3", "0-5"])
def test_bad_range_syntax_serves_whole_object(endpoint, bucket, header):
    client = endpoint.client()
    key = new_key()
    data = os.urandom(1000)
    client.put_object(Bucket=bucket, Key=key, Body=data)
    resp = client.get_object(Bucket=bucket, Key=key, Range=header)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "ContentRange" not in resp
    assert resp["Body"].read() == data


def test_content_sha256_mismatch(endpoint, bucket):
    key = new_key()
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"original")
    body = b"the body actually sent"
    declared = hashlib.sha256(b"a different body").hexdigest()
    for target in (key, new_key()):
        url, headers = signed(endpoint, "PUT", f"/{bucket}/{target}", declared=declared)
        resp = httpx.put(url, content=body, headers=headers, verify=verify_of(endpoint))
        assert (resp.status_code, xml_code(resp)) == (400, "XAmzContentSHA256Mismatch"), resp.text
        if target != key:
            assert_missing(endpoint, bucket, target)
    got = endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert got == b"original"
    assert_serving(endpoint, bucket)


def test_content_sha256_malformed(endpoint, bucket):
    key = new_key()
    url, headers = signed(endpoint, "PUT", f"/{bucket}/{key}", declared="not-a-hash")
    resp = httpx.put(url, content=b"x", headers=headers, verify=verify_of(endpoint))
    assert resp.status_code == 400
    assert xml_code(resp) is not None
    assert_missing(endpoint, bucket, key)


# -- aws-chunked bodies built by hand --------------------------------------------------------------


def chunked_put(
    endpoint, bucket, key, data, *, chunk=65536, corrupt=None, truncate=False, declared_length=None
):
    """PUT ``data`` as a signed STREAMING-AWS4-HMAC-SHA256-PAYLOAD body.

    ``corrupt``: index of a chunk whose signature is spoiled; ``truncate``: drop the final
    zero-length chunk; ``declared_length``: a different x-amz-decoded-content-length.
    """
    headers = {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(
            len(data) if declared_length is None else declared_length
        ),
    }
    url, signed_headers = signed(
        endpoint, "PUT", f"/{bucket}/{key}", headers=headers, declared=STREAMING
    )
    amz_date = signed_headers["X-Amz-Date"]
    seed = signed_headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = SigningScope(amz_date[:8], "us-east-1", "s3")
    signing_key = derive_signing_key(endpoint.secret_key, scope)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] + [b""]
    body = bytearray()
    previous = seed
    for index, piece in enumerate(pieces):
        if truncate and not piece:
            break
        signature = chunk_signature(
            signing_key, amz_date, scope, previous, hashlib.sha256(piece).hexdigest()
        )
        previous = signature
        if index == corrupt:
            signature = ("0" if signature[0] != "0" else "1") + signature[1:]
        body += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + piece + b"\r\n"
    return httpx.put(url, content=bytes(body), headers=signed_headers, verify=verify_of(endpoint))


def test_chunked_signed_body_accepted(endpoint, seaweedfs, bucket):
    key = new_key()
    data = os.urandom(3 * 65536 + 123)
    resp = chunked_put(endpoint, bucket, key, data)
    assert resp.status_code == 200, resp.text
    assert endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
    stored = seaweedfs.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored != data


@pytest.mark.parametrize("corrupt", [0, 2, 4], ids=["first", "middle", "final"])
def test_chunked_bad_signature(endpoint, bucket, corrupt):
    key = new_key()
    data = os.urandom(4 * 65536)  # chunks 0..3 carry data, chunk 4 is the final empty one
    resp = chunked_put(endpoint, bucket, key, data, corrupt=corrupt)
    assert (resp.status_code, xml_code(resp)) == (403, "SignatureDoesNotMatch"), resp.text
    assert_missing(endpoint, bucket, key)
    assert_serving(endpoint, bucket)


def test_chunked_bad_signature_keeps_old_object(endpoint, bucket):
    key = new_key()
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"old")
    resp = chunked_put(endpoint, bucket, key, b"tiny new body", corrupt=0)
    assert (resp.status_code, xml_code(resp)) == (403, "SignatureDoesNotMatch"), resp.text
    assert endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"old"


@pytest.mark.parametrize("size", [100, 3 * 65536 + 5])
def test_chunked_truncated(endpoint, bucket, size):
    key = new_key()
    resp = chunked_put(endpoint, bucket, key, os.urandom(size), truncate=True)
    assert 400 <= resp.status_code < 500, resp.text
    assert xml_code(resp) is not None
    assert_missing(endpoint, bucket, key)
    assert_serving(endpoint, bucket)


def test_chunked_length_mismatch(endpoint, bucket):
    key = new_key()
    data = os.urandom(70000)
    for declared in (len(data) + 1, len(data) - 1):
        resp = chunked_put(endpoint, bucket, key, data, declared_length=declared)
        assert (resp.status_code, xml_code(resp)) == (400, "IncompleteBody"), resp.text
        assert_missing(endpoint, bucket, key)


# -- garbage on the wire ---------------------------------------------------------------------------


GARBAGE = [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET / NOTHTTP/1.1\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=["binary", "version", "length", "long-line"])
def test_raw_socket_garbage(proxy, bucket, garbage):
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    # 400 for malformed requests; 431 for a request line or headers past the 16 KiB cap.
    refusals = (b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 431")
    assert answer == b"" or answer.startswith(refusals), answer[:200]
    assert_serving(proxy, bucket)


def test_plaintext_on_tls_port(tls_proxy, bucket):
    host, port = tls_proxy.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")
    assert_serving(tls_proxy, bucket)


def test_tls_handshake_then_garbage(tls_proxy, bucket):
    host, port = tls_proxy.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=tls_proxy.ca_bundle)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(b"\xff\xfe nonsense \r\n\r\n")
        try:
            answer = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert_serving(tls_proxy, bucket)


def test_error_document_shape(proxy, bucket):
    """An error is an S3 XML document with one Date header and the request id in it."""
    url, headers = signed(proxy, "GET", f"/{bucket}/{new_key('missing')}")
    resp = httpx.get(url, headers=headers)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/xml")
    assert xml_code(resp) == "NoSuchKey"
    assert f"<RequestId>{resp.headers['x-amz-request-id']}</RequestId>" in resp.text
    assert len(resp.headers.get_list("date")) == 1, resp.headers.get_list("date")


def test_unsupported_sdk_client_config_still_served(proxy, bucket):
    """A client that disables checksums (older SDK behaviour) is served too."""
    client = proxy.client(
        request_checksum_calculation="when_required", response_checksum_validation="when_required"
    )
    key = new_key()
    client.put_object(Bucket=bucket, Key=key, Body=b"old style")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"old style"


def test_healthz_answers_without_credentials_and_leaks_nothing(proxy):
    response = httpx.get(f"{proxy.url}/healthz")
    assert response.status_code == 200
    assert response.text.strip() == "ok"
    assert proxy.secret_key not in response.text


def _raw_request(endpoint, method, path, headers, body=b""):
    """Send exactly these headers (http.client adds none of its own)."""
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(endpoint.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.putheader("content-length", str(len(body)))
    conn.endheaders()
    conn.send(body)
    response = conn.getresponse()
    return response.status, response.read()


def test_unsigned_x_amz_headers_are_refused_so_a_presigned_put_cannot_become_a_copy(proxy, bucket):
    client = proxy.client()
    secret_key = f"secret-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=bucket, Key=secret_key, Body=b"top secret")
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "dropbox"}, ExpiresIn=300
    )
    path = url.split("://", 1)[1].split("/", 1)[1]
    host = proxy.url.split("://", 1)[1]
    status, body = _raw_request(
        proxy, "PUT", "/" + path, [("host", host), ("x-amz-copy-source", f"{bucket}/{secret_key}")]
    )
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert b"x-amz-copy-source" in body
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="dropbox")


def test_a_repeated_content_sha256_header_is_refused(proxy, bucket):
    signed_body = b"what the client signed"
    payload_hash = hashlib.sha256(signed_body).hexdigest()
    host = proxy.url.split("://", 1)[1]
    key = f"dup-{uuid.uuid4().hex[:8]}"
    request = AWSRequest(method="PUT", url=f"{proxy.url}/{bucket}/{key}", data=signed_body)
    request.headers["x-amz-content-sha256"] = payload_hash
    S3SigV4Auth(Credentials(proxy.access_key, proxy.secret_key), "s3", "us-east-1").add_auth(
        request
    )
    headers = [("host", host), *request.headers.items()]
    headers.append(("x-amz-content-sha256", payload_hash))
    status, body = _raw_request(proxy, "PUT", f"/{bucket}/{key}", headers, b"a forged body!!!")
    assert status == 400
    assert b"<Code>InvalidArgument</Code>" in body
    with pytest.raises(ClientError):
        proxy.client().head_object(Bucket=bucket, Key=key)
