"""Tests of campaign conditions: parsing, checking, describing and evaluating."""

import itertools
import random
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

import nurture.conditions
from nurture.conditions import (
    FIELDS,
    And,
    Call,
    Comparison,
    Condition,
    ConditionError,
    Contains,
    EventFacts,
    Facts,
    Membership,
    MessageFacts,
    Not,
    Or,
    describe,
    evaluate,
    parse_condition,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CONDITION = TypeAdapter(Condition)

LEAD: dict[str, Any] = {
    "score": 52,
    "stage": "engaged",
    "status": "active",
    "company": {
        "name": "Acme Analytics",
        "industry": "software",
        "size": "51-200",
        "revenue": "$5M",
        "website": "https://acme.example",
        "country": "DE",
    },
    "source": {
        "channel": "webinar",
        "campaign": "spring-launch",
        "medium": "email",
        "content": "hero-banner",
    },
    "contact": {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@acme.example",
        "phone": "+14155550100",
        "timezone": "Europe/Berlin",
    },
    "customFields": {
        "budget": "50000",
        "plan": "pro",
        "seats": 12,
        "ratio": 0.5,
        "trial": True,
        "tags": ["webinar", "vip"],
        "note": None,
    },
}

MESSAGES = (
    MessageFacts("m1", "welcome", opened=True, clicked=False),
    MessageFacts("m2", "case_study", opened=False, clicked=True),
    MessageFacts("m3", "pricing-offer", opened=False, clicked=False),
)

EVENTS = (
    EventFacts("page_view", NOW - timedelta(days=8)),
    EventFacts("pricing_page_view", NOW - timedelta(days=2)),
    EventFacts("content_download", NOW - timedelta(days=7)),
    EventFacts("custom:demo_booked", NOW - timedelta(hours=1)),
)

FACTS = Facts(
    lead=LEAD,
    previous_message_id="m3",
    messages=MESSAGES,
    events=EVENTS,
    now=NOW,
)


def lead_with(**changes: Any) -> dict[str, Any]:
    """Return a copy of LEAD with top-level keys replaced."""
    return {**LEAD, **changes}


def evaluate_text(text: str, facts: Facts = FACTS) -> bool:
    return evaluate(parse_condition(text), facts)


def parse_error(text: str) -> ConditionError:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    return caught.value


def score_comparison(operator: str, value: int) -> Comparison:
    return Comparison(field="score", operator=operator, value=value)


# --- the existing trigger --------------------------------------------------------


def test_trigger_score_threshold_parses() -> None:
    assert parse_condition("score >= 50") == score_comparison(">=", 50)
    assert parse_condition("score>=50") == score_comparison(">=", 50)
    assert parse_condition("  score >= 50  ") == score_comparison(">=", 50)


@pytest.mark.parametrize(
    ("lead_score", "expected"), [(52, True), (50, True), (49, False)]
)
def test_trigger_score_threshold_evaluates(lead_score: int, expected: bool) -> None:
    facts = replace(FACTS, lead=lead_with(score=lead_score))
    assert evaluate_text("score >= 50", facts) is expected


# --- operators and precedence ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("score == 52", True),
        ("score == 51", False),
        ("score != 52", False),
        ("score != 51", True),
        ("score > 51", True),
        ("score > 52", False),
        ("score >= 52", True),
        ("score >= 53", False),
        ("score < 53", True),
        ("score < 52", False),
        ("score <= 52", True),
        ("score <= 51", False),
        ("score > -1", True),
        ("score < 52.5", True),
        ("score > 51.99", True),
        ("score == 52.0", True),
    ],
)
def test_comparison_operators(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


A = Comparison(field="custom.a", operator="==", value=True)
B = Comparison(field="custom.b", operator="==", value=True)
C = Comparison(field="custom.c", operator="==", value=True)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        (
            "custom.a == true or custom.b == true and custom.c == true",
            Or(operands=(A, And(operands=(B, C)))),
        ),
        (
            "custom.a == true and custom.b == true or custom.c == true",
            Or(operands=(And(operands=(A, B)), C)),
        ),
        (
            "(custom.a == true or custom.b == true) and custom.c == true",
            And(operands=(Or(operands=(A, B)), C)),
        ),
        (
            "not custom.a == true and custom.b == true",
            And(operands=(Not(operand=A), B)),
        ),
        (
            "not (custom.a == true and custom.b == true)",
            Not(operand=And(operands=(A, B))),
        ),
        ("not not custom.a == true", Not(operand=Not(operand=A))),
        (
            "custom.a == true and custom.b == true and custom.c == true",
            And(operands=(A, B, C)),
        ),
        (
            "custom.a == true or custom.b == true or custom.c == true",
            Or(operands=(A, B, C)),
        ),
        (
            "(custom.a == true and custom.b == true) and custom.c == true",
            And(operands=(And(operands=(A, B)), C)),
        ),
        ("((custom.a == true))", A),
        ("not(custom.a == true)", Not(operand=A)),
    ],
)
def test_precedence_builds_tree(text: str, tree: Condition) -> None:
    assert parse_condition(text) == tree


