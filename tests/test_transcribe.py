"""Batched ASR with per-chunk language, hallucination filters, and sentence segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxtox.models.asr import AsrSegment, WordTiming, decode, encode, load_whisper
from voxtox.settings import AsrSettings, SentenceSettings, Settings
from voxtox.tasks.transcribe import (
    GAP_S,
    PackedInput,
    Piece,
    hallucination_reason,
    max_ngram_repeats,
    decode_pieces,
    doubtful_pieces,
    pack,
    plan_pieces,
    runner_up,
    second_opinions,
    words_logprob,
    sentence_segments,
    split_long_segment,
    to_pieces,
    language_weights,
    transcribe_sources,
    weigh_languages,
)
from voxtox.tasks.ingest import PreparedSource, prepare_source

from conftest import SHARED_AUDIO


def segment(start: float, end: float, text: str = "words here.", **fields: float) -> AsrSegment:
    values = dict(avg_logprob=-0.3, no_speech_prob=0.05, compression_ratio=1.2, language="en", language_prob=0.9)
    values.update(fields)
    return AsrSegment(start, end, text, **values)


def test_repeated_ngrams_count_back_to_back_runs_only() -> None:
    assert max_ngram_repeats("thank you thank you thank you thank you thank you") == 5
    assert max_ngram_repeats("zu verwenden, zu kopieren, zu ändern, zu verkaufen, zu teilen") == 1
    assert max_ngram_repeats("no no no no no no") == 6


@pytest.mark.parametrize(
    ("fields", "text", "reason"),
    [
        ({"no_speech_prob": 0.9, "avg_logprob": -1.5}, "thanks for watching", "no_speech"),
        ({"avg_logprob": -1.4}, "garbled words", "low_logprob"),
        ({"compression_ratio": 3.1}, "la la la", "high_compression_ratio"),
        ({}, "go go go go go go go", "repeated_ngram"),
        ({}, "", "empty_transcript"),
        ({}, "a perfectly normal sentence.", None),
    ],
)
def test_hallucination_reasons(fields: dict, text: str, reason: str | None) -> None:
    assert hallucination_reason(segment(0, 2, text, **fields), AsrSettings()) == reason


def test_sentence_segments_respect_1_to_15_seconds() -> None:
    rng = np.random.default_rng(3)
    cursor, segments = 0.0, []
    for _ in range(60):
        length = float(rng.uniform(0.3, 9.0))
        ending = "." if rng.random() < 0.4 else ","
        segments.append(segment(cursor, cursor + length, f"some words{ending}"))
        cursor += length
    segments.append(segment(cursor, cursor + 16.0, "one very long run-on segment"))
    sentences, dropped = sentence_segments(segments, SentenceSettings())
    assert sentences
    assert all(1.0 <= s.end_s - s.start_s <= 15.0 for s in sentences)
    assert any(d.reason == "sentence_too_long" for d in dropped)
    # Nothing overlaps and order is kept.
    assert all(a.end_s <= b.start_s for a, b in zip(sentences, sentences[1:]))


def test_a_sentence_closes_at_punctuation_once_long_enough() -> None:
    segments = [segment(0, 0.5, "Hi."), segment(0.5, 2.0, "nice to meet you."), segment(2.0, 4.0, "Bye now.")]
    sentences, dropped = sentence_segments(segments, SentenceSettings())
    assert [s.text for s in sentences] == ["Hi. nice to meet you.", "Bye now."]
    assert not dropped


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedSource, Settings]:
    work = tmp_path_factory.mktemp("asr")
    settings = Settings(data_dir=work)
    source = prepare_source(str(SHARED_AUDIO / "multilingual.mp3"), "train", settings, work)
    assert isinstance(source, PreparedSource)
    return source, settings


def test_sentences_of_a_real_recording_are_1_to_15_seconds(multilingual, whisper_dir: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    source, settings = multilingual
    unit = transcribe_sources([source], whisper_dir, settings, tmp_path)
    rows = pq.read_table(unit.transcripts).to_pylist()
    assert rows and all(1.0 <= row["end_s"] - row["start_s"] <= 15.0 for row in rows)
    assert all(row["segment_kind"] == "sentence" for row in rows)


def test_language_is_detected_per_chunk(whisper_dir: str, tmp_path: Path) -> None:
    """A recording that switches from English to German gets both languages, in order.

    The input is chosen so the answer does not hinge on the last bit of an int8 kernel: each
    language is several seconds of clear espeak-ng speech in sentences typical of that language,
    so Whisper's language identification is far from a tie (multilingual.mp3's first chunk, by
    contrast, is short and came out `de` on one CPU family and `en` on another).
    """
    import pyarrow.parquet as pq
    import soundfile

    from conftest import spoken
    from voxtox.audio import SAMPLE_RATE
    from voxtox.corpus.speech_synth import Utterance

    samples = spoken(
        Utterance("good game everyone, that was a really close match, see you tomorrow night", "en"),
        Utterance("wir brauchen mehr Heilung im Team, gut gespielt, bis morgen Abend", "de"),
        pauses=[2.0],
    )
    soundfile.write(tmp_path / "switch.wav", samples, SAMPLE_RATE)
    settings = Settings(data_dir=tmp_path)
    source = prepare_source(str(tmp_path / "switch.wav"), "test", settings, tmp_path)
    assert isinstance(source, PreparedSource) and len(source.chunks) == 2
    unit = transcribe_sources([source], whisper_dir, settings, tmp_path / "out")
    rows = sorted(pq.read_table(unit.transcripts).to_pylist(), key=lambda r: r["start_s"])
    assert [row["lang"] for row in rows] == ["en", "de"]


def test_language_weights_take_a_doubtful_piece_from_english_but_not_a_clear_one() -> None:
    """English weighted by 0.3 (the default among listed languages): a piece another language
    holds at least 0.3 of English's probability goes to that language; a clearly English
    piece stays English; languages not named keep their ratios; rows stay probabilities."""
    candidates = ["en", "de", "es"]
    scores = np.array([[0.70, 0.25, 0.05], [0.95, 0.03, 0.02], [0.10, 0.30, 0.60]])
    weighted = weigh_languages(scores, candidates, language_weights(AsrSettings()))
    assert [candidates[i] for i in weighted.argmax(axis=1)] == ["de", "en", "es"]
    np.testing.assert_allclose(weighted.sum(axis=1), 1.0)
    np.testing.assert_allclose(weighted[:, 1] / weighted[:, 2], scores[:, 1] / scores[:, 2])
    np.testing.assert_allclose(weigh_languages(scores, candidates, {}), scores)


def test_a_piece_the_weights_would_move_is_rechecked_first() -> None:
    """A short English turn heard 0.72 English, 0.26 Spanish from its own length is sure enough
    alone, but the English weight would make it Spanish: it is asked again (padded) before the
    weight may move it. A clear piece is not; an unsure one is, as before."""
    candidates = ["en", "es", "de"]
    scores = np.array([[0.72, 0.26, 0.02], [0.95, 0.03, 0.02], [0.50, 0.30, 0.20], [0.05, 0.90, 0.05]])
    weights = language_weights(AsrSettings())
    assert doubtful_pieces(scores, candidates, weights).tolist() == [True, False, True, False]
    assert doubtful_pieces(scores, candidates, {}).tolist() == [False, False, True, False]


def test_english_is_weighted_only_among_listed_languages_unless_weights_are_given() -> None:
    assert language_weights(AsrSettings()) == {"en": 0.3}
    assert language_weights(AsrSettings(languages=[])) == {}
    assert language_weights(AsrSettings(language_weights={})) == {}
    assert language_weights(AsrSettings(languages=[], language_weights={"en": 0.5})) == {"en": 0.5}


def test_language_weights_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        AsrSettings(language_weights={"en": 0})


def test_the_second_opinion_is_never_english_for_a_turn_first_heard_in_another_language() -> None:
    assert runner_up([("es", 0.8), ("en", 0.15), ("pt", 0.05)]) == ("pt", 0.05)
    assert runner_up([("en", 0.8), ("de", 0.2)]) == ("de", 0.2)
    assert runner_up([("de", 0.9), ("en", 0.1)]) is None
    assert runner_up([("en", 1.0)]) is None


def test_a_turn_decoded_in_the_wrong_language_is_decoded_again_in_the_runner_up(
    whisper_dir: str, tmp_path: Path
) -> None:
    """A clear Spanish turn whose language guess came out German (short turns' guesses are
    sometimes confidently wrong) is decoded again in Spanish, the runner-up, and the Spanish
    text is kept because the decoder finds it more probable. Several seconds of plain Spanish
    make that margin wide, so the outcome does not hinge on an int8 kernel's last bit."""
    import soundfile

    from conftest import spoken
    from voxtox.audio import SAMPLE_RATE
    from voxtox.corpus.speech_synth import Utterance

    samples = spoken(Utterance("buena partida a todos, fue muy reñida, nos vemos mañana por la noche", "es"))
    soundfile.write(tmp_path / "turn.wav", samples, SAMPLE_RATE)
    settings = Settings(data_dir=tmp_path)
    source = prepare_source(str(tmp_path / "turn.wav"), "test", settings, tmp_path)
    assert isinstance(source, PreparedSource)
    model = load_whisper(whisper_dir, settings.asr.device, settings.asr.compute_type, settings.asr.cpu_threads)
    pieces = plan_pieces([source])
    ranked = [[("de", 0.9), ("es", 0.1)]] * len(pieces)
    first = decode_pieces(model, [source], pieces, [r[0] for r in ranked], settings.asr)
    assert all(s.language == "de" for found in first.values() for s in found)

    every_piece = settings.asr.model_copy(update={"second_language_below": 0.0})  # log-probs are < 0
    better = second_opinions(model, [source], pieces, ranked, first, every_piece)
    assert set(better) == set(pieces)
    for piece, found in better.items():
        assert {s.language for s in found} == {"es"}
        assert words_logprob(found) > words_logprob(first[piece])

    never = settings.asr.model_copy(update={"second_language_below": None})
    assert second_opinions(model, [source], pieces, ranked, first, never) == {}


