"""The sales rep's views of one lead: its messages and its live journey."""

import asyncio
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, ReadLeadsDep, SessionDep, SettingsDep, TemporalDep
from api.errors import error_responses
from api.routes.leads import get_lead_or_404, record_read
from api.workflow_calls import query_enrollment, query_lead
from nurture.consent import CHANNELS, ConsentPolicy, send_refusal
from nurture.db import session_scope
from nurture.journey import (
    EngagementView,
    EnrollmentView,
    JourneyView,
    StepView,
    TaskView,
    recommend,
)
from nurture.lead_scoring import load_context
from nurture.models import Campaign, EngagementEvent, Enrollment, Lead, Message, utcnow
from nurture.schemas import CamelModel

router = APIRouter(prefix="/api/v1/leads", tags=["journey"])
ERRORS = error_responses(401, 404, 410)
RECENT_EVENTS = 20


class MessageView(CamelModel):
    id: str
    channel: str
    template: str
    subject: str | None
    body: str
    status: str
    campaign_id: str | None
    step: int | None
    sent_at: datetime | None
    created_at: datetime
    error: str | None


@router.get("/{lead_id}/messages", response_model=list[MessageView], responses=ERRORS)
def list_messages(
    lead_id: str, session: SessionDep, actor: ReadLeadsDep
) -> list[MessageView]:
    """List every message to the lead, newest first. The read is audited."""
    get_lead_or_404(session, lead_id)
    record_read(session, actor, lead_id, "lead.messages_read")
    messages = session.exec(
        select(Message)
        .where(Message.lead_id == lead_id)
        .order_by(col(Message.created_at).desc(), col(Message.id))
    ).all()
    return [MessageView.model_validate(m, from_attributes=True) for m in messages]


def _message_statuses(session: Session, lead_id: str) -> dict[str, str]:
    rows = session.exec(
        select(Message.id, Message.status).where(Message.lead_id == lead_id)
    ).all()
    return dict(rows)


@dataclass
class _Stored:
    """The stored records of a lead's journey."""

    lead: Lead
    enrollments: list[tuple[Enrollment, str]]
    events: list[EngagementEvent]
    message_statuses: dict[str, str]
    tasks: list[Message]
    mql_threshold: int
    # Why neither email nor SMS may reach the lead, when neither may.
    marketing_blocked: str | None = None


def _load(
    engine: sa.Engine, lead_id: str, default_threshold: int, policy: ConsentPolicy
) -> _Stored:
    with session_scope(engine) as session:
        lead = get_lead_or_404(session, lead_id)
        enrollments = session.exec(
            select(Enrollment, Campaign.name)
            .join(Campaign, col(Campaign.id) == Enrollment.campaign_id)
            .where(Enrollment.lead_id == lead_id)
            .order_by(col(Enrollment.enrolled_at).desc())
        ).all()
        events = session.exec(
            select(EngagementEvent)
            .where(EngagementEvent.lead_id == lead_id)
            .order_by(col(EngagementEvent.occurred_at).desc())
            .limit(RECENT_EVENTS)
        ).all()
        threshold = load_context(session, default_threshold).criteria.mql_threshold
        refusals = [send_refusal(session, lead, c, policy) for c in CHANNELS]
        return _Stored(
            marketing_blocked=" and ".join(r for r in refusals if r is not None)
            if all(refusals)
            else None,
            lead=lead,
            enrollments=[(e, name) for e, name in enrollments],
            events=list(events),
            message_statuses=_message_statuses(session, lead_id),
            tasks=list(
                session.exec(
                    select(Message)
                    .where(Message.lead_id == lead_id, Message.channel == "task")
                    .order_by(col(Message.created_at).desc())
                ).all()
            ),
            mql_threshold=threshold,
        )


def _record_journey_read(engine: sa.Engine, actor: str, lead_id: str) -> None:
    with Session(engine) as session:
        record_read(session, actor, lead_id, "lead.journey_read")


@router.get("/{lead_id}/journey", response_model=JourneyView, responses=ERRORS)
async def read_journey(
    lead_id: str,
    actor: ReadLeadsDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalDep,
) -> JourneyView:
    """Read the lead's live stage, score, enrollments and next action."""
    stored = await run_in_threadpool(
        _load, engine, lead_id, settings.mql_threshold, settings.consent_policy
    )
    await run_in_threadpool(_record_journey_read, engine, actor, lead_id)
    lead, enrollments, events = stored.lead, stored.enrollments, stored.events
    state = await query_lead(temporal, lead_id)
    live_states = await asyncio.gather(
        *(query_enrollment(temporal, e.workflow_id) for e, _name in enrollments)
    )
    views = []
    for (enrollment, campaign_name), live in zip(enrollments, live_states, strict=True):
        view = EnrollmentView(
            enrollment_id=enrollment.id,
            workflow_id=enrollment.workflow_id,
            campaign_id=enrollment.campaign_id,
            campaign_name=campaign_name,
            version=enrollment.campaign_version,
            status=enrollment.status,
        )
        if live is not None and live.enrollment_id == enrollment.id:
            view.status = live.status
            view.current_step = live.current_step
            view.next_step = live.next_step
            view.next_step_due_at = live.next_step_due_at
            view.waiting_reason = live.waiting_reason
            view.paused = live.paused
            view.goal = live.goal
            view.version = live.campaign_version
            view.pending_version = live.pending_version
            view.live = live.status == "active"
            view.steps = [
                StepView(
                    **step.model_dump(),
                    message_status=stored.message_statuses.get(step.message_id or ""),
                )
                for step in live.steps
            ]
        views.append(view)
    engagement = [
        EngagementView(
            type=event.type,
            source=event.source,
            at=event.occurred_at,
            message_id=event.message_id,
            detail={
                k: v
                for k, v in event.data.items()
                if k in ("url", "campaign", "channel")
            },
        )
        for event in events
    ]
    if state is not None and state.initialized:
        stage, score = state.current.stage, state.current.score
        dimensions = {k: v.model_dump() for k, v in state.current.dimensions.items()}
        reasons = [reason.model_dump() for reason in state.current.reasons]
    else:
        stage, score, dimensions, reasons = (
            lead.stage,
            lead.score,
            {},
            lead.score_reasons,
        )
    return JourneyView(
        lead_id=lead.id,
        stage=stage,
        score=score,
        dimensions=dimensions,
        reasons=reasons,
        live=state is not None,
        conversion_probability=lead.conversion_probability,
        model_contributions=lead.model_contributions,
        outcome=lead.outcome,
        enrollments=views,
        recent_engagement=engagement,
        tasks=[
            TaskView(
                id=task.id,
                title=task.subject,
                description=task.body,
                campaign_id=task.campaign_id,
                created_at=task.created_at,
            )
            for task in stored.tasks
            if task.status != "failed"
        ],
        next_action=recommend(
            status=lead.status,
            stage=stage,
            score=score,
            mql_threshold=stored.mql_threshold,
            enrollments=views,
            engagement=engagement,
            now=utcnow(),
            marketing_blocked=stored.marketing_blocked,
            outcome=lead.outcome,
        ),
    )
