"""Write stage: final clips (with inline FLAC audio), rejects and sources rows, per source."""

from __future__ import annotations

import hashlib
import io
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import soundfile
from prefect import task

from voxtox.audio import SAMPLE_RATE
from voxtox.storage import lake as lakes
from voxtox.storage.lake import LakeTarget
from voxtox.storage.schema import REJECTS_SCHEMA, SOURCES_SCHEMA, clips_schema
from voxtox.confine import SourceRejection
from voxtox.tasks.ingest import PreparedSource
from voxtox.tasks.transcribe import TranscribedUnit


@dataclass(frozen=True)
class WrittenUnit:
    n_sources: int
    n_clips: int
    n_rejects: int


def clip_id(source_sha256: str, kind: str, start_s: float, end_s: float) -> str:
    """Content hash of a clip: the same audio span of the same source always has the same id."""
    key = f"{source_sha256}:{kind}:{round(start_s * 1000)}:{round(end_s * 1000)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def encode_flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _partition_date(moment: datetime) -> str:
    return moment.date().isoformat()


def build_clips(
    source: PreparedSource, rows: pa.Table, asr_model: str, run_id: str, now: datetime
) -> pa.Table:
    """Final clip rows of one source, in the clips schema plus the partition columns."""
    samples = source.samples()
    starts = rows["start_s"].to_pylist()
    ends = rows["end_s"].to_pylist()
    kinds = rows["segment_kind"].to_pylist()
    ids = [clip_id(source.source_sha256, k, s, e) for k, s, e in zip(kinds, starts, ends, strict=True)]
    audio = [
        {
            "bytes": encode_flac(np.asarray(samples[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)])),
            "path": f"{cid}.flac",
        }
        for cid, s, e in zip(ids, starts, ends, strict=True)
    ]
    n = rows.num_rows
    dim = rows.schema.field("text_embedding").type.list_size
    schema = clips_schema(dim)
    extra = {
        "clip_id": pa.array(ids, pa.string()),
        "duration_s": pc.subtract(rows["end_s"], rows["start_s"]),
        "asr_model": pa.array([asr_model] * n, pa.string()),
        "audio": pa.array(audio, schema.field("audio").type),
        "labelled_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    columns = {f.name: extra[f.name] if f.name in extra else rows[f.name] for f in schema}
    table = pa.table(columns, schema=schema)  # `lang` is in the schema: files keep it
    return table.append_column("split", rows["split"]).append_column(
        "date", pa.array([_partition_date(now)] * n, pa.string())
    )


def _rejects_table(records: list[dict], run_id: str, now: datetime) -> pa.Table:
    stamped = [{**r, "rejected_at": now, "run_id": run_id} for r in records]
    table = pa.Table.from_pylist(stamped, REJECTS_SCHEMA)
    return table.append_column("date", pa.array([_partition_date(now)] * len(records), pa.string()))


def _source_table(source: PreparedSource, n_clips: int, n_rejected: int, run_id: str, now: datetime) -> pa.Table:
    record = {
        "source_sha256": source.source_sha256,
        "source_uri": source.uri,
        "split": source.split,
        "duration_s": source.duration_s,
        "original_rate": source.original_rate,
        "channels": source.channels,
        "codec": source.codec,
        "n_chunks": len(source.chunks),
        "n_dropped_short": source.dropped_short,
        "speech_s": source.speech_s,
        "n_clips": n_clips,
        "n_rejected_segments": n_rejected,
        "labelled_at": now,
        "run_id": run_id,
    }
    table = pa.Table.from_pylist([record], SOURCES_SCHEMA)
    return table.append_column("date", pa.array([_partition_date(now)], pa.string()))


def write_sources(
    sources: list[PreparedSource],
    embedded: Path,
    dropped: Path,
    lake: LakeTarget,
    asr_model: str,
    run_id: str,
    allow_forgotten: bool = False,
) -> WrittenUnit:
    """Each source's clips, rejects and `sources` row as one lake commit keyed by the source:
    a rerun, or another worker that labelled the same audio, replaces them (storage/lake.py).
    A recording forgotten meanwhile (on any host) is not written back (unless `allow_forgotten`)."""
    clips_all = pq.read_table(embedded)
    dropped_all = pq.read_table(dropped).to_pylist()
    now = datetime.now(UTC)
    n_clips = n_rejects = 0
    with closing(lakes.connect(lake)) as con:
        for source in sources:
            rows = clips_all.filter(pc.field("source_sha256") == source.source_sha256)
            clips = build_clips(source, rows, asr_model, run_id, now)
            rejects = _rejects_table([r for r in dropped_all if r["source_sha256"] == source.source_sha256], run_id, now)
            marker = _source_table(source, clips.num_rows, rejects.num_rows, run_id, now)
            tables = {"clips": clips, "rejects": rejects, "sources": marker}
            unless = None if allow_forgotten else source.source_sha256
            if not lakes.replace_key(con, lake, source.key, tables, unless_forgotten=unless):
                continue
            n_clips += clips.num_rows
            n_rejects += rejects.num_rows
    return WrittenUnit(len(sources), n_clips, n_rejects)


def rejection_key(rejection: SourceRejection) -> str:
    """Key of an input's rejection: its content hash, so a rerun replaces the row. A duplicate
    copy's content is labelled under that hash by another path, so it is keyed by its own path
    instead (its row must not replace, or be replaced by, the source's rows)."""
    if rejection.source_sha256 and rejection.reason != "duplicate":
        return rejection.source_sha256[:24]
    return hashlib.sha256(rejection.uri.encode()).hexdigest()[:24]


def write_rejections(rejections: list[SourceRejection], lake: LakeTarget, run_id: str) -> WrittenUnit:
    """Record inputs that could not be used, one commit each; a rerun replaces their rows instead of adding."""
    now = datetime.now(UTC)
    with closing(lakes.connect(lake)) as con:
        for rejection in rejections:
            lakes.replace_key(con, lake, rejection_key(rejection), {"rejects": _rejects_table([_rejection_record(rejection)], run_id, now)})
    return WrittenUnit(0, 0, len(rejections))


def _rejection_record(rejection: SourceRejection) -> dict:
    return {
        "source_uri": rejection.uri,
        "source_sha256": rejection.source_sha256,
        "stage": rejection.stage,
        "reason": rejection.reason,
        "detail": rejection.detail,
        "start_s": None,
        "end_s": None,
        "transcript": None,
    }


@task(name="write")
def write_task(
    sources: list[PreparedSource],
    embedded: str,
    unit: TranscribedUnit,
    lake: LakeTarget,
    asr_model: str,
    run_id: str,
    allow_forgotten: bool = False,
) -> WrittenUnit:
    return write_sources(sources, Path(embedded), Path(unit.dropped), lake, asr_model, run_id, allow_forgotten)


@task(name="write-rejects")
def write_rejections_task(rejections: list[SourceRejection], lake: LakeTarget, run_id: str) -> WrittenUnit:
    return write_rejections(rejections, lake, run_id)
