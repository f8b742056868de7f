"""Tests for voxtox.models.metrics: scikit-learn and the ConfidenceIntervals library's
procedure are the references."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.utils import resample

from voxtox.models import metrics as m

CLASSES = ["profanity", "bullying", "dating_sexting", "racism"]
TOXIC = ["profanity", "dating_sexting", "racism", "bullying"]


def _tied_data(n: int, prevalence: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with scores rounded to one decimal, so ties are everywhere."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(prevalence))) < prevalence).astype(int)
    scores = np.round(rng.random(y.shape) + 0.4 * y, 1)
    return y, scores


def _sklearn_loop(y: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Straightforward reference: materialise each resample and call scikit-learn."""
    out = np.full((counts.shape[0], y.shape[1]), np.nan)
    for r, row in enumerate(counts):
        idx = np.repeat(np.arange(y.shape[0]), row)
        for c in range(y.shape[1]):
            if y[idx, c].any():
                out[r, c] = average_precision_score(y[idx, c], scores[idx, c])
    return out


def _library_indices(n: int, r: int, conditions: np.ndarray | None) -> np.ndarray:
    """ConfidenceIntervals' get_bootstrap_indices(n, conditions, random_state=r)."""
    indices = np.arange(n)
    if conditions is None:
        return resample(indices, replace=True, n_samples=n, random_state=r)
    unique = np.unique(conditions)
    drawn = resample(unique, replace=True, n_samples=len(unique), random_state=r)
    return np.concatenate([indices[conditions == g] for g in drawn])


def test_average_precision_matches_sklearn_with_ties() -> None:
    y, s = _tied_data(800, [0.05, 0.2, 0.5, 0.9], seed=1)
    expected = [average_precision_score(y[:, c], s[:, c]) for c in range(4)]
    np.testing.assert_allclose(m.average_precision(y, s), expected, rtol=0, atol=1e-12)


def test_average_precision_no_positive_is_nan() -> None:
    y = np.array([[0, 1], [0, 0], [0, 1]])
    ap = m.average_precision(y, np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.4]]))
    assert np.isnan(ap[0]) and ap[1] == 1.0


@pytest.mark.parametrize("grouped", [False, True])
def test_bootstrap_ap_equals_per_resample_sklearn(grouped: bool) -> None:
    y, s = _tied_data(1500, [0.03, 0.2, 0.5], seed=2)
    groups = np.arange(len(y)) // 10 if grouped else None
    counts = m.bootstrap_counts(len(y), n_resamples=40, seed=0, groups=groups)
    ap, n_no_positive = m.bootstrap_ap(y, s, counts)
    expected = _sklearn_loop(y, s, counts)
    assert np.array_equal(np.isnan(ap), np.isnan(expected))
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert n_no_positive.tolist() == np.isnan(expected).sum(axis=0).tolist()


@pytest.mark.parametrize("block_elements", [1, 7 * 300])
def test_bootstrap_ap_blocks_agree(monkeypatch: pytest.MonkeyPatch, block_elements: int) -> None:
    y, s = _tied_data(300, [0.1, 0.4], seed=3)
    counts = m.bootstrap_counts(len(y), n_resamples=25, seed=4)
    whole, _ = m.bootstrap_ap(y, s, counts)
    monkeypatch.setattr(m, "_BLOCK_ELEMENTS", block_elements)
    blocked, _ = m.bootstrap_ap(y, s, counts)
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-15)  # numpy's sum order may vary


def test_bootstrap_ap_huge_counts_use_exact_integer_sums() -> None:
    # Row sums past int32: counts act as integer sample weights in scikit-learn.
    y = np.array([[1], [0], [1], [0], [1]])
    s = np.array([[0.9], [0.8], [0.8], [0.3], [0.1]])
    counts = np.array([[2**30, 2**30, 7, 3, 1], [1, 2, 0, 5, 1]])
    ap, _ = m.bootstrap_ap(y, s, counts)
    for r in range(2):
        assert ap[r, 0] == pytest.approx(
            average_precision_score(y[:, 0], s[:, 0], sample_weight=counts[r]), abs=1e-12
        )


