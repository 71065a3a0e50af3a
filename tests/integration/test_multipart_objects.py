"""Multipart uploads through the proxy against a real SeaweedFS (format v2).

boto3 with its default checksums drives every multipart operation over HTTP and HTTPS; the
backend client looks underneath, to show what is stored and to tamper with it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, ResponseStreamingError

from harness import code, new_key, scratch_bucket, set_metadata, status
from trios3.core import format as fmt
from trios3.core import multipart as mp

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SEG = fmt.DEFAULT_SEGMENT_SIZE
H = mp.PART_HEADER_SIZE
MULTIPART_ETAG = re.compile(r'^"[0-9a-f]{32}-(\d+)"$')
PART_ETAG = re.compile(r'^"[0-9a-f]{32}-0"$')


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    name_iter = scratch_bucket(seaweedfs, "multipart")
    name = next(name_iter)
    yield name
    client = seaweedfs.client()
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    next(name_iter, None)


def upload(s3, bucket: str, key: str, parts: list[bytes], **create) -> dict:
    """Create, upload ``parts`` as 1..N, complete; the Complete response."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )


def read(s3, bucket: str, key: str, **kwargs) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


# -- round trips --------------------------------------------------------------------------------


def test_three_parts_with_a_short_last_one_round_trip(s3, backend, bucket):
    key = new_key()
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    data = b"".join(parts)
    done = upload(s3, bucket, key, parts)
    assert MULTIPART_ETAG.match(done["ETag"]).group(1) == "3"
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == done["ETag"]
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data
    # Stored: three parts, each a header then segments; none of it is plaintext.
    stored = backend.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(stored) == sum(mp.part_stored_size(len(p), SEG) for p in parts)
    assert parts[0][:64] not in stored and parts[2][:64] not in stored


def test_ranges_cross_part_boundaries(s3, bucket):
    key = new_key()
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(100_000)]
    data = b"".join(parts)
    upload(s3, bucket, key, parts)
    size = len(data)
    for start, end in [
        (0, 0),
        (5 * MiB - 10, 5 * MiB + 10),
        (5 * MiB, 5 * MiB),
        (SEG - 1, 3 * SEG + 7),
        (10 * MiB - 1, size - 1),
        (0, size - 1),
        (size - 1, size - 1),
    ]:
        got = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
        assert got["ContentRange"] == f"bytes {start}-{end}/{size}"
        assert got["Body"].read() == data[start : end + 1], (start, end)
    assert read(s3, bucket, key, Range="bytes=-5") == data[-5:]
    assert read(s3, bucket, key, Range=f"bytes={size - 3}-") == data[-3:]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={size}-")
    assert status(info.value) == 416


def test_part_number_get_and_head(s3, bucket):
    key = new_key()
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB + 3), os.urandom(10)]
    upload(s3, bucket, key, parts)
    offset = 0
    for number, part in enumerate(parts, start=1):
        got = s3.get_object(Bucket=bucket, Key=key, PartNumber=number)
        assert got["PartsCount"] == 3
        assert got["ContentLength"] == len(part)
        assert got["Body"].read() == part
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=number)
        assert head["ContentLength"] == len(part)
        assert head["PartsCount"] == 3
        offset += len(part)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key=key, PartNumber=4)
    assert status(info.value) == 416


def test_a_single_empty_part(s3, bucket):
    key = new_key()
    upload(s3, bucket, key, [b""])
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 0
    assert read(s3, bucket, key) == b""


@pytest.mark.parametrize("part_mib", [5, 8])
def test_transfer_manager_round_trip_and_exact_listing(s3, bucket, part_mib):
    key = new_key("tm")
    data = os.urandom(2 * part_mib * MiB + 777)
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=part_mib * MiB, max_concurrency=3
    )
    s3.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
    out = io.BytesIO()
    s3.download_fileobj(bucket, key, out, Config=config)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(data))]
    assert MULTIPART_ETAG.match(listed[0]["ETag"]).group(1) == "3"


