"""Import-labels stage: the nightly's human-label files (its inbox `truth/`) into the catalog
(the import itself is storage/human_labels.py)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from voxtox.settings import Settings
from voxtox.storage.human_labels import import_truth_files_to_lake
from voxtox.storage.lake import target_for


@task(name="import-labels", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def import_labels_task(paths: list[str], settings: Settings, confine_to: Path | None = None) -> int:
    """Import human-label files (the nightly's inbox `truth/`) into the lake's `human_labels`."""
    files = [Path(p) for p in paths]
    return import_truth_files_to_lake(files, target_for(settings), confine_to=confine_to).n_spans
