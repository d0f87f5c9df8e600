"""Lead ingestion through the API, against raw `start_workflow` on the same server.

    python -m bench.ingest [--count 5000] [--concurrency 50] [--database URL|sqlite]

One run on one Temporal dev server measures:

- baseline: `start_workflow` of a trivial workflow (bench.baseline's
  NoopWorkflow) from one client, with `--concurrency` calls in flight and the
  product's payload codec (AES-GCM);
- product: `POST /api/v1/leads` with `--concurrency` requests in flight, each
  a lead like examples/lead.json with its own address, to the API under
  uvicorn. Each request validates, de-duplicates, stores and scores the lead,
  starts its workflow and marks it synced.

The two alternate in `--rounds` rounds, so a change in the machine's load
during the run hits both. No worker runs during either, so both only start
workflows, and the engine's ceiling is the same for both. The CPU time that
each process (this one, Temporal, the API, PostgreSQL's backends) used per
call shows where the time goes. Before it reports, the script
checks that every request returned 201, that the database contains one lead
per request, and that Temporal lists one lead workflow per lead.
"""

import argparse
import asyncio
import copy
import json
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from bench.baseline import NoopWorkflow
from bench.load import LoadResult, drive
from bench.machine import (
    CpuBreakdown,
    CpuMeter,
    Report,
    describe_cpu_per_call,
    describe_machine,
    summarize_ms,
)
from bench.stack import BenchStack, add_common_arguments, run_benchmark
from nurture.config import PROJECT_ROOT
from nurture.db import create_db_engine

LEAD = json.loads((PROJECT_ROOT / "examples" / "lead.json").read_text())
GOAL_SHARE = 0.8
GOAL_PER_HOUR = 100_000


async def raw_starts(stack: BenchStack, count: int, concurrency: int) -> LoadResult:
    client = await stack.client()
    queue = f"baseline-{uuid.uuid4().hex[:8]}"

    async def start(index: int) -> None:
        await client.start_workflow(
            NoopWorkflow.run,
            f"lead-{index}",
            id=f"noop-{queue}-{index}",
            task_queue=queue,
        )

    return await drive(count, concurrency, start)


async def post_leads(
    stack: BenchStack, count: int, concurrency: int, run: str
) -> LoadResult:
    async with stack.async_api(concurrency) as api:

        async def post(index: int) -> None:
            lead = copy.deepcopy(LEAD)
            lead["contact"]["email"] = f"ingest-{run}-{index}@example.com"
            response = await api.post("/api/v1/leads", json=lead)
            if response.status_code != 201:
                raise RuntimeError(
                    f"lead {index}: expected 201, got {response.status_code}: "
                    f"{response.text[:300]}"
                )

        return await drive(count, concurrency, post)


def stored_leads(database_url: str) -> int:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(sa.text("SELECT count(*) FROM leads")).scalar_one()
            )
    finally:
        engine.dispose()


async def lead_workflows(stack: BenchStack, expected: int) -> int:
    """Count lead workflows; visibility lags a little, so wait up to 30 s."""
    client = await stack.client()
    deadline = time.monotonic() + 30
    while True:
        counted = await client.count_workflows('WorkflowType = "LeadWorkflow"')
        if counted.count >= expected or time.monotonic() > deadline:
            return counted.count
        await asyncio.sleep(0.5)


@dataclass
class Phase:
    """Calls, wall time, per-call durations and CPU seconds by process group."""

    calls: int = 0
    elapsed: float = 0.0
    durations: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, result: LoadResult, cpu: dict[str, float]) -> None:
        self.calls += len(result.durations)
        self.elapsed += result.elapsed
        self.durations += result.durations
        for name, seconds in cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + seconds

    @property
    def per_second(self) -> float:
        return self.calls / self.elapsed

    def cpu_per_call(self) -> str:
        return describe_cpu_per_call(self.cpu, self.calls)


