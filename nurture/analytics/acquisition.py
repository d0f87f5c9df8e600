"""Acquisition by source channel and UTM campaign, and attribution of conversions."""

from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from nurture.analytics.sql import (
    LEADS,
    MESSAGES,
    MQL_STAGES,
    OUTCOMES,
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    SPEND,
    TOUCH_STATUSES,
    EpochSeconds,
    Greatest,
    Least,
    RangeOut,
    TimeRange,
    campaign_names,
    campaign_specs,
    count_if,
    middle_value,
    ratio,
)
from nurture.schemas import CamelModel


class AcquisitionRow(CamelModel):
    """Leads captured in the range from one source channel, or one UTM campaign."""

    level: Literal["channel", "campaign"]
    channel: str | None = Field(description="Source channel (utm_source).")
    campaign: str | None = Field(description="UTM campaign; empty on channel rows.")
    leads: int
    mqls: int = Field(description="Leads that reached mql or a later stage.")
    conversions: int = Field(description="Leads with a converted outcome.")
    mql_rate: float | None = Field(description="mqls / leads")
    conversion_rate: float | None = Field(description="conversions / leads")
    median_hours_to_mql: float | None
    median_hours_to_conversion: float | None
    spend: float | None = Field(
        description="Spend entered for the key, prorated by day to the range."
    )
    currency: str | None
    cost_per_lead: float | None
    cost_per_customer: float | None


def first_conversions() -> sa.Subquery:
    """Select each converted lead's first conversion time."""
    return (
        sa.select(
            OUTCOMES.c.lead_id,
            sa.func.min(OUTCOMES.c.occurred_at).label("converted_at"),
        )
        .where(OUTCOMES.c.outcome == "converted")
        .group_by(OUTCOMES.c.lead_id)
        .subquery("conversions")
    )


def acquired_leads(time_range: TimeRange) -> sa.Subquery:
    """Select one row per lead captured in the range, with its milestones in hours."""
    conversions = first_conversions()
    leads = LEADS
    created = EpochSeconds(leads.c.created_at)
    to_mql = (EpochSeconds(leads.c.mql_at) - created) / SECONDS_PER_HOUR
    to_conversion = (
        EpochSeconds(conversions.c.converted_at) - created
    ) / SECONDS_PER_HOUR
    return (
        sa.select(
            sa.func.coalesce(leads.c.source_channel, "").label("channel"),
            sa.func.coalesce(leads.c.source_campaign, "").label("campaign"),
            sa.case((leads.c.stage.in_(MQL_STAGES), 1), else_=0).label("mql"),
            sa.case((conversions.c.converted_at.is_not(None), 1), else_=0).label(
                "converted"
            ),
            # An imported lead may have converted before it was captured here;
            # such negative times are left out of the medians.
            sa.case((leads.c.mql_at >= leads.c.created_at, to_mql)).label(
                "hours_to_mql"
            ),
            sa.case(
                (conversions.c.converted_at >= leads.c.created_at, to_conversion)
            ).label("hours_to_conversion"),
        )
        .select_from(leads.outerjoin(conversions, conversions.c.lead_id == leads.c.id))
        .where(*time_range.where(leads.c.created_at))
        .subquery("acquired")
    )


def _cents(amount: float | None) -> float | None:
    """Round money to cents: prorated spend divides into long fractions."""
    return None if amount is None else round(amount, 2)


def spend_query(time_range: TimeRange, by_campaign: bool) -> sa.Select[Any]:
    """Sum the spend per channel (and campaign), prorated to the range.

    An entry covers its days from the first day's midnight UTC to the end of
    the last day, and counts with the share of that time inside the range.
    """
    start = EpochSeconds(SPEND.c.period_start)
    end = EpochSeconds(SPEND.c.period_end) + SECONDS_PER_DAY
    low: sa.ColumnElement[float] = start
    high: sa.ColumnElement[float] = end
    if time_range.start is not None:
        low = Greatest(start, sa.literal(time_range.start.timestamp(), sa.Float()))
    if time_range.end is not None:
        high = Least(end, sa.literal(time_range.end.timestamp(), sa.Float()))
    share = sa.case((high > low, (high - low) / (end - start)), else_=0.0)
    keys = [SPEND.c.channel]
    if by_campaign:
        keys.append(SPEND.c.utm_campaign)
    query = sa.select(
        *keys,
        sa.func.sum(sa.cast(SPEND.c.amount, sa.Float()) * share).label("spend"),
        sa.func.min(SPEND.c.currency).label("currency"),
    ).group_by(*keys)
    if by_campaign:
        query = query.where(SPEND.c.utm_campaign != "")
    return query


def acquisition_counts_query(acquired: sa.Subquery) -> sa.Select[Any]:
    """Count leads, MQLs and conversions per channel and UTM campaign."""
    keys = [acquired.c.channel, acquired.c.campaign]
    return sa.select(
        *keys,
        sa.func.count().label("leads"),
        sa.func.sum(acquired.c.mql).label("mqls"),
        sa.func.sum(acquired.c.converted).label("conversions"),
    ).group_by(*keys)


