"""Deterministic voice-chat-like recordings for the throughput benchmark (espeak-ng).

Each file is a small lobby: 2-4 speakers (espeak-ng voice variant, rate, pitch, loudness), most
speaking the file's main language and some another of voxtox's five. Speakers take turns of 1-3
lines from the seed corpus's speech-evaluation families (sentences the labeller never trained
on); lines within a turn are 0.3-0.9 s apart, turns 2.5-8 s apart (uniform; in chat
silence between turns dominates). A faint noise floor stands in for a microphone's.
About 45 % of the audio is speech. Files are cached with a manifest; a changed recipe rebuilds.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from voxtox.audio import SAMPLE_RATE
from voxtox.corpus.seed import LANGS, family_split, generate_seed_corpus
from voxtox.corpus.speech_synth import VARIANTS, Utterance, lay_out, speak

#: Bump when the recipe changes, so cached audio is rebuilt.
RECIPE_VERSION = 2
INTRA_TURN_PAUSE_S = (0.3, 0.9)
INTER_TURN_PAUSE_S = (2.5, 8.0)
NOISE_RMS = 0.0015  # about -56 dBFS
#: Share of speakers who speak another language than their lobby's main one.
OTHER_SHARE = 0.25


@dataclass(frozen=True)
class Speaker:
    lang: str
    variant: str
    words_per_minute: int
    pitch: int
    gain: float


@dataclass(frozen=True)
class BenchmarkAudio:
    paths: list[Path]
    duration_s: float  # total
    speech_s: float  # total audible espeak speech (the truth the VAD is compared with)
    reference_chars: int  # characters of the text spoken


def _speakers(rng: random.Random, main_lang: str, langs: tuple[str, ...], other_share: float) -> list[Speaker]:
    others = [lang for lang in langs if lang != main_lang]
    return [
        Speaker(
            lang=main_lang if not others or rng.random() < 1 - other_share else rng.choice(others),
            variant=rng.choice(VARIANTS),
            words_per_minute=rng.randint(120, 170),
            pitch=rng.randint(35, 65),
            gain=rng.uniform(0.5, 1.0),
        )
        for _ in range(rng.randint(2, 4))
    ]


def _script(
    rng: random.Random,
    target_s: float,
    main_lang: str,
    lines: dict[str, list[str]],
    langs: tuple[str, ...],
    other_share: float,
) -> tuple[list[Utterance], list[float], list[float]]:
    """Utterances, the pauses between them and each one's gain, until `target_s` is filled."""
    speakers = _speakers(rng, main_lang, langs, other_share)
    utterances: list[Utterance] = []
    gains: list[float] = []
    pauses: list[float] = []
    total = 0.5  # lay_out's lead-in
    previous = None
    while total < target_s:
        candidates = [s for s in speakers if s is not previous] or speakers
        speaker = rng.choice(candidates)
        previous = speaker
        if utterances:
            pause = rng.uniform(*INTER_TURN_PAUSE_S)
            pauses.append(pause)
            total += pause
        for line in range(rng.choice((1, 1, 1, 2, 2, 3))):
            if line:
                pause = rng.uniform(*INTRA_TURN_PAUSE_S)
                pauses.append(pause)
                total += pause
            utterance = Utterance(
                rng.choice(lines[speaker.lang]),
                speaker.lang,
                speaker.variant,
                speaker.words_per_minute,
                speaker.pitch,
            )
            utterances.append(utterance)
            gains.append(speaker.gain)
            total += len(speak(utterance)) / SAMPLE_RATE
            if total >= target_s:
                break
    return utterances, pauses, gains


def _recipe(minutes: float, files: int, seed: int, langs: tuple[str, ...], other_share: float) -> dict:
    recipe = {"version": RECIPE_VERSION, "minutes": minutes, "files": files, "seed": seed}
    if (langs, other_share) != (LANGS, OTHER_SHARE):  # the default recipe keeps its old cache key
        recipe |= {"langs": list(langs), "other_share": other_share}
    return recipe


def build_audio(
    directory: Path,
    minutes: float,
    files: int,
    seed: int = 0,
    langs: tuple[str, ...] = LANGS,
    other_share: float = OTHER_SHARE,
) -> BenchmarkAudio:
    """`files` recordings of at least `minutes * 60 / files` seconds each, cached in `directory`.

    File i's main language is `langs[i % len(langs)]`; each speaker speaks another of `langs`
    with probability `other_share` (0: single-language chat)."""
    manifest_path = directory / "manifest.json"
    recipe = _recipe(minutes, files, seed, langs, other_share)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        paths = [directory / f["name"] for f in manifest.get("files", [])]
        if manifest.get("recipe") == recipe and all(p.exists() for p in paths):
            return _summary(directory, manifest)

    directory.mkdir(parents=True, exist_ok=True)
    corpus = generate_seed_corpus(seed=seed, per_family=20)
    evaluation = family_split(corpus, seed=seed)["speech_eval"]
    lines = {lang: sorted({s.text for s in evaluation if s.lang == lang}) for lang in LANGS}
    rng = random.Random(f"voxtox-benchmark:{seed}")
    noise = np.random.default_rng(seed)
    target_s = minutes * 60 / files
    entries = []
    for index in range(files):
        main_lang = langs[index % len(langs)]
        utterances, pauses, gains = _script(rng, target_s, main_lang, lines, langs, other_share)
        samples, placed = lay_out(utterances, pauses)
        for span, gain in zip(placed, gains, strict=True):
            first, last = int(span.start_s * SAMPLE_RATE), int(span.end_s * SAMPLE_RATE)
            samples[first:last] *= gain
        samples = samples + noise.normal(0.0, NOISE_RMS, len(samples)).astype(np.float32)
        name = f"voicechat-{index:02d}-{main_lang}.wav"
        soundfile.write(directory / name, np.clip(samples, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        entries.append(
            {
                "name": name,
                "duration_s": len(samples) / SAMPLE_RATE,
                "speech_s": sum(p.end_s - p.start_s for p in placed),
                "reference_chars": sum(len(u.text) for u in utterances),
                "utterances": [
                    {**asdict(p.utterance), "start_s": p.start_s, "end_s": p.end_s} for p in placed
                ],
            }
        )
    manifest = {"recipe": recipe, "files": entries}
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return _summary(directory, manifest)


def _summary(directory: Path, manifest: dict) -> BenchmarkAudio:
    files = manifest["files"]
    return BenchmarkAudio(
        paths=[directory / f["name"] for f in files],
        duration_s=sum(f["duration_s"] for f in files),
        speech_s=sum(f["speech_s"] for f in files),
        reference_chars=sum(f["reference_chars"] for f in files),
    )
