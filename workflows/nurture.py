"""The nurture workflow: one enrollment of a lead in a campaign version.

Id `nurture-<campaign id>-<lead id>`. It walks the campaign's steps: each
wait is a durable timer, each condition is evaluated by an activity against
the stored facts, each send is planned in the lead's time zone, capped, and
sent through the outbox. Reaching a goal, or the campaign being archived,
ends it wherever it waits, and pausing keeps its sends waiting.
"""

from datetime import datetime, timedelta
from typing import Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.delivery import DeliveryActivities
    from activities.journeys import (
        AssignVariantInput,
        JourneyActivities,
        SplitWinnerCheckInput,
        SplitWinnerCheckResult,
    )
    from activities.leads import LeadActivities
    from activities.messaging import MessagingActivities
    from nurture.campaigns import (
        BranchStep,
        CampaignSpec,
        ExitStep,
        SendStep,
        SplitStep,
        Variant,
        WaitForEventStep,
        WaitStep,
    )
    from nurture.contracts import (
        DeliverMessageInput,
        EndEnrollmentInput,
        EngagementSignal,
        EvaluateConditionInput,
        LeadEventSignal,
        LocalTimeInput,
        MigrateSignal,
        NurtureInput,
        NurtureState,
        PauseSignal,
        PlanSendInput,
        PrepareMessageInput,
        RecordMigrationInput,
        StepRecord,
        StepStatus,
    )
    from nurture.durations import parse_duration
    from nurture.scoring import STAGES
    from nurture.temporal import CAMPAIGN_STEP
    from workflows.nurture_legacy import LegacySequence
    from workflows.policies import (
        DATABASE_RETRY,
        DATABASE_TIMEOUT,
        DELIVER_HEARTBEAT,
        DELIVER_RETRY,
        DELIVER_SCHEDULE_TO_CLOSE,
        DELIVER_START_TO_CLOSE,
        END_TIMEOUT,
        PREPARE_RETRY,
        PREPARE_TIMEOUT,
    )

# Workflows started before this marker ran the plain list of sends.
JOURNEY_PATCH = "journey-language"
# Splits reached before this marker drew their variant in workflow code and
# stored no assignment. Since then, an activity stores the assignment and
# applies the split's winner decision.
SPLIT_ASSIGNMENT_PATCH = "split-assignment"
# The winner check reads every split's assignments: a few queries per split.
WINNER_CHECK_TIMEOUT = timedelta(minutes=5)
OPEN_EVENTS = frozenset({"open", "click"})
CLICK_EVENTS = frozenset({"click"})
# A paused campaign is re-checked this often in case a resume signal was lost.
PAUSE_RECHECK = timedelta(hours=6)
# Deferrals (quiet hours, caps, a paused campaign) re-plan at most this often
# in a row before the step fails, so a misconfiguration cannot spin forever.
MAX_DEFERRALS = 50

Successor = str | None
EnrollmentStatus = Literal["completed", "converted", "archived", "failed"]


class Stop(Exception):
    """Raised inside the journey when a goal, archiving or an exit ends it."""


