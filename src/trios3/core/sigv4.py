"""AWS Signature Version 4 for S3: verify what clients send, sign what the proxy sends.

Pure functions over method, raw path, raw query and header pairs, so every quirk of every client
is a unit test. S3 differs from generic SigV4 in two ways that matter here: the canonical URI is
the path URI-encoded *once* with no dot-segment normalisation, and the payload hash line is the
``x-amz-content-sha256`` value (which may be a literal such as ``UNSIGNED-PAYLOAD``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from trios3.core.errors import S3Error
from trios3.core.numbers import parse_decimal

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
PAYLOAD_LITERALS = frozenset(
    {
        UNSIGNED_PAYLOAD,
        STREAMING_PAYLOAD,
        STREAMING_PAYLOAD_TRAILER,
        STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    }
)
# The payload modes whose body is aws-chunked (x-amz-decoded-content-length is its length).
STREAMING_MODES = frozenset(
    {STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER}
)
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800

_SIGV2_MESSAGE = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_PRESIGN_REQUIRED = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)
PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SCOPE_DATE = re.compile(r"[0-9]{8}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# byte -> its encoding, built once: the encoder is on every request's path.
_ENCODE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
_ENCODE_KEEP_SLASH = list(_ENCODE)
_ENCODE_KEEP_SLASH[ord("/")] = "/"


@dataclass(frozen=True)
class SigningScope:
    """The credential scope: a signing key is valid for one day, region and service."""

    date: str
    region: str
    service: str

    def __str__(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class RequestAuth:
    """What the client claims: parsed from Authorization header or presigned query."""

    access_key: str
    scope: SigningScope
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    presigned: bool
    expires: int | None
    payload_hash: str


def derive_signing_key(secret_key: str, scope: SigningScope) -> bytes:
    """kSigning = HMAC chain over date, region, service, "aws4_request"."""
    key = _hmac(("AWS4" + secret_key).encode(), scope.date)
    key = _hmac(key, scope.region)
    key = _hmac(key, scope.service)
    return _hmac(key, "aws4_request")


class SigningKeys:
    """Signing keys by secret and scope: a key is valid for a day, a region and a service,
    and deriving one costs four HMACs, so it is derived once, not on every request. Bounded:
    past ``limit`` keys (credentials by days by regions) it starts afresh."""

    def __init__(self, limit: int = 4096) -> None:
        self._keys: dict[tuple[str, SigningScope], bytes] = {}
        self._limit = limit

    def get(self, secret_key: str, scope: SigningScope) -> bytes:
        entry = (secret_key, scope)
        key = self._keys.get(entry)
        if key is None:
            if len(self._keys) >= self._limit:
                self._keys.clear()
            key = self._keys[entry] = derive_signing_key(secret_key, scope)
        return key


def uri_encode(value: str, *, encode_slash: bool = True) -> str:
    """Percent-encode UTF-8 bytes except RFC 3986 unreserved characters, upper-case hex."""
    table = _ENCODE if encode_slash else _ENCODE_KEEP_SLASH
    return "".join([table[b] for b in value.encode("utf-8", "surrogateescape")])


def canonical_query_string(query: Sequence[tuple[str, str]]) -> str:
    """Canonical form of decoded query pairs; also what the caller should put on the wire."""
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


def chunk_signature(
    signing_key: bytes,
    amz_date: str,
    scope: SigningScope,
    previous_signature: str,
    chunk_sha256_hex: str,
) -> str:
    """Signature of one aws-chunked chunk, chained to the previous one (seed first)."""
    string_to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256-PAYLOAD",
            amz_date,
            str(scope),
            previous_signature,
            EMPTY_SHA256,
            chunk_sha256_hex,
        )
    )
    return _hmac(signing_key, string_to_sign).hex()


def trailer_signature(
    signing_key: bytes,
    amz_date: str,
    scope: SigningScope,
    previous_signature: str,
    trailer_sha256_hex: str,
) -> str:
    """Signature of the trailer block, chained to the final (zero-length) chunk's signature."""
    string_to_sign = "\n".join(
        ("AWS4-HMAC-SHA256-TRAILER", amz_date, str(scope), previous_signature, trailer_sha256_hex)
    )
    return _hmac(signing_key, string_to_sign).hex()


