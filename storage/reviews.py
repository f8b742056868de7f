"""The `reviews` table: clips people reviewed (Label Studio, `voxtox review import`).

The lake's table (`write_reviews_in`): one row per clip, one commit per import, keyed by clip,
which every host's training and evaluation read; an import lands entirely or not at all, and a
clip reviewed again replaces its row. Reviews are made by people, so the table stays small.
`voxtox forget` erases rows like any table's (by `source_sha256`).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.lake import LakeTarget
from voxtox.storage.schema import REVIEWS_SCHEMA

REVIEWS_TABLE = "reviews"
#: Where `select` writes its batch and `export` reads it, under the data dir.
REVIEW_DIR = "review"
BATCH_FILE = "selected.jsonl"
#: Columns that say when a row was written, not what it says: an identical re-import keeps the old row.
_STAMP_COLUMNS = ("imported_at",)


class ForgottenClipError(ValueError):
    """A review of a recording `voxtox forget` erased."""


@dataclass(frozen=True)
class ReviewsWritten:
    new: int  # clips reviewed for the first time
    changed: int  # clips whose review this import replaced
    unchanged: int  # clips whose review was already exactly this


def read_reviews(settings: Settings) -> pa.Table:
    """Every review in the lake `settings` name, ordered by clip (an empty table when there is none)."""
    with closing(lake.connect(lake.target_for(settings), read_only=True)) as con:
        if REVIEWS_TABLE not in lake.tables(con):
            return REVIEWS_SCHEMA.empty_table()
        columns = ", ".join(f'"{name}"' for name in REVIEWS_SCHEMA.names)
        found = con.execute(f"SELECT {columns} FROM {lake.ALIAS}.{REVIEWS_TABLE} ORDER BY clip_id").to_arrow_table()
    return found.cast(REVIEWS_SCHEMA)


def _same(old: dict[str, object], new: dict[str, object]) -> bool:
    return all(old[k] == new[k] for k in new if k not in _STAMP_COLUMNS)


def write_reviews_in(settings: Settings, rows: list[dict[str, object]]) -> ReviewsWritten:
    """The reviews of `rows` into the lake `settings` name (`write_reviews_to_lake`)."""
    return write_reviews_to_lake(lake.target_for(settings), rows)


def write_reviews_to_lake(target: LakeTarget, rows: list[dict[str, object]]) -> ReviewsWritten:
    """Add or replace the reviews of `rows`' clips (rows in REVIEWS_SCHEMA) in the lake's
    `reviews` table: one commit, all or nothing, none when a recording was forgotten (checked
    inside the commit: ForgottenClipError names its clip); an identical review writes nothing."""
    with closing(lake.connect(target)) as con:
        existing: dict[object, dict[str, object]] = {}
        if REVIEWS_TABLE in lake.tables(con):
            found = con.execute(f"SELECT * EXCLUDE ({lake.KEY_COLUMN}) FROM {lake.ALIAS}.{REVIEWS_TABLE} "
                                "WHERE clip_id IN (SELECT unnest(?))", [[r["clip_id"] for r in rows]])
            existing = {r["clip_id"]: r for r in found.to_arrow_table().to_pylist()}
        new = [r for r in rows if r["clip_id"] not in existing]
        changed = [r for r in rows if r["clip_id"] in existing and not _same(existing[r["clip_id"]], r)]
        if new or changed:
            table = pa.Table.from_pylist(sorted(new + changed, key=lambda r: str(r["clip_id"])), REVIEWS_SCHEMA)
            forgotten = lake.replace_rows(con, target, REVIEWS_TABLE, table, "clip_id",
                                          {str(r["source_sha256"]) for r in rows})
            if forgotten:
                clip = next(r["clip_id"] for r in rows if r["source_sha256"] in forgotten)
                raise ForgottenClipError(f"clip {clip}: its recording was forgotten (`voxtox forget`)")
    return ReviewsWritten(len(new), len(changed), len(rows) - len(new) - len(changed))


def batch_path(settings: Settings) -> Path:
    return settings.data_dir / REVIEW_DIR / BATCH_FILE
