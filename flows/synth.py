"""`voxtox synth` as a Prefect flow, and `voxtox corpus-report`: how well the pipeline does on a
synthetic corpus whose truth is known.

The report labels the corpus's splits with the ordinary `label` flow (sources labelled before
are skipped), then measures the pipeline against the truth (models/corpus_report.py: hours per
class and language, label quality with bootstrap intervals, ASR word error rate, VAD boundary
error).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from voxtox.corpus.synth import CorpusManifest, SessionInfo, SynthConfig, load_manifest, synthesize_corpus
from voxtox.flows.label import label_flow, task_runner_for
from voxtox.settings import Settings
from voxtox.models.corpus_report import corpus_settings, corpus_summary, evaluation_splits, hours_table, measure_corpus


@flow(name="synth", log_prints=True)
def synth_flow(out: str, config: SynthConfig) -> dict[str, object]:
    """Generate a corpus (see core/corpus/synth.py) with a terminal bar and a Prefect progress
    artifact; returns the corpus's totals."""
    logger = get_run_logger()
    started = time.perf_counter()
    artifact = create_progress_artifact(progress=0.0, key="synth-progress", description="hours of audio written")
    written = [0.0]
    with Progress(TextColumn("synth"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("synth", total=config.hours * 3600)

        def advance(info: SessionInfo) -> None:
            written[0] += info.duration_s
            bar.advance(task, info.duration_s)
            update_progress_artifact(artifact, progress=min(100.0, 100.0 * written[0] / (config.hours * 3600)))

        manifest = synthesize_corpus(out, config=config, progress=advance)
    wall = time.perf_counter() - started
    summary = corpus_summary(manifest) | {"wall_s": round(wall, 1)}
    logger.info("wrote %.3f h of audio in %.1f s to %s", manifest.hours(), wall, out)
    create_markdown_artifact(
        key="synth-summary",
        markdown="## voxtox synth\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in summary.items())
        + "\n\n" + hours_table(manifest),
        description="voxtox synth: what was generated",
    )
    return summary


def label_corpus(manifest: CorpusManifest, settings: Settings, splits: Sequence[str]) -> None:
    """Run the ordinary label flow on each split's directory (known sources are skipped)."""
    flow_ = label_flow.with_options(task_runner=task_runner_for(settings))
    for split in splits:
        directory = manifest.out_dir / split
        if directory.exists():
            flow_(inputs=[str(directory)], split=split, settings=settings)


def corpus_report(
    corpus: Path,
    settings: Settings,
    label: bool = True,
    label_train: bool = False,
    n_resamples: int = 1000,
    command: str = "",
) -> str:
    """Label (if asked), import the val/test truth, and measure the pipeline against it."""
    started = time.perf_counter()
    manifest = load_manifest(corpus)
    settings = corpus_settings(settings, manifest)
    if label:
        label_corpus(manifest, settings, (["train"] if label_train else []) + evaluation_splits(manifest))
    return measure_corpus(manifest, settings, n_resamples, command, started)


@flow(name="corpus-report", log_prints=True)
def corpus_report_flow(
    corpus: str, settings: Settings, label: bool = True, label_train: bool = False,
    n_resamples: int = 1000, command: str = "",
) -> str:
    text = corpus_report(Path(corpus), settings, label, label_train, n_resamples, command)
    create_markdown_artifact(key="corpus-report", markdown=text, description="voxtox corpus-report")
    return text
