"""Journey activities: conditions, send timing in the lead's zone, versions."""

import logging
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.leads import load_lead
from nurture.conditions import ConditionError, evaluate, parse_condition
from nurture.config import Settings
from nurture.contracts import (
    EvaluateConditionInput,
    LocalTimeInput,
    PlannedSend,
    PlanSendInput,
    RecordMigrationInput,
)
from nurture.db import session_scope
from nurture.lead_facts import build_facts
from nurture.models import Campaign, Enrollment, Lead, Message
from nurture.sendtime import (
    at_hour,
    best_send_hour,
    next_local_time,
    next_send_time,
    resolve_timezone,
)

logger = logging.getLogger(__name__)

# Opens looked at for send-time optimization, newest first.
MAX_OPENS = 200


class JourneyActivities:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def _zone(self, lead: Lead, campaign_zone: str | None) -> str:
        zone, _source = resolve_timezone(
            lead.timezone,
            lead.phone,
            lead.company_country,
            campaign_zone or self.settings.default_timezone,
        )
        return zone

    @activity.defn
    def evaluate_condition(self, input: EvaluateConditionInput) -> bool:
        """Evaluate a campaign condition against the lead's stored facts now."""
        try:
            condition = parse_condition(input.condition)
        except ConditionError as error:
            raise ApplicationError(
                f"invalid condition {input.condition!r}: {error}",
                type="InvalidCondition",
                non_retryable=True,
            ) from None
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            facts = build_facts(
                session,
                lead,
                input.now,
                enrollment_id=input.enrollment_id,
                previous_message_id=input.previous_message_id,
            )
        return evaluate(condition, facts)

    @activity.defn
    def plan_send(self, input: PlanSendInput) -> PlannedSend:
        """Work out when a send due at `earliest` may go out in the lead's zone."""
        rules = input.send_rules
        with session_scope(self.engine) as session:
            campaign = session.get(Campaign, input.campaign_id)
            status = campaign.status if campaign is not None else "archived"
            lead = load_lead(session, input.lead_id)
            zone = self._zone(lead, rules.timezone)
            hour = None
            if rules.send_time_optimization and input.channel == "email":
                hour = self._best_hour(session, lead.id, input.campaign_id, zone)
        window, quiet = rules.send_window, rules.quiet_hours
        if hour is not None:
            send_at = at_hour(input.earliest, zone, hour, window, quiet)
            reason = f"send-time optimization: {hour:02d}:00 {zone}"
        else:
            send_at = next_send_time(input.earliest, zone, window, quiet)
            reason = f"outside the send window or in quiet hours ({zone})"
        return PlannedSend(
            send_at=send_at,
            reason=reason if send_at > input.earliest else None,
            campaign_status=status,
        )

    def _best_hour(
        self, session: Session, lead_id: str, campaign_id: str, zone: str
    ) -> int | None:
        """Return the local hour this lead opens at, else the campaign audience's."""
        for condition in (
            Message.lead_id == lead_id,
            Message.campaign_id == campaign_id,
        ):
            opens = session.exec(
                select(Message.opened_at)
                .where(condition, col(Message.opened_at).is_not(None))
                .order_by(col(Message.opened_at).desc())
                .limit(MAX_OPENS)
            ).all()
            hour = best_send_hour([t for t in opens if t is not None], zone)
            if hour is not None:
                return hour
        return None

    @activity.defn
    def next_local_time(self, input: LocalTimeInput) -> datetime:
        """Return the next instant the lead's local clock shows a time on a weekday."""
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            zone = self._zone(lead, input.timezone)
        return next_local_time(
            input.after, zone, input.until.time, list(input.until.days)
        )

    @activity.defn
    def record_migration(self, input: RecordMigrationInput) -> None:
        """Store the campaign version an enrollment now runs."""
        with session_scope(self.engine) as session:
            enrollment = session.get(Enrollment, input.enrollment_id)
            if enrollment is None:
                return
            logger.info(
                "enrollment %s migrated from v%s to v%s",
                enrollment.id,
                enrollment.campaign_version,
                input.campaign_version,
            )
            enrollment.campaign_version = input.campaign_version
            session.add(enrollment)
