"""S3 XML: error documents, DeleteObjects in and out, listing rewrite checked with botocore."""

from __future__ import annotations

import copy
import os
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import botocore.handlers
import botocore.parsers
import botocore.session
import pytest

from trios3.core.errors import S3Error
from trios3.core.s3xml import (
    S3_NS,
    parse_copy_object_result,
    parse_delete_objects,
    parse_error,
    render_copy_object_result,
    render_error,
    rewrite_listing,
    xml_timestamp,
    xml_timestamp_of,
)

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


@pytest.fixture(scope="module")
def s3_model():
    return botocore.session.get_session().get_service_model("s3")


def boto_parse(model, operation: str, body: bytes, status: int = 200) -> dict:
    parsed = botocore.parsers.RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": status},
        model.operation_model(operation).output_shape,
    )
    parsed.pop("ResponseMetadata", None)
    return parsed


def malformed(body: bytes) -> None:
    with pytest.raises(S3Error) as info:
        parse_delete_objects(body)
    assert info.value.code == "MalformedXML"


# -- errors ------------------------------------------------------------------------------------


def test_render_error_layout_and_escaping():
    err = S3Error("NoSuchKey", "no <such> & key", fields={"Key": "a<&>b"})
    body = render_error(err, "/bkt/a<&>b", "req-1")
    assert body == (
        DECLARATION + b"<Error><Code>NoSuchKey</Code><Message>no &lt;such&gt; &amp; key</Message>"
        b"<Key>a&lt;&amp;&gt;b</Key><Resource>/bkt/a&lt;&amp;&gt;b</Resource>"
        b"<RequestId>req-1</RequestId></Error>"
    )


def test_render_error_keeps_field_order_and_default_message():
    err = S3Error("InvalidRange", fields={"RangeRequested": "bytes=9-", "ActualObjectSize": "3"})
    root = ET.fromstring(render_error(err, "/b/k", "r"))
    assert [child.tag for child in root] == [
        "Code", "Message", "RangeRequested", "ActualObjectSize", "Resource", "RequestId",
    ]  # fmt: skip
    assert root.findtext("Message") == "The requested range is not satisfiable"


def test_render_error_output_is_well_formed_even_with_control_characters():
    body = render_error(S3Error("NoSuchKey"), "/bkt/a\x01b\x00", "r")
    assert ET.fromstring(body).findtext("Resource") == "/bkt/a\ufffdb\ufffd"


def test_render_error_is_what_botocore_reads(s3_model):
    body = render_error(S3Error("NoSuchBucket", fields={"BucketName": "b"}), "/b", "rid")
    parsed = boto_parse(s3_model, "ListObjects", body, status=404)
    assert parsed["Error"]["Code"] == "NoSuchBucket"
    assert parsed["Error"]["Message"] == "The specified bucket does not exist"
    assert parsed["Error"]["BucketName"] == "b"


def test_parse_error_reads_a_backend_error():
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code>'
        b"<Message>The specified multipart upload does not exist.</Message>"
        b"<UploadId>x</UploadId><RequestId>1</RequestId><HostId>h</HostId></Error>"
    )
    assert parse_error(body) == ("NoSuchUpload", "The specified multipart upload does not exist.")


def test_parse_error_accepts_the_s3_namespace_and_a_missing_message():
    body = f'<Error xmlns="{S3_NS}"><Code>SlowDown</Code></Error>'.encode()
    assert parse_error(body) == ("SlowDown", "")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<html><body>502 Bad Gateway</body></html>",
        b"<Error><Message>no code</Message></Error>",
        b"<Error><Code></Code></Error>",
        b'<Error xmlns="urn:other"><Code>X</Code></Error>',
        b'<!DOCTYPE x [<!ENTITY a "b">]><Error><Code>&a;</Code></Error>',
    ],
)
def test_parse_error_returns_none_for_anything_else(body):
    assert parse_error(body) is None


# -- DeleteObjects request ---------------------------------------------------------------------


