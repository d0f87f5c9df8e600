r"""Campaign conditions: the text marketers write, parsed, checked and evaluated.

A condition such as `score >= 50 and (opened("any") or event("page_view", "7 days"))`
is parsed by a recursive-descent parser into a tree of pydantic models
(`Condition`), never run as Python. The grammar, in which the keywords `and`,
`or`, `not`, `in`, `contains`, `true` and `false` are case-sensitive and
whitespace may appear between any two tokens:

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | call | comparison
    comparison := field OP literal
                | field "in" "[" literal ("," literal)* "]"
                | field "contains" STRING
    call       := NAME "(" [literal ("," literal)*] ")"
    field      := NAME ("." NAME)*
    literal    := NUMBER | STRING | "true" | "false"
    OP         := "==" | "!=" | ">" | ">=" | "<" | "<="
    NAME       := [A-Za-z_][A-Za-z0-9_]*
    STRING     := double- or single-quoted, with the escapes \" \' and \\ only
    NUMBER     := -?digits(.digits)?

Fields are those in `FIELDS`, or `custom.<name>` for a key of the lead's
customFields. A key that is not a NAME, such as "how-did-you-hear", cannot be
named. The calls are described in `FUNCTIONS`.

Evaluation against a lead's camelCase JSON (as `nurture.leads.LeadPublic` dumps it):

- A missing value (absent or None) makes every comparison, `in` and `contains`
  false, except `!=`, which is true.
- Text compares exactly, case included: `stage == "MQL"` is false for "mql".
- A number literal also matches text that is a NUMBER, such as "50000" from a
  web form, so `custom.budget >= 50000` works for form-submitted leads. Any
  other text never equals a number and is neither greater nor less than one.
- `true` and `false` match only JSON booleans, not the text "true".
- `contains` tests for a substring in text, or for an element of a list.
"""

import difflib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from operator import ge, gt, le, lt
from typing import Annotated, Any, Literal, TypeAlias, assert_never

from pydantic import BaseModel, ConfigDict, Field

from nurture.durations import parse_duration

FIELDS = (
    "score",
    "stage",
    "status",
    "company.name",
    "company.industry",
    "company.size",
    "company.revenue",
    "company.website",
    "company.country",
    "source.channel",
    "source.campaign",
    "source.medium",
    "source.content",
    "contact.firstName",
    "contact.lastName",
    "contact.email",
    "contact.phone",
    "contact.timezone",
)
NUMBER_FIELDS = ("score",)
CUSTOM_PREFIX = "custom"

FUNCTIONS = {
    "opened": 'opened() or opened("previous") for the previous message, '
    'opened("any") for any message of the enrollment, or opened("<template>")',
    "clicked": 'clicked() or clicked("previous") for the previous message, '
    'clicked("any") for any message of the enrollment, or clicked("<template>")',
    "event": 'event("<type>") for any event of that type, or '
    'event("<type>", "7 days") for one within that window before now',
    "replied": "replied() for an SMS reply or an email reply",
}
MESSAGE_SELECTORS = ("previous", "any")
EVENT_TYPES = (
    "page_view",
    "pricing_page_view",
    "demo_page_view",
    "content_download",
    "form_submission",
    "webinar_registration",
    "webinar_attendance",
    "open",
    "click",
    "sms_reply",
    "replied",
    "converted",
)
CUSTOM_EVENT_PREFIX = "custom:"
REPLY_EVENT_TYPES = ("sms_reply", "replied")
KEYWORDS = ("and", "or", "not", "in", "contains", "true", "false")
# Each "(" and each "not" is one level. The limit keeps parsing, evaluating and
# describing far from Python's recursion limit.
MAX_NESTING = 32

