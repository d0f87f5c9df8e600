"""Analytics: campaign funnel, A/B results, acquisition, attribution, scoring.

Each report returns JSON, or CSV with `?format=csv` or `Accept: text/csv`.
The time range is `from` and `to` in ISO 8601; a bare date `to` includes
that whole day. What each number counts is in docs/analytics.md.
"""

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import pycountry
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api.deps import EngineDep, MarketingDep, ReadLeadsDep
from api.errors import ApiError, FieldError, error_responses, validation_error
from nurture.analytics.acquisition import (
    AcquisitionRow,
    Attribution,
    AttributionRow,
    acquisition,
    attribution,
)
from nurture.analytics.funnel import FunnelRow, funnel
from nurture.analytics.scoring import DecileRow, ScoringQuality, scoring_quality
from nurture.analytics.splits import SplitResult, split_results
from nurture.analytics.sql import (
    AB_METHOD,
    CAMPAIGNS,
    DEFAULT_CONFIDENCE,
    SPEND,
    RangeOut,
    TimeRange,
)
from nurture.models import AuditEntry, utcnow
from nurture.schemas import CamelModel, StrictCamelModel

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])
CSV_TYPE = "text/csv"
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CSV_TYPE: {"schema": {"type": "string"}}}},
    **error_responses(401, 403, 404, 422),
}
MAX_SPEND_ENTRIES = 5000
# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# Query parameters.


def _parse_instant(
    name: str, text: str | None, end: bool, errors: list[FieldError]
) -> datetime | None:
    """Parse a date or date-time; a date `to` means the end of that day."""
    if text is None:
        return None
    # A "+" left unencoded in a query string arrives as a space.
    value = text.strip().replace(" ", "+")
    try:
        if len(value) == len("2026-01-31"):
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        instant = datetime.fromisoformat(value)
    except ValueError:
        errors.append(
            FieldError(
                path=name,
                message=f"invalid {name} {text!r}: write an ISO 8601 date "
                "(2026-01-31) or date-time with offset (2026-01-31T09:00:00Z)",
                type="datetime_parsing",
            )
        )
        return None
    if instant.tzinfo is None:
        errors.append(
            FieldError(
                path=name,
                message=f"{name} {text!r} has no UTC offset: add one, e.g. {value}Z",
                type="timezone_aware",
            )
        )
        return None
    return instant.astimezone(UTC)


def time_range(
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="Start, included: ISO 8601 date or date-time with offset.",
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            alias="to",
            description="End, excluded; a bare date includes that whole day.",
        ),
    ] = None,
) -> TimeRange:
    errors: list[FieldError] = []
    parsed_start = _parse_instant("from", start, False, errors)
    parsed_end = _parse_instant("to", end, True, errors)
    if parsed_start and parsed_end and parsed_end <= parsed_start:
        errors.append(
            FieldError(
                path="to",
                message=f"to ({end}) must be after from ({start})",
                type="value_error",
            )
        )
    if errors:
        raise validation_error(errors)
    return TimeRange(parsed_start, parsed_end)


RangeDep = Annotated[TimeRange, Depends(time_range)]
Format = Annotated[
    Literal["json", "csv"] | None,
    Query(description="csv for a CSV file; the default follows the Accept header."),
]
CampaignFilter = Annotated[
    str | None, Query(alias="campaignId", description="Only this campaign.")
]


def _check_campaign(engine: sa.Engine, campaign_id: str | None) -> None:
    if campaign_id is None:
        return
    if not campaign_id.strip():
        raise validation_error(
            [
                FieldError(
                    path="campaignId",
                    message="campaignId is empty: give a campaign id, or leave "
                    "the parameter out for every campaign",
                    type="missing",
                )
            ]
        )
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(CAMPAIGNS.c.id).where(CAMPAIGNS.c.id == campaign_id)
        ).first()
    if found is None:
        raise ApiError(404, "not_found", f"campaign {campaign_id} not found")


# CSV.