MEDIANS = ("hours_to_mql", "hours_to_conversion")


def acquisition_medians_query(
    acquired: sa.Subquery, keys: Sequence[str]
) -> sa.Select[Any]:
    """Select both median times per key, in one pass over the leads that have one.

    Each median averages the middle row (or two rows) of its value's order
    within the key; NULLs sort after the values and are not counted.
    """
    partition = [acquired.c[key] for key in keys]
    ranked = (
        sa.select(
            *partition,
            *[acquired.c[name] for name in MEDIANS],
            *[
                sa.func.row_number()
                .over(
                    partition_by=partition,
                    order_by=acquired.c[name].asc().nulls_last(),
                )
                .label(f"{name}_position")
                for name in MEDIANS
            ],
            *[
                sa.func.count(acquired.c[name])
                .over(partition_by=partition)
                .label(f"{name}_total")
                for name in MEDIANS
            ],
        )
        .where(sa.or_(*[acquired.c[name].is_not(None) for name in MEDIANS]))
        .subquery("ranked")
    )
    grouped = [ranked.c[key] for key in keys]
    return sa.select(
        *grouped,
        *[
            sa.func.avg(
                middle_value(
                    ranked.c[name],
                    ranked.c[f"{name}_position"],
                    ranked.c[f"{name}_total"],
                )
            ).label(name)
            for name in MEDIANS
        ],
    ).group_by(*grouped)


def _level_rows(
    level: Literal["channel", "campaign"],
    counts: dict[tuple[str, ...], list[int]],
    medians: dict[tuple[str, ...], Any],
    spend: dict[tuple[str, ...], tuple[float, str]],
) -> list[AcquisitionRow]:
    rows = []
    for key, (leads, mqls, conversions) in counts.items():
        amount, currency = spend.get(key, (None, None))
        median = medians.get(key)
        rows.append(
            AcquisitionRow(
                level=level,
                channel=key[0] or None,
                campaign=(key[1] or None) if level == "campaign" else None,
                leads=leads,
                mqls=mqls,
                conversions=conversions,
                mql_rate=ratio(mqls, leads),
                conversion_rate=ratio(conversions, leads),
                median_hours_to_mql=median.hours_to_mql if median else None,
                median_hours_to_conversion=(
                    median.hours_to_conversion if median else None
                ),
                spend=_cents(amount),
                currency=currency,
                cost_per_lead=_cents(ratio(amount, leads)),
                cost_per_customer=_cents(ratio(amount, conversions)),
            )
        )
    return sorted(rows, key=lambda r: (-r.leads, r.channel or "", r.campaign or ""))


def acquisition(
    connection: sa.Connection, time_range: TimeRange
) -> list[AcquisitionRow]:
    """Return the channel rows, then the channel-and-campaign rows."""
    acquired = acquired_leads(time_range)
    by_campaign: dict[tuple[str, ...], list[int]] = {}
    by_channel: dict[tuple[str, ...], list[int]] = {}
    for row in connection.execute(acquisition_counts_query(acquired)):
        figures = [row.leads, int(row.mqls or 0), int(row.conversions or 0)]
        by_campaign[(row.channel, row.campaign)] = figures
        # A channel's counts are the sums of its campaigns' counts.
        total = by_channel.setdefault((row.channel,), [0, 0, 0])
        for index, value in enumerate(figures):
            total[index] += value
    result = []
    levels: list[tuple[Literal["channel", "campaign"], Any]] = [
        ("channel", by_channel),
        ("campaign", by_campaign),
    ]
    for level, counts in levels:
        keys = ["channel"] if level == "channel" else ["channel", "campaign"]
        medians = {
            tuple(row[: len(keys)]): row
            for row in connection.execute(acquisition_medians_query(acquired, keys))
        }
        spend = {
            tuple(row[:-2]): (float(row.spend), row.currency)
            for row in connection.execute(spend_query(time_range, level == "campaign"))
        }
        result += _level_rows(level, counts, medians, spend)
    return result


# Attribution.


class AttributionRow(CamelModel):
    """Credit for conversions given to a campaign, or one step of one version."""

    level: Literal["campaign", "message"]
    campaign_id: str
    campaign_name: str | None
    version: int | None
    step: str | None
    step_number: int | None
    channel: str | None
    template: str | None
    touched_conversions: int = Field(
        description="Conversions whose lead got at least one of these messages."
    )
    first_touch: int = Field(description="Conversions whose first touch this was.")
    last_touch: int = Field(description="Conversions whose last touch this was.")
    linear: float = Field(description="Each conversion split evenly over its touches.")


class Attribution(CamelModel):
    range: RangeOut
    conversions: int = Field(description="First conversions in the range.")
    attributed: int = Field(description="Conversions with at least one touch.")
    rows: list[AttributionRow]


