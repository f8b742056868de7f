"""Label stage: score every transcript with the text toxicity labeller (six probabilities and
six decisions per clip)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from voxtox.labels import CLASSES
from voxtox.models.labeller import TextLabeller
from voxtox.settings import Settings
from voxtox.storage.schema import label_column, prob_column
from voxtox.storage.parquet import write_parquet_atomic
from voxtox.tasks.transcribe import TranscribedUnit


@lru_cache(maxsize=2)
def load_labeller(checkpoint: str, max_length: int, threads: int) -> TextLabeller:
    return TextLabeller(checkpoint, max_length=max_length, threads=threads)


def label_transcripts(transcripts: Path, checkpoint: str, settings: Settings, out: Path) -> Path:
    """Add prob_<class>, label_<class> and labeller_model columns; write to `out`."""
    table = pq.read_table(transcripts)
    labeller = load_labeller(checkpoint, settings.labeller.max_length, settings.asr.cpu_threads)
    texts = table["transcript"].to_pylist()
    probs = labeller.predict_proba(texts, batch_size=settings.labeller.batch_size)
    # each clip at its detected language's thresholds, where the labeller has some
    langs = table["lang"].to_pylist() if "lang" in table.column_names else None
    decisions = labeller.decide(probs, langs)
    for index, name in enumerate(CLASSES):
        table = table.append_column(prob_column(name), pa.array(probs[:, index], pa.float32()))
    for index, name in enumerate(CLASSES):
        table = table.append_column(label_column(name), pa.array(decisions[:, index]))
    table = table.append_column(
        "labeller_model", pa.array([settings.labeller.model] * table.num_rows, pa.string())
    )
    return write_parquet_atomic(table, out)


@task(name="label")
def label_task(unit: TranscribedUnit, checkpoint: str, settings: Settings) -> str:
    source = Path(unit.transcripts)
    return str(label_transcripts(source, checkpoint, settings, source.with_name("labelled.parquet")))
