"""Erasing rows from Parquet files that other rows share, atomically, beside readers and writers.

A recording's rows may live in files that also hold other recordings' rows (compaction merges
them), so erasure never assumes one file per source: DuckDB reads the files to find which rows
match, and each file that holds any is rewritten without them (a hidden temporary file, then an
atomic rename; a file left with no rows is deleted). Readers see the old file or the new one,
never a partial one; a reader that opened the old file keeps reading it until it closes it.

`shards_lock` (storage/shards.py) serialises this against writers and readers: shard writers,
compaction, `voxtox forget` and retention hold it exclusively while they change files, voxtox's
readers hold it shared, so a file cannot change between finding its rows and rewriting it, and
a label run that decoded a recording before it was forgotten cannot write it back afterwards
(it checks the tombstones under the lock). `fcntl.flock` locks work between processes of one host; on a shared network
file system (Dask workers on several hosts) they are only as good as that file system's locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxtox.storage.parquet import write_parquet_atomic
from voxtox.storage.shards import metadata_without_rows, shards_lock

__all__ = ["shards_lock"]  # where forget, retention and the writers take it from

#: A SQL condition over a group of files' columns with its `?` parameters, or None when those
#: columns cannot hold a matching row.
Condition = tuple[str, list[object]] | None


@dataclass(frozen=True)
class RecordingRows:
    """Rows that belong to some recordings: their content hash in `source_sha256`; their URI in
    `source_uri` where the row has no hash (an input that could not be read at all); their clip
    ids in `clip_id` (tables keyed by clip only, like cached window scores)."""

    sha256s: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    clip_ids: frozenset[str] = frozenset()

    def condition(self, columns: set[str]) -> Condition:
        terms: list[str] = []
        params: list[object] = []
        if "source_sha256" in columns and self.sha256s:
            terms.append("list_contains(?, source_sha256)")
            params.append(sorted(self.sha256s))
        if "source_uri" in columns and self.uris:
            no_hash = "source_sha256 IS NULL AND " if "source_sha256" in columns else ""
            terms.append(f"({no_hash}list_contains(?, source_uri))")
            params.append(sorted(self.uris))
        if "clip_id" in columns and self.clip_ids:
            terms.append("list_contains(?, clip_id)")
            params.append(sorted(self.clip_ids))
        return (" OR ".join(terms), params) if terms else None


@dataclass
class Rewritten:
    """What a rewrite changed: rows touched per file, the files rewritten and those deleted."""

    rows: dict[str, int] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return sum(self.rows.values())

    def merge(self, other: Rewritten) -> None:
        self.rows |= other.rows
        self.rewritten += other.rewritten
        self.deleted += other.deleted


def matching_rows(files: list[Path], condition: Callable[[set[str]], Condition]) -> dict[Path, list[int]]:
    """Per file, the numbers of its rows that satisfy the condition (files without any left out)."""
    if not files:
        return {}
    source = "read_parquet(?, filename = true, file_row_number = true, union_by_name = true, hive_partitioning = false)"
    paths = [str(f) for f in files]
    with duckdb.connect() as con:
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}", [paths]).fetchall()}
        where = condition(columns)
        if where is None:
            return {}
        sql, params = where
        found = con.execute(
            f"SELECT filename, list(file_row_number ORDER BY file_row_number) FROM {source} "
            f"WHERE {sql} GROUP BY filename",
            [paths, *params],
        ).fetchall()
    return {Path(name): [int(r) for r in rows] for name, rows in found}


def _row_mask(n_rows: int, rows: list[int]) -> pa.Array:
    chosen = [False] * n_rows
    for row in rows:
        chosen[row] = True
    return pa.array(chosen, pa.bool_())


def rewrite_parquet(path: Path, rows: list[int], edit: Callable[[pa.Table, pa.Array], pa.Table]) -> Rewritten:
    """Rewrite one file as `edit(table, mask of rows)`, keeping its schema metadata (the schema
    version, a cache key); delete it when no row is left. The caller holds `shards_lock`."""
    with pq.ParquetFile(path) as handle:  # the file alone: no partition columns from its path
        table = handle.read()
    mask = _row_mask(table.num_rows, rows)
    edited = edit(table, mask)
    done = Rewritten(rows={str(path): len(rows)})
    if edited.num_rows == 0:
        path.unlink()
        done.deleted.append(str(path))
    else:
        metadata = table.schema.metadata
        if edited.num_rows != table.num_rows:  # a compacted file's key ranges shrink with the rows
            metadata = metadata_without_rows(metadata, mask)
        write_parquet_atomic(edited.replace_schema_metadata(metadata), path)
        done.rewritten.append(str(path))
    return done


def drop_rows(table: pa.Table, mask: pa.Array) -> pa.Table:
    return table.filter(pc.invert(mask))


def erase_rows(files: list[Path], rows: RecordingRows) -> Rewritten:
    """Rewrite every file among `files` that holds rows of the recordings, without those rows.
    The caller holds `shards_lock` exclusively."""
    done = Rewritten()
    for path, numbers in matching_rows(files, rows.condition).items():
        done.merge(rewrite_parquet(path, numbers, drop_rows))
    return done
