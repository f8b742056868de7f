"""Train stage: the audio-only toxicity classifier with text injection, from the catalog's shards.

Data: DuckDB selects the rows (a SQL filter on the `clips` view) and where each lives (shard
file, row: storage/clips.py); the audio stays in the shards until a DataLoader worker process
reads its row group, decodes the FLAC and computes log-mel features, so the trainer never waits
on decoding and memory holds only the index. Micro-batches are bucketed by duration so padding
stays small. The model side (processes, optimiser and schedule, one optimizer step with text
injection, checkpoints) is models/trainer.py.

Launch: one process (world size 1, no process group) or `torchrun` (any number of processes
and nodes; NCCL on GPUs, gloo on CPUs): the same code path.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile
import torch
from prefect import task
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from voxtox.audio import SAMPLE_RATE
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.metrics import MAP_NAME, evaluate_ap
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.text_injection import gather_rows
from voxtox.models.trainer import (
    Batch,
    Processes,
    Trainer,
    TrainState,
    barrier,
    latest_checkpoint,
    make_trainer,
    restore_checkpoint,
    save_checkpoint,
    save_model,
    start_processes,
)
from voxtox.models.whisper_encoder import HOP_LENGTH, MAX_FRAMES, log_mel, mel_filters
from voxtox.settings import Settings, TrainSettings
from voxtox.storage.catalog import Catalog, LakeCatalog
from voxtox.storage.clips import ClipIndex, read_audio_bytes, read_clip_index
from voxtox.storage.schema import TRAINING_SOURCES_SCHEMA
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.storage.runs import RunDir
from voxtox.models.scoring import read_eval_set
from voxtox.models.features import FEATURES_DIR, ComputeFeatures, FeatureCache

#: `<runs_dir>/current`: a link to the promoted run (the nightly flow moves it).


# --- data ------------------------------------------------------------------------------------


def read_val_index(catalog: Catalog, train: TrainSettings) -> tuple[ClipIndex, str]:
    """The clips that choose `best/` and the labels they are judged by ("human" or "pipeline").

    Human (the paper: "best performing model per experiment based on the validation set", whose
    labels are human): the split's evaluation segments (1-60 s) with their `segment_truth`
    labels, as `voxtox evaluate` measures test. Pipeline: every val clip with the labeller's
    labels. `auto` takes human labels where the catalog has them for the split, else pipeline.
    """
    if train.val_labels != "pipeline":
        try:
            found = read_eval_set(catalog, "val", "human", train.val_filter)
        except ValueError:
            if train.val_labels == "human":
                raise
        else:
            index = ClipIndex(
                clip_ids=found.clip_ids, sources=found.sources.tolist(), durations=found.durations,
                labels=found.truth.astype(np.float32), text=np.zeros((len(found), 0), np.float32),
                files=found.files, rows=found.rows,
            )
            return index, "human"
    return read_clip_index(catalog, "val", train.val_filter), "pipeline"


@dataclass
class Clip:
    index: int
    features: Tensor  # (n_mels, frames)


class ClipFeatures(Dataset[Clip]):
    """Decodes a clip's FLAC and computes its log-mel features (in DataLoader workers)."""

    def __init__(self, clips: ClipIndex, n_mels: int, max_frames: int | None) -> None:
        self.clips = clips
        self.filters = mel_filters(n_mels)
        self.max_samples = None if max_frames is None else max_frames * HOP_LENGTH

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Clip:
        data = read_audio_bytes(self.clips.files[index], int(self.clips.rows[index]), self.clips.clip_ids[index])
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE or samples.ndim != 1:
            raise ValueError(f"clip {self.clips.clip_ids[index]}: expected 16 kHz mono, got {rate} Hz {samples.shape}")
        return Clip(index, log_mel(samples[: self.max_samples], self.filters))


