"""Validation of a submitted campaign, reporting every problem at once.

Field-level problems (types, durations, conditions, time zones) come from
the pydantic models. The journey's shape (duplicate ids, a `next` to a
missing step, unreachable steps, loops without a wait) and the templates are
checked here on the raw JSON, so both kinds are reported together.
"""

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from nurture.campaigns import TEMPLATE_NAME, CampaignSpec, step_id
from nurture.durations import parse_duration
from nurture.rendering import TemplateError, TemplateRenderer
from nurture.schemas import json_path

STEP_TYPES = ("send", "wait", "wait_for_event", "branch", "split", "exit")
# A lead with every field filled in, for rendering templates at submission.
SAMPLE_LEAD: dict[str, Any] = {
    "id": "sample",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+14155552671",
    "phoneStatus": "valid",
    "timezone": "Europe/London",
    "company": {
        "name": "Analytical Engines",
        "industry": "Technology",
        "size": "51-200",
        "revenue": "$5M-$10M",
        "website": "https://example.com",
        "country": "GB",
    },
    "source": {"channel": "website", "campaign": "c", "medium": "m", "content": "x"},
    "customFields": {},
    "enrichment": {},
    "score": 50,
    "scoreReasons": [],
    "stage": "new",
    "status": "active",
}
CHANNELS = ("email", "sms", "task")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    type: str


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        # A step's location carries the union tag after its index; drop it.
        if len(loc) >= 3 and loc[0] == "sequence" and loc[2] in STEP_TYPES:
            loc = loc[:2] + loc[3:]
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(Problem(json_path(loc), message, item["type"]))
    return problems


def _successors(step: dict[str, Any], default: str | None) -> list[tuple[str, Any]]:
    """Return the (field path, target id) pairs a raw step can continue to."""
    kind = step.get("type", "send")
    if kind == "exit":
        return []
    if kind == "branch":
        return [
            ("then", step.get("then") or default),
            ("else", step.get("else") or default),
        ]
    if kind == "wait_for_event":
        return [
            ("onEvent", step.get("onEvent") or default),
            ("onTimeout", step.get("onTimeout") or default),
        ]
    if kind == "split":
        variants = step.get("variants")
        if not isinstance(variants, list):
            return []
        return [
            (
                f"variants[{i}].next",
                (v.get("next") if isinstance(v, dict) else None) or default,
            )
            for i, v in enumerate(variants)
        ]
    return [("next", step.get("next") or default)]


def _waits(step: dict[str, Any]) -> bool:
    """Tell whether a raw step always lets time pass."""
    kind = step.get("type", "send")
    if kind in ("wait", "wait_for_event"):
        return True
    if kind == "send":
        try:
            return parse_duration(str(step.get("delay", "0 hours"))).total_seconds() > 0
        except ValueError:
            return True  # reported as a bad duration already
    return False


def _shape_problems(steps: list[Any]) -> list[Problem]:
    raw = [step if isinstance(step, dict) else {} for step in steps]
    legacy = _legacy_numbers(raw)
    if legacy:
        # Numbered steps out of order: the journey's shape follows from the
        # numbers, so fixing them comes first.
        return legacy
    problems: list[Problem] = []
    ids = [step_id(step, index) for index, step in enumerate(raw)]
    first_seen: dict[str, int] = {}
    for index, identifier in enumerate(ids):
        if identifier in first_seen:
            problems.append(
                Problem(
                    f"sequence[{index}].id",
                    f"duplicate step id {identifier!r}, also used by "
                    f"sequence[{first_seen[identifier]}]",
                    "duplicate_id",
                )
            )
        else:
            first_seen[identifier] = index
    known = set(ids)
    edges: dict[int, list[int]] = {}
    for index, step in enumerate(raw):
        default = ids[index + 1] if index + 1 < len(ids) else None
        edges[index] = []
        for field, target in _successors(step, default):
            if target is None:
                continue
            if not isinstance(target, str) or target not in known:
                problems.append(
                    Problem(
                        f"sequence[{index}].{field}",
                        f"{field} names step {target!r}, which does not exist; "
                        f"known steps: {', '.join(ids)}",
                        "unknown_step",
                    )
                )
                continue
            edges[index].append(first_seen[target])
    if len(first_seen) == len(ids):
        problems += _unreachable(raw, ids, edges)
        problems += _instant_loops(raw, ids, edges)
    return problems


