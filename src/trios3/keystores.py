"""Master keys kept by a key manager: an HSM over PKCS#11, or a KMS over KMIP.

The HSM or KMS holds an AES key that never leaves it. That key does not wrap each object's
data key (a GET would then wait for a round trip to it, for every object): it wraps one
*intermediate key* per line of the key file, 32 random bytes that ``trios3 keygen --pkcs11``
or ``--kmip`` had it encrypt with AES-256-GCM::

    pkcs11:<key label>:<key id>:<base64 of nonce || ciphertext || tag>
    kmip:<unique identifier>:<key id>:<base64 of nonce || ciphertext || tag>

(:class:`ManagedKey`; the label or identifier is percent-encoded, the key id is the trios3 key
id of the intermediate key, public, and bound into the GCM's additional data). The proxy has
the key manager decrypt each line at start-up and again at half of ``--kms-cache-seconds``
(:func:`keep_keys_fresh`, a task of the server's nursery), and keeps the intermediate key in
memory as an ordinary :class:`~trios3.core.keys.MasterKey`. Objects are therefore written and
read exactly as under a key of the file (same key ids, same wrap: docs/FORMAT.md is
unchanged), and no request ever calls the key manager.

What the Keyring holds for such a line is a :class:`HeldKey`: its key id is in the line, so
the keyring is whole before the key manager has answered, and it wraps and unwraps with the
decrypted copy while that copy is fresh. Once the copy is older than ``--kms-cache-seconds``
(every refresh since has failed) it is dropped, and whatever needs it fails with ``503
ServiceUnavailable`` ("the key manager does not answer"): never a wrong key, never a 500.
``--kms-cache-seconds`` is therefore also how long a key revoked in the HSM or KMS keeps
working here.

The PKCS#11 and KMIP calls block (:class:`Pkcs11Manager`, :class:`KmipManager`). Each runs in
a thread under ``--kms-timeout``; a thread cannot be cancelled, so one that overruns is
abandoned, still holding its manager's one slot: no other call to that manager starts until
it returns (a hung HSM costs one thread, not one per retry). A KMIP call ends by itself
within the timeout (its socket has it too); a PKCS#11 module that never returns keeps its
thread for good, and the keys it keeps expire.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote, unquote

import trio

from trios3.core.errors import S3Error
from trios3.core.keys import MASTER_KEY_SIZE, MasterKey

log = logging.getLogger("trios3.keys")

MANAGERS = ("pkcs11", "kmip")
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_SIZE = NONCE_SIZE + MASTER_KEY_SIZE + TAG_SIZE  # 60 bytes
_AAD_PREFIX = b"trios3 intermediate key v1\x00"
_HEX = frozenset("0123456789abcdef")
RETRY_SECONDS = 5.0  # after a failed refresh, the next try comes this soon (or sooner)
UNAVAILABLE_MESSAGE = "The key manager does not answer; try again later."


def intermediate_aad(key_id: str) -> bytes:
    """The additional data the key manager's AES-GCM binds an intermediate key to: its id."""
    return _AAD_PREFIX + key_id.encode("ascii")


# -- the line of the key file ---------------------------------------------------------------


