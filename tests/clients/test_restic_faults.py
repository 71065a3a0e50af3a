"""restic through trios3 while the backend, then the proxy itself, crash and come back.

Debian's restic (``restic`` on PATH, 0.14, from scripts/setup-dev.sh) backs up a tree of
~64 MiB of incompressible files through a ``trios3 serve`` in front of a SeaweedFS of its own
(``harness.start_seaweedfs`` on ports outside the ephemeral range, so that it can be started
again where it was). Its uploads are slowed (``--limit-upload``) so that a backup takes a few
seconds. Midway through the first backup (a pack stored, a request in flight, restic still
running) SeaweedFS is SIGKILLed and started again on the same data and ports; midway through
a second backup (the tree grown by ~40 MiB) the proxy is SIGKILLed and started again on its
port, with the same master key and client credentials. Each time restic rides it out with its
retries or fails, and a failed backup is run again. The crashes must have been felt (the proxy
refused requests while SeaweedFS was down; the second backup's snapshot was stored through the
proxy started again). After each: ``restic check --read-data`` reads every pack back through
the proxy and finds no error, a restore is byte-identical to the tree, and the proxy logged no
unexpected exception and ends idle.

What it shows: no acknowledged write is lost by a backend crash, nothing a crash leaves
behind (a pack half uploaded, a request cut) is ever read back as data, and a proxy restarted
with its keys serves what the one before it stored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Endpoint, Proxy, reserved_ports, start_proxy, start_seaweedfs
from trios3.embedded import PORT_OPTIONS

pytestmark = pytest.mark.clients

RESTIC = shutil.which("restic")  # Debian bookworm's 0.14
MiB = 1024 * 1024
TREE = 64 * MiB
WAIT = 120  # seconds any one wait below may take at most
RECEIVED = "trios3_received_bytes_total"
PACK = 16 * MiB  # restic 0.14's pack size
# restic's uploads, in KiB/s: a backup takes seconds, so "midway" is not a matter of
# milliseconds (the crash is still triggered by bytes received, not by time).
LIMIT = str(12 * 1024)


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


def make_tree(root: Path, seed: int, size: int) -> None:
    """``size`` bytes of random files: a few of several MiB (packs of their own), many of a
    few hundred KiB, some tiny, in nested directories."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    left = size
    for i in range(4):
        (root / f"big-{seed}-{i}.bin").write_bytes(rng.randbytes(size // 8 + i * 4099))
        left -= size // 8 + i * 4099
    folders = [root / f"dir-{seed}", root / f"dir-{seed}" / "nested", root]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    i = 0
    while left > 0:
        n = min(left, rng.randint(1, 600_000) if i % 5 else rng.randint(0, 300))
        (folders[i % 3] / f"file-{seed}-{i:03d}.bin").write_bytes(rng.randbytes(n))
        left -= n
        i += 1


def snapshot_of(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (as None), by relative path."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


def samples(endpoint: Endpoint) -> dict[str, float]:
    """The proxy's unlabelled samples (an empty dict while it does not answer)."""
    try:
        text = httpx.get(endpoint.url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


class Restic:
    """restic with a clean environment (no AWS_* or RESTIC_* of the machine's, so no
    AWS_CA_BUNDLE), against a repository in a bucket of the proxy's."""

    def __init__(self, endpoint: Endpoint, tmp_path: Path) -> None:
        assert RESTIC is not None
        self.repo = f"s3:{endpoint.url}/restic-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RESTIC_"))}
        env.update(
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
            RESTIC_PASSWORD="correct horse battery staple",
            RESTIC_CACHE_DIR=str(tmp_path / "restic-cache"),
        )
        self.env = env
        self.logs = tmp_path / "restic-logs"
        self.logs.mkdir()
        self.runs = 0

    def start(self, *args: str) -> tuple[subprocess.Popen, Path]:
        """restic ``args`` running, its output in a file of its own (never a pipe that fills)."""
        self.runs += 1
        command = next(arg for arg in args if not arg.startswith("-") and not arg.isdigit())
        log = self.logs / f"{self.runs:02d}-{command}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [RESTIC, "-r", self.repo, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def run(self, *args: str, check: bool = True) -> tuple[int, str]:
        process, log = self.start(*args)
        code = process.wait(timeout=600)
        output = log.read_text(errors="replace")
        if check and code != 0:
            raise AssertionError(f"restic {' '.join(args)} exited {code}\n{output[-4000:]}")
        return code, output


def crash_midway(
    endpoint: Endpoint, restic: subprocess.Popen, received: float, kill: Callable[[], None]
) -> None:
    """Once the proxy has taken ``received`` request body bytes in all (counted as requests
    end: a whole pack) and has a request in flight, ``kill()``: restic must still be running."""

    def midway() -> bool:
        if restic.poll() is not None:
            return True  # too late: failed below
        got = samples(endpoint)
        return bool(got) and got[RECEIVED] >= received and got["trios3_requests_in_flight"] >= 1

    until(midway, f"restic midway through its backup ({received} bytes received)")
    assert restic.poll() is None, "restic finished its backup before the crash"
    kill()


def backup_through(
    restic: Restic, source: Path, crash: Callable[[subprocess.Popen], None]
) -> list[int]:
    """``restic backup source`` (its uploads slowed to LIMIT, so that its midway lasts) with
    ``crash(process)`` called while it runs; run again if it failed. The exit codes."""
    process, log = restic.start("--limit-upload", LIMIT, "backup", str(source))
    try:
        crash(process)
        first = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    codes = [first]
    if first != 0:
        print(f"restic backup failed ({first}) after the crash:\n{log.read_text()[-2000:]}")
        codes.append(restic.run("backup", str(source))[0])
    return codes


def assert_intact(restic: Restic, source: Path, target: Path) -> None:
    """``check --read-data`` finds no error and the latest snapshot restores byte-identical."""
    code, output = restic.run("check", "--read-data", check=False)
    if code != 0 and "already locked" in output:
        # A backup that failed while its backend was down could not remove its lock; the
        # process is gone, so the lock is stale.
        restic.run("unlock")
        code, output = restic.run("check", "--read-data", check=False)
    assert code == 0, output[-4000:]
    assert "no errors were found" in output, output[-4000:]
    restic.run("restore", "latest", "--target", str(target))
    restored = target / source.relative_to(source.anchor)
    expected, got = snapshot_of(source), snapshot_of(restored)
    assert sorted(got) == sorted(expected)
    for rel, data in expected.items():
        assert got[rel] == data, f"{rel} differs after restore"


def assert_clean(proxy: Proxy) -> None:
    """The proxy ends idle and never logged an unexpected exception."""
    until(
        lambda: (
            (got := samples(proxy.endpoint))
            and (got["trios3_requests_in_flight"], got["trios3_budget_in_use_bytes"]) == (0, 0)
        ),
        "the proxy idle",
    )
    assert "Traceback" not in proxy.log_path.read_text(errors="replace")


@pytest.mark.skipif(RESTIC is None, reason="restic is not installed (scripts/setup-dev.sh)")
def test_restic_survives_the_backend_then_the_proxy_being_killed_mid_backup(tmp_path):
    ports = dict(zip(PORT_OPTIONS, reserved_ports(len(PORT_OPTIONS)), strict=True))
    weed = start_seaweedfs(tmp_path / "weed", ports=ports)
    (tmp_path / "proxy").mkdir()
    proxies = [start_proxy(weed.endpoint, tmp_path / "proxy", port=reserved_ports(1)[0])]
    try:
        endpoint = proxies[0].endpoint
        restic = Restic(endpoint, tmp_path)
        source = tmp_path / "source"
        make_tree(source, seed=1, size=TREE)
        restic.run("init")

        def kill_backend() -> None:
            nonlocal weed
            weed.kill()
            began = time.monotonic()
            weed = weed.restart()
            print(f"SeaweedFS started again in {time.monotonic() - began:.1f} s")

        def first_crash(process: subprocess.Popen) -> None:
            crash_midway(endpoint, process, PACK, kill_backend)

        codes = backup_through(restic, source, first_crash)
        print(f"first backup, SeaweedFS killed midway: restic exited {codes}")
        assert codes[-1] == 0
        # The crash was felt: requests came while the backend was down, and were refused.
        assert "status=503" in proxies[0].log_path.read_text()
        assert_intact(restic, source, tmp_path / "restore-1")
        assert_clean(proxies[-1])

        make_tree(source, seed=2, size=TREE * 5 // 8)
        baseline = samples(endpoint)[RECEIVED]

        def kill_proxy() -> None:
            killed = proxies[-1]
            killed.process.kill()
            killed.process.wait()
            killed.log.close()
            proxies.append(
                start_proxy(
                    weed.endpoint,
                    tmp_path / "proxy",
                    port=int(endpoint.url.rsplit(":", 1)[1]),
                    master_key=endpoint.master_key,
                    env={"TRIOS3_SECRET_ACCESS_KEY": endpoint.secret_key},
                    log_path=tmp_path / "proxy" / f"proxy-{len(proxies)}.log",
                )
            )

        def second_crash(process: subprocess.Popen) -> None:
            crash_midway(endpoint, process, baseline + PACK, kill_proxy)

        codes = backup_through(restic, source, second_crash)
        print(f"second backup, the proxy killed midway: restic exited {codes}")
        assert codes[-1] == 0
        # The backup ended through the proxy started again: its snapshot was stored there.
        assert "key='snapshots/" in proxies[-1].log_path.read_text()
        assert len(json.loads(restic.run("snapshots", "--json")[1])) >= 2
        assert_intact(restic, source, tmp_path / "restore-2")
        assert_clean(proxies[-1])
        assert "Traceback" not in proxies[0].log_path.read_text(errors="replace")
    finally:
        for proxy in proxies:
            if proxy.process.poll() is None:
                proxy.stop()
        if weed.process.poll() is None:
            weed.stop()
