"""The scoring shortcuts give the scores the plain way gives (within 1e-5): continuations on a shared,
cached prompt; the output projection at scored positions only; right-padding only to a batch's longest."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutput

from icft.data.tokenize import IGNORE_INDEX, TokenizedPair, collate, encode_pair
from icft.likelihood import ScoreSettings, _can_share_prompt, answer_nll, score_pairs, target_logits

QUESTION = "Question: Which organ filters the blood?\nOptions: (A) kidney (B) heart (C) lung\nAnswer:"
LONGER = "Question: Which of these is the largest number, given that the question is longer than the first?\nAnswer:"
# Multi-token options sharing a prompt (of two lengths, so prompts are padded), single-token options sharing
# one, a group mixing one- and many-token answers, and a prompt with one continuation.
PAIRS = [
    (QUESTION, " kidney"), (QUESTION, " the heart muscle"), (QUESTION, " lung tissue, and more of it"),
    (LONGER, " 4"), (LONGER, " forty-two thousand"), (LONGER, " a million and one"),
    ("Is it blue?", " yes"), ("Is it blue?", " no"), ("Is it blue?", " maybe"),
    ("A prompt alone", " with a continuation of several tokens"),
]  # fmt: skip


def close(a: list[float], b: list[float]) -> bool:
    return a == pytest.approx(b, rel=1e-5, abs=1e-5)


class TokenCount:
    """Counts the input tokens (padding included) that go through a model's forward."""

    def __init__(self, model):
        self.tokens = 0
        model.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        self.tokens += kwargs["input_ids"].numel()


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    from icft.models import load_model

    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def minilm():
    from icft.models import MINILM_DECODER, load_model

    return load_model(MINILM_DECODER)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2", "minilm"])
@pytest.mark.parametrize("batch_size", [32, 2])
def test_shared_prompt_scores_equal_scoring_each_pair_alone(which, batch_size, request):
    model, tokenizer = request.getfixturevalue(which)
    assert _can_share_prompt(model)
    settings = ScoreSettings(max_length=64, batch_size=batch_size)
    fast = score_pairs(model, tokenizer, PAIRS, settings)
    slow = score_pairs(model, tokenizer, PAIRS, settings, share_prompts=False)
    one_by_one = [score_pairs(model, tokenizer, [pair], ScoreSettings(max_length=64))[0] for pair in PAIRS]
    assert close(fast, slow) and close(fast, one_by_one)
    assert len({round(x, 3) for x in fast}) == len(PAIRS)  # every pair scored, none copied from another


def test_shared_prompts_run_fewer_tokens(tiny_llama):
    model, tokenizer = tiny_llama
    count = TokenCount(model)
    score_pairs(model, tokenizer, PAIRS, ScoreSettings(max_length=64), share_prompts=False)
    alone, count.tokens = count.tokens, 0
    score_pairs(model, tokenizer, PAIRS, ScoreSettings(max_length=64))
    assert count.tokens < alone


def test_shared_prompt_with_lora_and_a_cut_prompt(tiny_llama_dir):
    """A peft-wrapped model with non-zero adapters, and prompts cut to fit max_length: a prompt cut to
    different lengths for two answers is two prompts, and each still scores as if alone."""
    from peft import LoraConfig, get_peft_model

    from icft.models import load_model

    model, tokenizer = load_model(str(tiny_llama_dir))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert _can_share_prompt(model)
    pairs = PAIRS + [(QUESTION * 3, " kidney"), (QUESTION * 3, " a much longer answer that cuts the prompt more")]
    settings = ScoreSettings(max_length=40, batch_size=3)
    fast = score_pairs(model, tokenizer, pairs, settings)
    slow = score_pairs(model, tokenizer, pairs, settings, share_prompts=False)
    assert close(fast, slow)


def test_answer_nll_is_the_summed_score_per_target_token(tiny_llama):
    model, tokenizer = tiny_llama
    nll = answer_nll(model, tokenizer, PAIRS, ScoreSettings(max_length=64))
    slow = score_pairs(model, tokenizer, PAIRS, ScoreSettings(max_length=64), share_prompts=False)
    counts = [encode_pair(tokenizer, p, t, 64, add_eos=False).n_target for p, t in PAIRS]
    assert close(nll, [-s / n for s, n in zip(slow, counts)])


