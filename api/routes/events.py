"""Website behavior events: page views, downloads, forms, webinars."""

import logging
import re
from datetime import datetime, timedelta

import sqlalchemy as sa
from fastapi import APIRouter, Request
from pydantic import AwareDatetime, Field, field_validator, model_validator
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from api.deps import CaptureDep, EngineDep, GatewayDep, SettingsDep, principal_of
from api.errors import ApiError, error_responses
from api.throttle import RATE_LIMITED, rate_limited
from api.workflow_calls import notify_lead
from nurture.conditions import EVENT_TYPES as CONDITION_EVENTS
from nurture.contracts import BehaviorSignal
from nurture.db import session_scope
from nurture.models import EngagementEvent, Lead, utcnow
from nurture.privacy import is_erased
from nurture.schemas import CamelModel, StrictCamelModel

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/events", tags=["events"])

# Opens, clicks and SMS replies come only from the providers' webhooks.
PROVIDER_EVENTS = frozenset({"open", "click", "sms_reply"})
EVENT_TYPES = tuple(t for t in CONDITION_EVENTS if t not in PROVIDER_EVENTS)
_CUSTOM_EVENT = re.compile(r"^custom:[A-Za-z0-9_.\-]{1,64}$")
# Clocks of browsers and tag managers drift; an event further ahead is a bug.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class BehaviorEventIn(StrictCamelModel):
    lead_id: str | None = Field(None, description="The lead's id; or give email.")
    email: str | None = Field(None, description="The lead's email; or give leadId.")
    type: str = Field(
        description=(
            "page_view, pricing_page_view, demo_page_view, content_download, "
            "form_submission, "
            "webinar_registration, webinar_attendance, replied, converted, or "
            "custom:<name> for an event of your own."
        )
    )
    url: str | None = Field(None, max_length=2000)
    occurred_at: AwareDatetime | None = Field(
        None, description="With a time zone; defaults to now."
    )
    event_id: str | None = Field(
        None,
        max_length=200,
        description="Your id for the event; a repeat is stored once.",
    )
    properties: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if value in EVENT_TYPES or _CUSTOM_EVENT.match(value):
            return value
        raise ValueError(
            f"unknown event type {value!r}: use one of {', '.join(EVENT_TYPES)}, "
            "or custom:<name>"
        )

    @field_validator("occurred_at")
    @classmethod
    def _check_not_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value > utcnow() + MAX_CLOCK_SKEW:
            raise ValueError("occurredAt is in the future; send the time it happened")
        return value

    @model_validator(mode="after")
    def _check_lead_given(self) -> "BehaviorEventIn":
        if not self.lead_id and not self.email:
            raise ValueError("leadId or email is required to find the lead")
        return self


class EventReceipt(CamelModel):
    """The stored event. For an integration key that named the lead by email,
    `id` and `leadId` are left out, so the receipt does not tell whether the
    address is on file."""

    id: str | None
    lead_id: str | None
    type: str
    duplicate: bool


def _classify(event: BehaviorEventIn) -> str:
    """Treat a view of a pricing or demo page as the stronger event it is."""
    if event.type == "page_view" and event.url:
        url = event.url.lower()
        if "/pricing" in url:
            return "pricing_page_view"
        if "/demo" in url:
            return "demo_page_view"
    return event.type


def _store(engine: sa.Engine, event: BehaviorEventIn) -> tuple[EngagementEvent, bool]:
    with session_scope(engine) as session:
        if event.lead_id:
            lead = session.get(Lead, event.lead_id)
        else:
            assert event.email is not None
            lead = session.exec(
                select(Lead).where(Lead.email_normalized == event.email.strip().lower())
            ).first()
        if lead is None or is_erased(lead):
            raise ApiError(
                404,
                "not_found",
                "no lead with that leadId or email: "
                "capture it first with POST /api/v1/leads",
            )
        provider_event_id = f"web:{event.event_id}" if event.event_id else None
        existing = _find_event(session, provider_event_id)
        if existing is not None:
            return existing, True
        stored = EngagementEvent(
            lead_id=lead.id,
            type=_classify(event),
            source="website",
            provider_event_id=provider_event_id,
            occurred_at=event.occurred_at or utcnow(),
            data={"url": event.url, **event.properties},
        )
        try:
            with session.begin_nested():
                session.add(stored)
        except sa.exc.IntegrityError:
            # A concurrent request stored the same eventId first.
            existing = _find_event(session, provider_event_id)
            if existing is None:
                raise
            return existing, True
        return stored, False


def _find_event(
    session: Session, provider_event_id: str | None
) -> EngagementEvent | None:
    if provider_event_id is None:
        return None
    return session.exec(
        select(EngagementEvent).where(
            EngagementEvent.provider_event_id == provider_event_id
        )
    ).first()


@router.post(
    "",
    status_code=202,
    response_model=EventReceipt,
    responses={**error_responses(401, 404, 422), **RATE_LIMITED},
    dependencies=[rate_limited("capture")],
)
async def record_event(
    request: Request,
    event: BehaviorEventIn,
    _actor: CaptureDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: GatewayDep,
) -> EventReceipt:
    """Record a website behavior event for a lead and signal its workflow.

    An integration key that names the lead by email gets the same 202 for a
    known and an unknown address. An event for an unknown address is dropped.
    """
    blind = principal_of(request).role == "integration" and not event.lead_id
    try:
        stored, duplicate = await run_in_threadpool(_store, engine, event)
    except ApiError as error:
        if not (blind and error.status == 404):
            raise
        logger.info("event %s for an address not on file dropped", event.type)
        return EventReceipt(id=None, lead_id=None, type=event.type, duplicate=False)
    assert stored.lead_id is not None
    if not duplicate:
        await notify_lead(
            temporal,
            settings,
            engine,
            stored.lead_id,
            BehaviorSignal(
                event_id=stored.id, type=stored.type, url=stored.data.get("url")
            ),
        )
    if blind:
        return EventReceipt(id=None, lead_id=None, type=event.type, duplicate=False)
    return EventReceipt(
        id=stored.id, lead_id=stored.lead_id, type=stored.type, duplicate=duplicate
    )
