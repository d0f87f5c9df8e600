"""Provider webhooks. Providers cannot send our API key, so these routes take none.

Each route checks the provider's signature instead: SendGrid's ECDSA
signature when SENDGRID_WEBHOOK_PUBLIC_KEY is set (unsigned batches are
accepted without it), and Twilio's X-Twilio-Signature always.
"""

import asyncio
import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from twilio.twiml.messaging_response import MessagingResponse

from api.deps import EngineDep, GatewayDep, SettingsDep, TemporalGateway
from api.errors import ApiError, FieldError, error_responses, validation_error
from api.throttle import RATE_LIMITED, rate_limited
from api.workflow_calls import notify_lead, signal_enrollment
from nurture.config import Settings
from nurture.contracts import BehaviorSignal, EngagementSignal
from nurture.db import session_scope
from nurture.engagement import SIGNALLED_EVENTS, StoredEvent, store_sendgrid_event
from nurture.metrics import count_webhook_events
from nurture.schemas import CamelModel
from nurture.twilio_events import (
    InboundResult,
    StatusResult,
    store_inbound_sms,
    store_status_callback,
)
from nurture.webhook_signatures import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    TWILIO_SIGNATURE_SETTINGS_HEADER,
    SendGridVerifier,
    SignatureError,
    parse_twilio_form,
    twilio_webhook_url,
    verify_twilio,
)

router = APIRouter(
    prefix="/api/v1/webhooks",
    tags=["webhooks"],
    dependencies=[rate_limited("webhooks")],
    responses=RATE_LIMITED,
)
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


def signature_rejected(error: SignatureError) -> ApiError:
    return ApiError(
        403,
        "invalid_signature",
        error.message,
        [FieldError(path=error.header, message=error.message, type="signature")],
    )


def _check_sendgrid_signature(request: Request, body: bytes) -> None:
    verifier: SendGridVerifier | None = request.app.state.sendgrid_verifier
    if verifier is None:
        return
    try:
        verifier.verify(
            body,
            request.headers.get(SENDGRID_SIGNATURE_HEADER),
            request.headers.get(SENDGRID_TIMESTAMP_HEADER),
            time.time(),
        )
    except SignatureError as error:
        logger.warning("sendgrid batch rejected: %s", error.message)
        raise signature_rejected(error) from None


def _store_all(engine: sa.Engine, events: list[dict[str, Any]]) -> list[StoredEvent]:
    with session_scope(engine) as session:
        return [store_sendgrid_event(session, event) for event in events]


async def _signal_event(
    temporal: TemporalGateway,
    settings: Settings,
    engine: sa.Engine,
    event: StoredEvent,
) -> None:
    if event.type not in SIGNALLED_EVENTS:
        return
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


async def _signal_all(
    temporal: TemporalGateway,
    settings: Settings,
    engine: sa.Engine,
    events: list[StoredEvent],
) -> None:
    """Signal the workflows of stored events, WEBHOOK_SIGNAL_CONCURRENCY leads at once.

    A batch of hundreds of events would take a round trip to Temporal per
    event one after another, past the time SendGrid waits for a response.
    """
    by_lead: dict[str, list[StoredEvent]] = {}
    for event in events:
        key = event.lead_id or event.enrollment_workflow_id or ""
        by_lead.setdefault(key, []).append(event)
    slots = asyncio.Semaphore(settings.webhook_signal_concurrency)

    async def signal_lead_events(lead_events: list[StoredEvent]) -> None:
        async with slots:
            for event in lead_events:
                await _signal_event(temporal, settings, engine, event)

    await asyncio.gather(*(signal_lead_events(group) for group in by_lead.values()))


@router.post(
    "/sendgrid",
    response_model=WebhookReceipt,
    responses=error_responses(403, 422),
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
    body = await request.body()
    _check_sendgrid_signature(request, body)
    events = _parse_batch(body)
    stored = await run_in_threadpool(_store_all, engine, events)
    count_webhook_events("sendgrid", [event["event"] for event in events])
    fresh = [event for event in stored if not event.duplicate]
    await _signal_all(temporal, settings, engine, fresh)
    unmatched = sum(1 for event in fresh if event.lead_id is None)
    if unmatched:
        logger.info("sendgrid batch: %d events matched no message or lead", unmatched)
    return WebhookReceipt(
        received=len(events),
        stored=len(fresh),
        duplicates=len(stored) - len(fresh),
        unmatched=unmatched,
    )


# Twilio posts form fields; the OpenAPI document shows the ones we read.
def _twilio_form_body(required: list[str], fields: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": required,
                        "properties": {name: {"type": "string"} for name in fields},
                        "additionalProperties": {"type": "string"},
                    }
                }
            },
        }
    }


