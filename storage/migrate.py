"""`voxtox migrate`: a data dir's single-machine shards (storage/shards.py) moved into a lake
(storage/lake.py), table by table, and the check that tells a user to do it.

Each row goes in with the key the shards name it by (`shard_key`: a source's content-hash
prefix, a rejected input's key), and the partition values of its folders as columns (`split`,
`lang`, `date`), as the labelling flow writes a lake. Keys go in batches, each one commit holding
every row of its keys, so a migration killed midway leaves whole keys only. A key the lake
already holds keeps its rows (migrated before, or labelled into the lake since): a rerun adds
nothing. `sources` goes last, as in the shards (its row means "done"): a label run meanwhile
relabels a source whose clips are in but whose `sources` row is not yet, replacing them whole.

The shards stay where they are: nothing reads them once `[storage]` names the lake, and they are
the way back. Without `[storage]` the lake is the embedded one under the data dir
(`<data_dir>/lake/catalog.sqlite`, data in `<data_dir>/lake/data/`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.storage import lake
from voxtox.storage.lake import KEY_COLUMN, LakeTarget
from voxtox.storage.schema import PARTITIONS
from voxtox.storage.shards import READ_ERRORS, damaged, first_shard, key_rows, shard_files, shards_lock
from voxtox.storage.tombstones import read_tombstones, tombstones_file

#: About this many bytes of Parquet per commit (a key's rows are never split across commits).
BATCH_BYTES = 64 << 20
#: The order tables go in: `sources` last (its row means a recording is done).
ORDER = ("clips", "rejects", "human_labels", "evaluations", "reviews", "sources")


@dataclass(frozen=True)
class Piece:
    """The rows of one key in one shard file: `rows` rows from row `offset`."""

    path: Path
    offset: int
    rows: int


@dataclass(frozen=True)
class TableMigration:
    """What migrating one table did."""

    table: str
    shard_rows: int
    added: int
    keys: int
    keys_kept: int  # keys the lake already held: their rows left as they are


def key_index(root: Path, name: str) -> dict[str, list[Piece]]:
    """Every key of table `name` and where its rows are, from file names and footers only; a
    damaged file raises DamagedShardError naming it (before anything is written)."""
    index: dict[str, list[Piece]] = {}
    for path in shard_files(root, name):
        offset = 0
        for key, rows in key_rows(path):
            index.setdefault(key, []).append(Piece(path, offset, rows))
            offset += rows
    return index


def table_schema(root: Path, name: str) -> pa.Schema:
    """The columns of all of table `name`'s files (a column only newer files have is null in older
    ones), then each partition column the files do not hold, as text (as the labelling flow writes
    them to a lake)."""
    schemas = []
    for path in shard_files(root, name):
        try:
            schemas.append(pq.read_schema(path).remove_metadata())
        except READ_ERRORS as error:
            raise damaged(path, error) from error
    schema = pa.unify_schemas(schemas)
    for column in PARTITIONS[name]:
        if column not in schema.names:
            schema = schema.append(pa.field(column, pa.string()))
    return schema


def _folder_values(root: Path, path: Path) -> dict[str, str]:
    """A shard's partition values, from its folder names (`split=train/lang=en/...`)."""
    return dict(part.split("=", 1) for part in path.parent.relative_to(root).parts[1:] if "=" in part)