def test_parse_delete_objects_with_namespace_quiet_and_versions():
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Delete xmlns="{S3_NS}">'
        "<Object><Key>a/b.txt</Key></Object>"
        "<Object><Key> spaced key </Key><VersionId>v1</VersionId></Object>"
        "<Quiet>true</Quiet></Delete>"
    ).encode()
    assert parse_delete_objects(body) == (True, [("a/b.txt", None), (" spaced key ", "v1")])


def test_parse_delete_objects_without_namespace_and_escaped_keys():
    body = (
        "<Delete><Quiet>false</Quiet><Object><Key>a&amp;b&lt;c&#13;</Key></Object>"
        "<Object><Key>été</Key><VersionId></VersionId></Object></Delete>"
    ).encode()
    assert parse_delete_objects(body) == (False, [("a&b<c\r", None), ("été", None)])


def test_parse_delete_objects_quiet_defaults_to_false():
    assert parse_delete_objects(b"<Delete><Object><Key>k</Key></Object></Delete>") == (
        False,
        [("k", None)],
    )


def test_parse_delete_objects_accepts_what_botocore_sends(s3_model):
    from botocore.serialize import RestXMLSerializer

    request = RestXMLSerializer().serialize_to_request(
        {
            "Bucket": "bkt",
            "Delete": {
                "Objects": [{"Key": "x<y"}, {"Key": "k2", "VersionId": "v"}],
                "Quiet": True,
            },
        },
        s3_model.operation_model("DeleteObjects"),
    )
    assert parse_delete_objects(request["body"]) == (True, [("x<y", None), ("k2", "v")])


def test_parse_delete_objects_takes_1000_objects_and_refuses_1001():
    def body(count: int) -> bytes:
        objects = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(count))
        return f"<Delete>{objects}</Delete>".encode()

    assert len(parse_delete_objects(body(1000))[1]) == 1000
    malformed(body(1001))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<Delete>",
        b"not xml at all",
        b"<Delete></Delete>",
        b"<Delete><Quiet>true</Quiet></Delete>",
        b"<Delete><Object></Object></Delete>",
        b"<Delete><Object><VersionId>v</VersionId></Object></Delete>",
        b"<Delete><Object><Key></Key></Object></Delete>",
        b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
        b"<Delete><Object><Key>a</Key><Bogus/></Object></Delete>",
        b"<Delete><Object><Key><b>x</b></Key></Object></Delete>",
        b"<Delete><Object><Key>a</Key></Object><Other/></Delete>",
        b"<Delete><Quiet>maybe</Quiet><Object><Key>a</Key></Object></Delete>",
        b"<NotDelete><Object><Key>a</Key></Object></NotDelete>",
        b'<Delete xmlns="urn:other"><Object><Key>a</Key></Object></Delete>',
    ],
)
def test_parse_delete_objects_malformed(body):
    malformed(body)


def test_parse_delete_objects_refuses_an_entity_bomb():
    bomb = (
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + b"".join(
            f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'.encode()
            for i in range(1, 10)
        )
        + b"]>\n<Delete><Object><Key>&lol9;</Key></Object></Delete>"
    )
    malformed(bomb)


def test_parse_delete_objects_refuses_external_entities_and_bare_dtds():
    malformed(
        b'<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<Delete><Object><Key>&xxe;</Key></Object></Delete>"
    )
    malformed(b"<!DOCTYPE Delete><Delete><Object><Key>k</Key></Object></Delete>")


def test_parse_delete_objects_conditional_fields_are_not_implemented():
    with pytest.raises(S3Error) as info:
        parse_delete_objects(b'<Delete><Object><Key>k</Key><ETag>"e"</ETag></Object></Delete>')
    assert info.value.code == "NotImplemented"


# -- listings ----------------------------------------------------------------------------------

