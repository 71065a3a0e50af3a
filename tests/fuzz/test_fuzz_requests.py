"""Fuzzing what a client request carries: its signature, route, headers, ranges and numbers.

Every property holds that any input ends in a result or an S3Error (the proxy's one way of
refusing a request), never another exception: anything else would be a 500. Where a
function has an inverse, the round trip is a property too.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from fuzzing import latin1, numbers, text, usually
from hypothesis import given
from hypothesis import strategies as st

from trios3.core import format as fmt
from trios3.core import headers as hdr
from trios3.core import sigv4
from trios3.core.errors import S3Error
from trios3.core.numbers import parse_decimal, parse_hex
from trios3.core.ranges import (
    content_range,
    parse_content_range,
    parse_copy_range,
    parse_range,
    stored_window,
)
from trios3.core.routing import (
    MAX_KEY_BYTES,
    OPERATIONS,
    parse_copy_source,
    parse_query,
    resolve_target,
)

pytestmark = pytest.mark.fuzz

METHODS = st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "get", ""])


def s3_result(call, *args, **kwargs):
    """The call's result, or None when it refused with an S3Error; anything else fails."""
    try:
        return call(*args, **kwargs)
    except S3Error as error:
        assert error.code and 400 <= error.status <= 599 and error.status != 500
        return None


# -- numbers -----------------------------------------------------------------------------------


@given(numbers())
def test_parse_decimal_reads_ascii_digits_only_and_saturates(value):
    number = parse_decimal(value)
    if not (value and value.isascii() and value.isdigit()):
        assert number is None
    elif len(value.lstrip("0")) > 18:
        assert number == 10**18
    else:
        assert number == int(value.lstrip("0") or "0")


@given(st.one_of(text(20), st.binary(max_size=20)))
def test_parse_hex_reads_ascii_hex_digits_only(value):
    number = parse_hex(value)
    raw = value if isinstance(value, str) else value.decode("latin-1")
    if raw and all(c in "0123456789abcdefABCDEF" for c in raw) and len(raw.lstrip("0")) <= 16:
        assert number == int(raw, 16)
    elif number is not None:
        assert number == 16**16


# -- SigV4 -------------------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
WHEN = datetime(2024, 5, 24, 12, 0, tzinfo=UTC)

