"""S3 XML in and out: error documents, DeleteObjects, listings, small result documents.

Everything from outside (client bodies, backend responses) is parsed with ``defusedxml``, so a
DTD entity bomb or an external entity is refused instead of expanded. Output is built with
``xml.etree.ElementTree``, which escapes text; characters XML 1.0 cannot carry at all (most C0
controls) are replaced by U+FFFD so that a hostile key can never make our own output malformed.

Documents accept the S3 namespace or none (some S3 implementations omit it); any other
namespace is treated as a different document.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # output only; parsing goes through defusedxml
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from trios3.core.errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DELETE_OBJECTS = 1000

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# Listing entries whose checksum elements describe the stored ciphertext, not the plaintext.
_CIPHERTEXT_CHECKSUM_TAGS = ("ChecksumAlgorithm", "ChecksumType")
_LISTING_ROOTS = {"ListBucketResult": "Contents", "ListVersionsResult": "Version"}


# -- errors ------------------------------------------------------------------------------------


def xml_timestamp(when: datetime) -> str:
    """A time as S3 writes it in XML (``LastModified``): ISO 8601 in UTC, milliseconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def xml_timestamp_of(http_date: str | None) -> str:
    """An HTTP ``Last-Modified`` as an XML timestamp (now, when there is none to read)."""
    try:
        return xml_timestamp(parsedate_to_datetime(http_date or ""))
    except (TypeError, ValueError):
        return xml_timestamp(datetime.now(UTC))


def render_error(err: S3Error, resource: str, request_id: str) -> bytes:
    """The ``<Error>`` document AWS sends: Code, Message, extra fields, Resource, RequestId."""
    root = ET.Element("Error")
    _child(root, "Code", err.code)
    _child(root, "Message", err.message)
    for name, value in err.fields.items():
        _child(root, name, value)
    _child(root, "Resource", resource)
    _child(root, "RequestId", request_id)
    return _serialize(root)


def parse_error(body: bytes) -> tuple[str, str] | None:
    """``(code, message)`` from a backend ``<Error>`` document, or None if it is not one."""
    root = _parse(body)
    if root is None or _local(root) != "Error":
        return None
    code = _text(root, "Code")
    if not code:
        return None
    return code, _text(root, "Message") or ""


# -- DeleteObjects -----------------------------------------------------------------------------


def parse_delete_objects(body: bytes) -> tuple[bool, list[tuple[str, str | None]]]:
    """A client's ``<Delete>`` body as ``(quiet, [(key, version_id)])``.

    MalformedXML, as AWS answers, for anything but 1 to 1000 well-formed ``<Object>`` entries
    each with one non-empty ``<Key>``. The conditional-delete fields (``ETag``,
    ``LastModifiedTime``, ``Size``) are NotImplemented: they would be compared against the
    stored ciphertext, not the plaintext the client knows.
    """
    root = _parse(body)
    if root is None or _local(root) != "Delete":
        raise S3Error("MalformedXML")
    quiet = False
    objects: list[tuple[str, str | None]] = []
    for element in root:
        tag = _local(element)
        if tag == "Quiet":
            value = (element.text or "").strip().lower()
            if value not in ("true", "false"):
                raise S3Error("MalformedXML")
            quiet = value == "true"
        elif tag == "Object":
            objects.append(_delete_entry(element))
            if len(objects) > MAX_DELETE_OBJECTS:
                raise S3Error("MalformedXML")
        else:
            raise S3Error("MalformedXML")
    if not objects:
        raise S3Error("MalformedXML")
    return quiet, objects


def _delete_entry(element: ET.Element) -> tuple[str, str | None]:
    fields: dict[str, str] = {}
    for child in element:
        tag = _local(child)
        if tag in ("ETag", "LastModifiedTime", "Size"):
            raise S3Error("NotImplemented", f"Conditional DeleteObjects ({tag}) is not supported.")
        if tag not in ("Key", "VersionId") or tag in fields or len(child):
            raise S3Error("MalformedXML")
        fields[tag] = child.text or ""
    key = fields.get("Key")
    if not key:
        raise S3Error("MalformedXML")
    return key, fields.get("VersionId") or None


