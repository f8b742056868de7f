"""Live audio scored while people speak: which windows fall due on a stream, and scoring the due
windows of many streams together. Prefect-free; models/stream_server.py puts it behind WebSockets.

A stream is 16 kHz mono audio arriving in frames. Windows are the paper's 15 s (§4.1), scored
  - every `hop_s` of stream time on the last `window_s` of audio ("hop"), while there is speech
    in it (a hop over silence is skipped unless `score_silence`), and
  - when a speech region ends ("speech_end"): the region's last `window_s`, at least 1 s, so a
    short outburst is scored when it ends rather than at the next hop, and
  - when the stream ends inside a speech region ("end").
Speech regions come from webrtcvad with the labelling pipeline's `[vad]` settings (core/chunk.py):
a region opens at a speech frame (less `start_padding_ms`) and closes once `hangover_ms` +
`merge_gap_s` of non-speech followed it, ending `hangover_ms` after its last speech frame.

A stream keeps only the audio its next window can need (window + the VAD's close delay), so its
memory is bounded whatever its length; the batcher's queue is bounded too (`Batcher`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
import webrtcvad

from voxtox.audio import SAMPLE_RATE
from voxtox.models.inference import WindowScorer
from voxtox.settings import VadSettings
from voxtox.storage.runs import MODEL_WEIGHTS, THRESHOLDS_FILE, resolve_model_dir

if TYPE_CHECKING:
    from voxtox.models.speech_classifier import SpeechToxicityClassifier

log = logging.getLogger(__name__)

WindowReason = Literal["hop", "speech_end", "end"]
#: A window shorter than this is widened backwards to it when the stream has the audio.
MIN_WINDOW_S = 1.0
#: Shorter than this is not a window Whisper's convolutions can take.
MIN_SCORABLE_S = 0.1


@dataclass(frozen=True)
class DueWindow:
    """A window of one stream that is ready to be scored; times are samples of stream time."""

    stream_id: str
    start: int
    end: int
    reason: WindowReason
    samples: np.ndarray  # float32, end - start long
    due_at: float  # time.monotonic() when its last sample arrived

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


class StreamVad:
    """webrtcvad over a stream, frame by frame; `feed` returns the speech regions that closed."""

    def __init__(self, settings: VadSettings) -> None:
        self._vad = webrtcvad.Vad(settings.aggressiveness)
        self.frame = SAMPLE_RATE * settings.frame_ms // 1000
        self._carry = np.zeros(0, dtype="<i2")
        self._frames = 0
        self._padding = int(settings.start_padding_ms / 1000 * SAMPLE_RATE)
        self._hangover = int(settings.hangover_ms / 1000 * SAMPLE_RATE)
        self.close_delay = self._hangover + int(settings.merge_gap_s * SAMPLE_RATE)
        self.region_start: int | None = None  # first speech sample of the open region
        self.last_speech_end: int | None = None  # end of the last speech frame heard

    def feed(self, pcm: np.ndarray) -> list[tuple[int, int]]:
        """(start, end) samples of the regions this audio closed, padding and hang-over applied."""
        pcm = np.concatenate([self._carry, pcm])
        whole = len(pcm) // self.frame * self.frame
        closed = []
        for offset in range(0, whole, self.frame):
            position = self._frames * self.frame
            self._frames += 1
            if self._vad.is_speech(pcm[offset : offset + self.frame].tobytes(), SAMPLE_RATE):
                if self.region_start is None:
                    self.region_start = position
                self.last_speech_end = position + self.frame
            elif self.region_start is not None and self.last_speech_end is not None and (
                position + self.frame - self.last_speech_end >= self.close_delay
            ):
                closed.append(self._region())
        self._carry = pcm[whole:]
        return closed

    def flush(self) -> tuple[int, int] | None:
        """The open region at the end of the stream, if any."""
        return self._region() if self.region_start is not None else None

    def _region(self) -> tuple[int, int]:
        assert self.region_start is not None and self.last_speech_end is not None
        region = (max(0, self.region_start - self._padding), self.last_speech_end + self._hangover)
        self.region_start = None
        return region

    def speech_after(self, sample: int) -> bool:
        """Whether speech was heard after `sample` (or a region is still open)."""
        # Before any speech, not "after sample 0": the first hops reach back before the stream.
        return self.region_start is not None or (self.last_speech_end is not None and self.last_speech_end > sample)


@dataclass(frozen=True)
class WindowPlan:
    window_s: float = 15.0
    hop_s: float = 5.0
    score_silence: bool = False
    max_frame_s: float = 2.0  # a window can end this far before the newest sample


class StreamWindower:
    """One stream's recent audio and the windows that fall due as it arrives."""

    def __init__(self, stream_id: str, plan: WindowPlan, vad: VadSettings) -> None:
        self.stream_id, self.plan = stream_id, plan
        self.vad = StreamVad(vad)
        self.window = int(plan.window_s * SAMPLE_RATE)
        self.hop = int(plan.hop_s * SAMPLE_RATE)
        # A window ends up to a frame (and for speech ends the VAD's close delay) before the newest
        # sample and reaches a window back from there.
        self.keep = self.window + self.vad.close_delay + self.vad.frame + int(plan.max_frame_s * SAMPLE_RATE)
        # The last `keep` samples or more, in an array of twice that which is refilled from its
        # start only when full: appending a frame copies the frame, not the whole window.
        self._store = np.zeros(2 * self.keep, dtype=np.float32)
        self._used = 0
        self.buffer_start = 0  # stream sample of buffer[0]
        self.received = 0
        self.next_hop = self.hop
        self.last_scored_end = 0

    def feed(self, pcm: np.ndarray) -> list[DueWindow]:
        """Windows due once this 16-bit PCM frame has arrived."""
        now = time.monotonic()
        self.received += len(pcm)
        self._append(pcm.astype(np.float32) / 32768.0)
        due = [self._window(start, end, "speech_end", now) for start, end in self.vad.feed(pcm)]
        while self.received >= self.next_hop:
            end = self.next_hop
            if self.plan.score_silence or self.vad.speech_after(end - self.window):
                due.append(self._window(end - self.window, end, "hop", now))
            self.next_hop += self.hop
        return [window for window in due if window is not None]

    @property
    def buffer(self) -> np.ndarray:
        """The audio kept, from stream sample `buffer_start` (a view)."""
        return self._store[: self._used]

    def _append(self, samples: np.ndarray) -> None:
        if self._used + len(samples) > len(self._store):
            kept = min(self._used, max(0, self.keep - len(samples)))
            self._store[:kept] = self._store[self._used - kept : self._used]
            self.buffer_start += self._used - kept
            self._used = kept
            if len(samples) > len(self._store):  # not with frames of at most max_frame_s
                self.buffer_start += len(samples) - len(self._store)
                samples = samples[-len(self._store) :]
        self._store[self._used : self._used + len(samples)] = samples
        self._used += len(samples)

    def finish(self) -> list[DueWindow]:
        """At the end of the stream: the open speech region, or with `score_silence` the tail."""
        now = time.monotonic()
        region = self.vad.flush()
        if region is not None:
            window = self._window(region[0], min(region[1], self.received), "end", now)
        elif self.plan.score_silence and self.received > self.last_scored_end:
            window = self._window(self.received - self.window, self.received, "end", now)
        else:
            window = None
        return [window] if window is not None else []

    def _window(self, start: int, end: int, reason: WindowReason, now: float) -> DueWindow | None:
        first = max(0, self.buffer_start)
        start = max(start, end - self.window, first)
        if end - start < MIN_WINDOW_S * SAMPLE_RATE:
            start = max(first, end - int(MIN_WINDOW_S * SAMPLE_RATE))
        if end - start < MIN_SCORABLE_S * SAMPLE_RATE:
            return None
        self.last_scored_end = max(self.last_scored_end, end)
        samples = self.buffer[start - self.buffer_start : end - self.buffer_start].copy()
        return DueWindow(self.stream_id, start, end, reason, samples, now)


