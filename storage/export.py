"""`voxtox export-dataset DIR`: the clips as a plain Parquet folder that Hugging Face `datasets`,
pandas, Polars or anything else reads without voxtox, DuckDB or the lake's catalog.

    DIR/README.md                   the dataset card: its `configs` name the splits' files
    DIR/data/train-00000.parquet    one split per file name (`validation` is voxtox's `val`)
    DIR/data/validation-00000.parquet ...

The files hold the clips' columns (storage/schema.py: audio as Hugging Face's Audio feature,
16 kHz FLAC, `lang`, the embedding as a fixed-size list), declared in each file's `huggingface`
metadata; the split is the file name, as `datasets` expects, not a column. The export reads the
lake (storage/catalog.py) in one transaction (one snapshot). It is written beside DIR and renamed into place, so DIR
holds a whole export or none.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.storage.catalog import Catalog
from voxtox.storage.dataset_card import CARD, HF_SPLITS, dataset_card
from voxtox.storage.schema import HF_FEATURES, HF_METADATA_KEY

#: Columns of the clips view that the files leave out: the split is the file name, the date bookkeeping.
NOT_EXPORTED = ("split", "date")
#: A file holds at most about this many bytes of rows (audio dominates) before the next begins.
FILE_BYTES = 256 << 20
DATA = "data"
CARD_PATTERN = DATA + "/{name}-*.parquet"


def export_dataset(catalog: Catalog, out: Path, file_bytes: int = FILE_BYTES) -> dict[str, int]:
    """Write the clips of `catalog` to the folder `out` (which must not exist, or be empty);
    returns the rows per split (`datasets`' names)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: export into a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        (work / DATA).mkdir(parents=True)
        with catalog.connect() as con:
            rows = _write_splits(con, work / DATA, file_bytes)
        (work / CARD).write_text(dataset_card([split for split in HF_SPLITS if rows.get(HF_SPLITS[split])],
                                              CARD_PATTERN))
        os.replace(work, out)  # an empty `out` is replaced; a whole export, or nothing
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _write_splits(con: duckdb.DuckDBPyConnection, folder: Path, file_bytes: int) -> dict[str, int]:
    """Each split's clips into its files, all read in one transaction (one snapshot of a lake)."""
    tables = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if "clips" not in tables:
        raise ValueError("there are no clips to export yet: run `voxtox label` first")
    columns = [name for (name,) in con.execute("SELECT column_name FROM (DESCRIBE clips)").fetchall()
               if name not in NOT_EXPORTED]
    select = ", ".join(f'"{c}"' for c in columns)
    rows: dict[str, int] = {}
    con.execute("BEGIN")
    try:
        for split, name in HF_SPLITS.items():
            reader = con.execute(f"SELECT {select} FROM clips WHERE split = ?", [split]).to_arrow_reader(512)
            rows[name] = _write_files(reader, folder, name, file_bytes)
    finally:
        con.execute("ROLLBACK")  # it only read
    return rows


def _write_files(reader: pa.RecordBatchReader, folder: Path, name: str, file_bytes: int) -> int:
    """The batches of `reader` into `<name>-00000.parquet`, `<name>-00001.parquet`, ... of about
    `file_bytes` each (none when there are no rows); returns the rows written."""
    schema = reader.schema.with_metadata({HF_METADATA_KEY: json.dumps(HF_FEATURES).encode()})
    writer: pq.ParquetWriter | None = None
    written = size = files = 0
    try:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            if writer is None or size >= file_bytes:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(folder / f"{name}-{files:05d}.parquet", schema, compression="zstd")
                files, size = files + 1, 0
            writer.write_batch(batch.replace_schema_metadata(schema.metadata))
            written += batch.num_rows
            size += batch.nbytes
    finally:
        if writer is not None:
            writer.close()
    return written
