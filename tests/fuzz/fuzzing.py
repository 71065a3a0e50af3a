"""Strategies the fuzz properties share: text as the shell hands it over, numbers as clients
write them, and ways to cut and damage a valid input."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

from hypothesis import strategies as st

# What a header value, path or query string can hold once the shell has decoded its bytes
# as latin-1 (trios3.app): every character below U+0100.
latin1 = st.characters(max_codepoint=0xFF)
# And anything a caller could pass: the core's functions take str, not only latin-1.
anything = st.characters(exclude_categories=("Cs",))


def text(max_size: int = 40, alphabet=None) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet or st.one_of(latin1, anything), max_size=max_size)


def usually(value, *others: st.SearchStrategy) -> st.SearchStrategy:
    """``value`` three times in four, else one of ``others``: inputs that get past the first
    checks and reach the later ones, with one thing wrong at a time."""
    return st.one_of(st.just(value), st.just(value), st.just(value), *others)


def numbers() -> st.SearchStrategy[str]:
    """Number-like text: digits of any length (int() refuses past 4 300), leading zeros,
    signs, spaces, Unicode digits (superscript, Arabic-Indic, fullwidth), hex, nonsense."""
    digits = st.text(alphabet="0123456789", min_size=1, max_size=30)
    return st.one_of(
        digits,
        st.integers(min_value=0, max_value=2**70).map(str),
        st.integers(min_value=4290, max_value=4400).map(lambda n: "9" * n),
        st.integers(min_value=1, max_value=5000).map(lambda n: "0" * n + "1"),
        st.builds(lambda s, d: s + d, st.sampled_from(["-", "+", " ", "0x", "\xa0"]), digits),
        st.builds(lambda d, s: d + s, digits, st.sampled_from([" ", ".0", "e3", "\xb2", "_0"])),
        st.text(alphabet="\xb2\xb3\xb9\u0661\uff11\u0969\U0001d7ce", min_size=1, max_size=4),
        text(8),
    )


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (taken modulo its length), in order."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in pairwise(points):
        yield data[start:end]


cuts = st.lists(st.integers(min_value=0, max_value=2**20), max_size=12)


@st.composite
def damaged(draw, data: bytes, max_changes: int = 3) -> bytes:
    """``data`` with one to ``max_changes`` changes: a byte flipped, a run deleted, bytes
    inserted, a run repeated, or the end cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=max_changes))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "repeat", "truncate"]))
        n = len(out)
        if kind == "insert" or not n:
            at = draw(st.integers(min_value=0, max_value=n))
            out[at:at] = draw(st.binary(min_size=1, max_size=24))
            continue
        at = draw(st.integers(min_value=0, max_value=n - 1))
        if kind == "flip":
            out[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "truncate":
            del out[at:]
        else:
            end = draw(st.integers(min_value=at + 1, max_value=min(n, at + 64)))
            if kind == "delete":
                del out[at:end]
            else:
                out[end:end] = out[at:end]
    return bytes(out)
