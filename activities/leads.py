"""Lead activities: enrichment, scoring, enrollment planning and CRM sync."""

import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.campaigns import CampaignSpec
from nurture.config import Settings
from nurture.contracts import (
    CrmSyncInput,
    EndEnrollmentInput,
    EnrichLeadInput,
    EnrollmentPlan,
    EnrollmentPlans,
    PlanEnrollmentsInput,
    ScoreLeadInput,
    ScoreSnapshot,
)
from nurture.crm import CrmError, CrmSkipped, crm_client_for
from nurture.db import session_scope
from nurture.enrichment import enrich, enricher_for, fill_lead_columns
from nurture.enrollments import claim, entry_refusal, trigger_matches
from nurture.lead_facts import build_facts
from nurture.lead_scoring import rescore
from nurture.models import (
    Campaign,
    CampaignVersion,
    Enrollment,
    Lead,
    utcnow,
)
from nurture.privacy import is_erased

logger = logging.getLogger(__name__)


def load_lead(session: Session, lead_id: str) -> Lead:
    return _present(session.get(Lead, lead_id), lead_id)


def _present(lead: Lead | None, lead_id: str) -> Lead:
    """Return the lead, or raise a non-retryable error when it is gone or erased."""
    if lead is None:
        raise ApplicationError(
            f"lead {lead_id} not found", type="LeadNotFound", non_retryable=True
        )
    if is_erased(lead):
        raise ApplicationError(
            f"lead {lead_id} was erased", type="LeadErased", non_retryable=True
        )
    return lead


def lock_lead(session: Session, lead_id: str) -> Lead:
    """Load a lead and hold its row lock until commit.

    Sends to one lead then check and reserve frequency caps one at a time.
    NOTE: SQLite ignores the lock. There only the worker process's own lock
    in prepare_message serializes sends, so two worker processes on one
    SQLite file could both take a lead's last capped slot.
    """
    lead = session.exec(
        select(Lead).where(Lead.id == lead_id).with_for_update()
    ).first()
    return _present(lead, lead_id)


def active_campaigns(session: Session) -> list[tuple[Campaign, CampaignVersion]]:
    """Active campaigns with their current versions, oldest first."""
    rows = session.exec(
        select(Campaign, CampaignVersion)
        .join(
            CampaignVersion,
            sa.and_(
                col(CampaignVersion.campaign_id) == col(Campaign.id),
                col(CampaignVersion.version) == col(Campaign.current_version),
            ),
        )
        .where(Campaign.status == "active")
        .order_by(col(Campaign.created_at))
    ).all()
    return [(campaign, version) for campaign, version in rows]


