"""trios3 against the same SeaweedFS reached directly, in one run, with C clients: speed, and the
proxy's CPU per GiB and per request.

Run: .venv/bin/python scripts/bench.py [--only ROW ...] [--rounds 2] [--large-mib 256]
         [--duration 10] [--restic-mib 288] [--profile DIR] [-- TRIOS3-SERVE-OPTIONS ...]

Everything after ``--`` is passed to every ``trios3 serve`` the script starts (for example
``-- --memory-budget 256MiB``). Each run starts its own SeaweedFS(es) and proxies with the tests'
harness (tests/harness.py) in a scratch directory, and stops and removes them at the end.

Rows (``--only`` takes these names, or the groups ``large``, ``small``, ``tls``, ``all``):

large-get, large-put
    One ``--large-mib`` object (default 256 MiB) with ``curl`` over presigned SigV4 URLs (made
    by botocore's presigner, ``UNSIGNED-PAYLOAD``): PUT with ``curl -T FILE`` (Content-Length,
    checked in curl's ``-v`` trace; no ``Expect: 100-continue``), then GET with ``curl -o
    /dev/null``; each round does direct then through trios3, on distinct keys; the best of
    ``--rounds`` rounds is shown. The last proxied GET of the run is also fetched to a file
    once, untimed, and compared with the source. curl is forced to HTTP/1.1 on both sides.
small-get, small-put
    ``wrk -t1 -c8`` for ``--duration`` seconds each, through a Lua script (scripts/bench_wrk.lua)
    that cycles over ``--small-count`` presigned URLs: GETs of objects of ``--small-size`` bytes
    (1 KiB) stored beforehand on each side, and PUTs of a 1 KiB body (wrk.format, so with
    Content-Length) to as many keys. Only 200 answers count; any other status, or any socket
    error or timeout, fails the row instead of reporting it as speed.
tls-get, tls-put
    The large-object rows with TLS on both sides: a second SeaweedFS serving HTTPS with a CA of
    its own (``running_seaweedfs(tls=True)``), a trios3 serving HTTPS (``--tls-cert``) in front
    of it, curl over HTTPS with ``--cacert``. The proxy trusts the CA with
    ``--backend-ca-bundle`` where ``trios3 serve`` has it; otherwise with ``SSL_CERT_FILE``, and
    if a probe through the proxy still fails (a backend client that reads only certifi's bundle),
    with a ``sitecustomize`` on the proxy's PYTHONPATH that points ``certifi.where()`` at the
    CA. Which one was used is printed.
restic
    Debian's restic (0.14: over plain HTTP it uploads signed aws-chunked bodies) backs up a tree
    of ``--restic-mib`` MiB of random bytes in files of 12 MiB into a fresh repository, then
    restores it (the restored size is checked); direct and through trios3; best of ``--rounds``
    for the backup and for the restore, each on a repository of its own round.
workers
    wrk GET as small-get but ``-t2 -c32``, direct and through ``trios3 serve --workers 1`` and
    ``--workers 2``; the proxy's CPU is summed over the processes of its tree (the parent and
    the workers it runs, found through /proc). "not available" if ``trios3 serve --help`` has no
    ``--workers``.

For every measurement the script reads, around the client's process, the CPU time (utime +
stime, with children reaped) of the proxy's process tree, of the SeaweedFS processes, and of the
client itself (wait4's rusage), so that the table shows which party was busy: "proxy %",
"weed %" and "client %" are CPU seconds per wall second (100 % = one core; the machine's cores
are in the header), and "others %" is the rest of the machine's busy time (/proc/stat): the
kernel's threads, and anything else running on the machine, which makes a figure lower than a
quiet run's (rows where it exceeds a quarter of a core are named in a note). VmHWM is the
proxy's peak RSS during the measurement (reset before it through /proc/PID/clear_refs; the
largest process of the tree). The targets of issue 16 are printed beside the figures with
whether each is met; the script does not fail on them.

``--profile DIR`` records the proxy with ``py-spy record --nonblocking`` during every proxied
measurement of a row (raw collapsed stacks, one file per measurement, in DIR) and prints the
top functions by own time of each row; the figures of such a run include py-spy's own load on
the same cores.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# The servers and clients the tests use too: tests/harness.py, tests/s3clients.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import (
    CLK_TCK,
    Endpoint,
    Proxy,
    children,
    process_name,
    process_tree,
    reset_peak_rss,
    running_seaweedfs,
    serve_has_option,
    start_proxy,
    status_kib,
    tree_cpu_seconds,
)
from s3clients import S3
from trios3.embedded import find_weed

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "bench_wrk.lua"
RESTIC_FILE_MIB = 12

ROWS = (
    "large-get",
    "large-put",
    "small-get",
    "small-put",
    "tls-get",
    "tls-put",
    "restic",
    "workers",
)
GROUPS = {
    "large": ("large-get", "large-put"),
    "small": ("small-get", "small-put"),
    "tls": ("tls-get", "tls-put"),
    "all": ROWS,
}


@dataclass(frozen=True)
class Target:
    """Issue 16's target for a row: proxy CPU at most ``cpu`` (in the row's CPU unit), and a
    rate at least ``ratio`` times direct's (or, for ``versus``, that row's trios3 rate)."""

    cpu: float | None = None
    ratio: float | None = None
    versus: str | None = None


TARGETS = {
    "large-get": Target(cpu=1.2, ratio=0.7),
    "large-put": Target(cpu=1.5, ratio=0.95),
    "small-get": Target(cpu=1.0),
    "small-put": Target(cpu=1.0),
    "tls-get": Target(cpu=2.0, ratio=0.8),
    "tls-put": Target(cpu=2.0, ratio=0.8),
    "restic-backup": Target(cpu=2.5),
    "restic-restore": Target(cpu=1.2),
    "workers-1": Target(),
    "workers-2": Target(ratio=1.6, versus="workers-1"),
}


class BenchError(RuntimeError):
    """A measurement that did not happen as it should: reported in its row, never as speed."""


# -- one timed client run -----------------------------------------------------------------------


@dataclass
class Sample:
    """One timed client run: ``amount`` (bytes, or requests answered 200) in ``seconds``, and the
    CPU seconds each party spent over the client's ``wall`` time."""

    amount: float
    seconds: float
    wall: float
    client_cpu: float
    weed_cpu: float
    proxy_cpu: float | None
    peak_kib: int | None
    busy: float  # CPU seconds all processes spent (the machine's busy time)


