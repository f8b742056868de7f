"""Markdown tables from an evaluation's metric rows (storage/schema.py EVALUATIONS_SCHEMA).

Numbers are percentages with two decimals, as the paper prints them; an interval is the
bootstrap percentile interval; a difference is marked `*` when its paired interval excludes 0
(the only differences that count, ../shared/DESIGN.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pyarrow as pa

from voxtox.models.metrics import MAP_NAME
from voxtox.settings import EvaluateSettings
from voxtox.models.scoring import EvalSet


Row = dict[str, object]
SIGNIFICANT = "*"


def _number(value: object, scale: float = 100.0, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value) * scale:{'+' if signed else ''}.2f}"  # type: ignore[arg-type]


def format_ci(row: Row | None, signed: bool = False) -> str:
    """`58.15 [55.02, 61.30]`; for a difference `+3.41 [0.52, 6.10] *` when it excludes 0."""
    if row is None:
        return ""
    if row["point"] is None:
        return "n/a (a toxic class has no positive)" if row["class_name"] == MAP_NAME else "n/a (no positive)"
    point, low, high = (_number(row[k], signed=signed) for k in ("point", "low", "high"))
    text = f"{point} [{low}, {high}]"
    return text + (f" {SIGNIFICANT}" if row.get("excludes_zero") else "")


def markdown_table(header: Sequence[str], body: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


class Rows:
    """Index of an evaluation's rows by (kind, system, lang, metric, class)."""

    def __init__(self, table: pa.Table) -> None:
        self.rows: list[Row] = table.to_pylist()
        self.index = {(r["kind"], r["system"], r["lang"], r["metric"], r["class_name"]): r for r in self.rows}

    def get(self, kind: str, system: str, lang: str, metric: str, name: str) -> Row | None:
        return self.index.get((kind, system, lang, metric, name))

    def unique(self, key: str, **where: object) -> list[object]:
        seen: dict[object, None] = {}
        for row in self.rows:
            if all(row[k] == v for k, v in where.items()):
                seen.setdefault(row[key], None)
        return list(seen)

    @property
    def models(self) -> list[str]:
        return [str(s) for s in self.unique("system", kind="model")]

    @property
    def differences(self) -> list[str]:
        return [str(s) for s in self.unique("system", kind="difference")]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.unique("class_name", metric="ap")]

    @property
    def langs(self) -> list[str]:
        return [str(c) for c in self.unique("lang", metric="ap")]


def _ap_cells(rows: Rows, lang: str, name: str) -> list[str]:
    """Each model's AP of class `name` (or mAP) in `lang`, then each difference to the baseline."""
    return [*(format_ci(rows.get("model", m, lang, "ap", name)) for m in rows.models),
            *(format_ci(rows.get("difference", d, lang, "ap_difference", name), signed=True) for d in rows.differences)]


def ap_table(rows: Rows, lang: str) -> str:
    """Per class (and mAP): positives, each model's AP, each difference to the baseline."""
    header = ["class", "positives", *rows.models, *(f"Δ {d}" for d in rows.differences)]
    body = []
    for name in rows.classes:
        first = rows.get("model", rows.models[0], lang, "ap", name)
        positives = "" if first is None or first["n_positive"] is None else first["n_positive"]
        label = f"**{name}**" if name == MAP_NAME else name
        body.append([label, positives, *_ap_cells(rows, lang, name)])
    return markdown_table(header, body)


def language_table(rows: Rows) -> str:
    """mAP per language: each model, each difference to the baseline."""
    header = ["language", "segments", *rows.models, *(f"Δ {d}" for d in rows.differences)]
    body = []
    for lang in rows.langs:
        first = rows.get("model", rows.models[0], lang, "ap", MAP_NAME)
        body.append([lang, "" if first is None else first["n_segments"], *_ap_cells(rows, lang, MAP_NAME)])
    return markdown_table(header, body)


def operating_point_table(rows: Rows, lang: str, max_fpr: float) -> str:
    at = f"{max_fpr:.0%} FPR"
    header = ["class", *(f"{m}: P / R at {at}" for m in rows.models)]
    body = []
    for name in rows.classes:
        if name == MAP_NAME:
            continue
        cells = []
        for model in rows.models:
            precision = rows.get("model", model, lang, "precision_at_fpr", name)
            recall = rows.get("model", model, lang, "recall_at_fpr", name)
            cells.append(f"{_number(precision and precision['point'])} / {_number(recall and recall['point'])}")
        body.append([name, *cells])
    return markdown_table(header, body)


