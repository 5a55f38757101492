"""The three ICFT loss terms: L_total = w_c * L_consistency + w_t * L_task + w_f * L_fine-tune.

All terms work on the flat per-target-token view that `icft.likelihood.target_logits` returns:
`logits` (n_tokens, vocab), `targets` (n_tokens,), `rows` (n_tokens,) = which sequence each token is in.

- L_task: the current batch. Supervised examples (text, qa, dialogue): cross-entropy on target tokens
  (prompt masked), averaged per example. Preference pairs: -log sigmoid(s(chosen) - s(rejected)), where
  s is the length-normalised (mean per token) log-probability of the answer given the prompt, as in
  SimPO (Meng et al. 2024); no value head, so the score is the same one evaluation uses.
- L_fine-tune: cross-entropy on the gold targets of examples replayed from memory (STM and LTM).
- L_consistency: KL(teacher || student) on replayed LTM examples' target tokens. The teacher is the
  model's own output distribution recorded when the example entered long-term memory, stored as its
  top-k tokens (full 30k-token distributions would not fit in memory). Both sides are compared on k + 1
  outcomes: the teacher's k tokens and one "rest of the vocabulary" bucket holding the remaining mass
  (1 - sum of the top-k probabilities). That is the KL between the two distributions coarsened to those
  k + 1 outcomes, so it is >= 0 and exactly 0, with zero gradient, where the student equals the stored
  distribution: it holds the model where it was. (Renormalising the top-k to 1 instead would leave a
  loss of -log(top-k mass) at the teacher, whose gradient sharpens the model onto the k tokens.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sequence_nll(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token NLL of each sequence's target tokens, and the count of those tokens."""
    token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
    total = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_nll)
    count = torch.zeros(n_rows, device=logits.device).index_add(0, rows, torch.ones_like(token_nll))
    return total / count.clamp(min=1), count


def preference_loss(chosen_nll: torch.Tensor, rejected_nll: torch.Tensor) -> torch.Tensor:
    """Pairwise loss per pair: -log sigmoid(s_chosen - s_rejected) with s = mean token log-prob."""
    return -F.logsigmoid(rejected_nll - chosen_nll)


def consistency_kl(
    student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor
) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher || p_student) on the teacher's top-k tokens plus a rest bucket.

    student_logits (n, vocab); teacher_ids (n, k) token ids; teacher_logprobs (n, k) the teacher's
    log-probabilities from its full softmax (not renormalised), so that its rest mass is recoverable.
    """
    if student_logits.numel() == 0:
        return student_logits.new_zeros(())
    teacher_logp = teacher_logprobs.float()
    student_all = student_logits.float().log_softmax(-1)
    student_logp = student_all.gather(-1, teacher_ids)
    # The rest bucket: log(1 - sum p) from the mass outside the top-k, computed without cancellation.
    outside = student_all.scatter(-1, teacher_ids, float("-inf"))
    student_rest = outside.logsumexp(-1)
    teacher_rest_mass = (1.0 - teacher_logp.exp().sum(-1)).clamp(min=0.0)
    teacher_rest = teacher_rest_mass.clamp(min=1e-30).log()
    top = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    rest = torch.where(teacher_rest_mass > 0, teacher_rest_mass * (teacher_rest - student_rest), 0.0)
    return (top + rest).mean()


def top_k_outputs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What long-term memory stores as the consistency target: top-k token ids and log-probs."""
    logp = logits.float().log_softmax(-1)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids, values


def weighted_total(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """L_total from the parts that are switched on (weight > 0)."""
    terms = [weights[name] * value for name, value in parts.items() if weights[name] > 0]
    return torch.stack(terms).sum() if terms else torch.zeros(())
