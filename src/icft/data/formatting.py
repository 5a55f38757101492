"""Turn examples into (prompt, target) text pairs in a template: plain or the model's chat template.

Training masks the prompt and learns the target; evaluation scores candidate targets after the prompt.
What each kind of example says (its plain prompt, answer, chat messages, candidates) lives in `kinds.py`,
one class per kind; this module puts those texts in a template.

Two templates:

- ``plain``: "Question: ... Answer:" style prompts. A target starts with a space so that word-piece and BPE
  tokenizers split it the same way in training and scoring. `encode_pair` adds the tokenizer's BOS and EOS.
- ``chat``: the model's own chat template (``tokenizer.apply_chat_template``), for instruction-tuned models
  that were trained on it. qa, dialogue and preference examples become user/assistant messages. The prompt
  is the rendering of every message but the last, with the generation prompt (e.g.
  ``<|im_start|>assistant\\n``); the target is the rest of the full rendering: the assistant's answer and the
  template's end-of-turn text (e.g. ``<|im_end|>\\n``), so the model learns to end its turn. Chat pairs are
  *literal*: they hold every special token as text (a ``text`` example becomes BOS text + text + EOS text,
  i.e. the same token ids as plain), and `encode_pair(..., template="chat")` adds nothing.

``auto`` (the default setting) picks ``chat`` where the tokenizer has a chat template, ``plain`` otherwise.
Functions take ``template="plain"`` by default, so callers that pass no tokenizer get plain pairs.
"""

from __future__ import annotations

from typing import Literal

from .kinds import choices, kind_of
from .kinds import dialogue_prompt as dialogue_prompt  # the prompt texts live with their kinds (data/kinds.py)
from .kinds import preference_prompt as preference_prompt
from .kinds import qa_prompt as qa_prompt
from .kinds import qa_question as qa_question
from .schema import Example

TEMPLATES = ("auto", "plain", "chat")
Template = Literal["plain", "chat"]
_MARK = "ICFT_END_OF_TURN_PROBE"


def resolve_template(tokenizer, setting: str = "auto") -> Template:
    """The template a run uses: `setting` (auto, plain or chat) checked against what the tokenizer has."""
    if setting not in TEMPLATES:
        raise ValueError(f"data.template must be one of {', '.join(TEMPLATES)}, got {setting!r}")
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if setting == "chat" and not has_chat:
        raise ValueError("data.template=chat, but the tokenizer has no chat template (use auto or plain)")
    if setting == "plain":
        return "plain"
    return "chat" if has_chat else "plain"


# ------------------------------------------------------------------------------------------------- chat


def chat_messages(ex: Example, answer: str = "chosen") -> list[dict[str, str]]:
    """User/assistant messages for a qa, dialogue or preference example; the last one is the answer."""
    return kind_of(ex).messages(ex, answer)


def chat_split(tokenizer, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(all messages but the last, with the generation prompt; the rest of the full rendering)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        # Some templates rewrite earlier turns once an answer follows (e.g. strip reasoning): then no prefix
        # split exists and the loss could not be put on the answer alone.
        raise ValueError("the tokenizer's chat template renders the conversation without its prompt as a prefix; "
                         "use data.template=plain")  # fmt: skip
    return prompt, full[len(prompt) :]


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts after an assistant message (e.g. "<|im_end|>\\n"; may be "")."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    return full[full.index(_MARK) + len(_MARK) :]


# ------------------------------------------------------------------------------------------------- pairs


def prompt_and_target(ex: Example, tokenizer=None, template: str = "plain", answer: str = "chosen") -> tuple[str, str]:
    """The supervised pair for an example (preference: the chosen answer, or the rejected one).

    With ``template="chat"`` (needs `tokenizer`), see the module docstring: the target is the assistant's
    turn including its end-of-turn text, and ``text`` examples keep their plain form with BOS/EOS as text.
    """
    kind = kind_of(ex)
    if template != "chat":
        return kind.pair(ex, answer)
    if kind.asks:
        return chat_split(tokenizer, kind.messages(ex, answer))
    prompt, target = kind.pair(ex)  # text: nothing asked, so no chat turns: the plain pair, BOS and EOS as text
    return (tokenizer.bos_token or "") + prompt, target + (tokenizer.eos_token or "")


def candidates(ex: Example, tokenizer=None, template: str = "plain") -> tuple[str, list[str], int]:
    """Prompt, candidate continuations and the index of the right one, for scoring by likelihood.

    With ``template="chat"`` the candidates are the bare answer texts after the generation prompt, without
    the end-of-turn text: a score is the log-probability of exactly the answer tokens, as in plain mode and
    lm-evaluation-harness, so acc and acc_norm mean the same in both and one-token answers (yes / no /
    maybe) still share a forward pass.
    """
    texts, gold = choices(ex)
    if template == "chat":
        prompt, _ = chat_split(tokenizer, chat_messages(ex))
        return prompt, texts, gold
    return kind_of(ex).prompt(ex), [" " + t for t in texts], gold


def reference(ex: Example) -> str:
    """The reference text a generated answer is compared to (open QA and dialogue), in any template."""
    return prompt_and_target(ex)[1].strip()


def is_open_ended(ex: Example) -> bool:
    """Examples answered by generation: open qa and dialogue."""
    return kind_of(ex).is_open(ex)
