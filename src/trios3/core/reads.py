"""How a GET reads an object: each backend request decided from the answer to the last one.

A :class:`ReadPlan` is a state machine in the manner of h11: the shell sends the backend GET
whose Range is :meth:`ReadPlan.first_range`, hands the answer's status, Content-Range,
Content-Length and encryption envelope to :meth:`ReadPlan.on_response`, and does what comes
back: fetch again, pass a refusal on, serve a foreign object as it is, or stream. Nothing here
does I/O, so every path of a read is a test on plain data.

A single PUT's object is one backend request in the common case: the stored window is computed
from the client's Range and the default segment size before the object's metadata is known,
and fetched again only when the object turns out to be foreign, differently segmented, or
shorter than the guess. A multipart object's layout is in its part headers (read by the shell,
trios3.ops.stored), except for a whole GET, which streams from the first response.

:func:`single_answer` and :func:`multipart_answer` are what a GET or a HEAD answers once the
plaintext size (or layout) is known: status, the plaintext bytes to serve, and the headers
that describe them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trios3.core import format as fmt
from trios3.core import multipart as mp
from trios3.core.errors import S3Error
from trios3.core.keys import Envelope
from trios3.core.numbers import parse_decimal
from trios3.core.ranges import content_range, parse_content_range, parse_range, stored_window

# A read that has not settled after this many backend responses is given up: the object kept
# changing under it.
MAX_RESPONSES = 4


@dataclass(frozen=True)
class Fetched:
    """Where the bytes of a backend GET response sit in the stored object (``end``
    inclusive; ``total`` is the stored size)."""

    start: int
    end: int
    total: int

    @classmethod
    def of(cls, status: int, content_range: str | None, content_length: str | None) -> Fetched:
        if status == 206:
            parsed = parse_content_range(content_range)
            if parsed is None:
                raise S3Error("InternalError", "The backend sent an unreadable Content-Range.")
            return cls(*parsed)
        length = parse_decimal((content_length or "0").strip(" \t"), 64)
        if length is None:
            raise S3Error("InternalError", "The backend sent an unreadable Content-Length.")
        return cls(0, length - 1, length)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.total - 1


@dataclass(frozen=True)
class Answer:
    """What a GET or HEAD answers: the status, the plaintext bytes ``start..end`` (``0, -1``
    when there are none) and the headers that describe them."""

    status: int
    start: int
    end: int
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.end < self.start


# -- what the shell does next -----------------------------------------------------------------


@dataclass(frozen=True)
class FetchAgain:
    """Drop this response and GET again with ``range`` (None: the whole object)."""

    range: str | None


@dataclass(frozen=True)
class Refuse:
    """The backend refused the read (not 200/206): its answer is the client's."""


@dataclass(frozen=True)
class ServeForeign:
    """An object the proxy did not encrypt, fetched with the client's own Range: its bytes,
    status and length as the backend sent them (docs/FORMAT.md)."""


@dataclass(frozen=True)
class StreamSingle:
    """Decrypt ``span`` of a single PUT's object from this response (trios3.core.format
    SpanOpener over a window starting at ``fetched.start``)."""

    answer: Answer
    plaintext_size: int
    span: fmt.SegmentSpan
    fetched: Fetched


@dataclass(frozen=True)
class StreamMultipartWhole:
    """A whole GET of a multipart object: stream it from this response, whose first bytes are
    the first part's header (the shell reads the last part's header apart)."""

    fetched: Fetched


@dataclass(frozen=True)
class ReadMultipart:
    """A multipart object read by range or part: drop this response, find the layout from the
    part headers, then answer with :func:`multipart_answer`."""

    stored_size: int


Action = FetchAgain | Refuse | ServeForeign | StreamSingle | StreamMultipartWhole | ReadMultipart


