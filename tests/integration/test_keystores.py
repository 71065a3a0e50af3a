"""Master keys an HSM (PKCS#11) or a KMS (KMIP) keeps: a real SoftHSM2 token and a real PyKMIP
server, started by the fixtures, and ``trios3 serve`` processes whose key file holds a
``pkcs11:`` or ``kmip:`` line (trios3.keystores).

What is pinned: objects written and read back, and read again by a restarted proxy; a GET
never calls the key manager (its calls are counted in the proxy's DEBUG log and, for KMIP, in
the server's own log); the key manager down, or hung, turns ``/readyz`` and the requests that
need its key into 503 once the copy in memory has expired (``--kms-cache-seconds``), and back
once it answers; a proxy started while it is down serves, not ready, until it answers; a key
it refuses (no such key, another key, a wrong PIN) stops start-up with one line; the HSM's key
cannot be extracted. The first tests need neither: the refreshing task against key managers
of the tests' own, on trio's virtual clock.

Every wait polls with a deadline (:func:`until`), never a fixed sleep.
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from botocore.exceptions import ClientError

from harness import (
    reserved_ports,
    scratch_bucket,
    start_proxy,
    wait_port,
)
from trios3.core.errors import S3Error
from trios3.core.keys import Keyring, MasterKey
from trios3.keystores import (
    HeldKey,
    KeyManagerRefused,
    KeyManagerUnavailable,
    KeysRefused,
    KeystoreSettings,
    ManagedKey,
    keep_keys_fresh,
    seal_intermediate,
    unseal_intermediate,
)

MiB = 1024 * 1024
WAIT = 30  # seconds any one wait below may take at most
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "246810"
TTL = 3.0  # --kms-cache-seconds of the outage tests: decrypted again every 1.5 s
CALL = "key manager call:"  # what the proxy logs, at DEBUG, for each call


def until(predicate: Callable[[], object], what: str, timeout: float = WAIT):
    """``predicate()``'s first true value, polled every 50 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


# -- the refreshing task, against key managers of the tests' own (virtual clock) -------------


class FakeManager:
    """A key manager in memory: AES-GCM with a key of its own, that can be told to fail or to
    hang (each call then waits for ``release``); counts its calls and how many run at once."""

    kind = "pkcs11"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(AESGCM.generate_key(256))
        self.failure: Exception | None = None
        self.hang = False
        self.release = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def encrypt(self, key_name: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, key_name: str, wrapped: bytes, aad: bytes) -> bytes:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.hang:
                self.release.wait(60)
            if self.failure is not None:
                raise self.failure
            return self._aead.decrypt(wrapped[:12], wrapped[12:], aad)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def thread_clock():
    """Virtual time that jumps ahead once every task has waited 0.2 s of real time (not at
    once, as ``autojump_clock`` does): the key managers' calls run in threads, in real time,
    and one that answers must be seen to answer before the clock runs past its timeout."""
    return trio.testing.MockClock(autojump_threshold=0.2)


def settings(cache_seconds: float = 10, timeout: float = 1) -> KeystoreSettings:
    return KeystoreSettings(
        pkcs11_module=None,
        pkcs11_token_label=None,
        pkcs11_pin=None,
        kmip_host=None,
        kmip_port=5696,
        kmip_cert=None,
        kmip_key=None,
        kmip_ca=None,
        timeout=timeout,
        cache_seconds=cache_seconds,
    )


def held_key(manager: FakeManager, clock=trio.current_time) -> HeldKey:
    """A key of ``manager``'s; the decrypt that checked it is not counted."""
    key = HeldKey(seal_intermediate(manager, "kek"), clock=clock)
    manager.calls = manager.most_at_once = 0
    return key


async def keeping(nursery, keys, manager: FakeManager, **config) -> None:
    """:func:`keep_keys_fresh` started in ``nursery`` with ``manager`` for the PKCS#11 one."""
    await nursery.start(
        functools.partial(keep_keys_fresh, keys, settings(**config), managers={"pkcs11": manager})
    )


