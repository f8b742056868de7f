"""Labelling throughput: seconds of audio per wall second for each pipeline stage and overall,
against a naive baseline in the same run (faster-whisper's plain `WhisperModel.transcribe()`
over each whole file, one file at a time; same model, compute type, threads and beam size).

The audio is deterministic voice-chat-like speech from espeak-ng (benchmarks/_audio.py), cached
in --audio-dir. Stages are the plain stage functions (not the Prefect flow, whose start-up would
dominate): ingest (decode + VAD), transcribe (batched ASR), label, embed, write, unit by unit
as the flow cuts them; after each unit the baseline transcribes the same files, so load from
other processes falls on both sides alike. Models are loaded and warmed once before any timing,
for both sides alike. Prints a Markdown table.

    python benchmarks/label_throughput.py                  # 10 min of audio, 10 files
    python benchmarks/label_throughput.py --minutes 2 --skip-baseline   # quick
"""

from __future__ import annotations

import os

# CTranslate2's int8 results depend on the OpenMP thread count (tests pin it too).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402
from _common import Timer  # noqa: E402

from voxtox.models.text_encoder import USEM3, load_text_encoder  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.lake import target_for  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.tasks.embed import embed_transcripts, resolve_text_encoder  # noqa: E402
from voxtox.tasks.ingest import PreparedSource, make_units, prepare_source  # noqa: E402
from voxtox.tasks.label import label_transcripts, load_labeller  # noqa: E402
from voxtox.models.asr import load_whisper, warm_up  # noqa: E402
from voxtox.tasks.transcribe import transcribe_sources  # noqa: E402
from voxtox.tasks.write import write_sources  # noqa: E402

HERE = Path(__file__).resolve().parent
STAGES = ("ingest", "transcribe", "label", "embed", "write")