@pytest.mark.parametrize(
    ("a", "b", "c"), list(itertools.product([True, False], repeat=3))
)
def test_precedence_truth_table(a: bool, b: bool, c: bool) -> None:
    facts = replace(FACTS, lead=lead_with(customFields={"a": a, "b": b, "c": c}))
    checks = {
        "custom.a == true or custom.b == true and custom.c == true": a or (b and c),
        "(custom.a == true or custom.b == true) and custom.c == true": (a or b) and c,
        "not custom.a == true or custom.b == true": (not a) or b,
        "not (custom.a == true or custom.b == true)": not (a or b),
        "custom.a == true and not custom.b == true and custom.c == true": (
            a and not b and c
        ),
    }
    for text, expected in checks.items():
        assert evaluate_text(text, facts) is expected, text


def test_whitespace_is_free() -> None:
    compact = parse_condition('score>=50 and(opened("any")or stage in["new","mql"])')
    spaced = parse_condition(
        ' score >= 50 and ( opened ( "any" ) or stage in [ "new" , "mql" ] ) '
    )
    assert compact == spaced
    assert parse_condition("company . name == 'x'") == parse_condition(
        "company.name == 'x'"
    )


# --- literals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('stage == "a\\"b"', 'a"b'),
        ("stage == 'a\\'b'", "a'b"),
        ('stage == "a\\\\b"', "a\\b"),
        ("stage == 'a\\\\'", "a\\"),
        ("stage == 'say \"hi\"'", 'say "hi"'),
        ('stage == "it\'s"', "it's"),
        ('stage == "\\\'"', "'"),
        ('stage == ""', ""),
        ("stage == ''", ""),
        ('stage == "  spaced  "', "  spaced  "),
        ('stage == "and or not"', "and or not"),
        ('stage == "ünïcode"', "ünïcode"),
    ],
)
def test_string_escapes(text: str, value: str) -> None:
    condition = parse_condition(text)
    assert isinstance(condition, Comparison)
    assert condition.value == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("custom.x == 7", 7),
        ("custom.x == -7", -7),
        ("custom.x == 0", 0),
        ("custom.x == 2.5", 2.5),
        ("custom.x == -0.25", -0.25),
        ("custom.x == true", True),
        ("custom.x == false", False),
    ],
)
def test_literal_types(text: str, value: Any) -> None:
    condition = parse_condition(text)
    assert isinstance(condition, Comparison)
    assert condition.value == value
    assert type(condition.value) is type(value)


# --- fields ------------------------------------------------------------------------


