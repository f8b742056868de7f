"""The DuckDB catalog: a database file whose views read the Parquet shards.

Views are globs over the shard directories, so any DuckDB client that opens the catalog sees
new shards without a rebuild. A table that has no shard yet has no view; `refresh_views` adds
it once its first shard exists (the labelling flow calls it at the end of every run).
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa

from voxtox.labels import CLASSES
from voxtox.storage.schema import PARTITIONS, human_label_column, label_column
from voxtox.storage.shards import shard_files

HIVE_TYPES = {"split": "VARCHAR", "lang": "VARCHAR", "date": "DATE"}

#: A labelled span counts for a clip when they overlap by at least this share of the shorter
#: one: a whole utterance inside a 1-60 s segment counts, and so does either half of an
#: utterance the VAD cut in two; a span merely touching the clip's edge does not.
TRUTH_MIN_OVERLAP = 0.5

#: DuckDB refuses two connections altering the same view at once ("write-write conflict"), and a
#: read-only connection beside a writing one in the same process; parallel tasks of one flow
#: would do both. Catalog work is short, so it goes one at a time per process.
_CATALOG_LOCK = threading.RLock()


def segment_truth_sql() -> str:
    """The `segment_truth` view: each clip of a human-labelled source with its true labels."""
    overlap = "least(c.end_s, h.end_s) - greatest(c.start_s, h.start_s)"
    shorter = "least(c.end_s - c.start_s, h.end_s - h.start_s)"
    counts = f"{overlap} >= {TRUTH_MIN_OVERLAP} * {shorter}"
    labels = ", ".join(
        f"coalesce(bool_or(h.{label_column(name)}) FILTER (WHERE {counts}), false) AS {human_label_column(name)}"
        for name in CLASSES
    )
    return (
        "CREATE OR REPLACE VIEW segment_truth AS "
        f"SELECT c.clip_id, c.source_sha256, c.split, c.segment_kind, c.start_s, c.end_s, {labels}, "
        f"count(h.source_sha256) FILTER (WHERE {counts}) AS n_human_spans "
        "FROM clips c JOIN human_labels h USING (source_sha256) "
        "GROUP BY c.clip_id, c.source_sha256, c.split, c.segment_kind, c.start_s, c.end_s"
    )


class CatalogError(RuntimeError):
    """A query the catalog cannot answer, said in words a user can act on."""


class Catalog:
    def __init__(self, database: Path, shards_root: Path) -> None:
        self.database = database
        self.shards_root = shards_root

    def _view_sql(self, name: str) -> str:
        pattern = (self.shards_root.resolve() / name / "**" / "*.parquet").as_posix()
        types = {c: HIVE_TYPES[c] for c in PARTITIONS[name]}
        hive_types = "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"
        return (
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', "
            f"hive_partitioning = true, union_by_name = true, hive_types = {hive_types})"
        )

    def refresh_views(self) -> list[str]:
        """(Re)create a view for every table that has shards; returns their names."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        present = [name for name in PARTITIONS if shard_files(self.shards_root, name)]
        with _CATALOG_LOCK, duckdb.connect(str(self.database)) as con:
            for name in present:
                con.execute(self._view_sql(name))
            if {"clips", "human_labels"} <= set(present):
                con.execute(segment_truth_sql())
                present.append("segment_truth")
        return present

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        if not self.database.exists():
            self.refresh_views()
        return duckdb.connect(str(self.database), read_only=read_only)

    def query(self, sql: str) -> pa.Table:
        with _CATALOG_LOCK, self.connect() as con:
            try:
                return con.execute(sql).to_arrow_table()
            except duckdb.CatalogException as error:
                raise CatalogError(
                    f"{error}\n(tables appear once data exists: run `voxtox label` first; "
                    f"catalog: {self.database})"
                ) from error
            except (duckdb.ParserException, duckdb.BinderException) as error:
                raise CatalogError(f"{error}\n(the SQL is DuckDB's dialect; catalog: {self.database})") from error

    def known_sources(self) -> set[str]:
        """Content hashes of sources that finished labelling (their `sources` row exists)."""
        files = shard_files(self.shards_root, "sources")
        if not files:
            return set()
        with duckdb.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT source_sha256 FROM read_parquet(?)", [[str(f) for f in files]]
            ).fetchall()
        return {row[0] for row in rows}
