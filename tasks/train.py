"""Train stage: the audio-only toxicity classifier with text injection, from the catalog's shards.

Data: DuckDB selects the rows (a SQL filter on the `clips` view) and where each lives (shard
file, row); the audio stays in the shards until a DataLoader worker process reads its row group,
decodes the FLAC and computes log-mel features, so the trainer never waits on decoding and
memory holds only the index. Micro-batches are bucketed by duration so padding stays small.

One optimizer step covers `world_size × grad_accum` micro-batches of `batch_size` clips, chosen
the same way whatever the world size (so 2 processes × 4 micro-batches equal 1 process × 8).
With text injection, the step first encodes its micro-batches without gradient to compute the
text loss over the whole step's batch (`text_loss_gradients`), then backpropagates each
micro-batch with the cached gradient: contrastive negatives span micro-batches and ranks.

Launch: one process (world size 1, no process group) or `torchrun` (any number of processes
and nodes; NCCL on GPUs, gloo on CPUs): the same code path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch
import torch.distributed as dist
from prefect import task
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits
from torch.utils.data import DataLoader, Dataset

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.metrics import MAP_NAME, evaluate_ap
from voxtox.models.speech_classifier import ClassifierOutput, SpeechToxicityClassifier
from voxtox.models.text_injection import (
    TextLoss,
    TextLossParams,
    gather_rows,
    make_text_loss,
    text_loss_gradients,
)
from voxtox.models.whisper_encoder import (
    HOP_LENGTH,
    MAX_FRAMES,
    SAMPLE_RATE,
    encoder_config_json,
    encoder_from_config_json,
    load_speech_encoder,
    log_mel,
    mel_filters,
)
from voxtox.settings import Settings, TrainSettings
from voxtox.storage.catalog import Catalog
from voxtox.storage.model_store import resolve_model
from voxtox.storage.schema import HAS_AUDIO, TRAINING_SOURCES_FILE, TRAINING_SOURCES_SCHEMA, label_column
from voxtox.storage.shards import shard_files, write_parquet_atomic
from voxtox.tasks.features import FEATURES_DIR, ComputeFeatures, FeatureCache

CHECKPOINTS = "checkpoints"
KEPT_CHECKPOINTS = 2


# --- data ------------------------------------------------------------------------------------


@dataclass
class ClipIndex:
    """Everything about a split's clips but their audio, and where each clip's audio is."""

    clip_ids: list[str]
    sources: list[str]  # each clip's source_sha256: the recordings a run learns from
    durations: np.ndarray  # (n,) seconds
    labels: np.ndarray  # (n, classes) float32 in {0, 1}
    text: np.ndarray  # (n, text_dim) float32
    files: list[str]
    rows: np.ndarray  # (n,) row number inside its file

    def __len__(self) -> int:
        return len(self.clip_ids)


def clips_files(shards_root: Path) -> list[str]:
    files = [str(path.resolve()) for path in shard_files(shards_root, "clips")]
    if not files:
        raise FileNotFoundError(f"no clips shards under {shards_root}: run `voxtox label` first")
    return files


def locate_clips(catalog: Catalog, files: list[str], chosen: str) -> pa.Table:
    """The rows of the SQL `chosen` (it selects `clip_id`) with the shard file and row that hold
    each clip's audio (`filename`, `file_row_number`), ordered by clip id."""
    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    return catalog.query(
        f"WITH chosen AS ({chosen}), located AS (SELECT clip_id, filename, file_row_number FROM "
        f"read_parquet({file_list}, filename = true, file_row_number = true, union_by_name = true)) "
        f"SELECT * FROM chosen JOIN located USING (clip_id) ORDER BY clip_id"
    )


def read_clip_index(catalog: Catalog, shards_root: Path, split: str, condition: str) -> ClipIndex:
    """Rows of `split` matching the SQL `condition` on the clips view, ordered by clip id."""
    files = clips_files(shards_root)
    labels = ", ".join(f"{label_column(c)}::FLOAT AS {label_column(c)}" for c in CLASSES)
    table = locate_clips(
        catalog, files,
        f"SELECT clip_id, source_sha256, duration_s, text_embedding, {labels} FROM clips "
        f"WHERE split = '{split}' AND {HAS_AUDIO} AND ({condition})",
    )
    if not table.num_rows:
        raise ValueError(f"no {split} clips match the filter {condition!r}")
    return ClipIndex(
        clip_ids=table["clip_id"].to_pylist(),
        sources=table["source_sha256"].to_pylist(),
        durations=table["duration_s"].to_numpy(),
        labels=np.stack([table[label_column(c)].to_numpy() for c in CLASSES], axis=1).astype(np.float32),
        text=np.asarray(table["text_embedding"].to_pylist(), dtype=np.float32),
        files=table["filename"].to_pylist(),
        rows=table["file_row_number"].to_numpy(),
    )


