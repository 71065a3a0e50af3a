"""Every way a request can end, for every operation that streams, through the real ASGI app.

The matrix: operations {GET, ranged GET, PUT, copy of an encrypted source (server-side), copy
of a foreign source (streamed GET -> encrypt -> PUT through the proxy, under a budget lease),
GET and ranged GET of a multipart object (the range crossing its part boundary), UploadPart}
x exits {completes, client disconnects before the first body byte / after the first body
message / mid-stream / while queued for the budget, backend error mid-stream, backend hangs,
server shutdown}. After each exit: the budget is back to zero with no waiters, no backend
connection is busy, the app call and every task it started have returned, the counters moved
as they should, and a later PUT + GET through the same app still works. A write that did not
complete stored nothing: no object, or for UploadPart no part in the backend upload (which
then still takes the part and completes).

Each request is played by :class:`inprocess.AsgiCall` as hypercorn would, which also owns the
cancel scope the app runs in (a server shutdown cancels it) and closes the response channel
when the app returns (a client reading sees the connection end). Backend
failures come from :mod:`fake_backend`, which forwards to the real SeaweedFS and misbehaves on
one scripted request (for a multipart GET, which reads its object several times, on the read
of the data window). Real sockets everywhere, so the real clock under ``trio.fail_after``.

Cells that cannot occur are left out where they would be, with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from fake_backend import FakeBackend, fake_backend
from inprocess import (
    PIECE,
    AsgiCall,
    Observed,
    backend_settings,
    busy_connections,
    feed,
    live_tasks,
    open_call,
    proxy_app,
    raw_request,
    served,
)

from harness import scratch_bucket
from trios3.app import S3Proxy
from trios3.backend import Backend, open_backend
from trios3.core import format as fmt
from trios3.core import multipart as mp
from trios3.core import sigv4
from trios3.core.s3xml import parse_initiate_result, parse_list_parts
from trios3.ops.streaming import UNITS, copy_cost, read_cost

pytestmark = pytest.mark.integration

SIZE = 2 * 1024 * 1024  # 16 body messages of one 128 KiB segment each
SEGMENT = fmt.DEFAULT_SEGMENT_SIZE
# What a GET and a copy of a foreign source lease with the smallest unit (the tests' apps
# have a budget that fits no larger one): the budget a stream holds while it runs.
WINDOW = read_cost(SEGMENT)(UNITS[-1])
FOREIGN_COPY_LEASE = copy_cost(SEGMENT)(UNITS[-1])
RANGE = (200_000, 1_500_000)
MiB = 1024 * 1024
PARTS = (5 * MiB, 1 * MiB)  # the multipart object's part sizes
MULTIPART_RANGE = (4_000_000, 6_000_000)  # crosses the part boundary at 5 MiB
# How many times a multipart GET reads its object before the data window, and in all. A whole
# GET streams its data from its first read (the first part's header is its first bytes) and
# reads the last part's header apart; a ranged GET reads a first window (which shows the
# format), then the first and the last part's headers, then the data (docs/FORMAT.md).
DATA_WINDOW = {"get_multipart": 0, "range_multipart": 3}
READS = {"get_multipart": 2, "range_multipart": 4}
OPS = [
    "get",
    "range",
    "put",
    "copy_encrypted",
    "copy_foreign",
    "get_multipart",
    "range_multipart",
    "upload_part",
]
MULTIPART_GETS = ["get_multipart", "range_multipart"]
STREAMED_GETS = ["get", "range", *MULTIPART_GETS]
UPLOADS = ["put", "upload_part"]  # the ops whose client sends a body


# -- requests and checks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A multipart upload created through the proxy."""

    bucket: str
    key: str
    upload_id: str  # the proxy's UploadId

    @property
    def path(self) -> str:
        return f"/{self.bucket}/{self.key}"

    def part_query(self, number: int) -> list[tuple[str, str]]:
        return [("partNumber", str(number)), ("uploadId", self.upload_id)]


@dataclass
class Objects:
    bucket: str
    encrypted: str  # put through the proxy
    foreign: str  # put straight into SeaweedFS
    data: bytes
    foreign_data: bytes
    multipart: str  # uploaded in PARTS through the proxy (shared by the module's tests)
    multipart_data: bytes
    upload: Upload  # open, no parts yet: where an UploadPart puts its part 1 (``data``)