def calibration_table(rows: Rows, lang: str) -> str:
    calibrated = any(r["metric"] == "ece_calibrated" for r in rows.rows)
    header = ["class", *(f"{m}: ECE{' → after T' if calibrated else ''}" for m in rows.models)]
    body = []
    for name in rows.classes:
        if name == MAP_NAME:
            continue
        cells = []
        for model in rows.models:
            ece = rows.get("model", model, lang, "ece", name)
            text = _number(ece and ece["point"])
            if calibrated:
                after = rows.get("model", model, lang, "ece_calibrated", name)
                text += f" → {_number(after and after['point'])}"
            cells.append(text)
        body.append([name, *cells])
    table = markdown_table(header, body)
    if calibrated:
        temps = [f"{m}: T = {rows.get('model', m, lang, 'temperature', 'all')['point']:.3f}"  # type: ignore[index]
                 for m in rows.models if rows.get("model", m, lang, "temperature", "all")]
        table += "\nTemperatures fitted on the val split: " + ", ".join(temps) + "\n"
    return table


def invalid_resample_notes(rows: Rows) -> list[str]:
    """Where resamples lacked a positive: that depends only on the truth and the resamples, which
    every system shares, so the first model's rows say it for all."""
    notes = []
    for row in rows.rows:
        if row["metric"] == "ap" and row["system"] == rows.models[0] and row["n_invalid"]:
            total = (row["n_valid"] or 0) + row["n_invalid"]
            what = "a toxic class had" if row["class_name"] == MAP_NAME else "the class had"
            if row["n_valid"] == 0:
                notes.append(f"- {row['lang']}, {row['class_name']}: undefined, {what} no positive at all")
            else:
                notes.append(f"- {row['lang']}, {row['class_name']}: in {row['n_invalid']} of {total} resamples {what} "
                             f"no positive; the interval is over the other {row['n_valid']}")
    return notes


def report_markdown(table: pa.Table, eval_set: EvalSet, options: EvaluateSettings) -> str:
    """The whole report of one evaluation."""
    rows = Rows(table)
    labels = eval_set.labels
    n_sources = len(set(eval_set.sources.tolist()))
    lines = [f"# Evaluation on `{eval_set.split}`", ""]
    if labels == "pipeline":
        lines += [("> **Judged against the pipeline's own labels, not human labels.** These numbers measure "
                   "agreement with the automatic labeller, not toxicity as people judge it."), ""]
    skipped = eval_set.n_without_truth
    lines += [
        f"- segments: {len(eval_set)} evaluation segments (1-60 s) from {n_sources} sources"
        + (f"; {skipped} more without human labels were left out" if skipped else ""),
        f"- truth: {labels} labels; models: the `{options.checkpoint}/` checkpoint of each run",
        f"- scores: {options.window_s:g} s windows, {options.stride_s:g} s stride, {options.aggregation} over windows",
        (f"- intervals: {options.confidence:.0%} bootstrap percentile, {options.n_resamples} resamples of "
         f"{'sources (sessions) with all their segments' if options.resample_by == 'source' else 'segments'}, "
         f"seed {options.seed}; differences are paired (same resamples) and marked {SIGNIFICANT} when the "
         "interval excludes 0"),
        f"- mAP: mean AP over {', '.join(c for c in rows.classes[:4])}",
        "",
        "## AP per class (%)",
        "",
        ap_table(rows, "all"),
    ]
    if len(rows.langs) > 1:
        lines += ["## mAP per language (%)", "", language_table(rows)]
        for lang in rows.langs[1:]:
            lines += [f"### {lang}: AP per class (%)", "", ap_table(rows, lang)]
    lines += [f"## Precision and recall at {options.max_fpr:.0%} false-positive rate (%)", "",
              operating_point_table(rows, "all", options.max_fpr),
              "## Calibration (expected calibration error, %)", "", calibration_table(rows, "all")]
    notes = invalid_resample_notes(rows)
    if notes:
        lines += ["## Resamples without a positive", "", *notes, ""]
    return "\n".join(lines)