def _wants_csv(request: Request, output: str | None) -> bool:
    if output is not None:
        return output == "csv"
    return CSV_TYPE in request.headers.get("accept", "")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    if isinstance(value, str) and text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def csv_response(
    model: type[BaseModel], rows: Sequence[BaseModel], filename: str
) -> Response:
    """Write rows as CSV: one column per field, named as in the JSON."""
    columns = [field.alias or name for name, field in model.model_fields.items()]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        data = row.model_dump(mode="json", by_alias=True)
        writer.writerow([_cell(data.get(column)) for column in columns])
    return Response(
        buffer.getvalue(),
        media_type=f"{CSV_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# Reports.


class FunnelReport(CamelModel):
    range: RangeOut
    rows: list[FunnelRow]


@router.get("/funnel", response_model=FunnelReport, responses=REPORT_RESPONSES)
def read_funnel(
    request: Request,
    engine: EngineDep,
    _actor: ReadLeadsDep,
    period: RangeDep,
    campaign_id: CampaignFilter = None,
    format: Format = None,
) -> Any:
    """Read each campaign version's funnel, step by step and variant by variant."""
    _check_campaign(engine, campaign_id)
    with engine.connect() as connection:
        rows = funnel(connection, period, campaign_id)
    if _wants_csv(request, format):
        return csv_response(FunnelRow, rows, "funnel.csv")
    return FunnelReport(range=RangeOut.of(period), rows=rows)


class ABReport(CamelModel):
    range: RangeOut
    method: str
    splits: list[SplitResult]


class ABCsvRow(CamelModel):
    """One variant of one split, with its split's decision, for CSV."""

    campaign_id: str
    campaign_name: str | None
    step: str
    variant: str
    control: bool
    assigned: int
    converted: int
    conversion_rate: float | None
    ci_low: float | None
    ci_high: float | None
    difference: float | None
    z_score: float | None
    p_value: float | None
    significant: bool | None
    assigned_by_winner: int
    converted_by_winner: int
    confidence: float
    significance: float
    winner: str | None
    decided_at: datetime | None
    decided_by: str | None
    # Set when the decision was withdrawn: then no winner is in force.
    withdrawn_at: datetime | None


def _ab_rows(splits: list[SplitResult]) -> list[ABCsvRow]:
    return [
        ABCsvRow(
            campaign_id=split.campaign_id,
            campaign_name=split.campaign_name,
            step=split.step,
            confidence=split.confidence,
            significance=split.significance,
            winner=split.decision.winner if split.decision else None,
            decided_at=split.decision.decided_at if split.decision else None,
            decided_by=split.decision.decided_by if split.decision else None,
            withdrawn_at=split.decision.withdrawn_at if split.decision else None,
            **variant.model_dump(by_alias=False),
        )
        for split in splits
        for variant in split.variants
    ]


@router.get("/ab", response_model=ABReport, responses=REPORT_RESPONSES)
def read_ab_results(
    request: Request,
    engine: EngineDep,
    _actor: MarketingDep,
    period: RangeDep,
    campaign_id: CampaignFilter = None,
    confidence: Annotated[
        float, Query(gt=0.5, lt=1, description="Level of the Wilson intervals.")
    ] = DEFAULT_CONFIDENCE,
    format: Format = None,
) -> Any:
    """Read each split's conversion per variant, tested against its control."""
    _check_campaign(engine, campaign_id)
    with engine.connect() as connection:
        splits = split_results(connection, period, campaign_id, confidence)
    if _wants_csv(request, format):
        return csv_response(ABCsvRow, _ab_rows(splits), "ab.csv")
    return ABReport(range=RangeOut.of(period), method=AB_METHOD, splits=splits)


class AcquisitionReport(CamelModel):
    range: RangeOut
    rows: list[AcquisitionRow]


@router.get(
    "/acquisition", response_model=AcquisitionReport, responses=REPORT_RESPONSES
)
def read_acquisition(
    request: Request,
    engine: EngineDep,
    _actor: MarketingDep,
    period: RangeDep,
    format: Format = None,
) -> Any:
    """Read leads, MQLs, conversions and costs by source channel and UTM campaign."""
    with engine.connect() as connection:
        rows = acquisition(connection, period)
    if _wants_csv(request, format):
        return csv_response(AcquisitionRow, rows, "acquisition.csv")
    return AcquisitionReport(range=RangeOut.of(period), rows=rows)


@router.get("/attribution", response_model=Attribution, responses=REPORT_RESPONSES)
def read_attribution(
    request: Request,
    engine: EngineDep,
    _actor: MarketingDep,
    period: RangeDep,
    format: Format = None,
) -> Any:
    """Read first-touch, last-touch and linear credit of conversions in the range."""
    with engine.connect() as connection:
        report = attribution(connection, period)
    if _wants_csv(request, format):
        return csv_response(AttributionRow, report.rows, "attribution.csv")
    return report


@router.get("/scoring", response_model=ScoringQuality, responses=REPORT_RESPONSES)
def read_scoring_quality(
    request: Request,
    engine: EngineDep,
    _actor: ReadLeadsDep,
    period: RangeDep,
    format: Format = None,
) -> Any:
    """Read conversion by score decile, and the current and previous model's AUC.

    The CSV contains the deciles only.
    """
    with engine.connect() as connection:
        report = scoring_quality(connection, period)
    if _wants_csv(request, format):
        return csv_response(DecileRow, report.deciles, "scoring-deciles.csv")
    return report


# Channel spend.


class SpendEntry(StrictCamelModel):
    """Money spent on a source channel, or on one UTM campaign of it."""

    channel: str = Field(
        min_length=1,
        max_length=200,
        description="A lead source channel (utm_source), as leads carry it.",
    )
    utm_campaign: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A UTM campaign of that channel; leave out for the whole channel.",
    )
    period_start: date = Field(description="First day, UTC, as YYYY-MM-DD.")
    period_end: date = Field(description="Last day, UTC, included, as YYYY-MM-DD.")
    amount: Decimal = Field(ge=0, max_digits=14, decimal_places=2)

    @field_validator("period_start", "period_end", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"invalid date {value!r}: write it as YYYY-MM-DD, e.g. 2026-02-01"
            ) from None

    @field_validator("period_end")
    @classmethod
    def _after_start(cls, value: date, info: ValidationInfo) -> date:
        start = info.data.get("period_start")
        if start is not None and value < start:
            raise ValueError(
                f"periodEnd {value} is before periodStart {start}: "
                "give the last day of the period"
            )
        return value