FIELD_CASES = [
    ("score == 52", True),
    ('stage == "engaged"', True),
    ('status == "active"', True),
    ('company.name == "Acme Analytics"', True),
    ('company.industry == "software"', True),
    ('company.size == "51-200"', True),
    ('company.revenue == "$5M"', True),
    ('company.website == "https://acme.example"', True),
    ('company.country == "DE"', True),
    ('source.channel == "webinar"', True),
    ('source.campaign == "spring-launch"', True),
    ('source.medium == "email"', True),
    ('source.content == "hero-banner"', True),
    ('contact.firstName == "Ada"', True),
    ('contact.lastName == "Lovelace"', True),
    ('contact.email == "ada@acme.example"', True),
    ('contact.phone == "+14155550100"', True),
    ('contact.timezone == "Europe/Berlin"', True),
    ('custom.plan == "pro"', True),
    ('stage == "mql"', False),
    ('company.country == "FR"', False),
    ('contact.firstName == "ada"', False),
    ('custom.plan == "basic"', False),
]


@pytest.mark.parametrize(("text", "expected"), FIELD_CASES)
def test_known_field_reads_lead(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


def test_field_cases_cover_every_field() -> None:
    named = {text.split()[0] for text, _ in FIELD_CASES}
    assert named - {"custom.plan"} == set(FIELDS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('stage == "Engaged"', False),
        ('stage != "Engaged"', True),
        ('custom.plan == "PRO"', False),
        ('company.industry in ["Software"]', False),
        ('company.name contains "acme"', False),
        ('company.name contains "Acme"', True),
    ],
)
def test_text_comparison_is_case_sensitive(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("custom.budget >= 50000", True),
        ("custom.budget == 50000", True),
        ("custom.budget > 50000", False),
        ('custom.budget == "50000"', True),
        ("custom.seats == 12", True),
        ("custom.seats >= 10", True),
        ('custom.seats == "12"', False),
        ("custom.ratio < 1", True),
        ("custom.ratio == 0.5", True),
        ("custom.plan > 1", False),
        ("custom.plan == 1", False),
        ("custom.plan != 1", True),
        ("custom.trial == true", True),
        ("custom.trial != false", True),
        ("custom.trial == 1", False),
        ("custom.trial > 0", False),
        ('custom.trial == "true"', False),
        ("company.size > 10", False),
    ],
)
def test_values_of_other_types(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('company.country == "DE"', False),
        ('company.country != "DE"', True),
        ("custom.missing == 1", False),
        ("custom.missing != 1", True),
        ("custom.missing > 1", False),
        ("custom.missing >= 1", False),
        ("custom.missing < 1", False),
        ("custom.missing <= 1", False),
        ("custom.missing == false", False),
        ('custom.missing in ["a", 1]', False),
        ('custom.missing contains "a"', False),
        ("not custom.missing == 1", True),
        ("custom.note == 1", False),
        ("custom.note != 1", True),
        ('contact.timezone == "Europe/Berlin"', False),
        ("score >= 0", False),
        ("score != 0", True),
    ],
)
def test_missing_values(text: str, expected: bool) -> None:
    lead = {
        "stage": "new",
        "company": {"name": "Acme", "country": None},
        "contact": None,
        "customFields": {"note": None},
    }
    assert evaluate_text(text, replace(FACTS, lead=lead)) is expected


def test_lead_without_custom_fields() -> None:
    facts = replace(FACTS, lead={"score": 10})
    assert evaluate_text('custom.plan == "pro"', facts) is False
    assert evaluate_text('custom.plan != "pro"', facts) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('stage in ["new", "engaged"]', True),
        ('stage in ["new", "mql"]', False),
        ("stage in ['engaged']", True),
        ("score in [50, 52]", True),
        ("score in [50, 51]", False),
        ("score in [52.0]", True),
        ("custom.budget in [50000]", True),
        ("custom.trial in [true]", True),
        ('custom.seats in ["12"]', False),
        ('stage in ["engaged", 1, true]', True),
    ],
)
def test_membership(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('company.name contains "Analytics"', True),
        ('company.name contains ""', True),
        ('company.name contains "Globex"', False),
        ('contact.email contains "@acme.example"', True),
        ('custom.tags contains "vip"', True),
        ('custom.tags contains "vi"', False),
        ('custom.seats contains "1"', False),
        ('custom.trial contains "t"', False),
    ],
)
def test_contains(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


# --- calls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "previous", "expected"),
    [
        ("opened()", "m1", True),
        ('opened("previous")', "m1", True),
        ("clicked()", "m1", False),
        ('clicked("previous")', "m1", False),
        ("opened()", "m2", True),
        ("clicked()", "m2", True),
        ("opened()", "m3", False),
        ("clicked()", "m3", False),
        ("opened()", None, False),
        ("clicked()", None, False),
        ("opened()", "unknown", False),
        ('opened("any")', None, True),
        ('clicked("any")', None, True),
        ('opened("welcome")', "m3", True),
        ('clicked("welcome")', "m3", False),
        ('opened("case_study")', "m3", True),
        ('clicked("case_study")', "m3", True),
        ('opened("pricing-offer")', "m1", False),
        ('opened("never_sent")', "m1", False),
    ],
)
def test_message_calls(text: str, previous: str | None, expected: bool) -> None:
    assert evaluate_text(text, replace(FACTS, previous_message_id=previous)) is expected