async def measure(args: argparse.Namespace, stack: BenchStack) -> Report:
    warmup = max(1, min(args.count // 10, 100))
    await raw_starts(stack, warmup, args.concurrency)
    await post_leads(stack, warmup, args.concurrency, "warmup")

    # Rounds alternate, so a change in the machine's load hits both sides.
    baseline, ours = Phase(), Phase()
    rounds: list[tuple[float, float]] = []
    meter = CpuMeter().start()
    share = args.count // args.rounds
    for number in range(args.rounds):
        calls = share if number < args.rounds - 1 else args.count - share * number
        breakdown = CpuBreakdown(stack.cpu_groups).start()
        raw = await raw_starts(stack, calls, args.concurrency)
        baseline.add(raw, breakdown.stop())
        breakdown = CpuBreakdown(stack.cpu_groups).start()
        posted = await post_leads(stack, calls, args.concurrency, f"round{number}")
        ours.add(posted, breakdown.stop())
        rounds.append((raw.per_second, posted.per_second))
    cpu = meter.stop()

    stored = stored_leads(stack.database.url)
    workflows = await lead_workflows(stack, warmup + args.count)
    if stored != warmup + args.count or workflows != stored:
        raise RuntimeError(
            f"expected {warmup + args.count} leads and as many lead workflows; "
            f"found {stored} leads and {workflows} workflows"
        )

    ratio = ours.per_second / baseline.per_second
    per_hour = ours.per_second * 3600
    met = ratio >= GOAL_SHARE and per_hour >= GOAL_PER_HOUR
    latency = summarize_ms(ours.durations)
    report = Report("lead ingestion: POST /api/v1/leads vs raw start_workflow")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"calls:    {args.count:,} each after {warmup} warm-up, in {args.rounds} "
        f"alternating rounds, {args.concurrency} in flight, "
        f"{args.api_processes} API process(es), no worker running"
    )
    report.line(
        "rounds (baseline/s, product/s): "
        + ", ".join(f"{raw:.0f}/{posted:.0f}" for raw, posted in rounds)
    )
    report.line(f"baseline start_workflow:  {baseline.per_second:7.1f}/s")
    report.line(
        f"product POST /leads:      {ours.per_second:7.1f}/s = {per_hour:,.0f} "
        f"leads/hour (median {latency['median_ms']:.0f} ms, "
        f"p99 {latency['p99_ms']:.0f} ms)"
    )
    report.line(f"product / baseline:       {ratio:7.2f}")
    report.line(
        f"goal ({GOAL_SHARE:.0%} of baseline and {GOAL_PER_HOUR:,} leads/hour): "
        f"{'met' if met else 'missed'}"
    )
    report.line(f"CPU per start, baseline: {baseline.cpu_per_call()}")
    report.line(f"CPU per lead, product:   {ours.cpu_per_call()}")
    report.line(f"checked: {stored:,} leads stored, {workflows:,} lead workflows")
    report.figures = {
        "count": args.count,
        "concurrency": args.concurrency,
        "api_processes": args.api_processes,
        "rounds": rounds,
        "product_per_second": ours.per_second,
        "product_latency": latency,
        "baseline_per_second": baseline.per_second,
        "ratio": ratio,
        "leads_per_hour": per_hour,
        "goal_met": met,
        "stored_leads": stored,
        "lead_workflows": workflows,
        "cpu_seconds_baseline": baseline.cpu,
        "cpu_seconds_product": ours.cpu,
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--count", type=int, default=5000, help="Leads to post.")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="Requests or starts in flight."
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="Alternating rounds of each side."
    )
    parser.add_argument(
        "--api-processes", type=int, default=1, help="uvicorn worker processes."
    )
    args = parser.parse_args()
    run_benchmark(
        args,
        lambda stack: measure(args, stack),
        api_processes=args.api_processes,
    )


if __name__ == "__main__":
    main()
