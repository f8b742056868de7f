"""The ablation flow: one task per cell of the grid (train unless done, evaluate unless done;
cells run in parallel when the task runner has workers: threads here, or a Dask cluster with
`dask_address`), then the finished cells measured against the baseline and the paper-shaped
tables published as Prefect artifacts. A failed cell does not stop the others; it is reported,
and the next run retries it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from voxtox.flows.evaluate import ap_artifact_rows
from voxtox.tasks.ablate import (
    BASELINE,
    CSV_FILE,
    TABLE_FILE,
    AblationPlan,
    Cell,
    grid_evaluation,
    grid_csv_rows,
    grid_report,
    plan_cells,
    run_cell,
    write_grid_csv,
)


@dataclass
class AblationResult:
    report: str  # the tables (Markdown)
    results: str  # the metric rows of every cell and its difference to the baseline (Parquet)
    grid_csv: str  # mAP and the difference to the baseline per cell, table and language (CSV)
    evaluation_id: str
    cells: list[dict[str, object]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell name -> what went wrong


@task(name="ablation-cell", task_run_name="cell-{cell.name}")
def cell_task(plan: AblationPlan, cell: Cell) -> dict[str, object]:
    return run_cell(plan, cell)


@task(name="ablation-tables")
def tables_task(plan: AblationPlan, cells: list[Cell], failed: dict[str, str]) -> AblationResult:
    evaluation = grid_evaluation(plan, cells)
    text = grid_report(plan, cells, evaluation)
    if failed:
        text += "\n## Cells that failed (not in the tables; the next run retries them)\n\n"
        text += "".join(f"- `{name}`: {reason}\n" for name, reason in failed.items())
    path = plan.out / TABLE_FILE
    path.write_text(text)
    csv_path = write_grid_csv(plan.out / CSV_FILE, grid_csv_rows(plan, cells, evaluation))
    return AblationResult(str(path), evaluation.results, str(csv_path), evaluation.evaluation_id, failed=failed)


@flow(name="ablate", log_prints=True)
def ablate_flow(plan: AblationPlan) -> AblationResult:
    """Train and evaluate every cell of `plan`'s grid, then compare them with the baseline."""
    cells = plan_cells(plan)
    futures = [cell_task.submit(plan, cell) for cell in cells]
    wait(futures)
    finished, states, failed = [], [], {}
    for cell, future in zip(cells, futures, strict=True):
        if future.state.is_completed():
            finished.append(cell)
            states.append(future.result())
        else:
            failed[cell.name] = str(future.state.message or future.state.name)
    for state in states:
        print(f"cell {state['cell']}: {'trained' if state['trained'] else 'already trained'}, "
              f"{'evaluated' if state['evaluated'] else 'already evaluated'}")
    if BASELINE in failed:
        raise RuntimeError(f"the baseline cell failed, so nothing can be compared: {failed[BASELINE]}")
    result = tables_task(plan, finished, failed)
    result.cells = states
    create_markdown_artifact(key="ablation-tables", markdown=Path(result.report).read_text(),
                             description="voxtox ablate: the paper's Tables 2 and 3 on this data")
    create_table_artifact(key="ablation-ap", table=ap_artifact_rows(result.results),
                          description="voxtox ablate: AP (%) with 95% CI per cell and its difference to the baseline")
    return result


def task_runner_for(plan: AblationPlan) -> TaskRunner:
    if plan.settings.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=plan.settings.dask_address)
    return ThreadPoolTaskRunner(max_workers=plan.grid.workers)


def run_ablation(plan: AblationPlan) -> AblationResult:
    """The flow with `plan.grid.workers` cells at once (or on the Dask cluster of the settings)."""
    return ablate_flow.with_options(task_runner=task_runner_for(plan))(plan=plan)
