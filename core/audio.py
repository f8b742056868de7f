"""Audio in: find inputs, hash them, decode any audio format to 16 kHz mono float32 with PyAV.

The ground floor (core/, the `voxtox` package itself): the ingest stage, the corpus synthesiser, inference and the
benchmarks all decode through it, and `SAMPLE_RATE` here is the one rate everything uses.

Inputs that cannot be used raise `RejectedInput` with a short reason code and a readable detail;
the flow records them in the rejects table and goes on.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io
import os
import stat
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from voxtox.files import jsonl_objects, sha256_file

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".m4a", ".aac", ".mp4", ".webm", ".wma"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl"})
#: Peak below this (about -60 dBFS) is digital silence, not a quiet recording.
SILENCE_PEAK = 1e-3
#: Decoding less than this share of the duration a container declares means a cut-off file.
TRUNCATION_RATIO = 0.9
#: A WAV header (with any chunks before `data`) fits in this many bytes.
RIFF_HEADER_BYTES = 1 << 16


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

    Directories are searched recursively; every entry that is not a plain directory is an input,
    so a non-audio file, a broken or looping symbolic link, or a directory named like an audio
    file (`x.wav/`) becomes a reject with its reason instead of vanishing. A manifest lists one
    path or URI per row (column `uri`, `path` or the first column; JSONL key `uri` or `path`);
    its paths are relative to the manifest's directory. Sorted, without duplicates.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir() and not _looks_like_audio(path):
        found = [p for p in path.rglob("*") if _is_input(p)]
        return sorted({str(p) for p in found if p.suffix.lower() not in MANIFEST_EXTENSIONS})
    if path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS:
        return sorted(set(_read_manifest(path)))
    if path.is_file():
        return [str(path)]
    matches = sorted(glob.glob(text, recursive=True))
    if matches:
        return [m for m in matches if _is_input(Path(m))]
    raise FileNotFoundError(f"input {text!r} is not a file, directory, manifest or matching glob")


def _looks_like_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _is_input(path: Path) -> bool:
    """Hidden entries are skipped; plain directories are searched, not inputs themselves."""
    if path.name.startswith("."):
        return False
    return not path.is_dir() or _looks_like_audio(path)


def _read_manifest(manifest: Path) -> list[str]:
    if manifest.suffix.lower() == ".jsonl":
        rows = [uri for _, uri in _jsonl_uris(manifest)]
    else:
        with manifest.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if not fields:
                raise ValueError(f"{manifest}: empty manifest")
            column = next((c for c in ("uri", "path") if c in fields), fields[0])
            rows = [row[column] for row in reader if row[column]]
    return [_resolve_uri(uri, manifest.parent) for uri in rows]


def _jsonl_uris(manifest: Path) -> Iterator[tuple[int, str]]:
    """(line number, uri) of each record; a bad line is an error naming the file and line."""
    for line_no, record in jsonl_objects(manifest):
        uri = record.get("uri") or record.get("path")
        if not uri:
            raise ValueError(f"{manifest}:{line_no}: no 'uri' or 'path' key")
        yield line_no, str(uri)


def _resolve_uri(uri: str, base: Path) -> str:
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return uri  # opened through fsspec
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else base / path)


def _open_remote(uri: str) -> BinaryIO:
    import fsspec

    return fsspec.open(uri, "rb").open()


def check_local_file(uri: str) -> Path:
    """The path of a local input, or RejectedInput saying why it is not a readable audio file:
    a missing file, a symbolic link to nothing or in a loop, a directory, a device, zero bytes."""
    path = Path(uri)
    try:
        info = path.stat()
    except FileNotFoundError as error:
        if path.is_symlink():
            raise RejectedInput(
                "broken_symlink", f"{uri} is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from error
        raise RejectedInput("unreadable", f"{uri} does not exist") from error
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RejectedInput("symlink_loop", f"{uri}: symbolic links form a loop") from error
        raise RejectedInput("unreadable", f"cannot read {uri}: {error.strerror or error}") from error
    if stat.S_ISDIR(info.st_mode):
        raise RejectedInput("not_a_file", f"{uri} is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise RejectedInput("not_a_file", f"{uri} is not a regular file")
    if info.st_size == 0:
        raise RejectedInput("empty", "the file has zero bytes")
    return path


def fetch_input(uri: str, spool_dir: Path) -> tuple[Path, str]:
    """A local copy of an input (the file itself, or a remote URI spooled to `spool_dir`) and the
    sha256 of its bytes, read in blocks; RejectedInput for anything that cannot be read.

    Any failure to reach a remote input (a missing fsspec protocol package, a refused connection,
    a 404) rejects that input only.
    """
    if "://" not in uri:
        path = check_local_file(uri)
        try:
            return path, sha256_file(path)
        except OSError as error:
            raise RejectedInput("unreadable", f"cannot read {uri}: {error.strerror or error}") from error
    spool_dir.mkdir(parents=True, exist_ok=True)
    spooled = spool_dir / f"download-{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    try:
        with _open_remote(uri) as remote, spooled.open("wb") as local:
            while block := remote.read(1 << 20):
                digest.update(block)
                local.write(block)
    except Exception as error:  # noqa: BLE001 - whatever the protocol raises, this input is unreadable
        spooled.unlink(missing_ok=True)
        raise RejectedInput("unreadable", f"cannot read {uri}: {_describe(error)}") from error
    if spooled.stat().st_size == 0:
        raise RejectedInput("empty", "the file has zero bytes")
    return spooled, digest.hexdigest()


def _describe(error: BaseException) -> str:
    if isinstance(error, ImportError):
        return f"{error} (install the fsspec protocol package it names)"
    return f"{type(error).__name__}: {error}"


def read_source(uri: str) -> bytes:
    """The input's bytes, whole, or RejectedInput when it cannot be read or is empty."""
    try:
        if "://" not in uri:
            return check_local_file(uri).read_bytes()
        with _open_remote(uri) as handle:
            data = handle.read()
    except RejectedInput:
        raise
    except OSError as error:
        raise RejectedInput("unreadable", f"cannot read {uri}: {error.strerror or error}") from error
    except Exception as error:  # noqa: BLE001 - a remote protocol's failure rejects this input only
        raise RejectedInput("unreadable", f"cannot read {uri}: {_describe(error)}") from error
    if not data:
        raise RejectedInput("empty", "the file has zero bytes")
    return data