# ListObjectsV2 as AWS sends it for encoding-type=url, delimiter, fetch-owner, with checksums.
LIST_V2 = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="{S3_NS}"><Name>my-bucket</Name><Prefix>photos%2F</Prefix><StartAfter>photos%2Fa</StartAfter><ContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</ContinuationToken><NextContinuationToken>1NHM+bW8pUxN8/4NjIaUGHkfNcO0E5MzV</NextContinuationToken><KeyCount>4</KeyCount><MaxKeys>3</MaxKeys><Delimiter>%2F</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><Contents><Key>photos%2Fa%2Bb+c.jpg</Key><LastModified>2024-05-01T10:20:30.000Z</LastModified><ETag>&quot;599bab3ed2c697f1d26842727561fd94&quot;</ETag><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><Size>1052</Size><Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>owner</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>photos%2F%E2%82%AC</Key><LastModified>2024-05-02T10:20:30.000Z</LastModified><ETag>&quot;d41d8cd98f00b204e9800998ecf8427e-3&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumAlgorithm>SHA256</ChecksumAlgorithm><ChecksumType>COMPOSITE</ChecksumType><Size>15728768</Size><StorageClass>STANDARD_IA</StorageClass><RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress></RestoreStatus></Contents><CommonPrefixes><Prefix>photos%2F2023%2F</Prefix></CommonPrefixes><CommonPrefixes><Prefix>photos%2F2024%2F</Prefix></CommonPrefixes></ListBucketResult>""".encode()

# ListObjects (v1), pretty-printed the way some S3 implementations send it, with NextMarker.
LIST_V1 = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="{S3_NS}">
  <Name>bkt</Name>
  <Prefix></Prefix>
  <Marker>a</Marker>
  <NextMarker>dir/z&amp;y</NextMarker>
  <MaxKeys>2</MaxKeys>
  <Delimiter>/</Delimiter>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>b &lt;odd&gt; key&#13;</Key>
    <LastModified>2023-01-01T00:00:00.000Z</LastModified>
    <ETag>"0cc175b9c0f1b6a831c399e269772661"</ETag>
    <Size>60</Size>
    <Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key>c</Key>
    <LastModified>2023-01-02T00:00:00.000Z</LastModified>
    <ETag>"92eb5ffee6ae2fec3ad71c777531578f"</ETag>
    <Size>0</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes>
</ListBucketResult>
""".encode()

