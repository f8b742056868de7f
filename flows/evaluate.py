"""The evaluation flow: score each run (one task per run, cached in the run directory), then
measure them together (paired against the first), and publish the results as Prefect artifacts:
a table of AP per class with intervals and differences, and the Markdown report."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from voxtox.settings import Settings
from voxtox.tasks.evaluate import Evaluation, evaluate_task, pin_evaluation_snapshot, score_run_task
from voxtox.models.evaluation_report import Rows, format_ci


def ap_artifact_rows(results: str) -> list[dict[str, str | int | None]]:
    """One row per language and class: each model's AP [CI] and each difference [CI] (in %)."""
    rows = Rows(pq.read_table(results))
    table = []
    for lang in rows.langs:
        for name in rows.classes:
            first = rows.get("model", rows.models[0], lang, "ap", name)
            record: dict[str, str | int | None] = {"lang": lang, "class": name,
                                                   "positives": None if first is None else first["n_positive"]}
            record |= {model: format_ci(rows.get("model", model, lang, "ap", name)) for model in rows.models}
            record |= {f"Δ {d}": format_ci(rows.get("difference", d, lang, "ap_difference", name), signed=True)
                       for d in rows.differences}
            table.append(record)
    return table


def publish_evaluation(evaluation: Evaluation, key: str = "evaluation") -> None:
    create_table_artifact(key=f"{key}-ap", table=ap_artifact_rows(evaluation.results),
                          description=f"voxtox evaluate: AP (%) with 95% CI on {evaluation.split}")
    report = Path(evaluation.report).read_text()
    files = "\n".join(f"- `{p}`" for p in [evaluation.results, *evaluation.plots])
    if evaluation.lake_snapshot is not None:
        files += f"\n\nRead lake snapshot {evaluation.lake_snapshot}."
    create_markdown_artifact(key=f"{key}-report", markdown=f"{report}\n## Files\n\n{files}\n",
                             description="voxtox evaluate: the report")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(runs: list[str], settings: Settings | None = None, out: str | None = None,
                  snapshot: str = "run") -> Evaluation:
    """Evaluate trained runs on `settings.evaluate.split`; the first run is the baseline. On a
    lake, every task reads one snapshot: by default the one the runs trained on (`snapshot`:
    run, latest or a number; tasks/evaluate.py pin_evaluation_snapshot)."""
    settings = pin_evaluation_snapshot(settings or Settings(), runs, snapshot)
    scored = [score_run_task.submit(run, settings) for run in dict.fromkeys(runs)]
    for future in scored:  # a failed scoring raises here, rather than leaving nothing to measure
        future.result()
    evaluation = evaluate_task(runs, settings, out)
    publish_evaluation(evaluation)
    print(f"evaluation {evaluation.evaluation_id}: {evaluation.report}")
    return evaluation