def test_message_calls_without_messages() -> None:
    facts = replace(FACTS, messages=(), previous_message_id=None)
    for text in ("opened()", 'opened("any")', 'clicked("any")', 'opened("welcome")'):
        assert evaluate_text(text, facts) is False, text


def test_any_with_unopened_messages() -> None:
    unopened = (MessageFacts("m9", "welcome", opened=False, clicked=False),)
    facts = replace(FACTS, messages=unopened, previous_message_id="m9")
    assert evaluate_text('opened("any")', facts) is False
    assert evaluate_text('clicked("any")', facts) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event("page_view")', True),
        ('event("page_view", "7 days")', False),
        ('event("page_view", "P7D")', False),
        ('event("page_view", "8 days")', True),
        ('event("page_view", "9 days")', True),
        ('event("page_view", "P1W")', False),
        ('event("page_view", "2 weeks")', True),
        ('event("content_download", "7 days")', True),
        ('event("content_download", "167 hours")', False),
        ('event("pricing_page_view", "3 days")', True),
        ('event("pricing_page_view", "1 day")', False),
        ('event("pricing_page_view", "PT49H")', True),
        ('event("custom:demo_booked")', True),
        ('event("custom:demo_booked", "90 minutes")', True),
        ('event("custom:demo_booked", "30 minutes")', False),
        ('event("custom:other")', False),
        ('event("converted")', False),
        ('event("form_submission", "7 days")', False),
    ],
)
def test_event_call(text: str, expected: bool) -> None:
    assert evaluate_text(text) is expected


def test_event_call_counts_events_after_now() -> None:
    later = (EventFacts("converted", NOW + timedelta(minutes=1)),)
    facts = replace(FACTS, events=later)
    assert evaluate_text('event("converted")', facts) is True
    assert evaluate_text('event("converted", "1 hour")', facts) is True


@pytest.mark.parametrize(
    ("event_types", "expected"),
    [
        (("sms_reply",), True),
        (("replied",), True),
        (("page_view", "click", "open"), False),
        ((), False),
    ],
)
def test_replied_call(event_types: tuple[str, ...], expected: bool) -> None:
    events = tuple(EventFacts(kind, NOW - timedelta(days=30)) for kind in event_types)
    assert evaluate_text("replied()", replace(FACTS, events=events)) is expected


def test_calls_combine_with_fields() -> None:
    text = (
        'score >= 50 and (opened("any") or event("page_view", "7 days")) '
        "and not replied()"
    )
    assert evaluate_text(text) is True
    assert evaluate_text(text, replace(FACTS, lead=lead_with(score=49))) is False


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("opened()", Call(name="opened")),
        ('opened("previous")', Call(name="opened", args=("previous",))),
        ("clicked('any')", Call(name="clicked", args=("any",))),
        (
            'event("page_view", "7 days")',
            Call(name="event", args=("page_view", "7 days")),
        ),
        ("replied()", Call(name="replied")),
    ],
)
def test_calls_keep_arguments_as_written(text: str, tree: Call) -> None:
    assert parse_condition(text) == tree


# --- facts -------------------------------------------------------------------------