# --- the model, following a run directory -------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    scorer: WindowScorer
    classes: list[str]
    thresholds: np.ndarray
    thresholds_source: str
    version: str  # "<run>/<model dir>@<sha256 of the weights, 12 hex>"
    backend: str = "pytorch"  # "pytorch", "onnxruntime-int8" (made here), or an exported file's format
    device: str = "cpu"  # where its forward passes run: "cpu" or "cuda"


#: `backend` settings: a run or model directory scored in PyTorch, or through its ONNX Runtime
#: dynamic-int8 export, made by the server once per weights (exported files are served as they are).
BACKENDS = ("pytorch", "onnx-int8")
#: int8 exports kept in the export directory (the newest used), older ones are removed.
KEPT_EXPORTS = 3
#: `device` settings; auto: cuda where the engine that scores can use a CUDA GPU, else cpu.
DEVICES = ("cpu", "cuda", "auto")
#: `max_batch` when none is set and the model scores on a GPU: there a pass of 16 windows costs
#: little more than one (the fixed cost of a pass dominates), unlike on a CPU (docs/streaming.md).
GPU_MAX_BATCH = 16


def _engine(spec: str | Path, backend: str) -> str:
    """What runs the forward passes: "onnxruntime", "torchscript" or "pytorch"."""
    suffix = Path(spec).suffix
    if suffix == ".onnx" or (suffix != ".pt" and backend == "onnx-int8"):
        return "onnxruntime"
    return "torchscript" if suffix == ".pt" else "pytorch"


