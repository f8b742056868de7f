"""docker-compose.yml and the Dockerfile, checked without Docker (there is no engine here): the
services, ports, volumes, health checks and GPU profile, that compose refuses to start without a
login and a database password and publishes nothing but the UI on loopback, that every voxtox
command in the file parses as a command of the image's `voxtox` entry point, and that every
Prefect setting named is one Prefect knows. (tests/test_gpu_worker.py runs the gpu-worker's
command against a real server.)"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from unittest import mock

import prefect
import pytest
from prefect_server import ComposeError, load_compose
from typer.main import get_command
from voxtox.flows.cli import app
from voxtox.settings import NightlySettings, Settings

ROOT = Path(__file__).resolve().parents[1]
VOXTOX_IMAGE_SERVICES = ("serve", "gpu-worker")
#: The secrets compose will not start without (an .env file beside it, in production).
SECRETS = {"PREFECT_AUTH_STRING": "admin:Zq8vN3xKp2", "POSTGRES_PASSWORD": "Hv6tR9wLm4",
           "MINIO_ROOT_PASSWORD": "Mr7pQ2wXk9s", "VOXTOX_S3_SECRET": "S3v8kT4nLq2"}
#: Label Studio's (the `review` profile): checked by its container, not by compose, which reads
#: every service's variables whatever the profile (test_label_studio_checks_its_own_secrets).
REVIEW_SECRETS = {"LABEL_STUDIO_PASSWORD": "Lp4sW8qRt1", "LABEL_STUDIO_TOKEN": "Tk7bN2xQw9",
                  "LABEL_STUDIO_DB_PASSWORD": "Db3mK6vLz5"}
#: The review profile's services (docs/review.md).
REVIEW_SERVICES = {"label-studio", "label-studio-db"}
#: Services that talk to the Prefect API as clients.
PREFECT_CLIENTS = ("serve", "gpu-worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(ROOT / "docker-compose.yml", SECRETS | REVIEW_SECRETS)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_the_self_hosting_layout(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", "prefect-server", "prefect-services", "serve", "gpu-worker",
                             "stream", "minio", "lake-init", "lake-db-init"} | REVIEW_SERVICES
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    # only GPU work and human review are opt-in
    assert {s: spec["profiles"] for s, spec in services.items() if "profiles" in spec} == {
        "gpu-worker": ["gpu"], "label-studio-db": ["review"], "label-studio": ["review"]}


def test_health_checks_gate_the_start_order(services: dict[str, Any]) -> None:
    checks = {name: " ".join(spec["healthcheck"]["test"]) for name, spec in services.items() if "healthcheck" in spec}
    assert "pg_isready -U prefect" in checks["postgres"]
    assert "redis-cli ping" in checks["redis"]
    assert "localhost:4200/api/health" in checks["prefect-server"]
    needs = {name: spec.get("depends_on", {}) for name, spec in services.items()}
    assert needs["prefect-server"] == {"postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    assert needs["prefect-services"] == {"prefect-server": {"condition": "service_healthy"}}
    for name in ("serve", "gpu-worker"):  # after the lake's bucket, user and database exist
        assert needs[name] == {"prefect-server": {"condition": "service_healthy"},
                               "lake-init": {"condition": "service_completed_successfully"}}
    assert "mc ready local" in checks["minio"]
    assert needs["lake-init"] == {"minio": {"condition": "service_healthy"},
                                  "lake-db-init": {"condition": "service_completed_successfully"}}
    assert needs["lake-db-init"] == {"postgres": {"condition": "service_healthy"}}


def test_prefect_server_on_postgres_and_redis_with_the_ui_on_4200(services: dict[str, Any]) -> None:
    server, background = services["prefect-server"], services["prefect-services"]
    assert server["command"] == "prefect server start --no-services"
    assert background["command"] == "prefect server services start"
    for spec in (server, background):
        env = spec["environment"]
        assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
        assert env["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
        assert env["PREFECT_MESSAGING_BROKER"] == env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging"
        assert env["PREFECT_REDIS_MESSAGING_HOST"] == "redis"
    assert server["environment"]["PREFECT_SERVER_UI_API_URL"] == "http://localhost:4200/api"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_login_and_a_database_password(missing: str) -> None:
    given = {k: v for k, v in SECRETS.items() if k != missing}
    for value in (None, ""):  # unset or empty
        with pytest.raises(ComposeError, match=f"required variable {missing} is missing a value: set {missing}"):
            load_compose(ROOT / "docker-compose.yml", given | ({} if value is None else {missing: value}))


def test_every_prefect_process_needs_the_login_and_the_database_its_password(services: dict[str, Any]) -> None:
    login = SECRETS["PREFECT_AUTH_STRING"]
    for name in ("prefect-server", "prefect-services"):  # the API, and the services' in-process client
        env = services[name]["environment"]
        assert env["PREFECT_SERVER_API_AUTH_STRING"] == login
        assert f"postgresql+asyncpg://prefect:{SECRETS['POSTGRES_PASSWORD']}@postgres" in env["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in PREFECT_CLIENTS:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == login
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    clients = {name for name, spec in services.items() if "PREFECT_API_URL" in spec.get("environment", {})}
    assert clients == set(PREFECT_CLIENTS)


def test_only_the_ui_is_published_and_on_loopback_unless_asked(services: dict[str, Any]) -> None:
    assert {name: spec["ports"] for name, spec in services.items() if "ports" in spec} == {
        "prefect-server": ["127.0.0.1:4200:4200"], "label-studio": ["127.0.0.1:8080:8080"],
        "stream": ["127.0.0.1:8765:8765"]}  # never a database or Redis
    opened = load_compose(ROOT / "docker-compose.yml", SECRETS | {"VOXTOX_UI_BIND": "0.0.0.0"})["services"]
    assert opened["prefect-server"]["ports"] == ["0.0.0.0:4200:4200"]


def prefect_settings_with(key: str, value: str | None) -> dict[str, Any]:
    """Prefect's settings (and prefect-redis's) with `key` set to `value` (None: unset)."""
    from prefect_redis.client import RedisMessagingSettings

    with mock.patch.dict(os.environ):
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
        return {
            "prefect": prefect.settings.Settings().model_dump(mode="json", context={"include_secrets": True}),
            "prefect-redis": RedisMessagingSettings().model_dump(mode="json", context={"include_secrets": True}),
        }


def test_prefect_settings_named_are_settings_prefect_knows(services: dict[str, Any]) -> None:
    """A misspelt PREFECT_* variable is silently ignored by Prefect; each must change a setting
    (set to a value other than its default, so the test can see it)."""
    for name, spec in services.items():
        for key, value in spec.get("environment", {}).items():
            if key.startswith("PREFECT_"):
                unusual = {"6379": "6380", "0": "1"}.get(str(value), str(value))  # Redis's defaults
                assert prefect_settings_with(key, unusual) != prefect_settings_with(key, None), f"{name}: {key} is not a Prefect setting"


def test_prefect_runs_from_the_voxtox_image_with_the_tested_pins(services: dict[str, Any]) -> None:
    """Server, services and voxtox share one image, so the server is the Prefect (and
    SQLAlchemy, prefect-redis) that constraints.txt pins and tests/test_prefect_server.py runs."""
    assert {name for name, spec in services.items() if spec.get("image") == "voxtox:0.1.0"} == {
        "prefect-server", "prefect-services", "serve", "gpu-worker", "stream"}
    assert all(services[name]["build"] == "." for name in ("prefect-server", "prefect-services", "serve", "gpu-worker"))
    pins = set((ROOT / "constraints.txt").read_text().splitlines())
    assert {f"prefect=={prefect.__version__}", "prefect-redis==0.3.0", "SQLAlchemy==2.0.58"} <= pins


def test_voxtox_services_share_the_data_directory_and_talk_to_the_server(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    for name in VOXTOX_IMAGE_SERVICES:
        spec = services[name]
        assert "./voxtox-data:/data" in spec["volumes"] and "models:/models" in spec["volumes"]
        env = spec["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert (env["VOXTOX_DATA_DIR"], env["VOXTOX_MODEL_CACHE_DIR"]) == ("/data", "/models")
    named = {v.split(":")[0] for spec in services.values() for v in spec.get("volumes", []) if not v.startswith(".")}
    assert named == set(compose["volumes"]) == {"postgres_data", "redis_data", "models", "label_studio_db",
                                                "label_studio_data", "minio_data"}


def test_the_gpu_worker_reserves_the_nvidia_gpus_and_works_the_pool_the_nightly_trains_on(services: dict[str, Any]) -> None:
    worker = services["gpu-worker"]
    assert worker["profiles"] == ["gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == "all"
    assert worker["command"] == ["prefect", "worker", "start", "--pool", "voxtox-gpu", "--type", "process"]
    # The nightly trains in serve's container unless VOXTOX_TRAIN_POOL names the worker's pool.
    assert Settings(nightly=NightlySettings(train_pool=services["serve"]["environment"]["VOXTOX_NIGHTLY__TRAIN_POOL"])).nightly.train_pool is None
    on_gpu = load_compose(ROOT / "docker-compose.yml", SECRETS | {"VOXTOX_TRAIN_POOL": "voxtox-gpu"})["services"]
    assert on_gpu["serve"]["environment"]["VOXTOX_NIGHTLY__TRAIN_POOL"] == "voxtox-gpu"


def test_serves_command_is_a_command_of_the_voxtox_entry_point(services: dict[str, Any]) -> None:
    program, name, *args = services["serve"]["command"]
    assert program == "voxtox"
    (script,) = entry_points(group="console_scripts", name="voxtox")
    assert script.value == "voxtox.flows.cli:app" and script.load() is app
    cli = get_command(app)
    command = cli.get_command(cli.make_context("voxtox", [name], resilient_parsing=True), name)
    assert command is not None, f"voxtox has no command {name!r}"
    command.make_context(name, list(args))  # raises on an unknown option or a missing argument


def test_dockerfile_installs_the_pinned_package_with_its_system_tools() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", dockerfile, re.MULTILINE)
    apt = re.search(r"apt-get install [^\n]*", dockerfile).group(0)
    assert "espeak-ng" in apt and "ffmpeg" in apt
    assert 'pip install -c constraints.txt ".[offline-models]"' in dockerfile  # the tested versions
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["voxtox"] == "voxtox.flows.cli:app"
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE))
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not (copied & ignored), "the image copies what .dockerignore leaves out"


def test_label_studio_has_its_own_database_and_secrets_and_reads_the_data_read_only(services: dict[str, Any]) -> None:
    studio, database = services["label-studio"], services["label-studio-db"]
    env = studio["environment"]
    assert studio["image"].endswith(":1.23.2") and "--enable-legacy-api-token" in studio["command"][-1]
    assert studio["depends_on"] == {"label-studio-db": {"condition": "service_healthy"}}
    assert (env["DJANGO_DB"], env["POSTGRE_HOST"]) == ("default", "label-studio-db")
    assert env["POSTGRE_PASSWORD"] == database["environment"]["POSTGRES_PASSWORD"] == REVIEW_SECRETS["LABEL_STUDIO_DB_PASSWORD"]
    assert database["environment"]["POSTGRES_DB"] != services["postgres"]["environment"]["POSTGRES_DB"]
    assert env["LABEL_STUDIO_PASSWORD"] == REVIEW_SECRETS["LABEL_STUDIO_PASSWORD"]
    assert env["LABEL_STUDIO_USER_TOKEN"] == services["serve"]["environment"]["LABEL_STUDIO_API_KEY"] == REVIEW_SECRETS["LABEL_STUDIO_TOKEN"]
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true" and env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/data"
    assert "./voxtox-data:/data:ro" in studio["volumes"]  # the path serve writes the review audio under
    assert services["serve"]["environment"]["VOXTOX_DATA_DIR"] == "/data"
    assert (env["SENTRY_DSN"], env["COLLECT_ANALYTICS"]) == ("", "false")
    review_env = {k: v for k, v in services["serve"]["environment"].items() if k.startswith("VOXTOX_REVIEW__")}
    with mock.patch.dict(os.environ, review_env):
        review = Settings().review  # the defaults compose passes are valid settings: review off
    assert review.nightly is False and review.label_studio_url is None


def test_the_stream_service_takes_its_token_from_the_environment_and_reads_the_data_read_only(
    services: dict[str, Any],
) -> None:
    stream = services["stream"]
    assert stream["command"][:3] == ["voxtox", "stream", "serve"] and "/data/runs/current" in stream["command"]
    assert stream["environment"]["VOXTOX_STREAM__TOKEN"] == ""  # unset here: the server refuses to start
    with_token = load_compose(ROOT / "docker-compose.yml", SECRETS | {"VOXTOX_STREAM_TOKEN": "St5kP9wQx2"})
    assert with_token["services"]["stream"]["environment"]["VOXTOX_STREAM__TOKEN"] == "St5kP9wQx2"
    assert "./voxtox-data:/data:ro" in stream["volumes"]  # it follows runs/current and never writes


def test_the_label_studio_secrets_are_needed_only_by_the_review_profile(tmp_path: Path) -> None:
    """Compose interpolates every service's variables before it picks the profile's (so `:?` in
    label-studio would stop every `up`): the container checks its three secrets when it starts."""
    without = load_compose(ROOT / "docker-compose.yml", SECRETS)["services"]  # no review secrets: loads
    assert without["serve"]["environment"]["LABEL_STUDIO_API_KEY"] == ""
    program, flag, script = without["label-studio"]["command"]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "label-studio").write_text("#!/bin/sh\necho started \"$@\"\n")
    (fake / "label-studio").chmod(0o755)
    env = {k: v for k, v in load_compose(ROOT / "docker-compose.yml", SECRETS | REVIEW_SECRETS)["services"][
        "label-studio"]["environment"].items()} | {"PATH": f"{fake}:/usr/bin:/bin"}
    started = subprocess.run([program, flag, script], env=env, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0 and started.stdout.startswith("started start --no-browser"), started
    for name in ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "POSTGRE_PASSWORD"):
        refused = subprocess.run([program, flag, script], env=env | {name: ""}, capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode == 1 and "started" not in refused.stdout
        assert f"({name} is empty)" in refused.stderr and refused.stderr.count("\n") == 1


def test_voxtox_services_reach_the_lake_on_postgres_and_minio_when_it_is_switched_on(services: dict[str, Any]) -> None:
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:RELEASE.") and "ports" not in minio  # inside compose only
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == SECRETS["MINIO_ROOT_PASSWORD"]
    for name in VOXTOX_IMAGE_SERVICES:
        env = services[name]["environment"]
        assert (env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"]) == ("http://minio:9000", "voxtox")
        assert env["AWS_SECRET_ACCESS_KEY"] == SECRETS["VOXTOX_S3_SECRET"]  # never the administrator's
        assert env["PGPASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
        storage = {k: v for k, v in env.items() if k.startswith("VOXTOX_STORAGE__")}
        with mock.patch.dict(os.environ, storage):
            assert not Settings().storage.lake  # the default: the embedded lake under the data dir
    on = {"VOXTOX_LAKE_CATALOG_URL": "postgresql://prefect@postgres:5432/voxtox_lake",
          "VOXTOX_LAKE_DATA_URL": "s3://voxtox/lake"}
    env = load_compose(ROOT / "docker-compose.yml", SECRETS | on)["services"]["serve"]["environment"]
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("VOXTOX_STORAGE__")}):
        storage = Settings().storage
    assert (storage.catalog_url, storage.data_url) == tuple(on.values())
    # what lake-init and lake-db-init make is what those URLs name: the bucket, the user, the database
    bucket_script = services["lake-init"]["command"][0]
    assert "mc mb --ignore-existing store/voxtox\n" in bucket_script and "mc admin user add store voxtox " in bucket_script
    assert "CREATE DATABASE voxtox_lake" in services["lake-db-init"]["command"][0]
    for name in ("lake-init", "lake-db-init"):
        checked = subprocess.run(["sh", "-n", "-c", services[name]["command"][0]], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
