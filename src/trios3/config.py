"""Configuration: one typed, immutable :class:`Config`, built once at start-up and passed down.

hypercorn's ``Config`` is the model: one object, each setting a typed field with its default.
A field that can be given also carries how (:func:`option`, :func:`switch`, :func:`variable`):
its flag, its ``TRIOS3_<OPTION>`` variable, its help and the parser that turns the text a user
types into the field's value. The command lines of ``serve`` and of the offline tools are
derived from those fields, so each default is written once, as text, beside its flag. Nothing
reads the environment after :func:`build_config` (or :func:`tool_settings`).

Each part of the server gets its view of the Config and nothing more: :meth:`Config.backend`
for the backend client (:class:`BackendSettings`), :meth:`Config.proxy` for the app
(:class:`ProxySettings`). The views have no defaults of their own: they are always made from a
Config, whose defaults they then share. With ``--workers N``, each worker serves its share of
the Config (:meth:`Config.worker_share`): the limits given are totals.

Invalid configuration raises :class:`ConfigError` with one line that says what to fix.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import ipaddress
import logging
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trios3.core.access import ADMIN, Credential
from trios3.core.errors import ConfigError
from trios3.core.keys import Keyring, MasterKey, WrappingKey
from trios3.credentials import BucketKey, load_bucket_keys, load_credentials
from trios3.keystores import HeldKey, KeystoreSettings, ManagedKey, is_managed_line


def env_name(option: str) -> str:
    return "TRIOS3_" + option.upper().replace("-", "_")


_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Option:
    """How a :class:`Config` field is given: a ``--flag``, whose default is its variable's value
    if that is set, else ``default``; or, with no flag, the variable alone."""

    flag: str | None
    variable: str
    default: str | None  # as a user would type it, and as --help shows it
    help: str
    parse: Callable[[Any, str], Any] | None = None  # (text, flag) -> value, or ConfigError
    switch: bool = False  # no value: on if given, or if its variable is 1/true/yes/on
    tool: bool = False  # also an option of the offline tools (rewrap, inspect)
    keystore: bool = False  # also an option of keygen: how to reach an HSM or KMS

    def value(self, text: Any) -> Any:
        """The field's value for ``text`` as given."""
        return text if self.parse is None else self.parse(text, self.flag or self.variable)

    def given(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
        """What was given: the flag's text (its variable's when the flag is absent), or the
        variable's when there is no flag."""
        if self.flag is None:
            return environ.get(self.variable)
        return getattr(args, self.flag.replace("-", "_"))

    def add_to(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        if self.flag is None:
            return
        if self.switch:
            parser.add_argument(
                f"--{self.flag}",
                action="store_true",
                default=environ.get(self.variable, "").strip().lower() in _TRUE,
                help=f"{self.help} [{self.variable}=1]",
            )
        else:
            parser.add_argument(
                f"--{self.flag}",
                default=environ.get(self.variable, self.default),
                help=f"{self.help} [{self.variable}; default {self.default}]",
            )


def option(
    flag: str,
    default: str | None,
    help: str,
    parse: Callable[[Any, str], Any] | None = None,
    *,
    tool: bool = False,
    keystore: bool = False,
) -> Any:
    """A field given as ``--flag`` or ``TRIOS3_<FLAG>``; its default is ``default`` parsed."""
    spec = Option(flag, env_name(flag), default, help, parse, tool=tool, keystore=keystore)
    return field(default=spec.value(default), metadata={"option": spec})


def switch(flag: str, help: str) -> Any:
    """A field that is off unless ``--flag`` is given or ``TRIOS3_<FLAG>`` is 1/true/yes/on."""
    spec = Option(flag, env_name(flag), None, help, switch=True)
    return field(default=False, metadata={"option": spec})


def variable(
    name: str, help: str, *, tool: bool = False, secret: bool = False, keystore: bool = False
) -> Any:
    """A field given only as the environment variable ``name`` (a secret: never a flag)."""
    spec = Option(None, name, None, help, tool=tool, keystore=keystore)
    return field(default=None, repr=not secret, metadata={"option": spec})


# -- parsers: (text as given, flag) -> value ---------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*(|b|kib|mib|gib|kb|mb|gb|k|m|g)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2}
_UNITS |= {"mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$")
_URL = re.compile(r"^https?://[^/\s]+(/.*)?$")


def parse_size(text: str, option: str) -> int:
    match = _SIZE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"--{option}: expected a size such as 64MiB, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_seconds(text, option: str) -> float:
    try:
        seconds = float(text)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"--{option}: expected a positive number of seconds, got {text!r}")
    return seconds


def parse_count(text, option: str) -> int:
    text = str(text)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--{option}: expected a positive number, got {text!r}")
    return int(text)


def _parse_listen(text: str | None, option: str) -> str:
    if not _LISTEN.match(text or ""):
        raise ConfigError(f"--{option}: expected HOST:PORT, got {text!r}")
    return text  # type: ignore[return-value]


def _parse_url(text: str | None, option: str) -> str | None:
    """An http(s) URL, or nothing (None or empty: for ``--backend``, the embedded one)."""
    if text and not _URL.match(text):
        raise ConfigError(f"--{option}: expected an http(s):// URL, got {text!r}")
    return text


def _parse_log_level(text: str, option: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise ConfigError(f"--{option}: expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


def _parse_log_format(text: str, option: str) -> str:
    if text not in ("text", "json"):
        raise ConfigError(f"--{option}: expected text or json, got {text!r}")
    return text


def _parse_backend_checksum(text: str, option: str) -> bool:
    if text not in ("crc32c", "off"):
        raise ConfigError(f"--{option}: expected crc32c or off, got {text!r}")
    return text == "crc32c"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_hostnames(text: str | None, option: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower().rstrip(".") for n in (text or "").split(",") if n.strip())
    for name in names:
        if not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name
        ):
            raise ConfigError(f"--{option}: not a host name: {name!r}")
    return names


def _parse_port(text, option: str) -> int:
    text = str(text)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"--{option}: expected a port number, got {text!r}")
    return int(text)


def _parse_path(text: str, option: str) -> Path:
    return Path(text)


def _parse_file(text: str | None, option: str) -> str | None:
    """A file that must exist now, or nothing (None or empty)."""
    if text and not Path(text).is_file():
        raise ConfigError(f"--{option}: no such file: {text}")
    return text or None


# -- the Config and its views ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything ``trios3 serve`` is told, typed; :func:`build_config` makes it from a command
    line, validated as a whole. Its fields are in ``--help`` order.

    Every field has a default, as in hypercorn's Config, so tests build one directly
    (``Config(memory_budget=1 << 20)``). The fields made with :func:`option`, :func:`switch` and
    :func:`variable` are the command line; the last three are what start-up derives from it:
    the client credentials and master keys loaded from their files or the environment, and
    what the embedded mode created on this run.
    """

    listen: str = option("listen", "127.0.0.1:8080", "HOST:PORT to serve S3 on", _parse_listen)
    backend_url: str | None = option(
        "backend",
        None,
        "URL of the backend S3 endpoint (default: an embedded SeaweedFS)",
        _parse_url,
        tool=True,
    )
    backend_region: str = option(
        "backend-region", "us-east-1", "region the backend is signed for", tool=True
    )
    backend_ca_bundle: str | None = option(
        "backend-ca-bundle",
        None,
        "PEM file of the CA certificates an HTTPS backend is verified with (default: the system's)",
        _parse_file,
        tool=True,
    )
    backend_checksum: bool = option(
        "backend-checksum",
        "crc32c",
        "crc32c: uploads carry a checksum of their ciphertext the backend verifies before "
        "storing (aws-chunked with a trailer); off: for a backend that cannot",
        _parse_backend_checksum,
        tool=True,
    )
    backend_access_key: str | None = variable(
        "TRIOS3_BACKEND_ACCESS_KEY_ID", "the backend's access key id", tool=True
    )
    backend_secret_key: str | None = variable(
        "TRIOS3_BACKEND_SECRET_ACCESS_KEY", "the backend's secret key", tool=True, secret=True
    )
    credentials_file: str | None = option(
        "credentials", None, "TOML file of client credentials the proxy accepts"
    )
    key_file: str | None = option(
        "key-file",
        None,
        "file of master keys, one a line: base64, or pkcs11:/kmip: lines of keys an HSM or a "
        "KMS keeps (trios3 keygen --pkcs11/--kmip); or set TRIOS3_MASTER_KEY",
        tool=True,
    )
    pkcs11_module: str | None = option(
        "pkcs11-module",
        None,
        "the HSM's PKCS#11 library, for pkcs11: keys (SoftHSM2's is "
        "/usr/lib/softhsm/libsofthsm2.so)",
        _parse_file,
        tool=True,
        keystore=True,
    )
    pkcs11_token_label: str | None = option(
        "pkcs11-token-label",
        None,
        "label of the HSM token that keeps the keys",
        tool=True,
        keystore=True,
    )
    pkcs11_pin: str | None = variable(
        "TRIOS3_PKCS11_PIN", "the token's user PIN", tool=True, secret=True, keystore=True
    )
    kmip_host: str | None = option(
        "kmip-host",
        None,
        "host name of the KMIP server, for kmip: keys (its certificate must name it)",
        tool=True,
        keystore=True,
    )
    kmip_port: int = option(
        "kmip-port", "5696", "port of the KMIP server", _parse_port, tool=True, keystore=True
    )
    kmip_cert: str | None = option(
        "kmip-cert",
        None,
        "PEM client certificate trios3 presents to the KMIP server",
        _parse_file,
        tool=True,
        keystore=True,
    )
    kmip_key: str | None = option(
        "kmip-key", None, "PEM private key of --kmip-cert", _parse_file, tool=True, keystore=True
    )
    kmip_ca: str | None = option(
        "kmip-ca",
        None,
        "PEM CA certificates the KMIP server is verified with (default: the system's)",
        _parse_file,
        tool=True,
        keystore=True,
    )
    kms_cache_seconds: float = option(
        "kms-cache-seconds",
        "300",
        "seconds a master key the HSM/KMS decrypted stays in memory, decrypted again at half "
        "of it: how long it keeps serving while the HSM/KMS is down, and after it is revoked "
        "there",
        parse_seconds,
        tool=True,
    )
    kms_timeout: float = option(
        "kms-timeout",
        "10",
        "seconds one HSM/KMS call may take (at most half of --kms-cache-seconds)",
        parse_seconds,
        tool=True,
        keystore=True,
    )
    tls_cert: str | None = option("tls-cert", None, "PEM certificate: serve HTTPS")
    tls_key: str | None = option("tls-key", None, "PEM private key for --tls-cert")
    data_dir: Path = option(  # noqa: RUF009 (a Path is not changed in place)
        "data-dir",
        "./trios3-data",
        "where the embedded backend keeps its data and keys",
        _parse_path,
    )
    hostnames: tuple[str, ...] = option(
        "hostname",
        None,
        "names clients reach the proxy by, comma-separated (default: localhost, this "
        "machine's names and the --listen host): without --virtual-host-domain, a Host that "
        "is BUCKET.<one of them> is refused rather than read as path style",
        _parse_hostnames,
    )
    virtual_host_domain: str | None = option(
        "virtual-host-domain", None, "serve virtual-hosted-style requests for BUCKET.<domain>"
    )
    memory_budget: int = option(
        "memory-budget", "64MiB", "bytes of body buffers all requests may hold together", parse_size
    )
    admission_timeout: float = option(
        "admission-timeout",
        "30",
        "seconds a request may wait for the budget before 503",
        parse_seconds,
    )
    header_timeout: float = option(
        "header-timeout",
        "20",
        "seconds a client has to send a request's head once it has begun",
        parse_seconds,
    )
    body_timeout: float = option(
        "body-timeout",
        "60",
        "seconds a client may pause while sending a request body",
        parse_seconds,
    )
    body_min_rate: int = option(
        "body-min-rate",
        "1KiB",
        "bytes a second a request body must average once --body-timeout seconds have passed",
        parse_size,
    )
    send_timeout: float = option(
        "send-timeout",
        "120",
        "seconds a client may leave response bytes unread (TCP_USER_TIMEOUT)",
        parse_seconds,
    )
    max_requests: int = option(
        "max-requests", "256", "requests in flight at once; more get 503 SlowDown", parse_count
    )
    max_connections: int = option(
        "max-connections",
        "1024",
        "client connections at once; more wait to be accepted",
        parse_count,
    )
    backend_timeout: float = option(
        "backend-timeout",
        "300",
        "seconds the backend may stay silent in a request",
        parse_seconds,
        tool=True,
    )
    shutdown_timeout: float = option(
        "shutdown-timeout",
        "30",
        "seconds in-flight requests may take to finish after SIGTERM",
        parse_seconds,
    )
    workers: int = option(
        "workers",
        "1",
        "worker processes sharing the listening socket, each with 1/N of --memory-budget, "
        "--max-requests and --max-connections",
        parse_count,
    )
    require_encrypted: bool = switch(
        "require-encrypted", "refuse objects the proxy did not encrypt instead of serving them"
    )
    log_level: str = option("log-level", "INFO", "logging level", _parse_log_level)
    log_format: str = option(
        "log-format", "text", "text or json (one JSON object per line)", _parse_log_format
    )
    # Derived at start-up, not given as such.
    # access key id -> its Credential (a bare secret: an admin of every bucket, for tests)
    credentials: Mapping[str, Credential | str] = field(default_factory=dict, repr=False)
    bucket_keys: tuple[BucketKey, ...] = ()  # the master keys buckets' objects go under
    keyring: Keyring | None = None  # None only in a Config made for its backend view alone
    held_keys: tuple[HeldKey, ...] = ()  # the keyring's keys an HSM or KMS keeps
    generated: tuple[str, ...] = ()  # what the embedded mode created on this run

    def backend(self) -> BackendSettings:
        """The backend client's view.

        A request may hold two backend connections at once (a streaming GET of a multipart
        object and the read of a part header): the pool, two connections for each request
        that may be in flight and a few more, must never be what a request waits on.
        """
        if not self.backend_url:
            raise ValueError("no backend URL: the embedded backend gives it (with_backend)")
        return BackendSettings(
            url=self.backend_url,
            region=self.backend_region,
            access_key=self.backend_access_key or "",
            secret_key=self.backend_secret_key or "",
            max_connections=2 * self.max_requests + 8,
            timeout=self.backend_timeout,
            ca_bundle=self.backend_ca_bundle,
            checksum=self.backend_checksum,
        )

    def keystore(self) -> KeystoreSettings:
        """The key managers' view: how to reach the HSM or KMS that keeps ``held_keys``."""
        return KeystoreSettings(
            pkcs11_module=self.pkcs11_module,
            pkcs11_token_label=self.pkcs11_token_label,
            pkcs11_pin=self.pkcs11_pin,
            kmip_host=self.kmip_host,
            kmip_port=self.kmip_port,
            kmip_cert=self.kmip_cert,
            kmip_key=self.kmip_key,
            kmip_ca=self.kmip_ca,
            timeout=self.kms_timeout,
            cache_seconds=self.kms_cache_seconds,
        )

    def proxy(self) -> ProxySettings:
        """The app's view: what it needs to answer S3 requests."""
        return self._proxy(self.backend())

    def _proxy(self, backend: BackendSettings) -> ProxySettings:
        if self.keyring is None:
            raise ValueError("a Config without a keyring cannot serve")
        return ProxySettings(
            credentials={
                access: value if isinstance(value, Credential) else Credential(access, value, ADMIN)
                for access, value in self.credentials.items()
            },
            bucket_keys=self.bucket_keys,
            keyring=self.keyring,
            backend=backend,
            memory_budget=self.memory_budget,
            admission_timeout=self.admission_timeout,
            virtual_host_domain=self.virtual_host_domain,
            own_hosts=self.own_hosts(),
            body_timeout=self.body_timeout,
            body_min_rate=self.body_min_rate,
            max_requests=self.max_requests,
            require_encrypted=self.require_encrypted,
        )

    def own_hosts(self) -> frozenset[str]:
        """The names the proxy is reached by: ``--hostname``, or by default localhost, this
        machine's host name and fully qualified name, and the ``--listen`` host if a name."""
        if self.hostnames:
            return frozenset(self.hostnames)
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        host = self.listen.rpartition(":")[0].strip("[]").lower()
        if host and not _is_ip(host):
            names.add(host)
        return frozenset(n for n in names if n)

    def worker_share(self, slot: int) -> Config:
        """The Config of worker ``slot`` (0 to ``workers - 1``) of ``--workers``: its share of
        the memory budget, of the requests in flight and of the connections, each total
        divided by ``workers``; what the division leaves over goes one each to the first
        workers, so that the shares add up to the totals given."""
        if not 0 <= slot < self.workers:
            raise ValueError(f"no worker {slot} of {self.workers}")

        def share(total: int) -> int:
            return total // self.workers + (slot < total % self.workers)

        return dataclasses.replace(
            self,
            memory_budget=share(self.memory_budget),
            max_requests=share(self.max_requests),
            max_connections=share(self.max_connections),
        )

    def with_backend(self, url: str, region: str, access_key: str, secret_key: str) -> Config:
        """This Config with the backend the embedded mode started: its address and keys are
        known only once it runs."""
        return dataclasses.replace(
            self,
            backend_url=url,
            backend_region=region,
            backend_access_key=access_key,
            backend_secret_key=secret_key,
        )


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """The backend client's view of the Config (:meth:`Config.backend`)."""

    url: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    max_connections: int  # the connection pool's size
    timeout: float  # seconds the backend may stay silent mid-request
    ca_bundle: str | None  # PEM file of the CAs to verify an HTTPS backend (None: the system's)
    checksum: bool  # uploads framed with a CRC32C trailer the backend verifies

    @classmethod
    def with_defaults(
        cls, url: str, region: str, access_key: str, secret_key: str, **config: Any
    ) -> BackendSettings:
        """The view of a backend at ``url`` with Config's defaults for the rest, or the Config
        fields given (``backend_timeout=5``): how tests and scripts open a client without a
        command line."""
        return Config(
            backend_url=url,
            backend_region=region,
            backend_access_key=access_key,
            backend_secret_key=secret_key,
            **config,
        ).backend()


@dataclass(frozen=True, kw_only=True)
class ProxySettings:
    """The app's view of the Config (:meth:`Config.proxy`): what it needs to answer S3
    requests."""

    credentials: dict[str, Credential] = field(repr=False)  # by access key id
    bucket_keys: tuple[BucketKey, ...]  # the master keys buckets' objects are written under
    keyring: Keyring
    backend: BackendSettings  # for the client the app opens when it is given none
    memory_budget: int
    admission_timeout: float
    virtual_host_domain: str | None
    own_hosts: frozenset[str]  # the names the proxy is reached by (path style)
    body_timeout: float  # seconds a client may pause while sending a body
    body_min_rate: int  # bytes a second a body must average after body_timeout seconds
    max_requests: int  # requests in flight at once; more get 503 SlowDown at once
    require_encrypted: bool  # refuse objects without trios3 metadata

    @classmethod
    def with_defaults(
        cls,
        *,
        credentials: Mapping[str, Credential | str],
        keyring: Keyring,
        backend: BackendSettings,
        **config: Any,
    ) -> ProxySettings:
        """The view of an app with these credentials, keys and backend, and Config's defaults
        for the rest, or the Config fields given (``memory_budget=1 << 20``): how tests build
        an app without a command line."""
        return Config(credentials=credentials, keyring=keyring, **config)._proxy(backend)


def _options(*, tool: bool = False, keystore: bool = False) -> list[tuple[str, Option]]:
    """The given fields of Config, in order: ``serve``'s, the offline tools' (``tool``), or
    keygen's (``keystore``)."""
    specs = [(f.name, f.metadata.get("option")) for f in dataclasses.fields(Config)]
    return [
        (name, spec)
        for name, spec in specs
        if spec and (spec.tool or not tool) and (spec.keystore or not keystore)
    ]


def _given(args: argparse.Namespace, environ: Mapping[str, str], *, tool: bool) -> dict:
    """The given fields' values, each parsed: the first one not valid raises."""
    return {name: spec.value(spec.given(args, environ)) for name, spec in _options(tool=tool)}


def _variable(name: str) -> str:
    return Config.__dataclass_fields__[name].metadata["option"].variable


def add_serve_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``serve``'s options: every given field of :class:`Config`."""
    for _, spec in _options():
        spec.add_to(parser, environ)


def add_tool_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The options of the offline tools (rewrap, inspect): a backend and the keys."""
    for _, spec in _options(tool=True):
        spec.add_to(parser, environ)


def add_keystore_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """keygen's options for a key an HSM or KMS keeps: how to reach it."""
    for _, spec in _options(keystore=True):
        spec.add_to(parser, environ)


def keystore_settings(
    args: argparse.Namespace, environ: Mapping[str, str], kind: str
) -> KeystoreSettings:
    """How keygen reaches the HSM (``kind`` pkcs11) or KMS (kmip), checked."""
    given = {name: spec.value(spec.given(args, environ)) for name, spec in _options(keystore=True)}
    _check_keystore(given, {kind})
    return Config(**given).keystore()


_SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def _check_keystore(given: Mapping[str, Any], kinds: set[str]) -> None:
    """What the key managers of ``kinds`` need is given: one line for the first that is not."""
    if "pkcs11" in kinds:
        need = "pkcs11: keys need"
        if importlib.util.find_spec("pkcs11") is None:
            raise ConfigError(f"{need} python-pkcs11: pip install 'trios3[hsm]'")
        if not given["pkcs11_module"]:
            hint = f"; SoftHSM2's is {_SOFTHSM}" if Path(_SOFTHSM).is_file() else ""
            raise ConfigError(f"{need} --pkcs11-module, the HSM's PKCS#11 library{hint}")
        if not given["pkcs11_token_label"]:
            raise ConfigError(f"{need} --pkcs11-token-label, the label of the HSM's token")
        if not given["pkcs11_pin"]:
            raise ConfigError(f"{need} {_variable('pkcs11_pin')}, the token's user PIN")
    if "kmip" in kinds:
        need = "kmip: keys need"
        if importlib.util.find_spec("kmip") is None:
            raise ConfigError(f"{need} PyKMIP: pip install 'trios3[hsm]'")
        for name, what in (
            ("kmip_host", "the KMIP server's host name"),
            ("kmip_cert", "the client certificate"),
            ("kmip_key", "its private key"),
        ):
            if not given[name]:
                raise ConfigError(f"{need} --{name.replace('_', '-')}, {what}")
    cache = given.get("kms_cache_seconds")  # keygen keeps no key: it has no such option
    if kinds and cache is not None and given["kms_timeout"] * 2 > cache:
        raise ConfigError(
            f"--kms-timeout {given['kms_timeout']:g}: at most half of --kms-cache-seconds "
            f"({cache:g}), so that a refresh ends before the key expires"
        )


def _backend_keys_needed() -> ConfigError:
    return ConfigError(
        f"--backend needs {_variable('backend_access_key')} and {_variable('backend_secret_key')}"
    )


def tool_config(
    args: argparse.Namespace, environ: Mapping[str, str], *, keys_used: bool = True
) -> Config:
    """The Config of the offline tools; they need an explicit backend. ``keys_used``: the
    tool decrypts with keys an HSM or KMS keeps (rewrap does, inspect does not), so how to
    reach it is checked too."""
    given = _given(args, environ, tool=True)
    if not given["backend_url"]:
        raise ConfigError(f"--backend: expected an http(s):// URL, got {given['backend_url']!r}")
    if not (given["backend_access_key"] and given["backend_secret_key"]):
        raise _backend_keys_needed()
    keys = read_keys(given["key_file"], environ)
    if keys is None:
        raise ConfigError("no master key: give --key-file FILE or TRIOS3_MASTER_KEY")
    keyring, held = keys
    if keys_used:
        _check_keystore(given, {key.managed.manager for key in held})
    return Config(**given, keyring=keyring, held_keys=held)


def tool_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[BackendSettings, Keyring]:
    """The backend and keyring the offline tools work with (:func:`tool_config`)."""
    config = tool_config(args, environ)
    assert config.keyring is not None
    return config.backend(), config.keyring


def load_keyring(key_file: str | None, environ: Mapping[str, str]) -> Keyring | None:
    """The keyring of :func:`read_keys`, or None when no key is given."""
    keys = read_keys(key_file, environ)
    return None if keys is None else keys[0]


def read_keys(
    key_file: str | None, environ: Mapping[str, str]
) -> tuple[Keyring, tuple[HeldKey, ...]] | None:
    """The master keys from ``--key-file`` (one key per line; blank lines and ``#`` comments
    ignored) or ``TRIOS3_MASTER_KEY`` (keys separated by commas or spaces), and those of them
    an HSM or KMS keeps. The first key is the primary one, for new objects; the others keep
    decrypting older ones.

    A key is base64 (the key itself), or a key manager's line (``pkcs11:`` or ``kmip:``, see
    :mod:`trios3.keystores`): the intermediate key that an HSM or KMS key encrypted, with its
    key id. Such a key is a :class:`~trios3.keystores.HeldKey`, usable once the key manager
    has decrypted it (:func:`trios3.keystores.keep_keys_fresh`); reading the file asks it
    nothing."""
    text = environ.get("TRIOS3_MASTER_KEY")
    source = "TRIOS3_MASTER_KEY"
    if key_file:
        try:
            text = Path(key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"--key-file: cannot read {key_file}: {exc.strerror}") from exc
        source = f"--key-file {key_file}"
    if text is None:
        return None
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    entries = [e for line in lines for e in line.replace(",", " ").split()]
    if not entries:
        raise ConfigError(f"{source}: no master key in it")
    keys: list[WrappingKey] = []
    held: list[HeldKey] = []
    for number, entry in enumerate(entries, start=1):
        try:
            if is_managed_line(entry):
                held.append(HeldKey(ManagedKey.parse(entry)))
                keys.append(held[-1])
            else:
                keys.append(MasterKey.from_base64(entry))
        except ValueError as exc:
            raise ConfigError(f"{source}: key {number}: {exc}") from None
    try:
        return Keyring(keys), tuple(held)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _new_key(managed: ManagedKey | None) -> tuple[str, str]:
    """A key file's line for a new key, and its id: a random key in base64, or ``managed``,
    a key an HSM or KMS keeps (:func:`trios3.keystores.seal_intermediate`)."""
    if managed is not None:
        return managed.line() + "\n", managed.key_id
    raw = MasterKey.generate()
    return base64.b64encode(raw).decode() + "\n", MasterKey(raw).key_id


def write_key_file(path: Path, managed: ManagedKey | None = None) -> str:
    """A key file with a new master key (random, or ``managed``), readable by its owner only;
    never overwrites. Returns the new key's id."""
    line, key_id = _new_key(managed)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as out:
        out.write(line)
    return key_id


def add_key(path: Path, *, primary: bool, managed: ManagedKey | None = None) -> str:
    """A new key (random, or ``managed``) in an existing key file: first (the new primary:
    ``--rotate``) or last (decrypting only, until promoted: ``--add``). The keys already
    there stay."""
    keyring = load_keyring(str(path), {})
    if keyring is None:
        raise ConfigError(f"{path}: no keys in it")
    line, key_id = _new_key(managed)
    if key_id in keyring.key_ids:
        raise ConfigError(f"{path}: key {key_id} is in it already")
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    _replace_key_file(path, line + text if primary else text + line)
    return key_id


def promote_key(path: Path, key_id: str) -> None:
    """Make the key ``key_id`` of a key file its primary: its line goes first."""
    lines = path.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        entry = line.split("#", 1)[0].strip()
        if entry and load_keyring(None, {"TRIOS3_MASTER_KEY": entry}).key_ids == (key_id,):
            moved = line if line.endswith("\n") else line + "\n"
            _replace_key_file(path, moved + "".join(lines[:index] + lines[index + 1 :]))
            return
    raise ConfigError(f"{path}: no key {key_id} in it")


def _replace_key_file(path: Path, text: str) -> None:
    """Replace a key file atomically (mode 0600), the rename made durable."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    except OSError as exc:
        raise ConfigError(f"cannot write next to {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as out:  # mkstemp makes it 0600
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _embedded_defaults(data_dir: Path, key: Keyring | None, creds: dict[str, Credential]):
    """First run of the embedded mode: a key file and a client credential pair, kept."""
    generated = []
    data_dir.mkdir(parents=True, exist_ok=True)
    if key is None:
        key_path = data_dir / "master.key"
        if not key_path.exists():
            write_key_file(key_path)
            generated.append(f"master key: {key_path}")
        key = load_keyring(str(key_path), {})
    if not creds:
        cred_path = data_dir / "credentials.toml"
        if not cred_path.exists():
            access = "trios3" + secrets.token_hex(7).upper()
            secret = secrets.token_urlsafe(30)
            fd = os.open(cred_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(
                    f'[[credentials]]\naccess_key_id = "{access}"\nsecret_access_key = "{secret}"\n'
                )
            generated.append(f"client credentials: {cred_path}")
        creds = load_credentials(str(cred_path), {})
    return key, creds, tuple(generated)


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Validate everything at once; the first problem found is the one line reported."""
    given = _given(args, environ, tool=False)
    if bool(given["tls_cert"]) != bool(given["tls_key"]):
        raise ConfigError("--tls-cert and --tls-key go together")
    for name in ("tls_cert", "tls_key"):
        path = given[name]
        if path and not Path(path).is_file():
            raise ConfigError(f"--{name.replace('_', '-')}: no such file: {path}")
    if given["backend_url"] and not (given["backend_access_key"] and given["backend_secret_key"]):
        raise _backend_keys_needed()
    for name in ("max_requests", "max_connections"):
        if given[name] < given["workers"]:
            raise ConfigError(
                f"--workers {given['workers']}: each worker needs a share of "
                f"--{name.replace('_', '-')} ({given[name]} given)"
            )
    keyring, held = read_keys(given["key_file"], environ) or (None, ())
    _check_keystore(given, {key.managed.manager for key in held})
    credentials = load_credentials(given["credentials_file"], environ)
    bucket_keys = load_bucket_keys(given["credentials_file"])
    generated: tuple[str, ...] = ()
    if not given["backend_url"]:
        keyring, credentials, generated = _embedded_defaults(
            given["data_dir"], keyring, credentials
        )
    if keyring is None:
        raise ConfigError(
            "no master key: give --key-file FILE or TRIOS3_MASTER_KEY (trios3 keygen makes one)"
        )
    if not credentials:
        raise ConfigError(
            "no client credentials: give --credentials FILE or "
            "TRIOS3_ACCESS_KEY_ID and TRIOS3_SECRET_ACCESS_KEY"
        )
    named = [c.scope.key_id for c in credentials.values()] + [b.key_id for b in bucket_keys]
    for key_id in named:
        if key_id is not None and key_id not in keyring.key_ids:
            raise ConfigError(f"--credentials: master key {key_id} is not in the keyring")
    return Config(
        **given,
        credentials=credentials,
        bucket_keys=bucket_keys,
        keyring=keyring,
        held_keys=held,
        generated=generated,
    )
