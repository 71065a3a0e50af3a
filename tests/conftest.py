"""Fixtures shared by every test layer: a real SeaweedFS, and trios3 served in front of it."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from trios3.core.keys import MasterKey
from trios3.embedded import PORT_OPTIONS, backend_identity, find_weed, free_ports, weed_command

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoint:
    url: str
    access_key: str
    secret_key: str
    ca_bundle: str | None = None
    master_key: str | None = None

    def client(self, signature_version: str = "s3v4", **config):
        """A boto3 S3 client with its current default checksum behaviour (SigV4 unless told
        ``signature_version="s3"``, the SigV2 the proxy refuses)."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            signature_version=signature_version,
            **config,
        )
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=cfg,
            verify=self.ca_bundle if self.url.startswith("https") else None,
        )


def _wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port}")


def _stop(process: subprocess.Popen, grace: float = 10) -> None:
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_seaweedfs(data: Path) -> Iterator[Endpoint]:
    """A SeaweedFS S3 server on free ports, its data in ``data``, for the ``with`` block."""
    access, secret, s3_config = backend_identity(data)
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    log = open(data / "weed.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        weed_command(find_weed(), data, s3_config, ports), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_port(ports["s3.port"], process, "SeaweedFS")
        endpoint = Endpoint(f"http://127.0.0.1:{ports['s3.port']}", access, secret)
        _wait_writable(endpoint)
        yield endpoint
    finally:
        _stop(process, grace=3)  # SeaweedFS takes its time over SIGTERM; its data is scratch
        log.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Endpoint:
    """A real, signature-checking S3 server for the whole session."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


def _wait_writable(endpoint: Endpoint) -> None:
    """SeaweedFS answers on its S3 port a moment before it accepts writes."""
    client = endpoint.client()
    name = "probe-" + uuid.uuid4().hex[:8]
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=name)
            client.put_object(Bucket=name, Key="probe", Body=b"x")
            client.delete_object(Bucket=name, Key="probe")
            client.delete_bucket(Bucket=name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trios3-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_proxy(
    seaweedfs: Endpoint,
    directory: Path,
    *,
    tls: bool = False,
    extra=(),
    master_key: str | None = None,
):
    """`trios3 serve` as a user runs it, in front of the test SeaweedFS (with a master key of
    its own unless one is given: replicas share theirs)."""
    port = free_ports(1)[0]
    master = master_key or base64.b64encode(MasterKey.generate()).decode()
    env = {
        **os.environ,
        "TRIOS3_BACKEND_ACCESS_KEY_ID": seaweedfs.access_key,
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "TRIOS3_ACCESS_KEY_ID": "proxyclient",
        "TRIOS3_SECRET_ACCESS_KEY": "proxysecret-" + uuid.uuid4().hex,
        "TRIOS3_MASTER_KEY": master,
    }
    command = [
        sys.executable,
        "-m",
        "trios3.cli",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        seaweedfs.url,
        *extra,
    ]
    ca = None
    if tls:
        cert, key = self_signed_cert(directory)
        command += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ca = str(cert)
    log = open(directory / "proxy.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_port(port, process, "trios3")
    scheme = "https" if tls else "http"
    endpoint = Endpoint(
        f"{scheme}://127.0.0.1:{port}",
        env["TRIOS3_ACCESS_KEY_ID"],
        env["TRIOS3_SECRET_ACCESS_KEY"],
        ca_bundle=ca,
        master_key=master,
    )
    return process, endpoint, log


@pytest.fixture(scope="session")
def proxy(seaweedfs, tmp_path_factory) -> Endpoint:
    """trios3 over plain HTTP."""
    process, endpoint, log = start_proxy(seaweedfs, tmp_path_factory.mktemp("proxy"))
    yield endpoint
    _stop(process)
    log.close()


@pytest.fixture(scope="session")
def tls_proxy(seaweedfs, tmp_path_factory) -> Endpoint:
    """trios3 over HTTPS with a self-signed certificate (boto3 then sends aws-chunked trailers)."""
    process, endpoint, log = start_proxy(seaweedfs, tmp_path_factory.mktemp("tlsproxy"), tls=True)
    yield endpoint
    _stop(process)
    log.close()


def scratch_bucket(seaweedfs: Endpoint, prefix: str):
    """A bucket made straight at the backend and removed with its objects afterwards:
    SeaweedFS gives each bucket volumes of its own and has only so many to give."""
    client = seaweedfs.client()
    name = f"{prefix}-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=name)


@pytest.fixture(params=["http", "https"])
def endpoint(request) -> Endpoint:
    """Each test over plain HTTP and over HTTPS (a self-signed certificate). The two proxies
    have master keys of their own: objects are read back through the one that wrote them."""
    return request.getfixturevalue("proxy" if request.param == "http" else "tls_proxy")


@pytest.fixture
def s3(endpoint):
    """A boto3 client of the proxy."""
    return endpoint.client()


@pytest.fixture
def backend(seaweedfs):
    """A boto3 client of the SeaweedFS behind the proxy: what is really stored."""
    return seaweedfs.client()


def status(err) -> int:
    """The HTTP status of a botocore ClientError."""
    return err.response["ResponseMetadata"]["HTTPStatusCode"]


def code(err) -> str:
    """The S3 error code of a botocore ClientError."""
    return err.response["Error"]["Code"]


def new_key(prefix: str = "obj") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def set_metadata(backend, bucket: str, key: str, metadata: dict[str, str]) -> None:
    """Replace an object's metadata straight at the backend (a same-key CopyObject), as
    someone with write access to the backend could: for tamper and legacy-object tests."""
    backend.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata=metadata,
    )


@pytest.fixture
def bucket(seaweedfs) -> str:
    """A fresh bucket for one test, removed afterwards."""
    yield from scratch_bucket(seaweedfs, "t")


REQUIRE_CLIENTS = "TRIOS3_REQUIRE_CLIENTS"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With TRIOS3_REQUIRE_CLIENTS=1 (as .ci/run sets it) a client test that skips, because
    its client is not installed, fails instead: CI must never pass without running them."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure ran: not a missing client
        and os.environ.get(REQUIRE_CLIENTS) == "1"
        and item.get_closest_marker("clients") is not None
    ):
        _required(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a client test module skipped as a whole (importorskip and the like)."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get(REQUIRE_CLIENTS) == "1"
        and collector.path.parent.name == "clients"
    ):
        _required(report)


def _required(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_CLIENTS}=1 requires every client: {reason}"
