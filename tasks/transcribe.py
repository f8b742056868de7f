"""Transcribe: batched faster-whisper ASR with the language decided per chunk.

faster-whisper's `BatchedInferencePipeline` packs a file's speech into 30 s inputs and batches
them, with one language per file. Voice chat switches language between speakers, and our
chunks come from many files, so this stage:

1. cuts the VAD chunks of each source to at most 30 s (*pieces*) and identifies each piece's
   language from an encoder pass over the piece alone, at its own length (a fraction of a 30 s
   pass; models/asr.py);
2. packs the pieces of one source and one language, in time order, into 30 s inputs (with a
   short silence between pieces), and encodes and decodes them in batches across sources, each
   with its language token. Consecutive speech of one language is decoded together, with its
   neighbours as context, and an input never mixes languages.

Word times (cross-attention alignment) map every word back to the piece, chunk and recording it
came from, and let a sentence longer than 15 s be cut between words instead of dropped.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from faster_whisper import WhisperModel
from faster_whisper.transcribe import get_compression_ratio
from prefect import task

from voxtox.models.asr import (
    MAX_INPUT_S,
    SENTENCE_END,
    AsrSegment,
    WordTiming,
    candidate_languages,
    decode,
    encode,
    encoded_frames,
    language_probabilities,
    load_whisper,
    with_words,
)
from voxtox.audio import SAMPLE_RATE
from voxtox.settings import AsrSettings, SentenceSettings, Settings
from voxtox.storage.model_store import ModelNotFoundError
from voxtox.storage.schema import REJECTS_SCHEMA, clips_schema
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.chunk import SpeechChunk, energy_db, split_at_quiet_points
from voxtox.tasks.ingest import PreparedSource

#: Silence between the pieces of a packed input: Whisper hears a pause between turns (they were
#: further apart in the recording), and a word timed a little early or late still falls in or
#: next to its own piece. The gap's word errors against none and 0.5 s: docs/benchmarks.md.
GAP_S = 1.0
#: A piece whose own-length language guess is less sure than this is asked again, padded to
#: RECHECK_PAD_S (closer to the 30 s inputs Whisper was trained on, a third of the cost); how
#: many pieces that asks again: docs/benchmarks.md.
LANGUAGE_CONFIDENCE = 0.7
RECHECK_PAD_S = 10.0
#: English's weight in a piece's language decision (`language_weights`): from one pass, a piece
#: goes to another listed language when that one holds at least 0.3 of English's probability.
#: Of the weights that tied on held-out chat, the milder one, which moves fewer short English
#: phrases away from English (the word errors of each weight: docs/benchmarks.md).
ENGLISH_WEIGHT = 0.3


@dataclass(frozen=True)
class DroppedSegment:
    segment: AsrSegment
    reason: str


def check_asr_model(model_dir: str, settings: AsrSettings) -> None:
    """Load the ASR model now, so a model that cannot be loaded fails the run in one line before
    any source is touched (instead of in every transcription task, after ingest)."""
    try:
        load_whisper(model_dir, settings.device, settings.compute_type, settings.cpu_threads)
    except (RuntimeError, ValueError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelNotFoundError(
            f"ASR model {model_dir} cannot be loaded: {reason} If its files were damaged, replace "
            "them (a voxtox cache entry can simply be deleted: it is rebuilt)."
        ) from error


def max_ngram_repeats(text: str, max_n: int = 4) -> int:
    """The longest run of one word n-gram (n = 1..max_n) repeated back to back.

    Whisper's looping hallucinations repeat a phrase consecutively ("thank you thank you ...");
    ordinary speech repeats function words, but not back to back many times.
    """
    words = re.findall(r"\w+", text.lower())
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for offset in range(n):
            grams = [tuple(words[i : i + n]) for i in range(offset, len(words) - n + 1, n)]
            run = 1
            for previous, current in zip(grams, grams[1:]):
                run = run + 1 if current == previous else 1
                best = max(best, run)
    return best


def hallucination_reason(segment: AsrSegment, settings: AsrSettings) -> str | None:
    """Why a segment is likely not real speech, or None to keep it."""
    if not segment.text:
        return "empty_transcript"
    if (
        segment.no_speech_prob > settings.no_speech_threshold
        and segment.avg_logprob < settings.log_prob_threshold
    ):
        return "no_speech"
    if segment.avg_logprob < settings.log_prob_threshold:
        return "low_logprob"
    if segment.compression_ratio > settings.compression_ratio_threshold:
        return "high_compression_ratio"
    if max_ngram_repeats(segment.text) > settings.max_ngram_repeats:
        return "repeated_ngram"
    if segment.end_s <= segment.start_s:
        return "zero_duration"
    return None


def filter_hallucinations(
    segments: list[AsrSegment], settings: AsrSettings
) -> tuple[list[AsrSegment], list[DroppedSegment]]:
    kept: list[AsrSegment] = []
    dropped: list[DroppedSegment] = []
    for segment in segments:
        reason = hallucination_reason(segment, settings)
        if reason is None:
            kept.append(segment)
        else:
            dropped.append(DroppedSegment(segment, reason))
    return kept, dropped


def merge_segments(segments: list[AsrSegment]) -> AsrSegment:
    """One segment spanning several, with duration-weighted ASR scores."""
    weights = np.array([max(s.end_s - s.start_s, 1e-3) for s in segments])
    text = " ".join(s.text for s in segments)
    languages = Counter()
    for s, w in zip(segments, weights, strict=True):
        languages[s.language] += float(w)
    language = languages.most_common(1)[0][0]
    return AsrSegment(
        start_s=segments[0].start_s,
        end_s=segments[-1].end_s,
        text=text,
        words=tuple(word for s in segments for word in s.words),
        avg_logprob=float(np.average([s.avg_logprob for s in segments], weights=weights)),
        no_speech_prob=max(s.no_speech_prob for s in segments),
        compression_ratio=get_compression_ratio(text),
        language=language,
        language_prob=float(
            np.average(
                [s.language_prob for s in segments if s.language == language],
                weights=[w for s, w in zip(segments, weights) if s.language == language],
            )
        ),
    )


def split_long_segment(segment: AsrSegment, max_s: float) -> list[AsrSegment]:
    """A segment longer than `max_s` cut between words into pieces of at most `max_s`: each cut
    at the longest pause among the allowed word boundaries, a sentence end counting as a pause
    of a second. Without word times (or with one word too long) it stays whole."""
    if segment.end_s - segment.start_s <= max_s or len(segment.words) < 2:
        return [segment]
    words = list(segment.words)
    pieces = []
    while words and words[-1].end_s - words[0].start_s > max_s:
        allowed = [i for i in range(len(words) - 1) if words[i].end_s - words[0].start_s <= max_s]
        if not allowed:
            return [segment]

        def pause(i: int) -> float:
            return words[i + 1].start_s - words[i].end_s + (1.0 if SENTENCE_END.search(words[i].text) else 0.0)

        cut = max(allowed, key=pause)
        pieces.append(with_words(segment, words[: cut + 1]))
        words = words[cut + 1 :]
    return pieces + [with_words(segment, words)]


def sentence_segments(
    segments: list[AsrSegment], settings: SentenceSettings
) -> tuple[list[AsrSegment], list[DroppedSegment]]:
    """Group consecutive ASR segments of one chunk into sentences of min_s..max_s seconds.

    A segment longer than max_s is first cut between its words (`split_long_segment`). A group
    closes at sentence-final punctuation once it is long enough, or before it would exceed
    max_s. A group still too short joins the previous sentence when that stays within max_s;
    otherwise it is dropped, as is a segment longer than max_s that has no word times.
    """
    sentences: list[AsrSegment] = []
    dropped: list[DroppedSegment] = []
    group: list[AsrSegment] = []

    def close() -> None:
        if not group:
            return
        merged = merge_segments(group)
        duration = merged.end_s - merged.start_s
        if duration > settings.max_s:
            dropped.append(DroppedSegment(merged, "sentence_too_long"))
        elif duration >= settings.min_s:
            sentences.append(merged)
        elif sentences and merged.end_s - sentences[-1].start_s <= settings.max_s:
            sentences[-1] = merge_segments([sentences[-1], merged])
        else:
            dropped.append(DroppedSegment(merged, "sentence_too_short"))
        group.clear()

    for segment in (piece for whole in segments for piece in split_long_segment(whole, settings.max_s)):
        if group and segment.end_s - group[0].start_s > settings.max_s:
            close()
        group.append(segment)
        if SENTENCE_END.search(segment.text) and group[-1].end_s - group[0].start_s >= settings.min_s:
            close()
    close()
    return sentences, dropped


# --- Packing chunks into Whisper inputs ---------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A stretch of one VAD chunk (at most 30 s): the unit that is given a language."""

    source: int
    chunk: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class PackedInput:
    """Pieces whose audio, concatenated in order with GAP_S of silence between them, is one
    Whisper input."""

    pieces: tuple[Piece, ...]

    @property
    def offsets(self) -> list[float]:
        """Where each piece starts in the input."""
        return list(np.cumsum([0.0] + [p.duration_s + GAP_S for p in self.pieces[:-1]]))

    @property
    def duration_s(self) -> float:
        return self.offsets[-1] + self.pieces[-1].duration_s

    def audio(self, sources: list[PreparedSource]) -> np.ndarray:
        gap = np.zeros(int(round(GAP_S * SAMPLE_RATE)), np.float32)
        parts = []
        for piece in self.pieces:
            samples = sources[piece.source].samples()
            parts += [gap, np.asarray(samples[int(piece.start_s * SAMPLE_RATE) : int(piece.end_s * SAMPLE_RATE)])]
        return np.concatenate(parts[1:])


