"""The credentials file: each client's access key pair and what it may reach, and the master
key each bucket's objects are written under.

One file shape, read once at start-up::

    [[credentials]]                 # every field but the pair is optional
    access_key_id = "..."
    secret_access_key = "..."
    buckets = ["team-a-*"]          # names or * ? patterns (absent: every bucket)
    prefixes = ["restic/"]          # key prefixes (absent: every key)
    access = "read-only"            # or "read-write", the default
    admin = false                   # default: true only where none of the three above is given
    key_id = "0123456789abcdef"     # the master key its objects are written under

    [[bucket_keys]]                 # objects in these buckets go under this key
    buckets = ["team-b-*"]
    key_id = "fedcba9876543210"

A table with only the pair is an admin of every bucket, as every credential was before scopes
existed, and so is the one pair from ``TRIOS3_ACCESS_KEY_ID``/``TRIOS3_SECRET_ACCESS_KEY``.
Anything the loader does not know is refused rather than ignored: a misspelt ``bukets`` must
not silently leave a credential reaching every bucket. Whether a key id is in the keyring is the
caller's check; here it only has to look like one.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trios3.core.access import ACCESS_LEVELS, ADMIN, Credential, Scope, bucket_matches
from trios3.core.errors import ConfigError

_CREDENTIAL_FIELDS = frozenset(
    {"access_key_id", "secret_access_key", "buckets", "prefixes", "access", "admin", "key_id"}
)
_BUCKET_KEY_FIELDS = frozenset({"buckets", "key_id"})
_TABLES = frozenset({"credentials", "bucket_keys"})
# A bucket name as routing accepts one, with the wildcards * and ?.
_BUCKET_PATTERN = re.compile(r"[A-Za-z0-9._*?-]{1,255}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class BucketKey:
    """``[[bucket_keys]]``: objects written in a bucket one of ``buckets`` matches go under
    ``key_id``, unless the writing credential names its own key."""

    buckets: tuple[str, ...]
    key_id: str


def load_credentials(path: str | None, environ: Mapping[str, str]) -> dict[str, Credential]:
    """Client credentials by access key id: the ``[[credentials]]`` of the file at ``path``,
    then the one admin pair from the environment. The whole file is validated, its
    ``[[bucket_keys]]`` too, so that every mistake in it stops the start."""
    credentials: dict[str, Credential] = {}
    if path:
        credentials.update((c.access_key_id, c) for c in _read(path)[0])
    access = environ.get("TRIOS3_ACCESS_KEY_ID")
    secret = environ.get("TRIOS3_SECRET_ACCESS_KEY")
    if bool(access) != bool(secret):
        raise ConfigError("set both TRIOS3_ACCESS_KEY_ID and TRIOS3_SECRET_ACCESS_KEY, or neither")
    if access and secret:
        if access in credentials:  # which of the two would it be? Neither, silently
            raise ConfigError(f"--credentials: TRIOS3_ACCESS_KEY_ID {access!r} is also in {path}")
        credentials[access] = Credential(access, secret, ADMIN)
    return credentials


def load_bucket_keys(path: str | None) -> tuple[BucketKey, ...]:
    """The ``[[bucket_keys]]`` of the credentials file, in the file's order (the first match
    wins in :func:`key_for`); none without a file."""
    return _read(path)[1] if path else ()


def key_for(credential: Credential, bucket: str, bucket_keys: Sequence[BucketKey]) -> str | None:
    """The master key id a new object ``credential`` writes in ``bucket`` goes under: the
    credential's own, else the first ``[[bucket_keys]]`` whose patterns match the bucket, else
    None (the keyring's primary). Reading never asks: an object names the key it is under."""
    if credential.scope.key_id is not None:
        return credential.scope.key_id
    for entry in bucket_keys:
        if any(bucket_matches(pattern, bucket) for pattern in entry.buckets):
            return entry.key_id
    return None


def _read(path: str) -> tuple[list[Credential], tuple[BucketKey, ...]]:
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--credentials: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--credentials: {path} is not valid TOML: {exc}") from exc
    for name in document:
        if name not in _TABLES:
            raise ConfigError(
                f"--credentials: {path}: unknown table {name!r} "
                "(expected [[credentials]] and [[bucket_keys]])"
            )
    credentials: list[Credential] = []
    seen: set[str] = set()
    for entry in _tables(document, "credentials", path):
        credential = _credential(entry, path)
        if credential.access_key_id in seen:
            raise ConfigError(
                f"--credentials: {path}: access key id {credential.access_key_id!r} is listed twice"
            )
        seen.add(credential.access_key_id)
        credentials.append(credential)
    bucket_keys = tuple(
        _bucket_key(entry, number, path)
        for number, entry in enumerate(_tables(document, "bucket_keys", path), start=1)
    )
    return credentials, bucket_keys


def _tables(document: dict[str, Any], name: str, path: str) -> list[dict[str, Any]]:
    tables = document.get(name, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"--credentials: {path}: {name} must be [[{name}]] tables")
    return tables


def _credential(entry: dict[str, Any], path: str) -> Credential:
    if "access_key_id" not in entry or "secret_access_key" not in entry:
        raise ConfigError(
            f"--credentials: every [[credentials]] in {path} needs "
            "access_key_id and secret_access_key"
        )
    access_key_id, secret = entry["access_key_id"], entry["secret_access_key"]
    if not (isinstance(access_key_id, str) and access_key_id):
        raise ConfigError(f"--credentials: {path}: access_key_id must be a non-empty string")
    where = f"--credentials: {path}: [[credentials]] {access_key_id!r}"
    if not (isinstance(secret, str) and secret):
        raise ConfigError(f"{where}: secret_access_key must be a non-empty string")
    _no_unknown_fields(entry, _CREDENTIAL_FIELDS, where)
    buckets = _buckets(entry, where) if "buckets" in entry else None
    prefixes = _prefixes(entry, where) if "prefixes" in entry else None
    access = entry.get("access", "read-write")
    if access not in ACCESS_LEVELS:
        raise ConfigError(f'{where}: access must be "read-only" or "read-write", got {access!r}')
    admin = entry.get("admin", buckets is None and prefixes is None and access == "read-write")
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}: admin must be true or false, got {admin!r}")
    if admin and access == "read-only":
        raise ConfigError(f'{where}: an admin cannot be access = "read-only"')
    if admin and prefixes is not None:
        raise ConfigError(f"{where}: an admin reaches every key of its buckets: drop prefixes")
    key_id = _key_id(entry, where) if "key_id" in entry else None
    scope = Scope(buckets=buckets, prefixes=prefixes, access=access, admin=admin, key_id=key_id)
    return Credential(access_key_id, secret, scope)


