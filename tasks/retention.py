"""Retention (`[retention]` settings), applied by the nightly flow.

- `audio_days`: the audio of clips labelled more than that many days ago is dropped (`audio`
  becomes NULL); transcript, labels, probabilities and text embedding stay, so the catalog still
  answers questions about what was said, while audio training and evaluation skip those clips.
- `delete_days`: recordings whose last row was written more than that many days ago are erased
  whole, exactly as `voxtox forget` erases them (every table, cached scores, a tombstone so a
  file left in the inbox is not labelled again and its clock restarted).

Files are rewritten only where they hold rows that expire, atomically, under the shards'
exclusive lock (storage/erasure.py). On a lake (`[storage]`), each is one commit (erasure and
its tombstones together; the audio drop), after which the data files that still hold the
expired rows are rewritten, every older snapshot expired and the unreferenced files deleted
(storage/lake.py `purge_history`, as `voxtox forget` does): the bytes leave storage that night.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.erasure import Condition, matching_rows, rewrite_parquet, shards_lock
from voxtox.storage.schema import HAS_AUDIO
from voxtox.storage.shards import shard_files
from voxtox.storage.forget import ErasureReport, Recordings, erase_in_lake, erase_recordings

#: Per table, the column saying when a row was written.
WRITTEN_AT = {"sources": "labelled_at", "clips": "labelled_at", "rejects": "rejected_at"}


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


def expired_recordings(shards_root: Path, cutoff: datetime) -> Recordings:
    """Recordings whose newest row (labelled or rejected) is older than `cutoff`, and the URIs
    of rejected inputs without a hash (unreadable) rejected before it."""
    newest: dict[str, datetime] = {}
    uris: set[str] = set()
    with duckdb.connect() as con:
        for table, column in WRITTEN_AT.items():
            files = [str(f) for f in shard_files(shards_root, table)]
            if not files:
                continue
            rows = con.execute(
                f"SELECT source_sha256, source_uri, max({column}) FROM read_parquet(?, union_by_name = true, "
                "hive_partitioning = false) GROUP BY ALL", [files]
            ).fetchall()
            for sha, uri, written in rows:
                if sha is None:
                    uris |= {uri} if written < cutoff else set()
                else:
                    newest[sha] = max(newest.get(sha, written), written)
    return Recordings(frozenset(sha for sha, written in newest.items() if written < cutoff), frozenset(uris))


def _without_audio(table: pa.Table, mask: pa.Array) -> pa.Table:
    index = table.schema.get_field_index("audio")
    audio = pc.if_else(mask, pa.nulls(table.num_rows, table.schema.field("audio").type), table["audio"])
    return table.set_column(index, table.schema.field("audio"), audio)


def drop_audio_before(shards_root: Path, cutoff: datetime) -> tuple[int, int]:
    """Null the audio of clips labelled before `cutoff`; (clips, files rewritten)."""

    def old_with_audio(columns: set[str]) -> Condition:
        return (f"labelled_at < ? AND {HAS_AUDIO}", [cutoff]) if {"labelled_at", "audio"} <= columns else None

    clips = files = 0
    with shards_lock(shards_root, exclusive=True):
        for path, rows in matching_rows(shard_files(shards_root, "clips"), old_with_audio).items():
            clips += rewrite_parquet(path, rows, _without_audio).n_rows
            files += 1
    return clips, files


def _erased(report: RetentionReport, erased: ErasureReport) -> None:
    report.recordings_erased = len(erased.recordings)
    report.rows_erased = erased.rows
    report.files_rewritten += len(erased.files_rewritten)
    report.files_deleted += len(erased.files_deleted)
    report.runs_trained_on_erased = sorted(erased.runs_trained_on)


def _apply_on_lake(settings: Settings, target: lake.LakeTarget, now: datetime, report: RetentionReport) -> None:
    """Retention on a lake: expired recordings erased as `voxtox forget` erases them (tombstoned,
    every table, cached scores, review copies, old snapshots), then expired audio dropped."""
    retention = settings.retention
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


def apply_retention(settings: Settings, now: datetime | None = None) -> RetentionReport:
    """Erase expired recordings, then drop expired audio, as `settings.retention` says (in the
    lake `[storage]` names, or in the shards)."""
    now = now or datetime.now(UTC)
    retention = settings.retention
    report = RetentionReport()
    if (target := lake.target_for(settings)) is not None:
        _apply_on_lake(settings, target, now, report)
        return report
    if retention.delete_days is not None:
        cutoff = now - timedelta(days=retention.delete_days)
        report.delete_cutoff = cutoff.isoformat(timespec="seconds")
        expired = expired_recordings(settings.shards_dir, cutoff)
        if expired.sha256s or expired.uris:
            _erased(report, erase_recordings(expired, settings, [settings.runs_dir]))
    if retention.audio_days is not None:
        cutoff = now - timedelta(days=retention.audio_days)
        report.audio_cutoff = cutoff.isoformat(timespec="seconds")
        report.clips_audio_dropped, rewritten = drop_audio_before(settings.shards_dir, cutoff)
        report.files_rewritten += rewritten
    return report


@task(name="retention")
def retention_task(settings: Settings) -> RetentionReport:
    return apply_retention(settings)