def request_for(op: str, objects: Objects, target: str) -> tuple[str, str, list, dict]:
    """(method, path, headers, signing options) of ``op``; ``target`` is a PUT's or a copy's
    destination key."""
    bucket = objects.bucket
    if op == "get":
        return "GET", f"/{bucket}/{objects.encrypted}", [], {}
    if op == "range":
        return (
            "GET",
            f"/{bucket}/{objects.encrypted}",
            [("range", f"bytes={RANGE[0]}-{RANGE[1]}")],
            {},
        )
    if op == "get_multipart":
        return "GET", f"/{bucket}/{objects.multipart}", [], {}
    if op == "range_multipart":
        first, last = MULTIPART_RANGE
        return "GET", f"/{bucket}/{objects.multipart}", [("range", f"bytes={first}-{last}")], {}
    if op == "put":
        headers = [("content-length", str(SIZE))]
        return "PUT", f"/{bucket}/{target}", headers, {"payload_hash": sigv4.UNSIGNED_PAYLOAD}
    if op == "upload_part":
        headers = [("content-length", str(SIZE))]
        sign = {"payload_hash": sigv4.UNSIGNED_PAYLOAD, "query": objects.upload.part_query(1)}
        return "PUT", objects.upload.path, headers, sign
    source = objects.encrypted if op == "copy_encrypted" else objects.foreign
    return "PUT", f"/{bucket}/{target}", [("x-amz-copy-source", f"/{bucket}/{source}")], {}


def expected_body(op: str, objects: Objects) -> bytes:
    if op == "range":
        return objects.data[RANGE[0] : RANGE[1] + 1]
    if op == "get_multipart":
        return objects.multipart_data
    if op == "range_multipart":
        return objects.multipart_data[MULTIPART_RANGE[0] : MULTIPART_RANGE[1] + 1]
    return objects.foreign_data if op == "copy_foreign" else objects.data


def get_status(op: str) -> int:
    return 206 if op in ("range", "range_multipart") else 200


def backend_request(op: str, objects: Objects, target: str) -> tuple[str, str, int]:
    """(method, path, matching requests to let through first) of the backend request whose
    failure a cell is about: the streamed source read, or the upload."""
    bucket = objects.bucket
    if op in ("get", "range"):
        return "GET", f"/{bucket}/{objects.encrypted}", 0
    if op in MULTIPART_GETS:
        return "GET", f"/{bucket}/{objects.multipart}", DATA_WINDOW[op]
    if op == "copy_foreign":
        return "GET", f"/{bucket}/{objects.foreign}", 0
    if op == "upload_part":
        return "PUT", objects.upload.path, 0
    return "PUT", f"/{bucket}/{target}", 0  # put, copy_encrypted


async def stored_status(backend: Backend, bucket: str, key: str) -> int:
    """The status of a HEAD straight at SeaweedFS."""
    response, _ = await backend.request("HEAD", bucket, key)
    return response.status_code


