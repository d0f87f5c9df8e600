"""The Temporal worker: runs the workflows and activities of nurture.

Two task queues, so each part scales on its own:
- `NURTURE_TASK_QUEUE` (default `nurture`): workflows and database activities;
- `<that>-send`: provider calls, limited to SEND_RATE_PER_SECOND for the
  whole queue, so a large campaign cannot exceed the provider account's limits.
"""

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy as sa
from temporalio.client import Client
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.journeys import JourneyActivities
from activities.leads import LeadActivities
from activities.messaging import MessagingActivities
from activities.providers import (
    ConsoleEmailSender,
    ConsoleSmsSender,
    CrmTaskSender,
    EmailSender,
    SendGridEmailSender,
    SmsSender,
    TwilioSmsSender,
)
from nurture.config import DATA_DIR, Settings, get_settings
from nurture.db import create_db_engine, migrate
from nurture.logs import configure_logging
from nurture.rendering import TemplateRenderer
from nurture.temporal import connect, ensure_search_attributes
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow

logger = logging.getLogger("nurture.worker")

ACTIVITY_THREADS = 20
# On shutdown, activities in progress get this long to finish before cancelling.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)


def email_sender_for(settings: Settings) -> EmailSender:
    if settings.email_provider == "sendgrid":
        return SendGridEmailSender(
            settings.sendgrid_api_key, settings.sendgrid_host, settings.email_from
        )
    return ConsoleEmailSender(DATA_DIR / "outbox", settings.email_from)


def sms_sender_for(settings: Settings) -> SmsSender:
    if settings.sms_provider == "twilio":
        return TwilioSmsSender(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.sms_from,
            settings.twilio_base_url,
            f"{settings.public_base_url}/api/v1/webhooks/twilio/status",
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
) -> list[Worker]:
    """Build the main worker and the send worker for the configured task queues.

    By default a bug in workflow code fails the workflow task, which Temporal
    retries until a fixed worker is deployed. Tests set `fail_workflow_on_bug`
    so that such a bug fails the workflow, and the test, at once.
    """
    leads = LeadActivities(engine, settings)
    journeys = JourneyActivities(engine, settings)
    messaging = MessagingActivities(
        engine,
        TemplateRenderer(settings.templates_dir),
        settings.email_provider,
        settings.sms_provider,
        settings.caps,
    )
    delivery = DeliveryActivities(
        engine,
        email_sender or email_sender_for(settings),
        sms_sender or sms_sender_for(settings),
        CrmTaskSender(settings.crm_webhook_url),
    )
    main = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[LeadWorkflow, NurtureWorkflow],
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
    send = Worker(
        client,
        task_queue=settings.send_task_queue,
        activities=[delivery.deliver_message],
        activity_executor=executor,
        max_task_queue_activities_per_second=settings.send_rate_per_second,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )
    return [main, send]


async def run(settings: Settings) -> None:
    migrate(settings.database_url)
    engine = create_db_engine(settings.database_url)
    client = await connect(settings)
    await ensure_search_attributes(client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with ThreadPoolExecutor(max_workers=ACTIVITY_THREADS) as executor:
        workers = build_workers(client, settings, engine, executor)
        logger.info(
            "worker polling %s and %s on %s",
            settings.task_queue,
            settings.send_task_queue,
            settings.temporal_address,
        )
        async with workers[0], workers[1]:
            await stop.wait()
            logger.info("worker stopping: finishing activities in progress")
    engine.dispose()


def main() -> None:
    settings = get_settings()
    configure_logging()
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
