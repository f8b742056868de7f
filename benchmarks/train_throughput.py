"""Training throughput for 15 s inputs: the padding-free encoder vs the same encoder fed 30 s of
padded input (what transformers' WhisperEncoder requires), in the same run.

    python benchmarks/train_throughput.py --encoder whisper-base --batch-size 8 --steps 3

Each variant trains in its own fresh process (so peak memory is its own): AdamW steps of the
classifier on random log-mel features, one warm-up step, then `--steps` timed. Prints samples/s
and peak memory (GPU: max allocated; CPU: the process's peak resident set).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from dataclasses import dataclass

import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from voxtox.labels import CLASSES
from voxtox.models.speech_classifier import SpeechToxicityClassifier
from voxtox.models.whisper_encoder import MAX_FRAMES, load_speech_encoder
from voxtox.settings import Settings
from voxtox.storage.model_store import resolve_model
from _common import in_fresh_process

CLIP_FRAMES = 1500  # 15 s


@dataclass
class Result:
    variant: str
    samples_per_s: float
    peak_mib: float


def measure(encoder_name: str, frames: int, batch_size: int, steps: int, threads: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = load_speech_encoder(resolve_model(encoder_name, Settings().model_cache_dir))
    model = SpeechToxicityClassifier(encoder, len(CLASSES), text_dim=512).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    features = torch.randn(batch_size, encoder.config.num_mel_bins, frames, device=device)
    lengths = torch.full((batch_size,), frames, device=device)
    targets = torch.zeros(batch_size, len(CLASSES), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            logits = model(features, lengths).logits
        binary_cross_entropy_with_logits(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return batch_size * steps / (time.perf_counter() - started), peak


def _child(queue: multiprocessing.Queue, *args: object) -> None:
    queue.put(measure(*args))  # type: ignore[arg-type]


def run_variant(variant: str, frames: int, args: argparse.Namespace) -> Result:
    samples_per_s, peak = in_fresh_process(_child, args.encoder, frames, args.batch_size, args.steps, args.threads)
    return Result(variant, samples_per_s, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="whisper-base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = [run_variant("padding-free 15 s", CLIP_FRAMES, args), run_variant("padded to 30 s", MAX_FRAMES, args)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    print(f"{args.encoder}, batch {args.batch_size}, {args.steps} timed steps, {device}")
    for result in results:
        print(f"{result.variant:>20}: {result.samples_per_s:7.2f} samples/s, peak {result.peak_mib:8.0f} MiB")
    print(f"speed-up: {results[0].samples_per_s / results[1].samples_per_s:.2f}x")


if __name__ == "__main__":
    main()
