"""The nightly flow trains on a worker of a Prefect work pool, as the design card draws it: a
real Prefect server behind its login, `voxtox serve` registering the nightly deployment and the
`train/voxtox` deployment on the `voxtox-gpu` pool, and docker-compose.yml's `gpu-worker`
command (`prefect worker start --pool voxtox-gpu --type process`) as a plain process on this
machine standing in for the GPU host. Every process reads the same voxtox.toml (tiny training:
the Whisper-shaped test encoder, one epoch) and shares the data directory, as the README asks of
a separate GPU host. No worker: the night fails after `nightly.worker_wait_s`, nothing promoted."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_nightly_inbox
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Scheduled
from prefect_server import (
    PrefectServer,
    client_process,
    load_compose,
    log_tail,
    prefect_server,
    registered_deployment,
    voxtox_serve,
    wait_until,
)
from voxtox.flows.demo import demo_settings
from voxtox.flows.train_pool import pool_run_dir, train_run_flow
from voxtox.settings import NightlySettings, Settings
from test_compose import SECRETS

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
AUTH_STRING = "voxtox:gpu-worker-login"
#: Compose's required secrets (the object store's among them: docker-compose.yml), this login.
COMPOSE_ENV = SECRETS | {"PREFECT_AUTH_STRING": AUTH_STRING, "POSTGRES_PASSWORD": "Postgres4Tests"}
#: As few sessions as give the first candidate an evaluation (test segments with human labels).
SESSIONS = {"train": 2, "val": 1, "test": 2}
WORKER = "gpu-host-stand-in"
#: How long a night waits for a worker here (production: 600 s).
WORKER_WAIT_S = 6
FIRST_NIGHT, NIGHT_WITHOUT_WORKER = "2026-11-21", "2026-11-22"


@dataclass(frozen=True)
class Served:
    server: PrefectServer
    data_dir: Path
    env: dict[str, str]  # what every voxtox process here is given: the shared voxtox.toml
    nightly: DeploymentResponse
    train: DeploymentResponse
    pool: str

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def run_nightly(self, **parameters: object) -> FlowRun:
        """A run of the nightly deployment now (the UI's "Run" button), once it has ended."""
        with self.server.client() as client:
            flow_run = client.create_flow_run_from_deployment(self.nightly.id, parameters=parameters)

            def ended() -> FlowRun | None:
                current = client.read_flow_run(flow_run.id)
                return current if current.state and current.state.is_final() else None

            try:
                return wait_until(ended, 400, f"the nightly run {parameters}", poll_s=1)
            except TimeoutError as error:
                raise TimeoutError(f"{error}\n{log_tail(self.data_dir / 'serve.log')}") from error

    def train_runs(self) -> list[FlowRun]:
        with self.server.client() as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.train.id])))

    def artifact(self, flow_run: FlowRun, key: str) -> str:
        with self.server.client() as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        return next(str(a.data) for a in found if a.key == key)


def gpu_worker_command() -> list[str]:
    """docker-compose.yml's gpu-worker command (its pool), named so the test can recognise it."""
    command = load_compose(ROOT / "docker-compose.yml", COMPOSE_ENV)["services"]["gpu-worker"]["command"]
    assert command[:3] == ["prefect", "worker", "start"] and "--type" in command
    return [*command, "--name", WORKER]


