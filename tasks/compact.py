"""Compaction stage: DuckLake merges each table's small data files (one per labelled recording)
into large ones, in one commit, and deletes killed writers' orphaned files (storage/lake.py)."""

from __future__ import annotations

from contextlib import closing

from prefect import task

from voxtox.settings import Settings
from voxtox.storage import lake


@task(name="compact-lake")
def compact_lake_task(settings: Settings) -> dict[str, tuple[int, int]]:
    """Compact the lake the settings name (storage/lake.py compact): table -> (files before, after)."""
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        return lake.compact(con, target)
