"""Peak memory (VmHWM) of the trios3 process through a 2 GiB multipart upload and its GETs.

Run: .venv/bin/python scripts/multipart_memory.py [--size-mib 2048] [--part-mib 8] [--parallel 4]

Starts a SeaweedFS and one fresh ``trios3 serve`` (the tests' harness) and reads the
proxy's VmHWM (/proc/<pid>/status) after each step:

  1. start-up and one tiny PUT + GET;
  2. a small multipart upload (``--small-parts`` parts, by default as many as ``--parallel``,
     so that it runs the same number of UploadParts at once as the large one): the baseline;
  3. a ``--size-mib`` multipart upload in ``--part-mib`` parts, ``--parallel`` at a time, with
     a ListParts before the CompleteMultipartUpload;
  4. a streamed GET of the whole object, hashed with SHA-256 and compared with the upload's;
  5. ranged GETs across part boundaries and GETs by ``partNumber``, each checked byte for byte;
  6. a GET of the small object, checked too.

Object bytes are an AES-256-CTR keystream addressed by offset, so any part or range can be
generated on its own: each UploadPart body is generated 1 MiB at a time while it is sent
(httpx, a streamed body with Content-Length, ``UNSIGNED-PAYLOAD``), the upload's SHA-256 is
taken over the same generator in object order (parts go out in parallel, so not while they are
sent), and the GET is streamed into a SHA-256. The script never holds the object; its own VmHWM
is shown. A proxy that streams multipart uploads should stay flat between the small upload and
the 2 GiB one. (The kernel's RSS counters are batched per CPU, so VmHWM readings wobble by a
few hundred KiB.)

The client is tests/s3clients.py's S3 (the benchmarks' httpx client) with the multipart calls
added below.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

# The servers and clients the tests use too: tests/harness.py, tests/s3clients.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import running_servers, vm_hwm_kib
from s3clients import S3, Keystream, S3Failure, complete_multipart_body, completed, parse_upload_id

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def object_bytes(name: str, size: int) -> Keystream:
    """An object's bytes: addressable, so any part or range is generated on its own."""
    return Keystream(f"trios3-multipart-memory/{name}", size)


# --- the multipart calls ---------------------------------------------------------------------


class MultipartS3(S3):
    """tests/s3clients.py's S3 plus the multipart calls this script makes."""

    def create_multipart(self, bucket: str, key: str) -> str:
        response = self.call(
            "CreateMultipartUpload",
            self.build("POST", bucket, key, query=[("uploads", "")], content=b""),
        )
        found = parse_upload_id(response.content)
        if not found:
            raise S3Failure(f"CreateMultipartUpload: no UploadId in {response.text[:500]}")
        return found

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, content, length: int
    ) -> str:
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        request = self.build("PUT", bucket, key, query=query, content=content, length=length)
        response = self.call(f"UploadPart {number}", request)
        etag = response.headers.get("etag")
        if not etag:
            raise S3Failure(f"UploadPart {number}: no ETag")
        return etag

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[tuple[int, int]]:
        """(part number, size) of every part, following max-parts pages."""
        parts: list[tuple[int, int]] = []
        marker = None
        while True:
            query = [("uploadId", upload_id)]
            if marker is not None:
                query.append(("part-number-marker", marker))
            text = self.call("ListParts", self.build("GET", bucket, key, query=query)).text
            for block in re.findall(r"<Part>(.*?)</Part>", text, re.S):
                number = int(re.search(r"<PartNumber>(\d+)</PartNumber>", block).group(1))
                size = int(re.search(r"<Size>(\d+)</Size>", block).group(1))
                parts.append((number, size))
            if "<IsTruncated>true</IsTruncated>" not in text:
                return parts
            found = re.search(r"<NextPartNumberMarker>(\d+)</NextPartNumberMarker>", text)
            if not found:
                raise S3Failure("ListParts: truncated without NextPartNumberMarker")
            marker = found.group(1)

    def complete(self, bucket: str, key: str, upload_id: str, etags: dict[int, str]) -> str:
        body = complete_multipart_body(etags)
        request = self.build("POST", bucket, key, query=[("uploadId", upload_id)], content=body)
        response = self.call("CompleteMultipartUpload", request)
        text = response.text
        if not completed(response.content):
            raise S3Failure(f"CompleteMultipartUpload: {text[:500]}")
        found = re.search(r"<ETag>([^<]+)</ETag>", text)
        return html.unescape(found.group(1)) if found else "?"

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        self.call(
            "AbortMultipartUpload",
            self.build("DELETE", bucket, key, query=[("uploadId", upload_id)]),
            expect=(204, 200, 404),
        )

    def head(self, bucket: str, key: str) -> httpx.Headers:
        return self.call("HEAD", self.build("HEAD", bucket, key)).headers

    def get_range(self, bucket: str, key: str, spec: str) -> httpx.Response:
        return self.call(
            f"GET Range {spec}",
            self.build("GET", bucket, key, headers=[("range", f"bytes={spec}")]),
            expect=(206,),
        )

    def get_part(self, bucket: str, key: str, number: int) -> httpx.Response:
        return self.call(
            f"GET partNumber={number}",
            self.build("GET", bucket, key, query=[("partNumber", str(number))]),
            expect=(200, 206),
        )