def test_parts_of_other_sizes_read_exactly_and_list_as_documented(s3, bucket):
    """5 300 000-byte parts are not whole segments: HEAD and GET stay exact; the listing
    over-reports by the extra tags (docs/FORMAT.md, "Sizes in listings")."""
    key = new_key("odd")
    parts = [os.urandom(5_300_000), os.urandom(5_300_000), os.urandom(4321)]
    data = b"".join(parts)
    upload(s3, bucket, key, parts)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)
    assert read(s3, bucket, key) == data
    assert read(s3, bucket, key, Range="bytes=5299990-5300009") == data[5299990:5300010]
    stored = sum(mp.part_stored_size(len(p), SEG) for p in parts)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"][0]["Size"]
    assert listed == mp.listing_plaintext_size(stored, 3, SEG)
    # Each of the two full parts ends in a short segment of its own: one extra tag each.
    assert listed == len(data) + 2 * 16


def test_parts_of_different_sizes_read_exactly(s3, bucket):
    """An upload whose parts differ in size is read by walking every part header."""
    key = new_key("uneven")
    parts = [os.urandom(6 * MiB), os.urandom(5 * MiB + 17), os.urandom(7 * MiB), os.urandom(99)]
    data = b"".join(parts)
    upload(s3, bucket, key, parts)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)
    assert read(s3, bucket, key) == data
    start = 11 * MiB + 10
    assert (
        read(s3, bucket, key, Range=f"bytes={start}-{start + 2 * MiB}")
        == data[start : start + 2 * MiB + 1]
    )
    got = s3.get_object(Bucket=bucket, Key=key, PartNumber=3)
    assert got["Body"].read() == parts[2]


def test_an_ambiguous_uneven_upload_is_refused_at_complete(s3, bucket):
    """Middle parts that differ but add up to whole first-part sizes would read as uniform."""
    key = new_key("ambiguous")
    size = 6 * MiB
    parts = [os.urandom(size), os.urandom(size - SEG), os.urandom(size + SEG), b"x"]
    with pytest.raises(ClientError) as info:
        upload(s3, bucket, key, parts)
    assert code(info.value) == "InvalidRequest"


# -- retries, aborts, bad completes ---------------------------------------------------------------


def test_a_retried_part_is_encrypted_afresh_and_the_named_attempt_wins(s3, bucket):
    key = new_key("retry")
    first, second = os.urandom(5 * MiB), os.urandom(5 * MiB)
    last = os.urandom(10)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def put(number, body):
        return s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]

    same_a, same_b = put(1, first), put(1, first)
    # The same bytes twice give different ciphertexts: a fresh salt, so a fresh key, each time.
    assert PART_ETAG.match(same_a) and PART_ETAG.match(same_b) and same_a != same_b
    changed = put(1, second)
    tail = put(2, last)
    parts = [{"PartNumber": 1, "ETag": changed}, {"PartNumber": 2, "ETag": tail}]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    assert read(s3, bucket, key) == second + last


def test_a_retried_complete_answers_again_as_s3_does(s3, bucket):
    """An SDK whose first Complete's answer was lost retries it: S3 answers 200 with the
    object's ETag again (and its checksum), not NoSuchUpload."""
    key = new_key("retry")
    parts = [os.urandom(5 * MiB), os.urandom(100)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]
    done = []
    for number, body in enumerate(parts, start=1):
        answer = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        done.append(
            {"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32": answer["ChecksumCRC32"]}
        )
    complete = {
        "Bucket": bucket,
        "Key": key,
        "UploadId": upload_id,
        "MultipartUpload": {"Parts": done},
    }
    first = s3.complete_multipart_upload(**complete)
    again = s3.complete_multipart_upload(**complete)
    assert again["ETag"] == first["ETag"] and again["ETag"].endswith('-2"')
    assert again["ChecksumCRC32"] == first["ChecksumCRC32"]
    assert read(s3, bucket, key) == b"".join(parts)


def test_a_complete_of_an_upload_whose_object_was_replaced_is_no_such_upload(s3, bucket):
    key = new_key("retry")
    parts = [os.urandom(5 * MiB), os.urandom(100)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in enumerate(parts, start=1)
    ]
    complete = {
        "Bucket": bucket,
        "Key": key,
        "UploadId": upload_id,
        "MultipartUpload": {"Parts": done},
    }
    s3.complete_multipart_upload(**complete)
    upload(s3, bucket, key, parts)  # another upload of the same key since
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(**complete)
    assert code(info.value) == "NoSuchUpload"
    s3.put_object(Bucket=bucket, Key=key, Body=b"small")  # or a PUT
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(**complete)
    assert code(info.value) == "NoSuchUpload"


