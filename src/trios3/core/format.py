"""The trios3 v1 body format: fixed-size AES-256-GCM segments, sizes and range arithmetic.

An object body is its plaintext cut into ``segment_size`` pieces, each sealed under the object's
data key with its index as nonce and ``index || final-flag`` as associated data, so no segment can
be flipped, swapped, dropped, appended or taken from another object without failing its tag.
There is no header: stored size is a pure function of plaintext size, so listings and ranges
need no extra reads. See docs/FORMAT.md for the byte-level description.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trios3.core.errors import TamperedError

FORMAT_VERSION = 1
TAG_SIZE = 16
DATA_KEY_SIZE = 32
# Measured by scripts/segment_size.py (numbers in docs/FORMAT.md): sealing keeps >= 90 % of the
# AES-bound rate from 64 KiB up, opening nowhere does (one copy to join 64 KiB reads), so this
# is the smallest size within 90 % of the best measured in both directions. It divides 5 MiB.
DEFAULT_SEGMENT_SIZE = 128 * 1024
MIN_SEGMENT_SIZE = 4 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
# The AAD holds the index in 8 bytes.
MAX_SEGMENTS = 2**64

_SEGMENT_AAD_PREFIX = b"trios3 v1 segment\x00"
_NOT_FINAL = b"\x00"
_FINAL = b"\x01"


def is_valid_segment_size(segment_size: int) -> bool:
    """A power of two between 4 KiB and 16 MiB: what v1 readers accept from metadata."""
    return (
        MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        and segment_size & (segment_size - 1) == 0
    )


def _check_segment_size(segment_size: int) -> None:
    if not is_valid_segment_size(segment_size):
        raise ValueError(
            f"segment size must be a power of two between {MIN_SEGMENT_SIZE} and "
            f"{MAX_SEGMENT_SIZE}, got {segment_size}"
        )


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")


def segment_count(plaintext_size: int, segment_size: int) -> int:
    """Number of segments; an empty object still has one (empty) final segment."""
    if plaintext_size < 0:
        raise ValueError(f"plaintext size must be >= 0, got {plaintext_size}")
    return max(1, -(-plaintext_size // segment_size))


def stored_size(plaintext_size: int, segment_size: int) -> int:
    """Bytes on S3 for a plaintext of this size: one tag per segment."""
    return plaintext_size + TAG_SIZE * segment_count(plaintext_size, segment_size)


def plaintext_size(stored_size: int, segment_size: int) -> int | None:
    """Inverse of :func:`stored_size`; None for sizes the format cannot produce.

    The last segment carries 1..S plaintext bytes (0 only when it is the sole segment), so a
    stored size whose remainder modulo S+16 is 1..16 is impossible, except 16 itself (empty).
    """
    if stored_size == TAG_SIZE:
        return 0
    stride = segment_size + TAG_SIZE
    if stored_size <= 0 or 1 <= stored_size % stride <= TAG_SIZE:
        return None
    count = -(-stored_size // stride)
    return stored_size - TAG_SIZE * count


@dataclass(frozen=True)
class SegmentSpan:
    """Which stored bytes to fetch for a plaintext byte range, and what to keep of them."""

    first_segment: int
    last_segment: int
    stored_start: int  # inclusive offset in the stored object
    stored_end: int  # inclusive
    skip: int  # plaintext bytes to drop from the front of the first decrypted segment
    length: int  # plaintext bytes to deliver


def span_for_range(plaintext_size: int, start: int, end: int, segment_size: int) -> SegmentSpan:
    """Map plaintext bytes start..end (inclusive) to whole stored segments.

    Whole segments, because a tag covers a whole segment: nothing is released unauthenticated.
    ``span_for_range(0, 0, -1, S)`` is the whole empty object: its one segment, length 0.
    """
    empty_whole = plaintext_size == 0 and start == 0 and end == -1
    if not empty_whole and not 0 <= start <= end < plaintext_size:
        raise ValueError(f"range {start}-{end} is outside a {plaintext_size}-byte object")
    stride = segment_size + TAG_SIZE
    first = start // segment_size
    last = max(first, end // segment_size)
    last_plain = min(segment_size, plaintext_size - last * segment_size)
    return SegmentSpan(
        first_segment=first,
        last_segment=last,
        stored_start=first * stride,
        stored_end=last * stride + last_plain + TAG_SIZE - 1,
        skip=start - first * segment_size,
        length=end - start + 1,
    )


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(8, "big") + (_FINAL if final else _NOT_FINAL)


class _Pieces:
    """A FIFO of received buffers that copies only to join a segment spanning several of them.

    Buffers are kept by reference when immutable (bytes, or a read-only view of bytes) and
    copied otherwise, so a caller may reuse its buffer after feeding it.
    """

    __slots__ = ("_items", "size")

    def __init__(self) -> None:
        self._items: deque[bytes | memoryview] = deque()
        self.size = 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        item: bytes | memoryview
        if type(data) is bytes:
            item = data
        elif (
            isinstance(data, memoryview)
            and data.readonly
            and data.contiguous
            and type(data.obj) is bytes
            and 4 * data.nbytes >= len(data.obj)
        ):
            item = data.cast("B")
        else:
            item = bytes(data)
        self._items.append(item)
        self.size += len(item)

    def take(self, n: int) -> bytes | memoryview:
        """The next ``n`` bytes (``n <= size``), zero-copy when one buffer holds them all."""
        self.size -= n
        items = self._items
        if not items:
            return b""
        first = items[0]
        if len(first) == n:
            return items.popleft()
        if len(first) > n:
            view = memoryview(first)
            items[0] = view[n:]
            return view[:n]
        parts: list[bytes | memoryview] = []
        while n:
            item = items[0]
            if len(item) <= n:
                parts.append(items.popleft())
                n -= len(item)
            else:
                view = memoryview(item)
                parts.append(view[:n])
                items[0] = view[n:]
                n = 0
        return b"".join(parts)

    def compact(self) -> None:
        """Copy a small tail out of a large buffer, so what is held stays near what is pending."""
        items = self._items
        if items:
            head = items[0]
            if isinstance(head, memoryview) and 4 * head.nbytes < len(head.obj):  # type: ignore[arg-type]
                items[0] = head.tobytes()

    def clear(self) -> None:
        self._items.clear()
        self.size = 0


class SegmentSealer:
    """Encrypts a plaintext stream into sealed segments; holds at most ~one segment of plaintext.

    ``aad_prefix`` is what precedes ``index || final`` in the associated data: v1's label for
    single objects, or a multipart part's label and number (trios3.core.multipart).

    A full segment is held back until more bytes arrive, because only then is it known not to
    be the final one; :meth:`finish` seals whatever is left with the final flag. Input that
    already lines up with segments is sealed without being copied.
    """

    def __init__(
        self, data_key: bytes, segment_size: int, aad_prefix: bytes = _SEGMENT_AAD_PREFIX
    ) -> None:
        _check_data_key(data_key)
        _check_segment_size(segment_size)
        self._aead = AESGCM(data_key)
        self._aad_prefix = aad_prefix
        self._segment_size = segment_size
        self._pending = _Pieces()
        self._index = 0
        self._plaintext_bytes = 0
        self._finished = False

    @property
    def plaintext_bytes(self) -> int:
        return self._plaintext_bytes

    def _seal(self, plaintext: bytes | memoryview, final: bool) -> bytes:
        index = self._index
        self._index += 1
        return self._aead.encrypt(_nonce(index), plaintext, _aad(self._aad_prefix, index, final))

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Sealed segments known NOT to be final (there is data after them)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._plaintext_bytes += len(data)
        pending = self._pending
        pending.append(data)
        size = self._segment_size
        out: list[bytes] = []
        while pending.size > size:
            out.append(self._seal(pending.take(size), final=False))
        pending.compact()
        return out

    def finish(self) -> bytes:
        """The final sealed segment (of an empty plaintext when nothing was fed)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        return self._seal(self._pending.take(self._pending.size), final=True)


