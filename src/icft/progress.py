"""What a running training job shows: a progress bar or plain log lines, and the metrics log it writes."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from .io import write_jsonl

LOSS_PARTS = ("total", "task", "consistency", "finetune", "ewc", "kl_base")
SMOOTHING = 0.3  # weight of the latest step in the moving average of the step time (tqdm's default)
ESTIMATE_AFTER = 5  # steps (of this process's run, after a resume too) before the one speed and memory line


class ProgressDisplay:
    """A tqdm bar (stage, competence, loss parts, tokens/s, ETA) on a terminal; in a log file, one plain line
    per logged step with its ETA; nothing on other processes or with ICFT_QUIET=1.

    The ETA is the remaining steps times an exponential moving average of the step time, so one slow step (a
    stage end's consolidation and evaluation) moves it a little, not all the way. After ESTIMATE_AFTER steps
    one line says the seconds per step, the time left and the peak memory so far."""

    def __init__(self, total: int, initial: int, quiet: bool):
        from tqdm.auto import tqdm

        self.total, self.initial, self.quiet = total, initial, quiet
        self.tty = sys.stdout.isatty()
        self.last = time.perf_counter()
        self.step_s: float | None = None  # the moving average; None before the first step
        self.done = initial
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="icft train",
            unit="step",
            file=sys.stdout,
            disable=quiet or not self.tty,
            dynamic_ncols=True,
            mininterval=1.0,
            smoothing=SMOOTHING,
        )

    def step(self) -> None:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        self.step_s = took if self.step_s is None else SMOOTHING * took + (1 - SMOOTHING) * self.step_s
        self.done += 1
        self.bar.update(1)
        if self.done - self.initial == ESTIMATE_AFTER and not self.quiet:
            self.write(self.estimate())

    def eta_s(self) -> float:
        return (self.step_s or 0.0) * (self.total - self.done)

    def estimate(self) -> str:
        """One line: seconds per step, time left, and the process's peak memory so far (the GPU's too)."""
        rss_mb, gpu_mb = peak_memory_mb()
        gpu = f", {gpu_mb:,.0f} MiB on the GPU" if gpu_mb else ""
        left = self.total - self.done
        return (
            f"after {self.done - self.initial} steps: {self.step_s:.2f} s/step, about {_duration(self.eta_s())} "
            f"left for {left} steps; peak memory so far {rss_mb:,.0f} MiB (RSS){gpu}"
        )

    def status(self, step: int, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.bar.set_postfix_str(text)
            return
        print(f"step {step}/{self.total} {text} eta {self.eta_s():.0f}s", flush=True)

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


def status_text(stage: str, competence: float, record: dict) -> str:
    """A logged step on one line: stage, competence, the loss parts that are on, tokens per second."""
    own = ""
    if "loss_self_consistency" in record:  # the stage-0 group's parts, where it is on
        own = f"self_kl={record['loss_self_consistency']:.3f} self_ce={record['loss_self_ce']:.3f} "
    return (
        f"{stage} c={competence:.2f} task={record['loss_task']:.3f} cons={record['loss_consistency']:.3f} "
        f"ft={record['loss_finetune']:.3f} {own}{record['tokens_per_s']:.0f} tok/s"
    )


def peak_memory_mb() -> tuple[float, float]:
    """(peak resident memory of this process, peak GPU memory allocated by torch; 0 without CUDA), in MiB."""
    import torch

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return rss_mb, gpu_mb


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _read(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto]
