"""The request body (trios3.body): backpressure, timeouts, disconnects, declared lengths and
the checks a body must pass, driven by a fake ASGI ``receive`` on trio's virtual clock.

The fake ``receive`` is a trio memory channel with room for every message a test queues, as
hypercorn's queue would hold them; what the proxy has taken off it shows in
``queued(...)``. ``wait_all_tasks_blocked`` lets the channel's task reach quiescence before a
test looks. Every test runs on ``autojump_clock``: the body timeout costs no real time, and a
request stuck by a regression fails at ``DEADLINE`` (virtual) instead of hanging the suite.
"""

from __future__ import annotations

import base64
import hashlib
import math
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from aws_vectors import DATE, SCOPE
from aws_vectors import KEY as SIGNING_KEY
from aws_vectors import SEED as AWS_SEED
from aws_vectors import SIGNED as AWS_SIGNED_BODY
from trios3.body import (
    MAX_SINGLE_PUT,
    ClientChannel,
    ClientDisconnected,
    RequestBody,
    plaintext_length,
)
from trios3.core.checksums import checksum_b64
from trios3.core.errors import S3Error
from trios3.core.sigv4 import (
    STREAMING_MODES,
    STREAMING_PAYLOAD,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    RequestAuth,
    derive_signing_key,
)

DISCONNECT = {"type": "http.disconnect"}
DEADLINE = 3600.0  # virtual seconds


def part(data: bytes, more: bool = True) -> dict:
    """One ``http.request`` message, as hypercorn sends a piece of a body."""
    return {"type": "http.request", "body": data, "more_body": more}


def body_messages(data: bytes, step: int = 0) -> list[dict]:
    """``data`` as a whole body in pieces of ``step`` bytes (one piece if 0), then its end."""
    step = step or max(1, len(data))
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    return [part(p) for p in pieces] + [part(b"", more=False)]


def auth(payload_hash: str, seed: str = "0" * 64) -> RequestAuth:
    return RequestAuth("AK", SCOPE, ("host",), seed, DATE, False, None, payload_hash)


def queued(receive_end: trio.MemoryReceiveChannel) -> int:
    """Messages the fake hypercorn queue still holds: the proxy has not taken them yet."""
    return receive_end.statistics().current_buffer_used


@asynccontextmanager
async def serving(
    messages=(), *, body_timeout: float = 60.0, scope: trio.CancelScope | None = None
):
    """A ClientChannel running in a nursery over a fake ``receive`` preloaded with
    ``messages``; yields (channel, queue, receive end). ``scope`` defaults to the nursery's,
    as the app passes it; everything is cancelled when the block ends."""
    queue, receive_end = trio.open_memory_channel(math.inf)
    for message in messages:
        queue.send_nowait(message)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            channel = ClientChannel(
                receive_end.receive,
                nursery.cancel_scope if scope is None else scope,
                body_timeout=body_timeout,
            )
            nursery.start_soon(channel.run)
            yield channel, queue, receive_end
            nursery.cancel_scope.cancel()


async def collect(chunks) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def body_error(body: RequestBody) -> S3Error:
    with pytest.raises(S3Error) as exc:
        await collect(body.chunks())
    return exc.value


# -- ClientChannel ----------------------------------------------------------------------------


async def test_chunks_are_the_message_bodies_in_order_until_the_body_ends(autojump_clock):
    messages = [part(b"ab"), part(b""), part(b"cde"), part(b"f", more=False), part(b"late")]
    async with serving(messages) as (channel, _, _):
        assert await collect(channel.chunks()) == [b"ab", b"cde", b"f"]
        await trio.testing.wait_all_tasks_blocked()
        assert channel.received == 6  # a request message after the end is not body
        assert not channel.disconnected


async def test_an_empty_body_has_no_chunks(autojump_clock):
    async with serving([part(b"", more=False)]) as (channel, _, _):
        assert await collect(channel.chunks()) == []
        assert channel.received == 0


