"""Counts and ages in the plain English that reasons and next actions use."""

from datetime import timedelta


def count_of(count: int, singular: str, plural: str | None = None) -> str:
    """Return "1 activity" or "3 activities": the count with the right noun form."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count} {noun}"


def describe_age(age: timedelta) -> str:
    """Return an age such as "under a minute", "5 minutes", "1 hour" or "3 days"."""
    seconds = age.total_seconds()
    if seconds < 60:
        return "under a minute"
    if age < timedelta(hours=1):
        return count_of(int(seconds // 60), "minute")
    if age < timedelta(days=2):
        return count_of(int(seconds // 3600), "hour")
    return count_of(age.days, "day")