class SegmentOpener:
    """Decrypts stored segments first_segment.. of an object of known plaintext size.

    Raises TamperedError on any authentication failure, on bytes past the last expected segment
    and, in :meth:`finish`, when the stored bytes stop early. ``last_segment`` (default: the
    object's final segment) lets a range read stop at the end of its span.
    """

    def __init__(
        self,
        data_key: bytes,
        segment_size: int,
        plaintext_size: int,
        first_segment: int = 0,
        last_segment: int | None = None,
        aad_prefix: bytes = _SEGMENT_AAD_PREFIX,
    ) -> None:
        _check_data_key(data_key)
        _check_segment_size(segment_size)
        count = segment_count(plaintext_size, segment_size)
        if last_segment is None:
            last_segment = count - 1
        if not 0 <= first_segment <= last_segment < count:
            raise ValueError(
                f"segments {first_segment}..{last_segment} are outside an object of {count}"
            )
        self._aead = AESGCM(data_key)
        self._aad_prefix = aad_prefix
        self._segment_size = segment_size
        self._final_index = count - 1
        self._final_stored = plaintext_size - (count - 1) * segment_size + TAG_SIZE
        self._index = first_segment
        self._last = last_segment
        self._pending = _Pieces()
        self._broken = False

    def _stored_length(self, index: int) -> int:
        if index == self._final_index:
            return self._final_stored
        return self._segment_size + TAG_SIZE

    def _fail(self, why: str) -> TamperedError:
        self._broken = True
        self._pending.clear()
        return TamperedError(why)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Plaintext of every complete segment received so far."""
        if self._broken:
            raise TamperedError("segment stream already failed")
        pending = self._pending
        pending.append(data)
        out: list[bytes] = []
        while self._index <= self._last:
            index = self._index
            need = self._stored_length(index)
            if pending.size < need:
                break
            final = index == self._final_index
            try:
                aad = _aad(self._aad_prefix, index, final)
                out.append(self._aead.decrypt(_nonce(index), pending.take(need), aad))
            except InvalidTag:
                raise self._fail(f"segment {index} failed authentication") from None
            self._index += 1
        if self._index > self._last and pending.size:
            raise self._fail(f"stored bytes continue after segment {self._last}")
        pending.compact()
        return out

    def finish(self) -> list[bytes]:
        """The rest; TamperedError if the stored bytes ended mid-segment or too early."""
        if self._broken:
            raise TamperedError("segment stream already failed")
        if self._pending.size:
            raise self._fail(f"stored bytes end inside segment {self._index}")
        if self._index <= self._last:
            raise self._fail(f"stored bytes end before segment {self._index}")
        return []


class SpanTrim:
    """Keeps the plaintext of a span out of whole decrypted segments: drops ``span.skip``
    bytes from the front, then passes ``span.length`` bytes and no more."""

    __slots__ = ("_drop", "_left")

    def __init__(self, span: SegmentSpan) -> None:
        self._drop = span.skip
        self._left = span.length

    def __call__(self, pieces: list[bytes]) -> list[bytes]:
        out = []
        for piece in pieces:
            if self._drop:
                cut = min(self._drop, len(piece))
                piece = piece[cut:]
                self._drop -= cut
            piece = piece[: self._left]
            self._left -= len(piece)
            if piece:
                out.append(piece)
        return out


class SpanOpener:
    """The plaintext of one :class:`SegmentSpan` (exactly ``span.length`` bytes) from a stored
    window that starts at ``window_start`` and covers the span, and maybe more.

    Bytes of the window before and after the span are dropped: a backend window ends at the
    span in all but odd cases, and a response read to its end keeps its connection pooled.
    """

    def __init__(
        self,
        data_key: bytes,
        segment_size: int,
        plaintext_size: int,
        span: SegmentSpan,
        window_start: int,
    ) -> None:
        if window_start > span.stored_start:
            raise ValueError("the stored window starts after the span")
        self._opener = SegmentOpener(
            data_key, segment_size, plaintext_size, span.first_segment, span.last_segment
        )
        self._drop_stored = span.stored_start - window_start
        self._stored_left = span.stored_end - span.stored_start + 1
        self._trimmed = SpanTrim(span)

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Plaintext of the span's segments completed by ``data``."""
        if self._drop_stored:
            cut = min(self._drop_stored, len(data))
            data = data[cut:]
            self._drop_stored -= cut
        data = data[: self._stored_left]
        if not data:
            return []
        self._stored_left -= len(data)
        return self._trimmed(self._opener.feed(data))

    def finish(self) -> list[bytes]:
        """TamperedError if the window ended before the span did."""
        return self._trimmed(self._opener.finish())
