"""What evaluation scores and compares: a split's evaluation segments with their truth
(`EvalSet`), their window scores cached per run directory, and one model's segment scores
(`System`). The evaluate stage (tasks/evaluate.py) measures them; the report and the plots
(models/evaluation_report.py, models/evaluation_plots.py) render them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch

from voxtox.audio import SAMPLE_RATE
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.inference import WindowScorer, aggregate
from voxtox.models.trainer import load_classifier
from voxtox.settings import EvaluateSettings
from voxtox.storage.catalog import Catalog
from voxtox.storage.clips import as_lake, read_audio_bytes, require_clips
from voxtox.storage.schema import HAS_AUDIO, human_label_column, label_column
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.storage.runs import RunDir

ALL_LANGUAGES = "all"
#: Evaluation segments are 1-60 s (../shared/DESIGN.md §2); a little slack for float rounding of spans.
SEGMENT_BOUNDS_S = (1.0 - 1e-3, 60.0 + 1e-3)
CLIPS_PER_SCORING_BATCH = 64  # segments decoded at once while scoring (bounds memory)


class NoHumanLabelsError(ValueError):
    """The split has evaluation segments but no human labels for them."""


# --- the evaluation set ----------------------------------------------------------------------


@dataclass
class EvalSet:
    """A split's evaluation segments, their truth, and where their audio is."""

    split: str
    labels: str  # "human" or "pipeline"
    clip_ids: list[str]
    sources: np.ndarray  # (n,) source content hash: the session, for grouped resampling
    langs: np.ndarray  # (n,)
    durations: np.ndarray  # (n,) seconds
    truth: np.ndarray  # (n, len(CLASSES)) bool
    files: list[str]
    rows: np.ndarray
    n_without_truth: int = 0  # evaluation segments of the split whose source has no human labels

    def __len__(self) -> int:
        return len(self.clip_ids)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.clip_ids).encode()).hexdigest()[:16]


def reported_classes(labels: str) -> tuple[str, ...]:
    """The toxic classes (the mAP's), then `no_violation`; `other` only when judged against the
    pipeline's labels (humans do not label it, ../shared/DESIGN.md §2)."""
    rest = [c for c in CLASSES if c not in TOXIC_CLASSES and (labels == "pipeline" or c != "other")]
    return (*TOXIC_CLASSES, *rest)


def _has_view(catalog: Catalog, name: str) -> bool:
    found = catalog.query(f"SELECT count(*) AS n FROM duckdb_views() WHERE view_name = '{name}'")
    return bool(found["n"][0].as_py())


def read_eval_set(
    catalog: Catalog, split: str, labels: str = "human", condition: str = "TRUE"
) -> EvalSet:
    """Evaluation segments of `split` (matching the SQL `condition` on `clips`) with their truth."""
    require_clips(as_lake(catalog))
    low, high = SEGMENT_BOUNDS_S
    segments = (
        f"SELECT * FROM clips WHERE split = '{split}' AND segment_kind = 'evaluation' "
        f"AND duration_s BETWEEN {low} AND {high} AND {HAS_AUDIO} AND ({condition})"
    )
    n_segments = catalog.query(f"SELECT count(*) AS n FROM ({segments})")["n"][0].as_py()
    if not n_segments:
        raise ValueError(f"no evaluation segments (segment_kind = 'evaluation', 1-60 s) in split {split!r} "
                         f"matching {condition!r}: label {split} audio with `voxtox label --split {split}`")
    if labels == "human":
        if not _has_view(catalog, "segment_truth"):
            raise NoHumanLabelsError(
                "no human labels in the catalog (table human_labels): import them (`voxtox synth` writes them "
                "for the synthetic corpus), or evaluate against the pipeline's own labels with --labels pipeline"
            )
        truth = ", ".join(f"t.{human_label_column(c)} AS truth_{c}" for c in CLASSES)
        chosen = (f"SELECT c.clip_id, c.source_sha256, c.lang, c.duration_s, {truth} "
                  f"FROM ({segments}) c JOIN segment_truth t USING (clip_id)")
    elif labels == "pipeline":
        truth = ", ".join(f"{label_column(c)} AS truth_{c}" for c in CLASSES)
        chosen = f"SELECT clip_id, source_sha256, lang, duration_s, {truth} FROM ({segments})"
    else:
        raise ValueError(f"labels must be 'human' or 'pipeline', not {labels!r}")
    table = as_lake(catalog).locate_clips(chosen)
    if not table.num_rows:
        raise NoHumanLabelsError(
            f"none of the {n_segments} evaluation segments of split {split!r} has human labels: import them, "
            f"or evaluate against the pipeline's own labels with --labels pipeline"
        )
    return EvalSet(
        split=split,
        labels=labels,
        clip_ids=table["clip_id"].to_pylist(),
        sources=np.asarray(table["source_sha256"].to_pylist(), dtype=object),
        langs=np.asarray([lang or "unknown" for lang in table["lang"].to_pylist()], dtype=object),
        durations=table["duration_s"].to_numpy(),
        truth=np.stack([table[f"truth_{c}"].to_numpy(zero_copy_only=False) for c in CLASSES], axis=1).astype(bool),
        files=table["filename"].to_pylist(),
        rows=table["file_row_number"].to_numpy(),
        n_without_truth=int(n_segments - table.num_rows),
    )


