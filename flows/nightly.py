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

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from voxtox.audio import discover_inputs
from voxtox.flows.evaluate import evaluate_flow
from voxtox.flows.label import label_flow
from voxtox.flows.serve import check_served_run
from voxtox.flows.train import CURRENT, is_finished, train_flow
from voxtox.flows.train_pool import TrainingNotDone, train_on_pool
from voxtox.models.metrics import MAP_NAME
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.schema import HAS_AUDIO
from voxtox.tasks.calibrate import calibrate_task
from voxtox.tasks.classify import THRESHOLDS_FILE
from voxtox.tasks.compact import compact_task
from voxtox.tasks.confine import outside_reason
from voxtox.tasks.evaluate import ALL_LANGUAGES, NoHumanLabelsError
from voxtox.tasks.human_labels import import_labels_task
from voxtox.tasks.retention import retention_task

SPLIT_DIRS = ("train", "val", "test")
TRUTH_DIR = "truth"
TRUTH_SUFFIXES = (".jsonl", ".csv", ".parquet")
#: What `voxtox synth` writes beside the audio: metadata, not input.
SYNTH_METADATA = ("corpus.json", "manifest.jsonl")


@dataclass
class Decision:
    promoted: bool
    reason: str
    map_difference: float | None = None
    map_difference_low: float | None = None
    map_difference_high: float | None = None


@dataclass
class NightlyReport:
    night: str
    labelled_clips: dict[str, int] = field(default_factory=dict)  # per split, this run
    skipped_sources: int = 0
    imported_label_spans: int = 0
    compacted_files: int = 0  # small shard files merged into large ones
    train_clips: int = 0
    new_train_clips: int = 0
    candidate: str | None = None
    trained_now: bool = False
    evaluation_report: str | None = None
    promoted: bool = False
    reason: str = ""
    current: str | None = None


# --- what arrived --------------------------------------------------------------------------


def inbox_inputs(inbox: Path, default_split: str) -> dict[str, list[str]]:
    """Inputs per split: the split subdirectories, then loose audio elsewhere in the inbox."""
    if not inbox.is_dir():
        raise FileNotFoundError(f"inbox {inbox} does not exist (settings: serve.inbox)")
    by_split: dict[str, list[str]] = {}
    for split in SPLIT_DIRS:
        if (inbox / split).is_dir() and any((inbox / split).iterdir()):
            by_split.setdefault(split, []).append(str(inbox / split))
    reserved = {inbox / name for name in (*SPLIT_DIRS, TRUTH_DIR)}
    if (inbox / SYNTH_METADATA[0]).exists():
        reserved |= {inbox / name for name in SYNTH_METADATA}
    loose = [p for p in sorted(inbox.iterdir()) if p not in reserved and not p.name.startswith(".")]
    if loose:
        by_split.setdefault(default_split, []).extend(str(p) for p in loose)
    return by_split


def truth_files(inbox: Path) -> list[Path]:
    directory = inbox / TRUTH_DIR
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in TRUTH_SUFFIXES and not p.name.startswith("segments-") and not p.stem.endswith("-train")
    )


# --- training ------------------------------------------------------------------------------


def train_clip_count(settings: Settings) -> int:
    catalog = Catalog.from_settings(settings)
    if "clips" not in catalog.refresh_views():
        return 0
    condition = settings.train.train_filter
    rows = catalog.query(
        f"SELECT count(*) AS n FROM clips WHERE split = 'train' AND {HAS_AUDIO} AND ({condition})"
    ).to_pylist()
    return int(rows[0]["n"])


def current_run(settings: Settings) -> Path | None:
    link = settings.runs_dir / CURRENT
    return link.resolve() if link.exists() else None


def clips_trained_on(run: Path) -> int:
    config = run / "config.json"
    return int(json.loads(config.read_text()).get("train_clips", 0)) if config.exists() else 0


def candidate_run(settings: Settings, night: str) -> Path:
    """The night's run directory, absolute: it is compared with `current`, a resolved link."""
    return (settings.runs_dir / f"nightly-{night}").resolve()


def latest_candidate(settings: Settings) -> Path | None:
    finished = [run for run in sorted(settings.runs_dir.glob("nightly-*")) if is_finished(run)]
    return finished[-1].resolve() if finished else None


