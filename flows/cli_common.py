"""What every `voxtox` command module shares: the consoles, one-line errors for problems a user
can fix, and the option types that take exactly the values the settings accept."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console

from voxtox.settings import EvaluateSettings, NightlySettings, TrainSettings, load_settings
from voxtox.storage.runs import RunDir

console = Console()
# Errors print with soft_wrap=True: one line however long the path in them, which the terminal
# folds for the eye while a log or a pipe keeps it whole (rich would cut it at 80 columns).
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
View = Literal["clips", "rejects", "sources", "human_labels", "reviews", "evaluations", "segment_truth"]
LabellerLoss = Literal["bce", "tripleentropy", "wranksim"]
LabellerThreshold = Literal["f1", "precision"]


def default_model(model: str | None) -> str:
    """The model `classify` and `stream` score with: the one named, else `./runs/current` when
    there is one, else the nightly's `<runs_dir>/current`."""
    if model is not None:
        return model
    local = RunDir.current(Path("runs"))
    return str(local.path) if local.exists() else str(RunDir.current(load_settings().runs_dir).path)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print problems a user can fix (a missing model or input) as one line, not a traceback."""
    from voxtox.storage.catalog import CatalogError
    from voxtox.storage.lake import LakeError
    from voxtox.storage.model_store import ModelNotFoundError

    try:
        yield
    except (ModelNotFoundError, FileNotFoundError, ValueError, LakeError, CatalogError) as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(2) from error


def _one_line_error(error: BaseException) -> bool:
    """A failure whose message says all a user needs: a full disk, or a lake (catalog or object
    store) that cannot be reached, which its LakeError names."""
    from voxtox.files import is_disk_full
    from voxtox.storage.lake import LakeError

    return is_disk_full(error) or isinstance(error, LakeError)


class _NoDiskFullTraceback(logging.Filter):
    """Log a full disk or an unreachable lake as its one line: the traceback of a task that hit
    it says nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and _one_line_error(record.exc_info[1]):
            record.exc_info = record.exc_text = None
        return True


@contextmanager
def disk_full_in_one_line(data_dir: Path) -> Iterator[None]:
    """A full disk during the block is one line naming where and what to do, exit status 1: not
    hundreds of lines of Prefect's task tracebacks ending in an errno without a path. So is a lake
    that stops answering (its catalog or object store, named by the LakeError)."""
    from voxtox.files import DiskFullError, is_disk_full

    quiet = _NoDiskFullTraceback()
    handlers = {h for name in ("", "prefect") for h in logging.getLogger(name).handlers}
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    except Exception as error:
        if not _one_line_error(error):
            raise
        shown = error
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            shown = DiskFullError(getattr(error, "filename", None) or data_dir)
        errors.print(f"error: {shown}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
