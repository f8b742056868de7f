"""The many-machines store: voxtox's tables in a DuckLake (docs/storage.md).

A DuckLake keeps its catalog in a SQL database (PostgreSQL, which every machine can reach) and
its data as Parquet files on object storage (S3 or any S3-compatible store), so labelling
workers on several hosts write one set of tables: each commit is an ACID transaction of the
catalog database, and a reader sees a snapshot, i.e. whole commits only. Nothing here takes a
file lock: the engine keeps commits whole (on one machine too: the embedded lake, the default).

Settings `[storage] catalog_url` (`postgresql://user@host:port/db`, a `.sqlite` file, or a local
path for a DuckDB-file catalog that one process at a time may open) and `data_url`
(`s3://bucket/prefix` or a local folder); unset, the embedded lake under the data dir
(`target_for`: a SQLite catalog and a folder, no server). The S3 endpoint and keys come only from the standard environment
variables `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_REGION`),
never from a settings file.

Every row carries `shard_key`, the key the old single-machine shards named its files by (a
source's content-hash prefix, or a rejected input's key): replacing a key's rows is one transaction that
deletes them and inserts the new ones, so a rerun adds nothing. DuckLake lets concurrent
transactions append to one table without conflict, which would let two workers that labelled the
same recording both add its rows; so every write also updates the one row of `voxtox_commits`,
which makes concurrent writes conflict: one lands, the other retries on the new snapshot and
replaces what the first wrote (the recording is stored once).
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import duckdb
import pyarrow as pa

from voxtox.storage.schema import HAS_AUDIO

if TYPE_CHECKING:
    from voxtox.settings import Settings

log = logging.getLogger(__name__)

#: The DuckDB extensions a lake needs, each from its PyPI package (`duckdb-extension-<name>`,
#: built for one DuckDB version: pyproject pins DuckDB to it), so nothing is downloaded at run time.
EXTENSIONS = ("ducklake", "postgres_scanner", "httpfs", "sqlite_scanner")
ALIAS = "lake"
KEY_COLUMN = "shard_key"
COMMITS_TABLE = "voxtox_commits"
#: Recordings `voxtox forget` erased: hashes and days only, in the lake so every host sees them.
TOMBSTONES = "tombstones"
MAX_ATTEMPTS = 30


class LakeError(RuntimeError):
    """The lake cannot be reached or used, said in one line naming what (endpoint, catalog)."""


@dataclass(frozen=True)
class LakeTarget:
    """Where a lake lives: its catalog and its data. Picklable: tasks on other hosts get it."""

    catalog_url: str
    data_url: str

    @property
    def on_s3(self) -> bool:
        return self.data_url.startswith("s3://")

    def catalog_attach(self) -> str:
        """The ATTACH string of the catalog: DuckLake on PostgreSQL or on a DuckDB file."""
        if self.catalog_url.startswith(("postgresql://", "postgres://")):
            return f"ducklake:postgres:{libpq_keywords(self.catalog_url)}"
        if (sqlite := sqlite_catalog_path(self.catalog_url)) is not None:
            return f"ducklake:sqlite:{sqlite}"
        return f"ducklake:{Path(self.catalog_url).expanduser()}"

    def extensions(self) -> tuple[str, ...]:
        """The extensions this lake needs: DuckLake, its catalog's scanner, httpfs for S3. Each LOAD
        costs 50-90 ms per connection and a labelling run connects about ten times
        (benchmarks/label_lake.py), so the embedded lake loads two, not four."""
        scanner = {"postgres": ("postgres_scanner",), "sqlite": ("sqlite_scanner",)}.get(
            self.catalog_attach().split(":")[1], ())
        return ("ducklake", *scanner, *(("httpfs",) if self.on_s3 else ()))

    def catalog_options(self) -> str:
        """Extra ATTACH options of the catalog: a SQLite catalog runs in WAL mode (readers and one
        writer at a time do not block each other), waits for a busy file rather than fail, and
        reads the data folder it is given (the embedded lake moves with its data dir)."""
        if (sqlite := sqlite_catalog_path(self.catalog_url)) is None:
            return ""
        if not sqlite.exists():  # an empty database in WAL mode (kept by the file), which DuckLake fills
            sqlite.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(sqlite)) as database:
                database.execute("PRAGMA journal_mode=WAL")
        # OVERRIDE_DATA_PATH: a data dir copied or moved elsewhere reads its own data folder, which
        # DuckLake would otherwise refuse for not being the path the catalog was made with
        return f", META_JOURNAL_MODE 'WAL', META_BUSY_TIMEOUT {SQLITE_BUSY_TIMEOUT_MS}, OVERRIDE_DATA_PATH true"

    def catalog_name(self) -> str:
        """The catalog as a user can name it in an error: host:port/db, no password."""
        if self.catalog_url.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(self.catalog_url)
            return f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
        return self.catalog_url

    def data_path(self) -> str:
        if self.on_s3:
            return self.data_url.rstrip("/") + "/"
        path = Path(self.data_url).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return str(path) + "/"


#: A local catalog file ending so is a SQLite DuckLake catalog, which several processes of one host
#: may open at once (a DuckDB-file catalog is one process's): the embedded lake (docs/storage.md).
SQLITE_SUFFIXES = (".sqlite", ".sqlite3")
#: How long a SQLite catalog's client waits for another process's write to finish.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_catalog_path(catalog_url: str) -> Path | None:
    """The SQLite file a `catalog_url` names (`sqlite:PATH`, or a path ending in .sqlite or
    .sqlite3), or None for another kind of catalog."""
    if catalog_url.startswith("sqlite:"):
        return Path(catalog_url.removeprefix("sqlite:").removeprefix("//")).expanduser()
    if catalog_url.endswith(SQLITE_SUFFIXES) and "://" not in catalog_url:
        return Path(catalog_url).expanduser()
    return None


def libpq_keywords(url: str) -> str:
    """`postgresql://user:pw@host:port/db` as the keyword string DuckDB's postgres extension takes."""
    parts = urlsplit(url)
    words = {
        "dbname": parts.path.lstrip("/") or None,
        "host": parts.hostname,
        "port": parts.port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    return " ".join(f"{k}={v}" for k, v in words.items() if v is not None)


def s3_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The S3 endpoint in use, for error messages: AWS_ENDPOINT_URL, or AWS's own."""
    env = os.environ if environ is None else environ
    return env.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"


def s3_secret_sql(environ: Mapping[str, str] | None = None) -> str:
    """A DuckDB S3 secret from the standard AWS variables (only those: a settings file never
    holds keys). A custom endpoint (MinIO, moto, Ceph) is addressed by path, not by bucket host."""
    env = os.environ if environ is None else environ
    words = {"TYPE": "s3", "REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if env.get("AWS_ACCESS_KEY_ID"):
        words |= {"KEY_ID": env["AWS_ACCESS_KEY_ID"], "SECRET": env.get("AWS_SECRET_ACCESS_KEY", "")}
    if env.get("AWS_SESSION_TOKEN"):
        words["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    if endpoint := env.get("AWS_ENDPOINT_URL"):
        parts = urlsplit(endpoint)
        words |= {"ENDPOINT": parts.netloc or parts.path, "URL_STYLE": "path"}
        if parts.scheme == "http":
            words["USE_SSL"] = "false"
    body = ", ".join(f"{k} {v}" if v == "false" or k == "TYPE" else f"{k} '{_quote(v)}'" for k, v in words.items())
    return f"CREATE OR REPLACE SECRET voxtox_s3 ({body})"


def _quote(value: str) -> str:
    return value.replace("'", "''")


def load_extensions(con: duckdb.DuckDBPyConnection, names: Collection[str] = EXTENSIONS) -> None:
    """LOAD each extension from its PyPI package's file (no INSTALL: nothing is fetched or
    written to ~/.duckdb). A missing package or a DuckDB of another version is one line."""
    version = _first(con.execute("PRAGMA version"))
    for name in names:
        try:
            module = importlib.import_module(f"duckdb_extension_{name}")
        except ImportError as error:
            raise LakeError(
                f"the lake needs the package duckdb-extension-{name.replace('_', '-')} (scripts/setup.sh installs it)"
            ) from error
        path = Path(next(iter(module.__path__))) / "extensions" / version / f"{name}.duckdb_extension"
        if not path.exists():
            raise LakeError(f"duckdb-extension-{name.replace('_', '-')} has no build for DuckDB {version}: install "
                            "the DuckDB version constraints.txt pins")
        con.execute(f"LOAD '{_quote(str(path))}'")


def _unreachable(target: LakeTarget, error: duckdb.Error) -> LakeError | None:
    """The one-line error for a store that cannot be reached, or None for any other failure."""
    text = str(error)
    # DuckDB's errors may quote the catalog's keyword string: never print its password
    first = re.sub(r"password=\S+", "password=***", (text.strip().splitlines() or [type(error).__name__])[0])
    if "postgres" in target.catalog_attach() and any(
        w in text for w in ("Connection refused", "could not connect", "Unable to connect", "connection to server")
    ):
        return LakeError(f"lake catalog {target.catalog_name()} unreachable: {first}")
    if target.on_s3 and isinstance(error, (duckdb.IOException, duckdb.HTTPException)) and any(
        w in text.lower() for w in ("could not connect", "could not establish connection", "connection refused",
                                    "failed to connect", "timed out", "could not resolve", "http ")
    ):
        return LakeError(f"object store {s3_endpoint()} ({target.data_url}) unreachable or refused: {first}")
    if "postgres" in target.catalog_attach() and not catalog_listening(target):
        # a server that died mid-commit: DuckLake's error is about its failed ROLLBACK, not the cause
        return LakeError(f"lake catalog {target.catalog_name()} unreachable (the server stopped answering): {first}")
    return None


def catalog_listening(target: LakeTarget, timeout_s: float = 2.0) -> bool:
    """Whether the PostgreSQL server of `target`'s catalog accepts TCP connections (True when the
    URL names no host, e.g. a Unix socket: then it cannot tell)."""
    parts = urlsplit(target.catalog_url)
    if not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or 5432), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextmanager
def lake_errors(target: LakeTarget) -> Iterator[None]:
    """Turn an unreachable catalog or object store into one LakeError line naming it."""
    try:
        yield
    except duckdb.Error as error:
        if (found := _unreachable(target, error)) is not None:
            raise found from error
        raise


def connect(target: LakeTarget, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lake attached as `lake`; its S3 bucket is checked,
    so a wrong endpoint or key fails here in one line rather than at the first commit."""
    con = duckdb.connect()
    try:
        load_extensions(con, target.extensions())
        if target.on_s3:
            con.execute(s3_secret_sql())
        options = f"DATA_PATH '{_quote(target.data_path())}'" + (", READ_ONLY" if read_only else "")
        options += target.catalog_options()
        with lake_errors(target):
            _attach(con, target, options)
            if target.on_s3:
                con.execute(f"SELECT count(*) FROM glob('{_quote(target.data_path())}probe-*')").fetchone()
    except BaseException:
        con.close()
        raise
    return con


def _attach(con: duckdb.DuckDBPyConnection, target: LakeTarget, options: str) -> None:
    """ATTACH the lake. The first attach of an empty catalog creates DuckLake's tables; two
    workers starting at once race to do it, and the loser attaches what the winner made."""
    for attempt in range(1, 6):
        try:
            con.execute(f"ATTACH '{_quote(target.catalog_attach())}' AS {ALIAS} ({options})")
            return
        except duckdb.Error as error:
            if "creating a new DuckLake is explicitly disabled" in str(error):
                # a reader before the first writer (the labelling flow asks what is known first):
                # make the empty lake, then attach it read-only as asked
                con.execute(f"ATTACH '{_quote(target.catalog_attach())}' AS {ALIAS} "
                            f"(DATA_PATH '{_quote(target.data_path())}'{target.catalog_options()})")
                con.execute(f"DETACH {ALIAS}")
                continue
            if "Failed to initialize DuckLake" not in str(error) or attempt == 5:
                raise
            time.sleep(0.2 * attempt)


def tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The voxtox tables the lake holds (not its own bookkeeping)."""
    return [name for name in _all_tables(con) if name != COMMITS_TABLE]


def _all_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1", [ALIAS]).fetchall()
    return [name for (name,) in rows]


def _ensure_table(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table) -> None:
    _ensure_tables(con, {name: rows})


def _ensure_tables(con: duckdb.DuckDBPyConnection, rows: Mapping[str, pa.Table]) -> None:
    """Create `voxtox_commits` (with its one row) and each table of `rows` (their columns plus
    `shard_key`) that is not there yet, after one look at the catalog: a commit used to take three
    statements per table, a third of its time (benchmarks/label_lake.py). Data is never inlined
    into the catalog database: clips hold audio, which belongs on object storage."""
    present = _all_tables(con)
    if COMMITS_TABLE not in present:
        con.execute(f"CREATE TABLE IF NOT EXISTS {ALIAS}.{COMMITS_TABLE} (n BIGINT)")
    if _first(con.execute(f"SELECT count(*) FROM {ALIAS}.{COMMITS_TABLE}")) == 0:
        con.execute(f"INSERT INTO {ALIAS}.{COMMITS_TABLE} VALUES (0)")
    for name, table in rows.items():
        if name not in present:
            _create_table(con, name, table)


def _create_table(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table) -> None:
    # DuckLake has no fixed-size array: an embedding is stored as FLOAT[] (views cast it back)
    lists = [f.name for f in rows.schema if pa.types.is_fixed_size_list(f.type)]
    replace = f" REPLACE ({', '.join(f'{c}::FLOAT[] AS {c}' for c in lists)})" if lists else ""
    con.register("voxtox_new_rows", rows)
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS {ALIAS}.{name} AS SELECT ''::VARCHAR AS {KEY_COLUMN}, *{replace} "
                    "FROM voxtox_new_rows LIMIT 0")
    finally:
        con.unregister("voxtox_new_rows")
    con.execute(f"CALL {ALIAS}.set_option('data_inlining_row_limit', 0, table_name => '{name}')")


def _is_conflict(error: duckdb.Error) -> bool:
    """A commit another transaction beat: retried on the new snapshot. On a SQLite catalog that
    is "database is locked" too: SQLite lets one writer at a time, and a transaction that read
    before another wrote cannot upgrade its lock (SQLITE_BUSY without waiting, so no timeout helps)."""
    text = str(error).lower()
    return "conflict" in text or "database is locked" in text


def replace_key(con: duckdb.DuckDBPyConnection, target: LakeTarget, key: str, rows: Mapping[str, pa.Table],
                unless_forgotten: str | None = None) -> int:
    """Replace every row of `key` in each table of `rows` by those rows, in one commit; retried
    on a conflict with a concurrent commit. Returns the attempts it took; 0 when the recording
    `unless_forgotten` is tombstoned (checked inside the transaction: a `forget` that commits
    meanwhile makes this commit conflict, and the retry sees its tombstone)."""
    written = [True]

    def attempt() -> None:
        _ensure_tables(con, rows)  # two first writers may race to create a table
        written[0] = _replace_once(con, key, rows, unless_forgotten)

    attempts = _committed(con, target, attempt, key)
    return attempts if written[0] else 0


def _committed(con: duckdb.DuckDBPyConnection, target: LakeTarget, attempt: Callable[[], object], what: str) -> int:
    """Run `attempt` (one transaction) until it commits without a conflict; the attempts it took."""
    with lake_errors(target):
        for number in range(1, MAX_ATTEMPTS + 1):
            try:
                attempt()
                return number
            except duckdb.Error as error:
                _rollback(con)
                if not _is_conflict(error) or number == MAX_ATTEMPTS:
                    raise
                log.debug("lake commit of %s conflicted (attempt %d): %s", what, number, error)
                time.sleep(random.uniform(0.01, 0.05) * number)  # spread the retries of many workers
    raise AssertionError("unreachable")


def erase(con: duckdb.DuckDBPyConnection, target: LakeTarget, sha256s: Collection[str],
          uris: Collection[str] = ()) -> int:
    """Remove every row of the recordings `sha256s` from every table AND their bytes from storage,
    and tombstone them (one commit); then rewrite the data files that held them, expire every
    older snapshot (erasure beats time travel: no snapshot may still reach them) and delete the
    files no snapshot references. Rows without a hash (an input that could not be read) go by
    their `source_uri` in `uris`. Returns the rows deleted. A reader on an expired snapshot fails."""
    wanted, by_uri = sorted(sha256s), sorted(uris)
    _ensure_table(con, TOMBSTONES, pa.table({"source_sha256": pa.array([], pa.string()),
                                             "forgotten_on": pa.array([], pa.date32())}))
    holding = [name for name in tables(con) if name != TOMBSTONES and _has_column(con, name, "source_sha256")]
    deleted = [0]

    def delete(name: str) -> int:
        if not _has_column(con, name, "source_uri"):
            return int(_first(con.execute(f"DELETE FROM {ALIAS}.{name} WHERE source_sha256 IN (SELECT unnest(?))",
                                          [wanted])))
        return int(_first(con.execute(f"DELETE FROM {ALIAS}.{name} WHERE source_sha256 IN (SELECT unnest(?)) OR "
                                      "(source_sha256 IS NULL AND source_uri IN (SELECT unnest(?)))", [wanted, by_uri])))

    def attempt() -> None:
        con.execute("BEGIN")
        con.execute(f"UPDATE {ALIAS}.{COMMITS_TABLE} SET n = n + 1")
        deleted[0] = sum(delete(name) for name in holding)
        con.execute(f"DELETE FROM {ALIAS}.{TOMBSTONES} WHERE source_sha256 IN (SELECT unnest(?))", [wanted])
        con.execute(f"INSERT INTO {ALIAS}.{TOMBSTONES} ({KEY_COLUMN}, source_sha256, forgotten_on) "
                    "SELECT s, s, current_date FROM (SELECT unnest(?) AS s)", [wanted])
        con.execute("COMMIT")

    _committed(con, target, attempt, "erasure")
    purge_history(con, target, holding)
    return deleted[0]


def purge_history(con: duckdb.DuckDBPyConnection, target: LakeTarget, names: Collection[str]) -> None:
    """Make rows deleted or changed in tables `names` unreachable and their bytes gone: rewrite the
    data files that still hold them, expire every snapshot but the latest and delete the files no
    snapshot references (what erasure and retention need; a reader on an expired snapshot fails)."""
    with lake_errors(target):
        for name in names:
            con.execute(f"CALL ducklake_rewrite_data_files('{ALIAS}', '{name}', delete_threshold => 0)")
        con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => now())")
        con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")
        _forget_table_stats(con)
    _scrub_sqlite_catalog(target)


def expire_snapshots(con: duckdb.DuckDBPyConnection, target: LakeTarget, older_than_days: float) -> tuple[int, int]:
    """Expire the snapshots older than `older_than_days` (never the latest) and delete the files
    that left the lake longer ago than that (merged away, rewritten, or read only by expired
    snapshots): `[storage] keep_snapshots_days`, applied by `voxtox compact`. A file a merge
    replaced is scheduled for deletion at once, yet a kept snapshot may still read it: it goes
    only once every snapshot before the merge is past the same age, so time travel within it
    keeps working. Returns (snapshots expired, files deleted). A run pinned to an expired
    snapshot then fails in one line (SnapshotGoneError)."""
    cutoff = f"now() - to_seconds({float(older_than_days) * 86400.0})"
    with lake_errors(target):
        expired = con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => {cutoff})").fetchall()
        deleted = con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', older_than => {cutoff})").fetchall()
    return len(expired), len(deleted)


