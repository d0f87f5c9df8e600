"""Journey activities: conditions, send timing in the lead's zone, versions."""

import logging
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.leads import load_lead
from nurture.analytics.splits import decide_winners
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
from nurture.models import (
    Campaign,
    Enrollment,
    Lead,
    Message,
    SplitAssignment,
    SplitDecision,
    utcnow,
)
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


# NOTE: these four models belong in nurture/contracts.py with the other
# Temporal inputs; they live here until that file is free to change.
class AssignVariantInput(BaseModel):
    """An enrollment at a split step, and the variant its weighted draw gave."""

    enrollment_id: str
    campaign_id: str
    campaign_version: int
    step: str
    drawn: str
    variants: list[str]
    at: datetime


class AssignedVariant(BaseModel):
    variant: str
    # True when the split's winner decision chose it instead of the draw.
    by_winner: bool = False


class SplitWinnerCheckInput(BaseModel):
    # The decision time to store; the workflow sets its own clock.
    now: datetime | None = None


class SplitWinnerCheckResult(BaseModel):
    # "<campaign id>/<step id>: <winner>" for each decision made.
    decided: list[str] = Field(default_factory=list)


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

    @activity.defn
    def assign_variant(self, input: AssignVariantInput) -> AssignedVariant:
        """Store the variant an enrollment takes at a split, once per step.

        The split's winner, once a decision names a variant that this
        version still has, else the weighted draw. An enrollment that passes
        the same split again keeps its stored variant.
        """
        with session_scope(self.engine) as session:
            stored = self._stored_variant(session, input)
            if stored is not None:
                return stored
            decision = session.exec(
                select(SplitDecision).where(
                    SplitDecision.campaign_id == input.campaign_id,
                    SplitDecision.step_id == input.step,
                    col(SplitDecision.withdrawn_at).is_(None),
                )
            ).first()
            by_winner = decision is not None and decision.winner in input.variants
            variant = decision.winner if decision and by_winner else input.drawn
            try:
                with session.begin_nested():
                    session.add(
                        SplitAssignment(
                            enrollment_id=input.enrollment_id,
                            campaign_id=input.campaign_id,
                            campaign_version=input.campaign_version,
                            step_id=input.step,
                            variant=variant,
                            by_winner=by_winner,
                            assigned_at=input.at,
                        )
                    )
            except sa.exc.IntegrityError:
                # A retry of this activity stored it a moment ago, unless the
                # enrollment row is missing: then the activity fails and retries.
                stored = self._stored_variant(session, input)
                if stored is None:
                    raise
                return stored
        if by_winner:
            logger.info(
                "enrollment %s takes variant %s at %s: the split's winner",
                input.enrollment_id,
                variant,
                input.step,
            )
        return AssignedVariant(variant=variant, by_winner=by_winner)

    def _stored_variant(
        self, session: Session, input: AssignVariantInput
    ) -> AssignedVariant | None:
        stored = session.exec(
            select(SplitAssignment).where(
                SplitAssignment.enrollment_id == input.enrollment_id,
                SplitAssignment.step_id == input.step,
            )
        ).first()
        if stored is None:
            return None
        return AssignedVariant(variant=stored.variant, by_winner=stored.by_winner)

    @activity.defn
    def decide_split_winners(
        self, input: SplitWinnerCheckInput
    ) -> SplitWinnerCheckResult:
        """Check the winner rule of every undecided split and store what fires."""
        with self.engine.begin() as connection:
            decisions = decide_winners(connection, input.now or utcnow())
        decided = []
        for decision in decisions:
            logger.info(
                "split %s of campaign %s decided: %s wins against control %s",
                decision["step_id"],
                decision["campaign_id"],
                decision["winner"],
                decision["control"],
            )
            decided.append(
                f"{decision['campaign_id']}/{decision['step_id']}: {decision['winner']}"
            )
        return SplitWinnerCheckResult(decided=decided)
