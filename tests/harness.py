"""The harness the tests and the scripts in scripts/ share: real servers started the way a user
starts them, and what reads and stops them.

A real SeaweedFS (``running_seaweedfs``) and ``trios3 serve`` in front of it (``start_proxy``,
``running_proxy``; both at once for a script: ``running_servers``), each on free loopback
ports; ``Endpoint`` says how to reach either, makes boto3 clients for it and presigns URLs.
A SeaweedFS can serve HTTPS with a CA of its own (``running_seaweedfs(data, tls=True)``, the
CA in the endpoint's ``ca_bundle``; ``private_ca``). One started by hand (``start_seaweedfs``)
can be killed and started again on the same data and ports (``SeaweedFS.kill``, ``.restart``),
a proxy on a port of the caller's (``start_proxy(port=)``), and ``reserved_ports`` gives ports
no outgoing connection takes meanwhile. Then the process readers the benchmarks
report (``cpu_seconds``, ``vm_hwm_kib``, ``status_kib``; over a proxy and its workers:
``process_tree``, ``tree_cpu_seconds``, ``reset_peak_rss``), what ``trios3 serve`` offers
(``serve_has_option``), and the helpers test modules share (scratch buckets, botocore error
fields). The clients that sign S3 requests
without boto3 are in :mod:`s3clients`.

How it is reached: under pytest, ``tests/`` is on ``sys.path`` because ``tests/conftest.py``
lives there (pytest's default "prepend" import mode puts the directory of a conftest that is not
in a package first on the path), so a test module says ``from harness import ...`` (not ``from
conftest import``: with a conftest.py in a subdirectory too, "conftest" names two modules). A
script adds ``tests/`` itself, in one commented line before it imports the harness. Nothing
here imports pytest: the scripts run without it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from trios3.core.keys import MasterKey
from trios3.embedded import PORT_OPTIONS, backend_identity, find_weed, free_ports, weed_command


@dataclass(frozen=True)
class Endpoint:
    """How to reach an S3 server: its URL and credentials (and, over HTTPS, the certificate to
    trust: a trios3's own, a SeaweedFS's CA; for a trios3, the master key it encrypts with)."""

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

    def presigner(self, expires: int = 6 * 3600) -> Callable[[str, str, str], str]:
        """A function ``(method, bucket, key) -> URL``: SigV4 query-signed URLs for ``GET`` or
        ``PUT`` of ``bucket/key``, valid ``expires`` seconds, made by botocore's presigner (one
        client for all of them). Only ``host`` is signed and the payload is ``UNSIGNED-PAYLOAD``,
        so any client (curl, wrk) can send one, a PUT with any body; no checksum is added
        (``request_checksum_calculation="when_required"``)."""
        client = self.client(request_checksum_calculation="when_required")
        operations = {"GET": "get_object", "PUT": "put_object"}

        def presign(method: str, bucket: str, key: str) -> str:
            return client.generate_presigned_url(
                operations[method], Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
            )

        return presign


# -- processes --------------------------------------------------------------------------------


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    """Return once ``port`` on loopback accepts a connection; raise if ``process`` (``what``)
    exits first or ``timeout`` seconds pass. A server is ready to be used, not just started."""
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


def reserved_ports(count: int) -> list[int]:
    """``count`` ports free on loopback now and outside the kernel's ephemeral range, so that no
    outgoing connection is given one as its own port: a server can be stopped and started again
    on them (or a proxy told its backend's port before that backend listens) without another
    socket taking them in between, as one of :func:`free_ports`' may be."""
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = [port for port in range(10000, 65536) if not low <= port <= high]
    rng = random.Random()  # not seeded: concurrent runs must not pick the same ones
    rng.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"fewer than {count} ports free outside the ephemeral range")