def plan_pieces(sources: list[PreparedSource]) -> list[Piece]:
    """Every chunk of every source, cut at quiet points into pieces of at most 30 s."""
    pieces = []
    for s_index, source in enumerate(sources):
        energy = energy_db(source.power())
        for c_index, chunk in enumerate(source.chunks):
            for span in split_at_quiet_points(chunk, energy, MAX_INPUT_S, min_s=1.0):
                pieces.append(Piece(s_index, c_index, span.start_s, span.end_s))
    return pieces


def pack(pieces: list[Piece], languages: list[str] | None = None) -> list[PackedInput]:
    """Pack pieces of one language (when given) into inputs of at most 30 s, greedily, in the
    order given (sources one after another, each in time order).

    Recordings share inputs: a unit's speech fills its 30 s inputs instead of leaving each
    recording's last one half empty (faster-whisper's pipeline packs one file at a time); words
    are mapped back by time.
    """
    groups: dict[str, list[Piece]] = defaultdict(list)
    for index, piece in enumerate(pieces):
        groups[languages[index] if languages else ""].append(piece)
    inputs = []
    for group in groups.values():
        current: list[Piece] = []
        for piece in group:
            if current and PackedInput((*current, piece)).duration_s > MAX_INPUT_S:
                inputs.append(PackedInput(tuple(current)))
                current = []
            current.append(piece)
        inputs.append(PackedInput(tuple(current)))
    return inputs


