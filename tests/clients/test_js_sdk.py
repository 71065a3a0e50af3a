"""The AWS SDK for JavaScript v3 (``@aws-sdk/client-s3`` and ``@aws-sdk/lib-storage``) through
trios3, over HTTP and over HTTPS (``NODE_EXTRA_CA_CERTS``).

It behaves like the Go SDK v2 that velero's AWS plugin uses: path-style with
``forcePathStyle``, a CRC32 with every upload by default (``requestChecksumCalculation:
WHEN_SUPPORTED``), aws-chunked bodies with a trailer for streams, and response checksum
validation on GetObject. ``tests/clients/js/s3check.cjs`` runs one operation per call; the
packages are pinned in ``tests/clients/js/package-lock.json`` and installed into
``.clients/js`` by ``scripts/install-clients.sh``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "clients" / "js" / "s3check.cjs"
MODULES = REPO / ".clients" / "js" / "node_modules"
NODE = shutil.which("node")
MiB = 1024 * 1024
PART = 5 * MiB
BIG = 12 * MiB + 4321  # 5 MiB + 5 MiB + a short last part
SMALL = 54321
STREAMED = 1024 * 1024 + 777


class JsSdk:
    def __init__(self, endpoint, bucket: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NODE_"))}
        env.update(
            NODE_PATH=str(MODULES),
            TRIOS3_ENDPOINT=endpoint.url,
            TRIOS3_BUCKET=bucket,
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
        )
        if endpoint.url.startswith("https"):
            env["NODE_EXTRA_CA_CERTS"] = endpoint.ca_bundle
        self.env = env

    def __call__(self, *args: str) -> tuple[dict, list[dict]]:
        result = subprocess.run(
            [NODE, str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"s3check {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-5000:]}"
            )
        out = json.loads(result.stdout)
        return out["result"], out["requests"]


@pytest.fixture
def js(endpoint, bucket) -> JsSdk:
    if NODE is None:
        pytest.skip("node is not installed")
    if not (MODULES / "@aws-sdk" / "client-s3").is_dir():
        pytest.skip(
            f"@aws-sdk/client-s3 is not installed in {MODULES} (scripts/install-clients.sh)"
        )
    return JsSdk(endpoint, bucket)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_versions_are_the_pinned_ones():
    if not (MODULES / "@aws-sdk" / "client-s3").is_dir():
        pytest.skip(
            f"@aws-sdk/client-s3 is not installed in {MODULES} (scripts/install-clients.sh)"
        )
    pinned = json.loads((SCRIPT.parent / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        installed = json.loads((MODULES / name / "package.json").read_text())["version"]
        assert installed == version, name


def test_put_upload_get_list_delete(js, endpoint, bucket, seaweedfs, tmp_path):
    files = {
        "dir/small.bin": tmp_path / "small.bin",  # PutObject of a buffer
        "dir/streamed.bin": tmp_path / "streamed.bin",  # PutObject of a file stream
        "dir/big.bin": tmp_path / "big.bin",  # lib-storage Upload: three parts
        "dir/empty": tmp_path / "empty",
    }
    for key, size in (
        ("dir/small.bin", SMALL),
        ("dir/streamed.bin", STREAMED),
        ("dir/big.bin", BIG),
    ):
        files[key].write_bytes(os.urandom(size))
    files["dir/empty"].write_bytes(b"")

    put, requests = js("put", "dir/small.bin", str(files["dir/small.bin"]))
    assert re.fullmatch(r'"[0-9a-f]{32}-0"', put["etag"]), put
    assert [r["operation"] for r in requests] == ["PutObject"]
    # A buffer: its CRC32 in a header, the payload signed.
    assert "x-amz-checksum-crc32" in requests[0]["headers"], requests
    js("put", "dir/empty", str(files["dir/empty"]))

    # A stream: aws-chunked with the CRC32 in a trailer, over HTTP and HTTPS alike.
    streamed, requests = js("stream", "dir/streamed.bin", str(files["dir/streamed.bin"]))
    headers = requests[0]["headers"]
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", headers
    assert headers["x-amz-trailer"] == "x-amz-checksum-crc32", headers

    uploaded, requests = js("upload", "dir/big.bin", str(files["dir/big.bin"]), str(PART))
    operations = [r["operation"] for r in requests]
    assert operations.count("CreateMultipartUpload") == 1, operations
    assert operations.count("UploadPart") == 3, operations
    assert operations.count("CompleteMultipartUpload") == 1, operations
    assert "PutObject" not in operations
    assert re.fullmatch(r'"[0-9a-f]{32}-3"', uploaded["etag"]), uploaded

    listed, _ = js("list", "dir/")  # two keys a page: pages through continuation tokens
    assert {o["key"]: o["size"] for o in listed["objects"]} == {
        key: path.stat().st_size for key, path in files.items()
    }
    etags = {o["key"]: o["etag"] for o in listed["objects"]}
    assert etags["dir/big.bin"] == uploaded["etag"]
    assert etags["dir/small.bin"] == put["etag"]
    assert etags["dir/streamed.bin"] == streamed["etag"]

    for key, path in files.items():
        got, requests = js("get", key)
        size = path.stat().st_size
        assert (got["contentLength"], got["length"]) == (size, size), key
        assert got["sha256"] == sha256(path), key
        assert got["etag"] == etags[key], key
        assert requests[0]["headers"]["x-amz-checksum-mode"] == "ENABLED"
    head, _ = js("head", "dir/big.bin")
    assert head == {"contentLength": BIG, "etag": uploaded["etag"]}

    # What the SDK stored is ciphertext, and boto3 reads back the SDK's plaintext.
    raw = seaweedfs.client(request_checksum_calculation="when_required")
    stored = raw.get_object(Bucket=bucket, Key="dir/small.bin")["Body"].read()
    assert stored != files["dir/small.bin"].read_bytes()
    via_boto3 = endpoint.client().get_object(Bucket=bucket, Key="dir/big.bin")["Body"].read()
    assert via_boto3 == files["dir/big.bin"].read_bytes()

    deleted, _ = js("delete", *files, "never-there")
    assert deleted == {"deleted": sorted([*files, "never-there"]), "errors": []}
    listed, _ = js("list", "")
    assert listed["objects"] == []
