"""Bootstrap AP confidence intervals: voxtox's vectorised implementation against the per-resample
loop of the ConfidenceIntervals library (sklearn ``average_precision_score`` on each resample),
on the same resamples, in one run. Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/bootstrap.py                      # 100,000 segments x 1000 resamples x 6
    python benchmarks/bootstrap.py --n-segments 5000 --n-resamples 100   # quick
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.utils import resample

from voxtox.models.metrics import bootstrap_ap, bootstrap_counts, percentile_ci

CLASSES = ["profanity", "bullying", "dating_sexting", "racism", "other", "no_violation"]
PREVALENCE = [0.03, 0.02, 0.01, 0.005, 0.05, 0.85]


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels at toxic-class prevalences; scores rounded to 4 decimals so ties occur."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(CLASSES))) < PREVALENCE).astype(np.int64)
    logits = rng.normal(size=y.shape) + 2.0 * y
    return y, np.round(1.0 / (1.0 + np.exp(-logits)), 4)


def library_loop(y: np.ndarray, scores: np.ndarray, n_resamples: int) -> np.ndarray:
    """What ConfidenceIntervals does: get_bootstrap_indices(random_state=r), then the metric."""
    ap = np.full((n_resamples, y.shape[1]), np.nan)
    for r in range(n_resamples):
        idx = resample(np.arange(len(y)), replace=True, n_samples=len(y), random_state=r)
        for c in range(y.shape[1]):
            if y[idx, c].any():
                ap[r, c] = average_precision_score(y[idx, c], scores[idx, c])
    return ap


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-segments", type=int, default=100_000)
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    args = parser.parse_args()

    y, scores = synthetic(args.n_segments, args.seed)
    start = time.perf_counter()
    counts = bootstrap_counts(len(y), args.n_resamples, seed=0)
    ours, _ = bootstrap_ap(y, scores, counts)
    ours_s = time.perf_counter() - start
    ours_rss = peak_rss_gib()
    del counts

    start = time.perf_counter()
    reference = library_loop(y, scores, args.n_resamples)
    loop_s = time.perf_counter() - start

    same_nan = np.array_equal(np.isnan(ours), np.isnan(reference))
    max_diff = float(np.nanmax(np.abs(ours - reference)))
    print(
        f"{args.n_resamples} resamples x {len(CLASSES)} classes x {args.n_segments:,} segments; "
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}\n"
    )
    print("| implementation | time (s) | peak RSS (GiB) |\n|---|---:|---:|")
    print(f"| voxtox.models.metrics (vectorised) | {ours_s:.1f} | {ours_rss:.2f} |")
    print(f"| per-resample sklearn loop (ConfidenceIntervals) | {loop_s:.1f} | - |")
    print(f"\nspeed ratio: {loop_s / ours_s:.1f}x")
    print(f"max |AP difference|, all resamples x classes: {max_diff:.2e}; same NaNs: {same_nan}\n")
    print("| class | invalid | 95% CI (vectorised) | 95% CI (sklearn loop) | max CI diff |")
    print("|---|---:|---|---|---:|")
    for c, name in enumerate(CLASSES):
        valid = ~np.isnan(ours[:, c])
        a = percentile_ci(ours[valid, c])
        b = percentile_ci(reference[valid, c])
        diff = max(abs(a[0] - b[0]), abs(a[1] - b[1]))
        print(
            f"| {name} | {int((~valid).sum())} | [{a[0]:.6f}, {a[1]:.6f}] "
            f"| [{b[0]:.6f}, {b[1]:.6f}] | {diff:.1e} |"
        )
    if not same_nan or max_diff > 1e-12:
        raise SystemExit("MISMATCH between the vectorised and the reference bootstrap")


if __name__ == "__main__":
    main()
