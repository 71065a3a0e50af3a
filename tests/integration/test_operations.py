"""What an operator sees and does: /healthz, /readyz, /metrics, and SIGTERM during a stream."""

from __future__ import annotations

import os
import re
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import running_seaweedfs, scratch_bucket, start_proxy, stop_process

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "ops")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_health_readiness_and_metrics_after_known_requests(seaweedfs, tmp_path, bucket):
    process, endpoint, log = start_proxy(seaweedfs, tmp_path)
    try:
        assert httpx.get(endpoint.url + "/healthz").text == "ok\n"
        ready = httpx.get(endpoint.url + "/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        s3 = endpoint.client()
        data = os.urandom(300_000)
        s3.put_object(Bucket=bucket, Key="a", Body=data)
        assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == data
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017 - any error: NoSuchKey
                s3.head_object(Bucket=bucket, Key="missing")
        bad = endpoint.__class__(endpoint.url, endpoint.access_key, "wrong-secret")
        with pytest.raises(Exception):  # noqa: B017 - SignatureDoesNotMatch
            bad.client().list_objects_v2(Bucket=bucket)

        response = httpx.get(endpoint.url + "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        got = samples(text)
        assert got[("trios3_requests_total", (("operation", "PutObject"), ("status", "200")))] == 1
        assert got[("trios3_requests_total", (("operation", "GetObject"), ("status", "200")))] == 1
        assert got[("trios3_requests_total", (("operation", "HeadObject"), ("status", "404")))] == 2
        assert got[("trios3_authentication_failures_total", ())] == 1
        assert got[("trios3_request_duration_seconds_count", (("operation", "GetObject"),))] == 1
        assert got[("trios3_sent_bytes_total", ())] >= len(data)
        assert got[("trios3_received_bytes_total", ())] >= len(data)
        assert got[("trios3_budget_in_use_bytes", ())] == 0
        assert got[("trios3_budget_waiters", ())] == 0
        assert got[("trios3_budget_admissions_total", ())] >= 2
        assert got[("trios3_budget_capacity_bytes", ())] == 64 * MiB
        assert got[("trios3_cancellations_total", (("cause", "client_disconnect"),))] == 0
        assert got[("trios3_tamper_failures_total", ())] == 0
        assert got[("trios3_requests_in_flight", ())] == 0
        # Nothing secret in it: no key material, no credentials, no object names.
        for secret in (endpoint.secret_key, endpoint.master_key, endpoint.access_key, bucket):
            assert secret not in text
    finally:
        stop_process(process)
        log.close()


def test_readiness_goes_false_when_the_backend_stops(tmp_path):
    """A backend of its own (the session's must keep running)."""
    (tmp_path / "weed").mkdir()
    with running_seaweedfs(tmp_path / "weed") as weed:
        process, endpoint, log = start_proxy(weed, tmp_path)
        assert httpx.get(endpoint.url + "/readyz").status_code == 200
    try:
        response = httpx.get(endpoint.url + "/readyz", timeout=10)
        assert response.status_code == 503
        assert response.text.startswith("not ready")
        assert httpx.get(endpoint.url + "/healthz").status_code == 200  # alive all the same
    finally:
        stop_process(process)
        log.close()


def _stream_started(endpoint, bucket, key):
    client = httpx.Client(verify=False)
    request = endpoint.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    response = client.send(client.build_request("GET", request), stream=True)
    assert response.status_code == 200
    return client, response


@pytest.mark.parametrize("deadline", ["met", "missed"])
def test_sigterm_lets_streams_finish_then_exits_zero(seaweedfs, tmp_path, bucket, deadline):
    # A client that stops reading pins hypercorn's (shielded) send: past the shutdown deadline
    # it is TCP_USER_TIMEOUT (--send-timeout) that drops the connection.
    timeout = "60" if deadline == "met" else "1"
    extra = ["--shutdown-timeout", timeout, "--send-timeout", "2"]
    process, endpoint, log = start_proxy(seaweedfs, tmp_path, extra=extra)
    size = 48 * MiB
    try:
        endpoint.client().put_object(Bucket=bucket, Key="big", Body=os.urandom(size))
        client, response = _stream_started(endpoint, bucket, "big")
        chunks = response.iter_raw(64 * 1024)
        received = len(next(chunks))
        process.send_signal(signal.SIGTERM)
        if deadline == "missed":
            # The client stops reading: the deadline passes and the stream is cancelled.
            assert process.wait(timeout=30) == 0
            with pytest.raises(httpx.HTTPError):
                for chunk in chunks:
                    received += len(chunk)
            assert received < size
        else:
            for chunk in chunks:
                received += len(chunk)
            assert received == size
            assert process.wait(timeout=30) == 0
            # Once stopped, no new connection is taken.
            with pytest.raises(httpx.ConnectError):
                httpx.get(endpoint.url + "/healthz")
        client.close()
        text = (tmp_path / "proxy.log").read_text()
        assert re.search(r"op=GetObject .*status=200", text)
    finally:
        if process.poll() is None:
            stop_process(process)
        log.close()


def test_json_logs_one_line_per_request_without_secrets(seaweedfs, tmp_path, bucket):
    import json

    process, endpoint, log = start_proxy(seaweedfs, tmp_path, extra=["--log-format", "json"])
    data = os.urandom(1000)
    try:
        s3 = endpoint.client()
        s3.put_object(Bucket=bucket, Key="dir/ob ject", Body=data)
        assert s3.get_object(Bucket=bucket, Key="dir/ob ject")["Body"].read() == data
    finally:
        stop_process(process)
        log.close()
    text = (tmp_path / "proxy.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [line for line in lines if "request_id" in line]
    assert [(r["operation"], r["status"]) for r in requests] == [
        ("PutObject", 200),
        ("GetObject", 200),
    ]
    put, get = requests
    assert (put["bucket"], put["key"], put["bytes_in"]) == (bucket, "dir/ob ject", 1000)
    assert get["bytes_out"] == 1000 and get["complete"] is True
    assert len(put["request_id"]) == 16 and put["ms"] >= 0
    for secret in (endpoint.secret_key, endpoint.master_key, seaweedfs.secret_key):
        assert secret not in text
    assert data.hex()[:32] not in text


def test_connections_past_the_cap_wait_to_be_accepted(seaweedfs, tmp_path):
    import socket

    process, endpoint, log = start_proxy(seaweedfs, tmp_path, extra=["--max-connections", "2"])
    host, port = endpoint.url.removeprefix("http://").rsplit(":", 1)
    request = f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # accepted and kept alive
            held.append(sock)
        waiting = socket.create_connection((host, int(port)), timeout=10)  # in the backlog
        waiting.sendall(request)
        waiting.settimeout(1.5)
        with pytest.raises(TimeoutError):  # not accepted while two connections are open
            waiting.recv(65536)
        held.pop().close()
        waiting.settimeout(10)
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200")
        waiting.close()
    finally:
        for sock in held:
            sock.close()
        stop_process(process)
        log.close()


def test_after_sigterm_new_connections_are_refused_at_once(seaweedfs, tmp_path, bucket):
    """From the moment of SIGTERM the port refuses connections (a load balancer moves on),
    instead of taking them into a backlog where they hang until the process exits, while a
    stream in flight goes on to its end."""
    import socket
    import time

    process, endpoint, log = start_proxy(seaweedfs, tmp_path, extra=["--shutdown-timeout", "60"])
    port = int(endpoint.url.rsplit(":", 1)[1])
    size = 48 * MiB
    try:
        endpoint.client().put_object(Bucket=bucket, Key="big", Body=os.urandom(size))
        client, response = _stream_started(endpoint, bucket, "big")
        chunks = response.iter_raw(64 * 1024)
        received = len(next(chunks))
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the signal is handled asynchronously: until the port refuses
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the port still takes connections"
            time.sleep(0.01)
        assert process.poll() is None  # still running: the stream is not done
        for chunk in chunks:
            received += len(chunk)
        assert received == size
        assert process.wait(timeout=30) == 0
        client.close()
    finally:
        if process.poll() is None:
            stop_process(process)
        log.close()
