"""`voxtox synth`, `voxtox import-labels` and the corpus report's measurements (no ASR here)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from voxtox.corpus.seed import normalise_text
from voxtox.corpus.synth import (
    SPLITS,
    SynthConfig,
    encode_audio,
    evaluation_segments,
    load_manifest,
    sentence_pools,
    synthesize_corpus,
)
from voxtox.audio import decode_audio, load_audio
from voxtox.files import sha256_file
from voxtox.labels import CLASSES
from voxtox.settings import VadSettings
from conftest import lake_catalog
from voxtox.chunk import detect_speech
from voxtox.storage.human_labels import TruthFileError, import_truth_files_to_lake
from voxtox.storage.lake import embedded_target

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

#: ~70 s of audio: one short session per split, every condition possible.
TINY = SynthConfig(
    hours=0.02,
    langs=("en", "es", "de"),
    seed=3,
    split_fractions={"train": 0.34, "val": 0.33, "test": 0.33},
    session_s=(20.0, 24.0),
    noise_prob=1.0,
    telephone_prob=0.3,
    opus_roundtrip_prob=0.3,
    formats={"ogg": 1.0, "wav": 1.0, "flac": 1.0},
    overlap_prob=0.3,
)
#: One clean session: no noise, no channel, no overlaps, pauses longer than the VAD joins.
CLEAN = replace(
    TINY, split_fractions={"train": 0.0, "val": 0.0, "test": 1.0}, noise_prob=0.0, telephone_prob=0.0,
    opus_roundtrip_prob=0.0, overlap_prob=0.0, pause_s=(1.3, 2.5), hours=22 / 3600,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, config=TINY)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_corpus(corpus: Path, tmp_path: Path) -> None:
    again = synthesize_corpus(tmp_path / "again", config=TINY)
    first, second = _files(corpus), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert {s.split for s in again.sessions} == set(SPLITS)
    assert any(k.endswith(".ogg") for k in first) or any(k.endswith(".flac") for k in first)
    # a different seed is a different corpus
    other = synthesize_corpus(tmp_path / "other", config=replace(TINY, split_fractions={"test": 1.0}, hours=0.005, seed=4))
    assert other.sessions[0].sha256 not in {s.sha256 for s in again.sessions}


def test_ogg_opus_encoding_is_bit_exact_and_keeps_timing() -> None:
    samples = np.zeros(32_000, np.float32)
    samples[16_000:24_000] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(8_000) / 16_000)
    data = encode_audio(samples, "ogg")
    assert data == encode_audio(samples, "ogg")
    decoded = decode_audio(data).samples
    loud = np.flatnonzero(np.abs(decoded) > 0.05)
    assert abs(loud[0] / 16_000 - 1.0) < 0.01 and abs(loud[-1] / 16_000 - 1.5) < 0.01


def test_manifest_and_truth_describe_the_audio(corpus: Path) -> None:
    manifest = load_manifest(corpus)
    assert manifest.config == TINY.__class__(**{**TINY.__dict__, "workers": manifest.config.workers})
    for info in manifest.sessions:
        path = corpus / info.path
        assert sha256_file(path) == info.sha256
        duration = load_audio(str(path)).duration_s
        assert 18.0 <= duration <= 30.0
        assert abs(duration - info.duration_s) < 0.05
    rows = [json.loads(line) for s in SPLITS for line in (corpus / "truth" / f"utterances-{s}.jsonl").read_text().splitlines()]
    assert len(rows) == len(manifest.utterances) > 10
    for row in rows:
        assert 0 <= row["start_s"] < row["end_s"] and set(row["labels"]) <= set(CLASSES) and row["text"]
        assert (corpus / "truth" / row["audio"]).resolve() == (corpus / row["split"] / Path(row["audio"]).name).resolve()
    segments = [json.loads(line) for line in (corpus / "truth" / "segments-test.jsonl").read_text().splitlines()]
    assert segments and all(1.0 <= s["end_s"] - s["start_s"] <= 60.0 for s in segments)
    # every test utterance of at least 1 s is inside one segment
    test_utts = [r for r in rows if r["split"] == "test" and r["end_s"] - r["start_s"] >= 1.0]
    assert all(any(s["start_s"] <= u["start_s"] and u["end_s"] <= s["end_s"] for s in segments) for u in test_utts)


def test_splits_are_disjoint_by_voice_and_sentence(corpus: Path) -> None:
    from voxtox.models.labeller_data import load_splits

    manifest = load_manifest(corpus)
    voices = {split: {v for s in manifest.sessions if s.split == split for v in s.speakers} for split in SPLITS}
    assert all(voices[a].isdisjoint(voices[b]) for a in SPLITS for b in SPLITS if a < b)
    # what the default labeller trains on (seed corpus + Davidson): never an evaluation sentence
    trained = {normalise_text(t) for t in load_splits("builtin")["train"].texts}
    pools = sentence_pools(("en", "es", "fr", "de", "pt"), seed=TINY.seed)
    texts = {split: {normalise_text(s.text) for lang in pools[split].values() for s in lang} for split in SPLITS}
    assert texts["val"] and texts["test"]
    assert texts["val"].isdisjoint(trained) and texts["test"].isdisjoint(trained)
    assert all(texts[a].isdisjoint(texts[b]) for a in SPLITS for b in SPLITS if a < b)
    spoken = {split: {normalise_text(u.text) for u in manifest.utterances if u.split == split} for split in SPLITS}
    assert (spoken["val"] | spoken["test"]).isdisjoint(trained | spoken["train"])


@pytest.mark.parametrize("fmt", ["wav", "ogg"])
def test_vad_finds_every_utterance_of_a_clean_session_within_150_ms(tmp_path: Path, fmt: str) -> None:
    manifest = synthesize_corpus(tmp_path / fmt, config=replace(CLEAN, formats={fmt: 1.0}))
    (info,) = manifest.sessions
    assert info.noise == "none" and info.channel == "clean" and info.n_overlaps == 0
    samples = load_audio(str(tmp_path / fmt / info.path)).samples
    regions = detect_speech(samples, VadSettings())
    assert len(manifest.utterances) >= 4
    for u in manifest.utterances:
        hits = [r for r in regions if min(r.speech_end_s, u.end_s) > max(r.speech_start_s, u.start_s)]
        assert len(hits) == 1, (u, regions)
        assert abs(hits[0].speech_start_s - u.start_s) <= 0.15, (u, hits[0])
        assert abs(hits[0].speech_end_s - u.end_s) <= 0.15, (u, hits[0])


def test_toxic_share_flag_changes_the_imbalance(tmp_path: Path) -> None:
    config = replace(TINY, split_fractions={"test": 1.0}, hours=0.015, noise_prob=0.0, telephone_prob=0.0,
                     opus_roundtrip_prob=0.0, formats={"wav": 1.0})
    calm = synthesize_corpus(tmp_path / "calm", config=replace(config, toxic_share=0.0))
    toxic = synthesize_corpus(tmp_path / "toxic", config=replace(config, toxic_share=1.0))
    assert all(u.labels == ("no_violation",) for u in calm.utterances)
    assert all("no_violation" not in u.labels for u in toxic.utterances)


def test_evaluation_segments_join_close_utterances() -> None:
    from voxtox.corpus.synth import TruthUtterance

    def u(start: float, end: float, labels: tuple[str, ...]) -> TruthUtterance:
        return TruthUtterance("s", "test", start, end, "a", "en", "x", labels)

    segments = evaluation_segments([u(0.0, 2.0, ("no_violation",)), u(2.5, 4.0, ("racism",)),
                                    u(7.0, 7.5, ("profanity",)), u(10.0, 12.0, ("no_violation",))])
    assert [(s["start_s"], s["end_s"], s["labels"]) for s in segments] == [
        (0.0, 4.0, ["racism"]),  # joined; a toxic label wins over no_violation
        (10.0, 12.0, ["no_violation"]),  # the 0.5 s utterance alone is shorter than 1 s: left out
    ]


def test_import_labels_replaces_and_joins_segment_truth(corpus: Path, tmp_path: Path) -> None:
    from conftest import write_rows

    from tests.test_storage import _clip_rows

    manifest = load_manifest(corpus)
    val = [s for s in manifest.sessions if s.split == "val"][0]
    truth = corpus / "truth" / "utterances-val.jsonl"
    for _ in range(2):  # re-import replaces
        report = import_truth_files_to_lake([truth], embedded_target(tmp_path))
    n_val = sum(u.split == "val" for u in manifest.utterances)
    assert (report.n_sources, report.n_spans) == (1, n_val)
    first = [u for u in manifest.utterances if u.split == "val"][0]
    write_rows(tmp_path, "clips", _clip_rows(val.sha256, [(first.start_s, first.end_s)]), val.sha256[:24])
    catalog = lake_catalog(tmp_path)
    assert catalog.query("SELECT count(*) AS n FROM human_labels").to_pylist() == [{"n": n_val}]
    (row,) = catalog.query("SELECT * FROM segment_truth").to_pylist()
    assert row["n_human_spans"] >= 1
    assert all(row[f"human_label_{c}"] == (c in first.labels) for c in CLASSES if row["n_human_spans"] == 1)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_labels_names_the_file_and_problem(corpus: Path, tmp_path: Path) -> None:
    audio = next((corpus / "val").iterdir())
    good = {"audio": str(audio), "start_s": 1.0, "end_s": 2.0, "labels": ["racism"]}
    cases = {
        "missing.jsonl": ({**good, "audio": "nowhere.ogg"}, "does not exist"),
        "unknown.jsonl": ({**good, "labels": ["spam"]}, "unknown class"),
        "column.jsonl": ({k: v for k, v in good.items() if k != "labels"} | {"label_spam": True}, "unknown class column"),
        "times.jsonl": ({**good, "start_s": 3.0}, "bad times"),
        "beyond.jsonl": ({**good, "start_s": 100.0, "end_s": 9999.0}, "ends after the audio does"),
        "sha.jsonl": ({**good, "audio_sha256": "0" * 64}, "audio changed"),
    }
    for name, (row, message) in cases.items():
        path = _write_jsonl(tmp_path / name, [good, row])
        with pytest.raises(TruthFileError, match=message) as raised:
            import_truth_files_to_lake([path], embedded_target(tmp_path))
        assert f"{path}:2" in str(raised.value)
    assert not lake_catalog(tmp_path).has_table("human_labels")  # nothing half-imported
    # CSV with label_<class> columns works, and the CLI says what is wrong in one line
    csv_path = tmp_path / "truth.csv"
    csv_path.write_text("audio,start_s,end_s," + ",".join(f"label_{c}" for c in CLASSES) + "\n"
                        f"{audio},1.0,2.0,1,0,0,0,0,0\n")
    assert import_truth_files_to_lake([csv_path], embedded_target(tmp_path)).n_spans == 1
    from voxtox.flows.cli import app

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{**good, "end_s": "soon"}])
    result = CliRunner().invoke(app, ["import-labels", str(bad), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output and "end_s" in result.output
    ok = CliRunner().invoke(app, ["import-labels", str(csv_path), "--data-dir", str(tmp_path / "data")])
    assert ok.exit_code == 0, ok.output


def test_report_measures_vad_hours_and_label_quality(corpus: Path) -> None:
    from voxtox.models.corpus_report import (
        EvalRows,
        hours_table,
        label_quality_tables,
        normalise_words,
        vad_table,
    )

    manifest = load_manifest(corpus)
    table = hours_table(manifest)
    assert table.count("\n| train |") + table.count("\n| val |") + table.count("\n| test |") >= 3
    vad = vad_table(manifest, VadSettings(), ["val", "test"])
    assert "| all | 2 |" in vad
    assert normalise_words("Hé, ¡TÚ! it's  fine.") == "hé tú it's fine"
    rng = np.random.default_rng(0)
    y = rng.random((40, 5)) < 0.3
    rows = EvalRows(["en"] * 20 + ["es"] * 20, ["s"] * 40, y, np.where(y, 0.9, 0.1), y, [""] * 40, [], 0)
    text = label_quality_tables(rows, n_resamples=50)
    assert "| all | 40 | 100.0 [100.0, 100.0]" in text


def test_wer_compares_each_segment_with_the_utterances_inside_it(corpus: Path) -> None:
    from voxtox.models.corpus_report import EvalRows, wer_table

    manifest = load_manifest(corpus)
    sha = {s.session: s.sha256 for s in manifest.sessions}
    val = [u for u in manifest.utterances if u.split == "val"]
    val = [u for u in val if all(o is u or o.end_s <= u.start_s - 0.1 or o.start_s >= u.end_s + 0.1 for o in val)]
    assert val
    spans = [(sha[u.session], u.start_s - 0.1, u.end_s + 0.1) for u in val]
    texts = [u.text.upper() + "!" for u in val]  # case and punctuation do not count
    empty = np.zeros((len(val), 5), bool)
    rows = EvalRows([u.lang for u in val], [u.session for u in val], empty, empty.astype(float), empty,
                    texts, spans, 0)
    assert "| all | " in wer_table(rows, manifest) and " | 0.0 | 0 | 0 | 0 |" in wer_table(rows, manifest)
    rows.transcripts = ["" for _ in val]
    assert " | 100.0 | 0 | " in wer_table(rows, manifest)  # everything deleted


def test_training_rows_take_truth_from_overlapping_utterances(corpus: Path, tmp_path: Path) -> None:
    from conftest import synthetic_clips
    from voxtox.models.corpus_report import training_rows
    from conftest import write_rows

    manifest = load_manifest(corpus)
    train = next(s for s in manifest.sessions if s.split == "train")
    utterances = [u for u in manifest.utterances if u.session == train.session]
    first = utterances[0]
    clips = synthetic_clips(2, "train", seed=0)
    spans = {"source_sha256": [train.sha256] * 2, "start_s": [first.start_s, first.end_s + 30.0],
             "end_s": [first.end_s, first.end_s + 31.0]}
    for name, values in spans.items():
        clips = clips.set_column(clips.schema.get_field_index(name), name, pa.array(values))
    write_rows(tmp_path, "clips", clips, train.sha256[:24])
    catalog = lake_catalog(tmp_path)
    rows = training_rows(catalog, manifest)
    assert len(rows.lang) == 2 and rows.lang[0] == train.lang
    from voxtox.models.corpus_report import REPORT_CLASSES

    overlapping = [u for u in utterances if min(first.end_s, u.end_s) - max(first.start_s, u.start_s)
                   >= 0.5 * min(first.end_s - first.start_s, u.end_s - u.start_s)]
    assert rows.y[0].tolist() == [any(c in u.labels for u in overlapping) for c in REPORT_CLASSES]
    assert rows.n_unlabelled == 1 and not rows.y[1].any()  # 30 s after: beyond the session's speech


def test_synth_cli_runs_the_flow_and_report_names_the_command(tmp_path: Path, prefect_harness: None) -> None:
    from voxtox.flows.cli import app
    from voxtox.models.corpus_report import synth_command

    out = tmp_path / "corpus"
    args = ["synth", "--out", str(out), "--hours", "0.006", "--langs", "es", "--seed", "5",
            "--splits", "0,0,1", "--noise-prob", "0", "--session-s", "20:30", "--formats", "wav:1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert [s.split for s in manifest.sessions] == ["test"] and manifest.sessions[0].format == "wav"
    assert synth_command(manifest) == (f"voxtox synth --out {out} --hours 0.006 --langs es --seed 5 "
                                       "--splits 0,0,1 --noise-prob 0 --session-s 20:30 --formats wav:1")
    bad = CliRunner().invoke(app, ["synth", "--out", str(out), "--snr", "loud"])
    assert bad.exit_code != 0 and "MIN:MAX" in bad.output


def test_split_fractions_may_be_ratios() -> None:
    from voxtox.corpus.synth import voice_rosters

    as_ratios = voice_rosters(7, {"train": 6, "val": 2, "test": 2})
    as_fractions = voice_rosters(7, {"train": 0.6, "val": 0.2, "test": 0.2})
    assert as_ratios == as_fractions and all(as_ratios[s] for s in ("train", "val", "test"))
