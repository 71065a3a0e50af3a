"""Stateless multipart: one upload served by two proxy processes, one restarted midway."""

from __future__ import annotations

import base64
import os
import uuid

import pytest

from harness import scratch_bucket, start_proxy, stop_process
from trios3.core.keys import MasterKey

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "replicas")


def test_parts_alternate_between_replicas_and_survive_a_restart(seaweedfs, tmp_path, bucket):
    master = base64.b64encode(MasterKey.generate()).decode()
    running = []

    def replica(name: str):
        process, endpoint, log = start_proxy(seaweedfs, tmp_path / name, master_key=master)
        running.append((process, log))
        return process, endpoint.client()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a2").mkdir()
    try:
        process_a, a = replica("a")
        _, b = replica("b")
        key = f"replicated-{uuid.uuid4().hex[:8]}"
        parts = [os.urandom(5 * MiB) for _ in range(3)] + [os.urandom(12345)]
        upload_id = a.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def put(client, number):
            return client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=parts[number - 1],
            )["ETag"]

        etags = {1: put(a, 1), 2: put(b, 2)}
        # Replica a goes away between two parts; its replacement knows nothing of the upload.
        stop_process(process_a)
        _, a = replica("a2")
        etags[3] = put(a, 3)
        etags[4] = put(b, 4)
        listed = a.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
            (n, etags[n], len(parts[n - 1])) for n in range(1, 5)
        ]
        b.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in etags]},
        )
        data = b"".join(parts)
        for client in (a, b):
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
            got = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={5 * MiB - 1}-{10 * MiB}")
            assert got["Body"].read() == data[5 * MiB - 1 : 10 * MiB + 1]
    finally:
        for process, log in running:
            stop_process(process)
            log.close()
