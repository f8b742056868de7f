"""`voxtox review select`: which clips people should review next.

Candidates are the clips of one split that nobody reviewed yet and whose audio is still held:
every training clip `voxtox train` would read (`train.train_filter`), or for val/test the
evaluation segments that truth is measured on. Each candidate gets a doubt score by a strategy:

- `random`: a seeded random order;
- `uncertainty`: how close the labeller came to changing its mind, the smallest distance over
  the classes between its score and its decision threshold, in logits (a score of 0.49 against
  a threshold of 0.5 is in more doubt than 0.9);
- `disagreement` (confident-learning style): an audio model's OUT-OF-SAMPLE probability of the
  labels the pipeline gave, the least likely class (min over classes of q or 1 − q); the clips
  whose given label the audio model finds least likely come first. The scores are cross-fitted
  (models/cross_fit.py): linear probes on the frozen starting encoder's clip embeddings, each
  clip scored by a probe that never saw it nor its recording.

- `combined`: the expected number of wrong labels over the four toxic classes (the classes
  voxtox's mAP is measured on), each class's chance taken from the two opinions averaged (the
  labeller's score re-centred on its threshold, the cross-fitted audio probability) and weighted
  by 1 / the candidates labelled with it. It gained the most of voxtox's strategies in the
  simulation of docs/review.md.

Quotas (unless `quotas=False`): the budget is shared equally by the strata (language × decided class: the pipeline's
most probable violation class, else `no_violation`), taken round-robin in doubt order; a stratum
that runs out leaves its share to the others. Ties break by a seeded random key, so a seed
gives the same batch for the same data.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.model_store import ModelNotFoundError, resolve_model
from voxtox.storage.reviews import batch_path
from voxtox.storage.schema import HAS_AUDIO, label_column, prob_column

Strategy = Literal["random", "uncertainty", "disagreement", "combined"]
STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "disagreement", "combined")
_EPS = 1e-6
NO_VIOLATION = "no_violation"


class NoAudioModelError(ValueError):
    """`disagreement` needs a trained audio model and there is none."""


@dataclass
class Candidates:
    """A split's unreviewed clips with what the strategies and the export need."""

    rows: list[dict[str, object]]
    probs: np.ndarray  # (n, classes) the labeller's scores
    labels: np.ndarray  # (n, classes) bool, the pipeline's labels

    def __len__(self) -> int:
        return len(self.rows)


def candidate_condition(split: str, settings: Settings) -> str:
    """The clips of `split` that training (train) or evaluation (val, test) would read."""
    if split == "train":
        return f"split = 'train' AND {HAS_AUDIO} AND ({settings.train.train_filter})"
    return f"split = '{split}' AND segment_kind = 'evaluation' AND {HAS_AUDIO}"


def read_candidates(settings: Settings, split: str, exclude: set[str] | frozenset[str] = frozenset()) -> Candidates:
    catalog = Catalog.from_settings(settings)
    present = catalog.present_tables()
    if "clips" not in present:
        raise ValueError(f"no clips in {settings.data_dir}: label audio first (`voxtox label`)")
    columns = ", ".join([*(prob_column(c) for c in CLASSES), *(label_column(c) for c in CLASSES)])
    table = catalog.query(
        "SELECT clip_id, source_sha256, split, coalesce(lang, 'unknown') AS lang, start_s, end_s, duration_s, "
        f"transcript, labeller_model, {columns} FROM clips WHERE {candidate_condition(split, settings)} ORDER BY clip_id"
    )
    if not table.num_rows:
        raise ValueError(f"no {split} clips with audio to review: label {split} audio first (`voxtox label --split {split}`)")
    reviewed = catalog.query("SELECT clip_id FROM reviews")["clip_id"].to_pylist() if "reviews" in present else []
    done = set(reviewed) | set(exclude)
    keep = np.array([clip not in done for clip in table["clip_id"].to_pylist()])
    table = table.filter(keep)
    probs = np.stack([table[prob_column(c)].to_numpy(zero_copy_only=False) for c in CLASSES], axis=1).astype(np.float64)
    labels = np.stack([table[label_column(c)].to_numpy(zero_copy_only=False) for c in CLASSES], axis=1).astype(bool)
    keys = ["clip_id", "source_sha256", "split", "lang", "start_s", "end_s", "duration_s", "transcript", "labeller_model"]
    return Candidates(table.select(keys).to_pylist(), np.nan_to_num(probs), labels)