def touches_query(time_range: TimeRange) -> sa.Subquery:
    """Campaign messages that reached each lead before its first conversion.

    Each touch carries its position from the first and from the last touch,
    the lead's number of touches, and whether it is the lead's first touch
    by this campaign and by this step, so one grouping gives every credit.
    """
    conversions = first_conversions()
    messages = MESSAGES
    lead = [messages.c.lead_id]
    in_order = [messages.c.sent_at, messages.c.id]

    def first_of(*partition: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.func.row_number().over(
            partition_by=[*lead, *partition], order_by=in_order
        )

    return (
        sa.select(
            messages.c.lead_id,
            messages.c.campaign_id,
            messages.c.campaign_version,
            messages.c.step,
            messages.c.channel,
            messages.c.template,
            first_of().label("from_first"),
            sa.func.row_number()
            .over(
                partition_by=lead,
                order_by=[messages.c.sent_at.desc(), messages.c.id.desc()],
            )
            .label("from_last"),
            sa.func.count().over(partition_by=lead).label("touches"),
            first_of(messages.c.campaign_id).label("campaign_rank"),
            first_of(
                messages.c.campaign_id, messages.c.campaign_version, messages.c.step
            ).label("step_rank"),
        )
        .select_from(
            messages.join(conversions, conversions.c.lead_id == messages.c.lead_id)
        )
        .where(
            messages.c.campaign_id.is_not(None),
            messages.c.status.in_(TOUCH_STATUSES),
            messages.c.sent_at.is_not(None),
            messages.c.sent_at <= conversions.c.converted_at,
            *time_range.where(conversions.c.converted_at),
        )
        .subquery("touches")
    )


def credit_query(time_range: TimeRange) -> sa.Select[Any]:
    """Sum the credit per campaign step; campaign rows add these up."""
    touches = touches_query(time_range)
    return sa.select(
        touches.c.campaign_id,
        touches.c.campaign_version,
        touches.c.step,
        sa.func.min(touches.c.channel).label("channel"),
        sa.func.min(touches.c.template).label("template"),
        count_if(touches.c.step_rank == 1).label("touched_conversions"),
        count_if(touches.c.campaign_rank == 1).label("campaign_touched"),
        count_if(touches.c.from_first == 1).label("first_touch"),
        count_if(touches.c.from_last == 1).label("last_touch"),
        sa.func.sum(sa.literal(1.0, sa.Float()) / touches.c.touches).label("linear"),
    ).group_by(touches.c.campaign_id, touches.c.campaign_version, touches.c.step)


def _campaign_rows(steps: Sequence[Any], names: dict[str, str]) -> list[AttributionRow]:
    totals: dict[str, list[float]] = {}
    for row in steps:
        total = totals.setdefault(row.campaign_id, [0, 0, 0, 0.0])
        total[0] += row.campaign_touched
        total[1] += row.first_touch
        total[2] += row.last_touch
        total[3] += float(row.linear)
    return [
        AttributionRow(
            level="campaign",
            campaign_id=campaign,
            campaign_name=names.get(campaign),
            version=None,
            step=None,
            step_number=None,
            channel=None,
            template=None,
            touched_conversions=int(touched),
            first_touch=int(first),
            last_touch=int(last),
            linear=linear,
        )
        for campaign, (touched, first, last, linear) in totals.items()
    ]


def attribution(connection: sa.Connection, time_range: TimeRange) -> Attribution:
    """Credit the conversions in the range to the campaign messages before them."""
    steps = connection.execute(credit_query(time_range)).all()
    conversions = first_conversions()
    total = connection.execute(
        sa.select(sa.func.count())
        .select_from(conversions)
        .where(*time_range.where(conversions.c.converted_at))
    ).scalar_one()
    names = campaign_names(connection, (row.campaign_id for row in steps))
    specs = campaign_specs(
        connection, ((row.campaign_id, row.campaign_version) for row in steps)
    )
    rows = _campaign_rows(steps, names)
    for row in steps:
        spec = specs.get((row.campaign_id, row.campaign_version))
        ids = spec.step_ids() if spec else []
        number = row.step
        rows.append(
            AttributionRow(
                level="message",
                campaign_id=row.campaign_id,
                campaign_name=names.get(row.campaign_id),
                version=row.campaign_version,
                step=ids[number - 1] if number and 0 < number <= len(ids) else None,
                step_number=number,
                channel=row.channel,
                template=row.template,
                touched_conversions=row.touched_conversions,
                first_touch=row.first_touch,
                last_touch=row.last_touch,
                linear=float(row.linear),
            )
        )
    rows.sort(key=lambda r: (r.level != "campaign", -r.linear, r.campaign_id))
    return Attribution(
        range=RangeOut.of(time_range),
        conversions=total,
        # Each attributed conversion has exactly one first touch.
        attributed=sum(row.first_touch for row in steps),
        rows=rows,
    )
