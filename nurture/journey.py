"""The sales rep's journey view of a lead, and the next action it recommends."""

from datetime import datetime, timedelta
from typing import Any

from nurture.schemas import CamelModel
from nurture.wording import describe_age

RECENT = timedelta(days=7)


class StepView(CamelModel):
    step: str
    status: str
    message_id: str | None = None
    # The message's own status (delivered, opened, ...), from the outbox.
    message_status: str | None = None
    at: datetime
    detail: str | None = None


class EnrollmentView(CamelModel):
    enrollment_id: str
    workflow_id: str
    campaign_id: str
    campaign_name: str
    version: int
    status: str
    current_step: str | None = None
    next_step: str | None = None
    next_step_due_at: datetime | None = None
    waiting_reason: str | None = None
    paused: bool = False
    goal: str | None = None
    # Set after a migration request, until the enrollment reaches its next step.
    pending_version: int | None = None
    steps: list[StepView] = []
    live: bool = False


class EngagementView(CamelModel):
    type: str
    source: str
    at: datetime
    message_id: str | None = None
    detail: dict[str, Any] = {}


class TaskView(CamelModel):
    """A sales task a campaign created for this lead."""

    id: str
    title: str | None
    description: str
    campaign_id: str | None
    created_at: datetime


class NextAction(CamelModel):
    action: str
    reason: str


class JourneyView(CamelModel):
    lead_id: str
    stage: str
    score: int
    dimensions: dict[str, Any]
    reasons: list[dict[str, Any]]
    live: bool
    conversion_probability: float | None = None
    model_contributions: list[dict[str, Any]] = []
    outcome: str | None = None
    enrollments: list[EnrollmentView]
    recent_engagement: list[EngagementView]
    tasks: list[TaskView] = []
    next_action: NextAction


def recommend(
    *,
    status: str,
    stage: str,
    score: int,
    mql_threshold: int,
    enrollments: list[EnrollmentView],
    engagement: list[EngagementView],
    now: datetime,
    marketing_blocked: str | None = None,
    outcome: str | None = None,
) -> NextAction:
    """Pick the one thing a sales rep should do next with this lead.

    `marketing_blocked` is the reason no marketing email or SMS may reach the lead
    (opted out, suppressed), or is None when one may. `outcome` is the lead's
    latest recorded outcome: a converted or lost lead needs no sales call.
    """
    if status != "active":
        return NextAction(action="do_not_contact", reason=f"lead status is {status}")
    if outcome == "converted":
        return NextAction(
            action="customer", reason="converted: a customer, no longer a lead"
        )
    if outcome == "lost":
        return NextAction(
            action="lost",
            reason="recorded as lost; enroll it in a campaign to nurture it again",
        )
    if stage in ("mql", "sql") or score >= mql_threshold:
        return NextAction(
            action="call",
            reason=f"score {score} is at or above the MQL threshold of {mql_threshold}",
        )
    recent = [event for event in engagement if now - event.at <= RECENT]
    goals = [e for e in enrollments if e.goal is not None]
    if goals:
        return NextAction(
            action="follow_up",
            reason=f"reached the goal {goals[0].goal} of {goals[0].campaign_name}",
        )
    clicks = [event for event in recent if event.type == "click"]
    if clicks:
        url = clicks[0].detail.get("url")
        target = f" on {url}" if url else ""
        return NextAction(
            action="follow_up",
            reason=f"clicked{target} {describe_age(now - clicks[0].at)} ago",
        )
    upcoming = [e for e in enrollments if e.status == "active" and e.next_step_due_at]
    if upcoming:
        first = min(upcoming, key=lambda e: e.next_step_due_at or now)
        at = f"{first.next_step_due_at:%Y-%m-%d %H:%M} UTC"
        if first.next_step == first.current_step:
            # The current step is waiting (a delay, quiet hours) until then.
            detail = f" ({first.waiting_reason})" if first.waiting_reason else ""
            reason = f"{first.campaign_name} continues at {at}{detail}"
        else:
            step = first.next_step
            reason = f"{first.campaign_name} continues with step {step} at {at}"
        return NextAction(action="wait_for_campaign", reason=reason)
    live = [e for e in enrollments if e.status == "active"]
    if live:
        waiting = live[0].waiting_reason or "in progress"
        return NextAction(
            action="wait_for_campaign",
            reason=f"enrolled in {live[0].campaign_name} ({waiting})",
        )
    if marketing_blocked is not None:
        return NextAction(action="do_not_contact", reason=marketing_blocked)
    if any(event.type == "open" for event in recent):
        return NextAction(
            action="send_personal_email",
            reason="opened our email in the last 7 days but has not clicked",
        )
    return NextAction(
        action="enroll_in_campaign",
        reason="no live campaign and no engagement in the last 7 days",
    )
