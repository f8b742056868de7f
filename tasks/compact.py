"""Compaction stage: merge each partition's small shard files into large ones (storage/shards.py)."""

from __future__ import annotations

from prefect import task

from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.shards import CompactionResult, compact

MIB = 1 << 20


def compact_shards(settings: Settings, tables: list[str] | None = None) -> list[CompactionResult]:
    """Compact the data dir's shards (every table, or `tables`), then refresh the catalog."""
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
