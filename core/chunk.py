"""Chunk: cut speech out of a recording with webrtcvad, DTX-style.

A DTX (discontinuous transmission) voice detector decides speech/non-speech per 10-30 ms frame,
opens a little before the first speech frame (start padding, so onsets are not clipped), stays
open for a while after the last one (hang-over, so word endings and short pauses survive), and
merges what is separated by short gaps. Regions shorter than the minimum are dropped and counted;
longer than the maximum are split at the quietest point, so a cut falls between words.

`decode_and_stage` (the ingest stage's and classify's decoding) runs the analysis block by block
while it decodes a recording into its staged file, so the two live side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webrtcvad

from voxtox.audio import SAMPLE_RATE, SampleStats, check_usable, open_audio
from voxtox.settings import VadSettings

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


class SpeechAnalyzer:
    """webrtcvad decisions per frame and signal power per 10 ms, fed block by block.

    Everything chunking needs is these two small arrays (about 100 values per second of audio),
    so a recording of any length is analysed in constant memory while it decodes. Blocks may
    have any length: partial frames are carried over to the next block.
    """

    def __init__(self, settings: VadSettings, hop_s: float = 0.01) -> None:
        self._vad = webrtcvad.Vad(settings.aggressiveness)
        self._frame_len = SAMPLE_RATE * settings.frame_ms // 1000
        self._hop = int(SAMPLE_RATE * hop_s)
        self._frame_carry = np.zeros(0, dtype="<i2")
        self._hop_carry = np.zeros(0, dtype=np.float32)
        self._flags: list[np.ndarray] = []
        self._power: list[np.ndarray] = []
        self.n_samples = 0

    def feed(self, block: np.ndarray) -> None:
        self.n_samples += len(block)
        finite = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = np.concatenate([self._frame_carry, (np.clip(finite, -1.0, 1.0) * 32767).astype("<i2")])
        whole = len(pcm) // self._frame_len * self._frame_len
        frames = pcm[:whole].reshape(-1, self._frame_len)
        self._flags.append(
            np.fromiter(
                (self._vad.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames), dtype=bool, count=len(frames)
            )
        )
        self._frame_carry = pcm[whole:]
        samples = np.concatenate([self._hop_carry, block])
        whole = len(samples) // self._hop * self._hop
        hops = samples[:whole].reshape(-1, self._hop).astype(np.float64)
        # float32 halves what a long recording keeps (100 values a second); the dB thresholds
        # chunking compares against need nowhere near float64's precision.
        self._power.append((hops**2).mean(axis=1).astype(np.float32))
        self._hop_carry = samples[whole:]

    def finish(self) -> SpeechAnalysis:
        """The decisions of every whole frame and the power of every whole hop fed so far."""
        return SpeechAnalysis(
            speech_frames=np.concatenate([np.zeros(0, bool), *self._flags]),
            power=np.concatenate([np.zeros(0, np.float32), *self._power]),
            n_samples=self.n_samples,
        )


@dataclass(frozen=True)
class SpeechAnalysis:
    """A recording as chunking sees it: VAD decisions per frame, power per 10 ms, its length."""

    speech_frames: np.ndarray  # bool per whole VAD frame (a shorter tail is ignored)
    power: np.ndarray  # mean squared amplitude per 10 ms hop
    n_samples: int

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE


def analyze_speech(samples: np.ndarray, settings: VadSettings) -> SpeechAnalysis:
    """The analysis of a whole recording held in memory."""
    analyzer = SpeechAnalyzer(settings)
    analyzer.feed(samples)
    return analyzer.finish()


def speech_frames(samples: np.ndarray, settings: VadSettings) -> np.ndarray:
    """webrtcvad's speech decision for each whole frame (the tail shorter than a frame is ignored)."""
    return analyze_speech(samples, settings).speech_frames


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a boolean array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def refine_end(speech: Span, power: np.ndarray, hop_s: float = 0.01) -> Span:
    """Undo webrtcvad's built-in hang-over: end the span where its energy fell away (`power`:
    the recording's power per hop; only the span's own hops are turned into dB)."""
    first, last = int(speech.start_s / hop_s), int(speech.end_s / hop_s)
    region = energy_db(power[first:last], smooth=False)
    if region.size == 0:
        return speech
    floor = region.max() - END_ENERGY_RANGE_DB
    tail_start = max(first, last - int(MAX_END_BACKOFF_S / hop_s))
    loud = np.flatnonzero(region[tail_start - first :] >= floor)
    end = float((tail_start + loud[-1] + 1) * hop_s if loud.size else tail_start * hop_s)
    return Span(speech.start_s, max(end, speech.start_s + hop_s))


