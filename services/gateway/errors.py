"""API errors: one JSON shape, `{error: <stable code>, message, ...details}`, for every failure."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the client caused or must know about, with its HTTP status and stable code."""

    def __init__(self, status_code: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status_code == 401 else None
        return JSONResponse(
            {"error": self.code, "message": self.message, **self.details},
            status_code=self.status_code,
            headers=headers,
        )


def validation_error(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        f"{field}: {message}",
        details=[{"field": field, "message": message}],
    )


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def _field_name(detail: Mapping[str, Any]) -> str:
    """The field an error is about as the client names it: `limit`, not `query.limit`."""
    where, *path = (str(part) for part in detail["loc"])
    if detail["type"] == "json_invalid" or not path:
        # A syntax error's location is its offset in the body, not a field.
        return where
    return ".".join(path)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error.response()

    async def on_invalid_request(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        details = [
            {"field": _field_name(detail), "message": detail["msg"]} for detail in error.errors()
        ]
        summary = "; ".join(f"{item['field']}: {item['message']}" for item in details)
        return ApiError(422, "validation_error", summary, details=details).response()

    async def on_http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return ApiError(error.status_code, code, str(error.detail)).response()

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=error)
        return ApiError(500, "internal_error", "the service failed; try again later").response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
