"""The lead workflow: one per lead, id `lead-<lead id>`, for the lead's whole life."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    FailureError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from activities.delivery import DeliveryActivities
    from activities.leads import LeadActivities
    from activities.messaging import MessagingActivities
    from nurture.contracts import (
        BehaviorSignal,
        CrmSyncInput,
        DeliverMessageInput,
        EnrichLeadInput,
        EnrollmentPlan,
        LeadEventSignal,
        LeadState,
        LeadWorkflowInput,
        NurtureInput,
        PlanEnrollmentsInput,
        PrepareMessageInput,
        ScoreLeadInput,
        ScoreSnapshot,
    )
    from nurture.temporal import (
        LEAD_SCORE,
        LEAD_STAGE,
        enrollment_search_attributes,
    )
    from workflows.nurture import NurtureWorkflow
    from workflows.policies import (
        DELIVER_HEARTBEAT,
        DELIVER_RETRY,
        DELIVER_SCHEDULE_TO_CLOSE,
        DELIVER_START_TO_CLOSE,
        PREPARE_RETRY,
        PREPARE_TIMEOUT,
    )

# Workflows started before this marker did not forward events to enrollments.
ROUTE_EVENTS_PATCH = "route-lead-events"
# Workflows started before this marker did not create a sales task at MQL.
HANDOFF_PATCH = "mql-handoff"
HANDOFF_TEMPLATE = "call_hot_lead"
STAGES_BEFORE_MQL = frozenset({"new", "engaged"})
# Signals that are bookkeeping, not something the lead did.
INTERNAL_SIGNALS = frozenset({"resync", "lead_updated"})
DATABASE_ACTIVITY_TIMEOUT = timedelta(seconds=30)
DATABASE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
CRM_TIMEOUT = timedelta(seconds=30)
CRM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=20,
)


@workflow.defn
class LeadWorkflow:
    """Scores the lead, rescoring on each behavior signal, and enrolls it in
    every active campaign whose trigger it meets."""

    @workflow.init
    def __init__(self, input: LeadWorkflowInput) -> None:
        self._state = input.state or LeadState(lead_id=input.lead_id)
        self._pending: list[BehaviorSignal] = []
        self._handled_this_run = 0

    @workflow.run
    async def run(self, input: LeadWorkflowInput) -> None:
        if not self._state.initialized:
            await workflow.execute_activity_method(
                LeadActivities.enrich_lead,
                EnrichLeadInput(lead_id=input.lead_id),
                start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
                retry_policy=DATABASE_RETRY,
            )
            await self._rescore_and_enroll("created")
            self._state.initialized = True
        while True:
            await workflow.wait_condition(
                lambda: bool(self._pending) or self._should_continue_as_new(input)
            )
            if self._pending:
                await self._handle_pending()
            if self._should_continue_as_new(input):
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._pending:
                    continue
                workflow.continue_as_new(
                    LeadWorkflowInput(
                        lead_id=input.lead_id,
                        state=self._state,
                        max_events_per_run=input.max_events_per_run,
                    )
                )

    @workflow.signal
    def behavior(self, signal: BehaviorSignal) -> None:
        """Record a behavior (page view, open, click, form...) to rescore on."""
        self._pending.append(signal)

    @workflow.query
    def state(self) -> LeadState:
        return self._state

    def _should_continue_as_new(self, input: LeadWorkflowInput) -> bool:
        return (
            workflow.info().is_continue_as_new_suggested()
            or self._handled_this_run >= input.max_events_per_run
        )

    async def _handle_pending(self) -> None:
        # Signals that arrive while one rescoring runs are handled together by
        # the next, so a burst of page views costs one rescoring, not one each.
        batch, self._pending = self._pending, []
        self._handled_this_run += len(batch)
        self._state.events_seen += len(batch)
        self._state.last_event_type = batch[-1].type
        self._state.last_event_at = workflow.now()
        await self._rescore_and_enroll("behavior", batch)

    async def _rescore_and_enroll(
        self, event: str, batch: list[BehaviorSignal] | None = None
    ) -> None:
        previous_stage = self._state.current.stage
        snapshot = await workflow.execute_activity_method(
            LeadActivities.score_lead,
            ScoreLeadInput(lead_id=self._state.lead_id),
            start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        self._state.current = snapshot
        workflow.upsert_search_attributes(
            [LEAD_SCORE.value_set(snapshot.score), LEAD_STAGE.value_set(snapshot.stage)]
        )
        if snapshot.stage != previous_stage:
            await self._sync_to_crm(snapshot, previous_stage)
            if (
                previous_stage in STAGES_BEFORE_MQL
                and snapshot.stage == "mql"
                and workflow.patched(HANDOFF_PATCH)
            ):
                await self._hand_off_to_sales()
        await self._enroll(snapshot, event, batch or [])
        if workflow.patched(ROUTE_EVENTS_PATCH):
            stage = snapshot.stage if snapshot.stage != previous_stage else None
            await self._forward(batch or [], stage)

    async def _sync_to_crm(self, snapshot: ScoreSnapshot, previous_stage: str) -> None:
        try:
            await workflow.execute_activity_method(
                LeadActivities.sync_lead_to_crm,
                CrmSyncInput(
                    lead_id=self._state.lead_id,
                    reason=f"stage changed from {previous_stage} to {snapshot.stage}",
                ),
                start_to_close_timeout=CRM_TIMEOUT,
                retry_policy=CRM_RETRY,
            )
        except ActivityError as error:
            # The CRM rejected the lead for good (a property it lacks, a value
            # it rejects). The lead's journey goes on, and the warning logs why.
            workflow.logger.warning(
                "CRM sync of lead %s failed: %s", self._state.lead_id, error
            )

    async def _hand_off_to_sales(self) -> None:
        """Create the sales task for a lead that just became marketing-qualified.

        The task's id is fixed per lead, so a retry or replay never makes a
        second one. The CRM sync before it has already sent the new stage.
        """
        message_id = f"handoff-{self._state.lead_id}"
        try:
            prepared = await workflow.execute_activity_method(
                MessagingActivities.prepare_message,
                PrepareMessageInput(
                    message_id=message_id,
                    lead_id=self._state.lead_id,
                    channel="task",
                    template=HANDOFF_TEMPLATE,
                    scheduled_at=workflow.now(),
                ),
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=PREPARE_RETRY,
            )
            if prepared.skipped_reason or prepared.deferred_until:
                workflow.logger.info(
                    "sales task for lead %s not created: %s",
                    self._state.lead_id,
                    prepared.skipped_reason or prepared.deferred_reason,
                )
                return
            await workflow.execute_activity_method(
                DeliveryActivities.deliver_message,
                DeliverMessageInput(message_id=message_id),
                task_queue=f"{workflow.info().task_queue}-send",
                start_to_close_timeout=DELIVER_START_TO_CLOSE,
                heartbeat_timeout=DELIVER_HEARTBEAT,
                schedule_to_close_timeout=DELIVER_SCHEDULE_TO_CLOSE,
                retry_policy=DELIVER_RETRY,
            )
        except ActivityError as error:
            # The lead stays an MQL in the CRM; only the task is missing.
            workflow.logger.warning(
                "sales task for lead %s failed: %s", self._state.lead_id, error
            )
        self._state.handed_off = True

    async def _enroll(
        self, snapshot: ScoreSnapshot, event: str, batch: list[BehaviorSignal]
    ) -> None:
        result = await workflow.execute_activity_method(
            LeadActivities.plan_enrollments,
            PlanEnrollmentsInput(
                lead_id=self._state.lead_id,
                score=snapshot.score,
                event="created" if event == "created" else "behavior",
                already_started=self._state.started_enrollments,
                event_types=sorted({signal.type for signal in batch}),
                now=workflow.now(),
            ),
            start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        for plan in result.plans:
            await self._start_enrollment(plan)
        self._state.live_enrollments = result.live_workflow_ids

    async def _forward(self, batch: list[BehaviorSignal], stage: str | None) -> None:
        """Send the lead's events and stage change to each of its live enrollments.

        Goals and wait-for-event steps react to them. This path is durable:
        a signal from a workflow is retried by Temporal, unlike one from the API.
        """
        events = [
            LeadEventSignal(
                type=signal.type, message_id=signal.message_id, url=signal.url
            )
            for signal in batch
            if signal.type not in INTERNAL_SIGNALS
        ]
        if stage is not None:
            events.append(LeadEventSignal(type="stage_changed", stage=stage))
        if not events:
            return
        for workflow_id in self._state.live_enrollments:
            handle = workflow.get_external_workflow_handle(workflow_id)
            try:
                for event in events:
                    await handle.signal(NurtureWorkflow.lead_event, event)
            except FailureError as error:
                workflow.logger.info(
                    "enrollment %s not signalled: %s", workflow_id, error.message
                )

    async def _start_enrollment(self, plan: EnrollmentPlan) -> None:
        try:
            await workflow.start_child_workflow(
                NurtureWorkflow.run,
                NurtureInput(
                    enrollment_id=plan.enrollment_id,
                    lead_id=plan.lead_id,
                    campaign_id=plan.campaign_id,
                    campaign_version=plan.campaign_version,
                    campaign=plan.campaign,
                ),
                id=plan.workflow_id,
                # The default policy, TERMINATE, would kill every enrollment
                # in flight when this workflow continues as new.
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                search_attributes=enrollment_search_attributes(
                    plan.lead_id, plan.campaign_id
                ),
            )
        except WorkflowAlreadyStartedError:
            workflow.logger.info(
                "enrollment %s already running as %s",
                plan.enrollment_id,
                plan.workflow_id,
            )
        self._state.started_enrollments.append(plan.enrollment_id)
