"""The `reviews` table: clips people reviewed (Label Studio, `voxtox review import`).

With `[storage]` naming a lake, the table is the lake's (`write_reviews_in`): one commit per
import, keyed by clip, which every host's training and evaluation read.

One row per clip, in one Parquet file (`<data_dir>/shards/reviews/reviews.parquet`) rewritten
whole under the shards' exclusive lock: an import lands entirely or not at all, and a clip
reviewed again replaces its row. Reviews are made by people, so the table stays small (100 000
reviews are a few MB). `voxtox forget` erases rows like any table's (by `source_sha256`).
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.lake import LakeTarget
from voxtox.storage.schema import REVIEWS_SCHEMA
from voxtox.storage.shards import shards_lock, write_parquet_atomic
from voxtox.storage.tombstones import forgotten_sha256s, tombstones_file

REVIEWS_TABLE = "reviews"
#: Where `select` writes its batch and `export` reads it, under the data dir.
REVIEW_DIR = "review"
BATCH_FILE = "selected.jsonl"
REVIEWS_FILE = "part-reviews.parquet"
#: Columns that say when a row was written, not what it says: an identical re-import keeps the old row.
_STAMP_COLUMNS = ("imported_at",)


class ForgottenClipError(ValueError):
    """A review of a recording `voxtox forget` erased."""


@dataclass(frozen=True)
class ReviewsWritten:
    new: int  # clips reviewed for the first time
    changed: int  # clips whose review this import replaced
    unchanged: int  # clips whose review was already exactly this


def reviews_path(shards_root: Path) -> Path:
    return shards_root / REVIEWS_TABLE / REVIEWS_FILE


def read_reviews(shards_root: Path) -> pa.Table:
    """Every review (an empty table when there is none)."""
    path = reviews_path(shards_root)
    with shards_lock(shards_root):
        if not path.exists():
            return REVIEWS_SCHEMA.empty_table()
        return pq.read_table(path, schema=REVIEWS_SCHEMA)


def reviewed_clip_ids(shards_root: Path) -> set[str]:
    return set(read_reviews(shards_root)["clip_id"].to_pylist())


def _same(old: dict[str, object], new: dict[str, object]) -> bool:
    return all(old[k] == new[k] for k in new if k not in _STAMP_COLUMNS)


def write_reviews(shards_root: Path, rows: list[dict[str, object]]) -> ReviewsWritten:
    """Add or replace the reviews of `rows`' clips (rows in REVIEWS_SCHEMA). All or nothing: a
    row of a recording forgotten meanwhile fails the whole write, naming its clip."""
    with shards_lock(shards_root, exclusive=True):
        forgotten = forgotten_sha256s(tombstones_file(shards_root))
        for row in rows:
            if row["source_sha256"] in forgotten:
                raise ForgottenClipError(f"clip {row['clip_id']}: its recording was forgotten (`voxtox forget`)")
        existing = {row["clip_id"]: row for row in read_reviews(shards_root).to_pylist()}
        new = changed = unchanged = 0
        for row in rows:
            old = existing.get(row["clip_id"])
            if old is None:
                new += 1
            elif _same(old, row):
                unchanged += 1
                continue
            else:
                changed += 1
            existing[row["clip_id"]] = row
        if new or changed:
            table = pa.Table.from_pylist(sorted(existing.values(), key=lambda r: r["clip_id"]), REVIEWS_SCHEMA)
            write_parquet_atomic(table, reviews_path(shards_root))
    return ReviewsWritten(new, changed, unchanged)


def write_reviews_in(settings: Settings, rows: list[dict[str, object]]) -> ReviewsWritten:
    """`write_reviews` into the store `settings` name: the data dir's shards, or the lake."""
    target = lake.target_of(settings.storage.catalog_url, settings.storage.data_url)
    if target is None:
        return write_reviews(settings.shards_dir, rows)
    return write_reviews_to_lake(target, rows)


def write_reviews_to_lake(target: LakeTarget, rows: list[dict[str, object]]) -> ReviewsWritten:
    """Add or replace the reviews of `rows`' clips in the lake's `reviews` table, as
    `write_reviews` does for the shards: one commit, all or nothing, none when a recording was
    forgotten (checked inside the commit: ForgottenClipError names its clip)."""
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
