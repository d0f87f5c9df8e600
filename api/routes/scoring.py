"""Scoring: the criteria admins tune, scores on demand, and the learned models."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.deps import (
    AdminDep,
    EngineDep,
    ReadLeadsDep,
    SessionDep,
    SettingsDep,
    TemporalDep,
)
from api.errors import ApiError, error_responses
from nurture.contracts import RescoreInput, TrainModelInput
from nurture.criteria import ScoringCriteria, built_in_criteria
from nurture.db import session_scope
from nurture.lead_scoring import load_context
from nurture.learning import TrainingOptions
from nurture.models import AuditEntry, ScoringCriteriaVersion, ScoringModel, utcnow
from nurture.schemas import CamelModel, DbInteger
from nurture.scoring import ScoreResult, ScoringInput, score
from workflows.training import ModelTrainingWorkflow, RescoreAllWorkflow

router = APIRouter(prefix="/api/v1/scoring", tags=["scoring"])
ERRORS = error_responses(401, 404, 422)
RESCORE_WORKFLOW_ID = "rescore-all-leads"


@router.post(
    "/calculate", response_model=ScoreResult, responses=error_responses(401, 422)
)
def calculate_score(
    data: ScoringInput, session: SessionDep, settings: SettingsDep, _actor: ReadLeadsDep
) -> ScoreResult:
    """Score a lead from its facts by the criteria and model in force, with reasons."""
    context = load_context(session, settings.mql_threshold)
    return score(
        data,
        utcnow(),
        rules=context.rules,
        criteria_version=context.criteria_version,
        model=context.model,
        model_version=context.model_version,
        model_weight=context.criteria.model.weight,
    )


class CriteriaVersion(CamelModel):
    version: int = Field(description="0 is the built-in default, never stored.")
    created_at: datetime | None
    created_by: str | None
    note: str | None
    criteria: ScoringCriteria


class CriteriaVersionSummary(CamelModel):
    version: int
    created_at: datetime
    created_by: str
    note: str | None


class CriteriaChange(ScoringCriteria):
    note: str | None = Field(None, max_length=500, description="Why it changed.")


def _criteria_view(
    session: Session, default_threshold: int, version: int | None = None
) -> CriteriaVersion:
    """Return a stored version of the criteria, or the one in force for None."""
    if version is None:
        version = load_context(session, default_threshold).criteria_version
    if version == 0:
        return CriteriaVersion(
            version=0,
            created_at=None,
            created_by=None,
            note="built-in default",
            criteria=built_in_criteria(default_threshold),
        )
    stored = session.get(ScoringCriteriaVersion, version)
    if stored is None:
        raise ApiError(404, "not_found", f"no scoring criteria version {version}")
    return CriteriaVersion(
        version=version,
        created_at=stored.created_at,
        created_by=stored.created_by,
        note=stored.note,
        criteria=ScoringCriteria.model_validate(stored.criteria),
    )


@router.get("/criteria", response_model=CriteriaVersion, responses=ERRORS)
def read_criteria(
    session: SessionDep, settings: SettingsDep, _actor: ReadLeadsDep
) -> CriteriaVersion:
    """Read the criteria in force: every criterion, its points and thresholds."""
    return _criteria_view(session, settings.mql_threshold)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Name what differs between two criteria documents, for the audit log."""
    changed = [
        key
        for key in sorted(set(before) | set(after))
        if key != "criteria" and before.get(key) != after.get(key)
    ]
    old = {c["id"]: c for c in before.get("criteria", [])}
    new = {c["id"]: c for c in after.get("criteria", [])}
    changed += [f"criteria.{key} added" for key in new if key not in old]
    changed += [f"criteria.{key} removed" for key in old if key not in new]
    changed += [
        f"criteria.{key} changed" for key in new if key in old and new[key] != old[key]
    ]
    return changed


