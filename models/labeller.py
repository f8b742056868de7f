"""The text toxicity labeller: any Hugging Face sequence classifier mapped onto voxtox's classes.

A labeller directory is a normal `AutoModelForSequenceClassification` checkpoint plus
`voxtox_labeller.json`:

    {"label_map": {"<checkpoint label>": ["<voxtox class>", ...], ...},
     "thresholds": {"<voxtox class>": 0.5, ...}}

The checkpoint's own labels are scored (sigmoid for multi-label checkpoints, softmax otherwise)
and each voxtox class takes the highest score among the labels mapped to it. A class nothing
maps to scores 0, except `no_violation`, which then scores 1 - max(toxic class scores).
Without the JSON file the checkpoint's labels must already be voxtox's class names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from voxtox.labels import CLASSES

LABELLER_CONFIG = "voxtox_labeller.json"
DEFAULT_THRESHOLD = 0.5
NO_VIOLATION = CLASSES.index("no_violation")


@dataclass
class LabelMap:
    label_map: dict[str, list[str]]
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def identity(cls) -> LabelMap:
        return cls({name: [name] for name in CLASSES})

    @classmethod
    def load(cls, checkpoint_dir: Path) -> LabelMap:
        path = checkpoint_dir / LABELLER_CONFIG
        if not path.exists():
            return cls.identity()
        raw = json.loads(path.read_text())
        label_map = {
            label: [targets] if isinstance(targets, str) else list(targets)
            for label, targets in raw.get("label_map", {}).items()
        }
        unknown = {t for targets in label_map.values() for t in targets} - set(CLASSES)
        if unknown:
            raise ValueError(f"{path}: label_map targets {sorted(unknown)} are not voxtox classes")
        return cls(label_map, {k: float(v) for k, v in raw.get("thresholds", {}).items()})

    def save(self, checkpoint_dir: Path) -> None:
        payload = {"label_map": self.label_map, "thresholds": self.thresholds}
        (checkpoint_dir / LABELLER_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")

    def threshold_vector(self) -> np.ndarray:
        return np.array([self.thresholds.get(c, DEFAULT_THRESHOLD) for c in CLASSES])


def clean_text(text: str | bytes) -> str:
    """Anything a transcript field may hold, as a str (bytes decoded leniently)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return " ".join(text.split())


class TextLabeller:
    """Scores texts with a checkpoint and maps its labels onto the six voxtox classes."""

    def __init__(self, checkpoint_dir: str, max_length: int = 128, threads: int = 2) -> None:
        self.name = checkpoint_dir
        self.max_length = max_length
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(checkpoint_dir).eval()
        local = Path(checkpoint_dir)
        self.label_map = LabelMap.load(local) if local.is_dir() else LabelMap.identity()
        self._projection = self._build_projection()

    def _build_projection(self) -> np.ndarray:
        """(n_checkpoint_labels, 6) 0/1 matrix: which checkpoint labels feed which class."""
        id2label = self.model.config.id2label
        projection = np.zeros((len(id2label), len(CLASSES)), dtype=bool)
        for index, label in id2label.items():
            for target in self.label_map.label_map.get(label, []):
                projection[int(index), CLASSES.index(target)] = True
        if not projection.any():
            raise ValueError(
                f"labeller {self.name}: none of its labels {sorted(id2label.values())} map to "
                f"voxtox classes; add {LABELLER_CONFIG} with a label_map"
            )
        return projection

    @property
    def multi_label(self) -> bool:
        return self.model.config.problem_type != "single_label_classification"

    @torch.inference_mode()
    def _checkpoint_scores(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        logits = self.model(**batch).logits.float()
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return scores.numpy()

    def predict_proba(self, texts: list[str | bytes], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 6) probabilities in CLASSES order. Empty text is no violation."""
        cleaned = [clean_text(t) for t in texts]
        probs = np.zeros((len(cleaned), len(CLASSES)), dtype=np.float32)
        probs[:, NO_VIOLATION] = 1.0
        non_empty = [i for i, t in enumerate(cleaned) if t]
        for start in range(0, len(non_empty), batch_size):
            rows = non_empty[start : start + batch_size]
            scores = self._checkpoint_scores([cleaned[i] for i in rows])
            probs[rows] = self._to_classes(scores)
        return probs

    def _to_classes(self, scores: np.ndarray) -> np.ndarray:
        masked = np.where(self._projection[None, :, :], scores[:, :, None], 0.0)
        probs = masked.max(axis=1)
        if not self._projection[:, NO_VIOLATION].any():
            probs[:, NO_VIOLATION] = 1.0 - np.delete(probs, NO_VIOLATION, axis=1).max(axis=1)
        return probs

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.label_map.threshold_vector()[None, :]
