"""Master keys, the per-object data key and its envelope in x-amz-meta-trios3-* metadata.

The hierarchy is master key -> KEK (HKDF) -> per-object data key, wrapped with AES-256-GCM-SIV
and bound to (format version, key id, segment size, bucket, key), so metadata copied to another
object, or altered, fails to unwrap. A version 3 or 4 envelope also carries the plaintext's
MD5, sealed under a key derived from the data key. See docs/FORMAT.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trios3.core.errors import TamperedError
from trios3.core.format import (
    DATA_KEY_SIZE,
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    is_valid_segment_size,
)

MASTER_KEY_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = WRAP_NONCE_SIZE + DATA_KEY_SIZE + 16

META_PREFIX = "x-amz-meta-trios3-"
META_VERSION = META_PREFIX + "v"
META_KEY_ID = META_PREFIX + "kid"
META_SEGMENT_SIZE = META_PREFIX + "seg"
META_DATA_KEY = META_PREFIX + "dek"
META_CONTENT_MD5 = META_PREFIX + "md5"

_KEY_ID_LABEL = b"trios3 key id v1"
_KEK_INFO = b"trios3 v1 key-encryption key"
_WRAP_AAD_PREFIX = b"trios3 v1 wrap\x00"
_MD5_KEY_INFO = b"trios3 v3 content-md5 key"
_MD5_AAD_PREFIX = b"trios3 v3 content-md5\x00"
_HEX = frozenset("0123456789abcdef")
MD5_SIZE = 16
MD5_NONCE_SIZE = 12
SEALED_MD5_SIZE = MD5_NONCE_SIZE + MD5_SIZE + 16  # nonce || ciphertext || tag

# Envelope overhead in user metadata, as S3 counts it (name after x-amz-meta-, and value), at
# most: trios3-v 1, trios3-kid 16, trios3-seg 8 (16 MiB), trios3-dek 80, trios3-md5 60.
ENVELOPE_METADATA_SIZE = (8 + 1) + (10 + 16) + (10 + 8) + (10 + 80) + (10 + 60)

# Format versions and the body layout each one has: 1 a single object, 2 a multipart object
# (trios3.core.multipart); 3 and 4 are the same two with the content MD5 sealed in the
# metadata. An object with no MD5 to seal is still written as version 1 or 2.
SINGLE_LAYOUT, MULTIPART_LAYOUT = FORMAT_VERSION, 2
LAYOUT_OF = {1: SINGLE_LAYOUT, 2: MULTIPART_LAYOUT, 3: SINGLE_LAYOUT, 4: MULTIPART_LAYOUT}
WITH_SEALED_MD5 = {SINGLE_LAYOUT: 3, MULTIPART_LAYOUT: 4}
READABLE_VERSIONS = frozenset(LAYOUT_OF)


def _md5_cipher(data_key: bytes) -> AESGCM:
    """The key that seals an object's content MD5, derived from its data key for that alone."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MD5_KEY_INFO).derive(data_key)
    return AESGCM(key)


def seal_content_md5(data_key: bytes, md5: bytes, bucket: str, key: str) -> bytes:
    """The MD5 of an object's plaintext, encrypted under its data key and bound to its name.

    The nonce is random: an object and its copies share a data key, and every copy seals the
    MD5 again, for its own name.
    """
    if len(md5) != MD5_SIZE:
        raise ValueError("an MD5 is 16 bytes")
    nonce = os.urandom(MD5_NONCE_SIZE)
    aad = _length_prefixed(_MD5_AAD_PREFIX, bucket, key)
    return nonce + _md5_cipher(data_key).encrypt(nonce, md5, aad)


def open_content_md5(data_key: bytes, sealed: bytes, bucket: str, key: str) -> bytes:
    """The MD5 sealed by :func:`seal_content_md5`; TamperedError unless it is this object's."""
    if len(sealed) != SEALED_MD5_SIZE:
        raise TamperedError("the sealed content MD5 has the wrong length")
    nonce, box = sealed[:MD5_NONCE_SIZE], sealed[MD5_NONCE_SIZE:]
    try:
        return _md5_cipher(data_key).decrypt(
            nonce, box, _length_prefixed(_MD5_AAD_PREFIX, bucket, key)
        )
    except InvalidTag:
        raise TamperedError("the sealed content MD5 is not this object's") from None


def _length_prefixed(prefix: bytes, *fields: str) -> bytes:
    """``prefix`` then each field as u32 length || UTF-8: no two tuples encode alike."""
    out = bytearray(prefix)
    for field in fields:
        raw = field.encode("utf-8")
        out += len(raw).to_bytes(4, "big")
        out += raw
    return bytes(out)


def wrap_context(
    version: int, key_id: str, segment_size: int, bucket: str, key: str, *extra: str
) -> bytes:
    """The AAD of a wrapped data key: length-prefixed fields, so no two tuples encode alike.

    ``extra`` fields extend the binding: a multipart upload id binds the copy of the data key
    that travels in the UploadId to that one upload.
    """
    return _length_prefixed(
        _WRAP_AAD_PREFIX, str(version), key_id, str(segment_size), bucket, key, *extra
    )


