"""`voxtox serve`: register voxtox's deployments with Prefect and run them on their schedules.

Prefect's `serve` runs in this process: it creates or updates each deployment on the Prefect
API (`PREFECT_API_URL`), polls for their scheduled runs and runs each in a subprocess.
Which deployments, their cron schedules, the timezone and the inbox come from
`settings.serve`; `build_deployments` makes the deployments without touching the API, so they
can be listed (`voxtox serve --dry-run`) and tested.

With `nightly.train_pool` set, the nightly trains through a deployment that is not served here
but registered on that work pool (`train/voxtox`, `flows/train_pool.py`), for a worker on a GPU
host to run: a served deployment can only run in the process that serves it. Registering it here
rather than with `prefect deploy` and a prefect.yaml keeps one source of truth: the pool the
nightly triggers is the pool the deployment is on, both read from the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.context import FlowRunContext
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron

from voxtox.settings import Settings
from voxtox.confine import SERVED_INBOX_ENV, served_inbox

#: Every deployment gets this name ("nightly/voxtox", "label/voxtox" in Prefect's UI and CLI).
DEPLOYMENT_NAME = "voxtox"
#: The inbox's training audio (the nightly flow's layout: train/, val/, test/, truth/, loose files).
#: The label deployment takes only this: val/test audio needs its human labels, which nightly imports.
TRAIN_INBOX = "train"


@dataclass(frozen=True)
class Deployable:
    """A flow `voxtox serve` can deploy: where it lives, when it runs, what it is given."""

    module: str
    attribute: str
    description: str
    cron: Callable[[Settings], str | None]
    parameters: Callable[[Settings], dict[str, Any]]
    #: Set for a deployment that workers run: the work pool it goes on (None: not wanted with
    #: these settings). Unset: served, run by `voxtox serve` itself.
    work_pool: Callable[[Settings], str | None] | None = None

    def pool(self, settings: Settings) -> str | None:
        return self.work_pool(settings) if self.work_pool else None

    def load(self) -> Flow:
        """Import the flow only now, so a deployment that is not served costs nothing."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name != self.module:
                raise
            raise ValueError(f"{self.module} is not installed, so it cannot be served") from error
        return getattr(module, self.attribute)


DEPLOYABLES: dict[str, Deployable] = {
    "nightly": Deployable(
        module="voxtox.flows.nightly",
        attribute="nightly_flow",
        description="Label new audio from the inbox, refresh the views, train, evaluate, promote.",
        cron=lambda settings: settings.serve.cron,
        parameters=lambda settings: {"inbox": str(settings.inbox_dir.resolve())},
    ),
    "label": Deployable(
        module="voxtox.flows.label",
        attribute="label_flow",
        description="Label the inbox's train/ audio into the catalog now (sources done before are skipped).",
        cron=lambda settings: settings.serve.label_cron,
        parameters=lambda settings: {"inputs": [str((settings.inbox_dir / TRAIN_INBOX).resolve())], "split": "train"},
    ),
    "train": Deployable(
        module="voxtox.flows.train_pool",
        attribute="train_run_flow",
        description="Train a run directory under runs_dir with the worker's settings (the nightly starts it).",
        cron=lambda settings: None,
        parameters=lambda settings: {},
        work_pool=lambda settings: settings.nightly.train_pool,
    ),
}
#: Deployments registered on a work pool for the served one that triggers them.
POOL_DEPLOYMENTS = {"nightly": "train"}


def schedule_timezone(settings: Settings) -> str:
    """The IANA zone the cron schedules are read in: the configured one, else this machine's."""
    if settings.serve.timezone:
        return settings.serve.timezone
    import tzlocal

    return tzlocal.get_localzone_name() or "UTC"


