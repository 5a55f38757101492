"""Consolidation by merging: WiSE-FT for a LoRA adapter (Wortsman et al. 2022), its scale chosen on validation.

Scaling every LoRA layer's scaling by alpha interpolates the weights between the untrained model (alpha 0)
and the trained one (alpha 1). `train.merge_alpha: auto` picks alpha from `train.merge_grid` after training by
the criterion `icft compare` tunes its tries on (compare.criterion: trade, `report.trade_figures`): the
medical validation answer-NLL drop against the untrained model plus the own-voice validation drop (the
untrained model's own answers to held-out general prompts), in the same unit, equal weights. Validation only:
no test item is ever seen here. The choice is saved as adapter/merge.json and applied wherever the run loads
(`icft.runs.load_run`), so `icft eval`, `export --merge`, `chat` and `serve` all answer with the merged scale.
`icft compare`'s WiSE-FT points (compare.wise_alphas) scale each run's adapter the same way (`set_lora_scale`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..models import set_lora_scale
from ..runs import MERGE_FILE, apply_saved_merge  # noqa: F401 (where the run's loaders find them)


def trades(measure: Callable[[float], tuple[float, float]], grid: list[float]) -> dict[float, dict[str, float]]:
    """{alpha: drops against alpha 0}: `measure(alpha)` gives (medical NLL, own-voice NLL) on validation."""
    medical0, voice0 = measure(0.0)
    out = {}
    for alpha in grid:
        medical, voice = measure(alpha)
        out[alpha] = {"medical_nll_drop": medical0 - medical, "own_voice_drop": voice0 - voice,
                      "trade": (medical0 - medical) + (voice0 - voice)}  # fmt: skip
    return out


def best_alpha(table: dict[float, dict[str, float]]) -> float:
    """The alpha of the best trade; on a tie the larger alpha (the more of training kept)."""
    return max(table, key=lambda a: (table[a]["trade"], a))


def choose_merge(model, fmt, medical: list, probe: list, grid: list[float]) -> dict:
    """merge.json's record: the alpha chosen on `medical` validation items and the own-voice `probe`, and
    every grid point's figures. The model's scale is 1 again afterwards."""
    from ..likelihood import ScoreSettings, answer_nll

    def mean_nll(examples: list) -> float:
        pairs = [(fmt.prompt(ex), str(ex.answer)) if ex.source == "self-memory" else fmt.pair(ex) for ex in examples]
        values = answer_nll(model, fmt.tokenizer, pairs, ScoreSettings.of(fmt))
        return sum(values) / max(1, len(values))

    def measure(alpha: float) -> tuple[float, float]:
        set_lora_scale(model, alpha)
        return mean_nll(medical), mean_nll(probe)

    try:
        table = trades(measure, grid)
    finally:
        set_lora_scale(model, 1.0)
    alpha = best_alpha(table)
    return {"alpha": alpha, "chosen_by": "validation: medical answer-NLL drop + own-voice drop",
            "n_medical": len(medical), "n_probe": len(probe), "grid": {str(a): v for a, v in table.items()}}
