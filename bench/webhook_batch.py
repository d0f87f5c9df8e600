"""Webhook batches: time to respond to one SendGrid Event Webhook batch of opens,
with the signals sent several leads at once against one after another.

    python -m bench.webhook_batch [--events 500] [--rounds 2]

The script captures `--events` leads through the API; a campaign with a
`lead_created` trigger sends each the welcome email to the fake SendGrid,
then waits 30 days. Each batch contains one new open event per lead, in the
Event Webhook's format with the custom args the mail carried, and the
script times `POST /api/v1/webhooks/sendgrid` until it responds. The API
stores every event, then signals each lead's nurture and lead workflows
before it responds.

The baseline is the same batch with `WEBHOOK_SIGNAL_CONCURRENCY=1`: one
signal after another, as the API sent them before the setting existed.
The API restarts between the sides, which alternate for `--rounds` rounds,
and every batch is checked: all events stored, none unmatched.
"""

import argparse
import subprocess
import time

from bench.machine import CpuMeter, Report, describe_machine
from bench.stack import (
    BenchStack,
    SentMail,
    add_common_arguments,
    expect,
    run_benchmark_with_worker,
)
from bench.webhook_latency import open_event, welcomed_leads

# The product's default, and what the API did before the setting.
CONCURRENT = "8"
SEQUENTIAL = "1"
TIMEOUT = 600.0


async def post_batch(
    stack: BenchStack, mails: list[SentMail], campaign_id: str
) -> float:
    """Post one open per mail in one batch; return the seconds until the response."""
    batch = [open_event(mail, campaign_id) for mail in mails]
    async with stack.async_api(1, timeout=TIMEOUT) as api:
        began = time.perf_counter()
        response = await api.post(
            "/api/v1/webhooks/sendgrid", json=batch, headers={"Authorization": ""}
        )
        elapsed = time.perf_counter() - began
    receipt = expect(response, 200)
    if receipt["stored"] != len(batch) or receipt["unmatched"] != 0:
        raise RuntimeError(f"the batch was not stored whole: {receipt}")
    return elapsed


async def measure(
    args: argparse.Namespace, stack: BenchStack, worker: subprocess.Popen[bytes]
) -> Report:
    campaign_id, mails = await welcomed_leads(
        stack, worker, args.events, "Bench webhook batch"
    )

    times: dict[str, list[float]] = {SEQUENTIAL: [], CONCURRENT: []}
    meter = CpuMeter().start()
    for _round in range(args.rounds):
        for concurrency in (SEQUENTIAL, CONCURRENT):
            assert stack.api_process is not None
            stack.stop(stack.api_process)
            stack.start_api(WEBHOOK_SIGNAL_CONCURRENCY=concurrency)
            times[concurrency].append(await post_batch(stack, mails, campaign_id))
    cpu = meter.stop()

    baseline = sum(times[SEQUENTIAL]) / len(times[SEQUENTIAL])
    ours = sum(times[CONCURRENT]) / len(times[CONCURRENT])
    report = Report("webhook batch: one SendGrid batch of opens until the response")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"batch:    {args.events:,} opens, one per lead, {args.rounds} rounds; "
        "one worker (main and send queues)"
    )
    rounds = ", ".join(
        f"{s:.1f}/{c:.1f}"
        for s, c in zip(times[SEQUENTIAL], times[CONCURRENT], strict=True)
    )
    report.line(f"rounds (baseline s / product s): {rounds}")
    report.line(
        f"baseline, WEBHOOK_SIGNAL_CONCURRENCY=1: {baseline:.2f} s a batch, "
        f"{baseline / args.events * 1000:.1f} ms an event"
    )
    report.line(
        f"product, WEBHOOK_SIGNAL_CONCURRENCY={CONCURRENT}: {ours:.2f} s a batch, "
        f"{ours / args.events * 1000:.1f} ms an event"
    )
    report.line(f"product / baseline: {ours / baseline:.2f} of the time")
    report.figures = {
        "events": args.events,
        "rounds": args.rounds,
        "baseline_seconds": times[SEQUENTIAL],
        "product_seconds": times[CONCURRENT],
        "ratio": ours / baseline,
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--events", type=int, default=500, help="Opens in a batch, one per lead."
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="Alternating rounds of each side."
    )
    args = parser.parse_args()
    run_benchmark_with_worker(
        args, "main,send", lambda stack, worker: measure(args, stack, worker)
    )


if __name__ == "__main__":
    main()
