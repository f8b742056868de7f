"""Speak text with espeak-ng and lay utterances out on a timeline with known boundaries.

The seed of `voxtox synth` (its own issue): here it makes the quick-start's input, the tests'
audio whose speech/silence layout is known, and the benchmark's voice-chat-like recordings.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from voxtox.audio import SAMPLE_RATE

#: espeak-ng voice names for voxtox's languages.
ESPEAK_VOICES = {"en": "en-us", "es": "es", "fr": "fr-fr", "de": "de", "pt": "pt-br"}
#: Voice variants give different speakers.
VARIANTS = ("m1", "m3", "f1", "f3", "m7", "f4")
#: Amplitude below which espeak's own leading/trailing output counts as silence.
SILENCE_LEVEL = 0.01


@dataclass(frozen=True)
class Utterance:
    text: str
    lang: str
    variant: str | None = None  # espeak-ng voice variant (m1..m7, f1..f5): another speaker
    words_per_minute: int = 130
    pitch: int = 50


@dataclass(frozen=True)
class PlacedUtterance:
    utterance: Utterance
    start_s: float  # where audible speech starts in the timeline
    end_s: float  # where it ends


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return path


def speak(utterance: Utterance) -> np.ndarray:
    """16 kHz mono float32 speech, trimmed to where it is audible."""
    voice = ESPEAK_VOICES[utterance.lang] + (f"+{utterance.variant}" if utterance.variant else "")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run(
            [require_espeak(), "-v", voice, "-s", str(utterance.words_per_minute),
             "-p", str(utterance.pitch), "-w", str(wav), utterance.text],
            check=True,
            capture_output=True,
        )
        samples, rate = soundfile.read(wav, dtype="float32")
    if rate != SAMPLE_RATE:
        samples = resample_poly(samples, SAMPLE_RATE, rate).astype(np.float32)
    return trim_silence(samples)


def trim_silence(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > SILENCE_LEVEL)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]


def lay_out(
    utterances: list[Utterance], pauses_s: list[float], lead_s: float = 0.5, tail_s: float = 0.5
) -> tuple[np.ndarray, list[PlacedUtterance]]:
    """Concatenate spoken utterances with the given pauses; returns audio and truth spans."""
    if len(pauses_s) != max(len(utterances) - 1, 0):
        raise ValueError("need exactly one pause between each pair of utterances")
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    placed = []
    cursor = lead_s
    for index, utterance in enumerate(utterances):
        speech = speak(utterance)
        placed.append(PlacedUtterance(utterance, cursor, cursor + len(speech) / SAMPLE_RATE))
        pieces.append(speech)
        cursor += len(speech) / SAMPLE_RATE
        pause = pauses_s[index] if index < len(pauses_s) else tail_s
        pieces.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        cursor += int(pause * SAMPLE_RATE) / SAMPLE_RATE
    return np.concatenate(pieces), placed