async def simple_put(app, bucket: str, key: str, data: bytes) -> int:
    headers = [("content-length", str(len(data)))]
    async with (
        open_call(
            app, "PUT", f"/{bucket}/{key}", headers, payload_hash=sigv4.UNSIGNED_PAYLOAD
        ) as call,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(feed, call, data, None)
        start, body, finished = await call.read_until_closed()
    assert finished, body
    return start["status"]


async def simple_get(app, bucket: str, key: str) -> tuple[int, bytes]:
    async with open_call(app, "GET", f"/{bucket}/{key}") as call:
        await call.send_body(b"", more=False)
        start, body, finished = await call.read_until_closed()
    assert finished
    return start["status"], body


# -- multipart uploads through the app --------------------------------------------------------


async def create_upload(app, bucket: str, key: str) -> Upload:
    async with open_call(app, "POST", f"/{bucket}/{key}", query=[("uploads", "")]) as call:
        await call.send_body(b"", more=False)
        start, body, finished = await call.read_until_closed()
    assert (start["status"], finished) == (200, True), body
    return Upload(bucket, key, parse_initiate_result(body))


async def put_part(app, upload: Upload, number: int, data: bytes) -> str:
    """UploadPart; the part's ETag."""
    headers = [("content-length", str(len(data)))]
    async with (
        open_call(
            app,
            "PUT",
            upload.path,
            headers,
            query=upload.part_query(number),
            payload_hash=sigv4.UNSIGNED_PAYLOAD,
        ) as call,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(feed, call, data, None)
        start, body, finished = await call.read_until_closed()
    assert (start["status"], finished) == (200, True), body
    return part_etag(start)


def part_etag(start: dict) -> str:
    return dict(start["headers"])[b"etag"].decode("latin-1")


async def complete_upload(app, upload: Upload, etags: Sequence[str]) -> None:
    """CompleteMultipartUpload of parts 1..N with these ETags."""
    document = "<CompleteMultipartUpload>"
    for number, etag in enumerate(etags, start=1):
        document += f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
    document = (document + "</CompleteMultipartUpload>").encode()
    headers = [("content-length", str(len(document)))]
    async with open_call(
        app,
        "POST",
        upload.path,
        headers,
        query=[("uploadId", upload.upload_id)],
        payload_hash=sigv4.UNSIGNED_PAYLOAD,
    ) as call:
        await call.send_body(document, more=False)
        start, body, finished = await call.read_until_closed()
    assert (start["status"], finished) == (200, True), body
    assert b"<CompleteMultipartUploadResult" in body, body


async def backend_parts(backend: Backend, upload: Upload) -> list[int]:
    """The part numbers the backend upload holds, from SeaweedFS's own ListParts."""
    backend_id = mp.UploadToken.decode(upload.upload_id).backend_upload_id
    response, data = await backend.request(
        "GET", upload.bucket, upload.key, query=[("uploadId", backend_id)], max_body=MiB
    )
    assert response.status_code == 200, data
    parts, _ = parse_list_parts(data)
    return [number for number, _, _ in parts]


async def assert_stored(app: S3Proxy, backend: Backend, objects: Objects, op, target, start):
    """What a write that completed stored reads back through the app (an UploadPart's part
    once the upload is completed with it)."""
    if op == "upload_part":
        assert await backend_parts(backend, objects.upload) == [1]
        with trio.fail_after(30):
            await complete_upload(app, objects.upload, [part_etag(start)])
        key = objects.upload.key
    else:
        key = target
    assert await simple_get(app, objects.bucket, key) == (200, expected_body(op, objects))


async def assert_not_stored(app: S3Proxy, backend: Backend, objects: Objects, op, target) -> None:
    """A write that did not complete stored nothing. For UploadPart: the backend upload holds
    no part, and still takes one and completes through the app."""
    if op in STREAMED_GETS:
        return
    if op != "upload_part":
        assert await stored_status(backend, objects.bucket, target) == 404
        return
    upload = objects.upload
    assert await backend_parts(backend, upload) == []
    with trio.fail_after(30):
        etag = await put_part(app, upload, 1, objects.data)
        await complete_upload(app, upload, [etag])
        assert await simple_get(app, upload.bucket, upload.key) == (200, objects.data)


async def run_to_end(app, op: str, objects: Objects, target: str):
    """Send ``op`` whole (a PUT's client goes on sending until the answer comes) and read
    until the app returns: (call, status message, body, whether the response finished)."""
    method, path, headers, sign = request_for(op, objects, target)
    with trio.fail_after(30):
        async with (
            open_call(app, method, path, headers, **sign) as call,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(feed, call, objects.data if op in UPLOADS else b"", None)
            start, body, finished = await call.read_until_closed()
            nursery.cancel_scope.cancel()
    return call, start, body, finished


async def assert_settled(app: S3Proxy, call: AsgiCall, *, holding: int = 0) -> None:
    """Nothing the ended request held is still held, and the app call is over."""
    assert call.returned
    assert live_tasks() == []
    assert app.budget.in_use == holding
    assert app.budget.stats.waiting == 0
    backend = app.services.backend
    assert busy_connections(backend) == []
    assert backend.waiting_requests == 0
    assert app.stats.in_flight == 0


async def assert_still_works(app: S3Proxy, bucket: str) -> None:
    key = "after-" + uuid.uuid4().hex[:8]
    data = os.urandom(200_000)
    with trio.fail_after(30):
        assert await simple_put(app, bucket, key, data) == 200
        assert await simple_get(app, bucket, key) == (200, data)
    assert app.budget.in_use == 0
    assert busy_connections(app.services.backend) == []


async def fake_settled(fake: FakeBackend) -> None:
    """The proxy closed every connection it had open to the fake."""
    with trio.fail_after(5):
        await fake.idle()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "matrix")


@pytest.fixture(scope="module")
def multipart_object(seaweedfs, bucket) -> tuple[str, bytes]:
    """An object uploaded through the proxy in PARTS, once for the module (GETs only read it):
    (key, plaintext)."""
    key = "multipart-" + uuid.uuid4().hex[:8]
    data = os.urandom(sum(PARTS))

    async def upload() -> None:
        async with open_backend(backend_settings(seaweedfs.url, seaweedfs)) as backend:
            app = proxy_app(backend)
            with trio.fail_after(60):
                upload = await create_upload(app, bucket, key)
                etags, offset = [], 0
                for number, size in enumerate(PARTS, start=1):
                    etags.append(await put_part(app, upload, number, data[offset : offset + size]))
                    offset += size
                await complete_upload(app, upload, etags)

    trio.run(upload)
    return key, data


@pytest.fixture
async def fake(seaweedfs):
    host, port = seaweedfs.url.removeprefix("http://").rsplit(":", 1)
    async with fake_backend((host, int(port))) as server:
        yield server


@pytest.fixture
async def make_fake_app(fake, seaweedfs):
    """Apps whose backend is the fake (``silence``: the backend silence timeout)."""
    async with AsyncExitStack() as stack:

        async def make(silence: float = 300.0, **settings) -> S3Proxy:
            settings_ = backend_settings(fake.url, seaweedfs, backend_timeout=silence)
            client = await stack.enter_async_context(open_backend(settings_))
            return proxy_app(client, **settings)

        yield make


@pytest.fixture
async def objects(backend, bucket, multipart_object) -> Objects:
    """An encrypted and a foreign source object of SIZE bytes and an open multipart upload,
    fresh for each test, and the module's multipart object."""
    tag = uuid.uuid4().hex[:8]
    data, foreign_data = os.urandom(SIZE), os.urandom(SIZE)
    app = proxy_app(backend)
    with trio.fail_after(30):
        assert await simple_put(app, bucket, "enc-" + tag, data) == 200
        response, _ = await backend.request("PUT", bucket, "foreign-" + tag, body=foreign_data)
        upload = await create_upload(app, bucket, "upload-" + tag)
    assert response.status_code == 200
    return Objects(
        bucket, "enc-" + tag, "foreign-" + tag, data, foreign_data, *multipart_object, upload
    )


# -- exit: completes --------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
async def test_completes(make_app, backend, objects, op):
    app = make_app()
    target = "dst-" + uuid.uuid4().hex[:8]
    call, start, body, finished = await run_to_end(app, op, objects, target)
    assert finished
    if op in STREAMED_GETS:
        assert start["status"] == get_status(op)
        assert body == expected_body(op, objects)
    else:
        assert start["status"] == 200, body
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 0)
    await assert_settled(app, call)
    if op not in STREAMED_GETS:
        await assert_stored(app, backend, objects, op, target, start)
    await assert_still_works(app, objects.bucket)


# -- exit: the client disconnects -------------------------------------------------------------
#
# For a GET the points are counted in response body messages. For a PUT or an UploadPart they
# are counted in request body messages (its response is one message after the upload). A copy
# has no body either way and answers in one message when it is done: for the encrypted source
# (one server-side backend request) the only point is "before the answer", taken while the
# backend copy request is in flight; for the foreign source the points are taken in its
# internal stream instead (the source GET paused by the fake after 0 bytes, one piece, and
# half the object, by which time the encrypting backend PUT is under way).

POINTS = {"before_first_byte": 0, "after_first_message": 1, "mid_stream": 6}


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("op", [*STREAMED_GETS, *UPLOADS])
async def test_client_disconnects(make_app, backend, objects, op, point):
    app = make_app()
    target = "cut-" + uuid.uuid4().hex[:8]
    method, path, headers, sign = request_for(op, objects, target)
    async with open_call(app, method, path, headers, **sign) as call:
        with trio.fail_after(30):
            if op in UPLOADS:
                await feed(call, objects.data, POINTS[point])
                await trio.testing.wait_all_tasks_blocked()
            else:
                await call.send_body(b"", more=False)
                start = await call.receive_frame()
                assert start["status"] == get_status(op)
                received = b""
                for _ in range(POINTS[point]):
                    frame = await call.receive_frame()
                    assert frame["more_body"]
                    received += frame["body"]
                assert received == expected_body(op, objects)[: len(received)]
        call.disconnect()
    assert call.sends_after_disconnect <= 4  # cancelled, not streamed on into the void
    assert (app.stats.disconnects, app.stats.backend_failures) == (1, 0)
    await assert_settled(app, call)
    await assert_not_stored(app, backend, objects, op, target)
    await assert_still_works(app, objects.bucket)


async def test_client_disconnects_while_multipart_layout_is_read(make_fake_app, fake, objects):
    """Before the status line of a multipart GET: its read of a part header (the last part's,
    the second read of a whole GET) is held by the fake when the client goes."""
    app = await make_fake_app()
    header = fake.script("GET", f"/{objects.bucket}/{objects.multipart}", "hang", skip=1)
    method, path, headers, sign = request_for("get_multipart", objects, "")
    async with open_call(app, method, path, headers, **sign) as call:
        await call.send_body(b"", more=False)
        with trio.fail_after(10):
            await header.triggered.wait()
        assert app.budget.in_use == WINDOW
        call.disconnect()
    with trio.fail_after(5):
        await header.closed.wait()
    assert (app.stats.disconnects, app.stats.backend_failures) == (1, 0)
    await assert_settled(app, call)
    await fake_settled(fake)
    await assert_still_works(app, objects.bucket)


async def test_client_disconnects_during_encrypted_copy(make_fake_app, fake, backend, objects):
    app = await make_fake_app()
    target = "cut-" + uuid.uuid4().hex[:8]
    copy = fake.script("PUT", f"/{objects.bucket}/{target}", "hang")
    method, path, headers, sign = request_for("copy_encrypted", objects, target)
    async with open_call(app, method, path, headers, **sign) as call:
        await call.send_body(b"", more=False)
        with trio.fail_after(10):
            await copy.triggered.wait()
        call.disconnect()
    with trio.fail_after(5):
        await copy.closed.wait()
    assert (app.stats.disconnects, app.stats.backend_failures) == (1, 0)
    await assert_settled(app, call)
    await fake_settled(fake)
    assert await stored_status(backend, objects.bucket, target) == 404
    await assert_still_works(app, objects.bucket)


FOREIGN_POINTS = {"before_first_byte": 0, "after_first_message": PIECE, "mid_stream": SIZE // 2}


@pytest.mark.parametrize("point", FOREIGN_POINTS)
async def test_client_disconnects_during_foreign_copy(make_fake_app, fake, backend, objects, point):
    app = await make_fake_app()
    target = "cut-" + uuid.uuid4().hex[:8]
    source = fake.script(
        "GET", f"/{objects.bucket}/{objects.foreign}", "stall", FOREIGN_POINTS[point]
    )
    method, path, headers, sign = request_for("copy_foreign", objects, target)
    async with open_call(app, method, path, headers, **sign) as call:
        await call.send_body(b"", more=False)
        with trio.fail_after(10):
            await source.triggered.wait()
            if point == "mid_stream":
                # The encrypting PUT of the destination is under way before the cut.
                await fake.arrived("PUT", f"/{objects.bucket}/{target}")
        assert app.budget.in_use == FOREIGN_COPY_LEASE
        call.disconnect()
    with trio.fail_after(5):
        await source.closed.wait()
    assert (app.stats.disconnects, app.stats.backend_failures) == (1, 0)
    await assert_settled(app, call)
    await fake_settled(fake)
    assert await stored_status(backend, objects.bucket, target) == 404
    await assert_still_works(app, objects.bucket)


# -- exit: the client disconnects while queued for the budget ---------------------------------
#
# A copy of an encrypted source holds no body bytes and takes no lease, so it cannot queue:
# its cell is that it completes while the budget is spent.


@pytest.mark.parametrize("op", [*STREAMED_GETS, *UPLOADS, "copy_foreign"])
async def test_client_disconnects_while_queued(make_app, backend, objects, op):
    app = make_app(memory_budget=WINDOW, admission_timeout=30)
    target = "queued-" + uuid.uuid4().hex[:8]
    method, path, headers, sign = request_for(op, objects, target)
    async with app.budget.lease(WINDOW):
        async with open_call(app, method, path, headers, **sign) as call:
            if op not in UPLOADS:
                await call.send_body(b"", more=False)
            with trio.fail_after(10):
                if op in (*MULTIPART_GETS, "upload_part"):
                    # Admission comes before any backend request.
                    await trio.testing.wait_all_tasks_blocked()
                else:
                    # A copy asks the backend first; the budget has no event to wait on.
                    while app.budget.stats.waiting != 1:  # noqa: ASYNC110
                        await trio.sleep(0.005)
            assert app.budget.stats.waiting == 1
            call.disconnect()
        assert app.budget.stats.waiting == 0
        assert app.budget.in_use == WINDOW  # only the test's own lease
        assert app.budget.stats.cancelled_while_waiting == 1
    assert (app.stats.disconnects, app.stats.backend_failures) == (1, 0)
    await assert_settled(app, call)
    if op == "upload_part":
        await assert_not_stored(app, backend, objects, op, target)
    await assert_still_works(app, objects.bucket)


async def test_encrypted_copy_needs_no_budget(make_app, objects):
    app = make_app(memory_budget=WINDOW, admission_timeout=30)
    target = "nobudget-" + uuid.uuid4().hex[:8]
    method, path, headers, sign = request_for("copy_encrypted", objects, target)
    async with app.budget.lease(WINDOW):
        with trio.fail_after(10):
            async with open_call(app, method, path, headers, **sign) as call:
                await call.send_body(b"", more=False)
                start, body, finished = await call.read_until_closed()
        await assert_settled(app, call, holding=WINDOW)
    assert (start["status"], finished) == (200, True), body
    await assert_still_works(app, objects.bucket)
    assert await simple_get(app, objects.bucket, target) == (200, objects.data)


# -- exit: the backend fails mid-stream -------------------------------------------------------
#
# GET: the response has started (the first segment was decrypted before the status line), so
# the body is cut short (a multipart GET: its data window is cut; a cut before it, while the
# layout is read, is a 503). PUT, UploadPart: the backend drops the upload; copy of a foreign
# source: the source GET is cut; all answer 503. A copy of an encrypted source streams
# nothing: its cell is the backend dropping the server-side copy request.

BACKEND_CUT = 300 * 1024


def backend_cut(op: str) -> int:
    """How many bytes of the backend's response (or of the upload) the fake lets through."""
    if op == "range_multipart":
        # Past the part boundary: the end of part 1, part 2's header and its first segment.
        unit = SEGMENT + fmt.TAG_SIZE
        window_start = mp.PART_HEADER_SIZE + MULTIPART_RANGE[0] // SEGMENT * unit
        boundary = mp.part_stored_size(PARTS[0], SEGMENT)
        return boundary - window_start + mp.PART_HEADER_SIZE + unit + 1000
    return BACKEND_CUT


def assert_cut_short(op: str, objects: Objects, body: bytes) -> None:
    """A GET whose backend response ended at ``backend_cut(op)``: a prefix of the plaintext;
    for a multipart GET exactly every segment that came whole before the cut (a failed
    segment releases no byte, a good one is not lost)."""
    expected = expected_body(op, objects)
    assert 0 < len(body) < len(expected)
    assert body == expected[: len(body)]
    if op == "get_multipart":  # the window starts with part 1's header
        whole = (backend_cut(op) - mp.PART_HEADER_SIZE) // (SEGMENT + fmt.TAG_SIZE)
        assert len(body) == whole * SEGMENT
    elif op == "range_multipart":  # the rest of part 1, and part 2's first segment
        assert len(body) == PARTS[0] - MULTIPART_RANGE[0] + SEGMENT


@pytest.mark.parametrize("op", OPS)
async def test_backend_fails_mid_stream(make_fake_app, fake, backend, objects, op):
    app = await make_fake_app()
    target = "broken-" + uuid.uuid4().hex[:8]
    method_, path_, skip = backend_request(op, objects, target)
    if op in UPLOADS:
        script = fake.script(method_, path_, "drop", backend_cut(op), skip)
    elif op == "copy_encrypted":
        script = fake.script(method_, path_, "close", skip=skip)
    else:
        script = fake.script(method_, path_, "cut", backend_cut(op), skip)
    call, start, body, finished = await run_to_end(app, op, objects, target)
    assert script.triggered.is_set()
    if op in MULTIPART_GETS:
        assert fake.seen.count((method_, path_)) == READS[op]
    if op in STREAMED_GETS:
        assert start["status"] == get_status(op)
        assert not finished
        assert_cut_short(op, objects, body)
    else:
        assert (start["status"], finished) == (503, True)
        assert b"<Code>ServiceUnavailable</Code>" in body
    await assert_settled(app, call)
    await fake_settled(fake)
    await assert_not_stored(app, backend, objects, op, target)
    await assert_still_works(app, objects.bucket)
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 1)


async def test_backend_fails_while_multipart_layout_is_read(make_fake_app, fake, objects):
    """Before the status line of a multipart GET: its part-header read is cut."""
    app = await make_fake_app()
    script = fake.script("GET", f"/{objects.bucket}/{objects.multipart}", "cut", 10, skip=1)
    call, start, body, finished = await run_to_end(app, "get_multipart", objects, "")
    assert script.triggered.is_set()
    assert (start["status"], finished) == (503, True)
    assert b"<Code>ServiceUnavailable</Code>" in body
    await assert_settled(app, call)
    await fake_settled(fake)
    await assert_still_works(app, objects.bucket)
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 1)


