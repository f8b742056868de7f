"""Real servers for the tests and scripts/screenshot_ui.py: a Prefect server started with
`prefect server start` (what docker-compose.yml runs), a PostgreSQL cluster from Debian's
binaries, `voxtox serve`, and a headless Chromium. Nothing here needs Docker or a network."""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

T = TypeVar("T")
BIN = Path(sys.executable).parent
#: Debian's chromium-headless-shell (what scripts/setup.sh installs), else a full Chromium.
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.5) -> T:
    """Call `check` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it will not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_group(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """`stop` for a process started with `start_new_session=True`, and every process it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class ComposeError(ValueError):
    """What `docker compose` refuses with before it starts anything."""


#: Compose's interpolation: `$$`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
#: `${NAME:?error}` (unset or empty is an error) and `${NAME?error}` (unset is an error).
COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def load_compose(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose reads it with the environment `env` (empty by default)."""
    import yaml

    given = env or {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = given.get(name)
        missing = not value if operator and operator.startswith(":") else value is None
        if missing and operator and operator.endswith("-"):
            return argument
        if missing and operator and operator.endswith("?"):
            raise ComposeError(f"required variable {name} is missing a value: {argument}")
        return value or ""

    def interpolate(value: Any) -> Any:
        if isinstance(value, str):
            return COMPOSE_VARIABLE.sub(substitute, value)
        if isinstance(value, list):
            return [interpolate(v) for v in value]
        if isinstance(value, dict):
            return {k: interpolate(v) for k, v in value.items()}
        return value

    return interpolate(yaml.safe_load(path.read_text()))


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its asyncpg URL.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
    (Debian's package creates it) and its directory lives outside pytest's root-only tmp.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="voxtox-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bin_dir / tool), *args], check=True, capture_output=True, cwd=root)

    try:
        pg("initdb", "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "postgres.log"), "-w", "start")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect")
            yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- Prefect server and voxtox serve --------------------------------------------------------


@dataclass(frozen=True)
class PrefectServer:
    url: str  # the UI's root; the API is under /api
    env: dict[str, str]  # what a client process needs to talk to it (its login too)
    auth_string: str | None = None  # the UI's and API's login, "user:password"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def client(self) -> SyncPrefectClient:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url, auth_string=self.auth_string)

    def status_of(self, path: str, auth_string: str | None) -> int:
        """The HTTP status of POST `<api>/<path>` (an empty filter) with that login, or none."""
        headers = {"Content-Type": "application/json"}
        if auth_string is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        request = urllib.request.Request(f"{self.api_url}/{path}", data=b"{}", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def flow_run_page(self, flow_run_id: UUID | str) -> str:
        return f"{self.url}/runs/flow-run/{flow_run_id}"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


#: `prefect server start`: the API, the UI and the background services in one process.
ALL_IN_ONE = (("prefect", "server", "start"),)


@contextmanager
def prefect_server(
    home: Path,
    database_url: str | None = None,
    commands: tuple[tuple[str, ...], ...] = ALL_IN_ONE,
    env: dict[str, str] | None = None,
    timeout_s: float = 180,
    auth_string: str | None = None,
) -> Iterator[PrefectServer]:
    """Prefect's server on a free loopback port, state in `home` (SQLite there by default).

    `commands` are `prefect ...` command lines started side by side, the first one serving the
    API and UI: `prefect server start` by default, or the webserver and services apart (compose).
    `env` adds server settings (e.g. Redis messaging). With `auth_string` ("user:password") the
    server asks every request for it (Prefect's basic auth) and clients are given it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    common = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env = base | common | (env or {}) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_UI_API_URL": f"{url}/api",  # what the browser's UI calls
    } | ({"PREFECT_SERVER_API_AUTH_STRING": auth_string} if auth_string else {})
    processes: list[tuple[subprocess.Popen, Path]] = []
    try:
        for index, (program, *args) in enumerate(commands):
            log = home / f"server-{index}.log"
            with log.open("w") as out:
                executable = str(BIN / program) if (BIN / program).exists() else program
                processes.append((subprocess.Popen([executable, *args], env=server_env, stdout=out, stderr=subprocess.STDOUT), log))

        def up() -> bool:
            for process, log in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{log_tail(log)}")
            return _healthy(url)

        wait_until(up, timeout_s, "the Prefect server start")
        client_env = base | common | {"PREFECT_API_URL": f"{url}/api", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        client_env |= {"PREFECT_API_AUTH_STRING": auth_string} if auth_string else {}
        yield PrefectServer(url=url, env=client_env, auth_string=auth_string)
    finally:
        for process, _ in reversed(processes):
            stop(process)


@contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """Debian's redis-server on a free loopback port, nothing persisted; yields the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def ready() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(ready, 30, "redis-server listening")
        yield port
    finally:
        stop(process)


@contextmanager
def client_process(
    server: PrefectServer, command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """A process talking to the server (its API URL and login), output to `log`; stopped on exit."""
    program, *args = command
    executable = str(BIN / program) if (BIN / program).exists() else program
    env = server.env | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")} | (env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen([executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


@contextmanager
def voxtox_serve(
    server: PrefectServer, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """`voxtox ARGS` (e.g. `serve --flow label`) against the server, data in `data_dir`."""
    env = {"VOXTOX_DATA_DIR": str(data_dir)} | (env or {})
    with client_process(server, ["voxtox", *args], data_dir / "serve.log", env) as process:
        yield process


def registered_deployment(
    client: SyncPrefectClient, serving: subprocess.Popen, name: str, log: Path, timeout_s: float = 120
) -> DeploymentResponse:
    """The deployment `name` once `voxtox serve` (the process `serving`, output in `log`) has registered it."""
    from prefect.exceptions import ObjectNotFound

    def registered() -> DeploymentResponse | None:
        if serving.poll() is not None:
            raise RuntimeError(f"voxtox serve exited with {serving.returncode}:\n{log_tail(log)}")
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None

    return wait_until(registered, timeout_s, f"voxtox serve registering {name}")


def run_served_deployment(
    server: PrefectServer,
    data_dir: Path,
    deployment: str,
    *serve_args: str,
    env: dict[str, str] | None = None,
    scheduled: bool = False,
    timeout_s: float = 300,
) -> tuple[DeploymentResponse, FlowRun]:
    """Start `voxtox serve`, wait for it to register `deployment`, run that deployment once
    through the API (as the UI's "Run" button does) or, if `scheduled`, wait for its schedule
    to start a run; return the deployment and its first finished flow run."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with voxtox_serve(server, data_dir, *serve_args, env=env) as serving, server.client() as client:
        registration = registered_deployment(client, serving, deployment, data_dir / "serve.log")
        if not scheduled:
            client.create_flow_run_from_deployment(registration.id)
        of_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[registration.id]))

        def finished() -> FlowRun | None:
            runs = client.read_flow_runs(deployment_filter=of_deployment)
            return next((run for run in runs if run.state and run.state.is_final()), None)

        try:
            return registration, wait_until(finished, timeout_s, f"a run of {deployment} finishing", poll_s=1)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{log_tail(data_dir / 'serve.log')}") from error


# --- Chromium -------------------------------------------------------------------------------


def chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Browser:
    """A headless Chromium driven over the DevTools protocol (a websocket): open a page, wait
    for what the single-page UI renders, type into it, click, read it and capture it as PNG."""

    def __init__(self, process: subprocess.Popen, socket: Any) -> None:
        self.process = process
        self.socket = socket
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout_s: float = 60) -> str:
        """The page's text once it shows every needle."""
        def shown() -> str | None:
            text = self.text()
            return text if all(needle in text for needle in needles) else None

        return wait_until(shown, timeout_s, f"the page showing {needles}")

    def type_into(self, selector: str, text: str) -> None:
        wait_until(lambda: self.evaluate(f"!!document.querySelector({json.dumps(selector)})"), 60, f"{selector} on the page")
        self.evaluate(f"(e => {{ e.focus(); e.select && e.select(); }})(document.querySelector({json.dumps(selector)}))")
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, out: Path, width: int = 1440, height: int = 1000) -> Path:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(1)  # let the layout settle at the new size
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out