def _conform(rows: pa.Table, schema: pa.Schema, values: dict[str, str]) -> pa.Table:
    """`rows` with `schema`'s columns: a column a file lacks is its folder's value, else null."""
    columns = []
    for field in schema:
        if field.name in rows.column_names:
            columns.append(rows[field.name].cast(field.type))
        elif field.name in values:
            columns.append(pa.array([values[field.name]] * rows.num_rows, pa.string()).cast(field.type))
        else:
            columns.append(pa.nulls(rows.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class _Files:
    """Shard files read whole, the last few kept: a compacted file holds many keys in a row."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.tables: dict[Path, pa.Table] = {}

    def read(self, path: Path) -> pa.Table:
        if path not in self.tables:
            try:
                with pq.ParquetFile(path) as handle:  # the file alone: no folder names read as columns
                    table = handle.read()
            except READ_ERRORS as error:
                raise damaged(path, error) from error
            if len(self.tables) >= self.keep:
                del self.tables[next(iter(self.tables))]
            self.tables[path] = table
        return self.tables[path]


def batches(root: Path, name: str, index: dict[str, list[Piece]], schema: pa.Schema,
            batch_bytes: int | None = None) -> Iterator[pa.Table]:
    """Table `name`'s rows with their `shard_key`, in tables of whole keys of about `batch_bytes`
    (default BATCH_BYTES)."""
    batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
    files = _Files()
    sizes = {path: (path.stat().st_size, max(pq.read_metadata(path).num_rows, 1))
             for path in {piece.path for pieces in index.values() for piece in pieces}}
    pending: list[pa.Table] = []
    size = 0.0
    for key, pieces in index.items():
        for piece in pieces:
            rows = files.read(piece.path).slice(piece.offset, piece.rows)
            rows = _conform(rows, schema, _folder_values(root, piece.path))
            pending.append(rows.append_column(KEY_COLUMN, _row_keys(name, key, rows)))
            file_bytes, file_rows = sizes[piece.path]
            size += file_bytes * piece.rows / file_rows
        if size >= batch_bytes:
            yield pa.concat_tables(pending)
            pending, size = [], 0.0
    if pending:
        yield pa.concat_tables(pending)


def _row_keys(name: str, key: str, rows: pa.Table) -> pa.Array:
    """Each row's `shard_key` in the lake: the shards' key, except for reviews. The shards hold
    every review in one file, while a lake keys each review by its clip (storage/reviews.py
    replaces a clip's review by that key), so a review imported after the migration replaces the
    migrated one instead of standing beside it."""
    if name == "reviews":
        return rows["clip_id"].combine_chunks().cast(pa.string())
    return pa.array([key] * rows.num_rows, pa.string())


def migrate_table(con: duckdb.DuckDBPyConnection, target: LakeTarget, root: Path, name: str,
                  index: dict[str, list[Piece]]) -> TableMigration:
    """Move table `name`'s shards (`index`: its keys and where their rows are) into the lake:
    the keys it does not hold yet."""
    kept = _keys_held(con, name, index.keys())
    todo = {key: pieces for key, pieces in index.items() if key not in kept}
    added = 0
    if todo:
        schema = table_schema(root, name)
        for batch in batches(root, name, todo, schema):
            added += lake.add_missing_keys(con, target, name, batch)
    shard_rows = sum(piece.rows for pieces in index.values() for piece in pieces)
    return TableMigration(name, shard_rows, added, len(index), len(kept))


def _keys_held(con: duckdb.DuckDBPyConnection, name: str, keys: Iterable[str]) -> set[str]:
    if name not in lake.tables(con):
        return set()
    return {key for (key,) in con.execute(f"SELECT DISTINCT {KEY_COLUMN} FROM {lake.ALIAS}.{name} "
                                          f"WHERE {KEY_COLUMN} IN (SELECT unnest(?))", [sorted(keys)]).fetchall()}


def migrate_tombstones(con: duckdb.DuckDBPyConnection, target: LakeTarget, root: Path) -> TableMigration:
    """The shards' tombstones (`tombstones.txt`) into the lake's `tombstones` table, which every
    label run on the lake reads: a recording forgotten before stays forgotten."""
    found = read_tombstones(tombstones_file(root))
    shas = sorted(found)
    rows = pa.table({KEY_COLUMN: pa.array(shas, pa.string()), "source_sha256": pa.array(shas, pa.string()),
                     "forgotten_on": pa.array([date.fromisoformat(found[s]) for s in shas], pa.date32())})
    added = lake.add_missing_keys(con, target, lake.TOMBSTONES, rows) if shas else 0
    return TableMigration(lake.TOMBSTONES, len(shas), added, len(shas), len(shas) - added)


def migrate(root: Path, target: LakeTarget) -> list[TableMigration]:
    """Every table of the shards under `root` into the lake `target`, tombstones first and
    `sources` last; under the shards' shared lock (no single-machine writer changes them meanwhile)."""
    with shards_lock(root), lake.connect(target) as con:
        # every footer first: a damaged file stops the migration before anything is written
        indexes = {name: key_index(root, name) for name in ORDER if first_shard(root, name) is not None}
        results = [migrate_tombstones(con, target, root)]
        results += [migrate_table(con, target, root, name, index) for name, index in indexes.items()]
    return results


def unmigrated(root: Path, con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the data dir's shards hold labelled recordings while the lake holds none: an old
    data dir opened with `[storage]` set (the lake would not see what was labelled before)."""
    return first_shard(root, "sources") is not None and lake.row_count(con, "sources") == 0


def migrate_hint(root: Path, target: LakeTarget) -> str:
    """The one line an old data dir gets from a command that reads or writes tables."""
    return (f"note: {root} holds recordings in the single-machine shards, which voxtox no longer reads, and the "
            f"lake {target.catalog_name()} holds none: move them in with `voxtox migrate` (docs/storage.md)")
