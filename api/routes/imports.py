"""CSV import of leads and outcomes: streamed, in batches, with progress."""

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import Field, ValidationError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, MarketingDep, SessionDep, SettingsDep
from api.errors import ApiError, FieldError, error_responses, from_pydantic
from nurture.consent import record_capture_consent
from nurture.csv_import import (
    AcceptedRow,
    ImportMapping,
    MappingError,
    RejectedRow,
    read_rows,
)
from nurture.db import session_scope
from nurture.enrichment import enrich
from nurture.lead_scoring import ACTIVITY_AS_OF, rescore_many
from nurture.leads import lead_columns
from nurture.models import AuditEntry, Lead, LeadImport, utcnow
from nurture.outcomes import record_outcome
from nurture.schemas import CamelModel

router = APIRouter(prefix="/api/v1/leads", tags=["imports"])
logger = logging.getLogger(__name__)

# Rows stored and scored per transaction; progress moves on after each.
BATCH_ROWS = 500
# Rejected rows kept with their reasons; the count covers them all.
MAX_REPORTED_ERRORS = 1000
COPY_CHUNK = 1 << 20


class ImportView(CamelModel):
    id: str
    status: str = Field(description="running, completed or failed.")
    filename: str | None
    created_at: datetime
    created_by: str
    finished_at: datetime | None
    rows_read: int
    accepted: int = Field(description="New leads.")
    merged: int = Field(description="Rows merged into a lead we already had.")
    rejected: int
    outcomes: int = Field(description="Outcomes recorded.")
    errors: list[dict[str, Any]] = Field(
        description=f"The first {MAX_REPORTED_ERRORS} rejected rows: line and reasons."
    )
    error: str | None = Field(description="Why a failed import stopped.")

    @classmethod
    def of(cls, job: LeadImport) -> "ImportView":
        return cls(
            id=job.id,
            status=job.status,
            filename=job.filename,
            created_at=job.created_at,
            created_by=job.created_by,
            finished_at=job.finished_at,
            rows_read=job.rows_read,
            accepted=job.accepted,
            merged=job.merged,
            rejected=job.rejected,
            outcomes=job.outcomes,
            errors=job.errors,
            error=job.error,
        )


def _parse_mapping(text: str) -> ImportMapping:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(
            422,
            "validation_failed",
            f"mapping is not valid JSON: {error.msg} at character {error.pos}",
            errors=[FieldError(path="mapping", message=error.msg, type="json_invalid")],
        ) from None
    try:
        return ImportMapping.model_validate(raw)
    except ValidationError as error:
        raise from_pydantic(error, prefix=("mapping",)) from None


def _mapping_error(error: MappingError) -> ApiError:
    return ApiError(
        422,
        "validation_failed",
        "the mapping does not fit the file's header: " + str(error),
        errors=[
            FieldError(
                # The header's problems are the file's; the rest the mapping's.
                path="file"
                if item["path"].startswith("(")
                else f"mapping.{item['path']}",
                message=item["message"],
                type=item.get("type", "value_error"),
            )
            for item in error.errors
        ],
    )


class _Counts:
    def __init__(self) -> None:
        self.rows_read = 0
        self.accepted = 0
        self.merged = 0
        self.rejected = 0
        self.outcomes = 0
        self.errors: list[dict[str, Any]] = []


def _find_existing(session: Session, rows: list[AcceptedRow]) -> dict[str, Lead]:
    """Index the stored leads that rows of a batch match, by identity key."""
    external = [r.lead.external_id for r in rows if r.lead.external_id]
    emails = [r.lead.contact.email.lower() for r in rows if r.lead.contact.email]
    phones = [r.lead.contact.phone for r in rows if r.lead.contact.phone]
    found: dict[str, Lead] = {}
    if external:
        for lead in session.exec(
            select(Lead).where(col(Lead.external_id).in_(external))
        ).all():
            found[f"x:{lead.external_id}"] = lead
    if emails:
        for lead in session.exec(
            select(Lead).where(col(Lead.email_normalized).in_(emails))
        ).all():
            found[f"e:{lead.email_normalized}"] = lead
    if phones:
        for lead in session.exec(
            select(Lead)
            .where(col(Lead.phone).in_(phones))
            .order_by(col(Lead.created_at).desc())
        ).all():
            found[f"p:{lead.phone}"] = lead
    return found


# Identity key prefix and the columns that carry it.
IDENTITY_COLUMNS = {
    "x:": ("external_id",),
    "e:": ("email", "email_normalized"),
    "p:": ("phone", "phone_status"),
}


def _key_value(prefix: str, data: Any) -> str:
    if prefix == "x:":
        return data.external_id or ""
    if prefix == "e:":
        return (data.contact.email or "").lower()
    return data.contact.phone or ""


