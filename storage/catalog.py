"""The DuckDB catalog: views over the Parquet shards, for voxtox and for any DuckDB client.

Views are globs over the shard directories, so a reader sees new shards without a rebuild. The
globs are relative to the data dir (`shards/clips/**/*.parquet`): a copied or moved data dir reads
its own shards, never the original's. DuckDB resolves a relative path against its working
directory or its `file_search_path` setting, so other clients open the catalog file from the data
dir (`cd voxtox-data && duckdb catalog.duckdb`) or set `file_search_path` to it.

voxtox itself never opens the catalog file to read: every query runs on a private in-memory
DuckDB connection that defines the same views, under the shards' shared lock
(storage/shards.py). So a query works while another process holds the catalog file open, and it
sees a table before or after a compaction or a source's replacement, never half of one. The file
is (re)written by `refresh_views` for the other clients; a table that has no shard yet has no view.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.files import is_disk_full
from voxtox.labels import CLASSES
from voxtox.storage import lake
from voxtox.storage.dataset_card import write_dataset_card
from voxtox.storage.lake import LakeError, LakeTarget
from voxtox.storage.schema import PARTITIONS, human_label_column, label_column
from voxtox.storage.shards import (
    READ_ERRORS,
    SUFFIX,
    DamagedShardError,
    damaged,
    first_shard,
    shard_files,
    shards_lock,
    unreadable_files,
)
from voxtox.storage.workdir import run_work_dir

if TYPE_CHECKING:
    from voxtox.settings import Settings

logger = logging.getLogger(__name__)

HIVE_TYPES = {"split": "VARCHAR", "lang": "VARCHAR", "date": "DATE"}

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

#: Beside each table's shards: every file's schema fingerprint, keyed by name and stamped with its
#: inode, size and mtime, so that a reader re-reads only the footers of files new or changed since.
SCHEMA_CACHE = ".voxtox-schemas.json"


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


class Catalog:
    def __init__(self, database: Path, shards_root: Path) -> None:
        self.database = database
        self.shards_root = shards_root
        #: Tables left without a view the last time views were defined: table -> {file: why}.
        self.damaged: dict[str, dict[Path, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        """The catalog of the lake `settings` name (`lake.target_for`: `[storage]`'s, else the
        embedded lake under the data dir): LakeCatalog below."""
        local = cls(settings.catalog_path, settings.shards_dir)
        return LakeCatalog(lake.target_for(settings), local, settings.storage.snapshot, settings.work_dir)

    @property
    def base(self) -> Path:
        """The directory the views' globs are relative to: the data dir, where the catalog lives."""
        return self.database.parent

    def _config(self) -> dict[str, str]:
        """Relative globs resolve against the data dir, whatever this process's working directory."""
        return {"file_search_path": str(self.base.resolve())}

    def present_tables(self) -> list[str]:
        return [name for name in PARTITIONS if first_shard(self.shards_root, name) is not None]

    def view_sql(self, name: str, union_by_name: bool = True) -> str:
        """The view of table `name`. `union_by_name` reads files of different schemas together
        (a column added by a later version is null in older files) at the price of reading every
        file's footer when the view is bound; without it DuckDB takes the first file's columns
        for all, so it may be off only when every file has the same schema."""
        relative = Path(os.path.relpath(self.shards_root / name, self.base))
        pattern = (relative / "**" / f"*{SUFFIX}").as_posix()
        types = {c: HIVE_TYPES[c] for c in PARTITIONS[name]}
        hive_types = "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"
        hive = f"hive_partitioning = true, hive_types = {hive_types}" if types else "hive_partitioning = false"
        return (
            f"CREATE OR REPLACE VIEW {name} AS SELECT *{self._fixed_size_lists(name)} FROM read_parquet('{pattern}', "
            f"union_by_name = {str(union_by_name).lower()}, {hive})"
        )

    def _fixed_size_lists(self, name: str) -> str:
        """Parquet has no fixed-size list, so DuckDB reads an embedding as FLOAT[]; the view casts
        it back to the FLOAT[n] the writer declared (in the file's Arrow schema), which
        `array_cosine_similarity` and friends take as they are."""
        first = first_shard(self.shards_root, name)
        if first is None:
            return ""
        casts = [
            f"{field.name}::FLOAT[{field.type.list_size}] AS {field.name}"
            for field in pq.read_schema(first)
            if pa.types.is_fixed_size_list(field.type) and pa.types.is_float32(field.type.value_type)
        ]
        return f" REPLACE ({', '.join(casts)})" if casts else ""

    def _define_views(self, con: duckdb.DuckDBPyConnection, check_schemas: bool = False) -> list[str]:
        """Define the views on `con`. With `check_schemas` (a private connection, under the
        shards' lock: nothing can swap files until it closes), a table whose files all share one
        schema is read without `union_by_name`; the catalog file's views, read later by other
        clients while files come and go, always union by name. A table with a damaged file gets
        no view (it is in `self.damaged`): the others can still be queried."""
        present, self.damaged = [], {}
        for name in self.present_tables():
            scan = scan_schemas(self.shards_root / name)
            if scan.damaged:
                self.damaged[name] = scan.damaged
                continue
            present.append(name)
            mixed = not check_schemas or not scan.uniform
            if mixed:
                # union_by_name reads every file's footer when a view is defined and again when a
                # query expands it; the cache makes the second read free. (Without union_by_name
                # the cache only costs time: docs/benchmarks.md, "The labelled data at scale".)
                con.execute("SET parquet_metadata_cache = true")
            con.execute(self.view_sql(name, union_by_name=mixed))
        imported, reviewed = "human_labels" in present, "reviews" in present
        if "clips" in present and (imported or reviewed):
            con.execute(segment_truth_sql(imported, reviewed))
            present.append("segment_truth")
        return present

    def refresh_views(self) -> list[str]:
        """(Re)write the catalog file's views for other DuckDB clients, and the clips' dataset card
        for Hugging Face `datasets`; returns the view names. Another process holding the catalog
        file only costs a warning: voxtox's own queries do not read it."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        write_dataset_card(self.shards_root)
        try:
            with _CATALOG_LOCK, shards_lock(self.shards_root), self._open_for_writing() as con:
                return self._define_views(con)
        except duckdb.IOException as error:
            if not _held_elsewhere(error):
                raise
            logger.warning("catalog %s not refreshed (%s); voxtox's queries do not need it", self.database, error)
            return self.present_tables()

    def _open_for_writing(self) -> duckdb.DuckDBPyConnection:
        """The catalog file, opened to write. A file DuckDB cannot open (garbage, truncated, a
        checksum that does not match) holds nothing but views derived from the shards: it is
        set aside (`catalog.duckdb.damaged`, replacing an older one) and a new one is made."""
        try:
            return duckdb.connect(str(self.database), config=self._config())
        except duckdb.Error as error:
            if _held_elsewhere(error) or is_disk_full(error) or "Permission denied" in str(error):
                raise  # the file may be sound: only one that cannot be read as a catalog is set aside
            aside = self.database.with_name(f"{self.database.name}.damaged")
            os.replace(self.database, aside)
            Path(f"{self.database}.wal").unlink(missing_ok=True)  # a log of the damaged file's changes
            logger.warning("catalog %s could not be opened (%s): set aside as %s, views rebuilt from the shards",
                           self.database, error, aside.name)
            return duckdb.connect(str(self.database), config=self._config())

    def repair(self) -> bool:
        """Rebuild the catalog file if DuckDB cannot open it (see `_open_for_writing`); True when
        it did. voxtox's own queries never read the file, but other DuckDB clients do."""
        if not self.database.exists():
            return False
        try:
            with _CATALOG_LOCK, duckdb.connect(str(self.database), read_only=True):
                return False
        except duckdb.Error as error:
            if _held_elsewhere(error):
                return False
        try:
            self.refresh_views()
        except (OSError, duckdb.Error) as error:  # a read-only copy of a data dir: read it as it is
            logger.warning("catalog %s is damaged and could not be rebuilt (%s)", self.database, error)
            return False
        return True

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A private in-memory connection with the views (resolved against the data dir), holding
        the shards' shared lock until it closes."""
        with shards_lock(self.shards_root), duckdb.connect(config=self._config()) as con:
            self._define_views(con, check_schemas=True)
            yield con

    def query(self, sql: str) -> pa.Table:
        """Run voxtox's own SQL (trusted) over the views."""
        with self.connect() as con:
            self._refuse_damaged(sql)
            try:
                return con.sql(sql).to_arrow_table()
            except duckdb.CatalogException as error:
                if self.damaged:
                    raise CatalogError(f"{error}\n{self._damaged_error()}") from error
                raise CatalogError(
                    f"{error}\n(tables appear once data exists: run `voxtox label` first; "
                    f"data: {self.base})"
                ) from error
            except (duckdb.ParserException, duckdb.BinderException) as error:
                raise CatalogError(f"{error}\n(the SQL is DuckDB's dialect; data: {self.base})") from error
            except duckdb.Error as error:
                self._name_damaged_data(sql, error)
                raise

    def _damaged_error(self, tables: set[str] | None = None, found: dict[Path, str] | None = None) -> str:
        """One line: the damaged files (`found`, or those of `tables` found when views were
        defined) and the tables that can still be queried."""
        hit = found or {path: why for name, files in self.damaged.items() if tables is None or name in tables
                        for path, why in files.items()}
        broken = {path.relative_to(self.shards_root).parts[0] for path in hit} | set(self.damaged)
        unaffected = ", ".join(name for name in self.present_tables() if name not in broken)
        return f"{DamagedShardError(hit)} (the other tables can be queried: {unaffected or 'none'})"

    def _name_damaged_data(self, sql: str, error: duckdb.Error) -> None:
        """After DuckDB failed reading (a file damaged mid-way fails as "Invalid data", naming no
        file), read the files of the tables `sql` names to say which is damaged."""
        if type(error) not in READ_FAILURES:  # a conversion error, say: not worth reading every file
            return
        tables = _tables_of(sql) or set(self.present_tables())
        broken = unreadable_files(path for name in sorted(tables) for path in shard_files(self.shards_root, name))
        if broken:
            raise CatalogError(self._damaged_error(found=broken)) from error

    def _refuse_damaged(self, sql: str) -> None:
        """A statement that reads a table with a damaged file is refused, naming the file."""
        if not self.damaged:
            return
        tables = _tables_of(sql)
        if tables & self.damaged.keys():
            raise CatalogError(self._damaged_error(tables))

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

    def has_table(self, name: str) -> bool:
        """Whether table `name` holds any data yet."""
        return first_shard(self.shards_root, name) is not None

    def forgotten(self) -> set[str]:
        """Recordings erased that the catalog itself holds tombstones of: none here (the shards'
        tombstones are a file, storage/tombstones.py); a lake keeps them as a table."""
        return set()

    def known_sources(self) -> set[str]:
        """Content hashes of sources that finished labelling (their `sources` row exists)."""
        if first_shard(self.shards_root, "sources") is None:
            return set()
        return set(self.query("SELECT DISTINCT source_sha256 FROM sources")["source_sha256"].to_pylist())


