"""Does Whisper need its 30 s input? Encoder on the chunk's own length vs padded to 30 s.

Voice-chat chunks are short (median about 5 s), and Whisper pads every input to 30 s, so most
of each encoder pass is spent on silence. CTranslate2 accepts shorter input; this checks what
that does to the transcripts. Same chunks (the pipeline's VAD chunks of espeak-ng voice chat
from benchmarks/_audio.py), same model, beam and language whitelist; batches sorted by length
for the short side, each batch padded to its longest chunk. Word and character error rates are
against the text espeak-ng spoke (utterances assigned to the chunk holding their midpoint).

    python benchmarks/asr_input_length.py --minutes 5 --files 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jiwer  # noqa: E402
import numpy as np  # noqa: E402
from faster_whisper.audio import pad_or_trim  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402

from voxtox.corpus.seed import LANGS  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.models import asr as whisper  # noqa: E402
from voxtox.tasks.transcribe import PackedInput, plan_pieces  # noqa: E402
from voxtox.tasks.ingest import prepare_source  # noqa: E402

HERE = Path(__file__).resolve().parent


def words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def transcribe(model, audio: list[np.ndarray], settings, full_length: bool) -> tuple[list[str], float]:  # noqa: ANN001
    order = np.arange(len(audio)) if full_length else np.argsort([len(a) for a in audio])
    texts: list[str] = [""] * len(audio)
    candidates = whisper.candidate_languages(model, settings)
    started = time.perf_counter()
    for begin in range(0, len(order), settings.batch_size):
        rows = order[begin : begin + settings.batch_size]
        features = [model.feature_extractor(audio[i])[..., :-1] for i in rows]
        frames = 3000 if full_length else min(3000, max(f.shape[-1] for f in features) + 1) // 2 * 2
        encoded = np.asarray(model.encode(np.stack([pad_or_trim(f, frames) for f in features])))
        scores = whisper.language_probabilities(model, encoded, candidates)
        languages = [(candidates[int(np.argmax(row))], float(row.max())) for row in scores]
        decoded = whisper.decode(model, encoded, [len(audio[i]) for i in rows], languages, settings, word_times=False)
        for i, segments in zip(rows, decoded, strict=True):
            texts[i] = " ".join(s.text for s in segments)
    return texts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "asr-input-length")
    args = parser.parse_args()
    bench = build_audio(args.audio_dir, args.minutes, args.files)
    settings = Settings()
    settings = settings.model_copy(update={"asr": settings.asr.model_copy(update={"languages": list(LANGS)})})
    model = whisper.load_whisper(resolve_model(settings.asr.model, settings.model_cache_dir), "cpu", "int8", 2)
    with tempfile.TemporaryDirectory() as work:
        sources = [prepare_source(str(p), "train", settings, Path(work)) for p in bench.paths]
        windows = plan_pieces(sources)  # one input per chunk (at most 30 s), no packing
        audio = [PackedInput((piece,)).audio(sources) for piece in windows]
    manifest = {f["name"]: f for f in json.loads((args.audio_dir / "manifest.json").read_text())["files"]}
    reference = []
    for window in windows:
        spoken = manifest[Path(sources[window.source].uri).name]["utterances"]
        reference.append(" ".join(u["text"] for u in spoken if window.start_s <= (u["start_s"] + u["end_s"]) / 2 <= window.end_s))
    truth = words(" ".join(reference))
    print(f"{len(windows)} chunks, median {np.median([len(a) for a in audio]) / 16000:.1f} s, {bench.duration_s / 60:.1f} min of audio\n")
    print("| encoder input | transcribe wall s | speed vs 30 s | WER | CER | words out (spoken) |")
    print("|---|---:|---:|---:|---:|---:|")
    baseline = None
    for label, full in (("padded to 30 s (Whisper, the pipeline)", True), ("the chunk's own length", False)):
        texts, seconds = transcribe(model, audio, settings.asr, full)
        baseline = baseline or seconds
        out = words(" ".join(texts))
        print(f"| {label} | {seconds:.1f} | {baseline / seconds:.2f}× | {jiwer.wer(truth, out):.3f} | "
              f"{jiwer.cer(truth, out):.3f} | {len(out.split())} ({len(truth.split())}) |")


if __name__ == "__main__":
    main()
