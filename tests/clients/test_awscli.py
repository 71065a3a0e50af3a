"""The aws cli (v1, from the venv) through trios3, over HTTP and over HTTPS with --ca-bundle.

The cli's config raises the multipart threshold to 5 GB, so every ``s3 cp``/``s3 sync`` here
is a single PutObject, except in the multipart test, which lowers it again. Over
HTTP the cli sends a signed SHA-256 payload with an ``x-amz-checksum-crc32`` header; over
HTTPS it sends ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` aws-chunked bodies with a CRC32 trailer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from awscli_shared import fetch_with_curl, ls_sizes

pytestmark = pytest.mark.clients

AWS = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
BIG = 20 * 1000 * 1000
SMALL = 1234
MiB = 1024 * 1024


class AwsCli:
    """Runs ``aws`` against one endpoint with a clean environment and a private config file."""

    def __init__(self, endpoint, config_dir: Path) -> None:
        self.endpoint = endpoint
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(config_dir / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(config_dir / "credentials"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        self.env = env
        for name, value in (
            ("default.s3.multipart_threshold", "5GB"),
            ("default.s3.addressing_style", "path"),
            # `aws s3 presign` makes SigV2 URLs unless told otherwise; trios3 speaks SigV4.
            ("default.s3.signature_version", "s3v4"),
        ):
            self.run("configure", "set", name, value, endpoint_args=False)

    def run(self, *args: str, endpoint_args: bool = True, check: bool = True):
        command = [AWS, *args]
        if endpoint_args:
            command += ["--endpoint-url", self.endpoint.url]
            if self.endpoint.url.startswith("https"):
                command += ["--ca-bundle", self.endpoint.ca_bundle]
        result = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def listing(self, *args: str) -> dict[str, int]:
        """``aws s3 ls`` output as {name: size} (directories, shown as PRE, are left out)."""
        return ls_sizes(self.run("s3", "ls", *args).stdout)


@pytest.fixture
def aws(endpoint, tmp_path) -> AwsCli:
    if AWS is None:
        pytest.skip("the aws cli is not installed")
    config_dir = tmp_path / "awsconfig"
    config_dir.mkdir()
    return AwsCli(endpoint, config_dir)


@pytest.fixture
def s3_bucket(aws) -> str:
    name = "cli-" + uuid.uuid4().hex[:16]
    aws.run("s3", "mb", f"s3://{name}")
    return name


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    up = tmp_path / "up"
    up.mkdir()
    big, small = up / "big.bin", up / "small.txt"
    big.write_bytes(os.urandom(BIG))
    small.write_bytes(os.urandom(SMALL))
    return {"big": big, "small": small}


def test_cp_up_and_down_is_byte_identical(aws, s3_bucket, files, tmp_path):
    for path in files.values():
        aws.run("s3", "cp", str(path), f"s3://{s3_bucket}/dir/{path.name}")
    down = tmp_path / "down"
    down.mkdir()
    for path in files.values():
        aws.run("s3", "cp", f"s3://{s3_bucket}/dir/{path.name}", str(down / path.name))
        assert (down / path.name).read_bytes() == path.read_bytes(), path.name


def test_ls_shows_plaintext_sizes(aws, s3_bucket, files):
    for path in files.values():
        aws.run("s3", "cp", str(path), f"s3://{s3_bucket}/dir/{path.name}")
    aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/top.txt")

    top = aws.run("s3", "ls", f"s3://{s3_bucket}/").stdout
    assert "PRE dir/" in top
    assert aws.listing(f"s3://{s3_bucket}/") == {"top.txt": SMALL}
    assert aws.listing(f"s3://{s3_bucket}/dir/") == {"big.bin": BIG, "small.txt": SMALL}
    assert aws.listing(f"s3://{s3_bucket}", "--recursive") == {
        "dir/big.bin": BIG,
        "dir/small.txt": SMALL,
        "top.txt": SMALL,
    }


def test_head_object_reports_plaintext_content_length(aws, s3_bucket, files):
    for path in files.values():
        aws.run("s3", "cp", str(path), f"s3://{s3_bucket}/{path.name}")
    for path in files.values():
        out = aws.run("s3api", "head-object", "--bucket", s3_bucket, "--key", path.name)
        assert json.loads(out.stdout)["ContentLength"] == path.stat().st_size, path.name


def test_rm_removes_the_object(aws, s3_bucket, files):
    aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/gone.txt")
    aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/kept.txt")
    aws.run("s3", "rm", f"s3://{s3_bucket}/gone.txt")
    assert aws.listing(f"s3://{s3_bucket}/") == {"kept.txt": SMALL}
    missing = aws.run(
        "s3api", "head-object", "--bucket", s3_bucket, "--key", "gone.txt", check=False
    )
    assert missing.returncode != 0
    assert "404" in missing.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_sync_twice_transfers_nothing_the_second_time(aws, s3_bucket, tmp_path):
    src = tmp_path / "tree"
    for i, rel in enumerate(["a.txt", "b.bin", "sub/c.txt", "sub/deeper/d.bin", "empty"]):
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(0 if rel == "empty" else 1000 * (i + 1) + 17))
        # Written well before the upload: aws sync compares whole-second times, and a file
        # written in the second of its upload may look newer than the object.
        past = time.time() - 3600
        os.utime(path, (past, past))
    target = f"s3://{s3_bucket}/synced"

    first = aws.run("s3", "sync", "--no-progress", str(src), target)
    assert first.stdout.count("upload:") == 5, first.stdout
    second = aws.run("s3", "sync", "--no-progress", str(src), target)
    assert second.stdout == "", second.stdout

    back = tmp_path / "back"
    down = aws.run("s3", "sync", "--no-progress", target, str(back))
    assert down.stdout.count("download:") == 5, down.stdout
    assert _tree(back) == _tree(src)
    again = aws.run("s3", "sync", "--no-progress", target, str(back))
    assert again.stdout == "", again.stdout


def test_presigned_url_fetched_with_curl(aws, endpoint, s3_bucket, files, tmp_path):
    aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/shared.bin")
    url = aws.run("s3", "presign", f"s3://{s3_bucket}/shared.bin", "--expires-in", "300")
    url = url.stdout.strip()
    assert "X-Amz-Signature=" in url, url
    fetch_with_curl(url, endpoint, tmp_path / "presigned", files["small"].read_bytes())


def test_stored_object_is_not_the_plaintext(aws, seaweedfs, s3_bucket, files):
    for path in files.values():
        aws.run("s3", "cp", str(path), f"s3://{s3_bucket}/{path.name}")
    raw = seaweedfs.client(request_checksum_calculation="when_required")
    for path in files.values():
        plaintext = path.read_bytes()
        stored = raw.get_object(Bucket=s3_bucket, Key=path.name)["Body"].read()
        assert stored != plaintext
        assert len(stored) > len(plaintext)
        # Not even a fragment of the plaintext is on the backend.
        assert plaintext[:64] not in stored
        assert plaintext[len(plaintext) // 2 : len(plaintext) // 2 + 64] not in stored


def test_s3_to_s3_copy_and_mv_are_byte_identical(aws, s3_bucket, files, tmp_path):
    aws.run("s3", "cp", str(files["big"]), f"s3://{s3_bucket}/orig.bin")
    aws.run("s3", "cp", f"s3://{s3_bucket}/orig.bin", f"s3://{s3_bucket}/copy.bin")
    aws.run("s3", "mv", f"s3://{s3_bucket}/copy.bin", f"s3://{s3_bucket}/moved.bin")
    assert aws.listing(f"s3://{s3_bucket}/") == {"orig.bin": BIG, "moved.bin": BIG}
    aws.run("s3", "cp", f"s3://{s3_bucket}/moved.bin", str(tmp_path / "moved.bin"))
    assert (tmp_path / "moved.bin").read_bytes() == files["big"].read_bytes()


def test_cp_from_stdin_and_to_stdout(aws, s3_bucket):
    data = os.urandom(300_000)
    subprocess.run(
        [AWS, "s3", "cp", "-", f"s3://{s3_bucket}/piped", "--endpoint-url", aws.endpoint.url]
        + (["--ca-bundle", aws.endpoint.ca_bundle] if aws.endpoint.ca_bundle else []),
        input=data,
        env=aws.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = subprocess.run(
        [AWS, "s3", "cp", f"s3://{s3_bucket}/piped", "-", "--endpoint-url", aws.endpoint.url]
        + (["--ca-bundle", aws.endpoint.ca_bundle] if aws.endpoint.ca_bundle else []),
        env=aws.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.stdout == data


def test_get_object_range_returns_plaintext_bytes(aws, s3_bucket, files, tmp_path):
    aws.run("s3", "cp", str(files["big"]), f"s3://{s3_bucket}/big.bin")
    data = files["big"].read_bytes()
    for first, last in [(0, 99), (1_000_000, 1_065_535), (BIG - 10, BIG - 1)]:
        out = tmp_path / f"range-{first}"
        meta = aws.run(
            "s3api",
            "get-object",
            "--bucket",
            s3_bucket,
            "--key",
            "big.bin",
            "--range",
            f"bytes={first}-{last}",
            str(out),
        )
        info = json.loads(meta.stdout)
        assert info["ContentLength"] == last - first + 1
        assert info["ContentRange"] == f"bytes {first}-{last}/{BIG}"
        assert out.read_bytes() == data[first : last + 1]


def test_recursive_rm_and_rb(aws, s3_bucket, files):
    for i in range(5):
        aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/many/{i}.txt")
    aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/other.txt")
    aws.run("s3", "rm", "--recursive", f"s3://{s3_bucket}/many/")
    assert aws.listing(f"s3://{s3_bucket}", "--recursive") == {"other.txt": SMALL}
    aws.run("s3", "rb", "--force", f"s3://{s3_bucket}")
    assert f" {s3_bucket}\n" not in aws.run("s3", "ls").stdout + "\n"


def test_s3api_delete_objects(aws, s3_bucket, files):
    for name in ("a.txt", "b.txt", "c.txt"):
        aws.run("s3", "cp", str(files["small"]), f"s3://{s3_bucket}/{name}")
    request = {"Objects": [{"Key": "a.txt"}, {"Key": "c.txt"}, {"Key": "never-there"}]}
    out = aws.run("s3api", "delete-objects", "--bucket", s3_bucket, "--delete", json.dumps(request))
    answer = json.loads(out.stdout)
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["a.txt", "c.txt", "never-there"]
    assert "Errors" not in answer
    assert aws.listing(f"s3://{s3_bucket}/") == {"b.txt": SMALL}


# Parts of 8 MiB, 8 MiB and a short last one of 3 MiB and a bit.
MULTIPART = 2 * 8 * MiB + 3 * MiB + 4321


def test_multipart_cp_up_and_down(aws, bucket, tmp_path):
    """``s3 cp`` above ``multipart_threshold``: CreateMultipartUpload, three UploadParts (each
    with its own CRC32, as a header over HTTP and an aws-chunked trailer over HTTPS) and
    CompleteMultipartUpload; the download is made of ranged GETs of one chunk size each."""
    for name, value in (
        ("default.s3.multipart_threshold", "5MB"),
        ("default.s3.multipart_chunksize", "8MB"),
    ):
        aws.run("configure", "set", name, value, endpoint_args=False)
    src = tmp_path / "multipart.bin"
    src.write_bytes(os.urandom(MULTIPART))
    target = f"s3://{bucket}/mp/multipart.bin"

    up = aws.run("s3", "cp", "--no-progress", "--debug", str(src), target, check=False)
    # --debug logs every request: show only the end, where the error is.
    if up.returncode != 0:
        raise AssertionError(f"s3 cp exited {up.returncode}\n{up.stderr[-5000:]}")
    parts = re.findall(r"OperationModel\(name=(\w+)\)", up.stderr)
    assert parts.count("CreateMultipartUpload") == 1, sorted(set(parts))
    assert parts.count("UploadPart") == 3, sorted(set(parts))
    assert parts.count("CompleteMultipartUpload") == 1, sorted(set(parts))
    assert "PutObject" not in parts

    head = json.loads(
        aws.run("s3api", "head-object", "--bucket", bucket, "--key", "mp/multipart.bin").stdout
    )
    assert head["ContentLength"] == MULTIPART
    assert aws.listing(f"s3://{bucket}/mp/") == {"multipart.bin": MULTIPART}
    assert aws.listing(f"s3://{bucket}", "--recursive") == {"mp/multipart.bin": MULTIPART}
    pending = aws.run("s3api", "list-multipart-uploads", "--bucket", bucket).stdout
    assert not (json.loads(pending) if pending.strip() else {}).get("Uploads"), pending

    down = tmp_path / "down.bin"
    aws.run("s3", "cp", "--no-progress", target, str(down))
    assert down.stat().st_size == MULTIPART
    assert down.read_bytes() == src.read_bytes()


def test_multipart_s3_to_s3_copy(aws, bucket, tmp_path):
    """``s3 cp s3://… s3://…`` above ``multipart_threshold``: UploadPartCopy, one per part."""
    for name, value in (
        ("default.s3.multipart_threshold", "5MB"),
        ("default.s3.multipart_chunksize", "8MB"),
    ):
        aws.run("configure", "set", name, value, endpoint_args=False)
    src = tmp_path / "multipart.bin"
    src.write_bytes(os.urandom(MULTIPART))
    aws.run("s3", "cp", "--no-progress", str(src), f"s3://{bucket}/orig.bin")

    copied = aws.run(
        "s3",
        "cp",
        "--no-progress",
        "--debug",
        f"s3://{bucket}/orig.bin",
        f"s3://{bucket}/copy.bin",
        check=False,
    )
    if copied.returncode != 0:
        raise AssertionError(f"s3 cp exited {copied.returncode}\n{copied.stderr[-5000:]}")
    operations = re.findall(r"OperationModel\(name=(\w+)\)", copied.stderr)
    assert operations.count("UploadPartCopy") == 3, sorted(set(operations))

    assert aws.listing(f"s3://{bucket}/") == {"orig.bin": MULTIPART, "copy.bin": MULTIPART}
    aws.run("s3", "cp", "--no-progress", f"s3://{bucket}/copy.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