def read_segment_audio(file: str, row: int, clip_id: str) -> np.ndarray:
    return decode_clip_audio(read_audio_bytes(file, row, clip_id), f"{file} row {row}")


def decode_clip_audio(data: bytes, where: str) -> np.ndarray:
    """A clip's stored FLAC as 16 kHz mono float32 samples."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"{where}: expected 16 kHz mono audio, got {rate} Hz {samples.shape}")
    return samples


# --- scoring, cached per run directory ---------------------------------------------------------


def _scores_key(model: Path, eval_set: EvalSet, options: EvaluateSettings) -> dict[str, object]:
    weights = (model / "model.safetensors").stat()
    return {"model": str(model.resolve()), "model_size": weights.st_size, "model_mtime_ns": weights.st_mtime_ns,
            "segments": eval_set.fingerprint(), "window_s": options.window_s, "stride_s": options.stride_s}


def _read_cached(path: Path, key: dict[str, object]) -> list[np.ndarray] | None:
    if not path.exists():
        return None
    table = pq.read_table(path)
    if json.loads((table.schema.metadata or {}).get(b"voxtox.scores_key", b"{}")) != key:
        return None
    return [np.asarray(w, dtype=np.float32).reshape(-1, len(CLASSES)) for w in table["window_probs"].to_pylist()]


def score_run(
    run_dir: Path, eval_set: EvalSet, options: EvaluateSettings, threads: int | None = None
) -> list[np.ndarray]:
    """Per segment, its (windows, classes) probabilities under the run's model: from the cache
    when the same model scored the same segments with the same windows, else scored and cached."""
    model = RunDir(run_dir).model(options.checkpoint)
    key = _scores_key(model, eval_set, options)
    path = RunDir(run_dir).scores(eval_set.split, options.checkpoint)
    cached = _read_cached(path, key)
    if cached is not None:
        return cached
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorer = WindowScorer(load_classifier(model), options.window_s, options.stride_s, options.batch_size, device)
    windows: list[np.ndarray] = []
    for start in range(0, len(eval_set), CLIPS_PER_SCORING_BATCH):
        chosen = range(start, min(start + CLIPS_PER_SCORING_BATCH, len(eval_set)))
        windows += scorer.score_many([read_segment_audio(eval_set.files[i], int(eval_set.rows[i]), eval_set.clip_ids[i]) for i in chosen])
    table = pa.table({"clip_id": eval_set.clip_ids,
                      "window_probs": pa.array([w.tolist() for w in windows], pa.list_(pa.list_(pa.float32())))})
    table = table.replace_schema_metadata({b"voxtox.scores_key": json.dumps(key).encode()})
    write_parquet_atomic(table, path)
    return windows


def segment_scores(windows: list[np.ndarray], aggregation: str) -> np.ndarray:
    """(n, classes) segment scores from each segment's window probabilities."""
    return np.stack([aggregate(w.astype(np.float64), aggregation) for w in windows])  # type: ignore[arg-type]


@dataclass
class System:
    """One model's segment scores on the evaluation set (and its fitted temperature, if any)."""

    name: str
    run_dir: str
    scores: np.ndarray  # (n, len(CLASSES))
    temperature: float | None = None
