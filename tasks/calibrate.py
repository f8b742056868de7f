"""Per-class decision thresholds for the audio-only classifier: best F1 on the validation split's
evaluation segments, scored exactly as `voxtox classify` scores (models/classify.py), written to
`thresholds.json` beside the model, where classify and export find them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from prefect import task

from voxtox.labels import CLASSES
from voxtox.models.inference import WindowScorer, aggregate
from voxtox.models.metrics import best_f1_thresholds, f1_at_threshold
from voxtox.models.trainer import load_classifier
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog, CatalogError
from voxtox.storage.clips import ClipIndex, read_clip_index
from voxtox.storage.schema import human_label_column
from voxtox.storage.runs import THRESHOLDS_FILE, resolve_model_dir
from voxtox.models.classify import DEFAULT_THRESHOLD
from voxtox.models.scoring import read_segment_audio
from voxtox.tasks.evaluate import pin_evaluation_snapshot




def _val_labels(catalog: Catalog, split: str, clip_ids: list[str], fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Human labels (the `segment_truth` view) of the clips that have them, else the pipeline's
    label_* columns for all clips; returns (row mask, labels of those rows, which was used)."""
    columns = ", ".join(human_label_column(c) for c in CLASSES)
    try:
        truth = catalog.query(f"SELECT clip_id, {columns} FROM segment_truth WHERE split = '{split}'")
    except CatalogError:
        truth = None
    if truth is not None and truth.num_rows:
        by_clip = dict(zip(truth["clip_id"].to_pylist(),
                           np.stack([truth[human_label_column(c)].to_numpy(zero_copy_only=False) for c in CLASSES], 1),
                           strict=True))
        mask = np.array([clip in by_clip for clip in clip_ids])
        if mask.any():
            labels = np.stack([by_clip[clip] for clip, keep in zip(clip_ids, mask, strict=True) if keep])
            return mask, labels.astype(np.float32), "segment_truth"
    return np.ones(len(clip_ids), dtype=bool), fallback, "pipeline"


def score_val_clips(model: torch.nn.Module, files: list[str], rows: np.ndarray, clip_ids: list[str],
                    window_s: float, batch_size: int, aggregation: str = "max") -> np.ndarray:
    """(clips, classes) scores of clips stored in the shards, max over windows, as classify does."""
    scorer = WindowScorer(model, window_s=window_s, stride_s=window_s, batch_size=batch_size)
    scores = []
    for start in range(0, len(files), 32):
        clips = [read_segment_audio(file, int(row), clip)
                 for file, row, clip in zip(files[start : start + 32], rows[start : start + 32],
                                            clip_ids[start : start + 32], strict=True)]
        scores += [aggregate(p, aggregation) for p in scorer.score_many(clips)]  # type: ignore[arg-type]
    return np.stack(scores)


#: What `labels` in thresholds.json means, in words.
LABEL_SOURCES = {
    "segment_truth": "human labels: the segment_truth view (human_labels joined with clips)",
    "pipeline": "the labelling pipeline's label_* columns (no human labels)",
}


def calibrate_thresholds(
    model_spec: str | Path,
    settings: Settings,
    split: str = "val",
    condition: str | None = None,
    window_s: float | None = None,
    batch_size: int = 8,
    snapshot: str = "run",
) -> dict[str, object]:
    """Choose per-class thresholds (best F1) on `split`'s evaluation segments and write them to
    `thresholds.json` in the model directory; returns what was written.

    Segments: the split's `segment_kind = 'evaluation'` clips (1-60 s VAD segments), or all its
    clips if it has none. Labels: human labels from the `segment_truth` view for the clips of
    human-labelled sources, else the pipeline's label_* columns. A class with no positive gets
    0.5. Scores are computed exactly as `voxtox classify` computes them. On a lake, the segments
    are read at one snapshot: by default the one the run trained on (`snapshot`: run, latest or a
    number, as `voxtox evaluate --snapshot` takes it)."""
    started = time.time()
    directory = resolve_model_dir(model_spec)
    runs = [p for p in (Path(model_spec), directory.parent) if (p / "config.json").is_file()]
    settings = pin_evaluation_snapshot(settings, runs[:1], snapshot)
    model = load_classifier(directory)
    classes = json.loads((directory / "model.json").read_text())["classes"]
    if list(classes) != list(CLASSES):
        raise ValueError(f"{directory}: classes {classes} are not voxtox's {list(CLASSES)}")
    window_s = window_s or settings.train.eval_window_s
    condition = condition or settings.train.val_filter
    catalog = Catalog.from_settings(settings)
    catalog.refresh_views()
    clips, segments = _split_segments(catalog, settings, split, condition)
    mask, labels, source = _val_labels(catalog, split, clips.clip_ids, clips.labels)
    keep = np.flatnonzero(mask)
    scores = score_val_clips(model, [clips.files[i] for i in keep], clips.rows[keep],
                             [clips.clip_ids[i] for i in keep], window_s, batch_size)
    result = _best_f1_choice(classes, labels, scores) | {
        "labels": source, "labels_detail": LABEL_SOURCES[source], "split": split, "filter": condition,
        "segments": segments, "n_segments": int(len(keep)), "window_s": window_s, "aggregation": "max",
        "data_dir": str(settings.data_dir), "model_dir": str(directory), "lake_snapshot": settings.storage.snapshot,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
    }
    staging = directory / f".{THRESHOLDS_FILE}.tmp"
    staging.write_text(json.dumps(result, indent=2))
    staging.replace(directory / THRESHOLDS_FILE)
    return result


def _split_segments(catalog: Catalog, settings: Settings, split: str, condition: str) -> tuple[ClipIndex, str]:
    """The split's evaluation segments, or all its clips when it has none; and which it was."""
    try:
        condition_on_segments = f"segment_kind = 'evaluation' AND ({condition})"
        return read_clip_index(catalog, split, condition_on_segments), "evaluation"
    except ValueError:
        return read_clip_index(catalog, split, condition), "all (the split has no evaluation segments)"


def _best_f1_choice(classes: list[str], labels: np.ndarray, scores: np.ndarray) -> dict[str, object]:
    """Per class: the best-F1 threshold (0.5 for a class without positives), its F1, F1 at 0.5."""
    thresholds, f1 = best_f1_thresholds(labels, scores)
    f1_default = f1_at_threshold(labels, scores, np.full(len(classes), DEFAULT_THRESHOLD))
    chosen = np.where(np.isfinite(thresholds), thresholds, DEFAULT_THRESHOLD)

    def per_class(values: np.ndarray) -> dict[str, float | None]:
        return {c: None if not np.isfinite(v) else float(v) for c, v in zip(classes, values, strict=True)}

    return {
        "classes": list(classes),
        "thresholds": {c: float(t) for c, t in zip(classes, chosen, strict=True)},
        "f1": per_class(f1),
        "f1_at_0.5": per_class(f1_default),
        "positives": {c: int(n) for c, n in zip(classes, labels.sum(axis=0), strict=True)},
        "defaulted_to_0.5": [c for c, t in zip(classes, thresholds, strict=True) if not np.isfinite(t)],
        "criterion": "best F1 (predict score >= threshold)",
    }


@task(name="calibrate")
def calibrate_task(run: str, settings: Settings) -> dict[str, object]:
    """Per-class decision thresholds on validation, stored with the model for `voxtox classify`."""
    return calibrate_thresholds(run, settings)
