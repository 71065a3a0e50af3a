"""rclone through trios3, over HTTP and over HTTPS with --ca-cert: Debian bookworm's 1.60.1
(``rclone`` on PATH) and the newest in Debian sid (``.clients/bin/rclone-newest``, 1.75.2 when
written, from scripts/install-clients.sh).

rclone is configured by environment variables alone (provider Other, path style, us-east-1)
with an empty private config file. Above ``--s3-upload-cutoff`` it uploads with multipart
uploads: here a cutoff and chunk size of 5 MiB and a file of a little over 12 MiB make three
parts, the last one short. Small files are single PUTs with ``UNSIGNED-PAYLOAD`` and
``Content-MD5``; every upload carries the modification time in ``x-amz-meta-mtime`` and
multipart uploads the whole file's MD5 in ``x-amz-meta-md5chksum``. The proxy seals either MD5
into the object (format versions 3 and 4) and gives it back on HEAD as ``x-amz-meta-md5chksum``. rclone lists with
ListObjects v1, HEADs objects, and reads ``cat --offset --count`` with a Range GET.

The machine sets ``AWS_CA_BUNDLE``, with which rclone 1.60 fails every command
(``LoadCustomCABundleError``): every ``AWS_*`` and ``RCLONE_*`` variable is dropped.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import scratch_bucket

pytestmark = pytest.mark.clients

REPO = Path(__file__).resolve().parents[2]
BINARIES = {
    "rclone-1.60": shutil.which("rclone"),  # Debian bookworm's, from scripts/setup-dev.sh
    "rclone-newest": str(REPO / ".clients" / "bin" / "rclone-newest"),  # install-clients.sh
}

MiB = 1024 * 1024
BIG = 12 * MiB + 4321  # 5 MiB + 5 MiB + a short last part
REMOTE = "trios3"
MULTIPART = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"]


class Rclone:
    """Runs ``rclone`` against one endpoint with a clean environment and no config file."""

    def __init__(self, binary: str, endpoint, config_dir: Path) -> None:
        self.binary = binary
        config_dir.mkdir(exist_ok=True)
        config = config_dir / "rclone.conf"
        config.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
        env.update(
            {
                "RCLONE_CONFIG": str(config),
                "RCLONE_CACHE_DIR": str(config_dir / "cache"),
                "TZ": "UTC",
                prefix + "TYPE": "s3",
                prefix + "PROVIDER": "Other",
                prefix + "ENV_AUTH": "false",
                prefix + "ACCESS_KEY_ID": endpoint.access_key,
                prefix + "SECRET_ACCESS_KEY": endpoint.secret_key,
                prefix + "ENDPOINT": endpoint.url,
                prefix + "REGION": "us-east-1",
                prefix + "FORCE_PATH_STYLE": "true",
            }
        )
        self.env = env
        # Fail fast and plainly: rclone otherwise retries a failing command 3 x 10 times.
        self.options = ["--retries", "1", "--low-level-retries", "2"]
        if endpoint.url.startswith("https"):
            self.options += ["--ca-cert", endpoint.ca_bundle]

    def run(self, *args: str, check: bool = True, text: bool = True):
        result = subprocess.run(
            [self.binary, *args, *self.options],
            env=self.env,
            capture_output=True,
            text=text,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            stderr = result.stderr if text else result.stderr.decode(errors="replace")
            raise AssertionError(
                f"rclone {' '.join(args)} exited {result.returncode}\nstderr: {stderr[-6000:]}"
            )
        return result


@pytest.fixture(scope="module", params=sorted(BINARIES))
def binary(request) -> str:
    path = BINARIES[request.param]
    if path is None or not os.access(path, os.X_OK):
        where = "setup-dev.sh" if request.param == "rclone-1.60" else "install-clients.sh"
        pytest.skip(f"{request.param} is not installed (scripts/{where})")
    return path


@pytest.fixture
def rclone(binary, endpoint, tmp_path) -> Rclone:
    return Rclone(binary, endpoint, tmp_path / "rclone")


@pytest.fixture
def remote_bucket(seaweedfs) -> str:
    yield from scratch_bucket(seaweedfs, "rclone")


def write_tree(root: Path, *, big: bool) -> None:
    """Small files in nested directories, an empty file, and (with ``big``) one multipart file.
    Modification times are set in the past with nanoseconds, to see them kept exactly."""
    rng = random.Random(7)
    files = {
        "a.txt": rng.randbytes(1234),
        "empty": b"",
        "sub/b.bin": rng.randbytes(70_000),
        "sub/deeper/c.txt": rng.randbytes(17),
        "sub/deeper/d.bin": rng.randbytes(300_001),
    }
    if big:
        files["sub/big.bin"] = rng.randbytes(BIG)
    base = 1_700_000_000_000_000_000
    for i, (rel, data) in enumerate(sorted(files.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mtime_ns = base + i * 86_400_000_000_000 + 123_456_789 + i
        os.utime(path, ns=(mtime_ns, mtime_ns))


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def rfc3339_ns(text: str) -> int:
    """rclone's RFC 3339 time (nanoseconds, any zone) as nanoseconds since the epoch."""
    match = _RFC3339.match(text)
    assert match, text
    whole, fraction, zone = match.groups()
    seconds = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return int(seconds.timestamp()) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def final_stats(stderr: str) -> dict:
    """The last ``stats`` object in rclone's ``--use-json-log`` output."""
    stats = None
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "stats" in entry:
            stats = entry["stats"]
    assert stats is not None, stderr
    return stats


