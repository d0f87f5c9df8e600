"""Webhook to state: from a SendGrid open event posted to the webhook until the
lead's journey view shows it, against a raw signal round trip.

    python -m bench.webhook_latency [--samples 200]

The script captures leads through the API; a campaign with a `lead_created`
trigger sends each one the welcome email to the fake SendGrid, then waits
30 days. For one lead at a time, the script posts SendGrid's open event for
that email to `/api/v1/webhooks/sendgrid`, in the Event Webhook's format and
with the custom args the mail carried. It then reads `GET .../journey` back
to back until the journey's stage has left `new`. The stage comes from a
query of the live lead workflow, so the time covers storing the event, the
signal to the lead workflow, the workflow's rescoring activity, and the query.

The baseline is the floor of that path in Temporal itself. This process
signals a trivial workflow (bench.baseline's CounterWorkflow, run by a
worker process of its own), then reads its query back to back until it
shows the signal. Both sides poll the same way, one sample at a time, so
the difference is what the product adds: HTTP, the database, and the
activity round trip of the rescoring.
"""

import argparse
import copy
import json
import subprocess
import time
import uuid

from bench.baseline import CounterWorkflow
from bench.machine import CpuMeter, Report, describe_machine, summarize_ms
from bench.stack import (
    WELCOME_EMAIL,
    BenchStack,
    SentMail,
    add_common_arguments,
    capture_leads,
    expect,
    run_benchmark_with_worker,
    wait_for_mails,
    wait_for_pollers,
)
from nurture.config import PROJECT_ROOT

EVENTS = PROJECT_ROOT / "tests" / "examples" / "sendgrid" / "events.json"
TIMEOUT = 60.0


def open_event(mail: SentMail, campaign_id: str) -> dict[str, object]:
    """SendGrid's open event for one mail, as the Event Webhook posts it."""
    examples = json.loads(EVENTS.read_text())
    event = copy.deepcopy(next(e for e in examples if e["event"] == "open"))
    for example_arg in ("lead_id", "campaign_step"):
        event.pop(example_arg, None)
    event.update(
        email=mail.to,
        timestamp=int(time.time()),
        sg_event_id=uuid.uuid4().hex,
        sg_message_id=f"{mail.x_message_id}.filterdrecv-bench-1.0",
        # SendGrid repeats a message's custom args in each of its events.
        message_id=mail.message_id,
        lead_id=mail.lead_id,
        campaign_id=campaign_id,
    )
    return event


async def product_samples(
    stack: BenchStack, mails: list[SentMail], campaign_id: str
) -> tuple[list[float], list[float]]:
    """Return seconds until the journey lists the open, and until its stage moves."""
    listed, moved = [], []
    async with stack.async_api(2) as api:
        for mail in mails:
            event = open_event(mail, campaign_id)
            began = time.perf_counter()
            response = await api.post(
                "/api/v1/webhooks/sendgrid", json=[event], headers={"Authorization": ""}
            )
            if expect(response, 200)["unmatched"] != 0:
                raise RuntimeError(f"the open of {mail.message_id} matched no lead")
            seen_at = None
            while True:
                journey = expect(
                    await api.get(f"/api/v1/leads/{mail.lead_id}/journey"), 200
                )
                now = time.perf_counter()
                if seen_at is None and any(
                    e["type"] == "open" for e in journey["recentEngagement"]
                ):
                    seen_at = now
                if seen_at is not None and journey["stage"] != "new":
                    break
                if now - began > TIMEOUT:
                    raise TimeoutError(
                        f"timed out: the journey of lead {mail.lead_id} "
                        f"still shows stage new after {TIMEOUT:.0f} s"
                    )
            listed.append(seen_at - began)
            moved.append(now - began)
    return listed, moved


