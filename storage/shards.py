"""Atomic, idempotent Parquet shards.

Every file is written under a hidden temporary name and renamed into place, so a reader (DuckDB's
`*.parquet` globs) never sees a partial file. Shard names carry the source's content hash, and a
source's shards are replaced as a unit, with its `sources` row written last: a crash at any point
leaves the source unmarked, and the next run redoes it without duplicating rows.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxtox.storage.schema import PARTITIONS

COMPRESSION = "zstd"


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` (zstd) via a hidden temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as handle:
            pq.write_table(table, handle, compression=COMPRESSION)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def shard_name(source_key: str) -> str:
    return f"part-{source_key}.parquet"


def _partition_values(table: pa.Table, columns: tuple[str, ...]) -> list[dict[str, str]]:
    combos = table.select(list(columns)).group_by(list(columns)).aggregate([])
    return combos.to_pylist()


def write_partitioned(root: Path, name: str, table: pa.Table, source_key: str) -> list[Path]:
    """Write one shard per partition of `table` for one source; partition columns become dirs."""
    columns = PARTITIONS[name]
    written = []
    for values in _partition_values(table, columns):
        mask = None
        for column, value in values.items():
            condition = pc.equal(table[column], value)
            mask = condition if mask is None else pc.and_(mask, condition)
        part = table.filter(mask).drop_columns(list(columns))
        directory = root / name
        for column in columns:
            directory /= f"{column}={values[column]}"
        written.append(write_parquet_atomic(part, directory / shard_name(source_key)))
    return written


def remove_source(root: Path, name: str, source_key: str) -> int:
    """Delete every shard of one source in one table (all partitions); returns how many."""
    removed = 0
    for path in (root / name).glob(f"**/{shard_name(source_key)}"):
        path.unlink()
        removed += 1
    return removed


def replace_source(
    root: Path, source_key: str, clips: pa.Table, rejects: pa.Table, source: pa.Table
) -> list[Path]:
    """Replace everything one source contributed; the `sources` row goes last (it means done)."""
    for name in ("sources", "clips", "rejects"):
        remove_source(root, name, source_key)
    written = []
    if clips.num_rows:
        written += write_partitioned(root, "clips", clips, source_key)
    if rejects.num_rows:
        written += write_partitioned(root, "rejects", rejects, source_key)
    written += write_partitioned(root, "sources", source, source_key)
    return written


def shard_files(root: Path, name: str) -> list[Path]:
    return sorted((root / name).glob("**/*.parquet"))


def replace_human_labels(root: Path, source_sha256: str, labels: pa.Table) -> list[Path]:
    """Replace one source's human labels (rows in HUMAN_LABELS_SCHEMA plus `date`): importing
    the same labels again never duplicates them, and a corrected import supersedes the old one."""
    key = source_sha256[:24]
    remove_source(root, "human_labels", key)
    return write_partitioned(root, "human_labels", labels, key) if labels.num_rows else []
