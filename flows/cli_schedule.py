"""`voxtox serve` and `voxtox run nightly`: the scheduled flows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from voxtox.flows.cli_common import (
    console,
    user_errors,
)
from voxtox.settings import load_settings


def serve(
    flow: Annotated[list[str] | None, typer.Option(help="a deployment to serve (repeat): nightly, label")] = None,
    cron: Annotated[str | None, typer.Option(help="the nightly schedule, e.g. '0 2 * * *'")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone of the schedules (default: this machine's)")] = None,
    inbox: Annotated[Path | None, typer.Option(help="where new audio arrives (default: <data-dir>/inbox)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake (lake/catalog.sqlite, lake/data/) and work files")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the deployments and their next runs, serve nothing")] = False,
) -> None:
    """Register voxtox's deployments with the Prefect API (PREFECT_API_URL) and run them on their
    cron schedules until stopped (Prefect's `serve`). With nightly.train_pool set, the nightly's
    training deployment (train/voxtox) goes on that work pool, for a worker to run."""
    from voxtox.flows.serve import build_deployments, next_runs, serve_deployments

    with user_errors():
        settings = load_settings(data_dir, serve={"flows": flow, "cron": cron, "timezone": timezone, "inbox": inbox})
        deployments = build_deployments(settings)
    view = Table(Column("deployment", no_wrap=True), "runs on", "entrypoint", "schedule", "next run", "parameters",
                 title="voxtox serve")  # a deployment's name is what one copies: never cut in two
    for deployment in deployments:
        schedules = [s.schedule for s in deployment.schedules or []]
        view.add_row(
            f"{deployment.flow_name}/{deployment.name}",
            f"work pool {deployment.work_pool_name}" if deployment.work_pool_name else "this process",
            deployment.entrypoint,
            ", ".join(f"{s.cron} ({s.timezone})" for s in schedules) or "on demand",
            ", ".join(f"{run:%Y-%m-%d %H:%M %Z}" for run in next_runs(deployment)) or "-",
            str(deployment.parameters),
        )
    console.print(view)
    if not dry_run:
        serve_deployments(deployments, settings)


def run_nightly(
    inbox: Annotated[Path | None, typer.Option(help="where new audio arrives (default: <data-dir>/inbox)")] = None,
    night: Annotated[str | None, typer.Option(help="the night's name (default: today), e.g. 2026-11-22")] = None,
    force_train: Annotated[bool, typer.Option(help="train a candidate even without enough new clips")] = False,
    min_new_clips: Annotated[int | None, typer.Option(help="train when at least this many new training clips")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="the data dir: its lake, work files and runs/")] = None,
) -> None:
    """Label the inbox, import its human labels, train a candidate when enough new data arrived,
    evaluate it against the current model and promote it only when it is better with a
    paired-bootstrap CI that excludes 0 (the `nightly` flow that `voxtox serve` schedules)."""
    from voxtox.prefect_env import api_starting

    with user_errors():
        settings = load_settings(data_dir, config, nightly={"min_new_clips": min_new_clips})
        with api_starting():  # while the flow's modules import; records the API for reaping, as `label` does
            from voxtox.flows.nightly import nightly_flow
        report = nightly_flow(inbox=str(inbox) if inbox else None, settings=settings, night=night,
                              force_train=force_train)
    summary = Table(title=f"voxtox nightly {report.night}", show_header=False)
    for key, value in vars(report).items():
        summary.add_row(key, str(value))
    console.print(summary)
