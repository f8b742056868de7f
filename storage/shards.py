"""Atomic, idempotent Parquet shards.

Every file is written under a hidden temporary name and renamed into place, so a reader (DuckDB's
`*.parquet` globs) never sees a partial file. A source's rows are found by its key (a prefix of
its content hash): the labelling pipeline writes one `part-<key>.parquet` per source and
partition; compaction merges a partition's small files into `compact-<id>.parquet` files whose
footer lists the keys they hold, in row order, with their row counts. Replacing a source (a
rerun, `voxtox forget`) rewrites whatever files hold it without its rows, then writes the new
ones; its `sources` row is written last, so a crash at any point leaves the source unmarked and
the next run redoes it without duplicating rows.

Changes that swap files (a replacement, a compaction) hold an exclusive lock on the shards
directory while they rename and delete; voxtox's readers (the catalog) hold a shared one while
they read, so they see a table before or after a change, never half of it. A replacement rewrites
a shared file in place (one rename: a kill leaves the old file or the new one); a compaction
swaps several files for one through a journal that the next holder of the lock finishes if the
compaction was killed (storage/swaps.py), and sweeps the temporary files of killed writers.

A file that cannot be read is a `DamagedShardError` naming it: compaction refuses to run, a
writer looking for a source's rows goes on without it and leaves it as it is.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.files import DiskFullError, is_disk_full
from voxtox.storage.schema import PARTITIONS, stored_partition_columns
from voxtox.storage.swaps import finish_swaps, locked_temporary, pending_swaps, swap_in, sweep_dead_temporaries

COMPRESSION = "zstd"
PART_PREFIX = "part-"
COMPACT_PREFIX = "compact-"
SUFFIX = ".parquet"
#: Footer metadata of a compacted file: `[[key, rows], ...]` in row order.
KEYS_METADATA = b"voxtox.shard_keys"
#: Footer metadata of compacted files written before compactions were journalled
#: (storage/swaps.py): the names of the files one replaced, which a crash could leave beside it.
#: No longer written; `recover_partition` still deletes such leftovers, and erasure drops it.
REPLACES_METADATA = b"voxtox.replaces"
LOCK_FILE = ".voxtox-shards.lock"

log = logging.getLogger(__name__)


# --- writing one file ----------------------------------------------------------------------


def write_parquet_atomic(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
    """Write `table` to `path` (zstd) via a hidden temporary file (flocked while written: a
    sweep tells a dead writer's from a live one's) and an atomic rename. A full disk raises
    DiskFullError naming `path` (Arrow's and the kernel's own words name no file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked_temporary(path) as (temporary, handle):
            pq.write_table(table, handle, compression=COMPRESSION, row_group_size=row_group_size)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(temporary, path)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise
    return path


def sweep_part_temporaries(root: Path) -> list[Path]:
    """Remove the temporary files killed writers left under `root` (a live writer's is flocked
    and stays); returns them."""
    if next(root.glob(f"**/.*{SUFFIX}.*.tmp"), None) is None:  # the usual case: no lock taken
        return []
    with shards_lock(root, exclusive=True):
        return sweep_dead_temporaries(root)


def shard_name(source_key: str) -> str:
    return f"{PART_PREFIX}{source_key}{SUFFIX}"


def shard_files(root: Path, name: str) -> list[Path]:
    return sorted((root / name).glob(f"**/*{SUFFIX}"))


def first_shard(root: Path, name: str) -> Path | None:
    """Any one shard of table `name` (None when it has none), without listing them all."""
    return next((root / name).glob(f"**/*{SUFFIX}"), None)


# --- the lock readers and writers share ------------------------------------------------------


_held = threading.local()


@contextmanager
def shards_lock(root: Path, exclusive: bool = False) -> Iterator[None]:
    """Shared (readers) or exclusive (writers that swap files) lock on a shards directory,
    across processes (flock) and threads. Re-entrant within a thread; a thread holding the
    shared lock cannot take the exclusive one. Without a writable lock file (a read-only copy of
    a data dir, where nothing can change the files) readers go on unlocked."""
    key = str(root.resolve())
    modes: dict[str, list[object]] = _held.__dict__.setdefault("modes", {})
    if key in modes:
        if exclusive and not modes[key][0]:
            raise RuntimeError(f"{root}: a thread holding the shared shards lock asked for the exclusive one")
        yield
        return
    if exclusive:
        root.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        _finish_dead_swaps(root, descriptor, exclusive)
        modes[key] = [exclusive]
        try:
            yield
        finally:
            del modes[key]
    finally:
        os.close(descriptor)  # releases the flock


def _finish_dead_swaps(root: Path, descriptor: int, exclusive: bool) -> None:
    """Finish the file swaps a killed process left half done (storage/swaps.py) before anything
    reads or changes the files. A reader that finds one takes the lock exclusively to finish it,
    then shares it again (a writer may slip in between: it too finishes first)."""
    if not pending_swaps(root):
        return
    if not exclusive:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    finish_swaps(root)
    if not exclusive:
        fcntl.flock(descriptor, fcntl.LOCK_SH)


# --- which sources a file holds --------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class DamagedShardError(ValueError):
    """Shard files that cannot be read (truncated, overwritten, corrupt), named in one line."""

    def __init__(self, damaged: dict[Path, str]) -> None:
        self.damaged = damaged
        named = "; ".join(f"{path} ({reason})" for path, reason in sorted(damaged.items()))
        super().__init__(
            f"damaged shard, cannot be read: {named}; move it out of the shards folder (keep it: it "
            "holds rows) or restore it from a backup, then run again"
        )


#: What reading a damaged Parquet file raises (pyarrow's own, or the OS's for a bad read).
READ_ERRORS = (pa.ArrowException, OSError, ValueError)


def damaged(path: Path, error: BaseException) -> DamagedShardError:
    """The error for `path` that `error` showed to be damaged (its first line: no traceback)."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DamagedShardError({path: reason})


def unreadable_files(files: Iterable[Path], columns: list[str] | None = None) -> dict[Path, str]:
    """The files among `files` whose data (`columns`, default all) cannot be read, and why: what
    names the file after a reader that does not (DuckDB's "Invalid data") failed on one."""
    found = {}
    for path in files:
        try:
            with pq.ParquetFile(path) as handle:
                for _ in handle.iter_batches(columns=columns):
                    pass
        except READ_ERRORS as error:
            found |= damaged(path, error).damaged
    return found


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except READ_ERRORS as error:
        raise damaged(path, error) from error


@lru_cache(maxsize=8192)
def _footer_keys(path: str, _stamp: tuple[int, int, int]) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """(keys with row counts, names replaced) from a compacted file's footer; cached per file
    identity (a rewrite renames a new file over it: another inode)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except READ_ERRORS as error:
        raise damaged(Path(path), error) from error
    keys = tuple((str(k), int(n)) for k, n in json.loads(metadata.get(KEYS_METADATA, b"[]")))
    replaces = tuple(json.loads(metadata.get(REPLACES_METADATA, b"[]")))
    return keys, replaces


def key_rows(path: Path) -> tuple[tuple[str, int], ...]:
    """The source keys a shard holds and how many rows of each, in file order."""
    if path.name.startswith(COMPACT_PREFIX):
        return _footer_keys(str(path), _stamp(path))[0]
    try:
        rows = pq.read_metadata(path).num_rows
    except READ_ERRORS as error:
        raise damaged(path, error) from error
    return ((path.name.removeprefix(PART_PREFIX).removesuffix(SUFFIX), rows),)


def keys_of(path: Path) -> frozenset[str]:
    """The source keys a shard holds (a part file's from its name, without reading it)."""
    if path.name.startswith(COMPACT_PREFIX):
        return frozenset(key for key, _ in _footer_keys(str(path), _stamp(path))[0])
    return frozenset({path.name.removeprefix(PART_PREFIX).removesuffix(SUFFIX)})


def files_holding(root: Path, name: str, keys: Collection[str]) -> list[Path]:
    """Every shard of table `name` that holds rows of any of the sources `keys`. A compacted
    file whose footer cannot be read is left as it is and said in a warning: a writer goes on
    without it (if it held rows of `keys`, the compaction after it is restored drops the copies
    by id)."""
    wanted = set(keys)
    holding = []
    for path in shard_files(root, name):
        try:
            if wanted & keys_of(path):
                holding.append(path)
        except DamagedShardError as error:
            log.warning("%s", error)
    return holding


# --- the one primitive that removes rows -----------------------------------------------------


def rewrite_without(root: Path, files: Iterable[Path], keys: Collection[str]) -> list[Path]:
    """Rewrite `files` (shards under `root`) without the rows of the sources `keys`, atomically
    for voxtox's readers: under the exclusive lock, a file left with no rows is deleted and one
    that keeps rows is rewritten in place (a temporary file renamed over it, so a kill leaves
    the old file or the new one, never both) with exactly the kept rows, in order. Files that
    hold none of `keys` are left alone. Returns the files written.

    Replacing a source and forgetting a recording are both this, followed (for a replacement)
    by writing the source's new part files under the same lock."""
    dropped = set(keys)
    written: list[Path] = []
    with shards_lock(root, exclusive=True):
        for path in files:
            held = key_rows(path)
            kept = [(key, n) for key, n in held if key not in dropped]
            if len(kept) == len(held):
                continue
            if kept:
                written.append(_write_kept_rows(path, held, dropped))
            else:
                path.unlink()
    return written


def _write_kept_rows(path: Path, held: tuple[tuple[str, int], ...], dropped: set[str]) -> Path:
    table = _read_table(path)
    pieces, kept, offset = [], [], 0
    for key, n in held:
        if key not in dropped:
            pieces.append(table.slice(offset, n))
            kept.append((key, n))
        offset += n
    merged = pa.concat_tables(pieces)
    merged = merged.replace_schema_metadata(_compacted_metadata(table.schema, kept))
    groups = pq.ParquetFile(path).metadata
    rows_per_group = max(groups.row_group(0).num_rows, 1) if groups.num_row_groups else None
    return write_parquet_atomic(merged, path, row_group_size=rows_per_group)


def metadata_without_rows(metadata: dict[bytes, bytes] | None, dropped: pa.Array) -> dict[bytes, bytes] | None:
    """A shard's schema metadata after the rows marked in `dropped` (a boolean per row) are
    removed by another rewrite (storage/erasure.py): a compacted file's key ranges shrink with
    them, and a key left without rows is no longer listed (nor the names of the files it
    replaced, which older versions kept: `part-<key>` names a source)."""
    if not metadata or KEYS_METADATA not in metadata:
        return metadata
    metadata = {k: v for k, v in metadata.items() if k != REPLACES_METADATA}
    marks = dropped.to_pylist()
    kept, offset = [], 0
    for key, n in json.loads(metadata[KEYS_METADATA]):
        left = n - sum(marks[offset : offset + n])
        if left:
            kept.append((key, left))
        offset += n
    return metadata | {KEYS_METADATA: json.dumps(kept).encode()}


def _compacted_path(directory: Path) -> Path:
    return directory / f"{COMPACT_PREFIX}{uuid.uuid4().hex}{SUFFIX}"


def _compacted_metadata(schema: pa.Schema, keys: list[tuple[str, int]]) -> dict[bytes, bytes]:
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k != REPLACES_METADATA}
    metadata[KEYS_METADATA] = json.dumps(keys).encode()
    return metadata


# --- writing a source's rows -----------------------------------------------------------------


def _partition_values(table: pa.Table, columns: tuple[str, ...]) -> list[dict[str, str]]:
    combos = table.select(list(columns)).group_by(list(columns)).aggregate([])
    return combos.to_pylist()


def write_partitioned(root: Path, name: str, table: pa.Table, source_key: str) -> list[Path]:
    """Write one shard per partition of `table` for one source; partition columns become dirs
    (and leave the file, except those the table also stores inside it)."""
    import pyarrow.compute as pc  # noqa: PLC0415 (only writers need it; `voxtox query` starts faster)

    columns = PARTITIONS[name]
    dropped = [c for c in columns if c not in stored_partition_columns(name)]
    written = []
    for values in _partition_values(table, columns):
        mask = None
        for column, value in values.items():
            condition = pc.equal(table[column], value)
            mask = condition if mask is None else pc.and_(mask, condition)
        part = table.filter(mask).drop_columns(dropped)
        directory = root / name
        for column in columns:
            directory /= f"{column}={values[column]}"
        written.append(write_parquet_atomic(part, directory / shard_name(source_key)))
    return written


def remove_source(root: Path, name: str, source_key: str) -> int:
    """Remove every row of one source from one table (all partitions); returns the files changed."""
    files = files_holding(root, name, {source_key})
    rewrite_without(root, files, {source_key})
    return len(files)


def replace_rows(root: Path, name: str, source_key: str, table: pa.Table) -> list[Path]:
    """Replace one source's rows in one table, atomically for voxtox's readers."""
    with shards_lock(root, exclusive=True):
        remove_source(root, name, source_key)
        return write_partitioned(root, name, table, source_key) if table.num_rows else []


def replace_source(
    root: Path, source_key: str, clips: pa.Table, rejects: pa.Table, source: pa.Table
) -> list[Path]:
    """Replace everything one source contributed; the `sources` row goes last (it means done)."""
    with shards_lock(root, exclusive=True):
        remove_source(root, "sources", source_key)
        try:
            written = replace_rows(root, "clips", source_key, clips)
            written += replace_rows(root, "rejects", source_key, rejects)
            written += write_partitioned(root, "sources", source, source_key)
        except OSError:
            # A full disk midway: take back this source's rows (deleting its new files frees
            # the space for it), so no table holds clips of a source without its `sources` row.
            for name in ("clips", "rejects"):
                remove_source(root, name, source_key)
            raise
    return written


def replace_human_labels(root: Path, source_sha256: str, labels: pa.Table) -> list[Path]:
    """Replace one source's human labels (rows in HUMAN_LABELS_SCHEMA plus `date`): importing
    the same labels again never duplicates them, and a corrected import supersedes the old one."""
    return replace_rows(root, "human_labels", source_sha256[:24], labels)


# --- compaction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionResult:
    """What compacting one table did."""

    table: str
    files_before: int
    files_after: int
    merged: int  # input files merged into compacted ones
    skipped: int  # groups left alone: changed while being merged, or of incompatible schemas


def compact(root: Path, names: Iterable[str] | None = None, target_bytes: int = 128 << 20,
            row_group_bytes: int = 16 << 20) -> list[CompactionResult]:
    """Merge each partition's small files (under half of `target_bytes`) into files of about
    `target_bytes`, with row groups of about `row_group_bytes` of data. Idempotent: a second run
    finds nothing to merge. First finishes the swaps and deletes the temporary files that killed
    runs left (storage/swaps.py)."""
    with shards_lock(root, exclusive=True):  # taking it finishes half-done swaps
        sweep_dead_temporaries(root)
    return [compact_table(root, name, target_bytes, row_group_bytes) for name in (names or PARTITIONS)]


def compact_table(root: Path, name: str, target_bytes: int, row_group_bytes: int) -> CompactionResult:
    """Compact one table; a damaged file stops it (DamagedShardError) rather than be left out."""
    before = shard_files(root, name)
    merged = skipped = 0
    for directory in sorted({path.parent for path in before}):
        recover_partition(root, directory)
        for group in plan_groups(sorted(directory.glob(f"*{SUFFIX}")), target_bytes):
            if merge_files(root, group, row_group_bytes) is None:
                skipped += 1
            else:
                merged += len(group)
    return CompactionResult(name, len(before), len(shard_files(root, name)), merged, skipped)


def plan_groups(files: list[Path], target_bytes: int) -> list[list[Path]]:
    """Groups of two or more small files (each under half the target) of at most `target_bytes`
    together, in name order; a file already large enough stays as it is."""
    groups: list[list[Path]] = [[]]
    size = 0
    for path in files:
        length = path.stat().st_size
        if length >= target_bytes // 2:
            continue
        if groups[-1] and size + length > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += length
    return [group for group in groups if len(group) > 1]


def recover_partition(root: Path, directory: Path) -> int:
    """Delete files that a compacted file in `directory` already replaced (left by a crash
    between its rename and the deletions): a file it names whose sources it all holds. (A file
    of that name whose source was erased from it since, then labelled again, is new: kept.)"""
    removed = 0
    with shards_lock(root, exclusive=True):
        for path in sorted(directory.glob(f"{COMPACT_PREFIX}*{SUFFIX}")):
            keys, replaced = _footer_keys(str(path), _stamp(path))
            held = {key for key, _ in keys}
            for name in replaced:
                leftover = directory / name
                if leftover.exists() and keys_of(leftover) <= held:
                    leftover.unlink()
                    removed += 1
    return removed


def merge_files(root: Path, files: list[Path], row_group_bytes: int) -> Path | None:
    """Merge `files` (one partition) into one compacted file and swap it in under the exclusive
    lock, or return None when a file changed meanwhile (a writer replaced a source: the next
    compaction tries again) or their schemas cannot be merged."""
    stamps = [_stamp(path) for path in files]
    schemas = [_read_schema(path) for path in files]
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    keys = [pair for path in files for pair in key_rows(path)]
    schema = schema.with_metadata(_compacted_metadata(schemas[0], keys))
    target = _compacted_path(files[0].parent)
    with ExitStack() as stack:
        with shards_lock(root):  # created under the lock: a sweep never takes it for a dead run's
            temporary, handle = stack.enter_context(locked_temporary(target))
        _stream_into(handle, schema, files, row_group_bytes, _folder_values(root, files[0].parent))
        with shards_lock(root, exclusive=True):
            if [_stamp(path) if path.exists() else None for path in files] != stamps:
                return None
            swap_in(root, temporary, target, files)
    return target


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except READ_ERRORS as error:
        raise damaged(path, error) from error


def _folder_values(root: Path, directory: Path) -> dict[str, str]:
    """Partition values a table also stores in its files, from the folder names: a file written
    before the table stored them gets them when it is merged."""
    table, *folders = directory.relative_to(root).parts
    values = dict(folder.split("=", 1) for folder in folders if "=" in folder)
    return {column: values[column] for column in stored_partition_columns(table) if column in values}


def _stream_into(handle: BinaryIO, schema: pa.Schema, files: list[Path], row_group_bytes: int,
                 folder_values: dict[str, str]) -> None:
    """Write the files' rows in order, buffering them into row groups of about `row_group_bytes`
    (a training read of one clip decodes one row group's audio), one input file in memory at a time."""
    buffered: list[pa.Table] = []
    with pq.ParquetWriter(handle, schema, compression=COMPRESSION) as writer:
        for source in files:
            buffered.append(_conform(_read_table(source), schema, folder_values))
            if sum(t.nbytes for t in buffered) >= row_group_bytes:
                _write_group(writer, buffered)
                buffered = []
        if buffered:
            _write_group(writer, buffered)
    handle.flush()
    os.fsync(handle.fileno())


def _write_group(writer: pq.ParquetWriter, tables: list[pa.Table]) -> None:
    table = pa.concat_tables(tables)
    writer.write_table(table, row_group_size=max(table.num_rows, 1))


def _conform(table: pa.Table, schema: pa.Schema, folder_values: dict[str, str]) -> pa.Table:
    """`table` with `schema`'s columns in its order; a column it lacks (an older file) is its
    folder's value for a stored partition column, else null."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table[field.name].cast(field.type))
        elif field.name in folder_values:
            columns.append(pa.array([folder_values[field.name]] * table.num_rows, field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)

