"""Prefect defaults for every process that runs voxtox's flows, set before Prefect is imported.

An ephemeral Prefect API (what runs when `PREFECT_API_URL` is unset) is a subprocess that must
create its database and run migrations on first use: on a fresh 2-core machine that took over
Prefect's default 20 s, and the first `voxtox` run failed. voxtox waits longer by default; a
user's own setting always wins.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    log_file = api_log_path()
    return (
        f"the local (ephemeral) Prefect API did not start within {startup_timeout_s()} s; "
        f"a first start on a busy machine can take longer: set {STARTUP_TIMEOUT_VAR}=900, "
        "or run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        + (f" (the API's own output: {log_file})" if log_file.exists() else "")
    )


@contextmanager
def api_starting() -> Iterator[None]:
    """Start the local (ephemeral) Prefect API in a background thread while the block runs work
    that needs no API (importing the flow's modules, loading models), and wait for it on leaving.

    A command's first flow otherwise pays, before any of its work, for importing Prefect's server
    (~2 s here) and then for a subprocess booting it (~5 s). Nothing is started when
    PREFECT_API_URL names a server or ephemeral mode is off. The block's code must not talk to
    Prefect: the API is ready only after the block. Leaving on an error also waits, so that no
    half-started server outlives the command (Prefect stops it at exit)."""
    failures: list[BaseException] = []

    def start() -> None:
        try:  # Prefect's own import, too, runs beside the block's
            from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

            if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
                return
            from prefect.server.api.server import SubprocessASGIServer

            reap_orphaned_apis()
            server = SubprocessASGIServer()
            _record_on_launch(server)
            server.start()
            record_ephemeral_api()
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            failures.append(error)

    # In the caller's context: Prefect's settings (a test harness's API, a profile) are context variables.
    starter = threading.Thread(target=contextvars.copy_context().run, args=(start,), name="prefect-api-start", daemon=True)
    starter.start()
    try:
        yield
    finally:
        starter.join()
    if failures:
        raise failures[0]


def start_api() -> None:
    """Start the local (ephemeral) Prefect API now, the way `api_starting` does (recorded for
    reaping, its output to its log), for a command with nothing to do while it boots."""
    with api_starting():
        pass


#: CPU niceness of the local (ephemeral) Prefect API's process during a labelling run.
EPHEMERAL_API_NICENESS = 10


def deprioritise_ephemeral_api() -> None:
    """Run the local (ephemeral) Prefect API at a lower CPU priority than the pipeline.

    On a small machine the API's own work (booting, then recording every task run's states,
    logs and events) competes with the ASR for the same cores: the first `label` flow of a
    process, which starts the API, was slower than its transcription stage, and flows that found
    the API up were not (docs/benchmarks.md). Its work is bookkeeping that can wait for a free core.
    Nothing happens for a server voxtox did not start (PREFECT_API_URL), or off POSIX."""
    # Prefect imports its server module only to start that process: if it is not loaded, this
    # process started no API, and importing it here would cost seconds for nothing.
    if not hasattr(os, "setpriority"):
        return
    for process in _our_api_processes():
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, EPHEMERAL_API_NICENESS)
        except OSError:
            pass  # not ours to change (another user's, or a restricted container): run as is


def _our_api_processes() -> list[subprocess.Popen]:
    """The running local (ephemeral) Prefect APIs this process started."""
    # Prefect imports its server module only to start that process: if it is not loaded, this
    # process started no API, and importing it here would cost seconds for nothing.
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return []
    registry = getattr(getattr(server_module, "SubprocessASGIServer", None), "_instances", {})
    processes = [getattr(server, "server_process", None) for server in list(registry.values())]
    return [p for p in processes if p is not None and p.poll() is None]


# --- ephemeral APIs of killed runs -----------------------------------------------------------------
#
# Prefect stops its ephemeral API at exit, but a SIGKILLed `voxtox label` runs no exit handler: its
# API (uvicorn, ~225 MB) went on listening, for good. Linux cannot tie a child's life to a parent
# it did not start itself, so each voxtox process records the API it started (its pid and start
# time, and its own), and the next voxtox process to start one stops those whose owner is gone.

log = logging.getLogger(__name__)
#: Seconds a reaped API has to stop on SIGTERM before it is killed.
REAP_GRACE_S = 5.0


def _api_records_dir() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "voxtox-ephemeral-apis"


def _started_at(pid: int) -> float | None:
    """When process `pid` started (None if there is none): with the pid, it names one process."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


_recorded: set[int] = set()


def record_ephemeral_api() -> None:
    """Record each running ephemeral API this process started (see `_record`)."""
    for process in _our_api_processes():
        _record(process)


