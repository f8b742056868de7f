"""Prefect defaults for every process that runs voxtox's flows, set before Prefect is imported.

An ephemeral Prefect API (what runs when `PREFECT_API_URL` is unset) is a subprocess that must
create its database and run migrations on first use: on a fresh 2-core machine that took over
Prefect's default 20 s, and the first `voxtox` run failed. voxtox waits longer by default; a
user's own setting always wins.
"""

from __future__ import annotations

import os

STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Seconds voxtox lets an ephemeral Prefect API take to start (Prefect's own default: 20).
EPHEMERAL_STARTUP_TIMEOUT_S = 300
#: The start of Prefect's error when the ephemeral API did not come up in time.
_TIMEOUT_TEXT = "Timed out while attempting to connect to ephemeral Prefect API"


def apply_prefect_defaults() -> None:
    """Defaults only: anything the user set in the environment or a Prefect profile is kept."""
    os.environ.setdefault(STARTUP_TIMEOUT_VAR, str(EPHEMERAL_STARTUP_TIMEOUT_S))
    # No internet here, and no reason to phone home from a labelling job: the ephemeral Prefect
    # server would log a telemetry failure on every run otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def startup_timeout_s() -> int:
    return int(os.environ.get(STARTUP_TIMEOUT_VAR, EPHEMERAL_STARTUP_TIMEOUT_S))


def ephemeral_timeout_message(error: BaseException) -> str | None:
    """One line saying what to do when `error` is Prefect's ephemeral start-up timeout, else None."""
    if _TIMEOUT_TEXT not in str(error):
        return None
    return (
        f"the local (ephemeral) Prefect API did not start within {startup_timeout_s()} s; "
        f"a first start on a busy machine can take longer: set {STARTUP_TIMEOUT_VAR}=900, "
        "or run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
    )