def _held_elsewhere(error: duckdb.Error) -> bool:
    """Whether DuckDB could not open the catalog file because another process holds it."""
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def damaged_tables(shards_root: Path, tables: Iterable[str] | None = None) -> dict[str, dict[Path, str]]:
    """Per table (default: all) that has any, its shard files whose footer cannot be read (under
    the shared lock: no writer swaps files meanwhile)."""
    with shards_lock(shards_root):
        found = {name: scan_schemas(shards_root / name).damaged for name in tables or PARTITIONS}
    return {name: files for name, files in found.items() if files}


def _tables_of(sql: str) -> set[str]:
    """The tables a statement reads (segment_truth reads two); empty when DuckDB cannot parse it."""
    try:
        tables = set(duckdb.get_table_names(sql))
    except duckdb.Error:
        return set()  # DuckDB says what is wrong with the SQL when it runs it
    return tables | ({"clips", "human_labels"} if "segment_truth" in tables else set())


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def uniform_schema(table_dir: Path) -> bool:
    """Whether every shard under `table_dir` has the same columns of the same types (in any order:
    DuckDB matches columns by name)."""
    return scan_schemas(table_dir).uniform


@dataclass(frozen=True)
class SchemaScan:
    """The schemas of one table's shards: whether they are all alike, and the files whose footer
    cannot be read (path -> why)."""

    uniform: bool
    damaged: dict[Path, str]


