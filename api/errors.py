"""One JSON error shape for every failure, and the handlers that produce it.

Every error body is `{"error": code, "message": text, "errors": [...]}`;
validation errors list each bad field by its JSON path.
"""

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from temporalio.service import RPCError

from nurture.db import is_database_unavailable
from nurture.schemas import json_path

logger = logging.getLogger(__name__)

# Seconds a client is asked to wait (Retry-After) while the database or
# Temporal is down: every 503 of an outage sends the same value.
OUTAGE_RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    path: str
    message: str
    type: str


class ErrorBody(BaseModel):
    error: str
    message: str
    errors: list[FieldError] = []


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting our error body for these statuses."""
    return {status: {"model": ErrorBody} for status in statuses}


# The error statuses that the app's shared machinery returns around a route's
# own code, and what each means there.
STANDARD_ERRORS = {
    400: "The body could not be parsed: it is not UTF-8, or not valid form data",
    401: "The API key is missing, invalid, expired or revoked",
    403: "The key's role may not call this route",
    413: "The body is larger than this route's limit",
    422: "Invalid input: `errors` lists each invalid field by its path",
    503: "The database or the workflow engine is unavailable; retry later",
}


def document_errors(
    routes: Iterable[BaseRoute], protected_prefix: str, public_prefixes: Sequence[str]
) -> None:
    """Declare in OpenAPI the standard error statuses each route can return.

    Protected paths get 401 from the API key check, and routes that name
    roles get 403 (from the `x-roles` that `api.app` sets first). Routes that
    take input get 422 from FastAPI's validation, and those with a body get
    400 from its body parsing and 413 from the body size limit. Every
    `protected_prefix` path gets 503, because each one reads the database or
    calls Temporal. Statuses that only the route's own code returns (404,
    409, ...) stay declared by the route, and a status the route already
    declares keeps the route's text.
    """
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        path = route.path
        statuses = set()
        if path.startswith(protected_prefix):
            statuses.add(503)
            if not path.startswith(tuple(public_prefixes)):
                statuses.add(401)
        if "x-roles" in (route.openapi_extra or {}):
            statuses.add(403)
        has_body = route.body_field is not None or "requestBody" in (
            route.openapi_extra or {}
        )
        if has_body:
            statuses.update((400, 413))
        if has_body or _takes_parameters(route.dependant):
            statuses.add(422)
        for status in sorted(statuses):
            route.responses.setdefault(
                status, {"model": ErrorBody, "description": STANDARD_ERRORS[status]}
            )
        if not _answers_json(route):
            _file_error_bodies_as_json(route)


def _takes_parameters(dependant: Dependant | None) -> bool:
    if dependant is None:
        return False
    if (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
    ):
        return True
    return any(_takes_parameters(child) for child in dependant.dependencies)


def _answers_json(route: APIRoute) -> bool:
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    return getattr(response_class, "media_type", None) in (None, "application/json")


def _file_error_bodies_as_json(route: APIRoute) -> None:
    """Declare the route's ErrorBody responses as application/json.

    FastAPI files a response `model` under the route's own media type, such
    as text/html, but error bodies are always JSON. The entries are replaced,
    not changed, because routers share them between routes.
    """
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    for status, entry in list(route.responses.items()):
        if entry.get("model") is not ErrorBody:
            continue
        replaced = {key: value for key, value in entry.items() if key != "model"}
        replaced["content"] = {"application/json": {"schema": schema}}
        route.responses[status] = replaced


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = list(errors)
        self.headers = headers


def field_errors(raw: Sequence[Any], strip_prefix: bool = False) -> list[FieldError]:
    result = []
    for error in raw:
        loc = tuple(error["loc"])
        if strip_prefix and loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            # FastAPI puts the character offset of a JSON syntax error where the
            # path would be; report it in the message instead.
            offset = loc[-1] if loc else "?"
            reason = (error.get("ctx") or {}).get("error", "")
            message = f"invalid JSON at character {offset}: {reason}".rstrip(": ")
            loc = ()
        result.append(
            FieldError(path=json_path(loc), message=message, type=error["type"])
        )
    return result


def validation_error(errors: list[FieldError]) -> ApiError:
    paths = ", ".join(error.path for error in errors)
    return ApiError(422, "validation_failed", f"invalid input at {paths}", errors)


def from_pydantic(error: ValidationError, prefix: Sequence[int | str] = ()) -> ApiError:
    raw = [{**e, "loc": (*prefix, *e["loc"])} for e in error.errors()]
    return validation_error(field_errors(raw))


def error_response(error: ApiError) -> JSONResponse:
    body = ErrorBody(error=error.code, message=error.message, errors=error.errors)
    return JSONResponse(
        body.model_dump(), status_code=error.status, headers=error.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(
        _request: Request, error: RequestValidationError
    ) -> JSONResponse:
        return error_response(validation_error(field_errors(error.errors(), True)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(
        _request: Request, error: StarletteHTTPException
    ) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "http_error"
        )
        message = str(error.detail)
        if error.status_code == 400 and error.__cause__ is not None:
            # FastAPI's "There was an error parsing the body" omits the reason,
            # which its cause carries, e.g. a byte that is not UTF-8.
            message = f"{message}: {error.__cause__}"
        return error_response(
            ApiError(
                error.status_code,
                code,
                message,
                headers=dict(error.headers or {}),
            )
        )

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, error: RPCError) -> JSONResponse:
        logger.error("Temporal call failed on %s: %s", request.url.path, error)
        return error_response(
            ApiError(
                503,
                "temporal_unavailable",
                "the workflow engine is unreachable; retry in "
                f"{OUTAGE_RETRY_AFTER_SECONDS} seconds",
                headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
            )
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, error: DBAPIError) -> JSONResponse:
        if not is_database_unavailable(error):
            # Other database errors, such as a constraint violation that the
            # route does not handle, remain 500s.
            raise error
        return database_unavailable_response(request, error)

    @app.exception_handler(PoolTimeoutError)
    async def _pool_timeout(request: Request, error: PoolTimeoutError) -> JSONResponse:
        return database_unavailable_response(request, error)


def database_unavailable_response(
    request: Request, error: BaseException
) -> JSONResponse:
    """Log a database outage in one line, without a traceback, and return 503.

    The log record gets the request id like every record logged during a
    request, and JSON log lines show it.
    """
    cause = error.orig if isinstance(error, DBAPIError) else error
    # libpq's messages span several lines, so they are joined into one.
    detail = " ".join(str(cause).split())
    logger.error(
        "database unavailable during %s %s: %s: %s",
        request.method,
        request.url.path,
        type(cause).__name__,
        detail,
    )
    if isinstance(error, PoolTimeoutError):
        message = "no database connection became free in time"
    else:
        message = "the database is unreachable"
    return error_response(
        ApiError(
            503,
            "database_unavailable",
            f"{message}; retry in {OUTAGE_RETRY_AFTER_SECONDS} seconds",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )
    )
