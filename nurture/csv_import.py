"""CSV lead import: stream a file's rows into validated leads or rejections.

The module only parses and validates. It touches no database and no web
framework, and it reads the file one line at a time, so memory stays flat
whatever the file's size.
"""

import codecs
import csv
import difflib
import io
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nurture.consent import ConsentCapture
from nurture.leads import MAX_TEXT, CompanyIn, ContactIn, SourceIn
from nurture.outcomes import OutcomeIn
from nurture.schemas import StrictCamelModel, json_path

ACTIVITY_FIELDS = (
    "websiteVisits",
    "pagesPerVisit",
    "timeOnSiteSeconds",
    "pricingPageViews",
    "demoPageViews",
    "contentDownloads",
    "webinarRegistrations",
    "webinarAttendances",
    "formSubmissions",
    "emailOpens",
    "emailClicks",
    "smsReplies",
)
# Every other activity field is a count and must be a whole number.
_FRACTIONAL_ACTIVITY = frozenset({"pagesPerVisit", "timeOnSiteSeconds"})

# Targets that take one column each, and where their value goes in ImportedLead.
_FIELD_TARGETS: dict[str, tuple[str, ...]] = {
    "contact.firstName": ("contact", "firstName"),
    "contact.lastName": ("contact", "lastName"),
    "contact.email": ("contact", "email"),
    "contact.phone": ("contact", "phone"),
    "contact.timezone": ("contact", "timezone"),
    "contact.jobTitle": ("contact", "jobTitle"),
    "company.name": ("company", "name"),
    "company.industry": ("company", "industry"),
    "company.size": ("company", "size"),
    "company.revenue": ("company", "revenue"),
    "company.website": ("company", "website"),
    "company.country": ("company", "country"),
    "company.growthStage": ("company", "growthStage"),
    "company.technologies": ("company", "technologies"),
    "source.channel": ("source", "channel"),
    "source.campaign": ("source", "campaign"),
    "source.medium": ("source", "medium"),
    "source.content": ("source", "content"),
    "externalId": ("externalId",),
    "outcome": ("outcome", "outcome"),
    "outcomeValue": ("outcome", "value"),
    "outcomeCurrency": ("outcome", "currency"),
    "outcomeAt": ("outcome", "occurredAt"),
    "consent.email": ("consent", "email"),
    "consent.sms": ("consent", "sms"),
    "consent.text": ("consent", "text"),
    "consent.at": ("consent", "at"),
}
_IDENTIFIER_TARGETS = ("contact.email", "contact.phone", "externalId")
_OUTCOME_DETAIL_TARGETS = ("outcomeValue", "outcomeCurrency", "outcomeAt")
_VALID_TARGETS = (
    *_FIELD_TARGETS,
    *(f"activity.{name}" for name in ACTIVITY_FIELDS),
    "custom.<name>",
    "ignore",
)

# Plain decimals only: no thousands separators, exponents, units, NaN or inf.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")

# Bounds the memory that one line can take, for example when a file without line
# breaks (a spreadsheet or an image) is uploaded by mistake.
_MAX_LINE = 1 << 20

_REPLACEMENT = "\ufffd"
# PostgreSQL cannot store NUL in text (manual, "Character Types"), so a cell with
# one would fail at insert.
_NUL = "\x00"


