"""Evaluate stage: score evaluation segments with trained classifiers and measure them as the
paper does (§4.1, ../shared/DESIGN.md §2).

- Data: the `clips` rows of a split with `segment_kind = 'evaluation'` (the VAD's 1-60 s
  segments), judged against their human labels (the catalog's `segment_truth` view). Without
  human labels evaluation refuses to run unless asked for the pipeline's own labels, and then
  every output says so (`labels = 'pipeline'`).
- Scores: each segment cut into 15 s windows with a 15 s stride (the last one shorter), each
  window scored by the classifier; the segment's score per class is the max over its windows
  (mean or noisy-OR for study). Window scores are cached per run directory, keyed by the model
  file and the segments, so comparing a model again or evaluating a grid never rescores it.
- Metrics: per-class AP and mAP over the four toxic classes with bootstrap percentile intervals;
  with several systems, one set of resamples (optionally of whole sources, i.e. sessions) serves
  all, so the differences to the first system (the baseline) are paired; per language as well.
  Resamples in which a class has no positive are counted (`n_invalid`) and left out of that
  class's interval. Also precision and recall at 1% false-positive rate and calibration (ECE,
  optionally after temperature scaling fitted on the validation split).
- Output: one long table (storage/schema.py EVALUATIONS_SCHEMA), written beside the results and
  into the `evaluations` shards that the catalog's view of the same name reads; a Markdown report;
  PNG plots (models/evaluation_plots.py).

The evaluation set, scoring and the score cache are models/scoring.py (training, calibration and
review selection use them too); the report and the plots are models/evaluation_report.py and
models/evaluation_plots.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.metrics import (
    MetricCI,
    ap_resamples,
    apply_temperature,
    bootstrap_counts,
    expected_calibration_error,
    fit_temperature,
    logits,
    precision_recall_at_fpr,
    summarise_resamples,
)
from voxtox.models.scoring import (
    ALL_LANGUAGES,
    EvalSet,
    System,
    read_eval_set,
    reported_classes,
    score_run,
    segment_scores,
)
from voxtox.storage.runs import EVALUATION_DIR, RunDir
from voxtox.settings import EvaluateSettings, Settings
from voxtox.storage import lake
from voxtox.storage.catalog import Catalog, LakeCatalog
from voxtox.storage.schema import EVALUATIONS_SCHEMA
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.models.evaluation_plots import plot_ap_bars, plot_reliability
from voxtox.models.evaluation_report import report_markdown

RESULTS_FILE = "evaluation.parquet"
REPORT_FILE = "report.md"
AP_PLOT = "ap.png"
RELIABILITY_PLOT = "reliability.png"


# --- measuring -------------------------------------------------------------------------------


@dataclass
class MetricRow:
    system: str
    run_dir: str
    kind: str  # "model" or "difference"
    lang: str
    metric: str
    class_name: str
    point: float
    low: float | None = None
    high: float | None = None
    n_valid: int | None = None
    n_invalid: int | None = None
    excludes_zero: bool | None = None
    n_segments: int = 0
    n_positive: int | None = None
    compared_to: str | None = None


def language_groups(langs: np.ndarray) -> dict[str, np.ndarray]:
    """All segments, then each language's when there are several."""
    groups = {ALL_LANGUAGES: np.arange(len(langs))}
    names = sorted(set(langs.tolist()))
    if len(names) > 1:
        groups |= {lang: np.flatnonzero(langs == lang) for lang in names}
    return groups


def _ci_row(system: System, lang: str, metric: str, name: str, ci: MetricCI, n: int, positives: int | None,
            compared_to: str | None = None) -> MetricRow:
    difference = compared_to is not None
    return MetricRow(
        system=f"{system.name} − {compared_to}" if difference else system.name, run_dir=system.run_dir,
        kind="difference" if difference else "model", lang=lang, metric=metric, class_name=name, point=ci.point,
        low=ci.low, high=ci.high, n_valid=ci.n_valid, n_invalid=ci.n_invalid,
        excludes_zero=ci.excludes_zero if difference else None, n_segments=n, n_positive=positives,
        compared_to=compared_to,
    )


def _point_rows(system: System, lang: str, y: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                options: EvaluateSettings) -> list[MetricRow]:
    """Operating points at `max_fpr` and calibration, per class (no intervals)."""
    rows = []
    n = len(y)
    positives = y.sum(axis=0)
    points = precision_recall_at_fpr(y, scores, options.max_fpr)
    ece = expected_calibration_error(y, scores, options.ece_bins)
    calibrated = None
    if system.temperature is not None:
        calibrated = expected_calibration_error(y, apply_temperature(scores, system.temperature), options.ece_bins)
    for c, name in enumerate(classes):
        values = {"precision_at_fpr": points[c].precision, "recall_at_fpr": points[c].recall,
                  "threshold_at_fpr": points[c].threshold, "ece": ece[c]}
        if calibrated is not None:
            values["ece_calibrated"] = calibrated[c]
        rows += [MetricRow(system.name, system.run_dir, "model", lang, metric, name, float(value),
                           n_segments=n, n_positive=int(positives[c])) for metric, value in values.items()]
    if system.temperature is not None:
        rows.append(MetricRow(system.name, system.run_dir, "model", lang, "temperature", ALL_LANGUAGES,
                              system.temperature, n_segments=n))
    return rows


