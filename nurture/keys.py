"""API keys with roles: created by admins, stored hashed, expiring, revocable.

A key is `nk_` followed by 32 random bytes in URL-safe base64. Such a key has
256 bits of entropy, so one SHA-256 hash is enough to store it: the hash
cannot be reversed or guessed, and lookup by hash is a single index read.
`NURTURE_API_KEY` remains a key of its own with the admin role, so a new
installation can create the first keys.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlmodel import Session, col, select

from nurture.models import ApiKey, AuditEntry, utcnow
from nurture.schemas import CamelModel

Role = Literal["admin", "marketer", "sales_rep", "integration"]
ROLES: tuple[Role, ...] = ("admin", "marketer", "sales_rep", "integration")
KEY_PREFIX = "nk_"
# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=5)


@dataclass(frozen=True)
class Principal:
    """The sender of a request: its actor name for the audit log, and its role."""

    actor: str
    role: Role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    role: str,
    name: str,
    created_by: str,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return its row and the key itself, shown only once."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("missing key name: name who or what uses the key")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name.strip(),
        role=role,
        prefix=key[:10],
        key_hash=hash_key(key),
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    session.add(
        AuditEntry(
            actor=created_by,
            action="key.created",
            entity_type="api_key",
            entity_id=str(row.id),
            detail={"name": row.name, "role": role, "prefix": row.prefix},
        )
    )
    return row, key


def revoke_key(session: Session, key_id: int, revoked_by: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.add(
            AuditEntry(
                actor=revoked_by,
                action="key.revoked",
                entity_type="api_key",
                entity_id=str(key_id),
                detail={"name": row.name, "role": row.role, "prefix": row.prefix},
            )
        )
    return row


def authenticate(session: Session, key: str) -> Principal | None:
    """Return the principal of a stored key, or None if unknown, expired or revoked."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    now = utcnow()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.add(row)
        session.commit()
    return Principal(actor=f"key:{row.id}:{row.name}", role=row.role)  # type: ignore[arg-type]


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))).all())


class ApiKeyOut(CamelModel):
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKey) -> "ApiKeyOut":
        assert row.id is not None
        return cls(
            id=row.id,
            name=row.name,
            role=row.role,
            prefix=row.prefix,
            created_at=row.created_at,
            created_by=row.created_by,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
        )
