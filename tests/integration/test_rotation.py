"""Key rotation end to end: objects written under key A, B made primary, `trios3 rewrap`
(interrupted and resumed), A removed, everything still reads; and `trios3 inspect`."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import pytest

from harness import scratch_bucket, set_metadata, start_proxy, stop_process
from trios3.core.keys import MasterKey

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "rotation")


def trios3(seaweedfs, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TRIOS3_BACKEND": seaweedfs.url,
        "TRIOS3_BACKEND_ACCESS_KEY_ID": seaweedfs.access_key,
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY": seaweedfs.secret_key,
    }
    env.pop("TRIOS3_MASTER_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "trios3.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def key_ids(path) -> list[str]:
    return [MasterKey.from_base64(line).key_id for line in path.read_text().split()]


def test_rotate_rewrap_resume_and_retire_the_old_key(seaweedfs, tmp_path, bucket):
    keys = tmp_path / "master.keys"
    assert trios3(seaweedfs, "keygen", str(keys)).returncode == 0
    [key_a] = key_ids(keys)
    backend = seaweedfs.client()
    objects = {f"single-{i}": os.urandom(100_000 + i) for i in range(3)}
    multipart = [os.urandom(5 * MiB), os.urandom(1000)]

    def serving():
        return start_proxy(seaweedfs, tmp_path, extra=["--key-file", str(keys)])

    process, endpoint, log = serving()
    try:
        s3 = endpoint.client()
        for key, data in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"kept": key})
        # One more under A with its Content-MD5: version 3, whose sealed MD5 must survive.
        with_md5 = os.urandom(5000)
        s3.put_object(Bucket=bucket, Key="single-md5", Body=with_md5, ContentMD5=md5_b64(with_md5))
        upload_id = s3.create_multipart_upload(
            Bucket=bucket,
            Key="multi",
            Tagging="keep=yes",
            Metadata={"md5chksum": md5_b64(b"".join(multipart))},  # rclone's: version 4
        )["UploadId"]
        parts = []
        for number, body in enumerate(multipart, start=1):
            etag = s3.upload_part(
                Bucket=bucket, Key="multi", UploadId=upload_id, PartNumber=number, Body=body
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        s3.complete_multipart_upload(
            Bucket=bucket, Key="multi", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        objects["multi"] = b"".join(multipart)
        objects["single-md5"] = with_md5
    finally:
        stop_process(process)
        log.close()
    backend.put_object(Bucket=bucket, Key="plain", Body=b"not encrypted")
    etags = {k: backend.head_object(Bucket=bucket, Key=k)["ETag"] for k in objects}

    # B becomes primary; A stays to decrypt.
    assert trios3(seaweedfs, "keygen", "--rotate", str(keys)).returncode == 0
    key_b, old = key_ids(keys)
    assert old == key_a
    process, endpoint, log = serving()
    try:
        s3 = endpoint.client()
        for key, data in objects.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        s3.put_object(Bucket=bucket, Key="written-under-b", Body=b"new")
    finally:
        stop_process(process)
        log.close()

    url = f"s3://{bucket}"
    dry = trios3(seaweedfs, "rewrap", url, "--dry-run", "--key-file", str(keys))
    assert dry.returncode == 0, dry.stderr
    assert "7 objects: 5 to rewrap, 1 already on the primary key, 1 not encrypted" in dry.stdout
    first = trios3(seaweedfs, "rewrap", url, "--max-objects", "2", "--key-file", str(keys))
    assert first.returncode == 0, first.stderr
    # Stopped after two (keys in order: multi, plain, ...): resumable by running it again.
    assert "2 objects: 1 rewrapped, 0 already on the primary key, 1 not" in first.stdout
    assert "last key: plain" in first.stdout
    rest = trios3(seaweedfs, "rewrap", url, "--key-file", str(keys))
    assert "7 objects: 4 rewrapped, 2 already on the primary key, 1 not encrypted" in rest.stdout
    again = trios3(seaweedfs, "rewrap", url, "--key-file", str(keys))
    assert "0 rewrapped, 6 already on the primary key" in again.stdout
    # Bodies untouched: the same bytes, so the same ETags; the multipart object was copied part
    # for part, so it stays in 2 parts (SeaweedFS gives a copied part an ETag of its own).
    after = {k: backend.head_object(Bucket=bucket, Key=k)["ETag"] for k in objects}
    assert after.pop("multi").endswith('-2"')
    assert after == {k: v for k, v in etags.items() if k != "multi"}

    assert backend.get_object_tagging(Bucket=bucket, Key="multi")["TagSet"] == [
        {"Key": "keep", "Value": "yes"}
    ]  # a part-for-part copy carries the tags over
    inspected = trios3(seaweedfs, "inspect", f"{url}/multi", "--key-file", str(keys))
    assert inspected.returncode == 0, inspected.stderr
    for line in (
        "format: version 4 (multipart)",
        "content MD5: sealed",
        f"master key id: {key_b} (primary)",
        f"plaintext size: {5 * MiB + 1000}",
        "parts: 2",
        "listing size: exact",
    ):
        assert line in inspected.stdout

    inspected = trios3(seaweedfs, "inspect", f"{url}/single-md5", "--key-file", str(keys))
    assert inspected.returncode == 0, inspected.stderr
    for line in (
        "format: version 3 (single PUT)",
        f"master key id: {key_b} (primary)",
        "plaintext size: 5000",
        "content MD5: sealed",
    ):
        assert line in inspected.stdout

    # A retired: only B is left, and everything still reads.
    keys.write_text(keys.read_text().split()[0] + "\n")
    process, endpoint, log = serving()
    try:
        s3 = endpoint.client()
        for key, data in objects.items():
            got = s3.get_object(Bucket=bucket, Key=key)
            assert got["Body"].read() == data
            if key in ("single-md5", "multi"):
                assert got["Metadata"] == {"md5chksum": md5_b64(data)}
            elif key.startswith("single"):
                assert got["Metadata"] == {"kept": key}
        listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert all(listed[k] == len(d) for k, d in objects.items())
    finally:
        stop_process(process)
        log.close()


def test_rewrap_seals_an_md5chksum_left_in_the_clear(seaweedfs, tmp_path, bucket):
    """Objects from before the proxy sealed md5chksum keep it in the clear at the backend:
    `rewrap` seals it, even for objects already on the primary key."""
    keys = tmp_path / "master.keys"
    assert trios3(seaweedfs, "keygen", str(keys)).returncode == 0
    backend = seaweedfs.client()
    data = os.urandom(70_000)
    process, endpoint, log = start_proxy(seaweedfs, tmp_path, extra=["--key-file", str(keys)])
    try:
        endpoint.client().put_object(Bucket=bucket, Key="old", Body=data)
        meta = backend.head_object(Bucket=bucket, Key="old")["Metadata"]
        assert meta["trios3-v"] == "1"
        # As an older trios3 left an rclone upload: its md5chksum in the clear.
        set_metadata(backend, bucket, "old", {**meta, "md5chksum": md5_b64(data)})
        url = f"s3://{bucket}"
        dry = trios3(seaweedfs, "rewrap", url, "--dry-run", "--key-file", str(keys))
        assert "1 objects: 1 to rewrap, 0 already on the primary key" in dry.stdout, dry.stdout
        done = trios3(seaweedfs, "rewrap", url, "--key-file", str(keys))
        assert "1 objects: 1 rewrapped" in done.stdout, done.stdout
        meta = backend.head_object(Bucket=bucket, Key="old")["Metadata"]
        assert meta["trios3-v"] == "3" and "md5chksum" not in meta
        again = trios3(seaweedfs, "rewrap", url, "--key-file", str(keys))
        assert "0 rewrapped, 1 already on the primary key" in again.stdout, again.stdout
        got = endpoint.client().get_object(Bucket=bucket, Key="old")
        assert (got["Body"].read(), got["Metadata"]) == (data, {"md5chksum": md5_b64(data)})
    finally:
        stop_process(process)
        log.close()
