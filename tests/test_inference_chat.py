"""`icft chat`: the loop in-process, then the real command through a pipe and through a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from _inference_run import trained_run

from icft.inference.chat import chat_command
from icft.inference.generate import Engine


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, staged_data):
    return trained_run(tmp_path_factory, tiny_llama_dir, staged_data)


def test_chat_loop_memory_reset_and_history(run):
    engine = Engine.load(run=str(run), retrieve_k=2)
    seen: list[list[dict]] = []
    real = engine.chat_prompt

    def spy(messages, max_new_tokens, k=None):
        seen.append([dict(m) for m in messages])
        return real(messages, max_new_tokens, k)

    engine.chat_prompt = spy
    stdin = io.StringIO("/memory\nWhich is item 1?\nAnd item 5?\n/memory\n/reset\nHello\n/nope\n")
    stdout = io.StringIO()
    assert chat_command(engine, max_new_tokens=4, stdin=stdin, stdout=stdout) == 0
    out = stdout.getvalue()
    assert "not a source of medical advice" in out
    assert "(nothing retrieved yet" in out and "(conversation forgotten)" in out and "unknown command /nope" in out
    assert out.count("model> ") == 3
    # /memory lists the two facts retrieved for the last answer, with scores
    listing = out.split("And item 5?")[-1] if "And item 5?" in out else out
    assert "1. [" in listing and "2. [" in listing and "(memory)" in listing
    # the second question is asked with the first exchange as history; /reset starts afresh
    assert [len(m) for m in seen] == [1, 3, 1]
    assert seen[1][0]["content"] == "Which is item 1?" and seen[2][0]["content"] == "Hello"


def test_memory_says_when_no_fact_passed_the_floor(run):
    engine = Engine.load(run=str(run), retrieve_k=2)
    engine.retriever.min_score = 2.0  # above any cosine similarity: no fact passes
    stdout = io.StringIO()
    assert chat_command(engine, max_new_tokens=2, stdin=io.StringIO("Which is item 1?\n/memory\n"), stdout=stdout) == 0
    assert "(no fact passed the floor 2 for the last answer)" in stdout.getvalue()

    engine.retriever.min_score = -1.0  # below any: the two nearest facts are listed
    stdout = io.StringIO()
    chat_command(engine, max_new_tokens=2, stdin=io.StringIO("Which is item 1?\n/memory\n"), stdout=stdout)
    assert "2. [" in stdout.getvalue() and "no fact passed" not in stdout.getvalue()


def _icft(*args: str) -> list[str]:
    return [sys.executable, "-m", "icft", *args]


@pytest.mark.slow
def test_chat_through_stdin(run):
    done = subprocess.run(_icft("chat", "--run", str(run), "--retrieve", "2", "--max-new-tokens", "4"),
                          input="Which is item 1?\n/memory\n", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not a source of medical advice" in done.stdout
    assert "model> " in done.stdout and "1. [" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.slow
def test_chat_through_a_terminal(run):
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(_icft("chat", "--run", str(run), "--max-new-tokens", "4"), stdin=child_fd,
                            stdout=child_fd, stderr=child_fd, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            close_fds=True)  # fmt: skip
    os.close(child_fd)
    seen = b""

    def read_until(marker: bytes, timeout: float = 90) -> None:
        nonlocal seen
        deadline = time.time() + timeout
        while marker not in seen and time.time() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main_fd, 4096)
                except OSError:  # the child closed the terminal
                    break
        assert marker in seen, seen.decode(errors="replace")[-2000:]

    try:
        read_until(b"you> ")
        os.write(main_fd, b"Hello there\n")
        read_until(b"model> ")
        seen = seen.split(b"model> ", 1)[1]
        read_until(b"you> ")
        os.write(main_fd, b"/memory\n")
        read_until(b"retrieval is off")
        os.write(main_fd, b"\x04")  # Ctrl-D at the start of a line: end of input
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main_fd)