def identify_languages(
    model: WhisperModel,
    sources: list[PreparedSource],
    pieces: list[Piece],
    candidates: list[str],
    batch_size: int,
    pad_to_s: float = 0.0,
) -> np.ndarray:
    """P(language) over `candidates` for each piece, from an encoder pass over the piece alone at
    its own length, or padded to `pad_to_s` (pieces batched by length): never from an input
    shared with another speaker, whose language would leak into the guess."""
    scores = np.zeros((len(pieces), len(candidates)))
    order = sorted(range(len(pieces)), key=lambda i: pieces[i].duration_s)
    for batch in _batches(order, batch_size):
        audio = [PackedInput((pieces[i],)).audio(sources) for i in batch]
        encoded = encode(model, audio, pad_to_s)
        frames = [encoded.shape[1]] * len(batch) if pad_to_s else [encoded_frames(model, len(a)) for a in audio]
        scores[batch] = language_probabilities(model, encoded, candidates, frames)
    return scores


def language_scores(
    model: WhisperModel, sources: list[PreparedSource], pieces: list[Piece], settings: AsrSettings
) -> tuple[list[str], np.ndarray]:
    """The candidate languages and P(language) over them for each piece: the own-length guess,
    and for a doubtful piece (`doubtful_pieces`) that guess times a second one from the piece
    padded to RECHECK_PAD_S, as independent evidence; `asr.language_weights` applied to each
    guess (`weigh_languages`: each pass leans to English on its own). A forced language (or an
    English-only model) is the only candidate."""
    if settings.language or not model.model.is_multilingual:
        return [settings.language or "en"], np.ones((len(pieces), 1))
    candidates = candidate_languages(model, settings)
    weights = language_weights(settings)
    scores = identify_languages(model, sources, pieces, candidates, settings.batch_size)
    doubtful = np.flatnonzero(doubtful_pieces(scores, candidates, weights))
    scores = weigh_languages(scores, candidates, weights)
    if doubtful.size:
        again = identify_languages(
            model, sources, [pieces[i] for i in doubtful], candidates, settings.batch_size, RECHECK_PAD_S
        )
        joint = scores[doubtful] * weigh_languages(again, candidates, weights)
        scores[doubtful] = joint / joint.sum(axis=1, keepdims=True)
    return candidates, scores