def _record(process: subprocess.Popen) -> None:
    """Record an API process this process started, and remove the record at exit."""
    if process.pid in _recorded:
        return
    _recorded.add(process.pid)
    record = {"owner": os.getpid(), "owner_started": _started_at(os.getpid()),
              "api": process.pid, "api_started": _started_at(process.pid)}
    path = _api_records_dir() / f"{os.getpid()}-{process.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    atexit.register(path.unlink, missing_ok=True)


def _record_on_launch(server: object) -> None:
    """Record the API the moment Prefect launches it, not once it answers: a kill during its
    seconds of start-up must not leak it either; and send its output to `api_log_path()`.
    (Should Prefect rename its launcher, the API is still recorded once started, by
    `record_ephemeral_api`, and writes to the terminal as Prefect has it do.)"""
    launch = getattr(server, "_run_uvicorn_command", None)
    if launch is None:
        return

    def launch_and_record() -> subprocess.Popen:
        with _output_to_log(sys.modules[type(server).__module__]):
            process = launch()
        _record(process)
        return process

    server._run_uvicorn_command = launch_and_record  # type: ignore[attr-defined]


# --- the API's output ----------------------------------------------------------------------------
#
# The API is a child process writing to the command's terminal. What it writes is Prefect's server
# talking to itself, and it comes late: stopped at exit, mid-way through recording a task run's
# events, it printed a 60-line traceback of its own cancelled database session after the command's
# one-line error (a label run that lost its lake catalog, CI 2026-12-07). It writes to a log instead.

#: Days a voxtox process's API log is kept.
API_LOG_KEEP_DAYS = 7


def api_log_path() -> Path:
    """The file the local API that this process launches writes its output to."""
    return _api_records_dir() / f"api-{os.getpid()}.log"


class _SubprocessToLog:
    """Stands in for `subprocess` in Prefect's server module while it launches the API: the same,
    except that the process's output goes to `api_log_path()`."""

    def __getattr__(self, name: str) -> object:
        return getattr(subprocess, name)

    def Popen(self, *args: object, **kwargs: object) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
        path = api_log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as log:  # the child has its own copy of the descriptor
            return subprocess.Popen(*args, **{"stdout": log, "stderr": subprocess.STDOUT, **kwargs})  # type: ignore[call-overload]


@contextmanager
def _output_to_log(server_module: object) -> Iterator[None]:
    """While the block runs, `server_module` launches processes whose output goes to the log."""
    if not hasattr(server_module, "subprocess"):  # Prefect launches differently: leave it as it is
        yield
        return
    _prune_api_logs()
    launcher = server_module.subprocess  # type: ignore[attr-defined]
    server_module.subprocess = _SubprocessToLog()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        server_module.subprocess = launcher  # type: ignore[attr-defined]


def _prune_api_logs() -> None:
    """Delete API logs older than API_LOG_KEEP_DAYS (one per voxtox process that started an API)."""
    directory = _api_records_dir()
    cutoff = time.time() - API_LOG_KEEP_DAYS * 86_400
    for path in directory.glob("api-*.log") if directory.is_dir() else []:
        with contextlib.suppress(OSError):  # another process pruned it first
            if path.stat().st_mtime < cutoff:
                path.unlink()


def record_and_reap_apis() -> list[int]:
    """What a flow does first: record the API this process started (so that the next run stops it
    if this one is killed) and stop those of killed runs; the pids stopped. `voxtox label`,
    `train`, `run nightly` and `demo` start their API through `api_starting`, which does both
    already; this covers their flows run any other way (a deployment, a test harness)."""
    record_ephemeral_api()
    return reap_orphaned_apis()


def reap_orphaned_apis() -> list[int]:
    """Stop the ephemeral APIs whose voxtox process died without stopping them; their pids."""
    directory = _api_records_dir()
    reaped = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written by a process starting now
        if _started_at(record["owner"]) == record["owner_started"]:
            continue  # its owner still runs
        if _started_at(record["api"]) == record["api_started"]:  # the same process, not a reused pid
            _stop(record["api"])
            reaped.append(record["api"])
        path.unlink(missing_ok=True)
    if reaped:
        log.info("stopped %d local Prefect API(s) left running by killed voxtox runs: pids %s", len(reaped), reaped)
    return reaped


def _stop(pid: int) -> None:
    """SIGTERM, and SIGKILL if it has not stopped within REAP_GRACE_S."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.terminate()
        deadline = time.monotonic() + REAP_GRACE_S
        while _alive(process) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(process):
            process.kill()
    except psutil.Error:
        pass  # gone meanwhile, or not ours to stop


def _alive(process: object) -> bool:
    """Running, and not a zombie (an orphan's parent, PID 1 in a container, may never reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.Error:
        return False
