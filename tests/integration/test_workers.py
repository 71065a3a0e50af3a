"""``trios3 serve --workers N``: worker processes on one socket, supervised, drained, counted.

Each test runs a real ``trios3 serve --workers 2`` in front of the session's SeaweedFS (the
embedded one in the last), and looks at its processes in /proc. A wait for a process or a log
line polls with a deadline (:func:`until`), never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Endpoint, children, free_ports, start_proxy, wait_port
from trios3.budget import BudgetStats
from trios3.metrics import Counts, Metrics
from trios3.workers import STOP_GRACE, SlotFigures

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
WAIT = 30  # seconds any one wait below may take at most


def until(predicate: Callable[[], object], what: str, timeout: float = WAIT):
    """``predicate()``'s first true value, polled every 50 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def serving(proxy) -> list[int]:
    """Once the supervisor says every worker serves (its banner): the workers' pids."""
    until(lambda: "trios3 serving S3 on" in proxy.log_path.read_text(), "the banner")
    workers = children(proxy.process.pid)
    assert len(workers) == 2, workers
    return workers


def samples(endpoint: Endpoint) -> dict[tuple[str, tuple], float]:
    verify = ssl.create_default_context(cafile=endpoint.ca_bundle) if endpoint.ca_bundle else True
    text = httpx.get(endpoint.url + "/metrics", timeout=10, verify=verify).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def answered(operation: str, status: str = "200") -> tuple[str, tuple]:
    return ("trios3_requests_total", (("operation", operation), ("status", status)))


WORKERS = ("trios3_workers", ())


def request_pids(log: Path, operation: str) -> list[int]:
    """The pids in the log lines of requests for ``operation`` (``trios3[PID] request ...``)."""
    pattern = rf"trios3\[(\d+)\] request .* op={operation} "
    return [int(pid) for pid in re.findall(pattern, log.read_text())]


