"""Configuration: every option a flag and a ``TRIOS3_<OPTION>`` variable, read once.

The result is one immutable :class:`Config` passed down; nothing reads the environment later.
Invalid configuration raises :class:`ConfigError` with one line that says what to fix.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trios3.backend import BackendSettings
from trios3.core.keys import Keyring, MasterKey


class ConfigError(Exception):
    """A configuration problem, reported as one line at start-up."""


@dataclass(frozen=True)
class Config:
    listen: str
    backend_url: str | None
    backend_region: str
    backend_access_key: str | None
    backend_secret_key: str | None = field(repr=False)
    credentials: Mapping[str, str] = field(repr=False)
    keyring: Keyring
    tls_cert: str | None
    tls_key: str | None
    data_dir: Path
    virtual_host_domain: str | None
    memory_budget: int
    admission_timeout: float
    body_timeout: float = 60.0
    send_timeout: float = 120.0
    max_requests: int = 256
    max_connections: int = 1024
    backend_timeout: float = 300.0
    shutdown_timeout: float = 30.0
    require_encrypted: bool = False
    generated: tuple[str, ...] = ()  # what the embedded mode created on this run


OPTIONS = {
    # flag: (default, help)
    "listen": ("127.0.0.1:8080", "HOST:PORT to serve S3 on"),
    "backend": (None, "URL of the backend S3 endpoint (default: an embedded SeaweedFS)"),
    "backend-region": ("us-east-1", "region the backend is signed for"),
    "credentials": (None, "TOML file of client credentials the proxy accepts"),
    "key-file": (None, "file holding the base64 master key (or set TRIOS3_MASTER_KEY)"),
    "tls-cert": (None, "PEM certificate: serve HTTPS"),
    "tls-key": (None, "PEM private key for --tls-cert"),
    "data-dir": ("./trios3-data", "where the embedded backend keeps its data and keys"),
    "virtual-host-domain": (None, "serve virtual-hosted-style requests for BUCKET.<domain>"),
    "memory-budget": ("64MiB", "bytes of body buffers all requests may hold together"),
    "admission-timeout": ("30", "seconds a request may wait for the budget before 503"),
    "body-timeout": ("60", "seconds a client may pause while sending a request body"),
    "send-timeout": ("120", "seconds a client may leave response bytes unread (TCP_USER_TIMEOUT)"),
    "max-requests": ("256", "requests in flight at once; more get 503 SlowDown"),
    "max-connections": ("1024", "client connections at once; more wait to be accepted"),
    "backend-timeout": ("300", "seconds the backend may stay silent in a request"),
    "shutdown-timeout": ("30", "seconds in-flight requests may take to finish after SIGTERM"),
}


def env_name(option: str) -> str:
    return "TRIOS3_" + option.upper().replace("-", "_")


FLAGS = {
    # flag: help (off unless given, or its variable is 1/true/yes)
    "require-encrypted": "refuse objects the proxy did not encrypt instead of serving them",
}


def add_serve_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    for option, (default, help_text) in OPTIONS.items():
        variable = env_name(option)
        parser.add_argument(
            f"--{option}",
            default=environ.get(variable, default),
            help=f"{help_text} [{variable}; default {default}]",
        )
    for option, help_text in FLAGS.items():
        variable = env_name(option)
        parser.add_argument(
            f"--{option}",
            action="store_true",
            default=environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"),
            help=f"{help_text} [{variable}=1]",
        )


TOOL_OPTIONS = ("backend", "backend-region", "key-file", "backend-timeout")


def add_tool_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The options of the offline tools (rewrap, inspect): a backend and the keys."""
    for option in TOOL_OPTIONS:
        default, help_text = OPTIONS[option]
        variable = env_name(option)
        parser.add_argument(
            f"--{option}",
            default=environ.get(variable, default),
            help=f"{help_text} [{variable}; default {default}]",
        )


def tool_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[BackendSettings, Keyring]:
    """The backend and keyring the offline tools work with; they need an explicit backend."""
    if not args.backend or not re.match(r"^https?://[^/\s]+(/.*)?$", args.backend):
        raise ConfigError(f"--backend: expected an http(s):// URL, got {args.backend!r}")
    access = environ.get("TRIOS3_BACKEND_ACCESS_KEY_ID")
    secret = environ.get("TRIOS3_BACKEND_SECRET_ACCESS_KEY")
    if not (access and secret):
        raise ConfigError(
            "--backend needs TRIOS3_BACKEND_ACCESS_KEY_ID and TRIOS3_BACKEND_SECRET_ACCESS_KEY"
        )
    keyring = load_keyring(args.key_file, environ)
    if keyring is None:
        raise ConfigError("no master key: give --key-file FILE or TRIOS3_MASTER_KEY")
    timeout = parse_seconds(args.backend_timeout, "backend-timeout")
    return BackendSettings(args.backend, args.backend_region, access, secret, timeout), keyring


