"""Measure SegmentSealer/SegmentOpener throughput per segment size against raw AES-GCM.

Run: .venv/bin/python scripts/segment_size.py [MiB]
The default segment size is the smallest power of two that keeps >= 90 % of the AES-bound
throughput (AESGCM.encrypt on 4 MiB buffers) in both directions and divides 5 MiB.
"""

from __future__ import annotations

import os
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trios3.core.format import SegmentOpener, SegmentSealer, stored_size

READ = 64 * 1024
KiB = 1024
MiB = 1024 * 1024
SIZES = [16 * KiB, 32 * KiB, 64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB, 4 * MiB]
REPEATS = 3
THRESHOLD = 0.90


def aes_bound(total: int) -> float:
    """MiB/s of AESGCM.encrypt over 4 MiB buffers: the ceiling any segmenting can reach."""
    aead = AESGCM(os.urandom(32))
    buf = os.urandom(4 * MiB)
    nonce = bytes(12)
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(total // len(buf)):
            aead.encrypt(nonce, buf, None)
        best = min(best, time.perf_counter() - t0)
    return total / MiB / best


def round_trip(segment_size: int, total: int) -> tuple[float, float]:
    """(seal MiB/s, open MiB/s) for ``total`` plaintext bytes fed in 64 KiB reads."""
    key = os.urandom(32)
    chunk = os.urandom(READ)
    sealer = SegmentSealer(key, segment_size)
    parts = [piece for _ in range(total // READ) for piece in sealer.feed(chunk)]
    stored = b"".join([*parts, sealer.finish()])
    del parts
    assert len(stored) == stored_size(total, segment_size)
    view = memoryview(stored)
    # Separate bytes objects, as an HTTP client hands them over.
    reads = [bytes(view[offset : offset + READ]) for offset in range(0, len(stored), READ)]
    view.release()
    del stored
    best_seal = best_open = float("inf")
    for _ in range(REPEATS):
        # Sealed segments are dropped at once, as the app sends each on; keeping 256 MiB of
        # them would measure page faults, not the format.
        sealer = SegmentSealer(key, segment_size)
        t0 = time.perf_counter()
        for _ in range(total // READ):
            sealer.feed(chunk)
        sealer.finish()
        best_seal = min(best_seal, time.perf_counter() - t0)

        opener = SegmentOpener(key, segment_size, total)
        got = 0
        t0 = time.perf_counter()
        for read in reads:
            for piece in opener.feed(read):
                got += len(piece)
        opener.finish()
        best_open = min(best_open, time.perf_counter() - t0)
        assert got == total
    return total / MiB / best_seal, total / MiB / best_open


def main() -> None:
    total = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 256 * MiB
    ceiling = aes_bound(total)
    print(f"{total // MiB} MiB in {READ // KiB} KiB reads, best of {REPEATS}")
    print(f"AES-bound (AESGCM.encrypt, 4 MiB buffers): {ceiling:8.0f} MiB/s")
    print(f"{'segment':>8} {'seal MiB/s':>11} {'%':>5} {'open MiB/s':>11} {'%':>5}")
    rows = []
    for size in SIZES:
        seal, opened = round_trip(size, total)
        rows.append((size, seal, opened))
        label = f"{size // KiB} KiB" if size < MiB else f"{size // MiB} MiB"
        print(
            f"{label:>8} {seal:11.0f} {100 * seal / ceiling:5.0f} "
            f"{opened:11.0f} {100 * opened / ceiling:5.0f}"
        )
    fits = [r for r in rows if (5 * MiB) % r[0] == 0]
    choice = next(
        (s for s, a, b in fits if min(a, b) >= THRESHOLD * ceiling),
        None,
    )
    if choice is None:
        # Fallback: the smallest size within 90 % of the best measured size, each direction.
        best_seal = max(r[1] for r in fits)
        best_open = max(r[2] for r in fits)
        choice = next(
            s for s, a, b in fits if a >= THRESHOLD * best_seal and b >= THRESHOLD * best_open
        )
        print("no size reaches 90 % of AES-bound both ways; fallback: 90 % of the best size")
    print(f"choice: {choice} bytes")


if __name__ == "__main__":
    main()
