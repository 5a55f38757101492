"""`icft` with every model forward taking at least PACE seconds: `python tests/_paced_icft.py PACE <icft args>`.

Tests that act while a subprocess is still busy (a request timed out mid-answer, a client that hangs up, a
trainer killed between checkpoints) race the machine's speed: a fast machine finished a 2000-token answer
inside a 3 s timeout. A floor under each forward's time makes "still busy" a fact of the test, not of the
machine: 2000 tokens take at least 2000 * PACE seconds however fast the CPU is. The numbers computed are
unchanged; only time passes.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import PreTrainedModel


def pace_forwards(seconds: float) -> None:
    """Each call of a Hugging Face model (the outer one and, for most, its inner backbone) sleeps first."""

    def paced_call(self, *args, **kwargs):
        time.sleep(seconds)
        return torch.nn.Module.__call__(self, *args, **kwargs)

    PreTrainedModel.__call__ = paced_call


def command(pace: float, *args: str) -> list[str]:
    """The command line that runs `icft *args` paced."""
    return [sys.executable, __file__, str(pace), *args]


if __name__ == "__main__":
    pace_forwards(float(sys.argv[1]))
    from icft.cli import main

    raise SystemExit(main(sys.argv[2:]))
