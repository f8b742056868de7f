"""The labelling flow: raw voice audio in, labelled Parquet shards out, DuckDB views refreshed.

ingest (per batch of inputs) -> transcribe (per unit of sources, batched ASR) -> label -> embed -> write
(per unit), then rejects and the catalog's views. Tasks pass paths and small manifests only.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, runtime, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import UnfinishedRun
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from voxtox.audio import discover_inputs
from voxtox.flows.serve import check_served_run
from voxtox.labels import CLASSES
from voxtox.prefect_env import deprioritise_ephemeral_api, reap_orphaned_apis, record_ephemeral_api
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog, CatalogError
from voxtox.storage.lake import LakeTarget, target_for
from voxtox.storage.model_store import resolve_model
from voxtox.storage.schema import label_column
from voxtox.storage.workdir import run_work_dir
from voxtox.tasks.embed import embed_task, resolve_text_encoder
from voxtox.confine import SourceRejection, confine, reject_unreadable_names
from voxtox.tasks.ingest import PreparedSource, first_of_each_content, ingest_batches, ingest_task, make_units
from voxtox.tasks.label import label_task
from voxtox.tasks.transcribe import check_asr_model, transcribe_task
from voxtox.tasks.write import WrittenUnit, write_rejections_task, write_task


@dataclass
class LabelReport:
    run_id: str
    n_inputs: int
    n_skipped: int
    n_sources: int
    n_rejected_inputs: int
    n_clips: int
    n_rejected_segments: int
    n_dropped_short: int
    audio_s: float
    speech_s: float
    wall_s: float
    data_dir: str


@dataclass(frozen=True)
class ResolvedModels:
    asr: str
    labeller: str
    text_encoder: str


def preflight(inputs: list[str], settings: Settings) -> tuple[list[str], ResolvedModels]:
    """Expand the inputs, resolve and verify every model, and load the ASR model, so a missing
    or corrupt one fails before any source is touched (and no source is marked done by a run
    whose model could not be trusted)."""
    uris = sorted({uri for spec in inputs for uri in discover_inputs(spec)})
    models = ResolvedModels(
        asr=resolve_model(settings.asr.model, settings.model_cache_dir),
        labeller=resolve_model(settings.labeller.model, settings.model_cache_dir),
        text_encoder=resolve_text_encoder(settings),
    )
    check_asr_model(models.asr, settings.asr)
    return uris, models


def task_runner_for(settings: Settings, workers: int | None = None) -> TaskRunner:
    """Threads on this machine (`workers`, default `pipeline.workers`), or the Dask cluster at
    `dask_address` when the settings name one."""
    if settings.dask_address:
        from prefect_dask import DaskTaskRunner  # optional at run time: only with a cluster

        return DaskTaskRunner(address=settings.dask_address)
    return ThreadPoolTaskRunner(max_workers=settings.pipeline.workers if workers is None else workers)


def _latest_catalog(settings: Settings) -> Catalog:
    """The catalog a writer asks what is labelled already: a lake's latest snapshot, whatever
    `[storage] snapshot` a reader chose (writers commit on the latest)."""
    return Catalog.from_settings(settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"snapshot": None})}))


def lake_of(settings: Settings) -> LakeTarget:
    """The lake the writes go to (docs/storage.md): `[storage]`'s, else the embedded one."""
    return target_for(settings)


def _run_id() -> str:
    flow_run_id = runtime.flow_run.id
    return str(flow_run_id) if flow_run_id else uuid.uuid4().hex


def _publish_summary(report: LabelReport, catalog: Catalog) -> None:
    """Prefect artifacts: the run's counts, and clips per language and class."""
    create_markdown_artifact(
        key="label-summary",
        markdown="## Labelling run\n\n"
        + "\n".join(f"- **{k}**: {v}" for k, v in asdict(report).items()),
        description="voxtox label: what this run did",
    )
    if not report.n_clips:
        return
    sums = ", ".join(f"sum({label_column(c)}::INT)::BIGINT AS {c}" for c in CLASSES)
    try:
        rows = catalog.query(
            f"SELECT lang, count(*) AS clips, round(sum(duration_s) / 60, 2)::DOUBLE AS minutes, {sums} "
            f"FROM clips WHERE run_id = '{report.run_id}' GROUP BY lang ORDER BY lang"
        ).to_pylist()
    except CatalogError as error:  # a damaged clips file (named before the run): the rows are written
        get_run_logger().warning("no per-language counts: %s", error)
        return
    create_table_artifact(
        key="label-counts", table=rows, description="clips and label decisions per language"
    )


