"""`voxtox serve`: register voxtox's deployments with Prefect and run them on their schedules.

Prefect's `serve` runs in this process: it creates or updates each deployment on the Prefect
API (`PREFECT_API_URL`), polls for their scheduled runs and runs each in a subprocess.
Which deployments, their cron schedules, the timezone and the inbox come from
`settings.serve`; `build_deployments` makes the deployments without touching the API, so they
can be listed (`voxtox serve --dry-run`) and tested.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import Flow, serve
from prefect.context import FlowRunContext
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from voxtox.settings import Settings
from voxtox.tasks.confine import SERVED_INBOX_ENV, served_inbox

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
}


def schedule_timezone(settings: Settings) -> str:
    """The IANA zone the cron schedules are read in: the configured one, else this machine's."""
    if settings.serve.timezone:
        return settings.serve.timezone
    import tzlocal

    return tzlocal.get_localzone_name() or "UTC"


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments `voxtox serve` registers, in the order `settings.serve.flows` names them."""
    unknown = [name for name in settings.serve.flows if name not in DEPLOYABLES]
    if unknown:
        raise ValueError(f"cannot serve {', '.join(unknown)}: known flows are {', '.join(DEPLOYABLES)}")
    timezone = schedule_timezone(settings)
    deployments = []
    for name in settings.serve.flows:
        deployable = DEPLOYABLES[name]
        cron = deployable.cron(settings)
        deployments.append(
            deployable.load().to_deployment(
                name=DEPLOYMENT_NAME,
                schedule=Cron(cron, timezone=timezone) if cron else None,
                parameters=deployable.parameters(settings),
                description=deployable.description,
                tags=["voxtox"],
                # Imported by module name, so it runs wherever voxtox is installed (the image too).
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
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
    from the serving process; a subflow (nightly's label runs) gets its parent's. None outside
    `voxtox serve`: a local user's runs are neither confined nor refused anything."""
    inbox = served_inbox()
    context = FlowRunContext.get()
    top_level = context is None or context.flow_run is None or context.flow_run.parent_task_run_id is None
    if inbox is not None and top_level and (settings is not None or allow_forgotten):
        given = "settings" if settings is not None else "allow_forgotten"
        raise ValueError(
            f"a served deployment's run cannot be given `{given}`: it takes its settings from `voxtox serve` "
            "(voxtox.toml, VOXTOX_* variables), and labels erased recordings only when a local user runs "
            "`voxtox label --allow-forgotten`"
        )
    return inbox


def serve_deployments(deployments: list[RunnerDeployment], settings: Settings) -> None:
    """Register the deployments and run their flow runs until interrupted."""
    (settings.inbox_dir / TRAIN_INBOX).mkdir(parents=True, exist_ok=True)
    # Flow runs start in subprocesses that read Settings() afresh: give them this data directory
    # (from --data-dir or a TOML file) rather than their working directory's default, and confine
    # what they read to the inbox (tasks/confine.py).
    os.environ["VOXTOX_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ[SERVED_INBOX_ENV] = str(settings.inbox_dir.resolve())
    serve(*deployments, limit=settings.serve.limit)
