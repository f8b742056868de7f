"""The nightly flow: label what arrived, train when there is enough new data, evaluate against
the current model, and promote the candidate only when it is better with confidence.

    inbox/            audio that arrives (any layout voxtox label reads)
      train/ val/ test/   audio of those splits; anything else gets `nightly.default_split`
      truth/          human labels (`voxtox import-labels` files) for val/test audio; a
                      `voxtox synth` corpus can be the inbox as it is (its `segments-*` files
                      restate the utterances' labels per segment, so only `utterances-*` count,
                      and `*-train` truth is left out: training learns from the pipeline's labels)
    <runs_dir>/nightly-<night>/   the night's candidate (a `voxtox train` run directory)
    <runs_dir>/current            a symlink to the promoted run (`voxtox classify --model`)

The candidate trains in this process (a subflow), or, with `nightly.train_pool`, on a worker of
that Prefect work pool (`flows/train_pool.py`): a GPU host sharing the data directory.

A rerun of the same night redoes nothing that finished, by content: labelled sources are
skipped by hash, imported labels replace themselves, a candidate with `final/` is not retrained
(one cut short resumes from its last checkpoint), and scores are cached per run and segment set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from voxtox.audio import discover_inputs
from voxtox.flows.evaluate import evaluate_flow
from voxtox.flows.label import label_flow
from voxtox.flows.serve import check_served_run
from voxtox.flows.train import train_flow
from voxtox.flows.train_pool import TrainingNotDone, train_on_pool
from voxtox.prefect_env import record_and_reap_apis
from voxtox.settings import Settings
from voxtox.storage.runs import RunDir
from voxtox.tasks.calibrate import calibrate_task
from voxtox.tasks.compact import compact_lake_task
from voxtox.confine import outside_reason
from voxtox.models.scoring import NoHumanLabelsError
from voxtox.tasks.import_labels import import_labels_task
from voxtox.models.nightly import (
    Decision,
    candidate_run,
    clips_trained_on,
    current_run,
    decide,
    inbox_inputs,
    latest_candidate,
    map_difference,
    promote,
    train_clip_count,
    truth_files,
)
from voxtox.tasks.retention import retention_task
from voxtox.tasks.review_push import review_task


@dataclass
class NightlyReport:
    night: str
    labelled_clips: dict[str, int] = field(default_factory=dict)  # per split, this run
    skipped_sources: int = 0
    imported_label_spans: int = 0
    review: str | None = None  # with `review.nightly`: what went out to and came back from Label Studio
    compacted_files: int = 0  # small shard files merged into large ones
    train_clips: int = 0
    new_train_clips: int = 0
    candidate: str | None = None
    trained_now: bool = False
    evaluation_report: str | None = None
    promoted: bool = False
    reason: str = ""
    current: str | None = None


# --- training ------------------------------------------------------------------------------


def train_candidate(candidate: Path, settings: Settings) -> None:
    """Train the night's candidate here (a subflow), or on a worker of `nightly.train_pool`."""
    if settings.nightly.train_pool is not None:
        train_on_pool(candidate, settings)
        return
    # resume=True: a fresh run when there is no checkpoint, and a retry (or tomorrow's rerun
    # of tonight) continues where the killed one stopped instead of starting over.
    train_flow.with_options(retries=1, retry_delay_seconds=60)(out=str(candidate), settings=settings, resume=True)


# --- the flow ------------------------------------------------------------------------------


def _label_new_audio(inbox: Path, settings: Settings, report: NightlyReport) -> None:
    logger = get_run_logger()
    for split, inputs in inbox_inputs(inbox, settings.nightly.default_split).items():
        if not any(discover_inputs(spec) for spec in inputs):
            continue
        # A label run that fails part-way keeps what it wrote; the retry skips it by hash.
        labelled = label_flow.with_options(retries=2, retry_delay_seconds=30)(inputs=inputs, split=split, settings=settings)
        report.labelled_clips[split] = labelled.n_clips
        report.skipped_sources += labelled.n_skipped
        logger.info("%s: %d new clips, %d sources already labelled", split, labelled.n_clips, labelled.n_skipped)


def _evaluate_and_decide(candidate: Path, current: Path | None, settings: Settings, report: NightlyReport) -> Decision:
    runs = [str(candidate)] if current is None or current == candidate else [str(current), str(candidate)]
    try:
        evaluation = evaluate_flow(runs=runs, settings=settings)
    except (NoHumanLabelsError, ValueError) as error:  # e.g. no test audio arrived yet
        return Decision(False, f"not evaluated, so not promoted: {error}")
    report.evaluation_report = evaluation.report
    if current == candidate:
        return Decision(False, "the candidate is already the current model")
    if current is None:
        if settings.nightly.promote_first:
            return Decision(True, "no current model yet: the first candidate becomes current")
        return Decision(False, "no current model and nightly.promote_first is off")
    return decide(map_difference(evaluation.results), settings.evaluate.confidence)


