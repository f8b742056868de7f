"""Transcribe: batched faster-whisper ASR with the language detected per chunk.

faster-whisper's `BatchedInferencePipeline` batches the windows of *one* file and reports one
language per file. voice chat switches language between speakers, and our chunks come from many
files, so this module batches chunks from any files together, detects each chunk's language on
the shared encoder output, and decodes every chunk with its own language token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil
from pathlib import Path

import ctranslate2
import numpy as np
import pyarrow as pa
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens
from prefect import task

from voxtox.settings import AsrSettings, SentenceSettings, Settings
from voxtox.storage.model_store import ModelNotFoundError
from voxtox.storage.schema import REJECTS_SCHEMA, clips_schema
from voxtox.storage.shards import write_parquet_atomic
from voxtox.tasks.chunk import SpeechChunk, energy_db, split_at_quiet_points
from voxtox.tasks.decode import SAMPLE_RATE
from voxtox.tasks.ingest import PreparedSource

#: Whisper sees at most 30 s at a time.
MAX_WINDOW_S = 30.0
SENTENCE_END = re.compile(r"[.!?。！？…]['\")\]]*$")


@dataclass(frozen=True)
class AsrSegment:
    """One Whisper segment; times in seconds from the start of the source."""

    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    language: str
    language_prob: float


@dataclass(frozen=True)
class DroppedSegment:
    segment: AsrSegment
    reason: str


@lru_cache(maxsize=4)
def load_whisper(model_dir: str, device: str, compute_type: str, cpu_threads: int) -> WhisperModel:
    """One model per process and configuration (loading takes about a second)."""
    return WhisperModel(
        model_dir, device=device, compute_type=compute_type, cpu_threads=cpu_threads
    )


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


def _language_of(
    model: WhisperModel, encoder_output: object, n: int, settings: AsrSettings
) -> list[tuple[str, float]]:
    """(code, probability) per window: forced, or the most likely (among allowed) languages."""
    if settings.language or not model.model.is_multilingual:
        return [(settings.language or "en", 1.0)] * n
    allowed = set(settings.languages or [])
    languages = []
    for ranked in model.model.detect_language(encoder_output):
        candidates = [(token.strip("<|>"), float(p)) for token, p in ranked]
        if allowed:
            candidates = [c for c in candidates if c[0] in allowed] or candidates
        languages.append(candidates[0])
    return languages


def transcribe_windows(
    model: WhisperModel, windows: list[np.ndarray], settings: AsrSettings
) -> list[list[AsrSegment]]:
    """Decode up to `settings.batch_size` windows (each at most 30 s) in one batch.

    The encoder runs once; windows whose first decoding looks like a failure (looping or
    improbable text) are decoded again from the same encoder output at rising sampling
    temperatures, as Whisper itself does. Returns, per window, its segments with times relative
    to the window's start.
    """
    if not windows:
        return []
    features = np.stack([pad_or_trim(model.feature_extractor(w)[..., :-1]) for w in windows])
    encoded = np.asarray(model.encode(features))  # (windows, frames, width), reused below
    languages = _language_of(model, _storage(encoded), len(windows), settings)
    lengths = [len(w) for w in windows]
    everyone = list(range(len(windows)))
    results = _decode(model, encoded, everyone, lengths, languages, settings, temperature=0.0)
    for temperature in settings.fallback_temperatures:
        failing = [i for i, segments in enumerate(results) if _failed(segments, settings)]
        if not failing:
            break
        ctranslate2.set_random_seed(settings.fallback_seed)
        retried = _decode(model, encoded, failing, lengths, languages, settings, temperature)
        for index, segments in zip(failing, retried, strict=True):
            if _score(segments, settings) > _score(results[index], settings):
                results[index] = segments
    return results


def _storage(array: np.ndarray) -> ctranslate2.StorageView:
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))


def _failed(segments: list[AsrSegment], settings: AsrSettings) -> bool:
    """Whisper's fallback rule: too repetitive or too improbable, unless it is silence
    (likely no speech *and* improbable text)."""
    if not segments:
        return False
    first = segments[0]  # scores are per window, shared by its segments
    improbable = first.avg_logprob < settings.log_prob_threshold
    if improbable and first.no_speech_prob > settings.no_speech_threshold:
        return False
    return improbable or any(
        s.compression_ratio > settings.compression_ratio_threshold for s in segments
    )


def _score(segments: list[AsrSegment], settings: AsrSettings) -> tuple[bool, bool, float]:
    """Passing beats failing, not looping beats looping, then the more probable decoding wins."""
    looping = any(s.compression_ratio > settings.compression_ratio_threshold for s in segments)
    probable = segments[0].avg_logprob if segments else -np.inf
    return (not _failed(segments, settings), not looping, probable)


def _decode(
    model: WhisperModel,
    encoded: np.ndarray,
    rows: list[int],
    lengths: list[int],
    languages: list[tuple[str, float]],
    settings: AsrSettings,
    temperature: float,
) -> list[list[AsrSegment]]:
    """Generate text for the encoder outputs `rows`, each with its own language token."""
    chosen = [languages[i] for i in rows]
    tokenizers = {
        lang: Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=lang
        )
        for lang, _ in chosen
    }
    prompts = [model.get_prompt(tokenizers[lang], previous_tokens=[]) for lang, _ in chosen]
    any_tokenizer = next(iter(tokenizers.values()))
    sampling = (
        {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
        if temperature > 0
        else {"beam_size": settings.beam_size}
    )
    results = model.model.generate(
        _storage(encoded[rows]),
        prompts,
        max_length=model.max_length,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(any_tokenizer, [-1]),
        return_scores=True,
        return_no_speech_prob=True,
        **sampling,
    )
    return [
        _segments_of(model, tokenizers[lang], result, lengths[i], lang, lang_prob)
        for i, result, (lang, lang_prob) in zip(rows, results, chosen, strict=True)
    ]


def _segments_of(
    model: WhisperModel,
    tokenizer: Tokenizer,
    result: object,
    n_samples: int,
    language: str,
    language_prob: float,
) -> list[AsrSegment]:
    tokens = result.sequences_ids[0]
    # Same score normalisation as faster-whisper's batched pipeline (length penalty 1).
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    duration = n_samples / model.feature_extractor.sampling_rate
    pieces, _, _ = model._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=tokens,
        time_offset=0.0,
        segment_size=int(ceil(duration) * model.frames_per_second),
        segment_duration=duration,
        seek=0,
    )
    segments = []
    for piece in pieces:
        text = tokenizer.decode(piece["tokens"]).strip()
        segments.append(
            AsrSegment(
                start_s=min(piece["start"], duration),
                end_s=min(piece["end"], duration),
                text=text,
                avg_logprob=float(avg_logprob),
                no_speech_prob=float(result.no_speech_prob),
                compression_ratio=get_compression_ratio(text) if text else 0.0,
                language=language,
                language_prob=language_prob,
            )
        )
    return segments


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


def sentence_segments(
    segments: list[AsrSegment], settings: SentenceSettings
) -> tuple[list[AsrSegment], list[DroppedSegment]]:
    """Group consecutive ASR segments of one chunk into sentences of min_s..max_s seconds.

    A group closes at sentence-final punctuation once it is long enough, or before it would
    exceed max_s. A group still too short joins the previous sentence when that stays within
    max_s; otherwise it is dropped, as is a single ASR segment longer than max_s.
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

    for segment in segments:
        if group and segment.end_s - group[0].start_s > settings.max_s:
            close()
        group.append(segment)
        if SENTENCE_END.search(segment.text) and group[-1].end_s - group[0].start_s >= settings.min_s:
            close()
    close()
    return sentences, dropped


