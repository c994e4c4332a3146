"""The server's HTTP plumbing: the body limit and every error as OpenAI's ``{"error": {...}}`` JSON.

A body over the limit is 413 (by its Content-Length, or as it arrives); a body that is not a JSON object,
or a field that fails its check, is 400 naming the field (``messages[0].role``); unknown routes 404,
wrong methods 405, and anything unexpected 500 without a traceback for the client.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from model.serve.api import ApiError


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 (by its Content-Length, or as it arrives)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            response = error_response(ApiError(413, f"the request body is over {self.max_bytes} bytes",
                                               code="request_too_large"))
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body without Content-Length
                raise HTTPException(413, f"the request body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def validation_param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``."""
    param = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, "the request body is not valid JSON"))
        param = validation_param(tuple(first.get("loc", ())))
        if param is None:
            return error_response(ApiError(400, "the request body must be a JSON object "
                                                "(with Content-Type: application/json)"))
        return error_response(ApiError(400, f"{param}: {first.get('msg')}", param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        return error_response(ApiError(e.status_code, message, code="request_too_large" if e.status_code == 413
                                       else None, headers=getattr(e, "headers", None)))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):
        return error_response(ApiError(500, f"internal error: {type(e).__name__}", kind="server_error"))