RARELY = usually(False, st.just(True))
GOOD_CREDENTIAL = "AK/20240524/us-east-1/s3/aws4_request"
GOOD_SIGNATURE = "0123456789abcdef" * 4
credentials = usually(
    GOOD_CREDENTIAL,
    st.builds(
        lambda k, d, r, s, t: f"{k}/{d}/{r}/{s}/{t}",
        st.sampled_from(["AK", "", "a/b", "\xe9"]),
        st.sampled_from(
            ["20240524", "2024052", "\uff12\uff10\uff12\uff14\uff10\uff15\uff12\uff14", "99991231"]
        ),
        st.sampled_from(["us-east-1", "", "r"]),
        st.sampled_from(["s3", "iam", ""]),
        st.sampled_from(["aws4_request", "aws4", ""]),
    ),
    text(30),
)
signed_header_lists = usually(
    "host;x-amz-content-sha256;x-amz-date",
    st.sampled_from(["host", "", "Host", "host;;", "range", "host;x-amz-date;\xe9", "date;host"]),
    text(20),
)
signatures = usually(
    GOOD_SIGNATURE,
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["", "A" * 64, "0" * 63, "z" * 64]),
    text(70),
)
amz_dates = usually(
    "20240524T120000Z",
    st.sampled_from(
        ["20240524T120000", "99991231T235959Z", "00010101T000000Z", "20241332T256161Z", ""]
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}{d.minute:02d}{d.second:02d}Z"
    ),
    text(20),
)
http_dates = st.one_of(
    st.sampled_from(
        [
            "Fri, 24 May 2024 12:00:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 +0100",
            "Mon, 01 Jan 0999 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 -0100",
            "Fri, 31 Dec 9999 23:59:59 -9999",
            "Wed, 21 Oct 2015 07:28:00 -0000",
            "Wed, 21 Oct 99999999 07:28:00 GMT",
            "Wed, 21 Oct 15 07:28:00 GMT",
            "nonsense",
        ]
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.strftime("%a, %d %b ") + f"{d.year:04d}" + d.strftime(" %H:%M:%S GMT")
    ),
    text(40),
)
payload_hashes = usually(
    sigv4.EMPTY_SHA256,
    st.sampled_from(sorted(sigv4.PAYLOAD_LITERALS)),
    st.sampled_from(["STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "", "E3B0" + "0" * 60]),
    text(70),
)


@st.composite
def authorizations(draw) -> str:
    algorithm = draw(
        usually("AWS4-HMAC-SHA256", st.sampled_from(["AWS4-ECDSA-P256-SHA256", "AWS", "AWS4", ""]))
    )
    parts = [
        f"Credential={draw(credentials)}",
        f"SignedHeaders={draw(signed_header_lists)}",
        f"Signature={draw(signatures)}",
    ]
    if draw(RARELY):
        parts = draw(st.permutations(parts))
    if draw(RARELY):
        parts.append(draw(text(20)))
    separator = draw(usually(",", st.sampled_from([", ", ",,", " "])))
    return f"{algorithm} {separator.join(parts)}"


@st.composite
def presigned_queries(draw) -> str:
    values = {
        "X-Amz-Algorithm": draw(
            usually("AWS4-HMAC-SHA256", st.sampled_from(["AWS4-ECDSA-P256-SHA256", "x"]))
        ),
        "X-Amz-Credential": draw(credentials),
        "X-Amz-Date": draw(amz_dates),
        "X-Amz-Expires": draw(usually("3600", numbers())),
        "X-Amz-SignedHeaders": draw(usually("host", signed_header_lists)),
        "X-Amz-Signature": draw(signatures),
    }
    names = sorted(values)
    if draw(RARELY):
        names = draw(st.lists(st.sampled_from(sorted(values)), max_size=8))
    pairs = [f"{sigv4.uri_encode(n)}={sigv4.uri_encode(values[n])}" for n in names]
    if draw(RARELY):
        pairs.append(draw(text(30)))
    return "&".join(draw(st.permutations(pairs)))


header_names = st.sampled_from(
    [
        "host",
        "authorization",
        "x-amz-date",
        "date",
        "x-amz-content-sha256",
        "x-amz-meta-a",
        "range",
        "content-length",
    ]
)


@st.composite
def request_claims(draw):
    """(method, path, query, headers) that look more or less like a signed request."""
    headers = [("host", draw(st.sampled_from(["h", "bkt.s3.example.com", ""])))]
    presigned = draw(st.booleans())
    if not presigned or draw(RARELY):
        headers.append(("authorization", draw(authorizations())))
    if draw(st.booleans()):
        headers.append(("x-amz-date", draw(amz_dates)))
    if draw(st.booleans()):
        headers.append(("date", draw(http_dates)))
    if draw(usually(True, st.just(False))):
        headers.append(("x-amz-content-sha256", draw(payload_hashes)))
    headers += draw(st.lists(st.tuples(header_names, text(30)), max_size=3))
    query = draw(presigned_queries()) if presigned else draw(st.one_of(st.just(""), text(60)))
    path = "/" + draw(text(30))
    return draw(METHODS), path, query, headers


@given(request_claims(), st.datetimes(timezones=st.sampled_from([UTC, None])))
def test_any_claimed_authentication_parses_and_verifies_or_is_an_s3_error(claims, now):
    method, path, query, headers = claims
    auth = s3_result(sigv4.parse_auth, method, path, query, headers)
    if auth is None:
        return
    assert isinstance(auth, sigv4.RequestAuth)
    s3_result(sigv4.check_signed_headers, [n for n, _ in headers], auth)
    s3_result(sigv4.verify, auth, SECRET, method, path, query, headers, now)
    s3_result(sigv4.verify, auth, SECRET, method, path, query, headers, WHEN)


VALID_AUTHORIZATION = (
    f"AWS4-HMAC-SHA256 Credential={GOOD_CREDENTIAL},SignedHeaders=date;host,"
    f"Signature={GOOD_SIGNATURE}"
)


@given(http_dates, st.datetimes(timezones=st.just(UTC)))
def test_a_date_header_standing_in_for_x_amz_date_is_read_or_access_denied(date, now):
    headers = [
        ("host", "h"),
        ("authorization", VALID_AUTHORIZATION),
        ("date", date),
        ("x-amz-content-sha256", sigv4.EMPTY_SHA256),
    ]
    auth = s3_result(sigv4.parse_auth, "GET", "/b/k", "", headers)
    if auth is not None:
        assert len(auth.amz_date) == 16
        s3_result(sigv4.verify, auth, SECRET, "GET", "/b/k", "", headers, now)


def test_found_a_date_header_at_the_end_of_the_calendar_is_access_denied():
    # Found by the property above: moved to UTC, the date left the calendar (OverflowError,
    # a 500 before authentication).
    headers = [
        ("host", "h"),
        ("authorization", VALID_AUTHORIZATION),
        ("date", "Fri, 31 Dec 9999 23:59:59 -0100"),
        ("x-amz-content-sha256", sigv4.EMPTY_SHA256),
    ]
    with pytest.raises(S3Error) as exc:
        sigv4.parse_auth("GET", "/b/k", "", headers)
    assert exc.value.code == "AccessDenied"


def test_found_a_date_header_before_the_year_1000_keeps_four_year_digits():
    # Found by the property above: strftime("%Y") wrote year 999 as "999".
    headers = [
        ("host", "h"),
        ("authorization", VALID_AUTHORIZATION),
        ("date", "Mon, 01 Jan 0999 00:00:00 GMT"),
        ("x-amz-content-sha256", sigv4.EMPTY_SHA256),
    ]
    auth = sigv4.parse_auth("GET", "/b/k", "", headers)
    assert auth is not None and auth.amz_date == "09990101T000000Z"


def test_found_a_presigned_request_at_the_end_of_the_calendar_is_checked_without_overflow():
    # Found by the property below: its expiry (a week past 9999-12-31) was computed before
    # it was known to be needed (OverflowError).
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AK%2F99991231%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=99991231T235959Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=" + "0" * 64
    )
    auth = sigv4.parse_auth("GET", "/b/k", query, [("host", "h")])
    with pytest.raises(S3Error) as exc:
        sigv4.verify(
            auth, SECRET, "GET", "/b/k", query, [("host", "h")], datetime(9999, 12, 31, 23, 59, 59)
        )
    assert exc.value.code == "SignatureDoesNotMatch"


@given(
    st.sampled_from(
        [
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        ]
    ),
    st.one_of(numbers(), amz_dates, credentials, signatures, text(30)),
    st.datetimes(timezones=st.just(UTC)),
)
def test_a_presigned_query_with_any_one_value_changed_parses_or_is_refused(name, value, now):
    values = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": GOOD_CREDENTIAL,
        "X-Amz-Date": "20240524T120000Z",
        "X-Amz-Expires": "3600",
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": GOOD_SIGNATURE,
        name: value,
    }
    query = "&".join(f"{n}={sigv4.uri_encode(v)}" for n, v in values.items())
    auth = s3_result(sigv4.parse_auth, "GET", "/b/k", query, [("host", "h")])
    if auth is not None:
        s3_result(sigv4.verify, auth, SECRET, "GET", "/b/k", query, [("host", "h")], now)


