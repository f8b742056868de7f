"""Training and evaluation on a lake (docs/storage.md, "Time travel"): a run records the lake
snapshot it read, `--snapshot N` reads exactly that data again, evaluation reproduces a run's
data by default, human labels live in the lake, and erasure beats time travel.

Most tests use a local lake (a DuckLake catalog file and a data folder): time travel is the
engine's, not a question of many hosts, and they stay seconds. One test runs the whole path on
PostgreSQL + moto's S3 server, the many-machines store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import synthetic_clips
from tests.test_evaluate import as_evaluation_segments, human_labels_for
from tests import test_lake
from voxtox.labels import CLASSES
from voxtox.settings import EvaluateSettings, Settings, TrainSettings
from voxtox.storage import lake
from voxtox.storage.catalog import Catalog, LakeCatalog
from voxtox.storage.clips import read_clip_index
from voxtox.storage.human_labels import import_truth_files_to_lake
from voxtox.storage.lake import LakeTarget, SnapshotGoneError
from voxtox.storage.runs import RunDir
from voxtox.tasks.evaluate import evaluate_runs, pin_evaluation_snapshot
from voxtox.tasks.train import train_model


# the real PostgreSQL + S3 lake of tests/test_lake.py, for the tests on the many-machines store
postgres, target = test_lake.postgres, test_lake.target  # s3_endpoint: tests/conftest.py


@pytest.fixture
def local_lake(tmp_path: Path) -> LakeTarget:
    return LakeTarget(str(tmp_path / "lake.ducklake"), str(tmp_path / "lake-data"))


def _write(target: LakeTarget, key: str, table: pa.Table, name: str = "clips") -> int:
    """One commit of `table`'s rows under `key`; the lake's snapshot after it."""
    with lake.connect(target) as con:
        lake.replace_key(con, target, key, {name: table})
        return lake.snapshot_id(con)


def _fill(target: LakeTarget) -> int:
    """Training clips of two recordings, validation clips, and test evaluation segments with
    human labels: the lake a first run reads. Returns its snapshot."""
    _write(target, "train-a", synthetic_clips(32, "train", 0).slice(0, 20).drop_columns(["source_sha256"])
           .append_column("source_sha256", pa.array(["train-a"] * 20)))
    _write(target, "train-b", synthetic_clips(32, "train", 0).slice(20).drop_columns(["source_sha256"])
           .append_column("source_sha256", pa.array(["train-b"] * 12)))
    _write(target, "val", synthetic_clips(12, "val", 1))
    test = as_evaluation_segments(synthetic_clips(18, "test", 2), "test", 3, ("en",))
    _write(target, "test", test)
    for source, labels in human_labels_for(test, flip_every=5).items():
        last = _write(target, source, labels, "human_labels")
    return last


def _settings(tmp_path: Path, target: LakeTarget, encoder: Path, snapshot: int | None = None) -> Settings:
    train = TrainSettings(encoder=str(encoder), epochs=1, batch_size=4, grad_accum=2, learning_rate=1e-3,
                          num_workers=0, checkpoint_every=100, val_resamples=20, threads=1, val_filter="TRUE")
    return Settings(data_dir=tmp_path / "data", train=train, evaluate=EvaluateSettings(n_resamples=100),
                    storage={"catalog_url": target.catalog_url, "data_url": target.data_url, "snapshot": snapshot})


def _more_data(target: LakeTarget) -> int:
    """A later night: a third training recording and a new test recording (with labels)."""
    extra = synthetic_clips(16, "train", 5).drop_columns(["source_sha256", "clip_id"])
    _write(target, "train-c", extra.append_column("source_sha256", pa.array(["train-c"] * 16))
           .append_column("clip_id", pa.array([f"late-train-{i}" for i in range(16)])))
    test = as_evaluation_segments(synthetic_clips(6, "test", 7), "test", 1, ("en",))
    test = test.drop_columns(["source_sha256", "clip_id"]).append_column(
        "source_sha256", pa.array(["test-late"] * 6)).append_column("clip_id", pa.array([f"late-{i}" for i in range(6)]))
    _write(target, "test-late", test)
    labels = human_labels_for(test, flip_every=5)["test-late"]
    return _write(target, "test-late", labels, "human_labels")


def _said(output: str) -> str:
    """A command's output with the terminal's line wrapping undone."""
    return " ".join(output.split())


def test_a_run_records_its_snapshot_and_train_at_that_snapshot_sees_only_its_rows(
        local_lake: LakeTarget, tiny_whisper: Path, tmp_path: Path) -> None:
    first = _fill(local_lake)
    report = train_model(_settings(tmp_path, local_lake, tiny_whisper), tmp_path / "run1")
    config = json.loads((tmp_path / "run1" / "config.json").read_text())
    assert report.lake_snapshot == first == RunDir(tmp_path / "run1").lake_snapshot()
    assert config["lake"] == {"snapshot_id": first, "catalog": local_lake.catalog_url, "data_url": local_lake.data_url}
    assert config["train_clips"] == 32 and config["val_clips"] == 12

    later = _more_data(local_lake)
    assert later > first
    latest = Catalog.from_settings(_settings(tmp_path, local_lake, tiny_whisper))
    assert len(read_clip_index(latest, "train", "TRUE")) == 48  # the new night is in the lake
    again = train_model(_settings(tmp_path, local_lake, tiny_whisper, snapshot=first), tmp_path / "run2")
    assert again.lake_snapshot == first
    config2 = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert (config2["train_clips"], config2["val_clips"]) == (config["train_clips"], config["val_clips"])
    # the same data, seed and settings: the same model, weight for weight
    one, two = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("run1", "run2"))
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    # no copy of the lake's audio outlives its reader: the work dir holds only this process's copy
    copies = list((tmp_path / "data" / "work").glob("lake-audio-*/clips-*.parquet"))
    assert copies and all(path.parent.name.startswith(f"lake-audio-{os.getpid()}-") for path in copies)


def test_evaluate_reads_the_run_s_snapshot_by_default_and_the_latest_when_asked(
        local_lake: LakeTarget, tiny_whisper: Path, tmp_path: Path) -> None:
    _fill(local_lake)
    settings = _settings(tmp_path, local_lake, tiny_whisper)
    run = Path(train_model(settings, tmp_path / "run").run_dir)
    before = evaluate_runs([run], pin_evaluation_snapshot(settings, [run]), tmp_path / "eval-before")
    _more_data(local_lake)
    after = evaluate_runs([run], pin_evaluation_snapshot(settings, [run]), tmp_path / "eval-after")
    assert before.lake_snapshot == after.lake_snapshot == RunDir(run).lake_snapshot()
    assert after.n_segments == before.n_segments and after.evaluation_id == before.evaluation_id
    assert pq.read_table(after.results).drop_columns(["evaluated_at"]).equals(
        pq.read_table(before.results).drop_columns(["evaluated_at"]))
    latest = evaluate_runs([run], pin_evaluation_snapshot(settings, [run], "latest"), tmp_path / "eval-latest")
    assert latest.n_segments == before.n_segments + 6 and latest.lake_snapshot > before.lake_snapshot
    # the evaluation rows are in the lake, where every host's `voxtox query` reads them
    rows = Catalog.from_settings(settings).query("SELECT count(DISTINCT evaluation_id) AS n FROM evaluations")
    assert rows.to_pylist() == [{"n": 2}]


def test_a_forgotten_recording_is_not_reachable_through_an_old_snapshot(
        local_lake: LakeTarget, tiny_whisper: Path, tmp_path: Path) -> None:
    """Erasure beats time travel: after `forget`, the snapshots a run recorded are gone, and
    reading one fails in one line rather than giving back the forgotten rows."""
    first = _fill(local_lake)
    settings = _settings(tmp_path, local_lake, tiny_whisper)
    run = Path(train_model(settings, tmp_path / "run").run_dir)
    with lake.connect(local_lake) as con:
        assert lake.erase(con, local_lake, {"train-a"}) == 20
        remaining = lake.snapshots(con)
    assert first not in remaining
    for snapshot in remaining:  # every snapshot still readable holds nothing of it
        with lake.connect_at(local_lake, snapshot) as con:
            assert con.execute("SELECT count(*) FROM lake.clips WHERE source_sha256 = 'train-a'").fetchone()[0] == 0
    with pytest.raises(SnapshotGoneError) as gone:
        LakeCatalog(local_lake, settings.data_dir, first).pinned()
    assert f"no snapshot {first}" in str(gone.value) and "\n" not in str(gone.value)
    with pytest.raises(SnapshotGoneError):
        train_model(_settings(tmp_path, local_lake, tiny_whisper, snapshot=first), tmp_path / "again")
    with pytest.raises(SnapshotGoneError):  # the run's own snapshot is gone: said, not silently replaced
        pin_evaluation_snapshot(settings, [run])
    latest = pin_evaluation_snapshot(settings, [run], "latest")
    assert latest.storage.snapshot == max(remaining)


def test_import_labels_writes_the_lake_s_human_labels_and_skips_forgotten_recordings(
        local_lake: LakeTarget, tmp_path: Path) -> None:
    from voxtox.flows.cli import app

    _write(local_lake, "s1", pa.table({"source_sha256": ["a" * 64], "duration_s": [10.0]}), "sources")
    truth = tmp_path / "truth.jsonl"
    spans = [{"audio_sha256": "a" * 64, "start_s": 1.0, "end_s": 2.0, "labels": ["profanity"]},
             {"audio_sha256": "b" * 64, "start_s": 0.0, "end_s": 1.0, "labels": []}]
    truth.write_text("".join(json.dumps(s) + "\n" for s in spans))
    env = {"VOXTOX_STORAGE__CATALOG_URL": local_lake.catalog_url, "VOXTOX_STORAGE__DATA_URL": local_lake.data_url}
    for _ in range(2):  # importing again replaces, never duplicates
        result = CliRunner().invoke(app, ["import-labels", str(truth), "--data-dir", str(tmp_path / "d")], env=env)
        assert result.exit_code == 0, result.output
        assert "into the lake's human_labels" in _said(result.output)
    with lake.connect(local_lake) as con:
        assert con.execute("SELECT count(*) FROM lake.human_labels").fetchone()[0] == 2
        lake.erase(con, local_lake, {"b" * 64})
    report = import_truth_files_to_lake([truth], local_lake)
    assert (report.n_sources, report.n_forgotten) == (1, 1)
    too_long = tmp_path / "long.jsonl"  # the lake's `sources` row says how long the audio is
    too_long.write_text(json.dumps({"audio_sha256": "a" * 64, "start_s": 9.0, "end_s": 30.0, "labels": []}) + "\n")
    with pytest.raises(ValueError, match="ends after the audio"):
        import_truth_files_to_lake([too_long], local_lake)


def test_train_and_evaluate_through_the_cli_on_postgresql_and_s3(target: LakeTarget, tiny_whisper: Path,
                                                                 tmp_path: Path, prefect_harness) -> None:
    """The many-machines store: the clips' audio comes from S3 at the run's snapshot; the CLI
    and the Prefect flows say which snapshot they read; evaluate reproduces the run's data."""
    from voxtox.flows.cli import app

    first = _fill(target)
    config = tmp_path / "tiny.toml"
    config.write_text(f'[train]\nthreads = 1\nnum_workers = 0\nval_resamples = 20\nbatch_size = 4\ngrad_accum = 2\n'
                      f'epochs = 1\nval_filter = "TRUE"\nencoder = "{tiny_whisper}"\n[evaluate]\nn_resamples = 100\n')
    env = {"VOXTOX_STORAGE__CATALOG_URL": target.catalog_url, "VOXTOX_STORAGE__DATA_URL": target.data_url}
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    trained = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), *common], env=env)
    assert trained.exit_code == 0, trained.output
    assert f"read lake snapshot {first}" in _said(trained.output)
    _more_data(target)
    evaluated = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), *common], env=env)
    assert evaluated.exit_code == 0, evaluated.output
    assert f"read lake snapshot {first}" in _said(evaluated.output)
    results = pq.read_table(tmp_path / "run" / "evaluation" / "test" / "evaluation.parquet")
    assert set(results["n_segments"].to_pylist()) == {18}  # the run's test segments, not the 6 added since
    with pytest.raises(SnapshotGoneError):
        with lake.connect(target) as con:
            lake.erase(con, target, {"train-b"})
        pin_evaluation_snapshot(_settings(tmp_path, target, tiny_whisper), [tmp_path / "run"])
    gone = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), *common], env=env)
    assert gone.exit_code == 2 and f"no snapshot {first}" in _said(gone.output), gone.output


