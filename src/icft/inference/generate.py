"""A loaded model ready to answer: prompts in, text out, through transformers `generate`.

`Engine` is shared by `icft generate`, `icft chat` and `icft serve`. Conversations and examples become
prompts through the prompt format the model was trained in (`PromptFormat`: a run's saved format, or for
a base model the one its tokenizer calls for), so they are encoded exactly as training encoded them: the
chat template for a run trained with it, else icft's plain prompts (the tokenizer's BOS, if any, then the
text without special tokens). A raw completion prompt is encoded the plain way. Batches are padded on the
left, so each row's last token is its own prompt's last token and the new tokens follow it directly;
`generate` derives positions from the attention mask, which also holds for the embedded BERT decoder.
Decoding is greedy unless a temperature above 0 asks for sampling.

Every answer comes from `Engine.generate_rows`: rows (from different requests, in the server) share one
`generate` call, each with its own token limit, stop strings, stream and cancel flag (`RowLimits` ends a row;
`RowStreamer` hands each row its own text), so greedy answers are those of one-by-one generation.
`Engine.generate` batches prompts of similar length into it; `icft chat` streams one row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, TextStreamer
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.generation.streamers import BaseStreamer

from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..memory.retrieval import Hit, Retriever, context_block, fit_facts, load_retriever
from ..models import context_limit

DEFAULT_MAX_LENGTH = 2048  # a cap for models whose position limit is far beyond what they were trained on


class InputError(ValueError):
    """A problem with the user's input (paths, options, request fields), reported in one line."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_new_tokens), "timeout" or "cancelled"
    retrieved: list[Hit] = field(default_factory=list)
    unmet_floor: float | None = None  # the prompt's `Prompt.unmet_floor`


@dataclass
class Prompt:
    """Token ids ready for `generate`, with the facts that went into them."""

    ids: list[int]
    retrieved: list[Hit] = field(default_factory=list)
    text: str = ""  # the prompt as written (decoding ids loses case and spacing with some tokenizers)
    # the relevance floor when retrieval ran and no fact reached it: said to the user, rather than showing nothing
    unmet_floor: float | None = None