def test_a_held_key_wraps_while_its_copy_is_fresh_and_is_503_after():
    now = [0.0]
    manager = FakeManager()
    managed = seal_intermediate(manager, "kek")
    key = HeldKey(managed, clock=lambda: now[0])
    keyring = Keyring([key])  # whole before the key manager has answered: the id is in the line
    assert keyring.primary.key_id == managed.key_id
    with pytest.raises(S3Error) as caught:
        keyring.seal_new("b", "k")
    assert (caught.value.code, caught.value.status) == ("ServiceUnavailable", 503)
    assert "The key manager does not answer" in caught.value.message
    assert key.problem() == f"master key {managed.key_id} is not available: not loaded yet"
    with pytest.raises(ValueError):
        key.hold(MasterKey(MasterKey.generate()), 10)  # only the line's own key
    key.hold(unseal_intermediate(manager, managed), 10)
    data_key, envelope = keyring.seal_new("b", "k")
    assert keyring.open(envelope, "b", "k") == data_key
    assert key.problem() is None
    now[0] = 9.9
    key.failed("HSM key 'kek': no answer within 1 s")
    assert keyring.open(envelope, "b", "k") == data_key  # still fresh: a failure changes nothing
    now[0] = 10.0
    with pytest.raises(S3Error) as caught:
        keyring.open(envelope, "b", "k")
    assert caught.value.status == 503
    assert key.problem().endswith("is not available: HSM key 'kek': no answer within 1 s")


async def test_the_keys_are_decrypted_before_start_up_ends_and_again_at_half_their_time(
    thread_clock,
):
    manager = FakeManager()
    keys = [held_key(manager), held_key(manager)]
    async with trio.open_nursery() as nursery:
        await keeping(nursery, keys, manager, cache_seconds=10)
        assert manager.calls == 2 and all(key.problem() is None for key in keys)
        await trio.sleep(4.9)
        assert manager.calls == 2
        await trio.sleep(0.2)  # 5 s: half of --kms-cache-seconds
        assert manager.calls == 4
        await trio.sleep(60)
        assert manager.calls == 4 + 2 * 12 and all(key.problem() is None for key in keys)
        nursery.cancel_scope.cancel()


async def test_a_key_manager_that_refuses_a_key_stops_start_up(thread_clock):
    manager = FakeManager()
    key = held_key(manager)
    manager.failure = KeyManagerRefused("no AES key with that label on token 'trios3'")
    async with trio.open_nursery() as nursery:
        with pytest.raises(KeysRefused) as caught:
            await keeping(nursery, [key], manager)
    text = str(caught.value)
    assert text == (
        f"master key {key.key_id}: HSM key 'kek': no AES key with that label on token 'trios3'"
    )


async def test_a_key_manager_that_does_not_answer_lets_start_up_go_on_not_ready(thread_clock):
    manager = FakeManager()
    key = held_key(manager)
    manager.failure = KeyManagerUnavailable("no token 'trios3' (is the HSM there?)")
    async with trio.open_nursery() as nursery:
        await keeping(nursery, [key], manager)
        assert "no token 'trios3' (is the HSM there?)" in key.problem()
        await trio.sleep(4.9)
        assert manager.calls == 1
        await trio.sleep(0.2)  # retried every 5 s (or half the cache time, if less)
        assert manager.calls == 2 and key.problem() is not None
        manager.failure = None
        await trio.sleep(5)
        assert manager.calls == 3 and key.problem() is None
        nursery.cancel_scope.cancel()


async def test_a_hung_key_manager_times_out_holds_one_thread_and_the_key_expires(thread_clock):
    """A call that never returns is abandoned after --kms-timeout (a thread cannot be
    cancelled); the calls after it wait for it rather than pile up threads; the copy in memory
    serves until its time is up, then the key is 503; once the key manager answers again, the
    key is back."""
    manager = FakeManager()
    key = held_key(manager)
    async with trio.open_nursery() as nursery:
        await keeping(nursery, [key], manager, cache_seconds=10, timeout=1)
        fresh_until = trio.current_time() + 10
        manager.hang = True
        await trio.sleep(6.5)  # the refresh at 5 s hangs, and is given up at 6 s
        assert manager.running == 1 and key.last_failure == "HSM key 'kek': no answer within 1 s"
        while trio.current_time() < fresh_until - 0.1:
            assert key.problem() is None  # the copy in memory is still good
            await trio.sleep(0.5)
        await trio.sleep_until(fresh_until)
        assert key.problem() == (
            f"master key {key.key_id} is not available: HSM key 'kek': no answer within 1 s"
        )
        await trio.sleep(2.5)  # the retry at 11 s waits for the hung call's thread, in vain
        assert key.last_failure == (
            "HSM key 'kek': no answer within 1 s (its previous call has not returned yet)"
        )
        assert (manager.calls, manager.most_at_once) == (2, 1)  # the load, the hung call
        manager.hang = False
        manager.release.set()  # the HSM answers at last
        await trio.sleep(5)  # the next retry, at 17 s
        assert key.problem() is None and manager.most_at_once == 1
        nursery.cancel_scope.cancel()