def test_query_reads_the_snapshot_the_settings_name(local_lake: LakeTarget, tmp_path: Path) -> None:
    from voxtox.flows.cli import app

    first = _write(local_lake, "a", pa.table({"source_sha256": ["a"], "duration_s": [1.0]}), "sources")
    _write(local_lake, "b", pa.table({"source_sha256": ["b"], "duration_s": [1.0]}), "sources")
    env = {"VOXTOX_STORAGE__CATALOG_URL": local_lake.catalog_url, "VOXTOX_STORAGE__DATA_URL": local_lake.data_url}
    sql = ["query", "SELECT count(*) AS n FROM sources", "--format", "csv", "--data-dir", str(tmp_path / "d")]
    for snapshot, expected in ((None, "2"), (first, "1")):
        extra = {} if snapshot is None else {"VOXTOX_STORAGE__SNAPSHOT": str(snapshot)}
        result = CliRunner().invoke(app, sql, env=env | extra)
        assert result.exit_code == 0, result.output
        assert result.output.split() == ['"n"', expected]


def test_reviews_go_into_the_lake_and_training_reads_them(local_lake: LakeTarget, tmp_path: Path) -> None:
    from tests.test_review import _task
    from voxtox.storage.review_import import import_answers
    from voxtox.storage.reviews import ForgottenClipError, write_reviews_to_lake

    _write(local_lake, "train", synthetic_clips(12, "train", 0))
    settings = Settings(data_dir=tmp_path / "d", storage={"catalog_url": local_lake.catalog_url,
                                                          "data_url": local_lake.data_url})
    answers = [_task(1, "train-0000", (["racism", "bullying"], None, False)),  # the pipeline said profanity
               _task(2, "train-0001", (["no_violation"], None, False))]
    first = import_answers(settings, answers, "test")
    assert (first.written.new, first.written.changed) == (2, 0)
    again = import_answers(settings, answers, "test")  # the same answers: nothing to write
    assert (again.written.new, again.written.changed, again.written.unchanged) == (0, 0, 2)
    assert not (settings.shards_dir / "reviews").exists()  # nothing beside the lake
    train = read_clip_index(Catalog.from_settings(settings), "train", "TRUE")
    assert train.n_reviewed == 2
    labels = dict(zip(train.clip_ids, train.labels, strict=True))
    assert [c for c, v in zip(CLASSES, labels["train-0000"], strict=True) if v] == ["bullying", "racism"]
    rows = Catalog.from_settings(settings).query("SELECT clip_id FROM segment_truth WHERE reviewed ORDER BY 1")
    assert rows["clip_id"].to_pylist() == ["train-0000", "train-0001"]
    with lake.connect(local_lake) as con:
        lake.erase(con, local_lake, {"src-train"})
        row = con.execute("SELECT count(*) FROM lake.reviews").fetchone()
    assert row == (0,)  # forget erases the reviews with the clips
    review = {**{k: None for k in ("lang", "transcript", "reviewers", "project")}, "clip_id": "train-0002",
              "source_sha256": "src-train", "split": "train", "start_s": 0.0, "end_s": 1.0, "status": "agreed"}
    with pytest.raises(ForgottenClipError, match="train-0002"):
        write_reviews_to_lake(local_lake, [review])


