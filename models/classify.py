"""Audio-only inference (the point of the paper): audio in, toxicity out, no ASR, no text model.

The operations behind `voxtox classify` and the `classify` flow (flows/classify.py): both run
`classify_files`.

`classify_inputs` decodes each input (core/audio.py: any format to 16 kHz mono; a broken file
becomes a `rejected` record and the rest go on), keeps the VAD's speech segments when asked (the
CLI's default: the evaluation segments validation scores), cuts them into 15 s windows, scores them
with the trained classifier in batches shared across files (models/inference.py) and takes a
file's score per class as the maximum over its windows (paper §4.1). Decisions use per-class
thresholds from `thresholds.json` beside the model (tasks/calibrate.py: best F1 on the
validation split's evaluation segments), else 0.5.

The model is a run directory of `voxtox train` (its `best/`, else `final/`), a model directory
(`model.json` + `model.safetensors`), or an artefact of `voxtox export` (`.onnx`, run with
onnxruntime, or `.pt` TorchScript); symbolic links such as `runs/current` are followed.
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from voxtox.audio import SAMPLE_RATE, RejectedInput, discover_inputs, fetch_input
from voxtox.models.inference import AGGREGATIONS, WindowScorer, aggregate, window_bounds
from voxtox.models.trainer import load_classifier
from voxtox.settings import VadSettings
from voxtox.storage.schema import label_column, prob_column
from voxtox.storage.runs import THRESHOLDS_FILE, resolve_model_dir
from voxtox.chunk import STAGED_DTYPE, chunk_analysis, decode_and_stage

DEFAULT_THRESHOLD = 0.5
#: Windows decoded and scored together (bounds memory: 64 × 15 s of float32 audio ≈ 60 MB).
WINDOWS_PER_GROUP = 64
#: Shorter input is not speech a window can hold (Whisper's convolutions need a few frames).
MIN_DURATION_S = 0.1


# --- the model -------------------------------------------------------------------------------



@dataclass
class Thresholds:
    values: np.ndarray  # (classes,)
    source: str  # where they came from, in words

    @property
    def calibrated(self) -> bool:
        return not self.source.startswith("default")


def read_thresholds(path: Path, classes: list[str]) -> Thresholds:
    """Per-class thresholds from a thresholds.json (missing or NaN classes get 0.5)."""
    if not path.is_file():
        return Thresholds(np.full(len(classes), DEFAULT_THRESHOLD), f"default {DEFAULT_THRESHOLD} (no {path.name})")
    saved = json.loads(path.read_text())
    return thresholds_from_dict(saved, classes, str(path))


def thresholds_from_dict(saved: dict, classes: list[str], where: str) -> Thresholds:
    given = saved.get("thresholds", {})
    values = np.array([_finite_or_default(given.get(name)) for name in classes])
    return Thresholds(values, f"{where} ({saved.get('labels', '?')} labels, {saved.get('split', '?')} split)")


def _finite_or_default(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else DEFAULT_THRESHOLD


@dataclass
class LoadedModel:
    model: torch.nn.Module  # SpeechToxicityClassifier or ExportedClassifier (same scoring interface)
    classes: list[str]
    thresholds: Thresholds
    description: str


def load_model(spec: str | Path, threads: int | None = None, device: str = "cpu") -> LoadedModel:
    """A trained classifier from a run dir, model dir, .onnx or TorchScript .pt file. `device`
    places an .onnx file's session (onnxruntime's CUDA provider); a PyTorch model is loaded on
    the CPU and moved by whoever scores it (`WindowScorer(device=...)`)."""
    path = Path(spec).expanduser()
    if path.is_file():
        from voxtox.models.export import ExportedClassifier

        exported = ExportedClassifier(path.resolve(), threads=threads, device=device)
        classes = exported.classes
        saved = exported.metadata.get("thresholds")
        thresholds = (
            thresholds_from_dict(saved, classes, f"{path.name} metadata")
            if saved
            else Thresholds(np.full(len(classes), DEFAULT_THRESHOLD),
                            f"default {DEFAULT_THRESHOLD} (none in {path.name})")
        )
        return LoadedModel(exported, classes, thresholds, f"{path.resolve()} ({exported.format})")
    directory = resolve_model_dir(path)
    classes = json.loads((directory / "model.json").read_text())["classes"]
    thresholds = read_thresholds(directory / THRESHOLDS_FILE, classes)
    return LoadedModel(load_classifier(directory), classes, thresholds, str(directory))


# --- classifying files -----------------------------------------------------------------------


@dataclass
class FileResult:
    """One input: its windows' probabilities and the file's (max over windows), or why not."""

    file: str
    status: str  # "ok", "rejected" (could not be used) or "no_speech" (the VAD found none)
    reason: str | None = None
    detail: str | None = None
    duration_s: float | None = None
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start_s, end_s)
    window_probs: np.ndarray | None = None  # (windows, classes)
    probs: np.ndarray | None = None  # (classes,)

    def record(self, classes: list[str], thresholds: np.ndarray) -> dict[str, object]:
        """A JSON-able record: file-level probabilities, decisions, labels, and its windows."""
        record: dict[str, object] = {
            "file": self.file, "status": self.status, "reason": self.reason, "detail": self.detail,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "n_windows": len(self.windows),
        }
        if self.probs is None or self.window_probs is None:
            return record | {prob_column(c): None for c in classes} | {label_column(c): None for c in classes} | {
                "labels": None, "windows": []}
        decided = self.probs >= thresholds
        record |= {prob_column(c): float(p) for c, p in zip(classes, self.probs, strict=True)}
        record |= {label_column(c): bool(d) for c, d in zip(classes, decided, strict=True)}
        record["labels"] = [c for c, d in zip(classes, decided, strict=True) if d]
        record["windows"] = [
            {"window": i, "start_s": round(start, 3), "end_s": round(end, 3),
             **{prob_column(c): float(p) for c, p in zip(classes, row, strict=True)},
             **{label_column(c): bool(p >= t) for c, p, t in zip(classes, row, thresholds, strict=True)}}
            for i, ((start, end), row) in enumerate(zip(self.windows, self.window_probs, strict=True))
        ]
        return record


@dataclass(frozen=True)
class StagedRecording:
    """A recording decoded block by block into a scratch file (memory stays bounded whatever its
    length, as in `voxtox label`'s ingest), and the sample ranges of it to score."""

    uri: str
    staged: Path  # float32 16 kHz mono samples
    n_samples: int
    spans: list[tuple[int, int]]

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end), read from the scratch file (not mapped: mapped pages would stay
        resident, and count, until the file is gone)."""
        return np.fromfile(self.staged, dtype=STAGED_DTYPE, count=end - start, offset=start * STAGED_DTYPE.itemsize)


def stage_recording(uri: str, scratch: Path, vad: VadSettings | None, window_s: float) -> StagedRecording:
    """Decode `uri` into `scratch`; the spans to score are the whole recording
    (`whole_recording_spans`), or with `vad` the 1-60 s speech segments the labelling pipeline cuts
    (core/chunk.py), which is what validation scored (paper §4.1)."""
    path, _ = fetch_input(uri, scratch / "download")
    staged = scratch / f"{uuid.uuid4().hex}.f32"
    decoded = decode_and_stage(path, staged, vad or VadSettings())
    n_samples = staged.stat().st_size // STAGED_DTYPE.itemsize
    if vad is None:
        return StagedRecording(uri, staged, n_samples, whole_recording_spans(n_samples, window_s))
    spans = [(int(c.start_s * SAMPLE_RATE), min(n_samples, int(round(c.end_s * SAMPLE_RATE))))
             for c in chunk_analysis(decoded.analysis, vad).chunks]
    return StagedRecording(uri, staged, n_samples, spans)


def whole_recording_spans(n_samples: int, window_s: float) -> list[tuple[int, int]]:
    """The whole recording as spans of WINDOWS_PER_GROUP windows each (the last one longer), so
    that no more windows are in memory at once than for speech segments; the windows they tile
    are exactly those of the recording in one span (spans start at multiples of the window, and
    the last is at least a window long, so a short tail merges as it would)."""
    window = int(window_s * SAMPLE_RATE)
    step = WINDOWS_PER_GROUP * window
    cuts = [cut for cut in range(step, n_samples, step) if n_samples - cut >= window]
    starts = [0, *cuts]
    return list(zip(starts, [*cuts, n_samples], strict=True))


def classify_inputs(
    inputs: Iterable[str],
    model: torch.nn.Module,
    window_s: float = 15.0,
    aggregation: str = "max",
    batch_size: int = 8,
    vad: VadSettings | None = None,
) -> Iterator[FileResult]:
    """Results for every input file (directories, globs and manifests expanded), in order.

    Without `vad` the windows tile the whole file; with it, only its speech segments (a file
    where the VAD finds no speech gets status `no_speech` and no scores). Files are decoded one
    at a time, block by block into a scratch file; windows of several files are scored together,
    about `WINDOWS_PER_GROUP` at a time, so long recordings and large directories stream through
    with bounded memory."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {aggregation!r}")
    scorer = WindowScorer(model, window_s=window_s, stride_s=window_s, batch_size=batch_size)
    files = [path for spec in inputs for path in discover_inputs(spec)]
    with tempfile.TemporaryDirectory(prefix="voxtox-classify-") as scratch:
        pending: list[StagedRecording] = []
        pending_windows = 0
        for path in files:
            result: FileResult | None = None
            try:
                recording = stage_recording(path, Path(scratch), vad, window_s)
            except RejectedInput as rejected:
                result = FileResult(path, "rejected", rejected.reason, rejected.detail)
            else:
                if recording.n_samples < MIN_DURATION_S * SAMPLE_RATE:
                    result = FileResult(path, "rejected", "too_short", f"{recording.duration_s:.3f} s of audio")
                elif not recording.spans:
                    result = FileResult(path, "no_speech", "no_speech", "the VAD found no speech of 1 s or more",
                                        duration_s=recording.duration_s)
                if result is not None:
                    recording.staged.unlink()
            if result is not None:  # flush first, so results come out in input order
                yield from _score_group(scorer, pending, aggregation)
                pending, pending_windows = [], 0
                yield result
                continue
            pending.append(recording)
            pending_windows += sum(len(_windows(scorer, a, b)) for a, b in recording.spans)
            if pending_windows >= WINDOWS_PER_GROUP:
                yield from _score_group(scorer, pending, aggregation)
                pending, pending_windows = [], 0
        yield from _score_group(scorer, pending, aggregation)