@router.put("/criteria", response_model=CriteriaVersion, responses=ERRORS)
def replace_criteria(
    change: CriteriaChange, session: SessionDep, settings: SettingsDep, actor: AdminDep
) -> CriteriaVersion:
    """Store a new version of the criteria; scoring uses it from the next lead on.

    Leads keep their scores until they are rescored: by their next behavior,
    or all at once with POST /api/v1/scoring/rescore.
    """
    before = _criteria_view(session, settings.mql_threshold)
    criteria = ScoringCriteria.model_validate(change.model_dump(exclude={"note"}))
    document = criteria.model_dump(mode="json", by_alias=True)
    stored = ScoringCriteriaVersion(
        criteria=document, created_by=actor, note=change.note
    )
    session.add(stored)
    session.flush()
    assert stored.version is not None
    session.add(
        AuditEntry(
            actor=actor,
            action="scoring.criteria_changed",
            entity_type="scoring_criteria",
            entity_id=str(stored.version),
            detail={
                "previous_version": before.version,
                "changes": _changes(
                    before.criteria.model_dump(mode="json", by_alias=True), document
                ),
                "note": change.note,
            },
        )
    )
    session.commit()
    return _criteria_view(session, settings.mql_threshold, stored.version)


@router.get(
    "/criteria/versions",
    response_model=list[CriteriaVersionSummary],
    responses=error_responses(401),
)
def list_criteria_versions(
    session: SessionDep, _actor: ReadLeadsDep
) -> list[CriteriaVersionSummary]:
    """List the stored versions of the criteria, newest first."""
    rows = session.exec(
        select(ScoringCriteriaVersion).order_by(
            col(ScoringCriteriaVersion.version).desc()
        )
    ).all()
    return [
        CriteriaVersionSummary(
            version=row.version or 0,
            created_at=row.created_at,
            created_by=row.created_by,
            note=row.note,
        )
        for row in rows
    ]


@router.get(
    "/criteria/versions/{version}", response_model=CriteriaVersion, responses=ERRORS
)
def read_criteria_version(
    version: DbInteger,
    session: SessionDep,
    settings: SettingsDep,
    _actor: ReadLeadsDep,
) -> CriteriaVersion:
    """Read one stored version of the criteria."""
    return _criteria_view(session, settings.mql_threshold, version)


class RescoreStarted(CamelModel):
    workflow_id: str
    status: str


@router.post(
    "/rescore",
    status_code=202,
    response_model=RescoreStarted,
    responses=error_responses(401, 409, 503),
)
async def rescore_all(
    _actor: AdminDep, settings: SettingsDep, temporal: TemporalDep
) -> RescoreStarted:
    """Rescore every lead in the background with the criteria and model in force."""
    try:
        await temporal.start_workflow(
            RescoreAllWorkflow.run,
            RescoreInput(),
            id=RESCORE_WORKFLOW_ID,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        raise ApiError(
            409,
            "conflict",
            "a rescoring of all leads is already running; wait for it to finish",
        ) from None
    return RescoreStarted(workflow_id=RESCORE_WORKFLOW_ID, status="running")


class ModelView(CamelModel):
    version: int
    status: str = Field(description="training, ready or failed.")
    stage: str
    progress: float
    promoted: bool
    promoted_at: datetime | None
    options: dict[str, Any]
    metrics: dict[str, Any] | None
    features: list[dict[str, Any]]
    dropped_features: dict[str, str]
    error: str | None
    workflow_id: str | None
    created_at: datetime
    created_by: str
    finished_at: datetime | None

    @classmethod
    def of(cls, model: ScoringModel) -> "ModelView":
        return cls(
            version=model.version or 0,
            status=model.status,
            stage=model.stage,
            progress=model.progress,
            promoted=model.promoted,
            promoted_at=model.promoted_at,
            options=model.options,
            metrics=model.metrics,
            features=model.features,
            dropped_features=model.dropped_features,
            error=model.error,
            workflow_id=model.workflow_id,
            created_at=model.created_at,
            created_by=model.created_by,
            finished_at=model.finished_at,
        )


def _create_model(engine: Any, options: TrainingOptions, actor: str) -> ScoringModel:
    with session_scope(engine) as session:
        model = ScoringModel(
            options=options.model_dump(mode="json", by_alias=True), created_by=actor
        )
        session.add(model)
        session.flush()
        model.workflow_id = f"train-model-{model.version}"
        session.add(
            AuditEntry(
                actor=actor,
                action="scoring.model_training_started",
                entity_type="scoring_model",
                entity_id=str(model.version),
                detail={"options": model.options},
            )
        )
        return model


@router.post(
    "/models",
    status_code=202,
    response_model=ModelView,
    responses=error_responses(401, 422, 503),
)
async def train_model(
    response: Response,
    actor: AdminDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalDep,
    options: TrainingOptions | None = None,
) -> ModelView:
    """Train a model on the leads with outcomes, as a workflow; poll it for progress.

    The held-out metrics come with the model; it scores nothing until promoted.
    """
    model = await run_in_threadpool(
        _create_model, engine, options or TrainingOptions(), actor
    )
    assert model.version is not None and model.workflow_id is not None
    await temporal.start_workflow(
        ModelTrainingWorkflow.run,
        TrainModelInput(version=model.version),
        id=model.workflow_id,
        task_queue=settings.task_queue,
    )
    response.headers["Location"] = f"/api/v1/scoring/models/{model.version}"
    return ModelView.of(model)


@router.get("/models", response_model=list[ModelView], responses=error_responses(401))
def list_models(
    session: SessionDep,
    _actor: ReadLeadsDep,
    limit: int = Query(50, ge=1, le=200),
) -> list[ModelView]:
    """List trained models, newest first, with their metrics and status."""
    rows = session.exec(
        select(ScoringModel).order_by(col(ScoringModel.version).desc()).limit(limit)
    ).all()
    return [ModelView.of(row) for row in rows]


def _model_or_404(session: Session, version: int) -> ScoringModel:
    model = session.get(ScoringModel, version)
    if model is None:
        raise ApiError(
            404,
            "not_found",
            f"no model version {version}: list them with GET /api/v1/scoring/models",
        )
    return model


@router.get("/models/{version}", response_model=ModelView, responses=ERRORS)
def read_model(
    version: DbInteger, session: SessionDep, _actor: ReadLeadsDep
) -> ModelView:
    """Read a model: training progress, then its held-out metrics and features."""
    return ModelView.of(_model_or_404(session, version))


def _promote(session: Session, model: ScoringModel, actor: str, action: str) -> None:
    current = session.exec(
        select(ScoringModel).where(col(ScoringModel.promoted).is_(True))
    ).all()
    for other in current:
        other.promoted = False
        session.add(other)
    model.promoted = True
    model.promoted_at = utcnow()
    session.add(model)
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity_type="scoring_model",
            entity_id=str(model.version),
            detail={"previous_version": current[0].version if current else None},
        )
    )
    session.commit()


