"""`voxtox train`, `classify`, `calibrate`, `export`, `evaluate` and `ablate`: the audio-only classifier."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from voxtox.flows.cli_common import (
    Aggregation,
    EvalSplit,
    ExportFormat,
    Loss,
    ResampleBy,
    RunCheckpoint,
    TruthLabels,
    console,
    default_model,
    user_errors,
)
from voxtox.prefect_env import start_api
from voxtox.settings import load_settings
from voxtox.storage.runs import THRESHOLDS_FILE


def train(
    out: Annotated[Path, typer.Option(help="run directory: config, metrics, checkpoints, model")],
    config: Annotated[Path | None, typer.Option(help="TOML settings file ([train] section and more)")] = None,
    loss: Annotated[Loss | None, typer.Option(help="the text-injection loss")] = None,
    alpha: Annotated[float | None, typer.Option(help="α·BCE + (1−α)·text loss; 1 = baseline")] = None,
    layer: Annotated[int | None, typer.Option(help="encoder layer to inject at (-1 = last)")] = None,
    encoder: Annotated[str | None, typer.Option(help="Whisper encoder: name, dir or hub name")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="clips per device per micro-batch")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="micro-batches per optimizer step")] = None,
    train_filter: Annotated[str | None, typer.Option(help="SQL condition on clips for training")] = None,
    val_filter: Annotated[str | None, typer.Option(help="SQL condition on clips for validation")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's last checkpoint")] = False,
    snapshot: Annotated[int | None, typer.Option(help="with a lake: train on it as it was at this snapshot "
                                                      "(default: the latest; the run records the one it read)")] = None,
) -> None:
    """Train the audio-only classifier with text injection (a Prefect flow; under torchrun,
    every rank trains directly)."""
    from voxtox.prefect_env import api_starting

    options = dict(loss=loss, alpha=alpha, layer=layer, encoder=encoder, epochs=epochs, batch_size=batch_size,
                   grad_accum=grad_accum, train_filter=train_filter, val_filter=val_filter)
    with user_errors():
        settings = load_settings(data_dir, config, train=options, storage={"snapshot": snapshot})
    # Under torchrun every rank trains without Prefect (flows/train.py): no API to start.
    starting = nullcontext() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else api_starting()
    with user_errors():
        with starting:  # while the flow's modules import; records the API for reaping, as `label` does
            from voxtox.flows.train import run_training
        report = run_training(out, settings, resume)
    read = "" if report.lake_snapshot is None else f"; read lake snapshot {report.lake_snapshot}"
    console.print(f"best epoch {report.best_epoch}: validation mAP {report.best_val_mAP:.4f}; run in {report.run_dir}{read}")


def classify(
    inputs: Annotated[list[str], typer.Argument(help="audio files, directories, globs or CSV/JSONL manifests")],
    model: Annotated[str | None, typer.Option(help="run dir (best/, else final/), model dir, or exported .onnx/.pt "
                                                   "[default: ./runs/current, else the nightly's <runs_dir>/current]")] = None,
    output: Annotated[Path | None, typer.Option("--out", "--output", help="write results to .jsonl or .parquet (one record per file, windows nested)")] = None,
    windows: Annotated[bool | None, typer.Option(help="print the per-window table (default: when one file)")] = None,
    window_s: Annotated[float, typer.Option(help="window length and stride, seconds (paper: 15)")] = 15.0,
    aggregation: Annotated[Aggregation, typer.Option(help="a file's score from its windows: max (paper), mean, noisy_or")] = "max",
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 8,
    threads: Annotated[int | None, typer.Option(help="CPU threads (torch / onnxruntime)")] = None,
    vad: Annotated[bool, typer.Option(help="score the VAD's speech segments, as validation does (--no-vad: the whole file)")] = True,
) -> None:
    """Classify audio with the audio-only model: per-window and per-file probabilities and
    decisions. No ASR and no text model."""
    import torch

    from voxtox.models.classify import FileResult, classify_files, load_model

    def show(result: FileResult) -> None:
        if result.status == "rejected":
            console.print(f"[red]rejected[/red] {result.file}: {result.reason} ({result.detail})")
        elif result.status == "no_speech":
            console.print(f"[yellow]no speech[/yellow] {result.file}: {result.detail}")

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        if output is not None and output.suffix.lower() not in (".jsonl", ".parquet"):
            raise ValueError(f"--out must end in .jsonl or .parquet, not {output.name!r}")
        loaded = load_model(default_model(model), threads)
        note = "" if loaded.thresholds.calibrated else " — not calibrated: run `voxtox calibrate` on the run"
        console.print(f"model {loaded.description}; thresholds: {loaded.thresholds.source}{note}")
        vad_settings = load_settings().vad if vad else None  # the labelling pipeline's VAD settings
        records = classify_files(inputs, loaded, vad_settings, window_s, aggregation, batch_size, output, show)
    ok = [r for r in records if r["status"] == "ok"]
    rejected = sum(r["status"] == "rejected" for r in records)
    if output is not None:
        console.print(f"{len(ok)} files classified, {len(records) - len(ok) - rejected} without speech, "
                      f"{rejected} rejected; written to {output}")
    else:
        _print_classified(ok, loaded.classes, windows if windows is not None else len(records) == 1)
    if rejected == len(records):
        raise typer.Exit(1)


#: Short column headers for the terminal tables (the JSONL/Parquet columns use the class names).
SHORT_CLASS_NAMES = {"profanity": "prof", "bullying": "bully", "dating_sexting": "sext",
                     "racism": "racism", "other": "other", "no_violation": "none"}


def _print_classified(records: list[dict], classes: tuple[str, ...] | list[str], show_windows: bool) -> None:
    """Probabilities per window and per file; a decided class is marked * (and bold red)."""
    from rich import box

    def cells(row: dict) -> list[str]:
        return [f"[bold red]{row[f'prob_{c}']:.2f}*[/]" if row[f"label_{c}"] else f"{row[f'prob_{c}']:.2f}"
                for c in classes]

    def table(*columns: str, title: str) -> Table:
        view = Table(*columns, title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
        view.columns[0].overflow, view.columns[0].min_width = "fold", 12
        return view

    headers = [SHORT_CLASS_NAMES.get(c, c) for c in classes]
    if show_windows:
        view = table("file", "window s", *headers, title="windows (* = at or above the class threshold)")
        for record in records:
            for window in record["windows"]:
                view.add_row(Path(record["file"]).name, f"{window['start_s']:.0f}-{window['end_s']:.0f}",
                             *cells(window))
        console.print(view)
    view = table("file", "sec", *headers, "labels", title="files (max over windows)")
    for record in records:
        labels = " ".join(SHORT_CLASS_NAMES.get(c, c) for c in record["labels"]) or "-"
        view.add_row(record["file"], f"{record['duration_s']:.1f}", *cells(record), labels)
    console.print(view)


def calibrate(
    run: Annotated[Path, typer.Argument(help="run dir (calibrates best/, else final/) or model dir")],
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    split: Annotated[EvalSplit, typer.Option(help="split whose evaluation segments choose the thresholds")] = "val",
    filter_sql: Annotated[str | None, typer.Option("--filter", help="SQL condition on clips (default: train.val_filter)")] = None,
    snapshot: Annotated[str, typer.Option(help="with a lake: the snapshot to read: run (the one the run trained "
                                               "on), latest, or a number")] = "run",
) -> None:
    """Choose per-class decision thresholds (best F1 on validation) and write thresholds.json
    into the model directory, where `voxtox classify` and `voxtox export` find them."""
    from voxtox.tasks.calibrate import calibrate_thresholds

    with user_errors():
        result = calibrate_thresholds(run, load_settings(data_dir), split, filter_sql, snapshot=snapshot)
    view = Table("class", "threshold", "F1", "F1 at 0.5", "positives",
                 title=f"thresholds from {result['n_segments']} {split} segments ({result['labels']} labels)")
    for name in result["classes"]:
        f1, f1_half = result["f1"][name], result["f1_at_0.5"][name]
        view.add_row(name, f"{result['thresholds'][name]:.3f}", "-" if f1 is None else f"{f1:.3f}",
                     "-" if f1_half is None else f"{f1_half:.3f}", str(result["positives"][name]))
    console.print(view)
    if result["defaulted_to_0.5"]:
        console.print(f"no positives, left at 0.5: {', '.join(result['defaulted_to_0.5'])}")
    if result.get("lake_snapshot") is not None:
        console.print(f"read lake snapshot {result['lake_snapshot']}")
    console.print(f"written to {Path(str(result['model_dir'])) / THRESHOLDS_FILE}")


def export_command(
    run: Annotated[Path, typer.Argument(help="run dir (exports best/, else final/) or model dir")],
    out: Annotated[Path, typer.Option(help="the artefact: model.onnx or model.pt")],
    fmt: Annotated[ExportFormat | None, typer.Option("--format", help="default: from --out's suffix")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="ONNX only: dynamic int8 quantisation (faster on CPU)")] = False,
) -> None:
    """Export the classifier to ONNX or TorchScript (log-mel features in, probabilities out) and
    check its outputs against PyTorch's."""
    from voxtox.models.export_run import export_run

    with user_errors():
        path, diff = export_run(run, out, fmt, quantize=int8)
    console.print(f"exported to {path} ({path.stat().st_size / 2**20:.1f} MiB); "
                  f"max abs diff vs PyTorch: {diff:.2e}")


