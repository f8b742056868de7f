"""Evaluation metrics (../shared/DESIGN.md §2): per-class average precision with bootstrap confidence
intervals, paired system comparison, and the small calibration / operating-point helpers.

Pure numpy (plus scipy for the 1-D temperature search). Every function takes 2-D arrays of
shape (n_samples, n_classes): ``y_true`` in {0, 1}, scores or probabilities as floats.

Bootstrap resamples are held as a *count matrix*: ``counts[r, i]`` is how many times sample ``i``
appears in resample ``r``. Two reasons instead of an (n_resamples, n) index array:

* resampling whole groups (sessions, speakers) gives resamples whose length varies, which a
  fixed-shape index array cannot hold, while a count matrix always has shape (n_resamples, n);
* average precision depends only on how many times each sample is drawn, so one sort per class
  serves every resample: each resample then costs O(n) (one sparse product) instead of
  O(n log n) for sorting it.

The resamples themselves are drawn exactly as the ConfidenceIntervals library of Ferrer & Riera
(``get_bootstrap_indices``) draws them, so with ``seed=0`` the intervals equal that library's
(which loops over resamples calling scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from scipy.optimize import minimize_scalar

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

MAP_NAME = "mAP"
# Elements of one working block in `bootstrap_ap` (resamples x max(samples, segment columns));
# with the count matrix itself, this bounds its peak memory.
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class MetricCI:
    """A metric on the full set with its bootstrap percentile interval.

    ``n_invalid`` counts the resamples on which the metric is undefined (a class with no
    positive in that resample); the interval is computed over the ``n_valid`` others, and
    ``low``/``high`` are NaN only when no resample is valid.
    """

    point: float
    low: float
    high: float
    n_valid: int
    n_invalid: int

    @property
    def excludes_zero(self) -> bool:
        """For a difference between two systems: whether the interval lies strictly on one
        side of 0, i.e. the difference counts (../shared/DESIGN.md §2)."""
        return bool(self.low > 0.0 or self.high < 0.0)


@dataclass(frozen=True)
class OperatingPoint:
    """Predicting positive when ``score >= threshold``. A threshold of +inf predicts nothing
    (precision NaN); all fields are NaN when the class lacks positives or negatives."""

    threshold: float
    precision: float
    recall: float
    fpr: float


def _check_labels(y_true: ArrayLike) -> BoolArray:
    y = np.asarray(y_true)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"y_true must be 2-D (n_samples > 0, n_classes), got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y.astype(bool)


def _check_inputs(y_true: ArrayLike, scores: ArrayLike) -> tuple[BoolArray, FloatArray]:
    y = _check_labels(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} differs from y_true shape {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _sort_desc(scores: FloatArray) -> tuple[IntArray, IntArray]:
    """Order of one class's samples by decreasing score, and the positions (in that order) of
    the last sample of each run of equal scores: one point per distinct threshold, as
    scikit-learn's precision-recall curve."""
    order = np.argsort(-scores, kind="stable")
    last = np.flatnonzero(np.diff(scores[order]))
    return order, np.append(last, scores.size - 1)