def tiny_settings_toml(data_dir: Path, inbox: Path, encoder: Path, pool: str) -> str:
    return f"""
data_dir = "{data_dir}"
[asr]
languages = ["en"]
[train]
encoder = "{encoder}"
epochs = 1
batch_size = 2
grad_accum = 1
num_workers = 0
threads = 1
learning_rate = 1e-3
val_resamples = 20
checkpoint_every = 1000
[evaluate]
n_resamples = 50
[nightly]
min_new_clips = 1
train_pool = "{pool}"
worker_wait_s = {WORKER_WAIT_S}
[serve]
flows = ["nightly"]
inbox = "{inbox}"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("gpu-worker")
    inbox = write_nightly_inbox(root / "inbox", SESSIONS)
    command = gpu_worker_command()
    pool = command[command.index("--pool") + 1]
    config = root / "voxtox.toml"
    config.write_text(tiny_settings_toml(root / "data", inbox, tiny_whisper, pool))
    env = {"VOXTOX_CONFIG": str(config)}
    with prefect_server(root / "prefect-home", auth_string=AUTH_STRING) as server, \
            voxtox_serve(server, root / "data", "serve", env=env) as serving, server.client() as client:
        log = root / "data" / "serve.log"
        nightly = registered_deployment(client, serving, "nightly/voxtox", log)
        train = registered_deployment(client, serving, "train/voxtox", log, timeout_s=30)
        yield Served(server, root / "data", env, nightly, train, pool)


@pytest.fixture
def worker(served: Served) -> Iterator[str]:
    """The gpu-worker: polls the pool every second, with the voxtox settings the GPU host has."""
    env = served.env | {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = served.data_dir / "worker.log"
    with client_process(served.server, gpu_worker_command(), log, env) as process, served.server.client() as client:

        def online() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}:\n{log_tail(log)}")
            return any(w.name == WORKER for w in client.read_workers_for_work_pool(served.pool))

        wait_until(online, 60, "the worker polling the pool")
        yield WORKER


def test_a_run_of_the_train_deployment_names_a_new_run_directory_and_nothing_else(tmp_path: Path) -> None:
    """Whoever can start runs in the UI chooses `run`: it stays under runs_dir and never
    overwrites a trained model (the promoted one least of all)."""
    settings = Settings(data_dir=tmp_path)
    assert pool_run_dir("nightly-2026-11-21", settings) == settings.runs_dir / "nightly-2026-11-21"
    for bad in ("../elsewhere", "/tmp/x", "a/b", ".hidden", "current", ""):
        with pytest.raises(ValueError, match="give the name of a run directory"):
            pool_run_dir(bad, settings)
    trained = settings.runs_dir / "nightly-2026-11-20" / "final"
    trained.mkdir(parents=True)
    (trained / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="has finished training"):
        pool_run_dir("nightly-2026-11-20", settings)
    (settings.runs_dir / "alias").symlink_to(trained.parent)
    with pytest.raises(ValueError, match="is a link"):
        pool_run_dir("alias", settings)
    assert set(inspect.signature(train_run_flow.fn).parameters) == {"run", "resume"}  # no settings to hand it
    with pytest.raises(ValueError, match=r"relative paths \(data_dir = voxtox-data"):  # the default, unset on the worker
        pool_run_dir("nightly-2026-11-21", Settings(data_dir=Path("voxtox-data")))


def test_serve_registers_the_train_deployment_on_the_pool(served: Served) -> None:
    assert served.train.work_pool_name == served.pool == "voxtox-gpu"
    assert served.train.entrypoint == "voxtox.flows.train_pool.train_run_flow"  # imported from the installed package
    assert served.train.pull_steps == [] and not served.train.schedules  # no code to pull, started by the nightly
    assert set(served.train.parameter_openapi_schema["properties"]) == {"run", "resume"}
    with served.server.client() as client:
        assert client.read_work_pool(served.pool).type == "process"  # created by serve if no worker did


def test_the_night_trains_on_the_worker_then_evaluates_and_promotes(served: Served, worker: str) -> None:
    first = served.run_nightly(night=FIRST_NIGHT)
    assert first.state.is_completed(), f"{first.state}\n{log_tail(served.data_dir / 'serve.log')}"
    (training,) = served.train_runs()
    assert training.state.is_completed(), f"{training.state}\n{log_tail(served.data_dir / 'worker.log')}"
    # Started by the worker on the pool, with nothing but the run's name, as a subflow of the night.
    assert training.work_pool_name == served.pool and training.labels["prefect.worker.name"] == worker
    assert training.parameters == {"run": f"nightly-{FIRST_NIGHT}", "resume": True}
    with served.server.client() as client:
        assert client.read_task_run(training.parent_task_run_id).flow_run_id == first.id
    curves = json.loads(served.artifact(training, "train-curves"))
    assert [row["epoch"] for row in curves] == [1]

    candidate = served.runs_dir / f"nightly-{FIRST_NIGHT}"
    assert (candidate / "final" / "model.safetensors").exists() and (candidate / "best" / "thresholds.json").exists()
    assert (served.runs_dir / "current").resolve() == candidate.resolve()
    report = served.artifact(first, "nightly")
    assert report.startswith(f"## Nightly {FIRST_NIGHT}: promoted") and "**trained_now**: True" in report
    evaluation = next(line for line in report.splitlines() if "**evaluation_report**" in line).split(": ", 1)[1]
    assert Path(evaluation).exists()

    again = served.run_nightly(night=FIRST_NIGHT)
    assert again.state.is_completed(), again.state
    assert len(served.train_runs()) == 1  # nothing trained again
    rerun = served.artifact(again, "nightly")
    assert "**trained_now**: False" in rerun and "already the current model" in rerun
    assert "**labelled_clips**: {'train': 0, 'val': 0, 'test': 0}" in rerun and f"**skipped_sources**: {sum(SESSIONS.values())}" in rerun


def test_without_a_worker_the_night_fails_clearly_and_promotes_nothing(served: Served) -> None:
    current = served.runs_dir / "current"
    before = current.resolve() if current.exists() else None
    run_name = f"nightly-{NIGHT_WITHOUT_WORKER}"
    # A training run left waiting by an earlier attempt at this night: the night follows it
    # rather than start a second training into the same directory.
    with served.server.client() as client:
        earlier = client.create_flow_run_from_deployment(
            served.train.id, parameters={"run": run_name, "resume": True}, state=Scheduled())

    night = served.run_nightly(night=NIGHT_WITHOUT_WORKER, force_train=True)
    assert night.state.type == StateType.FAILED
    expected = f"no worker of work pool '{served.pool}' started the training run"
    assert expected in night.state.message and f"within {WORKER_WAIT_S} s" in night.state.message
    report = served.artifact(night, "nightly")
    assert report.startswith(f"## Nightly {NIGHT_WITHOUT_WORKER}: not promoted") and expected in report
    tonight = [run for run in served.train_runs() if run.parameters["run"] == run_name]
    assert [run.id for run in tonight] == [earlier.id] and tonight[0].state.type == StateType.CANCELLED
    assert not (served.runs_dir / run_name / "final").exists()
    assert (current.resolve() if current.exists() else None) == before


def test_the_demo_trains_in_its_own_process_whatever_the_settings_say() -> None:
    """The one-machine demo has no worker: a `train_pool` in the user's voxtox.toml would fail its night."""
    assert demo_settings(Settings(nightly=NightlySettings(train_pool="voxtox-gpu"))).nightly.train_pool is None