def train_candidate(candidate: Path, settings: Settings) -> None:
    """Train the night's candidate here (a subflow), or on a worker of `nightly.train_pool`."""
    if settings.nightly.train_pool is not None:
        train_on_pool(candidate, settings)
        return
    # resume=True: a fresh run when there is no checkpoint, and a retry (or tomorrow's rerun
    # of tonight) continues where the killed one stopped instead of starting over.
    train_flow.with_options(retries=1, retry_delay_seconds=60)(out=str(candidate), settings=settings, resume=True)


# --- promotion -----------------------------------------------------------------------------


def map_difference(results: str) -> tuple[float, float, float] | None:
    """(point, low, high) of candidate − current mAP over all languages, from the results file."""
    table = pq.read_table(results)
    mask = pc.and_(
        pc.and_(pc.equal(table["kind"], "difference"), pc.equal(table["lang"], ALL_LANGUAGES)),
        pc.and_(pc.equal(table["metric"], "ap_difference"), pc.equal(table["class_name"], MAP_NAME)),
    )
    rows = table.filter(mask).to_pylist()
    if not rows or rows[0]["low"] is None:
        return None
    return rows[0]["point"], rows[0]["low"], rows[0]["high"]


def decide(difference: tuple[float, float, float] | None, confidence: float = 0.95) -> Decision:
    if difference is None:
        return Decision(False, "the mAP difference is undefined on this test set (a class without positives?)")
    point, low, high = difference
    interval = f"{100 * confidence:g}% CI [{100 * low:+.1f}, {100 * high:+.1f}]"
    if low > 0:
        return Decision(True, f"mAP better by {100 * point:+.1f} points, {interval} excludes 0", point, low, high)
    return Decision(False, f"mAP difference {100 * point:+.1f} points, {interval} does not exclude 0: "
                           "the current model stays", point, low, high)


def promote(run: Path, settings: Settings) -> Path:
    """Point `<runs_dir>/current` at `run`, atomically (a reader sees the old or the new one)."""
    link = settings.runs_dir / CURRENT
    staging = link.with_name(f".{CURRENT}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(os.path.relpath(run.resolve(), link.parent.resolve()), target_is_directory=True)
    os.replace(staging, link)
    return link


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


def _publish(report: NightlyReport) -> None:
    lines = [f"## Nightly {report.night}: {'promoted' if report.promoted else 'not promoted'}", "", report.reason, ""]
    lines += [f"- **{key}**: {value}" for key, value in asdict(report).items() if key != "reason"]
    create_markdown_artifact(key="nightly", markdown="\n".join(lines), description="voxtox nightly: what happened and why")


def _take_in(inbox_dir: Path, settings: Settings, served: Path | None, report: NightlyReport) -> None:
    """Retention, then the inbox's new audio labelled and its human labels imported, then the
    shards compacted (before training reads them: it holds their file names)."""
    if settings.retention.enabled:
        _apply_retention(settings)
    _label_new_audio(inbox_dir, settings, report)
    if files := truth_files(inbox_dir):
        report.imported_label_spans = import_labels_task([str(p) for p in files], settings, served)
    if settings.nightly.compact:
        report.compacted_files = sum(result.merged for result in compact_task(settings))


@flow(name="nightly", log_prints=True)
def nightly_flow(
    inbox: str | None = None, settings: Settings | None = None, night: str | None = None, force_train: bool = False
) -> NightlyReport:
    """Label the inbox → import its human labels → train a candidate when enough new training
    clips arrived → evaluate it against the current model on the test split → promote it if its
    mAP is better with a paired-bootstrap 95% CI that excludes 0."""
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
    # New since the newest model trained, promoted or not: a candidate that lost is not retrained
    # on the same data every night after.
    report.new_train_clips = report.train_clips - max(
        [clips_trained_on(run) for run in (current, latest_candidate(settings)) if run is not None], default=0
    )
    candidate = candidate_run(settings, report.night)
    if not is_finished(candidate):
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
    if not (candidate / "best" / THRESHOLDS_FILE).exists():  # also when a rerun finds it missing
        calibrate_task(str(candidate), settings)

    decision = _evaluate_and_decide(candidate, current, settings, report)
    if decision.promoted:
        promote(candidate, settings)
        report.current = str(candidate)
    report.promoted, report.reason = decision.promoted, decision.reason
    _publish(report)
    print(f"nightly {report.night}: {'promoted' if report.promoted else 'not promoted'}: {report.reason}")
    return report
