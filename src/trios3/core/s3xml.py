"""S3 XML in and out: error documents, DeleteObjects, listings, small result documents.

Everything from outside (client bodies, backend responses) is parsed with ``defusedxml``, so a
DTD entity bomb or an external entity is refused instead of expanded, and only as UTF-8: a
document declaring another encoding (or written in UTF-16) is not one of S3's, and an unknown
encoding name never reaches Python's codec lookup. The two documents a
client may make large (CompleteMultipartUpload, DeleteObjects) are parsed a piece at a time,
each entry dropped once read, so their element limits apply as the entries arrive and memory
stays near the input's size whatever its shape. Output is built with
``xml.etree.ElementTree``, which escapes text; characters XML 1.0 cannot carry at all (most C0
controls) are replaced by U+FFFD so that a hostile key can never make our own output malformed.

Documents accept the S3 namespace or none (some S3 implementations omit it); any other
namespace is treated as a different document.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # building documents, and the parsers' tree builder
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from trios3.core.errors import S3Error
from trios3.core.numbers import parse_decimal

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DELETE_OBJECTS = 1000

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# Listing entries whose checksum elements describe the stored ciphertext, not the plaintext.
_CIPHERTEXT_CHECKSUM_TAGS = ("ChecksumAlgorithm", "ChecksumType")
_LISTING_ROOTS = {"ListBucketResult": "Contents", "ListVersionsResult": "Version"}
_XML_SPACE = " \t\r\n"
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_FEED_SIZE = 16 * 1024  # what an incremental parse takes in at a time
# The longest markup (a start tag, a comment) a client document may hold: expat keeps one
# whole, and a start tag's attributes all become Python objects at once (500 000 empty
# attributes in 5 MiB cost 133 MiB), before any element limit could apply.
_MAX_MARKUP = 16 * 1024


# -- errors ------------------------------------------------------------------------------------


def xml_timestamp(when: datetime) -> str:
    """A time as S3 writes it in XML (``LastModified``): ISO 8601 in UTC, milliseconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def xml_timestamp_of(http_date: str | None) -> str:
    """An HTTP ``Last-Modified`` as an XML timestamp (now, when there is none to read)."""
    try:
        when = parsedate_to_datetime(http_date or "")
        if when.tzinfo is None:  # RFC 5322's "-0000": UTC, with no claim about local time
            when = when.replace(tzinfo=UTC)
        return xml_timestamp(when)
    except (TypeError, ValueError, OverflowError):
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
    each with one non-empty ``<Key>`` (refused at the 1001st, before the rest is read). The
    conditional-delete fields (``ETag``, ``LastModifiedTime``, ``Size``) are NotImplemented:
    they would be compared against the stored ciphertext, not the plaintext the client knows.
    """
    quiet = False
    objects: list[tuple[str, str | None]] = []
    fields: dict[str, str] = {}
    entry = ""  # the tag of the entry being read
    for event, element, depth in _client_events(body, "Delete"):
        tag = _local(element)
        if depth == 2 and event == "start":
            if tag == "Object":
                if len(objects) >= MAX_DELETE_OBJECTS:
                    raise S3Error("MalformedXML")
                fields = {}
            elif tag != "Quiet":
                raise S3Error("MalformedXML")
            entry = tag
        elif depth == 2:
            if tag == "Quiet":
                value = (element.text or "").strip(_XML_SPACE).lower()
                if value not in ("true", "false"):
                    raise S3Error("MalformedXML")
                quiet = value == "true"
            else:
                objects.append(_delete_entry(fields))
        elif depth == 3 and event == "start":
            if tag in ("ETag", "LastModifiedTime", "Size"):
                raise S3Error(
                    "NotImplemented", f"Conditional DeleteObjects ({tag}) is not supported."
                )
            if entry != "Object" or tag not in ("Key", "VersionId") or tag in fields:
                raise S3Error("MalformedXML")
        elif depth == 3:
            fields[tag] = element.text or ""
    if not objects:
        raise S3Error("MalformedXML")
    return quiet, objects


def _delete_entry(fields: dict[str, str]) -> tuple[str, str | None]:
    key = fields.get("Key")
    if not key:
        raise S3Error("MalformedXML")
    return key, fields.get("VersionId") or None


def render_delete_objects(quiet: bool, objects: list[tuple[str, str | None]]) -> bytes:
    """The ``<Delete>`` document the proxy sends the backend, written from what
    :func:`parse_delete_objects` read (never the client's own bytes)."""
    root = ET.Element("Delete", xmlns=S3_NS)
    if quiet:
        _child(root, "Quiet", "true")
    for key, version in objects:
        entry = ET.SubElement(root, "Object")
        _child(entry, "Key", key)
        if version is not None:
            _child(entry, "VersionId", version)
    return _serialize(root)


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
_PART_FIELDS = ("PartNumber", "ETag")


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
    given; MalformedXML for anything else (order and existence are checked later, as S3 does),
    and at the 10 001st part, before the rest is read.

    A part's PartNumber, ETag and Checksum* elements may each appear once; other elements in
    a part are ignored (and dropped as they end).
    """
    parts: list[tuple[int, str, dict[str, str]]] = []
    fields: dict[str, str] = {}
    for event, element, depth in _client_events(body, "CompleteMultipartUpload"):
        tag = _local(element)
        if depth == 2 and event == "start":
            if tag != "Part" or len(parts) >= MAX_COMPLETE_PARTS:
                raise S3Error("MalformedXML")
            fields = {}
        elif depth == 2:
            number = parse_decimal(fields.get("PartNumber", "").strip(_XML_SPACE))
            etag = fields.pop("ETag", None)
            if number is None or etag is None:
                raise S3Error("MalformedXML")
            checksums = {
                name: value.strip(_XML_SPACE)
                for name, value in fields.items()
                if name.startswith("Checksum")
            }
            parts.append((number, etag.strip(_XML_SPACE), checksums))
        elif depth == 3 and event == "end" and (tag in _PART_FIELDS or tag.startswith("Checksum")):
            if tag in fields:
                raise S3Error("MalformedXML")
            fields[tag] = element.text or ""
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


class _NotUtf8(ValueError):
    """The document declares an encoding other than UTF-8."""


def _check_declaration(version: str | None, encoding: str | None, standalone: int) -> None:
    del version, standalone
    if encoding is not None and encoding.lower() not in _UTF8_NAMES:
        raise _NotUtf8(encoding)


def _not_utf8(body: bytes) -> bool:
    """A UTF-16 or UTF-32 document, which expat would recognise by its byte-order mark or
    its zero bytes whatever encoding it is told: UTF-8 XML holds no zero byte at all."""
    return b"\x00" in body or body.startswith((b"\xff\xfe", b"\xfe\xff"))


def _new_parser() -> DefusedXMLParser:
    """A defused expat parser (no DTD, entities or external references) that reads UTF-8
    only: the declared encoding is checked, never looked up (an unknown name would raise
    LookupError from Python's codecs; expat still detects UTF-16 itself, which the callers
    refuse with :func:`_not_utf8`)."""
    parser = DefusedXMLParser(target=ET.TreeBuilder(), encoding="utf-8", forbid_dtd=True)
    parser.parser.XmlDeclHandler = _check_declaration
    return parser


_PARSE_ERRORS = (ET.ParseError, DefusedXmlException, ValueError)


def _parse(body: bytes) -> ET.Element | None:
    """The root element of a safe, well-formed UTF-8 document in the S3 namespace or none."""
    if _not_utf8(body):
        return None
    parser = _new_parser()
    try:
        parser.feed(body)
        root = parser.close()
    except _PARSE_ERRORS:
        return None
    if _namespace(root) not in ("", S3_NS):
        return None
    return root


def _client_events(body: bytes, root_name: str) -> Iterator[tuple[str, ET.Element, int]]:
    """``(event, element, depth)`` for each ``start`` and ``end`` of a client's document
    whose root is ``root_name`` (depth 1), parsed a piece at a time.

    At most three levels (root, entry, field): anything deeper, another root, markup longer
    than 16 KiB, or a document that is not safe, well-formed UTF-8 is MalformedXML. An element is dropped from its parent
    once its ``end`` has been handled, so what is held stays near one entry: read an
    element's text at its ``end``.
    """
    if _not_utf8(body):
        raise S3Error("MalformedXML")
    parser = _new_parser()
    pull = ET.XMLPullParser(("start", "end"), _parser=parser)
    stack: list[ET.Element] = []
    try:
        for offset in range(0, len(body) or 1, _FEED_SIZE):
            piece = body[offset : offset + _FEED_SIZE]
            pull.feed(piece)
            # Outside a handler, expat's position is just past its last event: what lies
            # beyond it is one construct still being held.
            if offset + len(piece) - parser.parser.CurrentByteIndex > _MAX_MARKUP:
                raise S3Error("MalformedXML")
            yield from _depths(pull.read_events(), stack, root_name)
        pull.close()
        yield from _depths(pull.read_events(), stack, root_name)
    except _PARSE_ERRORS:
        raise S3Error("MalformedXML") from None


def _depths(
    events: Iterator[tuple[str, ET.Element]], stack: list[ET.Element], root_name: str
) -> Iterator[tuple[str, ET.Element, int]]:
    for event, element in events:
        if event == "start":
            if not stack and (
                _local(element) != root_name or _namespace(element) not in ("", S3_NS)
            ):
                raise S3Error("MalformedXML")
            stack.append(element)
            if len(stack) > 3:
                raise S3Error("MalformedXML")
            yield event, element, len(stack)
        else:
            yield event, element, len(stack)
            stack.pop()
            if stack:
                stack[-1].remove(element)


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
    """An element's text as a number (surrounding XML whitespace allowed), saturated past 18
    digits (trios3.core.numbers); None if it is not one."""
    text = "" if element is None else (element.text or "").strip(_XML_SPACE)
    return parse_decimal(text)


def _text(parent: ET.Element, name: str) -> str | None:
    element = _find(parent, name)
    return None if element is None else (element.text or "")
