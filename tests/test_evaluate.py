"""Evaluation of trained runs on human-labelled evaluation segments: the evaluation set and its
truth, windowed scoring with a cache, metrics against a straightforward per-resample
scikit-learn reference, the Parquet/catalog/report/plot outputs, and the CLI through the flow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.metrics import bootstrap_counts, percentile_ci
from voxtox.settings import EvaluateSettings, Settings, TrainSettings
from voxtox.storage.schema import HUMAN_LABELS_SCHEMA, label_column
from voxtox.storage.runs import RunDir
from voxtox.models.scoring import EvalSet, NoHumanLabelsError, System, read_eval_set, reported_classes
from voxtox.tasks.evaluate import evaluate_runs, measure
from voxtox.tasks.train import train_model
from voxtox.tasks.write import encode_flac

from conftest import lake_catalog, synthetic_clips, write_keys, write_rows

RATE = 16_000
LONG_CLIP_S = 32.0  # three 15 s windows, the last 2 s long


def as_evaluation_segments(table: pa.Table, split: str, n_sources: int, langs: tuple[str, ...]) -> pa.Table:
    """Synthetic clips turned into VAD evaluation segments: laid end to end within a few
    sources, languages alternating in blocks of six (every class in each); the first test clip
    is made 32 s long."""
    rows = table.to_pylist()
    ends: dict[str, float] = {}
    for i, row in enumerate(rows):
        if split == "test" and i == 0:
            t = np.arange(int(LONG_CLIP_S * RATE)) / RATE
            row["audio"] = {"bytes": encode_flac((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)), "path": "long.flac"}
            row["duration_s"] = LONG_CLIP_S
        source = f"{split}-src-{i % n_sources}"
        start = ends.get(source, 0.0) + 0.5
        ends[source] = start + row["duration_s"]
        row |= {"segment_kind": "evaluation", "source_sha256": source, "start_s": start, "end_s": ends[source],
                "lang": langs[(i // len(CLASSES)) % len(langs)]}
    return pa.Table.from_pylist(rows, schema=table.schema)


def human_labels_for(table: pa.Table, flip_every: int) -> dict[str, pa.Table]:
    """Per source, a human span per segment: the pipeline's labels, except that every
    `flip_every`-th segment humans call profanity (so human and pipeline truth differ)."""
    per_source: dict[str, list[dict]] = {}
    for i, row in enumerate(table.to_pylist()):
        labels = {label_column(c): bool(row[label_column(c)]) for c in CLASSES}
        if i % flip_every == 0:
            labels = {label_column(c): c == "profanity" for c in CLASSES}
        per_source.setdefault(row["source_sha256"], []).append(
            {"source_sha256": row["source_sha256"], "source_uri": row["source_uri"], "start_s": row["start_s"],
             "end_s": row["end_s"], "speaker": "a", "lang": row["lang"], "text": row["transcript"], **labels,
             "label_origin": "test", "imported_at": datetime(2026, 1, 1, tzinfo=UTC)})
    return {source: pa.Table.from_pylist(records, HUMAN_LABELS_SCHEMA) for source, records in per_source.items()}


def build_data_dir(directory: Path, with_human_labels: bool = True) -> Path:
    write_rows(directory, "clips", synthetic_clips(32, "train", 0), "train")
    val = as_evaluation_segments(synthetic_clips(18, "val", 1), "val", 3, ("en",))
    test = as_evaluation_segments(synthetic_clips(36, "test", 2), "test", 5, ("en", "es"))
    write_rows(directory, "clips", val, "val")
    write_rows(directory, "clips", test, "test")
    if with_human_labels:
        write_keys(directory, "human_labels", {
            source: labels for table in (val, test) for source, labels in human_labels_for(table, flip_every=5).items()
            if source != "test-src-4"})  # one test source nobody labelled
    return directory


def tiny_train_settings(data_dir: Path, encoder: Path, **train: object) -> Settings:
    options = dict(encoder=str(encoder), epochs=1, batch_size=4, grad_accum=2, learning_rate=1e-3, num_workers=0,
                   checkpoint_every=100, val_resamples=20, threads=1, val_filter="TRUE") | train
    return Settings(data_dir=data_dir, train=TrainSettings(**options),
                    evaluate=EvaluateSettings(n_resamples=200))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="module")
def runs(data_dir: Path, tiny_whisper: Path) -> list[Path]:
    """A baseline (α = 1) and a text-injection run, one epoch each on the tiny encoder."""
    baseline = train_model(tiny_train_settings(data_dir, tiny_whisper, alpha=1.0), data_dir / "runs" / "baseline")
    injected = train_model(tiny_train_settings(data_dir, tiny_whisper, alpha=0.5), data_dir / "runs" / "ci-0")
    return [Path(baseline.run_dir), Path(injected.run_dir)]


def test_the_evaluation_set_is_the_human_labelled_evaluation_segments(data_dir: Path) -> None:
    catalog = lake_catalog(data_dir)
    human = read_eval_set(catalog, "test")
    assert len(human) == 29 and human.n_without_truth == 7  # source 4's seven segments have no labels
    assert "test-src-4" not in set(human.sources) and set(human.langs) == {"en", "es"}
    pipeline = read_eval_set(catalog, "test", labels="pipeline")
    assert len(pipeline) == 36 and pipeline.n_without_truth == 0
    rows = {cid: k for k, cid in enumerate(pipeline.clip_ids)}
    differs = [not np.array_equal(human.truth[i], pipeline.truth[rows[cid]]) for i, cid in enumerate(human.clip_ids)]
    assert sum(differs) == 6  # every 5th segment is flipped to profanity: 5, 10, 15, 20, 25, 35 (0, 30 were already)
    assert reported_classes("human") == (*TOXIC_CLASSES, "no_violation")
    assert reported_classes("pipeline") == (*TOXIC_CLASSES, "other", "no_violation")
    with pytest.raises(ValueError, match="no evaluation segments"):
        read_eval_set(catalog, "train")


def test_without_human_labels_evaluation_refuses_unless_told_to_use_pipeline_labels(tmp_path: Path) -> None:
    directory = build_data_dir(tmp_path / "unlabelled", with_human_labels=False)
    catalog = lake_catalog(directory)
    with pytest.raises(NoHumanLabelsError, match="--labels pipeline"):
        read_eval_set(catalog, "test")
    assert len(read_eval_set(catalog, "test", labels="pipeline")) == 36


def _sklearn_reference(y: np.ndarray, scores: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """(systems, resamples, classes) AP from materialised resample indices and scikit-learn."""
    out = np.full((len(scores), counts.shape[0], y.shape[1]), np.nan)
    for r, row in enumerate(counts):
        index = np.repeat(np.arange(len(y)), row)
        for c in range(y.shape[1]):
            if y[index, c].any():
                for s, system in enumerate(scores):
                    out[s, r, c] = average_precision_score(y[index, c], system[index, c])
    return out


@pytest.mark.parametrize("resample_by", ["segment", "source"])
def test_intervals_equal_a_straightforward_sklearn_bootstrap_on_the_same_resamples(resample_by: str) -> None:
    rng = np.random.default_rng(3)
    n = 120
    truth = rng.random((n, len(CLASSES))) < [0.3, 0.2, 0.05, 0.02, 0.1, 0.5]  # racism: rare, often absent
    base = np.round((rng.random(truth.shape) + 0.3 * truth) / 1.3, 2)  # probabilities with ties
    better = np.round((rng.random(truth.shape) + 0.8 * truth) / 1.8, 2)
    sources = np.array([f"s{i % 17}" for i in range(n)], dtype=object)
    eval_set = EvalSet("test", "human", [f"c{i}" for i in range(n)], sources, np.array(["en"] * n, dtype=object),
                       np.ones(n), truth, [], np.zeros(n))
    options = EvaluateSettings(n_resamples=100, resample_by=resample_by, seed=7)
    rows = measure(eval_set, [System("base", "a", base), System("new", "b", better)], options)

    classes = reported_classes("human")
    columns = [CLASSES.index(c) for c in classes]
    counts = bootstrap_counts(n, 100, 7, sources if resample_by == "source" else None)
    reference = _sklearn_reference(truth[:, columns], [base[:, columns], better[:, columns]], counts)
    toxic = [classes.index(c) for c in TOXIC_CLASSES]
    found = {(r.system, r.metric, r.class_name): r for r in rows}
    for s, system in enumerate(("base", "new")):
        per_class = {name: reference[s, :, k] for k, name in enumerate(classes)} | {"mAP": reference[s][:, toxic].mean(axis=1)}
        for name, values in per_class.items():
            row = found[(system, "ap", name)]
            valid = values[~np.isnan(values)]
            assert row.n_invalid == int(np.isnan(values).sum()) and row.n_valid == valid.size
            assert (row.low, row.high) == pytest.approx(percentile_ci(valid), abs=1e-12)
    assert found[("base", "ap", "racism")].n_invalid > 0  # resamples without a positive: counted, not NaN
    difference = reference[1] - reference[0]
    for k, name in enumerate(classes):
        values = difference[:, k][~np.isnan(difference[:, k])]
        row = found[("new − base", "ap_difference", name)]
        assert (row.low, row.high) == pytest.approx(percentile_ci(values), abs=1e-12)
        assert row.excludes_zero == (row.low > 0 or row.high < 0)
    assert found[("new − base", "ap_difference", "mAP")].excludes_zero  # clearly better scores


def test_two_runs_evaluated_paired_to_parquet_catalog_report_and_plots(data_dir: Path, runs: list[Path]) -> None:
    settings = tiny_train_settings(data_dir, Path("unused"))
    settings = settings.model_copy(update={"evaluate": EvaluateSettings(n_resamples=200, calibrate=True, resample_by="source")})
    evaluation = evaluate_runs(runs, settings)
    out = Path(evaluation.out_dir)
    assert out == runs[1] / "evaluation" / "test-vs-baseline"
    assert evaluation.systems == ["baseline", "ci-0"] and evaluation.n_segments == 29 and evaluation.languages == ["en", "es"]

    table = pq.read_table(out / "evaluation.parquet")
    rows = {(r["system"], r["lang"], r["metric"], r["class_name"]): r for r in table.to_pylist()}
    assert {r["labels"] for r in rows.values()} == {"human"}
    for lang in ("all", "en", "es"):
        for name in (*TOXIC_CLASSES, "no_violation", "mAP"):
            base, model = rows[("baseline", lang, "ap", name)], rows[("ci-0", lang, "ap", name)]
            diff = rows[("ci-0 − baseline", lang, "ap_difference", name)]
            if base["point"] is not None:
                assert diff["point"] == pytest.approx(model["point"] - base["point"])
                assert base["low"] <= base["high"] and base["n_valid"] + base["n_invalid"] == 200
    mean = np.mean([rows[("ci-0", "all", "ap", c)]["point"] for c in TOXIC_CLASSES])
    assert rows[("ci-0", "all", "ap", "mAP")]["point"] == pytest.approx(mean)
    for metric in ("precision_at_fpr", "recall_at_fpr", "ece", "ece_calibrated"):
        assert ("ci-0", "all", metric, "racism") in rows
    assert rows[("ci-0", "all", "temperature", "all")]["point"] > 0

    catalog = lake_catalog(data_dir)
    found = catalog.query("SELECT system, point FROM evaluations WHERE metric = 'ap' AND class_name = 'mAP' "
                          f"AND lang = 'all' AND evaluation_id = '{evaluation.evaluation_id}' ORDER BY system")
    assert found["system"].to_pylist() == ["baseline", "ci-0"]

    report = (out / "report.md").read_text()
    assert "## AP per class (%)" in report and "Δ ci-0 − baseline" in report and "## mAP per language" in report
    assert "7 more without human labels were left out" in report and "T = " in report
    for plot in evaluation.plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # window scores: 3 windows for the 32 s segment; cached, so evaluating again does not rescore
    cache = RunDir(runs[0]).scores("test", "best")
    windows = dict(zip(*pq.read_table(cache).to_pydict().values(), strict=True))
    assert len(windows["test-0000"]) == 3 and all(len(w) == 1 for k, w in windows.items() if k != "test-0000")
    stamp = cache.stat().st_mtime_ns
    again = evaluate_runs(runs, settings)
    assert cache.stat().st_mtime_ns == stamp and again.evaluation_id == evaluation.evaluation_id
    assert catalog.query("SELECT count(DISTINCT evaluated_at) AS n FROM evaluations "
                         f"WHERE evaluation_id = '{evaluation.evaluation_id}'")["n"][0].as_py() == 1  # replaced


def test_cli_evaluates_one_run_through_the_flow_and_publishes_artifacts(
    data_dir: Path, runs: list[Path], tmp_path: Path, prefect_harness
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from voxtox.flows.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(runs[1]), "--split", "test", "--data-dir", str(data_dir),
                                      "--n-resamples", "100", "--labels", "pipeline", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "pipeline" in result.output and "mAP" in result.output
    assert (tmp_path / "ev" / "report.md").read_text().count("not human labels") == 1
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-ap", "evaluation-report"])))}
    assert keys == {"evaluation-ap", "evaluation-report"}
    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing"), "--data-dir", str(data_dir)])
    assert missing.exit_code == 2 and "holds no model" in " ".join(missing.output.split())
