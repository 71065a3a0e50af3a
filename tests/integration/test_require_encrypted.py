"""--require-encrypted: objects without trios3 metadata are refused, not served."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from harness import scratch_bucket, start_proxy, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def strict_proxy(seaweedfs, tmp_path_factory):
    process, endpoint, log = start_proxy(
        seaweedfs, tmp_path_factory.mktemp("strict"), extra=["--require-encrypted"]
    )
    yield endpoint
    stop_process(process)
    log.close()


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "strict")


def _refused(call) -> None:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_planted_plaintext_is_refused_and_the_proxys_own_objects_still_read(
    strict_proxy, seaweedfs, bucket
):
    client = strict_proxy.client()
    planted = f"planted-{uuid.uuid4().hex[:8]}"
    seaweedfs.client().put_object(Bucket=bucket, Key=planted, Body=b"plaintext at the backend")
    _refused(lambda: client.get_object(Bucket=bucket, Key=planted))
    _refused(lambda: client.get_object(Bucket=bucket, Key=planted, Range="bytes=0-3"))
    _refused(lambda: client.head_object(Bucket=bucket, Key=planted))
    _refused(
        lambda: client.copy_object(
            Bucket=bucket, Key=planted + "-copy", CopySource={"Bucket": bucket, "Key": planted}
        )
    )
    own = f"own-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=bucket, Key=own, Body=b"through the proxy")
    assert client.get_object(Bucket=bucket, Key=own)["Body"].read() == b"through the proxy"
    assert client.head_object(Bucket=bucket, Key=own)["ContentLength"] == 17