def rate(audio_s: float, wall_s: float) -> str:
    return f"{audio_s / wall_s:.2f}" if wall_s > 0 else "inf"


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total audio (at least)")
    parser.add_argument("--files", type=int, default=None, help="default: one per minute")
    parser.add_argument("--beam-size", type=int, default=defaults.asr.beam_size)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "voicechat")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--labeller", default=None, help="checkpoint (default: the pipeline's default labeller)")
    parser.add_argument("--seed", type=int, default=0, help="audio seed")
    args = parser.parse_args()
    files = args.files or max(1, round(args.minutes))

    if args.work_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="voxtox-bench-")
        work_root = Path(scratch.name)
    else:
        work_root = args.work_dir
        work_root.mkdir(parents=True, exist_ok=True)
    settings = defaults.model_copy(
        update={
            "data_dir": work_root / f"data-{uuid.uuid4().hex[:8]}",
            "asr": defaults.asr.model_copy(update={"beam_size": args.beam_size}),
        }
    )
    asr = settings.asr

    cache = HERE / ".cache"  # generated audio; never committed
    cache.mkdir(exist_ok=True)
    if not (cache / ".gitignore").exists():
        (cache / ".gitignore").write_text("*\n")
    started = time.perf_counter()
    audio = build_audio(args.audio_dir, args.minutes, files, args.seed)
    print(f"audio: {len(audio.paths)} files in {args.audio_dir} ({time.perf_counter() - started:.1f} s)",
          file=sys.stderr)

    # Models: resolved, loaded and warmed once, outside every timing.
    load = Timer()
    with load:
        whisper_dir = resolve_model(asr.model, settings.model_cache_dir)
        model = load_whisper(whisper_dir, asr.device, asr.compute_type, asr.cpu_threads)
        labeller_dir = resolve_model(args.labeller or settings.labeller.model, settings.model_cache_dir)
        labeller = load_labeller(labeller_dir, settings.labeller.max_length, asr.cpu_threads)
        encoder_path = resolve_text_encoder(settings)
        encoder = load_text_encoder(
            settings.embedder.model if encoder_path == USEM3 else encoder_path,
            encoder_path,
            settings.embedder.prefix,
            settings.embedder.batch_size,
        )
        warm_up(model, asr)
        labeller.predict_proba(["good game everyone"])
        encoder.encode(["good game everyone"])
    print(f"models loaded and warmed in {load.wall:.1f} s (excluded)", file=sys.stderr)

    # --- the pipeline, stage by stage ------------------------------------------------------
    timers = {stage: Timer() for stage in STAGES}
    work = settings.work_dir / "bench"
    prepared: list[PreparedSource] = []
    with timers["ingest"]:
        for path in audio.paths:
            result = prepare_source(str(path), "train", settings, work)
            if not isinstance(result, PreparedSource):
                raise SystemExit(f"{path} was not prepared: {result}")
            prepared.append(result)
    units = make_units(prepared, settings.pipeline.unit_speech_s)
    n_clips = n_dropped = pipeline_chars = 0
    baseline = Timer()
    baseline_chars = baseline_segments = 0
    run_id = uuid.uuid4().hex
    load_before = os.getloadavg()[0]
    # Unit by unit, the pipeline's stages and then the baseline over the same files, so that
    # load from other processes on the machine falls on both sides alike.
    for index, unit in enumerate(units):
        print(f"unit {index + 1}/{len(units)}: {len(unit)} sources", file=sys.stderr)
        out_dir = work / f"unit-{index:04d}"
        with timers["transcribe"]:
            transcribed = transcribe_sources(unit, whisper_dir, settings, out_dir)
        with timers["label"]:
            labelled = label_transcripts(
                Path(transcribed.transcripts), labeller_dir, settings, out_dir / "labelled.parquet"
            )
        with timers["embed"]:
            embedded = embed_transcripts(labelled, encoder_path, settings, out_dir / "embedded.parquet")
        with timers["write"]:
            written = write_sources(
                unit, embedded, Path(transcribed.dropped), target_for(settings), asr.model, run_id
            )
        n_clips += written.n_clips
        n_dropped += transcribed.n_dropped
        pipeline_chars += sum(len(t) for t in pq.read_table(embedded)["transcript"].to_pylist())
        if args.skip_baseline:
            continue
        # The naive baseline: faster-whisper's own transcribe() over each whole file, default
        # options (no VAD filter, its own temperature fallback, conditioning on previous text).
        with baseline:
            for source in unit:
                segments, _info = model.transcribe(source.uri, beam_size=asr.beam_size)
                segments = list(segments)
                baseline_segments += len(segments)
                baseline_chars += sum(len(s.text.strip()) for s in segments)
        print(f"  so far: pipeline ASR {timers['transcribe'].wall:.1f} s, baseline "
              f"{baseline.wall:.1f} s", file=sys.stderr)

    duration = sum(p.duration_s for p in prepared)
    speech = sum(p.speech_s for p in prepared)
    n_chunks = sum(len(p.chunks) for p in prepared)

    # --- report ----------------------------------------------------------------------------
    total = Timer(sum(t.wall for t in timers.values()), sum(t.cpu for t in timers.values()))
    print()
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs "
          f"({len(os.sched_getaffinity(0))} usable); 1-min load average (this process included) "
          f"{load_before:.2f} before timing, {os.getloadavg()[0]:.2f} after; "
          f"Python {platform.python_version()}")
    print(f"- faster-whisper {version('faster-whisper')}, ctranslate2 {version('ctranslate2')}, "
          f"torch {version('torch')}; ASR: {asr.model} {asr.compute_type}, cpu_threads="
          f"{asr.cpu_threads}, beam_size={asr.beam_size}, batch_size={asr.batch_size}")
    print(f"- audio: {len(prepared)} files, {duration / 60:.2f} min; speech {audio.speech_s / duration:.1%} "
          f"as synthesised, {speech / duration:.1%} in {n_chunks} chunks found by the VAD "
          f"(with its padding and hang-over); {len(units)} transcription unit(s)")
    print(f"- models loaded and warmed before timing ({load.wall:.1f} s, excluded on both sides); "
          f"labeller {Path(labeller_dir).name}, text encoder {settings.embedder.model}")
    print(f"- pipeline: {n_clips} clips written ({n_dropped} segments dropped), "
          f"{pipeline_chars} transcript characters in clips")
    if not args.skip_baseline:
        print(f"- baseline: {baseline_segments} segments, {baseline_chars} transcript characters")
    print(f"- reference text spoken: {audio.reference_chars} characters")
    print()
    print("| stage | wall s | audio s / wall s | process CPU s |")
    print("| --- | ---: | ---: | ---: |")
    for stage in STAGES:
        t = timers[stage]
        print(f"| {stage} | {t.wall:.2f} | {rate(duration, t.wall)} | {t.cpu:.1f} |")
    print(f"| **pipeline (sum)** | **{total.wall:.2f}** | **{rate(duration, total.wall)}** | {total.cpu:.1f} |")
    if not args.skip_baseline:
        print(f"| baseline: `WhisperModel.transcribe()` per file | {baseline.wall:.2f} | "
              f"{rate(duration, baseline.wall)} | {baseline.cpu:.1f} |")
        ratio = baseline.wall / total.wall
        print()
        print(f"pipeline / baseline throughput: **{ratio:.2f}×** (target ≥ 2×: "
              f"{'met' if ratio >= 2 else 'NOT met'}); by process CPU seconds, which load from "
              f"other processes disturbs less: {baseline.cpu / total.cpu:.2f}×")


if __name__ == "__main__":
    main()
