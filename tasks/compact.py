"""Compaction stage: DuckLake merges each table's small data files (one per labelled recording)
into large ones, in one commit, and deletes killed writers' orphaned files (storage/lake.py)."""

from __future__ import annotations

from contextlib import closing

from prefect import get_run_logger, task

from voxtox.settings import Settings
from voxtox.storage import lake


@task(name="compact-lake")
def compact_lake_task(settings: Settings) -> dict[str, tuple[int, int]]:
    """Compact the lake `[storage]` names (storage/lake.py compact): table -> (files before, after);
    then expire the snapshots older than `[storage] keep_snapshots_days` and delete the files no
    snapshot references any more (what the merge replaced, once no kept snapshot reads it)."""
    target = lake.target_for(settings)
    with closing(lake.connect(target)) as con:
        merged = lake.compact(con, target)
        expired, deleted = lake.expire_snapshots(con, target, settings.storage.keep_snapshots_days)
    get_run_logger().info("lake %s: %d snapshot(s) older than %g days expired, %d unreferenced file(s) deleted",
                          target.catalog_name(), expired, settings.storage.keep_snapshots_days, deleted)
    return merged
