"""How long a provider asks us to wait before the next request."""

import email.utils
from datetime import UTC, datetime
from typing import Any


def retry_after_seconds(headers: Any) -> float | None:
    """Return the wait a rate-limited response requests, in seconds, or None.

    Reads `Retry-After` as seconds or as an HTTP date, else SendGrid's
    `X-RateLimit-Reset`, the Unix time when the limit resets.
    """
    if headers is None or not hasattr(headers, "get"):
        return None
    value = headers.get("Retry-After")
    if value:
        return _seconds_or_date(str(value))
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(float(reset) - datetime.now(UTC).timestamp(), 0.0)
        except ValueError:
            return None
    return None


def _seconds_or_date(value: str) -> float | None:
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)
