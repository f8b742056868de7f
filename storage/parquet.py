"""Writing one Parquet file atomically: run directories, feature caches, scores and evaluation
results (the labelled tables themselves are the lake's: storage/lake.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.files import DiskFullError, is_disk_full

COMPRESSION = "zstd"


def write_parquet_atomic(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
    """Write `table` to `path` (zstd) via a hidden temporary file and an atomic rename, so a
    reader never sees half a file. A full disk raises DiskFullError naming `path` (Arrow's and
    the kernel's own words name no file)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            pq.write_table(table, handle, compression=COMPRESSION, row_group_size=row_group_size)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise
    return path