def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="run directories of `voxtox train`; the first is the baseline")],
    split: Annotated[EvalSplit | None, typer.Option(help="default: test")] = None,
    labels: Annotated[TruthLabels | None, typer.Option(help="human (default), or pipeline: the labeller's own labels")] = None,
    checkpoint: Annotated[RunCheckpoint | None, typer.Option(help="which model of each run (default: best)")] = None,
    aggregation: Annotated[Aggregation | None, typer.Option(help="segment score from its 15 s windows (default: max)")] = None,
    resample_by: Annotated[ResampleBy | None, typer.Option(help="bootstrap unit: segment (default), or source (whole sessions)")] = None,
    n_resamples: Annotated[int | None, typer.Option(help="bootstrap resamples (default 1000)")] = None,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="fit temperature scaling on val")] = None,
    segment_filter: Annotated[str | None, typer.Option("--filter", help="SQL condition on clips, e.g. lang = 'en'")] = None,
    out: Annotated[Path | None, typer.Option(help="results dir (default: under the last run's evaluation/)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file (its evaluate section and more)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    snapshot: Annotated[str, typer.Option(help="with a lake: the snapshot to read: run (the one the runs trained "
                                               "on, the newest if they differ), latest, or a number")] = "run",
) -> None:
    """AP per class and mAP with 95% bootstrap CIs, per language; with several runs, paired
    differences to the first (a Prefect flow). Results: Parquet (catalog table `evaluations`),
    a Markdown report and PNG plots."""
    from voxtox.flows.evaluate import evaluate_flow
    from voxtox.storage.catalog import Catalog
    from voxtox.models.scoring import read_eval_set
    from voxtox.storage.runs import RunDir
    from voxtox.tasks.evaluate import pin_evaluation_snapshot

    options = dict(split=split, labels=labels, checkpoint=checkpoint, aggregation=aggregation, resample_by=resample_by,
                   n_resamples=n_resamples, calibrate=calibrate, filter=segment_filter)
    with user_errors():
        settings = load_settings(data_dir, config, evaluate=options)
        chosen = settings.evaluate
        for run in runs:  # fail fast, before a Prefect API is started
            RunDir(run).model(chosen.checkpoint)
        settings = pin_evaluation_snapshot(settings, [str(r) for r in runs], snapshot)
        catalog = Catalog.from_settings(settings)
        read_eval_set(catalog, chosen.split, chosen.labels, chosen.filter)
        start_api()
        evaluation = evaluate_flow(runs=[str(r) for r in runs], settings=settings, out=str(out) if out else None,
                                   snapshot=snapshot)
    console.print(Path(evaluation.report).read_text(), markup=False, highlight=False, soft_wrap=True)
    if evaluation.lake_snapshot is not None:
        console.print(f"read lake snapshot {evaluation.lake_snapshot}")
    console.print(f"results: {evaluation.results} (catalog table `evaluations`, evaluation_id "
                  f"'{evaluation.evaluation_id}'); plots: {', '.join(evaluation.plots)}")


