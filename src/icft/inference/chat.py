"""`icft chat`: a multi-turn conversation in the terminal, answers streamed token by token.

The conversation goes through the prompt format the model was trained in (`Engine.format`): its chat
template for a run trained with it, else icft's Patient/Doctor format (what `dialogue` examples train).
`/memory` shows the facts retrieved for the last answer (or says that none passed the run's relevance
floor), `/reset` forgets the conversation, `/help` lists the commands, Ctrl-D (end of input) leaves. When the
conversation outgrows the context limit, its oldest turns are left out of the prompt.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import TextIO

from .generate import Completion, Engine, InputError, Prompt, Row, StopFlag

BANNER = (
    "icft chat with {name}. This model is a research artefact, not a source of medical advice: "
    "it can be wrong or out of date, and it does not know you. For a health problem see a doctor; "
    "in an emergency call your local emergency number.\n"
    "Commands: /memory (what was retrieved for the last answer), /reset (forget the conversation), "
    "/help; Ctrl-D leaves."
)
HELP = "/memory: facts retrieved for the last answer   /reset: forget the conversation   Ctrl-D: leave"


def chat_command(
    engine: Engine,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the loop until end of input; returns 0."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if max_new_tokens < 1 or max_new_tokens >= engine.limit:
        raise InputError(f"--max-new-tokens must be in 1..{engine.limit - 1}, got {max_new_tokens}")
    print(BANNER.format(name=engine.name), file=stdout)
    if engine.retrieve_k:
        print(f"Retrieving {engine.retrieve_k} facts per answer from {len(engine.retriever)} in memory.", file=stdout)
    history: list[dict[str, str]] = []
    last: Completion | None = None
    while True:
        line = _read(stdin, stdout)
        if line is None:
            print(file=stdout)
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history, last = [], None
            print("(conversation forgotten)", file=stdout)
        elif line == "/memory":
            _show_memory(engine, last, stdout)
        elif line in ("/help", "/?"):
            print(HELP, file=stdout)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=stdout)
        else:
            history.append({"role": "user", "content": line})
            last = _answer(engine, history, max_new_tokens, temperature, stdout)
            history.append({"role": "assistant", "content": last.text})


def _read(stdin: TextIO, stdout: TextIO) -> str | None:
    """One line of input after a prompt, or None at end of input. input() gives line editing on a terminal."""
    if stdin is sys.stdin and stdout is sys.stdout:
        try:
            return input("you> ")
        except EOFError:
            return None
    print("you> ", end="", file=stdout, flush=True)
    line = stdin.readline()
    return line if line else None


def _answer(
    engine: Engine, history: list[dict[str, str]], max_new_tokens: int, temperature: float, stdout: TextIO
) -> Completion:
    """The answer to the conversation, printed piece by piece as it is generated (in a thread of its own, so that
    Ctrl-C here stops it at the next token)."""
    prompt = _fitting_prompt(engine, history, max_new_tokens)
    pieces: queue.Queue[str | None] = queue.Queue()  # None: the answer is over

    def on_text(piece: str, end: bool) -> None:
        pieces.put(piece)
        if end:
            pieces.put(None)

    stop = StopFlag()
    row = Row(prompt, max_new_tokens, on_text=on_text, cancel=stop)
    result: list[Completion] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(engine.generate_rows([row], temperature))
        except BaseException as error:  # reported below, in the main thread
            failure.append(error)
        pieces.put(None)  # no-op after the streamer's own end: printing stops at the first None

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    print("model> ", end="", file=stdout, flush=True)
    try:
        while (piece := pieces.get()) is not None:
            print(piece, end="", file=stdout, flush=True)
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
        stop.set()
    worker.join()
    print(file=stdout)
    if failure:
        raise failure[0]
    return result[0] if result else Completion("", len(prompt.ids), 0, "stop", prompt.retrieved, prompt.unmet_floor)


def _fitting_prompt(engine: Engine, history: list[dict[str, str]], max_new_tokens: int) -> Prompt:
    """The prompt for the whole conversation, or for its latest turns when the whole does not fit."""
    for start in range(0, len(history), 2):  # drop (user, assistant) pairs from the front
        prompt = engine.chat_prompt(history[start:], max_new_tokens)
        if len(prompt.ids) + max_new_tokens <= engine.limit:
            return prompt
    return engine.truncate(engine.chat_prompt(history[-1:], max_new_tokens), max_new_tokens)


def _show_memory(engine: Engine, last: Completion | None, stdout: TextIO) -> None:
    if not engine.retrieve_k:
        print("(retrieval is off: start the chat with --retrieve K)", file=stdout)
    elif last is None:
        print("(nothing retrieved yet: ask something first)", file=stdout)
    elif last.unmet_floor is not None:
        print(f"(no fact passed the floor {last.unmet_floor:g} for the last answer)", file=stdout)
    elif not last.retrieved:
        print("(nothing was retrieved for the last answer)", file=stdout)
    for i, hit in enumerate(last.retrieved if last else [], start=1):
        text = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        print(f"{i}. [{hit.score:.3f}] {hit.id} ({hit.source}): {text}", file=stdout)
