"""Training on a Prefect work pool: the `train/voxtox` deployment that a worker runs (on a GPU
host), and the nightly's side, which starts a run of it and follows it to its end.

`voxtox serve` registers the deployment on `nightly.train_pool` with the entrypoint
`voxtox.flows.train_pool.train_run_flow`, a module path: the worker imports it from the voxtox
package installed beside it, so no code is stored or pulled. A run is given only the name of a
run directory under the worker's `<runs_dir>` and trains it with the worker's own settings (its
voxtox.toml, `VOXTOX_*` variables), as a served run takes the serving process's: whoever can
start runs in the UI cannot hand a worker a data directory, a model path or SQL. The nightly and
the worker share the data directory (one file system, mounted wherever each likes), so the
nightly finds the candidate where the worker wrote it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from voxtox.flows.train import train_and_publish
from voxtox.settings import Settings
from voxtox.storage.runs import CURRENT, RunDir
from voxtox.tasks.train import TrainReport

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

#: The deployment's flow and name ("train/voxtox" in Prefect's UI and CLI).
TRAIN_FLOW_NAME = "train"
TRAIN_DEPLOYMENT = "train/voxtox"
#: Seconds between two looks at the training run's state (a read of one flow run).
POLL_S = 2.0
#: A run directory's name: one path component, nothing hidden.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: States of a run that has not ended, in which a rerun of the night follows it instead of
#: starting a second training into the same directory.
UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


class TrainingNotDone(RuntimeError):
    """The night's training run on the work pool gave no trained candidate (the message says why)."""


# --- the worker's side ---------------------------------------------------------------------


def pool_run_dir(run: str, settings: Settings) -> Path:
    """`<runs_dir>/<run>` for a run of the deployment. Whoever can start runs names it, so it is a
    plain name (it stays below runs_dir), neither `current` nor a link, and not a run that
    finished training: a trained (perhaps promoted) model is never overwritten. The directories
    must be absolute: a worker starts each run in a temporary directory."""
    relative = [f"{name} = {path}" for name, path in (("data_dir", settings.data_dir), ("runs_dir", settings.runs_dir))
                if not path.is_absolute()]
    if relative:
        raise ValueError(f"relative paths ({', '.join(relative)}), but a worker starts each run in a temporary "
                         "directory: give the shared data directory as an absolute path (VOXTOX_DATA_DIR)")
    if not RUN_NAME.fullmatch(run) or run == CURRENT:
        raise ValueError(f"run {run!r}: give the name of a run directory under {settings.runs_dir} "
                         f"(letters, digits, '.', '_', '-'; no path; not {CURRENT!r})")
    path = settings.runs_dir / run
    if path.is_symlink():
        raise ValueError(f"run {run!r}: {path} is a link, not a run directory")
    if RunDir(path).is_finished():
        raise ValueError(f"run {run!r} has finished training ({RunDir(path).final} exists): name a new run")
    return path


@flow(name=TRAIN_FLOW_NAME, log_prints=True)
def train_run_flow(run: str, resume: bool = True) -> TrainReport:
    """Train the run directory `<runs_dir>/<run>` with this process's settings (what the
    `train/voxtox` deployment runs on a worker; `resume` continues from its last checkpoint)."""
    settings = Settings()
    return train_and_publish(str(pool_run_dir(run, settings)), settings, resume)


# --- the nightly's side --------------------------------------------------------------------