async def test_messages_of_other_types_are_ignored(autojump_clock):
    messages = [{"type": "http.unknown"}, part(b"ab", more=False)]
    async with serving(messages) as (channel, _, _):
        assert await collect(channel.chunks()) == [b"ab"]


async def test_the_channel_takes_one_message_at_a_time_while_the_request_does_not_read(
    autojump_clock,
):
    async with serving([part(b"a"), part(b"b"), part(b"c", more=False)]) as (channel, _, rx):
        await trio.testing.wait_all_tasks_blocked()
        # One message is held, waiting for the request; the rest stay with hypercorn, whose
        # full queue is what pushes back on the client.
        assert queued(rx) == 2 and channel.received == 1
        chunks = channel.chunks()
        assert await anext(chunks) == b"a"
        await trio.testing.wait_all_tasks_blocked()
        assert queued(rx) == 1 and channel.received == 2
        assert await collect(chunks) == [b"b", b"c"]


async def test_a_client_that_stops_sending_gets_request_timeout(autojump_clock):
    async with serving([part(b"abc")], body_timeout=30.0) as (channel, _, _):
        chunks = channel.chunks()
        assert await anext(chunks) == b"abc"
        started = trio.current_time()
        with pytest.raises(S3Error) as exc:
            await anext(chunks)
        assert exc.value.code == "RequestTimeout" and exc.value.status == 400
        assert trio.current_time() - started == pytest.approx(30.0)


async def test_the_body_timeout_is_per_pause_not_for_the_whole_body(autojump_clock):
    async with serving(body_timeout=30.0) as (channel, queue, _):

        async def slow_client():
            for piece in (b"a", b"b", b"c"):
                await trio.sleep(20.0)  # virtual: under the timeout each time
                await queue.send(part(piece))
            await queue.send(part(b"", more=False))

        async with trio.open_nursery() as client:
            client.start_soon(slow_client)
            started = trio.current_time()
            assert await collect(channel.chunks()) == [b"a", b"b", b"c"]
        assert trio.current_time() - started == pytest.approx(60.0)


async def test_a_timeout_before_the_first_byte_is_request_timeout(autojump_clock):
    async with serving(body_timeout=5.0) as (channel, _, _):
        with pytest.raises(S3Error) as exc:
            await collect(channel.chunks())
        assert exc.value.code == "RequestTimeout"


async def test_disconnect_cancels_the_given_scope_and_is_recorded(autojump_clock):
    scope = trio.CancelScope()
    async with serving([part(b"a"), DISCONNECT], scope=scope) as (channel, _, rx):
        chunks = channel.chunks()
        assert await anext(chunks) == b"a"
        await trio.testing.wait_all_tasks_blocked()
        assert channel.disconnected and scope.cancel_called
        assert queued(rx) == 0


async def test_disconnect_cancels_the_request_while_it_waits_for_its_body(autojump_clock):
    finished = False
    async with serving([part(b"a")]) as (channel, queue, _):
        chunks = channel.chunks()
        assert await anext(chunks) == b"a"
        queue.send_nowait(DISCONNECT)
        await anext(chunks)  # cancelled: the rest of the body never comes
        finished = True
    assert channel.disconnected and not finished


async def test_a_disconnect_behind_an_unread_chunk_waits_until_the_request_reads_it(autojump_clock):
    # No buffer of its own: while one message waits for the request, the next is not looked at.
    scope = trio.CancelScope()
    async with serving([part(b"a"), DISCONNECT], scope=scope) as (channel, _, rx):
        await trio.testing.wait_all_tasks_blocked()
        assert not channel.disconnected and queued(rx) == 1
        assert await anext(channel.chunks()) == b"a"
        await trio.testing.wait_all_tasks_blocked()
        assert channel.disconnected and scope.cancel_called


async def test_after_stop_reading_the_body_is_drained_and_dropped(autojump_clock):
    scope = trio.CancelScope()
    messages = [part(b"x" * 10) for _ in range(5)]
    async with serving(messages, scope=scope) as (channel, queue, rx):
        channel.stop_reading()
        await trio.testing.wait_all_tasks_blocked()
        assert queued(rx) == 0 and channel.received == 50  # hypercorn is never left full
        # ... and a disconnect still reaches the request at once.
        queue.send_nowait(DISCONNECT)
        await trio.testing.wait_all_tasks_blocked()
        assert channel.disconnected and scope.cancel_called