def test_the_nightly_runs_on_a_lake_and_its_rerun_redoes_nothing(target: LakeTarget, tiny_whisper: Path,
                                                                 tmp_path: Path, prefect_harness) -> None:
    """Label the inbox into PostgreSQL + S3, import its truth into the lake, compact the lake,
    train a candidate that records its snapshot, calibrate, evaluate and promote it."""
    from tests.conftest import write_nightly_inbox
    from tests.test_nightly import nightly_settings
    from voxtox.flows.nightly import nightly_flow

    sessions = {"train": 2, "val": 1, "test": 1}
    inbox = write_nightly_inbox(tmp_path / "inbox", sessions)
    settings = nightly_settings(tmp_path / "data", tiny_whisper).model_copy(
        update={"storage": Settings(storage={"catalog_url": target.catalog_url, "data_url": target.data_url}).storage})
    first = nightly_flow(inbox=str(inbox), settings=settings, night="2026-11-21")
    assert set(first.labelled_clips) == {"train", "val", "test"} and first.labelled_clips["train"] > 0
    assert first.imported_label_spans == 3 * (sessions["val"] + sessions["test"])
    assert first.trained_now and first.promoted, first.reason
    assert not (settings.shards_dir / "clips").exists()  # nothing landed beside the lake
    with lake.connect(target, read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT source_sha256) FROM lake.human_labels").fetchone()[0] == 2
        assert lake.data_files(con, "sources") == 1  # compacted after labelling
        assert RunDir(Path(first.candidate)).lake_snapshot() in lake.snapshots(con)
    assert (settings.runs_dir / "current" / "best" / "thresholds.json").exists()

    again = nightly_flow(inbox=str(inbox), settings=settings, night="2026-11-21")
    assert sum(again.labelled_clips.values()) == 0 and again.skipped_sources == sum(sessions.values())
    assert not again.trained_now and "already the current" in again.reason


def test_a_snapshot_the_default_lake_does_not_have_is_one_line(tmp_path: Path) -> None:
    """No `[storage]`: the embedded lake under the data dir, here not made yet, so no snapshot 3."""
    from voxtox.flows.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--snapshot", "3",
                                      "--data-dir", str(tmp_path / "d")], env={"VOXTOX_STORAGE__CATALOG_URL": ""})
    assert result.exit_code == 2 and "has no snapshot 3" in _said(result.output), result.output
    assert not (tmp_path / "run").exists()
