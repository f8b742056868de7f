"""The ablation flow: one task per cell of the grid (train unless done, evaluate unless done;
cells run in parallel when the task runner has workers: threads here, or a Dask cluster with
`dask_address`), then the finished cells measured against the baseline and the paper-shaped
tables published as Prefect artifacts. A failed cell does not stop the others; it is reported,
and the next run retries it."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait

from voxtox.flows.evaluate import ap_artifact_rows
from voxtox.flows.label import task_runner_for
from voxtox.tasks.ablate import BASELINE, AblationPlan, AblationResult, cell_task, plan_cells, tables_task


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


def run_ablation(plan: AblationPlan) -> AblationResult:
    """The flow with `plan.grid.workers` cells at once (or on the Dask cluster of the settings)."""
    return ablate_flow.with_options(task_runner=task_runner_for(plan.settings, plan.grid.workers))(plan=plan)
