"""The data contract (../shared/DESIGN.md §5): Parquet schemas of the tables voxtox writes.

Tables, each a table of the lake (storage/lake.py; earlier versions: hive folders under `<data_dir>/shards/`):
- `clips`   one row per labelled segment (split=/lang=/date=): audio, transcript, labels, embedding
- `rejects` inputs or segments that could not be used, with the reason (date=)
- `sources` one row per source that finished labelling; its presence means "done" (date=)
- `human_labels` one row per human-labelled span of a source (date=): the truth that validation
  and test are measured against (`voxtox import-labels`; `voxtox synth` writes them)
- `evaluations` one row per metric of an evaluation (date=): AP with its interval, paired
  differences, operating points and calibration (`voxtox evaluate`, `voxtox ablate`)
- `reviews` one row per clip people reviewed in Label Studio (`voxtox review import`;
  storage/reviews.py): its resolved labels, who reviewed it, when, and the corrected transcript

The catalog also defines the view `segment_truth`: every clip of a source that has human labels,
with `human_label_<class>` true when a labelled span of that class overlaps the clip by at least
half of the shorter of the two (see storage/catalog.py).
"""

from __future__ import annotations

import json

import pyarrow as pa

from voxtox.audio import SAMPLE_RATE
from voxtox.labels import CLASSES

SCHEMA_VERSION = "2"  # 2: clips files also hold `lang` and declare their audio to `datasets`
METADATA_VERSION_KEY = b"voxtox.schema_version"
METADATA_TABLE_KEY = b"voxtox.table"
#: Where Hugging Face `datasets` reads a Parquet file's features from.
HF_METADATA_KEY = b"huggingface"

#: Like Hugging Face datasets' Audio feature: encoded bytes plus a file name.
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: Only the audio column is declared: `datasets` infers every other feature from the Arrow
#: schema, so this stays valid for every `datasets` version that has the Audio feature.
HF_FEATURES = {"info": {"features": {"audio": {"_type": "Audio", "sampling_rate": SAMPLE_RATE}}}}

#: The columns the old shards kept in their directory names, not inside the files (storage/migrate.py
#: reads them back as columns).
PARTITIONS: dict[str, tuple[str, ...]] = {
    "clips": ("split", "lang", "date"),
    "rejects": ("date",),
    "sources": ("date",),
    "human_labels": ("date",),
    "evaluations": ("date",),
    "reviews": (),  # one file, rewritten whole: an import lands entirely or not at all
}

#: Partition columns that a table also stores inside its files: `datasets` does not read hive
#: folder names, and a clip's language is a feature people filter on.
STORED_PARTITION_COLUMNS: dict[str, tuple[str, ...]] = {"clips": ("lang",)}


def stored_partition_columns(table: str) -> tuple[str, ...]:
    return STORED_PARTITION_COLUMNS.get(table, ())


def prob_column(name: str) -> str:
    return f"prob_{name}"


def label_column(name: str) -> str:
    return f"label_{name}"