def _curve(y: BoolArray, scores: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Distinct thresholds (decreasing) with the true and false positives of ``score >= t``."""
    order, last = _sort_desc(scores)
    tp = np.cumsum(y[order], dtype=np.float64)[last]
    fp = (last + 1) - tp
    return scores[order][last], tp, fp


def _step_ap(tp: FloatArray, predicted: FloatArray) -> FloatArray:
    """AP = Σ_t (R_t − R_{t−1}) · P_t over distinct thresholds (last axis, decreasing), the
    un-interpolated step integral of scikit-learn. NaN where there is no positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = tp / tp[..., -1:]
    return np.sum(np.diff(recall, axis=-1, prepend=0.0) * precision, axis=-1)


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> FloatArray:
    """Per-class average precision, as scikit-learn's ``average_precision_score(average=None)``
    (ties share one threshold). A class with no positive gives NaN (scikit-learn would warn and
    return 0); the caller decides what that means."""
    y, s = _check_inputs(y_true, scores)
    ap = np.empty(y.shape[1])
    for c in range(y.shape[1]):
        _, tp, fp = _curve(y[:, c], s[:, c])
        ap[c] = _step_ap(tp, tp + fp)
    return ap


def bootstrap_counts(
    n: int,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> NDArray[np.int32]:
    """Bootstrap resamples as counts: ``counts[r, i]`` = copies of sample ``i`` in resample ``r``.

    Without ``groups``, each resample draws ``n`` samples with replacement. With ``groups`` (a
    session or speaker id per sample), each resample draws as many groups as there are, with
    replacement, and takes every sample of each drawn group as it is (a group drawn k times
    contributes each of its samples k times): a standard one-level cluster bootstrap.

    This is not what ConfidenceIntervals' ``conditions`` do: that library resamples at two
    levels, drawing conditions and then, within each drawn condition, its segments again with
    replacement. voxtox draws whole sessions only, because the sessions are the independent
    units: the spread of the segments within a session already travels with the session, and
    resampling them a second time counts that spread twice, widening the interval beyond the
    sampling variation it estimates (Davison & Hinkley 1997, §3.8). On a test set of 400
    segments in 40 sessions the two-level interval was [0.245, 0.802] where this one's was
    [0.325, 0.681].

    Resample ``r`` uses ``np.random.RandomState(seed + r)`` the way that library does (via
    ``sklearn.utils.resample(random_state=r)``), so ``seed=0`` reproduces its draws of samples
    (without ``groups``) and of groups.
    """
    if n < 1 or n_resamples < 1:
        raise ValueError("n and n_resamples must be positive")
    if groups is None:
        member_of = np.arange(n)
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {g.shape}")
        member_of = np.unique(g, return_inverse=True)[1].reshape(n)
    n_groups = int(member_of.max()) + 1
    counts = np.empty((n_resamples, n), dtype=np.int32)
    for r in range(n_resamples):
        drawn = np.random.RandomState(seed + r).randint(0, n_groups, size=n_groups)
        counts[r] = np.bincount(drawn, minlength=n_groups)[member_of]
    return counts


def _segment_matrix(y: BoolArray, scores: FloatArray) -> tuple[sparse.csr_array, IntArray]:
    """Sparse 0/1 matrix turning a row of counts into what AP needs, for all classes at once.

    Only thresholds whose run of equal scores holds a positive change the recall, so only
    those K_c "positive runs" of class c enter AP. Sorted by decreasing score, the samples of
    class c fall into segments, each ending at a positive run; per class the matrix has K_c
    columns summing counts over each segment (cumulated: samples predicted positive) and K_c
    columns summing them over the positives of each segment (cumulated: true positives).
    Returns the matrix (n_samples × 2·ΣK_c) and K_c per class.
    """
    n, n_classes = y.shape
    samples: list[IntArray] = []
    columns: list[IntArray] = []
    n_runs = np.zeros(n_classes, dtype=np.int64)
    offset = 0
    for c in range(n_classes):
        order, last = _sort_desc(scores[:, c])
        run_of = np.repeat(np.arange(last.size), np.diff(last, prepend=-1))
        positive = y[order, c]
        positive_runs = np.unique(run_of[positive])
        segment = np.searchsorted(positive_runs, run_of)  # after the last positive run: K_c
        k = n_runs[c] = positive_runs.size
        kept = segment < k
        samples += [order[kept], order[positive]]
        columns += [offset + segment[kept], offset + k + segment[positive]]
        offset += 2 * k
    sample, column = np.concatenate(samples), np.concatenate(columns)
    ones = np.ones(sample.size, dtype=np.int32)
    return sparse.csr_array((ones, (sample, column)), shape=(n, offset)), n_runs


def bootstrap_ap(
    y_true: ArrayLike, scores: ArrayLike, counts: ArrayLike
) -> tuple[FloatArray, IntArray]:
    """Per-class AP of every resample, with no Python loop over resamples.

    Returns ``(ap, n_no_positive)``: ``ap`` has shape (n_resamples, n_classes) and is NaN where
    the resample holds no positive of the class; ``n_no_positive[c]`` counts those resamples.
    Equal (to rounding, ~1e-15) to ``average_precision_score`` on each resample.

    Samples are sorted once per class; a block of resamples is then reduced to per-segment
    sums by one sparse product (see ``_segment_matrix``), so the cost per resample is O(n) and
    the step sum runs only over the thresholds holding positives. A threshold absent from a
    resample repeats the previous point and adds 0, as it would in scikit-learn's sum.
    """
    y, s = _check_inputs(y_true, scores)
    c_mat = np.asarray(counts)
    if c_mat.ndim != 2 or c_mat.shape[1] != y.shape[0]:
        raise ValueError(f"counts must have shape (n_resamples, {y.shape[0]}), got {c_mat.shape}")
    if not np.issubdtype(c_mat.dtype, np.integer) or (c_mat < 0).any():
        raise ValueError("counts must be non-negative integers")
    # Integer sums are exact; int32 is much faster in scipy's product when no sum can overflow.
    small = c_mat.sum(axis=1, dtype=np.int64).max() <= np.iinfo(np.int32).max
    matrix, n_runs = _segment_matrix(y, s)
    matrix = matrix.astype(np.int32 if small else np.int64)
    offsets = np.concatenate([[0], np.cumsum(2 * n_runs)])
    n_resamples = c_mat.shape[0]
    block = max(1, _BLOCK_ELEMENTS // max(matrix.shape))
    ap = np.full((n_resamples, y.shape[1]), np.nan)
    for start in range(0, n_resamples, block):
        sums = c_mat[start : start + block].astype(matrix.dtype, copy=False) @ matrix
        for c in np.flatnonzero(n_runs):
            segments = sums[:, offsets[c] : offsets[c + 1]]
            predicted = np.cumsum(segments[:, : n_runs[c]], axis=1)
            tp = np.cumsum(segments[:, n_runs[c] :], axis=1)
            ap[start : start + block, c] = _step_ap(tp, predicted)
    return ap, np.isnan(ap).sum(axis=0)


def percentile_ci(values: ArrayLike, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 − alpha/2) percentiles of a bootstrap distribution, with numpy's default
    linear interpolation, as ConfidenceIntervals' ``get_conf_int`` (whose alpha is in percent).
    Refuses NaN so an undefined resample can never turn into a silent NaN interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError("values must be a non-empty 1-D array of finite numbers")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = np.percentile(v, [50.0 * alpha, 100.0 - 50.0 * alpha])
    return float(low), float(high)


def metric_ci(point: float, values: ArrayLike, alpha: float = 0.05) -> MetricCI:
    """Interval over the valid (non-NaN) resamples, reporting how many were invalid."""
    v = np.asarray(values, dtype=np.float64)
    valid = v[~np.isnan(v)]
    low, high = percentile_ci(valid, alpha) if valid.size else (float("nan"), float("nan"))
    return MetricCI(float(point), low, high, int(valid.size), int(v.size - valid.size))


def _toxic_columns(
    classes: Sequence[Hashable], toxic_classes: Sequence[Hashable], n_classes: int
) -> list[int]:
    names = list(classes)
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f"classes must name the {n_classes} columns once each")
    if MAP_NAME in names:
        raise ValueError(f"a class may not be called {MAP_NAME!r}")
    missing = [t for t in toxic_classes if t not in names]
    if missing or not toxic_classes:
        raise ValueError(f"toxic_classes must be a non-empty subset of classes; unknown: {missing}")
    return [names.index(t) for t in toxic_classes]


def _with_map(ap: FloatArray, toxic_cols: list[int]) -> FloatArray:
    """Append mAP over the toxic columns (NaN when any of them is NaN) as a last column."""
    return np.concatenate([ap, ap[..., toxic_cols].mean(axis=-1, keepdims=True)], axis=-1)


def _summarise(
    point: FloatArray, boot: FloatArray, classes: Sequence[Hashable], alpha: float
) -> dict[str, MetricCI]:
    names = [str(c) for c in classes] + [MAP_NAME]
    return {name: metric_ci(point[k], boot[:, k], alpha) for k, name in enumerate(names)}


def ap_resamples(
    y_true: ArrayLike,
    scores: ArrayLike,
    counts: ArrayLike,
    classes: Sequence[Hashable],
    toxic_classes: Sequence[Hashable],
) -> tuple[FloatArray, FloatArray]:
    """Per-class AP plus mAP (last column) on the full set, shape (C + 1,), and on every
    resample of ``counts``, shape (R, C + 1). Give several systems the same ``counts`` and their
    distributions are paired: subtract them for the bootstrap distribution of a difference."""
    y, s = _check_inputs(y_true, scores)
    toxic_cols = _toxic_columns(classes, toxic_classes, y.shape[1])
    point = _with_map(average_precision(y, s), toxic_cols)
    return point, _with_map(bootstrap_ap(y, s, counts)[0], toxic_cols)


def summarise_resamples(
    point: ArrayLike, boot: ArrayLike, classes: Sequence[Hashable], alpha: float = 0.05
) -> dict[str, MetricCI]:
    """``MetricCI`` per class and for mAP from ``ap_resamples``-shaped arrays (or differences)."""
    return _summarise(np.asarray(point, dtype=np.float64), np.asarray(boot, dtype=np.float64), classes, alpha)


def evaluate_ap(
    y_true: ArrayLike,
    scores: ArrayLike,
    classes: Sequence[Hashable],
    toxic_classes: Sequence[Hashable],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    alpha: float = 0.05,
) -> dict[str, MetricCI]:
    """Per-class AP and ``mAP`` (mean over ``toxic_classes``) with bootstrap intervals; the mean
    is taken within each resample, so the mAP interval is the bootstrap interval of the mean."""
    y, s = _check_inputs(y_true, scores)
    toxic_cols = _toxic_columns(classes, toxic_classes, y.shape[1])
    counts = bootstrap_counts(y.shape[0], n_resamples, seed, groups)
    boot, _ = bootstrap_ap(y, s, counts)
    point = _with_map(average_precision(y, s), toxic_cols)
    return _summarise(point, _with_map(boot, toxic_cols), classes, alpha)


def paired_difference(
    y_true: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    classes: Sequence[Hashable],
    toxic_classes: Sequence[Hashable],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    alpha: float = 0.05,
) -> dict[str, MetricCI]:
    """Paired bootstrap of AP(b) − AP(a) per class and for mAP, both systems scored on the same
    resamples; a difference counts when its ``MetricCI.excludes_zero``."""
    y, s_a = _check_inputs(y_true, scores_a)
    _, s_b = _check_inputs(y, scores_b)
    toxic_cols = _toxic_columns(classes, toxic_classes, y.shape[1])
    counts = bootstrap_counts(y.shape[0], n_resamples, seed, groups)
    boot_a = _with_map(bootstrap_ap(y, s_a, counts)[0], toxic_cols)
    boot_b = _with_map(bootstrap_ap(y, s_b, counts)[0], toxic_cols)
    point_a = _with_map(average_precision(y, s_a), toxic_cols)
    point_b = _with_map(average_precision(y, s_b), toxic_cols)
    return _summarise(point_b - point_a, boot_b - boot_a, classes, alpha)


def precision_recall_at_fpr(
    y_true: ArrayLike, scores: ArrayLike, max_fpr: float = 0.01
) -> list[OperatingPoint]:
    """Per class, the operating point with the highest recall whose false-positive rate is at
    most ``max_fpr``; among thresholds with that recall, the highest (fewest false positives)."""
    y, s = _check_inputs(y_true, scores)
    nan = float("nan")
    points = []
    for c in range(y.shape[1]):
        thresholds, tp, fp = _curve(y[:, c], s[:, c])
        n_pos, n_neg = tp[-1], fp[-1]
        if n_pos == 0 or n_neg == 0:
            points.append(OperatingPoint(nan, nan, nan, nan))
            continue
        feasible = np.flatnonzero(fp / n_neg <= max_fpr)  # a prefix: fp only grows
        if feasible.size == 0:
            points.append(OperatingPoint(float("inf"), nan, 0.0, 0.0))
            continue
        k = int(np.searchsorted(tp, tp[feasible[-1]]))  # first threshold reaching that recall
        points.append(
            OperatingPoint(
                float(thresholds[k]),
                float(tp[k] / (tp[k] + fp[k])),
                float(tp[k] / n_pos),
                float(fp[k] / n_neg),
            )
        )
    return points


def best_f1_thresholds(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Per class, the threshold (predict ``score >= t``) maximising F1, the highest on ties,
    and that F1. NaN for a class without positives."""
    y, s = _check_inputs(y_true, scores)
    thresholds = np.full(y.shape[1], np.nan)
    f1s = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        t, tp, fp = _curve(y[:, c], s[:, c])
        if tp[-1] == 0:
            continue
        f1 = 2.0 * tp / (tp + fp + tp[-1])
        k = int(np.argmax(f1))
        thresholds[c], f1s[c] = t[k], f1[k]
    return thresholds, f1s


def f1_at_threshold(y_true: ArrayLike, scores: ArrayLike, thresholds: ArrayLike) -> FloatArray:
    """Per-class F1 when predicting ``score >= thresholds[c]``; NaN when a class has neither
    positives nor positive predictions."""
    y, s = _check_inputs(y_true, scores)
    predicted = s >= np.asarray(thresholds, dtype=np.float64)
    tp = (predicted & y).sum(axis=0)
    wrong = (predicted ^ y).sum(axis=0)  # false positives + false negatives
    with np.errstate(invalid="ignore"):
        return 2.0 * tp / (2.0 * tp + wrong)


def expected_calibration_error(
    y_true: ArrayLike, probs: ArrayLike, n_bins: int = 15
) -> FloatArray:
    """Per-class ECE of the positive-class probability: Σ_b (n_b / n) · |mean(y)_b − mean(p)_b|
    over ``n_bins`` equal-width bins [k/n_bins, (k+1)/n_bins), with p = 1 in the last bin."""
    y, p = _check_inputs(y_true, probs)
    if n_bins < 1:
        raise ValueError("n_bins must be positive")
    if ((p < 0.0) | (p > 1.0)).any():
        raise ValueError("probs must lie in [0, 1]")
    n, n_classes = y.shape
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1) + np.arange(n_classes) * n_bins
    # n_b/n · |Σ_b y/n_b − Σ_b p/n_b| = |Σ_b (y − p)| / n
    gap = np.bincount(bins.ravel(), weights=(y - p).ravel(), minlength=n_classes * n_bins)
    return np.abs(gap.reshape(n_classes, n_bins)).sum(axis=1) / n


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """The single temperature T > 0 minimising the mean binary cross-entropy of
    ``sigmoid(logits / T)`` over all samples and classes (searched on log T in [1e-2, 1e2])."""
    y = _check_labels(y_true)
    z = np.asarray(logits, dtype=np.float64)
    if z.shape != y.shape or not np.isfinite(z).all():
        raise ValueError("logits must be finite and shaped like y_true")
    z, target = z.ravel(), y.ravel().astype(np.float64)

    def bce(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, scaled) - target * scaled))

    result = minimize_scalar(
        bce, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-8}
    )
    return float(np.exp(result.x))


def logits(probs: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities (clipped away from 0 and 1)."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling: the probabilities of the logits divided by `temperature`."""
    return 1.0 / (1.0 + np.exp(-logits(probs) / temperature))