@dataclass(frozen=True)
class ManagedKey:
    """An intermediate key as the key file holds it, encrypted by a key manager's key."""

    manager: str  # "pkcs11" or "kmip"
    key_name: str  # the HSM key's label, or the KMIP key's unique identifier
    key_id: str  # the trios3 key id of the intermediate key (public)
    wrapped: bytes = field(repr=False)  # nonce || ciphertext || tag, 60 bytes

    def line(self) -> str:
        blob = base64.b64encode(self.wrapped).decode("ascii")
        return f"{self.manager}:{quote(self.key_name, safe='')}:{self.key_id}:{blob}"

    @classmethod
    def parse(cls, text: str) -> ManagedKey:
        """A key-file entry ``MANAGER:NAME:KEY_ID:BASE64``; ValueError (never showing the
        entry) if it is not one."""
        manager, _, rest = text.strip().partition(":")
        if manager not in MANAGERS:
            raise ValueError(f"unknown key manager {manager[:20]!r} (pkcs11: or kmip:)")
        parts = rest.split(":")
        if len(parts) != 3:
            raise ValueError(f"a {manager}: line is {manager}:NAME:KEY_ID:BASE64")
        name, key_id, blob = unquote(parts[0]), parts[1], parts[2]
        if not name:
            raise ValueError(f"a {manager}: line names no key")
        if len(key_id) != 16 or not set(key_id) <= _HEX:
            raise ValueError(f"a {manager}: line's key id is not 16 hex digits")
        try:
            wrapped = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a {manager}: line's wrapped key is not valid base64") from None
        if len(wrapped) != WRAPPED_SIZE:
            raise ValueError(f"a {manager}: line's wrapped key is not {WRAPPED_SIZE} bytes")
        return cls(manager, name, key_id, wrapped)

    def describe(self) -> str:
        return describe_key(self.manager, self.key_name)


def describe_key(kind: str, key_name: str) -> str:
    """How messages name a key manager's key: ``HSM key 'kek'``, ``KMIP key '42'``."""
    return f"{'HSM' if kind == 'pkcs11' else 'KMIP'} key {key_name!r}"


def is_managed_line(entry: str) -> bool:
    """Whether a key-file entry is a key manager's line rather than a base64 key (base64 has no
    colon)."""
    return ":" in entry


# -- errors ---------------------------------------------------------------------------------


class KeyManagerError(Exception):
    """A call to the key manager failed; the text is one line, and never shows a key."""


class KeyManagerUnavailable(KeyManagerError):
    """It did not answer: down, unreachable, too slow, or failing."""


class KeyManagerRefused(KeyManagerError):
    """It answered, and said no: no such key, a PIN refused, a line it does not decrypt."""


class PinRefused(KeyManagerRefused):
    """The token refused the PIN. Never tried again by this process: an HSM locks a PIN after
    a few failed logins."""


class KeysRefused(RuntimeError):
    """At start-up: a key manager refused a key (see :func:`keep_keys_fresh`)."""


# -- the key managers: blocking calls -------------------------------------------------------


