"""API latency under concurrent load: `GET /api/v1/leads/{id}` and the journey
view, against `/healthz` under the same load.

    python -m bench.api_latency [--leads 200] [--requests 2000] [--concurrency 20]

The script captures leads through the API; a campaign with a `lead_created`
trigger sends each the welcome email and then waits 30 days, so every
journey has a live lead workflow and a live enrollment to query. Then, in
alternating rounds, `--concurrency` clients send requests back to back to one
route at a time, spread over all leads:

- `/healthz` is the baseline: it runs one database query and one Temporal
  health check, so it pays the same HTTP stack, threadpool, database and
  Temporal round trips as the routes measured, and nothing of their own work;
- `GET /api/v1/leads/{id}` reads the lead and writes an audit entry;
- `GET /api/v1/leads/{id}/journey` reads the lead, its enrollments, events
  and messages, writes an audit entry, and queries the lead workflow and
  each enrollment workflow.
"""

import argparse
import subprocess
from collections.abc import Callable

from bench.load import drive
from bench.machine import CpuMeter, Report, describe_machine, summarize_ms
from bench.stack import (
    WELCOME_EMAIL,
    BenchStack,
    add_common_arguments,
    capture_leads,
    expect,
    run_benchmark_with_worker,
    wait_for_mails,
    wait_for_pollers,
)

ROUTES: dict[str, Callable[[str], str]] = {
    "/healthz (baseline)": lambda _lead_id: "/healthz",
    "GET /leads/{id}": lambda lead_id: f"/api/v1/leads/{lead_id}",
    "GET /leads/{id}/journey": lambda lead_id: f"/api/v1/leads/{lead_id}/journey",
}


async def load_route(
    stack: BenchStack,
    path_for: Callable[[str], str],
    lead_ids: list[str],
    requests: int,
    concurrency: int,
) -> list[float]:
    async with stack.async_api(concurrency) as api:

        async def get(index: int) -> None:
            response = await api.get(path_for(lead_ids[index % len(lead_ids)]))
            expect(response, 200)

        return (await drive(requests, concurrency, get)).durations


async def measure(
    args: argparse.Namespace, stack: BenchStack, worker: subprocess.Popen[bytes]
) -> Report:
    client = await stack.client()
    await wait_for_pollers(client, stack.task_queue, worker)
    with stack.api() as api:
        definition = {
            "name": "Bench API latency",
            "trigger": {"type": "lead_created"},
            "sequence": [WELCOME_EMAIL, {"type": "wait", "duration": "30 days"}],
        }
        expect(api.post("/api/v1/nurturing/campaigns", json=definition), 201)
    lead_ids = await capture_leads(stack, args.leads, concurrency=8, prefix="api")
    await wait_for_mails(stack, args.leads, timeout=max(120, args.leads))
    with stack.api() as api:
        journey = expect(api.get(f"/api/v1/leads/{lead_ids[0]}/journey"), 200)
    if not journey["live"] or not journey["enrollments"][0]["live"]:
        raise RuntimeError(f"the journey of {lead_ids[0]} is not live: {journey}")

    warmup = max(1, args.requests // 20)
    for path_for in ROUTES.values():
        await load_route(stack, path_for, lead_ids, warmup, args.concurrency)
    durations: dict[str, list[float]] = {name: [] for name in ROUTES}
    share = args.requests // args.rounds
    meter = CpuMeter().start()
    for number in range(args.rounds):
        count = share if number < args.rounds - 1 else args.requests - share * number
        for name, path_for in ROUTES.items():
            durations[name] += await load_route(
                stack, path_for, lead_ids, count, args.concurrency
            )
    cpu = meter.stop()

    summaries = {name: summarize_ms(values) for name, values in durations.items()}
    baseline = summaries["/healthz (baseline)"]
    report = Report("API latency under concurrent load")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"requests: {args.requests:,} per route after {warmup} warm-up, "
        f"{args.concurrency} in flight, {args.rounds} alternating rounds, over "
        f"{args.leads} leads with a live workflow and enrollment each"
    )
    for name, summary in summaries.items():
        report.line(
            f"{name:<26} median {summary['median_ms']:6.1f} ms, p99 "
            f"{summary['p99_ms']:6.1f} ms, p99 / baseline p99 "
            f"{summary['p99_ms'] / baseline['p99_ms']:.1f}"
        )
    report.figures = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "leads": args.leads,
        "routes": summaries,
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--leads", type=int, default=200, help="Leads to read.")
    parser.add_argument(
        "--requests", type=int, default=2000, help="Requests to each route."
    )
    parser.add_argument(
        "--concurrency", type=int, default=20, help="Requests in flight."
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="Alternating rounds of the routes."
    )
    args = parser.parse_args()
    run_benchmark_with_worker(
        args, "main,send", lambda stack, worker: measure(args, stack, worker)
    )


if __name__ == "__main__":
    main()
