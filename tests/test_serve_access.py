"""Who gets into `icft serve` and how it holds: API key, Host and Origin, Content-Type, body and prompt limits,
request timeout, dropped clients, the former 500s, and concurrent requests batched with one-by-one answers.

One real server for the module (`--request-timeout 3`, the key from ICFT_API_KEY), spoken to over loopback. Its
model forwards are paced (at least PACE_S each, two per token), so that a 2000-token answer takes at least 20 s on
any machine: the tests that act while an answer runs (timeout, hang-up, queueing behind it) never find it done.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import openai
import pytest
from _serve_server import Server, long_llama, request

from icft.cli import main

KEY = "test-key-123"
AUTH = {"authorization": f"Bearer {KEY}"}
TIMEOUT_S = 3
PACE_S = 0.005


@pytest.fixture(scope="module")
def server(tmp_path_factory, bert_tokenizer):
    folder = tmp_path_factory.mktemp("serve-access")
    model = long_llama(folder / "model", bert_tokenizer)
    running = Server(model, folder, "--request-timeout", str(TIMEOUT_S), retrieve=False, env={"ICFT_API_KEY": KEY},
                     pace=PACE_S)  # fmt: skip
    yield running
    running.stop()


def chat(max_tokens: int = 3, content: str = "Which is item 1?", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def is_openai_error(body: dict, code: str | None = None) -> bool:
    error = body.get("error", {})
    return set(error) == {"message", "type", "param", "code"} and bool(error["message"]) and error["code"] == code


def test_api_key_guards_every_v1_route(server):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        status, sent, body = request(f"{server.url}/v1/models", headers=headers)
        assert status == 401 and sent["www-authenticate"] == "Bearer", body
        assert is_openai_error(body, "invalid_api_key")
        assert request(f"{server.url}/v1/chat/completions", chat(), headers)[0] == 401
    assert request(f"{server.url}/v1/models", headers=AUTH)[0] == 200
    assert request(f"{server.url}/health")[0] == 200  # stays open, for load balancers and the page

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert client.chat.completions.create(**chat(2)).choices[0].message.content


def test_foreign_host_or_origin_is_refused(server):
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):  # DNS rebinding
        status, _, body = request(f"{server.url}/health", headers={"host": host})
        assert status == 403 and is_openai_error(body, "forbidden_host"), host
        assert request(f"{server.url}/v1/chat/completions", chat(), {**AUTH, "host": host})[0] == 403
    for host in (f"localhost:{port}", f"LOCALHOST:{port}", "127.0.0.1", f"[::1]:{port}", f"10.1.2.3:{port}"):
        assert request(f"{server.url}/health", headers={"host": host})[0] == 200, host  # no rebinding by address

    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://localhost:{port + 1}"):
        status, _, body = request(f"{server.url}/v1/chat/completions", chat(), {**AUTH, "origin": origin})
        assert status == 403 and is_openai_error(body, "forbidden_origin"), origin
    same = {**AUTH, "origin": f"http://127.0.0.1:{port}"}  # the chat page itself
    assert request(f"{server.url}/v1/chat/completions", chat(), same)[0] == 200


def test_json_routes_need_json(server):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, body = request(f"{server.url}/v1/chat/completions", json.dumps(chat()).encode(),
                                  {**AUTH, "content-type": content_type})  # fmt: skip
        assert status == 415 and is_openai_error(body, "unsupported_media_type"), content_type
    utf8 = {**AUTH, "content-type": "application/json; charset=utf-8"}
    assert request(f"{server.url}/v1/chat/completions", json.dumps(chat()).encode(), utf8)[0] == 200


def test_body_and_prompt_limits(server):
    # a 5 MB body is refused from its Content-Length, before it is read (the client gets the 413 mid-upload)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {5_000_000}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(head.encode() + b'{"model": "tiny", "prompt": "' + b"word " * 10_000)
        answer = b""
        while b"body_too_large" not in answer and (piece := client.recv(65536)):  # headers and body may come apart
            answer += piece
    assert answer.startswith(b"HTTP/1.1 413") and b'"code":"body_too_large"' in answer

    # without Content-Length (chunked), the limit holds while the body is read
    chunk = json.dumps({"model": "tiny", "prompt": "x" * (1 << 20)}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/completions", body=iter([chunk[:4096], chunk[4096:]]),
                       headers={**AUTH, "content-type": "application/json"}, encode_chunked=True)  # fmt: skip
    response = connection.getresponse()
    assert response.status == 413 and is_openai_error(json.loads(response.read()), "body_too_large")
    connection.close()

    many = {"model": "tiny", "prompt": [f"prompt {i}" for i in range(17)], "max_tokens": 1}
    status, _, body = request(f"{server.url}/v1/completions", many, AUTH)
    assert status == 400 and body["error"]["param"] == "prompt" and "16" in body["error"]["message"]
    status, _, body = request(f"{server.url}/v1/completions", {**many, "prompt": many["prompt"][:16]}, AUTH)
    assert status == 200 and [c["index"] for c in body["choices"]] == list(range(16))


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"stop": "ÿ"}, "stop", "invalid_stop"),  # no token of this tokenizer can end it (was a 500)
    ({"stop": ["Paris", "ÿ"]}, "stop", "invalid_stop"),
    ({"stop": "ÿ", "stream": True}, "stop", "invalid_stop"),  # before the stream starts
    ({"temperature": 1e-300}, "temperature", "temperature_too_low"),  # inf/nan probabilities (was a 500)
    ({"seed": 2**70}, "seed", "less_than_equal"),  # torch.manual_seed overflow (was a 500)
    ({"temperature": float("nan")}, "temperature", None),
    ({"stop": "x" * 65}, "stop", None),
    ({"max_tokens": 5000, "max_completion_tokens": 5}, "max_tokens", "invalid_value"),  # found by the fuzz test
])  # fmt: skip
def test_former_server_errors_are_clear_400s(server, extra, param, code):
    status, _, body = request(f"{server.url}/v1/chat/completions", chat(**extra), AUTH)
    assert status == 400 and body["error"]["param"] == param, body
    assert code is None or body["error"]["code"] == code
    assert "internal" not in body["error"]["message"]


def test_integral_numbers_are_integers_but_strings_are_not(server):
    status, _, body = request(f"{server.url}/v1/chat/completions", chat(3.0, n=1.0, seed=7.0), AUTH)
    assert status == 200 and body["usage"]["completion_tokens"] == 3  # JSON Schema's integer includes 3.0
    for bad in ("3", 3.5, True):
        status, _, body = request(f"{server.url}/v1/chat/completions", chat(bad), AUTH)
        assert status == 400 and body["error"]["param"] == "max_tokens", bad


def test_405_carries_allow(server):
    status, headers, body = request(f"{server.url}/v1/models", b"", AUTH, method="PUT")
    assert status == 405 and headers["allow"] == "GET" and is_openai_error(body, "method_not_allowed")
    status, headers, _ = request(f"{server.url}/v1/chat/completions", headers=AUTH)
    assert status == 405 and headers["allow"] == "POST"


def send_raw(server, body: dict) -> socket.socket:
    """A request sent over a bare socket, so that the test can hang up on it."""
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(head.encode() + data)
    return client


def wait_health(server, within: float = 30, **want: int) -> dict:
    deadline = time.time() + within
    while time.time() < deadline:
        health = request(f"{server.url}/health")[2]
        if all(health[k] >= v for k, v in want.items()):
            return health
        time.sleep(0.02)
    pytest.fail(f"the server never reached {want}: {health}")


def wait_idle(server, within: float = 5.0) -> None:
    """The rows of a request that ended stop at their next token: soon after, nothing runs or waits. 5 s is far
    more than a token takes on a loaded machine, and far less than the 20 s a paced 2000-token answer needs, so
    idle within it means stopped, not finished."""
    deadline = time.time() + within
    while time.time() < deadline:
        health = request(f"{server.url}/health")[2]
        if health["running"] == 0 and health["queued"] == 0:
            return
        time.sleep(0.02)
    pytest.fail(f"still busy after {within} s: {health}")


def test_request_timeout_ends_the_request_and_frees_its_slot(server):
    started = time.perf_counter()
    status, _, body = request(f"{server.url}/v1/chat/completions", chat(2000), AUTH)
    took = time.perf_counter() - started
    assert status == 504 and is_openai_error(body, "timeout") and "--request-timeout" in body["error"]["message"]
    assert TIMEOUT_S <= took < TIMEOUT_S + 3
    wait_idle(server)

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", json.dumps(chat(2000, stream=True)),
                       {**AUTH, "content-type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert response.status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout" and len(events) > 3  # tokens came, then the error
    wait_idle(server)
    assert request(f"{server.url}/v1/chat/completions", chat(2), AUTH)[0] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_dropped_request_frees_its_slot_at_once(server, stream):
    client = send_raw(server, chat(2000, stream=stream))
    wait_health(server, running=1)
    if stream:
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
    client.close()  # the client leaves mid-answer
    started = time.perf_counter()
    status, _, answer = request(f"{server.url}/v1/chat/completions", chat(2), AUTH)
    assert status == 200 and answer["usage"]["completion_tokens"] == 2
    # it did not wait for the dropped answer's 2000 tokens (at least 20 s paced); 5 s leaves a loaded machine room
    assert time.perf_counter() - started < 5.0
    wait_idle(server)


def test_concurrent_requests_are_batched_with_one_by_one_answers(server):
    questions = [("Which is item 1?", 16), ("I have had a cough for three days.", 6), ("Hello", 24),
                 ("What is the capital of France?", 10)]  # fmt: skip
    alone = [request(f"{server.url}/v1/chat/completions", chat(n, q), AUTH)[2] for q, n in questions]

    blocker = send_raw(server, chat(2000))  # a long answer the four requests below wait behind
    wait_health(server, running=1)
    together: list[dict | None] = [None] * len(questions)

    def ask(i: int) -> None:
        together[i] = request(f"{server.url}/v1/chat/completions", chat(questions[i][1], questions[i][0]), AUTH)[2]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    before = wait_health(server, queued=len(questions))["batches"]
    blocker.close()  # its client leaves: the four start, together
    for t in threads:
        t.join()
    assert request(f"{server.url}/health")[2]["batches"] == before + 1  # one batch for the four
    for a, b in zip(alone, together):
        assert "choices" in b, b
        assert b["choices"][0]["message"] == a["choices"][0]["message"]  # batched greedy = one by one
        assert b["usage"] == a["usage"]


def test_page_and_schema_are_served(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    csp = response.getheader("content-security-policy")
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "not a source of medical advice" in page and "src=" not in page and "://" not in page

    status, _, schema = request(f"{server.url}/openapi.json")
    chat_post = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat_post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    assert {"400", "401", "403", "413", "415", "503", "504"} <= set(chat_post["responses"])
    assert chat_post["security"] == [{"apiKey": []}] and "security" not in schema["paths"]["/health"]["get"]
    assert "retrieved" in schema["components"]["schemas"]["ChatChoice"]["properties"]


def test_each_request_has_one_line_on_stderr_and_the_context_is_advertised(server):
    status, _, body = request(f"{server.url}/v1/chat/completions", chat(11), AUTH)  # 11: no other test asks it
    assert status == 200 and body["usage"]["completion_tokens"] == 11
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", json.dumps(chat(9, stream=True)),
                       {**AUTH, "content-type": "application/json"})  # fmt: skip
    assert connection.getresponse().read().endswith(b"data: [DONE]\n\n")
    nowhere = f"/v1/nowhere-{time.time_ns()}"
    assert request(f"{server.url}{nowhere}", headers=AUTH)[0] == 404
    assert request(f"{server.url}{nowhere}")[0] == 401  # refused before any route: its line all the same
    # each line is written before the answer's last bytes are sent: no waiting for it here
    lines = server.errors().splitlines()
    prompt = body["usage"]["prompt_tokens"]
    assert any(re.fullmatch(rf"POST /v1/chat/completions 200 in={prompt} out=11 \d+ms", x) for x in lines), lines
    assert any(re.fullmatch(rf"POST /v1/chat/completions 200 in={prompt} out=9 \d+ms", x) for x in lines), lines
    mine = [x for x in lines if nowhere in x]
    assert len(mine) == 2 and re.fullmatch(rf"GET {nowhere} 404 in=- out=- \d+ms", mine[0]), mine
    assert re.fullmatch(rf"GET {nowhere} 401 in=- out=- \d+ms", mine[1]), mine

    # a base model has no trained length; its context is the tiny Llama's 2048 positions
    card = request(f"{server.url}/v1/models", headers=AUTH)[2]["data"][0]
    assert card["context_length"] == 2048 and card["trained_length"] is None
    assert "context 2048 tokens" in server.output() and "trained on" not in server.output()


@pytest.mark.parametrize(("option", "value"), [("--request-timeout", "0"), ("--request-timeout", "nan"),
                                               ("--request-timeout", "inf"), ("--batch-size", "0"),
                                               ("--queue-size", "0")])  # fmt: skip
def test_bad_serve_options_are_one_line_errors(capsys, option, value):
    assert main(["serve", "--model", "minilm-decoder", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} must be") and err.count("\n") == 1
