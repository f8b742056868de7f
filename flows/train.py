"""The training flow: one `train` task, then the curves as Prefect artifacts. Under `torchrun`
every rank trains directly instead: one flow run per rank would record the same run many times
over. (`flows/train_pool.py` runs the same on a worker of a Prefect work pool.)"""

from __future__ import annotations

import math
import os
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from voxtox.prefect_env import record_and_reap_apis
from voxtox.settings import Settings
from voxtox.tasks.train import TrainReport, train_model, train_task

CURVE_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_bce", "train_text", "val_mAP", "val_mAP_low", "val_mAP_high", "epoch_s")


def _json_safe(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def publish_curves(report: TrainReport) -> None:
    rows = [{k: _json_safe(row[k]) for k in CURVE_COLUMNS} for row in report.history]
    create_table_artifact(key="train-curves", table=rows, description="voxtox train: metrics per epoch")
    create_markdown_artifact(
        key="train-summary",
        markdown=(
            f"## Training run\n\n- **run dir**: {report.run_dir}\n- **epochs**: {report.epochs}\n"
            f"- **steps**: {report.steps}\n- **best epoch**: {report.best_epoch} "
            f"(validation mAP {report.best_val_mAP:.4f})\n- **wall**: {report.wall_s} s\n"
            + ("" if report.lake_snapshot is None else f"- **lake snapshot read**: {report.lake_snapshot} "
               "(`voxtox train --snapshot` / `voxtox evaluate` read it again)\n")
        ),
        description="voxtox train: where the run is and how it went",
    )


def train_and_publish(out: str, settings: Settings, resume: bool) -> TrainReport:
    report = train_task(out, settings, resume)
    publish_curves(report)
    return report


@flow(name="train", log_prints=True)
def train_flow(out: str, settings: Settings | None = None, resume: bool = False) -> TrainReport:
    """Train the audio-only classifier on the catalog's shards into the run directory `out`."""
    record_and_reap_apis()  # a run killed mid-training must not leave its Prefect API for good
    return train_and_publish(out, settings or Settings(), resume)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_training(out: Path, settings: Settings, resume: bool) -> TrainReport:
    if launched_by_torchrun():
        return train_model(settings, out, resume)
    return train_flow(out=str(out), settings=settings, resume=resume)
