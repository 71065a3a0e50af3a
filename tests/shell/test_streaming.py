"""Streams move their bytes in the unit their lease allows: large when the proxy is quiet,
small for small objects and under a spent budget (trios3.ops.streaming, MemoryBudget
.lease_stream), through the real ASGI app and a real SeaweedFS."""

from __future__ import annotations

import os
from functools import partial

import pytest
import trio
import trio.testing
from inprocess import feed, open_call

from harness import scratch_bucket
from trios3.core import format as fmt
from trios3.core import sigv4
from trios3.ops.streaming import UNITS, read_cost, units_for, write_cost

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
QUIET = 64 * MiB  # the default budget: a quarter of it fits the largest unit's cost
asgi_call = partial(open_call, returns_within=30)


def test_units_for_a_body_are_never_larger_than_it():
    assert units_for(None) == UNITS
    assert units_for(5 * MiB) == UNITS
    assert units_for(300 * 1024) == (256 * 1024, 128 * 1024)
    assert units_for(1000) == (4096,)
    assert units_for(0) == (4096,)
    assert units_for(5000) == (8192,)


def test_a_larger_unit_costs_more_but_less_than_proportionally_more_per_byte():
    for cost in (read_cost(fmt.DEFAULT_SEGMENT_SIZE), write_cost(fmt.DEFAULT_SEGMENT_SIZE)):
        costs = [cost(unit) for unit in UNITS]
        assert costs == sorted(costs, reverse=True)
        assert cost(UNITS[0]) <= 10 * MiB  # eight 1 MiB streams fit a 64 MiB budget...
        assert cost(UNITS[-1]) <= 1.5 * MiB  # ...and forty under a flood


@pytest.fixture
def raw_bucket(seaweedfs):
    yield from scratch_bucket(seaweedfs, "units")


async def put(app, bucket: str, key: str, data: bytes) -> int:
    headers = [("content-length", str(len(data)))]
    async with (
        asgi_call(
            app, "PUT", f"/{bucket}/{key}", headers, payload_hash=sigv4.UNSIGNED_PAYLOAD
        ) as call,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(feed, call, data, None)
        status, _, _ = await call.read_response()
    return status


async def test_a_quiet_proxy_streams_a_large_object_in_its_largest_unit(make_app, raw_bucket):
    app = make_app(memory_budget=QUIET)
    data = os.urandom(8 * MiB)
    with trio.fail_after(60):
        assert await put(app, raw_bucket, "large", data) == 200
        async with asgi_call(app, "GET", f"/{raw_bucket}/large") as call:
            await call.send_body(b"", more=False)
            start = await call.receive_frame()
            assert start["status"] == 200
            # The lease is the largest unit's, held while the body streams.
            assert app.budget.in_use == read_cost(fmt.DEFAULT_SEGMENT_SIZE)(UNITS[0])
            sizes, body = [], b""
            while True:
                frame = await call.receive_frame()
                sizes.append(len(frame["body"]))
                body += frame["body"]
                if not frame["more_body"]:
                    break
    assert body == data
    assert max(sizes) >= 512 * 1024  # pieces of a unit's size, not of a 128 KiB segment
    assert len(sizes) <= 24
    assert app.budget.in_use == 0


async def test_a_small_object_leases_a_small_window(make_app, raw_bucket):
    app = make_app(memory_budget=QUIET)
    with trio.fail_after(60):
        assert await put(app, raw_bucket, "small", b"x" * 1000) == 200
        async with asgi_call(app, "GET", f"/{raw_bucket}/small") as call:
            await call.send_body(b"", more=False)
            start = await call.receive_frame()
            assert start["status"] == 200
            # Known small from the backend's answer: the lease shrank to a 4 KiB unit's.
            in_use = app.budget.in_use
            body = b""
            while True:
                frame = await call.receive_frame()
                body += frame["body"]
                if not frame["more_body"]:
                    break
    assert body == b"x" * 1000
    assert in_use == read_cost(fmt.DEFAULT_SEGMENT_SIZE)(4096)
    assert app.budget.in_use == 0


async def test_a_small_put_leases_a_small_window(make_app, raw_bucket):
    """Its Content-Length says how little it can hold, before anything is read."""
    app = make_app(memory_budget=QUIET)
    headers = [("content-length", "25")]
    with trio.fail_after(60):
        async with asgi_call(
            app, "PUT", f"/{raw_bucket}/tiny", headers, payload_hash=sigv4.UNSIGNED_PAYLOAD
        ) as call:
            await trio.testing.wait_all_tasks_blocked()
            assert app.budget.in_use == write_cost(fmt.DEFAULT_SEGMENT_SIZE)(4096)
            await call.send_body(b"y" * 25, more=False)
            status, _, _ = await call.read_response()
    assert status == 200
    assert app.budget.in_use == 0
