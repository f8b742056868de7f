"""A run directory (`voxtox train`'s output under `<data_dir>/runs/`), the one place its layout is
spelled:

    <run>/final/        model.json + model.safetensors, written last: the run is finished
    <run>/best/         the epoch with the best validation score, and its thresholds.json
    <run>/checkpoints/  step-<n>/ trainer states to resume from (models/trainer.py keeps two)
    <run>/config.json   the settings it trained with, its data counts and, on a lake, the lake
                        snapshot it read (`lake.snapshot_id`: `voxtox evaluate` reads it again)
    <run>/training_sources.parquet   which recordings trained it (`voxtox forget` reads it)
    <run>/evaluation/scores/<split>-<checkpoint>.parquet   window scores cached by evaluation
    <runs_dir>/current  a link to the promoted run (the nightly flow switches it atomically)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxtox.storage.schema import TRAINING_SOURCES_FILE

FINAL = "final"
BEST = "best"
CURRENT = "current"
CHECKPOINTS = "checkpoints"
THRESHOLDS_FILE = "thresholds.json"
MODEL_CONFIG = "model.json"
MODEL_WEIGHTS = "model.safetensors"
CONFIG_FILE = "config.json"
EVALUATION_DIR = "evaluation"
SCORES_DIR = "scores"


@dataclass(frozen=True)
class RunDir:
    """One run directory; nothing is read until a method asks."""

    path: Path

    @classmethod
    def current(cls, runs_dir: Path) -> RunDir:
        """The `current` link of `runs_dir` (not resolved: see `resolved`)."""
        return cls(runs_dir / CURRENT)

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def training_sources(self) -> Path:
        return self.path / TRAINING_SOURCES_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    def read_config(self) -> dict[str, Any]:
        """The run's config.json; {} for a run that has none (not started, or not a train run)."""
        try:
            return json.loads(self.config.read_text())
        except FileNotFoundError:
            return {}

    def lake_snapshot(self) -> int | None:
        """The lake snapshot the run trained on; None when it read the single-machine shards."""
        found = (self.read_config().get("lake") or {}).get("snapshot_id")
        return None if found is None else int(found)

    def thresholds(self, checkpoint: str = BEST) -> Path:
        return self.path / checkpoint / THRESHOLDS_FILE

    def scores(self, split: str, checkpoint: str) -> Path:
        """Where evaluation caches the window scores of `checkpoint` on `split`."""
        return self.path / EVALUATION_DIR / SCORES_DIR / f"{split}-{checkpoint}.parquet"

    def is_finished(self) -> bool:
        """Whether the run holds its trained model (`final/`, written last)."""
        return (self.final / MODEL_WEIGHTS).exists()

    def exists(self) -> bool:
        return self.path.exists()

    def resolved(self) -> RunDir:
        """The same run with links (`current`) resolved."""
        return RunDir(self.path.resolve())

    def model(self, checkpoint: str) -> Path:
        """The model directory `checkpoint` (`best` or `final`) of this run; it must hold weights."""
        directory = self.path / checkpoint
        if not (directory / MODEL_WEIGHTS).exists():
            raise FileNotFoundError(f"{directory} holds no model: is {self.path} a finished `voxtox train` run?")
        return directory


def resolve_model_dir(spec: str | Path) -> Path:
    """The model directory a run directory or model directory names (links resolved):
    the directory itself when it holds `model.json`, else its `best/`, else its `final/`."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model {spec}: no such file or directory")
    run = RunDir(path.resolve())
    for candidate in (run.path, run.best, run.final):
        if (candidate / MODEL_CONFIG).is_file() and (candidate / MODEL_WEIGHTS).is_file():
            return candidate
    raise FileNotFoundError(
        f"{spec} is neither a model directory (model.json + model.safetensors) nor a run directory "
        "with best/ or final/ (from `voxtox train`)"
    )