async def baseline_samples(stack: BenchStack, count: int) -> list[float]:
    client = await stack.client()
    queue = f"baseline-{uuid.uuid4().hex[:8]}"
    worker = stack.start_baseline_worker(queue)
    await wait_for_pollers(client, queue, worker)
    handle = await client.start_workflow(
        CounterWorkflow.run, id=f"counter-{queue}", task_queue=queue
    )
    await handle.query(CounterWorkflow.count)  # its first task has run
    samples = []
    for number in range(1, count + 1):
        began = time.perf_counter()
        await handle.signal(CounterWorkflow.bump)
        while await handle.query(CounterWorkflow.count) < number:
            if time.perf_counter() - began > TIMEOUT:
                raise TimeoutError("the baseline workflow missed a signal")
        samples.append(time.perf_counter() - began)
    await handle.signal(CounterWorkflow.finish)
    stack.stop(worker)
    return samples


async def welcomed_leads(
    stack: BenchStack, worker: subprocess.Popen[bytes], count: int, name: str
) -> tuple[str, list[SentMail]]:
    """Capture `count` leads that a campaign welcomes and then keeps waiting.

    Returns the campaign's id and the welcome mails the fake SendGrid took.
    """
    client = await stack.client()
    await wait_for_pollers(client, stack.task_queue, worker)
    with stack.api() as api:
        definition = {
            "name": name,
            "trigger": {"type": "lead_created"},
            "sequence": [WELCOME_EMAIL, {"type": "wait", "duration": "30 days"}],
        }
        response = api.post("/api/v1/nurturing/campaigns", json=definition)
        campaign_id: str = expect(response, 201)["id"]
    await capture_leads(stack, count, concurrency=8, prefix=name.split()[-1])
    mails = await wait_for_mails(stack, count, timeout=max(120, count))
    return campaign_id, mails


async def measure(
    args: argparse.Namespace, stack: BenchStack, worker: subprocess.Popen[bytes]
) -> Report:
    total = args.samples + args.warmup
    campaign_id, mails = await welcomed_leads(
        stack, worker, total, "Bench webhook latency"
    )

    # Warm-up samples of both sides are left out.
    await product_samples(stack, mails[: args.warmup], campaign_id)
    meter = CpuMeter().start()
    listed, moved = await product_samples(stack, mails[args.warmup :], campaign_id)
    baseline = await baseline_samples(stack, args.samples + args.warmup)
    cpu = meter.stop()
    baseline = baseline[args.warmup :]

    ours, raw = summarize_ms(moved), summarize_ms(baseline)
    listed_summary = summarize_ms(listed)
    report = Report("webhook to state: SendGrid open until the journey shows it")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"samples:  {args.samples} opens, one at a time, after {args.warmup} "
        "warm-up; one worker (main and send queues)"
    )
    report.line(
        f"baseline signal until query shows it: median {raw['median_ms']:.1f} ms, "
        f"p99 {raw['p99_ms']:.1f} ms"
    )
    report.line(
        f"product open until journey stage moves: median {ours['median_ms']:.1f} "
        f"ms, p99 {ours['p99_ms']:.1f} ms"
    )
    report.line(
        f"  (the open in recentEngagement, from the database: median "
        f"{listed_summary['median_ms']:.1f} ms, "
        f"p99 {listed_summary['p99_ms']:.1f} ms)"
    )
    report.line(
        f"product / baseline: median {ours['median_ms'] / raw['median_ms']:.1f}, "
        f"p99 {ours['p99_ms'] / raw['p99_ms']:.1f}"
    )
    report.figures = {
        "samples": args.samples,
        "product": ours,
        "product_listed": listed_summary,
        "baseline": raw,
        "ratio_median": ours["median_ms"] / raw["median_ms"],
        "ratio_p99": ours["p99_ms"] / raw["p99_ms"],
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--samples", type=int, default=200, help="Opens to time.")
    parser.add_argument(
        "--warmup", type=int, default=10, help="Samples left out at the start."
    )
    args = parser.parse_args()
    run_benchmark_with_worker(
        args, "main,send", lambda stack, worker: measure(args, stack, worker)
    )


if __name__ == "__main__":
    main()
