"""Timeouts and retry policies of the nurture workflow's activities."""

from datetime import timedelta

from temporalio.common import RetryPolicy

PREPARE_TIMEOUT = timedelta(seconds=30)
PREPARE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["TemplateError", "LeadNotFound"],
)
# A provider outage of hours delays a send; only a day without success fails it.
DELIVER_START_TO_CLOSE = timedelta(seconds=60)
# The send activity heartbeats while the provider call runs, so a worker that
# dies mid-call is noticed in seconds rather than after the whole minute.
DELIVER_HEARTBEAT = timedelta(seconds=10)
DELIVER_SCHEDULE_TO_CLOSE = timedelta(days=1)
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
)
END_TIMEOUT = timedelta(seconds=30)
DATABASE_TIMEOUT = timedelta(seconds=30)
# Neither this nor PREPARE_RETRY limits attempts, so an activity retries
# through a database outage of any length, at least once a minute, and its
# workflow goes on within about a minute of the database coming back.
DATABASE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["LeadNotFound", "InvalidCondition"],
)
