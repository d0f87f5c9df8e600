"""The API's calls into Temporal: start, signal and query the lead workflows."""

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import TemporalGateway, TemporalUnavailable
from nurture.config import Settings
from nurture.contracts import (
    BehaviorSignal,
    EngagementSignal,
    LeadState,
    LeadWorkflowInput,
    NurtureState,
)
from nurture.db import is_database_unavailable, session_scope
from nurture.models import Lead, utcnow
from nurture.privacy import (
    ERASED,
    delete_lead_workflows,
    finish_erasure,
    pending_erasures,
)
from nurture.temporal import LEAD_ID, lead_workflow_id
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow

logger = logging.getLogger(__name__)

RECONCILE_INTERVAL_SECONDS = 15
# A lead younger than this may still have its start in flight in a request.
RECONCILE_GRACE = timedelta(seconds=10)
RECONCILE_BATCH = 200
# Deadlines of the API's calls to Temporal, retries included, so a request
# waits this long at most while Temporal is down: a web form should not hang.
START_TIMEOUT = timedelta(seconds=3)
QUERY_TIMEOUT = timedelta(seconds=5)


async def signal_lead(
    client: Client, settings: Settings, lead_id: str, signal: BehaviorSignal | None
) -> None:
    """Start the lead's workflow if it is not running, and send it the signal.

    Without a signal this only starts the workflow. A lead never has two
    workflows, because the workflow id is derived from the lead id.
    """
    workflow_id = lead_workflow_id(lead_id)
    search_attributes = TypedSearchAttributes([SearchAttributePair(LEAD_ID, lead_id)])
    if signal is None:
        await client.start_workflow(
            LeadWorkflow.run,
            LeadWorkflowInput(lead_id=lead_id),
            id=workflow_id,
            task_queue=settings.task_queue,
            search_attributes=search_attributes,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            rpc_timeout=START_TIMEOUT,
        )
    else:
        await client.start_workflow(
            LeadWorkflow.run,
            LeadWorkflowInput(lead_id=lead_id),
            id=workflow_id,
            task_queue=settings.task_queue,
            search_attributes=search_attributes,
            start_signal="behavior",
            start_signal_args=[signal],
            rpc_timeout=START_TIMEOUT,
        )


def mark_synced(engine: sa.Engine, lead_id: str, synced: bool) -> None:
    # A single UPDATE without reading the lead first, because this runs after
    # every lead capture and event.
    with engine.begin() as connection:
        connection.execute(
            sa.update(Lead)
            .where(col(Lead.id) == lead_id)
            .values(workflow_synced_at=utcnow() if synced else None)
        )


async def notify_lead(
    gateway: TemporalGateway,
    settings: Settings,
    engine: sa.Engine,
    lead_id: str,
    signal: BehaviorSignal | None,
) -> bool:
    """Start or signal a lead's workflow, recording whether Temporal accepted it.

    The lead and its events are already stored, so a failure here loses
    nothing: the reconciler tries again and the workflow rescores from the
    database.
    """
    try:
        await signal_lead(await gateway.client(), settings, lead_id, signal)
    except (RPCError, TemporalUnavailable) as error:
        logger.warning("lead %s: workflow start or signal failed: %s", lead_id, error)
        await run_in_threadpool(mark_synced, engine, lead_id, False)
        return False
    await run_in_threadpool(mark_synced, engine, lead_id, True)
    return True


async def signal_enrollment(
    gateway: TemporalGateway, workflow_id: str, signal: EngagementSignal
) -> None:
    """Send an engagement signal to a nurture workflow, if it still runs.

    A failed signal is logged, not raised: the event is already stored, and
    the workflow reads stored engagement before it decides a condition.
    """
    try:
        client = await gateway.client()
        await client.get_workflow_handle(workflow_id).signal(
            NurtureWorkflow.engagement, signal, rpc_timeout=START_TIMEOUT
        )
    except TemporalUnavailable as error:
        logger.warning(
            "enrollment %s: %s not signalled: %s", workflow_id, signal.type, error
        )
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            logger.info(
                "enrollment %s has ended; %s not signalled", workflow_id, signal.type
            )
        else:
            logger.warning(
                "enrollment %s: %s signal failed: %s", workflow_id, signal.type, error
            )


async def query_lead(client: Client, lead_id: str) -> LeadState | None:
    try:
        return await client.get_workflow_handle(lead_workflow_id(lead_id)).query(
            LeadWorkflow.state, rpc_timeout=QUERY_TIMEOUT
        )
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def query_enrollment(client: Client, workflow_id: str) -> NurtureState | None:
    try:
        return await client.get_workflow_handle(workflow_id).query(
            NurtureWorkflow.state, rpc_timeout=QUERY_TIMEOUT
        )
    except WorkflowQueryFailedError as error:
        logger.warning("query of %s failed: %s", workflow_id, error)
        return None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def _unsynced_leads(engine: sa.Engine) -> list[str]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(Lead.id)
                .where(
                    col(Lead.workflow_synced_at).is_(None),
                    col(Lead.created_at) < utcnow() - RECONCILE_GRACE,
                    col(Lead.status) != ERASED,
                )
                .order_by(col(Lead.created_at))
                .limit(RECONCILE_BATCH)
            ).all()
        )


def _still_unsynced(engine: sa.Engine, lead_id: str) -> bool:
    with session_scope(engine) as session:
        lead = session.get(Lead, lead_id)
        return (
            lead is not None
            and lead.workflow_synced_at is None
            and lead.status != ERASED
        )


async def reconcile_once(
    gateway: TemporalGateway, settings: Settings, engine: sa.Engine
) -> int:
    """Start or nudge the workflows of leads whose last start or signal failed."""
    lead_ids = await run_in_threadpool(_unsynced_leads, engine)
    done = 0
    for lead_id in lead_ids:
        # The list may be minutes old when Temporal is slow; a lead erased or
        # synced since then is left alone.
        if not await run_in_threadpool(_still_unsynced, engine, lead_id):
            continue
        signal = BehaviorSignal(type="resync")
        if await notify_lead(gateway, settings, engine, lead_id, signal):
            done += 1
    if lead_ids:
        logger.info(
            "reconciler: %d of %d leads synced with Temporal", done, len(lead_ids)
        )
    return done


async def finish_erasures(gateway: TemporalGateway, engine: sa.Engine) -> int:
    """Delete the workflows of erasures that found Temporal down."""
    pending = await run_in_threadpool(pending_erasures, engine)
    if not pending:
        return 0
    client = await gateway.client()
    for erasure_id, lead_id, workflow_ids in pending:
        workflows = await delete_lead_workflows(client, lead_id, workflow_ids)
        await run_in_threadpool(finish_erasure, engine, erasure_id, workflows, None)
    logger.info("reconciler: %d erasures finished in Temporal", len(pending))
    return len(pending)


async def reconcile_forever(
    gateway: TemporalGateway, settings: Settings, engine: sa.Engine
) -> None:
    while True:
        await asyncio.sleep(RECONCILE_INTERVAL_SECONDS)
        try:
            await reconcile_once(gateway, settings, engine)
            await finish_erasures(gateway, engine)
        except Exception as error:
            if is_database_unavailable(error):
                logger.warning(
                    "reconciler pass failed, database unreachable: %s; retrying in %ss",
                    str(error).splitlines()[0],
                    RECONCILE_INTERVAL_SECONDS,
                )
                continue
            logger.exception(
                "reconciler pass failed; retrying in %ss", RECONCILE_INTERVAL_SECONDS
            )