def train_on_pool(candidate: Path, settings: Settings) -> FlowRun:
    """Train `candidate` through the `train/voxtox` deployment on `nightly.train_pool`: start a
    run of it (shown as a subflow of this flow run), or follow the one a previous attempt of this
    night started; wait `worker_wait_s` for a worker to start it and `train_timeout_h` for it to
    end. Raise TrainingNotDone unless it completed and the candidate is trained."""
    nightly = settings.nightly
    pool = nightly.train_pool
    with get_client(sync_client=True) as client:
        deployment = _deployment_on(client, pool)
        flow_run = _unfinished_run(client, deployment.id, candidate.name)
        if flow_run is None:
            flow_run = run_deployment(TRAIN_DEPLOYMENT, parameters={"run": candidate.name, "resume": True},
                                      timeout=0, tags=["voxtox"])
        get_run_logger().info("training %s: flow run %r of %s, waiting for a worker of work pool %r",
                              candidate.name, flow_run.name, TRAIN_DEPLOYMENT, pool)
        states = _watch(client, flow_run.id)
        if _first(states, lambda state: state.type != StateType.SCHEDULED, nightly.worker_wait_s) is None:
            _cancel(client, flow_run.id, f"no worker of work pool {pool!r} started it within {nightly.worker_wait_s:g} s")
            raise TrainingNotDone(
                f"no worker of work pool {pool!r} started the training run {flow_run.name!r} within "
                f"{nightly.worker_wait_s:g} s (nightly.worker_wait_s); it was cancelled. Start one where the "
                f"GPU is: prefect worker start --pool {pool} --type process"
            )
        ended = _first(states, lambda state: state.is_final(), nightly.train_timeout_h * 3600)
        if ended is None:
            _cancel(client, flow_run.id, f"the night stopped waiting after {nightly.train_timeout_h:g} h")
            raise TrainingNotDone(f"the training run {flow_run.name!r} did not end within {nightly.train_timeout_h:g} h "
                                  "(nightly.train_timeout_h); it was cancelled")
    worker = ended.labels.get("prefect.worker.name", "?")
    if not ended.state.is_completed():
        raise TrainingNotDone(f"the training run {flow_run.name!r} on worker {worker!r} ended "
                              f"{ended.state.name}: {ended.state.message}")
    if not RunDir(candidate).is_finished():
        raise TrainingNotDone(f"the training run {flow_run.name!r} completed on worker {worker!r}, but "
                              f"{RunDir(candidate).final} is not here: the worker's data directory must be this one "
                              f"({settings.data_dir}), on storage both share")
    get_run_logger().info("training %s: done on worker %r", candidate.name, worker)
    return ended


def _deployment_on(client: SyncPrefectClient, pool: str | None) -> DeploymentResponse:
    try:
        deployment = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
    except ObjectNotFound as error:
        raise TrainingNotDone(f"there is no deployment {TRAIN_DEPLOYMENT}: `voxtox serve` registers it "
                              f"when nightly.train_pool is set") from error
    if deployment.work_pool_name != pool:
        raise TrainingNotDone(f"{TRAIN_DEPLOYMENT} is on work pool {deployment.work_pool_name!r}, "
                              f"not nightly.train_pool {pool!r}: restart `voxtox serve` to register it again")
    return deployment


def _unfinished_run(client: SyncPrefectClient, deployment_id: UUID, run: str) -> FlowRun | None:
    """A run of the deployment for this run directory that has not ended (a previous attempt)."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))),
    )
    return next((flow_run for flow_run in runs if flow_run.parameters.get("run") == run), None)


def _watch(client: SyncPrefectClient, flow_run_id: UUID) -> Iterator[FlowRun]:
    """The flow run, read every POLL_S seconds; the log says each state it enters."""
    seen = None
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.name != seen:
            seen = flow_run.state.name
            get_run_logger().info("training run %r: %s", flow_run.name, seen)
        yield flow_run
        time.sleep(POLL_S)


def _first(runs: Iterator[FlowRun], reached: Callable[[State], bool], timeout_s: float) -> FlowRun | None:
    """The first of `runs` whose state is `reached`, or None once `timeout_s` have passed."""
    deadline = time.monotonic() + timeout_s
    for flow_run in runs:
        if flow_run.state is not None and reached(flow_run.state):
            return flow_run
        if time.monotonic() >= deadline:
            return None
    return None


def _cancel(client: SyncPrefectClient, flow_run_id: UUID, why: str) -> None:
    """Cancel a run nobody started (Cancelled) or tell its worker to stop it (Cancelling)."""
    flow_run = client.read_flow_run(flow_run_id)
    if flow_run.state is None or flow_run.state.is_final():
        return
    state = Cancelled(message=why) if flow_run.state.type == StateType.SCHEDULED else Cancelling(message=why)
    client.set_flow_run_state(flow_run_id, state)