LIST_VERSIONS = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="{S3_NS}"><Name>bkt</Name><Prefix></Prefix><KeyMarker></KeyMarker><VersionIdMarker></VersionIdMarker><NextKeyMarker>k2</NextKeyMarker><NextVersionIdMarker>v3</NextVersionIdMarker><MaxKeys>3</MaxKeys><IsTruncated>true</IsTruncated><Version><Key>k1</Key><VersionId>v1</VersionId><IsLatest>true</IsLatest><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>"aaaa"</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><Size>100</Size><StorageClass>STANDARD</StorageClass><Owner><ID>o</ID></Owner></Version><DeleteMarker><Key>k2</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest><LastModified>2024-01-02T00:00:00.000Z</LastModified><Owner><ID>o</ID></Owner></DeleteMarker><Version><Key>k2</Key><VersionId>v3</VersionId><IsLatest>false</IsLatest><LastModified>2023-12-31T00:00:00.000Z</LastModified><ETag>"bbbb-2"</ETag><Size>200</Size><StorageClass>STANDARD</StorageClass></Version></ListVersionsResult>""".encode()


def size_of(stored: int, etag: str = "") -> int:
    return max(0, stored - 52)


def etag_of(etag: str, stored: int) -> str:
    return f'"plain-{etag.strip(chr(34))}-{stored}"'


def expected_entry(entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    entry.pop("ChecksumAlgorithm", None)
    entry.pop("ChecksumType", None)
    stored = entry["Size"]
    entry["Size"] = size_of(stored)
    entry["ETag"] = etag_of(entry["ETag"], stored)
    return entry


@pytest.mark.parametrize(
    ("operation", "body", "entries"),
    [
        ("ListObjectsV2", LIST_V2, "Contents"),
        ("ListObjects", LIST_V1, "Contents"),
        ("ListObjectVersions", LIST_VERSIONS, "Versions"),
    ],
)
def test_rewrite_listing_changes_only_sizes_etags_and_checksums(s3_model, operation, body, entries):
    before = boto_parse(s3_model, operation, body)
    after = boto_parse(s3_model, operation, rewrite_listing(body, size_of, etag_of))
    expected = copy.deepcopy(before)
    expected[entries] = [expected_entry(entry) for entry in before[entries]]
    assert after == expected
    assert before[entries] and all("ChecksumAlgorithm" not in e for e in after[entries])


def test_rewrite_listing_v2_details_survive(s3_model):
    after = boto_parse(s3_model, "ListObjectsV2", rewrite_listing(LIST_V2, size_of, etag_of))
    assert after["EncodingType"] == "url"
    assert after["NextContinuationToken"] == "1NHM+bW8pUxN8/4NjIaUGHkfNcO0E5MzV"
    assert [p["Prefix"] for p in after["CommonPrefixes"]] == [
        "photos%2F2023%2F",
        "photos%2F2024%2F",
    ]
    assert after["Contents"][0]["Key"] == "photos%2Fa%2Bb+c.jpg"
    assert after["Contents"][0]["Size"] == 1000
    assert after["Contents"][0]["ETag"] == '"plain-599bab3ed2c697f1d26842727561fd94-1052"'


def test_rewrite_listing_v1_keeps_next_marker_and_odd_keys(s3_model):
    after = boto_parse(s3_model, "ListObjects", rewrite_listing(LIST_V1, size_of, etag_of))
    assert after["NextMarker"] == "dir/z&y"
    assert after["Contents"][0]["Key"] == "b <odd> key\r"
    assert after["Contents"][1]["Size"] == 0


def test_rewrite_listing_keeps_the_default_namespace_and_order():
    out = rewrite_listing(LIST_V2, size_of, etag_of)
    assert out.startswith(DECLARATION + f'<ListBucketResult xmlns="{S3_NS}"><Name>'.encode())
    assert b"ns0:" not in out
    root = ET.fromstring(out)
    assert [child.tag.split("}")[1] for child in root[:10]] == [
        "Name", "Prefix", "StartAfter", "ContinuationToken", "NextContinuationToken",
        "KeyCount", "MaxKeys", "Delimiter", "EncodingType", "IsTruncated",
    ]  # fmt: skip
    contents = root.find(f"{{{S3_NS}}}Contents")
    assert [child.tag.split("}")[1] for child in contents] == [
        "Key", "LastModified", "ETag", "Size", "Owner", "StorageClass",
    ]  # fmt: skip


def test_rewrite_listing_without_a_namespace_stays_without_one(s3_model):
    body = LIST_V1.replace(f' xmlns="{S3_NS}"'.encode(), b"")
    out = rewrite_listing(body, size_of, etag_of)
    assert b"xmlns" not in out
    assert boto_parse(s3_model, "ListObjects", out)["Contents"][0]["Size"] == 8


def test_rewrite_listing_passes_the_etag_text_and_stored_size():
    calls = []
    rewrite_listing(LIST_VERSIONS, lambda n, e: n, lambda e, n: calls.append((e, n)) or e)
    assert calls == [('"aaaa"', 100), ('"bbbb-2"', 200)]


def test_rewrite_listing_of_an_empty_listing():
    body = f'<ListBucketResult xmlns="{S3_NS}"><Name>b</Name><KeyCount>0</KeyCount>'
    body += "</ListBucketResult>"
    out = rewrite_listing(body.encode(), size_of, etag_of)
    assert out == DECLARATION + body.encode()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<Error><Code>NoSuchBucket</Code></Error>",
        b"<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",
        b"<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>",
        b"<ListBucketResult><Contents><Key>k</Key><Size>x</Size></Contents></ListBucketResult>",
        b'<!DOCTYPE a [<!ENTITY b "c">]><ListBucketResult/>',
    ],
)
def test_rewrite_listing_of_garbage_is_internal_error(body):
    with pytest.raises(S3Error) as info:
        rewrite_listing(body, size_of, etag_of)
    assert info.value.code == "InternalError"


# -- small documents ---------------------------------------------------------------------------


def test_render_copy_object_result_is_what_botocore_reads(s3_model):
    body = render_copy_object_result('"abc"', "2024-05-01T10:20:30.000Z")
    parsed = boto_parse(s3_model, "CopyObject", body)
    assert parsed["CopyObjectResult"]["ETag"] == '"abc"'
    assert parsed["CopyObjectResult"]["LastModified"].year == 2024


def test_parse_copy_object_result_reads_what_render_writes():
    body = render_copy_object_result('"abc"', "2024-05-01T10:00:00.000Z")
    assert parse_copy_object_result(body) == ('"abc"', "2024-05-01T10:00:00.000Z")


@pytest.mark.parametrize("body", [b"", b"junk", b"<Other><ETag>x</ETag></Other>"])
def test_an_unreadable_copy_result_is_internal_error(body):
    with pytest.raises(S3Error) as info:
        parse_copy_object_result(body)
    assert info.value.code == "InternalError"


def test_an_error_sent_with_200_is_raised_as_itself():
    body = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
    with pytest.raises(S3Error) as info:
        parse_copy_object_result(body)
    assert (info.value.code, info.value.status, info.value.message) == ("SlowDown", 503, "busy")


def test_parse_tagging_reads_the_tag_set_and_refuses_anything_else():
    from trios3.core.s3xml import parse_tagging

    body = (
        b'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet>'
        b"<Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b c</Key><Value></Value></Tag>"
        b"</TagSet></Tagging>"
    )
    assert parse_tagging(body) == [("a", "1"), ("b c", "")]
    assert parse_tagging(b"<Tagging><TagSet/></Tagging>") == []
    for bad in (b"", b"<Tagging/>", b"<Other><TagSet/></Other>"):
        with pytest.raises(S3Error):
            parse_tagging(bad)


# -- timestamps --------------------------------------------------------------------------------


def test_xml_timestamp_is_utc_with_milliseconds():
    when = datetime(2024, 5, 1, 10, 20, 30, 456789, tzinfo=UTC)
    assert xml_timestamp(when) == "2024-05-01T10:20:30.000Z"


def test_xml_timestamp_converts_other_zones_to_utc():
    when = datetime(2024, 5, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert xml_timestamp(when) == "2024-04-30T23:00:00.000Z"


@pytest.mark.parametrize(
    ("http_date", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", "2015-10-21T07:28:00.000Z"),
        ("Wed, 21 Oct 2015 07:28:00 +0200", "2015-10-21T05:28:00.000Z"),
        ("Thu, 01 Jan 1970 00:00:00 GMT", "1970-01-01T00:00:00.000Z"),
    ],
)
def test_xml_timestamp_of_an_http_date(http_date, expected):
    assert xml_timestamp_of(http_date) == expected


def test_the_xml_timestamp_botocore_reads_is_the_http_date(s3_model):
    body = render_copy_object_result('"e"', xml_timestamp_of("Wed, 21 Oct 2015 07:28:00 GMT"))
    parsed = boto_parse(s3_model, "CopyObject", body)
    assert parsed["CopyObjectResult"]["LastModified"] == datetime(2015, 10, 21, 7, 28, tzinfo=UTC)


@pytest.mark.parametrize("http_date", [None, "", "yesterday", "Wed, 99 Oct 2015 07:28:00 GMT"])
def test_xml_timestamp_of_nothing_readable_is_now(http_date):
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = xml_timestamp_of(http_date)
    after = datetime.now(UTC)
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=UTC)
    assert before <= when <= after


def test_xml_timestamp_of_a_minus_zero_zone_date_is_utc_whatever_the_local_zone():
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"  # POSIX form: UTC-5, needs no tz database
    time.tzset()
    try:
        stamp = xml_timestamp_of("Wed, 21 Oct 2015 07:28:00 -0000")
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert stamp == "2015-10-21T07:28:00.000Z"


# -- encodings: UTF-8 only, in every parser --------------------------------------------------

from trios3.core import s3xml  # noqa: E402


def _declared(encoding: str, root: str = "Delete") -> bytes:
    return f'<?xml version="1.0" encoding="{encoding}"?><{root}/>'.encode()


# Every parser of the module, each with what it answers for a document it cannot read.
BACKEND_PARSERS = [
    ("parse_copy_object_result", lambda b: s3xml.parse_copy_object_result(b)),
    ("parse_initiate_result", lambda b: s3xml.parse_initiate_result(b)),
    ("parse_complete_result", lambda b: s3xml.parse_complete_result(b)),
    ("parse_list_parts", lambda b: s3xml.parse_list_parts(b)),
    ("parse_list_objects", lambda b: s3xml.parse_list_objects(b)),
    ("parse_tagging", lambda b: s3xml.parse_tagging(b)),
    ("rewrite_listing", lambda b: s3xml.rewrite_listing(b, lambda s, e: s, lambda e, s: e)),
    ("rewrite_list_parts", lambda b: s3xml.rewrite_list_parts(b, "u", lambda s: s, lambda e: e)),
    ("rewrite_list_uploads", lambda b: s3xml.rewrite_list_uploads(b, lambda u: u)),
]
CLIENT_PARSERS = [
    ("parse_delete_objects", s3xml.parse_delete_objects),
    ("parse_complete_request", s3xml.parse_complete_request),
]
ROOTS = {
    "parse_copy_object_result": "CopyObjectResult",
    "parse_initiate_result": "InitiateMultipartUploadResult",
    "parse_complete_result": "CompleteMultipartUploadResult",
    "parse_list_parts": "ListPartsResult",
    "parse_list_objects": "ListBucketResult",
    "parse_tagging": "Tagging",
    "rewrite_listing": "ListBucketResult",
    "rewrite_list_parts": "ListPartsResult",
    "rewrite_list_uploads": "ListMultipartUploadsResult",
    "parse_delete_objects": "Delete",
    "parse_complete_request": "CompleteMultipartUpload",
}
OTHER_ENCODINGS = ["x-evil", "utf-16", "UTF-16LE", "latin-1", "ISO-8859-1", "ascii", "utf-7"]


@pytest.mark.parametrize("encoding", OTHER_ENCODINGS)
@pytest.mark.parametrize(("name", "parse"), CLIENT_PARSERS)
def test_a_client_document_declaring_another_encoding_is_malformed_xml(name, parse, encoding):
    with pytest.raises(S3Error) as info:
        parse(_declared(encoding, ROOTS[name]))
    assert info.value.code == "MalformedXML"


@pytest.mark.parametrize("encoding", OTHER_ENCODINGS)
@pytest.mark.parametrize(("name", "parse"), BACKEND_PARSERS)
def test_a_backend_document_declaring_another_encoding_is_unreadable(name, parse, encoding):
    with pytest.raises(S3Error) as info:
        parse(_declared(encoding, ROOTS[name]))
    assert info.value.code == "InternalError"


@pytest.mark.parametrize("encoding", OTHER_ENCODINGS)
def test_a_backend_error_declaring_another_encoding_is_not_an_error_document(encoding):
    body = f'<?xml version="1.0" encoding="{encoding}"?><Error><Code>NoSuchKey</Code></Error>'
    assert parse_error(body.encode()) is None


@pytest.mark.parametrize(("name", "parse"), CLIENT_PARSERS)
def test_a_utf16_document_with_a_byte_order_mark_is_malformed_xml(name, parse):
    body = {
        "parse_delete_objects": "<Delete><Object><Key>k</Key></Object></Delete>",
        "parse_complete_request": (
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>e</ETag></Part>"
            "</CompleteMultipartUpload>"
        ),
    }[name]
    for data in (body.encode("utf-16"), body.encode("utf-16-be"), body.encode("utf-16-le")):
        with pytest.raises(S3Error) as info:
            parse(data)
        assert info.value.code == "MalformedXML"


@pytest.mark.parametrize("encoding", ["UTF-8", "utf-8", "utf8", "Utf-8"])
def test_utf8_may_be_declared_in_any_case(encoding):
    body = f'<?xml version="1.0" encoding="{encoding}"?><Delete><Object><Key>été</Key></Object></Delete>'
    assert parse_delete_objects(body.encode()) == (False, [("été", None)])


def test_a_utf8_byte_order_mark_is_accepted():
    body = b"\xef\xbb\xbf<Delete><Object><Key>k</Key></Object></Delete>"
    assert parse_delete_objects(body) == (False, [("k", None)])


def test_latin1_bytes_in_an_undeclared_document_are_malformed_xml():
    malformed(b"<Delete><Object><Key>caf\xe9</Key></Object></Delete>")


# -- CompleteMultipartUpload -----------------------------------------------------------------


def complete_body(*parts: str, root: str = "CompleteMultipartUpload") -> bytes:
    return f"<{root}>{''.join(parts)}</{root}>".encode()


def part(number: str, etag: str = '"e"', extra: str = "") -> str:
    return f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag>{extra}</Part>"


def complete_malformed(body: bytes) -> None:
    with pytest.raises(S3Error) as info:
        s3xml.parse_complete_request(body)
    assert info.value.code == "MalformedXML"


def test_parse_complete_request_reads_parts_and_checksums_in_order():
    body = complete_body(
        part("2", '"b"', "<ChecksumCRC32> AAAAAA== </ChecksumCRC32>"),
        part(" 1 ", ' "a" '),
    )
    assert s3xml.parse_complete_request(body) == [
        (2, '"b"', {"ChecksumCRC32": "AAAAAA=="}),
        (1, '"a"', {}),
    ]


def test_parse_complete_request_accepts_what_botocore_sends(s3_model):
    from botocore.serialize import RestXMLSerializer

    request = RestXMLSerializer().serialize_to_request(
        {
            "Bucket": "bkt",
            "Key": "k",
            "UploadId": "u",
            "MultipartUpload": {
                "Parts": [
                    {"PartNumber": 1, "ETag": '"e1"', "ChecksumCRC32C": "sOO8/Q=="},
                    {"PartNumber": 2, "ETag": '"e2"'},
                ]
            },
        },
        s3_model.operation_model("CompleteMultipartUpload"),
    )
    assert s3xml.parse_complete_request(request["body"]) == [
        (1, '"e1"', {"ChecksumCRC32C": "sOO8/Q=="}),
        (2, '"e2"', {}),
    ]


def test_parse_complete_request_ignores_unknown_elements_in_a_part():
    body = complete_body(part("1", extra="<Size>5</Size><Other/>"))
    assert s3xml.parse_complete_request(body) == [(1, '"e"', {})]


def test_parse_complete_request_takes_10000_parts_and_refuses_10001():
    parts = [part(str(n)) for n in range(1, 10_001)]
    assert len(s3xml.parse_complete_request(complete_body(*parts))) == 10_000
    complete_malformed(complete_body(*parts, part("10001")))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<CompleteMultipartUpload>",
        complete_body(part("1"), root="Complete"),
        complete_body("<Part><ETag>e</ETag></Part>"),
        complete_body("<Part><PartNumber>1</PartNumber></Part>"),
        complete_body(part("one")),
        complete_body(part("-1")),
        complete_body(part("\u00b2")),
        complete_body(part("1"), "<Other/>"),
        complete_body(part("1", extra="<PartNumber>2</PartNumber>")),
        complete_body(part("1", extra="<ETag>x</ETag>")),
        complete_body(part("1", extra="<ChecksumCRC32>a</ChecksumCRC32>" * 2)),
        complete_body(part("1", extra="<Other><Deeper/></Other>")),
        complete_body("<Part><PartNumber><b>1</b></PartNumber><ETag>e</ETag></Part>"),
        b'<CompleteMultipartUpload xmlns="urn:other">'
        + part("1").encode()
        + b"</CompleteMultipartUpload>",
        b'<!DOCTYPE c [<!ENTITY x "1">]><CompleteMultipartUpload>'
        + part("&x;").encode()
        + b"</CompleteMultipartUpload>",
    ],
)
def test_parse_complete_request_malformed(body):
    complete_malformed(body)


def test_a_complete_part_number_past_int_digit_limit_is_read_as_too_large():
    # int() refuses more than 4 300 digits; the number reads as larger than any part's.
    [(number, _, _)] = s3xml.parse_complete_request(complete_body(part("9" * 5000)))
    assert number > 10_000
    [(number, _, _)] = s3xml.parse_complete_request(complete_body(part("0" * 5000 + "3")))
    assert number == 3


# -- large documents: parsed a piece at a time, within their limits --------------------------

MIB = 1024 * 1024


def _peak(parse, body: bytes) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            parse(body)
        except S3Error:
            pass
        return tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


LARGE_DOCUMENTS = [
    # ~20 bytes of memory per byte of these, parsed whole into a tree first
    (
        "many empty elements in a part",
        s3xml.parse_complete_request,
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>e</ETag>"
        + b"<a/>" * (MIB // 8)
        + b"</Part></CompleteMultipartUpload>",
    ),
    (
        "many empty elements at the root",
        s3xml.parse_complete_request,
        b"<CompleteMultipartUpload>" + b"<a/>" * (MIB // 8) + b"</CompleteMultipartUpload>",
    ),
    (
        "parts past the limit",
        s3xml.parse_complete_request,
        complete_body(*[part(str(n)) for n in range(1, 30_000)]),
    ),
    (
        "objects past the limit",
        s3xml.parse_delete_objects,
        b"<Delete>" + b"<Object><Key>k</Key></Object>" * 40_000 + b"</Delete>",
    ),
    (
        "many empty elements in an object",
        s3xml.parse_delete_objects,
        b"<Delete><Object><Key>k</Key>" + b"<a/>" * (MIB // 8) + b"</Object></Delete>",
    ),
    (
        "a start tag of many attributes",
        s3xml.parse_complete_request,
        b"<CompleteMultipartUpload " + b" ".join(b'a%d=""' % i for i in range(120_000)) + b"/>",
    ),
]


@pytest.mark.parametrize(
    ("name", "parse", "body"), LARGE_DOCUMENTS, ids=[d[0] for d in LARGE_DOCUMENTS]
)
def test_a_large_client_document_is_parsed_in_little_memory(name, parse, body):
    assert len(body) >= MIB // 2
    assert _peak(parse, body) < 3  # MiB; 10-40 MiB each when parsed whole first


# -- DeleteObjects as the proxy sends it -------------------------------------------------------


def test_render_delete_objects_reads_back_as_parsed():
    objects = [("a/b.txt", None), (" spaced ", "v1"), ("x<&>\r\ny", None), ("été", "v2")]
    for quiet in (True, False):
        body = s3xml.render_delete_objects(quiet, objects)
        assert body.startswith(DECLARATION)
        assert parse_delete_objects(body) == (quiet, objects)


def test_render_delete_objects_is_what_botocore_would_have_sent(s3_model):
    from botocore.serialize import RestXMLSerializer

    objects = [{"Key": "k1"}, {"Key": "k2", "VersionId": "v"}]
    expected = RestXMLSerializer().serialize_to_request(
        {"Bucket": "bkt", "Delete": {"Objects": objects, "Quiet": True}},
        s3_model.operation_model("DeleteObjects"),
    )["body"]
    body = s3xml.render_delete_objects(True, [("k1", None), ("k2", "v")])
    assert parse_delete_objects(body) == parse_delete_objects(expected)
    assert ET.fromstring(body).tag == f"{{{S3_NS}}}Delete"