class SpendTable(StrictCamelModel):
    """All the channel spend; a PUT replaces it whole.

    The body of a GET may be put back as it is: its updatedAt and updatedBy
    are accepted and ignored.
    """

    currency: str | None = Field(
        pattern="^[A-Z]{3}$",
        description="ISO 4217 code of every amount, e.g. EUR; "
        "may be null only with no entries.",
    )
    entries: list[SpendEntry] = Field(
        max_length=MAX_SPEND_ENTRIES,
        description="Every entry; an empty list deletes all spend.",
    )
    updated_at: datetime | None = Field(None, description="Ignored.")
    updated_by: str | None = Field(None, description="Ignored.", max_length=200)

    @model_validator(mode="after")
    def _currency_of_entries(self) -> "SpendTable":
        if self.entries and self.currency is None:
            raise ValueError(
                "currency is null but there are entries: give the ISO 4217 "
                "code of their amounts, e.g. EUR"
            )
        return self

    @field_validator("currency", mode="before")
    @classmethod
    def _known_currency(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        code = value.strip().upper()
        if pycountry.currencies.get(alpha_3=code) is None:
            raise ValueError(
                f"unknown currency {value!r}: use an ISO 4217 code such as EUR, "
                "USD or GBP"
            )
        return code


class SpendTableOut(CamelModel):
    currency: str | None = Field(description="None until spend is entered.")
    entries: list[SpendEntry]
    updated_at: datetime | None
    updated_by: str | None


def _duplicates(entries: list[SpendEntry]) -> list[FieldError]:
    seen: dict[tuple[Any, ...], int] = {}
    errors = []
    for index, entry in enumerate(entries):
        key = (entry.channel, entry.utm_campaign, entry.period_start, entry.period_end)
        if key in seen:
            errors.append(
                FieldError(
                    path=f"entries[{index}]",
                    message=f"same channel, utmCampaign and period as "
                    f"entries[{seen[key]}]: add the amounts into one entry",
                    type="duplicate",
                )
            )
        else:
            seen[key] = index
    return errors


def _read_spend(connection: sa.Connection) -> SpendTableOut:
    rows = connection.execute(
        sa.select(SPEND).order_by(
            SPEND.c.channel, SPEND.c.utm_campaign, SPEND.c.period_start
        )
    ).all()
    return SpendTableOut(
        currency=rows[0].currency if rows else None,
        entries=[
            SpendEntry(
                channel=row.channel,
                utm_campaign=row.utm_campaign or None,
                period_start=row.period_start,
                period_end=row.period_end,
                amount=row.amount,
            )
            for row in rows
        ],
        updated_at=max((row.updated_at for row in rows), default=None),
        updated_by=rows[0].updated_by if rows else None,
    )


@router.get("/spend", response_model=SpendTableOut, responses=REPORT_RESPONSES)
def read_spend(
    request: Request, engine: EngineDep, _actor: MarketingDep, format: Format = None
) -> Any:
    """Read the channel spend that cost per lead and per customer divide."""
    with engine.connect() as connection:
        table = _read_spend(connection)
    if _wants_csv(request, format):
        return csv_response(SpendEntry, table.entries, "spend.csv")
    return table


@router.put(
    "/spend",
    response_model=SpendTableOut,
    responses=error_responses(401, 403, 422),
)
def replace_spend(
    body: SpendTable, engine: EngineDep, actor: MarketingDep
) -> SpendTableOut:
    """Replace the channel spend: every entry, in one currency."""
    errors = _duplicates(body.entries)
    if errors:
        raise validation_error(errors)
    now = utcnow()
    with engine.begin() as connection:
        # The audit entry keeps what is replaced, so a PUT by mistake (an
        # empty list deletes everything) can be undone from it.
        previous = _read_spend(connection)
        connection.execute(sa.delete(SPEND))
        if body.entries:
            connection.execute(
                sa.insert(SPEND),
                [
                    {
                        "channel": entry.channel,
                        "utm_campaign": entry.utm_campaign or "",
                        "period_start": entry.period_start,
                        "period_end": entry.period_end,
                        "amount": entry.amount,
                        "currency": body.currency,
                        "updated_at": now,
                        "updated_by": actor,
                    }
                    for entry in body.entries
                ],
            )
        connection.execute(
            sa.insert(AuditEntry.__table__),  # type: ignore[attr-defined]
            {
                "at": now,
                "actor": actor,
                "action": "analytics.spend_replaced",
                "entity_type": "channel_spend",
                "entity_id": "all",
                "detail": {
                    "entries": len(body.entries),
                    "currency": body.currency,
                    "previous": previous.model_dump(
                        mode="json", by_alias=True, include={"currency", "entries"}
                    ),
                },
            },
        )
        return _read_spend(connection)
