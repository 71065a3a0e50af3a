"""Throughput of trios3 against the same SeaweedFS reached directly, in one run.

Run: .venv/bin/python scripts/bench.py [--large-mib 256] [--small-count 300] [--rounds 2]

Starts its own SeaweedFS and ``trios3 serve`` (with the tests' harness, tests/harness.py), then
for one large object and for many 1 KiB objects measures sequential PUT and GET throughput
through the proxy and directly against SeaweedFS, plus the proxy process's CPU seconds
(utime+stime from /proc/<pid>/stat) per GiB of plaintext moved.

The client (tests/s3clients.py's S3) is httpx with a small SigV4 signer
(trios3.core.sigv4.sign_request) sending ``UNSIGNED-PAYLOAD``: it hashes nothing, keeps one
pooled connection, and streams GET bodies to nowhere. Measured against boto3 with
``request_checksum_calculation="when_required"`` on this 2-core box: boto3 still SHA-256-hashes
every body over http (256 MiB PUT direct 119 MiB/s vs 150 for httpx) and spends ~3.1 ms of
client CPU per 1 KiB request vs ~1.8 ms for httpx. The one case where boto3 is faster is a
large GET straight from SeaweedFS (~760 vs ~480 MiB/s: httpcore reads 64 KiB per recv), so the
*direct* large GET figure is a lower bound; the proxied GET is far below that client ceiling.
The "client busy" column (the script's CPU time / wall time) shows how client-bound a row is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

# The servers and clients the tests use too: tests/harness.py, tests/s3clients.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import cpu_seconds, running_servers, vm_hwm_kib
from s3clients import S3

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


# --- measurements --------------------------------------------------------------------------


class Meter:
    """Wall time and the proxy's CPU time over a block."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    @contextmanager
    def measure(self, result: dict):
        cpu0 = cpu_seconds(self.pid) if self.pid else 0.0
        t0, client0 = time.perf_counter(), time.process_time()
        yield
        result["seconds"] = time.perf_counter() - t0
        result["client"] = time.process_time() - client0
        result["cpu"] = (cpu_seconds(self.pid) - cpu0) if self.pid else None


def large(s3: S3, meter: Meter, bucket: str, data: bytes, rounds: int) -> dict[str, dict]:
    prefix = "proxied" if meter.pid else "direct"
    best: dict[str, dict] = {}
    for r in range(rounds):
        key = f"{prefix}/large-{r}"
        for op in ("PUT", "GET"):
            result: dict = {}
            with meter.measure(result):
                if op == "PUT":
                    s3.put(bucket, key, data)
                else:
                    got = s3.get_into(bucket, key)
            if op == "GET" and got != len(data):
                raise RuntimeError(f"GET returned {got} bytes, expected {len(data)}")
            result["bytes"], result["ops"] = len(data), 1
            if op not in best or result["seconds"] < best[op]["seconds"]:
                best[op] = result
    return best


def small(s3: S3, meter: Meter, bucket: str, count: int, size: int) -> dict[str, dict]:
    prefix = "proxied" if meter.pid else "direct"
    bodies = [os.urandom(size) for _ in range(count)]
    out: dict[str, dict] = {}
    put: dict = {}
    with meter.measure(put):
        for i, body in enumerate(bodies):
            s3.put(bucket, f"{prefix}/small/{i:05d}", body)
    get: dict = {}
    with meter.measure(get):
        for i, body in enumerate(bodies):
            if s3.get(bucket, f"{prefix}/small/{i:05d}") != body:
                raise RuntimeError(f"{prefix}/small/{i:05d} came back different")
    for name, result in (("PUT", put), ("GET", get)):
        result["bytes"], result["ops"] = count * size, count
        out[name] = result
    return out


def table(rows: list[tuple[str, str, dict, dict]]) -> str:
    head = (
        f"{'workload':<18}{'op':<5}{'direct MiB/s':>13}{'trios3 MiB/s':>13}"
        f"{'ratio':>7}{'direct op/s':>12}{'trios3 op/s':>12}{'proxy CPU s/GiB':>16}"
        f"{'CPU ms/op':>10}{'client busy d/p':>17}"
    )
    lines = [head, "-" * len(head)]
    for workload, op, direct, proxied in rows:
        d_mib = direct["bytes"] / MiB / direct["seconds"]
        p_mib = proxied["bytes"] / MiB / proxied["seconds"]
        d_ops = direct["ops"] / direct["seconds"]
        p_ops = proxied["ops"] / proxied["seconds"]
        per_gib = proxied["cpu"] / (proxied["bytes"] / GiB)
        per_op = proxied["cpu"] / proxied["ops"] * 1000
        client = "/".join(f"{100 * r['client'] / r['seconds']:.0f}%" for r in (direct, proxied))
        lines.append(
            f"{workload:<18}{op:<5}{d_mib:>13.1f}{p_mib:>13.1f}{p_mib / d_mib:>7.2f}"
            f"{d_ops:>12.1f}{p_ops:>12.1f}{per_gib:>16.2f}{per_op:>10.2f}{client:>17}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small-count", type=int, default=300)
    parser.add_argument("--small-size", type=int, default=KiB)
    parser.add_argument("--rounds", type=int, default=2, help="large-object rounds (best of)")
    args = parser.parse_args()

    started = time.perf_counter()
    with running_servers("trios3-bench-") as (weed, served):
        proxy, proxy_process = served.endpoint, served.process
        print(f"SeaweedFS {weed.url}, trios3 {proxy.url} (pid {proxy_process.pid})")
        bucket = "bench-" + uuid.uuid4().hex[:8]
        direct, proxied = S3(weed), S3(proxy)
        proxied.create_bucket(bucket)
        data = os.urandom(args.large_mib * MiB)
        label = f"{args.large_mib} MiB x1"
        results = []
        d = large(direct, Meter(None), bucket, data, args.rounds)
        p = large(proxied, Meter(proxy_process.pid), bucket, data, args.rounds)
        results += [(label, op, d[op], p[op]) for op in ("PUT", "GET")]
        del data
        slabel = f"{args.small_size // KiB} KiB x{args.small_count}"
        d = small(direct, Meter(None), bucket, args.small_count, args.small_size)
        p = small(proxied, Meter(proxy_process.pid), bucket, args.small_count, args.small_size)
        results += [(slabel, op, d[op], p[op]) for op in ("PUT", "GET")]
        direct.close()
        proxied.close()
        print(
            f"\nsequential, one connection, httpx + UNSIGNED-PAYLOAD; large: best of "
            f"{args.rounds}; proxy peak RSS (VmHWM) {vm_hwm_kib(proxy_process.pid) / KiB:.0f}"
            " MiB\n"
        )
        print(table(results))
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
