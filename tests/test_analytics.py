"""Analytics: funnel, A/B results and winner rule, acquisition, attribution, scoring.

The split campaign and the winner rule run on the real stack: API, workers,
Temporal and provider webhooks. The exact arithmetic is checked on rows
inserted directly. The expected values are worked out by hand, or come from
textbook formulas written out here, apart from the product's code.
"""

import copy
import csv
import io
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, select
from temporalio.client import ScheduleIntervalSpec, WorkflowHistory
from temporalio.worker import Replayer

from activities.journeys import SplitWinnerCheckInput
from nurture.analytics.splits import (
    VariantResult,
    judge_split,
    pending_splits,
    wilson_interval,
)
from nurture.campaigns import WinnerRule
from nurture.codec import data_converter
from nurture.db import session_scope
from nurture.models import (
    AuditEntry,
    Campaign,
    CampaignVersion,
    EngagementEvent,
    Enrollment,
    Lead,
    LeadOutcome,
    Message,
    ScoringModel,
    SplitAssignment,
    SplitDecision,
)
from nurture.temporal import nurture_workflow_id
from tests.conftest import API_KEY, PAYLOAD_ENCRYPTION_KEYS, Stack, example
from tests.test_journeys import WELCOME, campaign, enrollment, state
from worker import ensure_split_winner_schedule, split_winner_schedule_id
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow, SplitWinnerWorkflow

ANALYTICS = "/api/v1/analytics"
NO_KEY = {"Authorization": ""}
# The 97.5th percentile of the standard normal distribution, from tables.
Z_95 = 1.959963984540054
SPLIT = {
    "id": "ab",
    "type": "split",
    "variants": [
        {"name": "A", "weight": 1, "next": "mail-a"},
        {"name": "B", "weight": 1, "next": "mail-b"},
    ],
}
SPLIT_SEQUENCE = [
    SPLIT,
    {"id": "mail-a", **WELCOME, "next": "hold"},
    {
        "id": "mail-b",
        "channel": "email",
        "template": "value_proposition",
        "next": "hold",
    },
    {"id": "hold", "type": "wait", "duration": "30 days"},
]
GOALS = [{"id": "bought", "event": "converted"}]


@pytest.fixture
def api(temporal_down: httpx.AsyncClient) -> httpx.AsyncClient:
    """Return an admin client of an API whose Temporal is down: reports need none."""
    temporal_down.headers["Authorization"] = f"Bearer {API_KEY}"
    return temporal_down


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Textbook formulas, written out here so the product's code is not its own check.


def textbook_z_test(
    control_x: int, control_n: int, x: int, n: int
) -> tuple[float, float] | None:
    """Two-proportion z-test with pooled variance; two-sided p = erfc(|z| / sqrt 2)."""
    if control_n == 0 or n == 0:
        return None
    pooled = (control_x + x) / (control_n + n)
    if pooled in (0, 1):
        return None
    z = (x / n - control_x / control_n) / math.sqrt(
        pooled * (1 - pooled) * (1 / control_n + 1 / n)
    )
    return z, math.erfc(abs(z) / math.sqrt(2))


