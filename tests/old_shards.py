"""The single-machine layout earlier versions of voxtox wrote (`<data_dir>/shards`), made by hand:
what `voxtox migrate` reads (storage/migrate.py) and what tests of an old data dir start from.
voxtox itself no longer writes it (issue 28: the embedded lake replaced it).

A table is hive folders of Parquet files: `clips/split=train/lang=en/date=2026-01-01/part-<key>.parquet`,
one file per source key and partition; a compacted file `compact-<id>.parquet` holds several keys,
listed with their row counts in its footer (`voxtox.shard_keys`), in row order."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxtox.storage.schema import PARTITIONS, REVIEWS_SCHEMA, stored_partition_columns

KEYS_METADATA = b"voxtox.shard_keys"


def write_partitioned(root: Path, name: str, table: pa.Table, key: str) -> list[Path]:
    """One `part-<key>.parquet` per partition of `table`; the partition columns become folders
    (and leave the file, except those the table also stores inside it)."""
    columns = PARTITIONS[name]
    dropped = [c for c in columns if c not in stored_partition_columns(name)]
    written = []
    for values in table.select(list(columns)).group_by(list(columns)).aggregate([]).to_pylist() if columns else [{}]:
        mask = pa.array([True] * table.num_rows)
        for column, value in values.items():
            mask = pc.and_(mask, pc.equal(table[column], value))
        directory = root / name
        for column in columns:
            directory /= f"{column}={values[column]}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{key}.parquet"
        pq.write_table(table.filter(mask).drop_columns(dropped), path)
        written.append(path)
    return written


def replace_source(root: Path, key: str, clips: pa.Table, rejects: pa.Table, source: pa.Table) -> None:
    """What a label run wrote for one source: its clips, its rejects, its `sources` row."""
    for name, table in (("clips", clips), ("rejects", rejects), ("sources", source)):
        if table.num_rows:
            write_partitioned(root, name, table, key)


def replace_human_labels(root: Path, sha256: str, labels: pa.Table) -> None:
    write_partitioned(root, "human_labels", labels, sha256[:24])


def write_reviews(root: Path, rows: list[dict[str, object]]) -> None:
    """The reviews: one file for every clip's review."""
    (root / "reviews").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, REVIEWS_SCHEMA), root / "reviews" / "part-reviews.parquet")


def compact(root: Path) -> None:
    """Each partition's part files merged into one compacted file whose footer lists their keys."""
    for directory in sorted({p.parent for p in root.rglob("part-*.parquet")}):
        parts = sorted(directory.glob("part-*.parquet"))
        if len(parts) < 2:
            continue
        tables = [pq.read_table(p) for p in parts]
        merged = pa.concat_tables(tables, promote_options="default")
        keys = [[p.name.removeprefix("part-").removesuffix(".parquet"), t.num_rows] for p, t in zip(parts, tables, strict=True)]
        metadata = (merged.schema.metadata or {}) | {KEYS_METADATA: json.dumps(keys).encode()}
        pq.write_table(merged.replace_schema_metadata(metadata), directory / f"compact-{uuid.uuid4().hex}.parquet")
        for part in parts:
            part.unlink()


def query(root: Path, sql: str) -> pa.Table:
    """`sql` over views of the shards' tables (their folders' values as columns)."""
    with duckdb.connect() as con:
        for name, columns in PARTITIONS.items():
            if not (root / name).is_dir():
                continue
            hive = "true" if columns else "false"
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{root / name}/**/*.parquet', "
                        f"hive_partitioning = {hive}, union_by_name = true)")
        return con.sql(sql).to_arrow_table()
