"""MemoryBudget: FIFO admission, clamping, timeouts and cancellation, on a virtual clock.

Every test runs with ``autojump_clock`` (no real I/O here), reaches quiescence with
``wait_all_tasks_blocked`` before asserting, and asserts grant order (what the budget
decided) rather than wake order (which trio randomises within a batch). The ``budgets``
fixture checks after every test that each budget it made is back to zero with no waiters.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from trios3.budget import MemoryBudget
from trios3.core.errors import S3Error


def assert_idle(budget: MemoryBudget) -> None:
    assert budget.in_use == 0
    assert budget.stats.in_use == 0
    assert budget.stats.waiting == 0
    assert not budget._queue


@pytest.fixture
def budgets():
    made: list[MemoryBudget] = []

    def make(capacity: int, admission_timeout: float = 60.0) -> MemoryBudget:
        budget = MemoryBudget(capacity, admission_timeout)
        made.append(budget)
        return budget

    yield make
    for budget in made:
        assert_idle(budget)


async def hold(budget: MemoryBudget, nbytes: int, release: trio.Event, log: list, name):
    """Take a lease, note the grant (with what it got), hold it until ``release`` is set."""
    async with budget.lease(nbytes) as granted:
        log.append((name, granted))
        await release.wait()


async def test_immediate_grant(budgets, autojump_clock):
    budget = budgets(100)
    before = trio.current_time()
    async with budget.lease(40) as granted:
        assert granted == 40
        assert budget.in_use == 40
        assert budget.stats.admitted == 1
        async with budget.lease(60) as second:
            assert second == 60
            assert budget.in_use == 100
    assert trio.current_time() == before  # nothing waited, not even virtually
    assert budget.stats.admitted == 2
    assert budget.stats.rejected == 0


async def test_zero_bytes_still_counts_one(budgets, autojump_clock):
    budget = budgets(10)
    async with budget.lease(0) as granted:
        assert granted == 1
        assert budget.in_use == 1


async def test_fifo_one_at_a_time(budgets, autojump_clock):
    """Requests that each need the whole budget are admitted in the order they queued."""
    budget = budgets(100)
    log: list = []
    releases = [trio.Event() for _ in range(6)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 100, releases[0], log, "holder")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 6):
            nursery.start_soon(hold, budget, 100, releases[i], log, i)
            await trio.testing.wait_all_tasks_blocked()
        assert budget.stats.waiting == 5
        for i in range(6):
            releases[i].set()
            await trio.testing.wait_all_tasks_blocked()
            # Exactly one holder at a time: the grant order is the log order.
            assert budget.in_use == (100 if i < 5 else 0)
    assert [name for name, _ in log] == ["holder", 1, 2, 3, 4, 5]


async def test_fifo_no_barging_past_the_head(budgets, autojump_clock):
    """A later small request that would fit must not overtake a queued one that does not."""
    budget = budgets(100)
    log: list = []
    release = {name: trio.Event() for name in ("holder", "a", "b", "c", "d")}
    sizes = {"a": 30, "b": 30, "c": 50, "d": 20}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 100, release["holder"], log, "holder")
        await trio.testing.wait_all_tasks_blocked()
        for name in ("a", "b", "c", "d"):
            nursery.start_soon(hold, budget, sizes[name], release[name], log, name)
            await trio.testing.wait_all_tasks_blocked()
        assert [w.nbytes for w in budget._queue] == [30, 30, 50, 20]

        release["holder"].set()
        await trio.testing.wait_all_tasks_blocked()
        # a and b were granted together (their wake order is trio's business); c is the head
        # and does not fit (60 + 50 > 100), so d, which would fit, still waits behind it.
        assert {name for name, _ in log[1:]} == {"a", "b"}
        assert budget.in_use == 60
        assert [w.nbytes for w in budget._queue] == [50, 20]

        release["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert {name for name, _ in log[3:]} == {"c", "d"}
        assert budget.in_use == 30 + 50 + 20
        assert not budget._queue
        for name in ("b", "c", "d"):
            release[name].set()
    assert budget.stats.admitted == 5


async def test_large_request_not_starved_by_small_ones(budgets, autojump_clock):
    budget = budgets(100)
    grants: list[tuple[str, float]] = []
    big_done = trio.Event()

    async def small(i: int) -> None:
        async with budget.lease(10):
            grants.append((f"s{i}", trio.current_time()))
            await trio.sleep(1.0)

    async def big() -> None:
        async with budget.lease(100) as granted:
            assert granted == 100
            assert budget.in_use == 100  # alone
            grants.append(("big", trio.current_time()))
            await trio.sleep(1.0)
        big_done.set()

    async with trio.open_nursery() as nursery:

        async def stream_of_small() -> None:
            # A new small request every 0.2 s, each held 1 s: without FIFO the budget would
            # never drain to zero and the large request would wait forever.
            for i in range(60):
                nursery.start_soon(small, i)
                await trio.sleep(0.2)

        nursery.start_soon(stream_of_small)
        await trio.sleep(2.05)
        assert budget.in_use > 0
        start = trio.current_time()
        nursery.start_soon(big)
        with trio.fail_after(5):
            await big_done.wait()
        big_at = next(t for name, t in grants if name == "big")
        # It waited only for the small ones already admitted (held at most 1 s) to drain.
        assert big_at - start <= 1.0 + 1e-9
    names = [name for name, _ in grants]
    before_big = names[: names.index("big")]
    # Every small request admitted before the big one had queued before it did.
    assert all(int(n[1:]) <= 10 for n in before_big)
    assert len(names) == 61


async def test_request_larger_than_capacity_is_clamped_and_runs_alone(budgets, autojump_clock):
    budget = budgets(100)
    log: list = []
    release_big, release_small = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 10_000, release_big, log, "big")
        await trio.testing.wait_all_tasks_blocked()
        assert log == [("big", 100)]
        assert budget.in_use == 100
        nursery.start_soon(hold, budget, 1, release_small, log, "small")
        await trio.testing.wait_all_tasks_blocked()
        assert budget.stats.waiting == 1
        assert len(log) == 1
        release_big.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log[1] == ("small", 1)
        assert budget.in_use == 1
        release_small.set()


async def test_admission_timeout_is_slowdown(budgets, autojump_clock):
    budget = budgets(100, admission_timeout=5.0)
    async with budget.lease(100):
        start = trio.current_time()
        with pytest.raises(S3Error) as caught:
            async with budget.lease(10):
                pytest.fail("admitted although the budget was spent")
        waited = trio.current_time() - start
        assert budget.in_use == 100
        assert budget.stats.waiting == 0
        assert not budget._queue
    err = caught.value
    assert err.code == "SlowDown"
    assert err.status == 503
    assert err.headers.get("Retry-After") == "1"
    assert waited == pytest.approx(5.0)
    assert budget.stats.rejected == 1
    assert budget.stats.admitted == 1


async def test_timed_out_head_lets_the_next_one_in(budgets, autojump_clock):
    budget = budgets(100, admission_timeout=5.0)
    log: list = []
    outcome: dict[str, object] = {}
    release_holder, release_b = trio.Event(), trio.Event()

    async def head() -> None:
        try:
            async with budget.lease(100):
                outcome["a"] = "admitted"
        except S3Error as err:
            outcome["a"] = err.code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 50, release_holder, log, "holder")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(head)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1.0)
        nursery.start_soon(hold, budget, 40, release_b, log, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert [w.nbytes for w in budget._queue] == [100, 40]  # b fits, but waits behind a
        await trio.sleep(4.5)  # a times out at 5 s, b (queued at 1 s) not yet
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == {"a": "SlowDown"}
        assert [name for name, _ in log] == ["holder", "b"]
        assert budget.in_use == 90
        release_holder.set()
        release_b.set()
    assert budget.stats.rejected == 1


async def test_cancelled_waiter_leaves_queue_and_lets_next_in(budgets, autojump_clock):
    budget = budgets(100)
    log: list = []
    release_holder, release_b = trio.Event(), trio.Event()
    cancelled = trio.Event()

    async def head(scope_box: list) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            async with budget.lease(100):
                log.append(("a", 100))
        if scope.cancelled_caught:
            cancelled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 50, release_holder, log, "holder")
        await trio.testing.wait_all_tasks_blocked()
        box: list = []
        nursery.start_soon(head, box)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, budget, 40, release_b, log, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert budget.stats.waiting == 2
        box[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert cancelled.is_set()
        assert [name for name, _ in log] == ["holder", "b"]
        assert budget.in_use == 90
        assert not budget._queue
        assert budget.stats.cancelled_while_waiting == 1
        release_holder.set()
        release_b.set()
    assert budget.stats.rejected == 0


@pytest.mark.parametrize("order", ["grant_then_cancel", "cancel_then_grant"])
async def test_grant_and_cancel_in_the_same_tick_do_not_leak(budgets, autojump_clock, order):
    budget = budgets(100)
    entered = []
    box: list[trio.CancelScope] = []

    async def waiter() -> None:
        with trio.CancelScope() as scope:
            box.append(scope)
            async with budget.lease(60):
                entered.append(True)
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(budget.lease(100))
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert budget.stats.waiting == 1
            if order == "grant_then_cancel":
                # Leaving the holder's lease releases synchronously, granting the waiter;
                # the cancel follows with no checkpoint in between.
                await stack.aclose()
                assert budget.in_use == 60
                box[0].cancel()
            else:
                # The cancel is delivered at once (the waiter is parked); the grant that
                # follows in the same tick must be handed back by the cancelled waiter.
                box[0].cancel()
                await stack.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert budget.in_use == 0
    if order == "cancel_then_grant":
        assert entered == []
        assert budget.stats.cancelled_while_waiting == 1


async def test_release_on_exception_inside_lease(budgets, autojump_clock):
    budget = budgets(100)
    log: list = []
    release = trio.Event()

    async def failing() -> None:
        async with budget.lease(100):
            await trio.sleep(1)
            raise ValueError("boom")

    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match="boom"):
            await failing()
        assert budget.in_use == 0

        # The same when a waiter is queued behind it: the failure lets it in.
        async def fail_quietly() -> None:
            with pytest.raises(ValueError):
                await failing()

        nursery.start_soon(fail_quietly)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, budget, 70, release, log, "next")
        await trio.testing.wait_all_tasks_blocked()
        assert log == []
        await trio.sleep(1.5)
        await trio.testing.wait_all_tasks_blocked()
        assert log == [("next", 70)]
        assert budget.in_use == 70
        release.set()


async def test_release_on_cancel_inside_lease(budgets, autojump_clock):
    budget = budgets(100)
    with trio.move_on_after(1):
        async with budget.lease(100):
            await trio.sleep_forever()
    assert budget.in_use == 0


# -- streams: the unit follows the free budget ---------------------------------------------------

UNITS = (1024, 512, 256, 128)


def cost(unit: int) -> int:
    return 4 * unit


async def test_a_quiet_budget_gives_a_stream_its_largest_unit(budgets, autojump_clock):
    budget = budgets(16 * 1024)  # a quarter (4096) fits cost(1024)
    units = []
    async with AsyncExitStack() as stack:
        for _ in range(8):
            lease = await stack.enter_async_context(budget.lease_stream(cost, UNITS))
            assert lease.nbytes == cost(lease.unit)
            units.append(lease.unit)
        # Each takes the largest unit whose cost is within a quarter of what is left free.
        assert units == [1024, 512, 512, 512, 256, 256, 256, 128]
        assert budget.in_use == sum(cost(u) for u in units)
    assert budget.in_use == 0


async def test_a_busy_budget_gives_the_smallest_unit_and_it_waits_for_no_more(
    budgets, autojump_clock
):
    budget = budgets(1024)
    release = trio.Event()
    log: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 900, release, log, "holder")
        await trio.testing.wait_all_tasks_blocked()

        async def stream() -> None:
            async with budget.lease_stream(cost, UNITS) as lease:
                log.append(("stream", lease.unit, lease.nbytes))

        nursery.start_soon(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.stats.waiting == 1  # 124 free: not even cost(128) = 512 fits
        release.set()
    assert log == [("holder", 900), ("stream", 128, 512)]


async def test_with_others_waiting_a_stream_asks_only_for_the_smallest_unit(
    budgets, autojump_clock
):
    """A stream that joins a queue never asks for more than the least it can work with:
    while anyone waits, every stream is admitted with the smallest unit (FIFO, no barging)."""
    budget = budgets(100_000)
    release = trio.Event()
    log: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, budget, 100_000, release, log, "holder")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, budget, 10, trio.Event(), log, "queued")  # never released
        await trio.testing.wait_all_tasks_blocked()

        async def stream() -> None:
            async with budget.lease_stream(cost, UNITS) as lease:
                log.append(("stream", lease.unit))

        nursery.start_soon(stream)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # Both are granted by the holder's release (trio wakes them in either order).
    assert log[0] == ("holder", 100_000)
    assert sorted(log[1:3]) == [("queued", 10), ("stream", 128)]


async def test_shrinking_a_stream_lease_gives_back_what_the_smaller_unit_does_not_need(
    budgets, autojump_clock
):
    budget = budgets(16 * 1024)
    async with budget.lease_stream(cost, UNITS) as lease:
        assert budget.in_use == 4096
        lease.shrink(256)
        assert (lease.unit, lease.nbytes, budget.in_use) == (256, 1024, 1024)
        lease.shrink(512)  # never grows back
        assert (lease.unit, budget.in_use) == (256, 1024)
    assert budget.in_use == 0


async def test_shrinking_wakes_a_waiter_that_now_fits(budgets, autojump_clock):
    budget = budgets(16 * 1024)
    log: list = []
    async with trio.open_nursery() as nursery:
        async with budget.lease_stream(cost, UNITS) as lease:
            assert lease.nbytes == 4096
            nursery.start_soon(hold, budget, 13_000, trio.Event(), log, "waiter")
            await trio.testing.wait_all_tasks_blocked()
            assert budget.stats.waiting == 1
            lease.shrink(128)  # gives back enough for the waiter, without waiting itself
            await trio.testing.wait_all_tasks_blocked()
            assert log == [("waiter", 13_000)]
            assert budget.in_use == 512 + 13_000
        nursery.cancel_scope.cancel()
