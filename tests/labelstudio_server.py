"""A real Label Studio for the tests and scripts/screenshot_review.py: started by
scripts/labelstudio.sh (its own venv, installed on first use) on 127.0.0.1 with a login, and a
headless Chromium logged in to it (tests/prefect_server.py's DevTools driver)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from prefect_server import Browser, free_port, stop, wait_until

REPO = Path(__file__).resolve().parents[1]
EMAIL = "reviewer@example.com"
PASSWORD = "voxtox-test-pw"
TOKEN = "voxtox-test-token-0123456789abcdef"
#: First start migrates a new SQLite database: ~40 s on an idle 2-core machine, 2-3 min on a busy one.
START_TIMEOUT_S = 420


class LabelStudioProcess:
    """`scripts/labelstudio.sh start` on a free port, started at once; `wait()` for it to answer.
    Starting is split from waiting so a test session can start it early, in the background
    (tests/conftest.py), while other tests run: its first start migrates a new database, the
    slowest part of tests/test_labelstudio.py."""

    def __init__(self, document_root: Path, state: Path, log: Path) -> None:
        self.document_root, self.log = document_root, log
        self.url = f"http://127.0.0.1:{free_port()}"
        env = os.environ | {"LABEL_STUDIO_USERNAME": EMAIL, "LABEL_STUDIO_PASSWORD": PASSWORD,
                            "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
        with log.open("w") as output:
            self.process = subprocess.Popen(
                ["bash", str(REPO / "scripts" / "labelstudio.sh"), "start", self.url.rsplit(":", 1)[1], str(state)],
                env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Label Studio exited ({self.process.returncode}); log: {self.log}")
        try:
            return httpx.get(f"{self.url}/api/projects", headers={"Authorization": f"Token {TOKEN}"}, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self) -> str:
        wait_until(self._up, START_TIMEOUT_S, f"Label Studio on {self.url} (log: {self.log})", poll_s=1)
        return self.url

    def stop(self) -> None:
        stop(self.process)


_EARLY: list[tuple[LabelStudioProcess, Path]] = []


def start_early() -> None:
    """Start a Label Studio in the background for the session (tests/conftest.py)."""
    if not _EARLY:
        base = Path(tempfile.mkdtemp(prefix="voxtox-label-studio-"))
        (base / "review-root").mkdir()
        (base / "state").mkdir()
        _EARLY.append((LabelStudioProcess(base / "review-root", base / "state", base / "server.log"), base))


def take_early() -> LabelStudioProcess | None:
    """The Label Studio `start_early` started, if any."""
    return _EARLY[0][0] if _EARLY else None


def stop_early() -> None:
    for server, base in _EARLY:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    _EARLY.clear()


@contextmanager
def label_studio_server(document_root: Path, state: Path, log: Path) -> Iterator[str]:
    """Label Studio's URL, serving local files below `document_root`, its own files in `state`."""
    server = LabelStudioProcess(document_root, state, log)
    try:
        yield server.wait()
    finally:
        server.stop()


def log_in(session: Browser, url: str) -> None:
    session.open(f"{url}/user/login/")
    wait_until(lambda: session.evaluate("!!document.querySelector('input[name=email]')"), 60, "the login form")
    session.type_into("input[name=email]", EMAIL)
    session.type_into("input[name=password]", PASSWORD)
    session.evaluate("document.querySelector('form').submit()")
    wait_until(lambda: "/user/login" not in (session.evaluate("location.pathname") or "/user/login"), 60,
               "Label Studio accepting the login")


def open_task(session: Browser, url: str, project_id: int, task_id: int) -> int:
    """Open a task's labelling page; the HTTP status of its audio as the page fetched it, once
    the page has fetched it and drawn its class choices."""
    session.open(f"{url}/projects/{project_id}/data?task={task_id}")
    session.wait_for_text("no_violation", "racism", timeout_s=120)
    fetched = ("(performance.getEntriesByType('resource').find(e => e.name.includes('/data/local-files/')) "
               "|| {}).responseStatus")
    return int(wait_until(lambda: session.evaluate(fetched), 120, "the task page fetching its audio"))
