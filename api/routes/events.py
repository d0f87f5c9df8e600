"""Website behavior events: page views, downloads, forms, webinars."""

from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import Field, model_validator
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from api.deps import ActorDep, EngineDep, SettingsDep, TemporalDep
from api.errors import ApiError, ErrorBody
from api.workflow_calls import notify_lead
from nurture.contracts import BehaviorSignal
from nurture.db import session_scope
from nurture.models import EngagementEvent, Lead, utcnow
from nurture.schemas import CamelModel, StrictCamelModel

router = APIRouter(prefix="/api/v1/events", tags=["events"])

# Clocks of browsers and tag managers drift; an event further ahead is a bug.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class BehaviorEventIn(StrictCamelModel):
    lead_id: str | None = Field(None, description="The lead's id; or give email.")
    email: str | None = Field(None, description="The lead's email; or give leadId.")
    type: Literal[
        "page_view",
        "pricing_page_view",
        "content_download",
        "form_submission",
        "webinar_registration",
        "webinar_attendance",
    ]
    url: str | None = Field(None, max_length=2000)
    occurred_at: datetime | None = Field(None, description="Defaults to now.")
    event_id: str | None = Field(
        None,
        max_length=200,
        description="Your id for the event; a repeat is stored once.",
    )
    properties: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "BehaviorEventIn":
        if not self.lead_id and not self.email:
            raise ValueError("leadId or email is required to find the lead")
        if self.occurred_at is not None:
            if self.occurred_at.tzinfo is None:
                raise ValueError(
                    "occurredAt needs a time zone, e.g. 2026-01-01T10:00:00Z"
                )
            if self.occurred_at > utcnow() + MAX_CLOCK_SKEW:
                raise ValueError("occurredAt is in the future")
        return self


class EventReceipt(CamelModel):
    id: str
    lead_id: str
    type: str
    duplicate: bool


def _classify(event: BehaviorEventIn) -> str:
    """Treat a view of a pricing page as the stronger pricing_page_view."""
    if event.type == "page_view" and event.url and "/pricing" in event.url.lower():
        return "pricing_page_view"
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
        if lead is None:
            raise ApiError(
                404,
                "not_found",
                "no lead with that leadId or email: "
                "capture it first with POST /api/v1/leads",
            )
        provider_event_id = f"web:{event.event_id}" if event.event_id else None
        if provider_event_id:
            existing = session.exec(
                select(EngagementEvent).where(
                    EngagementEvent.provider_event_id == provider_event_id
                )
            ).first()
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
        session.add(stored)
        return stored, False


@router.post(
    "",
    status_code=202,
    response_model=EventReceipt,
    responses={
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
async def record_event(
    event: BehaviorEventIn,
    _actor: ActorDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalDep,
) -> EventReceipt:
    """Record a website behavior event for a lead and signal its workflow."""
    stored, duplicate = await run_in_threadpool(_store, engine, event)
    assert stored.lead_id is not None
    if not duplicate:
        await notify_lead(
            temporal,
            settings,
            engine,
            stored.lead_id,
            BehaviorSignal(event_id=stored.id, type=stored.type),
        )
    return EventReceipt(
        id=stored.id, lead_id=stored.lead_id, type=stored.type, duplicate=duplicate
    )
