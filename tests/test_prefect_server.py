"""A real Prefect server behind its login (basic auth), `voxtox serve` registering the label
deployment with its schedule, a run of it labelling a spoken clip, and the run and its artifacts
read back through Prefect's client: on SQLite with `prefect server start` (and a headless
Chromium logging in to the UI and rendering the run's page), and in docker-compose.yml's layout
on PostgreSQL and Redis, without Docker, where a request without the login is refused."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import soundfile
from conftest import spoken
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.events.filters import EventAnyResourceFilter, EventFilter
from prefect_server import (
    PrefectServer,
    browser,
    chromium,
    load_compose,
    log_in,
    postgres_bin_dir,
    postgres_cluster,
    prefect_server,
    redis_server,
    run_served_deployment,
    wait_until,
)
from voxtox.audio import SAMPLE_RATE
from voxtox.corpus.speech_synth import Utterance
from test_compose import SECRETS

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[1]

#: Where the UI screenshot goes; scripts/screenshot_ui.py makes the one in docs/.
SCREENSHOT_ENV = "VOXTOX_UI_SCREENSHOT"
#: The label deployment gets a schedule too, so registration of a cron schedule is checked.
LABEL_CRON = "30 2 * * *"
#: The UI's and API's login (compose's PREFECT_AUTH_STRING).
AUTH_STRING = "voxtox:correct-horse-battery-staple"
#: Compose's required secrets (the object store's among them: docker-compose.yml), this login.
COMPOSE_ENV = SECRETS | {"PREFECT_AUTH_STRING": AUTH_STRING, "POSTGRES_PASSWORD": "Postgres4Tests"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "voice-chat.wav"
    speech = spoken(Utterance("what the fuck man, this lag is killing me", "en"),
                    Utterance("good game everyone, see you tomorrow", "en", "f3"))
    soundfile.write(path, speech, SAMPLE_RATE)
    return path


def label_one_clip(
    server: PrefectServer,
    data_dir: Path,
    clip: Path,
    serve_command: list[str],
    cron: str = LABEL_CRON,
    scheduled: bool = False,
    only_label: bool = True,
) -> FlowRun:
    """Serve the label deployment (inbox = one clip), with the nightly one too unless
    `only_label`, and let it run once: triggered through the API, or by its `cron` schedule when
    `scheduled`. Check what the API says about the deployments and the run."""
    inbox = data_dir / "inbox" / "train"  # what the label deployment labels
    inbox.mkdir(parents=True)
    shutil.copy(clip, inbox)
    program, *args = serve_command
    assert program == "voxtox"
    settings = {"VOXTOX_SERVE__LABEL_CRON": cron, "VOXTOX_SERVE__TIMEZONE": "Europe/Lisbon"}
    if only_label:
        settings["VOXTOX_SERVE__FLOWS"] = '["label"]'
    deployment, flow_run = run_served_deployment(server, data_dir, "label/voxtox", *args, env=settings, scheduled=scheduled)
    if not only_label:  # registered beside it, to run at 02:00 in the configured zone
        with server.client() as client:
            nightly = client.read_deployment_by_name("nightly/voxtox")
        assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "Europe/Lisbon")]
        assert nightly.entrypoint == "voxtox.flows.nightly.nightly_flow"
        assert nightly.parameters == {"inbox": str((data_dir / "inbox").resolve())}
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [(cron, "Europe/Lisbon")]
    assert deployment.entrypoint == "voxtox.flows.label.label_flow"
    assert deployment.parameters == {"inputs": [str(inbox.resolve())], "split": "train"}

    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.deployment_id == deployment.id
    assert (flow_run.auto_scheduled or False) == scheduled  # made by the scheduler service, or by us
    with server.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    by_key = {a.key: a for a in artifacts if a.key}
    assert {"label-summary", "label-counts"} <= set(by_key), sorted(by_key)
    assert by_key["label-summary"].type == "markdown" and "n_clips" in by_key["label-summary"].data
    counts = by_key["label-counts"].data
    rows = json.loads(counts) if isinstance(counts, str) else counts
    assert [row["lang"] for row in rows] == ["en"] and rows[0]["clips"] >= 1
    assert any(a.type == "progress" for a in artifacts)
    assert list((data_dir / "lake" / "data" / "main" / "clips").rglob("*.parquet"))  # the embedded lake
    return flow_run


def flow_run_events(server: PrefectServer, flow_run: FlowRun) -> set[str]:
    """The event names the server has stored about the flow run."""
    with server.client() as client:
        page = client.read_events(
            EventFilter(any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run.id}"])), limit=50
        )
    return {event.event for event in page.events}


def test_label_run_on_a_real_server_is_read_back_and_shown_in_the_ui_after_logging_in(tmp_path: Path, clip: Path) -> None:
    with prefect_server(tmp_path / "prefect-home", auth_string=AUTH_STRING) as server:
        flow_run = label_one_clip(server, tmp_path / "data", clip, ["voxtox", "serve", "--flow", "label"])
        if chromium() is None:
            pytest.skip("no Chromium to load the UI (Debian: apt-get install chromium-headless-shell)")
        with browser() as session:
            session.open(f"{server.url}/runs")
            assert flow_run.name not in session.wait_for_text("Login")  # nothing shows before the login
            assert not log_in(session, server.url, "voxtox:wrong")
            assert log_in(session, server.url, AUTH_STRING)
            session.open(server.flow_run_page(flow_run.id))
            session.wait_for_text("Completed", "Task runs", f"Beginning flow run '{flow_run.name}' for flow 'label'")
            out = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "prefect-ui-flow-run.png"))
            png = session.screenshot(out)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def compose_on_loopback(services: dict, database_url: str, redis_port: int) -> dict[str, str]:
    """The Prefect server settings of docker-compose.yml, its hosts replaced by this machine's."""
    env = {k: str(v) for k, v in services["prefect-server"]["environment"].items()}
    assert env.items() >= {k: str(v) for k, v in services["prefect-services"]["environment"].items()}.items()
    assert env["PREFECT_REDIS_MESSAGING_HOST"] == "redis" and "@postgres:5432/" in env["PREFECT_API_DATABASE_CONNECTION_URL"]
    # prefect_server() sets the address the API listens on (loopback here, not 0.0.0.0).
    for key in ("PREFECT_SERVER_API_HOST", "PREFECT_SERVER_UI_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(key)
    return env | {"PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1", "PREFECT_REDIS_MESSAGING_PORT": str(redis_port)}


@pytest.mark.skipif(postgres_bin_dir() is None, reason="no PostgreSQL binaries (Debian: apt-get install postgresql)")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server (Debian: apt-get install redis-server)")
@pytest.mark.skipif(importlib.util.find_spec("prefect_redis") is None, reason="prefect-redis is not installed")
def test_the_compose_layout_runs_without_docker(tmp_path: Path, clip: Path) -> None:
    """docker-compose.yml's Prefect, as processes: PostgreSQL, Redis, the webserver and the
    background services started apart with compose's commands and settings, and compose's
    `voxtox serve` (nightly and label deployments). The scheduler service starts the label run
    from its cron schedule; the run's events reach the database through Redis and the services'
    event persister."""
    services = load_compose(ROOT / "docker-compose.yml", COMPOSE_ENV)["services"]
    commands = tuple(tuple(services[name]["command"].split()) for name in ("prefect-server", "prefect-services"))
    assert commands == (("prefect", "server", "start", "--no-services"), ("prefect", "server", "services", "start"))
    home = tmp_path / "prefect-home"
    with postgres_cluster() as database_url, redis_server(tmp_path / "redis") as redis_port:
        env = compose_on_loopback(services, database_url, redis_port) | {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
        auth = services["serve"]["environment"]["PREFECT_API_AUTH_STRING"]  # what compose gives voxtox serve
        with prefect_server(home, database_url, commands, env, auth_string=auth) as server:
            assert env["PREFECT_SERVER_API_AUTH_STRING"] == auth == AUTH_STRING
            assert server.status_of("flows/filter", None) == server.status_of("flows/filter", "voxtox:wrong") == 401
            assert server.status_of("flows/filter", AUTH_STRING) == 200
            flow_run = label_one_clip(
                server, tmp_path / "data", clip, services["serve"]["command"], cron="* * * * *", scheduled=True, only_label=False
            )
            expected = {f"prefect.flow-run.{state}" for state in ("Pending", "Running", "Completed")}
            wait_until(lambda: flow_run_events(server, flow_run) >= expected, 60, "the flow run's events reaching the database")
    assert not (home / "prefect.db").exists()  # everything went to PostgreSQL