# -- exit: the backend hangs ------------------------------------------------------------------
#
# "before": the backend never answers the request (for a PUT or an UploadPart: never reads the
# upload nor answers it; for a multipart GET: its data window). "mid_body": it sends the status
# line and part of the body, then nothing (only for requests whose response body is streamed).
# "header": a multipart GET's part-header read is never answered. The app's backend
# silence timeout ends it.

SILENCE = 0.5


@pytest.mark.parametrize(
    ("op", "when"),
    [(op, "before") for op in OPS]
    + [(op, "mid_body") for op in (*STREAMED_GETS, "copy_foreign")]
    + [("get_multipart", "header")],
)
async def test_backend_hangs(make_fake_app, fake, backend, objects, op, when):
    app = await make_fake_app(silence=SILENCE)
    target = "hung-" + uuid.uuid4().hex[:8]
    method_, path_, skip = backend_request(op, objects, target)
    if when == "before":
        script = fake.script(method_, path_, "hang", skip=skip)
    elif when == "header":
        script = fake.script(method_, path_, "hang", skip=1)
    else:
        script = fake.script(method_, path_, "stall", backend_cut(op), skip)
    began = trio.current_time()
    call, start, body, finished = await run_to_end(app, op, objects, target)
    assert trio.current_time() - began >= SILENCE
    assert script.triggered.is_set()
    if op in STREAMED_GETS and when == "mid_body":
        assert start["status"] == get_status(op)
        assert not finished
        if op in MULTIPART_GETS:
            assert_cut_short(op, objects, body)
        else:
            assert body == expected_body(op, objects)[: len(body)]
    else:
        assert (start["status"], finished) == (503, True)
        assert b"<Code>ServiceUnavailable</Code>" in body
    with trio.fail_after(5):
        await script.closed.wait()
    await assert_settled(app, call)
    await fake_settled(fake)
    await assert_not_stored(app, backend, objects, op, target)
    await assert_still_works(app, objects.bucket)
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 1)