def classify_files(
    inputs: Iterable[str],
    loaded: LoadedModel,
    vad: VadSettings | None,
    window_s: float = 15.0,
    aggregation: str = "max",
    batch_size: int = 8,
    out: Path | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[dict[str, object]]:
    """Classify `inputs` with `loaded` and return one record per file, written to `out` (.jsonl or
    .parquet) when given. `on_result` sees each result as it comes (the CLI prints rejects). The
    one path of `voxtox classify` and the `classify` flow."""
    records = []
    for result in classify_inputs(inputs, loaded.model, window_s, aggregation, batch_size, vad):
        if on_result is not None:
            on_result(result)
        records.append(result.record(loaded.classes, loaded.thresholds.values))
    if out is not None:
        write_records(records, out, loaded.classes,
                      {"model": loaded.description, "thresholds": loaded.thresholds.source, "vad": str(vad is not None)})
    return records


def _windows(scorer: WindowScorer, start: int, end: int) -> list[tuple[int, int]]:
    """The windows of span [start, end), in file samples."""
    return [(start + s, start + e) for s, e in window_bounds(end - start, scorer.window_s, scorer.stride_s)]


def _scores_in_groups(scorer: WindowScorer, recordings: list[StagedRecording]) -> Iterator[np.ndarray]:
    """Each span's window probabilities, in order, reading and scoring about WINDOWS_PER_GROUP
    windows at a time (one long recording is never in memory whole)."""
    group: list[np.ndarray] = []
    windows = 0
    for recording in recordings:
        for start, end in recording.spans:
            group.append(recording.read(start, end))
            windows += len(_windows(scorer, start, end))
            if windows >= WINDOWS_PER_GROUP:
                yield from scorer.score_many(group)
                group, windows = [], 0
    if group:
        yield from scorer.score_many(group)


def _score_group(scorer: WindowScorer, group: list[StagedRecording], aggregation: str) -> Iterator[FileResult]:
    scores = _scores_in_groups(scorer, group)
    for recording in group:
        bounds = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for a, b in recording.spans for s, e in _windows(scorer, a, b)]
        window_probs = np.concatenate([next(scores) for _ in recording.spans])
        recording.staged.unlink(missing_ok=True)
        yield FileResult(
            recording.uri, "ok", duration_s=recording.duration_s, windows=bounds, window_probs=window_probs,
            probs=aggregate(window_probs, aggregation),  # type: ignore[arg-type]
        )


