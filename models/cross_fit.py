"""Out-of-sample audio scores for `voxtox review select --strategy disagreement`, by cross-fitting.

Confident learning ranks a clip by how unlikely a model finds its given label, and that only
means something when the model never learnt from the clip: a model trained on a mislabelled clip
has been pushed to agree with the wrong label. The trained audio model saw every train clip, and
fine-tuning it K times to get out-of-fold scores is K Whisper trainings (hours on CPU). So:

1. each clip is embedded once by the audio model's **starting encoder**, frozen (the Whisper
   checkpoint `voxtox train` fine-tunes, not the fine-tuned one: its weights moved towards these
   very labels, so a head on its features would be in-sample through the features): the masked
   mean of the encoder's output over each 15 s window, averaged over the clip's windows;
2. the clips are dealt into K folds **by recording** (`source_sha256`: a speaker's other clips
   would otherwise vouch for a clip's label), seeded;
3. per fold and class, a standardised logistic regression (a linear probe, the audio model's own
   head shape) is fitted on the other folds' clips and scores this fold's clips.

Every clip's score then comes from a head that never saw it (nor its recording), on features that
never saw any label. The cost is one encoder pass per clip (what scoring with the trained model
costs) plus K×6 small fits (seconds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from voxtox.models.inference import padded_batches, window_bounds
from voxtox.models.speech_classifier import masked_mean
from voxtox.models.whisper_encoder import SpeechEncoder, log_mel, mel_filters

DEFAULT_FOLDS = 5


def recording_folds(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """(n,) fold index of each clip: all clips of a recording in one fold, recordings dealt
    round-robin in a seeded order (so folds hold similar numbers of recordings). With a single
    recording, clips are dealt instead (nothing to group by)."""
    names = sorted(set(groups))
    if len(names) < 2:
        keys = [str(i) for i in range(len(groups))]
        return recording_folds(keys, folds, seed) if len(keys) >= 2 else np.zeros(len(groups), dtype=np.int64)
    # A seeded hash orders the recordings: the same recording lands in the same fold for a
    # seed whatever else is in the batch's order.
    order = sorted(names, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    k = min(folds, len(order))
    fold_of = {g: i % k for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def _fit_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    """P(class) of `test_x` from a probe fitted on (train_x, train_y); a class the training folds
    show only one way gets that way's rate (there is nothing to fit)."""
    if train_y.all() or not train_y.any():
        return np.full(len(test_x), float(train_y.mean()) if len(train_y) else 0.5)
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    probe.fit(scaler.transform(train_x), train_y)
    return probe.predict_proba(scaler.transform(test_x))[:, 1]


def cross_fitted_probs(embeddings: np.ndarray, labels: np.ndarray, groups: Sequence[str],
                       folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """(n, classes) out-of-fold probabilities of each class, from probes fitted on the other
    folds' clips and their given `labels` (n, classes)."""
    if len(embeddings) != len(labels) or len(labels) != len(groups):
        raise ValueError(f"{len(embeddings)} embeddings, {len(labels)} label rows and {len(groups)} groups must match")
    fold = recording_folds(groups, folds, seed)
    probs = np.zeros(labels.shape, dtype=np.float64)
    for k in np.unique(fold):
        held, rest = fold == k, fold != k
        if not rest.any():  # one fold only: no clip can be scored out of sample
            raise ValueError("cross-fitting needs at least 2 clips")
        for c in range(labels.shape[1]):
            probs[held, c] = _fit_score(embeddings[rest], labels[rest, c].astype(bool), embeddings[held], seed)
    return probs


class FrozenEmbedder:
    """A frozen Whisper encoder's clip embeddings: per 15 s window the masked mean of its output,
    averaged over the clip's windows."""

    def __init__(self, encoder: SpeechEncoder, window_s: float = 15.0, batch_size: int = 8) -> None:
        self.encoder = encoder.eval()
        self.filters = mel_filters(encoder.config.num_mel_bins)
        self.window_s, self.batch_size = window_s, batch_size

    @torch.no_grad()
    def _embed_windows(self, windows: list[torch.Tensor]) -> np.ndarray:
        out = np.zeros((len(windows), self.encoder.config.d_model), dtype=np.float32)
        for chosen, batch, lengths in padded_batches(windows, self.batch_size):
            encoded = self.encoder(batch, lengths)
            out[chosen] = masked_mean(encoded.hidden_states[0], encoded.mask).float().numpy()
        return out

    def embed(self, clips: list[np.ndarray]) -> np.ndarray:
        """(len(clips), d_model) embeddings of 16 kHz mono clips."""
        windows, owners = [], []
        for index, samples in enumerate(clips):
            for start, end in window_bounds(len(samples), self.window_s, self.window_s):
                windows.append(log_mel(np.asarray(samples[start:end], dtype=np.float32), self.filters))
                owners.append(index)
        vectors = self._embed_windows(windows) if windows else np.zeros((0, self.encoder.config.d_model))
        owner = np.asarray(owners, dtype=np.int64)
        return np.stack([vectors[owner == i].mean(axis=0) if (owner == i).any()
                         else np.zeros(vectors.shape[1], dtype=np.float32) for i in range(len(clips))])