# -- exit: the server shuts down --------------------------------------------------------------
#
# The scope running the app call is cancelled, as hypercorn's nursery is when serving ends:
# a GET after its first body message, a PUT or an UploadPart after a few body messages, a copy
# while its backend request is in flight (held there by the fake).


@pytest.mark.parametrize("op", OPS)
async def test_server_shutdown(make_fake_app, fake, backend, objects, op):
    app = await make_fake_app()
    target = "shut-" + uuid.uuid4().hex[:8]
    method, path, headers, sign = request_for(op, objects, target)
    script = None
    if op == "copy_encrypted":
        script = fake.script("PUT", f"/{objects.bucket}/{target}", "hang")
    elif op == "copy_foreign":
        script = fake.script("GET", f"/{objects.bucket}/{objects.foreign}", "stall", SIZE // 2)
    async with open_call(app, method, path, headers, **sign) as call:
        with trio.fail_after(10):
            if op in UPLOADS:
                await feed(call, objects.data, 6)
                # The upload to the backend is under way.
                await fake.arrived(*backend_request(op, objects, target)[:2])
                await trio.testing.wait_all_tasks_blocked()
            else:
                await call.send_body(b"", more=False)
            if op in STREAMED_GETS:
                assert (await call.receive_frame())["type"] == "http.response.start"
                assert (await call.receive_frame())["more_body"]
            if script is not None:
                await script.triggered.wait()
        call.shutdown()
        _, _, finished = await call.read_until_closed()
    assert not finished
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 0)
    await assert_settled(app, call)
    await fake_settled(fake)
    await assert_not_stored(app, backend, objects, op, target)
    await assert_still_works(app, objects.bucket)


