"""Whisper (faster-whisper / CTranslate2) as voxtox uses it: tell the language of short inputs
cheaply, encode ≤30 s inputs in batches, and decode each input with its own language, Whisper's
temperature fallback and word times.

No Prefect and no knowledge of sources or chunks: tasks/transcribe.py decides what goes into an
input (the packing) and maps the results back to recordings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from voxtox.settings import AsrSettings

#: Text ending a sentence (a word with this at its end closes one).
SENTENCE_END = re.compile(r"[.!?。！？…]['\")\]]*$")
#: Whisper sees at most 30 s at a time.
MAX_INPUT_S = 30.0
#: Encoder output frames per second of audio (1500 frames for 30 s).
ENCODER_FRAMES_PER_S = 50
# faster-whisper's defaults for attaching punctuation to words.
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class WordTiming:
    start_s: float
    end_s: float
    text: str  # as Whisper spells it, with its leading space
    probability: float


@dataclass(frozen=True)
class AsrSegment:
    """One Whisper segment; times in seconds from the start of its input (or, once mapped back,
    of its recording). `words` is empty when word times were not computed."""

    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    language: str
    language_prob: float
    words: tuple[WordTiming, ...] = ()


class LoadedWhisper(WhisperModel):
    """faster-whisper's model, remembering how it was loaded (for `_sampling_replica`)."""

    def __init__(self, model_dir: str, device: str, compute_type: str, cpu_threads: int) -> None:
        super().__init__(model_dir, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        self.loaded_from = (model_dir, device, compute_type, cpu_threads)


@lru_cache(maxsize=4)
def load_whisper(model_dir: str, device: str, compute_type: str, cpu_threads: int) -> WhisperModel:
    """One model per process and configuration (loading takes about a second)."""
    return LoadedWhisper(model_dir, device, compute_type, cpu_threads)


def _sampling_replica(model: WhisperModel, seed: int) -> ctranslate2.models.Whisper:
    """A fresh CTranslate2 replica of `model` whose sampling starts from `seed`.

    CTranslate2 seeds each worker thread's random generator once, at that thread's first draw
    (`random.cc`: a thread_local mt19937), so `set_random_seed` does nothing to a thread that has
    sampled before: on the shared model, a fallback's draws, and so its transcript, depended on
    all the sampling that process had done (a Dask worker and the local runner, or a rerun, gave
    other text). A new replica has new threads. Loading one takes ~0.2 s (whisper-base, CPU), once
    per fallback round of a batch that has failed inputs."""
    if not isinstance(model, LoadedWhisper):
        raise TypeError("the temperature fallback needs a model from load_whisper (it reloads it to reseed)")
    ctranslate2.set_random_seed(seed)
    model_dir, device, compute_type, threads = model.loaded_from
    return ctranslate2.models.Whisper(model_dir, device=device, compute_type=compute_type, intra_threads=threads)


def storage(array: np.ndarray) -> ctranslate2.StorageView:
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))


def encode(model: WhisperModel, inputs: list[np.ndarray], pad_to_s: float | None = None) -> np.ndarray:
    """Encoder output (inputs, frames, width) of up to 30 s of 16 kHz audio each: padded to 30 s
    as Whisper was trained (1500 frames), or with `pad_to_s` only to the batch's longest input or
    that many seconds, whichever is longer, which costs a fraction as much for short inputs (for
    telling languages only).

    30 s inputs go through the encoder one at a time: on a CPU a batch is no faster, and its
    attention scores (inputs × 1500² per head) take much more memory (docs/benchmarks.md).
    """
    features = [model.feature_extractor(audio)[..., :-1] for audio in inputs]
    if pad_to_s is None:
        return np.concatenate([np.asarray(model.encode(pad_or_trim(f)[None])) for f in features])
    longest = max(max(f.shape[-1] for f in features), int(pad_to_s * model.feature_extractor.sampling_rate
                                                          / model.feature_extractor.hop_length))
    frames = min(3000, longest + 1) // 2 * 2
    return np.asarray(model.encode(np.stack([pad_or_trim(f, frames) for f in features])))


def encoded_frames(model: WhisperModel, n_samples: int) -> int:
    """Encoder frames that hold `n_samples` of audio (the rest of an output is padding)."""
    return max(1, int(ceil(n_samples / model.feature_extractor.sampling_rate * ENCODER_FRAMES_PER_S)))