class LeadActivities:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        """Raise ValueError when the enrichment or CRM settings are incomplete."""
        self.engine = engine
        self.settings = settings
        self.enricher = enricher_for(settings, engine)
        self.crm = crm_client_for(settings)

    @activity.defn
    def enrich_lead(self, input: EnrichLeadInput) -> None:
        """Store the lead's enrichment: offline facts with a company lookup over them.

        Fills the lead's empty company columns from the lookup. A lookup that
        fails after its retries leaves the offline facts, records the error in
        `lead.enrichment["lookup"]`, and does not fail this activity. So a
        provider outage delays a lead's workflow by at most the lookup's
        20-second budget, and never stops it.
        NOTE: nothing looks a failed lookup up again later.
        """
        with session_scope(self.engine) as session:
            snapshot = load_lead(session, input.lead_id).model_dump()
        # Outside any transaction: the lookup may take seconds of HTTP calls.
        lookup = self.enricher.lookup(snapshot)
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            enrichment = enrich(lead.model_dump(), lookup)
            filled = fill_lead_columns(lead, enrichment)
            lead.enrichment = enrichment.model_dump()
            session.add(lead)
        if lookup is not None:
            logger.info(
                "lead %s enriched: %s lookup of %s %s%s, filled %s",
                input.lead_id,
                lookup.provider,
                lookup.domain,
                lookup.status,
                " (cached)" if lookup.cached else "",
                ", ".join(filled) or "no columns",
            )

    @activity.defn
    def score_lead(self, input: ScoreLeadInput) -> ScoreSnapshot:
        """Rescore a lead from its stored facts and events, and store the result."""
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            result = rescore(session, lead, self.settings.mql_threshold)
            return ScoreSnapshot(
                score=result.score,
                stage=lead.stage,
                dimensions={str(k): v for k, v in result.dimensions.items()},
                reasons=result.reasons,
                scored_at=result.scored_at,
                rules_score=result.rules_score,
                conversion_probability=result.model.probability
                if result.model
                else None,
                model_version=result.model.version if result.model else None,
            )

    @activity.defn
    def plan_enrollments(self, input: PlanEnrollmentsInput) -> EnrollmentPlans:
        """Claim an enrollment in each active campaign whose trigger the lead meets.

        Returns the enrollments to start (the new ones, and live ones that the
        caller has not started yet, after a retry of this activity) and the
        workflow ids of all the lead's live enrollments.
        """
        now = input.now or utcnow()
        plans: list[EnrollmentPlan] = []
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            facts = build_facts(session, lead, now)
            for campaign, version in active_campaigns(session):
                spec = CampaignSpec.model_validate(version.definition)
                live = session.exec(
                    select(Enrollment).where(
                        Enrollment.campaign_id == campaign.id,
                        Enrollment.lead_id == input.lead_id,
                        Enrollment.status == "active",
                    )
                ).first()
                if live is not None:
                    if live.id not in input.already_started:
                        plans.append(self._plan(live, spec))
                    continue
                if not trigger_matches(
                    spec.trigger, input.event, input.event_types, facts
                ):
                    continue
                if entry_refusal(session, campaign.id, lead.id, spec, now) is not None:
                    continue
                enrollment = claim(session, campaign.id, version.version, lead.id, now)
                if enrollment is not None:
                    plans.append(self._plan(enrollment, spec))
            live_ids = session.exec(
                select(Enrollment.workflow_id).where(
                    Enrollment.lead_id == input.lead_id, Enrollment.status == "active"
                )
            ).all()
        for plan in plans:
            logger.info(
                "lead %s enrolls in campaign %s v%s as %s",
                plan.lead_id,
                plan.campaign_id,
                plan.campaign_version,
                plan.workflow_id,
            )
        return EnrollmentPlans(plans=plans, live_workflow_ids=sorted(set(live_ids)))

    def _plan(self, enrollment: Enrollment, spec: CampaignSpec) -> EnrollmentPlan:
        return EnrollmentPlan(
            enrollment_id=enrollment.id,
            workflow_id=enrollment.workflow_id,
            lead_id=enrollment.lead_id,
            campaign_id=enrollment.campaign_id,
            campaign_version=enrollment.campaign_version,
            campaign=spec,
        )

    @activity.defn
    def end_enrollment(self, input: EndEnrollmentInput) -> None:
        with session_scope(self.engine) as session:
            enrollment = session.get(Enrollment, input.enrollment_id)
            if enrollment is None or enrollment.status != "active":
                return
            enrollment.status = input.status
            enrollment.goal = input.goal
            enrollment.ended_at = utcnow()
            session.add(enrollment)

    @activity.defn
    def sync_lead_to_crm(self, input: CrmSyncInput) -> bool:
        """Upsert the lead into the configured CRM; a no-op when none is set.

        Returns whether the CRM got the lead. Stores the contact id that the
        CRM returns in `lead.crm_id`, so later syncs update that contact even
        after the lead's email changes.
        """
        if not self.crm.enabled:
            return False
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
        try:
            crm_id = self.crm.upsert_contact(lead, input.reason)
        except CrmSkipped as skipped:
            logger.warning(
                "lead %s not synced to %s: %s", lead.id, self.crm.name, skipped
            )
            return False
        except CrmError as error:
            raise _crm_activity_error(error, self.crm.name, input.lead_id) from None
        with session_scope(self.engine) as session:
            stored = load_lead(session, input.lead_id)
            if crm_id is not None:
                stored.crm_id = crm_id
            stored.crm_synced_at = utcnow()
            session.add(stored)
        logger.info(
            "lead %s synced to %s%s (%s)",
            input.lead_id,
            self.crm.name,
            f" as contact {crm_id}" if crm_id else "",
            input.reason,
        )
        return True


def _crm_activity_error(error: CrmError, crm: str, lead_id: str) -> ApplicationError:
    if not error.retryable:
        return ApplicationError(
            f"{crm} rejected lead {lead_id}: {error}",
            type="CrmRejected",
            non_retryable=True,
        )
    delay = (
        timedelta(seconds=error.retry_after_seconds)
        if error.retry_after_seconds is not None
        else None
    )
    return ApplicationError(
        f"{crm} sync of lead {lead_id} failed; will retry: {error}",
        type="CrmUnavailable",
        next_retry_delay=delay,
    )