def textbook_wilson(x: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = x / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def pairwise_auc(scores: list[float], labels: list[int]) -> float:
    """ROC AUC by its definition: P(positive scores above negative), ties 1/2."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    negatives = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = 0.0
    for positive in positives:
        for negative in negatives:
            if positive > negative:
                wins += 1.0
            elif positive == negative:
                wins += 0.5
    return wins / (len(positives) * len(negatives))


# Rows inserted directly.


def insert(engine: sa.Engine, model: Any, rows: list[dict[str, Any]]) -> None:
    """Insert rows in one statement; a key some rows lack is NULL in those."""
    keys = sorted({key for row in rows for key in row})
    with engine.begin() as connection:
        connection.execute(
            sa.insert(model.__table__),
            [{key: row.get(key) for key in keys} for row in rows],
        )


def add_campaign(
    engine: sa.Engine, campaign_id: str, sequence: list[dict[str, Any]], **extra: Any
) -> None:
    definition = {
        "name": f"Campaign {campaign_id}",
        "trigger": {"type": "manual"},
        "goals": GOALS,
        "sequence": sequence,
        **extra,
    }
    with session_scope(engine) as session:
        session.add(Campaign(id=campaign_id, name=definition["name"]))
        session.flush()
        session.add(
            CampaignVersion(campaign_id=campaign_id, version=1, definition=definition)
        )


def add_leads(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    defaults = {"stage": "new", "status": "active", "score": 0}
    insert(
        engine,
        Lead,
        [
            {
                "id": row["id"],
                "created_at": row.get("created_at", at("2026-01-01T00:00:00")),
                "updated_at": at("2026-01-01T00:00:00"),
                "email_normalized": f"{row['id']}@example.com",
                **defaults,
                **row,
            }
            for row in rows
        ],
    )


def add_enrollments(
    engine: sa.Engine, campaign_id: str, rows: list[tuple[str, str, datetime, str]]
) -> None:
    """Insert (enrollment id, lead id, enrolled at, status) rows, leads too."""
    add_leads(engine, [{"id": lead_id} for _, lead_id, _, _ in rows])
    insert(
        engine,
        Enrollment,
        [
            {
                "id": enrollment_id,
                "campaign_id": campaign_id,
                "campaign_version": 1,
                "lead_id": lead_id,
                "workflow_id": f"nurture-{campaign_id}-{lead_id}",
                "status": status,
                "enrolled_at": enrolled_at,
                "goal": "bought" if status == "converted" else None,
            }
            for enrollment_id, lead_id, enrolled_at, status in rows
        ],
    )


def message_row(
    message_id: str,
    enrollment_id: str | None,
    lead_id: str,
    campaign_id: str | None,
    step: int,
    status: str,
    variant: str | None = None,
    sent_at: datetime | None = None,
    channel: str = "email",
) -> dict[str, Any]:
    """A message as the outbox stores it, timestamps following its status."""
    sent = sent_at or (
        at("2026-01-15T00:00:00") if status not in ("queued", "failed") else None
    )
    reached = {"delivered": 1, "opened": 2, "clicked": 3}.get(status, 0)
    return {
        "id": message_id,
        "lead_id": lead_id,
        "enrollment_id": enrollment_id,
        "campaign_id": campaign_id,
        "campaign_version": 1,
        "step": step,
        "channel": channel,
        "template": "welcome_email",
        "to_address": "x@example.com",
        "body": "",
        "status": status,
        "variant": variant,
        "provider": "sendgrid",
        "sent_at": sent,
        "delivered_at": sent if reached >= 1 else None,
        "opened_at": sent if reached >= 2 else None,
        "clicked_at": sent if reached >= 3 else None,
    }


async def get_json(api: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await api.get(f"{ANALYTICS}{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def counts(row: dict[str, Any]) -> dict[str, Any]:
    names = (
        "enrolled",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "replied",
        "goalReached",
        "unsubscribed",
        "bounced",
    )
    return {name: row[name] for name in names}


def funnel_counts(
    enrolled: int,
    sent: int,
    delivered: int,
    opened: int,
    clicked: int,
    replied: int,
    goal: int,
    unsubscribed: int,
    bounced: int,
) -> dict[str, int]:
    return {
        "enrolled": enrolled,
        "sent": sent,
        "delivered": delivered,
        "opened": opened,
        "clicked": clicked,
        "replied": replied,
        "goalReached": goal,
        "unsubscribed": unsubscribed,
        "bounced": bounced,
    }


# The funnel, on rows inserted by hand.

FUNNEL_SEQUENCE = [
    {"id": "hello", "channel": "email", "template": "welcome_email"},
    {
        "id": "ab",
        "type": "split",
        "variants": [
            {"name": "A", "weight": 1, "next": "mail-a"},
            {"name": "B", "weight": 1, "next": "mail-b"},
        ],
    },
    {
        "id": "mail-a",
        "channel": "email",
        "template": "value_proposition",
        "next": "done",
    },
    {"id": "mail-b", "channel": "sms", "template": "welcome_sms"},
    {"id": "done", "type": "exit"},
]


def funnel_rows(engine: sa.Engine) -> None:
    """Six enrollments: four in January (one on Jan 31), two in February."""
    add_campaign(engine, "funnel", FUNNEL_SEQUENCE)
    add_enrollments(
        engine,
        "funnel",
        [
            ("e1", "l1", at("2026-01-10T09:00:00"), "converted"),
            ("e2", "l2", at("2026-01-11T09:00:00"), "completed"),
            ("e3", "l3", at("2026-01-12T09:00:00"), "completed"),
            ("e4", "l4", at("2026-01-31T12:00:00"), "converted"),
            ("e5", "l5", at("2026-02-10T09:00:00"), "active"),
            ("e6", "l6", at("2026-02-11T09:00:00"), "converted"),
        ],
    )
    insert(
        engine,
        Message,
        [
            message_row("m1", "e1", "l1", "funnel", 1, "clicked"),
            message_row("m2", "e1", "l1", "funnel", 3, "opened", "A"),
            message_row("m3", "e2", "l2", "funnel", 1, "delivered"),
            message_row("m4", "e2", "l2", "funnel", 3, "bounced", "A"),
            message_row("m5", "e3", "l3", "funnel", 1, "opened"),
            message_row("m6", "e3", "l3", "funnel", 4, "sent", "B", channel="sms"),
            message_row("m7", "e4", "l4", "funnel", 1, "failed"),
            message_row("m8", "e4", "l4", "funnel", 4, "delivered", "B", channel="sms"),
            message_row("m9", "e5", "l5", "funnel", 1, "queued"),
            message_row("m10", "e6", "l6", "funnel", 1, "delivered"),
            message_row("m11", "e6", "l6", "funnel", 3, "clicked", "A"),
        ],
    )
    insert(
        engine,
        EngagementEvent,
        [
            {
                "id": "ev-unsub",
                "lead_id": "l3",
                "message_id": "m5",
                "type": "unsubscribe",
                "source": "sendgrid",
            },
            {
                "id": "ev-reply",
                "lead_id": "l3",
                "message_id": "m6",
                "type": "replied",
                "source": "twilio",
            },
            # A second reply to the same message counts once.
            {
                "id": "ev-reply-2",
                "lead_id": "l3",
                "message_id": "m6",
                "type": "replied",
                "source": "twilio",
            },
            {
                "id": "ev-open",
                "lead_id": "l1",
                "message_id": "m1",
                "type": "open",
                "source": "sendgrid",
            },
        ],
    )


def by_step(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {(row["level"], row["step"], row["variant"]): row for row in rows}


async def test_funnel_counts_match_hand_totals(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    funnel_rows(engine)

    rows = by_step((await get_json(api, "/funnel"))["rows"])

    version = rows[("version", None, None)]
    assert counts(version) == funnel_counts(6, 9, 7, 4, 2, 1, 3, 1, 1)
    assert version["campaignName"] == "Campaign funnel"
    assert version["deliveryRate"] == pytest.approx(7 / 9)
    assert version["openRate"] == pytest.approx(4 / 7)
    assert version["clickRate"] == pytest.approx(2 / 7)
    assert version["clickToOpenRate"] == pytest.approx(2 / 4)
    assert version["replyRate"] == pytest.approx(1 / 7)
    assert version["goalRate"] == pytest.approx(3 / 6)
    assert version["unsubscribeRate"] == pytest.approx(1 / 7)
    assert version["bounceRate"] == pytest.approx(1 / 9)
    assert counts(rows[("step", "hello", None)]) == funnel_counts(
        6, 4, 4, 2, 1, 0, 3, 1, 0
    )
    assert counts(rows[("step", "mail-a", "A")]) == funnel_counts(
        3, 3, 2, 2, 1, 0, 2, 0, 1
    )
    assert counts(rows[("step", "mail-b", "B")]) == funnel_counts(
        2, 2, 1, 0, 0, 1, 1, 0, 0
    )
    assert rows[("step", "mail-b", "B")]["stepNumber"] == 4
    assert rows[("step", "mail-b", "B")]["channel"] == "sms"
    assert len(rows) == 4


async def test_funnel_time_range_selects_cohort(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    funnel_rows(engine)

    # A bare date `to` takes in the whole of January 31.
    january = by_step(
        (await get_json(api, "/funnel", **{"from": "2026-01-10", "to": "2026-01-31"}))[
            "rows"
        ]
    )
    # An instant `to` is excluded, so the Jan 31 enrollment drops out.
    before_31 = by_step(
        (
            await get_json(
                api,
                "/funnel",
                **{"from": "2026-01-10T00:00:00Z", "to": "2026-01-31T00:00:00+00:00"},
            )
        )["rows"]
    )
    february = await get_json(api, "/funnel", **{"from": "2026-03-01"})

    assert counts(january[("version", None, None)]) == funnel_counts(
        4, 7, 5, 3, 1, 1, 2, 1, 1
    )
    assert counts(january[("step", "hello", None)]) == funnel_counts(
        4, 3, 3, 2, 1, 0, 2, 1, 0
    )
    assert counts(january[("step", "mail-a", "A")]) == funnel_counts(
        2, 2, 1, 1, 0, 0, 1, 0, 1
    )
    assert counts(january[("step", "mail-b", "B")]) == funnel_counts(
        2, 2, 1, 0, 0, 1, 1, 0, 0
    )
    assert before_31[("version", None, None)]["enrolled"] == 3
    assert counts(before_31[("step", "mail-b", "B")]) == funnel_counts(
        1, 1, 0, 0, 0, 1, 0, 0, 0
    )
    assert february["rows"] == []
    assert february["range"]["from"].startswith("2026-03-01T00:00:00")


async def test_funnel_csv_matches_json(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    funnel_rows(engine)
    report = await get_json(api, "/funnel")

    by_query = await api.get(f"{ANALYTICS}/funnel", params={"format": "csv"})
    by_header = await api.get(f"{ANALYTICS}/funnel", headers={"Accept": "text/csv"})

    assert by_query.status_code == 200
    assert by_query.headers["content-type"].startswith("text/csv")
    assert "funnel.csv" in by_query.headers["content-disposition"]
    assert by_header.text == by_query.text
    parsed = list(csv.DictReader(io.StringIO(by_query.text)))
    assert len(parsed) == len(report["rows"])
    for line, row in zip(parsed, report["rows"], strict=True):
        assert line["level"] == row["level"]
        assert line["step"] == (row["step"] or "")
        assert int(line["sent"]) == row["sent"]
        assert int(line["goalReached"]) == row["goalReached"]
        if row["openRate"] is None:
            assert line["openRate"] == ""
        else:
            assert float(line["openRate"]) == pytest.approx(row["openRate"])


# A/B results and the winner rule, on rows inserted by hand.


def add_assignments(
    engine: sa.Engine,
    campaign_id: str,
    variant: str,
    count: int,
    converted: int,
    assigned_at: datetime,
    by_winner: bool = False,
) -> None:
    """Insert `count` enrollments at the split, the first `converted` converted."""
    tag = uuid.uuid4().hex[:8]
    rows = [
        (
            f"e-{tag}-{i}",
            f"l-{tag}-{i}",
            assigned_at,
            "converted" if i < converted else "completed",
        )
        for i in range(count)
    ]
    add_enrollments(engine, campaign_id, rows)
    insert(
        engine,
        SplitAssignment,
        [
            {
                "enrollment_id": enrollment_id,
                "campaign_id": campaign_id,
                "campaign_version": 1,
                "step_id": "ab",
                "variant": variant,
                "by_winner": by_winner,
                "assigned_at": assigned_at,
            }
            for enrollment_id, _, _, _ in rows
        ],
    )


def ab_rows(engine: sa.Engine) -> None:
    add_campaign(engine, "ab-test", [SPLIT, *SPLIT_SEQUENCE[1:]])
    add_assignments(engine, "ab-test", "A", 40, 3, at("2026-01-05T00:00:00"))
    add_assignments(engine, "ab-test", "B", 40, 20, at("2026-01-06T00:00:00"))
    add_assignments(engine, "ab-test", "A", 10, 5, at("2026-03-05T00:00:00"))
    add_assignments(engine, "ab-test", "B", 5, 2, at("2026-03-06T00:00:00"), True)


async def test_ab_matches_textbook_formulas(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    ab_rows(engine)

    january = await get_json(
        api,
        "/ab",
        campaignId="ab-test",
        **{"from": "2026-01-01", "to": "2026-01-31"},
    )
    everything = await get_json(api, "/ab", campaignId="ab-test")

    assert "z-test" in january["method"]
    assert "Wilson" in january["method"]
    (split,) = january["splits"]
    assert split["step"] == "ab"
    assert split["control"] == "A"
    assert split["decision"] is None
    control, challenger = split["variants"]
    assert (control["variant"], control["assigned"], control["converted"]) == (
        "A",
        40,
        3,
    )
    assert (challenger["assigned"], challenger["converted"]) == (40, 20)
    assert challenger["assignedByWinner"] == 0
    # Worked by hand: pooled p = 23/80, se = sqrt(p(1-p)(2/40)) = 0.101203,
    # z = (0.5 - 0.075) / se = 4.1995.
    assert challenger["zScore"] == pytest.approx(4.1995, abs=1e-4)
    z, p = textbook_z_test(3, 40, 20, 40) or (0.0, 1.0)
    assert challenger["zScore"] == pytest.approx(z, rel=1e-9)
    assert challenger["pValue"] == pytest.approx(p, rel=1e-6)
    assert challenger["significant"] is True
    assert challenger["difference"] == pytest.approx(0.425)
    assert control["zScore"] is None
    for variant, (x, n) in ((control, (3, 40)), (challenger, (20, 40))):
        low, high = textbook_wilson(x, n)
        assert variant["ciLow"] == pytest.approx(low, rel=1e-9)
        assert variant["ciHigh"] == pytest.approx(high, rel=1e-9)
    all_control, all_challenger = everything["splits"][0]["variants"]
    assert (all_control["assigned"], all_control["converted"]) == (50, 8)
    # Decided assignments are shown apart and left out of the test.
    assert (all_challenger["assigned"], all_challenger["converted"]) == (40, 20)
    assert all_challenger["assignedByWinner"] == 5
    assert all_challenger["convertedByWinner"] == 2
    z_all, _ = textbook_z_test(8, 50, 20, 40) or (0.0, 1.0)
    assert all_challenger["zScore"] == pytest.approx(z_all, rel=1e-9)


async def test_ab_confidence_changes_interval(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    ab_rows(engine)

    report = await get_json(api, "/ab", confidence=0.9, campaignId="ab-test")

    control = report["splits"][0]["variants"][0]
    low, high = textbook_wilson(8, 50, z=1.6448536269514722)
    assert control["ciLow"] == pytest.approx(low, rel=1e-9)
    assert control["ciHigh"] == pytest.approx(high, rel=1e-9)
    assert report["splits"][0]["confidence"] == 0.9


@pytest.mark.parametrize(("successes", "trials"), [(0, 7), (0, 40), (40, 40), (7, 7)])
def test_wilson_bounds_exact_at_ends(successes: int, trials: int) -> None:
    interval = wilson_interval(successes, trials)

    assert interval is not None
    low, high = interval
    if successes == 0:
        assert low == 0.0
    if successes == trials:
        assert high == 1.0
    assert (low, high) == pytest.approx(textbook_wilson(successes, trials), abs=1e-12)


def variant(name: str, assigned: int, converted: int, **test: Any) -> VariantResult:
    return VariantResult(
        variant=name,
        control=name == "A",
        assigned=assigned,
        converted=converted,
        conversion_rate=converted / assigned,
        ci_low=None,
        ci_high=None,
        difference=test.get("difference"),
        z_score=None,
        p_value=test.get("p_value"),
        significant=None,
        assigned_by_winner=0,
        converted_by_winner=0,
    )


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        # Too few leads in B, however clear the difference.
        (
            [variant("A", 50, 5), variant("B", 29, 20, difference=0.5, p_value=1e-9)],
            None,
        ),
        (
            [variant("A", 50, 5), variant("B", 50, 25, difference=0.4, p_value=1e-6)],
            "B",
        ),
        # Not significant at 0.05.
        (
            [variant("A", 50, 5), variant("B", 50, 8, difference=0.06, p_value=0.36)],
            None,
        ),
        # Every challenger significantly worse: control wins.
        (
            [variant("A", 50, 25), variant("B", 50, 5, difference=-0.4, p_value=1e-6)],
            "A",
        ),
        # Three variants: each test at 0.05 / 2, so p = 0.03 is not enough.
        (
            [
                variant("A", 50, 5),
                variant("B", 50, 12, difference=0.14, p_value=0.03),
                variant("C", 50, 6, difference=0.02, p_value=0.7),
            ],
            None,
        ),
        # The best of the significantly better challengers wins.
        (
            [
                variant("A", 50, 5),
                variant("B", 50, 20, difference=0.3, p_value=1e-4),
                variant("C", 50, 30, difference=0.5, p_value=1e-7),
            ],
            "C",
        ),
    ],
)
def test_winner_rule_decides(
    variants: list[VariantResult], expected: str | None
) -> None:
    rule = WinnerRule(min_leads_per_variant=30, significance=0.05)

    assert judge_split(rule, variants) == expected


@pytest.mark.parametrize(
    ("winner", "path", "text"),
    [
        (
            {"minLeadsPerVariant": 5},
            "sequence[0].winner.minLeadsPerVariant",
            "at least 30",
        ),
        (
            {"minLeadsPerVariant": 100, "significance": 0.5},
            "sequence[0].winner.significance",
            "less than or equal to 0.2",
        ),
        ({"significance": 0.05}, "sequence[0].winner.minLeadsPerVariant", "required"),
        (
            {"minLeadsPerVariant": 100, "minLeads": 3},
            "sequence[0].winner.minLeads",
            "not permitted",
        ),
    ],
)
async def test_winner_rule_rejects_bad_values(
    api: httpx.AsyncClient, winner: dict[str, Any], path: str, text: str
) -> None:
    body = {
        "name": "Bad rule",
        "trigger": {"type": "manual"},
        "goals": GOALS,
        "sequence": [{**SPLIT, "winner": winner}, *SPLIT_SEQUENCE[1:]],
    }

    response = await api.post("/api/v1/nurturing/campaigns", json=body)

    assert response.status_code == 422
    errors = {error["path"]: error["message"] for error in response.json()["errors"]}
    assert list(errors) == [path]
    assert text in errors[path]


async def test_winner_rule_needs_a_goal(api: httpx.AsyncClient) -> None:
    body = {
        "name": "No goal",
        "trigger": {"type": "manual"},
        "sequence": [
            {**SPLIT, "winner": {"minLeadsPerVariant": 100}},
            *SPLIT_SEQUENCE[1:],
        ],
    }

    response = await api.post("/api/v1/nurturing/campaigns", json=body)

    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["path"] == "sequence[0].winner"
    assert "at least one entry in goals" in error["message"]


WINNER = "/api/v1/nurturing/campaigns/ab-test/splits/ab/winner"


async def test_marketer_declares_and_withdraws_winner(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    ab_rows(engine)

    declared = await api.put(WINNER, json={"variant": "A"})
    shown = (await get_json(api, "/ab", campaignId="ab-test"))["splits"][0]
    replaced = await api.put(WINNER, json={"variant": "B"})
    withdrawn = await api.delete(WINNER)
    exported = await api.get(
        f"{ANALYTICS}/ab", params={"campaignId": "ab-test", "format": "csv"}
    )
    again = await api.delete(WINNER)
    shown_after = (await get_json(api, "/ab", campaignId="ab-test"))["splits"][0]
    with session_scope(engine) as session:
        pending = pending_splits(session.connection())
        audit = session.exec(
            select(AuditEntry.action, AuditEntry.detail)
            .where(col(AuditEntry.action).startswith("split."))
            .order_by(col(AuditEntry.id))
        ).all()

    assert declared.status_code == 200, declared.text
    body = declared.json()
    assert (body["winner"], body["control"], body["decidedBy"]) == ("A", "A", "api-key")
    assert body["withdrawnAt"] is None
    figures = {v["variant"]: v["assigned"] for v in body["figures"]["variants"]}
    # Drawn at random only: the five sent to B by an earlier winner are apart.
    assert figures == {"A": 50, "B": 40}
    assert shown["decision"]["winner"] == "A"
    assert replaced.json()["winner"] == "B"
    assert withdrawn.status_code == 200
    assert withdrawn.json()["withdrawnBy"] == "api-key"
    assert again.status_code == 404
    assert "has no winner in force" in again.json()["message"]
    assert shown_after["decision"]["withdrawnAt"] is not None
    csv_rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["winner"] for row in csv_rows} == {"B"}
    assert {row["decidedBy"] for row in csv_rows} == {"api-key"}
    assert all(row["withdrawnAt"] for row in csv_rows)
    assert pending == []
    assert audit == [
        ("split.winner_declared", {"step": "ab", "winner": "A", "previous": None}),
        ("split.winner_declared", {"step": "ab", "winner": "B", "previous": "A"}),
        ("split.winner_withdrawn", {"step": "ab", "winner": "B"}),
    ]


async def test_declaring_winner_names_the_problem(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    ab_rows(engine)
    base = "/api/v1/nurturing/campaigns"

    unknown_variant = await api.put(WINNER, json={"variant": "C"})
    empty = await api.put(WINNER, json={"variant": ""})
    not_split = await api.put(f"{base}/ab-test/splits/mail-a/winner", json={})
    no_step = await api.put(f"{base}/ab-test/splits/nope/winner", json={"variant": "A"})
    no_campaign = await api.put(f"{base}/nope/splits/ab/winner", json={"variant": "A"})
    nothing_to_withdraw = await api.delete(WINNER)

    assert unknown_variant.status_code == 422
    (error,) = unknown_variant.json()["errors"]
    assert error["path"] == "variant"
    assert "use one of: A, B" in error["message"]
    assert empty.status_code == 422
    assert not_split.status_code == 422
    assert no_step.status_code == 404
    assert "does not exist; its split steps: ab" in no_step.json()["message"]
    assert no_campaign.status_code == 404
    assert nothing_to_withdraw.status_code == 404


# Acquisition and spend.


def acquisition_rows(engine: sa.Engine) -> None:
    def lead(
        lead_id: str, channel: str | None, utm: str | None, created: str, **rest: Any
    ) -> dict[str, Any]:
        return {
            "id": lead_id,
            "source_channel": channel,
            "source_campaign": utm,
            "created_at": at(created),
            **rest,
        }

    add_leads(
        engine,
        [
            lead(
                "a1",
                "webinar",
                "spring",
                "2026-01-01T00:00:00",
                stage="customer",
                mql_at=at("2026-01-01T10:00:00"),
            ),
            lead(
                "a2",
                "webinar",
                "spring",
                "2026-01-02T00:00:00",
                stage="mql",
                mql_at=at("2026-01-02T20:00:00"),
            ),
            lead(
                "a3",
                "webinar",
                "autumn",
                "2026-01-05T00:00:00",
                stage="sql",
                mql_at=at("2026-01-06T06:00:00"),
            ),
            lead("a4", "webinar", None, "2026-01-06T00:00:00"),
            lead("a5", "ads", "brand", "2026-01-07T00:00:00"),
            lead("a6", "ads", "brand", "2026-01-08T00:00:00", stage="mql"),
            lead("a7", None, None, "2026-01-09T00:00:00"),
            lead(
                "a8",
                "webinar",
                "spring",
                "2026-02-15T00:00:00",
                stage="customer",
                mql_at=at("2026-02-15T04:00:00"),
            ),
        ],
    )
    with engine.begin() as connection:
        # A lead that was an MQL before its time was stored.
        connection.execute(
            sa.update(Lead.__table__)
            .where(Lead.__table__.c.id == "a6")
            .values(mql_at=None)
        )
    outcome = {"source": "api", "recorded_by": "test"}
    insert(
        engine,
        LeadOutcome,
        [
            {
                "lead_id": "a1",
                "outcome": "lost",
                "occurred_at": at("2026-01-02T00:00:00"),
                **outcome,
            },
            {
                "lead_id": "a1",
                "outcome": "converted",
                "occurred_at": at("2026-01-03T00:00:00"),
                **outcome,
            },
            {
                "lead_id": "a1",
                "outcome": "converted",
                "occurred_at": at("2026-01-20T00:00:00"),
                **outcome,
            },
            {
                "lead_id": "a3",
                "outcome": "converted",
                "occurred_at": at("2026-01-10T00:00:00"),
                **outcome,
            },
            {
                "lead_id": "a8",
                "outcome": "converted",
                "occurred_at": at("2026-02-16T00:00:00"),
                **outcome,
            },
        ],
    )


SPEND = {
    "currency": "EUR",
    "entries": [
        {
            "channel": "webinar",
            "periodStart": "2026-01-01",
            "periodEnd": "2026-01-31",
            "amount": 310,
        },
        # 30 days, 16 of them in January.
        {
            "channel": "webinar",
            "utmCampaign": "spring",
            "periodStart": "2026-01-16",
            "periodEnd": "2026-02-14",
            "amount": "300.00",
        },
        {
            "channel": "ads",
            "utmCampaign": "brand",
            "periodStart": "2026-01-01",
            "periodEnd": "2026-01-10",
            "amount": 100,
        },
    ],
}


def keyed(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {(row["level"], row["channel"], row["campaign"]): row for row in rows}


async def test_acquisition_counts_medians_costs(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    acquisition_rows(engine)
    stored = await api.put(f"{ANALYTICS}/spend", json=SPEND)
    assert stored.status_code == 200, stored.text

    january = keyed(
        (
            await get_json(
                api,
                "/acquisition",
                **{"from": "2026-01-01", "to": "2026-01-31"},
            )
        )["rows"]
    )
    everything = keyed((await get_json(api, "/acquisition"))["rows"])

    webinar = january[("channel", "webinar", None)]
    assert (webinar["leads"], webinar["mqls"], webinar["conversions"]) == (4, 3, 2)
    assert webinar["mqlRate"] == pytest.approx(3 / 4)
    assert webinar["conversionRate"] == pytest.approx(2 / 4)
    # MQL after 10, 20 and 30 hours; first conversions after 48 and 120.
    assert webinar["medianHoursToMql"] == pytest.approx(20)
    assert webinar["medianHoursToConversion"] == pytest.approx(84)
    # 310 for January and 16/30 of 300 for spring.
    assert webinar["spend"] == pytest.approx(470)
    assert webinar["currency"] == "EUR"
    assert webinar["costPerLead"] == pytest.approx(117.5)
    assert webinar["costPerCustomer"] == pytest.approx(235)
    ads = january[("channel", "ads", None)]
    assert (ads["leads"], ads["mqls"], ads["conversions"]) == (2, 1, 0)
    assert ads["medianHoursToMql"] is None
    assert ads["costPerLead"] == pytest.approx(50)
    assert ads["costPerCustomer"] is None
    unknown = january[("channel", None, None)]
    assert (unknown["leads"], unknown["spend"], unknown["costPerLead"]) == (
        1,
        None,
        None,
    )
    spring = january[("campaign", "webinar", "spring")]
    assert (spring["leads"], spring["mqls"], spring["conversions"]) == (2, 2, 1)
    assert spring["medianHoursToMql"] == pytest.approx(15)
    assert spring["medianHoursToConversion"] == pytest.approx(48)
    assert spring["spend"] == pytest.approx(160)
    assert spring["costPerCustomer"] == pytest.approx(160)
    assert january[("campaign", "webinar", "autumn")]["spend"] is None
    assert january[("campaign", "webinar", None)]["leads"] == 1
    assert january[("campaign", "ads", "brand")]["costPerLead"] == pytest.approx(50)
    assert len(january) == 8
    all_webinar = everything[("channel", "webinar", None)]
    assert (all_webinar["leads"], all_webinar["conversions"]) == (5, 3)
    assert all_webinar["spend"] == pytest.approx(610)
    # 4, 10, 20 and 30 hours.
    assert all_webinar["medianHoursToMql"] == pytest.approx(15)


async def test_spend_replaced_whole_and_audited(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    empty = await get_json(api, "/spend")
    first = await api.put(f"{ANALYTICS}/spend", json=SPEND)
    empty_after_first = await get_json(api, "/spend")
    smaller = {"currency": "USD", "entries": SPEND["entries"][:1]}
    second = await api.put(f"{ANALYTICS}/spend", json=smaller)
    read = await get_json(api, "/spend")
    exported = await api.get(f"{ANALYTICS}/spend", params={"format": "csv"})

    assert empty == {
        "currency": None,
        "entries": [],
        "updatedAt": None,
        "updatedBy": None,
    }
    assert first.status_code == 200
    assert len(first.json()["entries"]) == 3
    assert first.json()["entries"][2]["amount"] == "300.00"
    assert second.status_code == 200
    assert read["currency"] == "USD"
    assert read["entries"] == [
        {
            "channel": "webinar",
            "utmCampaign": None,
            "periodStart": "2026-01-01",
            "periodEnd": "2026-01-31",
            "amount": "310.00",
        }
    ]
    assert read["updatedBy"] == "api-key"
    assert exported.text.splitlines() == [
        "channel,utmCampaign,periodStart,periodEnd,amount",
        "webinar,,2026-01-01,2026-01-31,310.00",
    ]
    with session_scope(engine) as session:
        audits = session.exec(
            select(AuditEntry).where(AuditEntry.action == "analytics.spend_replaced")
        ).all()
    assert [(a.detail["entries"], a.detail["currency"]) for a in audits] == [
        (3, "EUR"),
        (1, "USD"),
    ]
    # Each entry keeps what it replaced, so a mistaken PUT can be undone.
    assert audits[0].detail["previous"] == {"currency": None, "entries": []}
    assert audits[1].detail["previous"] == {
        "currency": empty_after_first["currency"],
        "entries": empty_after_first["entries"],
    }


async def test_spend_get_body_puts_back(api: httpx.AsyncClient) -> None:
    await api.put(f"{ANALYTICS}/spend", json=SPEND)
    read = await get_json(api, "/spend")

    put_back = await api.put(f"{ANALYTICS}/spend", json=read)
    nothing = {"currency": None, "entries": []}
    cleared = await api.put(f"{ANALYTICS}/spend", json=nothing)
    empty = await get_json(api, "/spend")
    empty_back = await api.put(f"{ANALYTICS}/spend", json=empty)
    no_currency = await api.put(
        f"{ANALYTICS}/spend", json={"currency": None, "entries": SPEND["entries"]}
    )

    assert put_back.status_code == 200, put_back.text
    assert put_back.json()["entries"] == read["entries"]
    assert cleared.status_code == 200, cleared.text
    assert empty_back.status_code == 200, empty_back.text
    assert no_currency.status_code == 422
    assert "currency is null but there are entries" in no_currency.text


@pytest.mark.parametrize(
    ("entry_change", "path", "text"),
    [
        ({"amount": -5}, "entries[0].amount", "greater than or equal to 0"),
        ({"amount": "1.234"}, "entries[0].amount", "2 decimal places"),
        ({"periodEnd": "2025-12-31"}, "entries[0].periodEnd", "before periodStart"),
        ({"periodStart": "2026-02-30"}, "entries[0].periodStart", "date"),
        ({"periodStart": "01/02/2026"}, "entries[0].periodStart", "YYYY-MM-DD"),
        ({"channel": ""}, "entries[0].channel", "at least 1 character"),
        ({"budget": 5}, "entries[0].budget", "not permitted"),
    ],
)
async def test_spend_rejects_bad_entry(
    api: httpx.AsyncClient, entry_change: dict[str, Any], path: str, text: str
) -> None:
    entry = {**SPEND["entries"][0], **entry_change}

    response = await api.put(
        f"{ANALYTICS}/spend", json={"currency": "EUR", "entries": [entry]}
    )

    assert response.status_code == 422
    errors = {error["path"]: error["message"] for error in response.json()["errors"]}
    assert list(errors) == [path]
    assert text in errors[path]


async def test_spend_rejects_currency_and_duplicates(
    api: httpx.AsyncClient,
) -> None:
    entry = SPEND["entries"][0]

    currency = await api.put(
        f"{ANALYTICS}/spend", json={"currency": "euro", "entries": [entry]}
    )
    unknown = await api.put(
        f"{ANALYTICS}/spend", json={"currency": "XXZ", "entries": [entry]}
    )
    lower_case = await api.put(
        f"{ANALYTICS}/spend", json={"currency": "eur", "entries": [entry]}
    )
    duplicate = await api.put(
        f"{ANALYTICS}/spend",
        json={"currency": "EUR", "entries": [entry, {**entry, "amount": 5}]},
    )

    assert currency.status_code == 422
    assert [e["path"] for e in currency.json()["errors"]] == ["currency"]
    assert unknown.status_code == 422
    (unknown_error,) = unknown.json()["errors"]
    assert unknown_error["path"] == "currency"
    assert "unknown currency 'XXZ'" in unknown_error["message"]
    assert lower_case.status_code == 200, lower_case.text
    assert lower_case.json()["currency"] == "EUR"
    assert duplicate.status_code == 422
    (error,) = duplicate.json()["errors"]
    assert error["path"] == "entries[1]"
    assert "entries[0]" in error["message"]


# Attribution.


async def test_attribution_first_last_linear(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    add_campaign(engine, "c-a", FUNNEL_SEQUENCE)
    add_campaign(engine, "c-b", FUNNEL_SEQUENCE)
    add_leads(engine, [{"id": lead_id} for lead_id in ("p1", "p2", "p3", "p4")])
    insert(
        engine,
        Message,
        [
            message_row(
                "t1",
                None,
                "p1",
                "c-a",
                1,
                "delivered",
                sent_at=at("2026-03-01T00:00:00"),
            ),
            message_row(
                "t2", None, "p1", "c-b", 1, "opened", sent_at=at("2026-03-05T00:00:00")
            ),
            message_row(
                "t3", None, "p1", "c-a", 3, "sent", sent_at=at("2026-03-08T00:00:00")
            ),
            # After the conversion, and a message that never reached the lead.
            message_row(
                "t4", None, "p1", "c-a", 4, "sent", sent_at=at("2026-03-12T00:00:00")
            ),
            message_row(
                "t5", None, "p1", "c-b", 3, "bounced", sent_at=at("2026-03-06T00:00:00")
            ),
            # Not a campaign message: the sales hand-off.
            message_row(
                "t6", None, "p1", None, 1, "sent", sent_at=at("2026-03-02T00:00:00")
            ),
            message_row(
                "t7", None, "p2", "c-b", 1, "clicked", sent_at=at("2026-03-15T00:00:00")
            ),
            message_row(
                "t8", None, "p4", "c-a", 1, "sent", sent_at=at("2026-04-01T00:00:00")
            ),
        ],
    )
    outcome = {"outcome": "converted", "source": "api", "recorded_by": "test"}
    insert(
        engine,
        LeadOutcome,
        [
            {"lead_id": "p1", "occurred_at": at("2026-03-10T00:00:00"), **outcome},
            {"lead_id": "p2", "occurred_at": at("2026-03-20T00:00:00"), **outcome},
            {"lead_id": "p3", "occurred_at": at("2026-03-25T00:00:00"), **outcome},
            {"lead_id": "p4", "occurred_at": at("2026-04-05T00:00:00"), **outcome},
        ],
    )

    march = await get_json(
        api, "/attribution", **{"from": "2026-03-01", "to": "2026-03-31"}
    )
    exported = await api.get(
        f"{ANALYTICS}/attribution",
        params={"from": "2026-03-01", "to": "2026-03-31", "format": "csv"},
    )

    assert (march["conversions"], march["attributed"]) == (3, 2)
    credit = {
        (row["level"], row["campaignId"], row["step"]): (
            row["touchedConversions"],
            row["firstTouch"],
            row["lastTouch"],
            row["linear"],
        )
        for row in march["rows"]
    }
    assert credit == {
        ("campaign", "c-a", None): (1, 1, 1, pytest.approx(2 / 3)),
        ("campaign", "c-b", None): (2, 1, 1, pytest.approx(4 / 3)),
        ("message", "c-a", "hello"): (1, 1, 0, pytest.approx(1 / 3)),
        ("message", "c-a", "mail-a"): (1, 0, 1, pytest.approx(1 / 3)),
        ("message", "c-b", "hello"): (2, 1, 1, pytest.approx(4 / 3)),
    }
    assert march["rows"][0]["campaignId"] == "c-b"
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert [line["campaignId"] for line in lines] == [
        r["campaignId"] for r in march["rows"]
    ]
    assert float(lines[0]["linear"]) == pytest.approx(4 / 3)


# Scoring quality.


async def test_scoring_deciles_and_model_auc(
    engine: sa.Engine, api: httpx.AsyncClient
) -> None:
    scores = [
        12,
        12,
        20,
        25,
        31,
        38,
        40,
        44,
        50,
        55,
        61,
        64,
        70,
        70,
        77,
        80,
        85,
        90,
        93,
        99,
    ]
    labels = [0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    probabilities = [
        s / 100 + (0.05 if y else 0) for s, y in zip(scores, labels, strict=True)
    ]
    rows = [
        {
            "id": f"s{i:02d}",
            "score": score,
            "outcome": "converted" if label else "lost",
            "model_version": 2 if i % 2 == 0 else 1,
            "conversion_probability": probability,
            "created_at": at("2026-01-10T00:00:00"),
        }
        for i, (score, label, probability) in enumerate(
            zip(scores, labels, probabilities, strict=True)
        )
    ]
    rows += [
        # No outcome, and captured outside the range: both left out.
        {"id": "s-open", "score": 95},
        {
            "id": "s-old",
            "score": 5,
            "outcome": "converted",
            "created_at": at("2025-06-01T00:00:00"),
        },
    ]
    add_leads(engine, rows)
    model = {"status": "ready", "created_by": "test", "stage": "done", "progress": 1.0}
    insert(
        engine,
        ScoringModel,
        [
            {
                "version": 1,
                "metrics": {"rocAuc": 0.80},
                "promoted": False,
                "promoted_at": at("2026-01-01T00:00:00"),
                **model,
            },
            {
                "version": 2,
                "metrics": {"rocAuc": 0.85},
                "promoted": True,
                "promoted_at": at("2026-02-01T00:00:00"),
                **model,
            },
            {
                "version": 3,
                "metrics": {"rocAuc": 0.95},
                "promoted": False,
                "promoted_at": None,
                **model,
            },
        ],
    )

    report = await get_json(api, "/scoring", **{"from": "2026-01-01"})
    exported = await api.get(
        f"{ANALYTICS}/scoring",
        params={"from": "2026-01-01"},
        headers={"Accept": "text/csv"},
    )

    assert (report["leads"], report["conversions"]) == (20, 10)
    assert report["scoreRocAuc"] == pytest.approx(pairwise_auc(scores, labels))
    ordered = sorted(zip(scores, [f"s{i:02d}" for i in range(20)], labels, strict=True))
    deciles = report["deciles"]
    assert [d["decile"] for d in deciles] == list(range(1, 11))
    for index, decile in enumerate(deciles):
        pair = ordered[2 * index : 2 * index + 2]
        assert decile["leads"] == 2
        assert decile["conversions"] == sum(label for _, _, label in pair)
        assert decile["minScore"] == pair[0][0]
        assert decile["maxScore"] == pair[1][0]
        assert decile["lift"] == pytest.approx((decile["conversions"] / 2) / (10 / 20))
    current, previous = report["currentModel"], report["previousModel"]
    assert (current["version"], current["heldOutRocAuc"]) == (2, 0.85)
    assert (previous["version"], previous["heldOutRocAuc"]) == (1, 0.80)
    assert report["heldOutAucChange"] == pytest.approx(0.05)
    for quality, parity in ((current, 0), (previous, 1)):
        chosen = [i for i in range(20) if i % 2 == parity]
        assert quality["liveLeads"] == len(chosen)
        assert quality["liveRocAuc"] == pytest.approx(
            pairwise_auc(
                [probabilities[i] for i in chosen], [labels[i] for i in chosen]
            )
        )
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(line["conversions"]) for line in lines] == [
        d["conversions"] for d in deciles
    ]


async def test_scoring_without_outcomes_is_empty(
    api: httpx.AsyncClient,
) -> None:
    report = await get_json(api, "/scoring")

    assert report["leads"] == 0
    assert report["scoreRocAuc"] is None
    assert report["currentModel"] is None
    assert report["deciles"] == []


# MQL time, kept by the database trigger.


def test_mql_time_set_once_on_any_write(engine: sa.Engine) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    leads = Lead.__table__  # type: ignore[attr-defined]

    with session_scope(engine) as session:
        session.add(Lead(id="q1", email_normalized="q1@example.com"))
        session.add(Lead(id="q2", email_normalized="q2@example.com", stage="mql"))
        session.add(
            Lead(
                id="q3",
                email_normalized="q3@example.com",
                stage="customer",
                mql_at=at("2025-01-01T00:00:00"),
            )
        )
    with session_scope(engine) as session:
        first = session.get(Lead, "q1")
        assert first is not None
        first.stage = "engaged"
        session.add(first)
    with session_scope(engine) as session:
        engaged = session.get(Lead, "q1").mql_at  # type: ignore[union-attr]

    with engine.begin() as connection:
        # The batch rescoring's bulk UPDATE goes past the ORM.
        connection.execute(
            sa.update(leads).where(leads.c.id == "q1").values(stage="mql")
        )
    with session_scope(engine) as session:
        reached = session.get(Lead, "q1").mql_at  # type: ignore[union-attr]
        inserted = session.get(Lead, "q2").mql_at  # type: ignore[union-attr]
        explicit = session.get(Lead, "q3").mql_at  # type: ignore[union-attr]

    with engine.begin() as connection:
        connection.execute(
            sa.update(leads).where(leads.c.id == "q1").values(stage="customer")
        )
    with session_scope(engine) as session:
        later = session.get(Lead, "q1").mql_at  # type: ignore[union-attr]

    after = datetime.now(UTC) + timedelta(seconds=5)
    assert engaged is None
    assert reached is not None
    assert before <= reached
    assert reached <= after
    assert inserted is not None
    assert before <= inserted
    assert inserted <= after
    assert explicit == at("2025-01-01T00:00:00")
    assert later == reached


# Bad input.


@pytest.mark.parametrize(
    ("path", "params", "field", "text"),
    [
        ("/funnel", {"from": "yesterday"}, "from", "ISO 8601"),
        ("/funnel", {"to": "2026-01-31T10:00:00"}, "to", "no UTC offset"),
        ("/ab", {"from": "2026-02-01", "to": "2026-01-01"}, "to", "must be after from"),
        ("/acquisition", {"format": "xml"}, "format", "'json' or 'csv'"),
        ("/ab", {"confidence": "1.5"}, "confidence", "less than 1"),
        ("/scoring", {"from": "2026-13-01"}, "from", "ISO 8601"),
    ],
)
async def test_bad_query_names_the_field(
    api: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    field: str,
    text: str,
) -> None:
    response = await api.get(f"{ANALYTICS}{path}", params=params)

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_failed"
    errors = {error["path"]: error["message"] for error in body["errors"]}
    assert list(errors) == [field]
    assert text in errors[field]


async def test_unknown_campaign_is_404(api: httpx.AsyncClient) -> None:
    for path in ("/funnel", "/ab"):
        response = await api.get(
            f"{ANALYTICS}{path}", params={"campaignId": "no-such-campaign"}
        )

        empty = await api.get(f"{ANALYTICS}{path}", params={"campaignId": ""})

        assert response.status_code == 404
        assert "no-such-campaign" in response.json()["message"]
        assert empty.status_code == 422
        (error,) = empty.json()["errors"]
        assert error["path"] == "campaignId"
        assert "campaignId is empty" in error["message"]


async def test_csv_defuses_formulas(engine: sa.Engine, api: httpx.AsyncClient) -> None:
    add_leads(
        engine,
        [{"id": "f1", "source_channel": "=HYPERLINK(1)", "source_campaign": "-2"}],
    )

    exported = await api.get(f"{ANALYTICS}/acquisition", params={"format": "csv"})

    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert lines[0]["channel"] == "'=HYPERLINK(1)"
    assert lines[1]["campaign"] == "'-2"
    assert lines[0]["leads"] == "1"


# The real stack: a split campaign with webhooks, conversions and a winner.


async def capture(stack: Stack, email: str, channel: str, utm: str) -> str:
    body = example("lead.json")
    body["contact"]["email"] = email
    body["source"].update(channel=channel, campaign=utm)
    response = await stack.api.post("/api/v1/leads", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def provider_event(stack: Stack, kind: str, index: int) -> dict[str, Any]:
    """The example batch's event of this kind, for the mail our fake took `index`th."""
    template = next(e for e in example("sendgrid/events.json") if e["event"] == kind)
    mail = stack.sendgrid.mails()[index]
    event = copy.deepcopy(template)
    # SendGrid repeats a message's custom args in each of its events.
    event.update(mail["custom_args"])
    event["sg_message_id"] = f"{stack.sendgrid.issued_ids[index]}.filterdrecv-1.0"
    event["sg_event_id"] = f"{kind}-{index}-{uuid.uuid4().hex[:6]}"
    event["email"] = mail["personalizations"][0]["to"][0]["email"]
    return event


def mail_indexes(stack: Stack, lead_ids: list[str]) -> list[int]:
    """Return the position, among the fake's mails, of each lead's mail."""
    mail_of = {
        mail["custom_args"]["lead_id"]: index
        for index, mail in enumerate(stack.sendgrid.mails())
    }
    return [mail_of[lead_id] for lead_id in lead_ids]


async def split_variants(
    stack: Stack, campaign_id: str, lead_ids: list[str]
) -> dict[str, str]:
    """Return each lead's variant once its enrollment has passed the split."""
    variants = {}
    for lead_id in lead_ids:
        handle = await enrollment(stack, campaign_id, lead_id)

        async def passed(handle: Any = handle) -> str | None:
            return (await state(handle)).variants.get("ab")

        variants[lead_id] = await stack.eventually(passed, message="split passed")
    return variants


def enrollment_status(stack: Stack, lead_id: str) -> str:
    with session_scope(stack.engine) as session:
        return session.exec(
            select(Enrollment.status).where(Enrollment.lead_id == lead_id)
        ).one()


async def test_split_campaign_numbers_on_real_stack(stack: Stack) -> None:
    campaign_id = await campaign(stack, SPLIT_SEQUENCE, goals=GOALS)
    sources = [("webinar", "spring")] * 4 + [("ads", "brand")] * 2
    lead_ids = [
        await capture(stack, f"ab{i}@company.com", channel, utm)
        for i, (channel, utm) in enumerate(sources)
    ]
    variants = await split_variants(stack, campaign_id, lead_ids)
    await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 6, message="six mails sent"
    )
    index = mail_indexes(stack, lead_ids)
    events = [provider_event(stack, "delivered", index[i]) for i in range(5)]
    events += [provider_event(stack, "open", index[i]) for i in range(4)]
    events += [provider_event(stack, "click", index[i]) for i in range(2)]
    events += [provider_event(stack, "unsubscribe", index[4])]
    events += [provider_event(stack, "bounce", index[5])]
    posted = await stack.api.post(
        "/api/v1/webhooks/sendgrid", json=events, headers=NO_KEY
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["unmatched"] == 0
    converted = [lead_ids[0], lead_ids[2]]
    for lead_id in converted:
        response = await stack.api.post(
            f"/api/v1/leads/{lead_id}/outcome", json={"outcome": "converted"}
        )
        assert response.status_code == 201, response.text
    for lead_id in converted:
        await stack.eventually(
            lambda lead_id=lead_id: enrollment_status(stack, lead_id) == "converted",
            message="goal reached",
        )

    funnel = by_step(
        (await get_json(stack.api, "/funnel", campaignId=campaign_id))["rows"]
    )
    ab = await get_json(stack.api, "/ab", campaignId=campaign_id)
    acquisition = keyed((await get_json(stack.api, "/acquisition"))["rows"])
    credit = await get_json(stack.api, "/attribution")

    assert counts(funnel[("version", None, None)]) == funnel_counts(
        6, 6, 5, 4, 2, 0, 2, 1, 1
    )
    for name, step in (("A", "mail-a"), ("B", "mail-b")):
        members = [i for i, lead_id in enumerate(lead_ids) if variants[lead_id] == name]
        if not members:
            assert (step_key := ("step", step, name)) not in funnel, step_key
            continue
        row = funnel[("step", step, name)]
        assert counts(row) == funnel_counts(
            len(members),
            len(members),
            sum(i < 5 for i in members),
            sum(i < 4 for i in members),
            sum(i < 2 for i in members),
            0,
            sum(i in (0, 2) for i in members),
            sum(i == 4 for i in members),
            sum(i == 5 for i in members),
        )
    (split,) = ab["splits"]
    tallies = {
        name: (
            sum(variants[lead_id] == name for lead_id in lead_ids),
            sum(variants[lead_id] == name for lead_id in converted),
        )
        for name in ("A", "B")
    }
    control, challenger = split["variants"]
    assert (control["assigned"], control["converted"]) == tallies["A"]
    assert (challenger["assigned"], challenger["converted"]) == tallies["B"]
    (n_a, x_a), (n_b, x_b) = tallies["A"], tallies["B"]
    expected = textbook_z_test(x_a, n_a, x_b, n_b)
    if expected is None:
        assert challenger["zScore"] is None
    else:
        assert challenger["zScore"] == pytest.approx(expected[0])
        assert challenger["pValue"] == pytest.approx(expected[1])
    for result, (n, x) in ((control, tallies["A"]), (challenger, tallies["B"])):
        if n:
            assert result["ciLow"] == pytest.approx(textbook_wilson(x, n)[0])
    webinar = acquisition[("channel", "webinar", None)]
    assert (webinar["leads"], webinar["conversions"]) == (4, 2)
    assert acquisition[("campaign", "ads", "brand")]["leads"] == 2
    stages = [
        (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()["stage"]
        for lead_id in lead_ids[:4]
    ]
    # Converted leads became customers, which the trigger dates as MQL too.
    assert webinar["mqls"] == sum(s in ("mql", "sql", "customer") for s in stages)
    assert webinar["medianHoursToMql"] is not None
    assert 0 <= webinar["medianHoursToMql"] < 1
    assert (credit["conversions"], credit["attributed"]) == (2, 2)
    campaign_credit = next(r for r in credit["rows"] if r["level"] == "campaign")
    assert campaign_credit["campaignId"] == campaign_id
    assert campaign_credit["firstTouch"] == 2
    assert campaign_credit["linear"] == pytest.approx(2.0)

    # The new split path replays its own history deterministically.
    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_ids[0])
    )
    await handle.result()
    history: WorkflowHistory = await handle.fetch_history()
    replayer = Replayer(
        workflows=[LeadWorkflow, NurtureWorkflow],
        data_converter=data_converter(PAYLOAD_ENCRYPTION_KEYS),
    )
    await replayer.replay_workflow(history)


