"""One JSON error shape for every failure, and the handlers that produce it.

Every error body is `{"error": code, "message": text, "errors": [...]}`;
validation errors list each bad field by its JSON path.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

from nurture.schemas import json_path

logger = logging.getLogger(__name__)


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
        return error_response(
            ApiError(
                error.status_code,
                code,
                str(error.detail),
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
                "the workflow engine is unreachable; retry in a moment",
            )
        )

    @app.exception_handler(OperationalError)
    async def _database_error(
        request: Request, error: OperationalError
    ) -> JSONResponse:
        logger.error("database call failed on %s: %s", request.url.path, error.orig)
        return error_response(
            ApiError(
                503,
                "database_unavailable",
                "the database is unreachable; retry in a moment",
            )
        )
