"""The labeller on real text, per language: AP per class, macro AP, and the hate-vs-benign-identity
proxy of the held-out functional goal, with 95% bootstrap intervals.

Real sets label only some classes per row (`LabelledTexts.mask`), so each class's AP is taken over
the rows that label it; macro AP is the mean over the toxic classes with a positive there. The
proxy uses the rows `voxtox.corpus.real` marks: `hate` (hate against a protected group) against
`benign_identity` (a non-violating text naming such a group): ROC AUC of 1 − p(no_violation), and
the share of each flagged (any violation class at the labeller's thresholds), as the functional
goal counts them (ROC AUC ≥ 0.85, benign flagged ≤ 20%, hate flagged ≥ 80%). One resample of a
language's rows serves every statistic of that language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from voxtox.corpus.real import BENIGN_IDENTITY, HATE
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.labeller_data import LabelledTexts
from voxtox.models.labeller_functional import weighted_auc, weighted_rate
from voxtox.models.metrics import MetricCI, average_precision, bootstrap_ap, bootstrap_counts, metric_ci

NO_VIOLATION = CLASSES.index("no_violation")
PROXY = ("auc", "benign_flagged", "hate_flagged")


@dataclass(frozen=True)
class LanguageResult:
    """One language: AP per class and `mAP`, the proxy statistics, and the row counts behind them."""

    lang: str
    n: int
    ap: dict[str, MetricCI]
    proxy: dict[str, MetricCI]
    counts: dict[str, int]


def flagged(probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """Whether any violation class reaches its threshold (0.5 where none is stored)."""
    vector = np.array([thresholds.get(c, 0.5) for c in CLASSES])
    decided = probs >= vector[None, :]
    return np.delete(decided, NO_VIOLATION, axis=1).any(axis=1)


def _ap_cells(y: np.ndarray, mask: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> dict[str, MetricCI]:
    """AP per class over the rows labelling it, and `mAP` over the toxic ones, each resample alike."""
    points, boots = {}, {}
    for c, name in enumerate(CLASSES):
        rows = np.flatnonzero(mask[:, c])
        if not y[rows, c].any():
            continue
        yc, pc = y[rows, c : c + 1], probs[rows, c : c + 1]
        points[name] = float(average_precision(yc, pc)[0])
        boots[name] = bootstrap_ap(yc, pc, counts[:, rows])[0][:, 0]
    cells = {name: metric_ci(points[name], boots[name]) for name in points}
    toxic = [name for name in points if name in TOXIC_CLASSES]
    if toxic:
        mean_boot = np.nanmean(np.stack([boots[t] for t in toxic]), axis=0)
        cells["mAP"] = metric_ci(float(np.mean([points[t] for t in toxic])), mean_boot)
    return cells


def _proxy_cells(kind: np.ndarray, probs: np.ndarray, flags: np.ndarray, counts: np.ndarray) -> dict[str, MetricCI]:
    hate, benign = np.flatnonzero(kind == HATE), np.flatnonzero(kind == BENIGN_IDENTITY)
    if not len(hate) or not len(benign):
        return {}
    rows = np.concatenate([hate, benign])
    score, positive = 1.0 - probs[rows, NO_VIOLATION], np.arange(len(rows)) < len(hate)
    auc = weighted_auc(score, positive, counts[:, rows])
    point_auc = weighted_auc(score, positive, np.ones((1, len(rows))))[0]
    ones = np.ones((1, len(kind)))
    return {
        "auc": metric_ci(float(point_auc), auc),
        "benign_flagged": metric_ci(float(weighted_rate(flags, benign, ones)[0]), weighted_rate(flags, benign, counts)),
        "hate_flagged": metric_ci(float(weighted_rate(flags, hate, ones)[0]), weighted_rate(flags, hate, counts)),
    }


def evaluate_real(
    data: LabelledTexts,
    probs: np.ndarray,
    thresholds: Mapping[str, float],
    n_resamples: int = 1000,
    seed: int = 0,
    lang_thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> list[LanguageResult]:
    """Per language (all its real sets together): AP per class and the proxy, with 95% CIs.
    A language in `lang_thresholds` is flagged at those (missing classes: `thresholds`)."""
    y, kind, langs = data.binary_targets(), np.asarray(data.kind), np.asarray(data.lang)
    flags = flagged(probs, thresholds)
    for lang, own in (lang_thresholds or {}).items():
        rows = langs == lang
        flags[rows] = flagged(probs[rows], {**thresholds, **own})
    results = []
    for lang in sorted(set(data.lang)):
        rows = np.flatnonzero(langs == lang)
        counts = bootstrap_counts(len(rows), n_resamples, seed)
        results.append(
            LanguageResult(
                lang,
                len(rows),
                _ap_cells(y[rows], data.mask[rows], probs[rows], counts),
                _proxy_cells(kind[rows], probs[rows], flags[rows], counts),
                {"hate": int((kind[rows] == HATE).sum()), "benign": int((kind[rows] == BENIGN_IDENTITY).sum())},
            )
        )
    return results


def _pct(ci: MetricCI | None, scale: float = 100.0, digits: int = 1) -> str:
    if ci is None:
        return "—"
    return f"{scale * ci.point:.{digits}f} [{scale * ci.low:.{digits}f}, {scale * ci.high:.{digits}f}]"


def real_markdown(results: list[LanguageResult]) -> str:
    """Two Markdown tables: AP per class per language, and the hate-vs-benign-identity proxy."""
    names = [*CLASSES, "mAP"]
    lines = [
        "**AP on real text** (%, 95% bootstrap CI; each class over the rows that label it)",
        "",
        "| lang | n | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    lines += [f"| {r.lang} | {r.n} | " + " | ".join(_pct(r.ap.get(c)) for c in names) + " |" for r in results]
    lines += [
        "",
        "**Hate vs benign talk about identity on real text** (95% bootstrap CI)",
        "",
        "| lang | benign n | hate n | ROC AUC | benign flagged % | hate flagged % |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in results:
        p = r.proxy
        lines.append(
            f"| {r.lang} | {r.counts['benign']} | {r.counts['hate']} | {_pct(p.get('auc'), 1.0, 2)} | "
            f"{_pct(p.get('benign_flagged'), digits=0)} | {_pct(p.get('hate_flagged'), digits=0)} |"
        )
    lines += ["", "Goals (held-out suite): ROC AUC ≥ 0.85, benign flagged ≤ 20%, hate flagged ≥ 80%, every language."]
    return "\n".join(lines) + "\n"