def rewrite_listing(
    body: bytes,
    size_of: Callable[[int, str], int],
    etag_of: Callable[[str, int], str],
) -> bytes:
    """A backend listing with each entry's Size and ETag mapped to the plaintext's.

    Handles ListBucketResult (v1 and v2; entries are ``<Contents>``) and ListVersionsResult
    (entries are ``<Version>``; delete markers carry neither and are left alone). In each entry
    ``<Size>`` becomes ``size_of(stored_size, etag_text)``, ``<ETag>`` becomes
    ``etag_of(etag_text, stored_size)`` (the text as sent, quotes included), and the checksum
    elements, which describe the ciphertext, are removed. Everything else is kept in order,
    in the document's default namespace. A body that is not such a listing, or an entry
    without an integer Size, is the backend's fault: InternalError.
    """
    root = _parse(body)
    entry_tag = _LISTING_ROOTS.get(_local(root)) if root is not None else None
    if root is None or entry_tag is None:
        raise S3Error("InternalError", "The backend sent an unreadable listing.")
    for entry in root:
        if _local(entry) != entry_tag:
            continue
        size_element = _find(entry, "Size")
        stored_size = _integer(size_element)
        if size_element is None or stored_size is None:
            raise S3Error("InternalError", "The backend listing has an entry without a Size.")
        etag_element = _find(entry, "ETag")
        etag = "" if etag_element is None else (etag_element.text or "")
        size_element.text = str(size_of(stored_size, etag))
        if etag_element is not None:
            etag_element.text = etag_of(etag, stored_size)
        for child in list(entry):
            if _local(child) in _CIPHERTEXT_CHECKSUM_TAGS:
                entry.remove(child)
    namespace = _namespace(root)
    return _serialize(root, default_namespace=namespace or None)


def parse_list_objects(body: bytes) -> tuple[list[str], str | None]:
    """The keys of a backend ``ListObjectsV2`` page and its next continuation token."""
    root = _parse(body)
    if root is None or _local(root) != "ListBucketResult":
        raise S3Error("InternalError", "The backend sent an unreadable listing.")
    keys = []
    for entry in root:
        if _local(entry) == "Contents":
            key = _text(entry, "Key")
            if key is None:
                raise S3Error("InternalError", "The backend listing has an entry without a Key.")
            keys.append(key)
    truncated = (_text(root, "IsTruncated") or "").strip().lower() == "true"
    token = _text(root, "NextContinuationToken") if truncated else None
    return keys, token or None


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """(key, value) of each tag in a backend ``<Tagging>`` document."""
    root = _parse(body)
    tag_set = _find(root, "TagSet") if root is not None else None
    if root is None or _local(root) != "Tagging" or tag_set is None:
        raise S3Error("InternalError", "The backend sent an unreadable tag set.")
    return [
        (_text(tag, "Key") or "", _text(tag, "Value") or "")
        for tag in tag_set
        if _local(tag) == "Tag"
    ]


# -- small result documents ---------------------------------------------------------------------


def render_copy_object_result(etag: str, last_modified: str) -> bytes:
    """``<CopyObjectResult>``: ``etag`` as in an ETag header (quoted), ``last_modified`` ISO."""
    root = ET.Element("CopyObjectResult", xmlns=S3_NS)
    _child(root, "ETag", etag)
    _child(root, "LastModified", last_modified)
    return _serialize(root)


def parse_copy_object_result(body: bytes) -> tuple[str, str]:
    """``(etag, last_modified)`` from the backend's ``<CopyObjectResult>`` or
    ``<CopyPartResult>``; an ``<Error>`` sent with a 200 is raised as the error it names."""
    root = _parse(body)
    if root is not None and _local(root) == "Error":
        raise S3Error(_text(root, "Code") or "InternalError", _text(root, "Message") or None)
    if root is None or _local(root) not in ("CopyObjectResult", "CopyPartResult"):
        raise S3Error("InternalError", "The backend sent an unreadable copy result.")
    return _text(root, "ETag") or "", _text(root, "LastModified") or ""


