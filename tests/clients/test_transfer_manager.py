"""boto3's transfer manager (s3transfer) through trios3: multipart uploads and ranged downloads.

``upload_fileobj`` above ``multipart_threshold`` makes CreateMultipartUpload, one UploadPart
per ``multipart_chunksize`` and CompleteMultipartUpload. With boto3's current default
(``request_checksum_calculation="when_supported"``) every part carries a CRC32: in an
``x-amz-checksum-crc32`` header over HTTP, in an aws-chunked trailer
(``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) over HTTPS. ``download_fileobj`` of an object that
large is made of ranged GETs of one chunk size each.
"""

from __future__ import annotations

import io
import os

import pytest
from boto3.s3.transfer import TransferConfig

pytestmark = pytest.mark.clients

MiB = 1024 * 1024

# (part size, object size): three parts each, the last one short.
CASES = {
    "5MiB-parts": (5 * MiB, 12 * MiB + 4321),
    "8MiB-parts": (8 * MiB, 19 * MiB + 1234),
}


def transfer_config(part_size: int) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=part_size, max_concurrency=4
    )


class Recorder:
    """The operations a client makes and the headers of each UploadPart it sends."""

    def __init__(self, client) -> None:
        self.operations: list[str] = []
        self.part_headers: list[dict[str, str]] = []
        client.meta.events.register("before-call.s3", self._call)
        client.meta.events.register("before-send.s3.UploadPart", self._send)

    def _call(self, model, **_):
        self.operations.append(model.name)

    def _send(self, request, **_):
        self.part_headers.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in request.headers.items()
            }
        )

    def part_checksums(self) -> list[str]:
        """For each part, how its checksum travelled: header:ALG, trailer:ALG or none."""
        out = []
        for headers in self.part_headers:
            trailer = headers.get("x-amz-trailer", "")
            named = [h for h in headers if h.startswith("x-amz-checksum-")]
            if trailer.startswith("x-amz-checksum-"):
                out.append("trailer:" + trailer.removeprefix("x-amz-checksum-"))
            elif named:
                out.append("header:" + named[0].removeprefix("x-amz-checksum-"))
            else:
                out.append("none")
        return sorted(out)


def upload(client, bucket: str, key: str, data: bytes, part_size: int) -> Recorder:
    recorder = Recorder(client)
    client.upload_fileobj(io.BytesIO(data), bucket, key, Config=transfer_config(part_size))
    assert recorder.operations.count("CreateMultipartUpload") == 1, recorder.operations
    assert recorder.operations.count("UploadPart") == 3, recorder.operations
    assert recorder.operations.count("CompleteMultipartUpload") == 1, recorder.operations
    assert "PutObject" not in recorder.operations
    return recorder


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_with_default_checksums(endpoint, bucket, case):
    part_size, size = CASES[case]
    client = endpoint.client()
    data = os.urandom(size)
    recorder = upload(client, bucket, "dir/object.bin", data, part_size)
    # boto3's current default sends a checksum with every part; over HTTPS in a trailer.
    how = "trailer" if endpoint.url.startswith("https") else "header"
    checksums = recorder.part_checksums()
    assert all(c.startswith(how + ":") for c in checksums), checksums

    assert client.head_object(Bucket=bucket, Key="dir/object.bin")["ContentLength"] == size
    listed = client.list_objects_v2(Bucket=bucket, Prefix="dir/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("dir/object.bin", size)]

    out = io.BytesIO()
    client.download_fileobj(bucket, "dir/object.bin", out, Config=transfer_config(part_size))
    assert out.getvalue() == data

    got = client.get_object(Bucket=bucket, Key="dir/object.bin", ChecksumMode="ENABLED")
    assert got["ContentLength"] == size
    assert got["Body"].read() == data


def test_listing_shows_exact_sizes_of_both_part_sizes(endpoint, bucket):
    client = endpoint.client()
    expected = {}
    for case, (part_size, size) in sorted(CASES.items()):
        upload(client, bucket, f"{case}.bin", os.urandom(size), part_size)
        expected[f"{case}.bin"] = size
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"]: o["Size"] for o in listed} == expected
    # ListObjects v1 (rclone, s3cmd) too.
    listed_v1 = client.list_objects(Bucket=bucket)["Contents"]
    assert {o["Key"]: o["Size"] for o in listed_v1} == expected
    for key, size in expected.items():
        assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == size


def test_round_trip_with_checksums_only_when_required(endpoint, bucket):
    part_size, size = CASES["5MiB-parts"]
    client = endpoint.client(request_checksum_calculation="when_required")
    data = os.urandom(size)
    recorder = upload(client, bucket, "plain.bin", data, part_size)
    assert recorder.part_checksums() == ["none"] * 3

    assert client.head_object(Bucket=bucket, Key="plain.bin")["ContentLength"] == size
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("plain.bin", size)]
    out = io.BytesIO()
    client.download_fileobj(bucket, "plain.bin", out, Config=transfer_config(part_size))
    assert out.getvalue() == data
    got = client.get_object(Bucket=bucket, Key="plain.bin", ChecksumMode="ENABLED")
    assert got["Body"].read() == data


