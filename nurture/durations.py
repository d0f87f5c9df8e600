"""Durations as marketers write them: "24 hours", "3 days", or ISO 8601 "P1DT2H"."""

import re
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

_HUMAN = re.compile(
    r"^\s*(\d+)\s*(second|sec|s|minute|min|m|hour|hr|h|day|d|week|w)s?\s*$",
    re.IGNORECASE,
)
_UNITS = {
    "second": "seconds",
    "sec": "seconds",
    "s": "seconds",
    "minute": "minutes",
    "min": "minutes",
    "m": "minutes",
    "hour": "hours",
    "hr": "hours",
    "h": "hours",
    "day": "days",
    "d": "days",
    "week": "weeks",
    "w": "weeks",
}
MAX_DURATION = timedelta(days=365)
_ISO = TypeAdapter(timedelta)


def _iso(text: str) -> timedelta:
    date_part = text.upper().split("T", 1)[0]
    if "Y" in date_part or "M" in date_part:
        raise ValueError(
            f"invalid duration {text!r}: years and months have no fixed length; "
            "use days or weeks, e.g. P30D"
        )
    try:
        return _ISO.validate_python(text)
    except ValidationError:
        raise ValueError(
            f"invalid duration {text!r}: not an ISO 8601 duration such as P1DT2H"
        ) from None


def parse_duration(text: str) -> timedelta:
    """Parse "0 hours", "90 minutes", "3 days", "2 weeks" or ISO 8601 "P1DT2H".

    Raises ValueError naming the text for anything else, for negative values
    and for durations over 365 days.
    """
    stripped = text.strip()
    if stripped[:1] in ("P", "p"):
        duration = _iso(stripped)
    else:
        match = _HUMAN.match(stripped)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use a whole number and a unit, "
                'e.g. "30 seconds", "90 minutes", "24 hours", "3 days" or '
                '"2 weeks", or ISO 8601 such as "P1DT2H"'
            )
        amount, unit = int(match.group(1)), _UNITS[match.group(2).lower()]
        try:
            duration = timedelta(**{unit: amount})
        except OverflowError:
            duration = MAX_DURATION + timedelta(days=1)
    if duration < timedelta(0):
        raise ValueError(f"invalid duration {text!r}: it must not be negative")
    if duration > MAX_DURATION:
        raise ValueError(f"invalid duration {text!r}: the maximum is 365 days")
    return duration
