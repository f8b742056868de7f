"""What every `voxtox` command module shares: the consoles, one-line errors for problems a user
can fix, and the option types that take exactly the values the settings accept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import typer
from rich.console import Console

from voxtox.settings import EvaluateSettings, NightlySettings, TrainSettings

console = Console()
errors = Console(stderr=True)

#: Enumerated options take exactly the values the settings accept (strict choices in --help).
LabelSplit = NightlySettings.model_fields["default_split"].annotation
Loss = TrainSettings.model_fields["loss"].annotation
EvalSplit = EvaluateSettings.model_fields["split"].annotation
TruthLabels = EvaluateSettings.model_fields["labels"].annotation
RunCheckpoint = EvaluateSettings.model_fields["checkpoint"].annotation
Aggregation = EvaluateSettings.model_fields["aggregation"].annotation
ResampleBy = EvaluateSettings.model_fields["resample_by"].annotation
QueryFormat = Literal["table", "csv", "json"]
ExportFormat = Literal["onnx", "torchscript"]
View = Literal["clips", "rejects", "sources", "human_labels", "evaluations", "segment_truth"]
LabellerLoss = Literal["bce", "tripleentropy", "wranksim"]
LabellerThreshold = Literal["f1", "precision"]


@contextmanager
def user_errors() -> Iterator[None]:
    """Print problems a user can fix (a missing model or input) as one line, not a traceback."""
    from voxtox.storage.model_store import ModelNotFoundError

    try:
        yield
    except (ModelNotFoundError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
