"""Batched generation for `icft serve`: rows of different requests in one `generate` call, each ending on its
own, give the answers one-by-one generation gives; the worker batches jobs that wait together."""

from __future__ import annotations

import time
from concurrent.futures import wait

import pytest
from _serve_server import long_llama

from icft.inference.generate import Engine, Row, StopFlag
from icft.inference.serve import ApiError, Job, StopText, Worker, bind_warning, own_hosts

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
    sampling = {"temperature": temperature, "top_p": 1.0, "stop": None, "seed": seed}
    return Job(lambda: [engine.completion_prompt(text, max_tokens)], max_tokens, sampling, timeout=120)


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