def http_get(sock: socket.socket, host: str, target: str) -> tuple[bytes, bytes]:
    """One keep-alive GET on ``sock``: (status line, body)."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return head.split(b"\r\n", 1)[0], body


def test_two_workers_share_the_socket_and_the_connections_and_metrics_add_up(
    seaweedfs, tmp_path, bucket
):
    # Four connections in all: each worker accepts two at most (its share), so four held open
    # at once are two on each.
    proxy = start_proxy(seaweedfs, tmp_path, extra=["--workers", "2", "--max-connections", "4"])
    held: list[socket.socket] = []
    try:
        workers = serving(proxy)
        s3 = proxy.endpoint.client()
        data = os.urandom(1000)
        s3.put_object(Bucket=bucket, Key="shared", Body=data)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "shared"}, ExpiresIn=300
        )
        s3.close()  # its keep-alive connection would hold one of the four places
        host, port = proxy.endpoint.url.removeprefix("http://").rsplit(":", 1)
        target = url.split(proxy.endpoint.url, 1)[1]
        for _ in range(4):
            sock = socket.create_connection((host, int(port)), timeout=WAIT)
            status, body = http_get(sock, f"{host}:{port}", target)
            assert status.startswith(b"HTTP/1.1 200") and body == data
            held.append(sock)
        pids = until(
            lambda: len(found := request_pids(proxy.log_path, "GetObject")) == 4 and found,
            "four GetObject log lines",
        )
        assert sorted(set(pids)) == sorted(workers)  # both workers served
        assert sorted(pids.count(pid) for pid in workers) == [2, 2]
        for sock in held:
            sock.close()
        held.clear()

        # Whichever worker answers a scrape, it counts every worker's requests.
        for _ in range(4):
            until(
                lambda: (
                    (got := samples(proxy.endpoint)).get(answered("GetObject")) == 4
                    and got.get(answered("PutObject")) == 1
                    and got.get(WORKERS) == 2
                ),
                "the metrics of both workers",
            )
        got = samples(proxy.endpoint)
        assert got[("trios3_budget_capacity_bytes", ())] == 64 * MiB  # the shares, summed
        assert got[("trios3_requests_in_flight", ())] == 0
        assert got[("trios3_sent_bytes_total", ())] == 4 * len(data)
        # Each worker checks the backend for itself.
        for _ in range(4):
            ready = httpx.get(proxy.endpoint.url + "/readyz", timeout=10)
            assert (ready.status_code, ready.text) == (200, "ready\n")
    finally:
        for sock in held:
            sock.close()
        proxy.stop()


def test_a_killed_worker_is_replaced_and_its_counts_carry_on(seaweedfs, tmp_path, bucket):
    # Over HTTPS: each worker serves TLS with the certificate it reads itself.
    proxy = start_proxy(seaweedfs, tmp_path, extra=["--workers", "2"], tls=True)
    try:
        first = serving(proxy)
        s3 = proxy.endpoint.client()
        for number in range(6):
            s3.put_object(Bucket=bucket, Key=f"before-{number}", Body=b"x" * number)
        until(lambda: samples(proxy.endpoint).get(answered("PutObject")) == 6, "six PUTs counted")
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        # Requests keep succeeding, on new connections (the victim's died with it).
        s3 = proxy.endpoint.client()
        for number in range(6):
            s3.put_object(Bucket=bucket, Key=f"after-{number}", Body=b"y" * number)
            assert s3.get_object(Bucket=bucket, Key=f"before-{number}")["Body"].read() == (
                b"x" * number
            )
        replaced = until(
            lambda: len(now := children(proxy.process.pid)) == 2 and victim not in now and now,
            "a new worker in the victim's place",
        )
        assert set(replaced) - {victim} >= set(first) - {victim}  # the other one lived on
        log = proxy.log_path.read_text()
        assert re.search(
            rf"worker \d \(pid {victim}\) was killed by SIGKILL after .*; starting", log
        )
        # Nothing the victim counted is lost: its successor carries it on.
        until(
            lambda: (
                (got := samples(proxy.endpoint)).get(answered("PutObject")) == 12
                and got.get(answered("GetObject")) == 6
                and got.get(WORKERS) == 2
            ),
            "every request counted, by two workers",
        )
        newcomer = (set(replaced) - set(first)).pop()
        assert re.search(rf"worker \d \(pid {newcomer}\) serving", proxy.log_path.read_text())
    finally:
        proxy.stop()


def test_sigterm_drains_the_workers_and_leaves_no_process(seaweedfs, tmp_path, bucket):
    extra = ["--workers", "2", "--shutdown-timeout", "60"]
    proxy = start_proxy(seaweedfs, tmp_path, extra=extra)
    size = 48 * MiB
    try:
        workers = serving(proxy)
        proxy.endpoint.client().put_object(Bucket=bucket, Key="big", Body=os.urandom(size))
        url = proxy.endpoint.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "big"}, ExpiresIn=300
        )
        with httpx.Client() as client, client.stream("GET", url) as response:
            assert response.status_code == 200
            chunks = response.iter_raw(64 * 1024)
            received = len(next(chunks))
            proxy.process.send_signal(signal.SIGTERM)
            for chunk in chunks:  # the request in flight finishes
                received += len(chunk)
        assert received == size
        assert proxy.process.wait(timeout=WAIT) == 0
        for pid in workers:
            assert not running(pid), f"worker {pid} outlived its supervisor"
        with pytest.raises(httpx.ConnectError):  # nothing listens any more
            httpx.get(proxy.endpoint.url + "/healthz")
        log = proxy.log_path.read_text()
        assert "stopping 2 workers" in log
        assert re.search(rf"op=GetObject .*status=200 in=0 out={size} ", log)
    finally:
        proxy.stop()


def test_a_worker_that_will_not_stop_is_killed_after_the_shutdown_timeout_and_grace(
    seaweedfs, tmp_path
):
    proxy = start_proxy(seaweedfs, tmp_path, extra=["--workers", "2", "--shutdown-timeout", "1"])
    try:
        stuck, other = serving(proxy)
        os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM
        began = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=WAIT) == 0
        assert time.monotonic() - began >= 1 + STOP_GRACE - 0.5
        assert not running(stuck) and not running(other)
        log = proxy.log_path.read_text()
        assert re.search(
            rf"worker \d \(pid {stuck}\) still running 6 s after SIGTERM: killing", log
        )
    finally:
        proxy.stop()


def test_a_supervisor_that_is_killed_takes_its_workers_with_it(seaweedfs, tmp_path):
    proxy = start_proxy(seaweedfs, tmp_path, extra=["--workers", "2"])
    try:
        workers = serving(proxy)
        proxy.process.kill()
        proxy.process.wait(timeout=WAIT)
        # Each worker sees its channel close, drains and exits.
        until(lambda: not any(running(pid) for pid in workers), "the orphaned workers exiting")
        assert proxy.log_path.read_text().count("the supervisor has gone: stopping") == 2
    finally:
        proxy.stop()


def test_the_embedded_backend_runs_once_for_all_the_workers(tmp_path):
    data_dir = tmp_path / "data"
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOS3_")}
    command = [sys.executable, "-m", "trios3.cli", "serve", "--listen", f"127.0.0.1:{port}"]
    command += ["--data-dir", str(data_dir), "--workers", "2"]
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process, "trios3")
        text = until(
            lambda: "aws --endpoint-url" in (t := (tmp_path / "serve.log").read_text()) and t,
            "the banner",
        )
        access = re.search(r"AWS_ACCESS_KEY_ID=(\S+)", text).group(1)
        secret = re.search(r"AWS_SECRET_ACCESS_KEY=(\S+)", text).group(1)
        tree = children(process.pid)
        weeds = [pid for pid in tree if b"weed" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        workers = [pid for pid in tree if pid not in weeds]
        assert (len(weeds), len(workers)) == (1, 2), tree
        client = Endpoint(f"http://127.0.0.1:{port}", access, secret).client()
        client.create_bucket(Bucket="demo")
        for number in range(8):  # over both workers, most likely: each has the backend
            client.put_object(Bucket="demo", Key=f"k{number}", Body=b"hello %d" % number)
            client.close()
        for number in range(8):
            body = client.get_object(Bucket="demo", Key=f"k{number}")["Body"].read()
            assert body == b"hello %d" % number
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        for pid in tree:
            assert not running(pid), f"{pid} outlived the server"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the figures the workers share (no server) ---------------------------------------------------


def figures(in_flight: int = 0, refused: int = 0):
    """A worker's figures: a gauge (requests in flight) and a counter (refusals)."""
    return Metrics(Counts(in_flight=in_flight, refused_busy=refused), BudgetStats(1), lambda: None)


def total_of(slot: SlotFigures, own) -> tuple[float, float, int]:
    summed, workers = slot.total(own.figures())
    refused = summed["trios3_refused_busy"].samples[("trios3_refused_busy_total", ())]
    flight = summed["trios3_requests_in_flight"].samples[("trios3_requests_in_flight", ())]
    return refused, flight, workers


def test_a_dead_workers_counters_stay_counted_and_its_gauges_go(tmp_path):
    zero, one = SlotFigures(tmp_path, 0), SlotFigures(tmp_path, 1)
    zero.publish(figures(in_flight=2, refused=5).figures())
    assert total_of(one, figures(in_flight=1, refused=1)) == (6, 3, 2)
    SlotFigures.mark_gone(tmp_path, 0)  # the supervisor saw it exit
    assert total_of(one, figures(in_flight=1, refused=1)) == (6, 1, 1)
    successor = SlotFigures(tmp_path, 0)  # carries on what slot 0 counted
    successor.publish(figures(in_flight=0, refused=1).figures())
    assert total_of(one, figures(in_flight=1, refused=1)) == (7, 1, 2)
    assert total_of(successor, figures(in_flight=0, refused=2)) == (8, 1, 2)