def test_facts_reject_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="Facts.now must be timezone-aware"):
        replace(FACTS, now=datetime(2025, 1, 1))
    with pytest.raises(
        ValueError, match="EventFacts.occurred_at must be timezone-aware"
    ):
        EventFacts("page_view", datetime(2025, 1, 1))


# --- describe and serialization ----------------------------------------------------


ROUND_TRIPS = [
    ("score >= 50", "score >= 50"),
    ("score>=50", "score >= 50"),
    ("score == -3", "score == -3"),
    ("score < 2.50", "score < 2.5"),
    (
        "custom.x == 100000000000000000000000.0",
        "custom.x == 100000000000000000000000.0",
    ),
    ("custom.x == 0.0000001", "custom.x == 0.0000001"),
    ("custom.x == -0.0", "custom.x == -0.0"),
    ("custom.x == 99999999999999999999999", "custom.x == 99999999999999999999999"),
    ("stage == 'mql'", 'stage == "mql"'),
    ("stage == 'say \"hi\"'", 'stage == "say \\"hi\\""'),
    ("stage == 'back\\\\slash'", 'stage == "back\\\\slash"'),
    ("stage == 'it\\'s'", 'stage == "it\'s"'),
    ("custom.flag != false", "custom.flag != false"),
    ("custom.and == true", "custom.and == true"),
    ("stage in ['new','engaged']", 'stage in ["new", "engaged"]'),
    ("custom.x in [1, 2.5, 'a', true]", 'custom.x in [1, 2.5, "a", true]'),
    ("company.name contains 'Acme'", 'company.name contains "Acme"'),
    ("opened()", "opened()"),
    ("opened( 'any' )", 'opened("any")'),
    ("clicked('welcome')", 'clicked("welcome")'),
    ("event('page_view','7 days')", 'event("page_view", "7 days")'),
    ("event('custom:demo booked')", 'event("custom:demo booked")'),
    ("replied()", "replied()"),
    ("not replied()", "not replied()"),
    ("not not replied()", "not not replied()"),
    ("not (score > 1 and score < 9)", "not (score > 1 and score < 9)"),
    ("not (score > 1 or score < 9)", "not (score > 1 or score < 9)"),
    ("(not score > 1) and score < 9", "not score > 1 and score < 9"),
    ("score > 1 or score < 9 and replied()", "score > 1 or score < 9 and replied()"),
    (
        "(score > 1 or score < 9) and replied()",
        "(score > 1 or score < 9) and replied()",
    ),
    ("(score > 1 and score < 9) or replied()", "score > 1 and score < 9 or replied()"),
    (
        "(score > 1 and score < 9) and replied()",
        "(score > 1 and score < 9) and replied()",
    ),
    ("score > 1 or (score < 9 or replied())", "score > 1 or (score < 9 or replied())"),
    ("((((score > 1))))", "score > 1"),
    (
        "score>=50 and(opened('any')or event('page_view','7 days'))and not replied()",
        'score >= 50 and (opened("any") or event("page_view", "7 days")) '
        "and not replied()",
    ),
]


@pytest.mark.parametrize(("text", "canonical"), ROUND_TRIPS)
def test_describe_round_trip(text: str, canonical: str) -> None:
    condition = parse_condition(text)
    assert describe(condition) == canonical
    assert parse_condition(describe(condition)) == condition


@pytest.mark.parametrize(
    "tree",
    [
        And(operands=(And(operands=(A, B)), C)),
        Or(operands=(A, Or(operands=(B, C)))),
        Not(operand=Or(operands=(A, Not(operand=And(operands=(B, C)))))),
        Membership(field="stage", values=('a\\"b', "it's")),
        Contains(field="custom.notes", value='quote " and backslash \\'),
        Comparison(field="custom.x", operator="<", value=1e-20),
        Comparison(field="custom.x", operator=">", value=1.5e300),
    ],
)
def test_describe_round_trip_built_trees(tree: Condition) -> None:
    assert parse_condition(describe(tree)) == tree


