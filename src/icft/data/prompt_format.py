"""One prompt format per run: how every example and every conversation becomes token ids.

A `PromptFormat` is a tokenizer, a template ("plain" or "chat", see `formatting`) and the run's sequence
length. Training, stage evaluation, `icft eval`, `icft compare`, retrieval and `icft generate` / `chat` /
`serve` all build their prompts through it, so a model is asked in exactly the tokens it was trained on:

- `encode(ex)`: the supervised sequence of an example (prompt masked, answer labelled), as training sees it;
- `candidates(ex)`: the prompt and candidate answers of a choice item, as scoring sees them;
- `prompt(ex)` / `prompt_ids(text)`: an example's generation prompt and its token ids;
- `conversation(messages)` / `conversation_ids(messages)`: the generation prompt of a chat conversation:
  the tokenizer's chat template with template "chat", icft's Patient/Doctor lines with template "plain"
  (what `dialogue` examples train);
- `stop_ids()`: the tokens that end an answer.

The template is resolved once, from the run config's ``data.template`` (`from_config`), and saved with
the run (`to_json`, the run folder's prompt_format.json), so serving a run uses the format it was trained
in, not whatever the tokenizer happens to offer: a run trained plain on a chat model is served plain.

System prompts (``data.system_prompt``: {source: prompt}; the key "*" for every other source and for
conversations, which have no source) are part of the format too: the chat template's system message, or a
first line in the plain template. A record is asked with its source's prompt in training, evaluation and
scoring; `generate`, `chat` and `serve` put the "*" prompt before a conversation that brings none. So a
source whose answers follow a house style (ChatDoctor's "Hi, thanks for your query") can be told apart from
the questions the model is asked later, instead of its style becoming the model's only voice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .formatting import (
    Template,
    candidates,
    chat_messages,
    chat_split,
    dialogue_prompt,
    end_of_turn,
    prompt_and_target,
    resolve_template,
)
from .kinds import kind_of
from .schema import Example
from .tokenize import TokenizedPair, encode_pair

DEFAULT_MAX_LENGTH = 512  # a model without a run config: evaluation's default length


@dataclass(frozen=True)
class PromptFormat:
    """How a run's examples and conversations become token ids. Equal formats: same template and length."""

    tokenizer: Any = field(repr=False, compare=False)
    template: Template = "plain"
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per training sequence (model.max_length)
    system_prompts: tuple[tuple[str, str], ...] = ()  # (source or "*", prompt): data.system_prompt

    def __post_init__(self) -> None:
        if self.template not in ("plain", "chat"):
            raise ValueError(f"a prompt format's template is plain or chat, got {self.template!r}")

    # --- building one ---------------------------------------------------------------------------------

    @classmethod
    def resolve(cls, tokenizer: Any, setting: str = "auto", max_length: int = DEFAULT_MAX_LENGTH,
                system_prompts: dict[str, str] | None = None) -> PromptFormat:  # fmt: skip
        """The format of a `data.template` setting (auto, plain or chat) on this tokenizer: the one rule."""
        return cls(tokenizer, resolve_template(tokenizer, setting), max_length,
                   tuple(sorted((system_prompts or {}).items())))  # fmt: skip

    @classmethod
    def from_config(cls, tokenizer: Any, config: Any) -> PromptFormat:
        """The format a run config asks for: a RunConfig, or a run's config.yaml as a dict."""
        if isinstance(config, dict):
            setting = (config.get("data") or {}).get("template", "auto")
            max_length = (config.get("model") or {}).get("max_length", DEFAULT_MAX_LENGTH)
            system = (config.get("data") or {}).get("system_prompt") or {}
        else:
            setting, max_length = config.data.template, config.model.max_length
            system = config.data.system_prompt
        return cls.resolve(tokenizer, setting, int(max_length), system)

    def to_json(self) -> dict[str, Any]:
        """What a run folder's prompt_format.json holds (system prompts only where there are some)."""
        saved: dict[str, Any] = {"template": self.template, "max_length": self.max_length}
        if self.system_prompts:
            saved["system_prompts"] = dict(self.system_prompts)
        return saved

    @classmethod
    def from_json(cls, tokenizer: Any, saved: dict[str, Any]) -> PromptFormat:
        """A saved format on its tokenizer; ValueError when it is malformed or the tokenizer cannot render it."""
        try:
            template, max_length = saved["template"], int(saved["max_length"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a saved prompt format needs a template and a max_length, got {saved!r}") from None
        if template not in ("plain", "chat"):
            raise ValueError(f"a saved prompt format's template is plain or chat, got {template!r}")
        system = saved.get("system_prompts") or {}
        if not isinstance(system, dict) or not all(isinstance(v, str) for v in system.values()):
            raise ValueError(f"a saved prompt format's system_prompts map sources to texts, got {system!r}")
        return cls.resolve(tokenizer, template, max_length, system)

    def system_prompt(self, source: str | None) -> str | None:
        """The system prompt of a record's source (or "*" for any other, and for conversations), or None."""
        prompts = dict(self.system_prompts)
        return prompts.get(source or "*", prompts.get("*"))

    # --- examples -------------------------------------------------------------------------------------

    def pair(self, ex: Example, answer: str = "chosen") -> tuple[str, str]:
        """The (prompt, target) text of an example (preference: the chosen or the rejected answer)."""
        system = self.system_prompt(ex.source)
        if system is None or not kind_of(ex).asks:  # text records ask nothing: no system prompt
            return prompt_and_target(ex, self.tokenizer, self.template, answer)
        if self.template == "chat":
            return chat_split(self.tokenizer, [{"role": "system", "content": system}, *chat_messages(ex, answer)])
        prompt, target = prompt_and_target(ex, self.tokenizer, self.template, answer)
        return f"{system}\n{prompt}", target

    def prompt(self, ex: Example) -> str:
        """The text an example's answer follows: what generation continues."""
        return self.pair(ex)[0]

    def candidates(self, ex: Example) -> tuple[str, list[str], int]:
        """Prompt, candidate answers and the index of the right one, for scoring by likelihood."""
        prompt, options, gold = candidates(ex, self.tokenizer, self.template)
        system = self.system_prompt(ex.source)
        if system is None:
            return prompt, options, gold
        if self.template == "chat":
            messages = [{"role": "system", "content": system}, *chat_messages(ex)]
            return chat_split(self.tokenizer, messages)[0], options, gold
        return f"{system}\n{prompt}", options, gold

    def encode_pair(
        self, prompt: str, target: str, max_length: int | None = None, add_eos: bool = True
    ) -> TokenizedPair:
        """Token ids of a (prompt, target) text pair of this format, labels on the target."""
        return encode_pair(self.tokenizer, prompt, target, max_length or self.max_length, add_eos, self.template)

    def encode(
        self, ex: Example, answer: str = "chosen", max_length: int | None = None, add_eos: bool = True
    ) -> TokenizedPair:
        """An example's supervised sequence, as training sees it (`add_eos=False`: as scoring sees it)."""
        return self.encode_pair(*self.pair(ex, answer), max_length=max_length, add_eos=add_eos)

    # --- generation -----------------------------------------------------------------------------------

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a prompt text of this format, exactly as `encode` starts a sequence: plain adds the
        tokenizer's BOS (if any); chat prompts hold their own. Never empty: generation needs a token."""
        tok = self.tokenizer
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []
        if self.template == "plain" and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
        return ids or [tok.eos_token_id]  # EOS is what a new document follows in training

    def conversation(self, messages: list[dict[str, str]]) -> str:
        """The generation prompt of a conversation (system, user and assistant messages; a user turn last).
        One without a system message gets the format's "*" system prompt, where it has one."""
        system = self.system_prompt(None)
        if system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        if self.template == "chat":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] in ("user", "assistant")]
        text = dialogue_prompt([*turns, {"role": "assistant", "content": ""}])  # its last turn is the answer's
        return "\n".join([*system, text])

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.prompt_ids(self.conversation(messages))

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and with chat the first token of the template's end of turn
        (e.g. <|im_end|>, which for many chat models is not the tokenizer's EOS)."""
        tok = self.tokenizer
        stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
        if self.template == "chat":
            suffix = tok(end_of_turn(tok), add_special_tokens=False)["input_ids"]
            stop += [t for t in suffix[:1] if t not in stop]
        return stop
