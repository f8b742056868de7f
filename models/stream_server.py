"""The streaming classification server: one WebSocket per voice channel or speaker, windows of all
streams scored in shared batches (models/stream.py), health and Prometheus metrics over HTTP.
Prefect-free; `voxtox stream serve` (flows/cli_stream.py) runs it with uvicorn. docs/streaming.md
is the protocol.

Routes: `/v1/stream` (WebSocket, `Authorization: Bearer <token>`), `/healthz` (the process
answers), `/readyz` (a model is loaded and the scorer runs), `/metrics` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxtox.audio import SAMPLE_RATE
from voxtox.models.opus import OPUS_RATES, OpusDecoder
from voxtox.models.stream import (GPU_MAX_BATCH, Batcher, DueWindow, Job, ModelHolder, Scored, StreamWindower,
                                   WindowPlan, resolve_device)
from voxtox.settings import StreamSettings, VadSettings

log = logging.getLogger(__name__)

ENCODINGS = ("pcm_s16le", "opus")
PROTOCOL_VERSION = 1
# Close codes (RFC 6455 and the registered 4xxx-free range we keep to): what went wrong, in words
# in the close reason too.
POLICY = 1008  # bad token (before accepting: HTTP 403), events not read
UNSUPPORTED = 1003  # a start message or frame the server cannot use
TRY_LATER = 1013  # too many streams
REFUSALS = ("token", "full", "bad_input", "idle", "not_reading")


class StreamMetrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams = Gauge("voxtox_stream_active_streams", "open streams", registry=r)
        self.queue_depth = Gauge("voxtox_stream_queue_depth", "windows waiting to be scored", registry=r)
        self.batch_size = Histogram("voxtox_stream_batch_size", "windows per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_seconds = Histogram("voxtox_stream_batch_seconds", "time to score one batch", registry=r)
        self.latency = Histogram("voxtox_stream_latency_seconds", "a window's last sample arriving to its event sent",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=r)
        self.windows = Counter("voxtox_stream_windows_total", "windows scored", ["reason"], registry=r)
        self.dropped = Counter("voxtox_stream_dropped_windows_total", "hop windows dropped under load", registry=r)
        self.refused = Counter("voxtox_stream_refused_total", "connections refused or closed for a fault",
                               ["reason"], registry=r)
        self.reloads = Counter("voxtox_stream_model_reloads_total", "newly promoted models loaded", registry=r)
        for reason in REFUSALS:  # every series from the start, so rates and alerts see zeros
            self.refused.labels(reason)
        for reason in ("hop", "speech_end", "end"):
            self.windows.labels(reason)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


class StreamError(Exception):
    """A fault of the client's: closes its stream with `code` and the message as the reason."""

    def __init__(self, message: str, code: int = UNSUPPORTED, kind: str = "bad_input") -> None:
        super().__init__(message)
        self.code, self.kind = code, kind  # kind: the refused-metric's label


@dataclass(frozen=True)
class StartMessage:
    stream_id: str
    sample_rate: int
    encoding: str

    @classmethod
    def parse(cls, text: str) -> StartMessage:
        try:
            message = json.loads(text)
        except json.JSONDecodeError as error:
            raise StreamError(f"start message is not JSON: {error}") from None
        if not isinstance(message, dict) or message.get("type") != "start":
            raise StreamError('the first message must be {"type": "start", ...}')
        stream_id, rate, encoding = message.get("stream_id"), message.get("sample_rate"), message.get("encoding")
        if not isinstance(stream_id, str) or not 0 < len(stream_id) <= 200:
            raise StreamError("start message: stream_id must be a string of 1-200 characters")
        if encoding not in ENCODINGS:
            raise StreamError(f"start message: encoding {encoding!r} is not supported; use {', '.join(ENCODINGS)}")
        if encoding == "pcm_s16le" and rate != SAMPLE_RATE:
            raise StreamError(f"start message: sample_rate {rate!r} is not supported; send {SAMPLE_RATE} Hz mono")
        if encoding == "opus" and rate not in OPUS_RATES:  # the decoder resamples any of them to 16 kHz
            raise StreamError(f"start message: sample_rate {rate!r} is not an Opus rate ({', '.join(map(str, OPUS_RATES))})")
        if not isinstance(rate, int):
            raise StreamError(f"start message: sample_rate must be an integer, not {rate!r}")
        return cls(stream_id, rate, encoding)


