"""Scoring quality: conversion by score decile, and model ROC AUC old and new."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import Field

from nurture.analytics.sql import (
    DECILES,
    LEADS,
    MODELS,
    RangeOut,
    TimeRange,
    ratio,
)
from nurture.schemas import CamelModel


class DecileRow(CamelModel):
    """Leads with outcomes in one tenth of the score order; 10 is the top."""

    decile: int
    leads: int
    conversions: int
    conversion_rate: float | None
    min_score: int
    max_score: int
    lift: float | None = Field(description="conversionRate / the overall rate.")


class ModelQuality(CamelModel):
    version: int
    promoted_at: datetime | None
    held_out_roc_auc: float | None = Field(
        description="ROC AUC on the rows held out at training."
    )
    live_roc_auc: float | None = Field(
        description="ROC AUC of the stored conversion probability on the leads "
        "with outcomes that this model scored last."
    )
    live_leads: int


class ScoringQuality(CamelModel):
    range: RangeOut
    leads: int = Field(description="Leads captured in the range with an outcome.")
    conversions: int
    score_roc_auc: float | None = Field(
        description="ROC AUC of the stored 0-100 score against the outcomes."
    )
    current_model: ModelQuality | None
    previous_model: ModelQuality | None
    held_out_auc_change: float | None = Field(
        description="Current minus previous held-out ROC AUC."
    )
    deciles: list[DecileRow]


def labeled_leads(time_range: TimeRange) -> sa.Subquery:
    return (
        sa.select(
            LEADS.c.id,
            LEADS.c.score,
            LEADS.c.model_version,
            LEADS.c.conversion_probability,
            sa.case((LEADS.c.outcome == "converted", 1), else_=0).label("converted"),
        )
        .where(
            LEADS.c.outcome.in_(("converted", "lost")),
            *time_range.where(LEADS.c.created_at),
        )
        .subquery("labeled")
    )


def decile_query(labeled: sa.Subquery) -> sa.Select[Any]:
    ranked = sa.select(
        sa.func.ntile(DECILES)
        .over(order_by=[labeled.c.score, labeled.c.id])
        .label("decile"),
        labeled.c.score,
        labeled.c.converted,
    ).subquery("ranked")
    return (
        sa.select(
            ranked.c.decile,
            sa.func.count().label("leads"),
            sa.func.sum(ranked.c.converted).label("conversions"),
            sa.func.min(ranked.c.score).label("min_score"),
            sa.func.max(ranked.c.score).label("max_score"),
        )
        .group_by(ranked.c.decile)
        .order_by(ranked.c.decile)
    )


def auc_query(
    labeled: sa.Subquery,
    value: sa.ColumnElement[Any],
    partition: Sequence[sa.ColumnElement[Any]] = (),
) -> sa.Select[Any]:
    """Select the rank sums that give ROC AUC by the Mann-Whitney U statistic.

    Tied values share their average rank, so ties count one half.
    """
    ranked = (
        sa.select(
            *partition,
            labeled.c.converted,
            (
                sa.func.rank().over(partition_by=list(partition), order_by=value)
                + (
                    sa.func.count().over(partition_by=[*partition, value])
                    - sa.literal(1.0, sa.Float())
                )
                / 2
            ).label("position"),
        )
        .where(value.is_not(None))
        .subquery("ranked")
    )
    keys = [ranked.c[column.name] for column in partition]
    return sa.select(
        *keys,
        sa.func.count().label("rows"),
        sa.func.sum(ranked.c.converted).label("positives"),
        sa.func.sum(
            sa.case((ranked.c.converted == 1, ranked.c.position), else_=0)
        ).label("rank_sum"),
    ).group_by(*keys)


def roc_auc(rows: int, positives: int, rank_sum: float) -> float | None:
    """Return ROC AUC from the positives' rank sum; None without both classes."""
    negatives = rows - positives
    if positives <= 0 or negatives <= 0:
        return None
    return (float(rank_sum) - positives * (positives + 1) / 2) / (positives * negatives)


def _models(connection: sa.Connection) -> tuple[Any, Any]:
    """Return the promoted model's row and the one promoted before it."""
    current = connection.execute(
        sa.select(MODELS).where(MODELS.c.promoted == sa.true())
    ).first()
    query = (
        sa.select(MODELS)
        .where(MODELS.c.promoted_at.is_not(None), MODELS.c.status == "ready")
        .order_by(MODELS.c.promoted_at.desc())
        .limit(1)
    )
    if current is not None:
        query = query.where(MODELS.c.version != current.version)
    return current, connection.execute(query).first()


def _model_quality(row: Any, live: dict[int, tuple[float | None, int]]) -> ModelQuality:
    held_out = (row.metrics or {}).get("rocAuc")
    live_auc, live_leads = live.get(row.version, (None, 0))
    return ModelQuality(
        version=row.version,
        promoted_at=row.promoted_at,
        held_out_roc_auc=float(held_out) if held_out is not None else None,
        live_roc_auc=live_auc,
        live_leads=live_leads,
    )


def scoring_quality(connection: sa.Connection, time_range: TimeRange) -> ScoringQuality:
    """Compare conversion by score decile, and the current and previous model."""
    labeled = labeled_leads(time_range)
    deciles = connection.execute(decile_query(labeled)).all()
    leads = sum(row.leads for row in deciles)
    conversions = sum(int(row.conversions) for row in deciles)
    overall = ratio(conversions, leads)
    score = connection.execute(auc_query(labeled, labeled.c.score)).one()
    live = {
        row.model_version: (
            roc_auc(row.rows, int(row.positives), row.rank_sum),
            int(row.rows),
        )
        for row in connection.execute(
            auc_query(
                labeled, labeled.c.conversion_probability, [labeled.c.model_version]
            )
        )
        if row.model_version is not None
    }
    current, previous = _models(connection)
    current_quality = _model_quality(current, live) if current else None
    previous_quality = _model_quality(previous, live) if previous else None
    change = None
    if (
        current_quality is not None
        and previous_quality is not None
        and current_quality.held_out_roc_auc is not None
        and previous_quality.held_out_roc_auc is not None
    ):
        change = current_quality.held_out_roc_auc - previous_quality.held_out_roc_auc
    return ScoringQuality(
        range=RangeOut.of(time_range),
        leads=leads,
        conversions=conversions,
        score_roc_auc=roc_auc(
            score.rows, int(score.positives or 0), score.rank_sum or 0
        )
        if score.rows
        else None,
        current_model=current_quality,
        previous_model=previous_quality,
        held_out_auc_change=change,
        deciles=[
            DecileRow(
                decile=row.decile,
                leads=row.leads,
                conversions=int(row.conversions),
                conversion_rate=ratio(int(row.conversions), row.leads),
                min_score=row.min_score,
                max_score=row.max_score,
                lift=ratio(ratio(int(row.conversions), row.leads), overall),
            )
            for row in deciles
        ],
    )
