"""Memory flood: hundreds of concurrent GETs, PUTs and UploadParts against a capped trios3.

Run: .venv/bin/python scripts/flood.py [--quick] [--only get200 mixed ...]

The incident this answers: the reference proxy (s3proxy-python) was OOM-killed inside a
512 MiB pod by 90 concurrent GETs of encrypted objects under a 64 MiB budget, and even after
its fix peaked at ~325 MiB. Here one SeaweedFS runs for the whole run and, for every
scenario, a fresh ``trios3 serve`` (64 MiB budget, 30 s admission timeout) is started inside
a fresh 512 MiB cgroup-v1 memory group, so that peaks (VmHWM, the group's
memory.max_usage_in_bytes) and OOM kills are per scenario.

Scenarios (defaults; --quick shrinks sizes for a ~3 minute smoke run):
  get90 / get200      90, then 200 concurrent GETs of 4 encrypted 64 MiB single-PUT objects
  mpget90 / mpget200  the same GETs of 4 encrypted 64 MiB multipart objects (8 MiB parts):
                      the reference incident's objects
  put192              192 concurrent PUTs of 16 MiB
  part192             192 concurrent UploadParts of 16 MiB into 4 multipart uploads, which are
                      completed after the load
  mixed               at once: 32 PUTs and 32 UploadParts (into 2 uploads) of 16 MiB, 64 GETs
                      of the single-PUT objects and 64 of the multipart ones
  trickle110          110 PUTs of 25 bytes sent a byte a second (slow-loris clients) and, at
                      once, 32 GETs that must not be refused: a trickle leases only what its
                      body needs, and the body rate floor ends the slowest

All objects are uploaded once, before the scenarios, through a proxy of their own: the
single-PUT ones with one PUT each, the multipart ones with CreateMultipartUpload, sequential
UploadParts and CompleteMultipartUpload. ``--no-multipart`` leaves out the mp* and part*
scenarios and the multipart half of the mixed one (what this script did before trios3 had
multipart uploads: a proxy that answers 501 to CreateMultipartUpload stops the run at set-up).

Clients are raw HTTP/1.1 over trio sockets (tests/s3clients.py's RawClient: one connection
per request, SigV4 from trios3.core.sigv4 with UNSIGNED-PAYLOAD), so that the script itself can
keep up and can disconnect exactly where it wants. GET behaviours are mixed: most read at full speed and
check the SHA-256 of the whole body; some read slowly (2-8 MiB/s for a few seconds, then
finish and check); some disconnect on purpose (while queued for admission, right after the
status line, after a few KiB, mid-stream). A 503 SlowDown is retried a bounded number of
times honouring Retry-After. PUT bodies come from a deterministic generator keyed by the
object's index (AES-CTR keystream), so nothing is held whole; a sample is read back through
the proxy and hashed afterwards. UploadPart bodies are generated the same way (keyed by upload
and part number); after the load each upload is completed with the parts that were stored
(CompleteMultipartUpload after the flood, an error if it fails) and a sample of parts is read
back with a ranged GET of the completed object (Content-Range checked) and hashed.

After each load the script also probes that the budget was fully given back: it opens as
many GETs as the budget admits at once (budget // per-request window) and expects every
one of them to get its status line promptly.

It also compares the requests the clients sent with the request lines the proxy logged
(one per request, written when its handler returns): a request that never got its line is
still held inside the proxy. Each proxy is stopped with SIGTERM and SIGKILLed only if it has
not exited after 15 s; that is reported as a hang, not as a kill.

Exit status: 0 if no proxy was killed (died during a load, or an OOM kill in its group), no
request failed other than by a deliberate 503, no admitted GET or sampled PUT came back
different, no budget was left leased, every request ended in the proxy and every proxy
exited on SIGTERM; 1 otherwise. The RSS target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from trios3.core import format as fmt
from trios3.core.keys import MasterKey
from trios3.ops.streaming import UNITS, read_cost

# The servers and clients the tests use too: tests/harness.py, tests/s3clients.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import (
    MemoryCgroup,
    Proxy,
    cpu_seconds,
    running_seaweedfs,
    start_proxy,
    status_kib,
)
from s3clients import (
    HTTPFailure,
    Keystream,
    RawClient,
    RawConnection,
    complete_multipart_body,
    completed,
    parse_upload_id,
)

KiB = 1024
MiB = 1024 * KiB


def generated(name: str, size: int, offset: int = 0):
    """``size`` deterministic bytes for ``name`` from ``offset``, 1 MiB at a time (a multipart
    object's parts are slices of the same stream)."""
    return Keystream(f"trios3-flood/{name}", offset + size).stream(offset, size)


def digest_of(name: str, size: int) -> bytes:
    return Keystream(f"trios3-flood/{name}", size).sha256()


# --- the memory cgroup -------------------------------------------------------------------------


# --- the proxy ---------------------------------------------------------------------------------

SHUTDOWN_GRACE = 15.0


def start(weed, master: str, log_path: Path, args, group: MemoryCgroup | None) -> Proxy:
    """A proxy with the run's budget and admission timeout and its master key (every proxy
    reads what the set-up stored), in ``group`` if there is one."""
    options = ["--memory-budget", f"{args.budget_mib}MiB"]
    options += ["--admission-timeout", str(args.admission_timeout)]
    return start_proxy(
        weed,
        log_path.parent,
        extra=options,
        master_key=master,
        cgroup=None if group is None else group.path,
        log_path=log_path,
    )


def alive(proxy: Proxy) -> bool:
    return proxy.process.poll() is None


# --- requests --------------------------------------------------------------------------------

GET_KINDS = ("full", "slow", "drop-queued", "drop-head", "drop-kib", "drop-mid")
DELIBERATE = {"drop-queued", "drop-head", "drop-kib", "drop-mid"}


@dataclass
class Outcome:
    op: str
    kind: str
    result: str  # verified, stored, dropped, gave-up-503, error, corrupt, timeout
    n503: int = 0
    detail: str = ""
    wait: float = 0.0  # seconds from the request to its (final) status line
    head_seen: bool = False
    attempts: int = 0
    target: str = ""  # GET: "mp" for a multipart object
    etag: str = ""  # UploadPart: the part's ETag


@dataclass
class Upload:
    """A multipart upload the load sends parts into."""

    key: str
    upload_id: str
    etags: dict[int, str] = field(default_factory=dict)  # stored parts

    def data_name(self, number: int) -> str:
        return f"{self.key}/part-{number}"


@dataclass
class Settings:
    bucket: str
    object_size: int
    put_size: int
    retries: int
    slow_for: float
    rng_seed: int
    part_size: int = 0  # UploadPart bodies of the loads


def _retry_after(conn: RawConnection) -> float:
    try:
        return max(0.0, float(conn.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def get_request(
    client: RawClient, s: Settings, key: str, digest: bytes, kind: str, rng: random.Random
) -> Outcome:
    out = Outcome("GET", kind, "error")
    path = f"/{s.bucket}/{key}"
    for _attempt in range(s.retries + 1):
        out.attempts += 1
        conn = await client.connect()
        try:
            t0 = time.monotonic()
            await conn.stream.send_all(client.head_bytes("GET", path))
            if kind == "drop-queued":
                # Gone while (probably) still queued for admission, or just after it.
                with trio.move_on_after(rng.uniform(0, 1.5)):
                    await conn.head()
                    out.head_seen = True
                if conn.status is None or conn.status == 200:
                    out.result = "dropped"
                    return out
            else:
                await conn.head()
            out.wait = time.monotonic() - t0
            if conn.status == 503:
                out.n503 += 1
                await conn.body()
                await conn.aclose()
                await trio.sleep(_retry_after(conn) + rng.uniform(0, 1))
                continue
            if conn.status != 200:
                data = bytearray()
                with trio.move_on_after(5):
                    await conn.body(data.extend)
                out.detail = f"status {conn.status}: {bytes(data[:200])!r}"
                return out
            out.head_seen = True
            if kind in DELIBERATE:
                stop = {
                    "drop-queued": 0,
                    "drop-head": 0,
                    "drop-kib": rng.randint(1, 64) * KiB,
                    "drop-mid": rng.randint(s.object_size // 10, s.object_size * 9 // 10),
                }[kind]
                if stop:
                    await conn.body(stop_after=stop)
                out.result = "dropped"
                return out
            h = hashlib.sha256()
            rate = rng.uniform(2, 8) * MiB if kind == "slow" else 0
            n = await conn.body(h.update, rate=rate, slow_for=s.slow_for)
            if n != s.object_size or h.digest() != digest:
                out.result = "corrupt"
                out.detail = f"{n} of {s.object_size} bytes, sha256 {'ok' if h.digest() == digest else 'DIFFERS'}"
            else:
                out.result = "verified"
            return out
        except (OSError, trio.BrokenResourceError, HTTPFailure, ValueError) as exc:
            out.result = "corrupt" if out.head_seen and conn.status == 200 else "error"
            out.detail = f"{type(exc).__name__}: {exc}"
            return out
        finally:
            await conn.aclose()
    out.result = "gave-up-503"
    return out


TRICKLE_SIZE = 25  # bytes; sent one a second, as a slow-loris client would


async def trickle_request(client: RawClient, s: Settings, key: str) -> Outcome:
    """A PUT of TRICKLE_SIZE bytes sent a byte a second: it holds its connection and request
    for that long, and must not take the budget from the GETs beside it. Stored (or ended by
    the body rate floor with 400 RequestTimeout, also fine) is the expected outcome."""
    out = Outcome("PUT", "trickle", "error", attempts=1)
    conn = await client.connect()
    try:
        t0 = time.monotonic()
        await conn.stream.send_all(client.head_bytes("PUT", f"/{s.bucket}/{key}", TRICKLE_SIZE))

        async def send_body() -> None:
            for _ in range(TRICKLE_SIZE):
                await conn.stream.send_all(b"t")
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            await conn.head()
            await conn.body()
            nursery.cancel_scope.cancel()
        out.wait = time.monotonic() - t0
        if conn.status == 200:
            out.result = "stored"
        elif conn.status == 400:
            out.result = "timed-out"
        else:
            out.detail = f"status {conn.status}"
            out.n503 += conn.status == 503
    except (OSError, trio.BrokenResourceError, HTTPFailure, ValueError) as exc:
        out.detail = f"{type(exc).__name__}: {exc}"
    finally:
        await conn.aclose()
    return out


async def put_request(
    client: RawClient,
    s: Settings,
    key: str,
    rng: random.Random,
    *,
    size: int | None = None,
    data: tuple[str, int] | None = None,
    query: Sequence[tuple[str, str]] = (),
    op: str = "PUT",
) -> Outcome:
    """A PUT (or, with ``op="PART"`` and the query, an UploadPart) of ``size`` bytes (default
    ``s.put_size``) of ``generated(name, size, offset)`` for ``data = (name, offset)``
    (default: the key, from 0)."""
    size = s.put_size if size is None else size
    name, offset = data or (key, 0)
    out = Outcome(op, "put" if op == "PUT" else "part", "error")
    path = f"/{s.bucket}/{key}"
    for _attempt in range(s.retries + 1):
        out.attempts += 1
        conn = await client.connect()
        sent_error: list[BaseException] = []
        try:
            t0 = time.monotonic()
            await conn.stream.send_all(client.head_bytes("PUT", path, size, query=query))

            async def send_body(conn=conn, sent_error=sent_error) -> None:
                try:
                    for chunk in generated(name, size, offset):
                        await conn.stream.send_all(chunk)
                except (OSError, trio.BrokenResourceError) as exc:
                    # The proxy may answer (503) and close without reading the body.
                    sent_error.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body)
                try:
                    await conn.head()
                    await conn.body()
                finally:
                    nursery.cancel_scope.cancel()
            out.wait = time.monotonic() - t0
            if conn.status == 503:
                out.n503 += 1
                await conn.aclose()
                await trio.sleep(_retry_after(conn) + rng.uniform(0, 1))
                continue
            if conn.status != 200:
                out.detail = f"status {conn.status}"
                return out
            out.etag = conn.headers.get("etag", "")
            if op == "PART" and not out.etag:
                out.detail = "no ETag in the UploadPart response"
                return out
            out.result = "stored"
            return out
        except (OSError, trio.BrokenResourceError, HTTPFailure, ValueError) as exc:
            extra = f" (body send: {sent_error[0]!r})" if sent_error else ""
            out.detail = f"{type(exc).__name__}: {exc}{extra}"
            return out
        finally:
            await conn.aclose()
    out.result = "gave-up-503"
    return out


async def part_request(
    client: RawClient, s: Settings, upload: Upload, number: int, rng: random.Random
) -> Outcome:
    """One UploadPart of ``s.part_size`` bytes into ``upload``; a stored part is recorded."""
    out = await put_request(
        client,
        s,
        upload.key,
        rng,
        size=s.part_size,
        data=(upload.data_name(number), 0),
        query=[("partNumber", str(number)), ("uploadId", upload.upload_id)],
        op="PART",
    )
    if out.result == "stored":
        upload.etags[number] = out.etag
    return out


# --- the multipart calls around the loads ---------------------------------------------------


SMALL_REQUEST_TIMEOUT = 120.0  # each of them


class MultipartFailure(Exception):
    pass


async def create_upload(client: RawClient, bucket: str, key: str) -> Upload:
    with trio.fail_after(SMALL_REQUEST_TIMEOUT):
        status, _, text = await client.request(
            "POST", f"/{bucket}/{key}", query=[("uploads", "")], body=b""
        )
    found = parse_upload_id(text)
    if status != 200 or not found:
        raise MultipartFailure(f"CreateMultipartUpload {key}: {status} {text[:300]!r}")
    return Upload(key, found)


async def complete_upload(client: RawClient, bucket: str, upload: Upload) -> None:
    """CompleteMultipartUpload with every stored part (an AbortMultipartUpload if none was)."""
    path = f"/{bucket}/{upload.key}"
    query = [("uploadId", upload.upload_id)]
    if not upload.etags:
        with trio.fail_after(SMALL_REQUEST_TIMEOUT):
            status, _, text = await client.request("DELETE", path, query=query)
        if status != 204:
            raise MultipartFailure(f"AbortMultipartUpload {upload.key}: {status} {text[:300]!r}")
        return
    body = complete_multipart_body(upload.etags)
    with trio.fail_after(SMALL_REQUEST_TIMEOUT):
        status, _, text = await client.request("POST", path, query=query, body=body)
    if status != 200 or not completed(text):
        raise MultipartFailure(
            f"CompleteMultipartUpload {upload.key} ({len(upload.etags)} parts): "
            f"{status} {text[:300]!r}"
        )


async def upload_multipart_object(
    client: RawClient, s: Settings, key: str, size: int, part_size: int
) -> None:
    """``generated(key, size)`` as a multipart object: its parts are slices of that stream."""
    upload = await create_upload(client, s.bucket, key)
    plain = replace(s, retries=0)
    for index, offset in enumerate(range(0, size, part_size)):
        number = index + 1
        out = await put_request(
            client,
            plain,
            key,
            random.Random(0),
            size=min(part_size, size - offset),
            data=(key, offset),
            query=[("partNumber", str(number)), ("uploadId", upload.upload_id)],
            op="PART",
        )
        if out.result != "stored":
            raise MultipartFailure(f"UploadPart {number} of {key}: {out.result} {out.detail}")
        upload.etags[number] = out.etag
    await complete_upload(client, s.bucket, upload)


def kinds_for(n: int, slow_frac: float, drop_frac: float, rng: random.Random) -> list[str]:
    n_slow = round(n * slow_frac)
    n_drop = round(n * drop_frac)
    kinds = ["slow"] * n_slow
    kinds += [sorted(DELIBERATE)[i % len(DELIBERATE)] for i in range(n_drop)]
    kinds += ["full"] * (n - len(kinds))
    rng.shuffle(kinds)
    return kinds


# --- one scenario --------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    gets: int  # of the single-PUT objects
    puts: int
    note: str = ""
    mp_gets: int = 0  # of the multipart objects
    parts: int = 0  # UploadParts, spread over ``uploads`` multipart uploads
    uploads: int = 0
    trickles: int = 0  # small PUTs whose clients send one byte a second


@dataclass
class Report:
    name: str
    note: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    rss_start_kib: int | None = None
    hwm_kib: int | None = None
    rss_end_kib: int | None = None
    cgroup: dict | None = None
    exit_code: int | None = None
    shutdown_s: float | None = 0.0  # None: SIGTERM was not enough
    died: int | None = None
    timed_out: int = 0
    verify_ok: int = 0
    verify_bad: list[str] = field(default_factory=list)
    probe: tuple[int, int] | None = None  # admitted, expected
    log: dict = field(default_factory=dict)
    stored_keys: list[str] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)  # keys of the completed uploads
    multipart_errors: list[str] = field(default_factory=list)  # completing the uploads
    log_after: dict = field(default_factory=dict)
    client_cpu: float = 0.0
    proxy_cpu: float | None = None

    def count(self, result: str, op: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.result == result and (op is None or o.op == op))

    @property
    def n503(self) -> int:
        return sum(o.n503 for o in self.outcomes)

    @property
    def errors(self) -> int:
        failed = sum(1 for o in self.outcomes if o.result in ("error", "timeout"))
        return failed + len(self.multipart_errors)

    @property
    def corrupt(self) -> int:
        return self.count("corrupt") + len(self.verify_bad)

    @property
    def killed(self) -> bool:
        # Died by itself (e.g. SIGKILL by the OOM killer: -9), or the group saw an OOM kill.
        # A SIGKILL this script sent after a SIGTERM went unanswered is not counted here.
        return self.died is not None or (self.cgroup or {}).get("oom_kill", 0) > 0

    @property
    def unlogged(self) -> int:
        """Requests the client made during the load that the proxy never logged as ended
        (its log line is written when a request's handler returns)."""
        if not self.log:
            return 0
        return sum(o.attempts for o in self.outcomes) - sum(self.log["requests"].values())

    @property
    def hung(self) -> bool:
        return self.shutdown_s is None or self.unlogged > 0

    @property
    def budget_leak(self) -> bool:
        return self.probe is not None and self.probe[0] < self.probe[1]

    @property
    def failed(self) -> bool:
        return self.killed or self.errors > 0 or self.corrupt > 0 or self.budget_leak or self.hung


async def run_load(
    client: RawClient,
    s: Settings,
    sc: Scenario,
    ctx: dict,
    args,
    proxy: Proxy,
    report: Report,
) -> None:
    rng = random.Random(f"{s.rng_seed}-{sc.name}")
    # A job: (op, key, digest, kind, target); for a PART, key is the upload's index and
    # digest the part number.
    jobs: list[tuple] = []
    for objects, count, target in (
        (ctx["objects"], sc.gets, ""),
        (ctx["mp_objects"], sc.mp_gets, "mp"),
    ):
        for i, kind in enumerate(kinds_for(count, args.slow_fraction, args.drop_fraction, rng)):
            key, digest = objects[i % len(objects)]
            jobs.append(("GET", key, digest, kind, target))
    put_keys = [f"{sc.name}/put-{i:04d}" for i in range(sc.puts)]
    for key in put_keys:
        jobs.append(("PUT", key, None, "put", ""))
    for i in range(sc.parts if report.uploads else 0):
        jobs.append(("PART", i % len(report.uploads), i // len(report.uploads) + 1, "part", ""))
    for i in range(sc.trickles):
        jobs.append(("TRICKLE", f"{sc.name}/trickle-{i:04d}", None, "trickle", ""))
    slots: list[Outcome | None] = [None] * len(jobs)
    order = list(range(len(jobs)))
    rng.shuffle(order)

    async def one(index: int) -> None:
        op, key, digest, kind, target = jobs[index]
        r = random.Random(f"{s.rng_seed}-{sc.name}-{index}")
        if op == "GET":
            slots[index] = await get_request(client, s, key, digest, kind, r)
            slots[index].target = target
        elif op == "PUT":
            slots[index] = await put_request(client, s, key, r)
        elif op == "TRICKLE":
            slots[index] = await trickle_request(client, s, key)
        else:
            slots[index] = await part_request(client, s, report.uploads[key], digest, r)

    async def watchdog(cancel_scope: trio.CancelScope) -> None:
        while True:
            if not alive(proxy):
                await trio.sleep(1)  # let the clients see it
                cancel_scope.cancel()
                return
            await trio.sleep(0.25)

    t0 = time.monotonic()
    with trio.move_on_after(args.scenario_timeout) as deadline:
        async with trio.open_nursery() as outer:
            outer.start_soon(watchdog, outer.cancel_scope)
            async with trio.open_nursery() as nursery:
                for index in order:
                    nursery.start_soon(one, index)
            outer.cancel_scope.cancel()
    report.wall = time.monotonic() - t0
    for index, slot in enumerate(slots):
        if slot is None:
            op, _, _, kind, target = jobs[index]
            detail = "proxy gone" if not alive(proxy) else "scenario deadline"
            slot = Outcome(op, kind, "timeout", detail=detail, target=target)
            if deadline.cancelled_caught:
                report.timed_out += 1
        report.outcomes.append(slot)
    report.stored_keys = [
        job[1]
        for job, o in zip(jobs, report.outcomes, strict=True)
        if job[0] == "PUT" and o.result == "stored"
    ]


def admitted_at_once(budget: int) -> int:
    """How many GETs arriving at once an idle budget admits: each is given the unit that
    MemoryBudget.lease_stream gives it (the largest whose cost is within a quarter of what
    is free, the smallest once none is), until the smallest no longer fits."""
    cost = read_cost(fmt.DEFAULT_SEGMENT_SIZE)
    free, admitted = budget, 0
    while True:
        unit = next((u for u in UNITS if cost(u) <= free // 4), UNITS[-1])
        if cost(unit) > free:
            return admitted
        free -= cost(unit)
        admitted += 1


async def budget_probe(client: RawClient, s: Settings, key: str, count: int, wait: float) -> int:
    """Open ``count`` GETs at once, read nothing, and count the ones admitted within ``wait``."""
    admitted = 0
    conns: list[RawConnection] = []
    try:
        async with trio.open_nursery() as nursery:

            async def one() -> None:
                nonlocal admitted
                conn = await client.connect(rcvbuf=64 * KiB)
                conns.append(conn)
                await conn.stream.send_all(client.head_bytes("GET", f"/{s.bucket}/{key}"))
                with trio.move_on_after(wait):
                    if await conn.head() == 200:
                        admitted += 1

            for _ in range(count):
                nursery.start_soon(one)
    finally:
        for conn in conns:
            await conn.aclose()
    return admitted


Sample = tuple[str, tuple[int, int, int] | None, str, int]  # key, (first, last, total), data, size


def read_back_sample(report: Report, s: Settings, count: int) -> list[Sample]:
    """Up to ``count`` stored PUTs and ``count`` parts of completed uploads, evenly spread."""
    puts = report.stored_keys
    items: list[Sample] = [
        (key, None, key, s.put_size) for key in puts[:: max(1, math.ceil(len(puts) / count))]
    ]
    parts: list[Sample] = []
    for upload in report.uploads:
        if upload.key in report.completed:
            numbers = sorted(upload.etags)
            total = len(numbers) * s.part_size
            for index, number in enumerate(numbers):
                first = index * s.part_size
                window = (first, first + s.part_size - 1, total)
                parts.append((upload.key, window, upload.data_name(number), s.part_size))
    items += parts[:: max(1, math.ceil(len(parts) / count))]
    return items


async def verify_sample(
    client: RawClient, s: Settings, items: list[Sample], report: Report
) -> None:
    """GET each item (a part: by Range of its completed object) and compare its SHA-256."""
    sem = trio.Semaphore(8)

    async def one(item: Sample) -> None:
        key, window, name, size = item
        async with sem:
            expected = await trio.to_thread.run_sync(digest_of, name, size)
            extra = [] if window is None else [("range", f"bytes={window[0]}-{window[1]}")]
            conn = await client.connect()
            try:
                head = client.head_bytes("GET", f"/{s.bucket}/{key}", extra=extra)
                await conn.stream.send_all(head)
                status = await conn.head()
                h = hashlib.sha256()
                n = await conn.body(h.update)
                want_status, want_range = 200, None
                if window is not None:
                    want_status, want_range = 206, "bytes {}-{}/{}".format(*window)
                got_range = conn.headers.get("content-range")
                if (
                    status == want_status
                    and n == size
                    and h.digest() == expected
                    and (window is None or got_range == want_range)
                ):
                    report.verify_ok += 1
                else:
                    report.verify_bad.append(
                        f"{name}: status {status}, {n} bytes, Content-Range {got_range}"
                        f" (expected {want_range}), sha256 "
                        f"{'ok' if h.digest() == expected else 'DIFFERS'}"
                    )
            except (OSError, trio.BrokenResourceError, HTTPFailure) as exc:
                report.verify_bad.append(f"{name}: {exc!r}")
            finally:
                await conn.aclose()

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)


# The proxy's text request line, written when a request's handler returns: "request id=… op=…
# method=… path=… status=… bytes=… ms=…" or, since the logs name them, "… bucket=… key='…'
# status=… in=… out=… ms=…", with " (cut short)" when the response did not finish.
LOG_LINE = re.compile(
    r"request id=\S+ op=(\S+) method=\S+ .*?\bstatus=(\S+) .*?\bms=[\d.]+( \(cut short\))?\s*$"
)


def parse_log(path: Path, start: int = 0, end: int | None = None) -> dict:
    requests: Counter = Counter()
    cut: Counter = Counter()
    warnings: Counter = Counter()
    examples: list[str] = []
    tracebacks = 0
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(-1 if end is None else end - start).decode(errors="replace")
    for line in text.splitlines():
        m = LOG_LINE.search(line)
        if m:
            op, status, short = m.groups()
            requests[(op, status)] += 1
            if short:
                cut[(op, status)] += 1
            continue
        if "Traceback" in line:
            tracebacks += 1
        for level in ("WARNING", "ERROR", "CRITICAL"):
            if f" {level} " in line:
                # Group by the message with request ids and numbers taken out.
                text = line.split(f" {level} ", 1)[1]
                text = re.sub(r"\b[0-9A-F]{16}\b", "<id>", text)
                text = re.sub(r"\d+", "N", text)[:140]
                warnings[f"{level} {text}"] += 1
                if len(examples) < 6:
                    examples.append(line[:300])
    return {
        "requests": requests,
        "cut": cut,
        "warnings": warnings,
        "examples": examples,
        "tracebacks": tracebacks,
    }


async def run_scenario(sc: Scenario, weed, ctx: dict, args, s: Settings) -> Report:
    report = Report(sc.name, sc.note)
    group = None
    if ctx["cgroup"]:
        group, why = MemoryCgroup.create(
            f"trios3-flood-{os.getpid()}-{sc.name}", args.memory_limit_mib * MiB
        )
        if group is None:
            print(f"  [{sc.name}] no memory cgroup: {why}")
    log_path = ctx["log_dir"] / f"proxy-{sc.name}.log"
    log_start, log_end = 0, None
    proxy = start(weed, ctx["master"], log_path, args, group)
    try:
        client = RawClient(proxy.endpoint)
        # One authenticated request so that "start" includes the first request's imports.
        conn = await client.connect()
        await conn.stream.send_all(client.head_bytes("HEAD", f"/{s.bucket}/{ctx['objects'][0][0]}"))
        await conn.head()
        await conn.aclose()
        for i in range(sc.uploads):
            try:
                report.uploads.append(await create_upload(client, s.bucket, f"{sc.name}/mp-{i}"))
            except (MultipartFailure, OSError, HTTPFailure, trio.TooSlowError) as exc:
                report.multipart_errors.append(f"{type(exc).__name__}: {exc}")
        await trio.sleep(0.2)
        report.rss_start_kib = status_kib(proxy.process.pid, "VmHWM")
        log_start = log_path.stat().st_size
        cpu0, client0 = cpu_seconds(proxy.process.pid), time.process_time()
        await run_load(client, s, sc, ctx, args, proxy, report)
        report.hwm_kib = status_kib(proxy.process.pid, "VmHWM")
        report.rss_end_kib = status_kib(proxy.process.pid, "VmRSS")
        report.client_cpu = time.process_time() - client0
        if alive(proxy):
            report.proxy_cpu = cpu_seconds(proxy.process.pid) - cpu0
        if group is not None:
            report.cgroup = group.stats()
        await trio.sleep(1)  # let the proxy finish logging the last disconnects
        log_end = log_path.stat().st_size
        if alive(proxy):
            expected = admitted_at_once(args.budget_mib * MiB)
            got = await budget_probe(client, s, ctx["objects"][0][0], expected, args.probe_wait)
            report.probe = (got, expected)
            for upload in report.uploads:
                try:
                    await complete_upload(client, s.bucket, upload)
                    if upload.etags:
                        report.completed.add(upload.key)
                except (MultipartFailure, OSError, HTTPFailure, trio.TooSlowError) as exc:
                    report.multipart_errors.append(f"{type(exc).__name__}: {exc}")
            sample = read_back_sample(report, s, args.verify_sample)
            await verify_sample(client, s, sample, report)
    finally:
        report.died = proxy.process.poll()  # it exited by itself
        report.shutdown_s = proxy.stop(SHUTDOWN_GRACE)
        report.exit_code = proxy.process.returncode
        if group is not None:
            stats = group.stats()
            report.cgroup = {**(report.cgroup or stats), "oom_kill": stats.get("oom_kill", 0)}
            group.remove()
    report.log = parse_log(log_path, log_start, log_end)
    report.log_after = parse_log(log_path, log_end)
    return report


# --- output ----------------------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KiB:.0f}"


def print_report(r: Report, args) -> None:
    print(f"\n== {r.name}: {r.note}")
    for target, label in (("", "GET"), ("mp", "GET (multipart objects)")):
        gets = [o for o in r.outcomes if o.op == "GET" and o.target == target]
        if not gets:
            continue
        by_kind = Counter((o.kind, o.result) for o in gets)
        parts = ", ".join(f"{k}/{res} {n}" for (k, res), n in sorted(by_kind.items()))
        print(f"  {label} outcomes: {parts}")
        waits = [o.wait for o in gets if o.head_seen]
        if waits:
            print(
                f"  {label} time to 200 status line: median {sorted(waits)[len(waits) // 2]:.1f} s, max {max(waits):.1f} s"
            )
    for op, label in (("PUT", "PUT"), ("PART", "UploadPart")):
        puts = [o for o in r.outcomes if o.op == op]
        if not puts:
            continue
        print(f"  {label} outcomes: {dict(Counter(o.result for o in puts))}")
        waits = [o.wait for o in puts if o.result == "stored"]
        if waits:
            print(
                f"  {label} time to response: median {sorted(waits)[len(waits) // 2]:.1f} s, max {max(waits):.1f} s"
            )
    if r.uploads or r.multipart_errors:
        print(
            f"  multipart uploads: {len(r.uploads)} created before the load, "
            f"{len(r.completed)} completed after it "
            f"({sum(len(u.etags) for u in r.uploads)} parts); {len(r.multipart_errors)} errors"
        )
        for line in r.multipart_errors[:5]:
            print(f"  ! {line}")
    bad = [o for o in r.outcomes if o.result in ("error", "corrupt", "timeout")]
    for o in bad[:8]:
        print(f"  ! {o.op} {o.kind} {o.result}: {o.detail}")
    if len(bad) > 8:
        print(f"  ! ... {len(bad) - 8} more")
    if r.verify_ok or r.verify_bad:
        print(
            f"  read-back sample (PUTs; parts by Range of their completed upload): {r.verify_ok}"
            f" byte-identical, {len(r.verify_bad)} different"
        )
        for line in r.verify_bad[:5]:
            print(f"  ! {line}")
    print(
        f"  proxy VmHWM {mib(r.hwm_kib)} MiB (after start {mib(r.rss_start_kib)} MiB), "
        f"VmRSS after load {mib(r.rss_end_kib)} MiB"
    )
    if r.cgroup:
        c = r.cgroup
        print(
            f"  cgroup: limit {c['limit'] / MiB:.0f} MiB, max_usage {c['max_usage'] / MiB:.0f} MiB"
            f" (memsw {(c.get('memsw_max_usage') or 0) / MiB:.0f}), failcnt {c['failcnt']},"
            f" oom_kill {c.get('oom_kill', '?')}"
        )
    if r.probe:
        print(f"  budget probe: {r.probe[0]} of {r.probe[1]} GETs admitted at once after the load")
    if r.shutdown_s is None:
        shutdown = f"did NOT exit within {SHUTDOWN_GRACE:g} s of SIGTERM; SIGKILLed"
    elif r.died is not None:
        shutdown = f"DIED during the load with {r.died}"
    else:
        shutdown = f"exited {r.exit_code} {r.shutdown_s:.1f} s after SIGTERM"
    print(f"  proxy {shutdown}")
    if r.proxy_cpu is not None:
        print(f"  CPU during the load: proxy {r.proxy_cpu:.0f} s, this script {r.client_cpu:.0f} s")
    log = r.log
    statuses: Counter = Counter()
    for (op, status), n in log["requests"].items():
        statuses[f"{op} {status}"] += n
    print(f"  proxy log during the load: {dict(sorted(statuses.items()))}")
    if not log["requests"] and r.outcomes:
        print("  ! no request line of the proxy log was recognised: has its format changed?")
    cut = sum(log["cut"].values())
    drops = r.count("dropped")
    print(
        f"  proxy log, requests cut short during the load: {cut}"
        f" ({dict(sorted((f'{op} {st}', n) for (op, st), n in log['cut'].items()))});"
        f" deliberate client disconnects: {drops}"
    )
    client_503 = sum(o.n503 for o in r.outcomes)
    logged_503 = sum(n for (_, st), n in log["requests"].items() if st == "503")
    print(
        f"  requests sent during the load {sum(o.attempts for o in r.outcomes)}, logged as ended"
        f" by the proxy {sum(log['requests'].values())} (never ended: {r.unlogged});"
        f" 503s seen by clients {client_503}, logged {logged_503}"
    )
    for label, part in (("during the load", log), ("after it (probe, read-back)", r.log_after)):
        if not part:
            continue
        for text, n in part["warnings"].most_common(6):
            print(f"  proxy log {label}: {n} x {text}")
        if part["tracebacks"]:
            print(f"  proxy log {label}: {part['tracebacks']} tracebacks")
        for line in part["examples"][:3]:
            print(f"    e.g. {line}")


def summary(reports: list[Report], args) -> str:
    head = (
        f"{'scenario':<9}{'reqs':>6}{'ok':>6}{'verif':>7}{'drop':>6}{'503s':>6}{'gave up':>8}"
        f"{'errors':>7}{'corrupt':>8}{'HWM MiB':>8}{'cg MiB':>7}{'killed':>7}{'stuck':>6}"
        f"{'SIGTERM':>8}{'wall s':>7}{'probe':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        ok = r.count("verified") + r.count("stored")
        verif = r.count("verified") + r.verify_ok
        cg = f"{r.cgroup['max_usage'] / MiB:.0f}" if r.cgroup else "-"
        probe = f"{r.probe[0]}/{r.probe[1]}" if r.probe else "-"
        term = "hung" if r.shutdown_s is None else f"{r.shutdown_s:.1f}s"
        lines.append(
            f"{r.name:<9}{len(r.outcomes):>6}{ok:>6}{verif:>7}{r.count('dropped'):>6}"
            f"{r.n503:>6}{r.count('gave-up-503'):>8}{r.errors:>7}{r.corrupt:>8}"
            f"{mib(r.hwm_kib):>8}{cg:>7}{'YES' if r.killed else 'no':>7}{r.unlogged:>6}"
            f"{term:>8}{r.wall:>7.0f}{probe:>9}"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a ~3 minute smoke run")
    p.add_argument(
        "--only",
        nargs="+",
        help="run only these scenarios (get90 get200 mpget90 mpget200 put192 part192 mixed; "
        "get, mpget, put, part select all of a kind)",
    )
    p.add_argument(
        "--no-multipart",
        action="store_true",
        help="no multipart objects, UploadParts or mp*/part* scenarios",
    )
    p.add_argument("--objects", type=int, default=4, help="distinct GET objects (of each kind)")
    p.add_argument("--object-mib", type=int, default=64)
    p.add_argument("--mp-part-mib", type=int, default=8, help="part size of the multipart objects")
    p.add_argument("--get-concurrency", type=int, nargs="+", default=[90, 200])
    p.add_argument("--puts", type=int, default=192)
    p.add_argument("--put-mib", type=int, default=16)
    p.add_argument("--parts", type=int, default=192, help="UploadParts of the part* scenario")
    p.add_argument("--part-mib", type=int, default=16, help="UploadPart size")
    p.add_argument("--part-uploads", type=int, default=4, help="uploads the parts go into")
    p.add_argument("--mixed-puts", type=int, default=64, help="PUTs + UploadParts in mixed")
    p.add_argument("--mixed-gets", type=int, default=128)
    p.add_argument(
        "--mixed-multipart",
        type=float,
        default=0.5,
        help="share of mixed's uploads that are UploadParts and of its GETs on multipart objects",
    )
    p.add_argument("--trickles", type=int, default=110, help="slow-loris PUTs in trickle")
    p.add_argument("--trickle-gets", type=int, default=32, help="GETs beside the trickles")
    p.add_argument("--slow-fraction", type=float, default=0.1)
    p.add_argument("--drop-fraction", type=float, default=0.2)
    p.add_argument("--slow-seconds", type=float, default=4.0)
    p.add_argument("--retries", type=int, default=6, help="retries of a 503 SlowDown")
    p.add_argument("--budget-mib", type=int, default=64)
    p.add_argument("--admission-timeout", type=float, default=30)
    p.add_argument("--memory-limit-mib", type=int, default=512)
    p.add_argument("--no-cgroup", action="store_true")
    p.add_argument("--rss-target-mib", type=int, default=200)
    p.add_argument("--scenario-timeout", type=float, default=240)
    p.add_argument("--probe-wait", type=float, default=10)
    p.add_argument(
        "--verify-sample",
        type=int,
        default=24,
        help="PUTs (and as many parts) read back per scenario",
    )
    p.add_argument("--log-dir", type=Path, help="keep the proxy logs here (default: /tmp/...)")
    p.add_argument("--seed", type=int, default=1)
    if "--quick" in sys.argv[1:]:
        # Smaller defaults; options given explicitly still win.
        p.set_defaults(
            object_mib=8,
            objects=2,
            puts=64,
            put_mib=4,
            mp_part_mib=5,
            parts=64,
            part_mib=5,
            part_uploads=2,
            mixed_puts=32,
            mixed_gets=64,
            slow_seconds=1.0,
            scenario_timeout=90,
            verify_sample=8,
        )
    args = p.parse_args()
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    multipart = not args.no_multipart
    mp_parts = -(-args.object_mib // args.mp_part_mib)
    mp_layout = f"{mp_parts} parts of {args.mp_part_mib} MiB"
    if args.object_mib % args.mp_part_mib:
        mp_layout += f", the last {args.object_mib % args.mp_part_mib} MiB"
    scenarios = [
        Scenario(f"get{n}", n, 0, f"{n} concurrent GETs of {args.object_mib} MiB encrypted objects")
        for n in args.get_concurrency
    ]
    if multipart:
        scenarios += [
            Scenario(
                f"mpget{n}",
                0,
                0,
                f"{n} concurrent GETs of {args.object_mib} MiB multipart-encrypted objects "
                f"({mp_layout})",
                mp_gets=n,
            )
            for n in args.get_concurrency
        ]
    scenarios.append(
        Scenario(
            "put" + str(args.puts),
            0,
            args.puts,
            f"{args.puts} concurrent PUTs of {args.put_mib} MiB",
        )
    )
    if multipart:
        uploads = min(args.part_uploads, args.parts)
        scenarios.append(
            Scenario(
                "part" + str(args.parts),
                0,
                0,
                f"{args.parts} concurrent UploadParts of {args.part_mib} MiB into {uploads} "
                "multipart uploads",
                parts=args.parts,
                uploads=uploads,
            )
        )
    share = args.mixed_multipart if multipart else 0.0
    mixed_parts = round(args.mixed_puts * share)
    mixed_mp_gets = round(args.mixed_gets * share)
    mixed = Scenario(
        "mixed",
        args.mixed_gets - mixed_mp_gets,
        args.mixed_puts - mixed_parts,
        f"{args.mixed_puts - mixed_parts} PUTs of {args.put_mib} MiB + "
        f"{args.mixed_gets - mixed_mp_gets} GETs of {args.object_mib} MiB at once",
        mp_gets=mixed_mp_gets,
        parts=mixed_parts,
        uploads=min(max(1, args.part_uploads // 2), mixed_parts),
    )
    if multipart:
        mixed.note = (
            f"at once: {mixed.puts} PUTs and {mixed.parts} UploadParts (into {mixed.uploads} "
            f"upload{'s' if mixed.uploads != 1 else ''}) of {args.put_mib}/{args.part_mib} MiB, {mixed.gets} GETs of the "
            f"single-PUT and {mixed.mp_gets} of the multipart {args.object_mib} MiB objects"
        )
    scenarios.append(mixed)
    scenarios.append(
        Scenario(
            f"trickle{args.trickles}",
            args.trickle_gets,
            0,
            f"{args.trickles} PUTs of {TRICKLE_SIZE} bytes at a byte a second, and "
            f"{args.trickle_gets} GETs of {args.object_mib} MiB beside them",
            trickles=args.trickles,
        )
    )
    if args.only:
        scenarios = [
            sc
            for sc in scenarios
            if sc.name in args.only or sc.name.rstrip("0123456789") in args.only
        ]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="trios3-flood-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    use_cgroup = not args.no_cgroup
    if use_cgroup:
        probe, why = MemoryCgroup.create(
            f"trios3-flood-{os.getpid()}-check", args.memory_limit_mib * MiB
        )
        if probe is None:
            use_cgroup = False
            print(f"NOTE: running WITHOUT a memory cap: {why}")
        else:
            print(
                f"memory cap: a cgroup-v1 child per scenario under {probe.path.parent}, "
                f"memory.limit_in_bytes = memory.memsw.limit_in_bytes = {args.memory_limit_mib} MiB"
            )
            probe.remove()
    else:
        print("NOTE: running WITHOUT a memory cap (--no-cgroup)")
    if not multipart:
        print("--no-multipart: single-PUT objects and PutObjects only")
    cost = read_cost(fmt.DEFAULT_SEGMENT_SIZE)
    print(
        f"budget {args.budget_mib} MiB; a GET leases {cost(UNITS[0]) // KiB} KiB (a quiet "
        f"proxy, {UNITS[0] // KiB} KiB units) down to {cost(UNITS[-1]) // KiB} KiB (a busy "
        f"one) -> {admitted_at_once(args.budget_mib * MiB)} admitted at once from idle; "
        f"admission timeout {args.admission_timeout:g} s; 503s retried up to "
        f"{args.retries} times"
    )

    master = base64.b64encode(MasterKey.generate()).decode()
    s = Settings(
        bucket="flood-" + uuid.uuid4().hex[:8],
        object_size=args.object_mib * MiB,
        put_size=args.put_mib * MiB,
        retries=args.retries,
        slow_for=args.slow_seconds,
        rng_seed=args.seed,
        part_size=args.part_mib * MiB,
    )
    reports: list[Report] = []
    with (
        tempfile.TemporaryDirectory(prefix="trios3-flood-") as tmp,
        running_seaweedfs(Path(tmp) / "seaweedfs") as weed,
    ):
        objects = [
            (f"object-{i}", digest_of(f"object-{i}", s.object_size)) for i in range(args.objects)
        ]
        mp_objects = [
            (f"mp-object-{i}", digest_of(f"mp-object-{i}", s.object_size))
            for i in range(args.objects if multipart else 0)
        ]
        ctx = {
            "cgroup": use_cgroup,
            "master": master,
            "objects": objects,
            "mp_objects": mp_objects,
            "log_dir": log_dir,
        }
        # Set-up through a proxy of its own, so that every scenario's proxy starts fresh.
        setup = start(weed, master, log_dir / "proxy-setup.log", args, None)
        try:
            trio.run(
                upload_objects,
                RawClient(setup.endpoint),
                s,
                objects,
                mp_objects,
                args.mp_part_mib * MiB,
            )
        finally:
            setup.stop(SHUTDOWN_GRACE)
        print(f"uploaded {len(objects)} objects of {args.object_mib} MiB through the proxy")
        if mp_objects:
            print(
                f"uploaded {len(mp_objects)} multipart objects of {args.object_mib} MiB "
                f"({mp_layout}) through the proxy"
            )
        for sc in scenarios:
            print(f"running {sc.name}: {sc.note} ...", flush=True)
            report = trio.run(run_scenario, sc, weed, ctx, args, s)
            reports.append(report)
            print_report(report, args)

    top = max(args.get_concurrency)
    targets = [r for r in reports if r.name in (f"get{top}", f"mpget{top}")]
    print(
        "\n== summary (ok = verified GETs + stored PUTs and parts; verif = byte-identical GETs"
        " + read-backs)\n"
    )
    print(summary(reports, args))
    print()
    checks = [
        ("proxy never killed", not any(r.killed for r in reports)),
        ("no error other than a deliberate 503", not any(r.errors for r in reports)),
        ("admitted GETs and sampled PUTs byte-identical", not any(r.corrupt for r in reports)),
        ("budget fully released after every load", not any(r.budget_leak for r in reports)),
        (
            "every request ended in the proxy, which exits promptly on SIGTERM",
            not any(r.hung for r in reports),
        ),
    ]
    for report in reports:
        if report.name.startswith("trickle"):
            refused = sum(o.n503 for o in report.outcomes if o.op == "GET")
            trickled = [o for o in report.outcomes if o.kind == "trickle"]
            ended = sum(o.result in ("stored", "timed-out") for o in trickled)
            checks.append(
                (
                    f"{report.name}: no GET refused beside the trickles ({refused} 503s); "
                    f"{ended} of {len(trickled)} trickles stored or timed out",
                    refused == 0 and ended == len(trickled),
                )
            )
    for target in targets:
        if target.hwm_kib is None:
            continue
        checks.append(
            (
                f"peak RSS at {target.name} under {args.rss_target_mib} MiB "
                f"({target.hwm_kib / KiB:.0f} MiB; reference: ~325 MiB at 90 after its fix, OOM before)",
                target.hwm_kib < args.rss_target_mib * KiB,
            )
        )
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    print(f"\nproxy logs: {log_dir}")
    print(f"total run time {time.perf_counter() - started:.0f} s")
    return 1 if any(r.failed for r in reports) else 0


async def upload_objects(
    client: RawClient,
    s: Settings,
    objects: list[tuple[str, bytes]],
    mp_objects: list[tuple[str, bytes]],
    mp_part_size: int,
) -> None:
    conn = await client.connect()
    await conn.stream.send_all(client.head_bytes("PUT", f"/{s.bucket}", 0))
    if await conn.head() != 200:
        raise SystemExit(f"CreateBucket: {conn.status}")
    await conn.aclose()
    put = Settings(s.bucket, s.object_size, s.object_size, 0, 0, 0)
    for key, _ in objects:
        out = await put_request(client, put, key, random.Random(0))
        if out.result != "stored":
            raise SystemExit(f"upload of {key} failed: {out.result} {out.detail}")
    for key, _ in mp_objects:
        try:
            await upload_multipart_object(client, put, key, s.object_size, mp_part_size)
        except MultipartFailure as exc:
            raise SystemExit(
                f"multipart upload of {key} failed: {exc}\n(--no-multipart runs without them)"
            ) from None


if __name__ == "__main__":
    shutil.which("sh") or sys.exit("flood.py needs sh")
    sys.exit(main())
