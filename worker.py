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
from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.journeys import JourneyActivities
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
from nurture.logs import configure_logging
from nurture.rendering import TemplateRenderer
from nurture.temporal import connect, ensure_search_attributes
from nurture.twilio_events import status_callback_url
from nurture.unsubscribe import UnsubscribeLinks
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow
from workflows.training import ModelTrainingWorkflow, RescoreAllWorkflow

logger = logging.getLogger("nurture.worker")

ACTIVITY_THREADS = 20
# On shutdown, activities in progress get this long to finish before cancelling.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)


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
) -> dict[str, list[Worker]]:
    """Build the main, send and score workers for the configured task queues.

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
        workflows=[
            LeadWorkflow,
            NurtureWorkflow,
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
        ],
        activity_executor=executor,
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
            activity_executor=executor,
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
    engine = create_db_engine(settings.database_url)
    client = await connect(settings)
    await ensure_search_attributes(client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with ThreadPoolExecutor(max_workers=ACTIVITY_THREADS) as executor:
        built = build_workers(client, settings, engine, executor)
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