@flow(name="label", log_prints=True)
def label_flow(
    inputs: list[str],
    split: Literal["train", "val", "test", "auto"] = "train",
    settings: Settings | None = None,
    allow_forgotten: bool = False,
) -> LabelReport:
    """Label every input (directory, glob, file or manifest) into the catalog's shards.
    Recordings `voxtox forget` erased are skipped unless `allow_forgotten`."""
    started = time.perf_counter()
    deprioritise_ephemeral_api()
    inbox = check_served_run(settings, allow_forgotten)
    settings = settings or Settings()
    logger = get_run_logger()
    run_id = _run_id()
    catalog = _latest_catalog(settings)
    _clear_up_after_killed_runs()
    inputs, outside = confine(inputs, inbox)  # a served run reads only below its inbox
    uris, models = preflight(inputs, settings)
    uris, outside_found = confine(uris, inbox)
    uris, unreadable = reject_unreadable_names(uris)  # no task may see a name that is not text
    known = _known_sources(catalog, settings, allow_forgotten)
    logger.info("%d inputs, %d sources already in the catalog or forgotten", len(uris), len(known))
    with run_work_dir(settings.work_dir, run_id) as work:
        ingested = _ingest(uris, split, settings, work, known)
        prepared, duplicates = first_of_each_content(ingested)
        rejected = outside + outside_found + unreadable + [r for r in ingested if isinstance(r, SourceRejection)] + duplicates
        written = _label_prepared(prepared, models, settings, run_id, work, allow_forgotten)
        if rejected:
            written.append(
                write_rejections_task(rejected, lake_of(settings), run_id)
            )

    report = LabelReport(
        run_id=run_id,
        n_inputs=len(uris) + len(outside) + len(outside_found) + len(unreadable),
        n_skipped=sum(r is None for r in ingested),
        n_sources=len(prepared),
        n_rejected_inputs=len(rejected),
        n_clips=sum(w.n_clips for w in written),
        n_rejected_segments=sum(w.n_rejects for w in written) - len(rejected),
        n_dropped_short=sum(p.dropped_short for p in prepared),
        audio_s=round(sum(p.duration_s for p in prepared), 2),
        speech_s=round(sum(p.speech_s for p in prepared), 2),
        wall_s=round(time.perf_counter() - started, 2),
        data_dir=str(settings.data_dir),
    )
    _publish_summary(report, catalog)
    return report


def _known_sources(catalog: Catalog, settings: Settings, allow_forgotten: bool) -> frozenset[str]:
    """Recordings not to label again: those in the catalog and, unless allowed, those forgotten."""
    known = frozenset(catalog.known_sources())
    if allow_forgotten:
        return known
    return known | catalog.forgotten()


def _ingest(
    uris: list[str], split: str, settings: Settings, work: Path, known: frozenset[str]
) -> list[PreparedSource | SourceRejection | None]:
    """Ingest `uris` in batches, one task run per batch; the results in input order."""
    batches = ingest_batches(uris, settings.pipeline.ingest_batch_files, settings.pipeline.workers)
    futures = ingest_task.map(batches, unmapped(split), unmapped(settings), unmapped(work), unmapped(known))
    return [result for f in futures for result in f.result()]


def _clear_up_after_killed_runs() -> None:
    """Stop the local Prefect APIs of voxtox runs killed with SIGKILL; record this run's API, so
    that the next run stops it if this one is killed. (A killed run's uncommitted data files are
    the lake's orphans: `voxtox compact` deletes them.)"""
    record_ephemeral_api()
    reap_orphaned_apis()


def _label_prepared(
    prepared: list[PreparedSource],
    models: ResolvedModels,
    settings: Settings,
    run_id: str,
    work: Path,
    allow_forgotten: bool,
) -> list[WrittenUnit]:
    """transcribe -> label -> embed -> write, per unit of sources; the writes as they finish."""
    writes = []
    for index, unit in enumerate(make_units(prepared, settings.pipeline.unit_speech_s)):
        transcribed = transcribe_task.submit(unit, models.asr, settings, work / f"unit-{index:04d}")
        labelled = label_task.submit(transcribed, models.labeller, settings)
        embedded = embed_task.submit(labelled, models.text_encoder, settings)
        write = write_task.submit(
            unit, embedded, transcribed, lake_of(settings), settings.asr.model, run_id, allow_forgotten)
        writes.append(UnitFutures(write, (transcribed, labelled, embedded)))
    return _wait_with_progress(writes, len(prepared))


@dataclass(frozen=True)
class UnitFutures:
    """A unit's write, and the stages it waits on (in order)."""

    write: PrefectFuture
    upstream: tuple[PrefectFuture, ...]

    def result(self) -> WrittenUnit:
        """The write's result; when a stage before it failed, that stage's own error (Prefect
        only says the write "is in PENDING state", which names no cause)."""
        try:
            return self.write.result()
        except UnfinishedRun:
            for stage in self.upstream:
                stage.result()  # raises the first failure's exception
            raise


def _wait_with_progress(units: list[UnitFutures], n_sources: int) -> list[WrittenUnit]:
    """Collect write results as they finish, with a terminal bar and a Prefect progress artifact."""
    done: list[WrittenUnit] = []
    artifact = create_progress_artifact(progress=0.0, key="label-progress", description="sources written")
    with Progress(
        TextColumn("labelling"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} sources"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("label", total=max(n_sources, 1))
        by_write = {id(unit.write): unit for unit in units}
        for future in as_completed([unit.write for unit in units]):
            result = by_write[id(future)].result()
            done.append(result)
            bar.advance(task, result.n_sources)
            finished = sum(w.n_sources for w in done)
            update_progress_artifact(artifact, progress=100.0 * finished / max(n_sources, 1))
    return done