async def test_discard_after_stop_reading_returns_at_once(autojump_clock):
    async with serving([part(b"x" * 10)]) as (channel, _, _):
        channel.stop_reading()
        started = trio.current_time()
        await channel.discard(1024)
        assert trio.current_time() == started


async def test_discard_drops_up_to_the_limit_and_leaves_the_rest(autojump_clock):
    messages = [part(b"1" * 10), part(b"2" * 10), part(b"3" * 10), part(b"4" * 10, more=False)]
    async with serving(messages) as (channel, _, rx):
        await channel.discard(25)  # three messages reach 25 bytes
        await trio.testing.wait_all_tasks_blocked()
        assert queued(rx) == 0 and channel.received == 40
        assert await collect(channel.chunks()) == [b"4" * 10]  # left to the connection's close


async def test_discard_stops_at_the_end_of_a_small_body(autojump_clock):
    async with serving([part(b"ab"), part(b"c", more=False)]) as (channel, _, _):
        await channel.discard(1024)
        assert channel.received == 3
        assert await collect(channel.chunks()) == []


# -- plaintext_length -------------------------------------------------------------------------


def test_a_plain_body_declares_its_length_in_content_length():
    headers = {"content-length": "11", "x-amz-decoded-content-length": "5"}
    assert plaintext_length(headers, UNSIGNED_PAYLOAD) == 11
    assert plaintext_length(headers, hashlib.sha256(b"").hexdigest()) == 11
    assert plaintext_length(headers, None) == 11


@pytest.mark.parametrize("mode", sorted(STREAMING_MODES))
def test_an_aws_chunked_body_declares_its_length_in_decoded_content_length(mode):
    headers = {"content-length": "200", "x-amz-decoded-content-length": "11"}
    assert plaintext_length(headers, mode) == 11


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ({}, UNSIGNED_PAYLOAD),
        ({"x-amz-decoded-content-length": "5"}, UNSIGNED_PAYLOAD),
        ({"content-length": "200"}, STREAMING_PAYLOAD),
        ({"content-length": "200"}, STREAMING_UNSIGNED_PAYLOAD_TRAILER),
    ],
)
def test_no_declared_length_is_missing_content_length(headers, mode):
    with pytest.raises(S3Error) as exc:
        plaintext_length(headers, mode)
    assert exc.value.code == "MissingContentLength" and exc.value.status == 411


@pytest.mark.parametrize("value", ["", "-1", "+1", "1.0", " 1", "1 ", "0x10", "ten", "1,2"])
def test_a_declared_length_that_is_not_digits_is_invalid_argument(value):
    for headers, mode in [
        ({"content-length": value}, UNSIGNED_PAYLOAD),
        ({"x-amz-decoded-content-length": value}, STREAMING_PAYLOAD),
    ]:
        with pytest.raises(S3Error) as exc:
            plaintext_length(headers, mode)
        assert exc.value.code == "InvalidArgument"


@pytest.mark.parametrize("value", ["\xb2", "1\xb3", "\xb9"])
def test_a_declared_length_in_superscript_digits_is_invalid_argument(value):
    with pytest.raises(S3Error) as exc:
        plaintext_length({"x-amz-decoded-content-length": value}, STREAMING_PAYLOAD)
    assert exc.value.code == "InvalidArgument"


@pytest.mark.parametrize("mode", [UNSIGNED_PAYLOAD, STREAMING_PAYLOAD])
def test_a_declared_length_past_int_digit_limit_is_entity_too_large(mode):
    declared = "9" * 5000  # int() refuses more than 4 300 digits with ValueError
    name = "x-amz-decoded-content-length" if mode in STREAMING_MODES else "content-length"
    with pytest.raises(S3Error) as exc:
        plaintext_length({name: declared}, mode)
    assert exc.value.code == "EntityTooLarge"
    assert plaintext_length({name: "0" * 5000 + "7"}, mode) == 7