def measure(eval_set: EvalSet, systems: Sequence[System], options: EvaluateSettings) -> list[MetricRow]:
    """All metrics of every system per language group; with several systems, the paired
    difference of each later one to the first (the baseline) on the same resamples."""
    classes = reported_classes(eval_set.labels)
    columns = [CLASSES.index(c) for c in classes]
    alpha = 1.0 - options.confidence
    rows: list[MetricRow] = []
    for lang, index in language_groups(eval_set.langs).items():
        y = eval_set.truth[np.ix_(index, columns)]
        groups = eval_set.sources[index] if options.resample_by == "source" else None
        counts = bootstrap_counts(len(index), options.n_resamples, options.seed, groups)
        positives = [*y.sum(axis=0).astype(int).tolist(), None]
        distributions = []
        for system in systems:
            scores = system.scores[np.ix_(index, columns)]
            point, boot = ap_resamples(y, scores, counts, classes, TOXIC_CLASSES)
            distributions.append((point, boot))
            cis = summarise_resamples(point, boot, classes, alpha)
            rows += [_ci_row(system, lang, "ap", name, ci, len(index), positives[k])
                     for k, (name, ci) in enumerate(cis.items())]
            rows += _point_rows(system, lang, y, scores, classes, options)
        base_point, base_boot = distributions[0]
        for system, (point, boot) in zip(systems[1:], distributions[1:], strict=True):
            cis = summarise_resamples(point - base_point, boot - base_boot, classes, alpha)
            rows += [_ci_row(system, lang, "ap_difference", name, ci, len(index), positives[k], systems[0].name)
                     for k, (name, ci) in enumerate(cis.items())]
    return rows


# --- the evaluation as a whole -----------------------------------------------------------------


@dataclass
class Evaluation:
    """What `evaluate_runs` produced: small, so it can be a task's result."""

    evaluation_id: str
    out_dir: str
    split: str
    labels: str
    systems: list[str]
    n_segments: int
    n_sources: int
    languages: list[str]
    results: str  # Parquet file of the metric rows
    report: str  # Markdown file
    plots: list[str] = field(default_factory=list)
    lake_snapshot: int | None = None  # the lake snapshot it read (None: the single-machine shards)


