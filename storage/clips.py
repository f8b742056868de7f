"""The clip index and shard audio access: which clips a split holds, where each clip's audio lies
(shard file and row), and reading one clip's encoded audio back, safely against rewrites.
Training (tasks/train.py), evaluation (tasks/evaluate.py) and calibration read clips through it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from voxtox.labels import CLASSES
from voxtox.storage.catalog import Catalog
from voxtox.storage.schema import HAS_AUDIO, label_column
from voxtox.storage.shards import shard_files


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

    def __len__(self) -> int:
        return len(self.clip_ids)


def clips_files(shards_root: Path) -> list[str]:
    files = [str(path.resolve()) for path in shard_files(shards_root, "clips")]
    if not files:
        raise FileNotFoundError(f"no clips shards under {shards_root}: run `voxtox label` first")
    return files


def locate_clips(catalog: Catalog, files: list[str], chosen: str) -> pa.Table:
    """The rows of the SQL `chosen` (it selects `clip_id`) with the shard file and row that hold
    each clip's audio (`filename`, `file_row_number`), ordered by clip id."""
    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    return catalog.query(
        f"WITH chosen AS ({chosen}), located AS (SELECT clip_id, filename, file_row_number FROM "
        f"read_parquet({file_list}, filename = true, file_row_number = true, union_by_name = true)) "
        f"SELECT * FROM chosen JOIN located USING (clip_id) ORDER BY clip_id"
    )


def read_clip_index(catalog: Catalog, shards_root: Path, split: str, condition: str) -> ClipIndex:
    """Rows of `split` matching the SQL `condition` on the clips view, ordered by clip id."""
    files = clips_files(shards_root)
    labels = ", ".join(f"{label_column(c)}::FLOAT AS {label_column(c)}" for c in CLASSES)
    table = locate_clips(
        catalog, files,
        f"SELECT clip_id, source_sha256, duration_s, text_embedding, {labels} FROM clips "
        f"WHERE split = '{split}' AND {HAS_AUDIO} AND ({condition})",
    )
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
