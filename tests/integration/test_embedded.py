"""The README's "run it" command: `trios3 serve` with no backend runs an embedded SeaweedFS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Endpoint, wait_port
from trios3.embedded import free_ports

pytestmark = pytest.mark.integration


def _serve(data_dir: Path, port: int) -> tuple[subprocess.Popen, Endpoint]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trios3.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = []
    for line in process.stdout:
        banner.append(line)
        if "aws --endpoint-url" in line:
            break
    text = "".join(banner)
    access = re.search(r"AWS_ACCESS_KEY_ID=(\S+)", text)
    secret = re.search(r"AWS_SECRET_ACCESS_KEY=(\S+)", text)
    assert access and secret, text
    wait_port(port, process, "trios3")
    return process, Endpoint(f"http://127.0.0.1:{port}", access.group(1), secret.group(1))


def _weed_processes(data_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "weed" in cmdline and "mini" in cmdline and str(data_dir) in cmdline:
            found.append(int(entry.name))
    return found


def _terminate(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()


def test_embedded_backend_serves_restarts_and_stops_with_the_server(tmp_path):
    data_dir = tmp_path / "data"
    port = free_ports(1)[0]
    process, endpoint = _serve(data_dir, port)
    try:
        client = endpoint.client()
        client.create_bucket(Bucket="demo")
        client.put_object(Bucket="demo", Key="hello.txt", Body=b"hello embedded")
        assert _weed_processes(data_dir), "SeaweedFS should run under the data dir"
    finally:
        code = _terminate(process)
    assert code == 0
    assert _weed_processes(data_dir) == [], "SeaweedFS must stop when the server stops"
    assert (data_dir / "master.key").stat().st_mode & 0o077 == 0

    # A second run reuses the key, the credentials and the data.
    process, again = _serve(data_dir, port)
    try:
        assert again.access_key == endpoint.access_key
        body = again.client().get_object(Bucket="demo", Key="hello.txt")["Body"].read()
        assert body == b"hello embedded"
    finally:
        assert _terminate(process) == 0
    assert _weed_processes(data_dir) == []