def test_evaluation_splits_keep_whole_vad_segments(multilingual, whisper_dir: str, tmp_path: Path) -> None:
    import dataclasses

    import pyarrow.parquet as pq

    source, settings = multilingual
    test_source = dataclasses.replace(source, split="test")
    unit = transcribe_sources([test_source], whisper_dir, settings, tmp_path)
    rows = pq.read_table(unit.transcripts).to_pylist()
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(c.start_s, c.end_s) for c in source.chunks]
    assert all(r["segment_kind"] == "evaluation" and r["transcript"] for r in rows)


def test_batched_decoding_matches_one_at_a_time(multilingual, whisper_dir: str) -> None:
    source, settings = multilingual
    asr = settings.asr
    model = load_whisper(whisper_dir, asr.device, asr.compute_type, asr.cpu_threads)
    audio = [packed.audio([source]) for packed in pack(plan_pieces([source]))][:3]
    languages = [("en", 1.0)] * len(audio)
    batched = decode(model, encode(model, audio), [len(a) for a in audio], languages, asr, word_times=True)
    single = [decode(model, encode(model, [a]), [len(a)], languages[:1], asr, word_times=True)[0] for a in audio]
    assert [[s.text for s in w] for w in batched] == [[s.text for s in w] for w in single]


def test_the_fallback_samples_the_same_whatever_the_process_sampled_before(whisper_dir: str) -> None:
    """A failed input's fallback draws from `fallback_seed`, not from the process's history: a
    rerun, another Dask worker or the local runner transcribe it alike (CTranslate2 seeds a thread's
    generator only at its first draw, so reseeding the shared model changed nothing)."""
    from faster_whisper import decode_audio

    from voxtox.models.asr import _generate, _sampling_replica

    model = load_whisper(whisper_dir, "cpu", "int8", 2)
    encoded = encode(model, [decode_audio(str(SHARED_AUDIO / "jfk.flac"))])
    settings = AsrSettings()

    def sampled(other_draws: int) -> list[int]:
        for _ in range(other_draws):  # what the process decoded before, on the shared model
            _generate(model, encoded, [0], [("en", 1.0)], settings, 1.0, True)
        replica = _sampling_replica(model, settings.fallback_seed)
        return _generate(model, encoded, [0], [("en", 1.0)], settings, 1.0, True, replica)[0].tokens

    first = sampled(0)
    assert sampled(1) == first and sampled(3) == first


