"""Audio-only scoring: cut audio into windows, score each with the classifier, aggregate.

The paper (§4.1) scores 15 s windows with a 15 s stride and takes a segment's score per class as
the maximum over its windows. The last window is whatever audio is left (not padded with
silence, which would change what the encoder sees); a tail shorter than `min_window_s` joins the
window before it when there is one, so no window is a few frames of nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from voxtox.audio import SAMPLE_RATE
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.whisper_encoder import HOP_LENGTH, MAX_FRAMES, log_mel, mel_filters

Aggregation = Literal["max", "mean", "noisy_or"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "noisy_or")


def window_bounds(
    n_samples: int, window_s: float = 15.0, stride_s: float = 15.0, min_window_s: float = 1.0
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the windows covering `n_samples` samples of 16 kHz audio."""
    if n_samples <= 0:
        return []
    window, stride = int(window_s * SAMPLE_RATE), int(stride_s * SAMPLE_RATE)
    if not 0 < window <= MAX_FRAMES * HOP_LENGTH:
        raise ValueError(f"window of {window_s} s: Whisper's encoder takes 0-30 s")
    if stride <= 0:
        raise ValueError(f"stride of {stride_s} s must be positive")
    bounds = []
    for start in range(0, n_samples, stride):
        bounds.append((start, min(start + window, n_samples)))
        if start + window >= n_samples:
            break
    tail = bounds[-1][1] - bounds[-1][0]
    if len(bounds) > 1 and tail < min_window_s * SAMPLE_RATE:
        previous = bounds[-2]
        if bounds[-1][1] - previous[0] <= MAX_FRAMES * HOP_LENGTH:  # the merge still fits Whisper
            bounds[-2:] = [(previous[0], bounds[-1][1])]
    return bounds


def aggregate(window_probs: np.ndarray, how: Aggregation = "max") -> np.ndarray:
    """One score per class from (windows, classes) probabilities: max (the paper), mean, or
    noisy-OR (1 − Π(1 − p): the chance that at least one window is toxic, if independent)."""
    if window_probs.ndim != 2 or not len(window_probs):
        raise ValueError(f"expected (windows, classes) probabilities, got shape {window_probs.shape}")
    if how == "max":
        return window_probs.max(axis=0)
    if how == "mean":
        return window_probs.mean(axis=0)
    if how == "noisy_or":
        return 1.0 - np.prod(1.0 - window_probs, axis=0)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {how!r}")


def padded_batches(
    features: list[torch.Tensor], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Log-mel windows (n_mels, frames) in batches of similar length (sorted: similar lengths pad
    less), each zero-padded to its longest: (indices into `features`, batch, lengths)."""
    order = np.argsort([f.shape[1] for f in features], kind="stable")
    for begin in range(0, len(order), batch_size):
        chosen = order[begin : begin + batch_size]
        lengths = torch.tensor([features[i].shape[1] for i in chosen])
        batch = torch.zeros(len(chosen), features[0].shape[0], int(lengths.max()))
        for row, i in enumerate(chosen):
            batch[row, :, : features[i].shape[1]] = features[i]
        yield chosen, batch, lengths


class WindowScorer:
    """Scores 16 kHz mono audio with a trained classifier, window by window, in batches."""

    def __init__(
        self,
        model: SpeechToxicityClassifier,
        window_s: float = 15.0,
        stride_s: float = 15.0,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.window_s, self.stride_s, self.batch_size = window_s, stride_s, batch_size
        self.filters = mel_filters(model.encoder.config.num_mel_bins)

    @torch.no_grad()
    def score_features(self, features: list[torch.Tensor]) -> np.ndarray:
        """(len(features), classes) probabilities of log-mel windows (n_mels, frames) each."""
        out = []
        for chosen, batch, lengths in padded_batches(features, self.batch_size):
            probs = self.model.predict_proba(batch.to(self.device), lengths.to(self.device)).float().cpu()
            out.append((chosen, probs.numpy()))
        scores = np.empty((len(features), self.model.head.out_features), dtype=np.float32)
        for chosen, probs in out:
            scores[chosen] = probs
        return scores

    def windows(self, samples: np.ndarray) -> list[tuple[int, int]]:
        return window_bounds(len(samples), self.window_s, self.stride_s)

    def score_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Per clip, its (windows, classes) probabilities; windows of all clips share batches."""
        features, owners = [], []
        for index, samples in enumerate(clips):
            for start, end in self.windows(samples):
                features.append(log_mel(np.asarray(samples[start:end], dtype=np.float32), self.filters))
                owners.append(index)
        scores = self.score_features(features) if features else np.empty((0, self.model.head.out_features))
        owners_array = np.asarray(owners, dtype=np.int64)
        return [scores[owners_array == index] for index in range(len(clips))]

    def score(self, samples: np.ndarray) -> np.ndarray:
        """(windows, classes) probabilities of one clip."""
        return self.score_many([samples])[0]