def _cuda_missing(engine: str) -> str | None:
    """Why `engine` cannot score on a CUDA GPU here, or None when it can."""
    if engine == "torchscript":
        return "a TorchScript (.pt) export is scored on the CPU only; serve the run directory or an .onnx export"
    if engine == "onnxruntime":
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            return (f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (it has "
                    f"{', '.join(providers)}): install onnxruntime-gpu")
    if not torch.cuda.is_available():  # onnxruntime-gpu lists its provider even without a GPU
        build = f"torch {torch.__version__}" + (", a CPU-only build" if torch.version.cuda is None else "")
        return f"PyTorch sees no CUDA GPU ({build})"
    return None


def resolve_device(requested: str, spec: str | Path, backend: str = "pytorch") -> str:
    """The device the served model scores on: cpu, or cuda where the engine that scores `spec`
    with `backend` can use a GPU; asked for cuda where it cannot, a ValueError saying why."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cpu":
        return "cpu"
    missing = _cuda_missing(_engine(spec, backend))
    if missing is None:
        return "cuda"
    if requested == "cuda":
        raise ValueError(f"device cuda: {missing}; use device cpu or auto")
    log.info("device auto: cpu (%s)", missing)
    return "cpu"


def _weights_file(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    return path.resolve() if path.is_file() else resolve_model_dir(path) / MODEL_WEIGHTS


def model_identity(spec: str | Path) -> tuple[str, int, int, int]:
    """What changes when a new model is promoted or a model file replaced: the resolved weights
    file, its modification time and size, and its thresholds.json's modification time."""
    weights = _weights_file(spec)
    stat = weights.stat()
    thresholds = weights.parent / THRESHOLDS_FILE
    return str(weights), stat.st_mtime_ns, stat.st_size, thresholds.stat().st_mtime_ns if thresholds.exists() else 0


def _version(weights: Path) -> str:
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    name = weights.stem if weights.suffix in (".onnx", ".pt") else f"{weights.parent.parent.name}/{weights.parent.name}"
    return f"{name}@{digest.hexdigest()[:12]}"


class ModelHolder:
    """The model behind `spec` (a run directory such as runs/current, a model directory or an
    exported file), reloaded when what it names changes; scoring uses whichever is current."""

    def __init__(self, spec: str | Path, window_s: float, max_batch: int, threads: int | None = None,
                 backend: str = "pytorch", export_dir: Path | None = None, device: str = "cpu") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.spec, self.window_s, self.max_batch, self.threads = spec, window_s, max_batch, threads
        self.backend = backend
        self.device = resolve_device(device, spec, backend)  # cpu or cuda from here on
        self.export_dir = export_dir or Path(tempfile.gettempdir()) / "voxtox-stream-exports"
        self.identity: tuple[str, int, int, int] | None = None
        self.failed_identity: tuple[str, int, int, int] | None = None
        self.current: ServedModel | None = None
        self.last_error: str | None = None

    def load(self) -> ServedModel:
        from voxtox.models.classify import load_model

        identity = model_identity(self.spec)
        loaded = load_model(self.spec, self.threads, self.device)
        version = _version(Path(identity[0]))
        model, backend = self._backend_model(loaded.model, Path(identity[0]), version, loaded.classes)
        if model_identity(self.spec) != identity:
            raise RuntimeError(f"{self.spec} changed while it was being loaded")
        # An exported model takes its input on the CPU (onnxruntime copies it to the GPU itself).
        scorer = WindowScorer(cast("SpeechToxicityClassifier", model), window_s=self.window_s, stride_s=self.window_s,
                              batch_size=self.max_batch, device=self.device if backend == "pytorch" else "cpu")
        served = ServedModel(scorer, loaded.classes, loaded.thresholds.values, loaded.thresholds.source,
                             version, backend, self.device)
        if self.current is not None and served.classes != self.current.classes:
            raise ValueError(f"{self.spec}: the new model's classes {served.classes} differ from the served ones")
        self.current, self.identity = served, identity
        return served

    def _backend_model(self, model: torch.nn.Module, weights: Path, version: str,
                       classes: list[str]) -> tuple[torch.nn.Module, str]:
        """What scores: an exported file as it is; a trained model in PyTorch, or with backend
        onnx-int8 its dynamic-int8 ONNX export, made on the first load of these weights and kept
        (named by the weights' hash) in `export_dir`, so a restart or a second server reuses it."""
        from voxtox.models.export import ExportedClassifier, export_model

        if weights.suffix in (".onnx", ".pt"):
            exported: ExportedClassifier = model  # type: ignore[assignment]
            return model, f"{exported.format} file" + (" (int8)" if exported.metadata.get("quantized") else "")
        if self.backend == "pytorch":
            return model, "pytorch"
        path = self.export_dir / f"{version.rsplit('@', 1)[1]}-int8.onnx"
        if not path.exists():
            log.warning("exporting %s to ONNX int8 at %s", version, path)
            export_model(cast("SpeechToxicityClassifier", model), path, metadata={"classes": classes}, quantize=True)  # atomic: no partial file
        path.touch()  # the newest used are the ones kept
        for stale in sorted(self.export_dir.glob("*-int8.onnx"), key=lambda p: p.stat().st_mtime)[:-KEPT_EXPORTS]:
            stale.unlink(missing_ok=True)
        return ExportedClassifier(path, self.threads, self.device), "onnxruntime-int8"

    def refresh(self) -> bool:
        """Load the model again if `spec` now names another one; a model that fails to load (a
        file half written) leaves the current one serving until the file changes again."""
        identity = None
        try:
            identity = model_identity(self.spec)
            if identity in (self.identity, self.failed_identity):  # a broken file is tried once
                return False
            previous = self.current.version if self.current else None
            self.load()
        except Exception as error:  # noqa: BLE001 - any failure keeps the old model serving
            self.failed_identity = identity
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning("model %s not reloaded: %s", self.spec, self.last_error)
            return False
        self.last_error, self.failed_identity = None, None
        log.warning("model reloaded: %s -> %s", previous, self.current.version if self.current else None)
        return True

    def score(self, clips: list[np.ndarray]) -> tuple[np.ndarray, ServedModel]:
        """(len(clips), classes) probabilities, one window per clip in one forward pass, and the
        model that gave them. The batcher passes clips of similar length (`length_groups`)."""
        served = self.current
        if served is None:
            raise RuntimeError("no model loaded")
        return np.concatenate(served.scorer.score_many(clips)), served


def length_groups(lengths: list[int], max_ratio: float = 1.5) -> list[list[int]]:
    """Indices grouped so that within a group the longest is at most `max_ratio` × the shortest
    (padding a 2 s window to 15 s would cost the encoder as much as a 15 s one); the groups of
    shorter windows first, so a short outburst's window is not held behind the long ones."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[index] <= max_ratio * lengths[groups[-1][0]]:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


# --- batching across streams ------------------------------------------------------------------


@dataclass
class Job:
    window: DueWindow
    future: asyncio.Future = field(repr=False)
    taken: bool = False  # in a batch being scored: too late to withdraw

    def withdraw(self) -> bool:
        """Take the job back before it is scored (its future is cancelled); False if too late."""
        if self.taken or self.future.done():
            return False
        self.future.cancel()
        return True


@dataclass(frozen=True)
class Scored:
    probs: np.ndarray  # (classes,)
    model: ServedModel
    batch_size: int


class Batcher:
    """Windows due from any stream, scored together: a batch is whatever is queued when the scorer
    is free, up to `max_batch`, after waiting at most `max_wait_s` for others to join the first.
    The queue holds at most `capacity` windows (`offer` refuses beyond; `put` waits for room).
    Scoring runs in a worker thread, one batch at a time, so audio keeps arriving meanwhile."""

    def __init__(
        self,
        score: Callable[[list[np.ndarray]], tuple[np.ndarray, ServedModel]],
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._score_clips, self.max_batch, self.max_wait_s = score, max_batch, max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=capacity)
        self._on_batch = on_batch

    def offer(self, window: DueWindow) -> Job | None:
        """Queue `window` if there is room now, else None (the caller drops it)."""
        job = Job(window, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            return None
        return job

    async def put(self, window: DueWindow) -> Job:
        """Queue `window`, waiting for room."""
        job = Job(window, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return job

    async def _next_batch(self) -> list[Job]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        batch = [job for job in batch if not job.future.done()]  # withdrawn, or its stream is gone
        for job in batch:
            job.taken = True
        return batch

    async def run(self) -> None:
        while True:
            batch = await self._next_batch()
            # One forward pass per length group, each group's events released as soon as it is
            # scored: a window waits for its own pass, not for every window taken with it.
            for group in length_groups([len(job.window.samples) for job in batch]):
                await self._score([batch[i] for i in group])

    async def _score(self, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # its stream went away meanwhile
        if not jobs:
            return
        started = time.monotonic()
        try:
            probs, model = await asyncio.to_thread(self._score_clips, [job.window.samples for job in jobs])
        except Exception as error:  # noqa: BLE001 - each waiting stream hears of it
            log.exception("scoring a batch of %d failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        if self._on_batch:
            self._on_batch(len(jobs), time.monotonic() - started)
        for job, row in zip(jobs, probs, strict=True):
            if not job.future.done():
                job.future.set_result(Scored(row, model, len(jobs)))
