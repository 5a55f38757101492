"""ICFT's dual-stage memory: a short-term memory for the current stage, a long-term one for finished stages.

The short-term memory (STM, `short_term.py`) is a bounded buffer of the current curriculum stage's
examples with their latest per-token losses; hard (high-loss) ones are mixed back into training. At the
end of a stage the long-term memory (LTM, `long_term.py`) consolidates exemplars chosen from the STM
(`selection.py`: herding or k-centre on sentence embeddings from `embedder.py`), keeps the model's outputs
on them (top-k token log-probabilities) for the consistency loss, and serves as a knowledge store that
answers retrieve from. `replay.py` decides how many of each micro-batch's slots each memory fills.
"""

from .embedder import EMBEDDING_DIM, Embedder, example_text
from .items import MemoryItem
from .long_term import LongTermMemory
from .replay import ReplaySchedule
from .selection import SELECTIONS, herding, k_center
from .short_term import ShortTermMemory

__all__ = [
    "EMBEDDING_DIM", "Embedder", "LongTermMemory", "MemoryItem", "ReplaySchedule", "SELECTIONS",
    "ShortTermMemory", "example_text", "herding", "k_center",
]  # fmt: skip