def run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short names for runs: the directory's name, made unique with its parent's if needed."""
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]
    if len(set(names)) < len(names):
        raise ValueError(f"the same run is given twice: {[str(p) for p in run_dirs]}")
    return names


def default_out_dir(run_dirs: Sequence[Path], split: str) -> Path:
    """`<run>/evaluation/<split>` for one run; `<last run>/evaluation/<split>-vs-<first run>`."""
    last = run_dirs[-1] / EVALUATION_DIR
    if len(run_dirs) == 1:
        return last / split
    return last / f"{split}-vs-{run_dirs[0].resolve().name}"


def evaluation_id(run_dirs: Sequence[Path], eval_set: EvalSet, options: EvaluateSettings) -> str:
    key = {"runs": [str(p.resolve()) for p in run_dirs], "segments": eval_set.fingerprint(), "split": eval_set.split,
           "labels": eval_set.labels, "options": options.model_dump(exclude={"batch_size"})}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def results_table(rows: Sequence[MetricRow], evaluation: str, eval_set: EvalSet, options: EvaluateSettings,
                  when: datetime) -> pa.Table:
    context = {"evaluation_id": evaluation, "evaluated_at": when, "split": eval_set.split, "labels": eval_set.labels,
               "aggregation": options.aggregation, "resample_by": options.resample_by,
               "n_resamples": options.n_resamples}
    records = []
    for row in rows:
        record = context | vars(row)
        for name in ("point", "low", "high"):  # NaN means undefined: store it as null
            value = record[name]
            record[name] = None if value is None or not np.isfinite(value) else float(value)
        records.append(record)
    return pa.Table.from_pylist(records, schema=EVALUATIONS_SCHEMA)


def save_to_catalog(table: pa.Table, settings: Settings, evaluation: str) -> None:
    """Replace this evaluation's rows in the lake's `evaluations` table (one commit keyed by the evaluation)."""
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        lake.replace_key(con, target, evaluation, {"evaluations": table})


def fit_temperatures(run_dirs: Sequence[Path], settings: Settings, classes: Sequence[str]) -> list[float]:
    """Per run, the temperature minimising the BCE of its validation segment scores."""
    options = settings.evaluate
    catalog = Catalog.from_settings(settings)
    val = read_eval_set(catalog, "val", options.labels, options.filter)
    columns = [CLASSES.index(c) for c in classes]
    temperatures = []
    for run_dir in run_dirs:
        scores = segment_scores(score_run(run_dir, val, options, settings.train.threads), options.aggregation)
        temperatures.append(fit_temperature(logits(scores[:, columns]), val.truth[:, columns]))
    return temperatures


def pin_evaluation_snapshot(settings: Settings, run_dirs: Sequence[Path | str], choice: str = "run") -> Settings:
    """`settings` reading the lake at the snapshot an evaluation reads, so every task of it sees
    the same segments: `[storage] snapshot` when set; else by `choice`: "run", the snapshot the
    runs recorded (the newest when they differ; the latest when none did), "latest", or a number.
    A snapshot the lake no longer has (expired by `voxtox forget`) is one line here. Without a
    lake, `settings` as they are."""
    catalog = Catalog.from_settings(settings)
    if not isinstance(catalog, LakeCatalog):
        if choice not in ("run", "latest"):
            raise ValueError(f"--snapshot {choice}: snapshots are a lake's; [storage] names no lake")
        return settings
    if settings.storage.snapshot is None:
        recorded = [s for s in (RunDir(Path(r)).lake_snapshot() for r in run_dirs) if s is not None]
        if choice == "run" and recorded:
            chosen = max(recorded)
        elif choice in ("run", "latest"):
            chosen = catalog.current_snapshot()
        elif choice.isdigit():
            chosen = int(choice)
        else:
            raise ValueError(f"--snapshot {choice!r}: give run (the runs' own), latest, or a snapshot number")
        catalog = catalog.pinned(chosen)  # a snapshot that is gone fails here
        settings = settings.model_copy(update={"storage": settings.storage.model_copy(update={"snapshot": chosen})})
    return settings


def evaluate_runs(run_dirs: Sequence[Path], settings: Settings, out_dir: Path | None = None) -> Evaluation:
    """Score and measure runs on the evaluation segments of `settings.evaluate.split`: the first
    run is the baseline of the paired differences. Writes `evaluation.parquet`, `report.md` and
    the plots to `out_dir`, and the rows to the catalog's `evaluations` table."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    options = settings.evaluate
    run_dirs = [Path(p) for p in run_dirs]
    names = run_names(run_dirs)
    for run_dir in run_dirs:
        RunDir(run_dir).model(options.checkpoint)
    catalog = Catalog.from_settings(settings)
    eval_set = read_eval_set(catalog, options.split, options.labels, options.filter)
    classes = reported_classes(eval_set.labels)
    temperatures: list[float | None] = [None] * len(run_dirs)
    if options.calibrate:
        temperatures = list(fit_temperatures(run_dirs, settings, classes))
    systems = []
    for name, run_dir, temperature in zip(names, run_dirs, temperatures, strict=True):
        windows = score_run(run_dir, eval_set, options, settings.train.threads)
        systems.append(System(name, str(run_dir), segment_scores(windows, options.aggregation), temperature))
    rows = measure(eval_set, systems, options)
    ident = evaluation_id(run_dirs, eval_set, options)
    table = results_table(rows, ident, eval_set, options, datetime.now(UTC))
    out = out_dir or default_out_dir(run_dirs, options.split)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, out / RESULTS_FILE)
    save_to_catalog(table, settings, ident)
    plots = [plot_ap_bars(table, out / AP_PLOT),
             plot_reliability(eval_set, systems, classes, options, out / RELIABILITY_PLOT)]
    (out / REPORT_FILE).write_text(report_markdown(table, eval_set, options))
    return Evaluation(
        evaluation_id=ident, out_dir=str(out), split=eval_set.split, labels=eval_set.labels, systems=names,
        n_segments=len(eval_set), n_sources=len(set(eval_set.sources.tolist())),
        languages=sorted(set(eval_set.langs.tolist())), results=str(out / RESULTS_FILE),
        report=str(out / REPORT_FILE), plots=[str(p) for p in plots], lake_snapshot=settings.storage.snapshot,
    )


@task(name="score-run")
def score_run_task(run_dir: str, settings: Settings) -> str:
    """Score one run's model on the evaluation segments (cached), so runs score in parallel."""
    options = settings.evaluate
    catalog = Catalog.from_settings(settings)
    eval_set = read_eval_set(catalog, options.split, options.labels, options.filter)
    score_run(Path(run_dir), eval_set, options, settings.train.threads)
    return str(RunDir(Path(run_dir)).scores(options.split, options.checkpoint))


@task(name="evaluate-runs")
def evaluate_task(run_dirs: list[str], settings: Settings, out_dir: str | None = None) -> Evaluation:
    return evaluate_runs([Path(p) for p in run_dirs], settings, Path(out_dir) if out_dir else None)
