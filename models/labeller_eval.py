"""Evaluate a labeller on held-out labelled text: per-class AP and F1 with 95% bootstrap
intervals, for each group of rows (each language of the seed corpus, the Davidson tweets, ...),
and paired bootstrap differences between two labellers.

A group's rows are evaluated on the classes every one of its rows labels and that have a
positive there (so Davidson is never scored on `dating_sexting`/`other`). Soft targets count as
positive from 0.5 up. mAP is the mean AP over the evaluated toxic classes; AP and F1 intervals
come from the same bootstrap resamples (`models.metrics`, the ConfidenceIntervals method).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.labeller_data import LabelledTexts
from voxtox.models.metrics import (
    MAP_NAME,
    MetricCI,
    bootstrap_counts,
    evaluate_ap,
    metric_ci,
    paired_difference,
)


@dataclass(frozen=True)
class GroupResult:
    """One group's metrics: `ap` per evaluated class plus `mAP`, `f1` per evaluated class."""

    group: str
    n: int
    ap: dict[str, MetricCI]
    f1: dict[str, MetricCI]


def evaluation_groups(data: LabelledTexts) -> dict[str, np.ndarray]:
    """Row indices per source, and per language within a source that has several."""
    groups: dict[str, np.ndarray] = {}
    sources, langs = np.asarray(data.source), np.asarray(data.lang)
    for source in sorted(set(data.source)):
        in_source = sources == source
        source_langs = sorted(set(langs[in_source]))
        if len(source_langs) > 1:
            for lang in source_langs:
                groups[f"{source}/{lang}"] = np.flatnonzero(in_source & (langs == lang))
            groups[f"{source}/all"] = np.flatnonzero(in_source)
        else:
            groups[source] = np.flatnonzero(in_source)
    return groups


def evaluated_classes(data: LabelledTexts, rows: np.ndarray) -> list[str]:
    y = data.binary_targets()[rows]
    labelled = data.mask[rows].all(axis=0)
    return [c for i, c in enumerate(CLASSES) if labelled[i] and y[:, i].any()]


def bootstrap_f1(y: np.ndarray, predicted: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """F1 per class in every resample (R, C): the confusion counts are count-weighted sums."""
    tp = counts @ (y & predicted).astype(np.int64)
    wrong = counts @ (y ^ predicted).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * tp / (2.0 * tp + wrong)


def _group_result(
    name: str,
    y: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    classes: list[str],
    n_resamples: int,
    seed: int,
) -> GroupResult:
    toxic = [c for c in classes if c in TOXIC_CLASSES]
    ap = evaluate_ap(y, probs, classes, toxic or classes, n_resamples, seed)
    if not toxic:
        ap.pop(MAP_NAME)
    predicted = probs >= thresholds[None, :]
    counts = bootstrap_counts(len(y), n_resamples, seed)
    boot = bootstrap_f1(y, predicted, counts)
    point = bootstrap_f1(y, predicted, np.ones((1, len(y)), np.int64))[0]
    f1 = {c: metric_ci(point[k], boot[:, k]) for k, c in enumerate(classes)}
    return GroupResult(name, len(y), ap, f1)


def evaluate(
    data: LabelledTexts,
    probs: np.ndarray,
    thresholds: Mapping[str, float],
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[GroupResult]:
    """Per-group AP/F1 with bootstrap intervals; F1 at the labeller's own thresholds."""
    y_all = data.binary_targets()
    threshold_vector = np.array([thresholds.get(c, 0.5) for c in CLASSES])
    results = []
    for name, rows in evaluation_groups(data).items():
        classes = evaluated_classes(data, rows)
        if not classes:
            continue
        columns = [CLASSES.index(c) for c in classes]
        results.append(
            _group_result(
                name,
                y_all[np.ix_(rows, columns)],
                probs[np.ix_(rows, columns)],
                threshold_vector[columns],
                classes,
                n_resamples,
                seed,
            )
        )
    return results


def compare(
    data: LabelledTexts,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, MetricCI]]:
    """Per group, the paired bootstrap of AP(b) − AP(a) per class and for mAP."""
    y_all = data.binary_targets()
    differences = {}
    for name, rows in evaluation_groups(data).items():
        classes = evaluated_classes(data, rows)
        toxic = [c for c in classes if c in TOXIC_CLASSES]
        if not toxic:
            continue
        columns = [CLASSES.index(c) for c in classes]
        differences[name] = paired_difference(
            y_all[np.ix_(rows, columns)],
            probs_a[np.ix_(rows, columns)],
            probs_b[np.ix_(rows, columns)],
            classes,
            toxic,
            n_resamples,
            seed,
        )
    return differences


def _cell(ci: MetricCI | None) -> str:
    if ci is None:
        return "—"
    return f"{100 * ci.point:.1f} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def results_markdown(results: list[GroupResult]) -> str:
    """Two Markdown tables (AP, F1), one row per group, values in % with 95% intervals."""
    header = ["group", "n", *CLASSES]
    lines = []
    for title, column, extra in (("AP", "ap", [MAP_NAME]), ("F1 at the stored thresholds", "f1", [])):
        lines += [f"**{title}** (%, 95% bootstrap CI)", ""]
        lines.append("| " + " | ".join(header + extra) + " |")
        lines.append("|" + "---|" * (len(header) + len(extra)))
        for r in results:
            values = getattr(r, column)
            cells = [_cell(values.get(c)) for c in (*CLASSES, *extra)]
            lines.append("| " + " | ".join([r.group, str(r.n), *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def comparison_markdown(differences: dict[str, dict[str, MetricCI]], a: str, b: str) -> str:
    """One row per group: AP(b) − AP(a) per class and mAP, marked * where the CI excludes 0."""
    names = [*CLASSES, MAP_NAME]
    lines = [
        f"**AP({b}) − AP({a})** (points, paired bootstrap 95% CI; * = excludes 0)",
        "",
        "| group | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for group, diff in differences.items():
        cells = [
            _cell(diff.get(c)) + ("*" if c in diff and diff[c].excludes_zero else "") for c in names
        ]
        lines.append("| " + " | ".join([group, *cells]) + " |")
    return "\n".join(lines) + "\n"
