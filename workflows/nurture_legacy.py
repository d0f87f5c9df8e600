"""The nurture workflow's first execution model, kept for runs already in flight.

Workflows started before the journey language existed ran the sequence as a
plain list of delayed sends. Their histories must replay on new code, so
`NurtureWorkflow` runs this code for them (`workflow.patched` decides which);
the commands issued here must never change.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.delivery import DeliveryActivities
    from activities.leads import LeadActivities
    from activities.messaging import MessagingActivities
    from nurture.campaigns import SendStep
    from nurture.contracts import (
        DeliverMessageInput,
        EndEnrollmentInput,
        MessageEngagementInput,
        NurtureInput,
        NurtureState,
        PrepareMessageInput,
        StepRecord,
        StepStatus,
    )
    from nurture.temporal import CAMPAIGN_STEP
    from workflows.policies import (
        DELIVER_RETRY,
        DELIVER_SCHEDULE_TO_CLOSE,
        DELIVER_START_TO_CLOSE,
        END_TIMEOUT,
        PREPARE_RETRY,
        PREPARE_TIMEOUT,
    )


class LegacySequence:
    """Runs a campaign as its list of delayed sends, as the first release did."""

    _state: NurtureState
    _opened: set[str]
    _clicked: set[str]

    async def _run_legacy(self, input: NurtureInput) -> NurtureState:
        previous_message_id: str | None = None
        for step in input.campaign.sequence:
            assert isinstance(step, SendStep)
            await self._legacy_wait_for(step)
            workflow.upsert_search_attributes([CAMPAIGN_STEP.value_set(step.step or 0)])
            skip_reason = await self._legacy_unmet_condition(step, previous_message_id)
            if skip_reason is not None:
                self._legacy_record(step, "skipped", None, skip_reason)
                previous_message_id = None
                continue
            previous_message_id = await self._legacy_send(input, step)
        self._state.status = "completed"
        await workflow.execute_activity_method(
            LeadActivities.end_enrollment,
            EndEnrollmentInput(enrollment_id=input.enrollment_id, status="completed"),
            start_to_close_timeout=END_TIMEOUT,
        )
        return self._state

    async def _legacy_wait_for(self, step: SendStep) -> None:
        delay = step.delay_timedelta
        self._state.next_step = str(step.step)
        self._state.next_step_due_at = workflow.now() + delay
        if delay > timedelta(0):
            await workflow.sleep(delay, summary=f"step {step.step}: wait {step.delay}")
        self._state.current_step = str(step.step)
        self._state.next_step = None
        self._state.next_step_due_at = None

    async def _legacy_unmet_condition(
        self, step: SendStep, previous_message_id: str | None
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

    async def _legacy_send(self, input: NurtureInput, step: SendStep) -> str | None:
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
                self._legacy_record(
                    step, "skipped", message_id, prepared.skipped_reason
                )
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
            self._legacy_record(step, "failed", message_id, detail)
            return None
        self._legacy_record(step, "sent", message_id, None)
        return message_id

    def _legacy_record(
        self,
        step: SendStep,
        status: StepStatus,
        message_id: str | None,
        detail: str | None,
    ) -> None:
        self._state.steps.append(
            StepRecord(
                step=str(step.step),
                status=status,
                message_id=message_id,
                at=workflow.now(),
                detail=detail,
            )
        )