class WrappingKey(Protocol):
    """What the Keyring needs from a key: an id and authenticated wrap/unwrap of data keys.

    A KMS-backed key can implement this (wrap = Encrypt with the context as encryption context).
    """

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class MasterKey:
    """A local 32-byte master key; only its KEK and public key id are kept, never shown."""

    __slots__ = ("_kek", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != MASTER_KEY_SIZE:
            raise ValueError(f"master key must be {MASTER_KEY_SIZE} bytes, got {len(raw)}")
        self.key_id: str = hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).digest()[:8].hex()
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEK_INFO).derive(raw)
        self._kek = AESGCMSIV(kek)

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        return cls(bytes(raw))

    @classmethod
    def from_base64(cls, text: str) -> MasterKey:
        """Parse standard base64 (surrounding whitespace ignored); errors never echo the key."""
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("master key is not valid base64") from None
        return cls(raw)

    @staticmethod
    def generate() -> bytes:
        return os.urandom(MASTER_KEY_SIZE)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """nonce || ciphertext || tag; GCM-SIV, so random nonces stay safe at any volume."""
        nonce = os.urandom(WRAP_NONCE_SIZE)
        return nonce + self._kek.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        if len(wrapped) != WRAPPED_KEY_SIZE:
            raise TamperedError("wrapped data key has the wrong length")
        try:
            return self._kek.decrypt(wrapped[:WRAP_NONCE_SIZE], wrapped[WRAP_NONCE_SIZE:], context)
        except InvalidTag:
            raise TamperedError("data key does not unwrap for this object") from None


@dataclass(frozen=True)
class Envelope:
    """What the proxy stores in x-amz-meta-trios3-*: enough to unwrap the data key and read the body."""

    version: int
    key_id: str
    segment_size: int
    wrapped_key: bytes
    sealed_md5: bytes | None = None  # versions 3 and 4: seal_content_md5 of the plaintext

    @property
    def layout(self) -> int:
        """The body's layout: SINGLE_LAYOUT or MULTIPART_LAYOUT."""
        return LAYOUT_OF[self.version]

    @property
    def multipart(self) -> bool:
        return self.layout == MULTIPART_LAYOUT

    def to_metadata(self) -> dict[str, str]:
        meta = {
            META_VERSION: str(self.version),
            META_KEY_ID: self.key_id,
            META_SEGMENT_SIZE: str(self.segment_size),
            META_DATA_KEY: base64.b64encode(self.wrapped_key).decode("ascii"),
        }
        if self.sealed_md5 is not None:
            meta[META_CONTENT_MD5] = base64.b64encode(self.sealed_md5).decode("ascii")
        return meta

    @classmethod
    def from_metadata(cls, headers: Mapping[str, str]) -> Envelope | None:
        """Parse lower-case headers; None when the proxy did not encrypt the object.

        Strict: a partial or malformed envelope is TamperedError, never a passthrough, so an
        attacker cannot make an encrypted object read as plaintext by damaging its metadata.
        Unknown x-amz-meta-trios3-* names are ignored (all that matters is authenticated).
        """
        if not any(name.startswith(META_PREFIX) for name in headers):
            return None
        values = {}
        for name in (META_VERSION, META_KEY_ID, META_SEGMENT_SIZE, META_DATA_KEY):
            value = headers.get(name)
            if value is None:
                raise TamperedError(f"encryption metadata is missing {name}")
            values[name] = value.strip()
        version = _parse_decimal(values[META_VERSION], META_VERSION)
        if version not in READABLE_VERSIONS:
            raise TamperedError(f"unknown trios3 format version {values[META_VERSION]!r}")
        key_id = values[META_KEY_ID]
        if len(key_id) != 16 or not set(key_id) <= _HEX:
            raise TamperedError(f"malformed {META_KEY_ID}")
        segment_size = _parse_decimal(values[META_SEGMENT_SIZE], META_SEGMENT_SIZE)
        if not is_valid_segment_size(segment_size):
            raise TamperedError(f"unsupported segment size {segment_size}")
        try:
            wrapped = base64.b64decode(values[META_DATA_KEY], validate=True)
        except (binascii.Error, ValueError):
            raise TamperedError(f"malformed {META_DATA_KEY}") from None
        if len(wrapped) != WRAPPED_KEY_SIZE:
            raise TamperedError(f"malformed {META_DATA_KEY}")
        sealed_md5 = None
        if version in WITH_SEALED_MD5.values():
            # Required: the version is bound into the wrap, so a version 3 or 4 object cannot
            # pose as version 1 or 2, and its sealed MD5 cannot be dropped.
            sealed_md5 = parse_base64(headers.get(META_CONTENT_MD5), SEALED_MD5_SIZE)
            if sealed_md5 is None:
                raise TamperedError(f"missing or malformed {META_CONTENT_MD5}")
        return cls(version, key_id, segment_size, wrapped, sealed_md5)


