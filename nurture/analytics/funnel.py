"""The campaign funnel: enrolled, sent, delivered ... goal reached, per step."""

from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from nurture.analytics.sql import (
    DELIVERED_STATUSES,
    ENROLLMENTS,
    EVENTS,
    MESSAGES,
    SENT_STATUSES,
    UNSUBSCRIBE_EVENTS,
    TimeRange,
    campaign_names,
    campaign_specs,
    converted_enrollments,
    count_if,
    ratio,
)
from nurture.conditions import REPLY_EVENT_TYPES
from nurture.schemas import CamelModel


class FunnelRow(CamelModel):
    """Counts of one campaign version, or of one step and variant of it."""

    level: Literal["version", "step"]
    campaign_id: str
    campaign_name: str | None
    version: int
    step: str | None = Field(description="Step id; empty on the version's row.")
    step_number: int | None = Field(description="Position of the step, from 1.")
    channel: str | None
    template: str | None
    variant: str | None = Field(description="The split variant the message went in.")
    enrolled: int = Field(
        description="Version row: enrollments started in the range. Step row: "
        "their passes through the step that prepared a message, which is the "
        "enrollments that reached it unless the journey loops through it."
    )
    sent: int
    delivered: int
    opened: int
    clicked: int
    replied: int
    goal_reached: int = Field(
        description="Enrollments that reached a goal; on step rows, the passes "
        "through the step of such enrollments."
    )
    unsubscribed: int
    bounced: int
    delivery_rate: float | None = Field(description="delivered / sent")
    open_rate: float | None = Field(description="opened / delivered")
    click_rate: float | None = Field(description="clicked / delivered")
    click_to_open_rate: float | None = Field(description="clicked / opened")
    reply_rate: float | None = Field(description="replied / delivered")
    goal_rate: float | None = Field(description="goalReached / enrolled")
    unsubscribe_rate: float | None = Field(description="unsubscribed / delivered")
    bounce_rate: float | None = Field(description="bounced / sent")


MESSAGE_COUNTS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "replied",
    "unsubscribed",
    "bounced",
)


def _with_rates(values: dict[str, Any]) -> dict[str, Any]:
    return {
        **values,
        "delivery_rate": ratio(values["delivered"], values["sent"]),
        "open_rate": ratio(values["opened"], values["delivered"]),
        "click_rate": ratio(values["clicked"], values["delivered"]),
        "click_to_open_rate": ratio(values["clicked"], values["opened"]),
        "reply_rate": ratio(values["replied"], values["delivered"]),
        "goal_rate": ratio(values["goal_reached"], values["enrolled"]),
        "unsubscribe_rate": ratio(values["unsubscribed"], values["delivered"]),
        "bounce_rate": ratio(values["bounced"], values["sent"]),
    }


def _message_responses() -> sa.Subquery:
    """Replies and unsubscribes per message, from the stored events."""
    kinds = (*REPLY_EVENT_TYPES, *UNSUBSCRIBE_EVENTS)
    return (
        sa.select(
            EVENTS.c.message_id,
            sa.func.max(
                sa.case((EVENTS.c.type.in_(REPLY_EVENT_TYPES), 1), else_=0)
            ).label("replied"),
            sa.func.max(
                sa.case((EVENTS.c.type.in_(UNSUBSCRIBE_EVENTS), 1), else_=0)
            ).label("unsubscribed"),
        )
        .where(EVENTS.c.message_id.is_not(None), EVENTS.c.type.in_(kinds))
        .group_by(EVENTS.c.message_id)
        .subquery("responses")
    )


