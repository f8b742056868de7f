"""The quick-start labeller: MiniLM fine-tuned on part of voxtox's own seed corpus.

It is a real, really trained classifier, small enough to train in a minute or two on 2 CPU
cores, so the quick start works on a fresh machine. The measured, shipped default labeller is
the labeller issue's job (`voxtox labeller train`); this one only has to be honest about what
it is: an English backbone that has seen a few thousand multilingual lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxtox.corpus.seed import SeedSentence, family_split, generate_seed_corpus
from voxtox.labels import CLASSES
from voxtox.models.labeller import LabelMap, TextLabeller
from voxtox.models.labeller_training import fine_tune_labeller
from voxtox.models.metrics import best_f1_thresholds
from voxtox.storage.model_store import resolve_model

BACKBONE = "all-MiniLM-L6-v2"


def _texts_and_targets(sentences: list[SeedSentence]) -> tuple[list[str], np.ndarray]:
    targets = np.array([[float(c in s.labels) for c in CLASSES] for s in sentences], np.float32)
    return [s.text for s in sentences], targets


def bootstrap_parts(per_family: int, seed: int = 0) -> dict[str, list[SeedSentence]]:
    """The seed corpus split by family; the labeller sees only `labeller_*` parts.

    The speech-evaluation families stay unseen, so audio made from them tests the labeller on
    sentences it was not trained on.
    """
    return family_split(generate_seed_corpus(seed=seed, per_family=per_family), seed=seed)


def train_bootstrap_labeller(
    model_cache_dir: Path, out_dir: Path, per_family: int = 4, epochs: int = 3, seed: int = 0
) -> Path:
    """Fine-tune on `labeller_train`, then set per-class thresholds for best F1 on `labeller_val`."""
    parts = bootstrap_parts(per_family, seed)
    texts, targets = _texts_and_targets(parts["labeller_train"])
    checkpoint = fine_tune_labeller(
        resolve_model(BACKBONE, model_cache_dir),
        texts,
        targets,
        out_dir,
        epochs=epochs,
        learning_rate=2e-4,
        batch_size=32,
        max_length=32,
        seed=seed,
    )
    val_texts, val_targets = _texts_and_targets(parts["labeller_val"])
    labeller = TextLabeller(str(checkpoint))
    thresholds, _ = best_f1_thresholds(val_targets, labeller.predict_proba(val_texts))
    label_map = LabelMap.load(checkpoint)
    label_map.thresholds = {
        name: float(t) for name, t in zip(CLASSES, thresholds, strict=True) if np.isfinite(t)
    }
    label_map.save(checkpoint)
    return checkpoint