def _bucket_key(entry: dict[str, Any], number: int, path: str) -> BucketKey:
    where = f"--credentials: {path}: [[bucket_keys]] #{number}"
    if "buckets" not in entry or "key_id" not in entry:
        raise ConfigError(f"{where}: needs buckets and key_id")
    _no_unknown_fields(entry, _BUCKET_KEY_FIELDS, where)
    return BucketKey(_buckets(entry, where), _key_id(entry, where))


def _no_unknown_fields(entry: dict[str, Any], known: frozenset[str], where: str) -> None:
    for name in entry:
        if name not in known:
            raise ConfigError(
                f"{where}: unknown field {name!r} (expected {', '.join(sorted(known))})"
            )


def _buckets(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    buckets = entry["buckets"]
    if not isinstance(buckets, list) or not buckets:
        raise ConfigError(
            f'{where}: buckets must be a non-empty list of names or patterns, like ["team-a-*"]'
        )
    for pattern in buckets:
        if not (isinstance(pattern, str) and _BUCKET_PATTERN.fullmatch(pattern)):
            raise ConfigError(
                f"{where}: not a bucket name or pattern: {pattern!r} "
                "(letters, digits, . _ - and the wildcards * and ?)"
            )
    return tuple(buckets)


def _prefixes(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    prefixes = entry["prefixes"]
    if not isinstance(prefixes, list) or not prefixes:
        raise ConfigError(
            f'{where}: prefixes must be a non-empty list of key prefixes, like ["restic/"]'
        )
    for prefix in prefixes:
        if not (isinstance(prefix, str) and prefix):
            raise ConfigError(
                f"{where}: not a key prefix: {prefix!r} (every key: leave prefixes out)"
            )
    return tuple(prefixes)


def _key_id(entry: dict[str, Any], where: str) -> str:
    key_id = entry["key_id"]
    if not (isinstance(key_id, str) and _KEY_ID.fullmatch(key_id)):
        raise ConfigError(
            f"{where}: key_id must be 16 lower-case hex characters, as trios3 keygen "
            f"prints, got {key_id!r}"
        )
    return key_id
