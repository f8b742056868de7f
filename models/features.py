"""Log-mel features computed once per clip and kept, so training does not decode audio every epoch.

A CPU epoch of a small encoder spends much of its time reading a clip's row group from the
shards, decoding its FLAC and computing its log-mel features, and the same clips come back every
epoch and in every cell of an ablation grid (`docs/benchmarks.md`, `benchmarks/train_epoch.py`).
The cache keeps each clip's features (float32, exactly what the decoding path computes, so a run
trains identically with or without it) in Parquet part files under `<dir>/mel<n_mels>/`, one row
per clip keyed by its content-hash id; training holds the features of its clips in memory
(about 115 MB per hour of speech with 80 mel bins).

The files are Parquet with a `clip_id` column on purpose: `voxtox forget` erases a recording's
rows from every Parquet file under the run directories, these included. A clip missing from the
cache (new, or erased) is computed again; part files are written whole (temporary name, rename),
and concurrent writers (grid cells) only ever add files, so a reader sees complete files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torch import Tensor

from voxtox.storage.parquet import write_parquet_atomic

FEATURES_DIR = "features"
#: Clips computed between two part files: an interrupted computation keeps what it wrote.
CLIPS_PER_PART = 512
FEATURES_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("n_mels", pa.int32()),
    ("n_frames", pa.int32()),
    ("features", pa.large_binary()),  # float32, (n_mels, n_frames), C order
])


class ClipAudio(Protocol):
    """Where a set of clips' audio lives (a training ClipIndex, an evaluation set)."""

    clip_ids: list[str]
    files: list[str]
    rows: np.ndarray


@dataclass
class FeatureCache:
    """Per-clip log-mel features under `directory`/mel<n_mels>/."""

    directory: Path
    n_mels: int

    @property
    def root(self) -> Path:
        return self.directory / f"mel{self.n_mels}"

    def read(self, clip_ids: Sequence[str]) -> dict[str, Tensor]:
        """The cached features of those of `clip_ids` that are in the cache."""
        files = sorted(self.root.glob("part-*.parquet")) if self.root.is_dir() else []
        if not files:
            return {}
        wanted = pa.array(sorted(set(clip_ids)), pa.string())
        table = ds.dataset(files, schema=FEATURES_SCHEMA).to_table(filter=ds.field("clip_id").isin(wanted))
        found: dict[str, Tensor] = {}
        columns = (table["clip_id"].to_pylist(), table["n_frames"].to_pylist(), _binary_views(table["features"]))
        for clip_id, frames, data in zip(*columns, strict=True):
            if clip_id not in found:  # two cells may have cached the same clip: identical values
                values = np.frombuffer(data, np.float32).reshape(self.n_mels, frames)
                found[clip_id] = torch.from_numpy(values.copy())
        return found

    def write(self, clip_ids: Sequence[str], features: Sequence[Tensor]) -> Path:
        rows = {
            "clip_id": list(clip_ids),
            "n_mels": [self.n_mels] * len(clip_ids),
            "n_frames": [int(f.shape[1]) for f in features],
            "features": [f.contiguous().numpy().astype(np.float32, copy=False).tobytes() for f in features],
        }
        return write_parquet_atomic(pa.Table.from_pydict(rows, FEATURES_SCHEMA), self.root / f"part-{uuid.uuid4().hex}.parquet")

    def load(self, clips: ClipAudio, compute: ComputeFeatures) -> list[Tensor]:
        """Every clip's features, in the order of `clips`: from the cache, the missing ones
        computed by `compute` (in parts of CLIPS_PER_PART, each saved as it is done)."""
        found = self.read(clips.clip_ids)
        missing = [i for i, clip_id in enumerate(clips.clip_ids) if clip_id not in found]
        for part in _chunks(missing, CLIPS_PER_PART):
            computed = compute(part)
            self.write([clips.clip_ids[i] for i in part], computed)
            found.update((clips.clip_ids[i], f) for i, f in zip(part, computed, strict=True))
        return [found[clip_id] for clip_id in clips.clip_ids]


class ComputeFeatures(Protocol):
    def __call__(self, indices: list[int]) -> list[Tensor]: ...


def _binary_views(column: pa.ChunkedArray) -> Iterator[memoryview]:
    """The bytes of each value of a binary column, without copying them into Python bytes."""
    for chunk in column.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int64, len(chunk) + 1, chunk.offset * 8)
        data = memoryview(chunk.buffers()[2])
        for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
            yield data[start:stop]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