def detect_speech(samples: np.ndarray, settings: VadSettings) -> list[SpeechChunk]:
    """Speech regions with padding and hang-over applied and short gaps merged (no length rules)."""
    return speech_regions(analyze_speech(samples, settings), settings)


def speech_regions(analysis: SpeechAnalysis, settings: VadSettings) -> list[SpeechChunk]:
    """`detect_speech` on an analysis made while decoding."""
    frame_s = settings.frame_ms / 1000
    regions: list[SpeechChunk] = []
    for first, last in _runs(analysis.speech_frames):
        speech = refine_end(Span(first * frame_s, last * frame_s), analysis.power)
        start = max(0.0, speech.start_s - settings.start_padding_ms / 1000)
        end = min(analysis.duration_s, speech.end_s + settings.hangover_ms / 1000)
        if regions and start - regions[-1].end_s <= settings.merge_gap_s:
            previous = regions.pop()
            regions.append(
                SpeechChunk(previous.start_s, end, previous.speech_start_s, speech.end_s)
            )
        else:
            regions.append(SpeechChunk(start, end, speech.start_s, speech.end_s))
    return regions


def energy_db(power: np.ndarray, smooth: bool = True, hop_s: float = 0.01) -> np.ndarray:
    """Power per hop in dB (float32), optionally smoothed over QUIET_WINDOW_S. Computed in place
    on one new array: two hours of audio are 720,000 hops, and every temporary counts."""
    power = np.asarray(power, dtype=np.float32)
    if smooth:
        width = max(1, int(QUIET_WINDOW_S / hop_s))
        decibels = np.convolve(power, np.full(width, 1 / width, np.float32), mode="same")
    else:
        decibels = power.copy()
    decibels += np.float32(1e-12)
    np.log10(decibels, out=decibels)
    decibels *= 10
    return decibels


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
    return chunk_analysis(analyze_speech(samples, settings), settings)


def chunk_analysis(analysis: SpeechAnalysis, settings: VadSettings) -> ChunkingResult:
    """`chunk_speech` on an analysis made while decoding (constant memory in recording length)."""
    energy = energy_db(analysis.power)
    chunks: list[SpeechChunk] = []
    dropped, dropped_s = 0, 0.0
    for region in speech_regions(analysis, settings):
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


# --- decoding into the staged file, analysing speech on the way ---------------------------------

#: Staged audio: raw little-endian float32 samples, 16 kHz mono (read back as a memory map).
STAGED_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class DecodedAudioStage:
    """What decoding a recording into its staged file learnt about it on the way."""

    original_rate: int
    channels: int
    codec: str
    analysis: SpeechAnalysis


def decode_and_stage(path: Path, staged: Path, vad: VadSettings) -> DecodedAudioStage:
    """Decode `path` block by block into `staged`, analysing speech on the way."""
    analyzer, stats = SpeechAnalyzer(vad), SampleStats()
    with open_audio(path) as reader, staged.open("wb") as out:
        for block in reader.blocks():
            out.write(block.astype(STAGED_DTYPE, copy=False).tobytes())
            analyzer.feed(block)
            stats.update(block)
    check_usable(stats, reader.declared_s)
    return DecodedAudioStage(reader.original_rate, reader.channels, reader.codec, analyzer.finish())