#: Per table, the column saying when a row was written (retention's clock).
WRITTEN_AT = {"sources": "labelled_at", "clips": "labelled_at", "rejects": "rejected_at"}


def expired_recordings(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> tuple[set[str], set[str]]:
    """Recordings whose newest row (labelled or rejected) is older than `cutoff`, and the URIs of
    rejected inputs without a hash (unreadable) rejected before it: `[retention] delete_days`."""
    parts = [f"SELECT source_sha256 AS sha, source_uri AS uri, {column} AS written FROM {ALIAS}.{name}"
             for name, column in WRITTEN_AT.items() if name in tables(con)]
    if not parts:
        return set(), set()
    rows = " UNION ALL ".join(parts)
    shas = con.execute(f"SELECT sha FROM ({rows}) WHERE sha IS NOT NULL GROUP BY sha HAVING max(written) < ?",
                       [cutoff]).fetchall()
    uris = con.execute(f"SELECT DISTINCT uri FROM ({rows}) WHERE sha IS NULL AND written < ?", [cutoff]).fetchall()
    return {sha for (sha,) in shas}, {uri for (uri,) in uris}


def drop_audio_before(con: duckdb.DuckDBPyConnection, target: LakeTarget, cutoff: datetime) -> int:
    """Null the audio of the clips labelled before `cutoff` (one commit; labels, transcripts and
    embeddings stay), then purge the history that still holds those bytes: `[retention]
    audio_days`. Returns the clips whose audio went (0 on a rerun)."""
    if "clips" not in tables(con):
        return 0
    dropped = [0]

    def attempt() -> None:
        con.execute("BEGIN")
        con.execute(f"UPDATE {ALIAS}.{COMMITS_TABLE} SET n = n + 1")  # serialised with writers and erasure
        dropped[0] = int(_first(con.execute(f"UPDATE {ALIAS}.clips SET audio = NULL WHERE labelled_at < ? "
                                            f"AND {HAS_AUDIO}", [cutoff])))
        con.execute("COMMIT")

    _committed(con, target, attempt, "retention")
    if dropped[0]:
        purge_history(con, target, ["clips"])
    return dropped[0]


def recordings_of_speakers(con: duckdb.DuckDBPyConnection, speakers: Collection[str]) -> dict[str, set[str]]:
    """The recordings each speaker is heard in, as the lake's human labels say (a speaker with
    none is absent)."""
    if "human_labels" not in tables(con) or not speakers:
        return {}
    found: dict[str, set[str]] = {}
    for speaker, sha in con.execute(f"SELECT DISTINCT speaker, source_sha256 FROM {ALIAS}.human_labels "
                                    "WHERE speaker IN (SELECT unnest(?))", [sorted(speakers)]).fetchall():
        found.setdefault(speaker, set()).add(sha)
    return found


def uris_of(con: duckdb.DuckDBPyConnection, sha256s: Collection[str], without_hash: Collection[str] = ()) -> set[str]:
    """The URIs the recordings `sha256s` were labelled from, and those of `without_hash` that name
    rows without a hash (an input that could not be read)."""
    found: set[str] = set()
    for name in ("sources", "clips", "rejects"):
        if name in tables(con) and (sha256s or without_hash):
            found |= {uri for (uri,) in con.execute(
                f"SELECT DISTINCT source_uri FROM {ALIAS}.{name} WHERE source_sha256 IN (SELECT unnest(?)) OR "
                "(source_sha256 IS NULL AND source_uri IN (SELECT unnest(?)))",
                [sorted(sha256s), sorted(without_hash)]).fetchall()}
    return found


def rows_held(con: duckdb.DuckDBPyConnection, sha256s: Collection[str], uris: Collection[str] = ()) -> dict[str, int]:
    """Per table, the rows of the recordings `sha256s` (and rows without a hash from `uris`):
    what `erase` deletes (tables holding none are absent)."""
    counts: dict[str, int] = {}
    for name in tables(con):
        if name == TOMBSTONES or not _has_column(con, name, "source_sha256"):
            continue
        no_hash = (" OR (source_sha256 IS NULL AND source_uri IN (SELECT unnest(?)))"
                   if _has_column(con, name, "source_uri") else "")
        params = [sorted(sha256s), sorted(uris)] if no_hash else [sorted(sha256s)]
        if n := int(_first(con.execute(f"SELECT count(*) FROM {ALIAS}.{name} WHERE source_sha256 IN "
                                       f"(SELECT unnest(?)){no_hash}", params))):
            counts[name] = n
    return counts


#: The database DuckLake attaches its catalog as, beside the lake itself.
METADATA = f"__ducklake_metadata_{ALIAS}"


def _forget_table_stats(con: duckdb.DuckDBPyConnection) -> None:
    """A table's column statistics (min and max per column, in the catalog) keep the values of
    rows deleted since: an erased recording's path or words would stay in the catalog database.
    Each bound no live data file still has is cleared (DuckLake reads a NULL bound as unknown,
    and sets it again from the next insert's files)."""
    for side in ("min_value", "max_value"):
        con.execute(f"UPDATE {METADATA}.ducklake_table_column_stats AS t SET {side} = NULL "
                    f"WHERE {side} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {METADATA}.ducklake_file_column_stats f "
                    f"JOIN {METADATA}.ducklake_data_file d ON d.data_file_id = f.data_file_id "
                    f"WHERE d.end_snapshot IS NULL AND f.table_id = t.table_id AND f.column_id = t.column_id "
                    f"AND f.{side} = t.{side})")


def _scrub_sqlite_catalog(target: LakeTarget) -> None:
    """A SQLite catalog keeps deleted rows' bytes in its free pages and write-ahead log until they
    are reused: rebuild the file (VACUUM) and empty the log, so erased values leave the disk. (A
    PostgreSQL catalog's dead rows go with its VACUUM: docs/storage.md.)"""
    path = sqlite_catalog_path(target.catalog_url)
    if path is None:
        return
    with closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)) as database:
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        database.execute("VACUUM")
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def forgotten(con: duckdb.DuckDBPyConnection, sha256s: Collection[str] | None = None) -> set[str]:
    """The tombstoned recordings (among `sha256s`, or all), as this connection's snapshot has them."""
    if TOMBSTONES not in tables(con):
        return set()
    sql = f"SELECT source_sha256 FROM {ALIAS}.{TOMBSTONES}"
    if sha256s is None:
        return {sha for (sha,) in con.execute(sql).fetchall()}
    return {sha for (sha,) in con.execute(f"{sql} WHERE source_sha256 IN (SELECT unnest(?))",
                                          [sorted(sha256s)]).fetchall()}