def doubtful_pieces(scores: np.ndarray, candidates: list[str], weights: dict[str, float]) -> np.ndarray:
    """Which pieces' own-length guesses need the padded recheck: those less sure than
    LANGUAGE_CONFIDENCE, and those whose language the weights would change. A weight may take a
    piece from English only with the recheck's evidence too: a short English "good game
    everyone" came out 0.72 English, 0.26 Spanish from its own length (Spanish once weighted)
    and 0.94 English padded."""
    unsure = scores.max(axis=1) < LANGUAGE_CONFIDENCE
    moved = weigh_languages(scores, candidates, weights).argmax(axis=1) != scores.argmax(axis=1)
    return unsure | moved


def language_weights(settings: AsrSettings) -> dict[str, float]:
    """`asr.language_weights`, or when unset: English weighted by ENGLISH_WEIGHT among listed
    `asr.languages`, and no weights when every language is a candidate.

    Why English: Whisper learnt its language token from data about two thirds English, and on
    a short turn in another language its guess leans to English (German turns in English
    lobbies came out `en` from their own-length pass), and a turn decoded with the wrong language
    token is lost. Why only among listed languages: with all of Whisper's languages as
    candidates, the probability taken from English goes to languages close to it rather than to
    the one spoken, and English-only chat got worse (docs/benchmarks.md)."""
    if settings.language_weights is not None:
        return settings.language_weights
    return {"en": ENGLISH_WEIGHT} if settings.languages else {}


def weigh_languages(scores: np.ndarray, candidates: list[str], weights: dict[str, float]) -> np.ndarray:
    """P(language) per piece with each language's probability multiplied by its weight (1 when
    not named), renormalised: a correction of the language head's prior (`language_weights`)."""
    factors = np.array([weights.get(language, 1.0) for language in candidates])
    weighted = scores * factors
    return weighted / weighted.sum(axis=1, keepdims=True)


