"""Problem details (RFC 9457) for every 4xx and 5xx answer, mapped in one place.

Routes and services raise :class:`ApiError` subclasses (or the domain's
``EventValidationError``); :func:`install_error_handlers` turns them, FastAPI's request
validation errors and Starlette's HTTP exceptions into ``application/problem+json``.
Middleware that answers before routing (auth, body limit) uses :func:`problem_response`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from pipelines.domain.events import EventValidationError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER_CHALLENGE = 'Bearer realm="cc-analytics"'


class FieldError(BaseModel):
    field: str = Field(description="The offending field, dotted (`metadata.spent_tokens`)")
    reason: str = Field(description="What is wrong with it")


class Problem(BaseModel):
    """RFC 9457 problem details; extension members depend on the problem type."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "missing bearer token",
                    "instance": "/api/user-segments/42/recommendation",
                }
            ]
        },
    )

    type: str = Field(default="about:blank", description="URI reference naming the problem type")
    title: str = Field(description="Short summary of the problem type")
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(default=None, description="Explanation of this occurrence")
    instance: str | None = Field(default=None, description="The request path")
    errors: list[FieldError] | None = Field(
        default=None, description="Validation errors (422 only)"
    )
    dependency: str | None = Field(
        default=None, description="The unavailable dependency (503 only)"
    )


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    body.update({key: value for key, value in extensions.items() if value is not None})
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


class ApiError(Exception):
    """An error with an HTTP status; rendered as problem details."""

    status: int = 500
    type_: str = "about:blank"
    title: str | None = None

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extensions = extensions

    def response(self, instance: str | None) -> Response:
        return problem_response(
            self.status,
            self.detail,
            title=self.title,
            type_=self.type_,
            instance=instance,
            headers=self.headers,
            **self.extensions,
        )


class Unauthorized(ApiError):
    status = 401

    def __init__(self, detail: str, *, invalid_token: bool = True) -> None:
        challenge = BEARER_CHALLENGE
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class ValidationFailed(ApiError):
    status = 422
    title = "Unprocessable Content"
    type_ = "urn:cc-analytics:problem:validation-error"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        first = errors[0]
        super().__init__(f"{first['field']}: {first['reason']}", errors=errors)


class DependencyUnavailable(ApiError):
    """A dependency (postgres, redis, kafka) did not answer in time; safe to retry."""

    status = 503
    type_ = "urn:cc-analytics:problem:dependency-unavailable"

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"}, dependency=dependency)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "path", "query", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or "$"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors():
        reason = str(error.get("msg", "invalid"))
        field = _field_of(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            reason = f"invalid JSON: {ctx.get('error') or reason}"
            field = "$"  # the body as a whole (loc holds a character position)
        errors.append({"field": field, "reason": reason})
    return errors or [{"field": "$", "reason": "invalid request"}]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response(request.url.path)


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return ValidationFailed(_validation_errors(exc)).response(request.url.path)


async def _event_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EventValidationError)
    return ValidationFailed([{"field": exc.field, "reason": exc.reason}]).response(request.url.path)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 401:
        headers = {**(headers or {}), "WWW-Authenticate": BEARER_CHALLENGE}
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == HTTPStatus(exc.status_code).phrase:
        detail = None
    return problem_response(exc.status_code, detail, instance=request.url.path, headers=headers)


async def _unhandled(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "internal error", instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(EventValidationError, _event_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)
