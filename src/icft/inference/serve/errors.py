"""Errors in OpenAI's shape: every refusal and failure is answered `{"error": {message, type, param, code}}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schema import ErrorBody, ErrorDetail


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(mode="json"), status_code=self.status, headers=self.headers)


def timeout_error(seconds: float) -> ApiError:
    return ApiError(
        504, f"the request ran past the server's --request-timeout of {seconds:g} s and was stopped",
        code="timeout", type_="server_error",
    )  # fmt: skip


def client_gone() -> ApiError:
    return ApiError(499, "client closed the request", code="client_closed")


def answer_errors_openai_style(app: FastAPI) -> None:
    """Every error, ours, Starlette's (404, 405) or an unexpected one, as OpenAI's JSON error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # keeps the headers: a 405 carries Allow
        detail = str(error.detail)
        return ApiError(error.status_code, detail, code=_snake(detail), headers=error.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", type_="server_error").response()


def _snake(text: str) -> str:
    return "_".join(text.lower().split())