def decide_languages(
    model: WhisperModel, sources: list[PreparedSource], pieces: list[Piece], settings: AsrSettings
) -> list[tuple[str, float]]:
    """Each piece's most probable language and its probability (`language_scores`)."""
    candidates, scores = language_scores(model, sources, pieces, settings)
    return [(candidates[int(np.argmax(row))], float(row.max())) for row in scores]


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def transcribe_all(
    model: WhisperModel,
    sources: list[PreparedSource],
    settings: AsrSettings,
) -> dict[tuple[int, int], list[AsrSegment]]:
    """ASR segments (times from the source's start) per (source, chunk): every piece's language
    decided, the pieces packed per language into 30 s inputs, the inputs encoded and decoded in
    batches across sources, each with its language token; with `asr.second_language_below`
    set, the pieces whose text came out improbable decoded again in another language
    (`second_opinions`)."""
    pieces = plan_pieces(sources)
    candidates, scores = language_scores(model, sources, pieces, settings)
    ranked = [[(candidates[j], float(row[j])) for j in np.argsort(-row)] for row in scores]
    found = decode_pieces(model, sources, pieces, [r[0] for r in ranked], settings)
    found |= second_opinions(model, sources, pieces, ranked, found, settings)
    by_chunk: dict[tuple[int, int], list[AsrSegment]] = defaultdict(list)
    for piece, segments in found.items():
        by_chunk[(piece.source, piece.chunk)] += segments
    return {key: sorted(segments, key=lambda s: s.start_s) for key, segments in by_chunk.items()}


def decode_pieces(
    model: WhisperModel,
    sources: list[PreparedSource],
    pieces: list[Piece],
    languages: list[tuple[str, float]],
    settings: AsrSettings,
) -> dict[Piece, list[AsrSegment]]:
    """Each piece's segments (recording time), the pieces packed per language into shared 30 s
    inputs and decoded in batches, each input with its pieces' language."""
    language_of = dict(zip(pieces, languages, strict=True))
    found: dict[Piece, list[AsrSegment]] = {piece: [] for piece in pieces}
    for batch in _batches(pack(pieces, [language for language, _ in languages]), settings.batch_size):
        audio = [packed.audio(sources) for packed in batch]
        input_languages = [_input_language(packed, language_of) for packed in batch]
        decoded = decode(model, encode(model, audio), [len(a) for a in audio], input_languages, settings, settings.word_timestamps)
        for packed, segments in zip(batch, decoded, strict=True):
            for piece, segment in to_pieces(packed, segments):
                found[piece].append(segment)
    return found


def words_logprob(segments: list[AsrSegment]) -> float:
    """Mean log-probability of a piece's text, its segments weighted by their words; -inf
    for no text."""
    weights = [max(len(s.words), 1) for s in segments if s.text]
    if not weights:
        return float("-inf")
    return float(np.average([s.avg_logprob for s in segments if s.text], weights=weights))


def runner_up(ranked: list[tuple[str, float]]) -> tuple[str, float] | None:
    """The language a piece is decoded in for a second opinion: the most probable one after
    the first guess, but never English for a piece first guessed in another language. Whisper
    was trained to translate any language into English, so an English decoding of, say,
    Spanish speech is a fluent translation whose high probability says nothing about the
    language spoken (on held-out code-switched chat, allowing it replaced real turns with
    English sentences that were never said)."""
    first = ranked[0][0]
    return next(((lang, p) for lang, p in ranked[1:] if first == "en" or lang != "en"), None)


def second_opinions(
    model: WhisperModel,
    sources: list[PreparedSource],
    pieces: list[Piece],
    ranked: list[list[tuple[str, float]]],
    found: dict[Piece, list[AsrSegment]],
    settings: AsrSettings,
) -> dict[Piece, list[AsrSegment]]:
    """Pieces whose text is improbable (below `second_language_below`) decoded again in their
    `runner_up` language; the new text replaces the first where the decoder finds it more
    probable.

    Why: on a short turn the acoustic language guess can be confidently wrong (German turns in
    English lobbies came out `en` at 0.86-0.97), and a turn decoded with the wrong language
    token comes out garbled, with a low probability; the decoder's likelihood under another
    language is the evidence the guess lacked. Only improbable pieces pay for a second decode.
    """
    threshold = settings.second_language_below
    if threshold is None:
        return {}
    retry = [
        (piece, alternative)
        for piece, row in zip(pieces, ranked, strict=True)
        if found[piece] and words_logprob(found[piece]) < threshold and (alternative := runner_up(row))
    ]
    if not retry:
        return {}
    # One beam search per input, without the temperature fallback: the text in the first
    # language already failed, and a second opinion that needs sampling to pass is no better.
    probe = settings.model_copy(update={"fallback_temperatures": []})
    again = decode_pieces(model, sources, [p for p, _ in retry], [a for _, a in retry], probe)
    return {piece: again[piece] for piece, _ in retry if words_logprob(again[piece]) > words_logprob(found[piece])}