@dataclass
class StreamTotals:
    """What the end-of-stream summary reports: windows scored and dropped, max over windows."""

    windows: int = 0
    dropped: int = 0
    max_probs: np.ndarray | None = None
    model_versions: list[str] = field(default_factory=list)

    def add(self, scored: Scored) -> None:
        self.windows += 1
        self.max_probs = scored.probs if self.max_probs is None else np.maximum(self.max_probs, scored.probs)
        if scored.model.version not in self.model_versions:
            self.model_versions.append(scored.model.version)


def _decisions(classes: list[str], probs: np.ndarray, thresholds: np.ndarray) -> dict[str, object]:
    decided = probs >= thresholds
    return {
        "probs": {c: round(float(p), 5) for c, p in zip(classes, probs, strict=True)},
        "decisions": {c: bool(d) for c, d in zip(classes, decided, strict=True)},
        "labels": [c for c, d in zip(classes, decided, strict=True) if d],
    }


def window_event(window: DueWindow, scored: Scored, dropped: int) -> dict[str, object]:
    model = scored.model
    return {
        "type": "window", "stream_id": window.stream_id, "reason": window.reason,
        "start_s": round(window.start_s, 3), "end_s": round(window.end_s, 3),
        **_decisions(model.classes, scored.probs, model.thresholds),
        "model_version": model.version, "batch_size": scored.batch_size,
        "latency_ms": round(1000 * (time.monotonic() - window.due_at), 1), "dropped_windows": dropped,
    }