def read_val_index(catalog: Catalog, shards_root: Path, train: TrainSettings) -> tuple[ClipIndex, str]:
    """The clips that choose `best/` and the labels they are judged by ("human" or "pipeline").

    Human (the paper: "best performing model per experiment based on the validation set", whose
    labels are human): the split's evaluation segments (1-60 s) with their `segment_truth`
    labels, as `voxtox evaluate` measures test. Pipeline: every val clip with the labeller's
    labels. `auto` takes human labels where the catalog has them for the split, else pipeline.
    """
    from voxtox.tasks.evaluate import read_eval_set

    if train.val_labels != "pipeline":
        try:
            found = read_eval_set(catalog, shards_root, "val", "human", train.val_filter)
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
    return read_clip_index(catalog, shards_root, "val", train.val_filter), "pipeline"


class ShardChangedError(RuntimeError):
    """A shard was rewritten (voxtox forget, retention, compaction) after its rows were located."""


def _version(file: str) -> tuple[int, int]:
    """One version of a file: a rewrite (temporary file + rename) has another inode."""
    try:
        stat = os.stat(file)
    except FileNotFoundError as error:
        raise ShardChangedError(f"{file} is gone (erased or compacted since its clips were located): run again") from error
    return stat.st_ino, stat.st_mtime_ns


@lru_cache(maxsize=64)
def _row_group_starts(file: str, version: tuple[int, int]) -> np.ndarray:
    metadata = pq.ParquetFile(file).metadata
    return np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])


@lru_cache(maxsize=4)
def _audio_of_row_group(file: str, version: tuple[int, int], group: int) -> pa.Table:
    return pq.ParquetFile(file).read_row_group(group, columns=["clip_id", "audio"])


def read_audio_bytes(file: str, row: int, clip_id: str) -> bytes:
    """One clip's encoded audio; the row group read stays cached for its neighbours. The row
    must still hold `clip_id`: a shard rewritten since (its rows moved) is an error, never
    another clip's audio."""
    version = _version(file)
    starts = _row_group_starts(file, version)
    group = int(np.searchsorted(starts, row, side="right") - 1)
    rows = _audio_of_row_group(file, version, group) if row < starts[-1] else None
    if rows is None or rows["clip_id"][row - int(starts[group])].as_py() != clip_id:
        raise ShardChangedError(f"{file} row {row} no longer holds clip {clip_id} (the shard was rewritten): run again")
    audio = rows["audio"][row - int(starts[group])]
    if not audio.is_valid:
        raise ShardChangedError(f"clip {clip_id}: its audio was dropped (retention) after it was chosen: run again")
    return audio["bytes"].as_py()


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
    """Clips whose log-mel features are already in memory (tasks/features.py)."""

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


@dataclass
class Batch:
    indices: Tensor  # (batch,) rows of the ClipIndex; for windows, the clip each window belongs to
    features: Tensor  # (batch, n_mels, frames), right-padded with zeros
    frame_lengths: Tensor  # (batch,)


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