# -- the other bounds -------------------------------------------------------------------------


async def test_put_whose_client_stops_sending_gets_request_timeout(make_app, backend, objects):
    app = make_app(body_timeout=0.5)
    target = "slow-" + uuid.uuid4().hex[:8]
    method, path, headers, sign = request_for("put", objects, target)
    with trio.fail_after(30):
        async with open_call(app, method, path, headers, **sign) as call:
            # Past the first segment: the backend PUT has begun when the client stops.
            await feed(call, objects.data, 5)
            start, body, finished = await call.read_until_closed()
    assert (start["status"], finished) == (400, True)
    assert b"<Code>RequestTimeout</Code>" in body
    assert (app.stats.disconnects, app.stats.backend_failures) == (0, 0)
    await assert_settled(app, call)
    assert await stored_status(backend, objects.bucket, target) == 404
    await assert_still_works(app, objects.bucket)


async def test_max_requests_refuses_at_once_with_slowdown(make_app, objects):
    app = make_app(max_requests=1)
    with trio.fail_after(30):
        async with open_call(app, "GET", f"/{objects.bucket}/{objects.encrypted}") as held:
            await held.send_body(b"", more=False)
            assert (await held.receive_frame())["status"] == 200
            first = (await held.receive_frame())["body"]
            assert app.stats.in_flight == 1
            with trio.fail_after(1):
                async with open_call(app, "GET", f"/{objects.bucket}/{objects.encrypted}") as call:
                    await call.send_body(b"", more=False)
                    start, body, finished = await call.read_until_closed()
            assert (start["status"], finished) == (503, True)
            assert b"<Code>SlowDown</Code>" in body
            assert dict(start["headers"]).get(b"retry-after") == b"1"
            assert app.stats.refused_busy == 1
            _, rest, finished = await held.read_until_closed()
    assert finished
    assert first + rest == objects.data
    await assert_settled(app, held)
    await assert_still_works(app, objects.bucket)
    assert app.stats.refused_busy == 1


