"""HTTP/1.1 responses as the backend sends them, parsed from bytes (sans-IO).

The proxy's backend client (trios3.connections) reads a response head once and hands body
bytes over as received; what it must decide about those bytes is here, tested on bytes:
the head's status and headers, and the chunked transfer coding some listings come in.
Anything malformed is :class:`ProtocolError`: the connection is not to be trusted again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

MAX_HEAD = 64 * 1024  # a response head larger than this is not an S3 answer
HEAD_END = b"\r\n\r\n"
MAX_CHUNK_LINE = 4096  # a chunk's size line, or a trailer


class ProtocolError(Exception):
    """The backend's bytes are not a well-formed HTTP/1.1 response."""


class Headers(Mapping[str, str]):
    """Response headers by lower-case name; a repeated header's values joined with ``, ``."""

    __slots__ = ("_items",)

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        items: dict[str, str] = {}
        for name, value in pairs:
            name = name.lower()
            items[name] = f"{items[name]}, {value}" if name in items else value
        self._items = items

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, default=None):  # type: ignore[override]
        return self._items.get(name.lower(), default)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def parse_head(head: bytes) -> tuple[int, str, Headers]:
    """``(status, http version, headers)`` of a response head (without its blank line)."""
    lines = head.decode("latin-1").split("\r\n")  # latin-1: every byte is a character
    version, _, rest = lines[0].partition(" ")
    status = rest[:3]
    if (
        version not in ("HTTP/1.1", "HTTP/1.0")
        or not status.isascii()
        or not status.isdigit()
        or rest[3:4] not in ("", " ")
        or not 100 <= int(status) <= 599
    ):
        raise ProtocolError("the backend sent an unreadable status line")
    headers = Headers(())
    items = headers._items
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or "\n" in line or "\r" in line:
            raise ProtocolError("the backend sent an unreadable header line")
        name = name.lower()
        value = value.strip(" \t")
        items[name] = f"{items[name]}, {value}" if name in items else value
    return int(status), version, headers


class ChunkedReader:
    """The ``Transfer-Encoding: chunked`` body decoder, sans-IO: :meth:`feed` takes bytes as
    they arrive and returns the body bytes they complete; :attr:`done` once the last chunk
    and its trailers are in (bytes after the end are kept back: :attr:`leftover`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # bytes of the current chunk still to come
        self._state = "size"  # size, data, data-end, trailers, done
        self.done = False

    @property
    def leftover(self) -> bool:
        """Bytes came after the end of the body (the connection is out of step)."""
        return self.done and bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buffer += data
        buffer = self._buffer
        while buffer and not self.done:
            if self._state == "data":
                take = min(self._left, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self._left -= take
                if not self._left:
                    self._state = "data-end"
                continue
            end = buffer.find(b"\r\n")
            if end < 0 or end > MAX_CHUNK_LINE:
                if end > MAX_CHUNK_LINE or len(buffer) > MAX_CHUNK_LINE:
                    raise ProtocolError("the backend sent an overlong chunk line")
                break
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if self._state == "data-end":
                if line:
                    raise ProtocolError("a chunk of the backend's answer does not end")
                self._state = "size"
            elif self._state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise ProtocolError("the backend sent an unreadable chunk size")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailers"
            elif not line:  # the blank line after the trailers (which are not kept)
                self._state = "done"
                self.done = True
        return out


class Framing:
    """How a response's body is delimited, and whether its connection may carry another
    exchange once the body is read to its end."""

    __slots__ = ("chunked", "keep_alive", "length")

    def __init__(self, status: int, version: str, headers: Headers, method: str) -> None:
        self.keep_alive = (
            version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        )
        self.chunked = False
        self.length: int | None = 0  # None: the body ends when the backend closes
        if method == "HEAD" or status in (204, 304) or status < 200:
            return
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].strip().lower() != "chunked":
                raise ProtocolError("the backend sent a transfer coding other than chunked")
            self.chunked = True
            self.length = None
            return
        text = headers.get("content-length")
        if text is None:
            self.length = None
            self.keep_alive = False
            return
        text = text.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise ProtocolError("the backend sent an unreadable Content-Length")
        self.length = int(text)


def request_head(method: str, target: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request line and headers of one exchange, ending in the blank line."""
    parts = [method, " ", target.decode("ascii"), " HTTP/1.1\r\n"]
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"the header {name} may not hold a line break")
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")