def _target_problem(target: str) -> str | None:
    """Return why `target` is not a valid mapping target, or None if it is."""
    if target in _FIELD_TARGETS or target == "ignore":
        return None
    if target.startswith("custom."):
        if target.removeprefix("custom.").strip():
            return None
        return "custom field target 'custom.' needs a name, e.g. custom.leadOrigin"
    if target.startswith("activity."):
        if target.removeprefix("activity.") in ACTIVITY_FIELDS:
            return None
    guess = difflib.get_close_matches(target, _VALID_TARGETS, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"unknown target {target!r}{hint}: use one of {', '.join(_VALID_TARGETS)}"


def _check_target(target: str) -> str:
    problem = _target_problem(target)
    if problem:
        raise ValueError(problem)
    return target


class ImportMapping(StrictCamelModel):
    """Column targets of a CSV file and the settings for reading it."""

    columns: dict[str, Annotated[str, AfterValidator(_check_target)]] = Field(
        default_factory=dict,
        description="CSV header name -> target, e.g. {'E-mail': 'contact.email'}.",
    )
    unmapped: Literal["custom", "ignore"] = Field(
        "custom",
        description="Columns left out of `columns`: kept as custom fields under "
        "their header name, or dropped.",
    )
    null_values: list[str] = Field(
        default_factory=list,
        description='Cell values that mean missing, e.g. "Select", matched '
        "exactly after trimming spaces. An empty cell is always missing.",
    )
    converted_values: list[str] = Field(
        default_factory=lambda: ["1", "true", "yes", "converted", "won"],
        description="Outcome cell values that mean converted (case-insensitive).",
    )
    lost_values: list[str] = Field(
        default_factory=lambda: ["0", "false", "no", "lost"],
        description="Outcome cell values that mean lost (case-insensitive).",
    )
    delimiter: str = Field(",", description="Cell separator, one character.")
    encoding: str = Field(
        "utf-8", description="Python codec name. With utf-8, a leading BOM is skipped."
    )

    @field_validator("delimiter")
    @classmethod
    def _check_delimiter(cls, value: str) -> str:
        if len(value) != 1 or value in '\r\n"':
            raise ValueError(
                f"invalid delimiter {value!r}: use one character other than a "
                'quote or a line break, e.g. "," or ";" or "\\t"'
            )
        return value

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, value: str) -> str:
        try:
            "\n".encode(value)
        except LookupError:
            raise ValueError(
                f"unknown text encoding {value!r}: use a Python codec name such "
                "as utf-8, latin-1, cp1252 or utf-16"
            ) from None
        return value

    @model_validator(mode="after")
    def _check_outcome_values(self) -> "ImportMapping":
        converted = {value.strip().lower() for value in self.converted_values}
        lost = {value.strip().lower() for value in self.lost_values}
        both = sorted(converted & lost)
        if both:
            raise ValueError(
                "convertedValues and lostValues both contain "
                f"{', '.join(map(repr, both))}: keep each value in one list only"
            )
        return self


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return value


class ImportedLead(StrictCamelModel):
    """A lead read from one CSV row.

    Contact, company and source go through the API's own models, so they are
    validated and normalized as the API does it. Unlike LeadCreate, an
    externalId alone is enough to identify the lead.
    """

    external_id: str | None = Field(
        None, max_length=MAX_TEXT, description="The source system's id for the lead."
    )
    contact: ContactIn = Field(default_factory=ContactIn)
    company: CompanyIn = Field(default_factory=CompanyIn)
    source: SourceIn = Field(default_factory=SourceIn)
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    activity: dict[str, float] = Field(default_factory=dict)
    outcome: OutcomeIn | None = None
    consent: ConsentCapture | None = None

    _strip_external_id = field_validator("external_id", mode="before")(_strip)

    @field_validator("activity")
    @classmethod
    def _check_activity(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ACTIVITY_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown activity field {', '.join(unknown)}: use "
                f"{', '.join(ACTIVITY_FIELDS)}"
            )
        # `not >= 0` also catches NaN.
        invalid = sorted(key for key, number in value.items() if not number >= 0)
        if invalid:
            raise ValueError(f"activity {', '.join(invalid)} must be 0 or more")
        return value

    @model_validator(mode="after")
    def _require_identifier(self) -> "ImportedLead":
        if not (self.contact.email or self.contact.phone or self.external_id):
            raise PydanticCustomError(
                "missing_identifier",
                "the lead has no email, phone or externalId: a lead needs at "
                "least one of them so that it can be found again",
            )
        return self


@dataclass
class AcceptedRow:
    """A data row that became a valid lead, with the line on which it starts."""

    line: int
    lead: ImportedLead


@dataclass
class RejectedRow:
    """A data row that failed, with one {path, message, type} entry per problem.

    The path is the CSV header name of the column at fault, or "(row)".
    """

    line: int
    errors: list[dict[str, str]]


