"""Audio-only inference: a tiny classifier trained for one epoch on synthetic shards, thresholds
calibrated on validation (pipeline labels, then human labels), and `voxtox classify` over a
directory with good and broken files, to the terminal, JSONL and Parquet."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from conftest import spoken, synthetic_clips, write_rows
from typer.testing import CliRunner

from voxtox.audio import load_audio
from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.models.inference import WindowScorer, window_bounds
from voxtox.settings import Settings, TrainSettings, VadSettings
from voxtox.storage.schema import HUMAN_LABELS_SCHEMA, label_column
from voxtox.tasks.calibrate import calibrate_thresholds
from voxtox.storage.runs import THRESHOLDS_FILE, resolve_model_dir
from voxtox.models.classify import classify_inputs, load_model
from voxtox.corpus.speech_synth import Utterance
from voxtox.tasks.train import train_model

RATE = 16_000
N_VAL = 12


def _evaluation_segments(table: pa.Table) -> pa.Table:
    """Validation clips as the pipeline writes them: 'evaluation' VAD segments laid one after
    another along their source, so human-labelled spans can be matched to them by time."""
    durations = table["duration_s"].to_numpy()
    starts = np.concatenate([[0.0], np.cumsum(durations + 1.0)[:-1]])
    for name, values in (("segment_kind", pa.array(["evaluation"] * len(table))),
                         ("start_s", pa.array(starts)), ("end_s", pa.array(starts + durations))):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("classify-data")
    write_rows(directory, "clips", synthetic_clips(32, "train", 0), "src-train")
    write_rows(directory, "clips", _evaluation_segments(synthetic_clips(N_VAL, "val", 1)), "src-val")
    return directory


def _settings(data_dir: Path, encoder: Path) -> Settings:
    return Settings(data_dir=data_dir, train=TrainSettings(
        encoder=str(encoder), loss="contrastive", alpha=0.5, epochs=1, batch_size=4, grad_accum=2,
        learning_rate=1e-3, num_workers=0, checkpoint_every=100, val_resamples=20, threads=1,
    ))


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tiny_whisper: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of training (seconds); thresholds are not calibrated yet."""
    out = tmp_path_factory.mktemp("classify-run") / "run"
    train_model(_settings(data_dir, tiny_whisper), out)
    return out


