"""Virtual-hosted-style requests (BUCKET.<domain>) when --virtual-host-domain is configured."""

from __future__ import annotations

import uuid

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from harness import start_proxy, stop_process

pytestmark = pytest.mark.integration

DOMAIN = "s3.trios3.test"


@pytest.fixture(scope="module")
def vhost_proxy(seaweedfs, tmp_path_factory):
    process, endpoint, log = start_proxy(
        seaweedfs,
        tmp_path_factory.mktemp("vhost"),
        extra=["--virtual-host-domain", DOMAIN],
    )
    yield endpoint
    stop_process(process)
    log.close()


def _signed(endpoint, method, host, path, body=b""):
    """A request signed for ``host`` (as a client resolving BUCKET.<domain> would send it)."""
    port = endpoint.url.rsplit(":", 1)[1]
    request = AWSRequest(method=method, url=f"http://{host}:{port}{path}", data=body)
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    creds = Credentials(endpoint.access_key, endpoint.secret_key)
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    headers["host"] = f"{host}:{port}"  # botocore signs it from the URL without setting it
    return httpx.request(method, f"{endpoint.url}{path}", headers=headers, content=body)


def test_virtual_hosted_put_get_and_list_reach_the_bucket_in_the_host(vhost_proxy):
    bucket = "vh-" + uuid.uuid4().hex[:12]
    vhost_proxy.client().create_bucket(Bucket=bucket)
    host = f"{bucket}.{DOMAIN}"
    put = _signed(vhost_proxy, "PUT", host, "/dir/object.txt", b"virtual hello")
    assert put.status_code == 200, put.text
    got = _signed(vhost_proxy, "GET", host, "/dir/object.txt")
    assert got.status_code == 200
    assert got.content == b"virtual hello"
    listing = _signed(vhost_proxy, "GET", host, "/?list-type=2")
    assert listing.status_code == 200
    assert b"<Key>dir/object.txt</Key>" in listing.content
    # The same object is there for path-style clients too.
    body = vhost_proxy.client().get_object(Bucket=bucket, Key="dir/object.txt")["Body"].read()
    assert body == b"virtual hello"


def test_path_style_still_works_with_a_domain_configured(vhost_proxy):
    bucket = "vh-" + uuid.uuid4().hex[:12]
    client = vhost_proxy.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"path style")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"path style"