def results_schema(classes: list[str]) -> pa.Schema:
    window = pa.struct(
        [("window", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64())]
        + [(prob_column(c), pa.float32()) for c in classes]
        + [(label_column(c), pa.bool_()) for c in classes]
    )
    return pa.schema(
        [("file", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
         ("duration_s", pa.float64()), ("n_windows", pa.int32())]
        + [(prob_column(c), pa.float32()) for c in classes]
        + [(label_column(c), pa.bool_()) for c in classes]
        + [("labels", pa.list_(pa.string())), ("windows", pa.list_(window))]
    )


def write_records(records: list[dict[str, object]], out: Path, classes: list[str], metadata: dict[str, str]) -> Path:
    """JSONL (one file per line, its windows nested) or Parquet (same columns), by suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        with out.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    elif suffix == ".parquet":
        schema = results_schema(classes).with_metadata({f"voxtox.{k}": v for k, v in metadata.items()})
        pq.write_table(pa.Table.from_pylist(records, schema=schema), out, compression="zstd")
    else:
        raise ValueError(f"--output must end in .jsonl or .parquet, not {out.name!r}")
    return out



# --- what a run did ---------------------------------------------------------------------------


def summarise(records: list[dict[str, object]], classes: list[str]) -> dict[str, object]:
    """Counts a person reads: files by status, audio scored, files decided per class."""
    ok = [r for r in records if r["status"] == "ok"]
    return {
        "files": len(records),
        "classified": len(ok),
        "no_speech": sum(r["status"] == "no_speech" for r in records),
        "rejected": sum(r["status"] == "rejected" for r in records),
        "audio_minutes": round(sum(float(r["duration_s"] or 0.0) for r in records) / 60, 2),
        "windows": sum(int(r["n_windows"]) for r in ok),  # type: ignore[call-overload]
        **{f"files_{c}": sum(bool(r[label_column(c)]) for r in ok) for c in classes},
    }