def clips_schema(embedding_dim: int) -> pa.Schema:
    fields = [
        ("clip_id", pa.string()),
        ("source_sha256", pa.string()),
        ("source_uri", pa.string()),
        ("segment_kind", pa.string()),  # "sentence" (training rows) or "evaluation" (1-60 s)
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("lang", pa.string()),  # also the `lang=` folder: see STORED_PARTITION_COLUMNS
        ("lang_prob", pa.float32()),
        ("transcript", pa.string()),
        ("asr_avg_logprob", pa.float32()),
        ("asr_no_speech_prob", pa.float32()),
        ("asr_compression_ratio", pa.float32()),
        *[(prob_column(c), pa.float32()) for c in CLASSES],
        *[(label_column(c), pa.bool_()) for c in CLASSES],
        ("asr_model", pa.string()),
        ("labeller_model", pa.string()),
        ("text_encoder_model", pa.string()),
        ("text_embedding", pa.list_(pa.float32(), embedding_dim)),
        ("audio", AUDIO_TYPE),
        ("labelled_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ]
    schema = _with_metadata(pa.schema(fields), "clips")
    return schema.with_metadata(schema.metadata | {HF_METADATA_KEY: json.dumps(HF_FEATURES).encode()})


REJECTS_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),  # null when the file could not be read at all
        ("stage", pa.string()),  # ingest, chunk, transcribe, sentence
        ("reason", pa.string()),  # a stable code, e.g. "truncated", "no_speech"
        ("detail", pa.string()),  # the same in words
        ("start_s", pa.float64()),  # null for a whole-source reject
        ("end_s", pa.float64()),
        ("transcript", pa.string()),
        ("rejected_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ]
)

SOURCES_SCHEMA = pa.schema(
    [
        ("source_sha256", pa.string()),
        ("source_uri", pa.string()),
        ("split", pa.string()),
        ("duration_s", pa.float64()),
        ("original_rate", pa.int32()),
        ("channels", pa.int32()),
        ("codec", pa.string()),
        ("n_chunks", pa.int32()),
        ("n_dropped_short", pa.int32()),
        ("speech_s", pa.float64()),
        ("n_clips", pa.int32()),
        ("n_rejected_segments", pa.int32()),
        ("labelled_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ]
)


def human_label_column(name: str) -> str:
    return f"human_label_{name}"


HUMAN_LABELS_SCHEMA = pa.schema(
    [
        ("source_sha256", pa.string()),  # joins the clips of the same audio, whatever its path
        ("source_uri", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("speaker", pa.string()),
        ("lang", pa.string()),
        ("text", pa.string()),
        *[(label_column(c), pa.bool_()) for c in CLASSES],
        ("label_origin", pa.string()),  # where the labels came from, e.g. "synth" or a file name
        ("imported_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    return schema.with_metadata(
        {METADATA_VERSION_KEY: SCHEMA_VERSION.encode(), METADATA_TABLE_KEY: table.encode()}
    )


REJECTS_SCHEMA = _with_metadata(REJECTS_SCHEMA, "rejects")
SOURCES_SCHEMA = _with_metadata(SOURCES_SCHEMA, "sources")
HUMAN_LABELS_SCHEMA = _with_metadata(HUMAN_LABELS_SCHEMA, "human_labels")


EVALUATIONS_SCHEMA = _with_metadata(
    pa.schema(
        [
            ("evaluation_id", pa.string()),  # hash of the systems, the data and the options
            ("evaluated_at", pa.timestamp("us", tz="UTC")),
            ("split", pa.string()),
            ("labels", pa.string()),  # "human", or "pipeline" when judged against the pipeline's labels
            ("aggregation", pa.string()),  # segment score from its windows: max, mean, noisy_or
            ("resample_by", pa.string()),  # bootstrap unit: segment or source
            ("n_resamples", pa.int32()),
            ("system", pa.string()),  # a run's name; for a difference "model − baseline"
            ("run_dir", pa.string()),
            ("compared_to", pa.string()),  # the baseline's name for a difference, else null
            ("kind", pa.string()),  # "model" or "difference"
            ("lang", pa.string()),  # a language code, or "all"
            ("metric", pa.string()),  # ap, precision_at_fpr, recall_at_fpr, threshold_at_fpr, ece, ...
            ("class_name", pa.string()),  # a class, or "mAP" (mean AP of the toxic classes)
            ("point", pa.float64()),
            ("low", pa.float64()),
            ("high", pa.float64()),
            ("n_valid", pa.int32()),  # resamples where the metric is defined
            ("n_invalid", pa.int32()),  # resamples without a positive of the class
            ("excludes_zero", pa.bool_()),  # differences: the interval lies on one side of 0
            ("n_segments", pa.int32()),
            ("n_positive", pa.int32()),
        ]
    ),
    "evaluations",
)


REVIEWS_SCHEMA = _with_metadata(
    pa.schema(
        [
            ("clip_id", pa.string()),
            ("source_sha256", pa.string()),  # `voxtox forget` erases reviews with their recording
            ("split", pa.string()),
            ("lang", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            # The reviewers' majority per class; null where as many said yes as no (`status` tie).
            *[(label_column(c), pa.bool_()) for c in CLASSES],
            ("status", pa.string()),  # agreed (unanimous), majority, or tie (not used anywhere)
            ("n_annotations", pa.int32()),
            ("reviewers", pa.string()),  # who answered, comma-separated (Label Studio e-mails or ids)
            ("reviewed_at", pa.timestamp("us", tz="UTC")),  # the latest answer
            ("task_id", pa.int64()),  # the Label Studio task
            ("project", pa.string()),  # where it came from: the export file or project URL
            ("transcript", pa.string()),  # the corrected transcript; null when nobody changed it
            ("imported_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    "reviews",
)


#: A clip whose audio retention dropped has `audio` NULL. Testing the small `path` field (NULL
#: with the struct) keeps DuckDB from reading every clip's audio bytes to answer the question.
HAS_AUDIO = "audio.path IS NOT NULL"

#: In a `voxtox train` run directory: the recordings (content hashes) it learnt from, per split.
TRAINING_SOURCES_FILE = "training_sources.parquet"
TRAINING_SOURCES_SCHEMA = _with_metadata(
    pa.schema([("source_sha256", pa.string()), ("split", pa.string()), ("n_clips", pa.int64())]),
    "training_sources",
)