@given(
    st.one_of(
        st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime.max),
        # the calendar's last week, where a request time plus its expiry leaves it
        st.datetimes(min_value=datetime.max - timedelta(days=7), max_value=datetime.max),
    ),
    st.integers(min_value=-3600, max_value=2 * sigv4.MAX_PRESIGN_EXPIRES),
    st.integers(min_value=1, max_value=sigv4.MAX_PRESIGN_EXPIRES),
)
def test_a_presigned_request_at_any_time_is_checked_without_overflow(signed_at, later, expires):
    now = min(
        max(signed_at + timedelta(seconds=later) if later < 0 else signed_at, datetime.min),
        datetime.max,
    )
    if later > 0:
        now = signed_at + min(timedelta(seconds=later), datetime.max - signed_at)
    amz_date = signed_at.strftime("%Y%m%dT%H%M%SZ")
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AK%2F{amz_date[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=" + "0" * 64
    )
    auth = sigv4.parse_auth("GET", "/b/k", query, [("host", "h")])
    assert auth is not None
    s3_result(sigv4.verify, auth, SECRET, "GET", "/b/k", query, [("host", "h")], now)


token = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True).filter(
    lambda n: n not in ("x-amz-date", "x-amz-content-sha256", "authorization", "host")
)
query_names = text(12).filter(
    lambda n: n not in sigv4.PRESIGN_PARAMS and n not in ("AWSAccessKeyId", "Signature")
)


