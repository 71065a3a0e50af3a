"""What the aws cli v1 and v2 suites share: reading ``aws s3 ls``, and fetching a presigned URL
with curl, as a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def fetch_with_curl(url: str, endpoint, out: Path, expected: bytes) -> None:
    """GET ``url`` with curl, then the same URL with a wrong signature (403)."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    tls = ["--cacert", endpoint.ca_bundle] if endpoint.url.startswith("https") else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURL_", "AWS_"))}
    curl = ["curl", "--silent", "--show-error", *tls, "--write-out", "\n%{http_code}"]
    got = subprocess.run(
        [*curl, "--fail", "--output", str(out), url], env=env, timeout=60, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    assert got.stdout.strip() == "200", got.stdout
    assert out.read_bytes() == expected

    signature = re.search(r"X-Amz-Signature=([0-9a-f]{64})", url).group(1)
    tampered = url.replace(signature, signature[:-1] + ("0" if signature[-1] != "0" else "1"))
    refused = subprocess.run(
        [*curl, tampered], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.stdout.rsplit("\n", 1)[-1] == "403", refused.stdout
    assert "<Code>SignatureDoesNotMatch</Code>" in refused.stdout


def ls_sizes(stdout: str) -> dict[str, int]:
    """``aws s3 ls`` output as {name: size} (directories, shown as PRE, are left out)."""
    sizes = {}
    for line in stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0] != "PRE":
            sizes[parts[3]] = int(parts[2])
    return sizes
