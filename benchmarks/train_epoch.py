"""Where a CPU training epoch goes, and what the feature cache and the one-pass text step save.

    python benchmarks/train_epoch.py --data-dir data/repro/data --encoder whisper-tiny.en \
        --filter "clip_id < '4'" --batch-size 32 --epochs 2

Part 1, the phases of one epoch over the selected training clips on the decoding path, each
timed on its own in this process: reading each clip's row group from the shards, decoding the
FLAC, log-mel features, the training step (forward, backward, AdamW), and the no-grad forward
pass a text-injection step adds when its batch is split into micro-batches; then validation
(human-labelled val segments, 15 s windows).

Part 2, whole runs of `voxtox train` (`train_model`), each in a fresh process on the same clips,
`--epochs` epochs each: decoding every epoch (with 0 and 2 DataLoader workers) against the
feature cache (filled once before the first epoch, then read from memory), for the baseline
(α = 1) and for contrastive injection (α = 0.1) as one micro-batch (one forward pass) and as two
micro-batches of half the size (the same global batch: the cached-gradient path, two passes).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from voxtox.models.trainer import build_model, make_optimizer, start_processes
from voxtox.models.whisper_encoder import log_mel, mel_filters
from voxtox.settings import Settings, TrainSettings
from voxtox.storage.catalog import Catalog
from voxtox.storage.clips import read_audio_bytes, read_clip_index
from voxtox.tasks.train import ClipFeatures, bucketed_batches, pad_features, read_val_index, train_model, validate
from _common import in_fresh_process


def _settings(args: argparse.Namespace, **train: object) -> Settings:
    options = dict(encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size, grad_accum=1,
                   learning_rate=3e-4, threads=args.threads, num_workers=0, val_resamples=200,
                   train_filter=args.filter, val_filter=args.filter, checkpoint_every=10_000) | train
    return Settings(data_dir=args.data_dir, train=TrainSettings(**options))


def phases(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per phase of one epoch on the decoding path (Part 1)."""
    settings = _settings(args)
    torch.set_num_threads(args.threads)
    catalog = Catalog.from_settings(settings)
    clips = read_clip_index(catalog, "train", args.filter)
    model = build_model(settings.train, clips.text.shape[1], settings.model_cache_dir)
    optimizer = make_optimizer(model, settings.train)
    filters = mel_filters(model.encoder.config.num_mel_bins)
    batches = bucketed_batches(clips.durations, args.batch_size, 64, 0, 0)
    seconds = dict.fromkeys(["read from shards", "decode FLAC", "log-mel", "train step (fwd+bwd+AdamW)",
                             "text pre-pass (no-grad fwd)"], 0.0)
    for batch in batches:
        parts = []
        for i in batch:
            started = time.perf_counter()
            data = read_audio_bytes(clips.files[i], int(clips.rows[i]), clips.clip_ids[i])
            read = time.perf_counter()
            samples, _ = soundfile.read(io.BytesIO(data), dtype="float32")
            decoded = time.perf_counter()
            parts.append(log_mel(samples, filters))
            seconds["read from shards"] += read - started
            seconds["decode FLAC"] += decoded - read
            seconds["log-mel"] += time.perf_counter() - decoded
        padded = pad_features(parts, batch)
        labels = torch.from_numpy(clips.labels[batch])
        started = time.perf_counter()
        with torch.no_grad():
            model(padded.features, padded.frame_lengths)
        seconds["text pre-pass (no-grad fwd)"] += time.perf_counter() - started
        started = time.perf_counter()
        logits = model(padded.features, padded.frame_lengths).logits
        binary_cross_entropy_with_logits(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds["train step (fwd+bwd+AdamW)"] += time.perf_counter() - started
    val, _ = read_val_index(catalog, settings.train)
    started = time.perf_counter()
    dataset = ClipFeatures(val, model.encoder.config.num_mel_bins, max_frames=None)
    validate(model, val, dataset, 0, settings.train, start_processes())
    seconds["validation (decode + score)"] = time.perf_counter() - started
    seconds["clips"] = len(clips)
    seconds["speech minutes"] = float(clips.durations.sum()) / 60
    seconds["val segments"] = len(val)
    return seconds


@dataclass
class RunTimes:
    variant: str
    wall_s: float
    epoch_s: list[float]


def _run(queue: multiprocessing.Queue, args: argparse.Namespace, options: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = train_model(_settings(args, **options), Path(tmp) / "run")
        queue.put((time.perf_counter() - started, [row["epoch_s"] for row in report.history]))


def run_variant(name: str, args: argparse.Namespace, **options: object) -> RunTimes:
    wall, epochs = in_fresh_process(_run, args, options)
    return RunTimes(name, wall, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--encoder", default="whisper-tiny.en")
    parser.add_argument("--filter", default="TRUE", help="SQL on clips: which train and val clips (a subset keeps it short)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    part1 = phases(args)
    counts = {k: part1.pop(k) for k in ("clips", "speech minutes", "val segments")}
    print(f"Part 1: one epoch on the decoding path, {args.encoder}, batch {args.batch_size}, "
          f"{counts['clips']:.0f} clips ({counts['speech minutes']:.1f} min of speech), "
          f"validation on {counts['val segments']:.0f} segments, {args.threads} threads")
    baseline_epoch = sum(v for k, v in part1.items() if k != "text pre-pass (no-grad fwd)")
    for phase, value in part1.items():
        print(f"  {phase:<32} {value:8.1f} s  {100 * value / baseline_epoch:5.1f}% of a baseline epoch")

    half = max(1, args.batch_size // 2)
    variants = [
        run_variant("baseline, decode every epoch, 0 workers", args, alpha=1.0, feature_cache=False),
        run_variant("baseline, decode every epoch, 2 workers", args, alpha=1.0, feature_cache=False, num_workers=2),
        run_variant("baseline, feature cache", args, alpha=1.0),
        run_variant("contrastive, decode, 2 micro-batches (2 passes)", args, loss="contrastive", alpha=0.1,
                    feature_cache=False, batch_size=half, grad_accum=2),
        run_variant("contrastive, feature cache, 1 micro-batch (1 pass)", args, loss="contrastive", alpha=0.1),
    ]
    print(f"\nPart 2: whole runs ({args.epochs} epochs, each in a fresh process; epoch times include validation)")
    reference = variants[0]
    print(f"  {'variant':<52} {'wall s':>7} {'epochs s':>16} {'epoch 2+ vs first row':>22}")
    for result in variants:
        later = np.mean(result.epoch_s[1:] or result.epoch_s)
        ratio = np.mean(reference.epoch_s[1:] or reference.epoch_s) / later
        epochs = ", ".join(f"{e:.0f}" for e in result.epoch_s)
        print(f"  {result.variant:<52} {result.wall_s:7.0f} {epochs:>16} {ratio:21.2f}x")
    print(json.dumps({"part1": part1, "counts": counts, "part2": [vars(v) for v in variants]}))


if __name__ == "__main__":
    main()
