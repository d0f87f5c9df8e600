"""Dry runs of a campaign: the schedule a sample lead would get, sending nothing.

The walk follows the same rules as the nurture workflow (delays, waits in the
lead's local time, send windows and quiet hours, conditions, splits, goals)
on a virtual clock, with the sample's events standing in for real ones.
NOTE: frequency caps and send-time optimization depend on other campaigns
and on past opens, so a dry run leaves them out.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, Field

from nurture.campaigns import (
    BranchStep,
    CampaignSpec,
    ExitStep,
    SendStep,
    SplitStep,
    WaitForEventStep,
    WaitStep,
)
from nurture.conditions import (
    EventFacts,
    Facts,
    MessageFacts,
    evaluate,
    parse_condition,
)
from nurture.durations import parse_duration
from nurture.enrichment import enrich
from nurture.leads import LeadCreate, LeadPublic, lead_columns, template_context
from nurture.models import Lead
from nurture.rendering import TemplateError, TemplateRenderer
from nurture.schemas import CamelModel, StrictCamelModel
from nurture.scoring import Behavioral, Engagement, Firmographic, ScoringInput, score
from nurture.sendtime import next_local_time, next_send_time, resolve_timezone

# A journey longer than this is cut short; loops always contain a wait, so a
# runaway walk still ends.
MAX_ACTIONS = 500


class SampleEvent(StrictCamelModel):
    type: str = Field(description="open, click, replied, converted, page_view...")
    at: AwareDatetime
    url: str | None = None


class SimulationRequest(StrictCamelModel):
    lead: LeadCreate
    events: list[SampleEvent] = Field(default_factory=list, max_length=1000)
    start: AwareDatetime | None = Field(None, description="Defaults to now.")
    timezone: str = Field("UTC", description="Zone when the lead's is unknown.")


class PlannedAction(CamelModel):
    step: str
    type: str
    at: datetime
    local_time: str
    detail: str | None = None
    channel: str | None = None
    template: str | None = None
    subject: str | None = None


class SimulationResult(CamelModel):
    version: int
    timezone: str
    outcome: Literal["completed", "converted", "exited", "cut_short"]
    goal: str | None = None
    ended_at: datetime
    actions: list[PlannedAction]


@dataclass
class _Walk:
    spec: CampaignSpec
    lead_doc: dict[str, Any]
    zone: str
    events: list[SampleEvent]
    renderer: TemplateRenderer
    template_lead: dict[str, Any]
    clock: datetime
    key: str
    actions: list[PlannedAction] = field(default_factory=list)
    sent: list[tuple[str, str, datetime]] = field(default_factory=list)

    def add(self, step: str, kind: str, at: datetime, **extra: Any) -> None:
        local = at.astimezone(ZoneInfo(self.zone))
        self.actions.append(
            PlannedAction(
                step=step,
                type=kind,
                at=at,
                local_time=local.strftime("%a %Y-%m-%d %H:%M %Z"),
                **extra,
            )
        )

    def facts(self) -> Facts:
        seen = [e for e in self.events if e.at <= self.clock]
        messages = tuple(
            MessageFacts(
                message_id=message_id,
                template=template,
                opened=_engaged(seen, sent_at, ("open", "click")),
                clicked=_engaged(seen, sent_at, ("click",)),
            )
            for message_id, template, sent_at in self.sent
        )
        return Facts(
            lead=self.lead_doc,
            previous_message_id=self.sent[-1][0] if self.sent else None,
            messages=messages,
            events=tuple(EventFacts(type=e.type, occurred_at=e.at) for e in seen),
            now=self.clock,
        )

    def holds(self, condition: str) -> bool:
        return evaluate(parse_condition(condition), self.facts())

    def goal_reached(self, until: datetime) -> tuple[str, datetime] | None:
        """Return the first goal an event meets up to `until`, with its time."""
        for event in sorted(self.events, key=lambda e: e.at):
            if event.at > until:
                break
            for goal in self.spec.goals:
                if goal.event is not None and goal.event == event.type:
                    return goal.name, event.at
        return None


def _engaged(
    events: list[SampleEvent], since: datetime, kinds: tuple[str, ...]
) -> bool:
    return any(e.type in kinds and e.at >= since for e in events)


def _sample_lead(sample: LeadCreate, now: datetime) -> tuple[Lead, dict[str, Any]]:
    lead = Lead(
        id="sample", **lead_columns(sample.contact, sample.company, sample.source)
    )
    lead.custom_fields = dict(sample.custom_fields)
    lead.enrichment = enrich(lead.model_dump()).model_dump()
    custom = lead.custom_fields
    result = score(
        ScoringInput(
            firmographic=Firmographic(
                industry=lead.company_industry,
                size=lead.company_size,
                revenue=lead.company_revenue,
                budget=str(custom["budget"]) if custom.get("budget") else None,
                timeline=str(custom["timeline"]) if custom.get("timeline") else None,
                free_mail=bool(lead.enrichment.get("free_mail")),
                role_address=bool(lead.enrichment.get("role_address")),
            ),
            behavioral=Behavioral(form_submissions=1),
            engagement=Engagement(last_activity=now, total_activities=1),
        ),
        now,
    )
    lead.score = result.score
    return lead, LeadPublic.from_lead(lead).model_dump(mode="json")


def simulate(
    spec: CampaignSpec,
    version: int,
    campaign_id: str,
    request: SimulationRequest,
    renderer: TemplateRenderer,
    now: datetime,
) -> SimulationResult:
    """Walk the campaign for the sample lead and return what would happen when."""
    start = request.start or now
    lead, document = _sample_lead(request.lead, start)
    zone, _source = resolve_timezone(
        lead.timezone,
        lead.phone,
        lead.company_country,
        spec.send_rules.timezone or request.timezone,
    )
    walk = _Walk(
        spec=spec,
        lead_doc=document,
        zone=zone,
        events=sorted(request.events, key=lambda e: e.at),
        renderer=renderer,
        template_lead=template_context(lead),
        clock=start,
        key=f"{lead.email or lead.phone}:{campaign_id}",
    )
    outcome: Literal["completed", "converted", "exited", "cut_short"] = "completed"
    goal = None
    current: str | None = spec.step_ids()[0]
    ids = spec.step_ids()
    while current is not None:
        if len(walk.actions) >= MAX_ACTIONS:
            outcome = "cut_short"
            break
        index = ids.index(current)
        step = spec.sequence[index]
        following = spec.following(index)
        before = walk.clock
        successor = _advance(walk, step, current, following)
        reached = walk.goal_reached(walk.clock)
        if reached is not None and reached[1] >= before:
            goal, walk.clock = reached
            # What this step would have done after the goal never happens.
            while walk.actions and walk.actions[-1].at > walk.clock:
                walk.actions.pop()
            walk.add(current, "goal", walk.clock, detail=f"goal {goal} reached")
            outcome = "converted"
            break
        if successor == "__exit__":
            outcome = "exited"
            break
        current = successor
    return SimulationResult(
        version=version,
        timezone=zone,
        outcome=outcome,
        goal=goal,
        ended_at=walk.clock,
        actions=walk.actions,
    )


def _advance(walk: _Walk, step: Any, current: str, following: str | None) -> str | None:
    """Run one step on the virtual clock and return the next step's id."""
    rules = walk.spec.send_rules
    if isinstance(step, SendStep):
        walk.clock += step.delay_timedelta
        gate = step.gate()
        if gate is not None and not walk.holds(gate):
            walk.add(current, "skip", walk.clock, detail=f"condition not met: {gate}")
            return step.next or following
        walk.clock = next_send_time(
            walk.clock, walk.zone, rules.send_window, rules.quiet_hours
        )
        subject = _subject(walk, step)
        walk.add(
            current,
            "send",
            walk.clock,
            channel=step.channel,
            template=step.template,
            subject=subject,
        )
        walk.sent.append((f"simulated-{len(walk.sent) + 1}", step.template, walk.clock))
        return step.next or following
    if isinstance(step, WaitStep):
        if step.duration is not None:
            walk.clock += parse_duration(step.duration)
            detail = f"waited {step.duration}"
        else:
            assert step.until is not None
            walk.clock = next_local_time(
                walk.clock, walk.zone, step.until.time, list(step.until.days)
            )
            detail = f"waited until {step.until.time:%H:%M} local time"
        walk.add(current, "wait", walk.clock, detail=detail)
        return step.next or following
    if isinstance(step, WaitForEventStep):
        deadline = walk.clock + parse_duration(step.timeout)
        match = next(
            (
                e
                for e in walk.events
                if walk.clock < e.at <= deadline
                and e.type == step.event
                and (not step.url_contains or step.url_contains in (e.url or ""))
            ),
            None,
        )
        walk.clock = match.at if match is not None else deadline
        detail = f"{step.event}: {'yes' if match else 'timed out'}"
        walk.add(current, "wait_for_event", walk.clock, detail=detail)
        chosen = step.on_event if match is not None else step.on_timeout
        return chosen or following
    if isinstance(step, BranchStep):
        holds = walk.holds(step.condition)
        walk.add(current, "branch", walk.clock, detail="then" if holds else "else")
        return (step.then if holds else step.else_) or following
    if isinstance(step, SplitStep):
        variant = step.choose(f"{walk.key}:{current}")
        walk.add(current, "split", walk.clock, detail=f"variant {variant.name}")
        return variant.next or following
    assert isinstance(step, ExitStep)
    walk.add(current, "exit", walk.clock)
    return "__exit__"


def _subject(walk: _Walk, step: SendStep) -> str | None:
    """Render the message's subject for the sample lead, or the reason it cannot."""
    if step.channel == "sms":
        return None
    try:
        rendered = walk.renderer.render(
            step.channel, step.template, walk.template_lead, step.personalization
        )
    except TemplateError as error:
        return f"(cannot render: {error})"
    return rendered.subject
