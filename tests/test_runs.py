"""storage/runs.py: the one record of a run directory's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxtox.storage.runs import RunDir, resolve_model_dir


def _model(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "model.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"")


def test_a_run_is_finished_when_its_final_model_is_written(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run-a")
    _model(run.best)
    assert not run.is_finished()  # best/ is written during training, final/ last
    with pytest.raises(FileNotFoundError, match="holds no model"):
        run.model("final")
    _model(run.final)
    assert run.is_finished() and run.model("final") == run.final
    assert run.thresholds() == run.best / "thresholds.json"
    assert run.scores("test", "best") == run.path / "evaluation" / "scores" / "test-best.parquet"
    assert run.training_sources.name == "training_sources.parquet" and run.checkpoints.name == "checkpoints"


def test_current_is_a_link_that_resolves_to_the_promoted_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "nightly-2026-12-01")
    _model(run.final)
    current = RunDir.current(tmp_path)
    assert not current.exists()
    current.path.symlink_to(run.path.name, target_is_directory=True)
    assert current.is_finished() and current.resolved() == RunDir(run.path.resolve())
    assert resolve_model_dir(current.path) == run.final.resolve()  # no best/: the final model
    _model(run.best)
    assert resolve_model_dir(current.path) == run.best.resolve()