@pytest.mark.parametrize(("text", "_"), ROUND_TRIPS)
def test_condition_json_round_trip(text: str, _: str) -> None:
    condition = parse_condition(text)
    dumped = condition.model_dump(mode="json")
    assert CONDITION.validate_python(dumped) == condition
    assert CONDITION.validate_json(CONDITION.dump_json(condition)) == condition


def test_condition_json_shape() -> None:
    condition = parse_condition('score >= 50 and not stage in ["new", 1.0, true]')
    assert condition.model_dump(mode="json") == {
        "kind": "and",
        "operands": [
            {"kind": "compare", "field": "score", "operator": ">=", "value": 50},
            {
                "kind": "not",
                "operand": {
                    "kind": "in",
                    "field": "stage",
                    "values": ["new", 1.0, True],
                },
            },
        ],
    }


def test_condition_json_keeps_value_types() -> None:
    dumped = parse_condition("custom.x in [1, 1.0, true]").model_dump(mode="json")
    restored = CONDITION.validate_python(dumped)
    assert isinstance(restored, Membership)
    assert [type(value) for value in restored.values] == [int, float, bool]


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "compare", "field": "score", "operator": "=>", "value": 5},
        {"kind": "compare", "field": "score", "operator": ">", "value": None},
        {"kind": "call", "name": "eval", "args": []},
        {"kind": "and", "operands": [{"kind": "call", "name": "replied"}]},
        {"kind": "in", "field": "stage", "values": []},
        {"kind": "xor"},
        {"kind": "call", "name": "replied", "args": [], "extra": 1},
    ],
)
def test_condition_json_rejects_bad_shape(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CONDITION.validate_python(payload)


# --- rejections --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragments"),
    [
        ("", 0, ["The condition is empty", "score >= 50"]),
        ("   ", 0, ["The condition is empty"]),
        (
            "foo > 1",
            0,
            [
                "Unknown field 'foo' at character 1",
                "The fields are score,",
                "custom.<name>",
            ],
        ),
        ("scor > 1", 0, ["Unknown field 'scor'", "Did you mean 'score'?"]),
        (
            "score > 1 and company.city == 'x'",
            14,
            ["Unknown field 'company.city' at character 15"],
        ),
        ("contact.first_name == 'Ada'", 0, ["Did you mean 'contact.firstName'?"]),
        ("custom == 1", 0, ["Invalid custom field 'custom'", "custom.budget"]),
        ("custom.a.b == 1", 0, ["Invalid custom field 'custom.a.b'"]),
        ("opened", 0, ["'opened' at character 1 is a function", 'opened("any")']),
        ("company. == 1", 9, ["Expected a name after '.' at character 10"]),
        (
            "score => 50",
            6,
            ["Unknown operator '=>' at character 7", "Write '>=' instead"],
        ),
        ("score =< 50", 6, ["Unknown operator '=<'", "Write '<='"]),
        ("score = 50", 6, ["Unknown operator '=' at character 7", "Write '=='"]),
        ("score === 50", 6, ["Unknown operator '==='", "Write '=='"]),
        ("score <> 50", 6, ["Unknown operator '<>'", "Write '!='"]),
        ("score > 1 && replied()", 10, ["Unknown operator '&&'", "Write 'and'"]),
        ("score > 1 || replied()", 10, ["Unknown operator '||'", "Write 'or'"]),
        ("!replied()", 0, ["Unknown operator '!'", "Write 'not'"]),
        ("score ~ 5", 6, ["Unexpected character '~' at character 7"]),
        ("score > - 5", 8, ["Unexpected character '-'", "-5"]),
        ("café == 1", 3, ["Unexpected character 'é' at character 4"]),
        (
            "score 50",
            6,
            ["Expected an operator after 'score' at character 7", "found '50'"],
        ),
        (
            "score",
            5,
            ["Expected an operator after 'score'", "the end of the condition"],
        ),
        ("stage not in ['a']", 6, ["Unexpected 'not'", "not stage in [...]"]),
        (
            "frob()",
            0,
            [
                "Unknown function 'frob' at character 1",
                "opened(), clicked(), event(), replied()",
            ],
        ),
        ("Opened()", 0, ["Unknown function 'Opened'", "Did you mean 'opened'?"]),
        ("score()", 0, ["Unknown function 'score'"]),
        (
            'opened("any", "x")',
            14,
            ["opened() takes at most 1 argument, but got 2", "at character 15"],
        ),
        (
            'clicked("a", "b", "c")',
            13,
            ["clicked() takes at most 1 argument, but got 3"],
        ),
        ('replied("x")', 8, ["replied() takes no arguments, but got 1"]),
        (
            "event()",
            6,
            ["event() is missing its argument at character 7", 'event("<type>")'],
        ),
        (
            'event("page_view", "7 days", "x")',
            29,
            ["event() takes at most 2 arguments, but got 3"],
        ),
        ("event(page_view)", 6, ['Put text in quotes: "page_view"']),
        ("event(5)", 6, ["The arguments of event() are strings in quotes", "found 5"]),
        ("opened(true)", 7, ["The arguments of opened() are strings in quotes"]),
        (
            'event("page_view", "7 dayz")',
            19,
            [
                "Invalid window '7 dayz' for event() at character 20",
                "whole number and a unit",
            ],
        ),
        ('event("page_view", "P1M")', 19, ["Invalid window 'P1M'", "years and months"]),
        (
            'event("page_view", "400 days")',
            19,
            ["Invalid window '400 days'", "maximum is 365 days"],
        ),
        (
            'event("page_view", "0 hours")',
            19,
            ["window '0 hours' of event()", "is zero"],
        ),
        (
            'event("page_veiw")',
            6,
            [
                "Unknown event type 'page_veiw' at character 7",
                "Did you mean 'page_view'?",
                "custom:<name>",
            ],
        ),
        ('event("custom:")', 6, ["Invalid custom event type 'custom:'"]),
        ('event("custom: x")', 6, ["Invalid custom event type 'custom: x'"]),
        (
            'opened("Previous")',
            7,
            [
                "opened() takes 'previous', 'any' or a template name",
                "Did you mean 'previous'?",
            ],
        ),
        ('clicked("Welcome Email")', 8, ["'Welcome Email' at character 9 is neither"]),
        ('stage == "open', 9, ["Unterminated string at character 10", 'no closing "']),
        ("stage == 'open", 9, ["Unterminated string", "no closing '"]),
        ('stage == "ends in backslash\\', 9, ["Unterminated string"]),
        ('stage == "a\\nb"', 11, ["Unknown escape '\\n' at character 12"]),
        (
            "score > 5 x",
            10,
            ["Unexpected 'x' at character 11 after a complete condition"],
        ),
        ("score > 5)", 9, ["Unexpected ')' at character 10"]),
        ("score > 5 AND replied()", 10, ["Keywords are lower-case: write 'and'."]),
        ("score > 5 and", 13, ["Expected a comparison", "the end of the condition"]),
        ("and score > 5", 0, ["Expected a comparison", "found 'and'"]),
        ("NOT replied()", 0, ["Unknown field 'NOT'"]),
        (
            "(score > 5",
            10,
            [
                "Missing ')' for the '(' at character 1",
                "the end of the condition at character 11",
            ],
        ),
        (
            "score > 5 and (replied() or opened()",
            36,
            ["Missing ')' for the '(' at character 15"],
        ),
        ("stage == mql", 9, ["Expected a value", 'Put text in quotes: "mql".']),
        ("custom.x == True", 12, ["Keywords are lower-case: write 'true'."]),
        ("score >", 7, ["Expected a value", "the end of the condition"]),
        ("stage in 'a'", 9, ["Expected '[' to start the list of values for 'stage'"]),
        ("stage in []", 10, ["Expected a value", "found ']'"]),
        ("stage in ['a',]", 14, ["Expected a value"]),
        ("stage in ['a' 'b']", 14, ["Expected ',' or ']' in the list"]),
        (
            'event("page_view" "7 days")',
            18,
            ["Expected ',' or ')' in the call of event()"],
        ),
        ("score > 1.2.3", 8, ["Invalid number '1.2.3' at character 9"]),
        ("score > 1e5", 8, ["Invalid number '1e5'"]),
        ("score > 5.", 8, ["Invalid number '5.'"]),
        (
            'score > "high"',
            8,
            [
                "The operator '>' compares numbers",
                '"high" at character 9 is not a number',
            ],
        ),
        ("custom.x >= true", 12, ["The operator '>=' compares numbers"]),
        ('score == "high"', 9, ["'score' is a number", "score >= 50"]),
        ("score != true", 9, ["'score' is a number"]),
        ("score in [1, 'two']", 13, ["'score' is a number, but 'two'"]),
        (
            "company.industry contains 5",
            26,
            [
                "The keyword contains takes a string in quotes",
                "found 5 at character 27",
                'company.industry contains "5"',
            ],
        ),
        ("custom.tags contains true", 21, ["The keyword contains takes a string"]),
        ("score contains '5'", 6, ["'score' is a number, so contains at character 7"]),
        ("(" * 33 + "replied()" + ")" * 33, 32, ["more than 32 levels"]),
        ("not " * 33 + "replied()", 128, ["more than 32 levels"]),
    ],
)
def test_rejection(text: str, position: int, fragments: list[str]) -> None:
    error = parse_error(text)
    message = str(error)
    for fragment in fragments:
        assert fragment in message
    assert error.position == position
    assert message.endswith((".", "?"))


