"""`voxtox review import`: Label Studio's answers as reviews (the `reviews` table).

Reads Label Studio's JSON export (tasks with `annotations[]`, each with `result[]`,
`was_cancelled` and `completed_by`) or its JSON_MIN export (one row per annotation, the choices
as a string or `{"choices": [...]}`), from a file or through the API (`--pull URL`).

Rules:
- cancelled (skipped) annotations and tasks nobody answered are left out;
- several annotators on one clip: per class, the majority of the answers; a class with as many
  yes as no is a tie, and the clip is stored with status `tie` and that class null: flagged for
  another reviewer, used neither for training nor as truth;
- the corrected transcript is the text most answers gave (the latest answer's on a tie), null
  when it equals the pipeline's transcript;
- everything is checked before anything is written: an unknown class, a task whose clip is not
  in the clips table (never labelled here, or erased by `voxtox forget`), a file that is not an
  export; the first problem is one line naming the task, and nothing of the file is imported;
- a clip's review replaces its earlier one; importing the same export again changes nothing.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from voxtox.labels import CLASSES
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.reviews import ReviewsWritten, write_reviews_in
from voxtox.storage.schema import label_column
from voxtox.storage.review_export import CHOICES, TEXT

#: What JSON_MIN rows carry besides data fields and control values.
_MIN_META = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}


class ExportError(ValueError):
    """An export that cannot be imported; the message names the file and the task."""


@dataclass(frozen=True)
class Answer:
    """One person's answer on one task."""

    task_id: int
    clip_id: str
    labels: frozenset[str]
    text: str | None
    reviewer: str
    at: datetime


@dataclass(frozen=True)
class ImportReport:
    n_tasks: int
    n_answers: int
    n_skipped: int  # cancelled answers and tasks nobody answered
    n_clips: int
    n_ties: int
    written: ReviewsWritten


def _time(value: object) -> datetime:
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime(1970, 1, 1, tzinfo=UTC)


def _reviewer(value: object, users: dict[int, str]) -> str:
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    if isinstance(value, int):
        return users.get(value, f"label-studio-user-{value}")
    return str(value) if value not in (None, "") else "unknown"


def _choices(value: object, where: str) -> frozenset[str]:
    names = value.get("choices", []) if isinstance(value, dict) else value
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ExportError(f"{where}: `{CHOICES}` is not a list of classes: {value!r}")
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise ExportError(f"{where}: unknown class(es) {unknown}; classes are {list(CLASSES)}")
    if not names:
        raise ExportError(f"{where}: no class chosen")
    return frozenset(names)