class MappingError(ValueError):
    """Problems with the mapping or the header, found before any row is read."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(error["message"] for error in errors))
        self.errors = errors


def _error(path: str, message: str, kind: str = "value_error") -> dict[str, str]:
    return {"path": path, "message": message, "type": kind}


def _activity_parser(name: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = _parse_decimal(value)
        if number < 0:
            raise ValueError(f"invalid value {value!r}: {name} cannot be negative")
        if not math.isfinite(number):
            raise ValueError(f"invalid value {value!r}: the number is too large")
        if name not in _FRACTIONAL_ACTIVITY and not number.is_integer():
            raise ValueError(
                f"invalid value {value!r}: {name} is a count, so write a whole "
                "number such as 3 or 3.0"
            )
        return number

    return parse


def _parse_decimal(value: str) -> float:
    if not _DECIMAL.fullmatch(value):
        raise ValueError(
            f"invalid number {value!r}: write a plain decimal such as 1234 or "
            "1234.5, without thousands separators, units or exponents"
        )
    return float(value)


def _check_amount(value: str) -> str:
    _parse_decimal(value)
    # A string, so that OutcomeIn parses it as an exact Decimal.
    return value


def _outcome_parser(mapping: ImportMapping) -> Callable[[str], str]:
    converted = {value.strip().lower() for value in mapping.converted_values}
    lost = {value.strip().lower() for value in mapping.lost_values}

    def parse(value: str) -> str:
        key = value.lower()
        if key in converted:
            return "converted"
        if key in lost:
            return "lost"
        raise ValueError(
            f"unknown outcome {value!r}: use one of "
            f"{', '.join(mapping.converted_values)} for converted, or "
            f"{', '.join(mapping.lost_values)} for lost (case does not matter), "
            "or leave the cell empty when there is no outcome yet"
        )

    return parse


def _split_list(value: str) -> list[str]:
    """Read a list cell such as "HubSpot; Salesforce" (semicolons or |)."""
    return [item.strip() for item in re.split(r"[;|]", value) if item.strip()]


_YES = frozenset({"yes", "y", "true", "1", "opted_in", "opt-in", "subscribed"})
_NO = frozenset({"no", "n", "false", "0", "opted_out", "opt-out", "unsubscribed"})


def _parse_consent(value: str) -> bool:
    """Read a consent cell: yes/true/1/opted_in, or no/false/0/opted_out."""
    word = value.strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ValueError(
        f"invalid consent {value!r}: write yes or no (also true/false, 1/0, "
        "opted_in/opted_out), or leave the cell empty when it is unknown"
    )


def _parse_timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid date {value!r}: use ISO 8601, e.g. 2024-05-01 or "
            "2024-05-01T14:30:00+02:00 (a date alone means midnight UTC, and a "
            "time without a zone means UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _parser_for(target: str, mapping: ImportMapping) -> Callable[[str], Any] | None:
    """Return the function that converts a target's cell text, or None to keep it."""
    if target.startswith("activity."):
        return _activity_parser(target.removeprefix("activity."))
    parsers: dict[str, Callable[[str], Any]] = {
        "company.technologies": _split_list,
        "outcome": _outcome_parser(mapping),
        "outcomeValue": _check_amount,
        "outcomeCurrency": str.upper,
        "outcomeAt": _parse_timestamp,
        "consent.email": _parse_consent,
        "consent.sms": _parse_consent,
        "consent.at": _parse_timestamp,
    }
    return parsers.get(target)


def _location(target: str) -> tuple[str, ...]:
    """Return where a target's value goes in the ImportedLead input."""
    if target.startswith("custom."):
        return ("customFields", target.removeprefix("custom."))
    if target.startswith("activity."):
        return ("activity", target.removeprefix("activity."))
    return _FIELD_TARGETS[target]


@dataclass(frozen=True)
class _Column:
    index: int
    header: str
    target: str
    section: str | None  # None for a top-level field such as externalId
    key: str
    parse: Callable[[str], Any] | None


@dataclass
class _Plan:
    """Column handling for the rows of one file, derived once from its header."""

    width: int
    columns: list[_Column]
    unnamed: list[int]
    null_values: frozenset[str]
    header_at: dict[tuple[str, ...], str] = field(default_factory=dict)
    identifier_headers: list[str] = field(default_factory=list)


