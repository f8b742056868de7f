"""A disk cache of frozen-encoder embeddings, so repeated labeller trainings embed each text once.

The frozen USE encoder is nearly all of a head training's cost (a few minutes for 100k texts on
two cores; a head epoch takes seconds). Entries are keyed by the encoder's name and a SHA-1 of the
exact text the encoder sees; each call that meets new texts appends one shard
(`<encoder>-<n>.npz`) per 4,096 new texts, written to a temporary name and renamed, so a crash
loses at most the shard in progress and leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from voxtox.models.text_encoder import TextEncoder


#: Texts encoded and written per shard.
SHARD_TEXTS = 4096


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings of `encoder` for texts, read from and added to `directory`."""

    def __init__(self, encoder: TextEncoder, directory: str | os.PathLike[str]) -> None:
        self.encoder, self.directory = encoder, Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.directory.glob(f"{encoder.name}-*.npz")):
            with np.load(shard) as data:
                self._vectors.update(zip((str(k) for k in data["keys"]), data["vectors"], strict=True))

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) embeddings; texts not cached yet are encoded and stored."""
        keys = [_key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self._vectors))
        for start in range(0, len(missing), SHARD_TEXTS):  # a shard at a time: a crash keeps the rest
            chunk = missing[start : start + SHARD_TEXTS]
            vectors = self.encoder.encode(chunk)
            new_keys = [_key(t) for t in chunk]
            self._vectors.update(zip(new_keys, vectors, strict=True))
            self._write_shard(new_keys, vectors)
        if not texts:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        n = len(list(self.directory.glob(f"{self.encoder.name}-*.npz")))
        target = self.directory / f"{self.encoder.name}-{n:05d}.npz"
        staging = target.with_name(f".{target.name}.partial.npz")
        np.savez(staging, keys=np.array(keys, dtype="U40"), vectors=np.asarray(vectors, np.float32))
        staging.rename(target)