# -- a real SoftHSM2 token and a real PyKMIP server -------------------------------------------


@dataclass
class KeyManagerUnderTest:
    """A key manager the fixtures started, and how trios3 reaches it: ``env`` for ``keygen``
    and ``serve``; ``take_away`` and ``bring_back`` make it unavailable and available again
    (``slow``: it hangs instead of refusing)."""

    kind: str
    env: dict[str, str]
    key_name: str
    take_away: Callable[[], None]
    bring_back: Callable[[], None]
    calls_seen: Callable[[], int] | None = None  # decrypts the server itself logged


def trios3(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """A ``trios3`` command run by this Python, with ``env`` over a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    return subprocess.run(
        [sys.executable, "-m", "trios3.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory) -> Iterator[KeyManagerUnderTest]:
    """A SoftHSM2 token of its own (``SOFTHSM2_CONF`` pointing at a token directory in the
    test's tmp dir), with an AES key that ``trios3 keygen --create-key`` made on it. Taken away
    by moving the token directory away, as a failed HSM would be."""
    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (the [hsm] extra)")
    if shutil.which("softhsm2-util") is None or not SOFTHSM.is_file():
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")
    home = tmp_path_factory.mktemp("softhsm")
    tokens = home / "tokens"
    tokens.mkdir()
    conf = home / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "trios3",
            "--pin",
            PIN,
            "--so-pin",
            "13579",
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    env |= {
        "TRIOS3_PKCS11_MODULE": str(SOFTHSM),
        "TRIOS3_PKCS11_TOKEN_LABEL": "trios3",
        "TRIOS3_PKCS11_PIN": PIN,
    }
    for label in ("kek", "other"):
        made = trios3(
            "keygen",
            "--pkcs11",
            "--create-key",
            "--pkcs11-key-label",
            label,
            str(home / f"{label}.keys"),
            env=env,
        )
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith(f"created the HSM key '{label}'\n")
    away = home / "tokens.away"
    yield KeyManagerUnderTest(
        "pkcs11",
        env,
        "kek",
        take_away=lambda: tokens.rename(away),
        bring_back=lambda: away.rename(tokens),
    )


KMIP_SERVER = """
import sys
from kmip.services.server import KmipServer

directory, port = sys.argv[1], int(sys.argv[2])
server = KmipServer(
    hostname="127.0.0.1",
    port=port,
    certificate_path=f"{directory}/server.pem",
    key_path=f"{directory}/server-key.pem",
    ca_path=f"{directory}/ca.pem",
    auth_suite="TLS1.2",
    config_path=None,
    log_path=f"{directory}/server.log",
    enable_tls_client_auth=True,
    logging_level="INFO",
    database_path=f"{directory}/keys.sqlite",
)
with server:
    server.serve()
"""


def mutual_tls_files(directory: Path) -> None:
    """A CA, a server certificate for localhost and 127.0.0.1 and a client certificate (CN
    trios3, the owner of the keys it creates), each with its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def save(stem: str, key, cert) -> None:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("trios3-test KMIP CA"))
        .issuer_name(name("trios3-test KMIP CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    for stem, usage, names in (
        (
            "server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name("trios3" if stem == "client" else "localhost"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        save(stem, key, builder.sign(ca_key, hashes.SHA256()))


class KmipServerProcess:
    """PyKMIP's own server over mutual TLS, in a process of its own, on a port outside the
    ephemeral range (it is stopped and started again there), its keys in a SQLite file that
    outlives it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        [self.port] = reserved_ports(1)
        self.process: subprocess.Popen | None = None
        self.paused = False

    def start(self) -> None:
        with open(self.directory / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-W",
                    "ignore",
                    "-c",
                    KMIP_SERVER,
                    str(self.directory),
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, self.process, "the PyKMIP server", timeout=60)

    def stop(self) -> None:
        """SIGINT: it stops at once (SIGTERM waits for its accept loop's 10 s timeout)."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, and nothing answers them."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def decrypts(self) -> int:
        """Decrypt operations the server has logged."""
        log = self.directory / "server.log"
        return log.read_text().count("Processing operation: Decrypt") if log.exists() else 0


@pytest.fixture(scope="module")
def kmip_server(tmp_path_factory) -> Iterator[KmipServerProcess]:
    pytest.importorskip("kmip", reason="PyKMIP is not installed (the [hsm] extra)")
    directory = tmp_path_factory.mktemp("kmip")
    mutual_tls_files(directory)
    server = KmipServerProcess(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kmip(kmip_server) -> KeyManagerUnderTest:
    """The PyKMIP server and an AES key that ``trios3 keygen --kmip --create-key`` made on it;
    taken away by stopping the server (started again on the same port and keys)."""
    d = kmip_server.directory
    env = {
        "TRIOS3_KMIP_HOST": "localhost",  # the name its certificate is verified against
        "TRIOS3_KMIP_PORT": str(kmip_server.port),
        "TRIOS3_KMIP_CERT": str(d / "client.pem"),
        "TRIOS3_KMIP_KEY": str(d / "client-key.pem"),
        "TRIOS3_KMIP_CA": str(d / "ca.pem"),
    }
    made = trios3("keygen", "--kmip", "--create-key", str(d / "first.keys"), env=env)
    assert made.returncode == 0, made.stderr
    [uid] = re.findall(r"created the KMIP key '([^']+)'", made.stdout)
    return KeyManagerUnderTest(
        "kmip", env, uid, kmip_server.stop, kmip_server.start, kmip_server.decrypts
    )


@pytest.fixture(params=["pkcs11", "kmip"])
def manager(request) -> KeyManagerUnderTest:
    """Each test with the SoftHSM2 token, then with the PyKMIP server."""
    return request.getfixturevalue("softhsm" if request.param == "pkcs11" else "kmip")


@pytest.fixture
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "keystores")


def key_file(manager: KeyManagerUnderTest, path: Path, *older: str) -> str:
    """A key file whose primary key the key manager keeps (``trios3 keygen --pkcs11/--kmip``),
    with ``older`` base64 keys after it; the new key's id."""
    flag, name_flag = (
        ("--pkcs11", "--pkcs11-key-label")
        if manager.kind == "pkcs11"
        else ("--kmip", "--kmip-key-id")
    )
    made = trios3("keygen", flag, name_flag, manager.key_name, str(path), env=manager.env)
    assert made.returncode == 0, made.stderr
    line = path.read_text().strip()
    assert line.startswith(f"{manager.kind}:") and "\n" not in line
    if older:
        path.write_text(line + "\n" + "".join(f"{key}\n" for key in older))
    return ManagedKey.parse(line).key_id


def proxy_with(manager, seaweedfs, directory: Path, keys: Path, *extra: str, ttl: float = 300):
    """``trios3 serve`` with this key file and key manager, logging at DEBUG (each call to
    the key manager is a line)."""
    directory.mkdir(parents=True, exist_ok=True)
    timeout = min(2.0, ttl / 4)
    return start_proxy(
        seaweedfs,
        directory,
        extra=[
            "--key-file",
            str(keys),
            "--kms-cache-seconds",
            f"{ttl:g}",
            "--kms-timeout",
            f"{timeout:g}",
            "--log-level",
            "DEBUG",
            *extra,
        ],
        env=manager.env,
        log_path=directory / f"proxy-{time.monotonic_ns()}.log",
    )


def ready(endpoint) -> httpx.Response:
    return httpx.get(endpoint.url + "/readyz", timeout=10)


def calls(proxy) -> int:
    return proxy.log_path.read_text().count(CALL)


def put_multipart(s3, bucket: str, key: str, parts: list[bytes]) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
        )["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
    )


def get(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def refused(call) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_hsm_key_cannot_be_extracted(softhsm, monkeypatch):
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11.exceptions import AttributeSensitive, KeyUnextractable, PKCS11Error

    monkeypatch.setenv("SOFTHSM2_CONF", softhsm.env["SOFTHSM2_CONF"])
    lib = pkcs11.lib(str(SOFTHSM))
    lib.reinitialize()  # read SOFTHSM2_CONF now, whatever loaded the module before
    with lib.get_token(token_label="trios3").open(user_pin=PIN, rw=True) as session:
        key = session.get_key(
            label="kek", key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
        )
        assert (key[Attribute.EXTRACTABLE], key[Attribute.NEVER_EXTRACTABLE]) == (False, True)
        assert (key[Attribute.SENSITIVE], key[Attribute.ALWAYS_SENSITIVE]) == (True, True)
        assert (key[Attribute.TOKEN], key[Attribute.VALUE_LEN]) == (True, 32)
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
        wrapping = session.generate_key(
            KeyType.AES,
            256,
            label="wrapper",
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
        )
        with pytest.raises(KeyUnextractable):
            wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(PKCS11Error):
            key[Attribute.EXTRACTABLE] = True  # once false, never true again


@pytest.mark.integration
def test_a_pin_the_token_refused_is_never_tried_again(softhsm, monkeypatch):
    from trios3.keystores import PinRefused, Pkcs11Manager

    monkeypatch.setenv("SOFTHSM2_CONF", softhsm.env["SOFTHSM2_CONF"])
    manager = Pkcs11Manager(str(SOFTHSM), "trios3", "000000")
    with pytest.raises(PinRefused, match=r"^token 'trios3' refused the PIN \(PinIncorrect\)$"):
        manager.decrypt("kek", bytes(60), b"")
    manager._pin = PIN  # were it tried again, it would now log in
    with pytest.raises(PinRefused, match="is not asked again: an HSM locks a PIN after failed"):
        manager.decrypt("kek", bytes(60), b"")


@pytest.mark.integration
def test_objects_read_back_and_after_a_restart_and_gets_never_call_the_key_manager(
    manager, seaweedfs, bucket, tmp_path
):
    older_text = base64.b64encode(MasterKey.generate()).decode()
    (tmp_path / "older").mkdir()
    with_older = start_proxy(seaweedfs, tmp_path / "older", master_key=older_text)
    try:
        legacy = os.urandom(70_000)
        with_older.endpoint.client().put_object(Bucket=bucket, Key="legacy", Body=legacy)
    finally:
        with_older.stop()
    keys = tmp_path / "master.keys"
    key_id = key_file(manager, keys, older_text)
    single, parts = os.urandom(300_000), [os.urandom(5 * MiB), os.urandom(1000)]
    backend = seaweedfs.client()

    proxy = proxy_with(manager, seaweedfs, tmp_path / "first", keys)
    try:
        assert ready(proxy.endpoint).text == "ready\n"
        assert calls(proxy) == 1  # the start-up's decrypt
        s3 = proxy.endpoint.client()
        s3.put_object(Bucket=bucket, Key="single", Body=single)
        put_multipart(s3, bucket, "multipart", parts)
        for name in ("single", "multipart"):
            assert backend.head_object(Bucket=bucket, Key=name)["Metadata"]["trios3-kid"] == key_id
        server_before = manager.calls_seen() if manager.calls_seen else None
        for _ in range(20):
            assert get(s3, bucket, "single") == single
            assert get(s3, bucket, "multipart") == b"".join(parts)
            assert get(s3, bucket, "legacy") == legacy
            assert (
                s3.get_object(Bucket=bucket, Key="single", Range="bytes=1000-1999")["Body"].read()
                == single[1000:2000]
            )
        # 80 GETs and the writes before them: not one call to the key manager.
        assert calls(proxy) == 1
        if manager.calls_seen:
            assert manager.calls_seen() == server_before
    finally:
        proxy.stop()

    restarted = proxy_with(manager, seaweedfs, tmp_path / "second", keys)
    try:
        s3 = restarted.endpoint.client()
        assert get(s3, bucket, "single") == single
        assert get(s3, bucket, "multipart") == b"".join(parts)
        assert get(s3, bucket, "legacy") == legacy
    finally:
        restarted.stop()
    banner = restarted.log_path.read_text()
    assert "master keys: 1 of 2 kept by the " in banner
    assert (
        f"master key {key_id}: decrypted by the {ManagedKey.parse(keys.read_text().split()[0]).describe()}"
        in banner
    )


def outage(manager, seaweedfs, bucket, tmp_path, take_away, bring_back, reason: str) -> None:
    """A proxy with ``--kms-cache-seconds`` TTL serves through ``take_away()`` until its copy
    of the key expires, then answers 503 (readiness and requests), and serves again once
    ``bring_back()`` lets the key manager answer."""
    keys = tmp_path / "master.keys"
    key_id = key_file(manager, keys)
    data = os.urandom(200_000)
    proxy = proxy_with(manager, seaweedfs, tmp_path / "proxy", keys, ttl=TTL)
    try:
        s3 = proxy.endpoint.client()
        s3.put_object(Bucket=bucket, Key="kept", Body=data)
        until(lambda: calls(proxy) >= 2, "a refresh after the start-up's")
        take_away()
        gone = time.monotonic()
        try:
            # The last refresh was at most TTL/2 ago: the copy in memory still serves.
            assert get(s3, bucket, "kept") == data
            answer = until(
                lambda: (r := ready(proxy.endpoint)).status_code == 503 and r,
                "/readyz not ready",
                timeout=TTL + 10,
            )
            assert time.monotonic() - gone >= TTL / 2 - 0.3
            assert answer.text.startswith(f"not ready: master key {key_id} is not available: ")
            assert reason in answer.text, answer.text
            for call in (
                lambda: s3.get_object(Bucket=bucket, Key="kept"),
                lambda: s3.put_object(Bucket=bucket, Key="new", Body=b"x" * 1000),
            ):
                error = refused(call)
                assert error.response["Error"]["Code"] == "ServiceUnavailable"
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                assert "The key manager does not answer" in error.response["Error"]["Message"]
            assert httpx.get(proxy.endpoint.url + "/healthz").status_code == 200  # alive
        finally:
            bring_back()
        until(lambda: ready(proxy.endpoint).status_code == 200, "ready again")
        assert get(s3, bucket, "kept") == data
        s3.put_object(Bucket=bucket, Key="new", Body=b"x" * 1000)
        assert get(s3, bucket, "new") == b"x" * 1000
    finally:
        proxy.stop()
    log = proxy.log_path.read_text()
    assert re.search(
        f"WARNING trios3.keys master key {key_id}: (its copy has expired: requests that need "
        "this key get 503|.*; no copy in memory: requests that need this key get 503)",
        log,
    )
    assert "Traceback" not in log


@pytest.mark.integration
def test_the_key_manager_down_is_503_once_the_copy_expires_and_served_again_once_back(
    manager, seaweedfs, bucket, tmp_path
):
    reason = "no token 'trios3'" if manager.kind == "pkcs11" else "Connection refused"
    if manager.kind == "pkcs11":
        reason = "token 'trios3'"  # SoftHSM2 without its token directory: GeneralError
    outage(manager, seaweedfs, bucket, tmp_path, manager.take_away, manager.bring_back, reason)


@pytest.mark.integration
def test_a_hung_kms_is_503_once_the_copy_expires_and_served_again_once_it_answers(
    kmip, kmip_server, seaweedfs, bucket, tmp_path
):
    outage(
        kmip,
        seaweedfs,
        bucket,
        tmp_path,
        kmip_server.pause,
        kmip_server.resume,
        "no answer within",
    )


@pytest.mark.integration
def test_started_while_the_key_manager_is_down_it_serves_not_ready_until_it_answers(
    manager, seaweedfs, bucket, tmp_path
):
    keys = tmp_path / "master.keys"
    key_id = key_file(manager, keys)
    manager.take_away()
    try:
        proxy = proxy_with(manager, seaweedfs, tmp_path / "proxy", keys, ttl=TTL)
    except BaseException:
        manager.bring_back()
        raise
    try:
        try:
            answer = ready(proxy.endpoint)
            assert answer.status_code == 503
            assert answer.text.startswith(f"not ready: master key {key_id} is not available: ")
            error = refused(
                lambda: proxy.endpoint.client().put_object(Bucket=bucket, Key="k", Body=b"x")
            )
            assert error.response["Error"]["Code"] == "ServiceUnavailable"
        finally:
            manager.bring_back()
        until(lambda: ready(proxy.endpoint).status_code == 200, "ready once it answers")
        s3 = proxy.endpoint.client()
        s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 10)
        assert get(s3, bucket, "k") == b"x" * 10
    finally:
        proxy.stop()


def serve_once(manager, seaweedfs, keys: Path, **env: str) -> subprocess.CompletedProcess:
    """``trios3 serve`` with this key file, expected to stop at start-up."""
    [port] = reserved_ports(1)
    return trios3(
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        seaweedfs.url,
        "--key-file",
        str(keys),
        env={
            **manager.env,
            "TRIOS3_BACKEND_ACCESS_KEY_ID": seaweedfs.access_key,
            "TRIOS3_BACKEND_SECRET_ACCESS_KEY": seaweedfs.secret_key,
            "TRIOS3_ACCESS_KEY_ID": "client",
            "TRIOS3_SECRET_ACCESS_KEY": "secret",
            **env,
        },
    )


@pytest.mark.integration
def test_a_key_the_key_manager_refuses_stops_start_up_with_one_line(manager, seaweedfs, tmp_path):
    keys = tmp_path / "master.keys"
    key_file(manager, keys)
    line = ManagedKey.parse(keys.read_text())
    cases = [("missing" if manager.kind == "pkcs11" else "424242", {})]
    if manager.kind == "pkcs11":
        cases += [("other", {}), ("kek", {"TRIOS3_PKCS11_PIN": "000000"})]
    expected = {
        "missing": "HSM key 'missing': no AES key with that label on token 'trios3'",
        "424242": "KMIP key '424242': KMIP server localhost:",
        "other": "HSM key 'other': token 'trios3' does not decrypt it (GeneralError): another key, or a damaged line",
        "kek": "HSM key 'kek': token 'trios3' refused the PIN (PinIncorrect)",
    }
    for name, env in cases:
        wrong = tmp_path / f"{name}.keys"
        wrong.write_text(ManagedKey(line.manager, name, line.key_id, line.wrapped).line() + "\n")
        result = serve_once(manager, seaweedfs, wrong, **env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"trios3: error: cannot serve: master key {line.key_id}: ")
        assert expected[name] in result.stderr
        if name == "424242":
            assert "ITEM_NOT_FOUND" in result.stderr
    # keygen says the same of a key that is not there
    flag, name_flag = (
        ("--pkcs11", "--pkcs11-key-label")
        if manager.kind == "pkcs11"
        else ("--kmip", "--kmip-key-id")
    )
    missing = "missing" if manager.kind == "pkcs11" else "424242"
    made = trios3("keygen", flag, name_flag, missing, str(tmp_path / "never.keys"), env=manager.env)
    assert (made.returncode, made.stderr.count("\n")) == (2, 1), made.stderr
    assert expected[missing] in made.stderr
    assert not (tmp_path / "never.keys").exists()


@pytest.mark.integration
def test_rewrap_moves_objects_to_a_key_the_hsm_keeps(softhsm, seaweedfs, bucket, tmp_path):
    older_text = base64.b64encode(MasterKey.generate()).decode()
    (tmp_path / "older").mkdir()
    with_older = start_proxy(seaweedfs, tmp_path / "older", master_key=older_text)
    data = {f"o{i}": os.urandom(10_000 + i) for i in range(3)}
    try:
        for name, body in data.items():
            with_older.endpoint.client().put_object(Bucket=bucket, Key=name, Body=body)
    finally:
        with_older.stop()
    keys = tmp_path / "master.keys"
    key_id = key_file(softhsm, keys, older_text)
    env = {
        **softhsm.env,
        "TRIOS3_BACKEND": seaweedfs.url,
        "TRIOS3_BACKEND_ACCESS_KEY_ID": seaweedfs.access_key,
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY": seaweedfs.secret_key,
    }
    result = trios3("rewrap", f"s3://{bucket}", "--key-file", str(keys), env=env)
    assert result.returncode == 0, result.stderr
    assert "3 rewrapped" in result.stdout, result.stdout
    backend = seaweedfs.client()
    for name in data:
        assert backend.head_object(Bucket=bucket, Key=name)["Metadata"]["trios3-kid"] == key_id
    keys.write_text(keys.read_text().split()[0] + "\n")  # the older key retired
    proxy = proxy_with(softhsm, seaweedfs, tmp_path / "proxy", keys)
    try:
        for name, body in data.items():
            assert get(proxy.endpoint.client(), bucket, name) == body
    finally:
        proxy.stop()
    # Without the HSM, rewrap stops with one line rather than fail every object.
    result = trios3(
        "rewrap",
        f"s3://{bucket}",
        "--key-file",
        str(keys),
        env={**env, "TRIOS3_PKCS11_PIN": "000000"},
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert "rewrap: master key" in result.stderr and "refused the PIN" in result.stderr