def test_up_to_five_gib_may_be_declared():
    assert plaintext_length({"content-length": str(MAX_SINGLE_PUT)}, UNSIGNED_PAYLOAD) == 5 * 2**30
    assert plaintext_length({"content-length": "0"}, UNSIGNED_PAYLOAD) == 0
    assert plaintext_length({"content-length": "007"}, UNSIGNED_PAYLOAD) == 7


@pytest.mark.parametrize("mode", [UNSIGNED_PAYLOAD, STREAMING_PAYLOAD])
def test_over_five_gib_is_entity_too_large(mode):
    declared = str(MAX_SINGLE_PUT + 1)
    name = "x-amz-decoded-content-length" if mode in STREAMING_MODES else "content-length"
    with pytest.raises(S3Error) as exc:
        plaintext_length({name: declared}, mode)
    assert exc.value.code == "EntityTooLarge"
    assert exc.value.fields == {"ProposedSize": declared, "MaxSizeAllowed": str(MAX_SINGLE_PUT)}


# -- RequestBody: plain bodies ----------------------------------------------------------------


def plain_body(channel: ClientChannel, length: int, **headers: str) -> RequestBody:
    declared = {"content-length": str(length)}
    declared.update({name.replace("_", "-"): value for name, value in headers.items()})
    return RequestBody(channel, declared, auth(UNSIGNED_PAYLOAD), SIGNING_KEY)


async def test_a_plain_body_yields_what_the_client_sent(autojump_clock):
    async with serving(body_messages(b"hello world", step=4)) as (channel, _, _):
        body = plain_body(channel, 11)
        assert body.length == 11
        assert await collect(body.chunks()) == [b"hell", b"o wo", b"rld"]


async def test_more_bytes_than_declared_is_incomplete_body_before_they_are_released(autojump_clock):
    async with serving([part(b"hello"), part(b" world", more=False)]) as (channel, _, _):
        body = plain_body(channel, 8)
        released = []
        with pytest.raises(S3Error) as exc:
            async for chunk in body.chunks():
                released.append(chunk)
        assert exc.value.code == "IncompleteBody"
        assert released == [b"hello"]


async def test_fewer_bytes_than_declared_is_incomplete_body(autojump_clock):
    async with serving(body_messages(b"hello")) as (channel, _, _):
        error = await body_error(plain_body(channel, 6))
        assert error.code == "IncompleteBody" and error.status == 400


async def test_a_matching_content_md5_passes(autojump_clock):
    md5 = base64.b64encode(hashlib.md5(b"hello", usedforsecurity=False).digest()).decode()
    async with serving(body_messages(b"hello")) as (channel, _, _):
        body = plain_body(channel, 5, content_md5=md5)
        assert await collect(body.chunks()) == [b"hello"]
        assert body.checks.content_md5 == base64.b64decode(md5)


async def test_a_content_md5_mismatch_is_bad_digest(autojump_clock):
    md5 = base64.b64encode(hashlib.md5(b"hellO", usedforsecurity=False).digest()).decode()
    async with serving(body_messages(b"hello")) as (channel, _, _):
        error = await body_error(plain_body(channel, 5, content_md5=md5))
        assert error.code == "BadDigest"


async def test_a_checksum_header_is_verified_and_echoed(autojump_clock):
    crc = checksum_b64("crc32", b"hello")
    async with serving(body_messages(b"hello", step=2)) as (channel, _, _):
        body = plain_body(channel, 5, x_amz_checksum_crc32=crc)
        assert b"".join(await collect(body.chunks())) == b"hello"
        assert body.checks.response_headers() == {"x-amz-checksum-crc32": crc}


async def test_a_checksum_header_mismatch_is_bad_digest(autojump_clock):
    crc = checksum_b64("crc32", b"hellO")
    async with serving(body_messages(b"hello")) as (channel, _, _):
        error = await body_error(plain_body(channel, 5, x_amz_checksum_crc32=crc))
        assert error.code == "BadDigest"
        assert "CRC32" in error.message