@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    key=text(40),
    query=st.lists(st.tuples(query_names, text(20)), max_size=5, unique_by=lambda p: p[0]),
    extra=st.lists(st.tuples(token, st.text(alphabet=latin1, max_size=30)), max_size=4),
    payload_hash=st.sampled_from(
        [sigv4.UNSIGNED_PAYLOAD, sigv4.EMPTY_SHA256, *sigv4.STREAMING_MODES]
    ),
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_a_request_signed_by_sign_request_verifies_and_a_changed_one_does_not(
    method, key, query, extra, payload_hash, now
):
    now = now.replace(tzinfo=UTC)
    path = "/" + sigv4.uri_encode(key, encode_slash=False)
    query_string = sigv4.canonical_query_string(query)
    headers = [("host", "bkt.example"), *extra]
    added = sigv4.sign_request(
        method, path, query, headers, payload_hash, "AK", SECRET, "us-east-1", now
    )
    signed = [*headers, *added]
    auth = sigv4.parse_auth(method, path, query_string, signed)
    assert auth is not None and auth.payload_hash == payload_hash
    key_bytes = sigv4.verify(auth, SECRET, method, path, query_string, signed, now)
    assert key_bytes == sigv4.derive_signing_key(SECRET, auth.scope)
    with pytest.raises(S3Error) as exc:
        sigv4.verify(auth, SECRET + "x", method, path, query_string, signed, now)
    assert exc.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error):
        sigv4.verify(auth, SECRET, method, path + "x", query_string, signed, now)


# -- routing -----------------------------------------------------------------------------------

hosts = st.one_of(
    st.none(),
    st.sampled_from(
        ["localhost", "bkt.localhost:80", "[::1]:9000", "10.0.0.1", "b.s3.example.com", "B.S3."]
    ),
    text(30),
)
own_names = st.frozensets(st.sampled_from(["localhost", "proxy", "", "s3.example.com", "Ü"]))


