"""What a running training job shows: a progress bar or plain log lines, and the metrics log it writes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .io import write_jsonl

LOSS_PARTS = ("total", "task", "consistency", "finetune", "ewc", "kl_base")


class ProgressDisplay:
    """A tqdm bar (stage, competence, loss parts, tokens/s, ETA) on a terminal; in a log file, one plain line
    per logged step with its ETA; nothing on other processes or with ICFT_QUIET=1."""

    def __init__(self, total: int, initial: int, quiet: bool):
        from tqdm.auto import tqdm

        self.total, self.initial, self.quiet = total, initial, quiet
        self.tty = sys.stdout.isatty()
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc="icft train", unit="step", file=sys.stdout,
                        disable=quiet or not self.tty, dynamic_ncols=True, mininterval=1.0)  # fmt: skip

    def step(self) -> None:
        self.bar.update(1)

    def status(self, step: int, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.bar.set_postfix_str(text)
            return
        eta = (time.perf_counter() - self.start) / max(1, step - self.initial) * (self.total - step)
        print(f"step {step}/{self.total} {text} eta {eta:.0f}s", flush=True)

    def write(self, text: str) -> None:
        if not self.quiet:
            self.bar.write(text) if self.tty else print(text, flush=True)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """Loss parts averaged over the steps since the last log line, written to metrics.jsonl each time."""

    def __init__(self, path: Path, resume_upto: int | None, write: bool):
        self.path, self.write_file = path, write
        self.records = _read(path, resume_upto) if resume_upto is not None else []
        self._reset()

    def _reset(self) -> None:
        self.window: dict[str, list[float]] = {k: [] for k in LOSS_PARTS}
        self.tokens, self.started = 0, time.perf_counter()

    def state_dict(self) -> dict:
        """The window since the last log line, for a checkpoint: a resumed run's next line averages the same
        steps as an uninterrupted run's."""
        return {"window": {k: list(v) for k, v in self.window.items()}, "tokens": self.tokens,
                "elapsed": time.perf_counter() - self.started}  # fmt: skip

    def load_state_dict(self, saved: dict) -> None:
        self.window = {k: list(saved["window"].get(k, [])) for k in LOSS_PARTS}
        self.window.update({k: list(v) for k, v in saved["window"].items() if k not in LOSS_PARTS})  # e.g. self_ce
        self.tokens, self.started = saved["tokens"], time.perf_counter() - saved["elapsed"]

    def add(self, parts: dict[str, float], tokens: int) -> None:
        for k, v in parts.items():
            self.window.setdefault(k, []).append(v)  # parts beyond LOSS_PARTS (the stage-0 memory's) where on
        self.tokens += tokens

    def flush(self, step: int, extra: dict, processes: int) -> dict:
        elapsed = time.perf_counter() - self.started
        record = {"step": step, "stage": extra.pop("stage"), "lr": extra.pop("lr"),
                  **{f"loss_{k}": _mean(v) for k, v in self.window.items()},
                  "tokens_per_s": self.tokens * processes / max(elapsed, 1e-9), **extra}  # fmt: skip
        self.records.append(record)
        if self.write_file:
            write_jsonl(self.path, self.records)
        self._reset()
        return record


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _read(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto]
