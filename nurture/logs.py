"""Logging set-up shared by the API, the worker and the dev launcher.

LOG_FORMAT=text (the default) writes `time LEVEL logger: message` lines, and
LOG_FORMAT=json writes one JSON object per line. Either way every record first
passes `RedactFilter`, which replaces e-mail addresses and phone numbers with
placeholders. JSON lines also carry the ids of the record's context: ids
passed with `extra=`, ids bound with `log_context()`, the request id of an
API request, and the workflow of the Temporal activity or workflow that logged.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The ids a JSON line may carry, in the order they are written.
CONTEXT_FIELDS = (
    "request_id",
    "lead_id",
    "campaign_id",
    "message_id",
    "workflow_id",
    "run_id",
    "workflow_type",
    "activity_type",
    "task_queue",
)
_CONTEXT: ContextVar[Mapping[str, str] | None] = ContextVar(
    "nurture_log_context", default=None
)

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"
# An address, also percent-encoded as in a logged query string (%40 for @).
_EMAIL = re.compile(
    r"[\w.%+-]+(?:@|%40)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}"
)
# A number in international form (+ or %2B, then digits with separators), or
# a 3-3-4 national number such as (415) 555-0100 or 415.555.0100. Plain digit
# runs are left alone, since ids, timestamps and counts look the same.
_PHONE = re.compile(
    r"(?<![\w+%])(?:\+|%2B)\d[\d ().-]{5,20}\d(?!\w)"
    r"|(?<![\w.+-])(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])",
    re.IGNORECASE,
)
# E.164 numbers have at most 15 digits. Fewer than 7 digits is taken for
# something else, such as a count.
_PHONE_DIGITS = range(7, 16)


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text.removeprefix("%2B").removeprefix("%2b"))
    return PHONE_MASK if digits in _PHONE_DIGITS else text


def redact(text: str) -> str:
    """Replace e-mail addresses and phone numbers in text with placeholders."""
    return _PHONE.sub(_mask_phone, _EMAIL.sub(EMAIL_MASK, text))


class RedactFilter(logging.Filter):
    """Mask e-mail addresses and phone numbers in a record before any handler.

    The message is rendered with its args and masked, so the args of the
    record are dropped. The traceback and stack text are masked too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # args that do not fit msg: the handler reports it
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Add ids to every record logged in this context, until the block ends.

    Keys are names from CONTEXT_FIELDS, and a None value is left out. The ids
    follow the context into tasks and `run_in_threadpool` calls started in it.
    """
    unknown = sorted(set(ids) - set(CONTEXT_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown log context field(s) {', '.join(unknown)}: "
            f"use {', '.join(CONTEXT_FIELDS)}"
        )
    current = _CONTEXT.get() or {}
    bound = {key: value for key, value in ids.items() if value is not None}
    token = _CONTEXT.set({**current, **bound})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _temporal_ids(record: logging.LogRecord) -> Mapping[str, Any]:
    """Return the Temporal ids attached to the record, else the running activity's."""
    details = getattr(record, "temporal_workflow", None) or getattr(
        record, "temporal_activity", None
    )
    if details is None and activity.in_activity():
        info = activity.info()
        details = {
            "workflow_id": info.workflow_id,
            "workflow_run_id": info.workflow_run_id,
            "workflow_type": info.workflow_type,
            "activity_type": info.activity_type,
            "task_queue": info.task_queue,
        }
    if not isinstance(details, Mapping):
        return {}
    return {
        "workflow_id": details.get("workflow_id"),
        "run_id": details.get("run_id") or details.get("workflow_run_id"),
        "workflow_type": details.get("workflow_type"),
        "activity_type": details.get("activity_type"),
        "task_queue": details.get("task_queue"),
    }


class ContextFilter(logging.Filter):
    """Copy the ids of the logging context onto the record.

    Ids passed with `extra=` win over ids bound with `log_context()`, which
    win over the ids of the running Temporal activity or workflow.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _CONTEXT.get() or {}
        temporal = _temporal_ids(record)
        for field in CONTEXT_FIELDS:
            if getattr(record, field, None) is not None:
                continue
            value = bound.get(field) or temporal.get(field)
            if value is not None:
                setattr(record, field, value)
        return True


# Ids copied from an activity's input onto its log lines.
_INPUT_IDS = ("lead_id", "campaign_id", "message_id")


class _ActivityIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        argument = input.args[0] if input.args else None
        ids = {name: getattr(argument, name, None) for name in _INPUT_IDS}
        with log_context(
            **{name: value for name, value in ids.items() if isinstance(value, str)}
        ):
            return await super().execute_activity(input)


class LogIdsInterceptor(Interceptor):
    """Put the lead, campaign and message ids of an activity's input on its logs.

    The ids are bound with `log_context()` around the activity, so every line
    it logs carries them, in threads too: the SDK runs a synchronous activity
    in a copy of the context.
    """

    def intercept_activity(
        self, next: ActivityInboundInterceptor
    ) -> ActivityInboundInterceptor:
        return _ActivityIds(next)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: timestamp, level, logger, message, ids."""

    def format(self, record: logging.LogRecord) -> str:
        timestamp = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "timestamp": timestamp.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """Build a stream handler (stderr by default) for LOG_FORMAT text or json."""
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"invalid LOG_FORMAT {log_format!r}: use {' or '.join(LOG_FORMATS)}"
        )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging() -> None:
    """Log to stderr at LOG_LEVEL (default INFO) in LOG_FORMAT (default text).

    Replaces the root logger's handlers, so call it once at process start.
    An invalid setting stops the process with a one-line message.
    """
    log_format = os.environ.get("LOG_FORMAT", "").strip().lower() or "text"
    level = os.environ.get("LOG_LEVEL", "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise SystemExit(
            f"nurture: invalid LOG_LEVEL {level!r}: use {', '.join(LOG_LEVELS)}"
        )
    try:
        handler = log_handler(log_format)
        logging.basicConfig(level=level, handlers=[handler], force=True)
    except ValueError as error:
        raise SystemExit(f"nurture: {error}") from None


REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is kept when it is short and plain, and others are replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Give each HTTP request a request id, for its log lines and its response.

    The id is the caller's X-Request-ID when that is plain text of at most
    128 characters, or else a new random one. The response carries it back.
    """

    def __init__(self, app: "ASGIApp") -> None:
        self.app = app

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        caller_id = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == REQUEST_ID_HEADER.encode()
            ),
            "",
        )
        if _REQUEST_ID.fullmatch(caller_id):
            request_id = caller_id
        else:
            request_id = secrets.token_hex(16)

        async def send_with_id(message: "Message") -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
