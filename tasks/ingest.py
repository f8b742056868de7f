"""Ingest stage: hash, decode and chunk one input; stage its audio for the next stages.

Returns a small manifest (never the audio itself): where the decoded 16 kHz audio was staged and
the speech chunks the VAD found, or the reason the input was rejected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import task

from voxtox.settings import Settings, Split
from voxtox.tasks.chunk import SpeechChunk, chunk_speech
from voxtox.tasks.decode import RejectedInput, decode_audio, read_source


@dataclass(frozen=True)
class SourceRejection:
    uri: str
    reason: str
    detail: str
    source_sha256: str | None = None
    stage: str = "ingest"


@dataclass(frozen=True)
class PreparedSource:
    uri: str
    source_sha256: str
    split: Split
    staged_audio: str  # .npy of float32 16 kHz mono samples in the work directory
    duration_s: float
    original_rate: int
    channels: int
    codec: str
    chunks: list[SpeechChunk] = field(default_factory=list)
    dropped_short: int = 0

    @property
    def key(self) -> str:
        """Short content key used in shard names."""
        return self.source_sha256[:24]

    @property
    def speech_s(self) -> float:
        return sum(chunk.duration_s for chunk in self.chunks)


def assign_split(source_sha256: str, rule: str, settings: Settings) -> Split:
    """A fixed split, or `auto`: by content hash in the configured proportions (stable)."""
    if rule != "auto":
        return rule  # type: ignore[return-value]
    position = int(source_sha256[:8], 16) / 0x1_0000_0000
    if position < settings.split.train:
        return "train"
    if position < settings.split.train + settings.split.val:
        return "val"
    return "test"


def prepare_source(
    uri: str,
    split_rule: str,
    settings: Settings,
    work_dir: Path,
    known: frozenset[str] = frozenset(),
) -> PreparedSource | SourceRejection | None:
    """Decode and chunk one input; None when its content was labelled before (skipped)."""
    try:
        data = read_source(uri)
    except RejectedInput as rejected:
        return SourceRejection(uri, rejected.reason, rejected.detail)
    source_sha256 = hashlib.sha256(data).hexdigest()
    if source_sha256 in known:
        return None
    try:
        audio = decode_audio(data)
    except RejectedInput as rejected:
        return SourceRejection(uri, rejected.reason, rejected.detail, source_sha256)
    vad = settings.vad
    if audio.duration_s < vad.min_segment_s:
        return SourceRejection(
            uri,
            "too_short",
            f"{audio.duration_s:.2f} s is shorter than the {vad.min_segment_s:.1f} s minimum segment",
            source_sha256,
        )
    result = chunk_speech(audio.samples, vad)
    if not result.chunks:
        return SourceRejection(
            uri,
            "no_speech",
            f"no speech of at least {vad.min_segment_s:.1f} s found by the VAD "
            f"({result.dropped_short} shorter regions dropped)",
            source_sha256,
            stage="chunk",
        )
    staged = work_dir / "audio" / f"{source_sha256[:24]}.npy"
    staged.parent.mkdir(parents=True, exist_ok=True)
    np.save(staged, audio.samples)
    return PreparedSource(
        uri=uri,
        source_sha256=source_sha256,
        split=assign_split(source_sha256, split_rule, settings),
        staged_audio=str(staged),
        duration_s=audio.duration_s,
        original_rate=audio.original_rate,
        channels=audio.channels,
        codec=audio.codec,
        chunks=result.chunks,
        dropped_short=result.dropped_short,
    )


@task(name="ingest", task_run_name="ingest {uri}")
def ingest_task(
    uri: str, split_rule: str, settings: Settings, work_dir: Path, known: frozenset[str]
) -> PreparedSource | SourceRejection | None:
    return prepare_source(uri, split_rule, settings, work_dir, known)