class KeyManager(Protocol):
    """AES-GCM with a key that stays in the HSM or KMS. Every method blocks."""

    kind: str

    def encrypt(self, key_name: str, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag."""
        ...

    def decrypt(self, key_name: str, wrapped: bytes, aad: bytes) -> bytes: ...

    def create_key(self, key_name: str | None) -> str:
        """A new AES-256 key for Encrypt and Decrypt only; its name (label or identifier)."""
        ...

    def warnings(self, key_name: str) -> list[str]:
        """What is wrong with how the key is kept (it can be extracted, say)."""
        ...


def seal_intermediate(manager: KeyManager, key_name: str) -> ManagedKey:
    """A new intermediate key, encrypted by the key manager's key ``key_name``, and checked by
    decrypting it again (blocking)."""
    raw = MasterKey.generate()
    key_id = MasterKey(raw).key_id
    wrapped = manager.encrypt(key_name, raw, intermediate_aad(key_id))
    managed = ManagedKey(manager.kind, key_name, key_id, wrapped)
    if len(wrapped) != WRAPPED_SIZE or unseal_intermediate(manager, managed).key_id != key_id:
        raise KeyManagerRefused("what it encrypts does not decrypt back")
    return managed


def unseal_intermediate(manager: KeyManager, managed: ManagedKey) -> MasterKey:
    """The intermediate key of a line, decrypted by the key manager (blocking)."""
    raw = manager.decrypt(managed.key_name, managed.wrapped, intermediate_aad(managed.key_id))
    if len(raw) != MASTER_KEY_SIZE:
        raise KeyManagerRefused("it decrypts the line to the wrong length")
    key = MasterKey(raw)
    if key.key_id != managed.key_id:
        raise KeyManagerRefused("it decrypts the line to another key")
    return key


class Pkcs11Manager:
    """An HSM through its PKCS#11 module (python-pkcs11): CKM_AES_GCM with a 96-bit nonce and
    a 128-bit tag. Every call opens a session, logs in, finds the key by label, and closes:
    a refresh is rare, and this way a token that went away and came back is found again
    (after a failure the module is initialised afresh: SoftHSM2 does not notice a token that
    came back otherwise)."""

    kind = "pkcs11"

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self._module = module
        self._token_label = token_label
        self._pin = pin
        import pkcs11  # noqa: F401 (here, not in the first call, which --kms-timeout bounds)

        self._lib: Any = None
        self._reinitialize = False
        self._pin_refused: str | None = None

    def __repr__(self) -> str:
        return f"Pkcs11Manager(module={self._module!r}, token={self._token_label!r})"

    def _where(self) -> str:
        return f"token {self._token_label!r}"

    def _open(self, rw: bool = False) -> Any:
        import pkcs11
        from pkcs11 import exceptions as p11

        if self._pin_refused is not None:
            raise PinRefused(
                f"{self._pin_refused}, and is not asked again: an HSM locks a PIN after "
                "failed logins (restart trios3 with the right one)"
            )
        try:
            if self._lib is None:
                self._lib = pkcs11.lib(self._module)
            elif self._reinitialize and self._lib.initialized:
                self._lib.reinitialize()
            elif not self._lib.initialized:
                self._lib.initialize()
            self._reinitialize = False
            token = self._lib.get_token(token_label=self._token_label)
            return token.open(user_pin=self._pin, rw=rw)
        except (
            p11.PinIncorrect,
            p11.PinInvalid,
            p11.PinLenRange,
            p11.PinExpired,
            p11.PinLocked,
            p11.UserPinNotInitialized,
        ) as exc:
            self._pin_refused = f"{self._where()} refused the PIN ({type(exc).__name__})"
            raise PinRefused(self._pin_refused) from None
        except p11.NoSuchToken:
            self._reinitialize = True
            raise KeyManagerUnavailable(f"no {self._where()} (is the HSM there?)") from None
        except p11.PKCS11Error as exc:
            self._reinitialize = True
            raise KeyManagerUnavailable(f"{self._where()}: {_pkcs11_text(exc)}") from None

    def _key(self, session: Any, key_name: str) -> Any:
        from pkcs11 import KeyType, ObjectClass
        from pkcs11 import exceptions as p11

        try:
            return session.get_key(
                label=key_name, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
            )
        except p11.NoSuchKey:
            raise KeyManagerRefused(f"no AES key with that label on {self._where()}") from None
        except p11.MultipleObjectsReturned:
            raise KeyManagerRefused(
                f"several AES keys with that label on {self._where()}"
            ) from None
        except p11.PKCS11Error as exc:
            self._reinitialize = True
            raise KeyManagerUnavailable(f"{self._where()}: {_pkcs11_text(exc)}") from None

    def _in_session(self, use: Callable[[Any], Any], *, rw: bool = False) -> Any:
        from pkcs11 import exceptions as p11

        session = self._open(rw)
        try:
            return use(session)
        finally:
            try:
                session.close()  # logs out too
            except p11.PKCS11Error:
                self._reinitialize = True

    def _with_key(self, key_name: str, use: Callable[[Any], Any]) -> Any:
        return self._in_session(lambda session: use(self._key(session, key_name)))

    def _gcm(self, key: Any, operation: str, data: bytes, params: Any) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11 import exceptions as p11

        try:
            run = key.encrypt if operation == "encrypt" else key.decrypt
            return bytes(run(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
        except (
            p11.DeviceError,
            p11.DeviceMemory,
            p11.DeviceRemoved,
            p11.SessionClosed,
            p11.SessionHandleInvalid,
            p11.TokenNotPresent,
        ) as exc:
            self._reinitialize = True
            raise KeyManagerUnavailable(f"{self._where()}: {_pkcs11_text(exc)}") from None
        except p11.PKCS11Error as exc:
            if operation == "encrypt":  # a mechanism or parameters the token will not take
                raise KeyManagerRefused(
                    f"{self._where()} does not encrypt with CKM_AES_GCM and a nonce of ours "
                    f"({_pkcs11_text(exc)})"
                ) from None
            # What SoftHSM2 says when the tag fails is GeneralError.
            raise KeyManagerRefused(
                f"{self._where()} does not decrypt it ({type(exc).__name__}): "
                "another key, or a damaged line"
            ) from None

    def encrypt(self, key_name: str, plaintext: bytes, aad: bytes) -> bytes:
        from pkcs11 import GCMParams

        nonce = os.urandom(NONCE_SIZE)
        params = GCMParams(nonce, aad, TAG_SIZE * 8)
        sealed = self._with_key(key_name, lambda key: self._gcm(key, "encrypt", plaintext, params))
        return nonce + sealed

    def decrypt(self, key_name: str, wrapped: bytes, aad: bytes) -> bytes:
        from pkcs11 import GCMParams

        params = GCMParams(wrapped[:NONCE_SIZE], aad, TAG_SIZE * 8)
        return self._with_key(
            key_name,
            lambda key: self._gcm(key, "decrypt", wrapped[NONCE_SIZE:], params),
        )

    def create_key(self, key_name: str | None) -> str:
        """An AES-256 key generated on the token, kept there (CKA_TOKEN), never to leave it
        (CKA_EXTRACTABLE false, CKA_SENSITIVE true), for Encrypt and Decrypt only."""
        from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
        from pkcs11 import exceptions as p11

        if not key_name:
            raise KeyManagerRefused("an HSM key needs a label (--pkcs11-key-label)")

        def generate(session: Any) -> str:
            found = list(session.get_objects({Attribute.LABEL: key_name}))
            if found:
                raise KeyManagerRefused(f"{self._where()} has a key with that label already")
            try:
                session.generate_key(
                    KeyType.AES,
                    256,
                    label=key_name,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                    },
                )
            except p11.PKCS11Error as exc:
                raise KeyManagerRefused(
                    f"{self._where()} does not make the key: {_pkcs11_text(exc)}"
                ) from None
            return key_name

        return self._in_session(generate, rw=True)

    def warnings(self, key_name: str) -> list[str]:
        from pkcs11 import Attribute

        def attributes(key: Any) -> list[str]:
            found = []
            where = f"{describe_key(self.kind, key_name)} on {self._where()}"
            if key[Attribute.EXTRACTABLE]:
                found.append(f"{where} can be extracted (CKA_EXTRACTABLE)")
            if not key[Attribute.SENSITIVE]:
                found.append(f"{where} is not sensitive (CKA_SENSITIVE)")
            return found

        return self._with_key(key_name, attributes)


def _pkcs11_text(exc: Exception) -> str:
    detail = str(exc).strip()
    name = type(exc).__name__
    return f"the module fails ({name}: {detail})" if detail else f"the module fails ({name})"


class KmipManager:
    """A KMS over KMIP 1.4 (whose Encrypt and Decrypt carry GCM's additional data and tag),
    with PyKMIP for the messages and this class for the connection: mutual TLS (the client's
    certificate and key), the server's certificate verified against ``ca`` (or the system's
    CAs) and its name against ``host`` (PyKMIP's own client checks no host name). One
    connection per call; ``timeout`` bounds each of its socket operations."""

    kind = "kmip"
    MAX_MESSAGE = 1 << 20

    def __init__(
        self, host: str, port: int, cert: str, key: str, ca: str | None, timeout: float
    ) -> None:
        self._host = host
        self._port = port
        self._cert = cert
        self._key = key
        self._ca = ca
        self._timeout = timeout
        # PyKMIP takes half a second to import: once, here, rather than in the first call,
        # which --kms-timeout bounds.
        import kmip.core.factories.attributes
        import kmip.core.messages.payloads
        import kmip.core.utils  # noqa: F401

    def __repr__(self) -> str:
        return f"KmipManager({self._host}:{self._port})"

    def _where(self) -> str:
        return f"KMIP server {self._host}:{self._port}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._ca:
            context.load_verify_locations(self._ca)
        else:
            context.load_default_certs()
        context.load_cert_chain(self._cert, self._key)
        return context

    def _exchange(self, operation: Any, payload: Any) -> Any:
        """Send one request, return its response payload; KeyManagerRefused if the server
        answers with a failure."""
        from kmip import enums
        from kmip.core import primitives
        from kmip.core.messages import contents, messages
        from kmip.core.utils import BytearrayStream

        version = enums.KMIPVersion.KMIP_1_4
        item = messages.RequestBatchItem(
            operation=primitives.Enumeration(enums.Operation, operation, tag=enums.Tags.OPERATION),
            request_payload=payload,
        )
        header = messages.RequestHeader(
            protocol_version=contents.ProtocolVersion(1, 4), batch_count=contents.BatchCount(1)
        )
        stream = BytearrayStream()
        messages.RequestMessage(request_header=header, batch_items=[item]).write(stream, version)
        try:
            context = self._context()
            with (
                socket.create_connection((self._host, self._port), timeout=self._timeout) as raw,
                context.wrap_socket(raw, server_hostname=self._host) as tls,
            ):
                tls.sendall(stream.buffer)
                head = _read_exactly(tls, 8)  # tag (3), type (1), length (4)
                length = int.from_bytes(head[4:], "big")
                if length > self.MAX_MESSAGE:
                    raise KeyManagerUnavailable(f"{self._where()}: an answer of {length} bytes")
                body = _read_exactly(tls, length)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            text = (
                getattr(exc, "verify_message", None)  # the server's certificate, refused
                or getattr(exc, "reason", None)
                or getattr(exc, "strerror", None)
                or str(exc)
            )
            raise KeyManagerUnavailable(f"{self._where()}: {text or type(exc).__name__}") from None
        try:
            response = messages.ResponseMessage()
            response.read(BytearrayStream(head + body), version)
            [result] = response.batch_items
        except Exception as exc:  # PyKMIP's decoder raises what it likes
            raise KeyManagerUnavailable(
                f"{self._where()}: an answer it cannot read ({exc})"
            ) from None
        if result.result_status.value != enums.ResultStatus.SUCCESS:
            reason = result.result_reason.value.name if result.result_reason else "failed"
            message = result.result_message.value if result.result_message else ""
            raise KeyManagerRefused(f"{self._where()}: {reason}: {message}".rstrip(": "))
        return result.response_payload

    @staticmethod
    def _gcm() -> Any:
        from kmip import enums
        from kmip.core import attributes

        return attributes.CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            tag_length=TAG_SIZE,
        )

    def encrypt(self, key_name: str, plaintext: bytes, aad: bytes) -> bytes:
        from kmip import enums
        from kmip.core.messages import payloads

        nonce = os.urandom(NONCE_SIZE)
        request = payloads.EncryptRequestPayload(
            unique_identifier=key_name,
            cryptographic_parameters=self._gcm(),
            data=plaintext,
            iv_counter_nonce=nonce,
            auth_additional_data=aad,
        )
        answer = self._exchange(enums.Operation.ENCRYPT, request)
        if not answer.auth_tag or len(answer.auth_tag) != TAG_SIZE:
            raise KeyManagerRefused(f"{self._where()}: Encrypt gave no GCM tag (KMIP 1.4 needed)")
        return nonce + answer.data + answer.auth_tag

    def decrypt(self, key_name: str, wrapped: bytes, aad: bytes) -> bytes:
        from kmip import enums
        from kmip.core.messages import payloads

        request = payloads.DecryptRequestPayload(
            unique_identifier=key_name,
            cryptographic_parameters=self._gcm(),
            data=wrapped[NONCE_SIZE:-TAG_SIZE],
            iv_counter_nonce=wrapped[:NONCE_SIZE],
            auth_additional_data=aad,
            auth_tag=wrapped[-TAG_SIZE:],
        )
        return bytes(self._exchange(enums.Operation.DECRYPT, request).data)

    def create_key(self, key_name: str | None) -> str:
        """An AES-256 key made by the server, owned by this client's certificate, for Encrypt
        and Decrypt only, and activated; its unique identifier. (Whether the server lets its
        owner Get the key's value is the server's policy: PyKMIP's does.)"""
        from kmip import enums
        from kmip.core import attributes, objects
        from kmip.core.factories.attributes import AttributeFactory
        from kmip.core.messages import payloads

        make = AttributeFactory().create_attribute
        kind = enums.AttributeType
        template = objects.TemplateAttribute(
            attributes=[
                make(kind.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
                make(kind.CRYPTOGRAPHIC_LENGTH, 256),
                make(
                    kind.CRYPTOGRAPHIC_USAGE_MASK,
                    [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT],
                ),
            ]
        )
        created = self._exchange(
            enums.Operation.CREATE,
            payloads.CreateRequestPayload(
                object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template
            ),
        )
        uid = created.unique_identifier
        self._exchange(
            enums.Operation.ACTIVATE,
            payloads.ActivateRequestPayload(unique_identifier=attributes.UniqueIdentifier(uid)),
        )
        return str(uid)

    def warnings(self, key_name: str) -> list[str]:
        return []


def _read_exactly(stream: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the connection closed mid-answer")
        data += chunk
    return bytes(data)


@dataclass(frozen=True, kw_only=True)
class KeystoreSettings:
    """The key managers' view of the Config (:meth:`trios3.config.Config.keystore`)."""

    pkcs11_module: str | None
    pkcs11_token_label: str | None
    pkcs11_pin: str | None = field(repr=False)
    kmip_host: str | None
    kmip_port: int
    kmip_cert: str | None
    kmip_key: str | None
    kmip_ca: str | None
    timeout: float  # seconds one call may take
    cache_seconds: float  # how long a decrypted key is kept; refreshed at half of it

    def manager(self, kind: str) -> KeyManager:
        """The key manager of a line's kind (``build_config`` has checked its settings)."""
        if kind == "pkcs11":
            assert self.pkcs11_module and self.pkcs11_token_label and self.pkcs11_pin
            return Pkcs11Manager(self.pkcs11_module, self.pkcs11_token_label, self.pkcs11_pin)
        if kind == "kmip":
            assert self.kmip_host and self.kmip_cert and self.kmip_key
            return KmipManager(
                self.kmip_host,
                self.kmip_port,
                self.kmip_cert,
                self.kmip_key,
                self.kmip_ca,
                self.timeout,
            )
        raise ValueError(f"no key manager {kind!r}")

    def describe(self, kind: str) -> str:
        """Where the keys of ``kind`` are: ``PKCS#11 token 'trios3'``, ``KMIP server h:p``."""
        if kind == "pkcs11":
            return f"PKCS#11 token {self.pkcs11_token_label!r}"
        return f"KMIP server {self.kmip_host}:{self.kmip_port}"


# -- what the Keyring holds -----------------------------------------------------------------


class HeldKey:
    """A master key that a key manager keeps, as the Keyring sees it (a ``WrappingKey``): the
    key id of its line, and wrap/unwrap with the decrypted copy while that copy is fresh.

    :func:`keep_keys_fresh` puts the copy here (:meth:`hold`) and says why it could not
    (:meth:`failed`). A copy older than its time is dropped at the next use, and then every
    wrap and unwrap raises ``S3Error("ServiceUnavailable")``. Used from the trio thread only
    (requests and the refreshing task), so nothing here needs a lock.
    """

    __slots__ = ("_clock", "_key", "_valid_until", "key_id", "last_failure", "managed")

    def __init__(self, managed: ManagedKey, clock: Callable[[], float] = time.monotonic) -> None:
        self.managed = managed
        self.key_id: str = managed.key_id
        self._clock = clock
        self._key: MasterKey | None = None
        self._valid_until = -math.inf
        self.last_failure: str | None = None  # why the last refresh failed, if it did

    def __repr__(self) -> str:
        return f"HeldKey(key_id={self.key_id!r}, {self.managed.describe()})"

    def hold(self, key: MasterKey, seconds: float) -> None:
        """Keep ``key``, just decrypted, for ``seconds``."""
        if key.key_id != self.key_id:
            raise ValueError("not this line's key")
        self._key = key
        self._valid_until = self._clock() + seconds
        self.last_failure = None

    def failed(self, reason: str) -> None:
        """The last refresh failed, for ``reason``; the copy, if fresh, stays until its time."""
        self.last_failure = reason

    def remaining(self) -> float:
        """Seconds the copy is still good for (0 when there is none)."""
        return max(0.0, self._valid_until - self._clock()) if self._current() else 0.0

    def _current(self) -> MasterKey | None:
        if self._key is not None and self._clock() >= self._valid_until:
            self._key = None  # its time is up: forget it
        return self._key

    def problem(self) -> str | None:
        """Why this key cannot be used now, or None."""
        if self._current() is not None:
            return None
        never = self._valid_until == -math.inf
        reason = self.last_failure or ("not loaded yet" if never else "its copy has expired")
        return f"master key {self.key_id} is not available: {reason}"

    def _fresh(self) -> MasterKey:
        key = self._current()
        if key is None:
            raise S3Error("ServiceUnavailable", UNAVAILABLE_MESSAGE, headers={"Retry-After": "5"})
        return key

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return self._fresh().wrap(data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return self._fresh().unwrap(wrapped, context)


def keys_problem(held: Sequence[HeldKey]) -> str | None:
    """Why some master key cannot be used now (the first one's reason), or None: readiness."""
    for key in held:
        problem = key.problem()
        if problem is not None:
            return problem
    return None


# -- the task that keeps them fresh ---------------------------------------------------------


class _Refresher:
    """The state of :func:`keep_keys_fresh`: a manager and a one-call slot per kind, when
    each key is due, when a failing key's copy expires (to say so), and what was last logged
    for each."""

    def __init__(
        self,
        held: Sequence[HeldKey],
        settings: KeystoreSettings,
        managers: dict[str, KeyManager] | None,
    ) -> None:
        kinds = sorted({key.managed.manager for key in held})
        self.held = held
        self.settings = settings
        self.managers = managers or {kind: settings.manager(kind) for kind in kinds}
        self.slots = {kind: trio.CapacityLimiter(1) for kind in self.managers}
        self.refresh_after = settings.cache_seconds / 2
        self.retry_after = min(RETRY_SECONDS, self.refresh_after)
        self.due = {key.key_id: -math.inf for key in held}
        self.expiring: dict[str, float] = {}  # failing keys whose copy is still good: until
        self.logged: dict[str, str | None] = {key.key_id: None for key in held}

    async def refresh(self, key: HeldKey, *, starting: bool = False) -> KeyManagerError | None:
        """One decrypt of ``key``'s line: its copy renewed, or why not (also recorded and
        logged; ``starting``: a refusal is not logged, for start-up reports it)."""
        kind = key.managed.manager
        manager, slot = self.managers[kind], self.slots[kind]
        busy = slot.borrowed_tokens > 0
        started = time.perf_counter()
        error: KeyManagerError | None = None
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                fresh = await trio.to_thread.run_sync(
                    partial(unseal_intermediate, manager, key.managed),
                    limiter=slot,
                    abandon_on_cancel=True,  # a thread cannot be cancelled: see the module
                )
            except KeyManagerError as exc:
                error = exc
            except Exception as exc:  # a failing library must not stop the server
                log.exception("master key %s: the key manager call failed", key.key_id)
                error = KeyManagerUnavailable(f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            error = KeyManagerUnavailable(
                f"no answer within {self.settings.timeout:g} s"
                + (" (its previous call has not returned yet)" if busy else "")
            )
        ms = (time.perf_counter() - started) * 1000
        log.debug(
            "key manager call: %s decrypt for master key %s, %.1f ms, %s",
            kind,
            key.key_id,
            ms,
            "ok" if error is None else "failed",
        )
        now = trio.current_time()
        if error is None:
            key.hold(fresh, self.settings.cache_seconds)
            self.expiring.pop(key.key_id, None)
            self.due[key.key_id] = now + self.refresh_after
            if self.logged[key.key_id] != "ok":
                log.info(
                    "master key %s: decrypted by the %s (%s) in %.1f ms; kept %g s, "
                    "decrypted again every %g s",
                    key.key_id,
                    key.managed.describe(),
                    self.settings.describe(kind),
                    ms,
                    self.settings.cache_seconds,
                    self.refresh_after,
                )
            self.logged[key.key_id] = "ok"
            return None
        text = f"{key.managed.describe()}: {error}"
        key.failed(text)
        self.due[key.key_id] = now + self.retry_after
        left = key.remaining()
        if left:
            self.expiring[key.key_id] = now + left
        state = (
            f"the copy in memory stays good for {left:.0f} s more"
            if left
            else "no copy in memory: requests that need this key get 503"
        )
        said = f"{text}|{bool(left)}"
        if not (starting and isinstance(error, KeyManagerRefused)):
            level = logging.DEBUG if self.logged[key.key_id] == said else logging.WARNING
            log.log(level, "master key %s: %s; %s", key.key_id, text, state)
            self.logged[key.key_id] = said
        return error

    async def run(self, *, strict: bool, task_status: trio.TaskStatus[None]) -> None:
        for key in self.held:
            error = await self.refresh(key, starting=True)
            if isinstance(error, KeyManagerRefused) or (strict and error is not None):
                raise KeysRefused(f"master key {key.key_id}: {key.managed.describe()}: {error}")
        task_status.started()
        while True:
            await trio.sleep_until(min([*self.due.values(), *self.expiring.values()]))
            for key in self.held:
                if self.expiring.get(key.key_id, math.inf) <= trio.current_time():
                    del self.expiring[key.key_id]
                    if key.problem() is not None:
                        self.logged[key.key_id] = f"{key.last_failure}|{False}"
                        log.warning(
                            "master key %s: its copy has expired: requests that need this key "
                            "get 503 until the key manager answers (%s)",
                            key.key_id,
                            key.last_failure,
                        )
                if self.due[key.key_id] <= trio.current_time():
                    await self.refresh(key)


async def keep_keys_fresh(
    held: Sequence[HeldKey],
    settings: KeystoreSettings,
    *,
    strict: bool = False,
    managers: dict[str, KeyManager] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a decrypted copy of every key of ``held`` for as long as this task runs (a task of
    the server's nursery: cancelling it is the end).

    Started with ``nursery.start``, it first asks the key manager for each key once, and
    reports started after that. If a key manager *refused* a key (no such key, a PIN refused,
    a line its key does not decrypt) it raises :class:`KeysRefused` instead: a configuration
    to fix, which no retry mends, so the server does not start. If one *does not answer*
    (down, unreachable, slower than ``--kms-timeout``), it reports started all the same: the
    proxy serves, not ready, and this task keeps trying every few seconds. ``strict`` (the
    offline tools): any failure of the first round raises.

    Afterwards each key is decrypted again at half of ``--kms-cache-seconds``; a failure is
    retried after at most :data:`RETRY_SECONDS`, and the copy in memory stays good until its
    time is up. A PIN refused is never tried again (:class:`PinRefused`). ``managers``
    replaces the key managers ``settings`` would make (tests)."""
    await _Refresher(held, settings, managers).run(strict=strict, task_status=task_status)
