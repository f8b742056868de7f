"""Ablation grids: the grid file and its cells, and `voxtox ablate` training and evaluating a
small grid through the flow, printing the paper's tables, and not retraining finished cells."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxtox.settings import Settings
from voxtox.tasks import ablate as ablate_tasks
from voxtox.tasks.ablate import AblationPlan, Cell, cell_settings, load_grid_file, plan_cells

from test_evaluate import build_data_dir

REPO = Path(__file__).resolve().parents[1]


def grid_file(path: Path, data_dir: Path, encoder: Path, grid: str) -> Path:
    path.write_text(
        f'data_dir = "{data_dir}"\n[grid]\n{grid}\n'
        f'[train]\nencoder = "{encoder}"\nepochs = 1\nbatch_size = 4\ngrad_accum = 2\nlearning_rate = 1e-3\n'
        'num_workers = 0\nthreads = 1\nval_resamples = 20\ncheckpoint_every = 100\n'
        '[evaluate]\nn_resamples = 100\n'
    )
    return path


def test_a_grid_file_makes_one_cell_per_distinct_run(tmp_path: Path, tiny_whisper: Path) -> None:
    path = grid_file(tmp_path / "ablation-small.toml", tmp_path / "data", tiny_whisper,
                     'losses = ["baseline", "mse", "contrastive", "mse-normalised"]\nalphas = [0.1, 0.5]\n'
                     'alphas_by_loss = {"mse-normalised" = [0.1]}\n'
                     'layers = ["first", "middle", "last"]\nlayer_loss = "contrastive"\nlayer_alpha = 0.5\n')
    plan = load_grid_file(path)
    assert plan.out == Path("runs") / "ablation-small" and plan.settings.train.epochs == 1
    assert plan.settings.evaluate.n_resamples == 100
    cells = {c.name: c for c in plan_cells(plan)}
    # the tiny encoder has 2 layers: first = middle = 1; last is Table 2's contrastive α = 0.5 run
    assert list(cells) == ["baseline", "mse-a0.1", "mse-a0.5", "contrastive-a0.1", "contrastive-a0.5",
                           "mse-normalised-a0.1", "contrastive-a0.5-layer1"]  # the variant at its own α only
    assert cells["contrastive-a0.5"].rows == ["table2", "table3:last"]
    assert cells["contrastive-a0.5-layer1"].rows == ["table3:first", "table3:middle"]
    train = cell_settings(plan, cells["contrastive-a0.5-layer1"]).train
    assert (train.loss, train.alpha, train.layer, train.epochs) == ("contrastive", 0.5, 1, 1)
    assert cell_settings(plan, cells["baseline"]).train.alpha == 1.0
    assert cell_settings(plan, cells["baseline"]).train.feature_cache_dir == plan.out / "features"  # shared by cells
    assert load_grid_file(path, out=tmp_path / "x", workers=2).grid.workers == 2

    bad = grid_file(tmp_path / "bad.toml", tmp_path, tiny_whisper, 'losses = ["baseline", "cosine"]')
    with pytest.raises(ValueError, match="unknown losses"):
        load_grid_file(bad)


def test_the_paper_file_runs_the_paper_grid_and_still_configures_train(
    whisper_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_grid_file(REPO / "experiments" / "paper-table2.toml")
    names = [c.name for c in plan_cells(plan)]
    # baseline, 4 losses × 3 alphas at the last layer, contrastive α = 0.1 at layers 1 and 6 of 6
    assert len(names) == 15 and names[0] == "baseline" and "contrastive-a0.1-layer1" in names
    assert "contrastive-a0.1-layer3" in names  # whisper-base has 6 layers: middle = 3
    tables = load_grid_file(REPO / "experiments" / "tables-en.toml")
    assert [c.name for c in plan_cells(tables)] == [
        "baseline", "mse-a0.1", "mse-a0.5", "contrastive-a0.1", "contrastive-a0.5", "mse-normalised-a0.1",
        "contrastive-a0.1-layer1", "contrastive-a0.1-layer2"]  # whisper-tiny.en: 4 blocks, middle = 2
    assert tables.settings.evaluate.resample_by == "source" and tables.settings.train.val_labels == "human"
    figure2 = load_grid_file(REPO / "experiments" / "figure2-multilingual.toml")
    assert [c.name for c in plan_cells(figure2)] == ["baseline", "contrastive-a0.1"] and figure2.grid.name == "figure2"
    longer = load_grid_file(REPO / "experiments" / "figure2-multilingual-6-epochs.toml")
    assert (longer.grid.name, longer.settings.train.epochs, figure2.settings.train.epochs) == ("figure2-6-epochs", 6, 3)
    assert longer.settings.train.model_copy(update={"epochs": 3}) == figure2.settings.train  # nothing else differs
    monkeypatch.setenv("VOXTOX_CONFIG", str(REPO / "experiments" / "paper-table2.toml"))  # voxtox train --config
    assert (Settings().train.loss, Settings().train.alpha) == ("contrastive", 0.1)


def test_ablate_trains_evaluates_prints_tables_and_does_not_retrain(
    tmp_path: Path, tiny_whisper: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from voxtox.flows.cli import app

    data_dir = build_data_dir(tmp_path / "data")
    path = grid_file(tmp_path / "grid.toml", data_dir, tiny_whisper,
                     'losses = ["baseline", "contrastive"]\nalphas = [0.5]\nlayers = ["first", "last"]\nlayer_alpha = 0.5\n')
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["ablate", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for cell in ("baseline", "contrastive-a0.5", "contrastive-a0.5-layer1"):
        assert (out / cell / "final" / "model.safetensors").is_file()
        assert (out / cell / "evaluation" / "test" / "evaluation.parquet").is_file()
    tables = (out / "results.md").read_text()
    assert "## Table 2" in tables and "## Table 3" in tables and "first (1 of 2)" in tables
    assert "| contrastive | 0.5 |" in tables and "| baseline | 1 |" in tables
    assert (out / "evaluation" / "test" / "ap.png").is_file()
    with (out / "results-grid.csv").open() as handle:
        grid_rows = list(csv.DictReader(handle))
    assert [(r["table"], r["cell"], r["lang"]) for r in grid_rows if r["lang"] == "all"] == [
        ("table2", "baseline", "all"), ("table2", "contrastive-a0.5", "all"),
        ("table3", "contrastive-a0.5-layer1", "all"), ("table3", "contrastive-a0.5", "all"), ("table3", "baseline", "all")]
    assert {r["lang"] for r in grid_rows} == {"all", "en", "es"} and grid_rows[0]["train_clips"] == "32"
    first = grid_rows[0]
    assert first["diff"] == "" and float(first["map_low"]) <= float(first["map"]) <= float(first["map_high"])
    injected = next(r for r in grid_rows if r["cell"] == "contrastive-a0.5" and r["lang"] == "all")
    assert float(injected["diff_low"]) <= float(injected["diff"]) <= float(injected["diff_high"])
    assert "Δ mAP vs baseline" in tables
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ablation-tables", "ablation-ap"])))}
    assert keys == {"ablation-tables", "ablation-ap"}

    # again: nothing is retrained, a missing evaluation is redone, a failing cell stops only itself
    weights = out / "baseline" / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    (out / "contrastive-a0.5-layer1" / "evaluation" / "test" / "evaluation.parquet").unlink()
    listed = CliRunner().invoke(app, ["ablate", str(path), "--out", str(out), "--dry-run"])
    assert listed.exit_code == 0 and "trained, to evaluate" in listed.output and "2 done" in listed.output
    original = ablate_tasks.run_cell

    def run_cell(plan: AblationPlan, cell: Cell) -> dict[str, object]:
        if cell.name == "contrastive-a0.5":
            raise RuntimeError("out of memory (simulated)")
        return original(plan, cell)

    monkeypatch.setattr(ablate_tasks, "run_cell", run_cell)
    again = CliRunner().invoke(app, ["ablate", str(path), "--out", str(out)])
    assert again.exit_code == 1 and "1 cell(s) failed: contrastive-a0.5" in again.output
    assert weights.stat().st_mtime_ns == stamp
    assert (out / "contrastive-a0.5-layer1" / "evaluation" / "test" / "evaluation.parquet").is_file()
    tables = (out / "results.md").read_text()
    assert "`contrastive-a0.5`: " in tables and "| contrastive | 0.5 |" not in tables