# -- a client that stops reading, through hypercorn and a real socket -------------------------


async def test_client_that_stops_reading_is_dropped_by_tcp_user_timeout(make_app, objects):
    size = 64 * 1024 * 1024
    app = make_app()
    key = "unread-" + uuid.uuid4().hex[:8]
    with trio.fail_after(60):
        assert await simple_put(app, objects.bucket, key, os.urandom(size)) == 200
    observed = Observed(app)
    async with served(observed, send_timeout=2) as port:
        path = f"/{objects.bucket}/{key}"
        request = raw_request("GET", path, port)
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await client.connect(("127.0.0.1", port))
        try:
            with trio.fail_after(10):
                await client.send(request)
                got = b""
                while len(got) < 64 * 1024:
                    chunk = await client.recv(16384)
                    assert chunk, "the server closed first"
                    got += chunk
            assert got.startswith(b"HTTP/1.1 200")
            began = trio.current_time()
            # The client stops reading but keeps the connection open.
            with trio.fail_after(30):
                await observed.finished.wait()
            took = trio.current_time() - began
            print(f"the app call returned {took:.2f} s after the client stopped reading")
            assert live_tasks() == []
            assert app.budget.in_use == 0
            assert app.stats.in_flight == 0
            assert app.stats.disconnects == 1
            assert busy_connections(app.services.backend) == []
            assert observed.body_bytes < size
            assert took >= 2
        finally:
            client.close()
    await assert_still_works(app, objects.bucket)


