"""How many slots of each micro-batch the long- and short-term memories fill.

`round(batch_size * share)` would replay nothing at micro-batch 1 or 2 with the default shares, which is
the usual set-up for large models (small micro-batches, gradient accumulation). Instead each memory keeps
the fractional remainder it could not place and adds it to the next step (error diffusion), so over any
run the replayed fraction equals the configured share, to within one example, at every batch size. The
remainders are part of the run state: a resumed run draws the same counts as an uninterrupted one.
"""

from __future__ import annotations

import math


class ReplaySchedule:
    """Per micro-batch: (n_ltm, n_stm) replay slots; the rest of the batch is new data."""

    def __init__(self, batch_size: int, ltm_share: float, stm_share: float):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if ltm_share < 0 or stm_share < 0 or ltm_share + stm_share >= 1:
            raise ValueError(f"replay shares must be >= 0 and leave room for new data: {ltm_share}, {stm_share}")
        self.batch_size, self.shares = batch_size, {"ltm": ltm_share, "stm": stm_share}
        self.carry = {"ltm": 0.0, "stm": 0.0}

    def counts(self, ltm_available: bool, stm_available: bool) -> tuple[int, int]:
        """Slots for this micro-batch. An empty memory takes none and saves up nothing (no burst later)."""
        available = {"ltm": ltm_available, "stm": stm_available}
        n = {}
        for name in ("ltm", "stm"):
            if not available[name]:
                n[name] = 0
                continue
            want = self.batch_size * self.shares[name] + self.carry[name]
            n[name] = math.floor(want + 1e-9)
            self.carry[name] = want - n[name]
        # Keep one slot for new data where the shares allow it on average; what does not fit is carried.
        expected = self.batch_size * (self.shares["ltm"] + self.shares["stm"])
        room = self.batch_size - 1 if expected <= self.batch_size - 1 else self.batch_size
        for name in ("stm", "ltm"):
            excess = n["ltm"] + n["stm"] - room
            if excess > 0:
                take = min(excess, n[name])
                n[name] -= take
                self.carry[name] += take
        return n["ltm"], n["stm"]

    def state_dict(self) -> dict:
        return {"carry": dict(self.carry)}

    def load_state_dict(self, state: dict) -> None:
        self.carry = {k: float(v) for k, v in state["carry"].items()}
