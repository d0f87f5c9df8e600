"""A/B results of split steps, and the automatic winner rule."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import Field
from scipy.stats import norm

from nurture.analytics.sql import (
    AB_METHOD,
    ASSIGNMENTS,
    CAMPAIGNS,
    DECISIONS,
    DEFAULT_CONFIDENCE,
    DEFAULT_SIGNIFICANCE,
    VERSIONS,
    TimeRange,
    campaign_names,
    converted_enrollments,
    count_if,
    ratio,
)
from nurture.campaigns import CampaignSpec, SplitStep, WinnerRule
from nurture.schemas import CamelModel


def wilson_interval(
    successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float] | None:
    """Return the Wilson score interval of a proportion, or None without trials."""
    if trials <= 0:
        return None
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials**2))
    half = spread / denominator
    # With no successes (or no failures) the bound is exactly 0 (or 1);
    # floating point would give a residue such as 7e-18.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def two_proportion_z_test(
    control_successes: int, control_trials: int, successes: int, trials: int
) -> tuple[float, float] | None:
    """Return z and the two-sided p-value of a variant's rate against control's.

    Pooled variance. None when a group is empty, or when no lead or every lead
    converted: the pooled variance is then zero and there is nothing to test.
    """
    if control_trials <= 0 or trials <= 0:
        return None
    pooled = (control_successes + successes) / (control_trials + trials)
    variance = pooled * (1 - pooled) * (1 / control_trials + 1 / trials)
    if variance <= 0:
        return None
    difference = successes / trials - control_successes / control_trials
    z = difference / math.sqrt(variance)
    return z, float(2 * norm.sf(abs(z)))


class VariantResult(CamelModel):
    """Conversion of one variant of a split, tested against the control."""

    variant: str
    control: bool
    assigned: int = Field(description="Enrollments that drew this variant at random.")
    converted: int = Field(description="Of those, enrollments that reached a goal.")
    conversion_rate: float | None
    ci_low: float | None = Field(description="Wilson interval, lower bound.")
    ci_high: float | None = Field(description="Wilson interval, upper bound.")
    difference: float | None = Field(description="conversionRate minus control's.")
    z_score: float | None
    p_value: float | None = Field(description="Two-sided, against control.")
    significant: bool | None = Field(
        description="pValue below significance / (number of variants - 1)."
    )
    assigned_by_winner: int = Field(
        description="Enrollments a winner decision sent here; not in the test."
    )
    converted_by_winner: int


class DecisionOut(CamelModel):
    """A stored winner decision, with the figures it was made on."""

    winner: str
    control: str
    campaign_version: int
    decided_at: datetime
    decided_by: str = Field(
        description='"rule" when the winner rule fired, else who declared it.'
    )
    rule: dict[str, Any]
    figures: dict[str, Any]
    withdrawn_at: datetime | None = Field(
        description="Set once withdrawn: the split draws at random again, and "
        "its rule does not fire again."
    )
    withdrawn_by: str | None


class SplitResult(CamelModel):
    """The A/B result of one split step."""

    campaign_id: str
    campaign_name: str | None
    step: str
    control: str
    confidence: float
    significance: float = Field(description="The rule's, else 0.05.")
    winner_rule: WinnerRule | None
    decision: DecisionOut | None
    variants: list[VariantResult]


def assignment_counts_query(
    time_range: TimeRange, campaign_ids: Sequence[str] | None = None
) -> sa.Select[Any]:
    """Count drawn and decided assignments, and their conversions, per variant."""
    assignments = ASSIGNMENTS
    converted_ids = converted_enrollments()
    drawn = assignments.c.by_winner == sa.false()
    decided = assignments.c.by_winner == sa.true()
    converted = converted_ids.c.id.is_not(None)
    query = (
        sa.select(
            assignments.c.campaign_id,
            assignments.c.step_id,
            assignments.c.variant,
            count_if(drawn).label("assigned"),
            count_if(sa.and_(drawn, converted)).label("converted"),
            count_if(decided).label("assigned_by_winner"),
            count_if(sa.and_(decided, converted)).label("converted_by_winner"),
        )
        .select_from(
            assignments.outerjoin(
                converted_ids, converted_ids.c.id == assignments.c.enrollment_id
            )
        )
        .where(*time_range.where(assignments.c.assigned_at))
        .group_by(
            assignments.c.campaign_id, assignments.c.step_id, assignments.c.variant
        )
    )
    if campaign_ids is not None:
        query = query.where(assignments.c.campaign_id.in_(campaign_ids))
    return query


Counts = dict[tuple[str, str], dict[str, Any]]


def assignment_counts(
    connection: sa.Connection,
    time_range: TimeRange,
    campaign_ids: Sequence[str] | None = None,
) -> Counts:
    """Return {(campaign id, step id): {variant: row}}."""
    counts: Counts = {}
    query = assignment_counts_query(time_range, campaign_ids)
    for row in connection.execute(query):
        counts.setdefault((row.campaign_id, row.step_id), {})[row.variant] = row
    return counts


def variant_results(
    step: SplitStep,
    counts: dict[str, Any],
    confidence: float,
    significance: float,
    defined_only: bool = False,
) -> list[VariantResult]:
    """Compute each variant's rate, interval and test, control first.

    Variants that have counts but are no longer defined come after the
    defined ones, unless `defined_only`.
    """
    names = [variant.name for variant in step.variants]
    if not defined_only:
        names += sorted(set(counts) - set(names))
    control = counts.get(names[0])
    control_converted = control.converted if control else 0
    control_assigned = control.assigned if control else 0
    per_test = significance / max(1, len(names) - 1)
    results = []
    for index, name in enumerate(names):
        row = counts.get(name)
        assigned, converted = (row.assigned, row.converted) if row else (0, 0)
        interval = wilson_interval(converted, assigned, confidence)
        test = None
        if index > 0:
            test = two_proportion_z_test(
                control_converted, control_assigned, converted, assigned
            )
        rate = ratio(converted, assigned)
        control_rate = ratio(control_converted, control_assigned)
        results.append(
            VariantResult(
                variant=name,
                control=index == 0,
                assigned=assigned,
                converted=converted,
                conversion_rate=rate,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                difference=(
                    rate - control_rate
                    if index > 0 and rate is not None and control_rate is not None
                    else None
                ),
                z_score=test[0] if test else None,
                p_value=test[1] if test else None,
                significant=test[1] < per_test if test else None,
                assigned_by_winner=row.assigned_by_winner if row else 0,
                converted_by_winner=row.converted_by_winner if row else 0,
            )
        )
    return results


def decision_figures(
    variants: list[VariantResult], significance: float
) -> dict[str, Any]:
    """The figures a decision stores: the method and each variant's result."""
    return {
        "method": AB_METHOD,
        "significancePerTest": significance / max(1, len(variants) - 1),
        "variants": [v.model_dump(mode="json", by_alias=True) for v in variants],
    }