@pytest.fixture
def uploaded(rclone, remote_bucket, tmp_path):
    """A tree with a three-part file, copied to the proxy; returns (local root, remote path)."""
    src = tmp_path / "src"
    write_tree(src, big=True)
    target = f"{REMOTE}:{remote_bucket}/tree"
    copied = rclone.run("copy", str(src), target, *MULTIPART, "-vv")
    # 1.60 logs "starting chunk 1 size 5Mi", newer ones "wrote chunk 1 with 5242880 bytes".
    chunks = re.findall(
        r"big\.bin: multipart upload (?:starting|wrote) chunk (\d+) (?:size|with) (\S+)",
        copied.stderr,
    )
    sizes = {"5Mi": 5 * MiB, "2.004Mi": BIG - 10 * MiB}
    got = sorted((int(n), sizes.get(size) or int(size)) for n, size in chunks)
    assert got == [(1, 5 * MiB), (2, 5 * MiB), (3, BIG - 10 * MiB)], copied.stderr[-6000:]
    return src, target


def test_small_tree_copy_check_and_back(rclone, remote_bucket, tmp_path):
    """No multipart here: single PUTs only."""
    src = tmp_path / "src"
    write_tree(src, big=False)
    target = f"{REMOTE}:{remote_bucket}/small"
    rclone.run("copy", str(src), target, *MULTIPART)
    # Every hash compared: rclone's Content-MD5, sealed by the proxy, comes back on HEAD.
    assert_in_sync(rclone, src, target)
    back = tmp_path / "back"
    rclone.run("copy", target, str(back))
    assert tree(back) == tree(src)


def test_check_finds_a_changed_file_of_the_same_size(rclone, remote_bucket, tmp_path):
    """The hashes are really compared: same size, same modification time, other bytes."""
    src = tmp_path / "src"
    write_tree(src, big=False)
    target = f"{REMOTE}:{remote_bucket}/changed"
    rclone.run("copy", str(src), target, *MULTIPART)
    changed = src / "sub/b.bin"
    stat = changed.stat()
    data = bytearray(changed.read_bytes())
    data[1000] ^= 1
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    checked = rclone.run("check", str(src), target, check=False)
    assert checked.returncode != 0, checked.stderr
    assert "1 differences found" in checked.stderr, checked.stderr
    assert "sub/b.bin: md5 differ" in checked.stderr, checked.stderr


def assert_in_sync(rclone, src: Path, target: str) -> None:
    """Listed sizes are the local ones, and ``rclone check`` compares every file's size and
    MD5 (none "could not be checked") and finds no difference."""
    listing = json.loads(rclone.run("lsjson", "-R", "--files-only", target).stdout)
    assert {e["Path"]: e["Size"] for e in listing} == {
        rel: len(data) for rel, data in tree(src).items()
    }
    checked = rclone.run("check", str(src), target)
    assert "0 differences found" in checked.stderr, checked.stderr
    assert "could not be checked" not in checked.stderr, checked.stderr
    assert f"{len(tree(src))} matching files" in checked.stderr, checked.stderr


def test_copy_with_multipart_then_check_finds_no_differences(rclone, uploaded):
    src, target = uploaded
    assert_in_sync(rclone, src, target)
    # The same again comparing the contents byte for byte.
    downloaded = rclone.run("check", "--download", str(src), target)
    assert "0 differences found" in downloaded.stderr, downloaded.stderr


def test_second_sync_transfers_nothing(rclone, uploaded):
    src, target = uploaded
    again = rclone.run("sync", str(src), target, *MULTIPART, "-v", "--use-json-log")
    stats = final_stats(again.stderr)
    assert stats["transfers"] == 0, stats
    assert stats["bytes"] == 0, stats
    assert stats["errors"] == 0, stats
    assert stats["deletes"] == 0, stats