async def _verified_twilio_fields(
    request: Request, configured_url: str, settings: Settings, required: list[str]
) -> dict[str, str]:
    """Check X-Twilio-Signature over the URL Twilio called, and return the form fields.

    Raise 403 for a missing or wrong signature, and 422 when a signed
    request lacks a field in `required`.
    """
    body = await request.body()
    url = twilio_webhook_url(
        configured_url,
        settings.public_base_url,
        request.url.path,
        request.url.query,
    )
    try:
        pairs = parse_twilio_form(body)
        verify_twilio(
            settings.twilio_auth_token,
            url,
            pairs,
            request.headers.get(TWILIO_SIGNATURE_HEADER),
            request.headers.get(TWILIO_SIGNATURE_SETTINGS_HEADER),
        )
    except SignatureError as error:
        logger.warning("twilio webhook %s rejected: %s", request.url.path, error)
        raise signature_rejected(error) from None
    fields = dict(pairs)
    # Older callbacks name the message SmsSid and its status SmsStatus.
    fields.setdefault("MessageSid", fields.get("SmsSid", ""))
    fields.setdefault("MessageStatus", fields.get("SmsStatus", ""))
    missing = [name for name in required if not fields.get(name)]
    if missing:
        raise validation_error(
            [
                FieldError(
                    path=name,
                    message=f"missing form field {name}: Twilio sends it with "
                    "every request of this kind",
                    type="missing",
                )
                for name in missing
            ]
        )
    return fields


def _store_status(engine: sa.Engine, fields: dict[str, str]) -> StatusResult:
    with session_scope(engine) as session:
        return store_status_callback(session, fields)


@router.post(
    "/twilio/status",
    status_code=204,
    response_class=Response,
    responses=error_responses(403, 422),
    openapi_extra=_twilio_form_body(
        ["MessageSid", "MessageStatus"],
        ["MessageSid", "MessageStatus", "ErrorCode", "To", "From"],
    ),
)
async def receive_twilio_status(
    request: Request, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Take an SMS status callback: store it once and move the message's status."""
    fields = await _verified_twilio_fields(
        request,
        settings.twilio_status_webhook_url,
        settings,
        ["MessageSid", "MessageStatus"],
    )
    result = await run_in_threadpool(_store_status, engine, fields)
    count_webhook_events("twilio", [f"status_{fields['MessageStatus']}"])
    if result.message_id is None and not result.duplicate:
        logger.info(
            "twilio status %s for %s matched no message",
            fields["MessageStatus"],
            fields["MessageSid"],
        )
    return Response(status_code=204)


def _store_inbound(engine: sa.Engine, fields: dict[str, str]) -> InboundResult:
    with session_scope(engine) as session:
        return store_inbound_sms(session, fields)


def _twiml(result: InboundResult, settings: Settings) -> str:
    response = MessagingResponse()
    if result.kind == "help" and settings.sms_help_reply:
        response.message(settings.sms_help_reply)
    return str(response.to_xml())


@router.post(
    "/twilio/inbound",
    response_class=Response,
    responses={
        200: {"content": {"text/xml": {}}, "description": "TwiML: the reply, if any"},
        **error_responses(403, 422),
    },
    openapi_extra=_twilio_form_body(
        ["MessageSid", "From"], ["MessageSid", "From", "To", "Body", "OptOutType"]
    ),
)
async def receive_twilio_inbound(
    request: Request, settings: SettingsDep, engine: EngineDep, temporal: GatewayDep
) -> Response:
    """Take an inbound SMS: apply STOP, START or HELP, or record a reply.

    A reply is stored for every lead with the sender's number and sent to
    each lead's workflow, which rescores the lead and ends enrollments whose
    goal is "replied". A number that matches no lead is stored all the same.
    """
    fields = await _verified_twilio_fields(
        request, settings.twilio_inbound_webhook_url, settings, ["MessageSid", "From"]
    )
    result = await run_in_threadpool(_store_inbound, engine, fields)
    count_webhook_events("twilio", [f"inbound_{result.kind}"])
    if not result.duplicate:
        if not result.lead_ids:
            logger.info("inbound sms %s matched no lead", fields["MessageSid"])
        for reply in result.replies:
            await notify_lead(
                temporal,
                settings,
                engine,
                reply.lead_id,
                BehaviorSignal(
                    event_id=reply.event_id,
                    type="replied",
                    message_id=reply.message_id,
                ),
            )
    return Response(content=_twiml(result, settings), media_type="text/xml")
