"""The nightly flow end to end on a small inbox: label, import truth, train, evaluate, promote;
a rerun of the same night redoes nothing; a candidate no better than the current one is not
promoted."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import write_nightly_inbox
from voxtox.storage import lake
from voxtox.flows.nightly import nightly_flow
from voxtox.settings import Settings
from voxtox.models.nightly import candidate_run, current_run, decide, inbox_inputs, latest_candidate, promote, truth_files

#: Sessions per split; each speaks three sentences of three different classes.
SESSIONS = {"train": 4, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nightly_inbox(tmp_path_factory.mktemp("inbox"), SESSIONS)


def nightly_settings(data_dir: Path, encoder: Path) -> Settings:
    settings = Settings(data_dir=data_dir)
    return settings.model_copy(update={
        "asr": settings.asr.model_copy(update={"languages": ["en"]}),
        "train": settings.train.model_copy(update={
            "encoder": str(encoder), "epochs": 1, "batch_size": 2, "grad_accum": 1, "num_workers": 0,
            "threads": 1, "learning_rate": 1e-3, "val_resamples": 20, "checkpoint_every": 1000,
        }),
        "evaluate": settings.evaluate.model_copy(update={"n_resamples": 50}),
        "nightly": settings.nightly.model_copy(update={"min_new_clips": 1}),
    })


def test_inbox_layout_maps_directories_to_splits(tmp_path: Path) -> None:
    for name in ("train/a.wav", "test/b.wav", "truth/t.jsonl", "loose.wav", ".hidden"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert inbox_inputs(tmp_path, "auto") == {
        "train": [str(tmp_path / "train")], "test": [str(tmp_path / "test")], "auto": [str(tmp_path / "loose.wav")]
    }
    synth_corpus = tmp_path / "corpus"
    for name in ("val/s.ogg", "truth/utterances-val.jsonl", "truth/utterances-train.jsonl", "truth/segments-val.jsonl",
                 "corpus.json", "manifest.jsonl"):
        (synth_corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (synth_corpus / name).write_bytes(b"")
    assert inbox_inputs(synth_corpus, "auto") == {"val": [str(synth_corpus / "val")]}
    assert truth_files(synth_corpus) == [synth_corpus / "truth" / "utterances-val.jsonl"]
    with pytest.raises(FileNotFoundError, match="inbox"):
        inbox_inputs(tmp_path / "missing", "auto")


def test_the_promoted_run_is_recognised_with_a_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("data"))  # as `voxtox demo` and the defaults give it
    candidate = candidate_run(settings, "2026-11-21")
    (candidate / "final").mkdir(parents=True)
    (candidate / "final" / "model.safetensors").write_bytes(b"")
    promote(candidate, settings)
    assert current_run(settings) == candidate == latest_candidate(settings)  # a rerun sees "already current"


def test_promotion_needs_an_interval_above_zero() -> None:
    assert decide((0.05, 0.01, 0.09)).promoted
    assert not decide((0.05, -0.01, 0.09)).promoted
    assert not decide((0.0, 0.0, 0.0)).promoted  # the same model: no evidence of improvement
    assert not decide(None).promoted


def test_nightly_labels_trains_evaluates_promotes_and_reruns_idempotently(
    inbox: Path, tiny_whisper: Path, tmp_path: Path, prefect_harness: None
) -> None:
    settings = nightly_settings(tmp_path / "data", tiny_whisper)
    first = nightly_flow(inbox=str(inbox), settings=settings, night="2026-11-21")
    assert set(first.labelled_clips) == {"train", "val", "test"} and first.labelled_clips["train"] > 0
    assert first.imported_label_spans == 3 * (SESSIONS["val"] + SESSIONS["test"])
    # Compacted after labelling: the night's `sources` rows share one data file of the lake; the
    # rerun below still finds every source there and skips it.
    assert first.compacted_files > 0
    with closing(lake.connect(lake.target_for(settings), read_only=True)) as con:
        assert lake.data_files(con, "sources") == 1
    assert first.trained_now and first.promoted, first.reason
    current = settings.runs_dir / "current"
    assert current.is_symlink() and current.resolve() == Path(first.candidate).resolve()
    assert Path(first.evaluation_report).exists()
    assert (current / "best" / "thresholds.json").exists()  # classify decides with validation's thresholds

    again = nightly_flow(inbox=str(inbox), settings=settings, night="2026-11-21")
    assert sum(again.labelled_clips.values()) == 0 and again.skipped_sources == sum(SESSIONS.values())
    assert not again.trained_now and not again.promoted and "already the current" in again.reason

    # Another night, the same data and seed: an identical model cannot beat the current one.
    second = nightly_flow(inbox=str(inbox), settings=settings, night="2026-11-22", force_train=True)
    assert second.trained_now and not second.promoted, second.reason
    assert "does not exclude 0" in second.reason or "undefined" in second.reason
    assert current.resolve() == Path(first.candidate).resolve()
