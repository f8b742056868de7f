"""A real Label Studio for the tests and scripts/screenshot_review.py: started by
scripts/labelstudio.sh (its own venv, installed on first use) on 127.0.0.1 with a login, and a
headless Chromium logged in to it (tests/prefect_server.py's DevTools driver)."""

from __future__ import annotations

import os
import subprocess
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


@contextmanager
def label_studio_server(document_root: Path, state: Path, log: Path) -> Iterator[str]:
    """Label Studio's URL, serving local files below `document_root`, its own files in `state`."""
    port = free_port()
    env = os.environ | {"LABEL_STUDIO_USERNAME": EMAIL, "LABEL_STUDIO_PASSWORD": PASSWORD,
                        "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
    with log.open("w") as output:
        server = subprocess.Popen(["bash", str(REPO / "scripts" / "labelstudio.sh"), "start", str(port), str(state)],
                                  env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"Label Studio exited ({server.returncode}); log: {log}")
            try:
                return httpx.get(f"{url}/api/projects", headers={"Authorization": f"Token {TOKEN}"}, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, START_TIMEOUT_S, f"Label Studio on {url} (log: {log})", poll_s=2)
            yield url
        finally:
            stop(server)


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
