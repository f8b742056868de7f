"""Language per chunk: the pipeline's own-length guess against Whisper's padded 30 s input.

Before, voxtox encoded every chunk alone, padded to 30 s, to tell its language (and decoded it
from that pass). Now each chunk's language comes from an encoder pass over the chunk's own
length (a fraction of the cost), and only the doubtful ones (below LANGUAGE_CONFIDENCE) are
asked again, padded to RECHECK_PAD_S. This measures, on the same pieces, top-1 accuracy against
the spoken language (the language of most of the piece's speech) and time for:

- padded to 30 s, alone (the previous per-chunk detection);
- own length, alone;
- the pipeline's rule without `asr.language_weights` (own length; doubtful pieces asked again);
- the pipeline's rule (`decide_languages`: the same, with English's probability weighted by
  `asr.language_weights`, 0.3 by default, and a piece the weight would move asked again too).

Audio: benchmarks/asr_peers.py's recordings (code-switched en/es/de and English-only), built
by benchmarks/_audio.py; candidates are the pipeline's `asr.languages` (the five labeller
languages by default) or, with --any-language, every language Whisper knows.

    python benchmarks/language_id.py
    python benchmarks/language_id.py --minutes 9 --files 8 --any-language
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402
from asr_peers import VARIANTS  # noqa: E402

from voxtox.models.asr import candidate_languages, encode, language_probabilities, load_whisper, warm_up  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402
from voxtox.tasks.ingest import prepare_source  # noqa: E402
from voxtox.tasks.transcribe import (  # noqa: E402
    LANGUAGE_CONFIDENCE,
    RECHECK_PAD_S,
    PackedInput,
    Piece,
    decide_languages,
    identify_languages,
    plan_pieces,
)

HERE = Path(__file__).resolve().parent


def spoken_language(piece: Piece, utterances: list[dict]) -> str | None:
    """The language of most of the speech inside the piece."""
    overlap: Counter[str] = Counter()
    for line in utterances:
        seconds = min(piece.end_s, line["end_s"]) - max(piece.start_s, line["start_s"])
        if seconds > 0:
            overlap[line["lang"]] += seconds
    return overlap.most_common(1)[0][0] if overlap else None


def padded_probabilities(model, sources, pieces, candidates, batch_size) -> np.ndarray:  # noqa: ANN001
    scores = []
    for start in range(0, len(pieces), batch_size):
        audio = [PackedInput((p,)).audio(sources) for p in pieces[start : start + batch_size]]
        scores.append(language_probabilities(model, encode(model, audio), candidates))
    return np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=9.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--any-language", action="store_true", help="candidates: every language Whisper knows")
    parser.add_argument("--audio-dir", type=Path, default=HERE / ".cache" / "asr-peers")
    args = parser.parse_args()
    settings = Settings()
    if args.any_language:
        settings = settings.model_copy(update={"asr": settings.asr.model_copy(update={"languages": []})})
    asr = settings.asr
    model = load_whisper(resolve_model(asr.model, settings.model_cache_dir), asr.device, asr.compute_type, asr.cpu_threads)
    warm_up(model, asr)
    candidates = candidate_languages(model, asr)
    print(f"candidates: {', '.join(asr.languages) or f'all {len(candidates)}'}; doubtful below "
          f"{LANGUAGE_CONFIDENCE}, asked again padded to {RECHECK_PAD_S:g} s\n")
    print("| audio | pieces | padded to 30 s (before): right | s | own length: right | s | "
          "own length, doubtful asked again: right | s | the pipeline (and language weights): right | s | doubtful |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, recipe in VARIANTS.items():
        directory = args.audio_dir / f"{name}-{args.minutes:g}min-{args.files}"
        audio = build_audio(directory, args.minutes, args.files, recipe["seed"], recipe["langs"], recipe["other_share"])
        manifest = {f["name"]: f for f in json.loads((directory / "manifest.json").read_text())["files"]}
        with tempfile.TemporaryDirectory() as work:
            sources = [prepare_source(str(p), "test", settings, Path(work)) for p in audio.paths]
            pieces = plan_pieces(sources)
            truth = [spoken_language(p, manifest[Path(sources[p.source].uri).name]["utterances"]) for p in pieces]
            timed = {}
            started = time.perf_counter()
            padded = padded_probabilities(model, sources, pieces, candidates, asr.batch_size)
            timed["padded"] = time.perf_counter() - started
            started = time.perf_counter()
            own = identify_languages(model, sources, pieces, candidates, asr.batch_size)
            timed["own"] = time.perf_counter() - started
            started = time.perf_counter()
            unweighted = asr.model_copy(update={"language_weights": {}})
            rule = [language for language, _ in decide_languages(model, sources, pieces, unweighted)]
            timed["rule"] = time.perf_counter() - started
            started = time.perf_counter()
            decided = [language for language, _ in decide_languages(model, sources, pieces, asr)]
            timed["pipeline"] = time.perf_counter() - started

        def right(guesses: list[str]) -> str:
            return f"{np.mean([g == t for g, t in zip(guesses, truth, strict=True)]):.3f}"

        def top(scores: np.ndarray) -> list[str]:
            return [candidates[int(np.argmax(row))] for row in scores]

        print(f"| {name} | {len(pieces)} | {right(top(padded))} | {timed['padded']:.1f} | {right(top(own))} | "
              f"{timed['own']:.1f} | {right(rule)} | {timed['rule']:.1f} | {right(decided)} | {timed['pipeline']:.1f} | "
              f"{np.mean(own.max(axis=1) < LANGUAGE_CONFIDENCE):.0%} |", flush=True)


if __name__ == "__main__":
    main()