def test_ranged_get_across_part_boundaries(endpoint, bucket):
    part_size, size = CASES["5MiB-parts"]
    client = endpoint.client()
    data = os.urandom(size)
    upload(client, bucket, "ranged.bin", data, part_size)
    for header, first, last in [
        (f"bytes={part_size - 100}-{part_size + 99}", part_size - 100, part_size + 99),
        # From inside the first part to inside the last, short one: all three parts.
        (f"bytes=1000-{2 * part_size + 999}", 1000, 2 * part_size + 999),
        (f"bytes={2 * part_size - 1}-{2 * part_size}", 2 * part_size - 1, 2 * part_size),
        (f"bytes={2 * part_size - 10}-", 2 * part_size - 10, size - 1),
        ("bytes=-5000", size - 5000, size - 1),
    ]:
        got = client.get_object(Bucket=bucket, Key="ranged.bin", Range=header)
        assert got["ContentRange"] == f"bytes {first}-{last}/{size}", header
        assert got["ContentLength"] == last - first + 1, header
        assert got["Body"].read() == data[first : last + 1], header


def test_completed_upload_leaves_no_upload_in_progress(endpoint, bucket):
    part_size, size = CASES["5MiB-parts"]
    client = endpoint.client()
    upload(client, bucket, "done.bin", os.urandom(size), part_size)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("source", ["multipart-source", "single-put-source"])
def test_managed_copy_uses_upload_part_copy(endpoint, bucket, source):
    """``client.copy`` above the threshold: CreateMultipartUpload, one UploadPartCopy per part
    (with ``x-amz-copy-source-range``), CompleteMultipartUpload."""
    part_size, size = CASES["5MiB-parts"]
    client = endpoint.client()
    data = os.urandom(size)
    if source == "multipart-source":
        upload(client, bucket, "source.bin", data, part_size)
    else:
        client.put_object(Bucket=bucket, Key="source.bin", Body=data)
    recorder = Recorder(client)
    client.copy(
        {"Bucket": bucket, "Key": "source.bin"},
        bucket,
        "copy.bin",
        Config=transfer_config(part_size),
    )
    assert recorder.operations.count("UploadPartCopy") == 3, recorder.operations
    assert recorder.operations.count("CompleteMultipartUpload") == 1, recorder.operations

    assert client.head_object(Bucket=bucket, Key="copy.bin")["ContentLength"] == size
    listed = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {"source.bin": size, "copy.bin": size}
    assert client.get_object(Bucket=bucket, Key="copy.bin")["Body"].read() == data
    first, last = part_size - 10, part_size + 9
    got = client.get_object(Bucket=bucket, Key="copy.bin", Range=f"bytes={first}-{last}")
    assert got["Body"].read() == data[first : last + 1]