# --- the uploads -----------------------------------------------------------------------------


def multipart_upload(
    s3: MultipartS3, bucket: str, key: str, data: Keystream, part_size: int, parallel: int
) -> dict:
    """Upload ``data`` in parts (``parallel`` at a time), list them, complete; return facts."""
    count = -(-data.size // part_size)
    upload_id = s3.create_multipart(bucket, key)
    try:
        etags: dict[int, str] = {}

        def one(number: int) -> None:
            offset = (number - 1) * part_size
            length = min(part_size, data.size - offset)
            etags[number] = s3.upload_part(
                bucket, key, upload_id, number, data.stream(offset, length), length
            )

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            # list() re-raises the first failure.
            list(pool.map(one, range(1, count + 1)))
        listed = s3.list_parts(bucket, key, upload_id)
        etag = s3.complete(bucket, key, upload_id, etags)
    except BaseException:
        try:
            s3.abort(bucket, key, upload_id)
        except Exception as exc:
            print(f"(abort of {key} failed too: {exc})", file=sys.stderr)
        raise
    expected_sizes = [min(part_size, data.size - i * part_size) for i in range(count)]
    return {
        "parts": count,
        "listed": len(listed),
        "listed_numbers_ok": [n for n, _ in listed] == list(range(1, count + 1)),
        "listed_sizes_ok": [size for _, size in listed] == expected_sizes,
        "listed_sizes": sorted({size for _, size in listed}),
        "etag": etag,
    }


def check_range(s3: MultipartS3, bucket: str, key: str, data: Keystream, spec: str) -> str:
    """GET ``bytes=<spec>``; check the status, Content-Range and every byte."""
    first, _, last = spec.partition("-")
    if first == "":
        start, end = data.size - int(last), data.size - 1
    else:
        start = int(first)
        end = min(int(last), data.size - 1) if last else data.size - 1
    response = s3.get_range(bucket, key, spec)
    want_range = f"bytes {start}-{end}/{data.size}"
    got_range = response.headers.get("content-range")
    body = response.content
    if got_range != want_range:
        raise S3Failure(f"Range {spec}: Content-Range {got_range!r}, expected {want_range!r}")
    if body != data.read(start, end - start + 1):
        raise S3Failure(f"Range {spec}: {len(body)} bytes, content DIFFERS")
    return f"bytes={spec}: {want_range}, {len(body)} B identical"


def check_part(
    s3: MultipartS3, bucket: str, key: str, data: Keystream, part_size: int, number: int, count: int
) -> str:
    """GET ``?partNumber=<number>``; check the part's bytes and the parts count."""
    response = s3.get_part(bucket, key, number)
    start = (number - 1) * part_size
    length = min(part_size, data.size - start)
    if response.content != data.read(start, length):
        raise S3Failure(f"partNumber={number}: {len(response.content)} bytes, content DIFFERS")
    parts_count = response.headers.get("x-amz-mp-parts-count")
    if parts_count != str(count):
        raise S3Failure(f"partNumber={number}: x-amz-mp-parts-count {parts_count!r}, not {count}")
    return (
        f"partNumber={number}: {response.status_code}, "
        f"{response.headers.get('content-range', 'no Content-Range')}, {length} B identical, "
        f"parts count {parts_count}"
    )


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="the large object")
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4, help="UploadParts at once")
    parser.add_argument(
        "--small-parts", type=int, help="parts of the small upload (default: max(2, --parallel))"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="send the requests to SeaweedFS itself (checks this script; the proxy stays idle)",
    )
    args = parser.parse_args()
    part_size = args.part_mib * MiB
    small_parts = args.small_parts or max(2, args.parallel)
    big = object_bytes("big", args.size_mib * MiB)
    small = object_bytes("small", small_parts * part_size)
    big_parts = -(-big.size // part_size)

    rows: list[tuple[str, float | None, int | None, int]] = []  # label, seconds, bytes, HWM
    notes: list[str] = []
    started = time.perf_counter()
    with running_servers("trios3-mp-memory-") as (weed, served):
        proxy, process = served.endpoint, served.process
        print(f"SeaweedFS {weed.url}, trios3 {proxy.url} (pid {process.pid})")
        s3 = MultipartS3(weed if args.direct else proxy)
        if args.direct:
            print("--direct: requests go to SeaweedFS, the VmHWM figures are an idle proxy's")
        bucket = "mpmem-" + uuid.uuid4().hex[:8]
        s3.create_bucket(bucket)
        s3.put(bucket, "warm-up", b"x")
        if s3.get(bucket, "warm-up") != b"x":
            raise SystemExit("warm-up object came back different")
        time.sleep(0.2)
        rows.append(("start-up + tiny PUT/GET", None, None, vm_hwm_kib(process.pid)))

        def step(label: str, size: int | None, fn):
            t0 = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - t0
            rows.append((label, seconds, size, vm_hwm_kib(process.pid)))
            print(f"{label}: {seconds:.1f} s", flush=True)
            return result

        par = f"{args.parallel} at a time"
        small_facts = step(
            f"small multipart ({small_parts} x {args.part_mib} MiB, {par})",
            small.size,
            lambda: multipart_upload(s3, bucket, "small", small, part_size, args.parallel),
        )
        big_facts = step(
            f"{args.size_mib} MiB multipart ({big_parts} x {args.part_mib} MiB, {par})",
            big.size,
            lambda: multipart_upload(s3, bucket, "big", big, part_size, args.parallel),
        )
        for name, facts in (("small", small_facts), (f"{args.size_mib} MiB", big_facts)):
            notes.append(
                f"{name}: {facts['parts']} parts; ListParts listed {facts['listed']} "
                f"(numbers {'ok' if facts['listed_numbers_ok'] else 'WRONG'}, sizes "
                f"{'= plaintext part sizes' if facts['listed_sizes_ok'] else 'DIFFER: ' + str(facts['listed_sizes'])}); "
                f"ETag {facts['etag']}"
            )
        head = s3.head(bucket, "big")
        notes.append(
            f"HEAD {args.size_mib} MiB: Content-Length {head.get('content-length')}, "
            f"ETag {head.get('etag')}"
        )
        if head.get("content-length") != str(big.size):
            raise SystemExit(f"HEAD says {head.get('content-length')} bytes, not {big.size}")

        t0 = time.perf_counter()
        sent = big.sha256()
        notes.append(
            f"upload SHA-256 (generator, object order, {time.perf_counter() - t0:.1f} s): "
            f"{sent.hex()}"
        )
        got = hashlib.sha256()
        count = step(
            f"GET {args.size_mib} MiB, streamed into SHA-256",
            big.size,
            lambda: s3.get_into(bucket, "big", got.update),
        )
        if count != big.size or got.digest() != sent:
            raise SystemExit(
                f"GET of the {args.size_mib} MiB object came back different: {count} bytes, "
                f"sha256 {got.hexdigest()}"
            )
        notes.append(f"GET SHA-256 matches the upload's ({count} bytes)")

        p, mid = part_size, big_parts // 2
        specs = [
            "0-0",
            f"{p - 100}-{p + 99}",  # across the first boundary
            f"{p - 1}-{2 * p}",  # the whole second part and a byte either side
            f"{mid * p - 1}-{mid * p}",  # the two bytes either side of a middle boundary
            f"{(big_parts - 1) * p - 5}-",  # the last boundary to the end
            "-1000",  # the last 1000 bytes
        ]
        numbers = sorted({1, mid, big_parts})

        def ranged() -> list[str]:
            out = [check_range(s3, bucket, "big", big, spec) for spec in specs]
            out += [check_part(s3, bucket, "big", big, part_size, n, big_parts) for n in numbers]
            return out

        notes += step(
            f"{len(specs)} ranged GETs + {len(numbers)} partNumber GETs",
            None,
            ranged,
        )
        small_sha = hashlib.sha256()
        step(
            f"GET small ({small.size // MiB} MiB), checked",
            small.size,
            lambda: s3.get_into(bucket, "small", small_sha.update),
        )
        if small_sha.digest() != small.sha256():
            raise SystemExit("the small multipart object came back different")
        s3.close()

    print(f"\ntrios3 VmHWM through one proxy process (MiB), {args.part_mib} MiB parts\n")
    head_line = f"{'step':<46}{'seconds':>9}{'MiB/s':>8}{'VmHWM':>8}"
    print(head_line)
    print("-" * len(head_line))
    for label, seconds, size, hwm in rows:
        secs = "-" if seconds is None else f"{seconds:.1f}"
        rate = "-" if seconds is None or size is None else f"{size / MiB / seconds:.0f}"
        print(f"{label:<46}{secs:>9}{rate:>8}{hwm / KiB:>8.1f}")
    by_label = {label: hwm for label, _, _, hwm in rows}
    small_peak, big_peak = rows[1][3], rows[2][3]
    print(
        f"\npeak after the {args.size_mib} MiB upload minus peak after the small upload: "
        f"{(big_peak - small_peak) / KiB:+.1f} MiB ({big.size / small.size:.0f}x the data)"
    )
    print(
        f"peak after every GET minus peak after the small upload: "
        f"{(max(by_label.values()) - small_peak) / KiB:+.1f} MiB"
    )
    print()
    for line in notes:
        print(f"  {line}")
    print(f"\nthis script's own VmHWM: {vm_hwm_kib(os.getpid()) / KiB:.1f} MiB")
    print(f"total run time {time.perf_counter() - started:.0f} s ({big.size / GiB:g} GiB object)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