@workflow.defn
class NurtureWorkflow(LegacySequence):
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
        self._spec: CampaignSpec = input.campaign
        self._events: list[LeadEventSignal] = []
        self._paused = False
        self._archived = False
        self._migration: MigrateSignal | None = None
        # A send failed for good in a step whose onFailure is "exit".
        self._failed = False

    @workflow.run
    async def run(self, input: NurtureInput) -> NurtureState:
        if not workflow.patched(JOURNEY_PATCH):
            return await self._run_legacy(input)
        status: EnrollmentStatus = "completed"
        try:
            await self._walk(input)
        except Stop:
            pass
        if self._state.goal is not None:
            status = "converted"
        elif self._archived:
            status = "archived"
        elif self._failed:
            status = "failed"
        self._state.status = status
        self._state.next_step = None
        self._state.next_step_due_at = None
        self._state.waiting_reason = None
        await workflow.execute_activity_method(
            LeadActivities.end_enrollment,
            EndEnrollmentInput(
                enrollment_id=input.enrollment_id,
                status=status,
                goal=self._state.goal,
            ),
            start_to_close_timeout=END_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        return self._state

    # Signals and the query.

    @workflow.signal
    def engagement(self, signal: EngagementSignal) -> None:
        """Record an open, click or other event on one of this enrollment's messages."""
        if signal.type in OPEN_EVENTS:
            self._opened.add(signal.message_id)
        if signal.type in CLICK_EVENTS:
            self._clicked.add(signal.message_id)
        self._state.opened_message_ids = sorted(self._opened)
        self._state.clicked_message_ids = sorted(self._clicked)
        self._events.append(
            LeadEventSignal(
                type=signal.type, message_id=signal.message_id, url=signal.url
            )
        )

    @workflow.signal
    def lead_event(self, signal: LeadEventSignal) -> None:
        """Take an event of the lead's; a goal it meets ends the enrollment."""
        self._events.append(signal)
        for goal in self._spec.goals:
            if goal.event is not None and goal.event == signal.type:
                self._state.goal = self._state.goal or goal.name
            if goal.stage is not None and _stage_reached(signal.stage, goal.stage):
                self._state.goal = self._state.goal or goal.name

    @workflow.signal
    def set_paused(self, signal: PauseSignal) -> None:
        """Hold (or release) every send of this enrollment."""
        self._paused = signal.paused
        self._state.paused = signal.paused

    @workflow.signal
    def archive(self) -> None:
        """End the enrollment: its campaign was archived."""
        self._archived = True

    @workflow.signal
    def migrate(self, signal: MigrateSignal) -> None:
        """Move to a newer campaign version at the next step boundary."""
        self._migration = signal
        self._state.pending_version = signal.campaign_version

    @workflow.query
    def state(self) -> NurtureState:
        return self._state

    # The journey.

    async def _walk(self, input: NurtureInput) -> None:
        # NOTE: a journey that loops (a wait inside a cycle) adds history on
        # every round, and this workflow does not continue as new yet, so a
        # loop without an exit eventually hits Temporal's history limits.
        current: Successor = self._spec.step_ids()[0]
        while current is not None:
            self._check_stop()
            index = self._spec.step_ids().index(current)
            step = self._spec.sequence[index]
            if not isinstance(step, SendStep):
                self._enter(current, index)
            following = self._spec.following(index)
            if isinstance(step, SendStep):
                await self._send_step(input, step, current, index)
                successor = step.next or following
            elif isinstance(step, WaitStep):
                await self._wait_step(input, step, current)
                successor = step.next or following
            elif isinstance(step, WaitForEventStep):
                happened = await self._wait_for_event(step, current)
                chosen = step.on_event if happened else step.on_timeout
                successor = chosen or following
            elif isinstance(step, BranchStep):
                condition_met = await self._evaluate(
                    input, step.condition, self._last_message_id()
                )
                branch = "then" if condition_met else "else"
                self._record(current, "branched", None, branch)
                successor = (step.then if condition_met else step.else_) or following
            elif isinstance(step, SplitStep):
                variant = await self._split(input, step, current)
                successor = variant.next or following
            else:
                assert isinstance(step, ExitStep)
                self._record(current, "exited", None, None)
                raise Stop
            current = await self._apply_migration(input, current, successor)

    async def _split(
        self, input: NurtureInput, step: SplitStep, current: str
    ) -> Variant:
        """Take a split's variant: the stored winner once decided, else the draw."""
        drawn = step.choose(f"{input.lead_id}:{input.campaign_id}:{current}")
        variant, detail = drawn, f"variant {drawn.name}"
        if workflow.patched(SPLIT_ASSIGNMENT_PATCH):
            assigned = await workflow.execute_activity_method(
                JourneyActivities.assign_variant,
                AssignVariantInput(
                    enrollment_id=input.enrollment_id,
                    campaign_id=input.campaign_id,
                    campaign_version=self._state.campaign_version,
                    step=current,
                    drawn=drawn.name,
                    variants=[option.name for option in step.variants],
                    at=workflow.now(),
                ),
                start_to_close_timeout=DATABASE_TIMEOUT,
                retry_policy=DATABASE_RETRY,
            )
            variant = next(
                (v for v in step.variants if v.name == assigned.variant), drawn
            )
            if assigned.by_winner:
                detail = f"variant {variant.name}, the split's winner"
        self._state.variants[current] = variant.name
        self._record(current, "branched", None, detail)
        return variant

    async def _apply_migration(
        self, input: NurtureInput, current: str, successor: Successor
    ) -> Successor:
        """Switch to a pending newer version, continuing after the same step."""
        migration, self._migration = self._migration, None
        if migration is None:
            return successor
        self._state.pending_version = None
        spec = migration.campaign
        ids = spec.step_ids()
        if current not in ids:
            workflow.logger.warning(
                "enrollment %s: step %s is not in version %s; migration skipped",
                input.enrollment_id,
                current,
                migration.campaign_version,
            )
            return successor
        self._spec = spec
        self._state.campaign_version = migration.campaign_version
        await workflow.execute_activity_method(
            JourneyActivities.record_migration,
            RecordMigrationInput(
                enrollment_id=input.enrollment_id,
                campaign_version=migration.campaign_version,
            ),
            start_to_close_timeout=DATABASE_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        step = spec.steps_by_id()[current]
        index = ids.index(current)
        # Continue from where the new version goes after this step.
        if isinstance(step, (SendStep, WaitStep)):
            return step.next or spec.following(index)
        return successor if successor in ids else spec.following(index)

    def _enter(self, current: str, index: int) -> None:
        """Make a step the current one, for the journey view and operators."""
        self._state.current_step = current
        workflow.upsert_search_attributes([CAMPAIGN_STEP.value_set(index + 1)])

    def _check_stop(self) -> None:
        if self._state.goal is not None or self._archived:
            raise Stop

    async def _sleep_until(self, until: datetime, step: str, reason: str) -> None:
        """Wait until an instant, ending early when a goal or archiving stops us."""
        self._state.next_step = step
        self._state.next_step_due_at = until
        self._state.waiting_reason = reason
        remaining = until - workflow.now()
        if remaining > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: self._state.goal is not None or self._archived,
                    timeout=remaining,
                    timeout_summary=f"step {step}: {reason}",
                )
            except TimeoutError:
                pass
        self._state.next_step = None
        self._state.next_step_due_at = None
        self._state.waiting_reason = None
        self._check_stop()

    async def _wait_step(
        self, input: NurtureInput, step: WaitStep, current: str
    ) -> None:
        if step.duration is not None:
            until = workflow.now() + parse_duration(step.duration)
            reason = f"wait {step.duration}"
        else:
            assert step.until is not None
            until = await workflow.execute_activity_method(
                JourneyActivities.next_local_time,
                LocalTimeInput(
                    lead_id=input.lead_id,
                    after=workflow.now(),
                    until=step.until,
                    timezone=self._spec.send_rules.timezone,
                ),
                start_to_close_timeout=DATABASE_TIMEOUT,
                retry_policy=DATABASE_RETRY,
            )
            days = ", ".join(step.until.days)
            reason = f"wait until {step.until.time:%H:%M} local time on {days}"
        await self._sleep_until(until, current, reason)
        self._record(current, "waited", None, reason)

    async def _wait_for_event(self, step: WaitForEventStep, current: str) -> bool:
        seen = len(self._events)

        def matched() -> bool:
            for event in self._events[seen:]:
                if event.type != step.event:
                    continue
                if step.url_contains and step.url_contains not in (event.url or ""):
                    continue
                return True
            return False

        timeout = parse_duration(step.timeout)
        self._state.next_step = current
        self._state.next_step_due_at = workflow.now() + timeout
        self._state.waiting_reason = f"waiting up to {step.timeout} for {step.event}"
        try:
            await workflow.wait_condition(
                lambda: matched() or self._state.goal is not None or self._archived,
                timeout=timeout,
                timeout_summary=f"step {current}: wait for {step.event}",
            )
        except TimeoutError:
            pass
        self._state.next_step = None
        self._state.next_step_due_at = None
        self._state.waiting_reason = None
        self._check_stop()
        happened = matched()
        self._record(
            current,
            "waited",
            None,
            f"{step.event}: {'yes' if happened else 'timed out'}",
        )
        return happened

    async def _evaluate(
        self, input: NurtureInput, condition: str, previous_message: str | None
    ) -> bool:
        return await workflow.execute_activity_method(
            JourneyActivities.evaluate_condition,
            EvaluateConditionInput(
                lead_id=input.lead_id,
                condition=condition,
                enrollment_id=input.enrollment_id,
                previous_message_id=previous_message,
                now=workflow.now(),
            ),
            start_to_close_timeout=DATABASE_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )

    async def _send_step(
        self, input: NurtureInput, step: SendStep, current: str, index: int
    ) -> str | None:
        """Run a send step; return its message id when a message went out."""
        delay = step.delay_timedelta
        if delay > timedelta(0):
            await self._sleep_until(
                workflow.now() + delay, current, f"delay {step.delay}"
            )
        # During its delay the journey still shows the previous step as current.
        self._enter(current, index)
        gate = step.gate()
        if gate is not None:
            previous = self._last_message_id()
            if not await self._evaluate(input, gate, previous):
                self._record(current, "skipped", None, f"condition not met: {gate}")
                return None
        message_id = str(workflow.uuid4())
        for _attempt in range(MAX_DEFERRALS):
            await self._wait_while_paused(current)
            send_at = await self._plan_send(input, step, current)
            if send_at is None:
                raise Stop
            await self._sleep_until(send_at, current, self._state.waiting_reason or "")
            outcome = await self._prepare_and_deliver(
                input, step, current, index, message_id
            )
            if outcome == "failed" and step.on_failure == "exit":
                self._failed = True
                raise Stop
            if outcome != "deferred":
                return message_id if outcome == "sent" else None
        self._record(current, "failed", message_id, "deferred too many times")
        return None

    def _last_message_id(self) -> str | None:
        for record in reversed(self._state.steps):
            if record.status == "sent" and record.message_id is not None:
                return record.message_id
        return None

    async def _wait_while_paused(self, current: str) -> None:
        while self._paused:
            self._state.next_step = current
            self._state.waiting_reason = "campaign paused"
            try:
                await workflow.wait_condition(
                    lambda: (
                        not self._paused
                        or self._state.goal is not None
                        or self._archived
                    ),
                    timeout=PAUSE_RECHECK,
                )
            except TimeoutError:
                pass
            self._check_stop()

    async def _plan_send(
        self, input: NurtureInput, step: SendStep, current: str
    ) -> datetime | None:
        """Return when the send may go out; None when the campaign was archived."""
        planned = await workflow.execute_activity_method(
            JourneyActivities.plan_send,
            PlanSendInput(
                lead_id=input.lead_id,
                campaign_id=input.campaign_id,
                channel=step.channel,
                send_rules=self._spec.send_rules,
                earliest=workflow.now(),
            ),
            start_to_close_timeout=DATABASE_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        if planned.campaign_status == "archived":
            self._archived = True
            return None
        if planned.campaign_status == "paused" and not self._paused:
            # The pause signal did not arrive; honour the stored status.
            self._paused = True
            self._state.paused = True
            await self._wait_while_paused(current)
        self._state.waiting_reason = planned.reason
        return planned.send_at

    async def _prepare_and_deliver(
        self,
        input: NurtureInput,
        step: SendStep,
        current: str,
        index: int,
        message_id: str,
    ) -> str:
        """Prepare and send one message; return sent, skipped, failed or deferred."""
        try:
            prepared = await workflow.execute_activity_method(
                MessagingActivities.prepare_message,
                PrepareMessageInput(
                    message_id=message_id,
                    lead_id=input.lead_id,
                    enrollment_id=input.enrollment_id,
                    campaign_id=input.campaign_id,
                    campaign_version=self._state.campaign_version,
                    step=index + 1,
                    channel=step.channel,
                    template=step.template,
                    personalization=step.personalization,
                    scheduled_at=workflow.now(),
                    variant=self._current_variant(),
                ),
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=PREPARE_RETRY,
            )
            if prepared.deferred_until is not None:
                await self._sleep_until(
                    prepared.deferred_until, current, prepared.deferred_reason or ""
                )
                return "deferred"
            if prepared.skipped_reason is not None:
                self._record(current, "skipped", message_id, prepared.skipped_reason)
                return "skipped"
            delivered = await workflow.execute_activity_method(
                DeliveryActivities.deliver_message,
                DeliverMessageInput(message_id=message_id),
                task_queue=_send_queue(step.channel),
                start_to_close_timeout=DELIVER_START_TO_CLOSE,
                heartbeat_timeout=DELIVER_HEARTBEAT,
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
                current,
                input.enrollment_id,
                detail,
            )
            self._record(current, "failed", message_id, detail)
            return "failed"
        if delivered.status == "suppressed":
            # Consent or a suppression changed while the message waited.
            self._record(current, "skipped", message_id, delivered.reason)
            return "skipped"
        self._record(
            current,
            "sent",
            message_id,
            "the provider could not confirm it took the message"
            if delivered.status == "unconfirmed"
            else None,
        )
        return "sent"

    def _current_variant(self) -> str | None:
        """Return the most recent split variant this enrollment took, for analytics."""
        return next(reversed(self._state.variants.values()), None)

    def _record(
        self, step: str, status: StepStatus, message_id: str | None, detail: str | None
    ) -> None:
        self._state.steps.append(
            StepRecord(
                step=step,
                status=status,
                message_id=message_id,
                at=workflow.now(),
                detail=detail,
            )
        )


@workflow.defn
class SplitWinnerWorkflow:
    """Checks the winner rule of every split; a Temporal schedule starts it."""

    @workflow.run
    async def run(self, input: SplitWinnerCheckInput) -> SplitWinnerCheckResult:
        return await workflow.execute_activity_method(
            JourneyActivities.decide_split_winners,
            SplitWinnerCheckInput(now=input.now or workflow.now()),
            start_to_close_timeout=WINNER_CHECK_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )


def _send_queue(channel: str) -> str:
    """Email and SMS have a queue each, rate limited for their provider."""
    queue = workflow.info().task_queue
    return f"{queue}-send-{channel}" if channel in ("email", "sms") else f"{queue}-send"


def _stage_reached(stage: str | None, goal: str) -> bool:
    if stage not in STAGES or goal not in STAGES:
        return False
    return STAGES.index(stage) >= STAGES.index(goal)
