"""The clip index and clip audio access: which clips a split holds, where each clip's audio lies
(a local copy of the lake's audio at one snapshot: file and row), and reading one clip's encoded
audio back, safely against rewrites.
Training (tasks/train.py), evaluation (tasks/evaluate.py) and calibration read clips through it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.labels import CLASSES
from voxtox.storage.catalog import Catalog, LakeCatalog
from voxtox.storage.schema import HAS_AUDIO, label_column


@dataclass
class ClipIndex:
    """Everything about a split's clips but their audio, and where each clip's audio is."""

    clip_ids: list[str]
    sources: list[str]  # each clip's source_sha256: the recordings a run learns from
    durations: np.ndarray  # (n,) seconds
    labels: np.ndarray  # (n, classes) float32 in {0, 1}
    text: np.ndarray  # (n, text_dim) float32
    files: list[str]
    rows: np.ndarray  # (n,) row number inside its file
    n_reviewed: int = 0  # clips whose labels are people's reviews (`voxtox review import`), not the pipeline's

    def __len__(self) -> int:
        return len(self.clip_ids)


def require_clips(catalog: LakeCatalog) -> None:
    """FileNotFoundError naming the lake when it holds no clips yet."""
    if not catalog.has_table("clips"):
        raise FileNotFoundError(f"no clips in the lake {catalog.target.catalog_name()}: run `voxtox label` first")


def labelled_clips_sql(split: str, condition: str, reviewed: bool) -> str:
    """The clips of `split` matching `condition` with their labels: a reviewed clip's review
    (ties left out), else the pipeline's."""
    chosen = f"SELECT * FROM clips WHERE split = '{split}' AND {HAS_AUDIO} AND ({condition})"
    if not reviewed:
        labels = ", ".join(f"{label_column(c)}::FLOAT AS {label_column(c)}" for c in CLASSES)
        return f"SELECT clip_id, source_sha256, duration_s, text_embedding, {labels}, false AS reviewed FROM ({chosen})"
    labels = ", ".join(f"coalesce(r.{label_column(c)}, c.{label_column(c)})::FLOAT AS {label_column(c)}" for c in CLASSES)
    return (
        f"SELECT c.clip_id, c.source_sha256, c.duration_s, c.text_embedding, {labels}, r.clip_id IS NOT NULL AS reviewed "
        f"FROM ({chosen}) c LEFT JOIN (SELECT * FROM reviews WHERE status <> 'tie') r ON r.clip_id = c.clip_id"
    )


def as_lake(catalog: Catalog) -> LakeCatalog:
    """Every catalog is a lake's now (Catalog.from_settings)."""
    if not isinstance(catalog, LakeCatalog):
        raise TypeError(f"expected the catalog of a lake, got {type(catalog).__name__}")
    return catalog


def read_clip_index(catalog: Catalog, split: str, condition: str) -> ClipIndex:
    """Rows of `split` matching the SQL `condition` on the clips view, ordered by clip id, with
    their labels: people's where they reviewed the clip, else the pipeline's. The audio is copied
    locally at the catalog's snapshot (LakeCatalog.locate_clips)."""
    lake = as_lake(catalog)
    require_clips(lake)
    table = lake.locate_clips(labelled_clips_sql(split, condition, lake.has_table("reviews")))
    if not table.num_rows:
        raise ValueError(f"no {split} clips match the filter {condition!r}")
    return ClipIndex(
        clip_ids=table["clip_id"].to_pylist(),
        sources=table["source_sha256"].to_pylist(),
        durations=table["duration_s"].to_numpy(),
        labels=np.stack([table[label_column(c)].to_numpy() for c in CLASSES], axis=1).astype(np.float32),
        text=np.asarray(table["text_embedding"].to_pylist(), dtype=np.float32),
        files=table["filename"].to_pylist(),
        rows=table["file_row_number"].to_numpy(),
        n_reviewed=int(sum(table["reviewed"].to_pylist())),
    )


class ShardChangedError(RuntimeError):
    """A shard was rewritten (voxtox forget, retention, compaction) after its rows were located."""


def _version(file: str) -> tuple[int, int]:
    """One version of a file: a rewrite (temporary file + rename) has another inode."""
    try:
        stat = os.stat(file)
    except FileNotFoundError as error:
        raise ShardChangedError(f"{file} is gone (erased or compacted since its clips were located): run again") from error
    return stat.st_ino, stat.st_mtime_ns


@lru_cache(maxsize=64)
def _row_group_starts(file: str, version: tuple[int, int]) -> np.ndarray:
    metadata = pq.ParquetFile(file).metadata
    return np.cumsum([0] + [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])


@lru_cache(maxsize=4)
def _audio_of_row_group(file: str, version: tuple[int, int], group: int) -> pa.Table:
    return pq.ParquetFile(file).read_row_group(group, columns=["clip_id", "audio"])


def read_audio_bytes(file: str, row: int, clip_id: str) -> bytes:
    """One clip's encoded audio; the row group read stays cached for its neighbours. The row
    must still hold `clip_id`: a shard rewritten since (its rows moved) is an error, never
    another clip's audio."""
    version = _version(file)
    starts = _row_group_starts(file, version)
    group = int(np.searchsorted(starts, row, side="right") - 1)
    rows = _audio_of_row_group(file, version, group) if row < starts[-1] else None
    if rows is None or rows["clip_id"][row - int(starts[group])].as_py() != clip_id:
        raise ShardChangedError(f"{file} row {row} no longer holds clip {clip_id} (the shard was rewritten): run again")
    audio = rows["audio"][row - int(starts[group])]
    if not audio.is_valid:
        raise ShardChangedError(f"clip {clip_id}: its audio was dropped (retention) after it was chosen: run again")
    return audio["bytes"].as_py()
