"""The DuckDB catalog of the lake (storage/lake.py): views named like voxtox's tables over the
lake's, for voxtox and for `voxtox query`.

Every query runs on a private in-memory DuckDB connection with the lake attached read-only, at
the latest snapshot or one pinned (time travel), so it sees whole commits while workers write.
Without `[storage]` the lake is the embedded one under the data dir (`lake.target_for`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from voxtox.labels import CLASSES
from voxtox.storage import lake
from voxtox.storage.lake import LakeError, LakeTarget
from voxtox.storage.schema import human_label_column, label_column
from voxtox.storage.workdir import run_work_dir

if TYPE_CHECKING:
    from voxtox.settings import Settings

#: A labelled span counts for a clip when they overlap by at least this share of the shorter
#: one: a whole utterance inside a 1-60 s segment counts, and so does either half of an
#: utterance the VAD cut in two; a span merely touching the clip's edge does not.
TRUTH_MIN_OVERLAP = 0.5

#: What DuckDB raises when a file cannot be read: a bad footer or page names the file
#: (InvalidInputException, IOException); a bad page header is a bare "TProtocolException: Invalid data".
READ_FAILURES = (duckdb.Error, duckdb.IOException, duckdb.InvalidInputException)

#: What `voxtox query` runs: statements that only read. Anything else (DROP, CREATE, ATTACH,
#: COPY ... TO, SET, INSTALL, ...) is refused before it runs.
READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

#: DuckDB refuses two connections altering the same view at once ("write-write conflict"), and a
#: read-only connection beside a writing one in the same process; parallel tasks of one flow
#: would do both. Catalog file work is short, so it goes one at a time per process.
_CATALOG_LOCK = threading.RLock()



def imported_truth_sql() -> str:
    """Each clip of a source with imported human labels (spans): a class is true when a span of
    it overlaps the clip enough."""
    overlap = "least(c.end_s, h.end_s) - greatest(c.start_s, h.start_s)"
    shorter = "least(c.end_s - c.start_s, h.end_s - h.start_s)"
    counts = f"{overlap} >= {TRUTH_MIN_OVERLAP} * {shorter}"
    labels = ", ".join(
        f"coalesce(bool_or(h.{label_column(name)}) FILTER (WHERE {counts}), false) AS {human_label_column(name)}"
        for name in CLASSES
    )
    return (
        f"SELECT c.clip_id, c.source_sha256, c.split, c.segment_kind, c.start_s, c.end_s, {labels}, "
        f"count(h.source_sha256) FILTER (WHERE {counts}) AS n_human_spans "
        "FROM clips c JOIN human_labels h USING (source_sha256) "
        "GROUP BY c.clip_id, c.source_sha256, c.split, c.segment_kind, c.start_s, c.end_s"
    )


def segment_truth_sql(imported: bool = True, reviewed: bool = False) -> str:
    """The `segment_truth` view: each clip with human labels, from imported spans (`human_labels`)
    and/or people's reviews of the clip itself (`reviews`, ties left out); a review overrides
    imported spans for its clip, being about exactly that clip."""
    view = "CREATE OR REPLACE VIEW segment_truth AS "
    if not reviewed:
        return view + f"SELECT *, false AS reviewed FROM ({imported_truth_sql()})"
    review_labels = ", ".join(f"{label_column(c)} AS {human_label_column(c)}" for c in CLASSES)
    parts = [f"reviewed AS (SELECT clip_id, {review_labels} FROM reviews WHERE status <> 'tie')"]
    if imported:
        parts.insert(0, f"imported AS ({imported_truth_sql()})")
    else:
        no_spans = ", ".join(f"NULL::BOOLEAN AS {human_label_column(c)}" for c in CLASSES)
        parts.insert(0, f"imported AS (SELECT NULL::VARCHAR AS clip_id, {no_spans}, 0 AS n_human_spans WHERE false)")
    labels = ", ".join(f"coalesce(r.{human_label_column(c)}, i.{human_label_column(c)}) AS {human_label_column(c)}"
                       for c in CLASSES)
    return view + (
        f"WITH {', '.join(parts)} "
        f"SELECT c.clip_id, c.source_sha256, c.split, c.segment_kind, c.start_s, c.end_s, {labels}, "
        "coalesce(i.n_human_spans, 0) AS n_human_spans, r.clip_id IS NOT NULL AS reviewed "
        "FROM clips c LEFT JOIN imported i ON i.clip_id = c.clip_id LEFT JOIN reviewed r ON r.clip_id = c.clip_id "
        "WHERE i.clip_id IS NOT NULL OR r.clip_id IS NOT NULL"
    )


class CatalogError(RuntimeError):
    """A query the catalog cannot answer, said in words a user can act on."""


class ReadOnlyError(CatalogError):
    """A statement `voxtox query` refuses to run because it would change something."""


def _tables_of(sql: str) -> set[str]:
    """The tables a statement reads (segment_truth reads two); empty when DuckDB cannot parse it."""
    try:
        tables = set(duckdb.get_table_names(sql))
    except duckdb.Error:
        return set()  # DuckDB says what is wrong with the SQL when it runs it
    return tables | ({"clips", "human_labels"} if "segment_truth" in tables else set())


class Catalog:
    """The lake's tables as views: `clips`, `rejects`, `sources`, … (and `segment_truth` where
    human labels or reviews exist). The data dir holds the work files (`locate_clips`)."""

    def __init__(self, target: LakeTarget, data_dir: Path, snapshot: int | None = None,
                 work_dir: Path | None = None) -> None:
        self.target = target
        self.data_dir = data_dir
        #: Read the lake as it was at this snapshot (time travel); None: the latest, per query.
        self.snapshot = snapshot
        #: Where local copies of clips' audio go while this process reads them (`locate_clips`).
        self.work_dir = work_dir or data_dir / "work"

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The catalog of the lake `settings` name (`lake.target_for`: `[storage]`'s, else the
        embedded lake under the data dir)."""
        return cls(lake.target_for(settings), settings.data_dir, settings.storage.snapshot, settings.work_dir)

    def present_tables(self) -> list[str]:
        with self.connect() as con:
            return lake.tables(con)

    def refresh_views(self) -> list[str]:
        """Nothing to refresh: the lake's tables are its views (other DuckDB clients ATTACH it)."""
        return self.present_tables()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory connection with the lake attached read-only (at `self.snapshot` when
        pinned) and a view per table, plus `segment_truth` where human labels or reviews exist.
        A snapshot the lake no longer has stays a LakeError (SnapshotGoneError): its own line."""
        try:
            if self.snapshot is None:
                con = lake.connect(self.target, read_only=True)
            else:
                con = lake.connect_at(self.target, self.snapshot)
        except lake.SnapshotGoneError:
            raise
        except LakeError as error:
            raise CatalogError(str(error)) from error
        try:
            with lake.lake_errors(self.target):
                present = lake.define_views(con)
                imported, reviewed = "human_labels" in present, "reviews" in present
                if "clips" in present and (imported or reviewed):
                    con.execute(segment_truth_sql(imported, reviewed))
            yield con
        finally:
            con.close()

    def has_table(self, name: str) -> bool:
        return name in self.present_tables()

    def current_snapshot(self) -> int:
        """The snapshot this catalog reads: its pinned one, else the lake's latest now."""
        if self.snapshot is not None:
            return self.snapshot
        with self.connect() as con:
            return lake.snapshot_id(con)

    def pinned(self, snapshot: int | None = None) -> Catalog:
        """This lake read at `snapshot` (default: the one this catalog reads now), so that many
        queries see the same data however many commits land meanwhile."""
        chosen = self.current_snapshot() if snapshot is None else snapshot
        pinned = Catalog(self.target, self.data_dir, chosen, self.work_dir)
        with pinned.connect():  # a snapshot that is gone fails here, in one line
            pass
        return pinned

    def locate_clips(self, chosen: str) -> pa.Table:
        """The rows of the SQL `chosen` (it selects `clip_id`) with where each clip's audio lies
        (`filename`, `file_row_number`), ordered by clip id, as storage/clips.py's locate_clips
        gives for shards. The audio is copied, at one snapshot, into a local Parquet file under
        this process's work directory (removed when it exits): DataLoader workers read it by row
        as they read a shard, and no training step waits on the object store."""
        pinned = self if self.snapshot is not None else self.pinned()
        key = hashlib.sha256(f"{self.target}|{chosen}".encode()).hexdigest()[:16]
        path = extract_dir(self.work_dir) / f"clips-{pinned.snapshot}-{key}.parquet"
        with pinned.connect() as con, lake.lake_errors(self.target):
            if not path.exists():
                temporary = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
                con.execute(f"COPY (SELECT clip_id, audio FROM clips WHERE clip_id IN (SELECT clip_id FROM ({chosen})) "
                            f"ORDER BY clip_id) TO '{temporary}' (FORMAT parquet, ROW_GROUP_SIZE {EXTRACT_ROW_GROUP})")
                os.replace(temporary, path)
            return con.sql(
                f"WITH chosen AS ({chosen}), located AS (SELECT clip_id, filename, file_row_number FROM "
                f"read_parquet('{path}', filename = true, file_row_number = true)) "
                "SELECT * FROM chosen JOIN located USING (clip_id) ORDER BY clip_id").to_arrow_table()

    def query(self, sql: str) -> pa.Table:
        """Run SQL over the lake's views; a statement in one transaction reads one snapshot."""
        with self.connect() as con:
            try:
                with lake.lake_errors(self.target):
                    return con.sql(sql).to_arrow_table()
            except duckdb.CatalogException as error:
                raise CatalogError(f"{error}\n(tables appear once data exists: run `voxtox label` first; "
                                   f"lake: {self.target.catalog_name()})") from error
            except (duckdb.ParserException, duckdb.BinderException) as error:
                raise CatalogError(f"{error}\n(the SQL is DuckDB's dialect)") from error
            except READ_FAILURES as error:
                self._name_damaged_files(con, sql, error)
                raise

    def _name_damaged_files(self, con: duckdb.DuckDBPyConnection, sql: str, error: duckdb.Error) -> None:
        """After DuckDB failed reading, one line naming the damaged data files of the tables `sql`
        reads (DuckDB names none for a file damaged mid-way) and the tables that still answer."""
        present = lake.tables(con)
        found = lake.damaged_files(con, _tables_of(sql) or set(present))
        if not found:
            return
        broken = {name for name in present if lake.damaged_files(con, [name])} if len(present) > 1 else set(present)
        named = "; ".join(f"{path} ({why})" for path, why in sorted(found.items()))
        unaffected = ", ".join(name for name in present if name not in broken) or "none"
        raise CatalogError(f"damaged data file of the lake, cannot be read: {named}; restore it from a backup "
                           f"(the other tables can be queried: {unaffected})") from error

    def read_only_query(self, sql: str) -> pa.Table:
        """Run one statement that only reads (what `voxtox query` answers); refuse anything else
        before it runs."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.ParserException as error:
            raise CatalogError(f"{error} (the SQL is DuckDB's dialect)") from error
        if len(statements) != 1:
            raise ReadOnlyError(f"give one SQL statement, not {len(statements)}")
        kind = statements[0].type
        if kind not in READ_ONLY_STATEMENTS:
            raise ReadOnlyError(
                f"voxtox query is read-only: {kind.name} statements are refused "
                "(SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN run; voxtox's commands change the data)"
            )
        return self.query(sql)

    def known_sources(self) -> set[str]:
        """The recordings labelled already (a damaged `sources` file: CatalogError naming it)."""
        if "sources" not in self.present_tables():
            return set()
        return set(self.query("SELECT DISTINCT source_sha256 FROM sources")["source_sha256"].to_pylist())

    def forgotten(self) -> set[str]:
        """The recordings `voxtox forget` erased from the lake (on any host)."""
        with self.connect() as con:
            return lake.forgotten(con)


#: The name the lake's catalog had while the single-machine shards were the default.
LakeCatalog = Catalog

#: Rows per row group of a local audio copy: a reader caches one group (storage/clips.py), so small.
EXTRACT_ROW_GROUP = 64
_EXTRACTS: dict[Path, Path] = {}
_EXTRACTS_CLOSE = ExitStack()
_EXTRACTS_PID = os.getpid()


def extract_dir(work_root: Path) -> Path:
    """This process's directory for local copies of lake audio: `<work>/lake-audio-<pid>-<n>/`,
    locked while the process lives and removed when it exits (a killed process's is removed by
    the next run's sweep, storage/workdir.py): copied audio must not outlive its reader, since a
    recording `voxtox forget` erases later would otherwise survive in it."""
    global _EXTRACTS_PID
    with _CATALOG_LOCK:
        if _EXTRACTS_PID != os.getpid():  # a forked child: the parent's copies are not its to remove
            _EXTRACTS.clear()
            _EXTRACTS_PID = os.getpid()
        if work_root not in _EXTRACTS:
            if not _EXTRACTS:
                atexit.register(_close_extracts, os.getpid())
            name = f"lake-audio-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            _EXTRACTS[work_root] = _EXTRACTS_CLOSE.enter_context(run_work_dir(work_root, name))
        return _EXTRACTS[work_root]


def _close_extracts(pid: int) -> None:
    if os.getpid() == pid:
        _EXTRACTS_CLOSE.close()
        _EXTRACTS.clear()