def scan_schemas(table_dir: Path) -> SchemaScan:
    """Read the footers of `table_dir`'s shards: only those of files not in the directory's
    schema cache under the same stamp; the cache is rewritten when it changed (best effort: a
    read-only data dir just reads the footers each time). A damaged file is not cached."""
    cache_path = table_dir / SCHEMA_CACHE
    try:
        cached = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cached = {}
    current: dict[str, list] = {}
    unreadable: dict[Path, str] = {}
    for directory, _, names in os.walk(table_dir):  # os.walk: a third of pathlib's glob time here
        for name in names:
            if not name.endswith(SUFFIX):
                continue
            path = os.path.join(directory, name)
            stat = os.stat(path)
            stamp = [stat.st_ino, stat.st_size, stat.st_mtime_ns]
            key = os.path.relpath(path, table_dir)
            entry = cached.get(key)
            if entry and entry[0] == stamp:
                current[key] = entry
                continue
            try:
                current[key] = [stamp, _schema_fingerprint(path)]
            except DamagedShardError as error:
                unreadable |= error.damaged
    if current != cached:
        _write_schema_cache(cache_path, current)
    return SchemaScan(len({fingerprint for _, fingerprint in current.values()}) <= 1, unreadable)


def _schema_fingerprint(path: str) -> str:
    try:
        schema = pq.read_schema(path)
    except READ_ERRORS as error:
        raise damaged(Path(path), error) from error
    columns = sorted(f"{field.name}:{field.type}" for field in schema)
    return hashlib.sha256("\n".join(columns).encode()).hexdigest()[:16]


