"""Compaction stage: merge each partition's small shard files into large ones (storage/shards.py),
after dropping duplicate rows by id (storage/heal.py)."""

from __future__ import annotations

from contextlib import closing

from prefect import task

from voxtox.settings import Settings
from voxtox.storage import lake
from voxtox.storage.catalog import Catalog, damaged_tables
from voxtox.storage.heal import heal_duplicates
from voxtox.storage.shards import CompactionResult, DamagedShardError, compact

MIB = 1 << 20


def refuse_damaged(settings: Settings, tables: list[str] | None = None) -> None:
    """Raise DamagedShardError naming every damaged file of `tables` (default: all): compaction
    refuses rather than leave a damaged file out of a merge or rewrite around it."""
    found = {path: why for files in damaged_tables(settings.shards_dir, tables).values() for path, why in files.items()}
    if found:
        raise DamagedShardError(found)


def compact_shards(settings: Settings, tables: list[str] | None = None) -> list[CompactionResult]:
    """Compact the data dir's shards (every table, or `tables`), then refresh the catalog."""
    refuse_damaged(settings, tables)
    heal_duplicates(settings.shards_dir, tables)
    results = compact(
        settings.shards_dir,
        tables,
        target_bytes=settings.compact.target_file_mb * MIB,
        row_group_bytes=settings.compact.row_group_mb * MIB,
    )
    Catalog.from_settings(settings).refresh_views()
    return results


@task(name="compact")
def compact_task(settings: Settings) -> list[CompactionResult]:
    return compact_shards(settings)


@task(name="compact-lake")
def compact_lake_task(settings: Settings) -> dict[str, tuple[int, int]]:
    """Compact the lake `[storage]` names (storage/lake.py compact): table -> (files before, after)."""
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        return lake.compact(con, target)
