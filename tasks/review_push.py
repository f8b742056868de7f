"""A review batch to a Label Studio server and its answers back, through the API.

Each pushed project is recorded in `<data_dir>/review/projects.json` (its URL and when it went
out), so the nightly flow can pull every project's finished answers without being told where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import task

from voxtox.files import jsonl_objects
from voxtox.settings import Settings
from voxtox.storage.labelstudio_api import LabelStudio, LabelStudioError, ProjectRef, parse_project_url
from voxtox.storage.review_projects import drop_project, pushed_projects, record_project
from voxtox.storage.review_export import Export
from voxtox.storage.review_import import ImportReport, import_answers
from voxtox.storage.reviews import REVIEW_DIR

@dataclass(frozen=True)
class Pushed:
    url: str
    n_tasks: int


def push_export(settings: Settings, base_url: str, export: Export, title: str | None = None) -> Pushed:
    """Create a project with the export's config, let it read the review audio, add the tasks."""
    server = LabelStudio(base_url)
    title = title or f"voxtox review {datetime.now(UTC):%Y-%m-%d %H:%M}"
    project_id = server.create_project(title, export.config.read_text(),
                                       "Clips voxtox's labeller was least sure of: correct the classes and transcript.")
    if export.audio_dir is not None:  # audio on S3: the tasks carry pre-signed URLs, no storage to add
        server.add_local_storage(project_id, export.audio_dir)
    tasks = json.loads(export.tasks.read_text())
    n_tasks = server.import_tasks(project_id, tasks)
    url = ProjectRef(server.base, project_id).url
    record_project(settings, url, n_tasks)
    return Pushed(url, n_tasks)


def pull_and_import(settings: Settings, project_url: str) -> ImportReport:
    """Fetch a project's JSON export (annotators named by e-mail) and import it."""
    ref = parse_project_url(project_url)
    server = LabelStudio(ref.base)
    items = server.export(ref.project_id, "JSON")
    return import_answers(settings, items, ref.url, server.user_names())


# --- the nightly's review step -----------------------------------------------------------------


@dataclass
class ReviewCycle:
    """What the night's review step took in and sent out."""

    imported: dict[str, str]  # project URL -> what its import did, in words
    sent: int = 0  # clips in tonight's batch
    export: str | None = None  # the tasks file
    pushed_to: str | None = None  # the project URL, when pushed
    note: str = ""  # why nothing was sent, if so


def _import_finished(settings: Settings, cycle: ReviewCycle) -> None:
    for url in pushed_projects(settings):
        try:
            report = pull_and_import(settings, url)
        except LabelStudioError as error:
            if error.status == 404:  # deleted in Label Studio: nothing more will come from it
                drop_project(settings, url)
                cycle.imported[url] = "gone from Label Studio (404): dropped from projects.json"
            else:  # one unreachable project does not stop the night
                cycle.imported[url] = f"not imported: {error}"
            continue
        except ValueError as error:
            cycle.imported[url] = f"not imported: {error}"
            continue
        written = report.written
        cycle.imported[url] = (f"{report.n_clips} reviewed clips ({written.new} new, {written.changed} changed, "
                               f"{report.n_ties} ties), {report.n_skipped} skipped or unanswered")


def sent_before(settings: Settings, tonight: Path) -> set[str]:
    """Clips earlier nights sent out (answered or not): not sent again."""
    earlier = sorted((settings.data_dir / REVIEW_DIR).glob("batch-*.jsonl"))
    return {str(row["clip_id"]) for path in earlier if path != tonight for _, row in jsonl_objects(path)}


def review_cycle(settings: Settings, night: str) -> ReviewCycle:
    """Import the finished answers of every pushed project, then choose tonight's batch
    (`[review]` settings; the night's date seeds `random`), export it and push it when
    `review.label_studio_url` is set."""
    from voxtox.storage.review_export import export_batch
    from voxtox.models.review_select import NoAudioModelError, select_for_review

    review = settings.review
    cycle = ReviewCycle(imported={})
    if review.label_studio_url:
        _import_finished(settings, cycle)
    seed = int(night.replace("-", ""))
    out = settings.data_dir / REVIEW_DIR / f"batch-{night}.jsonl"
    try:
        chosen = select_for_review(settings, review.budget, review.split, review.strategy, seed, out=out, quotas=review.quotas,
                                   exclude=sent_before(settings, out))
    except NoAudioModelError as error:
        cycle.note = str(error)
        return cycle
    except ValueError as error:  # nothing labelled yet, or everything reviewed
        cycle.note = f"no batch tonight: {error}"
        return cycle
    export = export_batch(settings, chosen.path, settings.data_dir / REVIEW_DIR / f"export-{night}")
    cycle.sent, cycle.export = export.n_tasks, str(export.tasks)
    if review.label_studio_url:
        cycle.pushed_to = push_export(settings, review.label_studio_url, export, f"voxtox review {night}").url
    return cycle


review_task = task(name="review", retries=1, retry_delay_seconds=60)(review_cycle)
