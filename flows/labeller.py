"""Prefect flows for the text toxicity labeller: train one from labelled text, evaluate one on
held-out text (optionally against another, paired), and run the functional tests.
`voxtox labeller train/eval/functional` run these; their tasks are tasks/labeller.py."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from voxtox.settings import Settings
from voxtox.tasks.labeller import evaluate_task, functional_task, train_task


@flow(name="labeller-train")
def labeller_train_flow(data: str, out: str, settings: Settings) -> str:
    """Train a labeller on `data` (a built-in source or a file) into `out`."""
    path = train_task(data, out, settings)
    create_markdown_artifact(
        f"Labeller trained on `{data}` with `{settings.labeller_train.backbone}` "
        f"({settings.labeller_train.loss}); written to `{path}`.",
        key="labeller-train",
    )
    return path


@flow(name="labeller-eval")
def labeller_eval_flow(
    checkpoint: str, data: str, settings: Settings, baseline: str | None = None
) -> str:
    """Evaluate `checkpoint` on held-out `data`; the report is also a Prefect artifact."""
    report = evaluate_task(checkpoint, data, settings, baseline)
    create_markdown_artifact(report, key="labeller-eval")
    return report


@flow(name="labeller-functional")
def labeller_functional_flow(
    checkpoint: str, settings: Settings, split: str = "eval", baseline: str | None = None
) -> str:
    """Run the functional tests on `checkpoint`; the report is also a Prefect artifact."""
    report = functional_task(checkpoint, split, settings, baseline)
    create_markdown_artifact(report, key="labeller-functional")
    return report