@contextmanager
def browser(width: int = 1440, height: int = 1000) -> Iterator[Browser]:
    """Start a headless Chromium with its DevTools on a free port and attach to its page."""
    from websockets.sync.client import connect

    program = chromium()
    if program is None:
        raise FileNotFoundError("no Chromium (Debian: apt-get install chromium-headless-shell)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        args = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio", "--no-first-run",
                f"--window-size={width},{height}", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]
        # Its own process group: Chromium's renderer and GPU processes go with it.
        process = subprocess.Popen([program, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            active = Path(profile) / "DevToolsActivePort"
            port = wait_until(lambda: active.exists() and active.read_text().split("\n")[0].strip(), 30, "Chromium's DevTools port")

            def page() -> str | None:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = json.loads(response.read())
                return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)

            with connect(wait_until(page, 30, "Chromium's page"), max_size=None) as socket:
                session = Browser(process, socket)
                session.call("Page.enable")
                yield session
        finally:
            stop_group(process)


PASSWORD_FIELD, SUBMIT = "input[type=password]", "button[type=submit]"


def log_in(session: Browser, ui_url: str, auth_string: str) -> bool:
    """Log in to the UI (Prefect's basic auth: it asks for "user:password" and keeps it in the
    page's local storage); True when the server accepted it. A deep link into a UI that is not
    logged in shows "Page not found", so the login starts from the runs page."""
    if "/login" not in session.evaluate("location.pathname"):
        session.open(f"{ui_url}/runs")
        session.wait_for_text("Login")
    session.type_into(PASSWORD_FIELD, auth_string)
    session.click(SUBMIT)  # the page stores the login now, and drops it if the server refuses it

    def settled() -> str | None:
        if "/login" not in session.evaluate("location.pathname"):
            return "accepted"
        return "refused" if session.evaluate("localStorage.getItem('prefect-password')") is None else None

    return wait_until(settled, 60, "the UI accepting or refusing the login") == "accepted"
