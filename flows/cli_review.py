"""`voxtox review select | export | import`: people correct the labels (docs/review.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from voxtox.flows.cli_common import console, user_errors
from voxtox.settings import ReviewSettings, load_settings

review_app = typer.Typer(
    help="People correct the labels: doubtful clips out to Label Studio, corrections back into training.",
    no_args_is_help=True, rich_markup_mode="markdown",
)

Strategy = ReviewSettings.model_fields["strategy"].annotation
ReviewSplit = Literal["train", "val", "test"]
DataDir = Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")]


@contextmanager
def review_errors() -> Iterator[None]:
    """user_errors, plus Label Studio refusing or not answering: one line each."""
    from voxtox.storage.labelstudio_api import LabelStudioError

    with user_errors():
        try:
            yield
        except LabelStudioError as error:
            console.print(f"[red]error:[/red] {error}", soft_wrap=True)
            raise typer.Exit(2) from error


@review_app.command("select")
def select(
    budget: Annotated[int, typer.Option(help="how many clips to choose")],
    split: Annotated[ReviewSplit, typer.Option(help="the split to review")] = "train",
    strategy: Annotated[Strategy, typer.Option(help="random; uncertainty: the labeller's closest call; "
                                                    "disagreement: what an audio model finds least likely, out of sample; "
                                                    "combined: expected wrong toxic labels under both")] = "uncertainty",
    seed: Annotated[int, typer.Option(help="the same seed gives the same batch for the same data")] = 0,
    model: Annotated[Path | None, typer.Option(help="disagreement: the run whose starting encoder embeds the clips "
                                                                "(default <runs_dir>/current, else train.encoder)")] = None,
    out: Annotated[Path | None, typer.Option(help="the batch file (default <data_dir>/review/selected.jsonl)")] = None,
    quotas: Annotated[bool, typer.Option(help="share the batch equally by language x decided class")] = True,
    data_dir: DataDir = None,
) -> None:
    """Choose clips nobody reviewed yet, most doubtful first, with equal quotas per language and
    decided class; writes the batch that `voxtox review export` sends to Label Studio."""
    from voxtox.models.review_select import select_for_review

    settings = load_settings(data_dir)
    with user_errors():
        chosen = select_for_review(settings, budget, split, strategy, seed, model, out, quotas=quotas)
    view = Table("language / decided class", "clips", title=f"voxtox review select: {len(chosen.rows)} of "
                 f"{chosen.n_candidates} unreviewed {split} clips ({strategy})")
    for stratum, n in sorted(chosen.strata.items()):
        view.add_row(stratum, str(n))
    console.print(view)
    console.print(f"batch: {chosen.path}\nNext: voxtox review export [--push http://127.0.0.1:8080]", soft_wrap=True)


@review_app.command("export")
def export(
    batch: Annotated[Path | None, typer.Option(help="a batch from `review select` (default: the latest)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the config and tasks (default <data_dir>/review/export)")] = None,
    push: Annotated[str | None, typer.Option(help="also create the project and its tasks on this Label Studio "
                                                  "(e.g. http://127.0.0.1:8080; token: LABEL_STUDIO_API_KEY)")] = None,
    title: Annotated[str | None, typer.Option(help="the project's title when pushing")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write the batch as a Label Studio project: labelling config, tasks JSON with the pipeline's
    labels as predictions, and the clips' audio for Label Studio's local-files serving."""
    from voxtox.storage.review_export import export_batch
    from voxtox.tasks.review_push import push_export

    settings = load_settings(data_dir)
    with review_errors():
        written = export_batch(settings, batch, out)
        console.print(f"{written.n_tasks} tasks: {written.tasks}\nlabelling config: {written.config}\n"
                      f"audio: {written.audio_at}")
        if push:
            project = push_export(settings, push, written, title)
            console.print(f"pushed to Label Studio: {project.url}\n"
                          f"When reviewed: voxtox review import --pull {project.url}")


@review_app.command("import")
def import_(
    export_file: Annotated[Path | None, typer.Argument(help="Label Studio's JSON or JSON_MIN export")] = None,
    pull: Annotated[str | None, typer.Option(help="fetch the export of this Label Studio project "
                                                  "(http://host:8080/projects/ID; token: LABEL_STUDIO_API_KEY)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Import Label Studio's answers as reviews: they replace the pipeline's labels in training and
    count as truth for val/test. Checked whole first: bad input imports nothing."""
    from voxtox.storage.review_import import import_export_file
    from voxtox.tasks.review_push import pull_and_import

    if (export_file is None) == (pull is None):
        raise typer.BadParameter("give an export file or --pull PROJECT_URL")
    settings = load_settings(data_dir)
    with review_errors():
        report = import_export_file(settings, export_file) if export_file else pull_and_import(settings, str(pull))
    written = report.written
    console.print(f"{report.n_tasks} tasks, {report.n_answers} answers ({report.n_skipped} skipped or unanswered) → "
                  f"{report.n_clips} reviewed clips: {written.new} new, {written.changed} changed, "
                  f"{written.unchanged} already imported")
    if report.n_ties:
        console.print(f"[yellow]{report.n_ties} clip(s) tied[/yellow] (as many answers for a class as against): "
                      "stored with status 'tie', used nowhere; ask another reviewer")
    console.print("Query it: voxtox query \"SELECT status, count(*) FROM reviews GROUP BY status\"")