# --- The transcribe stage: many sources' chunks in, one transcript work file out -------------


@dataclass(frozen=True)
class Window:
    """An ASR window (at most 30 s) of one source; with packing it may hold several chunks."""

    source: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TranscribedUnit:
    transcripts: str  # Parquet work file: one row per clip (sentence or evaluation segment)
    dropped: str  # Parquet work file: segments dropped as hallucinations or by length
    n_clips: int
    n_dropped: int


def plan_windows(sources: list[PreparedSource], pack: bool = True) -> list[Window]:
    """ASR windows of at most 30 s: chunks longer than that are cut at quiet points, and with
    `pack` consecutive chunks of one source share a window while it stays within 30 s.

    Whisper always encodes 30 s, so a 4 s chunk alone wastes most of an encoder pass; packing
    is what faster-whisper's batched pipeline does too. The price: one language per window.
    """
    windows: list[Window] = []
    for s_index, source in enumerate(sources):
        energy = energy_db(source.power())
        for chunk in source.chunks:
            for piece in split_at_quiet_points(chunk, energy, MAX_WINDOW_S, min_s=1.0):
                last = windows[-1] if windows else None
                if (
                    pack
                    and last is not None
                    and last.source == s_index
                    and piece.end_s - last.start_s <= MAX_WINDOW_S
                ):
                    windows[-1] = Window(s_index, last.start_s, piece.end_s)
                else:
                    windows.append(Window(s_index, piece.start_s, piece.end_s))
    return windows