def _keys(row: AcceptedRow) -> list[str]:
    """Return the row's identity keys, strongest first: id, email, phone."""
    return [
        prefix + _key_value(prefix, row.lead)
        for prefix in IDENTITY_COLUMNS
        if _key_value(prefix, row.lead)
    ]


def _store_batch(
    engine: sa.Engine,
    job_id: str,
    rows: list[AcceptedRow],
    actor: str,
    nurture: bool,
    counts: _Counts,
    default_threshold: int,
) -> None:
    """Create or merge the leads of a batch, record outcomes, and score them."""
    now = utcnow()
    with session_scope(engine) as session:
        known = _find_existing(session, rows)
        touched: dict[str, Lead] = {}
        for row in rows:
            data = row.lead
            keys = _keys(row)
            lead = next((known[key] for key in keys if key in known), None)
            columns = lead_columns(data.contact, data.company, data.source)
            if data.external_id:
                columns["external_id"] = data.external_id
            activity: dict[str, Any] = dict(data.activity)
            if activity:
                activity[ACTIVITY_AS_OF] = now.isoformat()
            if lead is None:
                lead = Lead(
                    **columns,
                    custom_fields=dict(data.custom_fields),
                    activity=activity,
                )
                lead.enrichment = enrich(lead.model_dump()).model_dump()
                session.add(lead)
                counts.accepted += 1
            else:
                # An import never moves an address or id that another lead holds.
                owned_elsewhere = {
                    column
                    for key, columns_of_key in IDENTITY_COLUMNS.items()
                    if known.get(key + _key_value(key, data)) not in (None, lead)
                    for column in columns_of_key
                }
                for key, value in columns.items():
                    if key not in owned_elsewhere:
                        setattr(lead, key, value)
                if data.custom_fields:
                    lead.custom_fields = {**lead.custom_fields, **data.custom_fields}
                if activity:
                    lead.activity = activity
                lead.enrichment = enrich(lead.model_dump()).model_dump()
                lead.updated_at = now
                counts.merged += 1
            for key in keys:
                known[key] = lead
            session.flush()
            if data.outcome is not None:
                record_outcome(session, lead, data.outcome, f"import:{job_id}", actor)
                counts.outcomes += 1
            if data.consent is not None:
                record_capture_consent(
                    session, lead, data.consent, actor, source=f"import:{job_id}"
                )
            # The reconciler starts (or signals) the workflow of each lead left
            # unsynced. Leads with an outcome are history: nothing to nurture.
            wants_workflow = (
                nurture and lead.outcome is None and lead.status == "active"
            )
            if wants_workflow:
                lead.workflow_synced_at = None
            elif lead.workflow_synced_at is None:
                lead.workflow_synced_at = now
            touched[lead.id] = lead
        session.flush()
        rescore_many(session, list(touched), default_threshold, now)
        job = session.get(LeadImport, job_id)
        assert job is not None
        _save_counts(job, counts)
        session.add(job)


def _save_counts(job: LeadImport, counts: _Counts) -> None:
    job.rows_read = counts.rows_read
    job.accepted = counts.accepted
    job.merged = counts.merged
    job.rejected = counts.rejected
    job.outcomes = counts.outcomes
    job.errors = list(counts.errors)


def _finish(
    engine: sa.Engine, job_id: str, counts: _Counts, actor: str, error: str | None
) -> None:
    with session_scope(engine) as session:
        job = session.get(LeadImport, job_id)
        assert job is not None
        _save_counts(job, counts)
        job.status = "failed" if error else "completed"
        job.error = error
        job.finished_at = utcnow()
        session.add(job)
        session.add(
            AuditEntry(
                actor=actor,
                action="lead.import_failed" if error else "lead.import_completed",
                entity_type="lead_import",
                entity_id=job_id,
                detail={
                    "accepted": counts.accepted,
                    "merged": counts.merged,
                    "rejected": counts.rejected,
                    "outcomes": counts.outcomes,
                    "error": error,
                },
            )
        )


def _batches(
    items: Iterator[AcceptedRow | RejectedRow], counts: _Counts
) -> Iterator[list[AcceptedRow]]:
    batch: list[AcceptedRow] = []
    for item in items:
        counts.rows_read += 1
        if isinstance(item, RejectedRow):
            counts.rejected += 1
            if len(counts.errors) < MAX_REPORTED_ERRORS:
                counts.errors.append({"line": item.line, "errors": item.errors})
            continue
        batch.append(item)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


