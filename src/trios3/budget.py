"""The memory budget: one per process, in bytes, leased for exactly as long as the bytes live.

Every request that holds body bytes (GET, PUT, copies) takes a :class:`Lease` for its whole
window *before* it sends a status line, so that a spent budget can still be answered with a
503 rather than a truncated body. The lease is an async context manager: whatever ends the
request's scope (completion, client disconnect, backend failure, shutdown) releases it exactly
once. Waiters are served strictly first in, first out, so a large request is never starved by
a stream of small ones; a request larger than the whole budget is clamped to it and so runs
alone rather than failing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from trios3.core.errors import S3Error


@dataclass
class BudgetStats:
    """Counters a metrics endpoint can read at run time."""

    capacity: int
    in_use: int = 0
    waiting: int = 0
    admitted: int = 0
    rejected: int = 0
    cancelled_while_waiting: int = 0
    wait_seconds: float = 0.0  # total time spent queued


@dataclass
class _Waiter:
    nbytes: int
    event: trio.Event = field(default_factory=trio.Event)
    granted: bool = False


class MemoryBudget:
    """A FIFO byte semaphore. ``acquire`` is admission; ``release`` is synchronous."""

    def __init__(self, capacity: int, admission_timeout: float) -> None:
        if capacity <= 0:
            raise ValueError("memory budget must be positive")
        self._capacity = capacity
        self._admission_timeout = admission_timeout
        self._in_use = 0
        self._queue: deque[_Waiter] = deque()
        self.stats = BudgetStats(capacity=capacity)

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def lease_stream(self, cost: Callable[[int], int], units: tuple[int, ...]):
        """Hold the budget for a stream that moves its bytes in units of one of ``units``
        (largest first), for the body of the ``async with``; ``cost(unit)`` is what the stream
        holds at most with that unit.

        The unit follows the free budget: the largest whose cost is within a quarter of what
        is free when nobody waits (a quiet proxy moves bytes in large units, at less CPU per
        byte), the smallest otherwise (under a flood, as many streams as possible fit, and
        this one waits in line for no more than the least it can work with). Yields a
        :class:`StreamLease`, which the stream may shrink once it knows it needs less (a
        small object): giving back never waits.
        """
        smallest = units[-1]
        unit = smallest
        if not self._queue:
            free = self._capacity - self._in_use
            unit = next((u for u in units if cost(u) <= free // 4), smallest)
        granted = await self._acquire(cost(unit))
        held = StreamLease(self, unit, granted, cost)
        try:
            yield held
        finally:
            self._release(held.nbytes)

    @asynccontextmanager
    async def lease(self, nbytes: int):
        """Hold ``nbytes`` of the budget for the body of the ``async with``.

        Raises ``S3Error("SlowDown")`` with ``Retry-After`` when admission takes longer than
        the admission timeout.
        """
        granted = await self._acquire(nbytes)
        try:
            yield granted
        finally:
            self._release(granted)

    async def _acquire(self, nbytes: int) -> int:
        nbytes = max(1, min(nbytes, self._capacity))
        if not self._queue and self._in_use + nbytes <= self._capacity:
            self._in_use += nbytes
            self.stats.in_use = self._in_use
            self.stats.admitted += 1
            return nbytes
        waiter = _Waiter(nbytes)
        self._queue.append(waiter)
        self.stats.waiting = len(self._queue)
        queued_at = trio.current_time()
        try:
            with trio.move_on_after(self._admission_timeout):
                await waiter.event.wait()
        except BaseException:
            self.stats.wait_seconds += trio.current_time() - queued_at
            # Cancelled while queued: a grant made in the same tick is given back, an
            # ungranted place in the queue is left, and the next waiter may now fit.
            if waiter.granted:
                self._release(nbytes)
            else:
                self._leave_queue(waiter)
            self.stats.cancelled_while_waiting += 1
            raise
        self.stats.wait_seconds += trio.current_time() - queued_at
        if waiter.granted:
            self.stats.admitted += 1
            return nbytes
        self._leave_queue(waiter)
        self.stats.rejected += 1
        raise S3Error("SlowDown", headers={"Retry-After": "1"})

    def _leave_queue(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self._wake()

    def _release(self, nbytes: int) -> None:
        self._in_use -= nbytes
        self.stats.in_use = self._in_use
        self._wake()

    def _wake(self) -> None:
        while self._queue and self._in_use + self._queue[0].nbytes <= self._capacity:
            waiter = self._queue.popleft()
            waiter.granted = True
            self._in_use += waiter.nbytes
            self.stats.in_use = self._in_use
            waiter.event.set()
        self.stats.waiting = len(self._queue)


class StreamLease:
    """A stream's share of the budget: its unit, and the bytes held for it."""

    __slots__ = ("_budget", "_cost", "nbytes", "unit")

    def __init__(
        self, budget: MemoryBudget, unit: int, nbytes: int, cost: Callable[[int], int]
    ) -> None:
        self._budget = budget
        self._cost = cost
        self.unit = unit
        self.nbytes = nbytes

    def shrink(self, unit: int) -> None:
        """Move in units of ``unit`` from now on (never more than before), and give back what
        that no longer needs."""
        if unit >= self.unit:
            return
        keep = min(self.nbytes, max(1, self._cost(unit)))
        freed = self.nbytes - keep
        self.unit, self.nbytes = unit, keep
        if freed:
            self._budget._release(freed)