def test_rejection_is_value_error() -> None:
    error = parse_error("foo > 1")
    assert isinstance(error, ValueError)


def test_nesting_at_limit_parses() -> None:
    assert parse_condition("(" * 32 + "replied()" + ")" * 32) == Call(name="replied")
    assert parse_condition("not " * 32 + "replied()") is not None


def test_module_never_runs_text_as_code() -> None:
    source = Path(nurture.conditions.__file__).read_text()
    assert re.search(r"\b(eval|exec|compile)\b", source) is None


LEAF_TEXTS = [
    "score >= 50",
    "score in [1, 2.5]",
    'stage == "mql"',
    "custom.flag != true",
    "custom.ratio < -0.5",
    "company.name contains 'Ac\\'me'",
    'contact.email in ["a@b.example", 3]',
    "opened()",
    "clicked('any')",
    'opened("welcome")',
    'event("page_view", "7 days")',
    'event("custom:demo")',
    "replied()",
]
MUTATIONS = ["", " ", "(", ")", "not ", "and", "'", '"', "\\", "=", "[", ",", "5"]


def random_condition(generator: random.Random, depth: int) -> Condition:
    """Build a random valid tree from LEAF_TEXTS joined by and, or and not."""
    choice = generator.randrange(4) if depth else 0
    if choice == 0:
        return parse_condition(generator.choice(LEAF_TEXTS))
    if choice == 1:
        return Not(operand=random_condition(generator, depth - 1))
    operands = tuple(
        random_condition(generator, depth - 1) for _ in range(generator.randint(2, 3))
    )
    return And(operands=operands) if choice == 2 else Or(operands=operands)


def test_random_trees_round_trip() -> None:
    generator = random.Random(20250101)
    for _ in range(500):
        tree = random_condition(generator, depth=4)
        text = describe(tree)
        assert parse_condition(text) == tree, text
        assert CONDITION.validate_json(CONDITION.dump_json(tree)) == tree, text
        assert evaluate(tree, FACTS) is not evaluate(Not(operand=tree), FACTS), text


def test_mutated_text_parses_or_raises_condition_error() -> None:
    generator = random.Random(20250102)
    for _ in range(2000):
        text = describe(random_condition(generator, depth=3))
        start = generator.randrange(len(text))
        end = start + generator.randint(0, 2)
        text = text[:start] + generator.choice(MUTATIONS) + text[end:]
        try:
            condition = parse_condition(text)
        except ConditionError as error:
            assert 0 <= error.position <= len(text), text
            continue
        assert parse_condition(describe(condition)) == condition, text
        assert isinstance(evaluate(condition, FACTS), bool), text