def _unreachable(
    raw: list[dict[str, Any]], ids: list[str], edges: dict[int, list[int]]
) -> list[Problem]:
    if not raw:
        return []
    seen, stack = {0}, [0]
    while stack:
        for target in edges[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return [
        Problem(
            f"sequence[{index}]",
            f"step {ids[index]!r} can never be reached: no step leads to it",
            "unreachable_step",
        )
        for index in range(len(raw))
        if index not in seen
    ]


def _instant_loops(
    raw: list[dict[str, Any]], ids: list[str], edges: dict[int, list[int]]
) -> list[Problem]:
    """Find loops among steps that take no time: they would spin forever."""
    instant = {index for index, step in enumerate(raw) if not _waits(step)}
    problems, reported = [], set()
    for start in sorted(instant):
        path, on_path = [start], {start}
        cursor = [iter(edges[start])]
        while cursor:
            target = next(cursor[-1], None)
            if target is None:
                cursor.pop()
                on_path.discard(path.pop())
                continue
            if target not in instant:
                continue
            if target in on_path:
                loop = path[path.index(target) :]
                key = frozenset(loop)
                if key not in reported:
                    reported.add(key)
                    names = " -> ".join(ids[i] for i in [*loop, target])
                    problems.append(
                        Problem(
                            f"sequence[{min(loop)}]",
                            f"steps {names} form a loop with no wait in it; "
                            "add a wait step or a delay inside the loop",
                            "loop_without_wait",
                        )
                    )
                continue
            path.append(target)
            on_path.add(target)
            cursor.append(iter(edges[target]))
    return problems


def _legacy_numbers(raw: list[dict[str, Any]]) -> list[Problem]:
    numbers: list[int] = [
        step["step"] for step in raw if isinstance(step.get("step"), int)
    ]
    if not numbers or len(numbers) != len(raw):
        return []
    if numbers != sorted(set(numbers)):
        return [
            Problem(
                "sequence",
                f"step numbers must be unique and ascending, got {numbers}",
                "value_error",
            )
        ]
    return []


def _template_problems(steps: list[Any], renderer: TemplateRenderer) -> list[Problem]:
    problems = []
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("type", "send") != "send":
            continue
        label = step_id(step, index)
        raw = step.get("personalization")
        personalization = (
            {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        )
        expression_problems = []
        for key, expression in personalization.items():
            try:
                renderer.check_expression(expression)
            except TemplateError as error:
                expression_problems.append(
                    Problem(
                        f"sequence[{index}].personalization.{key}",
                        f"step {label}: {error}",
                        "template_invalid",
                    )
                )
        problems += expression_problems
        channel, template = step.get("channel"), step.get("template")
        # A malformed name is reported by the model; never look it up on disk.
        named = isinstance(template, str) and TEMPLATE_NAME.match(template)
        if channel not in CHANNELS or not named:
            continue
        try:
            renderer.check(str(channel), str(template))
            if not expression_problems:
                # A complete sample lead: whatever is still undefined must
                # come from the step's personalization, and does not.
                renderer.render(
                    str(channel), str(template), SAMPLE_LEAD, personalization
                )
        except TemplateError as error:
            problems.append(
                Problem(
                    f"sequence[{index}].template",
                    f"step {label}: {error}",
                    "template_invalid",
                )
            )
    return problems


def _winner_problems(raw: dict[str, Any], steps: list[Any]) -> list[Problem]:
    """Find winner rules in a campaign without goals, which they need to count."""
    if raw.get("goals"):
        return []
    return [
        Problem(
            f"sequence[{index}].winner",
            "a winner rule compares how often each variant reaches a campaign "
            "goal, so the campaign needs at least one entry in goals",
            "winner_without_goal",
        )
        for index, step in enumerate(steps)
        if isinstance(step, dict)
        and step.get("type") == "split"
        and step.get("winner") is not None
    ]


def check_campaign(
    raw: Any, renderer: TemplateRenderer
) -> tuple[CampaignSpec | None, list[Problem]]:
    """Validate a submitted campaign; return it, or None with every problem found."""
    problems: list[Problem] = []
    spec = None
    try:
        spec = CampaignSpec.model_validate(raw)
    except ValidationError as error:
        problems += _pydantic_problems(error)
    steps = raw.get("sequence") if isinstance(raw, dict) else None
    if isinstance(steps, list) and steps:
        problems += _shape_problems(steps)
        problems += _template_problems(steps, renderer)
        problems += _winner_problems(raw, steps)
    unique = list(dict.fromkeys(problems))
    return (spec if not unique else None), unique