def test_a_complete_with_a_listed_upload_id_cannot_prove_it_completed(s3, bucket):
    """An UploadId from ListMultipartUploads carries no data key: nothing to prove that the
    object at the key is that upload's, so a retry with it stays NoSuchUpload."""
    key = new_key("retry")
    parts = [os.urandom(5 * MiB), os.urandom(100)]
    s3.create_multipart_upload(Bucket=bucket, Key=key)
    listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)["Uploads"][0]["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=listed)
    upload(s3, bucket, key, parts)
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=listed,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]},
        )
    assert code(info.value) == "NoSuchUpload"


def test_abort_ends_the_upload(s3, bucket):
    key = new_key("abort")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"abc")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id),
        lambda: s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=b"x"),
        lambda: s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        ),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert (status(info.value), code(info.value)) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key=key)
    assert status(info.value) == 404


@pytest.fixture
def two_parts_uploaded(s3, bucket):
    key = new_key("complete")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = {}
    for number, body in ((1, os.urandom(5 * MiB)), (2, os.urandom(5 * MiB)), (3, b"tail")):
        etags[number] = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]
    small = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=5, Body=b"small")[
        "ETag"
    ]
    etags[5] = small
    yield key, upload_id, etags
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([(1, 1), (2, 2), (4, 3)], "InvalidPart"),  # part 4 was never uploaded
        ([(1, 1), (2, 1)], "InvalidPart"),  # wrong ETag for part 2
        ([(2, 2), (1, 1)], "InvalidPartOrder"),
        ([(1, 1), (1, 1)], "InvalidPartOrder"),
        ([(1, 1), (3, 3)], "InvalidPart"),  # a gap: trios3 needs consecutive numbers
        ([(1, 1), (2, 2), (3, 3), (5, 5)], "InvalidPart"),
        ([(3, 3), (5, 5)], "InvalidPart"),
    ],
)
def test_complete_validates_like_s3(s3, bucket, two_parts_uploaded, parts, expected):
    key, upload_id, etags = two_parts_uploaded
    named = [{"PartNumber": n, "ETag": etags[e]} for n, e in parts]
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": named}
        )
    assert (status(info.value), code(info.value)) == (400, expected)


def test_complete_refuses_a_small_part_that_is_not_last(s3, bucket):
    key = new_key("small")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, body in ((1, os.urandom(5 * MiB - 1)), (2, b"tail")):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    assert code(info.value) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def test_a_forged_or_moved_upload_id_is_no_such_upload(s3, bucket):
    key = new_key("forged")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    body = dict(PartNumber=1, Body=b"abc")
    for other_key, other_id in (
        (key + "-other", upload_id),  # the token is bound to its object
        (key, upload_id[:-4] + ("AAAA" if not upload_id.endswith("AAAA") else "BBBB")),
        (key, "not-a-trios3-id"),
    ):
        with pytest.raises(ClientError) as info:
            s3.upload_part(Bucket=bucket, Key=other_key, UploadId=other_id, **body)
        assert (status(info.value), code(info.value)) == (404, "NoSuchUpload")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


# -- listings -----------------------------------------------------------------------------------


def test_list_parts_answers_in_the_clients_terms(s3, backend, bucket):
    key = new_key("parts")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    sizes = {1: 5 * MiB, 2: 5 * MiB + 1, 3: 77}
    etags = {
        n: s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=os.urandom(size)
        )["ETag"]
        for n, size in sizes.items()
    }
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert listed["UploadId"] == upload_id
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (n, sizes[n], etags[n]) for n in sorted(sizes)
    ]
    page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=2)
    assert [p["PartNumber"] for p in page["Parts"]] == [1, 2] and page["IsTruncated"]
    rest = s3.list_parts(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=page["NextPartNumberMarker"]
    )
    assert [p["PartNumber"] for p in rest["Parts"]] == [3]

    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)["Uploads"]
    assert [u["Key"] for u in uploads] == [key]
    listed_id = uploads[0]["UploadId"]
    # A listed id lists, completes and aborts, but cannot take parts: it has no data key.
    assert len(s3.list_parts(Bucket=bucket, Key=key, UploadId=listed_id)["Parts"]) == 3
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=bucket, Key=key, UploadId=listed_id, PartNumber=4, Body=b"x")
    assert code(info.value) == "InvalidArgument"
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=listed_id)
    assert not backend.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads")


# -- tampering at the backend -------------------------------------------------------------------