# The template-name pattern of `nurture.campaigns`, copied so that campaigns can
# import this module without an import cycle.
_TEMPLATE_NAME = r"[a-z0-9_][a-z0-9_\-]*"
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_DIGITS = frozenset(string.digits)
_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = _NAME_START | _DIGITS
_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    ">": gt,
    ">=": ge,
    "<": lt,
    "<=": le,
}
# Operators of other languages, each with what to write in its place.
_MISTAKES = {
    "===": "==",
    "!==": "!=",
    "=>": ">=",
    "=<": "<=",
    "<>": "!=",
    "&&": "and",
    "||": "or",
    "=": "==",
    "!": "not",
    "&": "and",
    "|": "or",
}
_PUNCTUATION = "()[],."
_QUOTES = "\"'"
_ESCAPABLE = "\"'\\"


class ConditionError(ValueError):
    """A condition that does not parse or breaks a rule.

    `position` is the 0-based offset of the offending character in the text,
    while the message counts characters from 1, as people do.
    """

    position: int

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


# --- the syntax tree ---------------------------------------------------------

Operator: TypeAlias = Literal["==", "!=", ">", ">=", "<", "<="]
FunctionName: TypeAlias = Literal["opened", "clicked", "event", "replied"]
# Strict, so that each JSON value comes back as the type it was: 1 stays an
# int, 1.0 a float and true a bool.
Value: TypeAlias = (
    Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | Annotated[str, Field(strict=True)]
)


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Comparison(_Node):
    """A field compared with a literal: `score >= 50`."""

    kind: Literal["compare"] = "compare"
    field: str
    operator: Operator
    value: Value


class Membership(_Node):
    """A field tested against a list of literals: `stage in ["new", "engaged"]`."""

    kind: Literal["in"] = "in"
    field: str
    values: tuple[Value, ...] = Field(min_length=1)


class Contains(_Node):
    """A substring or list-element test: `company.name contains "Acme"`."""

    kind: Literal["contains"] = "contains"
    field: str
    value: Annotated[str, Field(strict=True)]


class Call(_Node):
    """A call of one of `FUNCTIONS`, with its arguments as written."""

    kind: Literal["call"] = "call"
    name: FunctionName
    args: tuple[Annotated[str, Field(strict=True)], ...] = ()


class Not(_Node):
    kind: Literal["not"] = "not"
    operand: "Condition"


class And(_Node):
    kind: Literal["and"] = "and"
    operands: tuple["Condition", ...] = Field(min_length=2)


class Or(_Node):
    kind: Literal["or"] = "or"
    operands: tuple["Condition", ...] = Field(min_length=2)


# TypeAdapter(Condition).validate_python checks the shape of a tree, such as a
# Temporal payload. Only parse_condition checks fields, arguments and types.
Condition: TypeAlias = Annotated[
    Comparison | Membership | Contains | Call | Not | And | Or,
    Field(discriminator="kind"),
]
Not.model_rebuild()
And.model_rebuild()
Or.model_rebuild()


# --- facts about a lead ------------------------------------------------------


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got {value!r}")


@dataclass(frozen=True)
class MessageFacts:
    """One message of the enrollment and its engagement so far."""

    message_id: str
    template: str
    opened: bool
    clicked: bool


@dataclass(frozen=True)
class EventFacts:
    """One behavior event of the lead."""

    type: str
    occurred_at: datetime

    def __post_init__(self) -> None:
        _require_aware(self.occurred_at, "EventFacts.occurred_at")


@dataclass(frozen=True)
class Facts:
    """Everything a condition can read about one lead in one enrollment.

    `lead` is the lead's camelCase JSON. `event()` and `replied()` count every
    event passed in `events`, including any after `now`. Only the window of
    `event("<type>", "<duration>")` has a start, `now - duration`, inclusive.
    """

    lead: dict[str, Any]
    previous_message_id: str | None
    messages: tuple[MessageFacts, ...]
    events: tuple[EventFacts, ...]
    now: datetime

    def __post_init__(self) -> None:
        _require_aware(self.now, "Facts.now")