def ablate(
    grid: Annotated[Path, typer.Argument(help="TOML file: grid (losses, alphas, layers), train and evaluate sections")],
    out: Annotated[Path | None, typer.Option(help="where the cells' runs and the tables go (default: runs/<file stem>)")] = None,
    workers: Annotated[int | None, typer.Option(help="cells trained at once")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the cells and whether each is done, then stop")] = False,
) -> None:
    """Train and evaluate an ablation grid (paper Tables 2 and 3) as one Prefect flow, one task
    per cell; finished cells are not retrained. Prints the tables with CIs and significance."""
    from voxtox.flows.ablate import run_ablation
    from voxtox.tasks.ablate import describe_cells, load_grid_file, plan_cells, preflight

    with user_errors():
        plan = load_grid_file(grid, data_dir=data_dir, out=out, workers=workers)
        cells = plan_cells(plan)
        console.print(describe_cells(plan, cells), markup=False, highlight=False, soft_wrap=True)
        if dry_run:
            return
        preflight(plan)  # before a Prefect API is started and before hours of training
        result = run_ablation(plan)
    console.print(Path(result.report).read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"tables: {result.report}; rows: catalog table `evaluations`, evaluation_id '{result.evaluation_id}'")
    if result.failed:
        console.print(f"[red]error:[/red] {len(result.failed)} cell(s) failed: {', '.join(result.failed)}; "
                      "run the same command again to retry them", soft_wrap=True)
        raise typer.Exit(1)
