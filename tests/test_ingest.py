"""Decoding every input format, rejecting broken inputs, and VAD chunking against known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import make_broken_inputs, spoken, write_audio
from voxtox.audio import SAMPLE_RATE, RejectedInput, discover_inputs, load_audio
from voxtox.settings import Settings, VadSettings
from voxtox.chunk import chunk_speech, detect_speech
from voxtox.confine import SourceRejection
from voxtox.tasks.ingest import PreparedSource, prepare_source
from voxtox.corpus.speech_synth import Utterance, lay_out


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return spoken(Utterance("good game everyone, see you tomorrow", "en"))


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"])
def test_every_format_decodes_to_16k_mono(tmp_path: Path, speech: np.ndarray, suffix: str) -> None:
    path = write_audio(tmp_path / f"clip{suffix}", speech, rate=44_100, channels=2)
    audio = load_audio(str(path))
    assert audio.channels == 2 and audio.original_rate in (44_100, 48_000)  # Opus is always 48 kHz
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(audio.duration_s - len(speech) / SAMPLE_RATE) < 0.08
    # The same speech comes back: the VAD finds it where it was.
    chunks = chunk_speech(audio.samples, VadSettings()).chunks
    assert len(chunks) == 1


def test_stereo_44k_is_downmixed_not_one_channel_dropped(tmp_path: Path, speech: np.ndarray) -> None:
    right_only = np.stack([np.zeros_like(speech), speech], axis=1)
    soundfile.write(tmp_path / "right.wav", right_only, SAMPLE_RATE)
    path = write_audio(tmp_path / "right44.wav", soundfile.read(tmp_path / "right.wav")[0], rate=44_100, channels=2)
    audio = load_audio(str(path))
    assert audio.original_rate == 44_100 and audio.channels == 2
    # Speech on the right channel alone is still there after the downmix (FFmpeg mixes at -3 dB).
    assert np.abs(audio.samples).max() == pytest.approx(np.abs(speech).max() / np.sqrt(2), rel=0.05)
    assert len(chunk_speech(audio.samples, VadSettings()).chunks) == 1


def test_broken_inputs_are_rejected_with_reasons(tmp_path: Path, speech: np.ndarray) -> None:
    expected = make_broken_inputs(tmp_path, speech)
    settings = Settings(data_dir=tmp_path / "data")
    for name, reason in expected.items():
        result = prepare_source(str(tmp_path / name), "train", settings, tmp_path / "work")
        assert isinstance(result, SourceRejection), name
        assert result.reason == reason, (name, result.detail)
        assert result.detail


def test_silent_file_is_rejected(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "silence.wav", np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(RejectedInput) as error:
        load_audio(str(tmp_path / "silence.wav"))
    assert error.value.reason == "silent"


def test_known_source_is_skipped(tmp_path: Path, speech: np.ndarray) -> None:
    path = write_audio(tmp_path / "a.wav", speech)
    settings = Settings(data_dir=tmp_path / "data")
    first = prepare_source(str(path), "train", settings, tmp_path / "work")
    assert isinstance(first, PreparedSource)
    assert prepare_source(str(path), "train", settings, tmp_path / "work", frozenset({first.source_sha256})) is None


def test_discover_directory_glob_and_manifests(tmp_path: Path, speech: np.ndarray) -> None:
    a = write_audio(tmp_path / "in" / "a.wav", speech)
    b = write_audio(tmp_path / "in" / "sub" / "b.flac", speech)
    assert discover_inputs(tmp_path / "in") == sorted([str(a), str(b)])
    assert discover_inputs(str(tmp_path / "in" / "**" / "*.flac")) == [str(b)]
    (tmp_path / "list.csv").write_text("uri\nin/a.wav\nin/sub/b.flac\n")
    assert discover_inputs(tmp_path / "list.csv") == sorted([str(a), str(b)])
    (tmp_path / "list.jsonl").write_text(f'{{"uri": "file://{a}"}}\n')
    assert discover_inputs(tmp_path / "list.jsonl") == [str(a)]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        discover_inputs(tmp_path / "nothing-here")


def test_auto_split_is_stable_and_uses_all_splits(tmp_path: Path) -> None:
    from hashlib import sha256

    from voxtox.tasks.ingest import assign_split

    settings = Settings(data_dir=tmp_path)
    hashes = [sha256(str(i).encode()).hexdigest() for i in range(400)]
    splits = [assign_split(h, "auto", settings) for h in hashes]
    assert splits == [assign_split(h, "auto", settings) for h in hashes]
    assert {s: splits.count(s) for s in ("train", "val", "test")}["train"] > 250
    assert set(splits) == {"train", "val", "test"}


# --- VAD -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout() -> tuple[np.ndarray, list]:
    return lay_out(
        [
            Utterance("hello there, nice shot mate", "en"),
            Utterance("hola amigo, buena partida", "es", "f1"),
            Utterance("bonjour tout le monde", "fr", "m3"),
            Utterance("gut gespielt, bis morgen", "de", "f3"),
        ],
        [1.2, 2.0, 3.5],
        lead_s=1.0,
        tail_s=1.5,
    )


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_vad_boundaries_within_100ms_of_truth(layout, frame_ms: int, aggressiveness: int) -> None:
    samples, truth = layout
    settings = VadSettings(frame_ms=frame_ms, aggressiveness=aggressiveness)
    chunks = chunk_speech(samples, settings).chunks
    assert len(chunks) == len(truth)
    for chunk, placed in zip(chunks, truth):
        assert abs(chunk.speech_start_s - placed.start_s) <= 0.1
        assert abs(chunk.speech_end_s - placed.end_s) <= 0.1
        # Padding and hang-over keep the whole utterance inside the cut.
        assert chunk.start_s <= placed.start_s and chunk.end_s >= placed.end_s


def test_short_gaps_merge_and_short_speech_is_dropped(layout) -> None:
    samples, truth = layout
    # Gaps are measured between padded regions: a 1.2 s pause leaves 0.7 s, 2.0 s leaves 1.5 s.
    merged = detect_speech(samples, VadSettings(merge_gap_s=1.0))
    assert len(merged) == 3
    result = chunk_speech(samples, VadSettings(min_segment_s=2.0))
    short = [p for p in truth if p.end_s - p.start_s + 0.5 < 2.0]
    assert result.dropped_short == len(short) > 0


def test_long_speech_is_split_at_the_quiet_point(layout) -> None:
    samples, truth = layout
    # Bridge every pause, then cap segments so the region must be split.
    settings = VadSettings(merge_gap_s=4.0, max_segment_s=6.0, min_segment_s=1.0)
    chunks = chunk_speech(samples, settings).chunks
    assert all(c.duration_s <= 6.0 + 1e-9 for c in chunks) and len(chunks) >= 2
    pauses = [(a.end_s, b.start_s) for a, b in zip(truth, truth[1:])]
    for cut in (c.end_s for c in chunks[:-1]):
        assert any(start - 0.05 <= cut <= end + 0.05 for start, end in pauses), cut


def test_inputs_are_ingested_in_batches_that_keep_every_worker_busy() -> None:
    from voxtox.tasks.ingest import ingest_batches

    uris = [f"f{i}.wav" for i in range(20)]
    assert [len(b) for b in ingest_batches(uris, 16, 1)] == [16, 4]
    assert [len(b) for b in ingest_batches(uris, 16, 4)] == [5, 5, 5, 5]
    assert [len(b) for b in ingest_batches(uris[:3], 16, 8)] == [1, 1, 1]
    assert sum(ingest_batches(uris, 7, 2), []) == uris  # every input once, in order
    assert ingest_batches([], 16, 1) == []