def words(*spans: tuple[float, float, str]) -> tuple[WordTiming, ...]:
    return tuple(WordTiming(start, end, text, 0.9) for start, end, text in spans)


def test_pieces_of_one_language_share_inputs_of_at_most_30_s() -> None:
    pieces = [Piece(0, i, 10.0 * i, 10.0 * i + 8.0) for i in range(5)] + [Piece(1, 0, 0.0, 8.0)]
    languages = ["en", "es", "en", "en", "en", "en"]
    inputs = pack(pieces, languages)
    assert all(packed.duration_s <= 30.0 for packed in inputs)
    for packed in inputs:
        assert len({languages[pieces.index(p)] for p in packed.pieces}) == 1  # never mixed
        order = [pieces.index(p) for p in packed.pieces]
        assert order == sorted(order)  # recordings in turn, each in time order
    # English: three 8 s pieces with their gaps fill one input; the fourth goes on with the other
    # recording's piece; the Spanish piece has its own.
    assert [len(packed.pieces) for packed in inputs] == [3, 2, 1]
    assert inputs[0].offsets == [0.0, 8.0 + GAP_S, 16.0 + 2 * GAP_S]


def test_words_map_back_to_the_piece_they_were_spoken_in() -> None:
    packed = PackedInput((Piece(0, 0, 100.0, 103.0), Piece(0, 1, 200.0, 204.0)))
    second = 3.0 + GAP_S  # where the second piece starts in the input
    # One Whisper segment running across the join; "nice" is timed a little early, in the gap.
    segment = AsrSegment(0.2, second + 3.0, "hello there. nice shot", -0.2, 0.01, 1.1, "en", 0.9,
                         words((0.2, 0.8, " hello"), (0.9, 2.5, " there."), (second - 0.2, second + 0.4, " nice"),
                               (second + 0.5, second + 3.0, " shot")))
    mapped = to_pieces(packed, [segment])
    assert [(p.chunk, s.text) for p, s in mapped] == [(0, "hello there."), (1, "nice shot")]
    assert mapped[0][1].start_s == pytest.approx(100.2) and mapped[0][1].end_s == pytest.approx(102.5)
    assert mapped[1][1].start_s == pytest.approx(200.0) and mapped[1][1].end_s == pytest.approx(203.0)
    # Without word times the segment goes whole to the piece it overlaps most.
    bare = AsrSegment(0.2, second + 3.0, "hello there. nice shot", -0.2, 0.01, 1.1, "en", 0.9)
    assert [(p.chunk, s.text) for p, s in to_pieces(packed, [bare])] == [(1, "hello there. nice shot")]