class ReadPlan:
    """The backend GETs of one client GET.

    ``range_header`` is the client's Range, ``part_number`` its ``partNumber`` (None when
    absent); ``segment_size`` is what the first guess assumes a single object uses.
    """

    def __init__(
        self,
        range_header: str | None,
        part_number: str | None,
        segment_size: int = fmt.DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self._client_range = range_header
        self._part_number = part_number
        self._range = stored_window(range_header, segment_size)
        self._responses = 0

    def first_range(self) -> str | None:
        """The Range of the first backend GET."""
        return self._range

    def on_response(
        self,
        status: int,
        content_range: str | None,
        content_length: str | None,
        envelope: Envelope | None,
    ) -> Action:
        """What to do with the backend's answer to the last GET. ``envelope`` is the object's
        trios3 metadata (None: not the proxy's); the caller applies ``--require-encrypted``
        before this."""
        self._responses += 1
        client_range = self._client_range
        if status not in (200, 206):
            if status == 416 and self._range != client_range:
                # The guessed window starts past the stored end: learn the size from the last
                # byte, then (for a foreign object) let the backend judge the client's range.
                return self._again("bytes=-1" if self._range != "bytes=-1" else client_range)
            return Refuse()
        if envelope is None:
            check_single_part_number(self._part_number)
            if self._range != client_range:
                return self._again(client_range)
            return ServeForeign()
        fetched = Fetched.of(status, content_range, content_length)
        if envelope.multipart:
            if fetched.whole and client_range is None and self._part_number is None:
                return StreamMultipartWhole(fetched)
            return ReadMultipart(fetched.total)
        check_single_part_number(self._part_number)
        size = single_plaintext_size(fetched.total, envelope.segment_size)
        answer = single_answer(size, client_range)
        span = fmt.span_for_range(size, answer.start, answer.end, envelope.segment_size)
        if not fetched.start <= span.stored_start or span.stored_end > fetched.end:
            return self._again(f"bytes={span.stored_start}-{span.stored_end}")
        return StreamSingle(answer, size, span, fetched)

    def _again(self, range_header: str | None) -> FetchAgain:
        if self._responses >= MAX_RESPONSES:
            raise S3Error("InternalError", "The object changed while it was being read.")
        self._range = range_header
        return FetchAgain(range_header)


# -- answers ----------------------------------------------------------------------------------


def single_plaintext_size(stored_size: int, segment_size: int) -> int:
    """A single PUT's plaintext size; an impossible stored size is the backend's fault."""
    size = fmt.plaintext_size(stored_size, segment_size)
    if size is None:
        raise S3Error("InternalError", "The stored object has an impossible size.")
    return size


def check_single_part_number(part_number: str | None) -> None:
    """An object of one part (a single PUT's, or a foreign one): part 1 is all of it."""
    if part_number is not None and part_number != "1":
        raise S3Error(
            "InvalidPartNumber", "The requested partnumber is not satisfiable", status=416
        )


def single_answer(size: int, range_header: str | None) -> Answer:
    """A GET or HEAD of an object of ``size`` plaintext bytes with the client's Range: 206 with
    Content-Range for a usable range (on HEAD too, as S3 does), else 200 and all of it."""
    wanted = parse_range(range_header, size)
    if wanted:
        start, end = wanted
        headers = [
            ("content-length", str(end - start + 1)),
            ("content-range", content_range(start, end, size)),
        ]
        return Answer(206, start, end, headers)
    return Answer(200, 0, size - 1, [("content-length", str(size))])


def multipart_answer(
    layout: mp.Layout, part_number: str | None, range_header: str | None
) -> Answer:
    """A GET or HEAD of a multipart object: a ``partNumber`` (with the part count, as S3
    sends it), a Range, or all of it."""
    size = layout.plaintext_size
    if part_number is not None:
        number = mp.parse_part_number(part_number)
        if range_header is not None:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber.")
        if number > layout.count:
            raise S3Error(
                "InvalidPartNumber", "The requested partnumber is not satisfiable", status=416
            )
        place = layout.place(number)
        start, end = place.plaintext_start, place.plaintext_start + place.plaintext_size - 1
        headers = [
            ("x-amz-mp-parts-count", str(layout.count)),
            ("content-length", str(place.plaintext_size)),
        ]
        if not place.plaintext_size:
            return Answer(206, 0, -1, headers)
        headers.append(("content-range", content_range(start, end, size)))
        return Answer(206, start, end, headers)
    return single_answer(size, range_header)