def listening_socket(host: str, port: int, send_buffer_kb: int) -> socket.socket:
    """The server's bound socket, its accepted connections inheriting a fixed send buffer."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_kb * 1024)
    sock.bind(address)
    return sock


def overloaded_event(window: DueWindow, dropped: int) -> dict[str, object]:
    return {"type": "overloaded", "stream_id": window.stream_id,
            "dropped": {"start_s": round(window.start_s, 3), "end_s": round(window.end_s, 3)},
            "dropped_windows": dropped,
            "rule": "a hop window still waiting when the next is due is replaced by it; hop windows are "
                    "dropped while the scoring queue is full; speech-end windows wait"}


class StreamServer:
    """Shared state: the model, the batcher, the metrics and the open streams."""

    def __init__(self, settings: StreamSettings, model_spec: str, vad: VadSettings) -> None:
        if settings.token is None or not settings.token.get_secret_value():
            raise ValueError("no token: set VOXTOX_STREAM__TOKEN (clients send it as `Authorization: Bearer ...`)")
        self.settings, self.vad = settings, vad
        self.token = settings.token.get_secret_value().encode()
        self.metrics = StreamMetrics()
        self.device = resolve_device(settings.device, model_spec, settings.backend)  # auto resolved, cuda checked
        # Unset, batching is on where it pays: on a GPU a pass's fixed cost dominates, on a CPU a
        # batch costs its windows one by one and only adds waiting (docs/streaming.md).
        self.max_batch = settings.max_batch or (GPU_MAX_BATCH if self.device == "cuda" else 1)
        self.model = ModelHolder(model_spec, settings.window_s, self.max_batch, settings.threads, settings.backend,
                                 settings.export_dir, self.device)
        self.plan = WindowPlan(settings.window_s, settings.hop_s, settings.score_silence, settings.max_frame_s)
        self.batcher: Batcher | None = None
        self.streams = 0
        self.max_frame_bytes = int(settings.max_frame_s * SAMPLE_RATE) * 2

    # --- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(self.model.load)
        self.batcher = Batcher(self.model.score, self.max_batch, self.settings.max_wait_ms / 1000,
                               self.settings.queue_windows, self.metrics.observe_batch)
        tasks = [asyncio.create_task(self.batcher.run()), asyncio.create_task(self._follow_model())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    async def _follow_model(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_check_s)
            if await asyncio.to_thread(self.model.refresh):
                self.metrics.reloads.inc()

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/healthz", self.healthz), Route("/readyz", self.readyz),
                    Route("/metrics", self.metrics_page), WebSocketRoute("/v1/stream", self.stream)],
            lifespan=self.lifespan,
        )

    # --- HTTP ------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        current = self.model.current
        ready = current is not None and self.batcher is not None
        body = {"ready": ready, "model_version": current.version if current else None,
                "backend": current.backend if current else None, "device": self.device, "max_batch": self.max_batch,
                "streams": self.streams, "queue_depth": self.batcher.queue.qsize() if self.batcher else 0,
                "model_reload_error": self.model.last_error}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_page(self, request: Request) -> Response:
        self.metrics.queue_depth.set(self.batcher.queue.qsize() if self.batcher else 0)
        return PlainTextResponse(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- a stream --------------------------------------------------------------------------

    def _authorised(self, websocket: WebSocket) -> bool:
        scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)

    async def stream(self, websocket: WebSocket) -> None:
        if not self._authorised(websocket):
            self.metrics.refused.labels("token").inc()
            await websocket.close(code=POLICY)  # before accepting: the client gets HTTP 403
            return
        await websocket.accept()
        if self.streams >= self.settings.max_streams or self.batcher is None:
            self.metrics.refused.labels("full").inc()
            await websocket.close(code=TRY_LATER, reason=f"server full: {self.streams} streams open")
            return
        self.streams += 1
        self.metrics.streams.inc()
        try:
            await StreamSession(self, websocket).run()
        finally:
            self.streams -= 1
            self.metrics.streams.dec()


class StreamSession:
    """One connection: start message, audio frames in, window events out in order, a summary."""

    def __init__(self, server: StreamServer, websocket: WebSocket) -> None:
        self.server, self.websocket = server, websocket
        self.settings = server.settings
        # Window jobs (in order) and ready events, bounded: a stream cannot pile up work.
        self.events: asyncio.Queue[Job | dict | None] = asyncio.Queue(maxsize=self.settings.event_buffer)
        self.totals = StreamTotals()
        self.start: StartMessage | None = None
        self.sender: asyncio.Task | None = None
        self.last_hop: Job | None = None  # this stream's newest hop window in the scoring queue
        self.opus: OpusDecoder | None = None

    async def run(self) -> None:
        jobs: list[Job] = []
        try:
            self.start = StartMessage.parse(await self._receive_text_first())
            self.opus = OpusDecoder() if self.start.encoding == "opus" else None
            windower = StreamWindower(self.start.stream_id, self.server.plan, self.server.vad)
            await self._send(self._started_event())
            self.sender = asyncio.create_task(self._send_events())
            await self._receive_audio(windower, jobs)
            for window in windower.finish():
                await self._submit(window, jobs)
            await self._put_event(None)  # the sender sends the summary after the last window
            await self.sender
            await self.websocket.close(code=1000, reason="end of stream")
        except StreamError as error:
            self.server.metrics.refused.labels(error.kind).inc()
            await self._close_with_error(str(error), error.code)
        except WebSocketDisconnect:
            pass  # the client went away: drop its work below
        finally:
            for job in jobs:
                job.future.cancel()
            if self.sender is not None and not self.sender.done():
                self.sender.cancel()

    async def _receive_text_first(self) -> str:
        message = await self._receive()
        if message.get("text") is None:
            raise StreamError('the first message must be a JSON start message, not audio')
        return message["text"]

    async def _receive(self) -> dict:
        try:
            message = await asyncio.wait_for(self.websocket.receive(), self.settings.idle_timeout_s)
        except TimeoutError:
            raise StreamError(f"idle: nothing received for {self.settings.idle_timeout_s:g} s", 1000, "idle") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _receive_audio(self, windower: StreamWindower, jobs: list[Job]) -> None:
        """Frames until the client's end message; raises on faults and disconnects."""
        while True:
            message = await self._receive()
            if self.sender is not None and self.sender.done():  # it gave up on a client that does not read
                self.sender.result()
            if message.get("bytes") is not None:
                for window in windower.feed(self._decode(message["bytes"])):
                    await self._submit(window, jobs)
                jobs[:] = [job for job in jobs if not job.future.done()]
            elif message.get("text") is not None:
                try:
                    kind = json.loads(message["text"]).get("type")
                except (json.JSONDecodeError, AttributeError):
                    kind = None
                if kind != "end":
                    raise StreamError('after the start message, send audio frames or {"type": "end"}')
                return

    def _decode(self, data: bytes) -> np.ndarray:
        """A frame's 16 kHz int16 samples: PCM as it is, Opus decoded by the stream's decoder."""
        if self.opus is None:
            return self._pcm(data)
        if len(data) > self.server.max_frame_bytes:
            raise StreamError(f"Opus packet of {len(data)} bytes: at most {self.server.max_frame_bytes}", 1009)
        try:
            return self.opus.decode(data)
        except ValueError as error:
            raise StreamError(str(error)) from None

    def _pcm(self, data: bytes) -> np.ndarray:
        if len(data) % 2:
            raise StreamError(f"frame of {len(data)} bytes: 16-bit PCM frames have an even number of bytes")
        if len(data) > self.server.max_frame_bytes:
            raise StreamError(f"frame of {len(data)} bytes ({len(data) / 2 / SAMPLE_RATE:.2f} s): at most "
                              f"{self.settings.max_frame_s:g} s ({self.server.max_frame_bytes} bytes) per frame", 1009)
        return np.frombuffer(data, dtype="<i2")

    async def _submit(self, window: DueWindow, jobs: list[Job]) -> None:
        """Queue a window for scoring. The rules under load: a new hop window supersedes this
        stream's previous one if that is still waiting (it covers most of the same audio, and a
        stream never has more than one hop window queued, so waiting cannot grow with the
        backlog); a hop window that finds the scoring queue or this stream's event buffer full is
        dropped. The stream hears of each in an `overloaded` event. A speech-end or end window is
        never dropped: it waits for room, which stops this stream's reads until there is some."""
        assert self.server.batcher is not None
        if window.reason == "hop":
            if self.last_hop is not None and self.last_hop.withdraw():
                self._dropped()  # its `overloaded` event is sent in its place, in order
            if self.events.full() or self.server.batcher.queue.full():
                self._dropped()
                with contextlib.suppress(asyncio.QueueFull):  # the next window's event counts it anyway
                    self.events.put_nowait(overloaded_event(window, self.totals.dropped))
                return
        job = await self.server.batcher.put(window)
        jobs.append(job)
        if window.reason == "hop":
            self.last_hop = job
        await self._put_event(job)

    def _dropped(self) -> None:
        self.totals.dropped += 1
        self.server.metrics.dropped.inc()

    async def _put_event(self, item: Job | None) -> None:
        """Wait for room in the event buffer, unless the sender gives up on the client meanwhile
        (then its error is raised here)."""
        assert self.sender is not None
        put = asyncio.ensure_future(self.events.put(item))
        await asyncio.wait({put, self.sender}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self.sender.result()
            raise StreamError("the event sender stopped", 1011)

    async def _send_events(self) -> None:
        """Window events in the order their windows fell due, then the summary."""
        while (item := await self.events.get()) is not None:
            if isinstance(item, Job):
                await asyncio.wait([item.future])
                if item.future.cancelled():  # superseded by a newer hop window
                    await self._send(overloaded_event(item.window, self.totals.dropped))
                    continue
                scored: Scored = item.future.result()
                self.totals.add(scored)
                self.server.metrics.windows.labels(item.window.reason).inc()
                event = window_event(item.window, scored, self.totals.dropped)
                await self._send(event)
                self.server.metrics.latency.observe(time.monotonic() - item.window.due_at)
            else:
                await self._send(item)
        await self._send(self._summary())

    async def _send(self, event: dict) -> None:
        try:
            await asyncio.wait_for(self.websocket.send_text(json.dumps(event)), self.settings.send_timeout_s)
        except TimeoutError:
            raise StreamError(f"events not read for {self.settings.send_timeout_s:g} s", POLICY, "not_reading") from None

    def _started_event(self) -> dict[str, object]:
        model = self.server.model.current
        assert model is not None and self.start is not None
        return {"type": "started", "stream_id": self.start.stream_id, "protocol": PROTOCOL_VERSION,
                "model_version": model.version, "backend": model.backend, "device": model.device,
                "classes": model.classes,
                "thresholds": {c: round(float(t), 5) for c, t in zip(model.classes, model.thresholds, strict=True)},
                "window_s": self.settings.window_s, "hop_s": self.settings.hop_s}

    def _summary(self) -> dict[str, object]:
        model = self.server.model.current
        assert model is not None and self.start is not None
        summary: dict[str, object] = {"type": "summary", "stream_id": self.start.stream_id,
                                      "windows": self.totals.windows, "dropped_windows": self.totals.dropped,
                                      "model_versions": self.totals.model_versions}
        if self.totals.max_probs is not None:  # max over windows (paper §4.1), current thresholds
            summary |= _decisions(model.classes, self.totals.max_probs, model.thresholds)
        return summary

    async def _close_with_error(self, message: str, code: int) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await asyncio.wait_for(self.websocket.send_text(json.dumps({"type": "error", "message": message})), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code=code, reason=message[:120]), 1.0)
