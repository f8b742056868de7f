"""`voxtox review`: choosing clips, the Label Studio project on disk, importing answers, and the
answers reaching training, truth and `voxtox forget`. (The round trip through a real Label Studio
server is tests/test_labelstudio.py.)"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile
from typer.testing import CliRunner

from tests.conftest import lake_catalog, synthetic_clips, write_keys
from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.settings import Settings
from voxtox.storage.clips import read_clip_index
from voxtox.storage.reviews import read_reviews
from voxtox.storage.schema import label_column, prob_column
from voxtox.storage.forget import ForgetRequest, forget
from voxtox.storage.review_export import CHOICES, TEXT, export_batch
from voxtox.storage.review_import import ExportError, import_answers, import_export_file
from voxtox.models.review_select import select_for_review

N_TRAIN = 48  # 2 languages x 6 classes x 4 clips
runner = CliRunner()


def _clips(n: int, split: str, seed: int) -> pa.Table:
    """Synthetic clips in two languages, the labeller's score of each clip's class spread from
    0.52 (a close call) to 0.98 (sure), every other class at 0.02."""
    table = synthetic_clips(n, split, seed)
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        row["lang"] = "en" if (i // len(CLASSES)) % 2 == 0 else "de"
        own = CLASSES[i % len(CLASSES)]
        for c in CLASSES:
            row[prob_column(c)] = 0.52 + 0.46 * (i / n) if c == own else 0.02
        row["source_sha256"] = f"src-{split}-{i // 12}"  # four recordings per split
    return pa.Table.from_pylist(rows, table.schema)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    train, val = _clips(N_TRAIN, "train", 0), _clips(12, "val", 1)
    val = val.set_column(val.schema.get_field_index("segment_kind"), "segment_kind", pa.array(["evaluation"] * 12))
    write_keys(tmp_path, "clips", {sha: table.filter(pa.compute.equal(table["source_sha256"], sha))
                                   for table in (train, val) for sha in sorted(set(table["source_sha256"].to_pylist()))})
    return Settings(data_dir=tmp_path)


def _task(task_id: int, clip: str, *answers: tuple[list[str], str | None, bool]) -> dict:
    """A task as Label Studio's JSON export writes it: one annotation per (classes, text, cancelled)."""
    annotations = []
    for number, (labels, text, cancelled) in enumerate(answers, 1):
        result = [] if cancelled else [
            {"from_name": CHOICES, "to_name": "audio", "type": "choices", "value": {"choices": labels}}]
        if text is not None and not cancelled:
            result.append({"from_name": TEXT, "to_name": "audio", "type": "textarea", "value": {"text": [text]}})
        annotations.append({"id": task_id * 10 + number, "completed_by": number, "was_cancelled": cancelled,
                            "result": result, "created_at": f"2026-12-0{number}T10:00:00.000000Z",
                            "updated_at": f"2026-12-0{number}T10:00:00.000000Z"})
    return {"id": task_id, "data": {"clip_id": clip, "audio": "/data/local-files/?d=x", "transcript": "t"},
            "annotations": annotations}


def _write(path: Path, items: object) -> Path:
    path.write_text(json.dumps(items))
    return path


# --- select ---------------------------------------------------------------------------------------


def test_uncertainty_takes_each_language_and_class_its_closest_calls(settings: Settings) -> None:
    chosen = select_for_review(settings, 12, strategy="uncertainty")
    assert len(chosen.rows) == 12
    assert set(chosen.strata.values()) == {1} and len(chosen.strata) == 12  # one per language x class
    lines = [json.loads(line) for line in chosen.path.read_text().splitlines()]
    assert [row["clip_id"] for row in lines] == [row["clip_id"] for row in chosen.rows]
    # In each stratum the clip with the score nearest the 0.5 threshold: the first 12 clips are
    # the closest calls of their (language, class), by construction.
    assert sorted(r["clip_id"] for r in chosen.rows) == [f"train-{i:04d}" for i in range(12)]
    assert all(set(r["labels"]) == {CLASSES[int(r["clip_id"][-4:]) % 6]} for r in chosen.rows)


