"""Label Studio's REST API, the few calls `voxtox review` makes (Label Studio 1.23).

The token comes from the environment, `LABEL_STUDIO_API_KEY`: a legacy token (sent as
`Authorization: Token ...`; the server must run with `--enable-legacy-api-token`, as
scripts/labelstudio.sh starts it) or a personal access token (a JWT: exchanged at
`/api/token/refresh/` for a short-lived access token, sent as `Bearer`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
PROJECT_URL = re.compile(r"^(?P<base>https?://[^/]+(?:/[^?#]*?)?)/projects/(?P<id>\d+)")
TIMEOUT_S = 60.0
TASKS_PAGE = 100


class LabelStudioError(RuntimeError):
    """Label Studio refused a call or could not be reached; said in one line. `status`: the HTTP
    status of a refusal (None when the server could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProjectRef:
    base: str  # e.g. http://127.0.0.1:8080
    project_id: int

    @property
    def url(self) -> str:
        return f"{self.base}/projects/{self.project_id}"


def parse_project_url(url: str) -> ProjectRef:
    """`http://host:8080/projects/12/...` (what the browser and `review export --push` show)."""
    found = PROJECT_URL.match(url.strip())
    if not found:
        raise ValueError(f"{url!r} is not a Label Studio project URL (like http://127.0.0.1:8080/projects/1)")
    return ProjectRef(found["base"].rstrip("/"), int(found["id"]))


def _authorization(base: str, token: str) -> str:
    if token.count(".") == 2:  # a personal access token (JWT): trade it for an access token
        response = httpx.post(f"{base}/api/token/refresh/", json={"refresh": token}, timeout=TIMEOUT_S)
        if response.status_code != 200:
            raise LabelStudioError(f"{base}: the personal access token in {TOKEN_ENV} was refused ({response.status_code})")
        return f"Bearer {response.json()['access']}"
    return f"Token {token}"


class LabelStudio:
    """A session with one Label Studio server."""

    def __init__(self, base: str, token: str | None = None) -> None:
        token = token or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise ValueError(f"set {TOKEN_ENV} to a Label Studio API token (Account & Settings in Label Studio)")
        self.base = base.rstrip("/")
        try:
            header = _authorization(self.base, token)
        except httpx.HTTPError as error:
            raise LabelStudioError(f"{self.base}: cannot reach Label Studio ({error})") from error
        self.client = httpx.Client(base_url=self.base, headers={"Authorization": header}, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise LabelStudioError(f"{self.base}{path}: cannot reach Label Studio ({error})") from error
        if response.status_code >= 400:
            detail = " ".join(response.text.split())[:300]
            raise LabelStudioError(f"{method} {self.base}{path}: {response.status_code} {detail}", response.status_code)
        return response.json() if response.content else None

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        project = self.call("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                            "description": description})
        return int(project["id"])

    def add_local_storage(self, project_id: int, folder: Path) -> None:
        """Let the project read files below `folder` (below the server's document root)."""
        body = {"project": project_id, "title": "voxtox review audio", "path": str(folder.resolve()),
                "use_blob_urls": False}
        self.call("POST", "/api/storages/localfiles", json=body)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        answer = self.call("POST", f"/api/projects/{project_id}/import", json=tasks)
        return int(answer.get("task_count", len(tasks)))

    def export(self, project_id: int, export_type: str = "JSON") -> list[dict[str, Any]]:
        return self.call("GET", f"/api/projects/{project_id}/export", params={"exportType": export_type})

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project (id and data), page by page."""
        found: list[dict[str, Any]] = []
        while True:
            answer = self.call("GET", "/api/tasks/", params={"project": project_id, "page": len(found) // TASKS_PAGE + 1,
                                                             "page_size": TASKS_PAGE, "fields": "task_only"})
            page = answer["tasks"] if isinstance(answer, dict) else answer
            found += page
            total = answer.get("total", len(found)) if isinstance(answer, dict) else len(found)
            if len(page) < TASKS_PAGE or len(found) >= total:
                return found

    def delete_task(self, task_id: int) -> None:
        """Delete a task with its annotations and predictions (Label Studio keeps no copy)."""
        self.call("DELETE", f"/api/tasks/{task_id}/")

    def user_names(self) -> dict[int, str]:
        """User id -> e-mail (exports name annotators by id)."""
        return {int(u["id"]): str(u.get("email") or u.get("username") or u["id"]) for u in self.call("GET", "/api/users")}