@dataclass
class SampleStats:
    """What `check_usable` needs to know of decoded audio, gathered block by block."""

    n_samples: int = 0
    n_nonfinite: int = 0
    peak: float = 0.0

    def update(self, block: np.ndarray) -> None:
        self.n_samples += block.size
        finite = np.isfinite(block)
        self.n_nonfinite += int(block.size - np.count_nonzero(finite))
        if block.size:
            self.peak = max(self.peak, float(np.abs(block[finite]).max(initial=0.0)))


class AudioReader:
    """An open audio container, decoded to 16 kHz mono float32 blocks as it is read.

    Memory stays flat in the recording's length: only one decoded frame (tens of ms) is held at a
    time. Open it with `open_audio`.
    """

    def __init__(self, container: av.container.InputContainer) -> None:
        if not container.streams.audio:
            raise RejectedInput("not_audio", "the container has no audio stream")
        self._container = container
        self._stream = container.streams.audio[0]
        self.original_rate: int = self._stream.codec_context.sample_rate
        self.channels: int = self._stream.codec_context.channels
        self.codec: str = self._stream.codec_context.name
        self.declared_s = _declared_duration(container, self._stream)

    def blocks(self, min_samples: int = 10 * SAMPLE_RATE) -> Iterator[np.ndarray]:
        """Decoded audio in blocks of at least `min_samples` (the last may be shorter): codec
        frames are 20-60 ms, and handing on each one alone costs more than decoding it."""
        pending: list[np.ndarray] = []
        size = 0
        for piece in self._pieces():
            pending.append(piece)
            size += piece.size
            if size >= min_samples:
                yield np.concatenate(pending)
                pending, size = [], 0
        if pending:
            yield np.concatenate(pending)

    def _pieces(self) -> Iterator[np.ndarray]:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in self._container.decode(self._stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        except (av.error.FFmpegError, EOFError) as error:
            raise RejectedInput("not_audio", f"cannot decode as audio ({error})") from error


@contextmanager
def open_audio(source: str | Path | BinaryIO) -> Iterator[AudioReader]:
    """Open a path or binary file object for block-wise decoding (see AudioReader)."""
    if isinstance(source, str | Path):
        _check_riff_file(Path(source))
    try:
        container = av.open(str(source) if isinstance(source, Path) else source, metadata_errors="ignore")
    except (av.error.FFmpegError, EOFError) as error:
        raise RejectedInput("not_audio", f"cannot decode as audio ({error})") from error
    with container:
        yield AudioReader(container)


def decode_audio(data: bytes) -> DecodedAudio:
    """Decode one input's bytes to 16 kHz mono float32, or raise RejectedInput saying why not."""
    _check_riff_complete(data[:RIFF_HEADER_BYTES], len(data))
    with open_audio(io.BytesIO(data)) as reader:
        blocks = list(reader.blocks())
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    stats = SampleStats()
    stats.update(samples)
    check_usable(stats, reader.declared_s)
    return DecodedAudio(samples, reader.original_rate, reader.channels, reader.codec)


def load_audio(uri: str) -> DecodedAudio:
    """A whole recording in memory (for short inputs; ingest decodes block-wise instead)."""
    return decode_audio(read_source(uri))


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _check_riff_file(path: Path) -> None:
    with path.open("rb") as handle:
        header = handle.read(RIFF_HEADER_BYTES)
    _check_riff_complete(header, path.stat().st_size)


def _check_riff_complete(header: bytes, total_bytes: int) -> None:
    """A WAV whose data chunk is shorter than its header says was cut off in transfer.

    FFmpeg silently decodes what is there, so this is checked on the header itself (`header`:
    the file's first bytes, `total_bytes`: its size).
    """
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(header):
        chunk_id, size = struct.unpack_from("<4sI", header, offset)
        if chunk_id == b"data":
            available = total_bytes - offset - 8
            if size != 0xFFFFFFFF and available < size * TRUNCATION_RATIO:
                raise RejectedInput(
                    "truncated",
                    f"WAV header declares {size} bytes of audio, the file holds {available}",
                )
            return
        offset += 8 + size + (size & 1)


def check_usable(stats: SampleStats, declared_s: float | None) -> None:
    """RejectedInput for decoded audio that is empty, has NaN/inf samples, is cut off or silent."""
    if stats.n_samples == 0:
        raise RejectedInput("empty", "no audio samples decoded")
    if stats.n_nonfinite:
        raise RejectedInput("invalid_samples", f"{stats.n_nonfinite} samples are NaN or infinite")
    decoded_s = stats.n_samples / SAMPLE_RATE
    if declared_s and decoded_s < declared_s * TRUNCATION_RATIO and declared_s - decoded_s > 0.5:
        raise RejectedInput(
            "truncated", f"container declares {declared_s:.2f} s, only {decoded_s:.2f} s decode"
        )
    if stats.peak < SILENCE_PEAK:
        raise RejectedInput("silent", f"peak amplitude {stats.peak:.2e} (below -60 dBFS)")
