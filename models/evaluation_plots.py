"""PNG plots of an evaluation: per-class AP bars with CI whiskers per language, baseline vs
model(s), in the style of the paper's Figure 2; and a reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.metrics import apply_temperature
from voxtox.settings import EvaluateSettings
from voxtox.models.evaluation_report import Rows
from voxtox.models.scoring import EvalSet, System



def _value(row: dict | None, key: str) -> float:
    value = None if row is None else row[key]
    return np.nan if value is None else 100.0 * float(value)


def plot_ap_bars(table: pa.Table, path: Path) -> Path:
    """One panel per language (all first): per class and mAP, a bar per model at its AP, with
    whiskers spanning the 95% interval; ↑/↓ above a model whose paired difference to the
    baseline excludes 0 (better / worse)."""
    rows = Rows(table)
    models, classes, langs = rows.models, rows.classes, rows.langs
    n_columns = min(3, len(langs))
    n_rows = -(-len(langs) // n_columns)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(max(6.0, 1.1 * len(classes) * n_columns + 1), 4.2 * n_rows),
                                sharey=True, squeeze=False)
    for unused in axes.flat[len(langs):]:
        unused.set_visible(False)
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    for axis, lang in zip(axes.flat, langs):
        for k, model in enumerate(models):
            found = [rows.get("model", model, lang, "ap", c) for c in classes]
            point = np.array([_value(r, "point") for r in found])
            low, high = np.array([_value(r, "low") for r in found]), np.array([_value(r, "high") for r in found])
            offset = x + (k - (len(models) - 1) / 2) * width
            axis.bar(offset, np.nan_to_num(point), width, label=model, color=f"C{k}", edgecolor="black", linewidth=0.4)
            # whiskers from low to high: a percentile interval need not contain the point (AP is biased)
            axis.vlines(offset, low, high, color="black", linewidth=0.9)
            for end in (low, high):
                axis.scatter(offset, end, marker="_", color="black", s=30, linewidths=0.9)
            if k:
                for i, name in enumerate(classes):
                    difference = rows.get("difference", f"{model} − {models[0]}", lang, "ap_difference", name)
                    if difference and difference["excludes_zero"] and np.isfinite(high[i]):
                        mark = "↑" if difference["point"] > 0 else "↓"
                        axis.text(offset[i], high[i] + 1, mark, ha="center", fontsize=10)
        for i, name in enumerate(classes):
            found = [rows.get("model", m, lang, "ap", name) for m in models]
            if all(r is None or r["point"] is None for r in found):
                axis.text(x[i], 2, "n/a", ha="center", fontsize=8, color="grey")
        axis.set_xticks(x, classes, rotation=30, ha="right")
        axis.set_title(lang if lang != "all" else "all languages")
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("average precision (%) with 95% CI")
    # One legend above the panels: inside one, it covered bars once a grid had many cells.
    handles, labels = axes.flat[0].get_legend_handles_labels()
    per_row = min(len(models), 5)
    legend_inches = 0.3 * -(-len(models) // per_row)
    figure.legend(handles, labels, loc="upper center", ncol=per_row, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - legend_inches / figure.get_figheight()))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_reliability(eval_set: EvalSet, systems: Sequence[System], classes: Sequence[str],
                     options: EvaluateSettings, path: Path) -> Path:
    """Observed positive rate against mean predicted probability in equal-width bins, pooled over
    the toxic classes; after temperature scaling too when it was fitted."""
    columns = [CLASSES.index(c) for c in classes if c in TOXIC_CLASSES]
    truth = eval_set.truth[:, columns].ravel()
    edges = np.linspace(0.0, 1.0, options.ece_bins + 1)
    figure, axis = plt.subplots(figsize=(4.8, 4.6))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for k, system in enumerate(systems):
        variants = [("", system.scores[:, columns].ravel(), "-")]
        if system.temperature is not None:
            variants.append((f" (T = {system.temperature:.2f})",
                             apply_temperature(system.scores[:, columns], system.temperature).ravel(), "--"))
        for suffix, probs, style in variants:
            bins = np.minimum(np.digitize(probs, edges[1:-1]), options.ece_bins - 1)
            sizes = np.bincount(bins, minlength=options.ece_bins)
            filled = sizes > 0
            mean_p = np.bincount(bins, probs, options.ece_bins)[filled] / sizes[filled]
            rate = np.bincount(bins, truth.astype(float), options.ece_bins)[filled] / sizes[filled]
            axis.plot(mean_p, rate, style, marker="o", markersize=3, color=f"C{k}", label=system.name + suffix)
    axis.set_xlabel("predicted probability (toxic classes, pooled)")
    axis.set_ylabel("observed positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
