"""Fine-tune a Hugging Face backbone into a six-class multi-label toxicity labeller (BCE).

This is the plain trainer the labelling flow's tests and the quick-start use to make a real,
really trained labeller in seconds to minutes on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from voxtox.labels import CLASSES
from voxtox.models.labeller import LabelMap


def fine_tune_labeller(
    base_model: str,
    texts: list[str],
    targets: np.ndarray,
    out_dir: Path,
    *,
    epochs: int = 3,
    learning_rate: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """Train `base_model` on (texts, targets in [0, 1] of shape (n, 6)) and save a checkpoint.

    The output directory opens with `AutoModelForSequenceClassification.from_pretrained` and
    with `voxtox.models.labeller.TextLabeller`. Written to a temporary directory, then renamed.
    """
    if targets.shape != (len(texts), len(CLASSES)):
        raise ValueError(f"targets must have shape ({len(texts)}, {len(CLASSES)}), got {targets.shape}")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
        problem_type="multi_label_classification",
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    labels = torch.tensor(targets, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=generator)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            loss = binary_cross_entropy_with_logits(model(**batch).logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return save_checkpoint(model, tokenizer, LabelMap.identity(), out_dir)


def save_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, label_map: LabelMap, out_dir: Path
) -> Path:
    """Write an HF checkpoint plus the voxtox label map; readers never see a half-written one."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    label_map.save(staging)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir
