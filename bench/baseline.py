"""Trivial workflows that the benchmarks measure Temporal itself with.

`python -m bench.baseline --address HOST:PORT --task-queue QUEUE` runs a
worker for them as a process of its own, as the product's worker runs: the
baseline then pays the same process boundary and gRPC hops as the product.
"""

import argparse
import asyncio
import os
import signal

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from nurture.codec import data_converter


@workflow.defn
class NoopWorkflow:
    """Returns at once; the ingestion baseline only starts it."""

    @workflow.run
    async def run(self, name: str) -> str:
        return name


@workflow.defn
class CounterWorkflow:
    """Counts `bump` signals; the query `count` returns how many arrived."""

    def __init__(self) -> None:
        self._count = 0
        self._done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._done)
        return self._count

    @workflow.signal
    def bump(self) -> None:
        self._count += 1

    @workflow.signal
    def finish(self) -> None:
        self._done = True

    @workflow.query
    def count(self) -> int:
        return self._count


async def serve(address: str, task_queue: str) -> None:
    client = await Client.connect(
        address,
        data_converter=data_converter(os.environ.get("PAYLOAD_ENCRYPTION_KEYS", "")),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Worker(
        client, task_queue=task_queue, workflows=[NoopWorkflow, CounterWorkflow]
    ):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the baseline workflows.")
    parser.add_argument("--address", required=True, help="Temporal HOST:PORT.")
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.task_queue))


if __name__ == "__main__":
    main()
