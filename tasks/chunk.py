"""Chunk: cut speech out of a recording with webrtcvad, DTX-style.

A DTX (discontinuous transmission) voice detector decides speech/non-speech per 10-30 ms frame,
opens a little before the first speech frame (start padding, so onsets are not clipped), stays
open for a while after the last one (hang-over, so word endings and short pauses survive), and
merges what is separated by short gaps. Regions shorter than the minimum are dropped and counted;
longer than the maximum are split at the quietest point, so a cut falls between words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from voxtox.settings import VadSettings
from voxtox.tasks.decode import SAMPLE_RATE

#: Energy is smoothed over this many seconds when looking for a quiet cut point.
QUIET_WINDOW_S = 0.1
#: Points within this many dB of the quietest count as equally quiet; the cut goes in the middle
#: of the longest such stretch, so a real pause wins over a short silence between words.
QUIET_TOLERANCE_DB = 3.0
#: webrtcvad keeps saying "speech" for ~80-150 ms after speech stops (its built-in hang-over);
#: the reported speech end is pulled back by up to this much to where the energy fell away.
MAX_END_BACKOFF_S = 0.25
#: ... to the last 10 ms that is within this many dB of the region's loudest.
END_ENERGY_RANGE_DB = 35.0


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SpeechChunk(Span):
    """A 1-60 s evaluation segment: padded cut points plus the detector's raw speech extent."""

    speech_start_s: float
    speech_end_s: float


@dataclass(frozen=True)
class ChunkingResult:
    chunks: list[SpeechChunk]
    dropped_short: int  # speech regions under the minimum length
    dropped_short_s: float


def speech_frames(samples: np.ndarray, settings: VadSettings) -> np.ndarray:
    """webrtcvad's speech decision for each whole frame (the tail shorter than a frame is ignored)."""
    vad = webrtcvad.Vad(settings.aggressiveness)
    frame_len = SAMPLE_RATE * settings.frame_ms // 1000
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    n_frames = len(pcm) // frame_len
    frames = pcm[: n_frames * frame_len].reshape(n_frames, frame_len)
    return np.fromiter(
        (vad.is_speech(frame.tobytes(), SAMPLE_RATE) for frame in frames),
        dtype=bool,
        count=n_frames,
    )


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def refine_end(speech: Span, energy_db: np.ndarray, hop_s: float = 0.01) -> Span:
    """Undo webrtcvad's built-in hang-over: end the span where its energy fell away."""
    first, last = int(speech.start_s / hop_s), int(speech.end_s / hop_s)
    region = energy_db[first:last]
    if region.size == 0:
        return speech
    floor = region.max() - END_ENERGY_RANGE_DB
    tail_start = max(first, last - int(MAX_END_BACKOFF_S / hop_s))
    loud = np.flatnonzero(energy_db[tail_start:last] >= floor)
    end = float((tail_start + loud[-1] + 1) * hop_s if loud.size else tail_start * hop_s)
    return Span(speech.start_s, max(end, speech.start_s + hop_s))


def detect_speech(
    samples: np.ndarray, settings: VadSettings, energy_db: np.ndarray | None = None
) -> list[SpeechChunk]:
    """Speech regions with padding and hang-over applied and short gaps merged (no length rules)."""
    frame_s = settings.frame_ms / 1000
    duration = len(samples) / SAMPLE_RATE
    energy = frame_energy_db(samples, smooth=False) if energy_db is None else energy_db
    regions: list[SpeechChunk] = []
    for first, last in _runs(speech_frames(samples, settings)):
        speech = refine_end(Span(first * frame_s, last * frame_s), energy)
        start = max(0.0, speech.start_s - settings.start_padding_ms / 1000)
        end = min(duration, speech.end_s + settings.hangover_ms / 1000)
        if regions and start - regions[-1].end_s <= settings.merge_gap_s:
            previous = regions.pop()
            regions.append(
                SpeechChunk(previous.start_s, end, previous.speech_start_s, speech.end_s)
            )
        else:
            regions.append(SpeechChunk(start, end, speech.start_s, speech.end_s))
    return regions


def frame_energy_db(samples: np.ndarray, hop_s: float = 0.01, smooth: bool = True) -> np.ndarray:
    """RMS energy in dB per `hop_s`; smoothed over QUIET_WINDOW_S for finding quiet cut points."""
    hop = int(SAMPLE_RATE * hop_s)
    n = len(samples) // hop
    power = (samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
    if smooth:
        width = max(1, int(QUIET_WINDOW_S / hop_s))
        power = np.convolve(power, np.ones(width) / width, mode="same")
    return 10 * np.log10(power + 1e-12)


def _middle_of_longest_quiet(energy_db: np.ndarray) -> int:
    quiet = energy_db <= energy_db.min() + QUIET_TOLERANCE_DB
    first, last = max(_runs(quiet), key=lambda run: run[1] - run[0])
    return (first + last) // 2


def split_at_quiet_points(
    span: Span, energy_db: np.ndarray, max_s: float, min_s: float, hop_s: float = 0.01
) -> list[Span]:
    """Cut a span into pieces of at most `max_s`, each cut at the quietest allowed point.

    Greedy from the left: the cut lies where the left piece is in [min_s, max_s] and the rest is
    at least min_s long, in the middle of the longest quietest stretch of that window.
    """
    pieces: list[Span] = []
    start, end = span.start_s, span.end_s
    while end - start > max_s:
        lo = start + min_s
        hi = min(start + max_s, end - min_s)
        lo_i, hi_i = int(lo / hop_s), max(int(lo / hop_s) + 1, int(hi / hop_s))
        window = energy_db[lo_i:hi_i]
        cut = (lo_i + _middle_of_longest_quiet(window)) * hop_s if window.size else hi
        pieces.append(Span(start, cut))
        start = cut
    pieces.append(Span(start, end))
    return pieces


def chunk_speech(samples: np.ndarray, settings: VadSettings) -> ChunkingResult:
    """Evaluation segments of `min_segment_s`..`max_segment_s` from a 16 kHz mono recording."""
    energy = frame_energy_db(samples)
    chunks: list[SpeechChunk] = []
    dropped, dropped_s = 0, 0.0
    for region in detect_speech(samples, settings, frame_energy_db(samples, smooth=False)):
        if region.duration_s < settings.min_segment_s:
            dropped += 1
            dropped_s += region.duration_s
            continue
        for piece in split_at_quiet_points(
            region, energy, settings.max_segment_s, settings.min_segment_s
        ):
            chunks.append(
                SpeechChunk(
                    piece.start_s,
                    piece.end_s,
                    max(piece.start_s, region.speech_start_s),
                    min(piece.end_s, region.speech_end_s),
                )
            )
    return ChunkingResult(chunks, dropped, dropped_s)