def parse_base64(text: str | None, size: int) -> bytes | None:
    """Standard base64 of exactly ``size`` bytes, or None."""
    if text is None:
        return None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _parse_decimal(text: str, name: str) -> int:
    # Canonical decimal only: the string is what the AAD binds, so "01" must not pass as 1.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise TamperedError(f"malformed {name}")
    if len(text) > 10:
        raise TamperedError(f"malformed {name}")
    return int(text)


class Keyring:
    """Master keys by id; one primary for new objects; older ones keep decrypting."""

    def __init__(self, keys: Sequence[WrappingKey], primary_id: str | None = None) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one master key")
        self._keys: dict[str, WrappingKey] = {}
        for k in keys:
            if k.key_id in self._keys:
                raise ValueError(f"master key {k.key_id} is listed twice")
            self._keys[k.key_id] = k
        if primary_id is None:
            primary_id = keys[0].key_id
        if primary_id not in self._keys:
            raise ValueError(f"primary key {primary_id} is not in the keyring")
        self._primary = self._keys[primary_id]

    def __repr__(self) -> str:
        return f"Keyring(keys={list(self._keys)!r}, primary={self._primary.key_id!r})"

    @property
    def primary(self) -> WrappingKey:
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _wrap(
        self,
        data_key: bytes,
        version: int,
        segment_size: int,
        bucket: str,
        key: str,
        *extra: str,
        sealed_md5: bytes | None = None,
    ) -> Envelope:
        if not is_valid_segment_size(segment_size):
            raise ValueError(f"unsupported segment size {segment_size}")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"unknown format version {version}")
        if (sealed_md5 is not None) != (version in WITH_SEALED_MD5.values()):
            raise ValueError(f"a sealed MD5 goes with versions 3 and 4, and only there ({version})")
        master = self._primary
        context = wrap_context(version, master.key_id, segment_size, bucket, key, *extra)
        wrapped = master.wrap(data_key, context)
        return Envelope(version, master.key_id, segment_size, wrapped, sealed_md5)

    def seal_new(
        self,
        bucket: str,
        key: str,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        version: int = FORMAT_VERSION,
        *,
        content_md5: bytes | None = None,
    ) -> tuple[bytes, Envelope]:
        """A fresh data key for one upload attempt, and its envelope under the primary key.

        ``version`` is the layout's (1 single, 2 multipart). With ``content_md5`` the envelope
        carries it, sealed, and has the layout's sealed-MD5 version (3 or 4).
        """
        if version not in WITH_SEALED_MD5:
            raise ValueError(f"not a layout's version: {version}")
        data_key = os.urandom(DATA_KEY_SIZE)
        sealed_md5 = None
        if content_md5 is not None:
            version = WITH_SEALED_MD5[version]
            sealed_md5 = seal_content_md5(data_key, content_md5, bucket, key)
        envelope = self._wrap(data_key, version, segment_size, bucket, key, sealed_md5=sealed_md5)
        return data_key, envelope

    def open(self, envelope: Envelope, bucket: str, key: str, *extra: str) -> bytes:
        """The object's data key; TamperedError if the key id is unknown or unwrap fails."""
        master = self._keys.get(envelope.key_id)
        if master is None:
            raise TamperedError(f"object is sealed under unknown master key {envelope.key_id}")
        context = wrap_context(
            envelope.version, envelope.key_id, envelope.segment_size, bucket, key, *extra
        )
        data_key = master.unwrap(envelope.wrapped_key, context)
        if len(data_key) != DATA_KEY_SIZE:
            raise TamperedError("unwrapped data key has the wrong length")
        return data_key

    def rewrap(
        self,
        envelope: Envelope,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        content_md5: bytes | None = None,
    ) -> Envelope:
        """The same data key bound to the destination under the primary key (copy, rotation).

        The sealed MD5 comes along, sealed again for the destination, unless ``content_md5`` is
        given: that is sealed instead, in the layout's sealed-MD5 version.
        """
        data_key = self.open(envelope, src_bucket, src_key)
        version, sealed_md5 = envelope.version, None
        if content_md5 is None and envelope.sealed_md5 is not None:
            content_md5 = open_content_md5(data_key, envelope.sealed_md5, src_bucket, src_key)
        if content_md5 is not None:
            version = WITH_SEALED_MD5[envelope.layout]
            sealed_md5 = seal_content_md5(data_key, content_md5, dst_bucket, dst_key)
        return self._wrap(
            data_key, version, envelope.segment_size, dst_bucket, dst_key, sealed_md5=sealed_md5
        )

    def bind_to_upload(
        self, data_key: bytes, envelope: Envelope, bucket: str, key: str, upload_id: str
    ) -> Envelope:
        """A second wrap of a multipart upload's data key, bound to its backend upload id too:
        the copy that travels in the client's UploadId (trios3.core.multipart.UploadToken).
        It is bound to the layout's version (2), with or without a sealed MD5 in the object."""
        return self._wrap(data_key, envelope.layout, envelope.segment_size, bucket, key, upload_id)