# --- tokens ------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    # kind is "name", "number", "string", "operator", "end" or a punctuation
    # character such as "(".
    kind: str
    text: str
    position: int
    value: Value | None = None

    def label(self) -> str:
        if self.kind == "end":
            return "the end of the condition"
        return repr(self.text)


def _at(position: int) -> str:
    return f"at character {position + 1}"


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, options, n=1)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        if char in _QUOTES:
            token = _read_string(text, position)
        elif char in _DIGITS or (
            char == "-" and _char_at(text, position + 1) in _DIGITS
        ):
            token = _read_number(text, position)
        elif char in _NAME_START:
            end = _skip(text, position, _NAME_CHARS)
            token = _Token("name", text[position:end], position)
        elif char in _PUNCTUATION:
            token = _Token(char, char, position)
        else:
            token = _read_operator(text, position)
        tokens.append(token)
        position = token.position + len(token.text)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> _Token:
    quote = text[start]
    chars: list[str] = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == quote:
            return _Token("string", text[start : position + 1], start, "".join(chars))
        if char == "\\":
            escaped = text[position + 1 : position + 2]
            if escaped and escaped not in _ESCAPABLE:
                raise ConditionError(
                    f"Unknown escape '\\{escaped}' {_at(position)}. Inside a string "
                    "a backslash may only precede \\\", \\' or \\\\ (a backslash).",
                    position,
                )
            chars.append(escaped)
            position += 2
            continue
        chars.append(char)
        position += 1
    raise ConditionError(
        f"Unterminated string {_at(start)}: the text {text[start:]!r} has no "
        f"closing {quote}. End the string with {quote}, and write \\{quote} for "
        "a quote inside it.",
        start,
    )


def _char_at(text: str, position: int) -> str:
    """Return the character at position, or "" past the end."""
    return text[position : position + 1]


def _skip(text: str, start: int, chars: frozenset[str]) -> int:
    """Return the position of the first character from start that is not in chars."""
    end = start
    while end < len(text) and text[end] in chars:
        end += 1
    return end


def _read_number(text: str, start: int) -> _Token:
    end = _skip(text, start + 1, _DIGITS)
    if _char_at(text, end) == "." and _char_at(text, end + 1) in _DIGITS:
        end = _skip(text, end + 1, _DIGITS)
    if _char_at(text, end) in _NAME_CHARS | {"."}:
        word_end = _skip(text, end, _NAME_CHARS | {"."})
        raise ConditionError(
            f"Invalid number {text[start:word_end]!r} {_at(start)}. Write digits "
            "with an optional decimal part, such as 50, -3 or 2.5.",
            start,
        )
    number = text[start:end]
    value: int | float = float(number) if "." in number else int(number)
    return _Token("number", number, start, value)


def _read_operator(text: str, start: int) -> _Token:
    for length in (3, 2, 1):
        chunk = text[start : start + length]
        if len(chunk) < length:
            continue
        if chunk in _OPERATORS:
            return _Token("operator", chunk, start)
        if chunk in _MISTAKES:
            raise ConditionError(
                f"Unknown operator {chunk!r} {_at(start)}. Write "
                f"{_MISTAKES[chunk]!r} instead.",
                start,
            )
    if text[start] == "-":
        message = "A minus sign must be followed by digits, such as -5."
    else:
        message = (
            "Conditions use field names, numbers, strings in quotes, the "
            "operators == != > >= < <=, the keywords and, or, not, in, contains, "
            "true, false, and the characters ( ) [ ] , ."
        )
    raise ConditionError(
        f"Unexpected character {text[start]!r} {_at(start)}. {message}", start
    )


# --- parsing -----------------------------------------------------------------


