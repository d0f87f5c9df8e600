"""Tables, constants and the SQL pieces that every analytics query shares.

The same statements run on PostgreSQL and SQLite; the few functions that
differ between the two are compiled per dialect here.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from nurture.campaigns import CampaignSpec
from nurture.models import (
    Campaign,
    CampaignVersion,
    ChannelSpend,
    EngagementEvent,
    Enrollment,
    Lead,
    LeadOutcome,
    Message,
    ScoringModel,
    SplitAssignment,
    SplitDecision,
)
from nurture.schemas import CamelModel

CAMPAIGNS = Campaign.__table__  # type: ignore[attr-defined]
VERSIONS = CampaignVersion.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
MESSAGES = Message.__table__  # type: ignore[attr-defined]
EVENTS = EngagementEvent.__table__  # type: ignore[attr-defined]
LEADS = Lead.__table__  # type: ignore[attr-defined]
OUTCOMES = LeadOutcome.__table__  # type: ignore[attr-defined]
MODELS = ScoringModel.__table__  # type: ignore[attr-defined]
ASSIGNMENTS = SplitAssignment.__table__  # type: ignore[attr-defined]
DECISIONS = SplitDecision.__table__  # type: ignore[attr-defined]
SPEND = ChannelSpend.__table__  # type: ignore[attr-defined]

# A message counts as sent once the provider took it; a bounce was sent too.
SENT_STATUSES = ("sent", "delivered", "opened", "clicked", "bounced")
DELIVERED_STATUSES = ("delivered", "opened", "clicked")
# Messages that reached the lead, for attribution.
TOUCH_STATUSES = ("sent", "delivered", "opened", "clicked")
UNSUBSCRIBE_EVENTS = ("unsubscribe", "group_unsubscribe", "spamreport", "sms_opt_out")
MQL_STAGES = ("mql", "sql", "customer")
SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600
DEFAULT_CONFIDENCE = 0.95
# Significance that marks a variant in A/B results when its split has no rule.
DEFAULT_SIGNIFICANCE = 0.05
DECILES = 10

AB_METHOD = (
    "Conversion: an enrollment that reached one of the campaign's goals after "
    "the split. Interval: Wilson score interval. Test: two-sided two-proportion "
    "z-test with pooled variance, each variant against the first variant "
    "(control); with k variants each test uses significance / (k - 1) "
    "(Bonferroni). Only variants drawn at random are counted, never those a "
    "winner decision assigned."
)


# Portable SQL.


class EpochSeconds(FunctionElement[float]):
    """Seconds since 1970-01-01 UTC of a timestamp or date column."""

    type = sa.Float()
    inherit_cache = True


@compiles(EpochSeconds, "postgresql")
def _epoch_postgresql(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    return f"CAST(EXTRACT(EPOCH FROM {value}) AS DOUBLE PRECISION)"


@compiles(EpochSeconds, "sqlite")
def _epoch_sqlite(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    # 2440587.5 is the Julian day number of the Unix epoch.
    value = compiler.process(element.clauses, **kw)
    return f"((julianday({value}) - 2440587.5) * 86400.0)"


class Greatest(FunctionElement[float]):
    type = sa.Float()
    inherit_cache = True


class Least(FunctionElement[float]):
    type = sa.Float()
    inherit_cache = True


@compiles(Greatest)
def _greatest(element: Greatest, compiler: SQLCompiler, **kw: Any) -> str:
    name = "GREATEST" if compiler.dialect.name == "postgresql" else "MAX"
    return f"{name}({compiler.process(element.clauses, **kw)})"


@compiles(Least)
def _least(element: Least, compiler: SQLCompiler, **kw: Any) -> str:
    name = "LEAST" if compiler.dialect.name == "postgresql" else "MIN"
    return f"{name}({compiler.process(element.clauses, **kw)})"


def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def ratio(part: float | None, whole: float | None) -> float | None:
    """Return part / whole, or None when there is no whole to divide by."""
    if part is None or not whole:
        return None
    return part / whole


def middle_value(
    value: sa.ColumnElement[Any],
    position: sa.ColumnElement[int],
    total: sa.ColumnElement[int],
) -> sa.ColumnElement[Any]:
    """Return `value` on the middle row(s) of `total` values, else NULL.

    The average of this over a group is the median: the middle row of an odd
    count, the mean of the two middle rows of an even one. Portable, because
    SQLite has no percentile function. SQLAlchemy renders // as integer
    division and / as true division.
    """
    middle = sa.or_(position == (total + 1) // 2, position == (total + 2) // 2)
    return sa.case((sa.and_(value.is_not(None), middle), value))


# Time ranges.


@dataclass(frozen=True)
class TimeRange:
    """A half-open interval [start, end) of UTC instants; None is unbounded."""

    start: datetime | None = None
    end: datetime | None = None

    def where(self, column: sa.ColumnElement[datetime]) -> list[sa.ColumnElement[bool]]:
        conditions = []
        if self.start is not None:
            conditions.append(column >= self.start)
        if self.end is not None:
            conditions.append(column < self.end)
        return conditions


class RangeOut(CamelModel):
    from_: datetime | None = Field(alias="from")
    to: datetime | None

    @classmethod
    def of(cls, time_range: TimeRange) -> "RangeOut":
        return cls(from_=time_range.start, to=time_range.end)


def converted_enrollments() -> sa.Subquery:
    """Ids of the enrollments that reached a goal: a small set to join."""
    return (
        sa.select(ENROLLMENTS.c.id)
        .where(ENROLLMENTS.c.status == "converted")
        .subquery("converted")
    )


def campaign_names(connection: sa.Connection, ids: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = connection.execute(
        sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.name).where(CAMPAIGNS.c.id.in_(wanted))
    )
    return {row.id: row.name for row in rows}


def campaign_specs(
    connection: sa.Connection, keys: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], CampaignSpec]:
    """Load the definitions of these (campaign id, version) pairs."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = connection.execute(
        sa.select(
            VERSIONS.c.campaign_id, VERSIONS.c.version, VERSIONS.c.definition
        ).where(VERSIONS.c.campaign_id.in_(sorted({c for c, _ in wanted})))
    )
    return {
        (row.campaign_id, row.version): CampaignSpec.model_validate(row.definition)
        for row in rows
        if (row.campaign_id, row.version) in wanted
    }
