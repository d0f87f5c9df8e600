"""Lead activities: enrichment, scoring, enrollment planning and CRM sync."""

import logging

import httpx
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
from nurture.db import session_scope
from nurture.enrichment import enrich
from nurture.enrollments import claim, entry_refusal, trigger_matches
from nurture.lead_facts import build_facts
from nurture.lead_scoring import rescore
from nurture.leads import LeadPublic
from nurture.models import (
    Campaign,
    CampaignVersion,
    Enrollment,
    Lead,
    utcnow,
)

logger = logging.getLogger(__name__)


def load_lead(session: Session, lead_id: str) -> Lead:
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise ApplicationError(
            f"lead {lead_id} not found", type="LeadNotFound", non_retryable=True
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
    if lead is None:
        raise ApplicationError(
            f"lead {lead_id} not found", type="LeadNotFound", non_retryable=True
        )
    return lead


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
        self.engine = engine
        self.settings = settings

    @activity.defn
    def enrich_lead(self, input: EnrichLeadInput) -> None:
        """Store the offline enrichment facts of a lead."""
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            lead.enrichment = enrich(lead.model_dump()).model_dump()
            session.add(lead)

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
        """POST the lead to the configured CRM URL; a no-op when none is set."""
        url = self.settings.crm_webhook_url
        if not url:
            return False
        with session_scope(self.engine) as session:
            lead = load_lead(session, input.lead_id)
            payload = {
                "reason": input.reason,
                "lead": LeadPublic.from_lead(lead).model_dump(mode="json"),
            }
        try:
            response = httpx.post(url, json=payload, timeout=10)
        except httpx.HTTPError as error:
            raise ApplicationError(f"CRM unreachable at {url}: {error}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise ApplicationError(
                f"CRM returned HTTP {response.status_code}; will retry"
            )
        if response.status_code >= 400:
            raise ApplicationError(
                f"CRM rejected lead {input.lead_id}: {response.status_code} "
                f"{response.text[:200]}",
                type="CrmRejected",
                non_retryable=True,
            )
        logger.info("lead %s synced to CRM (%s)", input.lead_id, input.reason)
        return True
