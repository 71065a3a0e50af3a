"""Peak memory (VmHWM) of the trios3 process for a 10 MiB and a 1 GiB object.

Run: .venv/bin/python scripts/memory.py [--sizes-mib 10 1024]

Starts one SeaweedFS and, for each size, a fresh ``trios3 serve`` in front of it. It reads
the proxy's VmHWM (/proc/<pid>/status) after start-up and one tiny request, after a PUT of
the object and after a GET of it. The object is generated chunk by chunk while it is sent
(httpx, a streamed body with Content-Length, ``UNSIGNED-PAYLOAD``) and the GET is streamed
into a SHA-256, so the script itself never holds the object either: its own VmHWM is shown
too. A proxy that streams should stay flat between sizes. (The kernel's RSS counters are
batched per CPU, so VmHWM readings wobble by a few hundred KiB.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

# The servers and clients the tests use too: tests/harness.py, tests/s3clients.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import running_proxy, running_seaweedfs, vm_hwm_kib
from s3clients import S3

KiB = 1024
MiB = 1024 * KiB
CHUNK = MiB


def generated(size: int, digest):
    """``size`` random bytes in 1 MiB chunks, fed to ``digest`` as they go out."""
    left = size
    while left:
        chunk = os.urandom(min(CHUNK, left))
        digest.update(chunk)
        left -= len(chunk)
        yield chunk


def measure(weed, directory: Path, size: int) -> dict[str, float]:
    with running_proxy(weed, directory) as proxy:
        process = proxy.process
        s3 = S3(proxy.endpoint)
        bucket = "mem-" + uuid.uuid4().hex[:8]
        s3.create_bucket(bucket)
        s3.put(bucket, "warm-up", b"x")
        s3.get(bucket, "warm-up")
        row = {"start": vm_hwm_kib(process.pid)}

        sent = hashlib.sha256()
        t0 = time.perf_counter()
        s3.put(bucket, "object", generated(size, sent), length=size)
        row["put_s"] = time.perf_counter() - t0
        row["after PUT"] = vm_hwm_kib(process.pid)

        got = hashlib.sha256()
        t0 = time.perf_counter()
        count = s3.get_into(bucket, "object", got.update)
        row["get_s"] = time.perf_counter() - t0
        row["after GET"] = vm_hwm_kib(process.pid)
        s3.close()
        if count != size or got.digest() != sent.digest():
            raise SystemExit(f"{size} B object came back different ({count} B)")
        row["ok"] = True
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[10, 1024])
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="trios3-memory-") as tmp:
        tmp_path = Path(tmp)
        with running_seaweedfs(tmp_path / "seaweedfs") as weed:
            for mib in args.sizes_mib:
                row = measure(weed, tmp_path / f"proxy-{mib}", mib * MiB)
                rows.append((mib, row))
                print(f"{mib} MiB: done (PUT {row['put_s']:.1f} s, GET {row['get_s']:.1f} s)")

    print("\ntrios3 VmHWM, a fresh proxy process per size (MiB; SHA-256 of the GET checked)\n")
    head = f"{'object':>10}{'after start':>13}{'after PUT':>11}{'after GET':>11}{'growth':>9}"
    print(head)
    print("-" * len(head))
    for mib, row in rows:
        growth = (row["after GET"] - row["start"]) / KiB
        print(
            f"{str(mib) + ' MiB':>10}{row['start'] / KiB:>13.1f}{row['after PUT'] / KiB:>11.1f}"
            f"{row['after GET'] / KiB:>11.1f}{growth:>9.1f}"
        )
    if len(rows) >= 2:
        (small_mib, small), (big_mib, big) = rows[0], rows[-1]
        diff = (big["after GET"] - small["after GET"]) / KiB
        print(
            f"\npeak for {big_mib} MiB minus peak for {small_mib} MiB: {diff:+.1f} MiB "
            f"({big_mib / small_mib:.0f}x the data)"
        )
    print(f"this script's own VmHWM: {vm_hwm_kib(os.getpid()) / KiB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
