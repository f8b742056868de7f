"""Import-labels stage: the nightly's human-label files (its inbox `truth/`) into the catalog
(the import itself is storage/human_labels.py)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from voxtox.settings import Settings
from voxtox.storage.catalog import Catalog
from voxtox.storage.human_labels import import_truth_files, import_truth_files_to_lake
from voxtox.storage.lake import target_of


@task(name="import-labels", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def import_labels_task(paths: list[str], settings: Settings, confine_to: Path | None = None) -> int:
    """Import human-label files (the nightly's inbox `truth/`) and refresh the catalog's views."""
    target = target_of(settings.storage.catalog_url, settings.storage.data_url)
    files = [Path(p) for p in paths]
    if target is not None:
        return import_truth_files_to_lake(files, target, confine_to=confine_to).n_spans
    report = import_truth_files(files, settings.shards_dir, confine_to=confine_to)
    Catalog.from_settings(settings).refresh_views()
    return report.n_spans