def parse_condition(text: str) -> Condition:
    """Parse and check a condition, raising ConditionError at its first mistake."""
    if not text.strip():
        raise ConditionError(
            'The condition is empty. Write a comparison such as "score >= 50", '
            'a call such as "opened()", or several joined with and / or.',
            0,
        )
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.nesting = 0

    def parse(self) -> Condition:
        condition = self._or()
        token = self._peek()
        if token.kind != "end":
            raise ConditionError(
                f"Unexpected {token.label()} {_at(token.position)} after a "
                "complete condition. Join conditions with and or or, or remove "
                f"the rest.{_keyword_hint(token)}",
                token.position,
            )
        return condition

    # Token access.

    def _peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def _advance(self) -> _Token:
        token = self._peek()
        self.index += 1
        return token

    def _at_keyword(self, keyword: str) -> bool:
        token = self._peek()
        return token.kind == "name" and token.text == keyword

    def _expect(self, kind: str, problem: str) -> _Token:
        token = self._peek()
        if token.kind != kind:
            raise ConditionError(
                f"{problem} {_at(token.position)}, but found {token.label()}.",
                token.position,
            )
        return self._advance()

    def _nest(self, token: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ConditionError(
                f"The condition nests more than {MAX_NESTING} levels of parentheses "
                f"and not {_at(token.position)}. Simplify it.",
                token.position,
            )

    # Grammar rules, loosest binding first.

    def _or(self) -> Condition:
        operands = [self._and()]
        while self._at_keyword("or"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(operands=tuple(operands))

    def _and(self) -> Condition:
        operands = [self._not()]
        while self._at_keyword("and"):
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(operands=tuple(operands))

    def _not(self) -> Condition:
        if not self._at_keyword("not"):
            return self._primary()
        self._nest(self._advance())
        operand = self._not()
        self.nesting -= 1
        return Not(operand=operand)

    def _primary(self) -> Condition:
        token = self._peek()
        if token.kind == "(":
            self._nest(self._advance())
            condition = self._or()
            closing = self._peek()
            if closing.kind != ")":
                raise ConditionError(
                    f"Missing ')' for the '(' {_at(token.position)}: found "
                    f"{closing.label()} {_at(closing.position)} instead.",
                    closing.position,
                )
            self._advance()
            self.nesting -= 1
            return condition
        if token.kind == "name" and token.text not in KEYWORDS:
            if self._peek(1).kind == "(":
                return self._call()
            return self._comparison()
        raise ConditionError(
            f"Expected a comparison such as score >= 50 or a call such as "
            f"opened() {_at(token.position)}, but found {token.label()}."
            f"{_keyword_hint(token)}",
            token.position,
        )

    def _field(self) -> tuple[str, _Token]:
        start = self._advance()
        parts = [start.text]
        while self._peek().kind == ".":
            self._advance()
            parts.append(self._expect("name", "Expected a name after '.'").text)
        field = ".".join(parts)
        _check_field(field, parts, start)
        return field, start

    def _literal(self) -> tuple[Value, _Token]:
        token = self._advance()
        if token.kind in ("number", "string"):
            assert token.value is not None
            return token.value, token
        if token.kind == "name" and token.text in ("true", "false"):
            return token.text == "true", token
        hint = _keyword_hint(token)
        if token.kind == "name" and not hint:
            hint = f' Put text in quotes: "{token.text}".'
        raise ConditionError(
            "Expected a value (a number, a string in quotes, true or false) "
            f"{_at(token.position)}, but found {token.label()}.{hint}",
            token.position,
        )

    def _comparison(self) -> Condition:
        field, _ = self._field()
        token = self._advance()
        if token.kind == "operator":
            value, value_token = self._literal()
            _check_comparison(field, token.text, value, value_token)
            return Comparison(field=field, operator=token.text, value=value)
        if token.kind == "name" and token.text == "in":
            return self._membership(field)
        if token.kind == "name" and token.text == "contains":
            return self._contains(field, token)
        if token.kind == "name" and token.text == "not":
            raise ConditionError(
                f"Unexpected 'not' {_at(token.position)}: not goes before the "
                f"whole comparison, as in not {field} in [...].",
                token.position,
            )
        raise ConditionError(
            f"Expected an operator after {field!r} {_at(token.position)}, but "
            f"found {token.label()}. Use ==, !=, >, >=, <, <=, in or "
            f"contains.{_keyword_hint(token)}",
            token.position,
        )

    def _membership(self, field: str) -> Membership:
        self._expect("[", f"Expected '[' to start the list of values for {field!r}")
        values = []
        while True:
            value, token = self._literal()
            _check_comparison(field, "in", value, token)
            values.append(value)
            if self._peek().kind != ",":
                break
            self._advance()
        self._expect("]", "Expected ',' or ']' in the list")
        return Membership(field=field, values=tuple(values))

    def _contains(self, field: str, keyword: _Token) -> Contains:
        if field in NUMBER_FIELDS:
            raise ConditionError(
                f"{field!r} is a number, so contains {_at(keyword.position)} does "
                f"not apply to it. Compare it with ==, !=, >, >=, < or <=.",
                keyword.position,
            )
        value, token = self._literal()
        if not isinstance(value, str):
            raise ConditionError(
                "The keyword contains takes a string in quotes, but found "
                f"{token.text} {_at(token.position)}. Write it as {field} contains "
                f'"{token.text}".',
                token.position,
            )
        return Contains(field=field, value=value)

    def _call(self) -> Call:
        name_token = self._advance()
        name = name_token.text
        if name not in FUNCTIONS:
            raise ConditionError(
                f"Unknown function {name!r} {_at(name_token.position)}."
                f"{_did_you_mean(name, list(FUNCTIONS))} The functions are "
                f"{', '.join(f'{known}()' for known in FUNCTIONS)}.",
                name_token.position,
            )
        self._advance()
        args: list[tuple[Value, _Token]] = []
        if self._peek().kind != ")":
            args.append(self._literal())
            while self._peek().kind == ",":
                self._advance()
                args.append(self._literal())
        closing = self._expect(")", f"Expected ',' or ')' in the call of {name}()")
        _check_arguments(name, args, closing)
        return Call(name=name, args=tuple(arg for arg, _ in args))


def _keyword_hint(token: _Token) -> str:
    lowered = token.text.lower()
    if token.kind == "name" and lowered in KEYWORDS and token.text != lowered:
        return f" Keywords are lower-case: write {lowered!r}."
    return ""


# --- checks ------------------------------------------------------------------


def _check_field(field: str, parts: list[str], start: _Token) -> None:
    if parts[0] == CUSTOM_PREFIX and len(parts) == 2:
        return
    if parts[0] == CUSTOM_PREFIX:
        raise ConditionError(
            f"Invalid custom field {field!r} {_at(start.position)}. Write one name "
            "after custom., such as custom.budget for the customFields key budget.",
            start.position,
        )
    if field in FIELDS:
        return
    if field in FUNCTIONS:
        raise ConditionError(
            f"{field!r} {_at(start.position)} is a function, so call it with "
            f"parentheses: {FUNCTIONS[field]}.",
            start.position,
        )
    raise ConditionError(
        f"Unknown field {field!r} {_at(start.position)}."
        f"{_did_you_mean(field, FIELDS)} The fields are {', '.join(FIELDS)}, "
        "and custom.<name> for a key of the lead's customFields.",
        start.position,
    )


def _check_comparison(field: str, operator: str, value: Value, token: _Token) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if operator in _ORDERING and not is_number:
        raise ConditionError(
            f"The operator {operator!r} compares numbers, but {token.text} "
            f"{_at(token.position)} is not a number. Compare with a number such "
            "as 50, or use == or != for text and true or false.",
            token.position,
        )
    if field in NUMBER_FIELDS and not is_number:
        raise ConditionError(
            f"{field!r} is a number, but {token.text} {_at(token.position)} is "
            f"not. Compare it with a number, such as {field} >= 50.",
            token.position,
        )


def _check_arguments(
    name: str, args: list[tuple[Value, _Token]], closing: _Token
) -> None:
    limits = {"opened": (0, 1), "clicked": (0, 1), "event": (1, 2), "replied": (0, 0)}
    min_count, max_count = limits[name]
    if len(args) > max_count:
        extra = args[max_count][1]
        allowed = f"at most {max_count}" if max_count else "no"
        raise ConditionError(
            f"{name}() takes {allowed} argument{'' if max_count == 1 else 's'}, but "
            f"got {len(args)}, the extra one {_at(extra.position)}. "
            f"Write {FUNCTIONS[name]}.",
            extra.position,
        )
    if len(args) < min_count:
        raise ConditionError(
            f"{name}() is missing its argument {_at(closing.position)}. "
            f"Write {FUNCTIONS[name]}.",
            closing.position,
        )
    for value, token in args:
        if not isinstance(value, str):
            raise ConditionError(
                f"The arguments of {name}() are strings in quotes, but found "
                f"{token.text} {_at(token.position)}. Write {FUNCTIONS[name]}.",
                token.position,
            )
    if name in ("opened", "clicked") and args:
        _check_message_selector(name, args[0])
    if name == "event":
        _check_event_type(args[0])
        if len(args) == 2:
            _check_window(args[1])


def _check_message_selector(name: str, arg: tuple[Value, _Token]) -> None:
    value, token = arg
    assert isinstance(value, str)
    if value in MESSAGE_SELECTORS or re.fullmatch(_TEMPLATE_NAME, value):
        return
    suggestion = _did_you_mean(value.lower(), MESSAGE_SELECTORS)
    raise ConditionError(
        f"{name}() takes 'previous', 'any' or a template name, but {value!r} "
        f"{_at(token.position)} is neither.{suggestion} Template names use "
        "lower-case letters, digits, _ and -.",
        token.position,
    )


def _check_event_type(arg: tuple[Value, _Token]) -> None:
    value, token = arg
    assert isinstance(value, str)
    if value in EVENT_TYPES:
        return
    if value.startswith(CUSTOM_EVENT_PREFIX):
        custom_name = value.removeprefix(CUSTOM_EVENT_PREFIX)
        if custom_name and custom_name == custom_name.strip():
            return
        raise ConditionError(
            f"Invalid custom event type {value!r} {_at(token.position)}. Write a "
            "name after custom: without surrounding spaces, such as "
            '"custom:demo_booked".',
            token.position,
        )
    raise ConditionError(
        f"Unknown event type {value!r} {_at(token.position)}."
        f"{_did_you_mean(value, EVENT_TYPES)} The event types are "
        f"{', '.join(EVENT_TYPES)}, and custom:<name> for a custom event.",
        token.position,
    )


def _check_window(arg: tuple[Value, _Token]) -> None:
    value, token = arg
    assert isinstance(value, str)
    try:
        window = parse_duration(value)
    except ValueError as error:
        reason = str(error).removeprefix(f"invalid duration {value!r}: ")
        raise ConditionError(
            f"Invalid window {value!r} for event() {_at(token.position)}: {reason}.",
            token.position,
        ) from None
    if window <= timedelta(0):
        raise ConditionError(
            f"The window {value!r} of event() {_at(token.position)} is zero, so "
            'no event can fall in it. Give a longer one, such as "7 days".',
            token.position,
        )


# --- describing ----------------------------------------------------------------


def describe(condition: Condition) -> str:
    """Return the canonical text of a condition.

    The text of any tree that obeys parse_condition's rules parses back to the
    same tree. Strings use double quotes. Parentheses appear only where
    precedence needs them and around an and nested in an and, or an or nested
    in an or, which text without them would flatten.
    """
    match condition:
        case Comparison():
            value = _literal_text(condition.value)
            return f"{condition.field} {condition.operator} {value}"
        case Membership():
            values = ", ".join(_literal_text(value) for value in condition.values)
            return f"{condition.field} in [{values}]"
        case Contains():
            return f"{condition.field} contains {_quote(condition.value)}"
        case Call():
            return f"{condition.name}({', '.join(map(_quote, condition.args))})"
        case Not():
            return "not " + _operand_text(condition.operand, (And, Or))
        case And():
            parts = (_operand_text(part, (And, Or)) for part in condition.operands)
            return " and ".join(parts)
        case Or():
            return " or ".join(
                _operand_text(part, (Or,)) for part in condition.operands
            )
        case _:
            assert_never(condition)


def _operand_text(condition: Condition, grouped: tuple[type, ...]) -> str:
    text = describe(condition)
    return f"({text})" if isinstance(condition, grouped) else text


def _literal_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr would write 1e+23, which the grammar has no form for.
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else text + ".0"
    return _quote(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- evaluating ----------------------------------------------------------------


def evaluate(condition: Condition, facts: Facts) -> bool:
    """Tell whether the facts meet the condition.

    The tree must obey the rules that parse_condition checks. A hand-built tree
    that breaks them, such as event() without a type, may raise.
    """
    match condition:
        case Comparison():
            actual = _lookup(facts.lead, condition.field)
            return _compare(actual, condition.operator, condition.value)
        case Membership():
            actual = _lookup(facts.lead, condition.field)
            return actual is not None and any(
                _equals(actual, value) for value in condition.values
            )
        case Contains():
            return _contains(_lookup(facts.lead, condition.field), condition.value)
        case Call():
            return _evaluate_call(condition, facts)
        case Not():
            return not evaluate(condition.operand, facts)
        case And():
            return all(evaluate(part, facts) for part in condition.operands)
        case Or():
            return any(evaluate(part, facts) for part in condition.operands)
        case _:
            assert_never(condition)


def _lookup(lead: Mapping[str, Any], field: str) -> Any:
    section, _, key = field.partition(".")
    if not key:
        return lead.get(section)
    container = lead.get("customFields" if section == CUSTOM_PREFIX else section)
    return container.get(key) if isinstance(container, Mapping) else None


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and re.fullmatch(_NUMBER, value.strip()):
        text = value.strip()
        return float(text) if "." in text else int(text)
    return None


def _equals(actual: Any, expected: Value) -> bool:
    if isinstance(expected, bool):
        return isinstance(actual, bool) and actual == expected
    if isinstance(expected, int | float):
        number = _as_number(actual)
        return number is not None and number == expected
    return isinstance(actual, str) and actual == expected


def _compare(actual: Any, operator: str, expected: Value) -> bool:
    if actual is None:
        return operator == "!="
    if operator == "==":
        return _equals(actual, expected)
    if operator == "!=":
        return not _equals(actual, expected)
    number = _as_number(actual)
    if number is None or isinstance(expected, bool | str):
        return False
    return _ORDERING[operator](number, expected)


def _contains(actual: Any, expected: str) -> bool:
    if isinstance(actual, str):
        return expected in actual
    if isinstance(actual, list | tuple):
        return expected in actual
    return False


def _evaluate_call(call: Call, facts: Facts) -> bool:
    match call.name:
        case "opened":
            messages = _select_messages(call.args, facts)
            return any(message.opened or message.clicked for message in messages)
        case "clicked":
            messages = _select_messages(call.args, facts)
            return any(message.clicked for message in messages)
        case "event":
            return _has_event(call.args, facts)
        case "replied":
            return any(event.type in REPLY_EVENT_TYPES for event in facts.events)
        case _:
            assert_never(call.name)


def _select_messages(args: Sequence[str], facts: Facts) -> list[MessageFacts]:
    selector = args[0] if args else "previous"
    if selector == "previous":
        return [m for m in facts.messages if m.message_id == facts.previous_message_id]
    if selector == "any":
        return list(facts.messages)
    return [m for m in facts.messages if m.template == selector]


def _has_event(args: Sequence[str], facts: Facts) -> bool:
    event_type = args[0]
    since = facts.now - parse_duration(args[1]) if len(args) > 1 else None
    return any(
        event.type == event_type and (since is None or event.occurred_at >= since)
        for event in facts.events
    )
