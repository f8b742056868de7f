"""Ingest: find inputs, hash them, decode any audio format to 16 kHz mono float32 with PyAV.

Inputs that cannot be used raise `RejectedInput` with a short reason code and a readable detail;
the flow records them in the rejects table and goes on.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".m4a", ".aac", ".mp4", ".webm", ".wma"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl"})
#: Peak below this (about -60 dBFS) is digital silence, not a quiet recording.
SILENCE_PEAK = 1e-3
#: Decoding less than this share of the duration a container declares means a cut-off file.
TRUNCATION_RATIO = 0.9


class RejectedInput(Exception):
    """An input that cannot be used; `reason` is a stable code, `detail` says why in words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, 16 kHz, in [-1, 1]
    original_rate: int
    channels: int
    codec: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def discover_inputs(spec: str | Path) -> list[str]:
    """Expand what a user passed (directory, glob, file, CSV/JSONL manifest) into input paths.

    Directories are searched recursively for audio extensions; a manifest lists one path or URI
    per row (column `uri`, `path` or the first column; JSONL key `uri` or `path`). Paths in a
    manifest are relative to the manifest's directory. Sorted, without duplicates.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        # Every file in an input directory is an input: a non-audio one is rejected, not ignored.
        return sorted({str(p) for p in found if p.suffix.lower() not in MANIFEST_EXTENSIONS})
    if path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS:
        return sorted(set(_read_manifest(path)))
    if path.is_file():
        return [str(path)]
    matches = sorted(glob.glob(text, recursive=True))
    if matches:
        return [m for m in matches if Path(m).is_file()]
    raise FileNotFoundError(f"input {text!r} is not a file, directory, manifest or matching glob")


def _read_manifest(manifest: Path) -> list[str]:
    rows: list[str] = []
    if manifest.suffix.lower() == ".jsonl":
        for line_no, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            uri = record.get("uri") or record.get("path")
            if not uri:
                raise ValueError(f"{manifest}:{line_no}: no 'uri' or 'path' key")
            rows.append(uri)
    else:
        with manifest.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if not fields:
                raise ValueError(f"{manifest}: empty manifest")
            column = next((c for c in ("uri", "path") if c in fields), fields[0])
            rows = [row[column] for row in reader if row[column]]
    return [_resolve_uri(uri, manifest.parent) for uri in rows]


def _resolve_uri(uri: str, base: Path) -> str:
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return uri  # opened through fsspec
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else base / path)


def read_input_bytes(uri: str) -> bytes:
    """Read a local path or any fsspec URL (s3://, gs://, http://... where reachable)."""
    if "://" in uri:
        import fsspec

        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    return Path(uri).read_bytes()


def read_source(uri: str) -> bytes:
    """The input's bytes, or RejectedInput when it cannot be read or is empty."""
    try:
        data = read_input_bytes(uri)
    except OSError as error:
        raise RejectedInput("unreadable", f"cannot read {uri}: {error}") from error
    if not data:
        raise RejectedInput("empty", "the file has zero bytes")
    return data


def decode_audio(data: bytes) -> DecodedAudio:
    """Decode one input's bytes to 16 kHz mono float32, or raise RejectedInput saying why not."""
    _check_riff_complete(data)
    samples, rate, channels, codec, declared_s = _decode_bytes(data)
    _check_usable(samples, declared_s)
    return DecodedAudio(
        samples=samples,
        original_rate=rate,
        channels=channels,
        codec=codec,
    )


def load_audio(uri: str) -> DecodedAudio:
    return decode_audio(read_source(uri))


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int, int, str, float | None]:
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RejectedInput("not_audio", "the container has no audio stream")
            stream = container.streams.audio[0]
            declared_s = _declared_duration(container, stream)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            pieces = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
            rate = stream.codec_context.sample_rate
            channels = stream.codec_context.channels
            codec = stream.codec_context.name
    except RejectedInput:
        raise
    except (av.error.FFmpegError, EOFError) as error:
        raise RejectedInput("not_audio", f"cannot decode as audio ({error})") from error
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return samples.astype(np.float32, copy=False), rate, channels, codec, declared_s


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _check_riff_complete(data: bytes) -> None:
    """A WAV whose data chunk is shorter than its header says was cut off in transfer.

    FFmpeg silently decodes what is there, so this is checked on the header itself.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        if chunk_id == b"data":
            available = len(data) - offset - 8
            if size != 0xFFFFFFFF and available < size * TRUNCATION_RATIO:
                raise RejectedInput(
                    "truncated",
                    f"WAV header declares {size} bytes of audio, the file holds {available}",
                )
            return
        offset += 8 + size + (size & 1)


def _check_usable(samples: np.ndarray, declared_s: float | None) -> None:
    if samples.size == 0:
        raise RejectedInput("empty", "no audio samples decoded")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise RejectedInput("invalid_samples", f"{bad} samples are NaN or infinite")
    decoded_s = samples.size / SAMPLE_RATE
    if declared_s and decoded_s < declared_s * TRUNCATION_RATIO and declared_s - decoded_s > 0.5:
        raise RejectedInput(
            "truncated", f"container declares {declared_s:.2f} s, only {decoded_s:.2f} s decode"
        )
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise RejectedInput("silent", f"peak amplitude {peak:.2e} (below -60 dBFS)")