@pytest.mark.parametrize("cause", ["budget", "busy"])
async def test_put_refused_before_its_body_is_read_ends_and_frees_the_connection(
    make_app, objects, cause
):
    """A 503 sent while hypercorn's queue is full of unread body: hypercorn then closes the
    connection and must hand the request its disconnect; the request must drain to let it."""
    if cause == "budget":
        app = make_app(memory_budget=1024 * 1024, admission_timeout=0.2)
    else:
        app = make_app(max_requests=1)
    observed = Observed(app)
    size = 16 * 1024 * 1024
    path = f"/{objects.bucket}/refused-{uuid.uuid4().hex[:8]}"
    async with served(observed, send_timeout=30) as port:
        headers = [("content-length", str(size))]
        request = raw_request("PUT", path, port, headers, payload_hash="UNSIGNED-PAYLOAD")
        client = await trio.open_tcp_stream("127.0.0.1", port)

        async def send_body() -> None:
            # The client keeps sending until the server stops taking its bytes.
            try:
                await client.send_all(request)
                piece = b"\0" * 65536
                for _ in range(size // len(piece)):
                    await client.send_all(piece)
            except trio.BrokenResourceError:
                pass

        with trio.fail_after(30):
            async with AsyncExitStack() as stack:
                if cause == "budget":
                    await stack.enter_async_context(app.budget.lease(1024 * 1024))
                else:
                    app.stats.in_flight += 1  # as if one request were already in flight
                    stack.callback(setattr, app.stats, "in_flight", 0)
                async with trio.open_nursery() as sender:
                    sender.start_soon(send_body)
                    got = b""
                    while b"\r\n\r\n" not in got:
                        chunk = await client.receive_some(65536)
                        assert chunk, "closed before answering"
                        got += chunk
                    assert got.startswith(b"HTTP/1.1 503")
                    await observed.finished.wait()
                    sender.cancel_scope.cancel()
        await client.aclose()
        assert live_tasks() == []
        assert app.budget.in_use == 0
        assert app.stats.in_flight == 0
    assert await stored_status(app.services.backend, objects.bucket, path.rsplit("/", 1)[1]) == 404
    await assert_still_works(app, objects.bucket)
