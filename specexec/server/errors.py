"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Request validation (pydantic), malformed JSON, unknown routes and any unexpected exception
all leave the server through these handlers, so a client never sees a traceback.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("specexec.server")


class APIError(Exception):
    """An error answered with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# segments pydantic adds to an error's location to name the member of a union it tried
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|function-\w+|[a-z-]+\[.*\]|[A-Z]\w*)$")


def _param(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and _UNION_TAG.match(p))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(err: dict) -> tuple[str, str | None, str]:
    kind = err.get("type", "")
    param = _param(err.get("loc", ()))
    if kind == "json_invalid":
        return "the request body is not valid JSON", None, "invalid_json"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param, "unknown_parameter"
    if kind == "missing":
        return f"Missing required parameter: '{param}'", param, "missing_required_parameter"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = f"'{param}': " if param else ""
    value = err.get("input")
    shown = "" if kind.endswith("_type") and isinstance(value, (dict, list)) else f" (got {json.dumps(value)[:80]})" \
        if _jsonable(value) and param else ""
    return f"Invalid value for {where}{msg}{shown}", param, "invalid_value"


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        message, param, code = _validation_message(errors[0]) if errors else ("invalid request", None, None)
        others = {_param(e.get("loc", ())) for e in errors} - {param}  # a union's members count once
        if others:
            message += f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})"
        return JSONResponse(error_body(message, "invalid_request_error", param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Not found: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(message, "invalid_request_error", None, None), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", None, None),
                            status_code=500)