def language_probabilities(
    model: WhisperModel, encoded: np.ndarray, candidates: list[str], frames: list[int] | None = None
) -> np.ndarray:
    """P(language) over `candidates` for each encoded input, renormalised over the candidates:
    shape (inputs, candidates). With `frames`, the decoder attends only to each input's first
    frames (its speech, from a shorter encoding); one decoder step per input.

    Among a platform's few languages, the own-length guess is as accurate as Whisper's padded
    input at a fraction of the cost; among all 99 it is not (docs/benchmarks.md).
    """
    scores = np.zeros((len(encoded), len(candidates)))
    for row in range(len(encoded)):
        view = encoded[row : row + 1, : frames[row]] if frames else encoded[row : row + 1]
        (ranked,) = model.model.detect_language(storage(view))
        found = {token.strip("<|>"): probability for token, probability in ranked}
        scores[row] = [found.get(code, 0.0) + 1e-9 for code in candidates]
    return scores / scores.sum(axis=1, keepdims=True)


def candidate_languages(model: WhisperModel, settings: AsrSettings) -> list[str]:
    """The languages a stretch may be given: the configured ones, or all Whisper knows ([])."""
    return list(settings.languages) if settings.languages else list(model.supported_languages)


@dataclass(frozen=True)
class _Decoding:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def decode(
    model: WhisperModel,
    encoded: np.ndarray,
    lengths: list[int],
    languages: list[tuple[str, float]],
    settings: AsrSettings,
    word_times: bool,
) -> list[list[AsrSegment]]:
    """Segments of each encoded input (times from the input's start), each decoded with its own
    language token.

    Inputs whose first decoding looks like a failure (looping or improbable text) are decoded
    again from the same encoder output at rising sampling temperatures, as Whisper itself does.
    """
    rows = list(range(len(lengths)))
    # With word times, Whisper need not predict timestamp tokens (faster, as faster-whisper's
    # batched pipeline decodes): the words carry the times.
    timestamps = not word_times
    results = _generate(model, encoded, rows, languages, settings, 0.0, timestamps)
    for temperature in settings.fallback_temperatures:
        failing = [i for i in rows if _failed(model, results[i], languages[i][0], settings)]
        if not failing:
            break
        sampler = _sampling_replica(model, settings.fallback_seed)
        retried = _generate(model, encoded, failing, languages, settings, temperature, timestamps, sampler)
        for index, decoding in zip(failing, retried, strict=True):
            language = languages[index][0]
            if _score(model, decoding, language, settings) > _score(model, results[index], language, settings):
                results[index] = decoding
    return _segments(model, encoded, results, lengths, languages, word_times)


@lru_cache(maxsize=256)
def _tokenizer(model: WhisperModel, language: str) -> Tokenizer:
    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)