def _apply_retention(settings: Settings) -> None:
    """`[retention]`: erase expired recordings and drop expired audio, with an artifact saying what went."""
    removed = retention_task(settings)
    lines = ["## Retention", ""] + [f"- **{key}**: {value}" for key, value in asdict(removed).items()]
    create_markdown_artifact(key="retention", markdown="\n".join(lines), description="voxtox retention: what was removed")


def _review(settings: Settings, report: NightlyReport) -> None:
    """`[review]`: finished reviews in, the night's batch out, with an artifact saying what."""
    cycle = review_task(settings, report.night)
    lines = [f"## Review {report.night}", "", f"- **sent for review**: {cycle.sent} clips"
             + (f" to {cycle.pushed_to}" if cycle.pushed_to else (f" ({cycle.export})" if cycle.export else ""))]
    lines += [f"- **note**: {cycle.note}"] if cycle.note else []
    lines += [f"- **came back from** {url}: {what}" for url, what in cycle.imported.items()]
    create_markdown_artifact(key="review", markdown="\n".join(lines), description="voxtox review: what went out and came back")
    report.review = "; ".join([f"{cycle.sent} sent", *cycle.imported.values()])


def _publish(report: NightlyReport) -> None:
    lines = [f"## Nightly {report.night}: {'promoted' if report.promoted else 'not promoted'}", "", report.reason, ""]
    lines += [f"- **{key}**: {value}" for key, value in asdict(report).items() if key != "reason"]
    create_markdown_artifact(key="nightly", markdown="\n".join(lines), description="voxtox nightly: what happened and why")


def _take_in(inbox_dir: Path, settings: Settings, served: Path | None, report: NightlyReport) -> None:
    """Retention, then the inbox's new audio labelled and its human labels imported, then the
    lake compacted (DuckLake merges each table's small files, one commit)."""
    if settings.retention.enabled:
        _apply_retention(settings)
    _label_new_audio(inbox_dir, settings, report)
    if files := truth_files(inbox_dir):
        report.imported_label_spans = import_labels_task([str(p) for p in files], settings, served)
    if settings.review.nightly:
        _review(settings, report)
    if settings.nightly.compact:  # DuckLake merges the lake's files (one commit)
        report.compacted_files = sum(before - after for before, after in compact_lake_task(settings).values())


def _new_train_clips(train_clips: int, current: Path | None, settings: Settings) -> int:
    """Training clips new since the newest model trained, promoted or not: a candidate that lost
    is not retrained on the same data every night after."""
    trained = [clips_trained_on(run) for run in (current, latest_candidate(settings)) if run is not None]
    return train_clips - max(trained, default=0)


@flow(name="nightly", log_prints=True)
def nightly_flow(
    inbox: str | None = None, settings: Settings | None = None, night: str | None = None, force_train: bool = False
) -> NightlyReport:
    """Label the inbox → import its human labels → train a candidate when enough new training
    clips arrived → evaluate it against the current model on the test split → promote it if its
    mAP is better with a paired-bootstrap 95% CI that excludes 0."""
    record_and_reap_apis()  # a night killed mid-way must not leave its Prefect API for good
    served = check_served_run(settings)
    settings = settings or Settings()
    inbox_dir = Path(inbox) if inbox else settings.inbox_dir
    if served is not None and (outside := outside_reason(str(inbox_dir), served)):
        raise ValueError(f"inbox: {outside}")
    report = NightlyReport(night=date.fromisoformat(night).isoformat() if night else date.today().isoformat())
    _take_in(inbox_dir, settings, served, report)
    current = current_run(settings)
    report.current = str(current) if current else None
    report.train_clips = train_clip_count(settings)
    report.new_train_clips = _new_train_clips(report.train_clips, current, settings)
    candidate = candidate_run(settings, report.night)
    if not RunDir(candidate).is_finished():
        enough = report.new_train_clips >= settings.nightly.min_new_clips or current is None
        if not report.train_clips or not (enough or force_train):
            report.reason = (f"{report.new_train_clips} new training clips since the current model "
                             f"(nightly.min_new_clips = {settings.nightly.min_new_clips}): no training tonight")
            _publish(report)
            return report
        try:
            train_candidate(candidate, settings)
        except TrainingNotDone as error:  # the night fails, and its artifact says why
            report.reason = f"no candidate tonight, nothing promoted: {error}"
            _publish(report)
            raise
        report.trained_now = True
    report.candidate = str(candidate)
    if not RunDir(candidate).thresholds().exists():  # also when a rerun finds it missing
        calibrate_task(str(candidate), settings)

    decision = _evaluate_and_decide(candidate, current, settings, report)
    if decision.promoted:
        promote(candidate, settings)
        report.current = str(candidate)
    report.promoted, report.reason = decision.promoted, decision.reason
    _publish(report)
    print(f"nightly {report.night}: {'promoted' if report.promoted else 'not promoted'}: {report.reason}")
    return report