async def test_a_signed_payload_hash_is_verified(autojump_clock):
    good = hashlib.sha256(b"hello").hexdigest()
    bad = hashlib.sha256(b"hellO").hexdigest()
    for sha256, code in [(good, None), (bad, "XAmzContentSHA256Mismatch")]:
        headers = {"content-length": "5", "x-amz-content-sha256": sha256}
        async with serving(body_messages(b"hello")) as (channel, _, _):
            body = RequestBody(channel, headers, auth(sha256), SIGNING_KEY)
            if code is None:
                assert await collect(body.chunks()) == [b"hello"]
            else:
                assert (await body_error(body)).code == code


async def test_a_disconnect_after_the_whole_body_is_client_disconnected(autojump_clock):
    scope = trio.CancelScope()  # not the reader's: it gets to see how the body ended
    async with serving([part(b"hello", more=False), DISCONNECT], scope=scope) as (channel, _, _):
        chunks = plain_body(channel, 5).chunks()
        assert await anext(chunks) == b"hello"
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ClientDisconnected):
            await anext(chunks)


async def test_a_disconnect_mid_body_cancels_the_read(autojump_clock):
    finished = False
    async with serving([part(b"hel")]) as (channel, queue, _):
        chunks = plain_body(channel, 5).chunks()
        assert await anext(chunks) == b"hel"
        queue.send_nowait(DISCONNECT)
        await collect(chunks)
        finished = True
    assert channel.disconnected and not finished


async def test_read_all_joins_the_body(autojump_clock):
    async with serving(body_messages(b"<Delete/>", step=2)) as (channel, _, _):
        assert await plain_body(channel, 9).read_all(9) == b"<Delete/>"


async def test_read_all_of_an_empty_body(autojump_clock):
    async with serving([part(b"", more=False)]) as (channel, _, _):
        assert await plain_body(channel, 0).read_all(0) == b""


async def test_read_all_refuses_a_declared_length_over_its_limit_before_reading(autojump_clock):
    async with serving(body_messages(b"0123456789")) as (channel, _, _):
        with pytest.raises(S3Error) as exc:
            await plain_body(channel, 10).read_all(9)
        assert exc.value.code == "EntityTooLarge"
        assert "9 bytes" in exc.value.message
        assert await collect(channel.chunks()) == [b"0123456789"]  # nothing was read


async def test_read_all_still_checks_the_body(autojump_clock):
    async with serving(body_messages(b"abc")) as (channel, _, _):
        with pytest.raises(S3Error) as exc:
            await plain_body(channel, 4).read_all(100)
        assert exc.value.code == "IncompleteBody"


# -- RequestBody: aws-chunked bodies ----------------------------------------------------------


def unsigned_trailer_wire(
    data: bytes, crc: str | None = None, sizes: tuple[int, ...] = ()
) -> bytes:
    """``data`` as boto3 sends it in STREAMING-UNSIGNED-PAYLOAD-TRAILER mode: hex-sized chunks
    (of ``sizes``, else one), the zero chunk, the CRC32 trailer, a blank line."""
    sizes = sizes or (len(data),)
    wire, at = bytearray(), 0
    for size in sizes:
        wire += f"{size:x}\r\n".encode() + data[at : at + size] + b"\r\n"
        at += size
    assert at == len(data)
    crc = checksum_b64("crc32", data) if crc is None else crc
    wire += b"0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
    return bytes(wire)