# --- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes() -> Processes:
    """Join torchrun's process group when launched by it; otherwise one process, no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Processes(0, 1, torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def reduce_sum(value: Tensor) -> Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- model, optimiser, schedule --------------------------------------------------------------


def build_model(train: TrainSettings, text_dim: int, cache_dir: Path) -> SpeechToxicityClassifier:
    encoder = load_speech_encoder(resolve_model(train.encoder, cache_dir))
    encoder.freeze(conv_frontend=train.freeze_conv, first_layers=train.freeze_layers)
    layer = train.layer if train.alpha < 1 else -1  # the baseline injects nothing
    return SpeechToxicityClassifier(encoder, len(CLASSES), text_dim, layer)


def make_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.AdamW:
    """AdamW; biases and norm gains are not decayed (as transformers' Trainer does)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.learning_rate, eps=train.adam_eps)


def warmup_then_linear_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


# --- one optimizer step ----------------------------------------------------------------------


@dataclass
class StepLosses:
    bce: float
    text: float
    total: float


@dataclass
class Trainer:
    model: SpeechToxicityClassifier
    wrapped: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    clips: ClipIndex
    text_loss: TextLoss
    alpha: float
    processes: Processes
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.processes.device.type, dtype=self.autocast_dtype)

    def step(self, micro_batches: list[Batch]) -> StepLosses:
        device = self.processes.device
        indices = torch.cat([b.indices for b in micro_batches])
        labels = torch.from_numpy(self.clips.labels[indices.numpy()]).to(device)
        text = torch.from_numpy(self.clips.text[indices.numpy()]).to(device)
        n_global = reduce_sum(torch.tensor(float(len(indices)), device=device))
        # One micro-batch in one process holds the whole step's batch: the text loss is taken on
        # its own forward pass, and the no-grad pass that caches the text loss's gradient for
        # several micro-batches (or ranks) would only repeat that forward pass.
        one_pass = self.alpha < 1 and len(micro_batches) == 1 and self.processes.world == 1
        text_value = float("nan")
        cached = None
        if self.alpha < 1 and not one_pass:
            with torch.no_grad(), self.autocast():
                x = torch.cat([self._forward(b).injected.float() for b in micro_batches])
            cached = text_loss_gradients(self.text_loss, x, text, labels)
        bce_sum = torch.zeros((), device=device)
        offset = 0
        for number, batch in enumerate(micro_batches):
            rows = slice(offset, offset + len(batch.indices))
            offset = rows.stop
            last = number == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.processes.world == 1 else self.wrapped.no_sync()
            with sync:
                with self.autocast():
                    output = self._forward(batch)
                bce = binary_cross_entropy_with_logits(output.logits.float(), labels[rows], reduction="none")
                bce = bce.mean(dim=1).sum() / n_global
                loss = self.alpha * bce
                if one_pass:
                    text_loss = self.text_loss(output.injected.float(), text, labels)
                    loss = loss + (1 - self.alpha) * text_loss
                    text_value = float(text_loss.detach())
                elif cached is not None:
                    loss = loss + (1 - self.alpha) * (output.injected.float() * cached.grad[rows]).sum()
                # DDP averages gradients over ranks; each rank's loss is its share of the sum.
                self.scaler.scale(loss * self.processes.world).backward()
            bce_sum += bce.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        bce_value = float(reduce_sum(bce_sum))
        if cached is not None:
            text_value = float(cached.loss)
        total = bce_value if self.alpha == 1 else self.alpha * bce_value + (1 - self.alpha) * text_value
        return StepLosses(bce_value, text_value, total)

    def _forward(self, batch: Batch) -> ClassifierOutput:
        device = self.processes.device
        return self.wrapped(batch.features.to(device, non_blocking=True), batch.frame_lengths.to(device))


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


# --- run directory and checkpoints -----------------------------------------------------------


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint so a resumed run continues exactly."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_map: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "bce": 0.0, "text": 0.0})
    epoch_started: float = field(default_factory=time.time)
    epoch_seconds: float = 0.0


def model_manifest(model: SpeechToxicityClassifier) -> dict[str, object]:
    return {
        "classes": list(CLASSES),
        "text_dim": model.projection.out_features,
        "inject_layer": model.inject_layer,
        "encoder_config": encoder_config_json(model.encoder),
    }


def save_model(model: SpeechToxicityClassifier, directory: Path, trainer_state: dict | None = None) -> None:
    """safetensors weights, the JSON to rebuild the module (`load_classifier`) and, for a
    checkpoint, the trainer's state; written beside the target, then renamed into place."""
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, staging / "model.safetensors")
    (staging / "model.json").write_text(json.dumps(model_manifest(model), indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, staging / "trainer.pt")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def load_classifier(directory: Path) -> SpeechToxicityClassifier:
    manifest = json.loads((directory / "model.json").read_text())
    encoder = encoder_from_config_json(manifest["encoder_config"])
    model = SpeechToxicityClassifier(encoder, len(manifest["classes"]), manifest["text_dim"], manifest["inject_layer"])
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model


def save_checkpoint(trainer: Trainer, state: TrainState, run_dir: Path) -> Path:
    """Model and trainer state in `checkpoints/step-N`, complete or absent (a kill leaves the
    previous checkpoint intact); the oldest beyond KEPT_CHECKPOINTS are removed."""
    target = run_dir / CHECKPOINTS / f"step-{state.global_step:08d}"
    trainer_state = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": asdict(state),
    }
    save_model(trainer.model, target, trainer_state)
    for old in sorted((run_dir / CHECKPOINTS).glob("step-*"))[:-KEPT_CHECKPOINTS]:
        shutil.rmtree(old)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in (run_dir / CHECKPOINTS).glob("step-*") if (p / "trainer.pt").exists())
    return found[-1] if found else None


def restore_checkpoint(trainer: Trainer, checkpoint: Path) -> TrainState:
    trainer.model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    saved = torch.load(checkpoint / "trainer.pt", map_location=trainer.processes.device, weights_only=True)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    state = TrainState(**saved["state"])
    state.epoch_started = time.time() - state.epoch_seconds
    return state