def stop_process(process: subprocess.Popen, grace: float = 10) -> float | None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds. Returns how long the
    SIGTERM took (0 if it had already exited), or None if it had to be killed: a server that
    ignores SIGTERM is a finding, not only a nuisance."""
    if process.poll() is not None:
        return 0.0
    started = time.monotonic()
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
    return time.monotonic() - started


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, name: str) -> int | None:
    """A KiB figure of /proc/<pid>/status (``VmHWM``, ``VmRSS``...); None once the process is
    gone or if it has no such line."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_hwm_kib(pid: int) -> int:
    """A running process's peak resident set (VmHWM), in KiB."""
    peak = status_kib(pid, "VmHWM")
    if peak is None:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return peak


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    """The command name and the fields after it of /proc/<pid>/stat (``fields[1]`` is the
    parent's pid); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name, _, rest = text.partition(" (")[2].rpartition(")")
    return name, rest.split()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (a walk over /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat_fields(int(entry))
            if stat is not None and stat[1][1] == str(pid):
                found.append(int(entry))
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants: a proxy and the worker processes it runs."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


def process_name(pid: int) -> str | None:
    """The command name of /proc/<pid>/stat (``weed``, ``python3.11``); None once gone."""
    stat = _stat_fields(pid)
    return stat[0] if stat else None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds spent by ``pid`` and its descendants: utime + stime + cutime + cstime of
    every live process of the tree. A descendant that has exited and been reaped is counted in
    its parent's cutime/cstime, once; the difference of two readings is the tree's CPU between
    them (a worker that exits between them and is not yet reaped goes missing from it)."""
    total = 0
    for member in process_tree(pid):
        stat = _stat_fields(member)
        if stat is not None:
            total += sum(int(value) for value in stat[1][11:15])
    return total / CLK_TCK


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (``5`` into /proc/<pid>/clear_refs, root or
    the process's owner), so that the next reading is the peak from now on; False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# -- SeaweedFS --------------------------------------------------------------------------------


class SeaweedFS(NamedTuple):
    """A SeaweedFS that :func:`start_seaweedfs` started: its process, how to reach it, the
    ports it listens on (to start it again on the same ones) and its log."""

    process: subprocess.Popen
    endpoint: Endpoint
    data: Path
    ports: dict[str, int]
    tls: bool
    log: BinaryIO

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed by the process."""
        self.process.kill()
        self.process.wait()
        self.log.close()

    def stop(self, grace: float = 3) -> None:
        """:func:`stop_process` (SeaweedFS takes its time over SIGTERM), then close the log."""
        try:
            stop_process(self.process, grace=grace)
        finally:
            self.log.close()

    def restart(self) -> SeaweedFS:
        """Another SeaweedFS on the same data and the same ports, once this one has exited
        (killed or stopped): its clients find it where they left it."""
        return start_seaweedfs(self.data, tls=self.tls, ports=self.ports)


def start_seaweedfs(
    data: Path, *, tls: bool = False, ports: Mapping[str, int] | None = None
) -> SeaweedFS:
    """A SeaweedFS S3 server (``weed mini``, as the embedded backend runs it), its data and
    ``weed.log`` (appended to) in ``data``, once it accepts writes; its owner stops it.

    ``ports``: the ports to listen on (every name of ``PORT_OPTIONS``), to start it again where
    it was (:meth:`SeaweedFS.restart`); by default free ones. ``tls`` as in
    :func:`running_seaweedfs` (the CA made on the first start is kept for the next)."""
    access, secret, s3_config = backend_identity(data)
    if ports is None:
        ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    ports = dict(ports)
    command = weed_command(find_weed(), data, s3_config, ports)
    ca = None
    if tls:
        # With a certificate and no -s3.port.https, weed serves HTTPS on -s3.port.
        directory = data / "tls"
        files = TLSFiles(
            directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
        )
        if not all(path.exists() for path in files):
            files = private_ca(directory)
        command += [f"-s3.cert.file={files.cert}", f"-s3.key.file={files.key}"]
        ca = str(files.ca)
    log = open(data / "weed.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(ports["s3.port"], process, "SeaweedFS")
        scheme = "https" if tls else "http"
        endpoint = Endpoint(f"{scheme}://127.0.0.1:{ports['s3.port']}", access, secret, ca)
        _wait_writable(endpoint)
    except BaseException:
        stop_process(process, grace=3)
        log.close()
        raise
    return SeaweedFS(process, endpoint, data, ports, tls, log)


@contextmanager
def running_seaweedfs(
    data: Path, *, tls: bool = False, ports: Mapping[str, int] | None = None
) -> Iterator[Endpoint]:
    """A SeaweedFS S3 server (``weed mini``, as the embedded backend runs it) on free ports, its
    data and ``weed.log`` in ``data``, for the ``with`` block (:func:`start_seaweedfs`, whose
    ``ports`` it takes too).

    ``tls``: its S3 port serves HTTPS only, with a server certificate signed by a CA of its own
    (:func:`private_ca`, in ``data/tls``); the endpoint's ``ca_bundle`` is that CA, which no
    system bundle trusts: a backend on premises with a private CA."""
    server = start_seaweedfs(data, tls=tls, ports=ports)
    try:
        yield server.endpoint
    finally:
        server.stop()  # its data is scratch


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


# -- trios3 -----------------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with `cryptography`: (cert, key) paths."""
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


class TLSFiles(NamedTuple):
    """A CA certificate and a server certificate and key it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def private_ca(directory: Path) -> TLSFiles:
    """A certificate authority of its own (``ca.pem``) and a server certificate for 127.0.0.1
    and localhost that it signed (``server.pem``, ``server-key.pem``), in ``directory`` (made
    if need be), with `cryptography`. Unlike :func:`self_signed_cert`, the server's certificate
    is not a CA: a client trusts it only through ``ca.pem``, as with a company's own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trios3-test private CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def serve_command(port: int, *options: str) -> list[str]:
    """``trios3 serve`` on 127.0.0.1:``port`` with ``options``, run by this Python."""
    return [sys.executable, "-m", "trios3.cli", "serve", "--listen", f"127.0.0.1:{port}", *options]


def serve_has_option(option: str) -> bool:
    """Whether ``trios3 serve --help`` (run by this Python) lists ``option`` (``--workers``):
    for scripts that use an option only where the code has it."""
    result = subprocess.run(
        [sys.executable, "-m", "trios3.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return option in result.stdout.replace(",", " ").split()


class Proxy(NamedTuple):
    """A ``trios3 serve`` that :func:`start_proxy` started. A tuple, so that a test can say
    ``process, endpoint, log = start_proxy(...)``; its owner stops it."""

    process: subprocess.Popen
    endpoint: Endpoint
    log: BinaryIO  # the process's stdout and stderr

    @property
    def log_path(self) -> Path:
        return Path(self.log.name)

    def stop(self, grace: float = 10) -> float | None:
        """:func:`stop_process`, then close the log."""
        try:
            return stop_process(self.process, grace)
        finally:
            self.log.close()


def start_proxy(
    backend: Endpoint,
    directory: Path,
    *,
    tls: bool = False,
    extra: Sequence[str] = (),
    master_key: str | None = None,
    env: Mapping[str, str] | None = None,
    cgroup: Path | None = None,
    log_path: Path | None = None,
    port: int | None = None,
) -> Proxy:
    """``trios3 serve`` as a user runs it, in front of ``backend``, once it accepts connections.

    It gets credentials of its own and a master key of its own unless ``master_key`` is given
    (replicas, or proxies that must read each other's objects, share one). ``tls``: HTTPS with a
    self-signed certificate made in ``directory``; ``extra``: more command-line options; ``env``:
    environment entries that win over these; ``cgroup``: a cgroup directory the process joins
    before it execs, so that nothing it allocates is counted outside it; ``log_path``: where
    its output goes (default ``directory/proxy.log``); ``port``: where it listens
    (default a free one; a proxy started again where one was killed, with that one's
    ``master_key`` and ``env={"TRIOS3_SECRET_ACCESS_KEY": ...}``, is the same proxy to its
    clients).
    """
    port = port or free_ports(1)[0]
    master = master_key or base64.b64encode(MasterKey.generate()).decode()
    env = {
        **os.environ,
        "TRIOS3_BACKEND_ACCESS_KEY_ID": backend.access_key,
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY": backend.secret_key,
        "TRIOS3_ACCESS_KEY_ID": "proxyclient",
        "TRIOS3_SECRET_ACCESS_KEY": "proxysecret-" + uuid.uuid4().hex,
        "TRIOS3_MASTER_KEY": master,
        **(env or {}),
    }
    command = serve_command(port, "--backend", backend.url, *extra)
    ca = None
    if tls:
        cert, key = self_signed_cert(directory)
        command += ["--tls-cert", str(cert), "--tls-key", str(key)]
        ca = str(cert)
    if cgroup is not None:
        # The shell joins the group, then becomes the proxy.
        joins = 'echo $$ > "$1" && shift && exec "$@"'
        command = ["sh", "-c", joins, "sh", str(cgroup / "cgroup.procs"), *command]
    log = open(log_path or directory / "proxy.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process, "trios3")
        if cgroup is not None:
            groups = Path(f"/proc/{process.pid}/cgroup").read_text()
            if cgroup.name not in groups:
                raise RuntimeError(f"the proxy is not in {cgroup}: {groups}")
    except BaseException:
        stop_process(process)
        log.close()
        raise
    endpoint = Endpoint(
        f"{'https' if tls else 'http'}://127.0.0.1:{port}",
        env["TRIOS3_ACCESS_KEY_ID"],
        env["TRIOS3_SECRET_ACCESS_KEY"],
        ca_bundle=ca,
        master_key=master,
    )
    return Proxy(process, endpoint, log)


@contextmanager
def running_proxy(backend: Endpoint, directory: Path, **options) -> Iterator[Proxy]:
    """:func:`start_proxy` (``directory`` made if need be) for the ``with`` block."""
    directory.mkdir(parents=True, exist_ok=True)
    proxy = start_proxy(backend, directory, **options)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def running_servers(prefix: str) -> Iterator[tuple[Endpoint, Proxy]]:
    """A SeaweedFS and a trios3 in front of it, in a scratch directory named with ``prefix``,
    for the ``with`` block: what a benchmark script runs against."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        scratch = Path(tmp)
        with (
            running_seaweedfs(scratch / "seaweedfs") as seaweedfs,
            running_proxy(seaweedfs, scratch / "proxy") as proxy,
        ):
            yield seaweedfs, proxy


# -- what test modules share ------------------------------------------------------------------


def scratch_bucket(seaweedfs: Endpoint, prefix: str) -> Iterator[str]:
    """A bucket made straight at the backend and removed afterwards with its objects and open
    multipart uploads (for ``yield from`` in a fixture): SeaweedFS gives each bucket volumes of
    its own and has only so many to give."""
    client = seaweedfs.client()
    name = f"{prefix}-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for item in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=item["Key"], UploadId=item["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=name)


def status(err) -> int:
    """The HTTP status of a botocore ClientError."""
    return err.response["ResponseMetadata"]["HTTPStatusCode"]


def code(err) -> str:
    """The S3 error code of a botocore ClientError."""
    return err.response["Error"]["Code"]


def new_key(prefix: str = "obj") -> str:
    """A key no other test uses."""
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


class MemoryCgroup:
    """A child of this process's cgroup-v1 memory group, with a hard limit (and memsw)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str, limit: int) -> tuple[MemoryCgroup | None, str]:
        """The group, or None and why not."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError as exc:
            return None, f"cannot read /proc/self/cgroup: {exc}"
        mine = next((ln.split(":", 2)[2] for ln in lines if ln.split(":")[1:2] == ["memory"]), None)
        if mine is None:
            return None, "no cgroup-v1 memory controller (cgroup2 has none here)"
        base = Path("/sys/fs/cgroup/memory") / mine.lstrip("/")
        if not (base / "memory.limit_in_bytes").exists():
            return None, f"{base} has no memory.limit_in_bytes"
        path = base / name
        try:
            path.mkdir()
        except OSError as exc:
            return None, f"cannot create {path}: {exc} (not root?)"
        group = cls(path)
        try:
            group.write("memory.limit_in_bytes", limit)
            if (path / "memory.memsw.limit_in_bytes").exists():
                group.write("memory.memsw.limit_in_bytes", limit)
        except OSError as exc:
            group.remove()
            return None, f"cannot set the limit on {path}: {exc}"
        return group, ""

    def write(self, name: str, value: int) -> None:
        (self.path / name).write_text(f"{value}\n")

    def read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except OSError:
            return None

    def number(self, name: str) -> int | None:
        text = self.read(name)
        return int(text) if text and text.strip().isdigit() else None

    def stats(self) -> dict:
        out = {
            "limit": self.number("memory.limit_in_bytes"),
            "memsw_limit": self.number("memory.memsw.limit_in_bytes"),
            "max_usage": self.number("memory.max_usage_in_bytes"),
            "memsw_max_usage": self.number("memory.memsw.max_usage_in_bytes"),
            "failcnt": self.number("memory.failcnt"),
        }
        for line in (self.read("memory.oom_control") or "").splitlines():
            name, _, value = line.partition(" ")
            if name in ("oom_kill", "under_oom"):
                out[name] = int(value)
        return out

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove {self.path}", file=sys.stderr)
