"""Audio-only scoring: 15 s windows, the last one shorter, aggregated per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TEXT_DIM
from voxtox.labels import CLASSES
from voxtox.models.inference import WindowScorer, aggregate, window_bounds
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.whisper_encoder import load_speech_encoder

RATE = 16_000


def test_windows_cover_the_audio_and_the_last_is_not_padded() -> None:
    assert window_bounds(40 * RATE) == [(0, 15 * RATE), (15 * RATE, 30 * RATE), (30 * RATE, 40 * RATE)]
    assert window_bounds(9 * RATE) == [(0, 9 * RATE)]
    # a 0.5 s tail joins the window before it rather than being scored alone
    assert window_bounds(int(15.5 * RATE)) == [(0, int(15.5 * RATE))]
    assert window_bounds(0) == []
    with pytest.raises(ValueError, match="0-30 s"):
        window_bounds(RATE, window_s=31)


def test_aggregations() -> None:
    probs = np.array([[0.1, 0.5], [0.3, 0.5]])
    np.testing.assert_allclose(aggregate(probs, "max"), [0.3, 0.5])
    np.testing.assert_allclose(aggregate(probs, "mean"), [0.2, 0.5])
    np.testing.assert_allclose(aggregate(probs, "noisy_or"), [1 - 0.9 * 0.7, 0.75])
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(probs, "median")  # type: ignore[arg-type]


def test_batched_windows_score_like_each_window_alone(tiny_whisper: Path) -> None:
    torch.manual_seed(0)
    model = SpeechToxicityClassifier(load_speech_encoder(str(tiny_whisper)), len(CLASSES), TEXT_DIM)
    rng = np.random.default_rng(0)
    clips = [rng.normal(scale=0.1, size=int(s * RATE)).astype(np.float32) for s in (2.0, 33.0, 7.5)]
    batched = WindowScorer(model, batch_size=8).score_many(clips)
    assert [len(w) for w in batched] == [1, 3, 1]
    alone = WindowScorer(model, batch_size=1)
    for clip, windows in zip(clips, batched, strict=True):
        for (start, end), row in zip(alone.windows(clip), windows, strict=True):
            np.testing.assert_allclose(alone.score(clip[start:end])[0], row, atol=1e-5)
