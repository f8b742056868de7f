"""Inference throughput: the audio-only classifier against the ASR + text-labeller path it
replaces, on the same audio, in the same run; seconds of audio per wall second.

- ASR path (what labelling a recording costs without the audio-only model): the label
  pipeline's own stage functions, as `voxtox label` runs them minus embedding and writing:
  ingest (decode + webrtcvad chunking), faster-whisper transcription (tasks/transcribe.py; the
  pipeline's defaults: whisper-base int8, beam 5, per-chunk language detection, temperature
  fallback, hallucination filters) and the default text labeller (models/labeller.py).
- Audio-only path: `voxtox classify`'s code (models/classify.py: decode, 15 s windows, log-mel,
  Whisper encoder + projection + pooling + head, max over windows). The encoder is the default
  `voxtox train` encoder (whisper-base from the offline model store) with a freshly initialised
  projection and head: throughput does not depend on the trained weights. Also whisper-tiny.en's
  encoder, and on request the whisper-base classifier exported to ONNX and run with onnxruntime,
  in float32 and with onnxruntime's dynamic int8 quantisation (the ASR path runs Whisper in int8).
  The audio-only model scores either whole files or, as `voxtox classify` does by default, the
  VAD's speech segments (the same webrtcvad chunking the ASR path's ingest does).

The audio is benchmarks/_audio.py's voice-chat-like espeak-ng speech (the label-throughput
benchmark's). Files are processed in groups; each group goes through every path before the next
group starts, so load from other processes on the machine falls on all paths alike. Models are
loaded and warmed before any timing. 2 threads everywhere (CTranslate2, the labeller, torch,
onnxruntime).

    python benchmarks/inference.py                          # 10 min of audio, 10 files
    python benchmarks/inference.py --onnx --int8            # also onnxruntime fp32 and int8
    python benchmarks/inference.py --minutes 2 --no-tiny    # quick
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402
from _common import Timer  # noqa: E402

from voxtox.labels import CLASSES  # noqa: E402
from voxtox.models.asr import load_whisper, warm_up  # noqa: E402
from voxtox.models.speech_classifier import SpeechToxicityClassifier  # noqa: E402
from voxtox.models.whisper_encoder import load_speech_encoder  # noqa: E402
from voxtox.settings import Settings, VadSettings  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.models.classify import classify_inputs  # noqa: E402
from voxtox.tasks.ingest import PreparedSource, prepare_source  # noqa: E402
from voxtox.tasks.label import label_transcripts, load_labeller  # noqa: E402
from voxtox.tasks.transcribe import transcribe_sources  # noqa: E402

HERE = Path(__file__).resolve().parent
#: The projection's width: the default text embedder's (multilingual USE, 512).
TEXT_DIM = 512
THREADS = 2


def audio_only_model(encoder_name: str, cache: Path) -> SpeechToxicityClassifier:
    torch.manual_seed(0)
    encoder = load_speech_encoder(resolve_model(encoder_name, cache))
    return SpeechToxicityClassifier(encoder, len(CLASSES), TEXT_DIM).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total audio (at least)")
    parser.add_argument("--files", type=int, default=None, help="default: one per minute")
    parser.add_argument("--group", type=int, default=2, help="files per group (all paths run per group)")
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "voicechat")
    parser.add_argument("--seed", type=int, default=0, help="audio seed")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (audio-only)")
    parser.add_argument("--no-tiny", action="store_true", help="skip the whisper-tiny.en encoder")
    parser.add_argument("--onnx", action="store_true", help="also time the model exported to ONNX (fp32)")
    parser.add_argument("--int8", action="store_true", help="also time the int8-quantised ONNX model")
    args = parser.parse_args()
    files = args.files or max(1, round(args.minutes))
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore")

    scratch = tempfile.TemporaryDirectory(prefix="voxtox-bench-infer-")
    work = Path(scratch.name)
    defaults = Settings()
    settings = defaults.model_copy(update={"data_dir": work / "data"})
    asr = settings.asr
    (HERE / ".cache").mkdir(exist_ok=True)
    if not (HERE / ".cache" / ".gitignore").exists():
        (HERE / ".cache" / ".gitignore").write_text("*\n")
    audio = build_audio(args.audio_dir, args.minutes, files, args.seed)
    paths = [str(p) for p in audio.paths]
    print(f"audio: {len(paths)} files in {args.audio_dir}", file=sys.stderr)

    # --- models: loaded and warmed outside every timing ------------------------------------
    loading = time.perf_counter()
    cache = settings.model_cache_dir
    whisper_dir = resolve_model(asr.model, cache)
    whisper = load_whisper(whisper_dir, asr.device, asr.compute_type, asr.cpu_threads)
    labeller_dir = resolve_model(settings.labeller.model, cache)
    labeller = load_labeller(labeller_dir, settings.labeller.max_length, asr.cpu_threads)
    warm_up(whisper, asr)
    labeller.predict_proba(["good game everyone"])
    base = audio_only_model("whisper-base", cache)
    vad = settings.vad
    # (row name, model, VAD settings or None for whole files)
    paths_: list[tuple[str, torch.nn.Module, VadSettings | None]] = [
        ("whisper-base, PyTorch, whole file", base, None),
        ("whisper-base, PyTorch, VAD segments (classify's default)", base, vad),
    ]
    notes: list[str] = []
    if args.onnx or args.int8:
        from voxtox.models.export import ExportedClassifier, compare_outputs, export_model, quantize_onnx

        started = time.perf_counter()
        onnx_path = export_model(base, work / "base.onnx", metadata={"classes": list(CLASSES)})
        check = compare_outputs(base, onnx_path, shapes=[(2, 1500)])
        notes.append(f"ONNX export of the whisper-base classifier: {time.perf_counter() - started:.0f} s, "
                     f"{onnx_path.stat().st_size / 2**20:.0f} MiB, max abs diff vs PyTorch {check.max_abs_diff:.1e}")
        if args.onnx:
            paths_.append(("whisper-base, ONNX Runtime fp32, VAD segments", ExportedClassifier(onnx_path, THREADS), vad))
        if args.int8:
            int8_path = quantize_onnx(onnx_path, work / "base-int8.onnx")
            check = compare_outputs(base, int8_path, shapes=[(2, 1500), (3, 700)])
            notes.append(f"int8 ONNX (onnxruntime dynamic quantisation): {int8_path.stat().st_size / 2**20:.0f} MiB, "
                         f"max abs probability diff vs PyTorch fp32 {check.max_abs_diff:.1e} (random head)")
            paths_.append(("whisper-base, ONNX Runtime int8, VAD segments", ExportedClassifier(int8_path, THREADS), vad))
    if not args.no_tiny:
        try:
            paths_.append(("whisper-tiny.en, PyTorch, VAD segments", audio_only_model("whisper-tiny.en", cache), vad))
        except (ValueError, OSError) as error:  # e.g. int8 weights, which cannot be loaded for torch
            notes.append(f"whisper-tiny.en skipped: {error}")
    warm_file = work / "warm.wav"
    import soundfile

    soundfile.write(warm_file, np.sin(np.arange(16_000 * 20) / 7).astype(np.float32) * 0.3, 16_000)
    for _, model, _ in paths_:
        list(classify_inputs([str(warm_file)], model, batch_size=args.batch_size))
    print(f"models loaded and warmed in {time.perf_counter() - loading:.1f} s (excluded)", file=sys.stderr)

    # --- timing, group by group ------------------------------------------------------------
    asr_path = Timer()
    asr_parts = {"ingest (decode + VAD)": Timer(), "transcribe": Timer(), "label": Timer()}
    audio_only = {name: Timer() for name, _, _ in paths_}
    windows = dict.fromkeys(audio_only, 0)
    load_before = os.getloadavg()[0]
    n_clips = 0
    duration = 0.0
    for start in range(0, len(paths), args.group):
        group = paths[start : start + args.group]
        print(f"files {start + 1}-{start + len(group)} of {len(paths)}", file=sys.stderr)
        out_dir = work / f"group-{start:04d}"
        with asr_path:
            prepared: list[PreparedSource] = []
            with asr_parts["ingest (decode + VAD)"]:
                for path in group:
                    result = prepare_source(path, "train", settings, out_dir)
                    if not isinstance(result, PreparedSource):
                        raise SystemExit(f"{path} was not prepared: {result}")
                    prepared.append(result)
            with asr_parts["transcribe"]:
                transcribed = transcribe_sources(prepared, whisper_dir, settings, out_dir)
            with asr_parts["label"]:
                label_transcripts(Path(transcribed.transcripts), labeller_dir, settings, out_dir / "labelled.parquet")
        n_clips += transcribed.n_clips
        duration += sum(p.duration_s for p in prepared)
        for name, model, vad_settings in paths_:
            with audio_only[name]:
                results = list(classify_inputs(group, model, batch_size=args.batch_size, vad=vad_settings))
            assert all(r.status == "ok" for r in results), [r.reason for r in results if r.status != "ok"]
            windows[name] += sum(len(r.windows) for r in results)
        print(f"  so far: ASR path {asr_path.wall:.1f} s; "
              + "; ".join(f"{n} {t.wall:.1f} s" for n, t in audio_only.items()), file=sys.stderr)

    # --- report ----------------------------------------------------------------------------
    def rate(timer: Timer) -> str:
        return f"{duration / timer.wall:.1f}" if timer.wall > 0 else "inf"

    print()
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable); "
          f"1-min load average (this process included) {load_before:.2f} before timing, "
          f"{os.getloadavg()[0]:.2f} after; Python {platform.python_version()}")
    print(f"- torch {version('torch')}, onnxruntime {version('onnxruntime')}, faster-whisper "
          f"{version('faster-whisper')}, ctranslate2 {version('ctranslate2')}; {THREADS} threads everywhere")
    print(f"- audio: {len(paths)} files, {duration / 60:.2f} min, groups of {args.group} files; "
          f"audio-only: batch {args.batch_size}, windows of ≤ 15 s; ASR path: {n_clips} clips "
          f"transcribed and labelled ({asr.model} {asr.compute_type}, beam {asr.beam_size}; labeller "
          f"{Path(labeller_dir).name})")
    for note in notes:
        print(f"- {note}")
    print()
    print("| path | windows | wall s | audio s / wall s | process CPU s | throughput vs ASR path |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| ASR + text labeller (label pipeline stages) | - | {asr_path.wall:.1f} | {rate(asr_path)} | "
          f"{asr_path.cpu:.1f} | 1× |")
    for part, timer in asr_parts.items():
        print(f"| &nbsp;&nbsp;of which {part} | | {timer.wall:.1f} | {rate(timer)} | {timer.cpu:.1f} | |")
    for name, timer in audio_only.items():
        ratio = asr_path.wall / timer.wall
        print(f"| audio-only: {name} | {windows[name]} | {timer.wall:.1f} | {rate(timer)} | {timer.cpu:.1f} | "
              f"**{ratio:.1f}×** (CPU {asr_path.cpu / timer.cpu:.1f}×) |")
    print()
    for name, timer in audio_only.items():
        ratio = asr_path.wall / timer.wall
        print(f"- {name}: **{ratio:.1f}×** the ASR path's throughput (target ≥ 5×: "
              f"{'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