def trailer_body(channel: ClientChannel, length: int, wire: bytes) -> RequestBody:
    headers = {
        "content-encoding": "aws-chunked",
        "content-length": str(len(wire)),
        "x-amz-decoded-content-length": str(length),
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    return RequestBody(channel, headers, auth(STREAMING_UNSIGNED_PAYLOAD_TRAILER), SIGNING_KEY)


def test_the_hand_built_wire_is_boto3s():
    assert unsigned_trailer_wire(b"hello world") == (
        b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    )


@pytest.mark.parametrize("step", [0, 1, 5, 13])
async def test_an_unsigned_trailer_body_is_decoded_and_its_trailer_checksum_verified(
    step, autojump_clock
):
    data = b"hello world, and more"
    wire = unsigned_trailer_wire(data, sizes=(11, 10))
    async with serving(body_messages(wire, step)) as (channel, _, _):
        body = trailer_body(channel, len(data), wire)
        assert body.length == len(data)
        assert b"".join(await collect(body.chunks())) == data
        assert body.checks.response_headers() == {
            "x-amz-checksum-crc32": checksum_b64("crc32", data)
        }


async def test_a_wrong_trailer_checksum_is_bad_digest(autojump_clock):
    wire = unsigned_trailer_wire(b"hello world", crc=checksum_b64("crc32", b"hello"))
    async with serving(body_messages(wire)) as (channel, _, _):
        assert (await body_error(trailer_body(channel, 11, wire))).code == "BadDigest"


async def test_a_missing_trailer_is_malformed_trailer(autojump_clock):
    wire = b"b\r\nhello world\r\n0\r\n\r\n"
    async with serving(body_messages(wire)) as (channel, _, _):
        assert (await body_error(trailer_body(channel, 11, wire))).code == "MalformedTrailerError"


async def test_a_chunked_body_shorter_than_its_decoded_length_is_incomplete_body(autojump_clock):
    wire = unsigned_trailer_wire(b"hello world")
    async with serving(body_messages(wire)) as (channel, _, _):
        assert (await body_error(trailer_body(channel, 12, wire))).code == "IncompleteBody"


async def test_a_chunked_body_cut_short_is_incomplete_body(autojump_clock):
    wire = unsigned_trailer_wire(b"hello world")
    async with serving(body_messages(wire[:-9])) as (channel, _, _):
        assert (await body_error(trailer_body(channel, 11, wire))).code == "IncompleteBody"


@pytest.mark.parametrize("step", [0, 3])
async def test_bytes_after_the_end_of_a_chunked_body_are_refused(step, autojump_clock):
    # The decoder sees them first (EndOfBody comes only at the end of the input), so they are
    # InvalidRequest, in one message with the body or in a later one.
    wire = unsigned_trailer_wire(b"hello world")
    async with serving(body_messages(wire + b"extra", step)) as (channel, _, _):
        error = await body_error(trailer_body(channel, 11, wire))
        assert error.code == "InvalidRequest"
        assert "after the end" in error.message


async def test_a_signed_chunked_body_is_verified_from_the_seed_signature(autojump_clock):
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560"}
    request = auth(STREAMING_PAYLOAD, seed=AWS_SEED)
    async with serving(body_messages(AWS_SIGNED_BODY, 8192)) as (channel, _, _):
        body = RequestBody(channel, headers, request, SIGNING_KEY)
        assert b"".join(await collect(body.chunks())) == b"a" * 66560


async def test_a_signed_chunked_body_under_another_key_is_signature_does_not_match(autojump_clock):
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560"}
    request = auth(STREAMING_PAYLOAD, seed=AWS_SEED)
    other_key = derive_signing_key("another secret", SCOPE)
    async with serving(body_messages(AWS_SIGNED_BODY)) as (channel, _, _):
        error = await body_error(RequestBody(channel, headers, request, other_key))
        assert error.code == "SignatureDoesNotMatch"


async def test_read_all_decodes_a_chunked_body(autojump_clock):
    wire = unsigned_trailer_wire(b"<Delete/>", sizes=(4, 5))
    async with serving(body_messages(wire, 3)) as (channel, _, _):
        assert await trailer_body(channel, 9, wire).read_all(9) == b"<Delete/>"


async def test_read_all_limits_the_decoded_length_of_a_chunked_body(autojump_clock):
    wire = unsigned_trailer_wire(b"<Delete/>")
    async with serving(body_messages(wire)) as (channel, _, _):
        with pytest.raises(S3Error) as exc:
            await trailer_body(channel, 9, wire).read_all(8)
        assert exc.value.code == "EntityTooLarge"