def _input_language(packed: PackedInput, language_of: dict[Piece, tuple[str, float]]) -> tuple[str, float]:
    """The language of an input's pieces (one, by construction) and their mean probability."""
    languages = [language_of[piece] for piece in packed.pieces]
    return languages[0][0], float(np.mean([probability for _, probability in languages]))


# --- Mapping segments back to recordings ---------------------------------------------------


def to_pieces(packed: PackedInput, segments: list[AsrSegment]) -> list[tuple[Piece, AsrSegment]]:
    """Each segment of an input, in its recording's time, cut where its words cross from one
    piece to the next; a segment without word times goes whole to the piece it overlaps most."""
    offsets = packed.offsets
    located = []
    for segment in segments:
        if segment.words:
            located += _split_by_words(packed, offsets, segment)
        else:
            overlaps = [
                min(segment.end_s, o + p.duration_s) - max(segment.start_s, o)
                for p, o in zip(packed.pieces, offsets, strict=True)
            ]
            best = int(np.argmax(overlaps))
            if overlaps[best] > 0:  # text placed in no piece's audio was not speech
                located.append((best, segment))
    return [
        (packed.pieces[i], _to_recording(segment, packed.pieces[i], offsets[i]))
        for i, segment in located
    ]


def _split_by_words(packed: PackedInput, offsets: list[float], segment: AsrSegment) -> list[tuple[int, AsrSegment]]:
    ends = [offset + piece.duration_s for piece, offset in zip(packed.pieces, offsets, strict=True)]

    def piece_of(word: WordTiming) -> int:
        """The piece holding the word's middle; in a gap, the nearer one."""
        middle = (word.start_s + word.end_s) / 2
        distances = [max(start - middle, middle - end, 0.0) for start, end in zip(offsets, ends, strict=True)]
        return int(np.argmin(distances))

    runs: list[tuple[int, list[WordTiming]]] = []
    for word in segment.words:
        index = piece_of(word)
        if runs and runs[-1][0] == index:
            runs[-1][1].append(word)
        else:
            runs.append((index, [word]))
    return [(index, with_words(segment, words)) for index, words in runs]


def _to_recording(segment: AsrSegment, piece: Piece, offset: float) -> AsrSegment:
    """Input time to recording time, clipped to the piece."""

    def moved(t: float) -> float:
        return min(max(piece.start_s + t - offset, piece.start_s), piece.end_s)

    return replace(
        segment,
        start_s=moved(segment.start_s),
        end_s=moved(segment.end_s),
        words=tuple(replace(w, start_s=moved(w.start_s), end_s=moved(w.end_s)) for w in segment.words),
    )


@dataclass(frozen=True)
class TranscribedUnit:
    transcripts: str  # Parquet work file: one row per clip (sentence or evaluation segment)
    dropped: str  # Parquet work file: segments dropped as hallucinations or by length
    n_clips: int
    n_dropped: int


def clip_rows(
    source: PreparedSource, chunk: SpeechChunk, kept: list[AsrSegment], settings: SentenceSettings
) -> tuple[list[tuple[str, AsrSegment]], list[DroppedSegment]]:
    """(segment_kind, segment) rows of one chunk: sentences for training, the chunk otherwise."""
    if not kept:
        return [], []
    if source.split == "train":
        sentences, dropped = sentence_segments(kept, settings)
        return [("sentence", s) for s in sentences], dropped
    whole = replace(merge_segments(kept), start_s=chunk.start_s, end_s=chunk.end_s)
    return [("evaluation", whole)], []


