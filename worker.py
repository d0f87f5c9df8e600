"""The Temporal worker: runs the workflows and activities of nurture.

Three task queues, so each part scales on its own:
- `NURTURE_TASK_QUEUE` (default `nurture`): workflows and database activities;
- `<that>-send-email` and `<that>-send-sms`: provider calls, limited to
  EMAIL_RATE_PER_SECOND and SMS_RATE_PER_SECOND for all workers together, so
  a large campaign cannot exceed the provider account's limits; `<that>-send`
  carries sales tasks at SEND_RATE_PER_SECOND;
- `<that>-score`: model training and batch rescoring, which are CPU-bound.

`python worker.py --queues score` runs one part alone; the default is all.
"""

import argparse
import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from prometheus_client import start_http_server
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

from activities.delivery import DeliveryActivities
from activities.journeys import JourneyActivities, SplitWinnerCheckInput
from activities.leads import LeadActivities
from activities.messaging import MessagingActivities
from activities.providers import (
    ConsoleEmailSender,
    ConsoleSmsSender,
    EmailSender,
    SendGridEmailSender,
    SmsSender,
    TwilioSmsSender,
)
from activities.scoring import ScoringActivities
from nurture.config import DATA_DIR, Settings, get_settings
from nurture.crm import crm_task_sender_for
from nurture.db import create_db_engine, migrate
from nurture.logs import LogIdsInterceptor, configure_logging
from nurture.rendering import TemplateRenderer
from nurture.temporal import connect, ensure_search_attributes
from nurture.twilio_events import status_callback_url
from nurture.unsubscribe import UnsubscribeLinks
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow, SplitWinnerWorkflow
from workflows.training import ModelTrainingWorkflow, RescoreAllWorkflow

logger = logging.getLogger("nurture.worker")

# On shutdown, activities in progress get this long to finish before cancelling.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)
# How often the schedule checks the winner rules of the splits.
SPLIT_WINNER_CHECK_EVERY = timedelta(minutes=15)


def email_sender_for(settings: Settings) -> EmailSender:
    if settings.email_provider == "sendgrid":
        return SendGridEmailSender(
            settings.sendgrid_api_key,
            settings.sendgrid_host,
            settings.email_from,
            lookup_delay_seconds=settings.provider_lookup_grace_seconds,
        )
    return ConsoleEmailSender(DATA_DIR / "outbox", settings.email_from)


def sms_sender_for(settings: Settings) -> SmsSender:
    if settings.sms_provider == "twilio":
        return TwilioSmsSender(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.sms_from,
            settings.twilio_base_url,
            status_callback_url(settings),
        )
    return ConsoleSmsSender(DATA_DIR / "outbox")


def build_workers(
    client: Client,
    settings: Settings,
    engine: sa.Engine,
    executor: ThreadPoolExecutor,
    email_sender: EmailSender | None = None,
    sms_sender: SmsSender | None = None,
    fail_workflow_on_bug: bool = False,
    activity_slots: int | None = None,
) -> dict[str, list[Worker]]:
    """Build the main, send and score workers for the configured task queues.

    `activity_slots` caps the activities that the main worker and each send
    worker take at once; `executor` needs at least that many threads. None
    leaves the Temporal SDK's default, 100.

    By default a bug in workflow code fails the workflow task, which Temporal
    retries until a fixed worker is deployed. Tests set `fail_workflow_on_bug`
    so that such a bug fails the workflow, and the test, at once.
    """
    leads = LeadActivities(engine, settings)
    journeys = JourneyActivities(engine, settings)
    links = UnsubscribeLinks(settings.signing_secret, settings.public_base_url)
    messaging = MessagingActivities(
        engine,
        TemplateRenderer(settings.templates_dir),
        settings.email_provider,
        settings.sms_provider,
        settings.caps,
        settings.consent_policy,
        links,
    )
    delivery = DeliveryActivities(
        engine,
        email_sender or email_sender_for(settings),
        sms_sender or sms_sender_for(settings),
        crm_task_sender_for(settings, engine),
        settings.consent_policy,
        links,
    )
    main = Worker(
        client,
        task_queue=settings.task_queue,
        interceptors=[LogIdsInterceptor()],
        workflows=[
            LeadWorkflow,
            NurtureWorkflow,
            SplitWinnerWorkflow,
            ModelTrainingWorkflow,
            RescoreAllWorkflow,
        ],
        activities=[
            leads.enrich_lead,
            leads.score_lead,
            leads.plan_enrollments,
            leads.end_enrollment,
            leads.sync_lead_to_crm,
            messaging.prepare_message,
            messaging.read_message_engagement,
            journeys.evaluate_condition,
            journeys.plan_send,
            journeys.next_local_time,
            journeys.record_migration,
            journeys.assign_variant,
            journeys.decide_split_winners,
        ],
        activity_executor=executor,
        max_concurrent_activities=activity_slots,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_cached_workflows=settings.worker_max_cached_workflows,
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(
            maximum=settings.worker_max_concurrent_workflow_task_polls
        ),
        nonsticky_to_sticky_poll_ratio=settings.worker_nonsticky_to_sticky_poll_ratio,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        workflow_failure_exception_types=[Exception] if fail_workflow_on_bug else [],
    )
    # One queue per provider, each with its own rate limit for all workers
    # together. Sales tasks, and sends scheduled before the split, use the
    # plain send queue.
    send = [
        Worker(
            client,
            task_queue=queue,
            activities=[delivery.deliver_message],
            interceptors=[LogIdsInterceptor()],
            activity_executor=executor,
            max_concurrent_activities=activity_slots,
            max_task_queue_activities_per_second=rate,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
        for queue, rate in (
            (settings.send_task_queue, settings.send_rate_per_second),
            (settings.send_queue_for("email"), settings.email_rate_per_second),
            (settings.send_queue_for("sms"), settings.sms_rate_per_second),
        )
    ]
    scoring = ScoringActivities(engine, settings)
    score = Worker(
        client,
        task_queue=settings.score_task_queue,
        activities=[
            scoring.train_model,
            scoring.mark_training_failed,
            scoring.rescore_batch,
        ],
        activity_executor=executor,
        # Training takes both cores; more at once would only slow each down.
        max_concurrent_activities=2,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )
    return {"main": [main], "send": send, "score": [score]}


QUEUES = ("main", "send", "score")


def split_winner_schedule_id(settings: Settings) -> str:
    return f"split-winners-{settings.task_queue}"


async def ensure_split_winner_schedule(client: Client, settings: Settings) -> None:
    """Create the schedule that checks split winner rules, unless it exists.

    Every worker process calls this at start; the first one creates it.
    """
    schedule_id = split_winner_schedule_id(settings)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            SplitWinnerWorkflow.run,
            SplitWinnerCheckInput(),
            id=schedule_id,
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=SPLIT_WINNER_CHECK_EVERY)]
        ),
        # A check still running when the next is due makes that one redundant.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        return
    logger.info(
        "schedule %s created: split winner check every %s",
        schedule_id,
        SPLIT_WINNER_CHECK_EVERY,
    )