def assignments(stack: Stack, lead_ids: list[str]) -> dict[str, tuple[str, bool]]:
    with session_scope(stack.engine) as session:
        rows = session.exec(
            select(
                Enrollment.lead_id, SplitAssignment.variant, SplitAssignment.by_winner
            )
            .join(SplitAssignment, SplitAssignment.enrollment_id == Enrollment.id)  # type: ignore[arg-type]
            .where(Enrollment.lead_id.in_(lead_ids))  # type: ignore[attr-defined]
        ).all()
    return {lead_id: (name, by_winner) for lead_id, name, by_winner in rows}


async def test_winner_rule_fires_for_new_enrollments(stack: Stack) -> None:
    rule = {"minLeadsPerVariant": 30, "significance": 0.05}
    campaign_id = await campaign(
        stack, [{**SPLIT, "winner": rule}, *SPLIT_SEQUENCE[1:]], goals=GOALS
    )
    early = [
        await capture(stack, f"early{i}@company.com", "webinar", "spring")
        for i in range(2)
    ]
    early_variants = await split_variants(stack, campaign_id, early)
    add_assignments(stack.engine, campaign_id, "A", 40, 3, at("2026-01-05T00:00:00"))
    add_assignments(stack.engine, campaign_id, "B", 40, 20, at("2026-01-05T00:00:00"))

    result = await stack.client.execute_workflow(
        SplitWinnerWorkflow.run,
        SplitWinnerCheckInput(),
        id=f"split-winners-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.settings.task_queue,
    )

    assert result.decided == [f"{campaign_id}/ab: B"]
    with session_scope(stack.engine) as session:
        decision = session.exec(select(SplitDecision)).one()
    assert (decision.winner, decision.control, decision.step_id) == ("B", "A", "ab")
    assert decision.rule == rule
    figures = {v["variant"]: v for v in decision.figures["variants"]}
    early_a = sum(v == "A" for v in early_variants.values())
    assert figures["A"]["assigned"] == 40 + early_a
    assert figures["B"]["assigned"] == 40 + 2 - early_a
    assert figures["B"]["pValue"] < 0.05
    decided = (await get_json(stack.api, "/ab", campaignId=campaign_id))["splits"][0]
    assert decided["decision"]["winner"] == "B"
    assert decided["winnerRule"] == rule

    late = [
        await capture(stack, f"late{i}@company.com", "webinar", "spring")
        for i in range(3)
    ]
    late_variants = await split_variants(stack, campaign_id, late)

    assert late_variants == dict.fromkeys(late, "B")
    assert assignments(stack, late) == dict.fromkeys(late, ("B", True))
    assert assignments(stack, early) == {
        lead_id: (name, False) for lead_id, name in early_variants.items()
    }
    handle = await enrollment(stack, campaign_id, late[0])
    steps = (await state(handle)).steps
    assert steps[0].detail == "variant B, the split's winner"
    after = (await get_json(stack.api, "/ab", campaignId=campaign_id))["splits"][0]
    b = after["variants"][1]
    assert (b["assigned"], b["assignedByWinner"]) == (40 + 2 - early_a, 3)
    again = await stack.client.execute_workflow(
        SplitWinnerWorkflow.run,
        SplitWinnerCheckInput(),
        id=f"split-winners-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.settings.task_queue,
    )
    assert again.decided == []

    # A marketer withdraws the rule's choice: new leads draw at random again,
    # and the rule does not fire again on the same figures.
    winner_path = f"/api/v1/nurturing/campaigns/{campaign_id}/splits/ab/winner"
    withdrawn = await stack.api.delete(winner_path)
    assert withdrawn.status_code == 200, withdrawn.text
    drawn = [
        await capture(stack, f"drawn{i}@company.com", "webinar", "spring")
        for i in range(2)
    ]
    drawn_variants = await split_variants(stack, campaign_id, drawn)
    assert assignments(stack, drawn) == {
        lead_id: (name, False) for lead_id, name in drawn_variants.items()
    }
    after_withdrawal = await stack.client.execute_workflow(
        SplitWinnerWorkflow.run,
        SplitWinnerCheckInput(),
        id=f"split-winners-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.settings.task_queue,
    )
    assert after_withdrawal.decided == []
    # Then declares the control the winner by hand.
    declared = await stack.api.put(winner_path, json={"variant": "A"})
    assert declared.status_code == 200, declared.text
    chosen = [await capture(stack, "chosen@company.com", "webinar", "spring")]
    assert await split_variants(stack, campaign_id, chosen) == {chosen[0]: "A"}
    assert assignments(stack, chosen) == {chosen[0]: ("A", True)}


async def test_winner_schedule_runs_check(stack: Stack) -> None:
    await ensure_split_winner_schedule(stack.client, stack.settings)
    # A second worker process finds it there and goes on.
    await ensure_split_winner_schedule(stack.client, stack.settings)
    handle = stack.client.get_schedule_handle(split_winner_schedule_id(stack.settings))
    try:
        described = await handle.describe()
        (interval,) = described.schedule.spec.intervals
        assert isinstance(interval, ScheduleIntervalSpec)
        assert interval.every == timedelta(minutes=15)

        await handle.trigger()

        async def started() -> Any:
            actions = (await handle.describe()).info.recent_actions
            return actions[0].action if actions else None

        action = await stack.eventually(started, message="scheduled check started")
        finished = await stack.client.get_workflow_handle_for(
            SplitWinnerWorkflow.run, action.workflow_id
        ).result()
        assert finished.decided == []
    finally:
        await handle.delete()
