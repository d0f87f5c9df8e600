"""Provider webhooks. Providers cannot send our API key, so these routes take none.

NOTE: the SendGrid signature is not verified yet: anyone who can reach this
route can post events.
"""

import json
import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, GatewayDep, SettingsDep
from api.errors import ErrorBody, FieldError, validation_error
from api.workflow_calls import notify_lead, signal_enrollment
from nurture.contracts import BehaviorSignal, EngagementSignal
from nurture.db import session_scope
from nurture.engagement import SIGNALLED_EVENTS, StoredEvent, store_sendgrid_event
from nurture.schemas import CamelModel

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
logger = logging.getLogger(__name__)

MAX_BATCH = 10_000
LEAD_SIGNAL_EVENTS = frozenset({"open", "click"})


class WebhookReceipt(CamelModel):
    received: int
    stored: int
    duplicates: int
    unmatched: int


def _parse_batch(body: bytes) -> list[dict[str, Any]]:
    try:
        events = json.loads(body)
    except ValueError as error:
        raise validation_error(
            [
                FieldError(
                    path="(body)", message=f"invalid JSON: {error}", type="json_invalid"
                )
            ]
        ) from None
    if not isinstance(events, list):
        raise validation_error(
            [
                FieldError(
                    path="(body)",
                    message="expected a JSON array of events",
                    type="list_type",
                )
            ]
        )
    if len(events) > MAX_BATCH:
        raise validation_error(
            [
                FieldError(
                    path="(body)",
                    message=f"at most {MAX_BATCH} events per batch",
                    type="too_long",
                )
            ]
        )
    errors = [
        FieldError(
            path=f"[{i}].event",
            message="each event needs an 'event' string",
            type="missing",
        )
        for i, event in enumerate(events)
        if not isinstance(event, dict) or not isinstance(event.get("event"), str)
    ]
    if errors:
        raise validation_error(errors)
    return events


def _store_all(engine: sa.Engine, events: list[dict[str, Any]]) -> list[StoredEvent]:
    with session_scope(engine) as session:
        return [store_sendgrid_event(session, event) for event in events]


@router.post(
    "/sendgrid",
    response_model=WebhookReceipt,
    responses={422: {"model": ErrorBody}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}}
                }
            },
        }
    },
)
async def receive_sendgrid_events(
    request: Request, settings: SettingsDep, engine: EngineDep, temporal: GatewayDep
) -> WebhookReceipt:
    """Take a SendGrid Event Webhook batch: store each event once, then signal."""
    events = _parse_batch(await request.body())
    stored = await run_in_threadpool(_store_all, engine, events)
    fresh = [event for event in stored if not event.duplicate]
    for event in fresh:
        if event.type not in SIGNALLED_EVENTS:
            continue
        if event.enrollment_workflow_id and event.message_id:
            await signal_enrollment(
                temporal,
                event.enrollment_workflow_id,
                EngagementSignal(
                    message_id=event.message_id, type=event.type, url=event.url
                ),
            )
        if event.lead_id and event.type in LEAD_SIGNAL_EVENTS:
            await notify_lead(
                temporal,
                settings,
                engine,
                event.lead_id,
                BehaviorSignal(
                    event_id=event.event_id,
                    type=event.type,
                    message_id=event.message_id,
                    url=event.url,
                ),
            )
    unmatched = sum(1 for event in fresh if event.lead_id is None)
    if unmatched:
        logger.info("sendgrid batch: %d events matched no message or lead", unmatched)
    return WebhookReceipt(
        received=len(events),
        stored=len(fresh),
        duplicates=len(stored) - len(fresh),
        unmatched=unmatched,
    )