def write_training_sources(run_dir: Path, splits: dict[str, ClipIndex]) -> Path:
    """Which recordings the run learnt from (train) or chose its best checkpoint on (val), by
    content hash: a model cannot be un-trained, so `voxtox forget` lists the runs that saw a
    recording it erases."""
    rows = [
        {"source_sha256": sha, "split": split, "n_clips": n}
        for split, clips in splits.items()
        for sha, n in sorted(Counter(clips.sources).items())
    ]
    return write_parquet_atomic(pa.Table.from_pylist(rows, TRAINING_SOURCES_SCHEMA), run_dir / TRAINING_SOURCES_FILE)


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=2))
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


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


def _loader(dataset: Dataset[Clip], steps: list[list[list[int]]], workers: int) -> Iterator[list[Batch]]:
    """This rank's micro-batches, `accum` at a time per step (decoded in `workers` processes)."""
    flat = [batch for step in steps for batch in step]
    if not flat:
        return iter(())
    loader = iter(make_loader(dataset, flat, workers, collate_clips))
    return ([next(loader) for _ in step] for step in steps)


def _make_trainer(settings: Settings, train: TrainSettings, clips: ClipIndex, total_steps: int, processes: Processes) -> Trainer:
    torch.manual_seed(train.seed)
    model = build_model(train, clips.text.shape[1], settings.model_cache_dir).to(processes.device)
    wrapped: nn.Module = model
    if processes.world > 1:
        ids = [processes.device.index] if processes.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(model, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(total_steps, train.warmup_ratio))
    on_gpu = processes.device.type == "cuda"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[train.precision] if on_gpu else None
    params = TextLossParams(train.temperature, train.margin, train.proxy_alpha, train.proxy_beta, train.proxy_margin)
    return Trainer(
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(enabled=autocast == torch.float16),
        clips=clips,
        text_loss=make_text_loss(train.loss, params),
        alpha=train.alpha,
        processes=processes,
        autocast_dtype=autocast,
    )


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
    catalog = Catalog.from_settings(settings)
    clips = read_clip_index(catalog, settings.shards_dir, "train", train.train_filter)
    val_clips, val_labels = read_val_index(catalog, settings.shards_dir, train)
    steps_per_epoch = len(rank_micro_batches(
        bucketed_batches(clips.durations, train.batch_size, train.bucket_pool, train.seed, 0),
        processes.world, processes.rank, train.grad_accum,
    ))
    if not steps_per_epoch:
        raise ValueError(f"{len(clips)} training clips make no full step of {processes.world}×{train.grad_accum}×{train.batch_size}")
    trainer = _make_trainer(settings, train, clips, steps_per_epoch * train.epochs, processes)
    checkpoint = latest_checkpoint(out) if resume else None
    state = restore_checkpoint(trainer, checkpoint) if checkpoint else TrainState()
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config = {"train": train.model_dump(mode="json"), "data_dir": str(settings.data_dir),
                  "world_size": processes.world, "train_clips": len(clips),
                  "train_minutes": round(float(clips.durations.sum()) / 60, 2), "val_clips": len(val_clips),
                  "val_labels": val_labels, "steps_per_epoch": steps_per_epoch}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        write_training_sources(out, {"train": clips, "val": val_clips})
    if not processes.is_main:
        barrier()  # rank 0 fills the feature cache first; the others then read it
    datasets, workers = clip_datasets({"train": clips, "val": val_clips}, trainer.model.encoder.config.num_mel_bins,
                                      train, out)
    if processes.is_main:
        barrier()
    while state.epoch < train.epochs:
        batches = bucketed_batches(clips.durations, train.batch_size, train.bucket_pool, train.seed, state.epoch)
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
        val = validate(trainer.model, val_clips, datasets["val"], workers, train, processes)
        row = _epoch_row(state, len(steps), trainer.scheduler.get_last_lr()[0], val)
        state.history.append(row)
        score = selection_score(val)
        # With no defined score at all, the latest epoch is the best guess (and best/ = final/).
        if score > state.best_map or state.best_epoch < 0 or score == state.best_map == -math.inf:
            state.best_map, state.best_epoch = score, state.epoch + 1
            if processes.is_main:
                save_model(trainer.model, out / "best")
        state = TrainState(epoch=state.epoch + 1, global_step=state.global_step, best_map=state.best_map,
                           best_epoch=state.best_epoch, history=state.history)
        if processes.is_main:
            write_metrics(out, state.history)
            save_checkpoint(trainer, state, out)
        barrier()
    if processes.is_main:
        save_model(trainer.model, out / "final")
    barrier()
    return TrainReport(str(out), train.epochs, state.global_step, state.best_epoch, state.best_map,
                       state.history, round(time.time() - started, 2))


@task(name="train")
def train_task(out: str, settings: Settings, resume: bool = False) -> TrainReport:
    return train_model(settings, Path(out), resume)