def _stored_ranges(parts: list[bytes]) -> list[tuple[int, int]]:
    ranges, offset = [], 0
    for part in parts:
        size = mp.part_stored_size(len(part), SEG)
        ranges.append((offset, offset + size - 1))
        offset += size
    return ranges


def recompose(backend, bucket: str, key: str, pieces: list[tuple[str, tuple[int, int]]], meta):
    """Rebuild ``key`` at the backend from stored byte ranges of other objects, with the
    given metadata: what someone with write access to the bucket can do without any key."""
    upload_id = backend.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta)["UploadId"]
    done = []
    for number, (source, (start, end)) in enumerate(pieces, start=1):
        etag = backend.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": source},
            CopySourceRange=f"bytes={start}-{end}",
        )["CopyPartResult"]["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    backend.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )


def assert_refused(s3, bucket: str, key: str) -> None:
    """Refused before the status line (500), or, when the damage lies past what was already
    sent, the response is cut short: no byte of a tampered segment is ever released."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        assert (status(err), code(err)) == (500, "InternalError")
        return
    with pytest.raises(ResponseStreamingError):
        response["Body"].read()


@pytest.fixture
def stored_parts(s3, backend, bucket):
    """A 4-part object, and a copy of its stored bytes and metadata kept at the backend."""
    key = new_key("tamper")
    parts = [os.urandom(5 * MiB) for _ in range(3)] + [os.urandom(1000)]
    upload(s3, bucket, key, parts)
    meta = backend.head_object(Bucket=bucket, Key=key)["Metadata"]
    assert meta["trios3-v"] == "2"
    backend.copy_object(Bucket=bucket, Key=key + ".orig", CopySource={"Bucket": bucket, "Key": key})
    return key, parts, _stored_ranges(parts), meta


@pytest.mark.parametrize(
    "order",
    [
        [2, 1, 3, 4],  # reordered
        [1, 3, 4],  # a middle part dropped
        [1, 2, 2, 4],  # a part duplicated in place of another
        [1, 2, 3, 3, 4],  # a part duplicated
        [2, 3, 4],  # the first part dropped
    ],
)
def test_reassembled_parts_are_detected(s3, backend, bucket, stored_parts, order):
    key, _, ranges, meta = stored_parts
    recompose(backend, bucket, key, [(key + ".orig", ranges[n - 1]) for n in order], meta)
    assert_refused(s3, bucket, key)


def test_part_headers_that_do_not_match_the_etags_part_count_are_detected(
    s3, backend, bucket, stored_parts
):
    """The same stored bytes, re-uploaded at the backend as three parts (the last two of the
    original as one): every header and tag is intact, but the ETag says -3 and the headers
    say 4 parts. The count is not authenticated (whoever writes the backend picks the ETag),
    so this is a cheap check against a truncation that also changed the ETag, not a proof."""
    key, _, ranges, meta = stored_parts
    joined = (ranges[2][0], ranges[3][1])
    pieces = [(key + ".orig", ranges[0]), (key + ".orig", ranges[1]), (key + ".orig", joined)]
    recompose(backend, bucket, key, pieces, meta)
    assert backend.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"')
    assert_refused(s3, bucket, key)


def test_a_part_from_another_upload_of_the_same_key_is_detected(s3, backend, bucket, stored_parts):
    key, parts, ranges, _ = stored_parts
    upload(s3, bucket, key, parts)  # the same bytes again: a new upload, a new data key
    new_meta = backend.head_object(Bucket=bucket, Key=key)["Metadata"]
    backend.copy_object(Bucket=bucket, Key=key + ".new", CopySource={"Bucket": bucket, "Key": key})
    pieces = [(key + ".new", r) for r in ranges]
    pieces[1] = (key + ".orig", ranges[1])
    recompose(backend, bucket, key, pieces, new_meta)
    assert_refused(s3, bucket, key)
    # Untouched, the new upload reads back.
    recompose(backend, bucket, key, [(key + ".new", r) for r in ranges], new_meta)
    assert read(s3, bucket, key) == b"".join(parts)


def test_a_multipart_object_moved_to_another_key_is_detected(s3, backend, bucket, stored_parts):
    key, _, _, _ = stored_parts
    backend.copy_object(
        Bucket=bucket, Key=key + "-moved", CopySource={"Bucket": bucket, "Key": key}
    )
    assert_refused(s3, bucket, key + "-moved")


def test_a_flipped_bit_in_a_later_part_is_detected_by_a_range_read(
    s3, backend, bucket, stored_parts
):
    key, parts, ranges, meta = stored_parts
    stored = bytearray(backend.get_object(Bucket=bucket, Key=key)["Body"].read())
    stored[ranges[2][0] + H + 100] ^= 1
    backend.put_object(Bucket=bucket, Key=key + ".flipped", Body=bytes(stored))
    pieces = [(key + ".flipped", r) for r in ranges]
    recompose(backend, bucket, key, pieces, meta)
    start = 10 * MiB
    with pytest.raises(ClientError) as info:
        read(s3, bucket, key, Range=f"bytes={start}-{start + 10}")
    assert status(info.value) == 500
    assert read(s3, bucket, key, Range="bytes=0-10") == parts[0][:11]


# -- copies -------------------------------------------------------------------------------------


def test_copy_object_of_a_multipart_source_is_server_side(s3, backend, bucket):
    key = new_key("mpsrc")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(4242)]
    data = b"".join(parts)
    upload(s3, bucket, key, parts, Metadata={"colour": "blue"}, ContentType="text/x-test")
    source_stored = backend.get_object(Bucket=bucket, Key=key)["Body"].read()
    dest = key + "-copy"
    result = s3.copy_object(Bucket=bucket, Key=dest, CopySource={"Bucket": bucket, "Key": key})
    assert MULTIPART_ETAG.match(result["CopyObjectResult"]["ETag"]).group(1) == "3"
    head = s3.head_object(Bucket=bucket, Key=dest)
    assert (head["ContentLength"], head["Metadata"], head["ContentType"]) == (
        len(data),
        {"colour": "blue"},
        "text/x-test",
    )
    assert read(s3, bucket, dest) == data
    # The same ciphertext, part for part: nothing was decrypted or re-encrypted.
    assert backend.get_object(Bucket=bucket, Key=dest)["Body"].read() == source_stored
    assert (
        backend.head_object(Bucket=bucket, Key=dest)["Metadata"]["trios3-dek"]
        != (backend.head_object(Bucket=bucket, Key=key)["Metadata"]["trios3-dek"])
    )
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=dest)["Contents"][0]
    assert listed["Size"] == len(data)


@pytest.fixture
def copy_sources(s3, backend, bucket):
    """One source of each kind: a single PUT, a multipart upload, a foreign object."""
    single = os.urandom(3 * MiB + 5)
    multi = [os.urandom(5 * MiB), os.urandom(2 * MiB + 9)]
    foreign = os.urandom(1 * MiB + 3)
    names = {k: new_key(k) for k in ("single", "multi", "foreign")}
    s3.put_object(Bucket=bucket, Key=names["single"], Body=single)
    upload(s3, bucket, names["multi"], multi)
    backend.put_object(Bucket=bucket, Key=names["foreign"], Body=foreign)
    return {
        "single": (names["single"], single),
        "multi": (names["multi"], b"".join(multi)),
        "foreign": (names["foreign"], foreign),
    }


def test_upload_part_copy_with_ranges_from_every_kind_of_source(s3, backend, bucket, copy_sources):
    key = new_key("partcopy")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    plan = [
        ("multi", (1 * MiB, 6 * MiB + 2)),  # across the source's part boundary
        ("single", None),  # the whole source
        ("foreign", (5, 1 * MiB + 2)),
        ("multi", (5 * MiB - 3, 5 * MiB + 3)),
    ]
    expected, done = [], []
    for number, (kind, byte_range) in enumerate(plan, start=1):
        source, data = copy_sources[kind]
        extra = {}
        if byte_range:
            extra["CopySourceRange"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            data = data[byte_range[0] : byte_range[1] + 1]
        etag = s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": source},
            **extra,
        )["CopyPartResult"]["ETag"]
        assert PART_ETAG.match(etag)
        expected.append(data)
        done.append({"PartNumber": number, "ETag": etag})
    sizes = [p["Size"] for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]]
    assert sizes == [len(d) for d in expected]
    # Parts 2 and 3 are under 5 MiB: complete with part 1 and the last one only.
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [done[0], {"PartNumber": 2, "ETag": done[1]["ETag"]}]},
    )
    assert read(s3, bucket, key) == expected[0] + expected[1]
    stored = backend.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert copy_sources["foreign"][1][5:1000] not in stored


def test_upload_part_copy_refuses_bad_ranges(s3, bucket, copy_sources):
    key = new_key("badrange")
    source, data = copy_sources["multi"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    for value, expected in [
        (f"bytes=0-{len(data)}", "InvalidRange"),
        ("bytes=10-5", "InvalidRange"),
        ("bytes=abc", "InvalidArgument"),
    ]:
        with pytest.raises(ClientError) as info:
            s3.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=1,
                CopySource={"Bucket": bucket, "Key": source},
                CopySourceRange=value,
            )
        assert code(info.value) == expected, value
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


# -- checksums ----------------------------------------------------------------------------------


def _crc(algorithm: str, data: bytes) -> str:
    from trios3.core.checksums import checksum_b64

    return checksum_b64(algorithm, data)


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_full_object_checksum_is_verified_over_the_plaintext(s3, bucket, algorithm):
    key = new_key("full")
    parts = [os.urandom(5 * MiB), os.urandom(300)]
    alg = algorithm.lower()
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT"
    )["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        response = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=algorithm,
        )
        assert response[f"Checksum{algorithm}"] == _crc(alg, body)
        done.append(
            {
                "PartNumber": number,
                "ETag": response["ETag"],
                f"Checksum{algorithm}": _crc(alg, body),
            }
        )
    whole = _crc(alg, b"".join(parts))
    wrong = _crc(alg, b"".join(parts) + b"x")
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
            **{f"Checksum{algorithm}": wrong},
            ChecksumType="FULL_OBJECT",
        )
    assert code(info.value) == "BadDigest"
    result = s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": done},
        **{f"Checksum{algorithm}": whole},
        ChecksumType="FULL_OBJECT",
    )
    assert result[f"Checksum{algorithm}"] == whole
    assert read(s3, bucket, key) == b"".join(parts)


def test_composite_checksum_is_reported_over_the_plaintext(s3, bucket):
    import base64
    import zlib

    key = new_key("composite")
    parts = [os.urandom(5 * MiB), os.urandom(10)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]
    done = []
    for number, body in enumerate(parts, start=1):
        response = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
        )
        done.append(
            {
                "PartNumber": number,
                "ETag": response["ETag"],
                "ChecksumCRC32": response["ChecksumCRC32"],
            }
        )
    result = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    raw = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    expected = base64.b64encode(zlib.crc32(raw).to_bytes(4, "big")).decode() + "-2"
    assert result["ChecksumCRC32"] == expected


def test_an_empty_last_part_reads_whole_and_by_part_number(s3, bucket):
    key = new_key("emptylast")
    first = os.urandom(5 * MiB)
    upload(s3, bucket, key, [first, b""])
    assert read(s3, bucket, key) == first
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(first)
    got = s3.get_object(Bucket=bucket, Key=key, PartNumber=2)
    assert (got["ContentLength"], got["PartsCount"], got["Body"].read()) == (0, 2, b"")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"][0]["Size"]
    assert listed == len(first)


def test_part_number_requests_s3_refuses(s3, bucket):
    key = new_key("pn")
    upload(s3, bucket, key, [os.urandom(5 * MiB), b"x"])
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key=key, PartNumber=1, Range="bytes=0-1")
    assert (status(info.value), code(info.value)) == (400, "InvalidRequest")


def test_copy_of_a_multipart_object_carries_its_tags(s3, bucket):
    key = new_key("tagged")
    upload(s3, bucket, key, [os.urandom(5 * MiB), b"x"], Tagging="team=backup&note=two%20words")

    def tags(name):
        return {
            t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=name)["TagSet"]
        }

    assert tags(key) == {"team": "backup", "note": "two words"}
    s3.copy_object(Bucket=bucket, Key=key + "-copy", CopySource={"Bucket": bucket, "Key": key})
    assert tags(key + "-copy") == {"team": "backup", "note": "two words"}
    s3.copy_object(
        Bucket=bucket,
        Key=key + "-retagged",
        CopySource={"Bucket": bucket, "Key": key},
        TaggingDirective="REPLACE",
        Tagging="team=archive",
    )
    assert tags(key + "-retagged") == {"team": "archive"}


# -- the sealed md5chksum (format version 4) ---------------------------------------------------


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_rclones_md5chksum_is_sealed_and_given_back(s3, backend, bucket):
    """rclone sends the whole file's MD5 as x-amz-meta-md5chksum with CreateMultipartUpload: a
    fingerprint of the plaintext, so the proxy seals it (version 4) and gives it back on HEAD
    and GET; copies, part for part, keep it."""
    key = new_key("md5mp")
    parts = [os.urandom(5 * MiB), os.urandom(3333)]
    data = b"".join(parts)
    expected = {"md5chksum": md5_b64(data), "mtime": "1700000000.5"}
    upload(s3, bucket, key, parts, Metadata=expected)
    meta = backend.head_object(Bucket=bucket, Key=key)["Metadata"]
    assert meta["trios3-v"] == "4"
    assert "md5chksum" not in meta and md5_b64(data) not in str(meta)
    assert meta["mtime"] == "1700000000.5"
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == expected
    assert s3.head_object(Bucket=bucket, Key=key, PartNumber=2)["Metadata"] == expected
    for kwargs in ({}, {"Range": f"bytes={5 * MiB - 10}-{5 * MiB + 10}"}, {"PartNumber": 1}):
        got = s3.get_object(Bucket=bucket, Key=key, **kwargs)
        assert got["Metadata"] == expected
        got["Body"].read()
    assert read(s3, bucket, key) == data

    copy = key + "-copy"
    s3.copy_object(Bucket=bucket, Key=copy, CopySource={"Bucket": bucket, "Key": key})
    assert s3.head_object(Bucket=bucket, Key=copy)["Metadata"] == expected
    assert backend.head_object(Bucket=bucket, Key=copy)["Metadata"]["trios3-v"] == "4"
    assert read(s3, bucket, copy) == data


def test_a_part_for_part_copy_seals_the_md5chksum_it_is_given(s3, backend, bucket):
    """CopyObject REPLACE of a version 2 object with an md5chksum makes a version 4 copy."""
    key = new_key("mpcopy")
    parts = [os.urandom(5 * MiB), b"last"]
    upload(s3, bucket, key, parts)
    copy = key + "-md5"
    md5 = md5_b64(b"".join(parts))
    s3.copy_object(
        Bucket=bucket,
        Key=copy,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={"md5chksum": md5},
    )
    meta = backend.head_object(Bucket=bucket, Key=copy)["Metadata"]
    assert meta["trios3-v"] == "4" and "md5chksum" not in meta
    assert s3.head_object(Bucket=bucket, Key=copy)["Metadata"] == {"md5chksum": md5}
    assert read(s3, bucket, copy) == b"".join(parts)
    assert backend.head_object(Bucket=bucket, Key=key)["Metadata"]["trios3-v"] == "2"


def test_a_multipart_object_without_md5chksum_stays_version_2(s3, backend, bucket):
    key = new_key("nomd5mp")
    upload(s3, bucket, key, [os.urandom(5 * MiB), b"x"])
    assert backend.head_object(Bucket=bucket, Key=key)["Metadata"]["trios3-v"] == "2"
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {}


def test_a_sealed_md5chksum_dropped_or_moved_is_refused(s3, backend, bucket):
    a, b = new_key("md5mpa"), new_key("md5mpb")
    parts = [os.urandom(5 * MiB), b"tail"]
    upload(s3, bucket, a, parts, Metadata={"md5chksum": md5_b64(b"a")})
    upload(s3, bucket, b, parts, Metadata={"md5chksum": md5_b64(b"b")})
    meta_a = backend.head_object(Bucket=bucket, Key=a)["Metadata"]
    meta_b = backend.head_object(Bucket=bucket, Key=b)["Metadata"]

    def rewrite(metadata):
        set_metadata(backend, bucket, b, metadata)

    for damaged in (
        {**meta_b, "trios3-md5": meta_a["trios3-md5"]},  # a's under b's data key
        {k: v for k, v in meta_b.items() if k != "trios3-md5"},  # dropped
    ):
        rewrite(damaged)
        with pytest.raises(ClientError) as info:
            s3.head_object(Bucket=bucket, Key=b)
        assert status(info.value) == 500
        assert_refused(s3, bucket, b)
    # Relabelled as version 2: a HEAD, which opens no data key for a version 2 object, shows
    # no md5chksum (nothing false); a GET finds the data key no longer unwraps.
    rewrite({**{k: v for k, v in meta_b.items() if k != "trios3-md5"}, "trios3-v": "2"})
    assert s3.head_object(Bucket=bucket, Key=b)["Metadata"] == {}
    assert_refused(s3, bucket, b)
    rewrite(meta_b)
    assert s3.head_object(Bucket=bucket, Key=b)["Metadata"] == {"md5chksum": md5_b64(b"b")}
