"""Reading the single-machine shards of earlier versions (issue 28: the embedded lake replaced
them; voxtox no longer writes them). `voxtox migrate` (storage/migrate.py) reads them into the
lake; `voxtox forget`'s and retention's shard halves (storage/forget.py, storage/erasure.py,
tasks/retention.py) still rewrite them until their lake versions land.

A table was hive folders of Parquet files: one `part-<key>.parquet` per source key and partition,
or `compact-<id>.parquet` files whose footer lists the keys they hold, in row order, with their
row counts. Writers held an exclusive `flock` on the shards folder, readers a shared one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
        modes[key] = [exclusive]
        try:
            yield
        finally:
            del modes[key]
    finally:
        os.close(descriptor)  # releases the flock


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
