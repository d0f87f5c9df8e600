"""Closed-loop load: a fixed number of calls in flight until all are done."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class LoadResult:
    """Wall time of a whole load run and the duration of each call, in seconds."""

    elapsed: float
    durations: list[float]

    @property
    def per_second(self) -> float:
        return len(self.durations) / self.elapsed


async def drive(
    count: int,
    concurrency: int,
    call: Callable[[int], Awaitable[None]],
) -> LoadResult:
    """Run call(0) ... call(count - 1), `concurrency` of them at a time.

    Each of `concurrency` tasks starts its next call as soon as its last one
    returns, so the number in flight stays constant. An exception in a call
    stops the run and is raised.
    """
    next_index = 0
    durations: list[float] = []

    async def loop() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            began = time.perf_counter()
            await call(index)
            durations.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(loop())
    return LoadResult(time.perf_counter() - began, durations)