def _text(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    return " ".join(str(value).split()) if value is not None else None


def _task_where(path: str, task: dict[str, Any], number: int) -> tuple[str, int, str]:
    task_id = task.get("id")
    if not isinstance(task_id, int):
        raise ExportError(f"{path}: item {number} is not a Label Studio task (no integer `id`): not an export of a voxtox project")
    data = task.get("data", task)
    clip = data.get("clip_id") if isinstance(data, dict) else None
    if not isinstance(clip, str) or not clip:
        raise ExportError(f"{path}: task {task_id} has no `clip_id`: not an export of a voxtox project")
    return f"{path}: task {task_id} (clip {clip})", task_id, clip


def _json_answers(path: str, task: dict[str, Any], number: int, users: dict[int, str]) -> tuple[list[Answer], int]:
    where, task_id, clip = _task_where(path, task, number)
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        raise ExportError(f"{where}: no `annotations` list: not Label Studio's JSON export")
    answers, skipped = [], 0
    for annotation in annotations:
        if annotation.get("was_cancelled"):
            skipped += 1
            continue
        result = annotation.get("result") or []
        labels = [r.get("value", {}) for r in result if r.get("from_name") == CHOICES]
        if not labels:
            raise ExportError(f"{where}: an answer without `{CHOICES}`: not a voxtox project's export, or no class chosen")
        texts = [_text(r.get("value")) for r in result if r.get("from_name") == TEXT]
        answers.append(Answer(task_id, clip, _choices(labels[0], where), texts[0] if texts else None,
                              _reviewer(annotation.get("completed_by"), users),
                              _time(annotation.get("updated_at") or annotation.get("created_at"))))
    return answers, skipped + (not annotations)


def _min_answer(path: str, row: dict[str, Any], number: int) -> Answer | None:
    where, task_id, clip = _task_where(path, row, number)
    if CHOICES not in row:
        return None  # a task nobody answered (or only skipped)
    return Answer(task_id, clip, _choices(row[CHOICES], where), _text(row.get(TEXT)),
                  _reviewer(row.get("annotator"), {}), _time(row.get("updated_at") or row.get("created_at")))


def parse_export(items: object, path: str, users: dict[int, str] | None = None) -> tuple[list[Answer], int, int]:
    """(answers, tasks, skipped) of an export, JSON or JSON_MIN; ExportError on anything else."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ExportError(f"{path}: not a Label Studio export (expected a JSON list of tasks)")
    answers: list[Answer] = []
    skipped = 0
    tasks: set[int] = set()
    for number, item in enumerate(items, 1):
        if "annotations" in item:
            found, gone = _json_answers(path, item, number, users or {})
            answers += found
            skipped += gone
        elif (answer := _min_answer(path, item, number)) is not None:
            answers.append(answer)
        else:
            skipped += 1
        tasks.add(int(item["id"]))
    return answers, len(tasks), skipped


def read_export_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such export file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path}: not a Label Studio export (not JSON: {error})") from error


# --- resolving several answers ----------------------------------------------------------------


def majority(answers: list[Answer]) -> tuple[dict[str, bool | None], str]:
    """Per class, what most answers say (None on a tie), and the status: agreed, majority or tie."""
    n = len(answers)
    labels: dict[str, bool | None] = {}
    for name in CLASSES:
        yes = sum(name in a.labels for a in answers)
        labels[name] = None if 2 * yes == n else 2 * yes > n
    if any(v is None for v in labels.values()):
        return labels, "tie"
    unanimous = len({a.labels for a in answers}) == 1
    return labels, "agreed" if unanimous else "majority"


def corrected_text(answers: list[Answer], pipeline: str | None) -> str | None:
    texts = [a.text for a in sorted(answers, key=lambda a: a.at) if a.text is not None]
    if not texts:
        return None
    counts = Counter(texts)
    best = max(counts.values())
    text = [t for t in texts if counts[t] == best][-1]
    return None if text == " ".join((pipeline or "").split()) else text


def _clips(settings: Settings, clip_ids: list[str]) -> dict[str, dict[str, Any]]:
    catalog = Catalog.from_settings(settings)
    if "clips" not in catalog.present_tables():
        return {}  # every task then names its clip as unknown
    listed = "[" + ", ".join(f"'{c}'" for c in sorted(set(clip_ids)) if c.replace("-", "").isalnum()) + "]"
    rows = catalog.query(
        "SELECT clip_id, source_sha256, split, lang, start_s, end_s, transcript FROM clips "
        f"WHERE list_contains({listed}::VARCHAR[], clip_id)").to_pylist()
    return {r["clip_id"]: r for r in rows}


def review_rows(answers: list[Answer], settings: Settings, source: str, now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The reviews table's rows for `answers`, and how many are ties; ExportError names a task
    whose clip is not in the clips table."""
    by_clip: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_clip[answer.clip_id].append(answer)
    clips = _clips(settings, list(by_clip))
    rows, ties = [], 0
    for clip, given in sorted(by_clip.items()):
        if clip not in clips:
            raise ExportError(f"{source}: task {given[0].task_id} (clip {clip}): no such clip in the clips table "
                              "(never labelled here, or erased by `voxtox forget`)")
        labels, status = majority(given)
        ties += status == "tie"
        found = clips[clip]
        rows.append({
            "clip_id": clip, "source_sha256": found["source_sha256"], "split": found["split"], "lang": found["lang"],
            "start_s": found["start_s"], "end_s": found["end_s"],
            **{label_column(c): labels[c] for c in CLASSES},
            "status": status, "n_annotations": len(given),
            "reviewers": ",".join(sorted({a.reviewer for a in given})),
            "reviewed_at": max(a.at for a in given), "task_id": min(a.task_id for a in given), "project": source,
            "transcript": corrected_text(given, found["transcript"]), "imported_at": now,
        })
    return rows, ties


def import_answers(settings: Settings, items: object, source: str, users: dict[int, str] | None = None,
                   now: datetime | None = None) -> ImportReport:
    """Check an export whole, then write its reviews in one go."""
    answers, n_tasks, skipped = parse_export(items, source, users)
    rows, ties = review_rows(answers, settings, source, now or datetime.now(UTC))
    written = write_reviews_in(settings, rows) if rows else ReviewsWritten(0, 0, 0)
    return ImportReport(n_tasks, len(answers), skipped, len(rows), ties, written)


def import_export_file(settings: Settings, path: Path) -> ImportReport:
    return import_answers(settings, read_export_file(path), str(path))