def _tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t) + 0.02 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("to-classify")
    soundfile.write(directory / "long.wav", _tone(33.0, 350), RATE)  # 3 windows: 15 + 15 + 3 s
    soundfile.write(directory / "short.flac", _tone(4.0, 800), RATE)
    (directory / "broken.wav").write_text("not audio at all\n" * 50)
    good = (directory / "long.wav").read_bytes()
    (directory / "cut.wav").write_bytes(good[: len(good) // 3])
    return directory


def test_a_run_dir_a_model_dir_and_a_link_to_a_run_resolve(run_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_dir(run_dir) == (run_dir / "best").resolve()
    assert resolve_model_dir(run_dir / "final") == (run_dir / "final").resolve()
    (tmp_path / "current").symlink_to(run_dir, target_is_directory=True)
    assert resolve_model_dir(tmp_path / "current") == (run_dir / "best").resolve()
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        resolve_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_model_dir(tmp_path / "missing")


def test_classify_before_calibration_uses_half(run_dir: Path, audio_dir: Path) -> None:
    result = CliRunner().invoke(app, ["classify", str(audio_dir / "short.flac"), "--model", str(run_dir), "--no-vad"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at the test terminal's width
    assert "default 0.5" in text and "voxtox calibrate" in text
    assert "windows" in text and "short.flac" in text


def test_thresholds_from_pipeline_labels_of_val_evaluation_segments(data_dir: Path, run_dir: Path, tiny_whisper: Path) -> None:
    result = calibrate_thresholds(run_dir, _settings(data_dir, tiny_whisper))
    saved = json.loads((run_dir / "best" / THRESHOLDS_FILE).read_text())
    assert saved == result
    assert saved["labels"] == "pipeline" and saved["split"] == "val" and saved["segments"] == "evaluation"
    assert saved["n_segments"] == N_VAL and saved["positives"] == {c: 2 for c in CLASSES}
    assert saved["defaulted_to_0.5"] == []
    # Each threshold is one of the validation scores, and its F1 is what that threshold gives.
    model = load_model(run_dir)
    scorer = WindowScorer(model.model)
    val = synthetic_clips(N_VAL, "val", 1)
    scores = np.stack([scorer.score(_decode_flac(row["audio"]["bytes"])).max(axis=0) for row in val.to_pylist()])
    labels = np.stack([val[label_column(c)].to_numpy(zero_copy_only=False) for c in CLASSES], axis=1)
    for k, name in enumerate(CLASSES):
        threshold = saved["thresholds"][name]
        assert np.isclose(scores[:, k], threshold, atol=1e-6).any()
        predicted = scores[:, k] >= threshold - 1e-7
        tp = (predicted & labels[:, k]).sum()
        assert saved["f1"][name] == pytest.approx(2 * tp / (predicted.sum() + labels[:, k].sum()), abs=1e-6)
    assert model.thresholds.calibrated
    assert np.allclose(model.thresholds.values, [saved["thresholds"][c] for c in CLASSES])


def _decode_flac(data: bytes) -> np.ndarray:
    import io

    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples


def test_thresholds_use_human_labels_when_the_split_has_them(
    data_dir: Path, run_dir: Path, tiny_whisper: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    model_dir = tmp_path / "model"
    shutil.copytree(run_dir / "final", model_dir)
    val = _evaluation_segments(synthetic_clips(N_VAL, "val", 1)).to_pylist()
    # Humans labelled spans over the first 8 clips; they call clip 0 racism (the pipeline said
    # profanity). The source's other 4 clips are in segment_truth too, with no label at all.
    spans = [(row["start_s"], row["end_s"], "racism" if i == 0 else next(c for c in CLASSES if row[label_column(c)]))
             for i, row in enumerate(val[:8])]
    records = [{"source_sha256": "src-val", "source_uri": "synthetic://val", "start_s": s, "end_s": e,
                "speaker": "a", "lang": "en", "text": "t", **{label_column(c): c == cls for c in CLASSES},
                "label_origin": "test", "imported_at": datetime.now(UTC)} for s, e, cls in spans]
    write_rows(copy, "human_labels", pa.Table.from_pylist(records, HUMAN_LABELS_SCHEMA), "src-val")
    result = CliRunner().invoke(app, ["calibrate", str(model_dir), "--data-dir", str(copy)])
    assert result.exit_code == 0, result.output
    saved = json.loads((model_dir / THRESHOLDS_FILE).read_text())
    assert saved["labels"] == "segment_truth" and saved["n_segments"] == N_VAL
    assert saved["positives"] == {"profanity": 1, "bullying": 2, "dating_sexting": 1, "racism": 2, "other": 1,
                                  "no_violation": 1}
    assert "12 val segments (segment_truth labels)" in " ".join(result.output.split())


def test_classify_a_directory_with_broken_files_to_jsonl_and_parquet(run_dir: Path, audio_dir: Path, tmp_path: Path, data_dir: Path, tiny_whisper: Path) -> None:
    if not (run_dir / "best" / THRESHOLDS_FILE).exists():
        calibrate_thresholds(run_dir, _settings(data_dir, tiny_whisper))
    thresholds = json.loads((run_dir / "best" / THRESHOLDS_FILE).read_text())["thresholds"]
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(app, ["classify", str(audio_dir), "--model", str(run_dir), "--output", str(out), "--no-vad"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "broken.wav: not_audio" in text and "cut.wav: truncated" in text
    assert "2 files classified, 0 without speech, 2 rejected" in text
    records = {Path(r["file"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == ["broken.wav", "cut.wav", "long.wav", "short.flac"]
    assert records["broken.wav"]["status"] == "rejected" and records["broken.wav"]["windows"] == []
    long = records["long.wav"]
    assert long["status"] == "ok" and long["n_windows"] == 3 and long["duration_s"] == pytest.approx(33.0)
    assert [(w["start_s"], w["end_s"]) for w in long["windows"]] == [(0.0, 15.0), (15.0, 30.0), (30.0, 33.0)]
    # The file's probability is the maximum over its windows; decisions use the calibrated thresholds.
    model = load_model(run_dir).model
    expected = WindowScorer(model).score(load_audio(str(audio_dir / "long.wav")).samples)
    got = np.array([[w[f"prob_{c}"] for c in CLASSES] for w in long["windows"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for k, name in enumerate(CLASSES):
        assert long[f"prob_{name}"] == pytest.approx(expected[:, k].max(), abs=1e-6)
        assert long[f"label_{name}"] == (long[f"prob_{name}"] >= thresholds[name])
    assert long["labels"] == [c for c in CLASSES if long[f"label_{c}"]]

    parquet = tmp_path / "results.parquet"
    result = CliRunner().invoke(app, ["classify", str(audio_dir / "*"), "--model", str(run_dir), "--output", str(parquet),
                                      "--no-vad"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(parquet)
    assert table.num_rows == 4 and table.schema.metadata[b"voxtox.model"].decode().endswith("best")
    rows = {Path(r["file"]).name: r for r in table.to_pylist()}
    assert rows["cut.wav"]["reason"] == "truncated" and rows["cut.wav"]["prob_racism"] is None
    assert len(rows["long.wav"]["windows"]) == 3
    assert rows["short.flac"]["prob_bullying"] == pytest.approx(records["short.flac"]["prob_bullying"], abs=1e-6)


def test_only_broken_input_exits_non_zero(run_dir: Path, audio_dir: Path) -> None:
    result = CliRunner().invoke(app, ["classify", str(audio_dir / "broken.wav"), "--model", str(run_dir)])
    assert result.exit_code == 1 and "not_audio" in result.output
    result = CliRunner().invoke(app, ["classify", str(audio_dir), "--model", str(run_dir / "nowhere")])
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())


def test_windows_of_many_files_share_batches_and_keep_file_order(run_dir: Path, audio_dir: Path) -> None:
    model = load_model(run_dir).model
    results = list(classify_inputs([str(audio_dir)], model, batch_size=3))
    assert [Path(r.file).name for r in results] == ["broken.wav", "cut.wav", "long.wav", "short.flac"]
    alone = list(classify_inputs([str(audio_dir / "short.flac")], model, batch_size=1))[0]
    np.testing.assert_allclose(results[3].window_probs, alone.window_probs, atol=1e-5)


def test_a_long_recording_is_scored_a_group_of_windows_at_a_time(run_dir: Path, audio_dir: Path, monkeypatch) -> None:
    """`voxtox classify` bounds memory on long recordings: decoded to a scratch file, its windows
    scored WINDOWS_PER_GROUP at a time (1 here, so the 33 s file is cut). The windows and their
    probabilities are those of scoring the file in one piece, and no scratch file is left."""
    import tempfile

    import voxtox.models.classify as classify

    model = load_model(run_dir).model
    whole = WindowScorer(model).score(load_audio(str(audio_dir / "long.wav")).samples)
    monkeypatch.setattr(classify, "WINDOWS_PER_GROUP", 1)
    scratch = Path(tempfile.mkdtemp())
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (result,) = classify_inputs([str(audio_dir / "long.wav")], model)
    assert result.windows == [(0.0, 15.0), (15.0, 30.0), (30.0, 33.0)]
    np.testing.assert_allclose(result.window_probs, whole, atol=1e-5)
    assert list(scratch.iterdir()) == []
    for n in (0, 1000, 15 * RATE, 15 * RATE + 8000, 47 * RATE + 123):
        spans = classify.whole_recording_spans(n, 15.0)
        tiled = [(a + s, a + e) for a, b in spans for s, e in window_bounds(b - a)]
        assert tiled == window_bounds(n), n


def test_with_the_vad_only_speech_is_scored_and_silence_is_said(run_dir: Path, tmp_path: Path) -> None:
    """Speech, 20 s of near-silence, speech: the VAD's segments are scored (windows in file
    time, none in the silence); a silent-but-valid file gets `no_speech`, not a score."""
    first = spoken(Utterance("good game everyone, see you all tomorrow", "en"))
    second = spoken(Utterance("you are trash, uninstall the game right now", "en"))
    gap = np.random.default_rng(0).normal(0, 1e-4, 20 * RATE).astype(np.float32)
    soundfile.write(tmp_path / "chat.wav", np.concatenate([first, gap, second]), RATE)
    soundfile.write(tmp_path / "hum.wav", np.random.default_rng(1).normal(0, 3e-3, 5 * RATE), RATE)  # no speech
    model = load_model(run_dir).model
    chat, quiet = list(classify_inputs([str(tmp_path)], model, vad=VadSettings()))
    assert chat.status == "ok" and len(chat.windows) == 2
    first_end, second_start = len(first) / RATE, (len(first) + len(gap)) / RATE
    (a_start, a_end), (b_start, b_end) = chat.windows
    assert a_start < 1.0 and a_end < first_end + 0.5 and second_start - 0.5 < b_start and b_end > second_start + 1
    alone = WindowScorer(model).score(load_audio(str(tmp_path / "chat.wav")).samples[int(b_start * RATE) : int(round(b_end * RATE))])
    np.testing.assert_allclose(chat.window_probs[1], alone[0], atol=1e-5)
    assert quiet.status == "no_speech" and quiet.probs is None
    result = CliRunner().invoke(app, ["classify", str(tmp_path), "--model", str(run_dir), "--output", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 0, result.output
    assert "1 files classified, 1 without speech, 0 rejected" in " ".join(result.output.split())


def test_the_prefect_flow_classifies_a_directory_and_publishes_artifacts(
    run_dir: Path, audio_dir: Path, tmp_path: Path, prefect_harness
) -> None:
    from prefect.client.orchestration import get_client

    from voxtox.flows.classify import classify_flow

    out = tmp_path / "flow.parquet"
    summary = classify_flow(inputs=[str(audio_dir)], model=str(run_dir), output=str(out), vad=False)
    assert summary["files"] == 4 and summary["classified"] == 2 and summary["rejected"] == 2
    assert summary["windows"] == 4 and pq.read_table(out).num_rows == 4

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    import asyncio

    assert {"classify-summary", "classify-files"} <= asyncio.run(artifact_keys())