def _transcript_record(source: PreparedSource, kind: str, segment: AsrSegment) -> dict:
    return {
        "source_sha256": source.source_sha256,
        "source_uri": source.uri,
        "split": source.split,
        "segment_kind": kind,
        "start_s": segment.start_s,
        "end_s": segment.end_s,
        "lang": segment.language,
        "lang_prob": segment.language_prob,
        "transcript": segment.text,
        "asr_avg_logprob": segment.avg_logprob,
        "asr_no_speech_prob": segment.no_speech_prob,
        "asr_compression_ratio": segment.compression_ratio,
    }


def _dropped_record(source: PreparedSource, stage: str, dropped: DroppedSegment) -> dict:
    segment = dropped.segment
    return {
        "source_uri": source.uri,
        "source_sha256": source.source_sha256,
        "stage": stage,
        "reason": dropped.reason,
        "detail": (
            f"avg_logprob={segment.avg_logprob:.2f} no_speech_prob={segment.no_speech_prob:.2f} "
            f"compression_ratio={segment.compression_ratio:.2f} "
            f"duration={segment.end_s - segment.start_s:.2f}s"
        ),
        "start_s": segment.start_s,
        "end_s": segment.end_s,
        "transcript": segment.text,
    }


def transcribe_sources(
    sources: list[PreparedSource],
    model_dir: str,
    settings: Settings,
    out_dir: Path,
) -> TranscribedUnit:
    """Transcribe a unit of prepared sources and write its clips' transcripts to `out_dir`."""
    asr = settings.asr
    model = load_whisper(model_dir, asr.device, asr.compute_type, asr.cpu_threads)
    segments = transcribe_all(model, sources, asr)
    records, dropped_records = [], []
    for s_index, source in enumerate(sources):
        for c_index, chunk in enumerate(source.chunks):
            kept, hallucinated = filter_hallucinations(segments.get((s_index, c_index), []), asr)
            rows, too_long_or_short = clip_rows(source, chunk, kept, settings.sentences)
            records += [_transcript_record(source, kind, seg) for kind, seg in rows]
            dropped_records += [_dropped_record(source, "transcribe", d) for d in hallucinated]
            dropped_records += [_dropped_record(source, "sentence", d) for d in too_long_or_short]
    transcripts = write_parquet_atomic(pa.Table.from_pylist(records, TRANSCRIPT_SCHEMA), out_dir / "transcripts.parquet")
    dropped = write_parquet_atomic(pa.Table.from_pylist(dropped_records, DROPPED_SCHEMA), out_dir / "dropped.parquet")
    return TranscribedUnit(str(transcripts), str(dropped), len(records), len(dropped_records))


def _transcript_schema() -> pa.Schema:
    """The clips schema's ASR columns plus the split and language (partition columns there)."""
    clips = clips_schema(embedding_dim=1)
    names = ["source_sha256", "source_uri", "segment_kind", "start_s", "end_s", "lang_prob",
             "transcript", "asr_avg_logprob", "asr_no_speech_prob", "asr_compression_ratio"]
    return pa.schema(
        [clips.field(name) for name in names] + [("split", pa.string()), ("lang", pa.string())]
    )


TRANSCRIPT_SCHEMA = _transcript_schema()
DROPPED_SCHEMA = pa.schema(
    [f for f in REJECTS_SCHEMA if f.name not in ("rejected_at", "run_id")]
)


@task(name="transcribe", retries=1)
def transcribe_task(
    sources: list[PreparedSource], model_dir: str, settings: Settings, out_dir: Path
) -> TranscribedUnit:
    return transcribe_sources(sources, model_dir, settings, out_dir)