def deployed_names(settings: Settings) -> list[str]:
    """The served flows `settings.serve.flows` names, each followed by the work-pool deployment
    it triggers when that has a pool (the nightly's `train` with `nightly.train_pool`)."""
    servable = [name for name, deployable in DEPLOYABLES.items() if deployable.work_pool is None]
    unknown = [name for name in settings.serve.flows if name not in servable]
    if unknown:
        raise ValueError(f"cannot serve {', '.join(unknown)}: known flows are {', '.join(servable)}")
    names = []
    for name in settings.serve.flows:
        names.append(name)
        triggered = POOL_DEPLOYMENTS.get(name)
        if triggered and DEPLOYABLES[triggered].pool(settings):
            names.append(triggered)
    return names


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments `voxtox serve` registers, in the order `settings.serve.flows` names them;
    a deployment with `work_pool_name` is for a worker of that pool, not served."""
    timezone = schedule_timezone(settings)
    deployments = []
    for name in deployed_names(settings):
        deployable = DEPLOYABLES[name]
        cron = deployable.cron(settings)
        deployment = deployable.load().to_deployment(
            name=DEPLOYMENT_NAME,
            schedule=Cron(cron, timezone=timezone) if cron else None,
            parameters=deployable.parameters(settings),
            description=deployable.description,
            tags=["voxtox"],
            # Imported by module name, so it runs wherever voxtox is installed (the image, a
            # worker's host): nothing to store or pull.
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=deployable.pool(settings),
        )
        deployments.append(deployment)
    return deployments


def next_runs(deployment: RunnerDeployment) -> list[datetime]:
    """When each of the deployment's schedules fires next (nothing for an on-demand one)."""
    from prefect.server.schemas.schedules import CronSchedule

    runs = []
    for schedule in deployment.schedules or []:
        cron = schedule.schedule
        dates = asyncio.run(CronSchedule(cron=cron.cron, timezone=cron.timezone).get_dates(n=1))
        runs.extend(dates)
    return runs


def check_served_run(settings: Settings | None, allow_forgotten: bool = False) -> Path | None:
    """In a process `voxtox serve` started: the inbox its runs' inputs are confined to, after
    refusing the parameters a deployment's run may not be given. With `settings`, anyone who can
    start a run could point it at another data directory, a model anywhere on disk, SQL filters
    that DuckDB runs (DuckDB reads and writes files) or their own Dask scheduler; with
    `allow_forgotten`, label again what `voxtox forget` erased. A served run takes its settings
    from the serving process; an in-process subflow (nightly's label runs) gets its parent's. A
    run of a deployment is refused even when it names a parent task run: the API lets whoever
    creates a run name one. None outside `voxtox serve`: a local user's runs are neither confined
    nor refused anything."""
    inbox = served_inbox()
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    direct = flow_run is None or flow_run.parent_task_run_id is None or flow_run.deployment_id is not None
    if inbox is not None and direct and (settings is not None or allow_forgotten):
        given = "settings" if settings is not None else "allow_forgotten"
        raise ValueError(
            f"a served deployment's run cannot be given `{given}`: it takes its settings from `voxtox serve` "
            "(voxtox.toml, VOXTOX_* variables), and labels erased recordings only when a local user runs "
            "`voxtox label --allow-forgotten`"
        )
    return inbox


def ensure_work_pool(name: str) -> None:
    """Create the work pool (type process) unless it exists: a worker may start after serve."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            pool = WorkPoolCreate(name=name, type=ProcessWorker.type,
                                  base_job_template=ProcessWorker.get_default_base_job_template())
            with contextlib.suppress(ObjectAlreadyExists):  # a worker created it meanwhile
                client.create_work_pool(pool)


def register_on_work_pools(deployments: list[RunnerDeployment]) -> None:
    """Create or update the deployments that workers run (no image, no code storage: the
    entrypoint is a module of the installed package)."""
    for deployment in deployments:
        ensure_work_pool(deployment.work_pool_name)
        deployment.apply()


def serve_deployments(deployments: list[RunnerDeployment], settings: Settings) -> None:
    """Register the deployments and run the served ones' flow runs until interrupted."""
    register_on_work_pools([d for d in deployments if d.work_pool_name])
    deployments = [d for d in deployments if not d.work_pool_name]
    (settings.inbox_dir / TRAIN_INBOX).mkdir(parents=True, exist_ok=True)
    # Flow runs start in subprocesses that read Settings() afresh: give them this data directory
    # (from --data-dir or a TOML file) rather than their working directory's default, and confine
    # what they read to the inbox (core/confine.py).
    os.environ["VOXTOX_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ[SERVED_INBOX_ENV] = str(settings.inbox_dir.resolve())
    serve(*deployments, limit=settings.serve.limit)
