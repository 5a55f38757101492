"""/openapi.json: FastAPI's schema of the routes, with what it cannot see: the request bodies (the routes read
the raw body, to answer errors OpenAI's way), the server-sent events of a stream, each error status with its
meaning, the model's name and token limits, and the API key where one is set."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ..generate import Engine
from .access import MAX_BODY_BYTES
from .schema import ChatCompletionChunk, ChatRequest, CompletionRequest, ErrorBody, TextCompletionChunk

ERRORS = {
    400: "malformed JSON, a missing, mistyped or out-of-range field, a prompt over the context, a bad stop string",
    401: "--api-key is set and the request has no `Authorization: Bearer KEY` with it",
    403: "the Host is not this server's, or the Origin is another site",
    404: "the model is not the one this server has",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    415: "the body is not Content-Type: application/json",
    503: "the queue is full; retry after Retry-After seconds",
    504: "the request ran past --request-timeout",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"schema": {"type": "string"}}},
}


def documented(ok: type[BaseModel] | None, *codes: int, stream: type[BaseModel] | None = None) -> dict[int | str, Any]:
    """A route's `responses` for FastAPI: its answer's model (and its stream's chunk), each error's body and meaning."""
    out: dict[int | str, Any] = {}
    if ok is not None:
        out[200] = {"model": ok, "description": "the answer"}
        if stream is not None:  # the event schema is filled in by openapi_schema, which knows where the models go
            out[200]["content"] = {"text/event-stream": {"schema": {"x-icft-chunk": stream.__name__}}}
            out[200]["description"] = (
                "the answer; with `stream: true`, server-sent events: chunks, an error if one happens midway, "
                "then `[DONE]`"
            )
    for code in codes:
        out[code] = {"model": ErrorBody, "description": ERRORS[code]}
        if code in ERROR_HEADERS:
            out[code]["headers"] = ERROR_HEADERS[code]
    return out


def openapi_schema(app: FastAPI, engine: Engine, keyed: bool) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies (the routes read the raw body, to answer errors OpenAI's way)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionChunk, TextCompletionChunk):
        _add_schema(components, model, "serialization")
    for path, model in (("/v1/chat/completions", ChatRequest), ("/v1/completions", CompletionRequest)):
        event = schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        event["schema"] = _event_schema(event["schema"]["x-icft-chunk"])
        body = _add_schema(components, model, "validation")
        body["properties"]["model"] = {"type": "string", "enum": [engine.name], "title": "Model"}
        for limit in ("max_tokens", "max_completion_tokens"):
            if limit in body["properties"]:
                body["properties"][limit]["anyOf"][0]["maximum"] = engine.limit - 1
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        content = {"application/json": {"schema": ref}}
        schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": content}
    if keyed:
        schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
    app.openapi_schema = schema
    return schema


def _add_schema(components: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, Any]:
    body = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    components.update(body.pop("$defs", {}))
    components[model.__name__] = body
    return body


def _event_schema(chunk: str) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 reads a text/event-stream schema per event): a JSON chunk or error in
    `data`, or the closing `[DONE]`."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk}"}, {"$ref": "#/components/schemas/ErrorBody"}]}
    data = {"anyOf": [{"const": "[DONE]"}, {"contentMediaType": "application/json", "contentSchema": payload}]}
    return {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", **data}}}