def test_sync_uploads_changes_and_deletes_what_is_gone(rclone, uploaded):
    src, target = uploaded
    (src / "sub/deeper/c.txt").unlink()
    (src / "a.txt").write_bytes(b"changed, and of another size")
    (src / "sub/new.bin").write_bytes(random.Random(8).randbytes(54_321))
    synced = rclone.run("sync", str(src), target, *MULTIPART, "-v", "--use-json-log")
    stats = final_stats(synced.stderr)
    assert (stats["transfers"], stats["deletes"], stats["errors"]) == (2, 1, 0), stats
    assert_in_sync(rclone, src, target)


def test_no_md5_reaches_the_backend_in_the_clear(uploaded, seaweedfs, remote_bucket):
    """rclone's MD5s (Content-MD5 on single PUTs, md5chksum on multipart uploads) are
    fingerprints of the plaintext: the backend holds them sealed (versions 3 and 4) only."""
    src, _ = uploaded
    backend = seaweedfs.client()
    md5s = {
        form
        for data in tree(src).values()
        for form in (
            hashlib.md5(data).hexdigest(),
            base64.b64encode(hashlib.md5(data).digest()).decode(),
        )
    }
    listed = backend.list_objects_v2(Bucket=remote_bucket, Prefix="tree/")["Contents"]
    assert len(listed) == len(tree(src))
    for entry in listed:
        meta = backend.head_object(Bucket=remote_bucket, Key=entry["Key"])["Metadata"]
        expected = "4" if entry["Key"].endswith("big.bin") else "3"
        assert meta["trios3-v"] == expected, (entry["Key"], meta)
        assert "md5chksum" not in meta
        assert not [form for form in md5s if form in str(meta)], meta


def test_cat_offset_count_returns_the_plaintext_slice(rclone, uploaded):
    src, target = uploaded
    data = (src / "sub/big.bin").read_bytes()
    for offset, count in [
        (5 * MiB - 1000, 3000),  # across the first part boundary
        (10 * MiB - 1, 2),  # across the second, into the short last part
        (BIG - 4321 - 100, 4321 + 100),  # the short last part to its end
        (123, 77),
    ]:
        out = rclone.run(
            "cat",
            "--offset",
            str(offset),
            "--count",
            str(count),
            f"{target}/sub/big.bin",
            text=False,
        )
        assert out.stdout == data[offset : offset + count], (offset, count)


def test_download_back_is_byte_identical(rclone, uploaded, tmp_path):
    src, target = uploaded
    back = tmp_path / "back"
    rclone.run("copy", target, str(back), *MULTIPART)
    assert tree(back) == tree(src)
    # And the whole multipart object streamed to stdout.
    whole = rclone.run("cat", f"{target}/sub/big.bin", text=False)
    assert whole.stdout == (src / "sub/big.bin").read_bytes()


def test_modtimes_are_kept(rclone, uploaded):
    src, target = uploaded
    listing = json.loads(rclone.run("lsjson", "-R", "--files-only", target).stdout)
    got = {entry["Path"]: rfc3339_ns(entry["ModTime"]) for entry in listing}
    expected = {rel: (src / rel).stat().st_mtime_ns for rel in tree(src)}
    assert got == expected


def test_server_side_copy_of_multipart_object(rclone, uploaded):
    """Above ``--s3-copy-cutoff`` rclone copies on the server with UploadPartCopy."""
    src, target = uploaded
    copied = rclone.run(
        "copyto",
        f"{target}/sub/big.bin",
        f"{target}-copy/big.bin",
        "--s3-copy-cutoff",
        "5M",
        "-vv",
    )
    assert "Starting  multipart copy with 3 parts" in copied.stderr, copied.stderr[-6000:]
    assert "Copied (server-side copy)" in copied.stderr, copied.stderr[-6000:]
    whole = rclone.run("cat", f"{target}-copy/big.bin", text=False)
    assert whole.stdout == (src / "sub/big.bin").read_bytes()
    listing = json.loads(rclone.run("lsjson", f"{target}-copy/big.bin").stdout)
    assert [e["Size"] for e in listing] == [BIG]
    assert rfc3339_ns(listing[0]["ModTime"]) == (src / "sub/big.bin").stat().st_mtime_ns
    hashed = rclone.run("md5sum", f"{target}-copy/big.bin").stdout
    assert hashed.split() == [
        hashlib.md5((src / "sub/big.bin").read_bytes()).hexdigest(),
        "big.bin",
    ]
