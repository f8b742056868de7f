"""`voxtox review export`: a selected batch as a Label Studio project.

Writes, in the export folder (default `<data_dir>/review/export/`):
- `labelling-config.xml`: an Audio player, the transcript as an editable text area, and Choices
  with voxtox's six classes (several allowed, at least one required);
- `tasks.json`: one task per clip, `data` = {clip_id, audio, transcript}, with the pipeline's
  labels and transcript as a prediction (pre-annotation) whose `score` is the labeller's
  confidence in its whole label set (sort ascending: most doubtful first);
and each clip's audio as a FLAC file under `<data_dir>/review/audio/`, which Label Studio plays
through its local-files serving (`/data/local-files/?d=review/audio/<clip>.flac`, relative to
its document root: the data dir). `--push URL` creates the project, its local-files storage and
the tasks through Label Studio's API (storage/labelstudio_api.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from voxtox.files import jsonl_objects
from voxtox.labels import CLASSES
from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.reviews import REVIEW_DIR, batch_path
from voxtox.storage.review_s3 import audio_location, on_s3, upload_and_presign
from voxtox.storage.schema import HAS_AUDIO

#: Control names: not named like a data field (JSON_MIN would let a control overwrite the field).
AUDIO = "audio"
CHOICES = "labels"
TEXT = "corrected"
CONFIG_FILE = "labelling-config.xml"
TASKS_FILE = "tasks.json"
AUDIO_DIR = "audio"
LOCAL_FILES_URL = "/data/local-files/?d="


def labelling_config() -> str:
    """The project's labelling interface."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in CLASSES)
    return (
        "<View>\n"
        f'  <Audio name="{AUDIO}" value="$audio" hotkey="space"/>\n'
        '  <Header value="Transcript: correct the words if they are wrong"/>\n'
        f'  <TextArea name="{TEXT}" toName="{AUDIO}" editable="true" rows="3" maxSubmissions="1"/>\n'
        '  <Header value="What is said (all that apply)"/>\n'
        f'  <Choices name="{CHOICES}" toName="{AUDIO}" choice="multiple" required="true" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def review_audio_dir(settings: Settings) -> Path:
    return settings.data_dir / REVIEW_DIR / AUDIO_DIR


def audio_url(settings: Settings, clip_id: str) -> str:
    """Label Studio's local-files URL of a clip's audio: its path relative to Label Studio's
    document root (`review.document_root`, default the data dir)."""
    root = (settings.review.document_root or settings.data_dir).resolve()
    audio = (review_audio_dir(settings) / f"{clip_id}.flac").resolve()
    if not audio.is_relative_to(root):
        raise ValueError(f"review audio {audio.parent} is not below Label Studio's document root {root} "
                         "(settings: review.document_root)")
    return LOCAL_FILES_URL + audio.relative_to(root).as_posix()


def confidence(labels: list[str], probs: dict[str, float]) -> float:
    """How sure the labeller is of its whole label set: its least sure class (p, or 1 − p)."""
    return round(min(probs[c] if c in labels else 1 - probs[c] for c in CLASSES), 4)


def make_task(row: dict[str, object], audio: str) -> dict[str, object]:
    """One Label Studio task from one batch row and its audio URL."""
    labels = list(row["labels"])  # type: ignore[arg-type]
    result = [
        {"from_name": CHOICES, "to_name": AUDIO, "type": "choices", "value": {"choices": labels}},
        {"from_name": TEXT, "to_name": AUDIO, "type": "textarea", "value": {"text": [row["transcript"] or ""]}},
    ]
    return {
        "data": {"clip_id": row["clip_id"], "audio": audio, "transcript": row["transcript"] or ""},
        "predictions": [{"model_version": str(row.get("labeller_model") or "voxtox"),
                         "score": confidence(labels, row["probs"]), "result": result}],  # type: ignore[arg-type]
    }


def _missing(directory: Path, clip_ids: list[str]) -> list[str]:
    return [c for c in clip_ids if not (directory / f"{c}.flac").exists()]


def _in_list(clip_ids: list[str]) -> str:
    return "[" + ", ".join(f"'{c}'" for c in clip_ids) + "]"


def _check_none_gone(clip_ids: list[str], found: list[str]) -> None:
    gone = sorted(set(clip_ids) - set(found))
    if gone:
        raise ValueError(f"clip {gone[0]} of the batch is no longer in the clips table (forgotten?): select again")


def write_audio(settings: Settings, clip_ids: list[str]) -> Path:
    """Each clip's FLAC from the lake to `<data_dir>/review/audio/<clip>.flac` (kept when there)."""
    directory = review_audio_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    missing = _missing(directory, clip_ids)
    if not missing:
        return directory
    found = lake_audio(settings, missing)  # the bytes come from the lake's clips (local data files)
    for clip, data in found.items():
        _write_atomically(directory / f"{clip}.flac", data)
    _check_none_gone(missing, list(found))
    return directory


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def lake_audio(settings: Settings, clip_ids: list[str]) -> dict[str, bytes]:
    """The clips' encoded audio from the lake's clips table (one snapshot), clip id -> bytes."""
    table = Catalog.from_settings(settings).query(
        f"SELECT clip_id, audio.bytes AS data FROM clips WHERE list_contains({_in_list(clip_ids)}, clip_id) "
        f"AND {HAS_AUDIO}")
    _check_none_gone(clip_ids, table["clip_id"].to_pylist())
    return dict(zip(table["clip_id"].to_pylist(), table["data"].to_pylist(), strict=True))


def audio_urls(settings: Settings, clip_ids: list[str]) -> tuple[dict[str, str], str]:
    """Each clip's audio URL for its task, and where the audio went: pre-signed S3 URLs when the
    data is on S3 (storage/review_s3.py), else local-files URLs of the files under the data dir."""
    if on_s3(settings):
        bucket, prefix = audio_location(settings)
        return upload_and_presign(settings, lake_audio(settings, clip_ids)), f"s3://{bucket}/{prefix}/"
    directory = write_audio(settings, clip_ids)
    return {c: audio_url(settings, c) for c in clip_ids}, str(directory)


@dataclass
class Export:
    config: Path
    tasks: Path
    audio_dir: Path | None  # the folder Label Studio's local-files storage serves; None: audio on S3
    n_tasks: int
    audio_at: str = ""  # where the audio went, in words (the folder, or the s3:// prefix)


def read_batch(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise FileNotFoundError(f"no review batch at {path}: choose clips first with `voxtox review select`")
    rows = [row for _, row in jsonl_objects(path)]
    if not rows:
        raise ValueError(f"{path}: the review batch is empty")
    return rows


def export_batch(settings: Settings, batch: Path | None = None, out: Path | None = None) -> Export:
    """The batch (default: what `review select` wrote last) as a Label Studio project on disk."""
    rows = read_batch(batch or batch_path(settings))
    out = out or settings.data_dir / REVIEW_DIR / "export"
    out.mkdir(parents=True, exist_ok=True)
    urls, audio_at = audio_urls(settings, [str(r["clip_id"]) for r in rows])
    config = out / CONFIG_FILE
    config.write_text(labelling_config())
    tasks = out / TASKS_FILE
    tasks.write_text(json.dumps([make_task(r, urls[str(r["clip_id"])]) for r in rows], indent=1, ensure_ascii=False) + "\n")
    return Export(config, tasks, None if on_s3(settings) else Path(audio_at), len(rows), audio_at)


def _without_clips(path: Path, clip_ids: frozenset[str], dry_run: bool) -> bool:
    """Rewrite a batch (JSONL: one clip per line) or tasks file (JSON: a list of tasks) without
    the clips (unless `dry_run`); whether it held any."""
    if path.suffix == ".jsonl":
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [e for e in entries if e.get("clip_id") not in clip_ids]
        text = "".join(json.dumps(e) + "\n" for e in kept)
    else:
        entries = json.loads(path.read_text(encoding="utf-8"))
        kept = [t for t in entries if t.get("data", {}).get("clip_id") not in clip_ids]
        text = json.dumps(kept, indent=1, ensure_ascii=False) + "\n"
    if len(kept) == len(entries):
        return False
    if not dry_run:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    return True


def erase_review_copies(data_dir: Path, clip_ids: frozenset[str], dry_run: bool = False) -> list[str]:
    """`voxtox forget`: the clips' audio, batch lines and tasks under `<data_dir>/review/`
    (Label Studio's own copy of a pushed task is out of reach: delete it there)."""
    root = data_dir / REVIEW_DIR
    if not clip_ids or not root.is_dir():
        return []
    changed = [p for c in sorted(clip_ids) if (p := root / AUDIO_DIR / f"{c}.flac").exists()]
    if not dry_run:
        for path in changed:
            path.unlink()
    for path in sorted([*root.glob("*.jsonl"), *root.glob(f"*/{TASKS_FILE}")]):
        if _without_clips(path, clip_ids, dry_run):
            changed.append(path)
    return [str(p) for p in changed]
