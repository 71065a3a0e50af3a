"""What the client asserted about the body, checked over the plaintext it sent.

The backend only ever sees ciphertext, so its own checksums cannot vouch for the client's data:
the proxy verifies Content-MD5, a hex ``x-amz-content-sha256`` and the ``x-amz-checksum-*``
value (header or trailer) itself, and echoes the checksum the way S3 does on PutObject.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Protocol

from awscrt import checksums as crt

from trios3.core.errors import S3Error

CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
_DIGEST_SIZES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
_SUPPORTED = "[CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
_SPACE = " \t\r\n"  # not str.strip()'s Unicode spaces: "\xa0" is no part of a digest's text


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A running awscrt CRC with the hashlib update/digest shape."""

    def __init__(self, function: Callable[[bytes, int], int], size: int) -> None:
        self._function = function
        self._size = size
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


def new_checksum(algorithm: str) -> _Digest:
    """A fresh incremental digest for one of CHECKSUM_ALGORITHMS."""
    if algorithm == "crc32":
        return _Crc(crt.crc32, 4)
    if algorithm == "crc32c":
        return _Crc(crt.crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(crt.crc64nvme, 8)
    return hashlib.new(algorithm)


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The base64 checksum S3 would report for ``data``."""
    digest = new_checksum(algorithm)
    digest.update(data)
    return base64.b64encode(digest.digest()).decode("ascii")


class PayloadChecks:
    """The assertions one request makes about its body, and their running digests.

    Only what was asserted is computed (MD5 only when Content-MD5 was sent). Feed the plaintext
    with :meth:`update`, then call :meth:`verify` with the aws-chunked trailers, if any.
    """

    def __init__(
        self,
        *,
        md5: bytes | None = None,
        sha256_hex: str | None = None,
        algorithm: str | None = None,
        expected: bytes | None = None,
        in_trailer: bool = False,
    ) -> None:
        self._md5_expected = md5
        self._sha256_expected = sha256_hex
        self._algorithm = algorithm
        self._expected = expected
        self._in_trailer = in_trailer
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 is not None else None
        self._sha256 = hashlib.sha256() if sha256_hex is not None else None
        self._checksum = new_checksum(algorithm) if algorithm is not None else None
        self._verified: dict[str, str] = {}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> PayloadChecks:
        """Collect the assertions from request headers (lower-case names)."""
        md5 = None
        if "content-md5" in headers:
            md5 = _b64(headers["content-md5"].strip(_SPACE), 16)
            if md5 is None:
                raise S3Error("InvalidDigest")

        sha256_hex = None
        content_sha256 = headers.get("x-amz-content-sha256", "").strip(_SPACE)
        if len(content_sha256) == 64 and all(c in "0123456789abcdefABCDEF" for c in content_sha256):
            sha256_hex = content_sha256.lower()

        asserted: list[tuple[str, bytes | None, bool]] = []  # (algorithm, value, in trailer)
        for algorithm in CHECKSUM_ALGORITHMS:
            name = f"x-amz-checksum-{algorithm}"
            if name in headers:
                value = _b64(headers[name].strip(_SPACE), _DIGEST_SIZES[algorithm])
                if value is None:
                    raise S3Error("InvalidRequest", f"Value for {name} header is invalid.")
                asserted.append((algorithm, value, False))
        for name in filter(
            None, (n.strip(_SPACE).lower() for n in headers.get("x-amz-trailer", "").split(","))
        ):
            algorithm = name.removeprefix("x-amz-checksum-")
            if name == algorithm or algorithm not in _DIGEST_SIZES:
                raise S3Error(
                    "InvalidRequest",
                    "The value specified in the x-amz-trailer header is not supported",
                )
            asserted.append((algorithm, None, True))
        if len(asserted) > 1:
            raise S3Error(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. "
                "Multiple checksum Types are not allowed.",
            )

        sdk_algorithm = None
        if "x-amz-sdk-checksum-algorithm" in headers:
            sdk_algorithm = headers["x-amz-sdk-checksum-algorithm"].strip(_SPACE).lower()
            if sdk_algorithm not in _DIGEST_SIZES:
                raise S3Error(
                    "InvalidRequest",
                    "Checksum algorithm provided is unsupported. Please try again with any of the "
                    f"valid types: {_SUPPORTED}",
                )
            if asserted and asserted[0][0] != sdk_algorithm:
                raise S3Error(
                    "InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header is invalid."
                )
        if asserted:
            algorithm, expected, in_trailer = asserted[0]
            return cls(
                md5=md5,
                sha256_hex=sha256_hex,
                algorithm=algorithm,
                expected=expected,
                in_trailer=in_trailer,
            )
        # An algorithm with no value: S3 computes the checksum and reports it.
        return cls(md5=md5, sha256_hex=sha256_hex, algorithm=sdk_algorithm)

    @property
    def content_md5(self) -> bytes | None:
        """The Content-MD5 the client sent (raw 16 bytes): what :meth:`verify` holds it to."""
        return self._md5_expected

    @property
    def algorithm(self) -> str | None:
        """The x-amz-checksum algorithm the client asked for, if any."""
        return self._algorithm

    def update(self, data: bytes) -> None:
        """Feed plaintext body bytes, in order."""
        if self._md5 is not None:
            self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._checksum is not None:
            self._checksum.update(data)

    def verify(self, trailers: Mapping[str, str] | None = None) -> None:
        """Compare every assertion with what was fed; raise S3Error on the first mismatch."""
        if self._md5 is not None:
            assert self._md5_expected is not None
            if not hmac.compare_digest(self._md5.digest(), self._md5_expected):
                raise S3Error(
                    "BadDigest", "The Content-MD5 you specified did not match what we received."
                )
        if self._sha256 is not None:
            assert self._sha256_expected is not None
            computed = self._sha256.hexdigest()
            if not hmac.compare_digest(computed, self._sha256_expected):
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    fields={
                        "ClientComputedContentSHA256": self._sha256_expected,
                        "S3ComputedContentSHA256": computed,
                    },
                )
        if self._checksum is None:
            return
        algorithm = self._algorithm
        assert algorithm is not None
        name = f"x-amz-checksum-{algorithm}"
        expected = self._expected
        if self._in_trailer:
            raw = (trailers or {}).get(name)
            if raw is None:
                raise S3Error("MalformedTrailerError", f"The trailer {name} is missing.")
            expected = _b64(raw.strip(_SPACE), _DIGEST_SIZES[algorithm])
            if expected is None:
                raise S3Error("InvalidRequest", f"Value for {name} trailing header is invalid.")
        computed = self._checksum.digest()
        if expected is not None and not hmac.compare_digest(computed, expected):
            raise S3Error(
                "BadDigest",
                f"The {algorithm.upper()} you specified did not match the calculated checksum.",
            )
        self._verified = {name: base64.b64encode(computed).decode("ascii")}

    def response_headers(self) -> dict[str, str]:
        """After :meth:`verify`: the checksum header S3 echoes on PutObject, else {}."""
        return dict(self._verified)


def _b64(value: str, size: int) -> bytes | None:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == size else None


_COMBINE = {
    "crc32": crt.combine_crc32,
    "crc32c": crt.combine_crc32c,
    "crc64nvme": crt.combine_crc64nvme,
}
XML_NAMES = {
    "crc32": "ChecksumCRC32",
    "crc32c": "ChecksumCRC32C",
    "crc64nvme": "ChecksumCRC64NVME",
    "sha1": "ChecksumSHA1",
    "sha256": "ChecksumSHA256",
}


def multipart_checksums(
    headers: Mapping[str, str],
    part_checksums: list[Mapping[str, str]],
    part_sizes: list[int],
) -> dict[str, str]:
    """The checksum elements of a CompleteMultipartUpload result, over the plaintext.

    Each part's checksum was verified over its plaintext when the part was uploaded; the
    values here are those the client lists for its parts. A full-object checksum the client
    sends with the Complete (``x-amz-checksum-<crc>``) must equal the CRCs of its parts
    combined, or the upload is refused (BadDigest); otherwise, when every part carries one,
    the composite checksum (the checksum of the part checksums, ``-N``) is reported, as S3
    does. Nothing is reported when the parts carry none.
    """
    full = [a for a in CHECKSUM_ALGORITHMS if f"x-amz-checksum-{a}" in headers]
    candidates = full or [
        a for a in CHECKSUM_ALGORITHMS if all(XML_NAMES[a] in p for p in part_checksums)
    ]
    if not candidates or not part_checksums:
        return {}
    algorithm = candidates[0]
    size = _DIGEST_SIZES[algorithm]
    raw = []
    for listed in part_checksums:
        value = _b64(listed.get(XML_NAMES[algorithm], ""), size)
        if value is None:
            if full:
                raise S3Error(
                    "InvalidRequest",
                    f"Every part needs a {algorithm.upper()} checksum for a full-object checksum.",
                )
            return {}
        raw.append(value)
    if full:
        name = f"x-amz-checksum-{algorithm}"
        # Compared as digests, never as text: hmac.compare_digest refuses non-ASCII str.
        claimed = _b64(headers[name].strip(_SPACE), size)
        if claimed is None:
            raise S3Error("InvalidRequest", f"Value for {name} header is invalid.")
        combine = _COMBINE.get(algorithm)
        if combine is None:
            raise S3Error(
                "InvalidRequest",
                f"A full-object checksum cannot be {algorithm.upper()}; use a CRC.",
            )
        value = int.from_bytes(raw[0], "big")
        for digest, length in zip(raw[1:], part_sizes[1:], strict=True):
            value = combine(value, int.from_bytes(digest, "big"), length)
        digest = value.to_bytes(size, "big")
        computed = base64.b64encode(digest).decode("ascii")
        if not hmac.compare_digest(digest, claimed):
            raise S3Error(
                "BadDigest",
                f"The {algorithm.upper()} you specified did not match the calculated checksum.",
            )
        return {XML_NAMES[algorithm]: computed, "ChecksumType": "FULL_OBJECT"}
    digest = new_checksum(algorithm)
    for value in raw:
        digest.update(value)
    composite = base64.b64encode(digest.digest()).decode("ascii")
    return {XML_NAMES[algorithm]: f"{composite}-{len(raw)}", "ChecksumType": "COMPOSITE"}
