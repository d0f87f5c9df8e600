"""Shared dependencies of the routes: settings, database, Temporal and the API key."""

import asyncio
import hmac
from collections.abc import Iterator
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from temporalio.client import Client
from temporalio.service import RPCError

from api.errors import ApiError
from nurture.config import Settings
from nurture.temporal import connect


class TemporalUnavailable(ApiError):
    def __init__(self, address: str, error: Exception) -> None:
        super().__init__(
            503,
            "temporal_unavailable",
            f"the workflow engine at {address} is unreachable ({error}); "
            "retry in a moment",
        )


class TemporalGateway:
    """Connects to Temporal on first use, so the API starts even while it is down."""

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self.settings = settings
        self._client = client
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await connect(self.settings)
                except (RuntimeError, RPCError) as error:
                    raise TemporalUnavailable(
                        self.settings.temporal_address, error
                    ) from None
        return self._client


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


def get_session(engine: Annotated[sa.Engine, Depends(get_engine)]) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def get_gateway(request: Request) -> TemporalGateway:
    gateway: TemporalGateway = request.app.state.temporal
    return gateway


async def get_temporal(
    gateway: Annotated[TemporalGateway, Depends(get_gateway)],
) -> Client:
    return await gateway.client()


_bearer = HTTPBearer(auto_error=False, description="The API key: NURTURE_API_KEY.")


def check_api_key(authorization: str | None, expected: str) -> None:
    """Raise 401 unless the Authorization header carries the expected Bearer key."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not expected or not hmac.compare_digest(key.strip().encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "invalid API key: use the key set in NURTURE_API_KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Check the Bearer key and return the actor name used in the audit log.

    The API's middleware has already rejected a bad key before the body was
    read; this dependency documents the scheme in OpenAPI and names the actor.
    """
    check_api_key(
        request.headers.get("authorization"), request.app.state.settings.api_key
    )
    return "api-key"


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
# Routes that store first and tolerate Temporal being down take the gateway.
GatewayDep = Annotated[TemporalGateway, Depends(get_gateway)]
ActorDep = Annotated[str, Depends(require_api_key)]