def _missing_column(name: str, names: list[str], delimiter: str) -> str:
    message = f"column {name!r} is not in the header"
    if len(names) == 1:
        other = next((mark for mark in ";,\t|" if mark in names[0]), None)
        if other and other != delimiter:
            return (
                f"{message}, which has a single column: if cells are separated "
                f"by {other!r}, set delimiter to {other!r}"
            )
    lowered = {header.lower(): header for header in names}
    if name.lower() in lowered:
        return f"{message}: did you mean {lowered[name.lower()]!r}?"
    guess = difflib.get_close_matches(name, names, n=1)
    if guess:
        return f"{message}: did you mean {guess[0]!r}?"
    return f"{message}, whose columns are {', '.join(map(repr, names))}"


def _plan(header: list[str], mapping: ImportMapping) -> _Plan:
    """Match the header against the mapping, raising MappingError on every problem."""
    names = [cell.strip() for cell in header]
    names[0] = names[0].removeprefix("\ufeff").strip()
    if any(_NUL in name for name in names):
        raise MappingError(
            [
                _error(
                    "(header)",
                    f"the header contains NUL characters, so the file is not "
                    f"{mapping.encoding} text: if it is UTF-16, set encoding to "
                    "utf-16",
                    "nul_character",
                )
            ]
        )
    counts = Counter(name for name in names if name)
    errors = [
        _error(
            "(header)",
            f"column name {name!r} appears {count} times in the header: give "
            "each column a unique name",
            "duplicate_column",
        )
        for name, count in counts.items()
        if count > 1
    ]
    for name, target in mapping.columns.items():
        path = json_path(("columns", name))
        problem = _target_problem(target)
        if problem:
            errors.append(_error(path, problem, "unknown_target"))
        if name not in counts:
            message = _missing_column(name, list(counts), mapping.delimiter)
            errors.append(_error(path, message, "column_not_found"))

    plan = _Plan(
        width=len(names),
        columns=[],
        unnamed=[],
        null_values=frozenset(value.strip() for value in mapping.null_values),
    )
    owners: dict[str, list[str]] = {}
    for index, name in enumerate(names):
        if not name:
            plan.unnamed.append(index)
            continue
        if counts[name] > 1:
            continue
        if name in mapping.columns:
            target = mapping.columns[name]
        elif mapping.unmapped == "custom":
            target = f"custom.{name}"
        else:
            continue
        if target == "ignore" or _target_problem(target):
            continue
        owners.setdefault(target, []).append(name)
        location = _location(target)
        section = location[0] if len(location) == 2 else None
        parse = _parser_for(target, mapping)
        plan.columns.append(_Column(index, name, target, section, location[-1], parse))
        plan.header_at[location] = name
        if target in _IDENTIFIER_TARGETS:
            plan.identifier_headers.append(name)

    errors += _conflicts(owners, mapping)
    if errors:
        raise MappingError(errors)
    return plan


def _conflicts(
    owners: dict[str, list[str]], mapping: ImportMapping
) -> list[dict[str, str]]:
    """List targets fed by several columns, and mappings that no row can satisfy."""
    errors = []
    for target, headers in owners.items():
        if len(headers) > 1:
            mapped = [name for name in headers if name in mapping.columns]
            path = json_path(("columns", mapped[-1])) if mapped else "columns"
            unmapped = [name for name in headers if name not in mapping.columns]
            reason = (
                f" ({', '.join(map(repr, unmapped))} because unmapped columns "
                "become custom fields under their header name)"
                if unmapped
                else ""
            )
            errors.append(
                _error(
                    path,
                    f"columns {', '.join(map(repr, headers))} all map to {target}"
                    f"{reason}: map only one column to it, and the others to "
                    "different targets or to ignore",
                    "duplicate_target",
                )
            )
    if "outcome" not in owners:
        for target in _OUTCOME_DETAIL_TARGETS:
            for name in owners.get(target, []):
                errors.append(
                    _error(
                        json_path(("columns", name)),
                        f"column {name!r} maps to {target} but no column maps to "
                        "outcome: map the column that says whether the lead "
                        "converted",
                        "outcome_not_mapped",
                    )
                )
    if not any(target in owners for target in _IDENTIFIER_TARGETS):
        errors.append(
            _error(
                "columns",
                "no column maps to contact.email, contact.phone or externalId: map "
                "at least one, because a lead without any of them is rejected",
                "identifier_not_mapped",
            )
        )
    return errors