def test_counts_reproduce_confidence_intervals_library_resamples() -> None:
    n = 50
    groups = np.random.default_rng(5).integers(0, 7, size=n)
    for conditions in (None, groups):
        counts = m.bootstrap_counts(n, n_resamples=20, seed=0, groups=conditions)
        for r in range(20):
            expected = np.bincount(_library_indices(n, r, conditions), minlength=n)
            assert np.array_equal(counts[r], expected)


def test_grouped_resamples_keep_groups_whole() -> None:
    groups = np.repeat(["s1", "s2", "s3", "s4", "s5"], [1, 4, 2, 6, 3])
    counts = m.bootstrap_counts(len(groups), n_resamples=200, seed=9, groups=groups)
    n_drawn = np.zeros(200, dtype=int)
    for g in np.unique(groups):
        members = counts[:, groups == g]
        assert (members == members[:, :1]).all()  # every member copied as often as its group
        n_drawn += members[:, 0]
    assert (n_drawn == 5).all()  # as many group draws as there are groups
    assert len({row.sum() for row in counts}) > 1  # resample sizes vary with the groups drawn


def test_percentile_ci_known_case() -> None:
    assert m.percentile_ci(np.arange(101.0)) == (2.5, 97.5)
    values = np.random.default_rng(6).normal(size=1000)
    # the library: np.percentile(values, alpha/2), np.percentile(values, 100 - alpha/2), alpha=5
    expected = (np.percentile(values, 2.5), np.percentile(values, 97.5))
    assert m.percentile_ci(values, 0.05) == expected
    with pytest.raises(ValueError):
        m.percentile_ci([0.1, np.nan])


def test_evaluate_ap_perfect_scores_give_degenerate_interval() -> None:
    y, _ = _tied_data(400, [0.3, 0.3, 0.3, 0.3], seed=7)
    result = m.evaluate_ap(y, y + 0.5, CLASSES, TOXIC, n_resamples=50)
    for name in [*CLASSES, "mAP"]:
        assert result[name] == m.MetricCI(1.0, 1.0, 1.0, 50, 0)


def test_no_positive_resamples_are_counted_and_reported() -> None:
    n = 20
    y = np.zeros((n, 4), dtype=int)
    y[3, 0] = 1  # a single positive: about a third of the resamples miss it
    y[:10, 1:] = 1
    s = np.random.default_rng(8).random((n, 4))
    counts = m.bootstrap_counts(n, n_resamples=300, seed=0)
    ap, n_no_positive = m.bootstrap_ap(y, s, counts)
    missing = counts[:, 3] == 0
    assert 50 < missing.sum() < 250
    assert np.array_equal(np.isnan(ap[:, 0]), missing)
    assert n_no_positive.tolist() == [missing.sum(), 0, 0, 0]

    result = m.evaluate_ap(y, s, CLASSES, TOXIC, n_resamples=300)
    for name in ("profanity", "mAP"):
        ci = result[name]
        assert (ci.n_valid, ci.n_invalid) == (300 - missing.sum(), missing.sum())
        assert np.isfinite([ci.low, ci.high]).all()
        assert (ci.low, ci.high) == m.percentile_ci(
            ap[~missing, 0] if name == "profanity" else ap[~missing][:, [0, 2, 3, 1]].mean(axis=1)
        )
    assert result["racism"].n_invalid == 0


def test_evaluate_ap_map_is_mean_of_toxic_classes_only() -> None:
    y, s = _tied_data(500, [0.2, 0.3, 0.4, 0.5], seed=10)
    result = m.evaluate_ap(y, s, CLASSES, ["profanity", "racism"], n_resamples=30)
    point = m.average_precision(y, s)
    assert result["mAP"].point == pytest.approx((point[0] + point[3]) / 2, abs=1e-15)


def test_paired_difference_with_itself_is_exactly_zero() -> None:
    y, s = _tied_data(500, [0.1, 0.2, 0.3, 0.4], seed=11)
    result = m.paired_difference(y, s, s, CLASSES, TOXIC, n_resamples=100)
    for ci in result.values():
        assert (ci.point, ci.low, ci.high) == (0.0, 0.0, 0.0)
        assert not ci.excludes_zero