def assign_to_chunks(
    segments: list[AsrSegment], chunks: list[SpeechChunk]
) -> dict[int, list[AsrSegment]]:
    """Give each ASR segment to the chunk it overlaps most, trimmed to that chunk."""
    by_chunk: dict[int, list[AsrSegment]] = {}
    for segment in segments:
        overlaps = [
            min(segment.end_s, c.end_s) - max(segment.start_s, c.start_s) for c in chunks
        ]
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0:
            continue  # text placed in a gap between chunks: nothing of it was speech
        chunk = chunks[best]
        by_chunk.setdefault(best, []).append(
            replace(
                segment,
                start_s=max(segment.start_s, chunk.start_s),
                end_s=min(segment.end_s, chunk.end_s),
            )
        )
    return by_chunk


def _window_audio(sources: list[PreparedSource], windows: list[Window]) -> list[np.ndarray]:
    arrays = {}
    audio = []
    for window in windows:
        if window.source not in arrays:
            arrays[window.source] = sources[window.source].samples()
        samples = arrays[window.source]
        audio.append(
            np.asarray(samples[int(window.start_s * SAMPLE_RATE) : int(window.end_s * SAMPLE_RATE)])
        )
    return audio


def transcribe_all(
    model: WhisperModel,
    sources: list[PreparedSource],
    settings: AsrSettings,
    on_batch: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], list[AsrSegment]]:
    """ASR segments (times from the source's start) per (source, chunk), batched across files."""
    windows = plan_windows(sources, settings.pack_chunks)
    per_source: dict[int, list[AsrSegment]] = {}
    for start in range(0, len(windows), settings.batch_size):
        batch = windows[start : start + settings.batch_size]
        for window, found in zip(
            batch, transcribe_windows(model, _window_audio(sources, batch), settings), strict=True
        ):
            per_source.setdefault(window.source, []).extend(
                replace(
                    s,
                    start_s=window.start_s + s.start_s,
                    end_s=min(window.end_s, window.start_s + s.end_s),
                )
                for s in found
            )
        if on_batch:
            on_batch(len(batch))
    return {
        (s_index, c_index): segments
        for s_index, found in per_source.items()
        for c_index, segments in assign_to_chunks(found, sources[s_index].chunks).items()
    }


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
    on_batch: Callable[[int], None] | None = None,
) -> TranscribedUnit:
    """Transcribe a unit of prepared sources and write its clips' transcripts to `out_dir`."""
    asr = settings.asr
    model = load_whisper(model_dir, asr.device, asr.compute_type, asr.cpu_threads)
    segments = transcribe_all(model, sources, asr, on_batch)
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