def _ascii_lines(stream: BinaryIO, encoding: str, bad: set[int]) -> Iterator[str]:
    """Decode each line on its own, recording the lines that fail in `bad`.

    This works for encodings that write "\\n" as the single byte 0x0A and never
    use that byte inside a multi-byte character (UTF-8, Latin-1, cp1252,
    Shift JIS, GBK and so on), so a bad byte costs only its own line.
    """
    first = "utf-8-sig" if encoding == "utf-8" else encoding
    number = 0
    while True:
        line = stream.readline(_MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > _MAX_LINE:
            raise ValueError(
                f"line {number} is longer than {_MAX_LINE} bytes: check that the "
                "file is a CSV file with one row per line"
            )
        try:
            text = line.decode(first if number == 1 else encoding)
        except UnicodeDecodeError:
            bad.add(number)
            text = line.decode(encoding, errors="replace")
        yield text


def _wrapped_lines(stream: BinaryIO, encoding: str) -> Iterator[str]:
    """Decode a stream in an encoding such as UTF-16, where lines span whole bytes.

    A decoding error stops the import, because the decoder works in blocks ahead of
    the lines and cannot tell which row a bad byte belongs to.
    """
    text = io.TextIOWrapper(stream, encoding=encoding, newline="")
    number = 0
    try:
        while True:
            try:
                line = text.readline(_MAX_LINE + 1)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"the file is not valid {encoding} near line {number + 1}: "
                    f"{error.reason}; check the encoding setting"
                ) from None
            if not line:
                return
            number += 1
            if len(line) > _MAX_LINE:
                raise ValueError(
                    f"line {number} is longer than {_MAX_LINE} characters: check "
                    "that the file is a CSV file with one row per line"
                )
            yield line
    finally:
        # Detach so that closing the wrapper leaves the caller's stream open.
        text.detach()


def _decoded_lines(stream: BinaryIO, encoding: str, bad: set[int]) -> Iterator[str]:
    codec = codecs.lookup(encoding).name
    if codec == "utf-8-sig":
        codec = "utf-8"
    sample = '\n,;\t"a'
    if sample.encode(codec) == sample.encode("ascii"):
        return _ascii_lines(stream, codec, bad)
    return _wrapped_lines(stream, encoding)


def _is_blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


def _read_header(reader: Any, bad: set[int], encoding: str) -> list[str]:
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            raise MappingError(
                [
                    _error(
                        "(header)",
                        "the file is empty: its first line must be a header that "
                        "names the columns",
                        "empty_file",
                    )
                ]
            ) from None
        except csv.Error as error:
            raise MappingError(
                [_error("(header)", f"invalid CSV in the header: {error}", "csv")]
            ) from None
        if bad:
            raise MappingError(
                [
                    _error(
                        "(header)",
                        f"the header (line {line}) is not valid {encoding}: set "
                        "encoding to the file's encoding, e.g. latin-1, cp1252 "
                        "or utf-16",
                        "unicode_decode",
                    )
                ]
            )
        if not _is_blank(cells):
            return cells


def read_rows(
    stream: BinaryIO, mapping: ImportMapping
) -> Iterator[AcceptedRow | RejectedRow]:
    """Yield an AcceptedRow or a RejectedRow for each data row of a CSV file.

    The header is checked when iteration starts, and every problem with it or
    with the mapping is raised together as one MappingError. Blank lines and
    rows of empty cells are skipped. A row's `line` is the physical line on
    which it starts, counting the header as line 1.

    Raises ValueError naming the line when a line is longer than 1 MiB, or when
    a file in an encoding such as UTF-16 fails to decode. A bad byte in a file
    in UTF-8 or a single-byte encoding only rejects its row.
    """
    bad: set[int] = set()
    reader = csv.reader(
        _decoded_lines(stream, mapping.encoding, bad), delimiter=mapping.delimiter
    )
    plan = _plan(_read_header(reader, bad, mapping.encoding), mapping)
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            bad.clear()
            yield RejectedRow(
                line,
                [
                    _error(
                        "(row)",
                        f"invalid CSV: {error}; check the quotes in this row",
                        "csv",
                    )
                ],
            )
            continue
        undecodable = bool(bad)
        bad.clear()
        if _is_blank(cells):
            continue
        errors = _shape_errors(cells, plan, mapping.encoding, undecodable)
        if errors:
            yield RejectedRow(line, errors)
            continue
        result = _convert(cells, plan)
        if isinstance(result, ImportedLead):
            yield AcceptedRow(line, result)
        else:
            yield RejectedRow(line, result)


