"""Sending: messages per second through the rate-limited email queue, to the
fake SendGrid, against the fake's own ceiling.

    python -m bench.sending [--count 3000] [--rate 1000]

One run measures:

- baseline: the fake SendGrid (tests/fakes.py, in its own process) hit
  directly with the SendGrid SDK from as many threads as the send worker runs
  activities at once (WORKER_MAX_CONCURRENT_ACTIVITIES), each mail shaped as
  ours (custom args, categories, text and HTML);
- product: N leads enrolled in a campaign whose one step is the welcome email.
  While only the main worker runs, every enrollment renders and stores its
  message and schedules its send on `<queue>-send-email`. Then one send
  worker (`worker.py --queues send`) starts with EMAIL_RATE_PER_SECOND set
  to `--rate`, and drains the backlog. Each send reads consent and the
  suppression list, claims the outbox row, calls SendGrid through the SDK,
  and marks the row sent, while the main worker finishes each enrollment.
  The rate is messages between the first and the last arrival at the fake.

Before it reports, the script checks from the fake's log that every message
arrived exactly once (zero duplicates), and from the database that all N are
marked sent. It also reports the most mails the fake took in any one second,
against the rate limit.
"""

import argparse
import asyncio
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, Mail
from temporalio.api.enums.v1 import TaskQueueType

from bench.machine import (
    CpuBreakdown,
    CpuMeter,
    Report,
    describe_cpu_per_call,
    describe_machine,
)
from bench.stack import (
    WELCOME_EMAIL,
    BenchStack,
    SentMail,
    add_common_arguments,
    campaign,
    enroll_all,
    expect,
    run_benchmark_with_worker,
    seed_leads,
    wait_for_pollers,
)
from nurture.config import Settings
from nurture.db import create_db_engine

TEXT = "Hi there,\n\n" + "A line of a nurture email, as long as ours. " * 20
HTML = "<html><body>" + "<p>A paragraph of a nurture email.</p>" * 30 + "</body></html>"


def fake_ceiling(url: str, count: int, threads: int) -> float:
    """Return mails per second into the fake, sent with the SendGrid SDK."""

    def send(index: int) -> None:
        client = SendGridAPIClient("SG.bench", host=url)
        mail = Mail(
            from_email="nurture@example.com",
            to_emails=f"baseline-{index}@example.com",
            subject="Welcome",
            plain_text_content=TEXT,
            html_content=HTML,
        )
        mail.custom_arg = [
            CustomArg("message_id", f"baseline-{index}"),
            CustomArg("lead_id", f"baseline-lead-{index}"),
        ]
        mail.category = [Category("nurture"), Category("welcome_email")]
        response = client.send(mail)
        if response.status_code != 202:
            raise RuntimeError(f"the fake returned {response.status_code}")

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(send, range(count)))
    return count / (time.perf_counter() - began)


def duplicates(mails: list[SentMail]) -> int:
    counts = Counter(mail.message_id for mail in mails)
    return sum(count - 1 for count in counts.values())


def busiest_second(mails: list[SentMail]) -> int:
    """Return the maximum number of arrivals within any one-second window."""
    times = sorted(mail.received_at for mail in mails)
    most, start = 0, 0
    for end, arrived in enumerate(times):
        while arrived - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def count_messages(database_url: str, status: str) -> int:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM messages WHERE status = :status")
            return int(connection.execute(query, {"status": status}).scalar_one())
    finally:
        engine.dispose()