def parse_auth(
    method: str,
    raw_path: str,
    query_string: str,
    headers: Sequence[tuple[str, str]],
) -> RequestAuth | None:
    """Find out which authentication the request claims, rejecting what we cannot verify.

    Returns None for an anonymous request. Nothing is verified here, only parsed, so the caller
    can look up the secret for ``access_key`` before calling :func:`verify`.
    """
    del method, raw_path  # part of the signature, not of the claim
    authorization = _header(headers, "authorization")
    params = _raw_query_pairs(query_string)
    names = {_unquote(k) for k, _ in params}
    if "AWSAccessKeyId" in names or ("Signature" in names and "Expires" in names):
        raise S3Error("InvalidRequest", _SIGV2_MESSAGE)
    presigned = any(name in names for name in PRESIGN_PARAMS)
    if authorization is not None and presigned:
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
        )
    if authorization is not None:
        return _parse_header_auth(authorization, headers)
    if presigned:
        return _parse_presigned(params, headers)
    return None


def check_signed_headers(headers: Iterable[str], auth: RequestAuth) -> None:
    """As AWS: every ``x-amz-*`` header a request carries must be signed, or a presigned PUT
    could be turned into a copy of any object, say. ``x-amz-content-sha256`` may go unsigned:
    its value is part of the canonical request."""
    unsigned = sorted(
        n
        for n in headers
        if n.startswith("x-amz-") and n not in auth.signed_headers and n != "x-amz-content-sha256"
    )
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            fields={"HeadersNotSigned": ", ".join(unsigned)},
        )


def verify(
    auth: RequestAuth,
    secret_key: str,
    method: str,
    raw_path: str,
    query_string: str,
    headers: Sequence[tuple[str, str]],
    now: datetime,
    *,
    keys: SigningKeys | None = None,
) -> bytes:
    """Check time and signature; return the signing key for chunk and trailer signatures.

    Clients disagree on how they percent-encode paths and queries on the wire, so the canonical
    request is tried in its normalised form first and then as received; the signature must match
    one of them. Both forms decode to the same path and query, so neither lets a signature cover
    a different request.
    """
    error_code = (
        "AuthorizationQueryParametersError" if auth.presigned else "AuthorizationHeaderMalformed"
    )
    if auth.amz_date[:8] != auth.scope.date:
        raise S3Error(
            error_code,
            f"The authorization header is malformed; Invalid credential date "
            f'"{auth.scope.date}". This date is not the same as X-Amz-Date: "{auth.amz_date[:8]}".',
        )
    if auth.scope.service != "s3":
        raise S3Error(
            error_code,
            f'The authorization header is malformed; incorrect service "{auth.scope.service}". '
            'This endpoint belongs to "s3".',
        )
    _check_time(auth, now)

    if keys is None:
        signing_key = derive_signing_key(secret_key, auth.scope)
    else:
        signing_key = keys.get(secret_key, auth.scope)
    header_block = _canonical_headers(auth.signed_headers, headers)
    first_canonical: str | None = None
    first_sts: str | None = None
    for uri in _candidate_uris(raw_path):
        for query in _candidate_queries(query_string, auth.presigned):
            canonical = "\n".join((method.upper(), uri, query, header_block, auth.payload_hash))
            string_to_sign = _string_to_sign(auth.amz_date, auth.scope, canonical)
            expected = _hmac(signing_key, string_to_sign).hex()
            if hmac.compare_digest(expected, auth.signature):
                return signing_key
            if first_canonical is None:
                first_canonical, first_sts = canonical, string_to_sign
    raise S3Error(
        "SignatureDoesNotMatch",
        fields={
            "AWSAccessKeyId": auth.access_key,
            "StringToSign": first_sts or "",
            "SignatureProvided": auth.signature,
            "CanonicalRequest": first_canonical or "",
        },
    )


def sign_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    payload_hash: str,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime,
    service: str = "s3",
    *,
    keys: SigningKeys | None = None,
) -> list[tuple[str, str]]:
    """Sign the proxy's own request to the backend; return the headers to add to it.

    ``path`` goes into the canonical request exactly as given (it is already encoded as it will
    be on the wire); ``query`` holds decoded pairs and must be sent as
    :func:`canonical_query_string` renders them. Every header in ``headers`` is signed.
    ``keys`` keeps the day's signing key, so that it is derived once, not per request.
    """
    lowered = [(name.lower(), value) for name, value in headers]
    own = {"x-amz-date", "x-amz-content-sha256", "authorization"}
    if any(name in own for name, _ in lowered):
        raise ValueError("sign_request adds x-amz-date, x-amz-content-sha256 and authorization")
    if not any(name == "host" for name, _ in lowered):
        raise ValueError("sign_request needs a host header")
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = SigningScope(amz_date[:8], region, service)
    added = [("x-amz-date", amz_date), ("x-amz-content-sha256", payload_hash)]
    all_headers = lowered + added
    signed = tuple(sorted({name for name, _ in all_headers}))
    canonical = "\n".join(
        (
            method.upper(),
            path,
            canonical_query_string(query),
            _canonical_headers(signed, all_headers),
            payload_hash,
        )
    )
    if keys is None:
        signing_key = derive_signing_key(secret_key, scope)
    else:
        signing_key = keys.get(secret_key, scope)
    signature = _hmac(signing_key, _string_to_sign(amz_date, scope, canonical)).hex()
    authorization = (
        f"{ALGORITHM} Credential={access_key}/{scope},"
        f"SignedHeaders={';'.join(signed)},Signature={signature}"
    )
    return [*added, ("authorization", authorization)]