_SIZE = re.compile(r"^\s*(\d+)\s*(|b|kib|mib|gib|kb|mb|gb|k|m|g)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2}
_UNITS |= {"mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


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


def load_credentials(path: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Client credentials: a TOML file of ``[[credentials]]`` tables, or one pair from env."""
    creds: dict[str, str] = {}
    if path:
        try:
            document = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"--credentials: cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--credentials: {path} is not valid TOML: {exc}") from exc
        for entry in document.get("credentials", []):
            try:
                creds[str(entry["access_key_id"])] = str(entry["secret_access_key"])
            except (KeyError, TypeError) as exc:
                raise ConfigError(
                    f"--credentials: every [[credentials]] in {path} needs "
                    "access_key_id and secret_access_key"
                ) from exc
    access = environ.get("TRIOS3_ACCESS_KEY_ID")
    secret = environ.get("TRIOS3_SECRET_ACCESS_KEY")
    if bool(access) != bool(secret):
        raise ConfigError("set both TRIOS3_ACCESS_KEY_ID and TRIOS3_SECRET_ACCESS_KEY, or neither")
    if access and secret:
        creds[access] = secret
    return creds


def load_keyring(key_file: str | None, environ: Mapping[str, str]) -> Keyring | None:
    """The master keys from ``--key-file`` (one base64 key per line; blank lines and ``#``
    comments ignored) or ``TRIOS3_MASTER_KEY`` (keys separated by commas or spaces). The
    first key is the primary one, for new objects; the others keep decrypting older ones."""
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
    keys = []
    for number, entry in enumerate(entries, start=1):
        try:
            keys.append(MasterKey.from_base64(entry))
        except ValueError as exc:
            raise ConfigError(f"{source}: key {number}: {exc}") from exc
    try:
        return Keyring(keys)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def write_key_file(path: Path) -> str:
    """A new random master key, base64, readable by its owner only; never overwrites.
    Returns the new key's id."""
    raw = MasterKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(raw).decode() + "\n")
    return MasterKey(raw).key_id


def add_key(path: Path, *, primary: bool) -> str:
    """A new random key in an existing key file: first (the new primary: ``--rotate``) or
    last (decrypting only, until promoted: ``--add``). The keys already there stay."""
    if load_keyring(str(path), {}) is None:
        raise ConfigError(f"{path}: no keys in it")
    raw = MasterKey.generate()
    line = base64.b64encode(raw).decode() + "\n"
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    _replace_key_file(path, line + text if primary else text + line)
    return MasterKey(raw).key_id


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


def _embedded_defaults(data_dir: Path, key: Keyring | None, creds: dict[str, str]):
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
    listen = args.listen
    if not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", listen or ""):
        raise ConfigError(f"--listen: expected HOST:PORT, got {listen!r}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for option in ("tls_cert", "tls_key"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise ConfigError(f"--{option.replace('_', '-')}: no such file: {path}")
    backend = args.backend
    if backend and not re.match(r"^https?://[^/\s]+(/.*)?$", backend):
        raise ConfigError(f"--backend: expected an http(s):// URL, got {backend!r}")
    backend_access = environ.get("TRIOS3_BACKEND_ACCESS_KEY_ID")
    backend_secret = environ.get("TRIOS3_BACKEND_SECRET_ACCESS_KEY")
    if backend and not (backend_access and backend_secret):
        raise ConfigError(
            "--backend needs TRIOS3_BACKEND_ACCESS_KEY_ID and TRIOS3_BACKEND_SECRET_ACCESS_KEY"
        )
    memory_budget = parse_size(str(args.memory_budget), "memory-budget")
    admission_timeout = parse_seconds(args.admission_timeout, "admission-timeout")
    body_timeout = parse_seconds(args.body_timeout, "body-timeout")
    send_timeout = parse_seconds(args.send_timeout, "send-timeout")
    backend_timeout = parse_seconds(args.backend_timeout, "backend-timeout")
    shutdown_timeout = parse_seconds(args.shutdown_timeout, "shutdown-timeout")
    max_requests = str(args.max_requests)
    if not max_requests.isdigit() or int(max_requests) < 1:
        raise ConfigError(f"--max-requests: expected a positive number, got {max_requests!r}")
    max_connections = str(args.max_connections)
    if not max_connections.isdigit() or int(max_connections) < 1:
        raise ConfigError(f"--max-connections: expected a positive number, got {max_connections!r}")
    key = load_keyring(args.key_file, environ)
    creds = load_credentials(args.credentials, environ)
    data_dir = Path(args.data_dir)
    generated: tuple[str, ...] = ()
    if not backend:
        key, creds, generated = _embedded_defaults(data_dir, key, creds)
    if key is None:
        raise ConfigError(
            "no master key: give --key-file FILE or TRIOS3_MASTER_KEY (trios3 keygen makes one)"
        )
    if not creds:
        raise ConfigError(
            "no client credentials: give --credentials FILE or "
            "TRIOS3_ACCESS_KEY_ID and TRIOS3_SECRET_ACCESS_KEY"
        )
    return Config(
        listen=listen,
        backend_url=backend,
        backend_region=args.backend_region,
        backend_access_key=backend_access,
        backend_secret_key=backend_secret,
        credentials=creds,
        keyring=key,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        data_dir=data_dir,
        virtual_host_domain=args.virtual_host_domain,
        memory_budget=memory_budget,
        admission_timeout=admission_timeout,
        body_timeout=body_timeout,
        send_timeout=send_timeout,
        max_requests=int(max_requests),
        max_connections=int(max_connections),
        backend_timeout=backend_timeout,
        shutdown_timeout=shutdown_timeout,
        require_encrypted=bool(args.require_encrypted),
        generated=generated,
    )
