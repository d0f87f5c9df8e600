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

from api.errors import OUTAGE_RETRY_AFTER_SECONDS, ApiError
from nurture.config import Settings
from nurture.keys import Principal, Role, authenticate
from nurture.temporal import connect


class TemporalUnavailable(ApiError):
    def __init__(self, address: str, error: Exception) -> None:
        super().__init__(
            503,
            "temporal_unavailable",
            f"the workflow engine at {address} is unreachable ({error}); "
            f"retry in {OUTAGE_RETRY_AFTER_SECONDS} seconds",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )


# How long a request waits for a first connection to Temporal.
CONNECT_TIMEOUT_SECONDS = 5


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
                    self._client = await asyncio.wait_for(
                        connect(self.settings), CONNECT_TIMEOUT_SECONDS
                    )
                except (RuntimeError, RPCError, TimeoutError) as error:
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


def _bearer_key(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key.strip()


def _invalid_key() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "invalid API key: use NURTURE_API_KEY or a key made with "
        "`nurture keys create`; a key may also have expired or been revoked",
        headers={"WWW-Authenticate": "Bearer"},
    )


def check_api_key(authorization: str | None, expected: str) -> None:
    """Raise 401 unless the Authorization header carries the expected Bearer key."""
    key = _bearer_key(authorization)
    if not expected or not hmac.compare_digest(key.encode(), expected.encode()):
        raise _invalid_key()


def resolve_principal(
    authorization: str | None, settings: Settings, engine: sa.Engine
) -> Principal:
    """Return the principal of this Authorization header, or raise 401.

    NURTURE_API_KEY is the installation's own admin key; every other key is
    looked up by its hash among the keys made with `nurture keys create`.
    """
    key = _bearer_key(authorization)
    expected = settings.api_key
    if expected and hmac.compare_digest(key.encode(), expected.encode()):
        return Principal(actor="api-key", role="admin")
    with Session(engine) as session:
        principal = authenticate(session, key)
    if principal is None:
        raise _invalid_key()
    return principal


def principal_of(request: Request) -> Principal:
    """Return the principal the API's middleware found for this request."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = resolve_principal(
            request.headers.get("authorization"),
            request.app.state.settings,
            request.app.state.engine,
        )
        request.state.principal = principal
    return principal


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class RoleCheck:
    """A route dependency that admits the given roles and returns the actor name.

    Routes declare their roles with it; `api.app` copies them into the API's
    OpenAPI description, and the tests walk every route with every role.
    """

    def __init__(self, *roles: Role) -> None:
        self.roles = roles

    def __call__(
        self,
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        principal = principal_of(request)
        if principal.role not in self.roles:
            raise ApiError(
                403,
                "forbidden",
                f"{_article(principal.role)} {principal.role} key may not "
                f"{request.method} "
                f"{request.url.path}: it needs one of the roles "
                f"{', '.join(self.roles)}. Ask an admin for such a key.",
            )
        return principal.actor


def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Admit any valid key and return the actor name used in the audit log."""
    return principal_of(request).actor


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
# Routes that store first and tolerate Temporal being down take the gateway.
GatewayDep = Annotated[TemporalGateway, Depends(get_gateway)]
ActorDep = Annotated[str, Depends(require_api_key)]
# The roles of the product: admins configure and erase, marketers run
# campaigns, sales reps work leads, integrations only bring leads in.
AdminDep = Annotated[str, Depends(RoleCheck("admin"))]
MarketingDep = Annotated[str, Depends(RoleCheck("admin", "marketer"))]
ReadLeadsDep = Annotated[str, Depends(RoleCheck("admin", "marketer", "sales_rep"))]
SalesDep = Annotated[str, Depends(RoleCheck("admin", "sales_rep"))]
CaptureDep = Annotated[str, Depends(RoleCheck("admin", "marketer", "integration"))]