def _write_schema_cache(path: Path, entries: dict[str, list]) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        temporary.write_text(json.dumps(entries, separators=(",", ":")))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


# The catalog of a lake (storage/lake.py): what `voxtox query` and the labelling flow read when
# `[storage]` names one. Its views are the lake's tables, read at one snapshot, so a query sees
# whole commits while workers write.
class LakeCatalog(Catalog):
    """A Catalog whose tables are a DuckLake's. The data dir still holds work files and the
    single-machine tables nothing here reads."""

    def __init__(self, target: LakeTarget, data_dir_catalog: Catalog, snapshot: int | None = None,
                 work_dir: Path | None = None) -> None:
        super().__init__(data_dir_catalog.database, data_dir_catalog.shards_root)
        self.target = target
        #: Read the lake as it was at this snapshot (time travel); None: the latest, per query.
        self.snapshot = snapshot
        #: Where local copies of clips' audio go while this process reads them (`locate_clips`).
        self.work_dir = work_dir or self.base / "work"

    def present_tables(self) -> list[str]:
        with self.connect() as con:
            return lake.tables(con)

    def refresh_views(self) -> list[str]:
        """Nothing to refresh: the lake's tables are its views (other DuckDB clients ATTACH it)."""
        return self.present_tables()

    def repair(self) -> bool:
        return False

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

    def pinned(self, snapshot: int | None = None) -> LakeCatalog:
        """This lake read at `snapshot` (default: the one this catalog reads now), so that many
        queries see the same data however many commits land meanwhile."""
        chosen = self.current_snapshot() if snapshot is None else snapshot
        pinned = LakeCatalog(self.target, self, chosen, self.work_dir)
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

    def known_sources(self) -> set[str]:
        """The recordings labelled already (a damaged `sources` file: CatalogError naming it)."""
        if "sources" not in self.present_tables():
            return set()
        return set(self.query("SELECT DISTINCT source_sha256 FROM sources")["source_sha256"].to_pylist())

    def forgotten(self) -> set[str]:
        """The recordings `voxtox forget` erased from the lake (on any host)."""
        with self.connect() as con:
            return lake.forgotten(con)


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
