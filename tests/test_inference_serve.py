"""`icft serve` as a real server subprocess on a free localhost port, spoken to with the openai client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from _inference_run import trained_run
from _paced_icft import command as paced_icft

pytestmark = pytest.mark.slow  # a server start (imports, model, embedder) takes several seconds


def http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST of `body` as application/json."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir, staged_data):
    """(url, the file with what the server printed) of `icft serve --run` on the tiny trained run."""
    run = trained_run(tmp_path_factory, tiny_llama_dir, staged_data)
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    # paced (tests/_paced_icft.py: at least 5 ms a forward): a 200-token answer takes at least 2 s on any machine,
    # so the queueing test's requests are still running when the next ones arrive
    cmd = paced_icft(0.005, "serve", "--run", str(run), "--retrieve", "2", "--port", str(port),
                     "--model-name", "tiny", "--queue-size", "2")  # fmt: skip
    with log.open("w") as out:
        # one torch thread: the tiny model gains nothing from two, which slow each other down on a busy machine
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if http(f"{url}/health")[0] == 200:
                break
        except OSError:  # not listening yet
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not start: " + log.read_text()[-3000:])
    yield url, log
    os.kill(proc.pid, signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so that the exit status tells what stopped it
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()[-3000:]


@pytest.fixture
def server(served):
    return served[0]


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


def ask(client, content: str = "Which is item 1?", **kwargs):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kwargs)


def test_models_and_chat_with_retrieval(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = ask(client, max_tokens=6)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and 0 <= reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    hits = choice.model_extra["retrieved"]
    assert len(hits) == 2 and all({"id", "score", "source", "text"} <= set(h) and h["text"] for h in hits)
    assert hits[0]["score"] >= hits[1]["score"]
    assert http(f"{server}/health")[1]["status"] == "ok"


def test_streaming_matches_the_whole_answer(client):
    whole = ask(client, "I have had a cough for 3 days.", max_tokens=8).choices[0]
    chunks = list(ask(client, "I have had a cough for 3 days.", max_tokens=8, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.message.content and chunks[-1].choices[0].finish_reason == whole.finish_reason

    done = client.completions.create(model="tiny", prompt="Question: Which is item 2?\nAnswer:", max_tokens=5)
    parts = list(client.completions.create(model="tiny", prompt="Question: Which is item 2?\nAnswer:", max_tokens=5,
                                           stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text
    two = client.completions.create(model="tiny", prompt=["Hello", "Question: Which is item 3?\nAnswer:"], max_tokens=3)
    assert [c.index for c in two.choices] == [0, 1]


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b'{"model": "tiny"}', 400, "messages"),
    (b'{"model": "tiny", "messages": "hello"}', 400, "messages"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', 400, "messages"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', 400, "max_tokens"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999}', 400, "max_tokens"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3}', 400, "temperature"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    (b'[1, 2]', 400, None),
])  # fmt: skip
def test_bad_requests_get_openai_errors(server, body, status, param):
    code, answer = http(f"{server}/v1/chat/completions", body)
    assert code == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert http(f"{server}/health")[0] == 200


def test_errors_through_the_client(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="word " * 400, max_tokens=5)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError):
        ask(client, max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        ask(client, stream=True, max_tokens=99999)
    assert ask(client, max_tokens=2).choices  # still serving


def test_concurrent_requests_are_queued_and_overflow_gets_503(client, server):
    results: list[object] = []

    def one(max_tokens: int) -> None:
        try:
            results.append(ask(client, "Tell me about item 4.", max_tokens=max_tokens))
        except openai.APIStatusError as error:
            results.append(error)

    threads = [threading.Thread(target=one, args=(4,)) for _ in range(3)]  # 1 running + 2 waiting fit
    threads[0].start()
    deadline = time.monotonic() + 10  # the first one running before the others come: else 3 may wait at once
    while not results and http(f"{server}/health")[1]["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(not isinstance(r, Exception) for r in results), results

    results.clear()
    threads = [threading.Thread(target=one, args=(200,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert busy and all(r.status_code == 503 and r.body["code"] == "server_busy" for r in busy)
    assert all(r.response.headers["retry-after"] == "1" for r in busy)  # when to come back
    assert len(results) - len(busy) >= 1
    assert http(f"{server}/health")[1]["queued"] == 0
    assert ask(client, max_tokens=2).choices


def test_the_trained_context_is_printed_and_advertised(served):
    url, log = served
    # the tiny Llama has 256 positions (under --max-length's 2048); the run trained on 48-token sequences
    card = http(f"{url}/v1/models")[1]["data"][0]
    health = http(f"{url}/health")[1]
    assert (card["context_length"], card["trained_length"]) == (256, 48)
    assert (health["context_length"], health["trained_length"]) == (256, 48)
    assert "context 256 tokens" in log.read_text() and "trained on sequences of 48 tokens" in log.read_text()