class CallbackStreamer(TextStreamer):
    """Hands each finished piece of text to a callback (TextStreamer prints it; TextIteratorStreamer queues it)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, on_text: Callable[[str, bool], None], skip_prompt: bool = True
    ):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.on_text(text, stream_end)


class StopFlag(StoppingCriteria):
    """Stops generation once `set()` is called, e.g. when a streaming client hangs up."""

    def __init__(self):
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


@dataclass
class Row:
    """One prompt in a shared batch, with the limits of the request it came from."""

    prompt: Prompt
    max_new_tokens: int
    stop: list[str] | None = None
    stop_criteria: StopStringCriteria | None = None  # from `Engine.stop_criteria(stop)`
    on_text: Callable[[str, bool], None] | None = None  # streaming: each finished piece of this row's text
    cancel: StopFlag | None = None  # set by another thread: the client left
    deadline: float | None = None  # time.monotonic() after which the row ends as "timeout"


class RowLimits(StoppingCriteria):
    """Ends each row of a batch on its own: EOS, its stop strings, its token limit, its cancel flag or deadline.

    transformers pads a finished row and stops when all rows are finished; `ended_at[i]` is how many new
    tokens row i had when it finished, so its answer is exactly what it would be alone.
    """

    def __init__(self, rows: list[Row], width: int, eos_ids: list[int]):
        self.rows, self.width, self.eos_ids = rows, width, set(eos_ids)
        self.ended_at: list[int | None] = [None] * len(rows)
        self.reason: list[str] = ["length"] * len(rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        new = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        now = time.monotonic()
        for i, row in enumerate(self.rows):
            if self.ended_at[i] is not None:
                continue
            reason = None
            if last[i] in self.eos_ids:
                reason = "stop"
            elif row.stop_criteria is not None and bool(row.stop_criteria(input_ids[i : i + 1], scores)[0]):
                reason = "stop"
            elif row.cancel is not None and row.cancel.stopped:
                reason = "cancelled"
            elif row.deadline is not None and now > row.deadline:
                reason = "timeout"
            elif new >= row.max_new_tokens:
                reason = "length"
            if reason is not None:
                self.ended_at[i], self.reason[i] = new, reason
        return torch.tensor([e is not None for e in self.ended_at], dtype=torch.bool, device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Hands each streaming row its own text: one `CallbackStreamer` per row, fed that row's tokens only.

    `generate` first puts the prompt, then one token per row per step; a row's tokens after it ended are
    padding. Tokens are counted, not timed, so this holds whether the stop check runs before or after `put`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rows: list[Row], limits: RowLimits):
        self.streams = [CallbackStreamer(tokenizer, r.on_text, skip_prompt=False) if r.on_text else None for r in rows]
        self.limits = limits
        self.count = -1  # the first put is the prompt
        self.closed = [s is None for s in self.streams]

    def put(self, value: torch.Tensor) -> None:
        self.count += 1
        if self.count == 0:
            return
        tokens = value.reshape(-1).tolist()
        for i, stream in enumerate(self.streams):
            if self.closed[i]:
                continue
            ended = self.limits.ended_at[i]
            if ended is None or self.count <= ended:
                stream.put(torch.tensor([tokens[i]]))
            if ended is not None and self.count >= ended:
                self._close(i)

    def end(self) -> None:
        for i in range(len(self.streams)):
            if not self.closed[i]:
                self._close(i)

    def _close(self, i: int) -> None:
        self.closed[i] = True
        self.streams[i].end()


class Engine:
    """A model, its tokenizer and prompt format, and its memory to retrieve from: prompts in, completions out.

    `fmt` is the prompt format the model was trained in (its `max_length` is then the length it trained at,
    `trained_length`); a model given without one is asked as its tokenizer calls for. The context limit is the
    model's position limit or DEFAULT_MAX_LENGTH, whichever is smaller; `Engine.load` sets --max-length's.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        retriever: Retriever | None = None,
        retrieve_k: int = 0,
        fmt: PromptFormat | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.format = fmt or PromptFormat.resolve(tokenizer, "auto")
        self.trained_length = fmt.max_length if fmt is not None else None  # tokens per training sequence
        self.name = name
        self.retriever = retriever
        self.retrieve_k = retrieve_k if retriever is not None else 0
        self.limit = context_limit(model, DEFAULT_MAX_LENGTH)  # prompt + new tokens
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        # A chat model may end a turn with its own token (<|eot_id|>) besides the tokenizer's EOS; in the chat
        # format the template's end of turn ends an answer too, as in evaluation.
        self.eos_ids = list(dict.fromkeys([tokenizer.eos_token_id, *eos, *self.format.stop_ids()]))

    @classmethod
    def load(
        cls,
        run: str | None = None,
        model: str | None = None,
        retrieve_k: int = 0,
        knowledge: list[str] | None = None,
        name: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> Engine:
        """`--run DIR` (base model + adapter in the prompt format it trained in, its memory for retrieval) or
        `--model NAME` (a base model, in the format saved with it by `icft export`, else its tokenizer's)."""
        from ..models import EMBEDDED_DEFAULT
        from ..runs import PROMPT_FORMAT_FILE, Run

        if run and model:
            raise InputError("give either a run directory (--run) or a model (--model), not both")
        if retrieve_k < 0:
            raise InputError(f"--retrieve must be >= 0, got {retrieve_k}")
        try:
            if run:
                loaded = Run.from_pretrained(run, memory=retrieve_k > 0)
            else:
                loaded = Run.from_base(model or EMBEDDED_DEFAULT)
        except (FileNotFoundError, ValueError) as error:
            raise InputError(str(error)) from None
        try:
            retriever = load_retriever(run, knowledge, retrieve_k, loaded.memory)
        except ValueError as error:  # a bad knowledge file's DataError too
            raise InputError(str(error)) from None
        default_name = Path(run).resolve().name if run else (model or EMBEDDED_DEFAULT)
        trained = bool(run) or (Path(model or EMBEDDED_DEFAULT) / PROMPT_FORMAT_FILE).is_file()
        engine = cls(loaded.model, loaded.tokenizer, name or default_name, retriever, retrieve_k,
                     loaded.format if trained else None)  # fmt: skip
        engine.limit = context_limit(loaded.model, max_length)
        return engine

    @property
    def retrieval_floor(self) -> float | None:
        """The relevance floor retrieved facts must reach (a run's memory.retrieve_min_score), or None."""
        return self.retriever.min_score if self.retrieve_k else None

    # --- prompts ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw text as training saw a text's start: BOS (if any) + the text."""
        return PromptFormat(self.tokenizer, "plain").prompt_ids(text)

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt for a conversation in the model's prompt format: its chat template, or icft's
        Patient/Doctor lines."""
        return self.format.conversation(messages)

    def example_prompt(self, ex: Example) -> Prompt:
        """An example's prompt (qa, dialogue, preference), as training and evaluation put it."""
        text = self.format.prompt(ex)
        return Prompt(self.format.prompt_ids(text), [], text)

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[Hit]]:
        k = self.retrieve_k if k is None else k
        if self.retriever is None or k <= 0:
            return [[] for _ in queries]
        return self.retriever.search(queries, k)

    def completion_prompt(self, text: str, max_new_tokens: int, k: int | None = None) -> Prompt:
        """A raw prompt, with a Context block of retrieved facts ahead of it when retrieval is on."""
        hits = self.retrieve([text], k)[0]
        facts = self._fit([h.text for h in hits], lambda fs: _prepend(fs, text), max_new_tokens, self.encode)
        full = _prepend(facts, text)
        return Prompt(self.encode(full), _used(hits, facts), full, self._unmet_floor(hits, k))

    def chat_prompt(self, messages: list[dict[str, str]], max_new_tokens: int, k: int | None = None) -> Prompt:
        """A conversation's prompt; retrieved facts go at the start of the last user message."""
        last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        hits = self.retrieve([messages[last]["content"]], k)[0] if last is not None else []

        def render(facts: list[str]) -> str:
            if not facts:
                return self.chat_text(messages)
            edited = [dict(m) for m in messages]
            edited[last]["content"] = _prepend(facts, edited[last]["content"])
            return self.chat_text(edited)

        facts = self._fit([h.text for h in hits], render, max_new_tokens, self.format.prompt_ids)
        text = render(facts)
        unmet = self._unmet_floor(hits, k) if last is not None else None
        return Prompt(self.format.prompt_ids(text), _used(hits, facts), text, unmet)

    def _unmet_floor(self, hits: list[Hit], k: int | None) -> float | None:
        """The floor, when facts were searched for with one and none reached it."""
        searched = self.retriever is not None and (self.retrieve_k if k is None else k) > 0
        return self.retrieval_floor if searched and not hits else None

    def _fit(
        self, facts: list[str], render: Callable[[list[str]], str], max_new_tokens: int,
        encode: Callable[[str], list[int]],
    ) -> list[str]:  # fmt: skip
        if not facts:
            return []
        return fit_facts(facts, render, lambda text: len(encode(text)), self.limit - max_new_tokens)

    # --- generation ------------------------------------------------------------------------------------

    def check_room(self, prompt: Prompt, max_new_tokens: int) -> None:
        """Raise InputError when prompt + new tokens pass the context limit (the server's 400)."""
        if max_new_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_new_tokens}")
        if len(prompt.ids) + max_new_tokens > self.limit:
            raise InputError(
                f"this model's maximum context length is {self.limit} tokens, but the prompt has "
                f"{len(prompt.ids)} and {max_new_tokens} more were asked for"
            )

    def truncate(self, prompt: Prompt, max_new_tokens: int) -> Prompt:
        """Drop tokens from the prompt's start (keeping BOS) so that it fits, as evaluation does."""
        room = self.limit - max_new_tokens
        if room < 1:
            raise InputError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {self.limit} tokens")
        if len(prompt.ids) <= room:
            return prompt
        bos = self.tokenizer.bos_token_id
        head = [bos] if bos is not None and prompt.ids[0] == bos else []
        return replace(prompt, ids=head + prompt.ids[len(prompt.ids) - room + len(head) :])

    def generate(
        self,
        prompts: list[Prompt],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        batch_size: int = 16,
    ) -> list[Completion]:
        """One completion per prompt; prompts of similar length share a batch (`generate_rows`). Streaming, or a
        flag to stop midway: `generate_rows` with a `Row` that has `on_text` or `cancel`."""
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
        criteria = self.stop_criteria(stop)
        out: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [Row(prompts[i], max_new_tokens, stop, criteria) for i in idx]
            for i, completion in zip(idx, self.generate_rows(rows, temperature, top_p)):
                out[i] = completion
        return out  # type: ignore[return-value]

    def stop_criteria(self, stop: list[str] | None) -> StopStringCriteria | None:
        """transformers' matcher for these stop strings; InputError names one that no tokens can end with."""
        if not stop:
            return None
        for s in stop:  # one by one: transformers only complains when none of a set can match
            if not _can_stop(self.tokenizer, s):
                raise InputError(
                    f"stop: this model's tokenizer has no token that can end the stop string {s!r}, so it could "
                    "never match; leave it out"
                )
        return StopStringCriteria(self.tokenizer, stop)

    @torch.no_grad()
    def generate_rows(self, rows: list[Row], temperature: float = 0.0, top_p: float = 1.0) -> list[Completion]:
        """One `generate` call for rows with their own limits; greedy rows answer as they would one by one."""
        batch = self.tokenizer.pad(
            {"input_ids": [r.prompt.ids for r in rows]}, padding=True, padding_side="left", return_tensors="pt"
        )
        width = batch["input_ids"].shape[1]
        limits = RowLimits(rows, width, self.eos_ids)
        streamer = RowStreamer(self.tokenizer, rows, limits) if any(r.on_text for r in rows) else None
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        )
        output = self.model.generate(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            max_new_tokens=max(r.max_new_tokens for r in rows),
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stopping_criteria=[limits],
            streamer=streamer,
            **sampling,
        )
        out = []
        for i, row in enumerate(rows):
            tokens = output[i, width:].tolist()
            ended = limits.ended_at[i]
            tokens = tokens if ended is None else tokens[:ended]
            reason = limits.reason[i] if limits.reason[i] in ("timeout", "cancelled") else None
            out.append(self._completion(row.prompt, tokens, row.max_new_tokens, row.stop, reason))
        return out

    def _completion(
        self, prompt: Prompt, row: list[int], max_new_tokens: int, stop: list[str] | None, reason: str | None = None
    ) -> Completion:
        ends = [row.index(e) for e in self.eos_ids if e in row]
        new = row[: min(ends)] if ends else row
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        finish = reason or ("stop" if ends or stopped or len(row) < max_new_tokens else "length")
        return Completion(text.strip(), len(prompt.ids), len(new), finish, prompt.retrieved, prompt.unmet_floor)


def _can_stop(tokenizer: PreTrainedTokenizerBase, stop: str) -> bool:
    try:
        StopStringCriteria(tokenizer, [stop])
    except ValueError:
        return False
    return True


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop or [] if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _prepend(facts: list[str], text: str) -> str:
    return f"{context_block(facts)}\n{text}" if facts else text


def _used(hits: list[Hit], facts: list[str]) -> list[Hit]:
    """The hits whose facts made it into the prompt (the last one possibly cut)."""
    return [Hit(h.id, h.score, f, h.source) for h, f in zip(hits, facts)]
