"""Score a labeller on voxtox's functional tests (`voxtox.corpus.functional`): does it tell hate
against a group from talk about identity, per language?

What is measured, per language (values with 95% bootstrap intervals):

- **ROC AUC** of the toxic score `1 − p(no_violation)`, hateful cases against benign ones;
- **benign flagged**: the share of benign cases (neutral or positive identity statements, negated
  hate, counter-speech) that the labeller's own thresholds flag with any violation class;
- **hateful flagged**: the same share for hateful cases (derogation, threats, slurs, respelt hate);
- a **pass rate per category**: benign and in-policy dating not flagged, hate flagged, abuse of
  one person decided `bullying` and not `racism`, non-hateful profanity `profanity` and not
  `racism`, out-of-policy dating `dating_sexting`;
- the **false-positive rate per identity group** on benign identity statements (neutral and
  positive), so a reader sees whom false flags would silence.

Cases of one template are near-copies, so the bootstrap resamples templates (with all their
cases), as ConfidenceIntervals' `conditions` do; two labellers are compared on the same
resamples (paired).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voxtox.corpus.functional import CATEGORIES, FunctionalCase
from voxtox.labels import CLASSES
from voxtox.models.metrics import MetricCI, bootstrap_counts, metric_ci

NO_VIOLATION = CLASSES.index("no_violation")
RACISM = CLASSES.index("racism")
#: Categories whose group FPR is reported: statements of identity, nothing about hate.
IDENTITY_STATEMENTS = ("identity_neutral", "identity_positive")
HEADLINE = ("auc", "benign_flagged", "hateful_flagged")


@dataclass(frozen=True)
class CaseOutcomes:
    """What a labeller did with each case: toxic score, flagged, and whether it passed."""

    score: np.ndarray
    flagged: np.ndarray
    passed: np.ndarray


def outcomes(cases: Sequence[FunctionalCase], probs: np.ndarray, decisions: np.ndarray) -> CaseOutcomes:
    """Per case: score 1 − p(no_violation), flagged = any violation class decided, and the
    category's pass rule (module docstring)."""
    violation = np.delete(decisions, NO_VIOLATION, axis=1)
    flagged = violation.any(axis=1)
    passed = np.array([_passes(c, d, f) for c, d, f in zip(cases, decisions, flagged, strict=True)])
    return CaseOutcomes(1.0 - probs[:, NO_VIOLATION], flagged, passed)


def _passes(case: FunctionalCase, decided: np.ndarray, flagged: bool) -> bool:
    if case.kind == "benign" or case.category == "dating_in_policy":
        return not flagged
    if case.kind == "hateful":
        return flagged
    expected = [CLASSES.index(c) for c in case.labels]
    return bool(decided[expected].all() and (RACISM in expected or not decided[RACISM]))


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count half) for each row of `weights` (R, n): how many times each case
    is drawn. NaN where a resample lacks positives or negatives."""
    values, bucket = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(values)))
    onehot[np.arange(len(scores)), bucket] = 1.0
    w = np.atleast_2d(weights).astype(np.float64)
    neg = (w * ~positive) @ onehot  # (R, U): negative weight at each score value
    pos = (w * positive) @ onehot
    below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def weighted_rate(values: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Share of `values` over `rows` for each row of `weights` (NaN where none is drawn)."""
    w = np.atleast_2d(weights)[:, rows].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values[rows].astype(np.float64)) / w.sum(axis=1)


