"""API keys, for admins: create one for a role, list them, revoke one."""

from datetime import timedelta

from fastapi import APIRouter, Response
from pydantic import Field

from api.deps import AdminDep, SessionDep
from api.errors import ApiError, error_responses
from nurture.keys import ApiKeyOut, Role, create_key, list_keys, revoke_key
from nurture.models import utcnow
from nurture.schemas import CamelModel, DbInteger, StrictCamelModel

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])
ERRORS = error_responses(401, 403, 404, 422)


class KeyCreate(StrictCamelModel):
    role: Role
    name: str = Field(
        min_length=1, max_length=200, description="Who or what uses the key."
    )
    expires_in_days: int | None = Field(
        None, ge=1, le=3650, description="Default: the key never expires."
    )


class KeyCreated(CamelModel):
    key: str = Field(description="The key itself, shown this once only.")
    details: ApiKeyOut


@router.post("", status_code=201, response_model=KeyCreated, responses=ERRORS)
def create_api_key(body: KeyCreate, session: SessionDep, actor: AdminDep) -> KeyCreated:
    """Make a key for a role; the response is the only time the key is shown."""
    expires_at = (
        utcnow() + timedelta(days=body.expires_in_days)
        if body.expires_in_days
        else None
    )
    row, key = create_key(session, body.role, body.name, actor, expires_at)
    session.commit()
    return KeyCreated(key=key, details=ApiKeyOut.from_row(row))


@router.get("", response_model=list[ApiKeyOut], responses=ERRORS)
def list_api_keys(session: SessionDep, _actor: AdminDep) -> list[ApiKeyOut]:
    """List every key with its role and state, never the key itself."""
    return [ApiKeyOut.from_row(row) for row in list_keys(session)]


@router.delete("/{key_id}", status_code=204, responses=ERRORS)
def revoke_api_key(key_id: DbInteger, session: SessionDep, actor: AdminDep) -> Response:
    """Revoke a key: the next request with it gets 401."""
    row = revoke_key(session, key_id, actor)
    if row is None:
        raise ApiError(
            404, "not_found", f"key {key_id} not found: list keys with GET /api/v1/keys"
        )
    session.commit()
    return Response(status_code=204)
