"""Duplicate rows healed by id: whatever left two rows with one id (a kill in a version before
compactions were journalled, a damaged file restored from a backup after its source was labelled
again), compaction keeps one copy, so duplicates never outlive the next compaction.

A clip is its `clip_id` (a content hash of the source and span) and a source its
`source_sha256`; of two rows with one id, the one labelled last stays (the later run's result).
The others are erased from their files by the rewrite erasure uses (storage/erasure.py).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from voxtox.storage.erasure import drop_rows, rewrite_parquet
from voxtox.storage.shards import DamagedShardError, shard_files, shards_lock, unreadable_files

#: The column that identifies a row, per table that has one.
ROW_IDS = {"clips": "clip_id", "sources": "source_sha256"}


def duplicate_rows(files: list[Path], key: str) -> dict[Path, list[int]]:
    """Per file, the numbers of its rows that repeat an id held elsewhere too: every copy but the
    one labelled last (then the last by file name and row, so the choice is stable)."""
    if not files:
        return {}
    source = "read_parquet(?, filename = true, file_row_number = true, union_by_name = true, hive_partitioning = false)"
    try:
        with duckdb.connect() as con:
            found = con.execute(
                f"SELECT filename, list(file_row_number ORDER BY file_row_number) FROM ("
                f"  SELECT filename, file_row_number, row_number() OVER (PARTITION BY {key} "
                f"    ORDER BY labelled_at DESC NULLS LAST, filename DESC, file_row_number DESC) AS copy "
                f"  FROM {source}) WHERE copy > 1 GROUP BY filename",
                [[str(f) for f in files]],
            ).fetchall()
    except duckdb.Error as error:  # a damaged file: name it (DuckDB may not)
        broken = unreadable_files(files, [key, "labelled_at"])
        if broken:
            raise DamagedShardError(broken) from error
        raise
    return {Path(name): [int(r) for r in rows] for name, rows in found}


def heal_duplicates(root: Path, tables: list[str] | None = None) -> dict[str, int]:
    """Drop the extra copies of every id in the tables that have ids; returns rows dropped per table."""
    dropped: dict[str, int] = {}
    with shards_lock(root, exclusive=True):
        for name, key in ROW_IDS.items():
            if tables is not None and name not in tables:
                continue
            for path, rows in duplicate_rows(shard_files(root, name), key).items():
                rewrite_parquet(path, rows, drop_rows)
                dropped[name] = dropped.get(name, 0) + len(rows)
    return dropped