def test_each_recording_s_words_are_scored_on_their_own() -> None:
    """One input can hold several recordings: a garbled turn in one (improbable words) must not
    lower the score of another's clear speech, which the low_logprob filter would then drop."""
    packed = PackedInput((Piece(0, 0, 10.0, 13.0), Piece(1, 0, 50.0, 53.0)))
    second = 3.0 + GAP_S
    clear = (WordTiming(0.2, 1.0, " good", 0.95), WordTiming(1.1, 2.0, " game.", 0.9))
    garbled = (WordTiming(second + 0.2, second + 1.0, " blorp", 0.05), WordTiming(second + 1.1, second + 2.0, " zan", 0.02))
    segment = AsrSegment(0.2, second + 2.0, "good game. blorp zan", -1.4, 0.1, 1.2, "en", 0.9, clear + garbled)
    (first, kept), (other, dropped) = to_pieces(packed, [segment])
    assert (first.source, other.source) == (0, 1)
    assert hallucination_reason(kept, AsrSettings()) is None
    assert hallucination_reason(dropped, AsrSettings()) == "low_logprob"


def test_a_long_segment_is_cut_between_words_not_dropped() -> None:
    spoken = [(t, t + 0.5, f" w{i}") for i, t in enumerate(np.arange(0.0, 24.0, 0.6))]
    spoken[20] = (spoken[20][0], spoken[20][1], " stop.")  # a sentence end near the middle
    segment = AsrSegment(0.0, 24.0, "".join(w for _, _, w in spoken).strip(), -0.2, 0.01, 1.2, "en", 0.9, words(*spoken))
    pieces = split_long_segment(segment, 15.0)
    assert len(pieces) == 2 and all(p.end_s - p.start_s <= 15.0 for p in pieces)
    assert pieces[0].text.endswith("stop.")  # the cut is at the sentence end
    assert " ".join(p.text for p in pieces) == segment.text
    sentences, dropped = sentence_segments([segment], SentenceSettings())
    assert len(sentences) == 2 and not dropped