@given(
    METHODS,
    st.one_of(text(60).map(lambda p: "/" + p), text(60)),
    st.one_of(text(60), st.sampled_from(["uploads", "uploadId=u&partNumber=1", "tagging&acl"])),
    hosts,
    st.sampled_from([None, "", "s3.example.com", "S3.Example.Com."]),
    own_names,
)
def test_resolve_target_names_an_operation_or_refuses(method, path, query, host, domain, own):
    target = s3_result(resolve_target, method, path, query, host, domain, own)
    if target is None:
        return
    assert target.operation in OPERATIONS
    if target.bucket is not None:
        assert target.bucket not in (".", "..") and 1 <= len(target.bucket) <= 255
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in target.bucket)
    if target.key is not None:
        assert target.key and len(target.key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES


@given(text(80))
def test_parse_query_decodes_or_refuses(query_string):
    query = s3_result(parse_query, query_string)
    if query is not None:
        assert len(query) <= 100


@given(
    st.one_of(
        text(80),
        st.builds(
            lambda lead, b, k, q: f"{lead}{b}/{k}{q}",
            st.sampled_from(["", "/", "//"]),
            st.sampled_from(["bkt", "..", ".", "b%2Fc", "%E9", "Bkt_1", ""]),
            text(30),
            st.one_of(st.just(""), text(20).map(lambda q: "?" + q)),
        ),
    )
)
def test_parse_copy_source_names_a_valid_bucket_and_key_or_refuses(value):
    source = s3_result(parse_copy_source, value)
    if source is None:
        return
    assert source.bucket not in (".", "..")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in source.bucket)
    assert source.key and len(source.key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES
    assert source.version is None or source.version


# -- headers -----------------------------------------------------------------------------------

request_header_names = st.one_of(
    st.sampled_from(
        [
            *sorted(hdr.UPLOAD_HEADERS),
            *hdr.CONDITIONS,
            *hdr.COPY_CONDITIONS,
            "x-amz-meta-a",
            "x-amz-meta-md5chksum",
            "x-amz-meta-trios3-v",
            "content-encoding",
            "content-length",
            "etag",
            "last-modified",
            "x-amz-server-side-encryption-customer-key",
            "x-amz-checksum-crc32",
        ]
    ),
    st.from_regex(r"x-amz-meta-[a-z0-9-]{1,10}", fullmatch=True),
    token,
)
header_maps = st.dictionaries(request_header_names, text(60), max_size=8)


@given(st.lists(st.tuples(request_header_names, text(30)), max_size=10))
def test_request_headers_map_pairs_or_refuse_repeats(pairs):
    headers = s3_result(hdr.request_headers, pairs)
    if headers is not None:
        assert set(headers) == {n for n, _ in pairs}


@given(header_maps)
def test_what_goes_to_the_backend_is_ascii_or_refused(headers):
    for call in (hdr.upload_headers, hdr.user_metadata, hdr.conditions):
        out = s3_result(call, headers)
        if out is not None:
            assert all(name.isascii() and value.isascii() for name, value in out)
    copy_conditions = s3_result(hdr.conditions, headers, hdr.COPY_CONDITIONS)
    assert copy_conditions is None or all(v.isascii() for _, v in copy_conditions)
    described = s3_result(hdr.described_by, headers)
    if described is not None:
        assert all(v.isascii() for _, v in described[0] + described[1])
    s3_result(hdr.reject_sse_c, headers)


@given(
    header_maps, st.booleans(), st.one_of(st.none(), text(40)), st.binary(min_size=16, max_size=16)
)
def test_response_header_rewrites_never_fail(headers, encrypted, if_none_match, md5):
    out = hdr.object_response_headers(headers, encrypted)
    assert not any(n.startswith(hdr.RESERVED_META) for n, _ in out)
    hdr.not_modified_headers(headers, if_none_match)
    meta, sealed = hdr.take_content_md5(list(headers.items()))
    assert sealed is None or len(sealed) == 16
    shown = hdr.with_content_md5(meta, md5)
    assert sum(1 for n, _ in shown if n == hdr.CONTENT_MD5_META) <= 1 + sum(
        1 for n, _ in meta if n == hdr.CONTENT_MD5_META
    )


@given(st.binary(min_size=16, max_size=16), header_maps)
def test_an_md5chksum_taken_to_be_sealed_is_shown_again_as_it_was(md5, headers):
    value = base64.b64encode(md5).decode()
    meta = [(n, v) for n, v in headers.items() if n != hdr.CONTENT_MD5_META]
    kept, taken = hdr.take_content_md5([*meta, (hdr.CONTENT_MD5_META, value)])
    assert taken == md5 and kept == meta
    assert (hdr.CONTENT_MD5_META, value) in hdr.with_content_md5(kept, taken)


# -- ranges ------------------------------------------------------------------------------------

range_headers = st.one_of(
    st.builds(
        lambda unit, a, b: f"{unit}={a}-{b}",
        st.sampled_from(["bytes", "BYTES", "items", "byte\u017f"]),
        st.one_of(st.just(""), numbers()),
        st.one_of(st.just(""), numbers()),
    ),
    st.builds(
        lambda a, b: f"bytes={a}-{b}",
        st.integers(min_value=0, max_value=3 * fmt.MIN_SEGMENT_SIZE),
        st.integers(min_value=0, max_value=3 * fmt.MIN_SEGMENT_SIZE),
    ),
    st.integers(min_value=0, max_value=3 * fmt.MIN_SEGMENT_SIZE).map(lambda n: f"bytes=-{n}"),
    st.integers(min_value=0, max_value=3 * fmt.MIN_SEGMENT_SIZE).map(lambda n: f"bytes={n}-"),
    text(30),
)
sizes = st.integers(min_value=0, max_value=4 * fmt.MIN_SEGMENT_SIZE)


@given(st.one_of(st.none(), range_headers), sizes)
def test_a_range_is_a_span_of_the_object_ignored_or_invalid_range(header, size):
    try:
        wanted = parse_range(header, size)
    except S3Error as error:
        assert error.code == "InvalidRange" and error.status == 416
        return
    if wanted is not None:
        start, end = wanted
        assert 0 <= start <= end < size
        assert parse_content_range(content_range(start, end, size)) == (start, end, size)


@given(st.one_of(st.none(), range_headers), sizes)
def test_the_stored_window_of_a_range_covers_its_segments(header, size):
    segment = fmt.MIN_SEGMENT_SIZE
    window = stored_window(header, segment)
    try:
        wanted = parse_range(header, size)
    except S3Error:
        return
    if wanted is None or window is None:
        return
    span = fmt.span_for_range(size, *wanted, segment)
    stored = fmt.stored_size(size, segment)
    first, _, last = window.removeprefix("bytes=").partition("-")
    if not first:  # a suffix: the last n stored bytes
        assert stored - int(last) <= span.stored_start
    else:
        assert int(first) <= span.stored_start
        assert not last or span.stored_end <= int(last)


@given(
    st.one_of(
        st.none(),
        text(40),
        st.builds(lambda a, b, c: f"bytes {a}-{b}/{c}", numbers(), numbers(), numbers()),
    )
)
def test_a_backend_content_range_is_three_numbers_or_none(value):
    parsed = parse_content_range(value)
    assert parsed is None or all(isinstance(n, int) and n >= 0 for n in parsed)


@given(
    st.one_of(
        st.none(), range_headers, st.builds(lambda a, b: f"bytes={a}-{b}", numbers(), numbers())
    ),
    sizes,
)
def test_a_copy_range_is_within_the_source_or_refused(value, size):
    copied = s3_result(parse_copy_range, value, size)
    if copied is not None:
        start, end = copied
        assert 0 <= start <= end < size or (value is None and size == 0)
