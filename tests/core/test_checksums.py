"""PayloadChecks: the client's assertions about its body, verified over what it sent."""

from __future__ import annotations

import base64
import hashlib

import pytest

from trios3.core.checksums import CHECKSUM_ALGORITHMS, PayloadChecks, checksum_b64
from trios3.core.errors import S3Error

HELLO = b"hello world"


def test_known_values():
    assert checksum_b64("crc32", HELLO) == "DUoRhQ=="
    assert base64.b64decode(checksum_b64("crc64nvme", b"123456789")) == (
        0xAE8B14860A799888
    ).to_bytes(8, "big")
    assert checksum_b64("crc32c", b"a" * 66560) == "sOO8/Q=="
    assert (
        checksum_b64("sha256", HELLO) == base64.b64encode(hashlib.sha256(HELLO).digest()).decode()
    )


@pytest.mark.parametrize("algorithm", CHECKSUM_ALGORITHMS)
def test_incremental_update_matches_one_shot(algorithm):
    value = checksum_b64(algorithm, HELLO * 1000)
    checks = PayloadChecks.from_headers({f"x-amz-checksum-{algorithm}": value})
    for i in range(0, len(HELLO) * 1000, 777):
        checks.update((HELLO * 1000)[i : i + 777])
    checks.verify()
    assert checks.algorithm == algorithm
    assert checks.response_headers() == {f"x-amz-checksum-{algorithm}": value}


@pytest.mark.parametrize("algorithm", CHECKSUM_ALGORITHMS)
def test_checksum_mismatch_is_bad_digest(algorithm):
    checks = PayloadChecks.from_headers(
        {f"x-amz-checksum-{algorithm}": checksum_b64(algorithm, b"x")}
    )
    checks.update(HELLO)
    with pytest.raises(S3Error) as exc:
        checks.verify()
    assert exc.value.code == "BadDigest"
    assert exc.value.message == (
        f"The {algorithm.upper()} you specified did not match the calculated checksum."
    )
    assert checks.response_headers() == {}


def test_content_md5():
    md5 = base64.b64encode(hashlib.md5(HELLO).digest()).decode()
    checks = PayloadChecks.from_headers({"content-md5": md5})
    checks.update(HELLO)
    checks.verify()
    assert checks.response_headers() == {} and checks.algorithm is None
    checks = PayloadChecks.from_headers({"content-md5": md5})
    checks.update(b"other")
    with pytest.raises(S3Error) as exc:
        checks.verify()
    assert exc.value.code == "BadDigest"


@pytest.mark.parametrize("value", ["nope", base64.b64encode(b"short").decode(), ""])
def test_malformed_content_md5_is_invalid_digest(value):
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers({"content-md5": value})
    assert exc.value.code == "InvalidDigest"


def test_content_sha256():
    digest = hashlib.sha256(HELLO).hexdigest()
    checks = PayloadChecks.from_headers({"x-amz-content-sha256": digest.upper()})
    checks.update(HELLO)
    checks.verify()
    checks = PayloadChecks.from_headers({"x-amz-content-sha256": digest})
    checks.update(b"tampered")
    with pytest.raises(S3Error) as exc:
        checks.verify()
    assert exc.value.code == "XAmzContentSHA256Mismatch"
    assert exc.value.fields == {
        "ClientComputedContentSHA256": digest,
        "S3ComputedContentSHA256": hashlib.sha256(b"tampered").hexdigest(),
    }


