"""The Label Studio projects a review batch went to (`<data_dir>/review/projects.json`): recorded
when pushed, pruned when Label Studio no longer has them, and emptied of forgotten clips."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from voxtox.settings import Settings
from voxtox.storage.labelstudio_api import LabelStudio, LabelStudioError, parse_project_url
from voxtox.storage.reviews import REVIEW_DIR

PROJECTS_FILE = "projects.json"


def projects_path(settings: Settings) -> Path:
    return settings.data_dir / REVIEW_DIR / PROJECTS_FILE


def pushed_projects(settings: Settings) -> list[str]:
    path = projects_path(settings)
    return [entry["url"] for entry in json.loads(path.read_text())] if path.exists() else []


def record_project(settings: Settings, url: str, n_tasks: int) -> None:
    path = projects_path(settings)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append({"url": url, "n_tasks": n_tasks, "pushed_at": datetime.now(UTC).isoformat(timespec="seconds")})
    _write_projects(path, entries)


def drop_project(settings: Settings, url: str) -> None:
    """Stop pulling a project (Label Studio no longer has it)."""
    path = projects_path(settings)
    if path.exists():
        _write_projects(path, [e for e in json.loads(path.read_text()) if e["url"] != url])


def _write_projects(path: Path, entries: list[dict[str, object]]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(entries, indent=1) + "\n")
    temporary.replace(path)


def delete_pushed_tasks(settings: Settings, clip_ids: frozenset[str], dry_run: bool = False) -> dict[str, str]:
    """`voxtox forget`: delete the clips' tasks (with their answers) from every project in
    `projects.json`. Per project, what happened in words; a server that cannot be reached, or no
    token, is said there (the task then still lives in Label Studio) and stops nothing."""
    done: dict[str, str] = {}
    if not clip_ids:
        return done
    for url in pushed_projects(settings):
        ref = parse_project_url(url)
        try:
            server = LabelStudio(ref.base)
            doomed = [int(t["id"]) for t in server.tasks(ref.project_id) if str(t.get("data", {}).get("clip_id")) in clip_ids]
            for task_id in [] if dry_run else doomed:
                server.delete_task(task_id)
        except (LabelStudioError, ValueError) as error:
            done[url] = f"NOT deleted there, do it by hand: {error}"
            continue
        if doomed:
            done[url] = f"{len(doomed)} task(s) {'would be ' if dry_run else ''}deleted"
    return done