# -- parsing ------------------------------------------------------------------------------------


def _parse_header_auth(authorization: str, headers: Sequence[tuple[str, str]]) -> RequestAuth:
    value = authorization.strip()
    if value.startswith("AWS "):
        raise S3Error("InvalidRequest", _SIGV2_MESSAGE)
    if value.startswith("AWS4-ECDSA-P256-SHA256"):
        raise S3Error("NotImplemented", "SigV4a (AWS4-ECDSA-P256-SHA256) is not supported.")
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("InvalidArgument", "Unsupported Authorization Type")
    components: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key in components:
            raise S3Error("AuthorizationHeaderMalformed")
        components[key] = val.strip()
    if set(components) != {"Credential", "SignedHeaders", "Signature"}:
        raise S3Error("AuthorizationHeaderMalformed")
    access_key, scope = _parse_credential(components["Credential"], "AuthorizationHeaderMalformed")
    signed_headers = _parse_signed_headers(
        components["SignedHeaders"], "AuthorizationHeaderMalformed"
    )
    signature = components["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise S3Error("AuthorizationHeaderMalformed")

    amz_date = _header(headers, "x-amz-date")
    if amz_date is not None:
        amz_date = amz_date.strip()
        if not _AMZ_DATE.fullmatch(amz_date) or _parse_amz_date(amz_date) is None:
            raise _bad_date()
    else:
        amz_date = _amz_date_from_http_date(_header(headers, "date"))

    payload_hash = _header(headers, "x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    return RequestAuth(
        access_key=access_key,
        scope=scope,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=amz_date,
        presigned=False,
        expires=None,
        payload_hash=_check_payload_hash(payload_hash.strip()),
    )


def _parse_presigned(
    params: list[tuple[str, str]], headers: Sequence[tuple[str, str]]
) -> RequestAuth:
    code = "AuthorizationQueryParametersError"
    found: dict[str, str] = {}
    for raw_key, raw_value in params:
        key = _unquote(raw_key)
        if key in PRESIGN_PARAMS:
            if key in found:
                raise S3Error(code, f"Duplicate query parameter {key}.")
            found[key] = _unquote(raw_value)
    algorithm = found.get("X-Amz-Algorithm")
    if algorithm == "AWS4-ECDSA-P256-SHA256":
        raise S3Error("NotImplemented", "SigV4a (AWS4-ECDSA-P256-SHA256) is not supported.")
    if len(found) != len(PRESIGN_PARAMS):
        raise S3Error(code, _PRESIGN_REQUIRED)
    if algorithm != ALGORITHM:
        raise S3Error(code, 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    access_key, scope = _parse_credential(found["X-Amz-Credential"], code)
    signed_headers = _parse_signed_headers(found["X-Amz-SignedHeaders"], code)
    amz_date = found["X-Amz-Date"]
    if not _AMZ_DATE.fullmatch(amz_date) or _parse_amz_date(amz_date) is None:
        raise S3Error(
            code,
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
        )
    # Saturated past 18 digits (trios3.core.numbers): a huge value is over a week, as it is.
    expires = parse_decimal(found["X-Amz-Expires"])
    if expires is None:
        raise S3Error(code, "X-Amz-Expires should be a number")
    if expires < 1:
        raise S3Error(code, "X-Amz-Expires must be non-negative")
    if expires > MAX_PRESIGN_EXPIRES:
        raise S3Error(code, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    signature = found["X-Amz-Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise S3Error(code, "X-Amz-Signature must be 64 lower-case hexadecimal characters.")
    payload_hash = _header(headers, "x-amz-content-sha256")
    return RequestAuth(
        access_key=access_key,
        scope=scope,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=amz_date,
        presigned=True,
        expires=expires,
        payload_hash=UNSIGNED_PAYLOAD
        if payload_hash is None
        else _check_payload_hash(payload_hash.strip()),
    )


def _parse_credential(credential: str, code: str) -> tuple[str, SigningScope]:
    # rsplit: some deployments use access keys containing "/"
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or parts[4] != "aws4_request":
        raise S3Error(code, f"The credential {credential!r} is malformed.")
    access_key, date, region, service, _ = parts
    if not _SCOPE_DATE.fullmatch(date) or not region or not service:
        raise S3Error(code, f"The credential {credential!r} is malformed.")
    return access_key, SigningScope(date, region, service)


def _parse_signed_headers(value: str, code: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in names):
        raise S3Error(code, "SignedHeaders must be lower-case header names separated by ';'.")
    if "host" not in names:
        raise S3Error(code, "The host header must be signed.")
    return names


def _check_payload_hash(value: str) -> str:
    if value in PAYLOAD_LITERALS:
        return value
    if _HEX64.fullmatch(value):
        return value.lower()
    if value.startswith("STREAMING-AWS4-ECDSA-P256-SHA256"):
        raise S3Error("NotImplemented", "SigV4a streaming payloads are not supported.")
    raise S3Error(
        "InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-* or a SHA256"
    )


def _bad_date() -> S3Error:
    return S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _amz_date_from_http_date(value: str | None) -> str:
    if value is None:
        raise _bad_date()
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # A date at the edge of the calendar can leave it once moved to UTC.
        parsed = parsed.astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        raise _bad_date() from None
    # Not strftime's %Y, which writes a year before 1000 in fewer than four digits.
    return f"{parsed.year:04d}{parsed:%m%dT%H%M%SZ}"


def _parse_amz_date(value: str) -> datetime | None:
    """``YYYYMMDDTHHMMSSZ`` (checked by _AMZ_DATE's shape) as a UTC time; strptime is slow
    enough to show in a small request's profile."""
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:
        return datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[9:11]),
            int(value[11:13]),
            int(value[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _check_time(auth: RequestAuth, now: datetime) -> None:
    request_time = _parse_amz_date(auth.amz_date)
    assert request_time is not None  # validated by parse_auth
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    server_time = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if auth.presigned:
        assert auth.expires is not None
        if request_time - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        if now - request_time > timedelta(seconds=auth.expires):
            # Computed only once it is known to be past: a request time at the calendar's end
            # plus a week would overflow.
            expiry = request_time + timedelta(seconds=auth.expires)
            raise S3Error(
                "AccessDenied",
                "Request has expired",
                fields={
                    "X-Amz-Expires": str(auth.expires),
                    "Expires": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "ServerTime": server_time,
                },
            )
    elif abs(now - request_time) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            fields={
                "RequestTime": auth.amz_date,
                "ServerTime": server_time,
                "MaxAllowedSkewMilliseconds": "900000",
            },
        )


# -- canonicalisation ---------------------------------------------------------------------------


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _string_to_sign(amz_date: str, scope: SigningScope, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _canonical_headers(signed: Sequence[str], headers: Sequence[tuple[str, str]]) -> str:
    """Canonical header lines plus the signed-header list (the 3rd and 4th canonical parts)."""
    values: dict[str, list[str]] = {name: [] for name in signed}
    for name, value in headers:
        if name in values:
            values[name].append(" ".join(value.split()))
    lines = [f"{name}:{','.join(values[name])}\n" for name in signed]
    return "".join(lines) + "\n" + ";".join(signed)


def _unquote(value: str) -> str:
    """Percent-decode; '+' stays a literal plus (no client's signer treats it as a space)."""
    return unquote_to_bytes(value).decode("utf-8", "surrogateescape")


def _raw_query_pairs(query_string: str) -> list[tuple[str, str]]:
    pairs = []
    for piece in query_string.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((key, value))
    return pairs


def _candidate_uris(raw_path: str) -> list[str]:
    path = raw_path or "/"
    normalised = uri_encode(_unquote(path), encode_slash=False)
    return [normalised] if normalised == path else [normalised, path]


def _candidate_queries(query_string: str, presigned: bool) -> list[str]:
    raw = _raw_query_pairs(query_string)
    if presigned:
        raw = [(k, v) for k, v in raw if _unquote(k) != "X-Amz-Signature"]
    normalised = canonical_query_string([(_unquote(k), _unquote(v)) for k, v in raw])
    as_received = "&".join(f"{k}={v}" for k, v in sorted(raw))
    return [normalised] if normalised == as_received else [normalised, as_received]