class NoLogitsToKeep(torch.nn.Module):
    """A model whose forward takes no `logits_to_keep` (as custom model code may): all positions' logits."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, input_ids, attention_mask=None):
        return CausalLMOutput(logits=self.base(input_ids=input_ids, attention_mask=attention_mask).logits)


def test_output_projection_at_target_positions_equals_the_full_one(tiny_llama):
    """target_logits projects only the positions that predict a target; a model that cannot do that
    falls back to projecting all of them and picking those: the same logits either way."""
    model, tokenizer = tiny_llama
    seqs = [encode_pair(tokenizer, p, c, 64) for p, c in PAIRS]
    batch = collate(seqs, tokenizer.pad_token_id)
    logits, targets, rows = target_logits(model, batch)
    fallback = NoLogitsToKeep(model)
    full_logits, full_targets, full_rows = target_logits(fallback, batch)
    assert logits.shape == (sum(s.n_target for s in seqs), model.config.vocab_size)
    torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, full_targets) and torch.equal(rows, full_rows)
    assert not _can_share_prompt(fallback)
    scores = score_pairs(model, tokenizer, PAIRS, ScoreSettings(max_length=64))
    assert close(score_pairs(fallback, tokenizer, PAIRS, ScoreSettings(max_length=64)), scores)


def test_training_loss_is_the_same_without_the_shortcut(tiny_llama):
    """The training loss (per-sequence NLL with gradients) on projected-at-targets logits equals the loss
    on the full projection, and so do its gradients."""
    from icft.losses import per_sequence_nll

    model, tokenizer = tiny_llama
    seqs = [encode_pair(tokenizer, p, c, 64) for p, c in PAIRS]
    batch = collate(seqs, tokenizer.pad_token_id)
    results = []
    for m in (model, NoLogitsToKeep(model)):
        model.zero_grad()
        logits, targets, rows = target_logits(m, batch)
        nll, _ = per_sequence_nll(logits, targets, rows, len(seqs))
        nll.mean().backward()
        results.append((nll.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    model.zero_grad()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


def test_collate_pads_to_the_longest_sequence_only():
    seqs = [TokenizedPair([1, 2, 3], [IGNORE_INDEX, 2, 3]), TokenizedPair([4, 5], [IGNORE_INDEX, 5])]
    batch = collate(seqs, pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_targets_that_fill_max_length_score_as_before(tiny_llama):
    """Without a BOS (the chat template adds none), a target that fills max_length leaves no prompt: such
    pairs, and empty targets, are scored alone, as the plain way does."""
    model, tokenizer = tiny_llama
    long_a, long_b = " one two three four five six seven eight nine", " nine eight seven six five four three two"
    pairs = [("Q?", long_a), ("Q?", long_b), ("Q?", ""), ("Q?", " "), ("Question?", " a b"), ("Question?", " c d")]
    for max_length in (6, 64):
        settings = ScoreSettings(max_length=max_length, template="chat")
        fast = score_pairs(model, tokenizer, pairs, settings)
        slow = score_pairs(model, tokenizer, pairs, settings, share_prompts=False)
        assert close(fast, slow)


def test_shared_prompts_near_the_position_limit(minilm):
    """A long prompt with short answers batched with a short prompt with long answers: the short answers'
    padding must not take positions past the model's limit (BERT's absolute position embeddings: 512)."""
    model, tokenizer = minilm
    long_prompt = "word " * 490
    answer = " ".join(f"w{i}" for i in range(150))
    pairs = [(long_prompt, " a b"), (long_prompt, " c d e"), ("Q?", " " + answer), ("Q?", " x " + answer)]
    fast = score_pairs(model, tokenizer, pairs, ScoreSettings(max_length=512))
    slow = score_pairs(model, tokenizer, pairs, ScoreSettings(max_length=512), share_prompts=False)
    assert close(fast, slow)