# -- multipart ----------------------------------------------------------------------------------

MAX_COMPLETE_PARTS = 10_000


def render_initiate_result(bucket: str, key: str, upload_id: str) -> bytes:
    root = ET.Element("InitiateMultipartUploadResult", xmlns=S3_NS)
    _child(root, "Bucket", bucket)
    _child(root, "Key", key)
    _child(root, "UploadId", upload_id)
    return _serialize(root)


def parse_initiate_result(body: bytes) -> str:
    """The backend's UploadId from ``<InitiateMultipartUploadResult>``."""
    root = _parse(body)
    upload_id = _text(root, "UploadId") if root is not None else None
    if root is None or _local(root) != "InitiateMultipartUploadResult" or not upload_id:
        raise S3Error("InternalError", "The backend sent an unreadable upload result.")
    return upload_id


def parse_complete_request(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    """A client's ``<CompleteMultipartUpload>``: (part number, ETag, checksums) in the order
    given; MalformedXML for anything else (order and existence are checked later, as S3 does)."""
    root = _parse(body)
    if root is None or _local(root) != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    parts = []
    for element in root:
        if _local(element) == "":
            continue
        if _local(element) != "Part" or len(parts) >= MAX_COMPLETE_PARTS:
            raise S3Error("MalformedXML")
        number = _integer(_find(element, "PartNumber"))
        etag = _text(element, "ETag")
        if number is None or etag is None:
            raise S3Error("MalformedXML")
        checksums = {
            _local(c): (c.text or "").strip() for c in element if _local(c).startswith("Checksum")
        }
        parts.append((number, etag.strip(), checksums))
    return parts


def render_complete_request(parts: list[tuple[int, str]]) -> bytes:
    """``<CompleteMultipartUpload>`` for the backend: (part number, ETag as the backend sent
    it)."""
    root = ET.Element("CompleteMultipartUpload", xmlns=S3_NS)
    for number, etag in parts:
        part = ET.SubElement(root, "Part")
        _child(part, "PartNumber", str(number))
        _child(part, "ETag", etag)
    return _serialize(root)


def render_complete_result(
    location: str, bucket: str, key: str, etag: str, checksums: dict[str, str]
) -> bytes:
    root = ET.Element("CompleteMultipartUploadResult", xmlns=S3_NS)
    _child(root, "Location", location)
    _child(root, "Bucket", bucket)
    _child(root, "Key", key)
    _child(root, "ETag", etag)
    for name, value in checksums.items():
        _child(root, name, value)
    return _serialize(root)


def parse_complete_result(body: bytes) -> str:
    """The ETag from the backend's ``<CompleteMultipartUploadResult>``. S3 may answer a
    Complete with 200 and an ``<Error>`` document; that is raised as the error it names."""
    root = _parse(body)
    if root is not None and _local(root) == "Error":
        code = _text(root, "Code") or "InternalError"
        raise S3Error(code, _text(root, "Message") or None)
    etag = _text(root, "ETag") if root is not None else None
    if root is None or _local(root) != "CompleteMultipartUploadResult" or etag is None:
        raise S3Error("InternalError", "The backend sent an unreadable completion result.")
    return etag


def parse_list_parts(body: bytes) -> tuple[list[tuple[int, str, int]], str | None]:
    """The backend's ``<ListPartsResult>``: (part number, ETag, stored size) per part, and
    the next part-number marker when the list is truncated."""
    root = _parse(body)
    if root is None or _local(root) != "ListPartsResult":
        raise S3Error("InternalError", "The backend sent an unreadable part list.")
    parts = []
    for element in root:
        if _local(element) != "Part":
            continue
        number = _integer(_find(element, "PartNumber"))
        size = _integer(_find(element, "Size"))
        if number is None or size is None:
            raise S3Error("InternalError", "The backend part list has a malformed part.")
        parts.append((number, _text(element, "ETag") or "", size))
    truncated = (_text(root, "IsTruncated") or "").strip().lower() == "true"
    marker = _text(root, "NextPartNumberMarker") if truncated else None
    return parts, (marker or None)


def rewrite_list_parts(
    body: bytes,
    upload_id: str,
    size_of: Callable[[int], int],
    etag_of: Callable[[str], str],
) -> bytes:
    """The backend's ``<ListPartsResult>`` in the client's terms: its UploadId, each part's
    plaintext Size and client ETag; checksums of the ciphertext are dropped."""
    root = _parse(body)
    if root is None or _local(root) != "ListPartsResult":
        raise S3Error("InternalError", "The backend sent an unreadable part list.")
    element = _find(root, "UploadId")
    if element is not None:
        element.text = _xml_safe(upload_id)
    for part in root:
        if _local(part) != "Part":
            continue
        size = _find(part, "Size")
        stored = _integer(size)
        if size is None or stored is None:
            raise S3Error("InternalError", "The backend part list has a malformed part.")
        size.text = str(size_of(stored))
        etag = _find(part, "ETag")
        if etag is not None:
            etag.text = etag_of(etag.text or "")
        for child in list(part):
            if _local(child).startswith("Checksum"):
                part.remove(child)
    for child in list(root):
        if _local(child) in _CIPHERTEXT_CHECKSUM_TAGS:
            root.remove(child)
    return _serialize(root, default_namespace=_namespace(root) or None)


def rewrite_list_uploads(body: bytes, upload_id_of: Callable[[str], str]) -> bytes:
    """The backend's ``<ListMultipartUploadsResult>`` with every upload id in the client's
    form (entries, and the marker elements that carry one)."""
    root = _parse(body)
    if root is None or _local(root) != "ListMultipartUploadsResult":
        raise S3Error("InternalError", "The backend sent an unreadable upload list.")
    for element in root:
        name = _local(element)
        if name in ("UploadIdMarker", "NextUploadIdMarker") and element.text:
            element.text = upload_id_of(element.text)
        elif name == "Upload":
            upload = _find(element, "UploadId")
            if upload is not None and upload.text:
                upload.text = upload_id_of(upload.text)
    return _serialize(root, default_namespace=_namespace(root) or None)


def render_copy_part_result(etag: str, last_modified: str) -> bytes:
    root = ET.Element("CopyPartResult", xmlns=S3_NS)
    _child(root, "ETag", etag)
    _child(root, "LastModified", last_modified)
    return _serialize(root)


def _parse(body: bytes) -> ET.Element | None:
    """The root element of a safe, well-formed document in the S3 namespace or none."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        return None
    if _namespace(root) not in ("", S3_NS):
        return None
    return root


def _serialize(root: ET.Element, default_namespace: str | None = None) -> bytes:
    if default_namespace:
        try:
            text = ET.tostring(root, encoding="unicode", default_namespace=default_namespace)
        except ValueError:  # unqualified elements mixed in: fall back to prefixed names
            text = ET.tostring(root, encoding="unicode")
    else:
        text = ET.tostring(root, encoding="unicode")
    # ElementTree writes a carriage return in text raw, and every XML parser reads a raw one
    # back as a newline; a key containing one must survive the round trip.
    return (_DECLARATION + text.replace("\r", "&#13;")).encode("utf-8")


def _child(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = _xml_safe(text)
    return element


def _xml_safe(text: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", text)


def _namespace(element: ET.Element) -> str:
    tag = element.tag
    return tag[1 : tag.index("}")] if isinstance(tag, str) and tag.startswith("{") else ""


def _local(element: ET.Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    return tag.rsplit("}", 1)[-1]


def _find(parent: ET.Element, name: str) -> ET.Element | None:
    return next((child for child in parent if _local(child) == name), None)


def _integer(element: ET.Element | None) -> int | None:
    text = "" if element is None else (element.text or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _text(parent: ET.Element, name: str) -> str | None:
    element = _find(parent, name)
    return None if element is None else (element.text or "")