def judge_split(rule: WinnerRule, variants: list[VariantResult]) -> str | None:
    """Return the winning variant once the rule fires, else None.

    Every variant needs `minLeadsPerVariant` drawn leads. Then the challenger
    with the highest rate among those significantly better than control wins,
    or control wins when every challenger is significantly worse. Each test
    uses significance / (number of challengers).
    """
    if len(variants) < 2:
        return None
    if any(variant.assigned < rule.min_leads_per_variant for variant in variants):
        return None
    control, challengers = variants[0], variants[1:]
    per_test = rule.significance / len(challengers)

    def significant(variant: VariantResult) -> bool:
        return variant.p_value is not None and variant.p_value < per_test

    better = [v for v in challengers if significant(v) and (v.difference or 0) > 0]
    if better:
        return max(better, key=lambda variant: variant.conversion_rate or 0).variant
    if all(significant(v) and (v.difference or 0) < 0 for v in challengers):
        return control.variant
    return None


def _split_steps(
    connection: sa.Connection, campaign_id: str | None
) -> dict[tuple[str, str], SplitStep]:
    """Find every split step, as its newest campaign version defines it.

    Current versions come first, so a split keeps its current variants and
    rule; a split that only older versions have keeps its last definition.
    """
    query = sa.select(
        VERSIONS.c.campaign_id, VERSIONS.c.version, VERSIONS.c.definition
    ).order_by(VERSIONS.c.campaign_id, VERSIONS.c.version.desc())
    if campaign_id is not None:
        query = query.where(VERSIONS.c.campaign_id == campaign_id)
    splits: dict[tuple[str, str], SplitStep] = {}
    for row in connection.execute(query):
        spec = CampaignSpec.model_validate(row.definition)
        for step_id, step in zip(spec.step_ids(), spec.sequence, strict=True):
            if isinstance(step, SplitStep):
                splits.setdefault((row.campaign_id, step_id), step)
    return splits


