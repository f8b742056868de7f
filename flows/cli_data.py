"""`voxtox label`, `forget`, `query`, `compact` and `import-labels`: data in, out and erased."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from voxtox.flows.cli_common import (
    LabelSplit,
    QueryFormat,
    View,
    console,
    disk_full_in_one_line,
    errors,
    user_errors,
)
from voxtox.flows.cli_lake import say_unmigrated
from voxtox.labels import CLASSES
from voxtox.settings import Settings, load_settings

if TYPE_CHECKING:
    from voxtox.storage.forget import ErasureReport


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
    "reviews": "clip_id, split, lang, concat_ws(', ', "
    + ", ".join(f"CASE WHEN label_{c} THEN '{c}' END" for c in CLASSES)
    + ") AS labels, status, n_annotations, reviewers, reviewed_at, transcript",
}


def label(
    inputs: Annotated[list[str], typer.Argument(help="directories, globs, files or CSV/JSONL manifests")],
    split: Annotated[LabelSplit, typer.Option(help="the split of these inputs; auto: by content hash")] = "train",
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    labeller: Annotated[str | None, typer.Option(help="labeller checkpoint dir or name")] = None,
    asr_model: Annotated[str | None, typer.Option(help="faster-whisper model dir or name")] = None,
    dask: Annotated[str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786")] = None,
    allow_forgotten: Annotated[bool, typer.Option(help="label recordings `voxtox forget` erased, too")] = False,
) -> None:
    """Transcribe, label and embed voice audio into the lake's tables (a Prefect flow)."""
    from voxtox.audio import discover_inputs
    from voxtox.prefect_env import api_starting

    settings = load_settings(data_dir, labeller={"model": labeller}, asr={"model": asr_model})
    if dask:
        settings = settings.model_copy(update={"dask_address": dask})
    with user_errors(), disk_full_in_one_line(settings.data_dir):
        for spec in inputs:
            discover_inputs(spec)  # a mistyped input fails at once, before a Prefect API is started
        _check_lake(settings)  # makes the embedded lake on first use: the disk may be full already
        with api_starting():  # while the pipeline's modules import and its models load
            from voxtox.flows.label import label_flow, preflight, task_runner_for

            preflight(list(inputs), settings)  # a missing or corrupt model fails before any source
    flow = label_flow.with_options(task_runner=task_runner_for(settings))
    with user_errors(), disk_full_in_one_line(settings.data_dir):  # e.g. a damaged `sources` data file
        report = flow(inputs=list(inputs), split=split, settings=settings, allow_forgotten=allow_forgotten)
    summary = Table(title="voxtox label", show_header=False)
    for key, value in vars(report).items():
        summary.add_row(key, str(value))
    console.print(summary)
    console.print("Query it: voxtox query \"SELECT lang, count(*) FROM clips GROUP BY lang\"")


def _check_lake(settings: Settings) -> None:
    """An unreachable lake catalog or object store fails in one line naming it before a Prefect
    API is started (storage/lake.py); an old data dir's shards get the line naming `voxtox migrate`."""
    from voxtox.storage import lake

    lake.connect(lake.target_for(settings)).close()
    say_unmigrated(settings)


