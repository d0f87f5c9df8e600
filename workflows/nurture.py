"""The nurture workflow: one enrollment of a lead in a campaign version.

Id `nurture-<campaign id>-<lead id>`. Each step waits its delay on a durable
timer, checks its conditions against the engagement signals received so far,
then renders and sends its message.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.delivery import DeliveryActivities
    from activities.leads import LeadActivities
    from activities.messaging import MessagingActivities
    from nurture.campaigns import Step
    from nurture.contracts import (
        DeliverMessageInput,
        EndEnrollmentInput,
        EngagementSignal,
        MessageEngagementInput,
        NurtureInput,
        NurtureState,
        PrepareMessageInput,
        StepRecord,
        StepStatus,
    )
    from nurture.temporal import CAMPAIGN_STEP

PREPARE_TIMEOUT = timedelta(seconds=30)
PREPARE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["TemplateError", "LeadNotFound"],
)
# A provider outage of hours delays a send; only a day without success fails it.
DELIVER_START_TO_CLOSE = timedelta(seconds=60)
DELIVER_SCHEDULE_TO_CLOSE = timedelta(days=1)
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
)
END_TIMEOUT = timedelta(seconds=30)

OPEN_EVENTS = frozenset({"open", "click"})
CLICK_EVENTS = frozenset({"click"})


@workflow.defn
class NurtureWorkflow:
    @workflow.init
    def __init__(self, input: NurtureInput) -> None:
        self._state = NurtureState(
            enrollment_id=input.enrollment_id,
            lead_id=input.lead_id,
            campaign_id=input.campaign_id,
            campaign_version=input.campaign_version,
        )
        self._opened: set[str] = set()
        self._clicked: set[str] = set()

    @workflow.run
    async def run(self, input: NurtureInput) -> NurtureState:
        previous_message_id: str | None = None
        for step in input.campaign.sequence:
            await self._wait_for(step)
            workflow.upsert_search_attributes([CAMPAIGN_STEP.value_set(step.step)])
            skip_reason = await self._unmet_condition(step, previous_message_id)
            if skip_reason is not None:
                self._record(step, "skipped", None, skip_reason)
                previous_message_id = None
                continue
            previous_message_id = await self._send(input, step)
        self._state.status = "completed"
        await workflow.execute_activity_method(
            LeadActivities.end_enrollment,
            EndEnrollmentInput(enrollment_id=input.enrollment_id, status="completed"),
            start_to_close_timeout=END_TIMEOUT,
        )
        return self._state

    @workflow.signal
    def engagement(self, signal: EngagementSignal) -> None:
        """Record an open, click or other event on one of this enrollment's messages."""
        if signal.type in OPEN_EVENTS:
            self._opened.add(signal.message_id)
        if signal.type in CLICK_EVENTS:
            self._clicked.add(signal.message_id)
        self._state.opened_message_ids = sorted(self._opened)
        self._state.clicked_message_ids = sorted(self._clicked)

    @workflow.query
    def state(self) -> NurtureState:
        return self._state

    async def _wait_for(self, step: Step) -> None:
        delay = step.delay_timedelta
        self._state.next_step = step.step
        self._state.next_step_due_at = workflow.now() + delay
        if delay > timedelta(0):
            await workflow.sleep(delay, summary=f"step {step.step}: wait {step.delay}")
        self._state.current_step = step.step
        self._state.next_step = None
        self._state.next_step_due_at = None

    async def _unmet_condition(
        self, step: Step, previous_message_id: str | None
    ) -> str | None:
        """Return why a step's conditions are not met, or None when they are."""
        conditions = step.conditions
        if conditions is None:
            return None
        if previous_message_id is not None and not (
            previous_message_id in self._opened and previous_message_id in self._clicked
        ):
            # A signal may have been lost while Temporal was unreachable; the
            # stored events are the record, so read them before deciding.
            stored = await workflow.execute_activity_method(
                MessagingActivities.read_message_engagement,
                MessageEngagementInput(message_id=previous_message_id),
                start_to_close_timeout=PREPARE_TIMEOUT,
            )
            if stored.opened or stored.clicked:
                self._opened.add(previous_message_id)
            if stored.clicked:
                self._clicked.add(previous_message_id)
        checks = (
            ("emailOpened", conditions.email_opened, self._opened),
            ("emailClicked", conditions.email_clicked, self._clicked),
        )
        for name, expected, seen in checks:
            if expected is None:
                continue
            actual = previous_message_id is not None and previous_message_id in seen
            if actual != expected:
                return f"condition {name}={str(expected).lower()} not met"
        return None

    async def _send(self, input: NurtureInput, step: Step) -> str | None:
        message_id = str(workflow.uuid4())
        try:
            prepared = await workflow.execute_activity_method(
                MessagingActivities.prepare_message,
                PrepareMessageInput(
                    message_id=message_id,
                    lead_id=input.lead_id,
                    enrollment_id=input.enrollment_id,
                    campaign_id=input.campaign_id,
                    campaign_version=input.campaign_version,
                    step=step.step,
                    channel=step.channel,
                    template=step.template,
                    personalization=step.personalization,
                ),
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=PREPARE_RETRY,
            )
            if prepared.skipped_reason is not None:
                self._record(step, "skipped", message_id, prepared.skipped_reason)
                return None
            await workflow.execute_activity_method(
                DeliveryActivities.deliver_message,
                DeliverMessageInput(message_id=message_id),
                task_queue=f"{workflow.info().task_queue}-send",
                start_to_close_timeout=DELIVER_START_TO_CLOSE,
                schedule_to_close_timeout=DELIVER_SCHEDULE_TO_CLOSE,
                retry_policy=DELIVER_RETRY,
            )
        except ActivityError as error:
            cause = error.cause
            detail = (
                cause.message if isinstance(cause, ApplicationError) else str(error)
            )
            workflow.logger.warning(
                "step %s of enrollment %s failed: %s",
                step.step,
                input.enrollment_id,
                detail,
            )
            self._record(step, "failed", message_id, detail)
            return None
        self._record(step, "sent", message_id, None)
        return message_id

    def _record(
        self, step: Step, status: StepStatus, message_id: str | None, detail: str | None
    ) -> None:
        self._state.steps.append(
            StepRecord(
                step=step.step,
                status=status,
                message_id=message_id,
                at=workflow.now(),
                detail=detail,
            )
        )
