"""Active enrollments: N nurture workflows waiting on timers at once.

    python -m bench.enrollments [--count 50000] [--concurrency 32]

The script stores N leads in bulk, submits a campaign whose first step waits
30 days, and enrolls every lead through `POST .../enrollments`, up to 1,000
lead ids a request. The route starts one workflow after another, so
`--concurrency` requests in flight make as many starts in flight. One worker
process polls the main queue. The script reports:

- the time until the API had started all N workflows, and the time until all
  N had run their first workflow task and were waiting on their timers
  (Temporal counts them by the CampaignStep search attribute);
- the worker's resident memory (VmRSS in /proc/PID/status) while idle before
  the run, which is the baseline, and with all N waiting, and its peak (VmHWM).
  The worker keeps at most WORKER_MAX_CACHED_WORKFLOWS workflows in memory,
  so memory follows that setting, not N;
- as a baseline for the start rate, raw `start_workflow` of a trivial workflow
  from one client with the same number in flight, on the same server.
"""

import argparse
import asyncio
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.baseline import NoopWorkflow
from bench.load import drive
from bench.machine import CpuMeter, Report, describe_machine, rss_kib
from bench.stack import (
    WELCOME_EMAIL,
    BenchStack,
    add_common_arguments,
    campaign,
    enroll_all,
    expect,
    run_benchmark_with_worker,
    seed_leads,
    wait_for_pollers,
)
from nurture.temporal import nurture_workflow_id
from workflows.nurture import NurtureWorkflow

WAIT = "30 days"


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise ValueError(f"process {pid} has no VmHWM line")


async def waiting_count(stack: BenchStack) -> int:
    client = await stack.client()
    counted = await client.count_workflows(
        'WorkflowType = "NurtureWorkflow" AND ExecutionStatus = "Running" '
        "AND CampaignStep = 1"
    )
    return counted.count


async def wait_until_waiting(stack: BenchStack, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        last = await waiting_count(stack)
        if last >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out: only {last} of {count} workflows wait on a timer"
            )
        await asyncio.sleep(1)


async def raw_start_rate(stack: BenchStack, count: int, concurrency: int) -> float:
    client = await stack.client()
    queue = f"baseline-{uuid.uuid4().hex[:8]}"

    async def start(index: int) -> None:
        await client.start_workflow(
            NoopWorkflow.run, "x", id=f"noop-{queue}-{index}", task_queue=queue
        )

    return (await drive(count, concurrency, start)).per_second


async def check_sample(stack: BenchStack, campaign_id: str, lead_id: str) -> str:
    """Return one enrollment's waiting reason; raise unless it waits 30 days."""
    client = await stack.client()
    handle = client.get_workflow_handle(nurture_workflow_id(campaign_id, lead_id))
    state = await handle.query(NurtureWorkflow.state)
    due = state.next_step_due_at
    if due is None or state.waiting_reason != f"wait {WAIT}":
        raise RuntimeError(f"enrollment of {lead_id} is not waiting: {state}")
    if due - datetime.now(UTC) < timedelta(days=29):
        raise RuntimeError(f"enrollment of {lead_id} is due too soon: {due}")
    return state.waiting_reason


async def measure(
    args: argparse.Namespace, stack: BenchStack, worker: subprocess.Popen[bytes]
) -> Report:
    client = await stack.client()
    await wait_for_pollers(client, stack.task_queue, worker)
    with stack.api() as api:
        definition = campaign(
            "Bench waiting enrollments",
            [
                {"type": "wait", "duration": WAIT},
                WELCOME_EMAIL,
            ],
        )
        response = api.post("/api/v1/nurturing/campaigns", json=definition)
        campaign_id = expect(response, 201)["id"]
    lead_ids = seed_leads(stack.database.url, args.count)
    await asyncio.sleep(args.settle)  # the worker's memory after its start
    idle = rss_kib(worker.pid)

    meter = CpuMeter().start()
    began = time.perf_counter()
    started = await enroll_all(stack, campaign_id, lead_ids, args.concurrency)
    await wait_until_waiting(stack, args.count, timeout=max(120, args.count / 10))
    waiting = time.perf_counter() - began
    cpu = meter.stop()
    await asyncio.sleep(2)
    after = rss_kib(worker.pid)
    peak = peak_rss_kib(worker.pid)
    if worker.poll() is not None:
        raise RuntimeError(f"the worker exited:\n{stack.log_of(worker)}")
    reason = await check_sample(stack, campaign_id, lead_ids[-1])
    baseline = await raw_start_rate(
        stack, min(args.count, args.baseline_count), args.concurrency
    )

    rate = args.count / waiting
    cache = stack.settings.get("WORKER_MAX_CACHED_WORKFLOWS", "1000 (default)")
    report = Report("active enrollments: nurture workflows waiting on timers")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"enrolled: {args.count:,} leads, up to 1,000 a request, "
        f"{args.concurrency} requests in flight; 1 worker (main queue), "
        f"sticky cache {cache} workflows"
    )
    report.line(
        f"API started all workflows in {started:.1f} s; all waiting on their "
        f"timer after {waiting:.1f} s = {rate:.1f} enrollments/s"
    )
    report.line(
        f"baseline start_workflow, {args.concurrency} in flight: {baseline:.1f}/s; "
        f"enrollments / baseline: {rate / baseline:.2f}"
    )
    report.line(
        f"worker RSS: idle {idle / 1024:.0f} MiB (baseline), with {args.count:,} "
        f"waiting {after / 1024:.0f} MiB (+{(after - idle) / 1024:.0f} MiB), "
        f"peak {peak / 1024:.0f} MiB"
    )
    report.line(f"checked: {args.count:,} running at step 1; a sample: {reason!r}")
    report.figures = {
        "count": args.count,
        "concurrency": args.concurrency,
        "started_seconds": started,
        "waiting_seconds": waiting,
        "per_second": rate,
        "baseline_per_second": baseline,
        "ratio": rate / baseline,
        "rss_idle_kib": idle,
        "rss_after_kib": after,
        "rss_peak_kib": peak,
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--count", type=int, default=50_000, help="Enrollments.")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="Enrollment requests in flight."
    )
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=2000,
        help="Trivial workflows the baseline starts (at most --count).",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="Seconds the worker idles before its memory is read as the baseline.",
    )
    args = parser.parse_args()
    run_benchmark_with_worker(
        args, "main", lambda stack, worker: measure(args, stack, worker)
    )


if __name__ == "__main__":
    main()