def test_a_seed_gives_the_same_batch_and_another_seed_another(settings: Settings) -> None:
    first = select_for_review(settings, 10, strategy="random", seed=7)
    again = select_for_review(settings, 10, strategy="random", seed=7)
    other = select_for_review(settings, 10, strategy="random", seed=8)
    assert [r["clip_id"] for r in first.rows] == [r["clip_id"] for r in again.rows]
    assert [r["clip_id"] for r in first.rows] != [r["clip_id"] for r in other.rows]
    assert len(first.strata) == 10  # quotas: ten strata of twelve, one clip each


def test_reviewed_clips_are_not_chosen_again(settings: Settings, tmp_path: Path) -> None:
    reviewed = [_task(i, f"train-{i:04d}", ([CLASSES[i % 6]], None, False)) for i in range(6)]
    import_export_file(settings, _write(tmp_path / "export.json", reviewed))
    chosen = select_for_review(settings, N_TRAIN, strategy="uncertainty")
    assert len(chosen.rows) == N_TRAIN - 6
    assert not {f"train-{i:04d}" for i in range(6)} & {r["clip_id"] for r in chosen.rows}


def test_disagreement_without_an_audio_model_says_so_in_one_line(settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["review", "select", "--budget", "5", "--strategy", "disagreement",
                                 "--model", str(tmp_path / "no-run"), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "is not a `voxtox train` run" in output and "Traceback" not in result.output


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """60 clips of 3 classes as well-separated points in 8 dimensions, 12 recordings of 5 clips."""
    rng = np.random.default_rng(seed)
    cls = np.arange(60) % 3
    x = 4.0 * np.eye(8)[cls] + rng.normal(size=(60, 8))
    return x, np.eye(3, dtype=bool)[cls], [f"rec-{i // 5}" for i in range(60)]


def test_cross_fitted_scores_are_out_of_sample_and_find_the_wrong_label() -> None:
    from voxtox.models.cross_fit import cross_fitted_probs, recording_folds
    from voxtox.models.review_select import disagreement_doubt

    x, labels, groups = _blobs(0)
    labels[7] = [True, False, False]  # clip 7 sounds like class 1 and is labelled class 0
    probs = cross_fitted_probs(x, labels, groups, folds=5, seed=3)
    assert np.array_equal(probs, cross_fitted_probs(x, labels, groups, folds=5, seed=3))  # a seed is a result
    assert int(np.argmax(disagreement_doubt(probs, labels))) == 7
    folds = recording_folds(groups, 5, seed=3)
    assert all(len(set(folds[[g == r for g in groups]])) == 1 for r in set(groups))  # a recording stays in one fold
    assert sorted(np.bincount(folds).tolist()) == [10, 10, 10, 15, 15]  # 12 recordings of 5 clips in 5 folds
    # Out of sample: a clip's score does not move when its own label changes (in-sample, it would).
    flipped = labels.copy()
    flipped[7] = [False, True, False]
    assert np.allclose(cross_fitted_probs(x, flipped, groups, folds=5, seed=3)[7], probs[7])


def test_disagreement_ranks_a_clip_whose_audio_says_another_class_first(tmp_path: Path) -> None:
    """Real Whisper features (whisper-tiny.en, the offline package): the tones of the six classes
    are told apart out of fold, so the one clip whose label is another class's stands out."""
    from voxtox.settings import TrainSettings
    from voxtox.models.review_select import doubt_scores, read_candidates

    table = _clips(N_TRAIN, "train", 0)
    rows = table.to_pylist()
    wrong = rows[13]  # its tone is class 1's; the pipeline says class 4
    for c in CLASSES:
        wrong[label_column(c)] = c == CLASSES[4]
    table = pa.Table.from_pylist(rows, table.schema)
    write_keys(tmp_path, "clips", {sha: table.filter(pa.compute.equal(table["source_sha256"], sha))
                                   for sha in sorted(set(table["source_sha256"].to_pylist()))})
    settings = Settings(data_dir=tmp_path, train=TrainSettings(encoder="whisper-tiny.en", threads=1))
    candidates = read_candidates(settings, "train")
    doubt = doubt_scores("disagreement", candidates, settings, 0, None)  # no trained run: the settings' encoder
    assert candidates.rows[int(np.argmax(doubt))]["clip_id"] == "train-0013"
    # combined: the labeller (its score says class 1, bullying) and the audio both doubt the label.
    chosen = select_for_review(settings, 1, strategy="combined", quotas=False)
    assert [r["clip_id"] for r in chosen.rows] == ["train-0013"] and chosen.rows[0]["strategy"] == "combined"


def test_no_quotas_takes_the_closest_calls_whatever_their_stratum(settings: Settings) -> None:
    common = ["review", "select", "--budget", "6", "--data-dir", str(settings.data_dir)]
    assert runner.invoke(app, common).exit_code == 0
    quoted = [json.loads(line)["clip_id"] for line in (settings.data_dir / "review" / "selected.jsonl").read_text().splitlines()]
    assert runner.invoke(app, [*common, "--no-quotas"]).exit_code == 0
    unquoted = [json.loads(line)["clip_id"] for line in (settings.data_dir / "review" / "selected.jsonl").read_text().splitlines()]
    # Six strata take a turn each (in name order: de first); without quotas, the six closest calls.
    assert sorted(quoted) == [f"train-{i:04d}" for i in range(6, 12)]
    assert sorted(unquoted) == [f"train-{i:04d}" for i in range(6)]


def test_combined_counts_the_toxic_labels_both_opinions_doubt() -> None:
    from voxtox.models.review_select import combined_doubt

    racism, other = CLASSES.index("racism"), CLASSES.index("other")
    labels = np.zeros((3, len(CLASSES)), dtype=bool)
    labels[:, CLASSES.index("no_violation")] = True
    labeller, audio = np.full(labels.shape, 0.1), np.full(labels.shape, 0.1)
    labeller[:, CLASSES.index("no_violation")] = audio[:, CLASSES.index("no_violation")] = 0.9
    labeller[0, racism], audio[0, racism] = 0.45, 0.95  # clip 0: the audio hears racism the label misses
    labeller[1, racism], audio[1, racism] = 0.45, 0.05  # clip 1: the labeller's close call, the audio disagrees
    labeller[2, other], audio[2, other] = 0.9, 0.9  # clip 2: both doubt `other`, not a class mAP counts
    doubt = combined_doubt(labeller, audio, labels)
    assert doubt.argmax() == 0 and doubt[1] > doubt[2]
    assert doubt[2] == pytest.approx(4 * 0.1)  # the four toxic classes' chance of being wrong (none labelled: weight 1)
    labels[1:, racism] = True  # two clips labelled racism: its doubt weighs half as much
    assert combined_doubt(labeller, audio, labels)[0] == pytest.approx(0.3 + 0.7 / 2)


# --- export ---------------------------------------------------------------------------------------


def test_export_writes_a_label_studio_project_with_playable_audio(settings: Settings) -> None:
    select_for_review(settings, 6, strategy="uncertainty")
    written = export_batch(settings)
    view = ET.fromstring(written.config.read_text())
    audio, text, choices = view.find("Audio"), view.find("TextArea"), view.find("Choices")
    assert audio.get("value") == "$audio" and text.get("toName") == audio.get("name")
    assert choices.get("choice") == "multiple" and [c.get("value") for c in choices] == list(CLASSES)
    tasks = json.loads(written.tasks.read_text())
    assert len(tasks) == 6
    for task in tasks:
        assert set(task["data"]) == {"clip_id", "audio", "transcript"}
        relative = task["data"]["audio"].removeprefix("/data/local-files/?d=")
        samples, rate = soundfile.read(settings.data_dir / relative)
        assert rate == 16_000 and len(samples) > rate  # the clip's audio, 1-3 s
        prediction = task["predictions"][0]
        chosen = [r for r in prediction["result"] if r["from_name"] == CHOICES][0]["value"]["choices"]
        assert chosen == [CLASSES[int(task["data"]["clip_id"][-4:]) % 6]]
        # the labeller's confidence in its label set: its least sure class, the clip's own (a close call)
        assert prediction["score"] == pytest.approx(0.52 + 0.46 * int(task["data"]["clip_id"][-4:]) / N_TRAIN, abs=1e-4)


# --- import ---------------------------------------------------------------------------------------


def test_answers_resolve_by_majority_and_ties_are_flagged(settings: Settings, tmp_path: Path) -> None:
    export = [
        _task(1, "train-0000", (["racism"], "go back home", False), (["racism", "bullying"], "go back home", False),
              (["racism"], None, False)),
        _task(2, "train-0001", (["bullying"], None, False), (["no_violation"], None, False)),
        _task(3, "train-0002", (["profanity"], None, True)),  # skipped
        {"id": 4, "data": {"clip_id": "train-0003"}, "annotations": []},  # nobody answered
    ]
    report = import_export_file(settings, _write(tmp_path / "export.json", export))
    assert (report.n_tasks, report.n_answers, report.n_skipped, report.n_clips, report.n_ties) == (4, 5, 2, 2, 1)
    rows = {r["clip_id"]: r for r in read_reviews(settings).to_pylist()}
    assert set(rows) == {"train-0000", "train-0001"}
    first = rows["train-0000"]
    assert first["status"] == "majority" and first["n_annotations"] == 3 and first["task_id"] == 1
    assert [c for c in CLASSES if first[label_column(c)]] == ["racism"]  # bullying: 1 of 3
    assert first["transcript"] == "go back home" and first["reviewers"] == "label-studio-user-1,label-studio-user-2,label-studio-user-3"
    assert str(first["reviewed_at"].date()) == "2026-12-03" and first["project"].endswith("export.json")
    tied = rows["train-0001"]
    assert tied["status"] == "tie" and tied[label_column("bullying")] is None and tied[label_column("no_violation")] is None
    assert tied[label_column("racism")] is False  # nobody said racism: no tie there


def test_json_min_imports_as_json_does_and_twice_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    json_min = [
        {"id": 1, "clip_id": "train-0000", "audio": "x", "transcript": "t", CHOICES: {"choices": ["racism", "bullying"]},
         TEXT: "a better transcript", "annotator": "ann@example.com", "annotation_id": 11,
         "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z", "lead_time": 3.2},
        {"id": 2, "clip_id": "train-0001", "audio": "x", "transcript": "t", CHOICES: "bullying",
         "annotator": "bob@example.com", "annotation_id": 12, "created_at": "2026-12-01T10:00:00Z"},
        {"id": 3, "clip_id": "train-0002", "audio": "x", "transcript": "t"},  # not answered
    ]
    path = _write(tmp_path / "min.json", json_min)
    report = import_export_file(settings, path)
    assert (report.n_clips, report.n_skipped, report.written.new) == (2, 1, 2)
    before = read_reviews(settings)
    row = {r["clip_id"]: r for r in before.to_pylist()}["train-0000"]
    assert [c for c in CLASSES if row[label_column(c)]] == ["bullying", "racism"]
    assert row["reviewers"] == "ann@example.com" and row["transcript"] == "a better transcript"
    snapshot = lake_catalog(settings.data_dir).current_snapshot()
    again = import_export_file(settings, path)
    assert (again.written.new, again.written.changed, again.written.unchanged) == (0, 0, 2)
    assert lake_catalog(settings.data_dir).current_snapshot() == snapshot  # nothing committed
    assert read_reviews(settings).equals(before)


@pytest.mark.parametrize(("items", "expected"), [
    ([_task(1, "train-0000", (["racism"], None, False)), _task(2, "train-0001", (["hate"], None, False))],
     "task 2 (clip train-0001): unknown class(es) ['hate']"),
    ([_task(1, "train-0000", (["racism"], None, False)), _task(5, "no-such-clip", (["racism"], None, False))],
     "task 5 (clip no-such-clip): no such clip in the clips table"),
    ({"tasks": []}, "not a Label Studio export"),
    ([{"id": 1, "data": {"text": "x"}, "annotations": []}], "task 1 has no `clip_id`"),
])
def test_bad_input_names_the_task_and_imports_nothing(settings: Settings, tmp_path: Path, items: object,
                                                      expected: str) -> None:
    path = _write(tmp_path / "bad.json", items)
    with pytest.raises(ExportError) as error:
        import_export_file(settings, path)
    assert expected in str(error.value) and str(path) in str(error.value)
    assert read_reviews(settings).num_rows == 0
    result = runner.invoke(app, ["review", "import", str(path), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one line, wrapped by the terminal at most


# --- answers reach training, truth and forget -----------------------------------------------------


def test_reviews_replace_pipeline_labels_in_training_and_count_as_truth(settings: Settings) -> None:
    answers = [_task(1, "train-0000", (["racism", "bullying"], None, False)),  # pipeline said profanity
               _task(2, "train-0001", (["racism"], None, False), (["no_violation"], None, False)),  # tie: unused
               _task(3, "val-0002", (["no_violation"], None, False))]  # pipeline said dating_sexting
    import_answers(settings, answers, "test")
    catalog = lake_catalog(settings.data_dir)
    train = read_clip_index(catalog, "train", "TRUE")
    assert train.n_reviewed == 1
    labels = dict(zip(train.clip_ids, train.labels, strict=True))
    assert [c for c, v in zip(CLASSES, labels["train-0000"], strict=True) if v] == ["bullying", "racism"]
    assert [c for c, v in zip(CLASSES, labels["train-0001"], strict=True) if v] == ["bullying"]  # the pipeline's
    truth = catalog.query("SELECT * FROM segment_truth ORDER BY clip_id").to_pylist()
    assert [(t["clip_id"], t["reviewed"]) for t in truth] == [("train-0000", True), ("val-0002", True)]
    assert [c for c in CLASSES if truth[1][f"human_label_{c}"]] == ["no_violation"]
    from voxtox.models.scoring import read_eval_set

    evaluated = read_eval_set(catalog, "val", "human")
    assert evaluated.clip_ids == ["val-0002"] and evaluated.truth[0].tolist() == [c == "no_violation" for c in CLASSES]


def test_training_manifest_counts_the_human_labels(settings: Settings, tiny_whisper: Path, tmp_path: Path) -> None:
    from voxtox.settings import TrainSettings
    from voxtox.tasks.train import train_model

    import_answers(settings, [_task(i, f"train-{i:04d}", (["racism"], None, False)) for i in range(5)], "test")
    train = TrainSettings(encoder=str(tiny_whisper), epochs=1, batch_size=8, grad_accum=1, num_workers=0,
                          val_resamples=5, threads=1, val_labels="pipeline")
    run = Path(train_model(settings.model_copy(update={"train": train}), tmp_path / "run").run_dir)
    config = json.loads((run / "config.json").read_text())
    assert config["train_human_labels"] == 5 and config["train_clips"] == N_TRAIN
    # The trained model's disagreement with the given labels chooses the next batch (the
    # reviewed clips are out of it): in each stratum the clip it finds least likely.
    chosen = select_for_review(settings, 12, strategy="disagreement", model=run)
    assert len(chosen.rows) == 12 and not {r["clip_id"] for r in chosen.rows} & {f"train-{i:04d}" for i in range(5)}
    assert all(-1 <= r["doubt"] <= 0 for r in chosen.rows)


def test_forget_erases_reviews_and_their_copies(settings: Settings, tmp_path: Path) -> None:
    select_for_review(settings, 12, strategy="uncertainty")
    export_batch(settings)
    import_answers(settings, [_task(1, "train-0000", (["racism"], None, False)),
                              _task(2, "train-0012", (["racism"], None, False))], "test")
    audio = settings.data_dir / "review" / "audio"
    assert (audio / "train-0000.flac").exists()
    forget(ForgetRequest(sha256s=frozenset({"src-train-0"})), settings)  # `voxtox forget`
    assert read_reviews(settings)["clip_id"].to_pylist() == ["train-0012"]
    assert not any((audio / f"train-{i:04d}.flac").exists() for i in range(12))  # src-train-0's clips
    batch = (settings.data_dir / "review" / "selected.jsonl").read_text()
    tasks = (settings.data_dir / "review" / "export" / "tasks.json").read_text()
    assert "train-0000" not in batch and "train-0000" not in tasks
    with pytest.raises(ExportError, match=r"task 1 \(clip train-0000\): no such clip"):  # a forgotten clip's answers
        import_answers(settings, [_task(1, "train-0000", (["racism"], None, False))], "test")
    assert read_reviews(settings)["clip_id"].to_pylist() == ["train-0012"]


def test_query_table_shows_the_reviews(settings: Settings) -> None:
    import_answers(settings, [_task(1, "train-0003", (["racism", "bullying"], "fixed words", False))], "test")
    result = runner.invoke(app, ["query", "--table", "reviews", "--format", "json", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 1 and rows[0]["clip_id"] == "train-0003" and rows[0]["labels"] == "bullying, racism"
    assert rows[0]["transcript"] == "fixed words" and rows[0]["status"] == "agreed"