def recordings_of(con: duckdb.DuckDBPyConnection, uris: Collection[str]) -> dict[str, set[str]]:
    """The content hashes each URI was labelled as (a URI with no rows is absent)."""
    found: dict[str, set[str]] = {}
    for name in ("sources", "clips", "rejects"):
        if name in tables(con) and uris:
            rows = con.execute(f"SELECT DISTINCT source_uri, source_sha256 FROM {ALIAS}.{name} "
                               "WHERE source_uri IN (SELECT unnest(?)) AND source_sha256 IS NOT NULL",
                               [sorted(uris)]).fetchall()
            for uri, sha in rows:
                found.setdefault(uri, set()).add(sha)
    return found


def clip_ids_of(con: duckdb.DuckDBPyConnection, sha256s: Collection[str]) -> frozenset[str]:
    """The clips of these recordings in the lake (what `voxtox forget` must also erase copies of)."""
    if "clips" not in tables(con) or not sha256s:
        return frozenset()
    rows = con.execute(f"SELECT clip_id FROM {ALIAS}.clips WHERE source_sha256 IN (SELECT unnest(?))",
                       [sorted(sha256s)]).fetchall()
    return frozenset(str(clip) for (clip,) in rows)


def held(con: duckdb.DuckDBPyConnection, sha256s: Collection[str]) -> set[str]:
    """Which of `sha256s` have rows in any table."""
    found: set[str] = set()
    for name in tables(con):
        if name != TOMBSTONES and _has_column(con, name, "source_sha256") and sha256s:
            found |= {sha for (sha,) in con.execute(
                f"SELECT DISTINCT source_sha256 FROM {ALIAS}.{name} WHERE source_sha256 IN (SELECT unnest(?))",
                [sorted(sha256s)]).fetchall()}
    return found


