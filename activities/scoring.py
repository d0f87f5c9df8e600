"""Scoring activities: model training and batch rescoring, on the score queue.

Training is CPU-bound, so it runs on a task queue of its own
(`<queue>-score`) that can get its own worker processes.
"""

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.config import Settings
from nurture.contracts import (
    RescoreBatchInput,
    RescoreBatchResult,
    TrainingFailure,
    TrainModelInput,
)
from nurture.db import session_scope
from nurture.lead_scoring import (
    feature_row,
    load_activity,
    load_context,
    rescore_many,
    summarize,
)
from nurture.learning import FeatureRow, TrainingError, TrainingOptions, train
from nurture.models import Lead, ScoringModel, utcnow

logger = logging.getLogger(__name__)

# Leads read per statement while gathering the training set.
READ_BATCH = 2000
# Progress is written to the database at most this often, in seconds.
PROGRESS_INTERVAL = 1.0


class ScoringActivities:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def _progress(self, version: int) -> Callable[[str, float], None]:
        last = 0.0

        def report(stage: str, fraction: float) -> None:
            nonlocal last
            activity.heartbeat(stage, fraction)
            now = time.monotonic()
            if now - last < PROGRESS_INTERVAL and fraction < 1:
                return
            last = now
            with session_scope(self.engine) as session:
                model = session.get(ScoringModel, version)
                if model is not None:
                    model.stage = stage
                    model.progress = round(fraction, 3)
                    session.add(model)

        return report

    def _training_set(
        self, report: Callable[[str, float], None]
    ) -> tuple[list[FeatureRow], list[int]]:
        rows: list[FeatureRow] = []
        labels: list[int] = []
        now = utcnow()
        with session_scope(self.engine) as session:
            # In the order the leads came in, so a given seed always holds out
            # the same leads.
            ids = list(
                session.exec(
                    select(Lead.id)
                    # An erased lead's features are blank: it would teach
                    # the model nothing true.
                    .where(col(Lead.outcome).is_not(None), col(Lead.status) != "erased")
                    .order_by(col(Lead.created_at), col(Lead.id))
                ).all()
            )
            for start in range(0, len(ids), READ_BATCH):
                chunk = ids[start : start + READ_BATCH]
                found = {
                    lead.id: lead
                    for lead in session.exec(
                        select(Lead).where(col(Lead.id).in_(chunk))
                    ).all()
                }
                activity_by_lead = load_activity(session, chunk)
                for lead_id in chunk:
                    lead = found[lead_id]
                    summary = summarize(lead, activity_by_lead[lead_id], now)
                    rows.append(feature_row(lead, summary))
                    labels.append(1 if lead.outcome == "converted" else 0)
                report("reading leads with outcomes", 0.2 * len(rows) / len(ids))
                session.expunge_all()
        return rows, labels

    @activity.defn
    def train_model(self, input: TrainModelInput) -> None:
        """Train the model of a stored version on every lead with an outcome."""
        report = self._progress(input.version)
        with session_scope(self.engine) as session:
            model = session.get(ScoringModel, input.version)
            if model is None:
                raise ApplicationError(
                    f"model version {input.version} not found",
                    type="ModelNotFound",
                    non_retryable=True,
                )
            if model.status != "training":
                return
            options = TrainingOptions.model_validate(model.options)
            criteria = load_context(session, self.settings.mql_threshold).criteria
        excluded = sorted(
            set(options.exclude_features) | set(criteria.model.exclude_features)
        )
        options = options.model_copy(update={"exclude_features": excluded})
        rows, labels = self._training_set(report)

        def scaled(stage: str, fraction: float) -> None:
            report(stage, 0.2 + 0.8 * fraction)

        try:
            trained = train(rows, labels, options, progress=scaled)
        except TrainingError as error:
            raise ApplicationError(
                str(error), type="TrainingError", non_retryable=True
            ) from None
        with session_scope(self.engine) as session:
            model = session.get(ScoringModel, input.version)
            assert model is not None
            model.status = "ready"
            model.stage = "done"
            model.progress = 1.0
            model.options = options.model_dump(mode="json", by_alias=True)
            model.metrics = trained.metrics.model_dump(mode="json", by_alias=True)
            model.features = [
                feature.model_dump(mode="json", by_alias=True)
                for feature in trained.features
            ]
            model.dropped_features = dict(trained.dropped)
            model.artifact = trained.to_bytes()
            model.finished_at = utcnow()
            session.add(model)
        logger.info(
            "model v%s trained on %d leads: ROC AUC %.3f, accuracy %.3f",
            input.version,
            len(rows),
            trained.metrics.roc_auc,
            trained.metrics.accuracy,
        )

    @activity.defn
    def mark_training_failed(self, input: TrainingFailure) -> None:
        with session_scope(self.engine) as session:
            model = session.get(ScoringModel, input.version)
            if model is None or model.status != "training":
                return
            model.status = "failed"
            model.stage = "failed"
            model.error = input.error
            model.finished_at = utcnow()
            session.add(model)

    @activity.defn
    def rescore_batch(self, input: RescoreBatchInput) -> RescoreBatchResult:
        """Rescore the next batch of leads in id order with the criteria in force."""
        with session_scope(self.engine) as session:
            ids = list(
                session.exec(
                    select(Lead.id)
                    .where(col(Lead.id) > input.after_id)
                    .order_by(col(Lead.id))
                    .limit(input.limit)
                ).all()
            )
            if not ids:
                return RescoreBatchResult(rescored=0)
            moved = rescore_many(session, ids, self.settings.mql_threshold)
        return RescoreBatchResult(
            rescored=len(ids), last_id=ids[-1], stage_changed=moved
        )