def funnel_step_query(
    time_range: TimeRange, campaign_id: str | None = None
) -> sa.Select[Any]:
    """Count each step and variant of the enrollments started in the range.

    Goals are looked up among the converted enrollments only, and the range
    is a semi-join on enrollments, so the statement reads the messages once
    and joins two small sets, never the whole enrollments table.
    """
    messages = MESSAGES
    responses = _message_responses()
    converted = converted_enrollments()
    query = (
        sa.select(
            messages.c.campaign_id,
            messages.c.campaign_version,
            messages.c.step,
            messages.c.variant,
            sa.func.min(messages.c.channel).label("channel"),
            sa.func.min(messages.c.template).label("template"),
            # NOTE: messages, not distinct enrollments, because count(DISTINCT)
            # took about three times as long on PostgreSQL with the data of
            # bench/analytics.py. They differ only when a journey loops.
            sa.func.count().label("enrolled"),
            count_if(
                sa.or_(
                    messages.c.sent_at.is_not(None),
                    messages.c.status.in_(SENT_STATUSES),
                )
            ).label("sent"),
            count_if(messages.c.status.in_(DELIVERED_STATUSES)).label("delivered"),
            count_if(messages.c.opened_at.is_not(None)).label("opened"),
            count_if(messages.c.clicked_at.is_not(None)).label("clicked"),
            sa.func.coalesce(sa.func.sum(responses.c.replied), 0).label("replied"),
            sa.func.count(converted.c.id).label("goal_reached"),
            sa.func.coalesce(sa.func.sum(responses.c.unsubscribed), 0).label(
                "unsubscribed"
            ),
            count_if(messages.c.status == "bounced").label("bounced"),
        )
        .select_from(
            messages.outerjoin(
                converted, converted.c.id == messages.c.enrollment_id
            ).outerjoin(responses, responses.c.message_id == messages.c.id)
        )
        .where(messages.c.enrollment_id.is_not(None))
        .group_by(
            messages.c.campaign_id,
            messages.c.campaign_version,
            messages.c.step,
            messages.c.variant,
        )
    )
    if time_range.start is not None or time_range.end is not None:
        started = sa.select(ENROLLMENTS.c.id).where(
            *time_range.where(ENROLLMENTS.c.enrolled_at)
        )
        query = query.where(messages.c.enrollment_id.in_(started))
    if campaign_id is not None:
        query = query.where(messages.c.campaign_id == campaign_id)
    return query


def funnel_version_query(
    time_range: TimeRange, campaign_id: str | None = None
) -> sa.Select[Any]:
    """Count the enrollments started in the range, and their goals, per version."""
    enrollments = ENROLLMENTS
    query = (
        sa.select(
            enrollments.c.campaign_id,
            enrollments.c.campaign_version,
            sa.func.count().label("enrolled"),
            count_if(enrollments.c.status == "converted").label("goal_reached"),
        )
        .where(*time_range.where(enrollments.c.enrolled_at))
        .group_by(enrollments.c.campaign_id, enrollments.c.campaign_version)
    )
    if campaign_id is not None:
        query = query.where(enrollments.c.campaign_id == campaign_id)
    return query


def funnel(
    connection: sa.Connection, time_range: TimeRange, campaign_id: str | None = None
) -> list[FunnelRow]:
    """Return each campaign version's row followed by its step rows."""
    steps = connection.execute(funnel_step_query(time_range, campaign_id)).all()
    versions = {
        (row.campaign_id, row.campaign_version): row
        for row in connection.execute(funnel_version_query(time_range, campaign_id))
    }
    keys = set(versions) | {(row.campaign_id, row.campaign_version) for row in steps}
    names = campaign_names(connection, (campaign for campaign, _ in keys))
    specs = campaign_specs(connection, keys)
    result: list[FunnelRow] = []
    for key in sorted(keys):
        campaign, version = key
        own = sorted(
            (row for row in steps if (row.campaign_id, row.campaign_version) == key),
            key=lambda row: (row.step or 0, row.variant or ""),
        )
        enrolled = versions[key].enrolled if key in versions else 0
        goals = versions[key].goal_reached if key in versions else 0
        totals = {
            name: sum(getattr(row, name) for row in own) for name in MESSAGE_COUNTS
        }
        common = {"campaign_id": campaign, "campaign_name": names.get(campaign)}
        result.append(
            FunnelRow(
                level="version",
                version=version,
                step=None,
                step_number=None,
                channel=None,
                template=None,
                variant=None,
                **_with_rates({**totals, "enrolled": enrolled, "goal_reached": goals}),
                **common,
            )
        )
        ids = specs[key].step_ids() if key in specs else []
        for row in own:
            number = row.step
            step = ids[number - 1] if number and 0 < number <= len(ids) else None
            values = {name: int(getattr(row, name)) for name in MESSAGE_COUNTS}
            values.update(enrolled=row.enrolled, goal_reached=row.goal_reached)
            result.append(
                FunnelRow(
                    level="step",
                    version=version,
                    step=step,
                    step_number=number,
                    channel=row.channel,
                    template=row.template,
                    variant=row.variant,
                    **_with_rates(values),
                    **common,
                )
            )
    return result