def decided_class(probs: np.ndarray, labels: np.ndarray) -> str:
    """The pipeline's class of a clip for quotas: its most probable violation, else no_violation."""
    violations = [i for i, c in enumerate(CLASSES) if c != NO_VIOLATION and labels[i]]
    return CLASSES[max(violations, key=lambda i: probs[i])] if violations else NO_VIOLATION


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def labeller_thresholds(candidates: Candidates, settings: Settings) -> np.ndarray:
    """The labeller's per-class decision thresholds (its `voxtox_labeller.json`), 0.5 where unknown."""
    from voxtox.models.labeller import DEFAULT_THRESHOLD, LabelMap

    names = {str(r["labeller_model"]) for r in candidates.rows if r["labeller_model"]}
    if len(names) == 1:
        try:
            return LabelMap.load(Path(resolve_model(names.pop(), settings.model_cache_dir, allow_hub=False))).threshold_vector()
        except (ModelNotFoundError, OSError, ValueError):
            pass
    return np.full(len(CLASSES), DEFAULT_THRESHOLD)


def uncertainty_doubt(candidates: Candidates, thresholds: np.ndarray) -> np.ndarray:
    """Higher is more doubtful: minus the smallest logit distance to a threshold."""
    return -np.abs(_logit(candidates.probs) - _logit(thresholds)[None, :]).min(axis=1)


def centred_scores(candidates: Candidates, thresholds: np.ndarray) -> np.ndarray:
    """The labeller's scores moved so that each class's threshold sits at 0.5 (in logits)."""
    return 1 / (1 + np.exp(-(_logit(candidates.probs) - _logit(thresholds)[None, :])))


