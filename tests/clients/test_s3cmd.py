"""s3cmd (Debian's package) through trios3, over HTTP and over HTTPS with ``ca_certs_file``.

s3cmd is configured by a private config file alone: ``host_base`` and ``host_bucket`` both the
proxy's address (path-style), ``signature_v2 = False`` (SigV4) and ``bucket_location`` the
proxy's region. It signs every payload with its real SHA-256, stores the file's MD5 in
``x-amz-meta-s3cmd-attrs`` and checks downloads against it (the proxy's ETags end in ``-N``,
which s3cmd knows is not an MD5). Above ``multipart_chunk_size_mb`` it uploads in parts of that
size. It lists with ListObjects v1.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.clients

S3CMD = shutil.which("s3cmd")
MiB = 1024 * 1024
SMALL = 4321
MULTIPART = 12 * MiB + 1234  # 5 MiB + 5 MiB + a short last part


class S3cmd:
    """Runs ``s3cmd`` with a config file of its own and no ``AWS_*``/``S3CMD_*`` variables."""

    def __init__(self, endpoint, directory: Path) -> None:
        host = endpoint.url.split("://", 1)[1]
        https = endpoint.url.startswith("https")
        lines = [
            "[default]",
            f"access_key = {endpoint.access_key}",
            f"secret_key = {endpoint.secret_key}",
            f"host_base = {host}",
            f"host_bucket = {host}",
            "bucket_location = us-east-1",
            "signature_v2 = False",
            f"use_https = {https}",
            "check_ssl_certificate = True",
            "check_ssl_hostname = True",
            f"ca_certs_file = {endpoint.ca_bundle if https else ''}",
            "multipart_chunk_size_mb = 5",
            "progress_meter = False",
        ]
        self.config = directory / "s3cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3CMD_"))} | {
            "HOME": str(directory)
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [S3CMD, "-c", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"s3cmd {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
            )
        # s3cmd goes on after an MD5 mismatch, with a warning only.
        assert "WARNING" not in result.stderr, result.stderr
        return result

    def listing(self, url: str, *args: str) -> dict[str, int]:
        """``s3cmd ls`` as {url: size}; directories (``DIR``) are left out."""
        out = {}
        for line in self.run("ls", *args, url).stdout.splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[2] != "DIR":
                out[fields[3]] = int(fields[2])
        return out


@pytest.fixture
def s3cmd(endpoint, tmp_path) -> S3cmd:
    if S3CMD is None:
        pytest.skip("s3cmd is not installed (scripts/install-clients.sh installs it)")
    return S3cmd(endpoint, tmp_path)


def test_put_get_ls_del(s3cmd, bucket, tmp_path):
    small, empty = tmp_path / "small.txt", tmp_path / "empty"
    small.write_bytes(os.urandom(SMALL))
    empty.write_bytes(b"")
    s3cmd.run("put", str(small), f"s3://{bucket}/dir/small.txt")
    s3cmd.run("put", str(small), f"s3://{bucket}/top.txt")
    s3cmd.run("put", str(empty), f"s3://{bucket}/dir/empty")

    assert s3cmd.listing(f"s3://{bucket}/") == {f"s3://{bucket}/top.txt": SMALL}
    assert s3cmd.listing(f"s3://{bucket}/", "--recursive") == {
        f"s3://{bucket}/dir/empty": 0,
        f"s3://{bucket}/dir/small.txt": SMALL,
        f"s3://{bucket}/top.txt": SMALL,
    }
    top = [line.split() for line in s3cmd.run("ls", f"s3://{bucket}/").stdout.splitlines()]
    assert ["DIR", f"s3://{bucket}/dir/"] in top, top

    for key, source in (("dir/small.txt", small), ("dir/empty", empty)):
        down = tmp_path / ("down-" + key.replace("/", "-"))
        s3cmd.run("get", f"s3://{bucket}/{key}", str(down))
        assert down.read_bytes() == source.read_bytes(), key

    info = s3cmd.run("info", f"s3://{bucket}/dir/small.txt").stdout
    assert re.search(rf"File size:\s+{SMALL}\b", info), info
    # The MD5 s3cmd keeps in its metadata: the proxy's ETag ends in "-0", and when an ETag has
    # a "-" s3cmd looks for the MD5 there (ls --list-md5 with a HEAD of the object).
    md5 = hashlib.md5(small.read_bytes()).hexdigest()
    assert re.search(rf"MD5 sum:\s+{md5}\b", info), info
    listed = s3cmd.run("ls", "--list-md5", f"s3://{bucket}/top.txt").stdout
    assert listed.split()[3:] == [md5, f"s3://{bucket}/top.txt"], listed

    s3cmd.run("del", f"s3://{bucket}/dir/small.txt")
    assert s3cmd.listing(f"s3://{bucket}/", "--recursive") == {
        f"s3://{bucket}/dir/empty": 0,
        f"s3://{bucket}/top.txt": SMALL,
    }
    missing = s3cmd.run("get", f"s3://{bucket}/dir/small.txt", str(tmp_path / "gone"), check=False)
    assert missing.returncode != 0
    assert "404" in missing.stderr or "does not exist" in missing.stderr, missing.stderr


def test_multipart_put_and_get(s3cmd, bucket, tmp_path):
    src = tmp_path / "multipart.bin"
    src.write_bytes(os.urandom(MULTIPART))
    up = s3cmd.run(
        "put", "--progress", "--multipart-chunk-size-mb=5", str(src), f"s3://{bucket}/mp/big.bin"
    )
    assert "[part 3 of 3" in up.stdout, up.stdout
    assert "[part 4 of" not in up.stdout, up.stdout

    assert s3cmd.listing(f"s3://{bucket}/mp/") == {f"s3://{bucket}/mp/big.bin": MULTIPART}
    info = s3cmd.run("info", f"s3://{bucket}/mp/big.bin").stdout
    assert re.search(rf"File size:\s+{MULTIPART}\b", info), info
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    assert re.search(rf"MD5 sum:\s+{md5}\b", info), info
    listed = s3cmd.run("ls", "--list-md5", f"s3://{bucket}/mp/big.bin").stdout
    assert listed.split()[3:] == [md5, f"s3://{bucket}/mp/big.bin"], listed
    pending = s3cmd.run("multipart", f"s3://{bucket}").stdout.splitlines()
    assert pending == [f"s3://{bucket}/", "Initiated\tPath\tId"], pending

    down = tmp_path / "down.bin"
    s3cmd.run("get", f"s3://{bucket}/mp/big.bin", str(down))
    assert down.read_bytes() == src.read_bytes()

    s3cmd.run("del", f"s3://{bucket}/mp/big.bin")
    assert s3cmd.listing(f"s3://{bucket}/", "--recursive") == {}


def test_mb_sync_and_rb(s3cmd, tmp_path):
    """A bucket made and removed through the proxy, and ``sync`` twice (the second uploads
    nothing: s3cmd compares sizes and the MD5 it keeps in its metadata)."""
    name = "s3cmd-" + uuid.uuid4().hex[:12]
    s3cmd.run("mb", f"s3://{name}")
    try:
        tree = tmp_path / "tree"
        for i, rel in enumerate(["a.txt", "sub/b.bin", "sub/deeper/c.txt"]):
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(1000 * (i + 1) + 7))
        first = s3cmd.run("sync", f"{tree}/", f"s3://{name}/tree/")
        assert first.stdout.count("upload:") == 3, first.stdout
        second = s3cmd.run("sync", f"{tree}/", f"s3://{name}/tree/")
        assert "upload:" not in second.stdout, second.stdout
        assert sorted(s3cmd.listing(f"s3://{name}/", "--recursive")) == [
            f"s3://{name}/tree/a.txt",
            f"s3://{name}/tree/sub/b.bin",
            f"s3://{name}/tree/sub/deeper/c.txt",
        ]
        back = tmp_path / "back"
        s3cmd.run("sync", f"s3://{name}/tree/", f"{back}/")
        for path in tree.rglob("*"):
            if path.is_file():
                assert (back / path.relative_to(tree)).read_bytes() == path.read_bytes()
    finally:
        s3cmd.run("del", "--recursive", "--force", f"s3://{name}", check=False)
        s3cmd.run("rb", f"s3://{name}")
    assert f"s3://{name}" not in s3cmd.run("ls").stdout
