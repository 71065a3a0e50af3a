"""restic through trios3: a whole backup lifecycle against a real SeaweedFS behind the proxy.

Over plain HTTP restic (minio-go) uploads with ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: 64 KiB
chunks, each signed, with ``x-amz-decoded-content-length`` and ``Content-MD5``. Over HTTPS
it sends ``UNSIGNED-PAYLOAD``. It reads packs with Range GETs, lists with ListObjectsV2,
creates the bucket itself, and never uses multipart uploads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.clients,
    pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not on PATH"),
]

MiB = 1024 * 1024


class Restic:
    def __init__(self, endpoint, tmp_path: Path) -> None:
        bucket = "restic-" + uuid.uuid4().hex[:12]
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

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        command = ["restic", "-r", self.repo, *self.options, *args]
        result = subprocess.run(
            command,
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"restic {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
            )
        return result.stdout


def make_tree(root: Path, seed: int) -> None:
    """A few MB of mixed files: one ~20 MB, some of a few hundred KB to 2 MB, many small,
    an empty file, an empty directory and a nested directory."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(20 * MiB + 12345))
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
    """restic 0.14 restores a backed-up directory under its absolute path."""
    nested = target / source.relative_to(source.anchor)
    return nested if nested.is_dir() else target


def snapshot_ids(restic: Restic) -> list[str]:
    return [s["id"] for s in json.loads(restic("snapshots", "--json"))]


def assert_restores(restic: Restic, source: Path, target: Path) -> None:
    restic("restore", "latest", "--target", str(target))
    restored = restored_root(target, source)
    expected, got = snapshot_of(source), snapshot_of(restored)
    assert sorted(got) == sorted(expected)
    for rel, data in expected.items():
        assert got[rel] == data, f"{rel} differs after restore"


def test_restic_lifecycle_over_http(proxy, tmp_path):
    """init, backup, changed backup, check --read-data, restore, forget --prune, check."""
    restic = Restic(proxy, tmp_path)
    source = tmp_path / "source"
    make_tree(source, seed=1)

    restic("init")
    restic("backup", str(source))
    change_tree(source, seed=2)
    restic("backup", str(source))
    assert len(snapshot_ids(restic)) == 2

    restic("check", "--read-data")
    assert_restores(restic, source, tmp_path / "restore")

    restic("forget", "--keep-last", "1", "--prune")
    ids = snapshot_ids(restic)
    assert len(ids) == 1
    assert ids[0][:8] in restic("snapshots")
    restic("check", "--read-data")
    assert_restores(restic, source, tmp_path / "restore-after-prune")


def test_restic_backup_check_restore_over_https(tls_proxy, tmp_path):
    restic = Restic(tls_proxy, tmp_path)
    source = tmp_path / "source"
    make_tree(source, seed=3)

    restic("init")
    restic("backup", str(source))
    change_tree(source, seed=4)
    restic("backup", str(source))
    restic("check", "--read-data")
    assert_restores(restic, source, tmp_path / "restore")
    restic("forget", "--keep-last", "1", "--prune")
    assert len(snapshot_ids(restic)) == 1
    restic("check")