def decision_out(row: Any) -> DecisionOut:
    return DecisionOut(
        winner=row.winner,
        control=row.control,
        campaign_version=row.campaign_version,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        rule=row.rule,
        figures=row.figures,
        withdrawn_at=row.withdrawn_at,
        withdrawn_by=row.withdrawn_by,
    )


def split_results(
    connection: sa.Connection,
    time_range: TimeRange,
    campaign_id: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[SplitResult]:
    """Return the A/B result of every split, with its winner decision if any."""
    ids = [campaign_id] if campaign_id is not None else None
    counts = assignment_counts(connection, time_range, ids)
    splits = _split_steps(connection, campaign_id)
    decisions_query = sa.select(DECISIONS)
    if campaign_id is not None:
        decisions_query = decisions_query.where(DECISIONS.c.campaign_id == campaign_id)
    decisions = {
        (row.campaign_id, row.step_id): row
        for row in connection.execute(decisions_query)
    }
    names = campaign_names(connection, (campaign for campaign, _ in splits))
    results = []
    for (campaign, step_id), step in sorted(splits.items()):
        rule = step.winner
        significance = rule.significance if rule else DEFAULT_SIGNIFICANCE
        decision = decisions.get((campaign, step_id))
        results.append(
            SplitResult(
                campaign_id=campaign,
                campaign_name=names.get(campaign),
                step=step_id,
                control=step.variants[0].name,
                confidence=confidence,
                significance=significance,
                winner_rule=rule,
                decision=decision_out(decision) if decision else None,
                variants=variant_results(
                    step, counts.get((campaign, step_id), {}), confidence, significance
                ),
            )
        )
    return results


@dataclass(frozen=True)
class PendingSplit:
    campaign_id: str
    campaign_version: int
    step_id: str
    step: SplitStep
    rule: WinnerRule


def pending_splits(connection: sa.Connection) -> list[PendingSplit]:
    """Find the undecided splits with a winner rule in active campaigns.

    A withdrawn decision counts as decided: its rule does not fire again.
    """
    rows = connection.execute(
        sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.current_version, VERSIONS.c.definition)
        .join(
            VERSIONS,
            sa.and_(
                VERSIONS.c.campaign_id == CAMPAIGNS.c.id,
                VERSIONS.c.version == CAMPAIGNS.c.current_version,
            ),
        )
        .where(CAMPAIGNS.c.status == "active")
        .order_by(CAMPAIGNS.c.id)
    )
    decided = {
        (row.campaign_id, row.step_id)
        for row in connection.execute(
            sa.select(DECISIONS.c.campaign_id, DECISIONS.c.step_id)
        )
    }
    pending = []
    for row in rows:
        spec = CampaignSpec.model_validate(row.definition)
        for step_id, step in zip(spec.step_ids(), spec.sequence, strict=True):
            if not isinstance(step, SplitStep) or step.winner is None:
                continue
            if (row.id, step_id) not in decided:
                pending.append(
                    PendingSplit(
                        row.id, row.current_version, step_id, step, step.winner
                    )
                )
    return pending


def decide_winners(connection: sa.Connection, now: datetime) -> list[dict[str, Any]]:
    """Check every pending winner rule and insert a decision for each that fires.

    Returns the decisions inserted. A decision another process inserted
    first for the same split is left alone.
    """
    pending = pending_splits(connection)
    if not pending:
        return []
    counts = assignment_counts(
        connection, TimeRange(), sorted({split.campaign_id for split in pending})
    )
    decisions = []
    for split in pending:
        variants = variant_results(
            split.step,
            counts.get((split.campaign_id, split.step_id), {}),
            DEFAULT_CONFIDENCE,
            split.rule.significance,
            defined_only=True,
        )
        winner = judge_split(split.rule, variants)
        if winner is None:
            continue
        values = {
            "campaign_id": split.campaign_id,
            "campaign_version": split.campaign_version,
            "step_id": split.step_id,
            "winner": winner,
            "control": variants[0].variant,
            "decided_at": now,
            "decided_by": "rule",
            "rule": split.rule.model_dump(mode="json", by_alias=True),
            "figures": decision_figures(variants, split.rule.significance),
        }
        try:
            with connection.begin_nested():
                connection.execute(sa.insert(DECISIONS).values(**values))
        except sa.exc.IntegrityError:
            continue
        decisions.append(values)
    return decisions
