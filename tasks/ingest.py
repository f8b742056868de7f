"""Ingest stage: hash, decode and chunk one input; stage its audio for the next stages.

Returns a small manifest (never the audio itself): where the decoded 16 kHz audio was staged and
the speech chunks the VAD found, or the reason the input was rejected. Decoding, the VAD and
staging run block by block, so memory stays flat whatever the recording's length.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import runtime, task

from voxtox.audio import RejectedInput, fetch_input
from voxtox.files import DiskFullError, is_disk_full
from voxtox.settings import Settings, Split
from voxtox.chunk import STAGED_DTYPE, SpeechChunk, chunk_analysis, decode_and_stage
from voxtox.confine import SourceRejection

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PreparedSource:
    uri: str
    source_sha256: str
    split: Split
    staged_audio: str  # raw float32 16 kHz mono samples in the work directory (see `samples`)
    staged_power: str  # .npy of the signal power per 10 ms (for quiet cut points)
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

    def samples(self) -> np.ndarray:
        """The staged audio as a read-only memory map: slicing it reads only that span."""
        return np.memmap(self.staged_audio, dtype=STAGED_DTYPE, mode="r")

    def power(self) -> np.ndarray:
        return np.load(self.staged_power)


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
    """Decode and chunk one input; None when its content was labelled before (skipped).

    Any failure on this input (unreadable, undecodable, unusable, or an unexpected error) is
    returned as its rejection: one bad input never stops the others.
    """
    source_sha256 = None
    try:
        path, source_sha256 = fetch_input(uri, work_dir / "download")
        if source_sha256 in known:
            return None
        return _prepare(uri, path, source_sha256, split_rule, settings, work_dir)
    except RejectedInput as rejected:
        return SourceRejection(uri, rejected.reason, rejected.detail, source_sha256)
    except Exception as error:  # noqa: BLE001 - recorded with its reason; the run goes on
        if is_disk_full(error):  # not the input's fault: the run stops, and a rerun labels it
            raise DiskFullError(work_dir) from error
        log.exception("ingest of %s failed", uri)
        return SourceRejection(uri, "error", f"{type(error).__name__}: {error}", source_sha256)


def _prepare(
    uri: str, path: Path, source_sha256: str, split_rule: str, settings: Settings, work_dir: Path
) -> PreparedSource | SourceRejection:
    vad = settings.vad
    stem = work_dir / "audio" / f"{source_sha256[:24]}-{uuid.uuid4().hex[:8]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    staged = stem.with_suffix(".f32")
    try:
        decoded = decode_and_stage(path, staged, vad)
    except RejectedInput:
        staged.unlink(missing_ok=True)
        raise
    duration_s = decoded.analysis.duration_s
    if duration_s < vad.min_segment_s:
        staged.unlink(missing_ok=True)
        raise RejectedInput(
            "too_short", f"{duration_s:.2f} s is shorter than the {vad.min_segment_s:.1f} s minimum segment"
        )
    result = chunk_analysis(decoded.analysis, vad)
    if not result.chunks:
        staged.unlink(missing_ok=True)
        return SourceRejection(
            uri,
            "no_speech",
            f"no speech of at least {vad.min_segment_s:.1f} s found by the VAD "
            f"({result.dropped_short} shorter regions dropped)",
            source_sha256,
            stage="chunk",
        )
    power = stem.with_suffix(".power.npy")
    np.save(power, decoded.analysis.power)
    return PreparedSource(
        uri=uri,
        source_sha256=source_sha256,
        split=assign_split(source_sha256, split_rule, settings),
        staged_audio=str(staged),
        staged_power=str(power),
        duration_s=duration_s,
        original_rate=decoded.original_rate,
        channels=decoded.channels,
        codec=decoded.codec,
        chunks=result.chunks,
        dropped_short=result.dropped_short,
    )


def _ingest_run_name() -> str:
    uris = runtime.task_run.parameters["uris"]
    return f"ingest {uris[0]}" + (f" and {len(uris) - 1} more" if len(uris) > 1 else "")


@task(name="ingest", task_run_name=_ingest_run_name)
def ingest_task(
    uris: list[str], split_rule: str, settings: Settings, work_dir: Path, known: frozenset[str]
) -> list[PreparedSource | SourceRejection | None]:
    """A batch of inputs, each prepared on its own (a broken one becomes its own rejection).
    Batched because a task run's API calls with the local Prefect server cost several times what
    decoding and VAD cost for a typical voice-chat file (docs/benchmarks.md)."""
    return [prepare_source(uri, split_rule, settings, work_dir, known) for uri in uris]


def ingest_batches(uris: list[str], batch_files: int, workers: int) -> list[list[str]]:
    """Inputs in batches of at most `batch_files`, and at least one batch per worker when there
    are enough inputs, so batching never idles a worker."""
    if not uris:
        return []
    size = max(1, min(batch_files, -(-len(uris) // max(workers, 1))))
    return [uris[i : i + size] for i in range(0, len(uris), size)]


def first_of_each_content(
    ingested: list[PreparedSource | SourceRejection | None],
) -> tuple[list[PreparedSource], list[SourceRejection]]:
    """Sources with distinct content, and a `duplicate` rejection for each further copy: the same
    audio under two paths in one run is labelled once, and the other path is on record."""
    first: dict[str, PreparedSource] = {}
    duplicates: list[SourceRejection] = []
    for result in ingested:
        if not isinstance(result, PreparedSource):
            continue
        seen = first.setdefault(result.source_sha256, result)
        if seen is not result:
            duplicates.append(
                SourceRejection(
                    result.uri, "duplicate", f"same audio as {seen.uri}", result.source_sha256
                )
            )
    return list(first.values()), duplicates


def make_units(sources: list[PreparedSource], unit_speech_s: float) -> list[list[PreparedSource]]:
    """Group sources so each transcription task has about `unit_speech_s` of speech to batch."""
    units: list[list[PreparedSource]] = []
    current: list[PreparedSource] = []
    speech = 0.0
    for source in sources:
        current.append(source)
        speech += source.speech_s
        if speech >= unit_speech_s:
            units.append(current)
            current, speech = [], 0.0
    if current:
        units.append(current)
    return units