def _shape_errors(
    cells: list[str], plan: _Plan, encoding: str, undecodable: bool
) -> list[dict[str, str]]:
    """Check the row's cell count, then bytes and characters that cannot be stored.

    Cells of ignored columns are not checked, because they are dropped anyway.
    """
    if len(cells) != plan.width:
        return [
            _error(
                "(row)",
                f"the row has {len(cells)} cells but the header has {plan.width} "
                "columns: check for a missing or extra delimiter, and quote cells "
                "that contain the delimiter",
                "cell_count",
            )
        ]
    errors = []
    for column in plan.columns:
        cell = cells[column.index]
        # The decoder put U+FFFD where the bytes it could not decode were.
        if undecodable and _REPLACEMENT in cell:
            errors.append(
                _error(
                    column.header,
                    f"not valid {encoding}: save the file as UTF-8, or set "
                    "encoding to the one it was saved in, e.g. latin-1 or cp1252",
                    "unicode_decode",
                )
            )
        if _NUL in cell:
            errors.append(
                _error(
                    column.header,
                    "the cell contains a NUL character (\\x00): remove it",
                    "nul_character",
                )
            )
    for index in plan.unnamed:
        if cells[index].strip():
            errors.append(
                _error(
                    "(row)",
                    f"column {index + 1} has no name in the header but this row "
                    f"has a value in it ({cells[index].strip()!r}): name the "
                    "column in the header or remove the value",
                    "unnamed_column",
                )
            )
    return errors


def _convert(cells: list[str], plan: _Plan) -> ImportedLead | list[dict[str, str]]:
    """Build and validate the lead of one row, or return its errors."""
    data: dict[str, Any] = {}
    errors = []
    invalid_outcome = False
    for column in plan.columns:
        value: Any = cells[column.index].strip()
        if not value or value in plan.null_values:
            continue
        if column.parse is not None:
            try:
                value = column.parse(value)
            except ValueError as error:
                errors.append(_error(column.header, str(error)))
                invalid_outcome = invalid_outcome or column.target == "outcome"
                continue
        if column.section is None:
            data[column.key] = value
        elif column.section in data:
            data[column.section][column.key] = value
        else:
            data[column.section] = {column.key: value}

    details = data.get("outcome", {})
    if details and "outcome" not in details:
        del data["outcome"]
        if not invalid_outcome:
            errors += _details_without_outcome(details, plan)
    try:
        lead = ImportedLead.model_validate(data)
    except ValidationError as error:
        return errors + _lead_errors(error, plan)
    return errors or lead


def _details_without_outcome(
    details: dict[str, Any], plan: _Plan
) -> list[dict[str, str]]:
    outcome_header = plan.header_at.get(("outcome", "outcome"), "outcome")
    return [
        _error(
            plan.header_at[("outcome", key)],
            f"this cell is set but the outcome column {outcome_header!r} is empty: "
            "fill in the outcome, or clear this cell",
            "outcome_missing",
        )
        for key in details
    ]


def _lead_errors(error: ValidationError, plan: _Plan) -> list[dict[str, str]]:
    """Turn ImportedLead's errors into errors that name the CSV column."""
    errors = []
    for detail in error.errors():
        location = tuple(str(part) for part in detail["loc"])
        path = "(row)"
        for end in range(len(location), 0, -1):
            if location[:end] in plan.header_at:
                path = plan.header_at[location[:end]]
                break
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["type"] == "missing_identifier" and plan.identifier_headers:
            names = " or ".join(map(repr, plan.identifier_headers))
            message += f"; fill in {names}"
        errors.append(_error(path, message, detail["type"]))
    return errors
