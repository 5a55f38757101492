"""`icft serve`: an OpenAI-compatible HTTP API on FastAPI + uvicorn, and a chat page at `/`.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` sends server-sent
events, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, ``GET /`` (the chat page) and
``GET /openapi.json`` (the request and response models). Any OpenAI client works with
``base_url="http://127.0.0.1:8000/v1"``. Decoding is greedy unless the request sets a temperature above 0.
``/v1/models`` and ``/health`` advertise the context (``context_length``: prompt + answer tokens) and the length
the run trained at (``trained_length``); ``serve`` prints both at start.

With retrieval on, each choice carries ``retrieved``: the memory facts in its prompt (id, similarity score,
source, text), or, when none reached the run's relevance floor, ``no_fact_passed_floor``: that floor. OpenAI
clients ignore both. Each request has one line on stderr: method, path, status, tokens in and out, milliseconds.

The package, in the order a request meets it:

- `connections`: uvicorn's HTTP protocol with a deadline for reading each request and a cap on open connections
- `logs`: the per-request line (`RequestLog`), and error logs held to one line per kind a second (`OncePerSecond`)
- `access`: Host, Origin, API key, Content-Type and body size (`Guard`)
- `schema`: the request and response models; `checks`: a request parsed and checked before any model work
- `worker`: the one thread that runs the model, batching the requests that wait together (`Worker`, `Job`)
- `responses`: the answer, whole or streamed; `errors`: OpenAI's error shape; `openapi`: /openapi.json
- `app`: the routes (`create_app`) and the launcher (`serve`)
"""

from .access import MAX_BODY_BYTES, Guard, bind_warning, check_api_key, own_hosts
from .app import Limits, create_app, serve
from .checks import check_prompt_size, longest_token_chars
from .checks import check_prompt_size as _check_prompt_size  # the name tests/test_untrusted_inputs.py imports
from .connections import REQUEST_READ_S, connection_cap, guarded_protocol, raise_open_files_limit
from .errors import ApiError
from .logs import OncePerSecond, RequestLog, limit_server_logs
from .responses import StopText
from .schema import ChatRequest, CompletionRequest
from .worker import Decoding, Job, Worker

__all__ = [
    "MAX_BODY_BYTES",
    "REQUEST_READ_S",
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "Decoding",
    "Guard",
    "Job",
    "Limits",
    "OncePerSecond",
    "RequestLog",
    "StopText",
    "Worker",
    "_check_prompt_size",
    "bind_warning",
    "check_api_key",
    "check_prompt_size",
    "connection_cap",
    "create_app",
    "guarded_protocol",
    "limit_server_logs",
    "longest_token_chars",
    "own_hosts",
    "raise_open_files_limit",
    "serve",
]