@dataclass
class Finished:
    """What :func:`timed` saw of a client process."""

    returncode: int
    stdout: str
    stderr: str
    wall: float
    client_cpu: float
    weed_cpu: float
    proxy_cpu: float | None
    peak_kib: int | None
    busy: float  # CPU seconds all processes spent (the machine's busy time)

    def sample(self, amount: float, seconds: float | None = None) -> Sample:
        return Sample(
            amount,
            self.wall if seconds is None else seconds,
            self.wall,
            self.client_cpu,
            self.weed_cpu,
            self.proxy_cpu,
            self.peak_kib,
            self.busy,
        )


def machine_busy() -> float:
    """CPU seconds all cores have spent busy (not idle, not in iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def weed_pids() -> list[int]:
    """The SeaweedFS processes this script started (its children named ``weed``)."""
    return [pid for pid in children(os.getpid()) if process_name(pid) == "weed"]


def timed(
    command: Sequence[str],
    *,
    proxy: int | None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> Finished:
    """Run a client ``command`` to its end, reading the CPU of the proxy's tree (``proxy``, a
    pid, or None for a direct run), of SeaweedFS and of the client (wait4) around it, and the
    proxy's VmHWM over it."""
    weeds = weed_pids()
    tree = process_tree(proxy) if proxy else []
    for pid in tree:
        reset_peak_rss(pid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        weed0 = sum(tree_cpu_seconds(pid) for pid in weeds)
        proxy0 = tree_cpu_seconds(proxy) if proxy else 0.0
        busy0 = machine_busy()
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        busy1 = machine_busy()
        proxy_cpu = tree_cpu_seconds(proxy) - proxy0 if proxy else None
        weed_cpu = sum(tree_cpu_seconds(pid) for pid in weeds) - weed0
        process.returncode = os.waitstatus_to_exitcode(status)
        peak = None
        if proxy:
            peaks = [status_kib(pid, "VmHWM") for pid in process_tree(proxy)]
            peak = max((p for p in peaks if p is not None), default=None)
        out.seek(0)
        err.seek(0)
        return Finished(
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            wall,
            usage.ru_utime + usage.ru_stime,
            weed_cpu,
            proxy_cpu,
            peak,
            busy1 - busy0,
        )


# -- results and the table ---------------------------------------------------------------------


@dataclass
class Result:
    """A row of the table: direct and trios3's best samples, or why there are none."""

    key: str
    label: str
    per: str  # "bytes" or "requests"
    direct: Sample | None = None
    proxied: Sample | None = None
    error: str | None = None
    details: list[str] = field(default_factory=list)

    def keep(self, side: str, sample: Sample) -> None:
        """Keep ``sample`` if it is ``side``'s fastest so far (best of the rounds)."""
        best = getattr(self, side)
        if best is None or rate(self.per, sample) > rate(self.per, best):
            setattr(self, side, sample)


def rate(per: str, sample: Sample) -> float:
    return sample.amount / (MiB if per == "bytes" else 1) / sample.seconds


def proxy_cost(per: str, sample: Sample) -> float:
    """The proxy's CPU in s/GiB (bytes) or ms/request (requests)."""
    assert sample.proxy_cpu is not None
    if per == "bytes":
        return sample.proxy_cpu / (sample.amount / GiB)
    return sample.proxy_cpu * 1000 / sample.amount


def others(sample: Sample | None) -> float | None:
    """The CPU seconds of a measurement that neither the proxy, SeaweedFS nor the client spent:
    the kernel's threads, this script, and anything else that shared the cores."""
    if sample is None:
        return None
    return max(0.0, sample.busy - (sample.proxy_cpu or 0) - sample.weed_cpu - sample.client_cpu)


def busy(cpu: float | None, sample: Sample | None) -> str:
    return "-" if cpu is None or sample is None else f"{100 * cpu / sample.wall:.0f}%"


def verdict(result: Result, results: dict[str, Result]) -> tuple[str, str]:
    """The target's text and whether it is met."""
    target = TARGETS.get(result.key, Target())
    unit = "s/GiB" if result.per == "bytes" else "ms/req"
    parts, failed = [], []
    complete = result.error is None and result.proxied is not None
    if target.cpu is not None:
        parts.append(f"CPU <= {target.cpu} {unit}")
        if complete and proxy_cost(result.per, result.proxied) > target.cpu:
            failed.append("CPU")
    if target.ratio is not None:
        if target.versus:
            base = results.get(target.versus)
            got = None
            if complete and base and base.error is None and base.proxied:
                got = rate(result.per, result.proxied) / rate(base.per, base.proxied)
            parts.append(f">= {target.ratio}x 1 worker" + (f" (is {got:.2f}x)" if got else ""))
            if got is None:
                complete = False
            elif got < target.ratio:
                failed.append("ratio")
        else:
            parts.append(f">= {target.ratio:.2f} of direct")
            if complete and result.direct is None:
                complete = False
            elif complete and ratio(result) < target.ratio:
                failed.append("ratio")
    if not parts:
        return "-", "-"
    if not complete:
        return ", ".join(parts), "n/a"
    return ", ".join(parts), "no: " + ", ".join(failed) if failed else "yes"


def ratio(result: Result) -> float:
    return rate(result.per, result.proxied) / rate(result.per, result.direct)


COLUMNS = (
    ("measure", 34, "<"),
    ("direct", 13, ">"),
    ("trios3", 13, ">"),
    ("ratio", 6, ">"),
    ("proxy CPU", 13, ">"),
    ("proxy %", 8, ">"),
    ("weed % d/t", 12, ">"),
    ("client % d/t", 13, ">"),
    ("others % d/t", 13, ">"),
    ("VmHWM", 8, ">"),
    ("target", 34, "<"),
    ("met", 0, "<"),
)


def table(results: dict[str, Result]) -> str:
    def line(cells: Sequence[str]) -> str:
        out = []
        for (_, width, align), cell in zip(COLUMNS, cells, strict=True):
            out.append(f"{cell:{align}{width}}" if width else cell)
        return "  ".join(out).rstrip()

    lines = [line([name for name, _, _ in COLUMNS])]
    lines.append("-" * len(lines[0]))
    for result in results.values():
        target, met = verdict(result, results)
        unit = "MiB/s" if result.per == "bytes" else "req/s"
        d, p = result.direct, result.proxied
        if result.error is not None:
            lines.append(line([result.label, *[""] * 9, target, "n/a"]))
            lines.append(f"    {result.error}")
            continue
        cells = [
            result.label,
            f"{rate(result.per, d):.0f} {unit}" if d else "-",
            f"{rate(result.per, p):.0f} {unit}" if p else "-",
            f"{ratio(result):.2f}" if d and p else "-",
            (
                f"{proxy_cost(result.per, p):.2f} {'s/GiB' if result.per == 'bytes' else 'ms/req'}"
                if p
                else "-"
            ),
            busy(p.proxy_cpu, p) if p else "-",
            f"{busy(d.weed_cpu, d) if d else '-'}/{busy(p.weed_cpu, p) if p else '-'}",
            f"{busy(d.client_cpu, d) if d else '-'}/{busy(p.client_cpu, p) if p else '-'}",
            f"{busy(others(d), d)}/{busy(others(p), p)}",
            f"{p.peak_kib / KiB:.0f} MiB" if p and p.peak_kib else "-",
            target,
            met,
        ]
        lines.append(line(cells))
    return "\n".join(lines)


# -- curl: large objects ------------------------------------------------------------------------

CURL = ("curl", "--http1.1", "-sS", "-v")
CURL_FORMAT = "%{http_code} %{size_download} %{size_upload} %{time_total}"


def curl_trust(endpoint: Endpoint) -> list[str]:
    return ["--cacert", endpoint.ca_bundle] if endpoint.url.startswith("https") else []


def _curl_figures(run: Finished, what: str) -> tuple[int, int, int, float]:
    fields = run.stdout.split()
    if run.returncode != 0 or len(fields) != 4:
        raise BenchError(f"{what}: curl exited {run.returncode}: {run.stderr.strip()[-300:]}")
    return int(fields[0]), int(fields[1]), int(fields[2]), float(fields[3])


def curl_put(endpoint: Endpoint, url: str, source: Path, proxy: int | None, scratch: Path):
    """A timed ``curl -T`` of ``source`` to a presigned PUT ``url``: a Sample of it."""
    answer = scratch / "put-answer.txt"
    command = [*CURL, *curl_trust(endpoint), "-H", "Expect:", "-T", str(source)]
    command += ["-o", str(answer), "-w", CURL_FORMAT, url]
    run = timed(command, proxy=proxy)
    code, _, sent, seconds = _curl_figures(run, "PUT")
    size = source.stat().st_size
    if code != 200:
        raise BenchError(f"PUT answered {code}: {answer.read_text(errors='replace')[:300]}")
    sent_headers = [ln[2:].lower() for ln in run.stderr.splitlines() if ln.startswith("> ")]
    if f"content-length: {size}" not in sent_headers or any(
        h.startswith("transfer-encoding") for h in sent_headers
    ):
        raise BenchError(f"curl did not send the PUT with Content-Length: {sent_headers}")
    if sent != size:
        raise BenchError(f"PUT sent {sent} bytes of {size}")
    return run.sample(size, seconds)


def curl_get(endpoint: Endpoint, url: str, size: int, proxy: int | None, out: str = "/dev/null"):
    """A timed ``curl -o /dev/null`` of a presigned GET ``url``: a Sample of it."""
    command = [*CURL, *curl_trust(endpoint), "-o", out, "-w", CURL_FORMAT, url]
    run = timed(command, proxy=proxy)
    code, got, _, seconds = _curl_figures(run, "GET")
    if code != 200:
        body = subprocess.run(
            ["curl", "--http1.1", "-sS", *curl_trust(endpoint), url],
            capture_output=True,
            timeout=600,
            check=False,
        ).stdout
        raise BenchError(f"GET answered {code}: {body[:300].decode(errors='replace')}")
    if got != size:
        raise BenchError(f"GET returned {got} bytes of {size}")
    return run.sample(size, seconds)


def large_rows(
    group: str,
    results: dict[str, Result],
    backend: Endpoint,
    proxy: Proxy,
    source: Path,
    args,
    profiler: Profiler,
    scratch: Path,
) -> None:
    """The ``{group}-put`` and ``{group}-get`` rows in ``results`` (the selected ones)."""
    rows = {op: results.get(f"{group}-{op}") for op in ("put", "get")}
    bucket = new_bucket(backend, "bench-large")
    pid = proxy.process.pid
    sides = (("direct", backend, None), ("trios3", proxy.endpoint, pid))
    presign = {name: endpoint.presigner() for name, endpoint, _ in sides}
    size = source.stat().st_size
    for r in range(args.rounds):
        for name, endpoint, side_pid in sides:
            key = f"{name}/{group}-{r}"
            side = "direct" if side_pid is None else "proxied"
            done = {}
            for op in ("put", "get"):
                result = rows[op]
                url = presign[name](op.upper(), bucket, key)
                recording = profiler.record(result.key, side_pid) if result else nullcontext()
                with recording:
                    if op == "put":
                        sample = curl_put(endpoint, url, source, side_pid, scratch)
                    else:
                        sample = curl_get(endpoint, url, size, side_pid)
                done[op] = sample
                if result:
                    result.keep(side, sample)
            progress(
                f"{group} round {r + 1} {name}: PUT {rate('bytes', done['put']):.0f} MiB/s, "
                f"GET {rate('bytes', done['get']):.0f} MiB/s"
                + (
                    f"; proxy CPU PUT {proxy_cost('bytes', done['put']):.2f}, "
                    f"GET {proxy_cost('bytes', done['get']):.2f} s/GiB"
                    if side_pid
                    else ""
                )
            )
            if side_pid and r == args.rounds - 1:
                check = scratch / "check.bin"
                curl_get(endpoint, presign[name]("GET", bucket, key), size, None, str(check))
                same = filecmp.cmp(source, check, shallow=False)
                check.unlink()
                if not same:
                    raise BenchError("the GET through trios3 returned other bytes than were PUT")
            endpoint.client().delete_object(Bucket=bucket, Key=key)
    for result in rows.values():
        if result:
            result.details.append(
                f"best of {args.rounds}: direct {result.direct.seconds:.2f} s, trios3 "
                f"{result.proxied.seconds:.2f} s for {size / MiB:.0f} MiB; the GET through "
                "trios3 compared equal to the source"
            )


# -- wrk: small requests --------------------------------------------------------------------------


def write_targets(path: Path, urls: Sequence[str]) -> Path:
    """The request targets (path and query) of presigned ``urls``, one a line, for wrk."""
    lines = []
    for url in urls:
        parts = urlsplit(url)
        lines.append(parts.path + ("?" + parts.query if parts.query else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(
    endpoint: Endpoint,
    method: str,
    targets: Path,
    body_size: int,
    *,
    threads: int,
    connections: int,
    duration: float,
    proxy: int | None,
) -> tuple[Sample, dict[str, int]]:
    """A timed wrk run of ``method`` over ``targets``: a Sample of the 200 answers, and wrk's
    figures. Any answer but 200, or any socket error or timeout, is a BenchError."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s"]
    command += ["-s", str(WRK_SCRIPT), endpoint.url + "/", "--", method, str(targets)]
    command.append(str(body_size))
    run = timed(command, proxy=proxy)
    found = re.search(r"^BENCH-RESULT (.*)$", run.stdout, re.MULTILINE)
    if run.returncode != 0 or found is None:
        raise BenchError(f"wrk exited {run.returncode}: {(run.stdout + run.stderr).strip()[-400:]}")
    figures = {k: int(v) for k, v in (item.split("=") for item in found.group(1).split())}
    errors = {k: figures[k] for k in ("connect", "read", "write", "timeout") if figures[k]}
    if figures["other"] or errors or not figures["ok"]:
        raise BenchError(
            f"{method}: {figures['other']} of {figures['requests']} answers were not 200 "
            f"(first: {figures['first_other'] or '-'}), socket errors {errors or 'none'}; "
            f"{figures['ok']} were 200"
        )
    return run.sample(figures["ok"], figures["duration_us"] / 1e6), figures


def wrk_detail(name: str, figures: dict[str, int]) -> str:
    return (
        f"{name}: {figures['ok']} requests in {figures['duration_us'] / 1e6:.1f} s, latency "
        f"p50 {figures['p50_us'] / 1000:.2f} ms, p99 {figures['p99_us'] / 1000:.2f} ms"
    )


def store_small(endpoint: Endpoint, bucket: str, prefix: str, count: int, size: int) -> list[str]:
    """``count`` objects of ``size`` bytes under ``prefix``, stored through ``endpoint``."""
    client = S3(endpoint)
    keys = [f"{prefix}/{i:05d}" for i in range(count)]
    try:
        for key in keys:
            client.put(bucket, key, os.urandom(size))
    finally:
        client.close()
    return keys


def small_rows(
    results: dict[str, Result],
    backend: Endpoint,
    proxy: Proxy,
    args,
    profiler: Profiler,
    scratch: Path,
) -> None:
    """The ``small-get`` and ``small-put`` rows in ``results`` (the selected ones)."""
    bucket = new_bucket(backend, "bench-small")
    pid = proxy.process.pid
    for op in ("get", "put"):
        result = results.get(f"small-{op}")
        if result is None:
            continue
        for name, endpoint, side_pid in (
            ("direct", backend, None),
            ("trios3", proxy.endpoint, pid),
        ):
            presign = endpoint.presigner()
            if op == "get":
                keys = store_small(
                    endpoint, bucket, f"{name}/get", args.small_count, args.small_size
                )
            else:
                keys = [f"{name}/put/{i:05d}" for i in range(args.small_count)]
            urls = [presign(op.upper(), bucket, key) for key in keys]
            targets = write_targets(scratch / f"small-{op}-{name}.txt", urls)
            recording = profiler.record(result.key, side_pid)
            with recording:
                sample, figures = wrk(
                    endpoint,
                    op.upper(),
                    targets,
                    args.small_size if op == "put" else 0,
                    threads=1,
                    connections=args.connections,
                    duration=args.duration,
                    proxy=side_pid,
                )
            result.keep("direct" if side_pid is None else "proxied", sample)
            result.details.append(wrk_detail(name, figures))
            progress(f"small {op.upper()} {name}: {rate('requests', sample):.0f} req/s")


def workers_rows(
    results: dict[str, Result],
    backend: Endpoint,
    args,
    serve_args: Sequence[str],
    profiler: Profiler,
    scratch: Path,
) -> None:
    """The ``workers-1`` and ``workers-2`` rows: wrk GET -t2 -c32 with ``--workers N``."""
    bucket = new_bucket(backend, "bench-workers")
    count, size = args.small_count, args.small_size
    keys = store_small(backend, bucket, "direct", count, size)
    presign = backend.presigner()
    targets = write_targets(
        scratch / "workers-direct.txt", [presign("GET", bucket, k) for k in keys]
    )
    load = dict(threads=args.workers_threads, connections=args.workers_connections)
    direct, direct_figures = wrk(
        backend, "GET", targets, 0, duration=args.duration, proxy=None, **load
    )
    progress(f"workers: direct {rate('requests', direct):.0f} req/s")
    master_key = None
    for n in (1, 2):
        result = results[f"workers-{n}"]
        result.direct = direct
        result.details.append(wrk_detail("direct", direct_figures))
        extra = [*serve_args, "--workers", str(n)]
        proxy = launch(backend, scratch / f"proxy-workers-{n}", extra=extra, master_key=master_key)
        try:
            master_key = proxy.endpoint.master_key
            pid = proxy.process.pid
            if n == 1:
                keys = store_small(proxy.endpoint, bucket, "trios3", count, size)
            presign = proxy.endpoint.presigner()
            urls = [presign("GET", bucket, k) for k in keys]
            targets = write_targets(scratch / f"workers-{n}.txt", urls)
            wait_answering(proxy.endpoint, urls[0])
            with profiler.record(result.key, pid, subprocesses=True):
                sample, figures = wrk(
                    proxy.endpoint, "GET", targets, 0, duration=args.duration, proxy=pid, **load
                )
            result.proxied = sample
            members = process_tree(pid)
            result.details.append(
                wrk_detail(f"--workers {n}", figures)
                + f"; {len(members)} processes in the proxy's tree: {members}"
            )
            progress(f"workers: --workers {n} {rate('requests', sample):.0f} req/s")
        finally:
            proxy.stop()


def wait_answering(endpoint: Endpoint, url: str, timeout: float = 60) -> None:
    """Until a presigned GET ``url`` through a proxy answers 200 (its workers are up)."""
    deadline = time.monotonic() + timeout
    while True:
        command = ["curl", "--http1.1", "-s", *curl_trust(endpoint), "-o", "/dev/null"]
        answer = subprocess.run(
            [*command, "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if answer.stdout == "200":
            time.sleep(0.5)
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the proxy did not answer 200 ({answer.stdout}) within {timeout} s")
        time.sleep(0.2)


# -- restic ---------------------------------------------------------------------------------------


def restic_tree(root: Path, mib: int) -> int:
    """``mib`` MiB of random bytes in files of about 12 MiB under ``root``; the byte count."""
    count = max(1, round(mib / RESTIC_FILE_MIB))
    size = mib * MiB // count
    root.mkdir(parents=True)
    for i in range(count):
        with open(root / f"file-{i:02d}.bin", "wb") as out:
            left = size
            while left:
                n = min(left, 4 * MiB)
                out.write(os.urandom(n))
                left -= n
    return count * size


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def restic_rows(
    results: dict[str, Result],
    backend: Endpoint,
    proxy: Proxy,
    args,
    profiler: Profiler,
    scratch: Path,
) -> None:
    """The ``restic-backup`` and ``restic-restore`` rows."""
    restic = shutil.which("restic")
    version = subprocess.run([restic, "version"], capture_output=True, text=True, check=False)
    source = scratch / "restic-tree"
    size = restic_tree(source, args.restic_mib)
    files = len(list(source.iterdir()))
    bucket = new_bucket(backend, "bench-restic")
    # restic reads AWS_* itself (AWS_CA_BUNDLE among them): none of this shell's.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RESTIC_"))}
    base["RESTIC_PASSWORD"] = "correct horse battery staple"
    pid = proxy.process.pid
    backup, restore = results["restic-backup"], results["restic-restore"]
    for r in range(args.rounds):
        for name, endpoint, side_pid in (
            ("direct", backend, None),
            ("trios3", proxy.endpoint, pid),
        ):
            env = {
                **base,
                "AWS_ACCESS_KEY_ID": endpoint.access_key,
                "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
                "RESTIC_CACHE_DIR": str(scratch / "restic-cache" / f"{name}-{r}"),
            }
            command = [restic, "-r", f"s3:{endpoint.url}/{bucket}/{name}-{r}"]
            init = subprocess.run(
                [*command, "init"], env=env, capture_output=True, text=True, check=False
            )
            if init.returncode != 0:
                raise BenchError(f"restic init ({name}) failed: {init.stderr.strip()[-400:]}")
            side = "direct" if side_pid is None else "proxied"
            with profiler.record(backup.key, side_pid):
                run = timed(
                    [*command, "backup", "-q", "--host", "bench", str(source)],
                    proxy=side_pid,
                    env=env,
                )
            if run.returncode != 0:
                raise BenchError(f"restic backup ({name}) failed: {run.stderr.strip()[-400:]}")
            backup.keep(side, run.sample(size))
            backed = run.sample(size)
            target = scratch / "restored" / f"{name}-{r}"
            with profiler.record(restore.key, side_pid):
                run = timed(
                    [*command, "restore", "latest", "-q", "--target", str(target)],
                    proxy=side_pid,
                    env=env,
                )
            if run.returncode != 0:
                raise BenchError(f"restic restore ({name}) failed: {run.stderr.strip()[-400:]}")
            restored = tree_bytes(target)
            if restored != size:
                raise BenchError(f"restic restored {restored} bytes of {size} ({name})")
            shutil.rmtree(target)
            restore.keep(side, run.sample(size))
            progress(
                f"restic round {r + 1} {name}: backup {rate('bytes', backed):.0f} MiB/s, "
                f"restore {rate('bytes', run.sample(size)):.0f} MiB/s"
            )
    for result in (backup, restore):
        result.details.append(
            f"{version.stdout.strip()}; {files} files, {size / MiB:.0f} MiB; best of "
            f"{args.rounds}: direct {result.direct.seconds:.2f} s, trios3 "
            f"{result.proxied.seconds:.2f} s; restic's CPU direct "
            f"{result.direct.client_cpu / (size / GiB):.2f}, through trios3 "
            f"{result.proxied.client_cpu / (size / GiB):.2f} s/GiB"
        )


# -- the servers ----------------------------------------------------------------------------------

CERTIFI_SHIM = """\
# Written by trios3's scripts/bench.py for a proxy whose backend client reads only certifi's
# bundle: certifi.where() names the benchmark's CA (TRIOS3_BENCH_CA) instead.
import os

try:
    import certifi
    import certifi.core
except ImportError:
    pass
else:
    def _bench_where():
        return os.environ["TRIOS3_BENCH_CA"]

    certifi.where = certifi.core.where = _bench_where
"""


class Servers:
    """The SeaweedFSes and proxies of a run, each started the first time a row asks for it and
    stopped (with the scratch directory) when the run ends."""

    def __init__(self, scratch: Path, stack: ExitStack, serve_args: Sequence[str]) -> None:
        self.scratch = scratch
        self.stack = stack
        self.serve_args = list(serve_args)
        self.cache: dict[str, object] = {}
        self.trust_note = ""

    def _once(self, name: str, make: Callable[[], object]):
        if name not in self.cache:
            self.cache[name] = make()
        return self.cache[name]

    def weed(self) -> Endpoint:
        return self._once(
            "weed", lambda: self.stack.enter_context(running_seaweedfs(self.scratch / "weed"))
        )

    def proxy(self) -> Proxy:
        return self._once("proxy", lambda: self._start(self.weed(), "proxy"))

    def tls_weed(self) -> Endpoint:
        return self._once(
            "tls-weed",
            lambda: self.stack.enter_context(
                running_seaweedfs(self.scratch / "weed-tls", tls=True)
            ),
        )

    def tls_proxy(self) -> Proxy:
        return self._once("tls-proxy", self._start_tls)

    def _start(self, backend: Endpoint, name: str, **options) -> Proxy:
        extra = [*self.serve_args, *options.pop("extra", ())]
        proxy = launch(backend, self.scratch / name, extra=extra, **options)
        self.stack.callback(proxy.stop)
        return proxy

    def _start_tls(self) -> Proxy:
        """trios3 over HTTPS in front of the HTTPS SeaweedFS, trusting its CA in the first way
        of these that the code under test has and that a probe through it proves."""
        backend = self.tls_weed()
        ca = backend.ca_bundle
        if serve_has_option("--backend-ca-bundle"):
            ways = [("--backend-ca-bundle", ["--backend-ca-bundle", ca], {})]
        else:
            shim = mkdir(self.scratch / "certifi-shim")
            (shim / "sitecustomize.py").write_text(CERTIFI_SHIM)
            path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
            ways = [
                ("SSL_CERT_FILE", [], {"SSL_CERT_FILE": ca}),
                (
                    "SSL_CERT_FILE and certifi.where() pointed at the CA (sitecustomize)",
                    [],
                    {"SSL_CERT_FILE": ca, "TRIOS3_BENCH_CA": ca, "PYTHONPATH": path},
                ),
            ]
        bucket = new_bucket(backend, "bench-probe")
        failures = []
        for i, (how, extra, env) in enumerate(ways):
            directory = self.scratch / f"proxy-tls-{i}"
            options = [*self.serve_args, *extra]
            proxy = launch(backend, directory, tls=True, extra=options, env=env)
            try:
                why = probe(proxy.endpoint, bucket, directory)
            except BaseException:
                proxy.stop()
                raise
            if why is None:
                self.stack.callback(proxy.stop)
                self.trust_note = f"the TLS proxy trusts the backend's CA through {how}"
                if how != "--backend-ca-bundle":
                    self.trust_note += " (trios3 serve has no --backend-ca-bundle)"
                    if failures:
                        self.trust_note += "; " + "; ".join(failures)
                return proxy
            proxy.stop()
            failures.append(f"with {how} alone: {why}")
        raise BenchError("the proxy could not use the HTTPS backend: " + "; ".join(failures))


def probe(endpoint: Endpoint, bucket: str, scratch: Path) -> str | None:
    """PUT and GET a small object through ``endpoint`` with curl: None if both answered 200,
    else what went wrong."""
    body = scratch / "probe.bin"
    body.write_bytes(os.urandom(KiB))
    presign = endpoint.presigner()
    try:
        curl_put(endpoint, presign("PUT", bucket, "probe"), body, None, scratch)
        curl_get(endpoint, presign("GET", bucket, "probe"), KiB, None)
    except BenchError as exc:
        return " ".join(str(exc).split())[:300]
    return None


def launch(backend: Endpoint, directory: Path, **options) -> Proxy:
    """:func:`start_proxy` in ``directory``; if it does not come up, a BenchError that quotes
    the end of its log."""
    try:
        return start_proxy(backend, mkdir(directory), **options)
    except RuntimeError as exc:
        log = directory / "proxy.log"
        tail = log.read_text(errors="replace").strip()[-500:] if log.exists() else ""
        raise BenchError(f"{exc}: {' '.join(tail.split())}") from exc


def new_bucket(endpoint: Endpoint, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    endpoint.client().create_bucket(Bucket=name)
    return name


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(text: str) -> None:
    print(f"  .. {text}", flush=True)


def write_random(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 4 * MiB)
            out.write(os.urandom(n))
            left -= n
    return path


# -- profiles -------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` of the proxy during the proxied measurements of each row (raw collapsed
    stacks, ``--function``: frames by function, not line), when ``directory`` is given."""

    def __init__(self, directory: Path | None, rate: int) -> None:
        self.directory = directory
        self.rate = rate
        self.files: dict[str, list[Path]] = defaultdict(list)
        self.problems: list[str] = []
        self.binary = ensure_py_spy() if directory is not None else None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def record(self, row: str, pid: int | None, subprocesses: bool = False) -> Iterator[None]:
        if self.directory is None or pid is None:
            yield
            return
        n = len(self.files[row]) + 1
        output, log_path = self.directory / f"{row}-{n}.txt", self.directory / f"{row}-{n}.log"
        command = [self.binary, "record", "--format", "raw", "--function", "--nonblocking"]
        command += ["--rate", str(self.rate), "-o", str(output), "-p", str(pid)]
        if subprocesses:
            command.append("--subprocesses")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while b"Sampling process" not in log_path.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if output.exists() and output.stat().st_size:
            self.files[row].append(output)
        else:
            tail = log_path.read_text(errors="replace").strip()[-300:]
            self.problems.append(f"{row}: py-spy wrote no profile ({tail})")

    def summaries(self, top: int = 15) -> list[str]:
        lines = []
        for row, paths in self.files.items():
            lines += profile_summary(row, paths, self.rate, top)
        return lines + self.problems


def ensure_py_spy() -> str:
    """py-spy beside this Python (pip-installed into the virtualenv if missing) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if not beside.exists() and not shutil.which("py-spy"):
        print("installing py-spy into the virtualenv (pip)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(beside) if beside.exists() else shutil.which("py-spy")


def package_of(frame: str) -> str:
    """``trio`` of ``run (trio/_core/_run.py:100)``; ``ssl`` of ``read (ssl.py:1100)``."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    path = re.sub(r":-?\d+$", "", inside)
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    head = path.split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head or "?"


def profile_summary(row: str, paths: Sequence[Path], rate_hz: int, top: int) -> list[str]:
    """The top functions by own time (leaf frames) of py-spy's raw output files, with their
    inclusive share, and own time by package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            packages[package_of(frames[-1])] += n
            for frame in set(frames):
                inclusive[frame] += n
    lines = [
        "",
        f"profile of {row}: {total} samples (~{total / rate_hz:.1f} s on CPU at {rate_hz}/s; "
        f"idle excluded) over {len(paths)} recording(s)",
    ]
    if not total:
        return lines
    lines.append(f"  {'own':>6} {'total':>6}  function (file:first line)")
    for frame, n in own.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}% {100 * inclusive[frame] / total:5.1f}%  {frame}")
    shares = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in packages.most_common(10))
    lines.append(f"  own time by package: {shares}")
    return lines


# -- main ---------------------------------------------------------------------------------------


def selected_rows(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(ROWS)
    chosen: list[str] = []
    for item in (part for value in only for part in value.split(",") if part):
        if item not in ROWS and item not in GROUPS:
            names = ", ".join([*ROWS, *GROUPS])
            raise SystemExit(f"--only: no row or group {item!r} (one of {names})")
        for row in GROUPS.get(item, (item,)):
            if row not in chosen:
                chosen.append(row)
    return [row for row in ROWS if row in chosen]


def code_under_test() -> str:
    """Where the trios3 being measured comes from, and its git state if it is this checkout."""
    result = subprocess.run(
        [sys.executable, "-c", "import trios3; print(trios3.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    location = Path(result.stdout.strip()).parent
    repo = HERE.parent
    if location != repo / "src" / "trios3":
        return f"trios3 from {location}"
    head = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h (%cs)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    state = " + uncommitted changes in src/" if dirty else ""
    return f"trios3 from {location}: commit {head}{state}"


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute figures: whether something else shared the cores."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tool_version(command: Sequence[str], words: slice = slice(0, 2)) -> str:
    """The first words of a tool's version line (``curl 7.88.1``)."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError:
        return f"{command[0]}: missing"
    text = (done.stdout or done.stderr).strip().splitlines()
    return " ".join(text[0].split()[words]) if text else "?"


def main() -> int:
    argv = sys.argv[1:]
    serve_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, serve_args = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Options after -- go to every trios3 serve started.",
    )
    parser.add_argument("--only", nargs="+", help=f"rows or groups: {', '.join(ROWS)}; large...")
    parser.add_argument("--rounds", type=int, default=2, help="curl and restic rounds (best of)")
    parser.add_argument("--large-mib", type=int, default=256, help="the large object's size")
    parser.add_argument("--small-count", type=int, default=256, help="distinct small objects")
    parser.add_argument("--small-size", type=int, default=KiB, help="small object bytes")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="wrk -c of the small rows")
    parser.add_argument("--workers-threads", type=int, default=2, help="wrk -t, workers rows")
    parser.add_argument("--workers-connections", type=int, default=32, help="wrk -c, workers")
    parser.add_argument("--restic-mib", type=int, default=288, help="restic tree size")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the proxy into DIR")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    args = parser.parse_args(argv)
    rows = selected_rows(args.only)
    started = time.perf_counter()

    small = (
        f"{args.small_size // KiB} KiB" if args.small_size % KiB == 0 else f"{args.small_size} B"
    )
    labels = {
        "large-get": f"{args.large_mib} MiB GET (curl)",
        "large-put": f"{args.large_mib} MiB PUT (curl)",
        "small-get": f"{small} GET (wrk -t1 -c{args.connections})",
        "small-put": f"{small} PUT (wrk -t1 -c{args.connections})",
        "tls-get": f"{args.large_mib} MiB GET, HTTPS both sides",
        "tls-put": f"{args.large_mib} MiB PUT, HTTPS both sides",
        "restic-backup": f"restic backup {args.restic_mib} MiB",
        "restic-restore": f"restic restore {args.restic_mib} MiB",
    }
    load = f"wrk -t{args.workers_threads} -c{args.workers_connections}"
    labels["workers-1"] = f"{small} GET, --workers 1 ({load})"
    labels["workers-2"] = f"{small} GET, --workers 2 ({load})"
    results: dict[str, Result] = {}
    for row in rows:
        keys = {
            "restic": ("restic-backup", "restic-restore"),
            "workers": ("workers-1", "workers-2"),
        }
        for key in keys.get(row, (row,)):
            per = "requests" if key.startswith(("small", "workers")) else "bytes"
            results[key] = Result(key, labels[key], per)

    print("trios3 bench: the proxy against the same SeaweedFS reached directly, in one run")
    print(f"  {code_under_test()}")
    weed = tool_version([find_weed(), "version"], slice(1, 3))
    tools = [tool_version(["curl", "--version"]), tool_version(["wrk", "-v"])]
    tools += [tool_version(["restic", "version"]), f"SeaweedFS {weed}"]
    print(f"  {os.cpu_count()} cores (load average {load_average()}); {', '.join(tools)}")
    print(f"  rows: {', '.join(rows)}; trios3 serve {' '.join(serve_args) or '(defaults)'}")

    missing = {tool: shutil.which(tool) is None for tool in ("curl", "wrk", "restic")}

    def unavailable(keys: Sequence[str], why: str) -> None:
        for key in keys:
            if key in results and results[key].error is None:
                results[key].error = why

    needs = {
        "curl": [k for k in results if k.startswith(("large", "tls", "workers"))],
        "wrk": [k for k in results if k.startswith(("small", "workers"))],
        "restic": [k for k in results if k.startswith("restic")],
    }
    for tool, keys in needs.items():
        if missing[tool]:
            unavailable(keys, f"{tool} is not installed (scripts/setup-dev.sh installs it)")
    if "workers" in rows and not serve_has_option("--workers"):
        unavailable(["workers-1", "workers-2"], "not available: trios3 serve has no --workers")

    def pending(*keys: str) -> list[str]:
        return [k for k in keys if k in results and results[k].error is None]

    profiler = Profiler(args.profile, args.profile_rate)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trios3-bench-") as tmp, ExitStack() as stack:
        scratch = Path(tmp)
        servers = Servers(scratch, stack, serve_args)
        source = None
        if pending("large-get", "large-put", "tls-get", "tls-put"):
            source = write_random(scratch / "large.bin", args.large_mib * MiB)

        def group(keys: Sequence[str], run: Callable[[], None]) -> None:
            if not pending(*keys):
                return
            try:
                run()
            except Exception as exc:  # a row's failure is printed in it; the others still run
                unavailable(keys, f"failed: {type(exc).__name__}: {exc}"[:600])
                progress(f"{', '.join(keys)} failed: {exc}")

        group(
            ("large-put", "large-get"),
            lambda: large_rows(
                "large", results, servers.weed(), servers.proxy(), source, args, profiler, scratch
            ),
        )
        group(
            ("small-get", "small-put"),
            lambda: small_rows(results, servers.weed(), servers.proxy(), args, profiler, scratch),
        )
        group(
            ("restic-backup", "restic-restore"),
            lambda: restic_rows(results, servers.weed(), servers.proxy(), args, profiler, scratch),
        )
        group(
            ("tls-put", "tls-get"),
            lambda: large_rows(
                "tls",
                results,
                servers.tls_weed(),
                servers.tls_proxy(),
                source,
                args,
                profiler,
                scratch,
            ),
        )
        group(
            ("workers-1", "workers-2"),
            lambda: workers_rows(results, servers.weed(), args, serve_args, profiler, scratch),
        )
        if servers.trust_note:
            notes.append(servers.trust_note)

    print()
    print(table(results))
    print()
    for result in results.values():
        for detail in result.details:
            print(f"{result.label}: {detail}")
    notes += [
        "ratio: trios3 / direct; proxy CPU: the proxy's utime+stime (its whole process tree) per "
        "GiB moved or per request answered 200",
        "proxy %, weed % d/t, client % d/t: CPU seconds per wall second of the proxy, of "
        "SeaweedFS and of the client (direct / through trios3), 100% = one core of "
        f"{os.cpu_count()}; others: every other process's CPU (/proc/stat's busy time less "
        "those three): the kernel's threads, and other work sharing the machine",
        "VmHWM: the proxy's peak RSS during the best measurement (reset before it; the largest "
        "process of its tree)",
        "curl: HTTP/1.1 on both sides (SeaweedFS over HTTPS would negotiate h2), no Expect: "
        "100-continue, PUT with Content-Length; wrk: one run of "
        f"{args.duration:g} s per row and side, only 200 answers counted",
    ]
    crowded = [
        result.label
        for result in results.values()
        if any(
            sample and (others(sample) or 0) > 0.25 * sample.wall
            for sample in (result.direct, result.proxied)
        )
    ]
    if crowded:
        notes.append(
            "other processes used more than a quarter of a core during: "
            + "; ".join(crowded)
            + " (a machine shared with other work: those figures are lower than a quiet run's)"
        )
    if any(key.startswith("workers") and not results[key].error for key in results):
        notes.append(
            f"workers: the proxy's workers share the {os.cpu_count()} cores with SeaweedFS and "
            "wrk; the 2-worker gain is bounded by the cores left to the proxy"
        )
    if args.profile:
        notes.append(
            f"profiled run (py-spy --nonblocking at {args.profile_rate}/s): py-spy shares the "
            "cores, the figures are lower than an unprofiled run's"
        )
    print()
    for note in notes:
        print(f"note: {note}")
    for line in profiler.summaries():
        print(line)
    if args.profile:
        print(f"\nraw profiles in {args.profile}")
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s; load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
