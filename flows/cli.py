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
        if given:
            current = getattr(settings, section)
            settings = settings.model_copy(update={section: current.model_copy(update=given)})
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


@labeller_app.command("bootstrap")
def labeller_bootstrap(
    out: Annotated[Path | None, typer.Option(help="checkpoint dir (default: the model store's voxtox-labeller)")] = None,
    per_family: Annotated[int, typer.Option(help="training sentences per seed-corpus family")] = 4,
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 3,
) -> None:
    """Fine-tune the quick-start labeller on the built-in seed corpus (1-3 minutes on 2 cores)."""
    from voxtox.models.bootstrap_labeller import train_bootstrap_labeller

    settings = load_settings()
    target = out or settings.model_cache_dir / "voxtox-labeller"
    with console.status("fine-tuning the quick-start labeller"):
        train_bootstrap_labeller(settings.model_cache_dir, target, per_family=per_family, epochs=epochs)
    console.print(f"labeller written to {target}")


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
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo's audio, shards and catalog go")] = Path("voxtox-demo"),
) -> None:
    """The quick start: make multilingual voice-chat-like audio, label it, show the results."""
    from voxtox.flows.demo import run_demo

    with user_errors():
        run_demo(load_settings(data_dir), console)


if __name__ == "__main__":
    app()