def split_address(address: str, setting: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 hosts in brackets) into host and port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"invalid {setting} {address!r}: write HOST:PORT, e.g. 127.0.0.1:9464"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def telemetry_runtime(metrics_address: str) -> Runtime:
    """Build the Temporal SDK runtime of a worker process.

    The SDK core's own log lines go through Python logging, so LOG_FORMAT and
    the masking filter apply to them too. With a metrics address, the SDK
    serves its worker metrics (temporal_*) at http://ADDRESS/metrics.
    """
    metrics = None
    if metrics_address:
        split_address(metrics_address, "WORKER_METRICS_ADDRESS")
        metrics = PrometheusConfig(bind_address=metrics_address)
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(
                    logger=logging.getLogger("temporalio.core")
                ),
            ),
            metrics=metrics,
        )
    )


def start_app_metrics_server(address: str) -> WSGIServer:
    """Serve this process's prometheus_client registry (nurture_*) at /metrics.

    The SDK's endpoint cannot include these counters, because the SDK
    exports from its own registry in the Rust core.
    """
    host, port = split_address(address, "WORKER_APP_METRICS_ADDRESS")
    server, _ = start_http_server(port, addr=host)
    return server


async def run(settings: Settings, queues: tuple[str, ...] = QUEUES) -> None:
    # Before the first client: clients and workers use the default runtime.
    Runtime.set_default(telemetry_runtime(settings.worker_metrics_address))
    metrics_server = None
    if settings.worker_app_metrics_address:
        metrics_server = start_app_metrics_server(settings.worker_app_metrics_address)
    logger.info(
        "worker metrics: Temporal SDK at %s, nurture at %s",
        settings.worker_metrics_address or "(off)",
        settings.worker_app_metrics_address or "(off)",
    )
    migrate(settings.database_url)
    engine = create_db_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    client = await connect(settings)
    await ensure_search_attributes(client)
    await ensure_split_winner_schedule(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    threads = settings.worker_max_concurrent_activities
    with ThreadPoolExecutor(max_workers=threads) as executor:
        built = build_workers(
            client, settings, engine, executor, activity_slots=threads
        )
        workers = [worker for name in queues for worker in built[name]]
        logger.info(
            "worker polling %s on %s",
            ", ".join(w.task_queue for w in workers),
            settings.temporal_address,
        )
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            await stop.wait()
            logger.info("worker stopping: finishing activities in progress")
    engine.dispose()
    if metrics_server is not None:
        metrics_server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the nurture Temporal worker.")
    parser.add_argument(
        "--queues",
        default=",".join(QUEUES),
        help="Comma-separated parts to run: main, send, score (default: all).",
    )
    args = parser.parse_args()
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        parser.error(f"--queues takes main, send and score; got {args.queues!r}")
    settings = get_settings()
    configure_logging()
    asyncio.run(run(settings, queues))


if __name__ == "__main__":
    main()