def forget(
    recordings: Annotated[list[str] | None, typer.Argument(
        help="a sha256 of the audio, a URI (path) it was labelled from, or speaker:<id> (human labels); "
             "prefixes sha256:, uri: make the kind explicit")] = None,
    from_file: Annotated[Path | None, typer.Option("--from", help="a file listing recordings, one per line")] = None,
    runs: Annotated[list[Path] | None, typer.Option(help="run directories to check besides <runs_dir> (repeat)")] = None,
    delete_inputs: Annotated[bool, typer.Option(help="also delete the input files the recordings were labelled from")] = False,
    dry_run: Annotated[bool, typer.Option(help="say what would be erased, change nothing")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
) -> None:
    """Erase recordings from every table of the lake (their rows, and their bytes from its files
    and older snapshots) and their review copies, and tombstone them so no later run labels them
    again (unless `voxtox label --allow-forgotten`); name the trained runs that learnt from them
    and, with `--delete-inputs`, delete their input files."""
    from voxtox.storage.forget import forget as forget_recordings
    from voxtox.storage.forget import parse_request, read_request_file

    settings = load_settings(data_dir)
    say_unmigrated(settings)
    with user_errors():
        named = list(recordings or []) + (read_request_file(from_file) if from_file else [])
        if not named:
            raise ValueError("name at least one recording (a sha256, a URI or speaker:<id>), or --from FILE")
        with console.status("finding and erasing rows"):
            report = forget_recordings(parse_request(named), settings, runs, delete_inputs, dry_run)
    _print_erasure(report)
    if report.unmatched:  # an erasure request never passes for done when part of it found nothing
        errors.print(f"error: {len(report.unmatched)} of the named recordings matched no data held (listed above); "
                     "check the names (nothing is stripped from them) or erase by sha256", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _print_erasure(report: ErasureReport) -> None:
    verb = "would be erased" if report.dry_run else "erased"
    console.print(f"{len(report.recordings)} recording(s) {verb}" + ("" if report.dry_run else
                  f", {report.new_tombstones} new tombstone(s) (sha256 and date only)"))
    for sha in report.recordings:
        console.print(f"  {sha}")
    for name in report.unmatched:
        shown = escape(repr(name) if name != name.strip() else name)  # a trailing space is shown, not lost
        # soft_wrap: a long path stays on one line, whole, to copy (and to grep for)
        console.print(f"[yellow]no data held for[/yellow] {shown}" + (" (tombstoned)" if len(name) == 64 else ""),
                      highlight=False, soft_wrap=True)
    view = Table("table", "rows", title=f"rows {verb}")
    for table, rows in sorted(report.rows.items()):
        view.add_row(table, str(rows))
    console.print(view)
    if report.lake is not None and not report.dry_run:
        console.print(f"lake {report.lake}: data files that held them rewritten, older snapshots expired, "
                      "unreferenced files deleted", highlight=False)
    console.print(f"files rewritten: {len(report.files_rewritten)}, deleted: {len(report.files_deleted)}; "
                  f"work directories removed: {len(report.work_dirs_removed)}, in use: {len(report.work_dirs_in_use)}")
    if report.review_objects_s3:
        console.print(f"review copies erased: {report.review_objects_s3} audio object(s) on S3")
    if report.review_files:
        console.print(f"review copies {verb} or rewritten: {len(report.review_files)} file(s) under review/")
    for project, what in sorted(report.label_studio.items()):
        console.print(f"Label Studio {project}: {what}", highlight=False)
    if report.runs_trained_on:
        console.print("[bold]trained runs that learnt from these recordings[/bold] (a model cannot be "
                      "un-trained; retrain without them, or retire these):")
        for run, splits in report.runs_trained_on.items():
            console.print(f"  {run} ({', '.join(splits)})", soft_wrap=True)
    if report.runs_without_record:
        console.print(f"runs that do not record their training data (may have seen them): "
                      f"{', '.join(report.runs_without_record)}", soft_wrap=True)
    for path in report.input_files:
        console.print(f"[yellow]the input file is still there:[/yellow] {path} (--delete-inputs deletes it)", soft_wrap=True)
    for path in report.input_files_deleted:
        console.print(f"deleted input file {path}", soft_wrap=True)


def query(
    sql: Annotated[str | None, typer.Argument(help="one SQL statement over the views clips, rejects, sources, human_labels, "
                                                   "reviews, evaluations, segment_truth; - reads it from stdin")] = None,
    table: Annotated[View | None, typer.Option(help="show a whole view")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
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
    say_unmigrated(settings)
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


def compact(
    table: Annotated[list[str] | None, typer.Option(help="a table to compact (repeat); default: all")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
) -> None:
    """Merge each table's small data files into large ones (DuckLake, one commit) and delete the
    files of writers killed before their commit. Readers see the data before or after, never
    half; the nightly flow runs this after labelling. (Every table is merged: --table only
    checks names, kept for scripts written for the single-machine shards.)"""
    from voxtox.storage.schema import PARTITIONS

    unknown = sorted(set(table or ()) - set(PARTITIONS))
    if unknown:
        raise typer.BadParameter(f"unknown table {', '.join(unknown)}: choose from {', '.join(PARTITIONS)}")
    settings = load_settings(data_dir)
    say_unmigrated(settings)
    _compact_lake(settings)


def _compact_lake(settings: Settings) -> None:
    """`voxtox compact` on a lake (docs/storage.md): DuckLake merges each table's small files, then
    expires the snapshots older than `[storage] keep_snapshots_days` and deletes what no snapshot reads."""
    from voxtox.storage import lake

    target = lake.target_for(settings)
    assert target is not None, "called only when [storage] names a lake"
    keep = settings.storage.keep_snapshots_days
    with user_errors(), lake.connect(target) as con:
        results = lake.compact(con, target)
        expired, deleted = lake.expire_snapshots(con, target, keep)
    view = Table("table", "files before", "files after", title="voxtox compact (lake)")
    for name, (before, after) in results.items():
        view.add_row(name, str(before), str(after))
    console.print(view)
    console.print(f"snapshots older than {keep:g} days ([storage] keep_snapshots_days) expired: {expired}; "
                  f"files no kept snapshot reads deleted: {deleted}", markup=False, highlight=False)


def import_labels(
    truth: Annotated[list[Path], typer.Argument(help="truth files (JSONL, CSV or Parquet), e.g. <corpus>/truth/utterances-val.jsonl")],
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
) -> None:
    """Import human labels (spans of audio with classes) into the catalog; re-importing replaces."""
    from voxtox.storage.human_labels import import_truth_files_to_lake
    from voxtox.storage.lake import target_for

    settings = load_settings(data_dir)
    target = target_for(settings)
    say_unmigrated(settings)
    with user_errors():  # the lake's human_labels table: every host sees them
        report = import_truth_files_to_lake(list(truth), target)
        where = f"the lake's human_labels ({target.catalog_name()})"
    console.print(f"imported {report.n_spans} labelled spans of {report.n_sources} recordings from "
                  f"{report.n_files} file(s) into {where}")
    if report.n_forgotten:
        console.print(f"not imported: the labels of {report.n_forgotten} recording(s) `voxtox forget` erased")
    console.print("Query it: voxtox query \"SELECT * FROM segment_truth LIMIT 10\"")
