"""Retention (`[retention]` settings), applied by the nightly flow.

- `audio_days`: the audio of clips labelled more than that many days ago is dropped (`audio`
  becomes NULL); transcript, labels, probabilities and text embedding stay, so the catalog still
  answers questions about what was said, while audio training and evaluation skip those clips.
- `delete_days`: recordings whose last row was written more than that many days ago are erased
  whole, exactly as `voxtox forget` erases them (every table, cached scores, a tombstone so a
  file left in the inbox is not labelled again and its clock restarted).

In the lake (the embedded one or `[storage]`'s), each is one commit (erasure and
its tombstones together; the audio drop), after which the data files that still hold the
expired rows are rewritten, every older snapshot expired and the unreferenced files deleted
(storage/lake.py `purge_history`, as `voxtox forget` does): the bytes leave storage that night.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect import task

from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.forget import ErasureReport, Recordings, erase_in_lake


@dataclass
class RetentionReport:
    audio_cutoff: str | None = None
    clips_audio_dropped: int = 0
    delete_cutoff: str | None = None
    recordings_erased: int = 0
    rows_erased: dict[str, int] = field(default_factory=dict)
    files_rewritten: int = 0
    files_deleted: int = 0
    runs_trained_on_erased: list[str] = field(default_factory=list)


def _erased(report: RetentionReport, erased: ErasureReport) -> None:
    report.recordings_erased = len(erased.recordings)
    report.rows_erased = erased.rows
    report.files_rewritten += len(erased.files_rewritten)
    report.files_deleted += len(erased.files_deleted)
    report.runs_trained_on_erased = sorted(erased.runs_trained_on)


def apply_retention(settings: Settings, now: datetime | None = None) -> RetentionReport:
    """Erase expired recordings, then drop expired audio, as `settings.retention` says: each one
    commit in the lake, then the history that still holds the bytes purged."""
    now = now or datetime.now(UTC)
    retention, target, report = settings.retention, lake.target_for(settings), RetentionReport()
    if retention.delete_days is not None:
        cutoff = now - timedelta(days=retention.delete_days)
        report.delete_cutoff = cutoff.isoformat(timespec="seconds")
        with closing(lake.connect(target, read_only=True)) as con:
            sha256s, uris = lake.expired_recordings(con, cutoff)
        if sha256s or uris:
            _erased(report, erase_in_lake(Recordings(frozenset(sha256s), frozenset(uris)), settings, [settings.runs_dir]))
    if retention.audio_days is not None:
        cutoff = now - timedelta(days=retention.audio_days)
        report.audio_cutoff = cutoff.isoformat(timespec="seconds")
        with closing(lake.connect(target)) as con:
            report.clips_audio_dropped = lake.drop_audio_before(con, target, cutoff)
    return report


@task(name="retention")
def retention_task(settings: Settings) -> RetentionReport:
    return apply_retention(settings)