def _generate(
    model: WhisperModel,
    encoded: np.ndarray,
    rows: list[int],
    languages: list[tuple[str, float]],
    settings: AsrSettings,
    temperature: float,
    timestamps: bool,
    replica: ctranslate2.models.Whisper | None = None,
) -> list[_Decoding]:
    tokenizers = {languages[i][0]: _tokenizer(model, languages[i][0]) for i in rows}
    prompts = [
        model.get_prompt(tokenizers[languages[i][0]], previous_tokens=[], without_timestamps=not timestamps)
        for i in rows
    ]
    sampling = (
        {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
        if temperature > 0
        else {"beam_size": settings.beam_size}
    )
    results = (replica or model.model).generate(
        storage(encoded[rows]),
        prompts,
        max_length=model.max_length,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(next(iter(tokenizers.values())), [-1]),
        return_scores=True,
        return_no_speech_prob=True,
        **sampling,
    )
    decodings = []
    for result in results:
        tokens = result.sequences_ids[0]
        # Same score normalisation as faster-whisper's batched pipeline (length penalty 1).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        decodings.append(_Decoding(tokens, float(avg_logprob), float(result.no_speech_prob)))
    return decodings


def _text(model: WhisperModel, decoding: _Decoding, language: str) -> str:
    tokenizer = _tokenizer(model, language)
    return tokenizer.decode([t for t in decoding.tokens if t < tokenizer.eot]).strip()


def _failed(model: WhisperModel, decoding: _Decoding, language: str, settings: AsrSettings) -> bool:
    """Whisper's fallback rule: too repetitive or too improbable, unless it is silence
    (likely no speech *and* improbable text)."""
    text = _text(model, decoding, language)
    if not text:
        return False
    improbable = decoding.avg_logprob < settings.log_prob_threshold
    if improbable and decoding.no_speech_prob > settings.no_speech_threshold:
        return False
    return improbable or get_compression_ratio(text) > settings.compression_ratio_threshold


def _score(model: WhisperModel, decoding: _Decoding, language: str, settings: AsrSettings) -> tuple[bool, bool, float]:
    """Passing beats failing, not looping beats looping, then the more probable decoding wins."""
    text = _text(model, decoding, language)
    looping = bool(text) and get_compression_ratio(text) > settings.compression_ratio_threshold
    return (not _failed(model, decoding, language, settings), not looping, decoding.avg_logprob)


def _segments(
    model: WhisperModel,
    encoded: np.ndarray,
    decodings: list[_Decoding],
    lengths: list[int],
    languages: list[tuple[str, float]],
    word_times: bool,
) -> list[list[AsrSegment]]:
    """Cut each decoding into timed segments; with `word_times`, align its words (one pass of
    cross-attention alignment per language among the inputs)."""
    pieces: list[list[dict]] = []
    sizes = []
    for decoding, n_samples, (language, _) in zip(decodings, lengths, languages, strict=True):
        duration = n_samples / model.feature_extractor.sampling_rate
        size = int(ceil(duration) * model.frames_per_second)
        found, _, _ = model._split_segments_by_timestamps(
            tokenizer=_tokenizer(model, language),
            tokens=decoding.tokens,
            time_offset=0.0,
            segment_size=size,
            segment_duration=duration,
            seek=0,
        )
        pieces.append([{**p, "start": min(p["start"], duration), "end": min(p["end"], duration)} for p in found])
        sizes.append(size)
    if word_times:
        for language in {language for language, _ in languages}:
            rows = [i for i, (lang, _) in enumerate(languages) if lang == language]
            model.add_word_timestamps(
                [pieces[i] for i in rows],
                _tokenizer(model, language),
                storage(encoded[rows]),
                [sizes[i] for i in rows],
                PREPEND_PUNCTUATION,
                APPEND_PUNCTUATION,
                0.0,
            )
    return [
        [segment for piece in found for segment in _segment(model, piece, decoding, language, probability)]
        for found, decoding, (language, probability) in zip(pieces, decodings, languages, strict=True)
    ]


def _segment(
    model: WhisperModel, piece: dict, decoding: _Decoding, language: str, language_prob: float
) -> list[AsrSegment]:
    """The segment Whisper cut (by timestamp tokens), or with word times one per sentence."""
    tokenizer = _tokenizer(model, language)
    text = tokenizer.decode([t for t in piece["tokens"] if t < tokenizer.eot]).strip()
    whole = AsrSegment(
        start_s=float(piece["start"]),
        end_s=float(piece["end"]),
        text=text,
        avg_logprob=decoding.avg_logprob,
        no_speech_prob=decoding.no_speech_prob,
        compression_ratio=get_compression_ratio(text) if text else 0.0,
        language=language,
        language_prob=language_prob,
    )
    words = [
        WordTiming(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
        for w in piece.get("words", [])
    ]
    if not words:
        return [whole]
    sentences: list[list[WordTiming]] = [[]]
    for word in words:
        sentences[-1].append(word)
        if SENTENCE_END.search(word.text.strip()):
            sentences.append([])
    return [with_words(whole, sentence) for sentence in sentences if sentence]


def with_words(segment: AsrSegment, words: list[WordTiming]) -> AsrSegment:
    """The part of `segment` made of `words`: their text and times, and its own mean log
    probability, from its words' (the decoder's probabilities of their tokens). An input may
    hold several recordings' speech: one recording's garbled turn must not lower the score, and
    so cost the text, of another's."""
    text = "".join(w.text for w in words).strip()
    return replace(
        segment,
        start_s=words[0].start_s,
        end_s=words[-1].end_s,
        text=text,
        avg_logprob=float(np.mean(np.log(np.clip([w.probability for w in words], 1e-6, 1.0)))),
        compression_ratio=get_compression_ratio(text) if text else 0.0,
        words=tuple(words),
    )


def warm_up(model: WhisperModel, settings: AsrSettings) -> None:
    """Run every kernel once (benchmarks time models loaded and warmed)."""
    silence = np.zeros(model.feature_extractor.sampling_rate, np.float32)
    decode(model, encode(model, [silence]), [len(silence)], [("en", 1.0)], settings, word_times=True)