# NOTE: an import runs in a thread of the API process that received it. If
# that process stops, the import stays "running"; importing the file again
# merges the rows already stored and adds the rest.
def run_import(
    engine: sa.Engine,
    job_id: str,
    path: Path,
    mapping: ImportMapping,
    actor: str,
    nurture: bool,
    default_threshold: int,
) -> None:
    """Read the file row by row and store it batch by batch, noting progress."""
    counts = _Counts()
    error = None
    try:
        with path.open("rb") as stream:
            for batch in _batches(read_rows(stream, mapping), counts):
                _store_batch(
                    engine, job_id, batch, actor, nurture, counts, default_threshold
                )
    except Exception as failure:  # the report must state why it stopped
        logger.exception("import %s failed", job_id)
        error = f"{type(failure).__name__}: {failure}"
    finally:
        path.unlink(missing_ok=True)
    _finish(engine, job_id, counts, actor, error)
    logger.info(
        "import %s: %d rows, %d new, %d merged, %d rejected",
        job_id,
        counts.rows_read,
        counts.accepted,
        counts.merged,
        counts.rejected,
    )


def _prepare(
    engine: sa.Engine,
    upload: UploadFile,
    mapping: ImportMapping,
    actor: str,
) -> tuple[LeadImport, Path]:
    """Copy the upload to a file of our own and check its header against the mapping.

    The upload's temporary file closes with the request; the import goes on after.
    """
    with tempfile.NamedTemporaryFile(
        prefix="nurture-import-", suffix=".csv", delete=False
    ) as copy:
        shutil.copyfileobj(upload.file, copy, COPY_CHUNK)
        path = Path(copy.name)
    try:
        with path.open("rb") as stream:
            next(iter(read_rows(stream, mapping)), None)
    except MappingError as error:
        path.unlink(missing_ok=True)
        raise _mapping_error(error) from None
    with session_scope(engine) as session:
        job = LeadImport(
            filename=upload.filename,
            mapping=mapping.model_dump(mode="json", by_alias=True),
            created_by=actor,
        )
        session.add(job)
        session.flush()
        session.add(
            AuditEntry(
                actor=actor,
                action="lead.import_started",
                entity_type="lead_import",
                entity_id=job.id,
                detail={"filename": upload.filename},
            )
        )
    return job, path


@router.post(
    "/import",
    status_code=202,
    response_model=ImportView,
    responses=error_responses(401, 422),
)
async def import_leads(
    request: Request,
    response: Response,
    actor: MarketingDep,
    settings: SettingsDep,
    engine: EngineDep,
    file: Annotated[UploadFile, File(description="The CSV file, with a header row.")],
    mapping: Annotated[
        str,
        Form(
            description=(
                'JSON: {"columns": {"Email": "contact.email", "Converted": '
                '"outcome", ...}, "unmapped": "custom", "nullValues": ["Select"]}'
            )
        ),
    ] = "{}",
    nurture: Annotated[
        bool,
        Form(
            description=(
                "Start nurturing the imported leads that have no outcome; "
                "false only stores and scores them."
            )
        ),
    ] = True,
) -> ImportView:
    """Import leads (and their outcomes) from a CSV file of any size.

    The file is checked against the mapping at once (422 names each problem);
    rows are then stored in the background. Poll the Location for progress
    and, at the end, the report of accepted, merged and rejected rows.
    """
    parsed = _parse_mapping(mapping)
    job, path = await run_in_threadpool(_prepare, engine, file, parsed, actor)
    task = asyncio.create_task(
        asyncio.to_thread(
            run_import,
            engine,
            job.id,
            path,
            parsed,
            actor,
            nurture,
            settings.mql_threshold,
        )
    )
    running: set[asyncio.Task[None]] = request.app.state.background_tasks
    running.add(task)
    task.add_done_callback(running.discard)
    response.headers["Location"] = f"/api/v1/leads/imports/{job.id}"
    return ImportView.of(job)


@router.get(
    "/imports/{import_id}",
    response_model=ImportView,
    responses=error_responses(401, 404),
)
def read_import(
    import_id: str, session: SessionDep, _actor: MarketingDep
) -> ImportView:
    """Read an import's progress while it runs, and its report when it is done."""
    job = session.get(LeadImport, import_id)
    if job is None:
        raise ApiError(404, "not_found", f"no import {import_id}")
    return ImportView.of(job)


@router.get("/imports", response_model=list[ImportView], responses=error_responses(401))
def list_imports(session: SessionDep, _actor: MarketingDep) -> list[ImportView]:
    """List the 50 latest imports, newest first."""
    rows = session.exec(
        select(LeadImport).order_by(col(LeadImport.created_at).desc()).limit(50)
    ).all()
    return [ImportView.of(row) for row in rows]
