"""`icft serve` as a real subprocess on a free loopback port, for the tests/test_serve_*.py modules (and
`asgi_call`, a request straight into the app in-process).

The model is a random-weight Llama (2 layers, width 32) whose context is 2048 tokens, so that an answer can be
made long enough to drop, stop or time out mid-way, and whose weights are large enough (initializer_range 0.2)
that greedy answers vary from token to token instead of repeating one, and which never ends an answer early;
the knowledge file gives retrieval something to find.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _inference_run import knowledge_file
from _paced_icft import command as paced_icft


def long_llama(folder: Path, bert_tokenizer) -> Path:
    """A tiny random Llama with a 2048-token context and the embedded default's tokenizer, saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(bert_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=bert_tokenizer.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.2)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a zero output row: EOS ([SEP]) never wins greedy decoding, so answers run to max_tokens
        model.get_output_embeddings().weight[bert_tokenizer.sep_token_id] = 0
    model.save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `icft serve --model MODEL --model-name tiny ...`; `stop()` sends SIGTERM to its pid."""

    def __init__(self, model: Path, folder: Path, *extra: str, retrieve: bool = True, env: dict | None = None,
                 pace: float = 0.0):  # fmt: skip
        """`pace`: the least seconds each model forward takes (tests/_paced_icft.py), so that a long answer is
        still running when a test acts on it, on a fast machine too."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{self.port}.log"  # stdout
        self.err = folder / f"server-{self.port}.err"  # stderr: the request lines, warnings and errors
        args = ["serve", "--model", str(model), "--model-name", "tiny", "--port", str(self.port), *extra]
        cmd = paced_icft(pace, *args) if pace else [sys.executable, "-m", "icft", *args]
        if retrieve:
            cmd += ["--knowledge", str(knowledge_file(folder)), "--retrieve", "2"]
        with self.log.open("w") as out, self.err.open("w") as err:
            # one thread: a width-32 model gains nothing from two, and on a busy machine two threads that wait
            # for each other make each token ten times slower
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("server exited: " + self.output()[-3000:])
            try:
                if request(f"{self.url}/health")[0] == 200:
                    return
            except OSError:  # not listening yet
                time.sleep(0.3)
        self.proc.kill()
        pytest.fail("server did not start: " + self.output()[-3000:])

    def output(self) -> str:
        """What it printed, stdout then stderr."""
        return self.log.read_text() + self.err.read_text()

    def errors(self) -> str:
        """What it wrote to stderr: one line per request answered, besides warnings and errors."""
        return self.err.read_text()

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so that the exit status tells what stopped it
        assert self.proc.wait(timeout=30) in (0, -signal.SIGTERM), self.output()[-3000:]


def request(
    url: str, body: dict | bytes | None = None, headers: dict | None = None, method: str | None = None, timeout=60
) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a request; a dict body is sent as application/json."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"content-type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers={**sent, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def asgi_call(app, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one request sent straight into an ASGI app, in this process; the client never hangs up."""
    import asyncio

    data = json.dumps(body).encode() if body is not None else b""

    async def go() -> tuple[int, bytes]:
        sent: list[dict] = []
        received = False

        async def receive() -> dict:
            nonlocal received
            if received:  # the body was read: the next message would be the disconnect, which never comes
                await asyncio.sleep(3600)
            received = True
            return {"type": "http.request", "body": data, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"host", b"127.0.0.1:8000")] + ([(b"content-type", b"application/json")] if body else [])
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}  # fmt: skip
        await asyncio.wait_for(app(scope, receive, send), 120)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    return asyncio.run(go())
