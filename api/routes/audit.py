"""The audit log, for admins: configuration and key changes, lead reads."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import AdminDep, SessionDep
from api.errors import error_responses
from nurture.models import AuditEntry
from nurture.schemas import CamelModel, DbInteger

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditEntryOut(CamelModel):
    id: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    detail: dict[str, Any]


class AuditPage(CamelModel):
    items: list[AuditEntryOut]
    next_before_id: int | None = None


@router.get("", response_model=AuditPage, responses=error_responses(401, 403, 422))
def list_audit_entries(
    session: SessionDep,
    _actor: AdminDep,
    action: str | None = None,
    actor: str | None = None,
    entity_type: Annotated[str | None, Query(alias="entityType")] = None,
    entity_id: Annotated[str | None, Query(alias="entityId")] = None,
    since: datetime | None = None,
    before_id: Annotated[
        DbInteger | None,
        Query(alias="beforeId", description="Page: the previous nextBeforeId."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """List audit entries, newest first, filtered by action, actor or entity."""
    query = select(AuditEntry)
    for column, value in (
        (AuditEntry.action, action),
        (AuditEntry.actor, actor),
        (AuditEntry.entity_type, entity_type),
        (AuditEntry.entity_id, entity_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(col(AuditEntry.at) >= since)
    if before_id is not None:
        query = query.where(col(AuditEntry.id) < before_id)
    rows = session.exec(
        query.order_by(col(AuditEntry.id).desc()).limit(limit + 1)
    ).all()
    page = rows[:limit]
    return AuditPage(
        items=[
            AuditEntryOut(
                id=row.id or 0,
                at=row.at,
                actor=row.actor,
                action=row.action,
                entity_type=row.entity_type,
                entity_id=row.entity_id,
                detail=row.detail,
            )
            for row in page
        ],
        next_before_id=page[-1].id if len(rows) > limit and page else None,
    )