class CachedClipFeatures(Dataset[Clip]):
    """Clips whose log-mel features are already in memory (models/features.py)."""

    def __init__(self, features: list[Tensor]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Clip:
        return Clip(index, self.features[index])


def decoded_features(clips: ClipIndex, n_mels: int, max_frames: int | None, workers: int) -> ComputeFeatures:
    """Computes the features of some of `clips` as ClipFeatures does (decoding in `workers` processes)."""

    def compute(indices: list[int]) -> list[Tensor]:
        dataset = ClipFeatures(clips, n_mels, max_frames)
        batches = [indices[start : start + 16] for start in range(0, len(indices), 16)]
        return [clip.features for batch in make_loader(dataset, batches, workers, list) for clip in batch]

    return compute


def clip_datasets(
    clips: dict[str, ClipIndex], n_mels: int, train: TrainSettings, run_dir: Path
) -> tuple[dict[str, Dataset[Clip]], int]:
    """Per split, the dataset training reads (training clips cut at 30 s, validation clips whole)
    and how many decoding workers to give it: with `feature_cache`, features in memory from the
    cache beside the run (computed once, then no decoding at all); without, decoded every epoch."""
    limits = {"train": MAX_FRAMES, "val": None}
    if not train.feature_cache:
        return {split: ClipFeatures(index, n_mels, limits[split]) for split, index in clips.items()}, train.num_workers
    cache = FeatureCache(train.feature_cache_dir or run_dir / FEATURES_DIR, n_mels)
    datasets: dict[str, Dataset[Clip]] = {
        split: CachedClipFeatures(cache.load(index, decoded_features(index, n_mels, limits[split], train.num_workers)))
        for split, index in clips.items()
    }
    return datasets, 0


def pad_features(parts: list[Tensor], indices: list[int]) -> Batch:
    lengths = torch.tensor([p.shape[1] for p in parts])
    features = torch.zeros(len(parts), parts[0].shape[0], int(lengths.max()))
    for row, part in enumerate(parts):
        features[row, :, : part.shape[1]] = part
    return Batch(torch.tensor(indices), features, lengths)


def collate_clips(clips: list[Clip]) -> Batch:
    return pad_features([c.features for c in clips], [c.index for c in clips])


def collate_windows(clips: list[Clip], window_frames: int) -> Batch:
    """Cut each clip into windows of at most `window_frames` (paper §4.1: 15 s windows, 15 s
    stride; a clip's score is the maximum over its windows)."""
    parts, owners = [], []
    for clip in clips:
        for start in range(0, clip.features.shape[1], window_frames):
            parts.append(clip.features[:, start : start + window_frames])
            owners.append(clip.index)
    return pad_features(parts, owners)


def window_collate(window_frames: int) -> Callable[[list[Clip]], Batch]:
    return partial(collate_windows, window_frames=window_frames)


def make_loader(
    dataset: Dataset[Clip], batches: list[list[int]], workers: int, collate: Callable[[list[Clip]], Batch]
) -> DataLoader:
    """Decoding in `workers` processes started by a fork server: forking the trainer itself
    would copy its threads (Prefect's API client, OpenMP pools) into the workers, which can
    make them die; the fork server is a clean process."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="forkserver" if workers else None,
    )


def bucketed_batches(durations: np.ndarray, batch_size: int, pool: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle, sort pools of `pool` micro-batches by duration, cut, shuffle the batches.

    Depends only on (data, batch_size, pool, seed, epoch): not on world size or accumulation.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(durations))
    batches: list[list[int]] = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start : start + batch_size * pool]
        chunk = chunk[np.argsort(durations[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def rank_micro_batches(batches: list[list[int]], world: int, rank: int, accum: int) -> list[list[list[int]]]:
    """Per optimizer step, this rank's `accum` micro-batches. A step takes `world × accum`
    consecutive micro-batches, rank r the r-th run of `accum`; an incomplete last step is dropped
    so every rank takes part in every step."""
    per_step = world * accum
    return [
        batches[start + rank * accum : start + (rank + 1) * accum]
        for start in range(0, len(batches) - per_step + 1, per_step)
    ]


# --- validation ------------------------------------------------------------------------------


@torch.no_grad()
def predict_scores(model: SpeechToxicityClassifier, loader: DataLoader, n_clips: int, device: torch.device) -> Tensor:
    """(n_clips, classes) probabilities, each the maximum over the clip's windows; rows of clips
    this rank did not score stay at -1."""
    model.eval()
    scores = torch.full((n_clips, len(CLASSES)), -1.0)
    for batch in loader:
        probs = model.predict_proba(batch.features.to(device), batch.frame_lengths.to(device)).float().cpu()
        scores.scatter_reduce_(0, batch.indices[:, None].expand_as(probs), probs, "amax")
    model.train()
    return scores


def validate(
    model: SpeechToxicityClassifier, clips: ClipIndex, dataset: Dataset[Clip], workers: int, train: TrainSettings,
    processes: Processes,
) -> dict[str, float]:
    """Per-class AP and mAP (the toxic classes) with bootstrap intervals (models/metrics.py);
    each rank scores every world-th clip and the scores are gathered."""
    mine = list(range(processes.rank, len(clips), processes.world))
    window = int(train.eval_window_s * SAMPLE_RATE / HOP_LENGTH)
    order = np.argsort(clips.durations[mine], kind="stable")
    batches = [[mine[i] for i in order[s : s + train.batch_size]] for s in range(0, len(mine), train.batch_size)]
    loader = make_loader(dataset, batches, workers, window_collate(window))
    local = predict_scores(model, loader, len(clips), processes.device)
    scored = torch.tensor(mine, dtype=torch.long)
    every = gather_rows(local[scored].to(processes.device)).cpu()
    every_index = gather_rows(scored.to(processes.device)).cpu()
    scores = torch.empty_like(local)
    scores[every_index] = every
    results = evaluate_ap(
        clips.labels, scores.numpy(), CLASSES, TOXIC_CLASSES, n_resamples=train.val_resamples, seed=train.seed
    )
    metrics = {f"val_ap_{name}": ci.point for name, ci in results.items() if name != MAP_NAME}
    ci = results[MAP_NAME]
    return metrics | {"val_mAP": ci.point, "val_mAP_low": ci.low, "val_mAP_high": ci.high}


def write_training_sources(run_dir: Path, splits: dict[str, ClipIndex]) -> Path:
    """Which recordings the run learnt from (train) or chose its best checkpoint on (val), by
    content hash: a model cannot be un-trained, so `voxtox forget` lists the runs that saw a
    recording it erases."""
    rows = [
        {"source_sha256": sha, "split": split, "n_clips": n}
        for split, clips in splits.items()
        for sha, n in sorted(Counter(clips.sources).items())
    ]
    return write_parquet_atomic(pa.Table.from_pylist(rows, TRAINING_SOURCES_SCHEMA), RunDir(run_dir).training_sources)


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=2))
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


@dataclass
class TrainingData:
    """What a run reads: its training and validation clips, and on a lake where they came from."""

    train: ClipIndex
    val: ClipIndex
    val_labels: str
    lake: dict[str, object] | None = None  # {"snapshot_id", "catalog", "data_url"}: config.json's record

    @property
    def snapshot(self) -> int | None:
        return None if self.lake is None else int(str(self.lake["snapshot_id"]))


def read_training_data(settings: Settings, train: TrainSettings, out: Path, resume: bool) -> TrainingData:
    """The run's clips. On a lake every read is pinned to one snapshot (training_snapshot), so
    the training and validation clips are one consistent state whatever workers commit meanwhile,
    and the run records it: `voxtox evaluate` and `voxtox train --snapshot` read it again."""
    catalog = Catalog.from_settings(settings)
    record = None
    if isinstance(catalog, LakeCatalog):
        catalog = catalog.pinned(training_snapshot(catalog, settings, out, resume))
        record = {"snapshot_id": catalog.snapshot, "catalog": catalog.target.catalog_name(),
                  "data_url": catalog.target.data_url}
    clips = read_clip_index(catalog, "train", train.train_filter)
    val_clips, val_labels = read_val_index(catalog, train)
    return TrainingData(clips, val_clips, val_labels, record)


def training_snapshot(catalog: LakeCatalog, settings: Settings, out: Path, resume: bool) -> int:
    """The lake snapshot a run reads: the one a resumed run recorded (a resumed run must not see
    other data than its first epochs did), else `[storage] snapshot` (`--snapshot N`), else the
    latest, as rank 0 sees it (every rank of a torchrun reads the same)."""
    recorded = RunDir(out).lake_snapshot() if resume else None
    asked = settings.storage.snapshot
    if recorded is not None and asked is not None and recorded != asked:
        raise ValueError(f"{out} trained on lake snapshot {recorded}: resume it on that one, not on snapshot {asked}")
    if recorded is not None or asked is not None:
        return recorded if recorded is not None else int(str(asked))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return catalog.current_snapshot()
    box = [catalog.current_snapshot() if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return int(str(box[0]))


# --- the run ---------------------------------------------------------------------------------


@dataclass
class TrainReport:
    run_dir: str
    epochs: int
    steps: int
    best_epoch: int
    best_val_mAP: float
    history: list[dict[str, float]]
    wall_s: float
    lake_snapshot: int | None = None  # the lake snapshot it read (None: the single-machine shards)


def _loader(dataset: Dataset[Clip], steps: list[list[list[int]]], workers: int) -> Iterator[list[Batch]]:
    """This rank's micro-batches, `accum` at a time per step (decoded in `workers` processes)."""
    flat = [batch for step in steps for batch in step]
    if not flat:
        return iter(())
    loader = iter(make_loader(dataset, flat, workers, collate_clips))
    return ([next(loader) for _ in step] for step in steps)


def _epoch_row(state: TrainState, steps: int, lr: float, val: dict[str, float]) -> dict[str, float]:
    means = {f"train_{k}": v / max(1, steps) for k, v in state.epoch_sums.items()}
    return {"epoch": state.epoch + 1, "step": state.global_step, "lr": lr, **means, **val,
            "epoch_s": round(time.time() - state.epoch_started, 2)}


def selection_score(val: dict[str, float]) -> float:
    """What picks `best/`: the validation mAP; where a toxic class has no positive in the
    validation split (mAP undefined; small splits), the mean AP of the toxic classes that have."""
    if math.isfinite(val["val_mAP"]):
        return val["val_mAP"]
    defined = [val[f"val_ap_{name}"] for name in TOXIC_CLASSES if math.isfinite(val.get(f"val_ap_{name}", math.nan))]
    return float(np.mean(defined)) if defined else -math.inf


def train_model(settings: Settings, out: Path, resume: bool = False) -> TrainReport:
    """Train per `settings.train`, writing the run directory `out`:
    config.json, metrics.json/.csv (per epoch), checkpoints/step-N (every `checkpoint_every`
    steps and at each epoch's end), best/ (best validation mAP) and final/ (last epoch)."""
    started = time.time()
    train = TrainSettings.model_validate(settings.train.model_dump())
    if train.threads:
        torch.set_num_threads(train.threads)
    processes = start_processes()
    data = read_training_data(settings, train, out, resume)
    clips, val_clips, val_labels = data.train, data.val, data.val_labels
    steps_per_epoch = len(rank_micro_batches(
        bucketed_batches(clips.durations, train.batch_size, train.bucket_pool, train.seed, 0),
        processes.world, processes.rank, train.grad_accum,
    ))
    if not steps_per_epoch:
        raise ValueError(f"{len(clips)} training clips make no full step of {processes.world}×{train.grad_accum}×{train.batch_size}")
    trainer = make_trainer(train, clips, settings.model_cache_dir, steps_per_epoch * train.epochs, processes)
    checkpoint = latest_checkpoint(out) if resume else None
    state = restore_checkpoint(trainer, checkpoint) if checkpoint else TrainState()
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config = {"train": train.model_dump(mode="json"), "data_dir": str(settings.data_dir),
                  "world_size": processes.world, "train_clips": len(clips),
                  "train_minutes": round(float(clips.durations.sum()) / 60, 2),
                  # labels people gave (`voxtox review import`) in place of the pipeline's
                  "train_human_labels": clips.n_reviewed, "val_clips": len(val_clips),
                  "val_labels": val_labels, "steps_per_epoch": steps_per_epoch, "lake": data.lake}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        write_training_sources(out, {"train": clips, "val": val_clips})
    if not processes.is_main:
        barrier()  # rank 0 fills the feature cache first; the others then read it
    datasets, workers = clip_datasets({"train": clips, "val": val_clips}, trainer.model.encoder.config.num_mel_bins,
                                      train, out)
    if processes.is_main:
        barrier()
    while state.epoch < train.epochs:
        state = _train_epoch(trainer, state, {"train": clips, "val": val_clips}, datasets, workers, train, out)
    if processes.is_main:
        save_model(trainer.model, RunDir(out).final)
    barrier()
    return TrainReport(str(out), train.epochs, state.global_step, state.best_epoch, state.best_map,
                       state.history, round(time.time() - started, 2), data.snapshot)


def _train_epoch(
    trainer: Trainer, state: TrainState, clips: dict[str, ClipIndex], datasets: dict[str, Dataset[Clip]],
    workers: int, train: TrainSettings, out: Path,
) -> TrainState:
    """The rest of `state`'s epoch (from its step), validation, best/ and the epoch's checkpoint;
    returns the state at the start of the next epoch."""
    processes = trainer.processes
    batches = bucketed_batches(clips["train"].durations, train.batch_size, train.bucket_pool, train.seed, state.epoch)
    steps = rank_micro_batches(batches, processes.world, processes.rank, train.grad_accum)
    for micro_batches in _loader(datasets["train"], steps[state.step_in_epoch :], workers):
        losses = trainer.step(micro_batches)
        state.global_step += 1
        state.step_in_epoch += 1
        for key, value in (("loss", losses.total), ("bce", losses.bce), ("text", losses.text)):
            state.epoch_sums[key] += value
        state.epoch_seconds = time.time() - state.epoch_started
        if state.global_step % train.checkpoint_every == 0 and processes.is_main:
            save_checkpoint(trainer, state, out)
    val = validate(trainer.model, clips["val"], datasets["val"], workers, train, processes)
    state.history.append(_epoch_row(state, len(steps), trainer.scheduler.get_last_lr()[0], val))
    score = selection_score(val)
    # With no defined score at all, the latest epoch is the best guess (and best/ = final/).
    if score > state.best_map or state.best_epoch < 0 or score == state.best_map == -math.inf:
        state.best_map, state.best_epoch = score, state.epoch + 1
        if processes.is_main:
            save_model(trainer.model, RunDir(out).best)
    state = TrainState(epoch=state.epoch + 1, global_step=state.global_step, best_map=state.best_map,
                       best_epoch=state.best_epoch, history=state.history)
    if processes.is_main:
        write_metrics(out, state.history)
        save_checkpoint(trainer, state, out)
    barrier()
    return state


@task(name="train")
def train_task(out: str, settings: Settings, resume: bool = False) -> TrainReport:
    return train_model(settings, Path(out), resume)
