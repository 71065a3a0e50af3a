"""A backend that serves HTTPS with a private CA: trusted through --backend-ca-bundle only.

A SeaweedFS whose S3 port serves HTTPS with a certificate of its own CA, which no system bundle
trusts (an on-premises MinIO, Ceph or SeaweedFS); trios3 in front of it, over HTTPS as well.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from harness import new_key, running_seaweedfs, start_proxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_backend(tmp_path_factory):
    with running_seaweedfs(tmp_path_factory.mktemp("tls-seaweedfs"), tls=True) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def trusting_proxy(tls_backend, tmp_path_factory):
    """trios3 over HTTPS, given the backend's CA."""
    proxy = start_proxy(
        tls_backend,
        tmp_path_factory.mktemp("tls-proxy"),
        tls=True,
        extra=["--backend-ca-bundle", tls_backend.ca_bundle],
    )
    yield proxy.endpoint
    proxy.stop()


@pytest.fixture
def tls_bucket(tls_backend):
    client = tls_backend.client()
    name = "tls-" + os.urandom(6).hex()
    client.create_bucket(Bucket=name)
    yield name
    for item in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def test_objects_round_trip_over_https_on_both_sides(trusting_proxy, tls_backend, tls_bucket):
    s3 = trusting_proxy.client()
    data = os.urandom(3 * 1024 * 1024 + 5)
    key = new_key()
    s3.put_object(Bucket=tls_bucket, Key=key, Body=data)
    assert s3.get_object(Bucket=tls_bucket, Key=key)["Body"].read() == data
    ranged = s3.get_object(Bucket=tls_bucket, Key=key, Range="bytes=1000000-1000099")
    assert ranged["Body"].read() == data[1000000:1000100]
    assert s3.head_object(Bucket=tls_bucket, Key=key)["ContentLength"] == len(data)
    listed = s3.list_objects_v2(Bucket=tls_bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(data))]
    stored = tls_backend.client().get_object(Bucket=tls_bucket, Key=key)["Body"].read()
    assert stored != data and data[:4096] not in stored  # ciphertext at the backend


def test_a_multipart_upload_over_https_on_both_sides(trusting_proxy, tls_bucket):
    s3 = trusting_proxy.client()
    key = new_key("mp")
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=tls_bucket, Key=key)["UploadId"]
    etags = [
        s3.upload_part(Bucket=tls_bucket, Key=key, UploadId=upload, PartNumber=n, Body=body)["ETag"]
        for n, body in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=tls_bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert s3.get_object(Bucket=tls_bucket, Key=key)["Body"].read() == b"".join(parts)


def test_without_the_bundle_the_backend_is_not_trusted(tls_backend, tmp_path):
    """The private CA is not in the system's bundle: the proxy refuses the backend (not
    ready, and 503 for requests) rather than talk to it unverified."""
    proxy = start_proxy(tls_backend, tmp_path)
    try:
        ready = httpx.get(proxy.endpoint.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        s3 = proxy.endpoint.client()
        with pytest.raises(Exception) as err:
            s3.list_buckets()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        proxy.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in proxy.log_path.read_text()


def test_inspect_reaches_an_https_backend_with_the_bundle(trusting_proxy, tls_backend, tls_bucket):
    key = new_key()
    trusting_proxy.client().put_object(Bucket=tls_bucket, Key=key, Body=b"hello")
    env = {
        **os.environ,
        "TRIOS3_BACKEND_ACCESS_KEY_ID": tls_backend.access_key,
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY": tls_backend.secret_key,
        "TRIOS3_MASTER_KEY": trusting_proxy.master_key,
    }
    command = [sys.executable, "-m", "trios3.cli", "inspect", f"s3://{tls_bucket}/{key}"]
    command += ["--backend", tls_backend.url, "--backend-ca-bundle", tls_backend.ca_bundle]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "plaintext size: 5" in done.stdout