async def wait_for_messages(
    database_url: str, status: str, count: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while (found := count_messages(database_url, status)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out: only {found} of {count} messages are {status}"
            )
        await asyncio.sleep(0.5)


async def measure(
    args: argparse.Namespace, stack: BenchStack, main_worker: subprocess.Popen[bytes]
) -> Report:
    threads = Settings().worker_max_concurrent_activities
    baseline_count = min(args.count, args.baseline_count)
    ceiling = fake_ceiling(stack.fakes.sendgrid_url, baseline_count, threads)
    baseline_mails = stack.fakes.mails()
    if len(baseline_mails) != baseline_count or duplicates(baseline_mails):
        raise RuntimeError(
            f"baseline: {len(baseline_mails)} mails for {baseline_count} sends"
        )
    stack.fakes.reset()

    client = await stack.client()
    await wait_for_pollers(client, stack.task_queue, main_worker)
    with stack.api() as api:
        definition = campaign("Bench sending", [WELCOME_EMAIL])
        response = api.post("/api/v1/nurturing/campaigns", json=definition)
        campaign_id = expect(response, 201)["id"]
    lead_ids = seed_leads(stack.database.url, args.count)
    await enroll_all(stack, campaign_id, lead_ids, concurrency=8)
    await wait_for_messages(
        stack.database.url, "queued", args.count, timeout=max(120, args.count / 5)
    )

    meter = CpuMeter().start()
    send_worker = stack.start_worker("send", EMAIL_RATE_PER_SECOND=str(args.rate))
    email_queue = f"{stack.task_queue}-send-email"
    await wait_for_pollers(
        client, email_queue, send_worker, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    )
    workers = {"main worker": main_worker, "send worker": send_worker}
    breakdown = CpuBreakdown(lambda: stack.cpu_groups(**workers)).start()
    await wait_for_messages(
        stack.database.url, "sent", args.count, timeout=max(120, args.count / 2)
    )
    cpu_by_process = breakdown.stop()
    cpu = meter.stop()

    mails = stack.fakes.mails()
    repeated = duplicates(mails)
    if len(mails) - repeated != args.count:
        raise RuntimeError(f"{len(mails) - repeated} distinct mails, not {args.count}")
    span = mails[-1].received_at - mails[0].received_at
    rate = (len(mails) - 1) / span if span > 0 else float("inf")
    busiest = busiest_second(mails)

    report = Report("sending: email through the rate-limited send queue")
    report.line(f"machine:  {describe_machine(stack.database.describe())}")
    report.line(f"settings: {stack.describe_settings()}")
    report.line(f"load:     {cpu.describe()}")
    report.line(
        f"messages: {args.count:,}, one send worker, EMAIL_RATE_PER_SECOND="
        f"{args.rate:g}, {threads} activities at once"
    )
    report.line(
        f"baseline fake SendGrid via the SDK, {threads} threads: {ceiling:.1f} "
        f"mails/s ({baseline_count:,} mails, 0 duplicates)"
    )
    report.line(
        f"product send queue:  {rate:.1f} messages/s sustained over {span:.1f} s; "
        f"busiest second {busiest} (limit {args.rate:g}/s)"
    )
    report.line(f"product / baseline:  {rate / ceiling:.2f}")
    report.line(
        "CPU per message once the send worker polls: "
        + describe_cpu_per_call(cpu_by_process, args.count)
    )
    report.line(
        f"checked: {len(mails):,} mails at the fake, {repeated} duplicates, "
        f"{args.count:,} messages marked sent"
    )
    report.figures = {
        "count": args.count,
        "rate_limit": args.rate,
        "threads": threads,
        "per_second": rate,
        "baseline_per_second": ceiling,
        "ratio": rate / ceiling,
        "duplicates": repeated,
        "mails": len(mails),
        "busiest_second": busiest,
        "cpu_seconds": cpu_by_process,
        "cpu_busy": cpu.machine,
        "cpu_ours": cpu.ours,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--count", type=int, default=3000, help="Messages to send.")
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="EMAIL_RATE_PER_SECOND of the send worker (the product default is 10).",
    )
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=3000,
        help="Mails the baseline sends (at most --count).",
    )
    args = parser.parse_args()
    run_benchmark_with_worker(
        args, "main", lambda stack, worker: measure(args, stack, worker)
    )


if __name__ == "__main__":
    main()
