"""restic through trios3: a whole backup lifecycle against a real SeaweedFS behind the proxy,
with Debian bookworm's restic 0.14 (``restic`` on PATH, from scripts/setup-dev.sh), Debian
trixie's 0.18 (``.clients/bin/restic-0.18``) and the newest release installable here, Debian
sid's (``.clients/bin/restic-newest``, 0.19.1 when written; both from
scripts/install-clients.sh), each over HTTP and over HTTPS (``--cacert``).

Over plain HTTP restic (minio-go) uploads with ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: 64 KiB
chunks, each signed, with ``x-amz-decoded-content-length`` and ``Content-MD5``. Over HTTPS
it sends ``UNSIGNED-PAYLOAD``. It reads packs with Range GETs, lists with ListObjectsV2,
creates the bucket itself, and never uses multipart uploads. Every command but ``list locks
--no-lock`` writes a lock file (``locks/<id>``) first and deletes it at the end; a lock whose
process is gone is stale, and ``restic unlock`` removes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
BINARIES = {
    "restic-0.14": shutil.which("restic"),  # Debian bookworm's
    "restic-0.18": str(REPO / ".clients" / "bin" / "restic-0.18"),  # Debian trixie's
    "restic-newest": str(REPO / ".clients" / "bin" / "restic-newest"),  # Debian sid's
}
MiB = 1024 * 1024


@pytest.fixture(scope="module", params=sorted(BINARIES))
def binary(request) -> str:
    path = BINARIES[request.param]
    if path is None or not os.access(path, os.X_OK):
        where = "setup-dev.sh" if request.param == "restic-0.14" else "install-clients.sh"
        pytest.skip(f"{request.param} is not installed (scripts/{where})")
    return path


class Restic:
    def __init__(self, binary: str, endpoint, tmp_path: Path) -> None:
        bucket = "restic-" + uuid.uuid4().hex[:12]
        self.binary = binary
        self.repo = f"s3:{endpoint.url}/{bucket}"
        self.bucket = bucket
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RESTIC_"))}
        env.update(
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
            RESTIC_PASSWORD="correct horse battery staple",
            RESTIC_CACHE_DIR=str(tmp_path / "restic-cache"),
        )
        self.env = env
        self.options = ["--cacert", endpoint.ca_bundle] if endpoint.url.startswith("https") else []

    def command(self, *args: str) -> list[str]:
        return [self.binary, "-r", self.repo, *self.options, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"restic {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
            )
        return result

    def __call__(self, *args: str) -> str:
        return self.run(*args).stdout

    def locks(self) -> list[str]:
        return self("list", "locks", "--no-lock").split()


@pytest.fixture
def restic(binary, endpoint, tmp_path) -> Restic:
    return Restic(binary, endpoint, tmp_path)


def make_tree(root: Path, seed: int) -> None:
    """A few MB of mixed files: one of 16 MiB and a bit (a whole pack and more), some of a few
    hundred KB to 2 MB, many small, an empty file, an empty directory and a nested directory."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(16 * MiB + 12345))
    for i in range(4):
        (root / f"medium-{i}.bin").write_bytes(rng.randbytes(rng.randint(300_000, 2 * MiB)))
    nested = root / "docs" / "nested" / "deeper"
    nested.mkdir(parents=True)
    for i in range(40):
        folder = [root, root / "docs", root / "docs" / "nested", nested][i % 4]
        (folder / f"small-{i:02d}.txt").write_bytes(rng.randbytes(rng.randint(1, 8000)))
    (root / "empty.txt").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "docs" / "readme.md").write_text("# restic through trios3\n" * 50)


def change_tree(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    (root / "medium-1.bin").write_bytes(rng.randbytes(1_500_000))
    (root / "docs" / "small-01.txt").write_text("changed\n")
    with open(root / "big.bin", "r+b") as f:
        f.seek(10 * MiB)
        f.write(rng.randbytes(4096))
    (root / "docs" / "nested" / "small-02.txt").unlink()
    (root / "docs" / "nested" / "new.bin").write_bytes(rng.randbytes(70_000))


def snapshot_of(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (as None), by relative path."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


def restored_root(target: Path, source: Path) -> Path:
    """restic restores a backed-up directory under its absolute path."""
    nested = target / source.relative_to(source.anchor)
    return nested if nested.is_dir() else target


def snapshots(restic: Restic) -> list[dict]:
    return json.loads(restic("snapshots", "--json"))


def assert_restores(restic: Restic, source: Path, target: Path) -> None:
    restic("restore", "latest", "--target", str(target))
    restored = restored_root(target, source)
    expected, got = snapshot_of(source), snapshot_of(restored)
    assert sorted(got) == sorted(expected)
    for rel, data in expected.items():
        assert got[rel] == data, f"{rel} differs after restore"


def assert_ls_lists(restic: Restic, source: Path) -> None:
    """``restic ls --json latest``: every file and directory of the tree, with its size."""
    entries = [json.loads(line) for line in restic("ls", "--json", "latest").splitlines()]
    nodes = {e["path"]: e for e in entries if e.get("struct_type") == "node"}
    for path in [source, *source.rglob("*")]:
        node = nodes.get(str(path))
        assert node is not None, f"{path} missing from restic ls"
        if path.is_file():
            assert (node["type"], node["size"]) == ("file", path.stat().st_size), path
        else:
            assert node["type"] == "dir", path


def assert_locks_work(restic: Restic) -> None:
    """A backup reading from a silent stdin holds its (shared) lock; an exclusive command fails
    with "already locked"; the backup killed, its lock stays until ``restic unlock``."""
    holder = subprocess.Popen(
        restic.command("backup", "--stdin", "--stdin-filename", "held.txt"),
        env=restic.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not restic.locks():
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "restic backup --stdin took no lock"
            time.sleep(0.2)
        lock = restic.locks()
        assert len(lock) == 1, lock
        info = json.loads(restic("cat", "lock", lock[0], "--no-lock"))
        assert info["pid"] == holder.pid, info
        assert info["exclusive"] is False, info

        refused = restic.run("prune", check=False)
        assert refused.returncode != 0
        assert "already locked" in refused.stderr, refused.stderr

        # Still running and not stale: unlock keeps it.
        restic("unlock")
        assert restic.locks() == lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # The holder is gone: its lock is stale, and unlock removes it.
    assert restic.locks() == lock
    restic("unlock")
    assert restic.locks() == []


def test_restic_lifecycle(restic, tmp_path):
    """init, backup, changed backup, snapshots, ls, check --read-data, restore, locks,
    forget --prune, check --read-data."""
    source = tmp_path / "source"
    make_tree(source, seed=1)

    restic("init")
    restic("backup", str(source))
    change_tree(source, seed=2)
    second = restic("backup", str(source))
    # Incremental: only the new and changed files are read again.
    assert re.search(r"Files:\s+1 new,\s+3 changed,\s+43 unmodified", second), second
    found = snapshots(restic)
    assert len(found) == 2
    assert all(s["paths"] == [str(source)] for s in found), found
    assert found[0]["short_id"] in restic("snapshots")

    assert_ls_lists(restic, source)
    restic("check", "--read-data")
    assert_restores(restic, source, tmp_path / "restore")
    assert_locks_work(restic)

    restic("forget", "--keep-last", "1", "--prune")
    kept = snapshots(restic)
    assert [s["id"] for s in kept] == [found[-1]["id"]]
    restic("check", "--read-data")
    assert_restores(restic, source, tmp_path / "restore-after-prune")