def test_streaming_literals_assert_nothing():
    checks = PayloadChecks.from_headers({"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    checks.update(HELLO)
    checks.verify()


@pytest.mark.parametrize("value", ["!!", base64.b64encode(b"12345").decode()])
def test_malformed_checksum_header(value):
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers({"x-amz-checksum-crc32": value})
    assert exc.value.code == "InvalidRequest"
    assert exc.value.message == "Value for x-amz-checksum-crc32 header is invalid."


def test_more_than_one_checksum_is_rejected():
    headers = {
        "x-amz-checksum-crc32": "DUoRhQ==",
        "x-amz-checksum-sha1": checksum_b64("sha1", HELLO),
    }
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers(headers)
    assert exc.value.code == "InvalidRequest"
    with pytest.raises(S3Error):
        PayloadChecks.from_headers(
            {"x-amz-checksum-crc32": "DUoRhQ==", "x-amz-trailer": "x-amz-checksum-crc32c"}
        )


def test_unknown_sdk_algorithm_is_rejected():
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers({"x-amz-sdk-checksum-algorithm": "MD5"})
    assert exc.value.code == "InvalidRequest"


def test_sdk_algorithm_must_agree_with_the_checksum():
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers(
            {"x-amz-sdk-checksum-algorithm": "CRC32C", "x-amz-checksum-crc32": "DUoRhQ=="}
        )
    assert exc.value.code == "InvalidRequest"


def test_sdk_algorithm_without_value_is_computed_and_echoed():
    checks = PayloadChecks.from_headers({"x-amz-sdk-checksum-algorithm": "CRC32"})
    checks.update(HELLO)
    checks.verify()
    assert checks.response_headers() == {"x-amz-checksum-crc32": "DUoRhQ=="}


def test_trailer_checksum():
    checks = PayloadChecks.from_headers(
        {"x-amz-trailer": "x-amz-checksum-crc32", "x-amz-sdk-checksum-algorithm": "crc32"}
    )
    assert checks.algorithm == "crc32"
    checks.update(HELLO)
    checks.verify({"x-amz-checksum-crc32": "DUoRhQ=="})
    assert checks.response_headers() == {"x-amz-checksum-crc32": "DUoRhQ=="}


def test_trailer_checksum_absent_or_malformed():
    for trailers, code in [
        (None, "MalformedTrailerError"),
        ({}, "MalformedTrailerError"),
        ({"x-amz-checksum-crc32": "??"}, "InvalidRequest"),
    ]:
        checks = PayloadChecks.from_headers({"x-amz-trailer": "x-amz-checksum-crc32"})
        checks.update(HELLO)
        with pytest.raises(S3Error) as exc:
            checks.verify(trailers)
        assert exc.value.code == code


def test_unsupported_trailer_is_rejected():
    with pytest.raises(S3Error) as exc:
        PayloadChecks.from_headers({"x-amz-trailer": "x-amz-meta-foo"})
    assert exc.value.code == "InvalidRequest"


def test_unrelated_checksum_headers_are_ignored():
    checks = PayloadChecks.from_headers(
        {"x-amz-checksum-type": "FULL_OBJECT", "x-amz-checksum-mode": "ENABLED"}
    )
    assert checks.algorithm is None


# -- CompleteMultipartUpload's checksums -------------------------------------------------------

from trios3.core.checksums import XML_NAMES, multipart_checksums  # noqa: E402

PARTS = [b"a" * 7, b"b" * 5, b"c" * 3]


def _listed(algorithm: str) -> list[dict[str, str]]:
    return [{XML_NAMES[algorithm]: checksum_b64(algorithm, p)} for p in PARTS]


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme"])
def test_a_full_object_checksum_is_the_parts_combined(algorithm):
    whole = checksum_b64(algorithm, b"".join(PARTS))
    result = multipart_checksums(
        {f"x-amz-checksum-{algorithm}": whole}, _listed(algorithm), [len(p) for p in PARTS]
    )
    assert result == {XML_NAMES[algorithm]: whole, "ChecksumType": "FULL_OBJECT"}


def test_a_wrong_full_object_checksum_is_bad_digest():
    wrong = checksum_b64("crc32", b"other")
    with pytest.raises(S3Error) as exc:
        multipart_checksums({"x-amz-checksum-crc32": wrong}, _listed("crc32"), [7, 5, 3])
    assert exc.value.code == "BadDigest"


@pytest.mark.parametrize(
    "value", ["\xe9\xe9\xe9\xe9\xe9\xe9==", "caf\xe9", "DUoRhQ==\xa0", "not base64", "AAAA", ""]
)
def test_a_full_object_checksum_that_is_not_base64_of_a_digest_is_invalid_request(value):
    # Non-ASCII text made hmac.compare_digest raise TypeError (a 500).
    with pytest.raises(S3Error) as exc:
        multipart_checksums({"x-amz-checksum-crc32": value}, _listed("crc32"), [7, 5, 3])
    assert exc.value.code == "InvalidRequest"
    assert exc.value.message == "Value for x-amz-checksum-crc32 header is invalid."


def test_the_composite_checksum_is_over_the_part_checksums():
    result = multipart_checksums({}, _listed("sha256"), [7, 5, 3])
    digest = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in PARTS)).digest()
    assert result == {
        "ChecksumSHA256": base64.b64encode(digest).decode() + "-3",
        "ChecksumType": "COMPOSITE",
    }


@pytest.mark.parametrize("listed", ["\xe9", "caf\xe9==", "AAAA", ""])
def test_a_part_checksum_that_is_not_base64_reports_nothing_or_is_refused(listed):
    parts = [{"ChecksumCRC32": listed}, *_listed("crc32")[1:]]
    assert multipart_checksums({}, parts, [7, 5, 3]) == {}
    with pytest.raises(S3Error) as exc:
        multipart_checksums({"x-amz-checksum-crc32": "DUoRhQ=="}, parts, [7, 5, 3])
    assert exc.value.code == "InvalidRequest"