def test_paired_difference_detects_a_clearly_better_system() -> None:
    rng = np.random.default_rng(12)
    y, _ = _tied_data(600, [0.1, 0.2, 0.3, 0.4], seed=12)
    weak = rng.random(y.shape) + 0.2 * y
    strong = rng.random(y.shape) + 1.5 * y
    groups = np.arange(600) // 5
    result = m.paired_difference(y, weak, strong, CLASSES, TOXIC, n_resamples=200, groups=groups)
    for ci in result.values():
        assert ci.excludes_zero and ci.low > 0.0


def test_precision_recall_at_fpr_hand_case() -> None:
    # 200 negatives, 10 positives; at most 1% FPR allows 2 false positives.
    scores = np.concatenate([np.linspace(0.0, 0.5, 198), [0.95, 0.75], np.linspace(0.6, 0.99, 10)])
    y = np.r_[np.zeros(200), np.ones(10)].astype(int)
    # Positives at 0.99, 0.9467, ..., 0.6 (step 0.0433); negatives at 0.95 and 0.75 sit among them.
    (point,) = m.precision_recall_at_fpr(y[:, None], scores[:, None], max_fpr=0.01)
    # Down to 0.6 every positive is found with exactly the 2 negatives above it.
    assert point == m.OperatingPoint(0.6, 10 / 12, 1.0, 0.01)
    (strict,) = m.precision_recall_at_fpr(y[:, None], scores[:, None], max_fpr=0.005)
    # One false positive allowed: stop just above the 0.75 negative (6 positives, 0.99..0.7733).
    assert strict.threshold == pytest.approx(0.99 - 5 * 0.39 / 9)
    assert (strict.precision, strict.recall, strict.fpr) == (6 / 7, 0.6, 0.005)


def test_precision_recall_at_fpr_infeasible() -> None:
    y = np.array([[0], [1], [0]])
    (point,) = m.precision_recall_at_fpr(y, np.array([[0.9], [0.5], [0.1]]), max_fpr=0.1)
    assert point.threshold == np.inf and point.recall == 0.0 and np.isnan(point.precision)


def test_expected_calibration_error_hand_case() -> None:
    y = np.array([[0], [1], [1], [1]])
    probs = np.array([[0.1], [0.2], [0.7], [0.9]])
    # bin [0, .5): mean p .15, mean y .5 -> 2/4 * .35; bin [.5, 1]: .8 vs 1 -> 2/4 * .2
    assert m.expected_calibration_error(y, probs, n_bins=2) == pytest.approx([0.275], abs=1e-15)
    perfect = m.expected_calibration_error(np.array([[0], [1]]), np.array([[0.0], [1.0]]))
    assert perfect.tolist() == [0.0]


def test_fit_temperature_recovers_known_temperature() -> None:
    rng = np.random.default_rng(13)
    true_logits = rng.normal(0.0, 2.0, size=(50_000, 2))
    y = (rng.random(true_logits.shape) < 1.0 / (1.0 + np.exp(-true_logits))).astype(int)
    assert m.fit_temperature(2.5 * true_logits, y) == pytest.approx(2.5, rel=0.04)
    assert m.fit_temperature(0.5 * true_logits, y) == pytest.approx(0.5, rel=0.04)


def test_best_f1_thresholds() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.5]])
    thresholds, f1s = m.best_f1_thresholds(y, s)
    # threshold .6 -> tp 3, fp 1: F1 = 6/7 beats .8 (tp 2: 4/5)
    assert thresholds[0] == 0.6 and f1s[0] == pytest.approx(6 / 7)
    assert np.isnan(thresholds[1]) and np.isnan(f1s[1])
    y2, s2 = _tied_data(400, [0.2, 0.4], seed=14)
    t2, f2 = m.best_f1_thresholds(y2, s2)
    np.testing.assert_allclose(m.f1_at_threshold(y2, s2, t2), f2, rtol=1e-15)
    for c in range(2):  # no other distinct threshold does better
        col_y, col_s = y2[:, [c]], s2[:, [c]]
        others = [m.f1_at_threshold(col_y, col_s, [t])[0] for t in np.unique(col_s)]
        assert f2[c] == pytest.approx(max(others), abs=1e-15)