@router.post(
    "/models/{version}/promote",
    response_model=ModelView,
    responses=error_responses(401, 404, 409),
)
def promote_model(
    version: DbInteger, session: SessionDep, actor: AdminDep
) -> ModelView:
    """Make a trained model the one that scores leads, from the next score on."""
    model = _model_or_404(session, version)
    if model.status != "ready":
        raise ApiError(
            409,
            "conflict",
            f"model v{version} is {model.status}; only a ready model can be promoted",
        )
    _promote(session, model, actor, "scoring.model_promoted")
    return ModelView.of(model)


@router.post(
    "/models/rollback",
    response_model=ModelView,
    responses=error_responses(401, 409),
)
def roll_back_model(session: SessionDep, actor: AdminDep) -> ModelView:
    """Promote again the model promoted before the current one.

    After a demote, the last model that was promoted comes back.
    """
    current = session.exec(
        select(ScoringModel).where(col(ScoringModel.promoted).is_(True))
    ).first()
    query = select(ScoringModel).where(
        col(ScoringModel.promoted_at).is_not(None), ScoringModel.status == "ready"
    )
    if current is not None:
        query = query.where(ScoringModel.version != current.version)
    previous = session.exec(
        query.order_by(col(ScoringModel.promoted_at).desc())
    ).first()
    if previous is None and current is None:
        raise ApiError(
            409, "conflict", "no model was ever promoted, so there is no rollback"
        )
    if previous is None:
        assert current is not None
        raise ApiError(
            409,
            "conflict",
            f"model v{current.version} is the only one ever promoted; "
            "demote it with POST /api/v1/scoring/models/demote",
        )
    _promote(session, previous, actor, "scoring.model_rolled_back")
    return ModelView.of(previous)


@router.post(
    "/models/demote",
    status_code=204,
    responses=error_responses(401, 409),
)
def demote_model(session: SessionDep, actor: AdminDep) -> None:
    """Stop using any model: scores come from the rules alone again."""
    current = session.exec(
        select(ScoringModel).where(col(ScoringModel.promoted).is_(True))
    ).first()
    if current is None:
        raise ApiError(409, "conflict", "no model is promoted")
    current.promoted = False
    session.add(current)
    session.add(
        AuditEntry(
            actor=actor,
            action="scoring.model_demoted",
            entity_type="scoring_model",
            entity_id=str(current.version),
            detail={},
        )
    )
    session.commit()