def combined_doubt(labeller: np.ndarray, audio: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Higher is more doubtful: the expected number of wrong toxic-class labels, each class's
    probability the mean of the labeller's (threshold-centred) and the audio model's, and each
    class weighted by 1 / the candidates labelled with it (mAP is a mean over classes: fixing a
    rare class's label moves its AP, and the mean, most)."""
    q = (labeller + audio) / 2
    toxic = [CLASSES.index(c) for c in TOXIC_CLASSES]
    weights = 1.0 / np.maximum(labels[:, toxic].sum(axis=0), 1)
    return (np.where(labels, 1 - q, q)[:, toxic] * weights[None, :]).sum(axis=1)


def disagreement_doubt(audio_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Higher is more doubtful: minus the audio model's probability of the given label, least likely class."""
    given = np.where(labels, audio_probs, 1 - audio_probs)
    return -given.min(axis=1)


def starting_encoder(settings: Settings, run: Path | None) -> str:
    """The Whisper checkpoint the audio model was fine-tuned from: the run's (`--model`, else
    `<runs_dir>/current` when there is one) `train.encoder`, else the settings' `train.encoder`."""
    from voxtox.storage.runs import RunDir

    chosen = run or RunDir.current(settings.runs_dir).path
    config = chosen / "config.json"
    if config.is_file():
        return str(json.loads(config.read_text())["train"]["encoder"])
    if run is not None:
        raise NoAudioModelError(f"strategy disagreement: {run} is not a `voxtox train` run (no config.json)")
    return settings.train.encoder


def clip_embeddings(settings: Settings, candidates: Candidates, encoder_name: str) -> np.ndarray:
    """(n, d) the frozen starting encoder's embeddings of the candidates, read in chunks."""
    from voxtox.models.cross_fit import FrozenEmbedder
    from voxtox.models.whisper_encoder import load_speech_encoder
    from voxtox.models.scoring import CLIPS_PER_SCORING_BATCH

    try:
        encoder = load_speech_encoder(resolve_model(encoder_name, settings.model_cache_dir, allow_hub=False))
    except (ModelNotFoundError, OSError) as error:
        raise NoAudioModelError(f"strategy disagreement embeds clips with the audio model's encoder "
                                f"{encoder_name!r}, which is not available here: {error}") from error
    if settings.train.threads:
        import torch

        torch.set_num_threads(settings.train.threads)
    ids = [str(r["clip_id"]) for r in candidates.rows]
    read = _audio_reader(settings, ids)
    embedder = FrozenEmbedder(encoder, settings.evaluate.window_s, settings.evaluate.batch_size)
    chunks = [embedder.embed(read(ids[start:start + CLIPS_PER_SCORING_BATCH]))
              for start in range(0, len(ids), CLIPS_PER_SCORING_BATCH)]
    return np.concatenate(chunks)


def _audio_reader(settings: Settings, ids: list[str]) -> Callable[[list[str]], list[np.ndarray]]:
    """Decoded audio of a chunk of the clips `ids`, from the lake's clips table."""
    from voxtox.models.scoring import decode_clip_audio
    from voxtox.storage.review_export import lake_audio

    def from_lake(chunk: list[str]) -> list[np.ndarray]:
        data = lake_audio(settings, chunk)
        return [decode_clip_audio(data[c], f"clip {c}") for c in chunk]

    return from_lake


def audio_model_scores(settings: Settings, candidates: Candidates, run: Path | None, seed: int) -> np.ndarray:
    """(n, classes) out-of-sample audio scores of the candidates: cross-fitted linear probes on
    the frozen starting encoder's embeddings, folds by recording (models/cross_fit.py)."""
    from voxtox.models.cross_fit import cross_fitted_probs

    embeddings = clip_embeddings(settings, candidates, starting_encoder(settings, run))
    groups = [str(r["source_sha256"]) for r in candidates.rows]
    return cross_fitted_probs(embeddings, candidates.labels, groups, seed=seed)


def doubt_scores(strategy: str, candidates: Candidates, settings: Settings, seed: int, model: Path | None) -> np.ndarray:
    if strategy == "random":
        return np.random.default_rng([seed, 1]).random(len(candidates))
    if strategy == "uncertainty":
        return uncertainty_doubt(candidates, labeller_thresholds(candidates, settings))
    if strategy == "disagreement":
        return disagreement_doubt(audio_model_scores(settings, candidates, model, seed), candidates.labels)
    if strategy == "combined":
        labeller = centred_scores(candidates, labeller_thresholds(candidates, settings))
        return combined_doubt(labeller, audio_model_scores(settings, candidates, model, seed), candidates.labels)
    raise ValueError(f"unknown strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")


def quota_pick(strata: list[str], doubt: np.ndarray, budget: int, seed: int) -> list[int]:
    """Indices of `budget` clips: strata take turns (in name order), each giving its most doubtful
    clip left; ties in doubt break by a seeded random key."""
    tiebreak = np.random.default_rng([seed, 2]).random(len(strata))
    queues: dict[str, list[int]] = {}
    for index in np.lexsort((tiebreak, -doubt)):  # most doubtful first
        queues.setdefault(strata[index], []).append(int(index))
    picked: list[int] = []
    turn = 0
    order = sorted(queues)
    while len(picked) < budget and any(queues.values()):
        queue = queues[order[turn % len(order)]]
        if queue:
            picked.append(queue.pop(0))
        turn += 1
    return picked


@dataclass
class Selection:
    rows: list[dict[str, object]]
    strata: dict[str, int]  # "lang/class" -> clips chosen
    n_candidates: int
    path: Path


def select_for_review(settings: Settings, budget: int, split: str = "train", strategy: str = "uncertainty",
                      seed: int = 0, model: Path | None = None, out: Path | None = None,
                      exclude: set[str] | frozenset[str] = frozenset(), quotas: bool = True) -> Selection:
    """Choose `budget` unreviewed clips of `split` (none of `exclude`) and write them, most
    doubtful first, to `out` (default `<data_dir>/review/selected.jsonl`), one JSON object per line.
    Without `quotas`, the `budget` most doubtful clips whatever their language and class."""
    if budget < 1:
        raise ValueError(f"--budget must be at least 1, got {budget}")
    candidates = read_candidates(settings, split, exclude)
    if not len(candidates):
        raise ValueError(f"every {split} clip with audio has been reviewed: nothing left to select")
    doubt = doubt_scores(strategy, candidates, settings, seed, model)
    strata = [f"{r['lang']}/{decided_class(p, y)}" for r, p, y in zip(candidates.rows, candidates.probs, candidates.labels, strict=True)]
    picked = quota_pick(strata if quotas else ["all"] * len(strata), doubt, budget, seed)
    rows = [_batch_row(candidates, i, strategy, float(doubt[i]), strata[i]) for i in picked]
    path = out or batch_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Selection(rows, dict(Counter(strata[i] for i in picked)), len(candidates), path)


def _batch_row(candidates: Candidates, i: int, strategy: str, doubt: float, stratum: str) -> dict[str, object]:
    row = {k: v for k, v in candidates.rows[i].items() if k != "duration_s"}
    return row | {
        "labels": [c for c, on in zip(CLASSES, candidates.labels[i], strict=True) if on],
        "probs": {c: round(float(p), 4) for c, p in zip(CLASSES, candidates.probs[i], strict=True)},
        "strategy": strategy, "doubt": round(doubt, 6) if math.isfinite(doubt) else None, "stratum": stratum,
    }
