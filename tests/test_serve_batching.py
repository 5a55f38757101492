"""Batched generation for `icft serve`: rows of different requests in one `generate` call, each ending on its
own, give the answers one-by-one generation gives; the worker batches jobs that wait together. And, in-process,
the app's answers when no memory fact passed the floor, and its one log line per request."""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import wait

import pytest
from _inference_run import knowledge_file
from _serve_server import asgi_call, long_llama

from icft.inference.generate import Engine, Row, StopFlag
from icft.inference.serve import ApiError, Decoding, Job, StopText, Worker, bind_warning, create_app, own_hosts

QUESTIONS = ["Which is item 1?", "I have had a cough for three days and a fever since yesterday.", "Hello",
             "What is the capital of France? Tell me more about the city and its history."]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory, bert_tokenizer):
    import torch

    model = long_llama(tmp_path_factory.mktemp("serve-batching"), bert_tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a width-32 model: two threads only wait for each other
    yield Engine.load(model=str(model), name="tiny")
    torch.set_num_threads(threads)


def one_by_one(engine: Engine, prompt, max_tokens: int, stop=None):
    return engine.generate([prompt], max_tokens, stop=stop)[0]


def test_rows_equal_one_by_one_generation(engine):
    prompts = [engine.completion_prompt(q, 40) for q in QUESTIONS]
    limits = [40, 7, 25, 13]  # each row its own max_tokens, prompts of different lengths (left padding)
    alone = [one_by_one(engine, p, n) for p, n in zip(prompts, limits)]
    streamed: dict[int, list[str]] = {i: [] for i in range(len(prompts))}
    rows = [Row(p, n, on_text=lambda text, end, i=i: streamed[i].append(text)) for i, (p, n) in
            enumerate(zip(prompts, limits))]  # fmt: skip
    together = engine.generate_rows(rows)
    for a, b, n in zip(alone, together, limits):
        assert (b.text, b.completion_tokens, b.finish_reason) == (a.text, a.completion_tokens, a.finish_reason)
        assert b.completion_tokens <= n
    for i, c in enumerate(together):  # each row's stream is its own answer, nothing of the others'
        assert "".join(streamed[i]).strip() == c.text


def test_rows_with_stop_strings_equal_one_by_one(engine):
    prompt = engine.completion_prompt(QUESTIONS[0], 30)
    free = one_by_one(engine, prompt, 30)
    words = free.text.split()
    assert len(words) >= 3, free.text
    stop = [words[2]]  # a word the answer reaches: generation must stop there
    alone = one_by_one(engine, prompt, 30, stop=stop)
    other = engine.completion_prompt(QUESTIONS[2], 30)
    rows = [Row(prompt, 30, stop, engine.stop_criteria(stop)), Row(other, 30)]
    together = engine.generate_rows(rows)
    assert together[0].text == alone.text and together[0].finish_reason == "stop"
    assert together[0].completion_tokens < free.completion_tokens
    assert together[1].text == one_by_one(engine, other, 30).text  # the other row did not stop with it


def test_a_cancelled_or_late_row_ends_alone(engine):
    prompts = [engine.completion_prompt(q, 60) for q in QUESTIONS[:3]]
    cancel = StopFlag()
    cancel.set()  # its client left before the first token
    rows = [Row(prompts[0], 60, cancel=cancel), Row(prompts[1], 60, deadline=time.monotonic() - 1), Row(prompts[2], 12)]
    out = engine.generate_rows(rows)
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens <= 1
    assert out[1].finish_reason == "timeout" and out[1].completion_tokens <= 1
    assert out[2].text == one_by_one(engine, prompts[2], 12).text


def test_unencodable_stop_string_is_an_input_error(engine):
    from icft.inference.generate import InputError

    with pytest.raises(InputError, match="'ÿ'"):
        engine.stop_criteria(["Paris", "ÿ"])
    assert engine.stop_criteria(["Paris"]) is not None


def job(engine: Engine, text: str, max_tokens: int, temperature: float = 0.0, seed=None) -> Job:
    decoding = Decoding(temperature=temperature, seed=seed)
    return Job(lambda: [engine.completion_prompt(text, max_tokens)], max_tokens, decoding, timeout=120)


def test_worker_generates_waiting_jobs_together(engine):
    worker = Worker(engine, queue_size=8, batch_size=8, start=False)
    jobs = [job(engine, q, n) for q, n in zip(QUESTIONS, [9, 4, 6, 11])]
    for j in jobs:
        worker.submit(j)
    worker.thread.start()
    wait([j.done for j in jobs], timeout=120)
    assert worker.batches == 1  # four requests that waited together: one batch
    for j, q, n in zip(jobs, QUESTIONS, [9, 4, 6, 11]):
        alone = one_by_one(engine, engine.completion_prompt(q, n), n)
        assert j.done.result()[0].text == alone.text

    sampled = [job(engine, QUESTIONS[0], 5, temperature=0.7, seed=3), job(engine, QUESTIONS[1], 5)]
    before = worker.batches
    for j in sampled:
        worker.submit(j)
    wait([j.done for j in sampled], timeout=120)
    assert worker.batches == before + 2  # a seeded, sampled request runs alone: its seed decides its tokens


def test_worker_queue_bound_and_withdraw(engine):
    worker = Worker(engine, queue_size=2, start=False)
    first, second = job(engine, "a", 3), job(engine, "b", 3)
    worker.submit(first)
    worker.submit(second)
    with pytest.raises(ApiError) as info:
        worker.submit(job(engine, "c", 3))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    worker.withdraw(first)  # its client left: the slot is free at once
    assert worker.queued() == 1 and first.done.exception().status == 499
    worker.submit(job(engine, "c", 3))
    assert worker.queued() == 2


def test_stop_text_cuts_streamed_text_at_a_stop_string():
    text = StopText(["END", "\n\n"])
    out = [text.feed(p, False) for p in ["  Hello", " wor", "ld E", "N", "D and more"]]
    assert "".join(out) == "Hello world " and text.stopped  # leading space stripped, as the whole answer is
    assert "".join(out[:3]) == "Hello world"  # " E" held back: it might begin "END"
    assert out[3] == " " and out[4] == ""  # "EN" still might; "END" did
    assert text.feed("ignored", True) == ""  # nothing after the stop

    text = StopText(["END"])
    pieces = [text.feed("EN", False), text.feed("ough", False), text.feed(" x", True)]
    assert pieces[0] == "" and "".join(pieces) == "ENough x" and not text.stopped  # a near miss is all sent

    text = StopText(None)
    assert [text.feed(" a", False), text.feed(" b", True)] == ["a", " b"]


def test_stop_text_finish_reason():
    from icft.inference.generate import Completion

    length = Completion("x", 1, 5, "length")
    text = StopText(["."])
    text.feed("x.", True)
    assert text.finish_reason(length) == "stop"
    assert StopText(["."]).finish_reason(length) == "length"


def test_own_hosts_and_bind_warning():
    assert {"127.0.0.1", "localhost", "::1"} <= own_hosts("127.0.0.1")
    assert "evil.example" not in own_hosts("0.0.0.0")
    assert "proxy.example" in own_hosts("127.0.0.1", ["Proxy.Example"])
    assert bind_warning("127.0.0.1", None) is None and bind_warning("0.0.0.0", "key") is None
    assert "--api-key" in bind_warning("0.0.0.0", None)


@pytest.fixture(scope="module")
def memory_engine(tmp_path_factory, bert_tokenizer):
    """The tiny model with retrieval over the knowledge file (kb-france, kb-insulin, kb-aspirin), top 2."""
    import torch

    folder = tmp_path_factory.mktemp("serve-memory")
    model = long_llama(folder / "model", bert_tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.load(model=str(model), name="tiny", retrieve_k=2, knowledge=[str(knowledge_file(folder))])
    torch.set_num_threads(threads)


def events(body: bytes) -> list[dict]:
    """The JSON chunks of a server-sent event stream, checking that it ends with [DONE]."""
    data = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", data
    return [json.loads(d) for d in data[:-1]]


def test_an_answer_says_no_fact_passed_the_floor(memory_engine):
    app = create_app(memory_engine)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 3}  # fmt: skip
    memory_engine.retriever.min_score = None  # no floor: the two nearest facts go in
    status, body = asgi_call(app, "POST", "/v1/chat/completions", chat)
    choice = json.loads(body)["choices"][0]
    assert status == 200 and choice["retrieved"][0]["id"] == "kb-france" and "no_fact_passed_floor" not in choice

    memory_engine.retriever.min_score = 2.0  # above any cosine similarity: no fact passes
    try:
        status, body = asgi_call(app, "POST", "/v1/chat/completions", chat)
        choice = json.loads(body)["choices"][0]
        assert status == 200 and choice["no_fact_passed_floor"] == 2.0 and "retrieved" not in choice
        chunks = events(asgi_call(app, "POST", "/v1/chat/completions", {**chat, "stream": True})[1])
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}  # OpenAI's shapes, as before
        assert all(set(d) == {"content"} for d in deltas[1:-1]) and len(deltas) > 2
        assert chunks[-1]["choices"][0]["no_fact_passed_floor"] == 2.0
        assert all("no_fact_passed_floor" not in c["choices"][0] for c in chunks[:-1])
        text = {"model": "tiny", "prompt": "Which drug is acetylsalicylic acid?", "max_tokens": 2}
        choice = json.loads(asgi_call(app, "POST", "/v1/completions", text)[1])["choices"][0]
        assert choice["no_fact_passed_floor"] == 2.0 and choice["logprobs"] is None
    finally:
        memory_engine.retriever.min_score = None


def test_each_request_logs_one_line(memory_engine, caplog):
    app = create_app(memory_engine)
    caplog.set_level(logging.INFO, logger="icft.serve")
    status, body = asgi_call(app, "POST", "/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 4})
    usage = json.loads(body)["usage"]
    assert status == 200 and usage["completion_tokens"] == 4
    asgi_call(app, "GET", "/health")
    asgi_call(app, "POST", "/v1/completions", {"model": "nope", "prompt": "Hello"})
    lines = [r.getMessage() for r in caplog.records if r.name == "icft.serve"]
    assert len(lines) == 3, lines
    assert re.fullmatch(rf"POST /v1/completions 200 in={usage['prompt_tokens']} out=4 \d+ms", lines[0]), lines[0]
    assert re.fullmatch(r"GET /health 200 in=- out=- \d+ms", lines[1]), lines[1]
    assert re.fullmatch(r"POST /v1/completions 404 in=- out=- \d+ms", lines[2]), lines[2]
