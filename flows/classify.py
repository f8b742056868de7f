"""The `classify` flow: audio-only classification of a directory (models/classify.py), with a
summary and the per-file decisions as Prefect artifacts (for the nightly flow or any deployment)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from voxtox.settings import Settings
from voxtox.storage.schema import prob_column
from voxtox.models.classify import classify_files, load_model, summarise


@flow(name="classify", log_prints=True)
def classify_flow(
    inputs: list[str], model: str, output: str, settings: Settings | None = None, vad: bool = True,
    window_s: float = 15.0, batch_size: int = 8,
) -> dict[str, object]:
    """Classify `inputs` with `model`, write the records to `output` (.jsonl or .parquet),
    publish a summary and the per-file decisions as Prefect artifacts; returns the summary."""
    settings = settings or Settings()
    loaded = load_model(model)
    records = classify_files(inputs, loaded, settings.vad if vad else None, window_s, "max", batch_size, Path(output))
    summary = summarise(records, loaded.classes) | {"model": loaded.description,
                                                     "thresholds": loaded.thresholds.source, "output": output}
    create_markdown_artifact(
        key="classify-summary",
        markdown="## Audio-only classification\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in summary.items()),
        description="voxtox classify: what this run did",
    )
    create_table_artifact(
        key="classify-files",
        table=[{"file": r["file"], "status": r["status"], "reason": r["reason"], "duration_s": r["duration_s"],
                "labels": ", ".join(r["labels"] or []),  # type: ignore[arg-type]
                **{c: None if r[prob_column(c)] is None else round(float(r[prob_column(c)]), 3)  # type: ignore[arg-type]
                   for c in loaded.classes}}
               for r in records[:1000]],
        description="per file: status and class probabilities (max over windows); first 1000 files",
    )
    return summary
