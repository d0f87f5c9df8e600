"""Model training and rescoring of every lead, as workflows with progress."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.scoring import ScoringActivities
    from nurture.contracts import (
        BehaviorSignal,
        RescoreBatchInput,
        RescoreInput,
        TrainingFailure,
        TrainModelInput,
    )
    from nurture.temporal import lead_workflow_id

TRAINING_TIMEOUT = timedelta(hours=2)
# Training reports progress at each stage; a silent worker is presumed dead.
TRAINING_HEARTBEAT = timedelta(minutes=5)
# Retried until TRAINING_GIVE_UP rather than a number of attempts, so a
# database outage of some minutes delays a training instead of failing it.
TRAINING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=["TrainingError", "ModelNotFound"],
)
TRAINING_GIVE_UP = timedelta(hours=2)
BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
RESCORE_TIMEOUT = timedelta(minutes=5)
# Batches per run before continuing as new, which keeps the history short.
RESCORE_BATCHES_PER_RUN = 200


@workflow.defn
class ModelTrainingWorkflow:
    """Trains one model version, id `train-model-<version>`, on the score queue."""

    @workflow.run
    async def run(self, input: TrainModelInput) -> None:
        score_queue = workflow.info().task_queue + "-score"
        try:
            await workflow.execute_activity_method(
                ScoringActivities.train_model,
                input,
                task_queue=score_queue,
                start_to_close_timeout=TRAINING_TIMEOUT,
                schedule_to_close_timeout=TRAINING_GIVE_UP,
                heartbeat_timeout=TRAINING_HEARTBEAT,
                retry_policy=TRAINING_RETRY,
            )
        except ActivityError as error:
            cause = error.cause
            message = (
                cause.message if isinstance(cause, ApplicationError) else str(error)
            )
            await workflow.execute_activity_method(
                ScoringActivities.mark_training_failed,
                TrainingFailure(version=input.version, error=message),
                task_queue=score_queue,
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            )
            raise ApplicationError(
                f"training of model v{input.version} failed: {message}",
                type="TrainingFailed",
            ) from None


@workflow.defn
class RescoreAllWorkflow:
    """Rescores every lead in batches, e.g. after a criteria or model change."""

    def __init__(self) -> None:
        self._rescored = 0

    @workflow.run
    async def run(self, input: RescoreInput) -> int:
        score_queue = workflow.info().task_queue + "-score"
        self._rescored = input.rescored
        after = input.after_id
        for _ in range(RESCORE_BATCHES_PER_RUN):
            result = await workflow.execute_activity_method(
                ScoringActivities.rescore_batch,
                RescoreBatchInput(after_id=after, limit=input.batch_size),
                task_queue=score_queue,
                start_to_close_timeout=RESCORE_TIMEOUT,
            )
            self._rescored += result.rescored
            await self._tell_lead_workflows(result.stage_changed)
            if result.last_id is None:
                return self._rescored
            after = result.last_id
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(
            RescoreInput(
                batch_size=input.batch_size, rescored=self._rescored, after_id=after
            )
        )

    @workflow.query
    def rescored(self) -> int:
        return self._rescored

    async def _tell_lead_workflows(self, lead_ids: list[str]) -> None:
        """Ask each lead whose stage changed to rescore in its own workflow.

        That rescoring reads the new stage, so it updates LeadStage and LeadScore
        and starts the hand-off of a new MQL, as after any behavior.
        """
        for lead_id in lead_ids:
            handle = workflow.get_external_workflow_handle(lead_workflow_id(lead_id))
            try:
                await handle.signal("behavior", BehaviorSignal(type="resync"))
            except FailureError as error:
                # Leads imported without nurturing have no workflow.
                workflow.logger.info(
                    "lead %s not signalled: %s", lead_id, error.message
                )