Statistic = Callable[[CaseOutcomes, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Cell:
    """A statistic over a set of cases: the rows and how to compute it from weights."""

    name: str
    rows: np.ndarray
    statistic: Statistic


def language_cells(cases: Sequence[FunctionalCase], lang: str) -> list[Cell]:
    """Every statistic reported for one language (headline, categories, groups)."""
    in_lang = np.array([c.lang == lang for c in cases])
    kinds = np.array([c.kind for c in cases])
    benign = np.flatnonzero(in_lang & (kinds == "benign"))
    hateful = np.flatnonzero(in_lang & (kinds == "hateful"))
    both = np.concatenate([benign, hateful])
    is_hateful = kinds == "hateful"
    cells = [
        Cell("auc", both, lambda o, w: weighted_auc(o.score[both], is_hateful[both], w[:, both])),
        Cell("benign_flagged", benign, lambda o, w: weighted_rate(o.flagged, benign, w)),
        Cell("hateful_flagged", hateful, lambda o, w: weighted_rate(o.flagged, hateful, w)),
    ]
    for category in CATEGORIES:
        rows = np.flatnonzero(in_lang & np.array([c.category == category for c in cases]))
        if rows.size:
            cells.append(Cell(f"pass:{category}", rows, _rate_of("passed", rows)))
    for group in sorted({c.group for c in cases if c.group and c.lang == lang}):
        rows = np.flatnonzero(
            in_lang & np.array([c.group == group and c.category in IDENTITY_STATEMENTS for c in cases])
        )
        if rows.size:
            cells.append(Cell(f"group_fpr:{group}", rows, _rate_of("flagged", rows)))
    return cells


def _rate_of(field: str, rows: np.ndarray) -> Statistic:
    return lambda o, w: weighted_rate(getattr(o, field), rows, w)


@dataclass(frozen=True)
class FunctionalResult:
    """Per language: statistic name -> value with CI, and the cases each counts."""

    values: dict[str, dict[str, MetricCI]]
    sizes: dict[str, dict[str, int]]


def _resamples(cases: Sequence[FunctionalCase], n_resamples: int, seed: int) -> np.ndarray:
    return bootstrap_counts(len(cases), n_resamples, seed, groups=[c.template for c in cases])


def evaluate_functional(
    cases: Sequence[FunctionalCase], result: CaseOutcomes, n_resamples: int = 1000, seed: int = 0
) -> FunctionalResult:
    """Every language's statistics with percentile intervals over template resamples."""
    counts = _resamples(cases, n_resamples, seed)
    ones = np.ones((1, len(cases)))
    values: dict[str, dict[str, MetricCI]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for lang in sorted({c.lang for c in cases}):
        cells = language_cells(cases, lang)
        values[lang] = {
            cell.name: metric_ci(float(cell.statistic(result, ones)[0]), cell.statistic(result, counts))
            for cell in cells
        }
        sizes[lang] = {cell.name: int(cell.rows.size) for cell in cells}
    return FunctionalResult(values, sizes)


def compare_functional(
    cases: Sequence[FunctionalCase],
    before: CaseOutcomes,
    after: CaseOutcomes,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, MetricCI]]:
    """Per language, after − before for the headline statistics, paired on the resamples."""
    counts = _resamples(cases, n_resamples, seed)
    ones = np.ones((1, len(cases)))
    differences: dict[str, dict[str, MetricCI]] = {}
    for lang in sorted({c.lang for c in cases}):
        differences[lang] = {}
        for cell in language_cells(cases, lang):
            if cell.name in HEADLINE:
                point = cell.statistic(after, ones)[0] - cell.statistic(before, ones)[0]
                boot = cell.statistic(after, counts) - cell.statistic(before, counts)
                differences[lang][cell.name] = metric_ci(float(point), boot)
    return differences


# ------------------------------------------------------------------ Markdown


def _pct(ci: MetricCI | None, digits: int = 0) -> str:
    if ci is None:
        return "—"
    return f"{100 * ci.point:.{digits}f} [{100 * ci.low:.{digits}f}, {100 * ci.high:.{digits}f}]"


def _auc(ci: MetricCI) -> str:
    return f"{ci.point:.2f} [{ci.low:.2f}, {ci.high:.2f}]"


def functional_markdown(result: FunctionalResult, goals: bool = True) -> str:
    """Three tables: the headline per language, the pass rate per category × language, and
    the false-positive rate per identity group × language."""
    langs = list(result.values)
    lines = [
        "**Headline** (hateful vs benign; % of cases; 95% CIs resampling templates)",
        "",
        "| language | benign n | hateful n | ROC AUC | benign flagged % | hateful flagged % |",
        "|---|---:|---:|---|---|---|",
    ]
    for lang in langs:
        v, n = result.values[lang], result.sizes[lang]
        lines.append(
            f"| {lang} | {n['benign_flagged']} | {n['hateful_flagged']} | {_auc(v['auc'])} | "
            f"{_pct(v['benign_flagged'])} | {_pct(v['hateful_flagged'])} |"
        )
    if goals:
        lines += ["", "Goals: ROC AUC ≥ 0.85, benign flagged ≤ 20%, hateful flagged ≥ 80%, in every language."]
    lines += _grid(result, "pass:", "**Pass rate per category** (%, see `models/labeller_functional.py`)", "category")
    lines += _grid(
        result, "group_fpr:", "**False-positive rate per identity group** on neutral and positive "
        "identity statements (%)", "group"
    )
    return "\n".join(lines) + "\n"


def _grid(result: FunctionalResult, prefix: str, title: str, what: str) -> list[str]:
    langs = list(result.values)
    names = list(dict.fromkeys(k for v in result.values.values() for k in v if k.startswith(prefix)))
    lines = ["", title, "", f"| {what} | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for name in names:
        cells = [
            f"{_pct(result.values[lang].get(name))} (n={result.sizes[lang].get(name, 0)})" for lang in langs
        ]
        lines.append(f"| {name.removeprefix(prefix)} | " + " | ".join(cells) + " |")
    return lines


def comparison_functional_markdown(differences: dict[str, dict[str, MetricCI]], a: str, b: str) -> str:
    """One row per language: after − before per headline statistic, * where the CI excludes 0."""
    lines = [
        f"**{b} − {a}** (paired bootstrap 95% CI; AUC in points ×100, rates in points; * = excludes 0)",
        "",
        "| language | ROC AUC | benign flagged | hateful flagged |",
        "|---|---|---|---|",
    ]
    for lang, diff in differences.items():
        cells = [_pct(diff[s], 1) + ("*" if diff[s].excludes_zero else "") for s in HEADLINE]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