def data_files(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Data files table `table`'s current snapshot reads."""
    return int(_first(con.execute(f"SELECT count(*) FROM ducklake_list_files('{ALIAS}', ?)", [table])))


#: Files no snapshot knows are deleted once this old: younger ones may be a live writer's, uploaded
#: before its commit (a killed writer's stay until then).
ORPHAN_AGE_S = 24 * 3600


def compact(con: duckdb.DuckDBPyConnection, target: LakeTarget) -> dict[str, tuple[int, int]]:
    """Merge each table's small files (one per labelled recording) into large ones, as one commit
    the engine makes; readers see the table before or after; and delete the orphaned files of
    writers killed before their commit. Returns table -> (files before, after). The replaced
    files stay while older snapshots reference them (erasure expires those)."""
    with lake_errors(target):
        before = {name: data_files(con, name) for name in tables(con)}
        con.execute(f"CALL ducklake_merge_adjacent_files('{ALIAS}')")
        delete_orphans(con, target, ORPHAN_AGE_S)
        return {name: (count, data_files(con, name)) for name, count in before.items()}


def delete_orphans(con: duckdb.DuckDBPyConnection, target: LakeTarget, older_than_s: float) -> int:
    """Delete data files under the lake's data path that no snapshot references and that are
    older than `older_than_s` (what a writer killed between uploading and committing leaves)."""
    with lake_errors(target):
        rows = con.execute(f"CALL ducklake_delete_orphaned_files('{ALIAS}', older_than => "
                           f"now() - to_seconds({float(older_than_s)}))").fetchall()
    return len(rows)


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return bool(_first(con.execute("SELECT count(*) FROM duckdb_columns() WHERE database_name = ? AND table_name = ? "
                            "AND column_name = ?", [ALIAS, table, column])))


def _replace_once(con: duckdb.DuckDBPyConnection, key: str, rows: Mapping[str, pa.Table],
                  unless_forgotten: str | None = None) -> bool:
    if not stage_replacement(con, key, rows, unless_forgotten):
        con.execute("ROLLBACK")
        return False
    con.execute("COMMIT")
    return True


def stage_replacement(con: duckdb.DuckDBPyConnection, key: str, rows: Mapping[str, pa.Table],
                      unless_forgotten: str | None = None) -> bool:
    """Open a transaction that replaces `key`'s rows (the caller commits; its tables exist).
    False, with nothing staged, when the recording `unless_forgotten` is tombstoned."""
    con.execute("BEGIN")
    con.execute(f"UPDATE {ALIAS}.{COMMITS_TABLE} SET n = n + 1")  # serialises writers: see the module doc
    if unless_forgotten is not None and unless_forgotten in forgotten(con, [unless_forgotten]):
        return False
    for name, table in rows.items():
        con.execute(f"DELETE FROM {ALIAS}.{name} WHERE {KEY_COLUMN} = ?", [key])
        if table.num_rows:
            con.register("voxtox_new_rows", table)
            try:
                columns = ", ".join(f'"{c}"' for c in table.column_names)
                con.execute(f"INSERT INTO {ALIAS}.{name} ({KEY_COLUMN}, {columns}) "
                            f"SELECT ?, {columns} FROM voxtox_new_rows", [key])
            finally:
                con.unregister("voxtox_new_rows")
    return True


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # a failed COMMIT already ended the transaction


def define_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Views named like the single-machine tables (`clips`, `sources`, ...) over the lake's,
    without the bookkeeping column, so voxtox's SQL and a user's read either store alike."""
    present = tables(con)
    for name in present:
        try:
            casts = _array_casts(con, name)
        except duckdb.Error:  # a damaged data file: the view stays, and a query of it names the file
            casts = ""
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * EXCLUDE ({KEY_COLUMN}){casts} FROM {ALIAS}.{name}")
    return present


#: What reading a damaged Parquet file raises (pyarrow's own, or the OS's for a bad read).
READ_ERRORS = (pa.ArrowException, OSError, ValueError)


def damaged_files(con: duckdb.DuckDBPyConnection, names: Collection[str]) -> dict[str, str]:
    """The local data files of tables `names` that cannot be read (truncated, overwritten), and
    why: what names the file after DuckDB failed on one ("Invalid data" names none)."""
    import pyarrow.parquet as pq

    found: dict[str, str] = {}
    for name in sorted(set(names) & set(tables(con))):
        for (path,) in con.execute(f"SELECT data_file FROM ducklake_list_files('{ALIAS}', '{name}')").fetchall():
            if str(path).startswith("s3://"):
                continue
            try:
                with pq.ParquetFile(path) as handle:
                    for _ in handle.iter_batches():
                        pass
            except READ_ERRORS as error:
                found[str(path)] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return found


def _array_casts(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """` REPLACE (col::FLOAT[n] AS col, ...)` for the embeddings stored as FLOAT[] (their length
    from one row), so `array_cosine_similarity` takes them as the single-machine views give them."""
    columns = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? AND data_type = 'FLOAT[]'",
        [ALIAS, name],
    ).fetchall()
    casts = []
    for (column,) in columns:
        found = con.execute(f"SELECT len({column}) FROM {ALIAS}.{name} WHERE {column} IS NOT NULL LIMIT 1").fetchone()
        if found:
            casts.append(f"{column}::FLOAT[{found[0]}] AS {column}")
    return f" REPLACE ({', '.join(casts)})" if casts else ""


def snapshot_id(con: duckdb.DuckDBPyConnection) -> int:
    """The lake's current snapshot: what a reader on this connection sees."""
    return int(_first(con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()")))


def target_of(catalog_url: str | None, data_url: str | None) -> LakeTarget | None:
    """The lake `[storage]` names explicitly, or None when it names none (then: `target_for`)."""
    if catalog_url is None or data_url is None:
        return None
    return LakeTarget(catalog_url, data_url)


#: The embedded lake every command uses when `[storage]` names none (relative to the data dir): a
#: SQLite catalog that the host's processes share, and a folder of Parquet data files; no server.
EMBEDDED_CATALOG = Path("lake") / "catalog.sqlite"
EMBEDDED_DATA = Path("lake") / "data"


def embedded_target(data_dir: Path) -> LakeTarget:
    """The lake under a data dir: a SQLite catalog that several local processes share, and a folder."""
    return LakeTarget(str(data_dir / EMBEDDED_CATALOG), str(data_dir / EMBEDDED_DATA))


def target_for(settings: Settings) -> LakeTarget:
    """The one place that decides where the tables live: the lake `[storage]` names, else the
    embedded lake under the data dir (the default: nothing to set up)."""
    return target_of(settings.storage.catalog_url, settings.storage.data_url) or embedded_target(settings.data_dir)


def _first(result: duckdb.DuckDBPyConnection) -> Any:
    """The first column of a query's one row (an aggregate always has one)."""
    row = result.fetchone()
    if row is None:
        raise LakeError("the lake answered a one-row query with no row")
    return row[0]


# --- time travel: reading the lake as it was at one snapshot --------------------------------------


class SnapshotGoneError(LakeError):
    """A snapshot that no longer exists: expired by an erasure (`voxtox forget`) or never made."""


def connect_at(target: LakeTarget, snapshot: int) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the lake attached read-only as it was at `snapshot`
    (DuckLake's `SNAPSHOT_VERSION`): every query on it sees exactly that snapshot's rows. A
    snapshot that is gone (an erasure expires every older one: erasure beats time travel) is
    SnapshotGoneError, one line; never the rows of another snapshot."""
    con = duckdb.connect()
    try:
        load_extensions(con, target.extensions())
        if target.on_s3:
            con.execute(s3_secret_sql())
        options = (f"DATA_PATH '{_quote(target.data_path())}', READ_ONLY, SNAPSHOT_VERSION {int(snapshot)}"
                   f"{target.catalog_options()}")
        with lake_errors(target):
            try:
                con.execute(f"ATTACH '{_quote(target.catalog_attach())}' AS {ALIAS} ({options})")
            except duckdb.Error as error:
                if "snapshot" not in str(error).lower():
                    raise
                raise snapshot_gone(target, snapshot, error) from error
    except BaseException:
        con.close()
        raise
    return con


def snapshot_gone(target: LakeTarget, snapshot: int, error: BaseException | None = None) -> SnapshotGoneError:
    """The one line for a snapshot the lake no longer has."""
    why = f" ({str(error).strip().splitlines()[0]})" if error is not None and str(error).strip() else ""
    return SnapshotGoneError(
        f"lake {target.catalog_name()} has no snapshot {snapshot}{why}: it was never made, or expired (`voxtox "
        "forget` expires every snapshot older than an erasure: a forgotten recording must not come back through "
        "time travel); read the latest data instead (`--snapshot latest`)")


def snapshots(con: duckdb.DuckDBPyConnection) -> list[int]:
    """The snapshots the lake still has, oldest first."""
    return [int(n) for (n,) in con.execute(f"SELECT snapshot_id FROM {ALIAS}.snapshots() ORDER BY 1").fetchall()]


def replace_rows(con: duckdb.DuckDBPyConnection, target: LakeTarget, name: str, rows: pa.Table, key_column: str,
                 unless_forgotten: Collection[str] = ()) -> set[str]:
    """In one commit (retried on a conflict), replace the rows of table `name` that share a
    `key_column` value with a row of `rows` by `rows` (each row's `shard_key` is that value):
    what a small table of many keys (reviews, by clip) needs, all or nothing. Writes nothing,
    and returns them, when any recording of `unless_forgotten` is tombstoned (checked inside
    the commit)."""
    found: set[str] = set()
    keys = sorted(set(rows[key_column].to_pylist()))

    def attempt() -> None:
        _ensure_table(con, name, rows)
        con.execute("BEGIN")
        con.execute(f"UPDATE {ALIAS}.{COMMITS_TABLE} SET n = n + 1")  # serialises writers: see the module doc
        found.clear()
        found.update(forgotten(con, unless_forgotten) if unless_forgotten else set())
        if found:
            con.execute("ROLLBACK")
            return
        con.execute(f"DELETE FROM {ALIAS}.{name} WHERE {KEY_COLUMN} IN (SELECT unnest(?))", [keys])
        con.register("voxtox_new_rows", rows)
        try:
            columns = ", ".join(f'"{c}"' for c in rows.column_names)
            con.execute(f"INSERT INTO {ALIAS}.{name} ({KEY_COLUMN}, {columns}) "
                        f'SELECT "{key_column}", {columns} FROM voxtox_new_rows')
        finally:
            con.unregister("voxtox_new_rows")
        con.execute("COMMIT")

    _committed(con, target, attempt, name)
    return found


def add_missing_keys(con: duckdb.DuckDBPyConnection, target: LakeTarget, name: str, rows: pa.Table) -> int:
    """Insert `rows` (with a `shard_key` column) into table `name`, leaving out every key the
    table already holds, in one commit (retried on a conflict); returns the rows added. What
    `voxtox migrate` writes: a key the lake holds (migrated before, or labelled into the lake
    since) keeps its rows, so a rerun adds nothing."""
    data = rows.drop_columns([KEY_COLUMN])
    columns = ", ".join(f'"{c}"' for c in data.column_names)
    added = [0]

    def attempt() -> None:
        _ensure_table(con, name, data)
        con.execute("BEGIN")
        con.execute(f"UPDATE {ALIAS}.{COMMITS_TABLE} SET n = n + 1")  # serialised with label runs' commits
        con.register("voxtox_new_rows", rows)
        try:
            added[0] = int(_first(con.execute(
                f"INSERT INTO {ALIAS}.{name} ({KEY_COLUMN}, {columns}) SELECT {KEY_COLUMN}, {columns} "
                f"FROM voxtox_new_rows WHERE {KEY_COLUMN} NOT IN (SELECT {KEY_COLUMN} FROM {ALIAS}.{name})")))
        finally:
            con.unregister("voxtox_new_rows")
        con.execute("COMMIT")

    try:
        _committed(con, target, attempt, f"rows of {name}")
    except duckdb.BinderException as error:
        raise LakeError(f"table {name} of the lake {target.catalog_name()} has other columns than the rows "
                        f"given: {str(error).strip().splitlines()[0]}") from error
    return added[0]


def row_count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Rows of table `table` (0 when the lake has no such table)."""
    if table not in tables(con):
        return 0
    return int(_first(con.execute(f"SELECT count(*) FROM {ALIAS}.{table}")))
